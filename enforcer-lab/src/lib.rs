//! `enforcer lab`: builds a small cluster out of network namespaces on this kernel, runs the
//! real enforcer agent on each lab node, sends real packets for every probe of a scenario and
//! reports what it observed. The scenario format is `docs/scenario-format.md`.
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
//! - With `--source kube` the lab runs a Kubernetes API emulator instead (see [`api`]): the
//!   agent runs `run --source kube --kubeconfig <run>/kubeconfig …` (the API at 127.0.0.1:6443
//!   in every node namespace), the lab writes every object through the API, and the status
//!   file's `generation` is the highest resourceVersion the agent has applied; the lab waits for
//!   the API's resourceVersion after its last write.
//! - Services are written as v1 Service manifests (`service_<namespace>_<name>.yaml`, with
//!   `spec.clusterIP` filled in) beside the rest; the lab itself translates them on every node
//!   with nftables, as kube-proxy does (see [`services`]).
//!
//! On a routed node (the default) every pod's address has a host route in the node namespace
//! through the pod's host-side veth (`lxc…`), which is how the agent finds its endpoints; on a
//! bridge node (`cni: bridge`) the host-side veths are ports of the bridge `cni0`, and the agent
//! finds its pods as on a flannel or K3s node. With several nodes, or hosts outside
//! the cluster, nodes and hosts share a bridge in a fabric namespace and route each other's
//! addresses individually (see [`netns`]). A host-networked pod (`hostNetwork: true`) has no
//! namespace or veth: its servers, and the node's own `ports`, listen in the node namespace on
//! the node's addresses, and it is written with `hostNetwork: true` and its node's address as
//! its `podIP`; `node:NAME` probes start or end in the node namespace.

pub mod agent;
pub mod api;
pub mod forge;
pub mod lab;
pub mod live;
pub mod manifests;
pub mod netns;
pub mod outcome;
pub mod plan;
pub mod report;
pub mod runs;
pub mod scenario;
pub mod services;
pub mod traffic;

use std::ffi::OsString;
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

/// What `lab up` takes: it runs no probes and keeps no files of its own (the run folder lives
/// until `lab down`), and its keeper reads the manifests folder.
#[derive(Clone, Debug, clap::Args)]
pub struct UpOptions {
    /// How long the agent may take to apply a set of manifests.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub agent_timeout: Duration,
    /// Print progress with timings to stderr (the keeper's, to its log).
    #[arg(long, short)]
    pub verbose: bool,
    /// Start this program instead of the enforcer as the agent (same arguments); for testing
    /// the lab itself.
    #[arg(long, hide = true)]
    pub agent_cmd: Option<PathBuf>,
    /// Where the agents read the cluster from: the manifests folder the lab writes, or the
    /// real control plane (etcd and kube-apiserver) the lab runs on its fabric; then `up`
    /// prints a kubeconfig for kubectl.
    #[arg(long, value_enum, default_value = "manifests")]
    pub source: lab::Source,
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
    /// Where the agents read the cluster from: the manifests folder the lab writes, or the
    /// real control plane (etcd and kube-apiserver, built by `cargo xtask setup`) the lab
    /// runs on its fabric and writes every change to as admin (agents then run with --source
    /// kube, authenticated as the install bundle's ServiceAccount).
    #[arg(long, value_enum, default_value = "manifests")]
    pub source: lab::Source,
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
    /// Build a scenario and leave it running (no probes): its agents enforce its policies
    /// until `lab down`. Prints the nodes, pods and addresses, and commands to try.
    #[command(after_help = "Then:\n  enforcer lab probe NAME x/a x/b 80/TCP\n  \
                      enforcer lab exec NAME node-1 -- maps dump\n  \
                      enforcer lab apply NAME policy.yaml\n  enforcer lab down NAME\n\n\
                      Example:\n  enforcer lab up examples/k3s-multi-tenant.yaml --name demo")]
    Up {
        /// The scenario (YAML); its `probes` and `steps` are not run.
        file: PathBuf,
        /// What to call the lab (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        /// table: what was built and commands to try; json: the nodes, pods, hosts and
        /// Services, each keyed by name.
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        #[command(flatten)]
        opts: UpOptions,
    },
    /// The process that holds a lab started by `up` (started by `up`, stopped by `down`).
    #[command(hide = true)]
    Keep {
        /// The run prefix (enf-xxxxxx).
        prefix: String,
        #[command(flatten)]
        opts: RunOptions,
    },
    /// Send one probe in a lab left running and say what happened: allowed, denied by policy
    /// (with the drop event), refused (nothing listens), or a timeout no drop event explains.
    #[command(
        after_help = "FROM: namespace/pod or a host. TO: namespace/pod, a host, an IP address \
                      or svc:namespace/name (then PORT is the Service's port).\n\
                      JSON: `outcome` is allowed, denied, refused, unreachable, \
                      timeout-no-event, unsupported or failed.\n\
                      Exit status 0 when the probe ran (whatever its outcome), 2 when it \
                      could not.\n\nExample:\n  enforcer lab probe demo sample1/curl sample2/nginx \
                      80/TCP"
    )]
    Probe {
        /// The lab (its name, or its run prefix).
        name: String,
        from: String,
        to: String,
        /// PORT/PROTOCOL: 80/TCP, 53/UDP, http/TCP (a named port of the target); TCP when
        /// omitted.
        port: String,
        /// The address family to use (4 or 6) when both ends have both.
        #[arg(long, value_parser = clap::value_parser!(u8).range(4..=6))]
        family: Option<u8>,
        /// How long to wait for the connection or the echo.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        timeout: Duration,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Send one hand-built packet with a forged source from a pod (or host) of a lab left
    /// running, and say whether the target's interface saw it (and the drop event, if any):
    /// what a hostile pod with a raw socket can do.
    #[command(
        after_help = "WHAT: PORT/TCP (a SYN), PORT/UDP (a datagram) or ICMP (an echo request). \
                      The target address is TO's of the forged source's family (a v4-mapped \
                      source, ::ffff:a.b.c.d, goes to its IPv6 address).\n\
                      Exit status 0 when the packet was sent (received or not), 2 when it \
                      could not be.\n\nExample:\n  enforcer lab forge demo sample2/curl \
                      sample1/nginx 80/TCP --source 10.42.0.11"
    )]
    Forge {
        /// The lab (its name, or its run prefix).
        name: String,
        from: String,
        to: String,
        what: String,
        /// The source address to write into the packet.
        #[arg(long)]
        source: std::net::IpAddr,
        /// How long to watch the target's interface.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        timeout: Duration,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Run the enforcer with these arguments inside a node of a lab left running, with
    /// ENFORCER_NODE, ENFORCER_BPFFS, ENFORCER_MANIFESTS and ENFORCER_EVENTS_FILE set for that
    /// node; exits with its exit status.
    #[command(after_help = "Example:\n  enforcer lab exec demo node-1 -- maps dump --output json")]
    Exec {
        /// The lab (its name, or its run prefix).
        name: String,
        /// The node.
        node: String,
        /// The enforcer's arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Create or replace objects (NetworkPolicies, ClusterIP Services, …) in a lab left
    /// running, as `kubectl apply -f` would; waits until every agent has them.
    Apply {
        /// The lab (its name, or its run prefix).
        name: String,
        /// YAML: one or more documents, or a List.
        file: PathBuf,
        /// How long the agents may take.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        agent_timeout: Duration,
    },
    /// Remove the objects of a file from a lab left running (by kind, namespace and name).
    Delete {
        /// The lab (its name, or its run prefix).
        name: String,
        /// YAML: one or more documents, or a List.
        file: PathBuf,
        /// How long the agents may take.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        agent_timeout: Duration,
    },
    /// List lab runs on this machine (left running by `up`, in progress, or left over).
    List {
        /// json: `{"labs": {NAME: …}}`, keyed by name (by run for a `lab run`).
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Take a lab down (`down NAME`); without a name, remove the leftovers of runs whose
    /// process is gone; `--all`: every lab run, live or not.
    Down {
        /// The lab (its name, or its run prefix).
        name: Option<String>,
        /// Every lab run on this machine.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
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

pub fn lab_options(opts: &RunOptions) -> lab::Options {
    lab::Options {
        probe_timeout: opts.probe_timeout,
        agent_timeout: opts.agent_timeout,
        parallel: opts.parallel,
        keep_files: opts.keep_files,
        verbose: opts.verbose,
        source: opts.source,
    }
}

/// Runs a planned scenario and tears everything down, also on Ctrl-C or SIGTERM.
pub fn run_plan(plan: &plan::Plan, agent: &Path, opts: &RunOptions) -> Result<report::Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let lab_opts = lab_options(opts);
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
    shutdown(rt, &mut res);
    result
}

/// Tears a lab down in order: agents first (they detach from the interfaces), then the
/// servers' sockets go with the runtime, then namespaces and files.
pub fn shutdown(rt: tokio::runtime::Runtime, res: &mut lab::Resources) {
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

/// The agent's own check of a manifest file (`file` names it in errors), beyond the strict
/// decoding the lab does itself: what the agent would refuse (a protocol NetworkPolicy lacks, a
/// bad CIDR, a bad port range). The enforcer binary installs it (the lab cannot depend on the
/// agent's crate, which depends on it), so `lab apply` refuses such a file before writing.
pub type AgentCheck = fn(file: &str, text: &str) -> Result<(), String>;

static AGENT_CHECK: std::sync::OnceLock<AgentCheck> = std::sync::OnceLock::new();

/// Installs the agent's check (once; later calls are ignored).
pub fn set_agent_check(check: AgentCheck) {
    let _ = AGENT_CHECK.set(check);
}

/// The agent's check, when installed.
pub(crate) fn agent_check() -> Option<AgentCheck> {
    AGENT_CHECK.get().copied()
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
        LabCommand::Up {
            file,
            name,
            output,
            opts,
        } => live::up(&file, name, &opts, output),
        LabCommand::Keep { prefix, opts } => live::keep(&prefix, &opts, enforcer_exe),
        LabCommand::Probe {
            name,
            from,
            to,
            port,
            family,
            timeout,
            output,
        } => live::probe(&name, &from, &to, &port, family, timeout, output),
        LabCommand::Forge {
            name,
            from,
            to,
            what,
            source,
            timeout,
            output,
        } => live::forge(&name, &from, &to, &what, source, timeout, output),
        LabCommand::Exec { name, node, args } => live::exec(&name, &node, &args, enforcer_exe),
        LabCommand::Apply {
            name,
            file,
            agent_timeout,
        } => live::apply(&name, &file, false, agent_timeout),
        LabCommand::Delete {
            name,
            file,
            agent_timeout,
        } => live::apply(&name, &file, true, agent_timeout),
        LabCommand::List { output } => live::list(output),
        LabCommand::Down { name, all } => live::down(name.as_deref(), all),
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
            "f.yaml: bad scenario: pods[0].lables: unknown key (expected one of: namespace, name, node, labels, ips, ports, hostNetwork)"
        );
    }
}
