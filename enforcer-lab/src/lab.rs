//! One run of a scenario: build, start the agents, probe step by step, tear down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentSource, ensure_bpffs};
use crate::api::{Api, Mark};
use crate::manifests::{ClusterState, ManifestWriter};
use crate::netns::{self, Netns};
use crate::plan::{Changes, Ep, Plan, ProbePlan};
use crate::report::{ProbeResult, Report, StepResult, match_events};
use crate::runs;
use crate::scenario::Protocol;
use crate::services;
use crate::traffic;

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct Options {
    pub probe_timeout: Duration,
    pub agent_timeout: Duration,
    pub parallel: usize,
    /// Keep the run folder (manifests, agent logs, events) after the run.
    pub keep_files: bool,
    /// Print progress to stderr.
    pub verbose: bool,
    pub source: Source,
}

/// Where the lab's agents read the cluster from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Source {
    /// A folder of manifests the lab writes (`enforcer run --manifests`).
    #[default]
    Manifests,
    /// The real control plane (etcd and kube-apiserver) on the lab's fabric, written to as
    /// admin (`enforcer run --source kube`); see [`crate::api`].
    Kube,
}

/// How the lab hands the cluster to its agents.
enum Writer {
    Files(ManifestWriter),
    Api(Box<Api>),
}

impl Default for Options {
    fn default() -> Self {
        Options {
            probe_timeout: Duration::from_secs(1),
            agent_timeout: Duration::from_secs(20),
            parallel: 512,
            keep_files: false,
            verbose: false,
            source: Source::Manifests,
        }
    }
}

/// Everything a run has created, so that it can all be removed whatever happens.
pub struct Resources {
    pub prefix: String,
    pub run_dir: Option<PathBuf>,
    pub bpffs_dir: Option<PathBuf>,
    pub netns: Vec<String>,
    pub agents: Vec<Agent>,
    pub tasks: Vec<JoinHandle<()>>,
    pub keep_files: bool,
    done: bool,
}

impl Resources {
    pub fn new(prefix: &str) -> Self {
        Resources {
            prefix: prefix.to_string(),
            run_dir: None,
            bpffs_dir: None,
            netns: Vec::new(),
            agents: Vec::new(),
            tasks: Vec::new(),
            keep_files: false,
            done: false,
        }
    }

    /// Stops the agents and servers, deletes the namespaces, pins and files. Returns problems.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.done {
            return Vec::new();
        }
        self.done = true;
        let mut problems = Vec::new();
        for t in self.tasks.drain(..) {
            t.abort();
        }
        for a in &mut self.agents {
            problems.extend(a.stop(Duration::from_secs(5)));
        }
        self.agents.clear();
        problems.extend(netns::delete(&self.netns));
        // Namespaces this run made but did not get to record (a crash mid-batch).
        let leftovers: Vec<String> = netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        problems.extend(netns::delete(&leftovers));
        if let Some(p) = self.bpffs_dir.take()
            && p.exists()
            && let Err(e) = std::fs::remove_dir_all(&p)
        {
            problems.push(format!("removing {}: {e}", p.display()));
        }
        if let Some(d) = self.run_dir.take() {
            if self.keep_files {
                // Keep the files, but not the ownership: `lab down` may remove them.
                let _ = std::fs::remove_file(d.join("owner"));
                eprintln!("lab files kept in {}", d.display());
            } else if let Err(e) = std::fs::remove_dir_all(&d) {
                problems.push(format!("removing {}: {e}", d.display()));
            }
        }
        problems
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("enforcer lab: cleanup: {p}");
        }
    }
}

fn progress(opts: &Options, started: Instant, what: &str) {
    if opts.verbose {
        eprintln!("[{:>6.2}s] {what}", started.elapsed().as_secs_f64());
    }
}

/// Raises this process's open-file limit to its hard limit (a full matrix of probes in
/// parallel holds hundreds of sockets).
pub fn raise_fd_limit() {
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// A lab that is up: namespaces, servers and agents (in `Resources`), and the cluster state
/// the agents were last given.
pub struct Lab {
    pub dir: PathBuf,
    pub manifest_dir: PathBuf,
    writer: Writer,
    pub state: ClusterState,
    /// The folder's generation (kube: the highest resourceVersion written).
    pub generation: u64,
    /// What the agents must have applied (kube: per kind; see [`Mark`]).
    pub mark: Mark,
    ep_ns: Arc<BTreeMap<Ep, Netns>>,
    node_ns: Vec<Netns>,
    /// Whether the Services table has been installed on the nodes (then it is kept current,
    /// also when the last Service goes).
    nft_installed: bool,
}

/// Checks root, removes dead runs' leftovers, registers the run and builds it: namespaces,
/// servers, manifests, Services, agents (waited for). `res` collects what is created.
pub async fn build(
    plan: &Plan,
    exe: &Path,
    opts: &Options,
    res: &mut Resources,
    meta: &runs::Meta,
) -> Result<Lab> {
    let started = Instant::now();
    let with_cp;
    let plan = if opts.source == Source::Kube && plan.control_plane.is_none() {
        let mut p = plan.clone();
        p.add_control_plane()?;
        with_cp = p;
        &with_cp
    } else {
        plan
    };
    // SAFETY: a plain getter.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the lab needs root (it creates network namespaces and loads eBPF programs): \
             run it with sudo"
        );
    }
    raise_fd_limit();
    let (removed, problems) = runs::remove_stale();
    for p in &removed {
        eprintln!("enforcer lab: removed the leftovers of an earlier run {p}");
    }
    for p in problems {
        eprintln!("enforcer lab: cleaning an earlier run: {p}");
    }

    res.keep_files = opts.keep_files;
    let dir = runs::register(&plan.prefix)?;
    res.run_dir = Some(dir.clone());
    runs::write_meta(&plan.prefix, meta)?;
    let manifest_dir = dir.join("manifests");
    std::fs::create_dir_all(&manifest_dir)
        .with_context(|| format!("creating {}", manifest_dir.display()))?;

    ensure_bpffs()?;
    let pins = runs::bpffs_dir(&plan.prefix);
    std::fs::create_dir_all(&pins).with_context(|| format!("creating {}", pins.display()))?;
    res.bpffs_dir = Some(pins.clone());

    netns::build(plan, &mut res.netns)
        .await
        .context("building the lab's network namespaces")?;
    progress(opts, started, "namespaces and links ready");

    let mut ep_ns: BTreeMap<Ep, Netns> = BTreeMap::new();
    for ep in plan.endpoints() {
        let ns = Netns::open(plan.netns_of(ep))?;
        let ports: Vec<_> = plan
            .ports_of(ep)
            .iter()
            .map(|x| (x.protocol, x.port))
            .collect();
        res.tasks.extend(
            traffic::serve(&ns, &plan.name_of(ep), plan.ips_of(ep), &ports)
                .with_context(|| format!("servers in {}", plan.netns_of(ep)))?,
        );
        ep_ns.insert(ep, ns);
    }
    progress(opts, started, "servers listening");

    let node_ns = plan
        .nodes
        .iter()
        .map(|n| Netns::open(&n.netns))
        .collect::<Result<Vec<_>>>()?;
    let writer = match opts.source {
        Source::Manifests => Writer::Files(ManifestWriter::new(manifest_dir.clone())),
        Source::Kube => {
            let api = Api::start(plan, &dir)
                .await
                .context("starting the lab's control plane")?;
            progress(opts, started, "control plane ready");
            Writer::Api(Box::new(api))
        }
    };
    let agent_source = match &writer {
        Writer::Files(_) => AgentSource::Manifests(manifest_dir.clone()),
        Writer::Api(api) => AgentSource::Kube(api.kubeconfig.clone()),
    };
    let mut lab = Lab {
        dir: dir.clone(),
        manifest_dir: manifest_dir.clone(),
        writer,
        state: ClusterState::initial(plan),
        generation: 0,
        mark: Mark::default(),
        ep_ns: Arc::new(ep_ns),
        node_ns,
        nft_installed: false,
    };
    lab.write(plan).await?;

    for (node, ns) in plan.nodes.iter().zip(&lab.node_ns) {
        let node_dir = dir.join(&node.name);
        std::fs::create_dir_all(&node_dir)?;
        let agent = Agent::spawn(
            exe,
            &node.name,
            ns,
            &agent_source,
            &pins.join(&node.name),
            &node_dir,
        )?;
        if let Some(pid) = agent.pid() {
            runs::record_agent(&plan.prefix, pid)?;
        }
        res.agents.push(agent);
    }
    for a in &mut res.agents {
        a.wait_generation(&lab.mark, opts.agent_timeout).await?;
    }
    progress(
        opts,
        started,
        &format!("agents ready (generation {})", lab.generation),
    );
    Ok(lab)
}

impl Lab {
    /// Writes the state out: the manifests (a new generation) and every node's Services table.
    async fn write(&mut self, plan: &Plan) -> Result<()> {
        let want = self.state.manifests(plan);
        self.mark = match &mut self.writer {
            Writer::Files(w) => Mark::generation(w.sync(&want)?),
            Writer::Api(api) => api.sync(&want).await?,
        };
        self.generation = self.mark.generation;
        self.sync_services(plan).await
    }

    /// The lab's API server, with `--source kube`.
    pub fn api(&self) -> Option<&Api> {
        match &self.writer {
            Writer::Api(api) => Some(api),
            Writer::Files(_) => None,
        }
    }

    pub fn api_mut(&mut self) -> Option<&mut Api> {
        match &mut self.writer {
            Writer::Api(api) => Some(api),
            Writer::Files(_) => None,
        }
    }

    /// The network namespace of a pod or host.
    pub fn netns_of(&self, ep: &Ep) -> Option<&Netns> {
        self.ep_ns.get(ep)
    }

    /// How an agent of this lab is started (to restart one).
    pub fn agent_source(&self) -> AgentSource {
        match &self.writer {
            Writer::Files(_) => AgentSource::Manifests(self.manifest_dir.clone()),
            Writer::Api(api) => AgentSource::Kube(api.kubeconfig.clone()),
        }
    }

    /// Makes every node's Services table match the state.
    pub async fn sync_services(&mut self, plan: &Plan) -> Result<()> {
        if self.state.services.is_empty() && !self.nft_installed {
            return Ok(());
        }
        services::install(&plan.pods, &self.state, &self.node_ns).await?;
        self.nft_installed = true;
        Ok(())
    }

    /// What a lab left running keeps on disk for the commands that change or probe it.
    pub fn saved(&self) -> SavedState {
        SavedState {
            generation: self.generation,
            mark: self.mark.clone(),
            nft_installed: self.nft_installed,
            state: self.state.clone(),
        }
    }

    /// Applies a step's changes and waits until every agent has them.
    pub async fn change(
        &mut self,
        plan: &Plan,
        changes: &Changes,
        res: &mut Resources,
        opts: &Options,
    ) -> Result<()> {
        self.state.apply(changes);
        self.write(plan).await?;
        for a in &mut res.agents {
            a.wait_generation(&self.mark, opts.agent_timeout).await?;
        }
        Ok(())
    }

    /// Sends the probes, at most `opts.parallel` at once; results in the probes' order.
    pub async fn probe(
        &self,
        plan: &Plan,
        tag: &str,
        probes: &[ProbePlan],
        opts: &Options,
    ) -> Result<Vec<(ProbePlan, traffic::Outcome)>> {
        probe_all(
            self.ep_ns.clone(),
            Arc::new(sctp_targets(plan)),
            &plan.prefix,
            tag,
            probes,
            opts.probe_timeout,
            opts.parallel,
        )
        .await
    }

    /// The endpoints (`ns/pod address:port`) a probe through a Service may reach now.
    pub fn backends_of(&self, plan: &Plan, probe: &ProbePlan) -> Option<Vec<String>> {
        expected_backends(plan, &self.state, probe)
    }
}

/// The state of a lab left running (`state.json` in its run folder): what its agents were
/// last given.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SavedState {
    pub generation: u64,
    /// What the agents must have applied (kube: per kind).
    #[serde(default)]
    pub mark: Mark,
    pub nft_installed: bool,
    pub state: ClusterState,
}

/// What a probe through a Service may reach with this state: `ns/pod address:port` of each
/// backend of its port. `None` for other probes.
pub fn expected_backends(
    plan: &Plan,
    state: &ClusterState,
    probe: &ProbePlan,
) -> Option<Vec<String>> {
    let svc = state.services.get(probe.service.as_ref()?)?;
    let port = svc.find_port(&probe.spec.port, probe.spec.protocol).ok()?;
    Some(
        services::backends(&plan.pods, &state.pod_labels, svc, port)
            .iter()
            .map(|b| {
                format!(
                    "{} {}",
                    plan.pods[b.pod].key(),
                    std::net::SocketAddr::new(b.ip, b.port)
                )
            })
            .collect(),
    )
}

/// Where a hand-built SCTP INIT to each endpoint is watched for, with the SCTP ports served
/// where it arrives: a pod or host on its own `eth0`, with its ports; a node, or a
/// host-networked pod, on its node's input hook, with every port served in the node's
/// namespace (the node's and all its host-networked pods': one stack would answer them all).
pub fn sctp_targets(plan: &Plan) -> BTreeMap<Ep, (traffic::InitWatch, BTreeSet<u16>)> {
    let sctp = |ports: &[crate::scenario::PortSpec]| -> BTreeSet<u16> {
        ports
            .iter()
            .filter(|p| p.protocol == Protocol::Sctp)
            .map(|p| p.port)
            .collect()
    };
    let node_ports = |node: usize| -> BTreeSet<u16> {
        plan.pods
            .iter()
            .filter(|p| p.host_network && p.node == node)
            .flat_map(|p| sctp(&p.ports))
            .chain(sctp(&plan.nodes[node].ports))
            .collect()
    };
    plan.endpoints()
        .map(|ep| {
            let target = match ep {
                Ep::Pod(i) if plan.pods[i].host_network => {
                    (traffic::InitWatch::NodeInput, node_ports(plan.pods[i].node))
                }
                Ep::Node(n) => (traffic::InitWatch::NodeInput, node_ports(n)),
                Ep::Pod(_) | Ep::Host(_) => (traffic::InitWatch::Eth0, sctp(plan.ports_of(ep))),
            };
            (ep, target)
        })
        .collect()
}

/// Sends probes from the endpoints' namespaces, at most `parallel` at once. Where the kernel
/// has no SCTP sockets, an SCTP probe to an endpoint of `sctp_targets` is a hand-built INIT
/// watched for where it arrives ([`traffic::sctp_one_way`]).
pub async fn probe_all(
    ep_ns: Arc<BTreeMap<Ep, Netns>>,
    sctp_targets: Arc<BTreeMap<Ep, (traffic::InitWatch, BTreeSet<u16>)>>,
    prefix: &str,
    tag: &str,
    probes: &[ProbePlan],
    timeout: Duration,
    parallel: usize,
) -> Result<Vec<(ProbePlan, traffic::Outcome)>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut jobs = Vec::new();
    for (pi, probe) in probes.iter().enumerate() {
        let probe = probe.clone();
        let ns = ep_ns.clone();
        let sctp_targets = sctp_targets.clone();
        let sem = sem.clone();
        let payload = format!("enforcer-lab {prefix} {tag} probe {pi}").into_bytes();
        jobs.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let dst = std::net::SocketAddr::new(probe.dst_ip, probe.dst_port);
            let out = traffic::probe(
                &ns[&probe.src],
                probe.spec.protocol,
                probe.src_ip,
                dst,
                timeout,
                payload,
                probe.service.is_some(),
            )
            .await;
            let out = match out {
                Ok(o)
                    if o.observed == traffic::Observed::Unsupported
                        && probe.spec.protocol == Protocol::Sctp =>
                {
                    let target = probe
                        .dst
                        .filter(|_| probe.service.is_none())
                        .and_then(|ep| Some((ns.get(&ep)?, sctp_targets.get(&ep)?)));
                    traffic::sctp_one_way(
                        &ns[&probe.src],
                        target.map(|(n, (watch, _))| (n, *watch)),
                        target.is_some_and(|(_, (_, ports))| ports.contains(&probe.dst_port)),
                        probe.src_ip,
                        dst,
                        timeout,
                    )
                    .await
                }
                other => other,
            }
            .with_context(|| format!("{}: sending the probe", probe.spec.path));
            (probe, out)
        }));
    }
    let mut results = Vec::new();
    for j in jobs {
        let (probe, out) = j.await.context("probe task")?;
        results.push((probe, out?));
    }
    Ok(results)
}

/// Runs `plan` with the agent `exe`; `res` collects what is created (the caller tears down).
pub async fn run(plan: &Plan, exe: &Path, opts: &Options, res: &mut Resources) -> Result<Report> {
    let started = Instant::now();
    let meta = runs::Meta::for_run(None, plan, "run");
    let mut lab = build(plan, exe, opts, res, &meta).await?;
    let mut report = Report::default();
    for (si, step) in plan.steps.iter().enumerate() {
        if !step.changes.is_empty() {
            lab.change(plan, &step.changes, res, opts).await?;
            progress(
                opts,
                started,
                &format!("step {si}: agents at generation {}", lab.generation),
            );
        }
        for a in &mut res.agents {
            a.mark_events();
        }
        let results = lab
            .probe(plan, &format!("step {si}"), &step.probes, opts)
            .await?;
        progress(
            opts,
            started,
            &format!("step {si}: {} probes done", results.len()),
        );

        // Give the agents a moment to write the events of the last packets.
        let mut events = Vec::new();
        // (An agent may create its events file only with its first event.)
        let denied = results
            .iter()
            .any(|(_, o)| o.observed == traffic::Observed::Deny);
        if denied || res.agents.iter().any(|a| a.has_events_file()) {
            tokio::time::sleep(Duration::from_millis(150)).await;
            for a in &mut res.agents {
                events.extend(a.read_events());
            }
        }
        let mut changes = if si == 0 {
            // What the lab starts with.
            Changes {
                apply: plan.objects.clone(),
                apply_services: plan.services.clone(),
                ..Changes::default()
            }
            .describe(&plan.pods, &plan.nodes)
        } else {
            step.changes.describe(&plan.pods, &plan.nodes)
        };
        // With --source kube, the policies went in through kubectl: what it said.
        if let Some(api) = lab.api_mut() {
            changes.extend(api.take_said());
        }
        report.steps.push(StepResult {
            step: si,
            changes,
            probes: results
                .into_iter()
                .map(|(probe, outcome)| {
                    let wrong_backend = check_backend(&lab.backends_of(plan, &probe), &outcome);
                    ProbeResult {
                        events: match_events(&events, &probe, outcome.src_port),
                        probe,
                        outcome,
                        wrong_backend,
                    }
                })
                .collect(),
        });
    }
    progress(opts, started, "done");
    Ok(report)
}

/// For a probe through a Service that was answered: why the answer is wrong, if it came from
/// something that is no backend of that Service port.
pub fn check_backend(expected: &Option<Vec<String>>, outcome: &traffic::Outcome) -> Option<String> {
    let (Some(expected), Some(got)) = (expected, &outcome.backend) else {
        return None;
    };
    if outcome.observed != traffic::Observed::Allow || expected.contains(got) {
        return None;
    }
    Some(format!(
        "answered by {got}, which is no backend (backends: {})",
        if expected.is_empty() {
            "none".to_string()
        } else {
            expected.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use traffic::InitWatch::{Eth0, NodeInput};

    #[test]
    fn sctp_inits_to_a_node_are_counted_in_its_namespace() {
        let p = crate::plan::plan(
            &crate::scenario::parse(
                "nodes: [n1, {name: n2, ports: [{port: 22}, {port: 9000, protocol: SCTP}]}]
pods:
  - {namespace: x, name: a, node: n1, ports: [{port: 82, protocol: SCTP}, {port: 80}]}
  - {namespace: x, name: h, node: n2, hostNetwork: true, ports: [{port: 9100, protocol: SCTP}]}
  - {namespace: x, name: g, node: n2, hostNetwork: true, ports: [{port: 9200, protocol: SCTP}]}
  - {namespace: x, name: k, node: n1, hostNetwork: true}
hosts:
  - {name: ext, ips: [192.0.2.10], ports: [{port: 83, protocol: SCTP}]}
",
            )
            .unwrap(),
            "enf-abcdef-",
        )
        .unwrap();
        let t = sctp_targets(&p);
        let ports = |v: &[u16]| v.iter().copied().collect::<BTreeSet<u16>>();
        assert_eq!(t[&Ep::Pod(0)], (Eth0, ports(&[82])));
        assert_eq!(t[&Ep::Host(0)], (Eth0, ports(&[83])));
        // One stack answers everything served in a node's namespace: the node's ports and
        // every host-networked pod's there, whichever of them the probe names.
        let n2 = (NodeInput, ports(&[9000, 9100, 9200]));
        assert_eq!(t[&Ep::Node(1)], n2);
        assert_eq!(t[&Ep::Pod(1)], n2);
        assert_eq!(t[&Ep::Pod(2)], n2);
        assert_eq!(t[&Ep::Node(0)], (NodeInput, ports(&[])));
        assert_eq!(t[&Ep::Pod(3)], (NodeInput, ports(&[])));
        assert_eq!(t.len(), p.endpoints().count());
    }
}
