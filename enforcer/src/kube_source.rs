//! The Kubernetes API source (`enforcer run --source kube`): kube-runtime watchers for
//! Namespaces, Pods (of every node: peers need every pod address), NetworkPolicies, Services and
//! EndpointSlices (those labelled with their Service: the backends of Services without a
//! selector) feed one [`Store`] of validated, trimmed objects, which the agent reads as a [`Cluster`], as
//! it reads the manifests folder.
//!
//! - A (re-)list replaces the world of its kind: objects absent from the new list are gone.
//!   kube-runtime re-lists when a watch's resourceVersion has expired (410 Gone).
//! - Watch errors back off (kube-runtime's default backoff) and resume; each is counted by kind.
//! - An object that fails validation is reported with kind, name, field and reason; its last
//!   valid version (if any) keeps enforcing, exactly as with a bad manifest file.
//! - The store is ready once every kind has completed its first list.
//!
//! The [`Store`] is the pure core (events in, cluster out) and is tested without a server;
//! `enforcer/tests/kube_source.rs` runs the whole source against the API emulator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace as KNamespace, Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KEndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy as KPolicy;
use kube::api::DynamicObject;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher::watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::cluster_policy;
use crate::compiler::Cluster;
use crate::model::{
    InvalidObject, ObjectRef, SERVICE_NAME_LABEL, endpoint_slice_from_api, namespace_from_api,
    pod_from_api, policy_from_api, service_from_api,
};
use crate::source::Object;

/// The kinds the source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
        Kind::Node,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::AdminNetworkPolicy => "AdminNetworkPolicy",
            Kind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            Kind::Node => "Node",
        }
    }

    /// The custom resource a kind is served by (its CRD may be absent).
    pub fn custom(self) -> Option<crate::held_kinds::HeldKind> {
        let (version, plural) = match self {
            Kind::ClusterNetworkPolicy => ("v1alpha2", "clusternetworkpolicies"),
            Kind::AdminNetworkPolicy => ("v1alpha1", "adminnetworkpolicies"),
            Kind::BaselineAdminNetworkPolicy => ("v1alpha1", "baselineadminnetworkpolicies"),
            _ => return None,
        };
        Some(crate::held_kinds::HeldKind {
            group: enforcer_objects::policy_api::GROUP,
            version,
            kind: self.as_str(),
            plural,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One change of one object, as a watcher reports it (already validated).
#[derive(Debug)]
pub enum Change {
    /// A (re-)list starts: what follows up to `ListDone` is the whole world of this kind.
    ListStart,
    /// An object of the list in progress.
    Listed(Entry),
    /// The list is complete: it replaces the world of this kind.
    ListDone,
    /// Created or modified.
    Applied(Entry),
    /// Deleted (the entry carries the deletion's resourceVersion).
    Deleted { key: ObjectRef, rv: u64 },
    /// The API server does not serve the kind (its CRD is absent): no object of it exists,
    /// and the first sync need not wait for it.
    Absent,
}

/// An object as the store takes it: its key, its resourceVersion, and either its validated form
/// or why it was rejected.
#[derive(Debug)]
pub struct Entry {
    pub key: ObjectRef,
    pub rv: u64,
    pub object: Result<Object, InvalidObject>,
}

/// Counts for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindStats {
    pub lists: u64,
    pub events: u64,
    pub watch_errors: u64,
    pub invalid: u64,
    pub objects: usize,
    /// The highest resourceVersion seen in this kind (a watch delivers a kind's events in
    /// resourceVersion order, so every change of the kind up to it has been seen).
    pub resource_version: u64,
}

#[derive(Default)]
struct KindState {
    objects: BTreeMap<ObjectRef, Object>,
    /// Objects whose current version was rejected (their last valid version, if any, is in
    /// `objects`).
    invalid: BTreeMap<ObjectRef, String>,
    /// A list in progress.
    listing: Option<(BTreeMap<ObjectRef, Object>, BTreeMap<ObjectRef, String>)>,
    synced: bool,
    stats: KindStats,
}

/// The validated objects of every kind; the pure core of the source.
#[derive(Default)]
pub struct Store {
    kinds: [KindState; Kind::ALL.len()],
    /// The highest resourceVersion seen in any event.
    resource_version: u64,
    /// Bumped on every change that can alter the cluster.
    changes: u64,
}

impl Store {
    /// Applies one watcher change.
    pub fn apply(&mut self, kind: Kind, change: Change) {
        let k = &mut self.kinds[kind.index()];
        match change {
            Change::ListStart => {
                k.listing = Some(Default::default());
            }
            Change::Listed(e) => {
                self.resource_version = self.resource_version.max(e.rv);
                k.stats.resource_version = k.stats.resource_version.max(e.rv);
                let (objs, bad) = k.listing.get_or_insert_with(Default::default);
                match e.object {
                    Ok(o) => {
                        objs.insert(e.key, o);
                    }
                    Err(why) => {
                        k.stats.invalid += 1;
                        // A re-list keeps the last valid version of an object now invalid.
                        if let Some(old) = k.objects.get(&e.key) {
                            objs.insert(e.key.clone(), old.clone());
                        }
                        bad.insert(e.key, why.to_string());
                    }
                }
            }
            Change::ListDone => {
                let (objs, bad) = k.listing.take().unwrap_or_default();
                k.objects = objs;
                k.invalid = bad;
                k.synced = true;
                k.stats.lists += 1;
                self.changes += 1;
            }
            Change::Applied(e) => {
                k.stats.events += 1;
                self.resource_version = self.resource_version.max(e.rv);
                k.stats.resource_version = k.stats.resource_version.max(e.rv);
                match e.object {
                    Ok(o) => {
                        k.invalid.remove(&e.key);
                        k.objects.insert(e.key, o);
                    }
                    Err(why) => {
                        k.stats.invalid += 1;
                        k.invalid.insert(e.key, why.to_string());
                    }
                }
                self.changes += 1;
            }
            Change::Absent => {
                if !k.objects.is_empty() || !k.synced {
                    self.changes += 1;
                }
                k.objects.clear();
                k.invalid.clear();
                k.listing = None;
                k.synced = true;
            }
            Change::Deleted { key, rv } => {
                k.stats.events += 1;
                self.resource_version = self.resource_version.max(rv);
                k.stats.resource_version = k.stats.resource_version.max(rv);
                k.objects.remove(&key);
                k.invalid.remove(&key);
                self.changes += 1;
            }
        }
        k.stats.objects = k.objects.len();
    }

    pub fn watch_error(&mut self, kind: Kind) {
        self.kinds[kind.index()].stats.watch_errors += 1;
    }

    /// Every kind has completed its first list.
    pub fn synced(&self) -> bool {
        self.kinds.iter().all(|k| k.synced)
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Per kind, the highest resourceVersion seen.
    pub fn resource_versions(&self) -> BTreeMap<String, u64> {
        Kind::ALL
            .iter()
            .map(|k| {
                let rv = self.kinds[k.index()].stats.resource_version;
                (k.as_str().to_string(), rv)
            })
            .collect()
    }

    pub fn changes(&self) -> u64 {
        self.changes
    }

    pub fn stats(&self) -> BTreeMap<Kind, KindStats> {
        Kind::ALL
            .iter()
            .map(|k| (*k, self.kinds[k.index()].stats.clone()))
            .collect()
    }

    /// The cluster the valid objects make, and the rejections (kind, object, field, reason).
    pub fn cluster(&self) -> (Cluster, Vec<String>) {
        let mut c = Cluster::default();
        for k in &self.kinds {
            for o in k.objects.values() {
                c.insert(o.clone());
            }
        }
        (c, self.errors())
    }

    /// The rejections alone (kind, object, field, reason).
    pub fn errors(&self) -> Vec<String> {
        self.kinds
            .iter()
            .flat_map(|k| k.invalid.values().cloned())
            .collect()
    }
}

fn rv_of<K: Resource>(o: &K) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn key_of<K: Resource>(o: &K) -> ObjectRef {
    ObjectRef::new(o.namespace().unwrap_or_default(), o.name_any())
}

/// How each kind becomes an [`Object`].
trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;
    fn validate(&self) -> Result<Object, InvalidObject>;
    /// What of this kind the source needs (every object by default).
    fn config() -> watcher::Config {
        watcher::Config::default()
    }
}

impl Watched for KNamespace {
    const KIND: Kind = Kind::Namespace;
    fn validate(&self) -> Result<Object, InvalidObject> {
        namespace_from_api(self).map(Object::Namespace)
    }
}
impl Watched for KPod {
    const KIND: Kind = Kind::Pod;
    fn validate(&self) -> Result<Object, InvalidObject> {
        pod_from_api(self).map(Object::Pod)
    }
}
impl Watched for KPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
    fn validate(&self) -> Result<Object, InvalidObject> {
        policy_from_api(self).map(Object::Policy)
    }
}
impl Watched for k8s_openapi::api::core::v1::Node {
    const KIND: Kind = Kind::Node;
    fn validate(&self) -> Result<Object, InvalidObject> {
        crate::model::node_from_api(self).map(Object::Node)
    }
}
impl Watched for KService {
    const KIND: Kind = Kind::Service;
    fn validate(&self) -> Result<Object, InvalidObject> {
        service_from_api(self).map(Object::Service)
    }
}
impl Watched for KEndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;
    fn validate(&self) -> Result<Object, InvalidObject> {
        endpoint_slice_from_api(self).map(Object::EndpointSlice)
    }
    /// Only slices that belong to a Service (the compiler reads no other).
    fn config() -> watcher::Config {
        watcher::Config::default().labels(SERVICE_NAME_LABEL)
    }
}

fn entry<K: Watched>(o: &K) -> Entry {
    Entry {
        key: key_of(o),
        rv: rv_of(o),
        object: o.validate(),
    }
}

/// The running source: one watcher per kind writing into one store.
pub struct KubeSource {
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The custom resources of the next policy kinds: counted, not enforced, never waited for.
    held: crate::held_kinds::HeldKinds,
}

impl KubeSource {
    /// Starts the watchers (on the current tokio runtime).
    pub fn start(client: Client) -> Self {
        let store = Arc::new(Mutex::new(Store::default()));
        let changed = Arc::new(Notify::new());
        let tasks = vec![
            spawn_watch::<KNamespace>(Api::all(client.clone()), &store, &changed),
            spawn_watch::<KPod>(Api::all(client.clone()), &store, &changed),
            spawn_watch::<KPolicy>(Api::all(client.clone()), &store, &changed),
            spawn_watch::<KService>(Api::all(client.clone()), &store, &changed),
            spawn_watch::<KEndpointSlice>(Api::all(client.clone()), &store, &changed),
            spawn_watch::<k8s_openapi::api::core::v1::Node>(
                Api::all(client.clone()),
                &store,
                &changed,
            ),
            spawn_custom_watch(Kind::ClusterNetworkPolicy, &client, &store, &changed),
            spawn_custom_watch(Kind::AdminNetworkPolicy, &client, &store, &changed),
            spawn_custom_watch(Kind::BaselineAdminNetworkPolicy, &client, &store, &changed),
        ];
        let held = crate::held_kinds::HeldKinds::start(client, changed.clone());
        KubeSource {
            store,
            changed,
            tasks,
            held,
        }
    }

    /// Per held kind: `None` while its CRD is absent, else the objects held.
    pub fn held_kinds(&self) -> crate::held_kinds::Counts {
        self.held.counts()
    }

    /// Resolves when the store changed since the last call (changes coalesce).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("kube store lock")
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn spawn_watch<K: Watched>(
    api: Api<K>,
    store: &Arc<Mutex<Store>>,
    changed: &Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    let (store, changed) = (store.clone(), changed.clone());
    tokio::spawn(async move {
        let kind = K::KIND;
        let mut stream = watcher(api, K::config()).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            let change = match ev {
                Ok(Event::Init) => Change::ListStart,
                Ok(Event::InitApply(o)) => Change::Listed(entry(&o)),
                Ok(Event::InitDone) => Change::ListDone,
                Ok(Event::Apply(o)) => Change::Applied(entry(&o)),
                Ok(Event::Delete(o)) => Change::Deleted {
                    key: key_of(&o),
                    rv: rv_of(&o),
                },
                Err(e) => {
                    // The backoff wrapper waits and retries (a 410 re-lists).
                    warn!(kind = kind.as_str(), "watch: {e}");
                    store.lock().expect("kube store lock").watch_error(kind);
                    continue;
                }
            };
            let done = matches!(change, Change::ListDone);
            if let Change::Applied(Entry { object: Err(e), .. }) = &change {
                warn!("rejected (its last valid version keeps enforcing): {e}");
            }
            store.lock().expect("kube store lock").apply(kind, change);
            if done {
                info!(kind = kind.as_str(), "listed");
            }
            changed.notify_one();
        }
    })
}

/// A cluster-wide policy from the API server (not strict: a newer CRD may carry fields this
/// version does not know; a peer made only of such fields fails closed).
fn custom_entry(kind: Kind, o: &DynamicObject) -> Entry {
    let name = o.metadata.name.clone().unwrap_or_default();
    let rv = o
        .metadata
        .resource_version
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let invalid = |reason: String| InvalidObject {
        kind: kind.as_str(),
        object: name.clone(),
        field: "(object)".into(),
        reason,
    };
    let value = serde_json::to_value(o).map_err(|e| invalid(e.to_string()));
    let object = value.and_then(|v| match kind {
        Kind::ClusterNetworkPolicy => serde_json::from_value(v)
            .map_err(|e| invalid(e.to_string()))
            .and_then(|p| cluster_policy::from_cnp(&p)),
        Kind::AdminNetworkPolicy => serde_json::from_value(v)
            .map_err(|e| invalid(e.to_string()))
            .and_then(|p| cluster_policy::from_anp(&p)),
        _ => serde_json::from_value(v)
            .map_err(|e| invalid(e.to_string()))
            .and_then(|p| cluster_policy::from_banp(&p)),
    });
    Entry {
        key: ObjectRef::new(kind.as_str(), name.clone()),
        rv,
        object: object.map(Object::ClusterPolicy),
    }
}

/// Watches a kind served by a custom resource: while the API server answers 404 the kind is
/// absent (said once, looked for again from 1 s doubling to 30 s, and the first sync does not
/// wait for it); from the moment it is served, a watcher as for every kind.
fn spawn_custom_watch(
    kind: Kind,
    client: &Client,
    store: &Arc<Mutex<Store>>,
    changed: &Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    let (store, changed) = (store.clone(), changed.clone());
    let custom = kind.custom().expect("a custom kind");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &custom.resource());
    tokio::spawn(async move {
        crate::held_kinds::served(&custom, &api, || {
            warn!(
                crd = custom.crd_name(),
                "CRD absent: no {} exists until it is installed (the agent watches for it)",
                kind.as_str()
            );
            store
                .lock()
                .expect("kube store lock")
                .apply(kind, Change::Absent);
            changed.notify_one();
        })
        .await;
        info!(crd = custom.crd_name(), "watching {}", kind.as_str());
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = stream.next().await {
            let change = match ev {
                Ok(Event::Init) => Change::ListStart,
                Ok(Event::InitApply(o)) => Change::Listed(custom_entry(kind, &o)),
                Ok(Event::InitDone) => Change::ListDone,
                Ok(Event::Apply(o)) => Change::Applied(custom_entry(kind, &o)),
                Ok(Event::Delete(o)) => {
                    let e = custom_entry(kind, &o);
                    Change::Deleted {
                        key: e.key,
                        rv: e.rv,
                    }
                }
                Err(e) => {
                    warn!(kind = kind.as_str(), "watch: {e}");
                    store.lock().expect("kube store lock").watch_error(kind);
                    continue;
                }
            };
            if let Change::Applied(Entry { object: Err(e), .. }) = &change {
                warn!("rejected (its last valid version keeps enforcing): {e}");
            }
            store.lock().expect("kube store lock").apply(kind, change);
            changed.notify_one();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Namespace, implicit_namespace};

    fn ns(name: &str, rv: u64) -> Entry {
        Entry {
            key: ObjectRef::new("", name),
            rv,
            object: Ok(Object::Namespace(Namespace {
                ..implicit_namespace(name)
            })),
        }
    }

    fn bad(name: &str, rv: u64) -> Entry {
        Entry {
            key: ObjectRef::new("", name),
            rv,
            object: Err(InvalidObject {
                kind: "Namespace",
                object: name.into(),
                field: "metadata.labels".into(),
                reason: "bad".into(),
            }),
        }
    }

    fn names(s: &Store) -> Vec<String> {
        s.cluster().0.namespaces.keys().cloned().collect()
    }

    /// Objects from the API server are not decoded strictly: it validated them, and a newer
    /// one sends fields this k8s-openapi does not know. The same object from a file is refused.
    #[test]
    fn fields_a_newer_api_server_sends_are_accepted() {
        let policy = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x", "resourceVersion": "7"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {}}], "futurePeerField": true}],
                "futureSpecField": {"a": 1},
            },
        });
        // As the watcher reads it (kube deserializes the API's JSON into the k8s-openapi type).
        let typed: KPolicy = serde_json::from_value(policy.clone()).unwrap();
        let e = entry(&typed);
        assert_eq!(e.key, ObjectRef::new("x", "p"));
        assert!(matches!(e.object, Ok(Object::Policy(_))), "{:?}", e.object);
        let file = crate::source::parse_objects("p.json", &policy.to_string())
            .unwrap_err()
            .to_string();
        assert!(
            file.contains("spec.futureSpecField: unknown field"),
            "{file}"
        );
    }

    #[test]
    fn a_custom_kind_lists_like_any_once_its_crd_appears() {
        let cnp = |name: &str, rv: u64, action: &str| {
            let o: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "policy.networking.k8s.io/v1alpha2",
                "kind": "ClusterNetworkPolicy",
                "metadata": {"name": name, "resourceVersion": rv.to_string()},
                "spec": {"tier": "Admin", "priority": 3, "subject": {"namespaces": {}},
                         "ingress": [{"action": action, "from": [{"namespaces": {},
                                      "aFieldOfANewerCrd": true}]}]},
            }))
            .unwrap();
            custom_entry(Kind::ClusterNetworkPolicy, &o)
        };
        let mut s = Store::default();
        let k = Kind::ClusterNetworkPolicy;
        s.apply(k, Change::Absent);
        assert!(s.cluster().0.cluster_policies.is_empty());
        s.apply(k, Change::ListStart);
        s.apply(k, Change::Listed(cnp("a", 5, "Deny")));
        s.apply(k, Change::ListDone);
        let (c, errors) = s.cluster();
        assert!(errors.is_empty(), "{errors:?}");
        let key = ObjectRef::new("ClusterNetworkPolicy", "a");
        assert_eq!(c.cluster_policies[&key].priority, 3);
        // An invalid update keeps the last valid version and is reported with its field.
        s.apply(k, Change::Applied(cnp("a", 6, "Allow")));
        let (c, errors) = s.cluster();
        assert!(c.cluster_policies.contains_key(&key));
        assert!(
            errors[0].contains("spec.ingress[0].action") && errors[0].contains("Allow"),
            "{errors:?}"
        );
        assert_eq!(s.resource_versions()["ClusterNetworkPolicy"], 6);
    }

    #[test]
    fn relist_replaces_the_world_and_sync_needs_every_kind() {
        let mut s = Store::default();
        s.apply(Kind::Namespace, Change::ListStart);
        s.apply(Kind::Namespace, Change::Listed(ns("a", 3)));
        s.apply(Kind::Namespace, Change::Listed(ns("b", 4)));
        // Nothing of a list in progress is visible.
        assert!(names(&s).is_empty());
        s.apply(Kind::Namespace, Change::ListDone);
        assert_eq!(names(&s), ["a", "b"]);
        assert!(!s.synced());
        for k in [Kind::Pod, Kind::NetworkPolicy, Kind::Service, Kind::Node] {
            s.apply(k, Change::ListStart);
            s.apply(k, Change::ListDone);
        }
        // The cluster-wide policies' CRDs are absent: nothing to wait for.
        for k in [
            Kind::ClusterNetworkPolicy,
            Kind::AdminNetworkPolicy,
            Kind::BaselineAdminNetworkPolicy,
        ] {
            s.apply(k, Change::Absent);
        }
        // Not yet: the EndpointSlices have not listed.
        assert!(!s.synced());
        s.apply(Kind::EndpointSlice, Change::ListStart);
        s.apply(Kind::EndpointSlice, Change::ListDone);
        assert!(s.synced());
        s.apply(Kind::Namespace, Change::Applied(ns("c", 9)));
        s.apply(
            Kind::Namespace,
            Change::Deleted {
                key: ObjectRef::new("", "a"),
                rv: 10,
            },
        );
        assert_eq!(names(&s), ["b", "c"]);
        assert_eq!(s.resource_version(), 10);
        // A re-list (after 410) that no longer has b: b is gone.
        s.apply(Kind::Namespace, Change::ListStart);
        s.apply(Kind::Namespace, Change::Listed(ns("c", 9)));
        s.apply(Kind::Namespace, Change::Listed(ns("d", 12)));
        s.apply(Kind::Namespace, Change::ListDone);
        assert_eq!(names(&s), ["c", "d"]);
        assert_eq!(s.stats()[&Kind::Namespace].lists, 2);
    }

    #[test]
    fn invalid_update_keeps_last_valid_version() {
        let mut s = Store::default();
        s.apply(Kind::Namespace, Change::Applied(ns("a", 1)));
        s.apply(Kind::Namespace, Change::Applied(bad("a", 2)));
        let (c, errors) = s.cluster();
        assert!(c.namespaces.contains_key("a"));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("metadata.labels"), "{errors:?}");
        // Still invalid in a re-list: the last valid version stays, the error too.
        s.apply(Kind::Namespace, Change::ListStart);
        s.apply(Kind::Namespace, Change::Listed(bad("a", 2)));
        s.apply(Kind::Namespace, Change::Listed(bad("z", 3)));
        s.apply(Kind::Namespace, Change::ListDone);
        let (c, errors) = s.cluster();
        assert_eq!(c.namespaces.len(), 1);
        assert_eq!(errors.len(), 2);
        // Fixed: the error goes.
        s.apply(Kind::Namespace, Change::Applied(ns("a", 4)));
        assert_eq!(s.cluster().1.len(), 1);
        s.apply(
            Kind::Namespace,
            Change::Deleted {
                key: ObjectRef::new("", "z"),
                rv: 5,
            },
        );
        assert!(s.cluster().1.is_empty());
        assert_eq!(s.stats()[&Kind::Namespace].invalid, 3);
    }
}
