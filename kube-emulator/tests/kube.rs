//! kube 5 itself against the emulator: a typed client from the written kubeconfig, and
//! kube-runtime watchers (list+watch and streaming lists) recovering from dropped connections
//! and compaction.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use kube_emulator::Emulator;
use serde_json::{Value, json};

async fn client(addr: SocketAddr) -> Client {
    let dir = std::env::temp_dir().join(format!(
        "kube-emulator-kubeconfig-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    kube_emulator::write_kubeconfig(&path, addr).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&path).expect("reading the kubeconfig");
    std::fs::remove_dir_all(&dir).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("a config from the kubeconfig");
    assert_eq!(config.cluster_url.to_string(), format!("http://{addr}/"));
    Client::try_from(config).expect("a client")
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn api_code<T: std::fmt::Debug>(r: kube::Result<T>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn typed_client_round_trips() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        let c = client(addr).await;
        let v = c.apiserver_version().await.expect("/version");
        assert_eq!(v.major, "1");

        let nss: Api<Namespace> = Api::all(c.clone());
        nss.create(&PostParams::default(), &typed(namespace("a")))
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(c.clone(), "a");
        let created = pods
            .create(
                &PostParams::default(),
                &typed(pod("a", "web", json!({"app": "web"}))),
            )
            .await
            .unwrap();
        assert!(created.uid().is_some());
        assert_eq!(
            created.resource_version(),
            Some(emu.resource_version().to_string())
        );
        assert_eq!(created.namespace().as_deref(), Some("a"));
        pods.create(
            &PostParams::default(),
            &typed(pod("a", "db", json!({"app": "db"}))),
        )
        .await
        .unwrap();
        let l = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        assert_eq!(
            l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            ["web"]
        );
        assert_eq!(
            l.metadata.resource_version,
            Some(emu.resource_version().to_string())
        );
        let all: Api<Pod> = Api::all(c.clone());
        assert_eq!(
            all.list(&ListParams::default()).await.unwrap().items.len(),
            2
        );
        // Pagination through kube's own ListParams.
        let page = all.list(&ListParams::default().limit(1)).await.unwrap();
        assert_eq!(page.items.len(), 1);
        let token = page.metadata.continue_.clone().expect("a continue token");
        let rest = all
            .list(&ListParams::default().limit(1).continue_token(&token))
            .await
            .unwrap();
        assert_eq!(rest.items.len(), 1);
        assert_ne!(rest.items[0].name_any(), page.items[0].name_any());

        // Errors come back as kube::Error::Api with the real codes and reasons.
        assert_eq!(
            api_code(
                pods.create(&PostParams::default(), &typed(pod("a", "web", json!({}))))
                    .await
            ),
            (409, "AlreadyExists".into())
        );
        let ghost: Api<Pod> = Api::namespaced(c.clone(), "ghost");
        assert_eq!(
            api_code(
                ghost
                    .create(&PostParams::default(), &typed(pod("ghost", "p", json!({}))))
                    .await
            )
            .0,
            404
        );
        assert_eq!(api_code(pods.get("nope").await), (404, "NotFound".into()));

        let nps: Api<NetworkPolicy> = Api::namespaced(c.clone(), "a");
        let np = nps
            .create(&PostParams::default(), &typed(policy("a", "deny")))
            .await
            .unwrap();
        let got = nps.get("deny").await.unwrap();
        assert_eq!(
            got.spec.as_ref().unwrap().policy_types,
            Some(vec!["Ingress".to_string()])
        );
        let patched = nps
            .patch(
                "deny",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
            )
            .await
            .unwrap();
        assert_eq!(patched.labels().get("x").map(String::as_str), Some("1"));
        let patched = nps
            .patch(
                "deny",
                &PatchParams::default(),
                &Patch::Strategic(json!({"metadata": {"labels": {"y": "2"}}})),
            )
            .await
            .unwrap();
        assert_eq!(patched.labels().len(), 2);
        // np still carries the creation's resourceVersion: replacing with it is a conflict.
        assert_eq!(
            api_code(nps.replace("deny", &PostParams::default(), &np).await),
            (409, "Conflict".into())
        );
        let mut fresh = patched.clone();
        fresh.labels_mut().insert("z".into(), "3".into());
        let replaced = nps
            .replace("deny", &PostParams::default(), &fresh)
            .await
            .unwrap();
        assert_eq!(replaced.labels().len(), 3);
        let all_np: Api<NetworkPolicy> = Api::all(c.clone());
        assert_eq!(
            all_np
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        let deleted = nps.delete("deny", &DeleteParams::default()).await.unwrap();
        assert!(deleted.is_left(), "the deleted object comes back");
        assert!(nps.get_opt("deny").await.unwrap().is_none());

        // A plain Api::watch from a compacted resourceVersion gets the 410 ERROR event.
        let old = emu.resource_version();
        emu.create(policy("a", "later")).unwrap();
        emu.compact();
        let mut s = nps
            .watch(&WatchParams::default(), &old.to_string())
            .await
            .unwrap()
            .boxed();
        match s.try_next().await.unwrap() {
            Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
            other => panic!("expected a 410 ERROR event, got {other:?}"),
        }

        // Injected failures.
        emu.fail_next(1, 500);
        assert_eq!(
            api_code(pods.list(&ListParams::default()).await),
            (500, "InternalError".into())
        );
        assert!(pods.list(&ListParams::default()).await.is_ok());
        // kube's client retries a 429 (Retry-After: 1) by itself.
        let before = emu.stats();
        emu.fail_next(1, 429);
        assert!(pods.list(&ListParams::default()).await.is_ok());
        let after = emu.stats();
        assert_eq!(after.injected_failures, before.injected_failures + 1);
        assert_eq!(after.list_count("Pod"), before.list_count("Pod") + 1);
    });
}

#[test]
fn endpoint_slices_list_and_watch_with_kube() {
    in_netns(|_| async {
        let emu = Emulator::new();
        let addr = start(&emu).await;
        let c = client(addr).await;
        emu.create(namespace("default")).unwrap();
        let slice = |addr: &str| {
            typed::<EndpointSlice>(json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [addr]}],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
            }))
        };
        let api: Api<EndpointSlice> = Api::namespaced(c.clone(), "default");
        api.create(&PostParams::default(), &slice("192.0.2.10"))
            .await
            .unwrap();
        let all: Api<EndpointSlice> = Api::all(c);
        let l = all.list(&ListParams::default()).await.unwrap();
        assert_eq!(l.items.len(), 1);
        assert_eq!(
            l.items[0].endpoints.as_ref().unwrap()[0].addresses,
            ["192.0.2.10"]
        );
        let mut w = watcher(all, watcher::Config::default()).boxed();
        let mut seen = Vec::new();
        while let Some(ev) = w.try_next().await.unwrap() {
            match ev {
                watcher::Event::InitApply(o) => seen.push(o.name_any()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
        assert_eq!(seen, ["kubernetes"]);
        let mut moved = slice("192.0.2.11");
        moved.metadata.resource_version = None;
        api.replace("kubernetes", &PostParams::default(), &moved)
            .await
            .unwrap();
        loop {
            if let Some(watcher::Event::Apply(o)) = w.try_next().await.unwrap() {
                assert_eq!(o.endpoints.unwrap()[0].addresses, ["192.0.2.11"]);
                break;
            }
        }
        api.delete("kubernetes", &DeleteParams::default())
            .await
            .unwrap();
        loop {
            if let Some(watcher::Event::Delete(o)) = w.try_next().await.unwrap() {
                assert_eq!(o.name_any(), "kubernetes");
                break;
            }
        }
        assert!(emu.stats().watch_count("EndpointSlice") >= 1);
    });
}

fn keys(store: &Store<NetworkPolicy>) -> BTreeSet<String> {
    store
        .state()
        .iter()
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Runs a reflector over all NetworkPolicies; returns its store and a log of the watcher's
/// events (`Init`, `InitApply a/x`, `InitDone`, `Apply a/x`, `Delete a/x`, `Error ...`).
fn reflect(c: Client, config: watcher::Config) -> (Store<NetworkPolicy>, Arc<Mutex<Vec<String>>>) {
    let api: Api<NetworkPolicy> = Api::all(c);
    let (reader, writer) = reflector::store();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(e) = stream.next().await {
            let key = |p: &NetworkPolicy| {
                format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
            };
            let line = match e {
                Ok(watcher::Event::Init) => "Init".to_string(),
                Ok(watcher::Event::InitApply(p)) => format!("InitApply {}", key(&p)),
                Ok(watcher::Event::InitDone) => "InitDone".to_string(),
                Ok(watcher::Event::Apply(p)) => format!("Apply {}", key(&p)),
                Ok(watcher::Event::Delete(p)) => format!("Delete {}", key(&p)),
                Err(e) => format!("Error {e}"),
            };
            l.lock().unwrap().push(line);
        }
    });
    (reader, log)
}

fn count(log: &Mutex<Vec<String>>, what: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with(what))
        .count()
}

/// The scenario both watcher modes go through.
async fn watcher_recovers(streaming: bool) {
    let emu = Emulator::new();
    let addr = start(&emu).await;
    emu.set_bookmark_interval(Duration::from_millis(200));
    emu.create(namespace("a")).unwrap();
    emu.create(namespace("b")).unwrap();
    emu.create(policy("a", "one")).unwrap();
    emu.create(pod("a", "p", json!({}))).unwrap();
    // The first request fails: the watcher backs off and retries. (500: kube's client
    // retries 429, 503 and 504 itself.)
    emu.fail_next(1, 500);
    let c = client(addr).await;
    let config = if streaming {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default()
    };
    let (store, log) = reflect(c, config);
    let np = "networkpolicies";
    let watching = |emu: &Emulator| emu.stats().open_watch_count(np) == 1;

    wait_until(20, "the initial list", || {
        keys(&store) == set(&["a/one"]) && watching(&emu)
    })
    .await;
    assert_eq!(emu.stats().injected_failures, 1);
    assert!(
        log.lock().unwrap().iter().any(|l| l.starts_with("Error")),
        "{log:?}"
    );
    emu.create(policy("b", "two")).unwrap();
    wait_until(10, "an object created after the list", || {
        keys(&store) == set(&["a/one", "b/two"])
    })
    .await;

    // A dropped connection: the watcher watches again from where it was, without a list.
    let watches = emu.stats().watch_count(np);
    emu.drop_watches();
    wait_until(10, "a new watch", || {
        emu.stats().watch_count(np) > watches && watching(&emu)
    })
    .await;
    emu.create(policy("a", "three")).unwrap();
    wait_until(10, "an object created after the reconnect", || {
        keys(&store) == set(&["a/one", "a/three", "b/two"])
    })
    .await;
    let s = emu.stats();
    assert_eq!(s.lists_started(np), if streaming { 0 } else { 1 }, "{s:?}");
    assert_eq!(count(&log, "InitDone"), 1, "{log:?}");
    assert_eq!(s.expired_watches, 0);

    // Changes the watcher cannot see, then compaction: its resourceVersion is too old, it gets
    // a 410 and starts over. (Nothing awaits between these calls, so the watcher cannot catch
    // up in between: the runtime is single-threaded.)
    emu.set_bookmark_interval(Duration::from_secs(3600));
    emu.create(pod("a", "q", json!({}))).unwrap();
    emu.drop_watches();
    emu.delete("NetworkPolicy", Some("a"), "one").unwrap();
    emu.create(policy("b", "four")).unwrap();
    emu.apply(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "two", "namespace": "b", "labels": {"v": "2"}},
        "spec": {"podSelector": {}},
    }));
    emu.compact();
    wait_until(20, "the store after the re-list", || {
        keys(&store) == set(&["a/three", "b/four", "b/two"]) && count(&log, "InitDone") == 2
    })
    .await;
    let two = store
        .state()
        .into_iter()
        .find(|p| p.name_any() == "two")
        .unwrap();
    assert_eq!(two.labels().get("v").map(String::as_str), Some("2"));
    let s = emu.stats();
    assert!(s.expired_watches >= 1, "{s:?}");
    if streaming {
        assert_eq!(s.lists_started(np), 0, "{s:?}");
    } else {
        assert_eq!(s.lists_started(np), 2, "a second list after the 410: {s:?}");
    }
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("410") || l.contains("too old")),
        "{log:?}"
    );

    // And it keeps watching.
    wait_until(10, "watching again", || watching(&emu)).await;
    emu.create(policy("a", "five")).unwrap();
    wait_until(10, "an object created after the re-list", || {
        keys(&store).contains("a/five")
    })
    .await;
}

#[test]
fn list_watch_watcher_recovers_from_drops_and_compaction() {
    in_netns(|_| watcher_recovers(false));
}

#[test]
fn streaming_list_watcher_recovers_from_drops_and_compaction() {
    in_netns(|_| watcher_recovers(true));
}
