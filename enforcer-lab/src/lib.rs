//! `enforcer lab`: builds a small cluster out of network namespaces on this kernel, runs the
//! real enforcer agent on each lab node, sends real packets for every probe of a scenario and
//! reports what it observed. The scenario format is `shared/scenario-format.md`.
//!
//! # The agent contract
//!
//! For each lab node the lab starts, inside the node's network namespace (setns between fork
//! and exec, so /sys/fs/bpf stays visible):
//!
//! ```text
//! <enforcer> run --manifests <run>/manifests --node <node> --bpffs /sys/fs/bpf/<prefix>/<node>
//!     --status-file <run>/<node>/status.json --events-file <run>/<node>/events.jsonl
//! ```
//!
//! - The manifests folder holds one YAML file per object (Namespaces, Pods with `spec.nodeName`,
//!   `containers[0].ports` and `status.podIPs`, and the scenario's objects as given), each
//!   written as a hidden temp file and renamed into place. After a complete set the lab writes
//!   `.generation` = N (1, 2, …).
//! - The agent, once it has applied a snapshot that included `.generation` = N, rewrites the
//!   status file atomically: `{"generation": N, "ready": true, "error": null, …}`; `error` is a
//!   string when the content was rejected (the lab then fails with exit status 2).
//! - `events.jsonl`: one JSON object per datapath event (`src`, `src_port`, `dst`, `dst_port`,
//!   `protocol`, `verdict`, `policy`, …); the lab attaches to each probe those of its 5-tuple.
//!
//! - Services are written as v1 Service manifests (`service_<namespace>_<name>.yaml`, with
//!   `spec.clusterIP` filled in) beside the rest; the lab itself translates them on every node
//!   with nftables, as kube-proxy does (see [`services`]).
//!
//! Every pod's address has a host route in the node namespace through the pod's host-side veth
//! (`lxc…`), which is how the agent finds its endpoints. With several nodes, or hosts outside
//! the cluster, nodes and hosts share a bridge in a fabric namespace and route each other's
//! addresses individually (see [`netns`]).

pub mod agent;
pub mod lab;
pub mod manifests;
pub mod netns;
pub mod plan;
pub mod report;
pub mod runs;
pub mod scenario;
pub mod services;
pub mod traffic;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

/// The K3s multi-tenant isolation example (`enforcer lab demo`).
pub const DEMO_SCENARIO: &str = include_str!("../../examples/k3s-multi-tenant.yaml");

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Truth tables for people.
    Table,
    /// One JSON document (the scenario format's output).
    Json,
}

/// Options shared by the commands that run a scenario.
#[derive(Clone, Debug, clap::Args)]
pub struct RunOptions {
    /// How long a probe waits for a connection or an echo (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub probe_timeout: Duration,
    /// How long the agent may take to apply a set of manifests.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub agent_timeout: Duration,
    /// Probes in flight at once.
    #[arg(long, default_value_t = 512)]
    pub parallel: usize,
    /// Keep the run's files (manifests, agent log, events) in /run/enforcer-lab/.
    #[arg(long)]
    pub keep_files: bool,
    /// Print progress with timings to stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// Start this program instead of the enforcer as the agent (same arguments); for testing
    /// the lab itself.
    #[arg(long, hide = true)]
    pub agent_cmd: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Run a scenario file: build it, probe it, print what was observed.
    #[command(
        after_help = "Exit status: 0 when every probe with an `expect` matched, 1 when some did \
                      not, 2 when the scenario could not be run.\n\nExample:\n  \
                      enforcer lab run tests/scenarios/default-deny-ingress.yaml --output json"
    )]
    Run {
        /// The scenario (YAML).
        file: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        opts: RunOptions,
    },
    /// Run the K3s multi-tenant isolation example: reachability before and after the policies.
    Demo {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        opts: RunOptions,
    },
    /// Check a scenario file without running it (no root needed).
    Check {
        /// The scenario (YAML).
        file: PathBuf,
    },
    /// List lab runs on this machine (live or left over).
    List,
    /// Remove the leftovers of lab runs whose process is gone.
    Down,
}

/// Parses `1s`, `500ms`, `2.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v * scale < 3600.0 => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(format!("{s:?} is not a duration like 1s or 500ms")),
    }
}

/// Parses and plans a scenario text; `source` names it in errors.
pub fn load(text: &str, source: &str, prefix: &str) -> Result<plan::Plan> {
    let s = scenario::parse(text).with_context(|| format!("{source}: bad scenario"))?;
    plan::plan(&s, prefix).with_context(|| format!("{source}: cannot run this scenario"))
}

/// Runs a planned scenario and tears everything down, also on Ctrl-C or SIGTERM.
pub fn run_plan(plan: &plan::Plan, agent: &Path, opts: &RunOptions) -> Result<report::Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let lab_opts = lab::Options {
        probe_timeout: opts.probe_timeout,
        agent_timeout: opts.agent_timeout,
        parallel: opts.parallel,
        keep_files: opts.keep_files,
        verbose: opts.verbose,
    };
    let mut res = lab::Resources::new(&plan.prefix);
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing a SIGTERM handler")?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing a SIGHUP handler")?;
        tokio::select! {
            r = lab::run(plan, agent, &lab_opts, &mut res) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
            _ = term.recv() => Err(anyhow::anyhow!("terminated (SIGTERM)")),
            _ = hup.recv() => Err(anyhow::anyhow!("hung up (SIGHUP)")),
        }
    });
    // Agents first (they detach from the interfaces), then the servers' sockets go with the
    // runtime, then namespaces and files.
    for a in &mut res.agents {
        if let Some(p) = a.stop(Duration::from_secs(5)) {
            eprintln!("enforcer lab: cleanup: {p}");
        }
    }
    for t in res.tasks.drain(..) {
        t.abort();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    for p in res.teardown() {
        eprintln!("enforcer lab: cleanup: {p}");
    }
    result
}

fn print_report(r: &report::Report, output: Output) {
    match output {
        Output::Table => print!("{}", r.render()),
        Output::Json => println!("{}", r.to_json_string()),
    }
}

fn run_text(text: &str, source: &str, output: Output, opts: &RunOptions, exe: &Path) -> i32 {
    let prefix = runs::new_prefix();
    let plan = match load(text, source, &prefix) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("enforcer lab: error: {e:#}");
            return 2;
        }
    };
    let agent = opts.agent_cmd.as_deref().unwrap_or(exe);
    match run_plan(&plan, agent, opts) {
        Ok(r) => {
            print_report(&r, output);
            if r.mismatches() == 0 { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("enforcer lab: error: {source}: {e:#}");
            2
        }
    }
}

/// Runs a lab command; returns the exit status (0 all as expected, 1 mismatches, 2 could not
/// run). `enforcer_exe` is the enforcer binary, started as each node's agent.
pub fn main(cmd: LabCommand, enforcer_exe: &Path) -> i32 {
    match cmd {
        LabCommand::Run { file, output, opts } => {
            let source = file.display().to_string();
            match std::fs::read_to_string(&file) {
                Ok(text) => run_text(&text, &source, output, &opts, enforcer_exe),
                Err(e) => {
                    eprintln!("enforcer lab: error: cannot read {source}: {e}");
                    2
                }
            }
        }
        LabCommand::Demo { output, opts } => run_text(
            DEMO_SCENARIO,
            "demo (examples/k3s-multi-tenant.yaml)",
            output,
            &opts,
            enforcer_exe,
        ),
        LabCommand::Check { file } => {
            let source = file.display().to_string();
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("enforcer lab: error: cannot read {source}: {e}");
                    return 2;
                }
            };
            match load(&text, &source, "enf-000000-") {
                Ok(p) => {
                    let probes: usize = p.steps.iter().map(|s| s.probes.len()).sum();
                    println!(
                        "{source}: ok: {} pods, {} steps, {probes} probes",
                        p.pods.len(),
                        p.steps.len()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("enforcer lab: error: {e:#}");
                    2
                }
            }
        }
        LabCommand::List => {
            let runs = runs::list();
            if runs.is_empty() {
                println!("no lab runs");
            }
            for r in runs {
                println!(
                    "{}  owner {}  {}  {} namespaces",
                    r.prefix.trim_end_matches('-'),
                    r.owner.map_or("-".to_string(), |p| p.to_string()),
                    if r.alive { "running" } else { "stale" },
                    r.netns.len()
                );
            }
            0
        }
        LabCommand::Down => {
            // SAFETY: a plain getter.
            if unsafe { libc::geteuid() } != 0 {
                eprintln!("enforcer lab: error: removing lab runs needs root");
                return 2;
            }
            let (removed, problems) = runs::remove_stale();
            for p in &removed {
                println!("removed {}", p.trim_end_matches('-'));
            }
            if removed.is_empty() {
                println!("nothing to remove");
            }
            for p in &problems {
                eprintln!("enforcer lab: {p}");
            }
            if problems.is_empty() { 0 } else { 2 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_cli_parses() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: LabCommand,
        }
        let c = Cli::try_parse_from([
            "lab",
            "run",
            "f.yaml",
            "--output",
            "json",
            "--probe-timeout",
            "300ms",
        ])
        .unwrap();
        match c.cmd {
            LabCommand::Run { file, output, opts } => {
                assert_eq!(file, PathBuf::from("f.yaml"));
                assert_eq!(output, Output::Json);
                assert_eq!(opts.probe_timeout, Duration::from_millis(300));
                assert_eq!(opts.agent_timeout, Duration::from_secs(20));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["lab", "demo"]).is_ok());
    }

    #[test]
    fn load_names_the_source() {
        let e = load(
            "pods: [{namespace: x, name: a, lables: {}}]",
            "f.yaml",
            "enf-000000-",
        )
        .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "f.yaml: bad scenario: pods[0].lables: unknown key (expected one of: namespace, name, node, labels, ips, ports)"
        );
    }
}
