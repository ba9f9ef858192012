//! `enforcer run`: the node agent. One task owns the maps: it reads the sources, compiles,
//! installs the diff, and keeps the attachments in line with the local pods' interfaces.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use enforcer_common::{Event, direction, reason, verdict};
use notify::Watcher as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::bpf::Datapath;
use crate::compiler::{
    CapacityHold, Cluster, Compiled, IdentityInfo, Ids, NodeInput, compile, plan_with,
};
use crate::discover;
use crate::kube_source::KubeSource;
use crate::metrics::{self, Health, Metrics};

mod publish;
mod start;
use crate::model::ObjectRef;
use crate::source::{ManifestDir, summary};
use crate::state::MapState;

/// Where the agent reads cluster state from.
#[derive(Clone, Debug)]
pub enum SourceOptions {
    /// A folder of manifests, watched with inotify.
    Manifests(PathBuf),
    /// The Kubernetes API: a kubeconfig file, else the usual inference (KUBECONFIG,
    /// ~/.kube/config, in-cluster service account).
    Kube { kubeconfig: Option<PathBuf> },
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub source: SourceOptions,
    pub node: String,
    pub bpffs: PathBuf,
    pub status_file: Option<PathBuf>,
    pub events_file: Option<PathBuf>,
    /// Size at which the events file is rotated to `<file>.1`.
    pub events_max_bytes: u64,
    pub keep_pins: bool,
    pub allow_host_ingress: bool,
    pub events_on_allow: bool,
    /// Emit no events at all (verdicts are still counted).
    pub events_off: bool,
    /// Do not count packets and bytes per rule.
    pub no_rule_counters: bool,
    /// A flow's drops are reported once per this window.
    pub drop_report_window: Duration,
    /// Where the endpoint mark sits in `skb->mark` (`None`: no mark).
    pub endpoint_mark_shift: Option<u32>,
    /// How long a deferred Service verdict waits for its translated packet.
    pub service_defer: Duration,
    /// Deferred Service verdicts an endpoint may have outstanding per `service_defer`.
    pub service_defer_budget: u32,
    /// Events per second each endpoint may emit after `event_burst` (0: no limit).
    pub event_rate: u32,
    pub event_burst: u32,
    /// How often interfaces are re-discovered.
    pub rescan: Duration,
    /// How often the maps are compared with the desired state (drift is repaired and reported).
    pub resync: Duration,
    /// Serve `/healthz`, `/readyz` and `/metrics` here.
    pub health_addr: Option<std::net::SocketAddr>,
    /// Hold pod interfaces whose pod is not known yet fail-closed.
    pub default_deny_unknown: bool,
    /// Idle lifetimes of conntrack entries, by state.
    pub ct_lifetimes: crate::conntrack::Lifetimes,
    /// How often the conntrack garbage collector runs (its own thread).
    pub ct_gc_interval: Duration,
    /// `CT_ESTABLISHED` entries each interface may hold.
    pub ct_endpoint_budget: u32,
}

/// What the agent reports in `--status-file` after every reconcile.
#[derive(Serialize)]
struct Status<'a> {
    generation: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    resource_versions: &'a BTreeMap<String, u64>,
    ready: bool,
    error: Option<String>,
    revision: u32,
    endpoints: usize,
    node: &'a str,
    /// Endpoints held closed, named.
    held: Vec<HeldStatus>,
}

/// An endpoint held closed, as the status file names it.
#[derive(Serialize)]
struct HeldStatus {
    pod: String,
    reason: &'static str,
    /// Policy entries it needs (`endpoint-capacity`).
    entries: usize,
}

/// Names for the ids in events: who is who, as of the last compile.
#[derive(Default)]
pub struct Names {
    endpoints: BTreeMap<u32, ObjectRef>,
    isolated_by: BTreeMap<(u32, u8), Vec<ObjectRef>>,
    policies: BTreeMap<u32, ObjectRef>,
    identities: BTreeMap<u32, IdentityInfo>,
    pods_by_ip: BTreeMap<IpAddr, ObjectRef>,
}

impl Names {
    fn from_compiled(c: &Compiled, cluster: &Cluster) -> Self {
        let mut n = Names {
            policies: c.policies.clone(),
            identities: c.identities.clone(),
            ..Names::default()
        };
        for (id, ep) in &c.endpoints {
            n.endpoints.insert(*id, ep.pod.clone());
            n.isolated_by
                .insert((*id, direction::INGRESS), ep.ingress_policies.clone());
            n.isolated_by
                .insert((*id, direction::EGRESS), ep.egress_policies.clone());
        }
        for p in cluster.pods.values().filter(|p| !p.host_network) {
            for ip in &p.ips {
                n.pods_by_ip.entry(*ip).or_insert_with(|| p.key());
            }
        }
        n
    }
}

/// One datapath event, named, as written to `--events-file` (one JSON object per line) and read
/// back by `enforcer events`. Fields added later carry `serde(default)`, so readers take lines
/// of older agents.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// When the datapath saw the packet: RFC 3339 in UTC with its offset, to the nanosecond
    /// (`2026-12-02T18:31:07.123456789+00:00`).
    #[serde(default)]
    pub time: String,
    /// When the datapath saw the packet, in the kernel's monotonic clock.
    pub time_ns: u64,
    /// The same instant as wall-clock time (Unix epoch, nanoseconds).
    #[serde(default)]
    pub unix_time_ns: u64,
    pub node: String,
    pub endpoint: Option<String>,
    pub direction: String,
    pub verdict: String,
    pub reason: String,
    pub protocol: String,
    pub src: String,
    pub src_port: u16,
    pub dst: String,
    pub dst_port: u16,
    pub peer: Option<String>,
    /// For a peer outside the pods: the ipBlocks (of any policy on this node) its address is in.
    #[serde(default)]
    pub peer_blocks: Vec<String>,
    pub policy: Option<String>,
    pub rule: Option<u16>,
    /// The tier of the rule that decided: `Admin`, `NetworkPolicy` or `Baseline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// For drops by isolation: the policies that isolate the endpoint in this direction.
    #[serde(default)]
    pub isolated_by: Vec<String>,
}

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to Unix time, by the clocks' offset now.
pub fn monotonic_to_unix(mono_ns: u64) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    unix_now.saturating_sub(mono_now.saturating_sub(mono_ns))
}

pub fn addr_from_bytes(b: [u8; 16], family: u8) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(b);
    match (family, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

pub fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

impl EventRecord {
    pub fn from_event(e: &Event, node: &str, names: &Names) -> Self {
        let src = addr_from_bytes(e.saddr, e.family);
        let dst = addr_from_bytes(e.daddr, e.family);
        let peer_ip = if e.direction == direction::INGRESS {
            src
        } else {
            dst
        };
        let peer = names.pods_by_ip.get(&peer_ip).map(ObjectRef::to_string);
        let peer_blocks = match names.identities.get(&e.peer_cidr_identity) {
            Some(IdentityInfo::Cidr(blocks)) if e.peer_cidr_identity != 0 => blocks
                .iter()
                .map(|b| {
                    if b.except.is_empty() {
                        b.cidr.to_string()
                    } else {
                        let ex: Vec<String> = b.except.iter().map(|x| x.to_string()).collect();
                        format!("{} except {}", b.cidr, ex.join(","))
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        let isolated_by = if matches!(
            e.reason,
            reason::NO_RULE | reason::AUDIT_WOULD_DROP | reason::POLICY_REVOKED
        ) {
            names
                .isolated_by
                .get(&(e.endpoint_id, e.direction))
                .map(|v| v.iter().map(ObjectRef::to_string).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let unix_time_ns = monotonic_to_unix(e.timestamp_ns);
        EventRecord {
            time: crate::events::rfc3339_ns(unix_time_ns),
            time_ns: e.timestamp_ns,
            unix_time_ns,
            node: node.to_string(),
            endpoint: names
                .endpoints
                .get(&e.endpoint_id)
                .map(ObjectRef::to_string),
            direction: if e.direction == direction::INGRESS {
                "ingress"
            } else {
                "egress"
            }
            .into(),
            verdict: match e.verdict {
                verdict::ALLOW => "allow",
                verdict::AUDIT => "audit",
                _ => "drop",
            }
            .into(),
            reason: reason::name(e.reason).into(),
            protocol: protocol_name(e.proto),
            src: src.to_string(),
            src_port: u16::from_be(e.sport_be),
            dst: dst.to_string(),
            dst_port: u16::from_be(e.dport_be),
            peer,
            peer_blocks,
            policy: (e.policy_id != 0)
                .then(|| {
                    if e.policy_id == crate::compiler::POLICY_ID_HOST {
                        Some("<host>".to_string())
                    } else {
                        names.policies.get(&e.policy_id).map(ObjectRef::to_string)
                    }
                })
                .flatten(),
            rule: (e.policy_id != 0).then_some(e.rule_index),
            tier: (e.policy_id != 0
                && matches!(
                    e.tier,
                    enforcer_common::tier::ADMIN
                        | enforcer_common::tier::NETWORK_POLICY
                        | enforcer_common::tier::BASELINE
                ))
            .then(|| enforcer_common::tier::name(e.tier).to_string()),
            isolated_by,
        }
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// What one read of a source gives.
struct Read {
    /// The whole cluster, when it changed since the last read (else `None`).
    cluster: Option<Cluster>,
    errors: Vec<String>,
    /// Manifests: the `.generation` read; kube: the highest resourceVersion applied.
    generation: Option<u64>,
    /// Kube: the highest resourceVersion applied, per kind.
    resource_versions: BTreeMap<String, u64>,
    /// The source holds a complete view (kube: every kind listed once). Until then nothing is
    /// installed: an agent restarted under pinned maps keeps enforcing the last state instead of
    /// an empty one.
    complete: bool,
}

enum Source {
    Manifests {
        dir: ManifestDir,
        rx: mpsc::Receiver<()>,
        _watcher: notify::RecommendedWatcher,
    },
    Kube {
        src: KubeSource,
        seen: u64,
    },
}

impl Source {
    async fn open(opts: &SourceOptions) -> Result<Self> {
        match opts {
            SourceOptions::Manifests(dir) => {
                // A missing folder is said plainly (the watcher's own error names it twice).
                std::fs::read_dir(dir)
                    .with_context(|| format!("reading the manifests folder {}", dir.display()))?;
                // Wake up as soon as a manifest changes; the periodic rescan catches the rest.
                let (tx, rx) = mpsc::channel::<()>(16);
                let mut watcher =
                    notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                        if res.is_ok() {
                            let _ = tx.try_send(());
                        }
                    })
                    .context("creating the manifests watcher")?;
                watcher
                    .watch(dir, notify::RecursiveMode::NonRecursive)
                    .with_context(|| format!("watching {}", dir.display()))?;
                Ok(Source::Manifests {
                    dir: ManifestDir::new(dir),
                    rx,
                    _watcher: watcher,
                })
            }
            SourceOptions::Kube { kubeconfig } => {
                let config = match kubeconfig {
                    Some(path) => {
                        let kc = kube::config::Kubeconfig::read_from(path).with_context(|| {
                            format!("reading the kubeconfig {}", path.display())
                        })?;
                        kube::Config::from_custom_kubeconfig(kc, &Default::default())
                            .await
                            .with_context(|| format!("using the kubeconfig {}", path.display()))?
                    }
                    None => kube::Config::infer()
                        .await
                        .context("finding the Kubernetes API (in-cluster or KUBECONFIG)")?,
                };
                info!(api = %config.cluster_url, "kubernetes source");
                let client =
                    kube::Client::try_from(config).context("creating the Kubernetes client")?;
                Ok(Source::Kube {
                    src: KubeSource::start(client),
                    seen: u64::MAX,
                })
            }
        }
    }

    fn read(&mut self) -> Result<Read> {
        match self {
            Source::Manifests { dir, .. } => {
                let snap = dir.read()?;
                Ok(Read {
                    cluster: snap.changed.then_some(snap.cluster),
                    errors: snap.errors,
                    generation: snap.generation,
                    resource_versions: BTreeMap::new(),
                    complete: true,
                })
            }
            Source::Kube { src, seen } => {
                let store = src.store();
                let complete = store.synced();
                let changes = store.changes();
                // Until every kind has listed, nothing is taken (nor marked seen).
                let changed = complete && changes != *seen;
                if complete {
                    *seen = changes;
                }
                // Copying the whole store out is the costly part: only when it changed.
                let (cluster, errors) = if changed {
                    let (c, e) = store.cluster();
                    (Some(c), e)
                } else {
                    (None, store.errors())
                };
                Ok(Read {
                    cluster,
                    errors,
                    generation: complete.then(|| store.resource_version()),
                    resource_versions: if complete {
                        store.resource_versions()
                    } else {
                        BTreeMap::new()
                    },
                    complete,
                })
            }
        }
    }

    /// Resolves when the source may have changed.
    async fn changed(&mut self) {
        match self {
            Source::Manifests { rx, .. } => {
                if rx.recv().await.is_none() {
                    std::future::pending::<()>().await
                }
                // Let a burst of writes settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while rx.try_recv().is_ok() {}
            }
            Source::Kube { src, .. } => src.changed().await,
        }
    }

    /// Kube: the custom resources held, not enforced (see `held_kinds`).
    fn held_kinds(&self) -> BTreeMap<String, Option<usize>> {
        match self {
            Source::Kube { src, .. } => src
                .held_kinds()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            Source::Manifests { .. } => BTreeMap::new(),
        }
    }

    /// Copies the source's counters into the metrics.
    fn export(&self, m: &Metrics) {
        let Source::Kube { src, .. } = self else {
            return;
        };
        let mut invalid = 0;
        for (kind, st) in src.store().stats() {
            let k = kind.as_str().to_string();
            Metrics::set_counter(&m.errors, vec![("kind", k.clone())], st.watch_errors);
            Metrics::set_counter(
                &m.source_events,
                vec![("kind", k.clone()), ("type", "event".into())],
                st.events,
            );
            Metrics::set_counter(
                &m.source_events,
                vec![("kind", k), ("type", "list".into())],
                st.lists,
            );
            invalid += st.invalid;
        }
        Metrics::set_counter(&m.errors, vec![("kind", "invalid".into())], invalid);
    }
}

struct Agent {
    opts: AgentOptions,
    datapath: Datapath,
    source: Source,
    installed: MapState,
    ids: Ids,
    cluster: Cluster,
    /// The last directory generation whose content was installed.
    generation: Option<u64>,
    /// Kube: per kind, the highest resourceVersion installed (what a writer waits for: one
    /// kind's watch may lag behind another's).
    resource_versions: BTreeMap<String, u64>,
    last_error: Option<String>,
    revision: u32,
    interfaces: BTreeMap<ObjectRef, u32>,
    host_ips: Vec<IpAddr>,
    /// Interfaces held fail-closed (`--default-deny-unknown`).
    held: BTreeSet<u32>,
    /// Pod-like interfaces no known pod claims (attached early, see `reconcile`).
    unclaimed: BTreeSet<u32>,
    /// Interfaces held because their pod is ambiguous (`discover::Matched::conflicts`).
    conflicted: BTreeSet<u32>,
    /// The binding conflicts last reported (each is logged when it appears and when it goes).
    conflicts: Vec<crate::binding::Conflict>,
    /// The last install failed: the next pass installs again.
    install_failed: bool,
    /// The node's interfaces, routes, neighbours and bridge ports, as last read.
    tables: Option<discover::Tables>,
    /// Addresses recently solicited (neighbour resolution), and when.
    solicited: BTreeMap<IpAddr, Instant>,
    names: Arc<Mutex<Names>>,
    health: Arc<Health>,
    /// When the first change not yet in the maps was noticed (for the programming latency).
    noticed: Option<Instant>,
    /// Endpoints whose policy did not fit in the maps at the last install: held closed, and
    /// tried again every pass.
    capacity_held: Vec<CapacityHold>,
    /// Policy ids of the agent before us (`NAMES`), until the first complete source seeds
    /// `ids` (and the bindings) from the pins; then `None`.
    pinned_policies: Option<BTreeMap<u32, ObjectRef>>,
    /// Rule counter label sets on /metrics, so those of deleted policies can be removed.
    rule_labels: BTreeSet<Vec<(&'static str, String)>>,
    /// Entries the `POLICY` map holds (as the kernel says: pins keep their size).
    policy_capacity: u32,
    /// Warnings about events lost or held back, rate-limited.
    event_loss: crate::events::loss::LossWarnings,
    /// The lock and record that say this agent owns the pins (`enforcer status`).
    owner: Option<crate::status::record::Owner>,
    /// When this agent started (RFC 3339).
    started: String,
    /// Objects the source rejected at the last read, with the reason.
    rejected: Vec<String>,
    /// Cluster-wide policies tied on tier and priority over a common pod, as reported.
    priority_conflicts: Vec<String>,
}

impl Agent {
    fn write_status(&self) {
        self.publish();
        let Some(path) = &self.opts.status_file else {
            return;
        };
        let status = Status {
            generation: self.generation,
            resource_versions: &self.resource_versions,
            ready: self.health.ready(),
            error: self.last_error.clone(),
            revision: self.revision,
            endpoints: self.installed.endpoints.len(),
            node: &self.opts.node,
            held: self
                .capacity_held
                .iter()
                .map(|h| HeldStatus {
                    pod: h.pod.to_string(),
                    reason: reason::name(reason::ENDPOINT_CAPACITY),
                    entries: h.entries,
                })
                .collect(),
        };
        let data = serde_json::to_vec(&status).expect("status serializes");
        if let Err(e) = write_atomic(path, &data) {
            warn!("cannot write status file: {e:#}");
        }
    }

    /// Reads the source and (with `rediscover`, or the first time) the node's interfaces,
    /// routes, neighbours and bridge ports; installs whatever changed.
    fn reconcile(&mut self, force: bool, rediscover: bool) -> Result<()> {
        let snap = self.source.read()?;
        let errors = snap.errors.join("; ");
        if let Some(c) = &snap.cluster {
            self.noticed.get_or_insert_with(Instant::now);
            info!("cluster state: {}", summary(c));
        }
        if !errors.is_empty() && Some(&errors) != self.last_error.as_ref() {
            error!("rejected objects (their last valid state keeps enforcing): {errors}");
        }
        self.last_error = (!errors.is_empty()).then_some(errors);
        self.rejected = snap.errors;
        if !snap.complete {
            // Not everything is known yet: keep enforcing what the maps hold.
            return Ok(());
        }
        let changed = snap.cluster.is_some();
        if let Some(c) = snap.cluster {
            self.cluster = c;
        }
        if let Some(policies) = self.pinned_policies.take() {
            // A restart: take back the ids and bindings the pins hold, so nothing is renumbered
            // and a quiet bridge pod (no fresh neighbour or fdb entry) stays bound.
            self.interfaces =
                self.ids
                    .seed_from_pins(&self.cluster, &self.opts.node, &self.installed, &policies);
            info!(
                bound = self.interfaces.len(),
                "ids and interface bindings seeded from the pins"
            );
        }

        // The tables change only with links, addresses, routes and neighbours, which netlink
        // reports (and the periodic rescan re-reads); a source change alone reuses them.
        if rediscover || self.tables.is_none() {
            self.tables = Some(discover::read_tables().inspect_err(|_| {
                self.health.metrics.error("discovery");
            })?);
        }
        let tables = self.tables.as_ref().expect("tables read above");
        let host_ips = tables.links.host_ips.clone();
        let local = self
            .cluster
            .pods
            .values()
            .filter(|p| !p.host_network && p.node.as_deref() == Some(self.opts.node.as_str()));
        let matched = discover::match_endpoints(
            local.map(|p| (p.key(), &p.ips[..])),
            tables,
            &self.interfaces,
        );
        let conflicted = report_conflicts(&mut self.conflicts, &self.health, &matched.conflicts);
        let interfaces = matched.interfaces;
        // Pods behind a bridge whose address the node has not resolved yet: make the kernel
        // resolve it (at most every 2 s per address); the neighbour event brings us back.
        let now = Instant::now();
        self.solicited
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(2));
        let due: Vec<IpAddr> = matched
            .unresolved
            .iter()
            .copied()
            .filter(|ip| !self.solicited.contains_key(ip))
            .collect();
        if !due.is_empty() {
            discover::solicit(&due);
            self.solicited.extend(due.iter().map(|ip| (*ip, now)));
        }
        let host_ifindexes = tables.links.host_ifindexes.clone();
        let claimed: BTreeSet<u32> = interfaces.values().copied().collect();
        // Every pod-like interface no pod claims yet. Attached the moment it appears (attaching
        // costs the kernel two RCU grace periods, tens of milliseconds, so it is done before
        // the pod is known, not after); with --default-deny-unknown also held fail-closed.
        let unclaimed: BTreeSet<u32> = tables
            .links
            .pod_like()
            .difference(&claimed)
            .copied()
            .collect();
        let held = if self.opts.default_deny_unknown {
            unclaimed.difference(&conflicted).copied().collect()
        } else {
            BTreeSet::new()
        };
        self.attach_host_interfaces(&host_ifindexes, &interfaces);
        if changed
            || force
            || self.install_failed
            || interfaces != self.interfaces
            || host_ips != self.host_ips
            || held != self.held
            || unclaimed != self.unclaimed
            || !self.capacity_held.is_empty()
            || conflicted != self.conflicted
        {
            // A failed install (the previous state keeps enforcing) is tried again next pass,
            // even if nothing else changes.
            self.install_failed = true;
            let held_before = self.capacity_held.clone();
            self.install(
                interfaces.clone(),
                host_ips.clone(),
                held.clone(),
                unclaimed.clone(),
                conflicted.clone(),
            )?;
            if !self.capacity_held.is_empty() && self.capacity_held != held_before {
                // Endpoints newly held for room: the sets they used went with that install, so
                // their new ones may fit now (an install needs the old and the new set at once).
                self.install(interfaces, host_ips, held, unclaimed, conflicted)?;
            }
            self.install_failed = false;
        }
        // The generation is reported once its snapshot is installed (or rejected).
        self.generation = snap.generation.or(self.generation);
        if !snap.resource_versions.is_empty() {
            self.resource_versions = snap.resource_versions;
        }
        if let Some(t) = self.noticed.take() {
            self.health
                .metrics
                .programming_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        if !self.health.ready() {
            info!(node = %self.opts.node, "ready: the first full sync is in the maps");
            self.health.set_ready(true);
        }
        Ok(())
    }

    /// Compares the maps with the state this agent installed; repairs and reports any
    /// difference (another writer, a lost write).
    fn repair_drift(&mut self) -> Result<()> {
        if !self.health.ready() {
            return Ok(());
        }
        let actual = self.datapath.read_state().context("reading the maps")?;
        let drift = actual.diff(&self.installed);
        if drift.is_empty() {
            return Ok(());
        }
        warn!(
            entries = drift.len(),
            "drift: the maps differ from the desired state; repairing: {}",
            drift.summary()
        );
        self.datapath.reread().context("re-reading the maps")?;
        let done = self
            .datapath
            .install(&self.installed, self.revision + 1, self.flags())
            .context("repairing drift")?;
        for e in &done.cleanup_errors {
            warn!("cleaning up after the repair: {e}");
        }
        self.revision = done.revision;
        self.health
            .metrics
            .drift_repaired
            .inc_by(drift.len() as u64);
        Ok(())
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.opts.events_on_allow {
            f |= enforcer_common::config_flags::EVENTS_ON_ALLOW;
        }
        if self.opts.events_off {
            f |= enforcer_common::config_flags::EVENTS_OFF;
        }
        if self.opts.default_deny_unknown {
            f |= enforcer_common::config_flags::DENY_UNKNOWN;
        }
        if self.opts.no_rule_counters {
            f |= enforcer_common::config_flags::RULE_COUNTERS_OFF;
        }
        f
    }

    /// Reports the endpoints held because their policy does not fit (log, /metrics; the status
    /// file and events name them too), when that changes.
    fn report_capacity(&mut self, held: Vec<CapacityHold>) {
        if held != self.capacity_held {
            for h in &held {
                error!(
                    pod = %h.pod,
                    ifindex = h.ifindex,
                    entries = h.entries,
                    "held closed: its policy does not fit in the {} and {} maps ({} entries \
                     together); every other endpoint keeps installing",
                    enforcer_common::names::MAP_POLICY,
                    enforcer_common::names::MAP_POLICY_TIERS,
                    self.policy_capacity
                );
            }
            if held.is_empty() && !self.capacity_held.is_empty() {
                info!("every endpoint's policy fits again");
            }
        }
        self.health
            .metrics
            .endpoints_held
            .get_or_create(&vec![(
                "reason",
                reason::name(reason::ENDPOINT_CAPACITY).to_string(),
            )])
            .set(held.len() as i64);
        self.capacity_held = held;
    }

    /// Copies map sizes and the kernel's counters into the metrics.
    fn export_metrics(&mut self) {
        let m = &self.health.metrics;
        if let Ok(rules) = self.datapath.rule_counters() {
            let names = self.names.lock().expect("names lock");
            let mut seen = BTreeSet::new();
            for (k, v) in rules {
                let Some(policy) = names.policies.get(&k.policy_id) else {
                    continue;
                };
                let tier = self
                    .cluster
                    .cluster_policies
                    .get(policy)
                    .map(|p| p.tier.to_string())
                    .unwrap_or_else(|| "NetworkPolicy".to_string());
                let labels = vec![
                    ("tier", tier),
                    ("policy", policy.to_string()),
                    ("rule", k.rule_index.to_string()),
                    (
                        "direction",
                        if k.direction == direction::INGRESS {
                            "ingress"
                        } else {
                            "egress"
                        }
                        .to_string(),
                    ),
                ];
                Metrics::set_counter(&m.rule_packets, labels.clone(), v.packets);
                Metrics::set_counter(&m.rule_bytes, labels.clone(), v.bytes);
                seen.insert(labels);
            }
            // Label sets of deleted policies (their kernel counters are pruned) go too.
            for gone in self.rule_labels.difference(&seen) {
                m.rule_packets.remove(gone);
                m.rule_bytes.remove(gone);
            }
            drop(names);
            self.rule_labels = seen;
        }
        self.source.export(m);
        m.set_map_entries("endpoints", self.installed.endpoints.len());
        m.set_map_entries("ip_identity", self.installed.ip_identity.len());
        m.set_map_entries("cidr_identity", self.installed.cidr_identity.len());
        m.set_map_entries("policy", self.installed.policy.len());
        m.set_map_entries("service_ips", self.installed.service_ips.len());
        if let Ok(counters) = self.datapath.counters() {
            for (i, n) in counters.iter().enumerate() {
                let name = if i < reason::COUNT {
                    reason::name(i as u8)
                } else {
                    enforcer_common::counter::name(i as u32)
                };
                if name == "unknown" {
                    continue;
                }
                Metrics::set_counter(&m.datapath, vec![("reason", name.to_string())], *n);
            }
            let count = |c: u32| counters.get(c as usize).copied().unwrap_or(0);
            if let Some(w) = self.event_loss.observe(
                count(enforcer_common::counter::EVENTS_LOST),
                count(enforcer_common::counter::EVENTS_SUPPRESSED),
                Instant::now(),
            ) {
                warn!("{w}");
            }
        }
    }

    /// Keeps `to_network` on the node's own interfaces (never on a pod's), where flows sent to
    /// Service addresses are judged after the DNAT. Failures are logged, not fatal: without it
    /// only Service egress of isolated pods is affected, and the next pass retries.
    fn attach_host_interfaces(&mut self, host: &[u32], pods: &BTreeMap<ObjectRef, u32>) {
        let pod_ifs: BTreeSet<u32> = pods.values().copied().collect();
        let wanted: BTreeSet<u32> = host
            .iter()
            .copied()
            .filter(|i| !pod_ifs.contains(i))
            .collect();
        for ifindex in &wanted {
            if let Err(e) = self.datapath.attach_host(*ifindex) {
                warn!("attaching to_network to ifindex {ifindex}: {e:#}");
            }
        }
        for ifindex in self.datapath.host_attached() {
            if !wanted.contains(&ifindex)
                && let Err(e) = self.datapath.detach_host(ifindex)
            {
                debug!("detach to_network {ifindex}: {e:#}");
            }
        }
    }

    /// Says (once per change) which cluster-wide policies tie on tier and priority over a
    /// common pod, and in which order they are evaluated.
    fn report_conflicts(&mut self, conflicts: &BTreeSet<crate::compiler::Conflict>) {
        let now: Vec<String> = conflicts
            .iter()
            .map(|c| {
                format!(
                    "{} and {} share priority {} in the {} tier (both select {}): {} is \
                     evaluated first",
                    c.first, c.second, c.priority, c.tier, c.pod, c.first
                )
            })
            .collect();
        if now != self.priority_conflicts {
            for c in now.iter().filter(|c| !self.priority_conflicts.contains(c)) {
                warn!("priority conflict: {c}");
            }
            self.priority_conflicts = now;
        }
    }

    fn install(
        &mut self,
        interfaces: BTreeMap<ObjectRef, u32>,
        host_ips: Vec<IpAddr>,
        held: BTreeSet<u32>,
        unclaimed: BTreeSet<u32>,
        conflicted: BTreeSet<u32>,
    ) -> Result<()> {
        let started = Instant::now();
        let node = NodeInput {
            held: held.clone(),
            conflicted: conflicted.clone(),
            node: self.opts.node.clone(),
            interfaces: interfaces.clone(),
            host_ips: host_ips.clone(),
            allow_host_ingress: self.opts.allow_host_ingress,
        };
        let compiled = compile(&self.cluster, &node, &mut self.ids, &self.installed);
        let planned = plan_with(
            &self.installed,
            &compiled,
            &mut self.ids,
            self.policy_capacity as usize,
        );
        let desired = planned.state;
        self.report_capacity(planned.held);
        self.report_conflicts(&compiled.conflicts);
        let diff = self.installed.diff(&desired);
        let compiled_us = started.elapsed().as_micros() as u64;

        // Attach before the endpoint entry exists: an attached program with no entry passes
        // traffic as unmanaged, exactly as before the attach.
        let wanted: BTreeSet<u32> = interfaces.values().chain(&unclaimed).copied().collect();
        for ifindex in interfaces.values().chain(&conflicted) {
            self.datapath
                .attach(*ifindex)
                .with_context(|| format!("attaching to ifindex {ifindex}"))?;
        }
        for ifindex in &unclaimed {
            // Not a pod's yet (it may even be gone already): a failure waits for the next pass.
            if let Err(e) = self.datapath.attach(*ifindex) {
                debug!("attaching early to ifindex {ifindex}: {e:#}");
            }
        }
        let attached_us = started.elapsed().as_micros() as u64;
        if !diff.is_empty() {
            let done = self
                .datapath
                .install(&desired, self.revision + 1, self.flags())
                .context("installing map changes (the previous state keeps enforcing)")?;
            for e in &done.cleanup_errors {
                warn!("cleaning up after an install (the new state is in force): {e}");
            }
            self.revision = done.revision;
            self.installed = desired;
            self.health.metrics.syncs.inc();
        }
        for ifindex in self.datapath.attached() {
            if !wanted.contains(&ifindex)
                && let Err(e) = self.datapath.detach(ifindex)
            {
                debug!("detach {ifindex}: {e:#}");
            }
        }
        if let Err(e) = self
            .datapath
            .set_endpoint_event_limits(&compiled.event_limits)
        {
            warn!("writing per-policy event limits: {e:#}");
        }
        // Forget the ids of what is gone (keeping what the maps may still hold).
        self.ids
            .retain_live(&self.cluster, &compiled, &self.installed);
        let live: BTreeSet<u32> = compiled.policies.keys().copied().collect();
        if let Err(e) = self.datapath.prune_rule_counters(|id| live.contains(&id)) {
            debug!("pruning rule counters: {e:#}");
        }
        *self.names.lock().expect("names lock") = Names::from_compiled(&compiled, &self.cluster);
        // Published for `maps dump` and other readers of the pins; not needed for verdicts.
        if let Err(e) = self.datapath.set_names(&crate::dump::names_of(&compiled)) {
            warn!("publishing names: {e:#}");
        }
        info!(
            writes = diff.len(),
            endpoints = interfaces.len(),
            policy_entries = self.installed.policy.len(),
            compiled_us,
            attached_us,
            elapsed_us = started.elapsed().as_micros() as u64,
            "installed"
        );
        self.interfaces = interfaces;
        self.host_ips = host_ips;
        self.held = held;
        self.unclaimed = unclaimed;
        self.conflicted = conflicted;
        Ok(())
    }
}

/// Logs binding conflicts as they appear and go, counts them on `/metrics`, and returns the
/// interfaces to hold for them.
fn report_conflicts(
    last: &mut Vec<crate::binding::Conflict>,
    health: &Health,
    now: &[crate::binding::Conflict],
) -> BTreeSet<u32> {
    if now != last.as_slice() {
        for c in now.iter().filter(|c| !last.contains(c)) {
            let pods: Vec<String> = c.pods.iter().map(|p| p.to_string()).collect();
            warn!(
                pods = %pods.join(" "),
                interfaces = ?c.ifindexes,
                "endpoint conflict, held fail-closed (endpoint-conflict) until it is resolved: {c}"
            );
            health.metrics.endpoint_conflicts_total.inc();
        }
        for c in last.iter().filter(|c| !now.contains(c)) {
            let pods: Vec<String> = c.pods.iter().map(|p| p.to_string()).collect();
            info!(
                pods = %pods.join(" "),
                interfaces = ?c.ifindexes,
                "endpoint conflict resolved: the interfaces are bound again"
            );
        }
        *last = now.to_vec();
    }
    let held: BTreeSet<u32> = now
        .iter()
        .flat_map(|c| c.ifindexes.iter().copied())
        .collect();
    health.metrics.endpoint_conflicts.set(held.len() as i64);
    health
        .metrics
        .endpoints_held
        .get_or_create(&vec![(
            "reason",
            reason::name(reason::ENDPOINT_CONFLICT).to_string(),
        )])
        .set(held.len() as i64);
    held
}

/// The events file: appended to, rotated to `<file>.1` by size so log shippers can follow it.
struct EventsFile {
    path: PathBuf,
    max_bytes: u64,
    file: Option<std::fs::File>,
    written: u64,
}

impl EventsFile {
    fn open(path: PathBuf, max_bytes: u64) -> Self {
        let mut f = EventsFile {
            path,
            max_bytes,
            file: None,
            written: 0,
        };
        f.reopen();
        f
    }

    fn reopen(&mut self) {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            Ok(file) => {
                self.written = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(file);
            }
            Err(e) => {
                error!("cannot open events file {}: {e}", self.path.display());
                self.file = None;
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        if self.written + line.len() as u64 + 1 > self.max_bytes && self.written > 0 {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            if let Err(e) = std::fs::rename(&self.path, &old) {
                warn!("rotating the events file: {e}");
            }
            self.reopen();
        }
        if let Some(f) = self.file.as_mut() {
            // One write per line (O_APPEND): a reader never sees two lines interleaved.
            let mut buf = String::with_capacity(line.len() + 1);
            buf.push_str(line);
            buf.push('\n');
            match f.write_all(buf.as_bytes()) {
                Ok(()) => self.written += buf.len() as u64,
                Err(e) => warn!("events file: {e}"),
            }
        }
    }
}

async fn write_events(
    mut rx: mpsc::Receiver<Event>,
    node: String,
    names: Arc<Mutex<Names>>,
    file: Option<PathBuf>,
    max_bytes: u64,
) {
    let mut out = file.map(|p| EventsFile::open(p, max_bytes));
    while let Some(e) = rx.recv().await {
        let rec = EventRecord::from_event(&e, &node, &names.lock().expect("names lock"));
        let line = serde_json::to_string(&rec).expect("event serializes");
        // Events go to the events file (`enforcer events`), not the log: a line per event
        // would flood it. Without a file they can be seen at debug level.
        match out.as_mut() {
            Some(f) => f.write_line(&line),
            None => debug!(target: "enforcer::events", "{line}"),
        }
    }
}

/// The next batch of netlink changes; never, without a subscription.
async fn next_netlink(
    sub: &mut Option<crate::netlink::Subscription>,
) -> std::io::Result<Vec<crate::netlink::Change>> {
    match sub {
        Some(s) => s.next_batch().await,
        None => std::future::pending().await,
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: AgentOptions) -> Result<()> {
    let health = Health::new(opts.rescan.max(Duration::from_secs(1)) * 20);
    health.turned();
    // Health first: a liveness probe must see the process while it waits for the API.
    let server = match opts.health_addr {
        Some(addr) => Some(metrics::serve(addr, health.clone()).await?),
        None => None,
    };
    if opts.bpffs.starts_with("/sys/fs/bpf") {
        // A node where nothing mounted bpffs yet (no systemd): pins under a plain directory
        // would fail with a puzzling error, so mount it, as Cilium's agent does.
        enforcer_lab::agent::ensure_bpffs().context("the pin folder needs a bpf filesystem")?;
    }
    // The lock that says an agent owns these pins (`enforcer status`, `maps dump`): an agent
    // shutting down has a moment to let go; one that keeps running is not shared with.
    let run_dir = crate::status::record::dir();
    let owner =
        match crate::status::record::Owner::claim(&run_dir, &opts.bpffs, Duration::from_secs(15)) {
            Ok(o) => Some(o),
            Err(e) if crate::status::record::probe(&run_dir, &opts.bpffs).is_live() => {
                return Err(e);
            }
            Err(e) => {
                warn!("no agent record ({e:#}): `enforcer status` will not see this agent");
                None
            }
        };
    // What the pin folder held before us: a start that fails removes what it made, and only
    // that (an earlier agent's pins, left with --keep-pins, keep enforcing).
    let before = crate::bpf::PinSnapshot::take(&opts.bpffs);
    let datapath = match Datapath::load(&opts.bpffs) {
        Ok(d) => d,
        Err(e) => {
            before.remove_new();
            if let Some(o) = owner {
                o.remove(true);
            }
            return Err(anyhow::Error::new(e).context(format!(
                "loading the datapath (pins under {})",
                opts.bpffs.display()
            )));
        }
    };
    let (mut agent, events_task, mut netlink) = match start::start(&opts, datapath, &health).await {
        Ok(started) => started,
        Err((e, datapath)) => {
            datapath.abandon(&before);
            // Our lock goes; a record an earlier agent left still names its pins.
            if let Some(o) = owner {
                o.remove(true);
            }
            if before.takeover() {
                warn!(
                    "the start failed; the pins found under {} stay",
                    opts.bpffs.display()
                );
            }
            return Err(e);
        }
    };
    agent.owner = owner;
    agent.write_status();
    info!(node = %opts.node, "started");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(opts.rescan);
    let mut resync = tokio::time::interval(opts.resync);
    resync.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            () = agent.source.changed() => {
                if let Err(e) = agent.reconcile(false, false) {
                    error!("reconcile: {e:#}");
                    agent.health.metrics.error("install");
                    agent.last_error = Some(format!("{e:#}"));
                }
                agent.write_status();
            }
            batch = next_netlink(&mut netlink) => {
                match batch {
                    Ok(_) => {
                        // A burst (a CNI setting up a pod) settles into one pass.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        if let Err(e) = agent.reconcile(false, true) {
                            error!("reconcile: {e:#}");
                            agent.health.metrics.error("install");
                            agent.last_error = Some(format!("{e:#}"));
                        }
                        agent.write_status();
                    }
                    Err(e) => {
                        warn!("netlink: {e}; falling back to the periodic rescan");
                        netlink = None;
                    }
                }
            }
            _ = tick.tick() => {
                if let Err(e) = agent.reconcile(false, true) {
                    error!("reconcile: {e:#}");
                    agent.health.metrics.error("install");
                    agent.last_error = Some(format!("{e:#}"));
                }
                agent.export_metrics();
                agent.write_status();
            }
            _ = resync.tick() => {
                if let Err(e) = agent.repair_drift() {
                    error!("resync: {e:#}");
                    agent.health.metrics.error("resync");
                }
            }
        }
        health.turned();
    }
    info!("shutting down");
    let keep = opts.keep_pins;
    drop(agent.source);
    if let Some(owner) = agent.owner.take() {
        owner.remove(keep);
    }
    agent.datapath.cleanup(keep)?;
    events_task.abort();
    if let Some(s) = server {
        s.abort();
    }
    Ok(())
}
