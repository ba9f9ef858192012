//! The custom resources of the next policy kinds (Calico's HostEndpoint and GlobalNetworkPolicy
//! of `crd.projectcalico.org`; `deploy/crds/`): watched and counted, not yet enforced, so that
//! `enforcer status` says plainly what this version holds and ignores. (The cluster-wide
//! policies of `policy.networking.k8s.io` are enforced: `kube_source` watches them, the same
//! way when their CRD is absent.)
//!
//! A cluster may lack any of these CRDs. The agent must not wait for them (the first sync needs
//! only the built-in kinds), says once that one is absent, polls for it with backoff, and
//! watches it from the moment the API server serves it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::Notify;
use tracing::{info, warn};

/// One custom resource kind the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl HeldKind {
    /// `plural.group`, the CRD's name.
    pub fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    pub fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: format!("{}/{}", self.group, self.version),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

pub const KINDS: [HeldKind; 2] = [
    HeldKind {
        group: "crd.projectcalico.org",
        version: "v1",
        kind: "HostEndpoint",
        plural: "hostendpoints",
    },
    HeldKind {
        group: "crd.projectcalico.org",
        version: "v1",
        kind: "GlobalNetworkPolicy",
        plural: "globalnetworkpolicies",
    },
];

/// Per kind: `None` while its CRD is absent, else how many objects the agent holds.
pub type Counts = BTreeMap<&'static str, Option<usize>>;

/// The wait before the next look for an absent CRD: doubling from 1 s to 30 s.
pub fn next_delay(d: Duration) -> Duration {
    (d * 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The watchers of every held kind; they end when dropped.
pub struct HeldKinds {
    counts: Arc<Mutex<Counts>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HeldKinds {
    /// Starts one task per kind; `changed` is notified when a count changes.
    pub fn start(client: kube::Client, changed: Arc<Notify>) -> HeldKinds {
        let counts = Arc::new(Mutex::new(KINDS.iter().map(|k| (k.kind, None)).collect()));
        let tasks = KINDS
            .iter()
            .map(|k| {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &k.resource());
                tokio::spawn(watch(*k, api, counts.clone(), changed.clone()))
            })
            .collect();
        HeldKinds { counts, tasks }
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().expect("held kinds lock").clone()
    }
}

impl Drop for HeldKinds {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn set(counts: &Mutex<Counts>, kind: &'static str, n: Option<usize>, changed: &Notify) {
    let mut c = counts.lock().expect("held kinds lock");
    if c.get(kind) != Some(&n) {
        c.insert(kind, n);
        changed.notify_one();
    }
}

/// Returns once the API server serves `kind`. While it answers 404 the CRD is absent:
/// `absent` runs once (it says so), and the kind is looked for again, 1 s doubling to 30 s.
pub async fn served(kind: &HeldKind, api: &Api<DynamicObject>, mut absent: impl FnMut()) {
    let mut delay = Duration::ZERO;
    let mut said = false;
    loop {
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                if !said {
                    absent();
                    said = true;
                }
            }
            Err(e) => warn!(kind = kind.kind, "looking for the CRD: {e}"),
        }
        delay = next_delay(delay);
        tokio::time::sleep(delay).await;
    }
}

/// Waits until the API server serves `kind` (saying once that its CRD is absent), then
/// watches it, keeping the number of objects.
async fn watch(
    kind: HeldKind,
    api: Api<DynamicObject>,
    counts: Arc<Mutex<Counts>>,
    changed: Arc<Notify>,
) {
    served(&kind, &api, || {
        warn!(
            crd = kind.crd_name(),
            "CRD absent: {} objects are ignored until it is installed (the agent watches for it)",
            kind.kind
        )
    })
    .await;
    info!(
        crd = kind.crd_name(),
        "watching {} (held, not enforced by this version)", kind.kind
    );
    set(&counts, kind.kind, Some(0), &changed);
    let mut names = std::collections::BTreeSet::new();
    let mut listing = std::collections::BTreeSet::new();
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(ev) = stream.next().await {
        let name = |o: &DynamicObject| o.metadata.name.clone().unwrap_or_default();
        match ev {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(o)) => {
                listing.insert(name(&o));
            }
            Ok(Event::InitDone) => names = std::mem::take(&mut listing),
            Ok(Event::Apply(o)) => {
                names.insert(name(&o));
            }
            Ok(Event::Delete(o)) => {
                names.remove(&name(&o));
            }
            Err(e) => {
                warn!(kind = kind.kind, "watch: {e}");
                continue;
            }
        }
        set(&counts, kind.kind, Some(names.len()), &changed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_crds_are_looked_for_less_and_less_often() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..8 {
            d = next_delay(d);
            seen.push(d.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn the_kinds_are_those_of_deploy_crds() {
        let crds = [
            include_str!("../../deploy/crds/policy.networking.k8s.io.yaml"),
            include_str!("../../deploy/crds/crd.projectcalico.org.yaml"),
        ]
        .concat();
        for k in KINDS {
            assert!(
                crds.contains(&format!("name: {}", k.crd_name())),
                "{} in deploy/crds",
                k.crd_name()
            );
            assert!(crds.contains(&format!("kind: {}", k.kind)), "{}", k.kind);
            assert!(
                crds.contains(&format!("name: {}", k.version)),
                "{} {}",
                k.kind,
                k.version
            );
        }
    }
}
