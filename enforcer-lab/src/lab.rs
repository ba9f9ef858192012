//! One run of a scenario: build, start the agents, probe step by step, tear down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;

use crate::agent::{Agent, ensure_bpffs};
use crate::manifests::{ClusterState, ManifestWriter};
use crate::netns::{self, Netns};
use crate::plan::{Ep, Plan};
use crate::report::{ProbeResult, Report, StepResult, match_events};
use crate::runs;
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            probe_timeout: Duration::from_secs(1),
            agent_timeout: Duration::from_secs(20),
            parallel: 32,
            keep_files: false,
            verbose: false,
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

/// Runs `plan` with the agent `exe`; `res` collects what is created (the caller tears down).
pub async fn run(plan: &Plan, exe: &Path, opts: &Options, res: &mut Resources) -> Result<Report> {
    let started = Instant::now();
    // SAFETY: a plain getter.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the lab needs root (it creates network namespaces and loads eBPF programs): \
             run it with sudo"
        );
    }
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
            traffic::serve(&ns, plan.ips_of(ep), &ports)
                .with_context(|| format!("servers in {}", plan.netns_of(ep)))?,
        );
        ep_ns.insert(ep, ns);
    }
    progress(opts, started, "servers listening");

    let mut state = ClusterState::initial(plan);
    let mut writer = ManifestWriter::new(manifest_dir.clone());
    let mut generation = writer.sync(&state.manifests(plan))?;

    for node in &plan.nodes {
        let ns = Netns::open(&node.netns)?;
        let node_dir = dir.join(&node.name);
        std::fs::create_dir_all(&node_dir)?;
        let agent = Agent::spawn(
            exe,
            &node.name,
            &ns,
            &manifest_dir,
            &pins.join(&node.name),
            &node_dir,
        )?;
        if let Some(pid) = agent.pid() {
            runs::record_agent(&plan.prefix, pid)?;
        }
        res.agents.push(agent);
    }
    for a in &mut res.agents {
        a.wait_generation(generation, opts.agent_timeout).await?;
    }
    progress(
        opts,
        started,
        &format!("agents ready (generation {generation})"),
    );

    let ep_ns = Arc::new(ep_ns);
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let mut report = Report::default();
    for (si, step) in plan.steps.iter().enumerate() {
        if !step.changes.is_empty() {
            state.apply(&step.changes);
            generation = writer.sync(&state.manifests(plan))?;
            for a in &mut res.agents {
                a.wait_generation(generation, opts.agent_timeout).await?;
            }
            progress(
                opts,
                started,
                &format!("step {si}: agents at generation {generation}"),
            );
        }
        for a in &mut res.agents {
            a.mark_events();
        }
        let mut jobs = Vec::new();
        for (pi, probe) in step.probes.iter().enumerate() {
            let probe = probe.clone();
            let ns = ep_ns.clone();
            let sem = sem.clone();
            let payload = format!("enforcer-lab {} step {si} probe {pi}", plan.prefix).into_bytes();
            let timeout = opts.probe_timeout;
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
                )
                .await
                .with_context(|| format!("{}: sending the probe", probe.spec.path));
                (probe, out)
            }));
        }
        let mut results = Vec::new();
        for j in jobs {
            let (probe, out) = j.await.context("probe task")?;
            results.push((probe, out?));
        }
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
        report.steps.push(StepResult {
            step: si,
            probes: results
                .into_iter()
                .map(|(probe, outcome)| ProbeResult {
                    events: match_events(&events, &probe, outcome.src_port),
                    probe,
                    outcome,
                })
                .collect(),
        });
    }
    progress(opts, started, "done");
    Ok(report)
}
