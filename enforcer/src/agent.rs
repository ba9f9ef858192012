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
use crate::compiler::{Cluster, Compiled, IdentityInfo, Ids, NodeInput, compile, plan};
use crate::discover;
use crate::model::ObjectRef;
use crate::source::{ManifestDir, summary};
use crate::state::MapState;

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub manifests: PathBuf,
    pub node: String,
    pub bpffs: PathBuf,
    pub status_file: Option<PathBuf>,
    pub events_file: Option<PathBuf>,
    /// Size at which the events file is rotated to `<file>.1`.
    pub events_max_bytes: u64,
    pub keep_pins: bool,
    pub allow_host_ingress: bool,
    pub events_on_allow: bool,
    /// Events per second each endpoint may emit after `event_burst` (0: no limit).
    pub event_rate: u32,
    pub event_burst: u32,
    /// How often interfaces are re-discovered.
    pub rescan: Duration,
}

/// What the agent reports in `--status-file` after every reconcile.
#[derive(Serialize)]
struct Status<'a> {
    generation: Option<u64>,
    ready: bool,
    error: Option<String>,
    revision: u32,
    endpoints: usize,
    node: &'a str,
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
        EventRecord {
            time_ns: e.timestamp_ns,
            unix_time_ns: monotonic_to_unix(e.timestamp_ns),
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

struct Agent {
    opts: AgentOptions,
    datapath: Datapath,
    source: ManifestDir,
    installed: MapState,
    ids: Ids,
    cluster: Cluster,
    /// The last directory generation whose content was installed.
    generation: Option<u64>,
    last_error: Option<String>,
    revision: u32,
    interfaces: BTreeMap<ObjectRef, u32>,
    host_ips: Vec<IpAddr>,
    names: Arc<Mutex<Names>>,
}

impl Agent {
    fn write_status(&self) {
        let Some(path) = &self.opts.status_file else {
            return;
        };
        let status = Status {
            generation: self.generation,
            ready: true,
            error: self.last_error.clone(),
            revision: self.revision,
            endpoints: self.installed.endpoints.len(),
            node: &self.opts.node,
        };
        let data = serde_json::to_vec(&status).expect("status serializes");
        if let Err(e) = write_atomic(path, &data) {
            warn!("cannot write status file: {e:#}");
        }
    }

    /// Reads the sources and the interfaces, and installs whatever changed.
    fn reconcile(&mut self, force: bool) -> Result<()> {
        let snap = self.source.read()?;
        let errors = snap.errors.join("; ");
        let source_changed = snap.changed;
        if source_changed {
            info!("manifests: {}", summary(&snap.cluster));
        }
        if !errors.is_empty() && Some(&errors) != self.last_error.as_ref() {
            error!("rejected manifests (last good state keeps enforcing): {errors}");
        }
        self.last_error = (!errors.is_empty()).then_some(errors);
        self.cluster = snap.cluster;

        let links = discover::links()?;
        let (names, host_ips) = (&links.names, links.host_ips.clone());
        let routes = discover::host_routes()?;
        let local = self
            .cluster
            .pods
            .values()
            .filter(|p| !p.host_network && p.node.as_deref() == Some(self.opts.node.as_str()));
        let interfaces = discover::match_pods(local.map(|p| (p.key(), &p.ips[..])), &routes, names);
        self.attach_host_interfaces(&links.host_ifindexes, &interfaces);

        if source_changed || force || interfaces != self.interfaces || host_ips != self.host_ips {
            self.install(interfaces, host_ips)?;
        }
        // The generation is reported once its snapshot is installed (or rejected).
        self.generation = snap.generation.or(self.generation);
        Ok(())
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

    fn install(
        &mut self,
        interfaces: BTreeMap<ObjectRef, u32>,
        host_ips: Vec<IpAddr>,
    ) -> Result<()> {
        let started = Instant::now();
        let node = NodeInput {
            node: self.opts.node.clone(),
            interfaces: interfaces.clone(),
            host_ips: host_ips.clone(),
            allow_host_ingress: self.opts.allow_host_ingress,
        };
        let compiled = compile(&self.cluster, &node, &mut self.ids, &self.installed);
        let desired = plan(&self.installed, &compiled, &mut self.ids);
        let diff = self.installed.diff(&desired);

        // Attach before the endpoint entry exists: an attached program with no entry passes
        // traffic as unmanaged, exactly as before the attach.
        let wanted: BTreeSet<u32> = interfaces.values().copied().collect();
        for ifindex in &wanted {
            self.datapath
                .attach(*ifindex)
                .with_context(|| format!("attaching to ifindex {ifindex}"))?;
        }
        if !diff.is_empty() {
            let flags = if self.opts.events_on_allow {
                enforcer_common::config_flags::EVENTS_ON_ALLOW
            } else {
                0
            };
            let done = self
                .datapath
                .install(&desired, self.revision + 1, flags)
                .context("installing map changes (the previous state keeps enforcing)")?;
            for e in &done.cleanup_errors {
                warn!("cleaning up after an install (the new state is in force): {e}");
            }
            self.revision += 1;
            self.installed = desired;
        }
        for ifindex in self.datapath.attached() {
            if !wanted.contains(&ifindex)
                && let Err(e) = self.datapath.detach(ifindex)
            {
                debug!("detach {ifindex}: {e:#}");
            }
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
            elapsed_us = started.elapsed().as_micros() as u64,
            "installed"
        );
        self.interfaces = interfaces;
        self.host_ips = host_ips;
        Ok(())
    }
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
            match writeln!(f, "{line}") {
                Ok(()) => self.written += line.len() as u64 + 1,
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
        if rec.verdict == "drop" {
            info!(target: "enforcer::events", "{line}");
        } else {
            debug!(target: "enforcer::events", "{line}");
        }
        if let Some(f) = out.as_mut() {
            f.write_line(&line);
        }
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(opts: AgentOptions) -> Result<()> {
    let mut datapath = Datapath::load(&opts.bpffs)
        .with_context(|| format!("loading the datapath (pins under {})", opts.bpffs.display()))?;
    let installed = datapath.read_state().context("reading the pinned maps")?;
    datapath
        .set_event_limits(opts.event_rate, opts.event_burst)
        .context("writing the event limits")?;
    // Continue the revision of the agent before us (pinned), so that conntrack entries it
    // admitted are re-checked under our first install rather than mistaken for current.
    let revision = datapath
        .config()
        .context("reading the pinned configuration")?
        .revision;
    let names = Arc::new(Mutex::new(Names::default()));

    let (ev_tx, ev_rx) = mpsc::channel(4096);
    datapath.spawn_event_reader(ev_tx)?;
    let events_task = tokio::spawn(write_events(
        ev_rx,
        opts.node.clone(),
        names.clone(),
        opts.events_file.clone(),
        opts.events_max_bytes,
    ));

    // Wake up as soon as a manifest changes; the periodic rescan catches interfaces.
    let (fs_tx, mut fs_rx) = mpsc::channel::<()>(16);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = fs_tx.try_send(());
        }
    })
    .context("creating the manifests watcher")?;
    watcher
        .watch(&opts.manifests, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", opts.manifests.display()))?;

    let mut agent = Agent {
        source: ManifestDir::new(&opts.manifests),
        opts: opts.clone(),
        datapath,
        installed,
        ids: Ids::default(),
        cluster: Cluster::default(),
        generation: None,
        last_error: None,
        revision,
        interfaces: BTreeMap::new(),
        host_ips: Vec::new(),
        names,
    };
    agent.reconcile(true)?;
    agent.write_status();
    info!(node = %opts.node, "ready");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(opts.rescan);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            Some(()) = fs_rx.recv() => {
                // Let a burst of writes settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while fs_rx.try_recv().is_ok() {}
                if let Err(e) = agent.reconcile(false) {
                    error!("reconcile: {e:#}");
                    agent.last_error = Some(format!("{e:#}"));
                }
                agent.write_status();
            }
            _ = tick.tick() => {
                if let Err(e) = agent.reconcile(false) {
                    error!("reconcile: {e:#}");
                    agent.last_error = Some(format!("{e:#}"));
                }
                agent.write_status();
            }
        }
    }
    info!("shutting down");
    drop(watcher);
    let keep = opts.keep_pins;
    agent.datapath.cleanup(keep)?;
    events_task.abort();
    Ok(())
}
