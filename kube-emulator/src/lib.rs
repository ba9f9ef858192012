//! A Kubernetes API emulator for tests: a subset of the API served over real HTTP/1.1, with
//! the list/watch semantics kube-rs clients and kube-runtime watchers rely on.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let emu = kube_emulator::Emulator::new();
//! let addr = emu.bind("127.0.0.1:0".parse().unwrap()).await?;
//! kube_emulator::write_kubeconfig(std::path::Path::new("/tmp/kubeconfig"), addr)?;
//! emu.apply(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}));
//! # Ok(()) }
//! ```
//!
//! # What is implemented
//!
//! - **Resources**: core/v1 `namespaces` (cluster-scoped), `pods`, `services`;
//!   networking.k8s.io/v1 `networkpolicies`; discovery.k8s.io/v1 `endpointslices`, at the
//!   real paths (`/api/v1/pods`, `/api/v1/namespaces/{ns}/pods[/{name}]`,
//!   `/apis/networking.k8s.io/v1/...`, `/apis/discovery.k8s.io/v1/...`), plus the `/status`
//!   subresource of each but EndpointSlices (GET, PUT and PATCH change only `.status`).
//!   Objects are stored as the JSON that was written.
//! - **Discovery**: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/networking.k8s.io[/v1]`,
//!   `/apis/discovery.k8s.io[/v1]`;
//!   `/healthz`, `/livez`, `/readyz` answer `ok`. Any other path is a 404 `Status`
//!   (reason `NotFound`).
//! - **resourceVersion**: one global counter, like etcd's revision (it starts at 1). Every
//!   write that changes an object takes the next value, which becomes the object's
//!   `metadata.resourceVersion`. Creation sets `metadata.uid`, `creationTimestamp`,
//!   `generation` 1, `kind`/`apiVersion` and the namespace (from the path, else the body, else
//!   `default`); updates keep uid and creationTimestamp and bump `generation` when `.spec`
//!   changes.
//! - **Writes**: POST (201; 409 `AlreadyExists`; 404 `NotFound` when the namespace of a
//!   namespaced object does not exist; 422 `Invalid` for a missing or malformed name;
//!   `generateName` supported), PUT (404 if absent; 409 `Conflict` if the body carries a
//!   `metadata.resourceVersion` or `metadata.uid` that differs), PATCH with
//!   `application/merge-patch+json`, `application/strategic-merge-patch+json` and
//!   `application/json-patch+json` (same preconditions, 404 if absent), DELETE (200 with the
//!   deleted object carrying the deletion's resourceVersion; 404 if absent;
//!   `DeleteOptions.preconditions` uid/resourceVersion checked, 409 on mismatch) and
//!   DELETE on a collection (deletecollection, with selectors). Error answers are `Status`
//!   objects with the real code and reason. A bad JSON body is a 400 `BadRequest` saying what
//!   is wrong (not JSON, not an object, another kind or apiVersion, a namespace other than the
//!   path's, a non-string `metadata.name`/`namespace`/`resourceVersion`/..., labels or
//!   annotations that are not a map of strings, a malformed DeleteOptions); a body over 3 MiB
//!   is a 413; a non-JSON content type is a 415. A `metadata.resourceVersion` in a created
//!   object is ignored (the real server refuses it).
//! - **List**: `labelSelector` (`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`,
//!   `a notin (x)`, `a>1`, `a<1`; comma = AND), `fieldSelector` (`=`, `==`, `!=` on
//!   `metadata.name`, `metadata.namespace`, and for pods `spec.nodeName`, `status.phase`,
//!   `status.podIP`, ...; other fields are a 400), `limit`/`continue` pagination where every
//!   page is the same snapshot (the token holds the snapshot resourceVersion and the last key;
//!   the snapshot is rebuilt from the event history, so a token whose resourceVersion has been
//!   compacted away is a 410 `Expired`), `resourceVersion` with `resourceVersionMatch`
//!   `NotOlderThan` (answered from the current state) or `Exact` (answered from history; 410
//!   when compacted). `remainingItemCount` is given on pages without selectors.
//! - **Watch** (`?watch=true|1`): 200, `application/json`, a chunked stream of
//!   `{"type":..,"object":..}` lines. From `resourceVersion=N`: every event after N, in order,
//!   from a bounded history ([`Emulator::with_history`], 10 000 events by default); if N is
//!   older than the history, one `ERROR` event with a 410 `Expired` Status
//!   (`too old resource version: N (M)`) and the stream ends. Without resourceVersion or with
//!   "0": a synthetic `ADDED` per current object first. `sendInitialEvents=true` (which, like
//!   the real server, requires `resourceVersionMatch=NotOlderThan` and
//!   `allowWatchBookmarks=true`): `ADDED` per current object, then a `BOOKMARK` annotated
//!   `k8s.io/initial-events-end: "true"` at the snapshot's resourceVersion. With
//!   `allowWatchBookmarks=true`, a `BOOKMARK` (the kind with only
//!   `metadata.resourceVersion`) every bookmark interval (1 s by default,
//!   [`Emulator::set_bookmark_interval`]); its resourceVersion is the global one the watch has
//!   caught up with. `timeoutSeconds` ends the stream cleanly with the last chunk (absent or
//!   0: 30 min). Selectors apply as in the real server: an object that starts matching is sent as
//!   `ADDED`, one that stops matching as `DELETED`. A watch on one object's path watches with
//!   `metadata.name=<name>`.
//! - **Compaction**: history is bounded; [`Emulator::compact`] forgets all of it, like an
//!   etcd compaction at the current revision. A new watch (or continue token, or `Exact` list)
//!   from an older resourceVersion gets the 410; an open watch gets the 410 `ERROR` only if an
//!   event it still had to send was forgotten (a caught-up watch continues, as with etcd).
//! - **Test controls**, as methods and as `POST /emulator/<name>` (parameters in the query
//!   string or a JSON body; `-` and `_` are interchangeable): `drop_watches` (closes every
//!   connection that carries a watch, mid-stream, without the last chunk),
//!   `compact`, `fail_next?n=1&code=500` (the next n API requests, i.e. every path but
//!   `/emulator/...`, answer that code with a `Status`; 429 and 503 add `Retry-After: 1`),
//!   `bookmark_interval?ms=100` (or `seconds=`), and `stats` (GET or POST; the [`Stats`] as
//!   JSON).
//! - **Binary**: `kube-emulator --listen 127.0.0.1:0 [--kubeconfig PATH] [--history N]
//!   [--bookmark-interval-ms MS]` prints the bound address on one line and serves until
//!   killed.
//!
//! # What is simplified compared with a real apiserver
//!
//! - No authentication, authorization, admission, TLS, HTTP/2, protobuf, YAML bodies, table
//!   output, server-side apply (`application/apply-patch+yaml` is a 415), dry-run, field
//!   managers (`managedFields`), owner references or garbage collection.
//! - No defaulting or validation of specs: pods, services and policies are stored as
//!   written (no clusterIP allocation, no `policyTypes` or protocol defaults). Status is kept
//!   as written on the main resource too (the real server ignores `.status` there). The only
//!   server-set fields besides the metadata above: a namespace gets the
//!   `kubernetes.io/metadata.name` label and `status.phase: Active`, as in a real cluster.
//! - No namespace exists at start (not even `default`).
//! - Deletion is immediate (no graceful deletion, finalizers or `deletionTimestamp`). Deleting
//!   a namespace deletes its objects at once (a `DELETED` event each), then the namespace.
//! - A write that changes nothing (PUT/PATCH of an identical object) is not written: no new
//!   resourceVersion and no event, as in the real server; the unchanged object is answered.
//! - Strategic merge patch is applied as a JSON merge patch (lists are replaced, not merged
//!   by key).
//! - `sendInitialEvents=true` always starts from the current state, whatever
//!   `resourceVersion` says (the real server serves a state at least that new).
//! - Lists and watches with `resourceVersion` newer than the current one are not delayed: a
//!   list answers 504 `Timeout` (`Too large resource version`) at once, a watch waits for
//!   events after it.
//! - `limit` is honoured for every list (the real server ignores it for `resourceVersion=0`
//!   lists served from its watch cache).
//! - An open watch whose history is compacted away is judged by resource and namespace only
//!   (not by its selectors) when deciding whether it missed an event.
//! - Injected failures ([`Emulator::fail_next`]) apply to HTTP requests only, not to the
//!   direct methods.

mod error;
mod http;
mod patch;
mod resource;
mod selector;
mod store;
mod util;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

pub use error::ApiError;
use resource::Resource;
use store::Store;

/// The smallest bookmark interval (a shorter one is raised to this).
const MIN_BOOKMARK_INTERVAL: Duration = Duration::from_millis(10);
/// The longest watch timeout or bookmark interval (longer ones are cut to this).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// The emulated API server: the store and its controls. Cheap to clone (all clones share one
/// store); serve it on as many listeners as you like.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Mutex<Store>,
    /// Bumped after every change a watch must look at (writes, compaction).
    epoch: tokio::sync::watch::Sender<u64>,
    bookmark_interval: tokio::sync::watch::Sender<Duration>,
}

/// Request counters, per resource (keyed by plural resource name: `namespaces`, `pods`,
/// `services`, `networkpolicies`, `endpointslices`; every key is always present).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// API requests received (every path but `/emulator/...`), injected failures included.
    pub requests: u64,
    /// Requests answered with an injected failure ([`Emulator::fail_next`]).
    pub injected_failures: u64,
    /// List requests, continuation pages and requests answered with an error included
    /// (injected failures excluded).
    pub lists: BTreeMap<String, u64>,
    /// Of `lists`, those carrying a `continue` token.
    pub list_continues: BTreeMap<String, u64>,
    /// Watch requests with valid parameters (those answered with a 410 ERROR included;
    /// injected failures excluded).
    pub watches: BTreeMap<String, u64>,
    /// Watch streams open now.
    pub open_watches: BTreeMap<String, u64>,
    /// Writes that changed an object (over HTTP or direct), per resource.
    pub writes: BTreeMap<String, u64>,
    /// Watches ended (or refused) with a 410 `Expired` ERROR event.
    pub expired_watches: u64,
    /// Watch connections closed by [`Emulator::drop_watches`].
    pub dropped_watches: u64,
}

fn count(m: &BTreeMap<String, u64>, resource: &str) -> u64 {
    match Resource::lookup(resource) {
        Some(r) => m.get(r.plural()),
        None => m.get(resource),
    }
    .copied()
    .unwrap_or(0)
}

impl Stats {
    /// List requests for a resource (Kind like `NetworkPolicy` or plural like
    /// `networkpolicies`), continuation pages included.
    pub fn list_count(&self, resource: &str) -> u64 {
        count(&self.lists, resource)
    }

    /// Lists started (list requests without a continue token) for a resource.
    pub fn lists_started(&self, resource: &str) -> u64 {
        count(&self.lists, resource).saturating_sub(count(&self.list_continues, resource))
    }

    /// Watch requests for a resource.
    pub fn watch_count(&self, resource: &str) -> u64 {
        count(&self.watches, resource)
    }

    /// Open watch streams for a resource.
    pub fn open_watch_count(&self, resource: &str) -> u64 {
        count(&self.open_watches, resource)
    }

    /// Writes of a resource.
    pub fn write_count(&self, resource: &str) -> u64 {
        count(&self.writes, resource)
    }
}

impl Default for Emulator {
    fn default() -> Self {
        Self::new()
    }
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn resource_of_kind(kind: &str) -> Result<Resource, ApiError> {
    if kind.is_empty() {
        return Err(ApiError::bad_request(
            "the object has no kind: the direct calls need one (Namespace, Pod, Service, NetworkPolicy)",
        ));
    }
    Resource::lookup(kind).ok_or_else(|| {
        ApiError::from_code(
            404,
            format!(
                "the emulator does not serve kind {kind:?}: only Namespace, Pod, Service and NetworkPolicy"
            ),
        )
    })
}

impl Emulator {
    /// An empty store (resourceVersion 1) keeping the last 10 000 events.
    pub fn new() -> Self {
        Self::with_history(10_000)
    }

    /// An empty store keeping the last `max_events` events (at least 1) for watches and
    /// paginated lists.
    pub fn with_history(max_events: usize) -> Self {
        let (epoch, _) = tokio::sync::watch::channel(0);
        let (bookmark_interval, _) = tokio::sync::watch::channel(Duration::from_secs(1));
        Emulator {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::new(max_events)),
                epoch,
                bookmark_interval,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.inner
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a write under the lock, then wakes the watches.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let out = f(&mut self.lock());
        self.inner.epoch.send_modify(|e| *e += 1);
        out
    }

    /// Serves on an already-bound std listener (it may have been bound inside another network
    /// namespace; the socket keeps its namespace). Call from within a tokio runtime; returns at
    /// once. The listener is made non-blocking. Aborting the returned task stops accepting;
    /// open connections live on until they close.
    pub fn serve(
        &self,
        listener: std::net::TcpListener,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let emu = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(http::serve_connection(emu.clone(), stream));
                    }
                    // Out of file descriptors and the like: wait and go on.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }))
    }

    /// Binds `addr` and serves; returns the bound address (port 0 allowed).
    pub async fn bind(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = std::net::TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        self.serve(listener)?;
        Ok(bound)
    }

    /// The current (global) resourceVersion: that of the last write.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Creates an object (its `kind` says which resource; a namespaced object without
    /// `metadata.namespace` goes to `default`), with the same checks and events as a POST.
    /// Returns the new resourceVersion.
    pub fn create(&self, obj: Value) -> Result<u64, ApiError> {
        let res = resource_of_kind(obj["kind"].as_str().unwrap_or(""))?;
        let o = self.write(|st| st.create(res, None, obj))?;
        Ok(rv_of(&o))
    }

    /// Creates or replaces an object (unconditionally: a `metadata.resourceVersion` in `obj` is
    /// ignored). Returns the resourceVersion of the object after the call (unchanged when the
    /// object already was exactly that).
    ///
    /// # Panics
    ///
    /// When the object cannot be stored (unknown kind, bad name, missing namespace, ...): this
    /// is a test helper, and such a call is a bug in the test. Use [`Emulator::create`] to get
    /// the error instead.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let result = (|| {
            let res = resource_of_kind(obj["kind"].as_str().unwrap_or(""))?;
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            self.write(|st| {
                let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                let ns = if res.namespaced() {
                    obj["metadata"]["namespace"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .unwrap_or("default")
                        .to_string()
                } else {
                    String::new()
                };
                if !name.is_empty() && st.get(res, &ns, &name).is_some() {
                    st.update(res, None, &name, obj, false)
                } else {
                    st.create(res, None, obj)
                }
            })
        })();
        match result {
            Ok(o) => rv_of(&o),
            Err(e) => panic!("Emulator::apply: {e}"),
        }
    }

    /// Deletes an object by Kind (`Pod`, ...), namespace (None: `default` for namespaced
    /// kinds) and name. Deleting a namespace deletes its objects first. Returns the new
    /// resourceVersion.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<u64, ApiError> {
        let res = resource_of_kind(kind)?;
        let ns = namespace.unwrap_or("default");
        let o = self.write(|st| st.delete(res, ns, name, None, None))?;
        Ok(rv_of(&o))
    }

    /// The stored object, if any (namespace None: `default` for namespaced kinds).
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let res = Resource::lookup(kind)?;
        let ns = if res.namespaced() {
            namespace.unwrap_or("default")
        } else {
            ""
        };
        self.lock().get(res, ns, name).map(|o| (**o).clone())
    }

    /// Closes every connection that carries a watch, abruptly (no last chunk), as a dropped
    /// TCP connection or an apiserver restart would.
    pub fn drop_watches(&self) {
        self.lock().drop_watches();
    }

    /// Forgets all history up to now: watches, continue tokens and `Exact` lists from older
    /// resourceVersions get 410 `Expired`.
    pub fn compact(&self) {
        self.lock().compact();
        self.inner.epoch.send_modify(|e| *e += 1);
    }

    /// The next `n` API requests (HTTP, any path but `/emulator/...`) answer `code` with a
    /// `Status` (e.g. 500 `InternalError`, 429 `TooManyRequests` with `Retry-After: 1`).
    /// `n == 0` cancels a pending injection.
    pub fn fail_next(&self, n: u32, code: u16) {
        self.lock().fail = (n > 0).then_some((n, code));
    }

    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK (open watches too:
    /// their next bookmark is due one new interval from now). Clamped to 10 ms ..= 1 year.
    pub fn set_bookmark_interval(&self, d: Duration) {
        self.inner
            .bookmark_interval
            .send_replace(d.clamp(MIN_BOOKMARK_INTERVAL, MAX_DURATION));
    }

    /// The request counters.
    pub fn stats(&self) -> Stats {
        let st = self.lock();
        let c = &st.counters;
        let mut open: BTreeMap<String, u64> = Resource::ALL
            .iter()
            .map(|r| (r.plural().to_string(), 0))
            .collect();
        for w in st.watches.values() {
            *open.entry(w.res.plural().to_string()).or_default() += 1;
        }
        Stats {
            requests: c.requests,
            injected_failures: c.injected_failures,
            lists: c.lists.clone(),
            list_continues: c.list_continues.clone(),
            watches: c.watches.clone(),
            open_watches: open,
            writes: c.writes.clone(),
            expired_watches: c.expired_watches,
            dropped_watches: c.dropped_watches,
        }
    }
}

/// Writes a kubeconfig (YAML) pointing at `http://addr` with no auth, context `emulator`
/// (cluster and user `emulator`, namespace `default`).
pub fn write_kubeconfig(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: emulator
  cluster:
    server: http://{addr}
contexts:
- name: emulator
  context:
    cluster: emulator
    user: emulator
    namespace: default
current-context: emulator
users:
- name: emulator
  user: {{}}
preferences: {{}}
"
    );
    std::fs::write(path, text)
}
