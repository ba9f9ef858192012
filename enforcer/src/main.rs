use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use enforcer::agent::{AgentOptions, SourceOptions, run};

/// Kubernetes NetworkPolicy enforcer with an eBPF TC datapath.
#[derive(Parser)]
#[command(name = "enforcer", version = enforcer::VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: read cluster state, program the datapath, report drops.
    #[command(after_help = "Example:\n  enforcer run --manifests ./cluster --node node-1")]
    Run(RunArgs),
    /// Inspect the pinned maps of a running agent.
    #[command(
        after_help = "Example:\n  enforcer maps dump --bpffs /sys/fs/bpf/enforcer --output json"
    )]
    Maps {
        #[command(subcommand)]
        command: MapsCommand,
    },
    /// Explain the verdict for one connection: which policies and rules decide it.
    #[command(
        after_help = "Examples:\n  enforcer explain --manifests ./cluster --from x/a --to x/b --port 80 --protocol TCP\n  enforcer explain --manifests ./cluster --from 10.42.0.13 --to 10.42.0.10 --port http\n  enforcer lab exec demo node-1 -- explain --from x/a --to x/b --port 80 --live\n\nExit status: 0 allowed or denied, 3 not judged (no pod at either end), 1 an error."
    )]
    Explain(ExplainArgs),
    /// Describe one object from its own side: `describe pod NS/NAME` lists the policies that
    /// select the pod, in each direction, which isolate it, and what they allow.
    #[command(
        after_help = "Examples:\n  enforcer describe pod sample1/nginx --manifests ./cluster\n  enforcer lab exec demo node-1 -- describe pod sample1/nginx --live --output json"
    )]
    Describe {
        #[command(subcommand)]
        command: DescribeCommand,
    },
    /// Follow the verdict events of a node's agent: drops (and allows, with --events-on-allow)
    /// naming the endpoint, the peer, the tuple and the policies that decided.
    #[command(
        after_help = "Examples:\n  enforcer events --file /run/enforcer/events.jsonl --follow --verdict deny\n  enforcer events --since 10m --to sample1/nginx --port 80 --direction in\n  enforcer lab exec demo node-1 -- events --namespace sample1 --output json"
    )]
    Events(enforcer::events::EventsArgs),
    /// Build clusters of network namespaces running the real enforcer and probe them.
    #[command(
        after_help = "Examples:\n  enforcer lab demo\n  enforcer lab run tests/scenarios/default-deny-ingress.yaml --output json"
    )]
    Lab {
        #[command(subcommand)]
        command: enforcer_lab::LabCommand,
    },
    /// Is an agent running on this node, and is it well: since when, its version, its source
    /// and sync state, objects rejected, endpoints held closed, map usage, events lost.
    #[command(
        after_help = "Exit status: 0 healthy, 1 degraded (see the problems listed), \
                            2 usage error, 3 no agent runs on these pins.\n\n\
                            Examples:\n  enforcer status\n  enforcer status --output json\n  \
                            enforcer lab exec demo node-1 -- status"
    )]
    Status {
        /// The agent's bpffs folder (its --bpffs).
        #[arg(long, env = "ENFORCER_BPFFS", default_value = "/sys/fs/bpf/enforcer")]
        bpffs: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        output: enforcer::dump::Format,
    },
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(
        after_help = "Example:\n  enforcer completions bash > /etc/bash_completion.d/enforcer"
    )]
    Completions { shell: clap_complete::Shell },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SourceArg {
    Manifests,
    Kube,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where cluster state comes from: a folder of manifests, or the Kubernetes API.
    #[arg(long, env = "ENFORCER_SOURCE", value_enum, default_value = "manifests")]
    source: SourceArg,
    /// Folder of Namespace, Pod, NetworkPolicy and Service manifests (YAML or JSON); changes
    /// are applied as they happen (--source manifests).
    #[arg(
        long,
        env = "ENFORCER_MANIFESTS",
        required_if_eq("source", "manifests")
    )]
    manifests: Option<PathBuf>,
    /// kubeconfig for --source kube; without it: KUBECONFIG, ~/.kube/config, or the in-cluster
    /// service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Serve /healthz, /readyz (after the first full sync is in the maps) and /metrics
    /// (Prometheus) on this address, e.g. 0.0.0.0:9964.
    #[arg(long, env = "ENFORCER_HEALTH_ADDR")]
    health_addr: Option<std::net::SocketAddr>,
    /// Hold pod interfaces whose pod (or its policy) is not known yet fail-closed: no IP
    /// traffic passes them until their endpoint is programmed.
    #[arg(long, env = "ENFORCER_DEFAULT_DENY_UNKNOWN")]
    default_deny_unknown: bool,
    /// How often the maps are compared with the desired state; drift is repaired and logged.
    #[arg(long, default_value = "30s", value_parser = enforcer_lab::parse_duration)]
    resync: Duration,
    /// This node's name (pods with spec.nodeName equal to it are local endpoints).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// bpffs folder for this agent's pinned maps.
    #[arg(long, env = "ENFORCER_BPFFS", default_value = "/sys/fs/bpf/enforcer")]
    bpffs: PathBuf,
    /// Write a JSON status (generation, errors) here after every reconcile.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Append every datapath event here as one JSON object per line (`enforcer events` reads
    /// it); rotated to FILE.1 when it passes --events-max-mb.
    #[arg(long)]
    events_file: Option<PathBuf>,
    /// Events each endpoint may emit per second, after --event-burst (0: no limit). Enforced in
    /// the kernel per endpoint; held-back events are counted (`maps dump`).
    #[arg(long, default_value_t = 100)]
    event_rate: u32,
    /// Events an endpoint may emit at once before --event-rate applies.
    #[arg(long, default_value_t = 200)]
    event_burst: u32,
    /// Size at which the events file is rotated, in MiB.
    #[arg(long, default_value_t = 64)]
    events_max_mb: u64,
    /// Leave the pinned maps and links in place on exit, still enforcing, for the next agent
    /// to take over (upgrades, restarts).
    #[arg(long, env = "ENFORCER_KEEP_PINS")]
    keep_pins: bool,
    /// Do not let the node's own addresses reach isolated pods (kubelet probes then need a rule).
    #[arg(long)]
    no_allow_host: bool,
    /// Also emit an event for every new flow that is allowed.
    #[arg(long)]
    events_on_allow: bool,
    /// Report a flow's drops once per this window (0: every dropped packet): one blocked
    /// connection, however often its client retries, makes one event; the rest are counted
    /// as events-repeated.
    #[arg(long, default_value = "5s", value_parser = parse_window)]
    drop_report_window: Duration,
    /// The lowest bit of the 12 bits of the packet mark (skb->mark) where the agent's programs
    /// note which local pod sent a packet (0xfff00000 by default), or `off`. It is how a pod
    /// reaching itself through a Service (masqueraded to the node's address by kube-proxy) is
    /// still judged as itself by the cluster-wide tiers; move it if something else on the node
    /// owns those bits.
    #[arg(long, default_value = "20", value_parser = parse_mark_shift)]
    endpoint_mark_shift: u32,
    /// How long the egress verdict of a flow to a Service port with mixed backends waits for
    /// the translated packet (the DNAT takes microseconds; a packet that died leaves it behind).
    #[arg(long, default_value = "1s", value_parser = parse_window)]
    service_defer: Duration,
    /// Deferred Service verdicts each pod may have outstanding per --service-defer window;
    /// past it the pod's new flows to such Services drop as service-unbound.
    #[arg(long, default_value_t = enforcer_common::capacity::SERVICE_DEFER_BUDGET_MAX,
          value_parser = clap::value_parser!(u32).range(1..=enforcer_common::capacity::SERVICE_DEFER_BUDGET_MAX as i64))]
    service_defer_budget: u32,
    /// Do not count packets and bytes per policy rule (saves a per-CPU hash lookup, about
    /// 30 ns, on every packet of a flow a rule admitted).
    #[arg(long)]
    no_rule_counters: bool,
    /// Emit no events at all; verdicts are still counted (`maps dump counters`, /metrics).
    #[arg(long, conflicts_with = "events_on_allow")]
    no_events: bool,
    /// Conntrack: how long an idle established TCP flow is kept (e.g. 21600s, 6h).
    #[arg(long, default_value = "6h", value_parser = parse_lifetime)]
    ct_tcp_established_timeout: Duration,
    /// Conntrack: how long a TCP flow whose SYN was not answered is kept.
    #[arg(long, default_value = "60s", value_parser = parse_lifetime)]
    ct_tcp_syn_timeout: Duration,
    /// Conntrack: how long a closing TCP flow (RST, or FIN both ways) is kept.
    #[arg(long, default_value = "10s", value_parser = parse_lifetime)]
    ct_tcp_close_timeout: Duration,
    /// Conntrack: how long an idle non-TCP flow (UDP, SCTP, ICMP) is kept.
    #[arg(long, default_value = "60s", value_parser = parse_lifetime)]
    ct_other_timeout: Duration,
    /// How often the conntrack garbage collector walks the tables (on its own thread).
    #[arg(long, default_value = "10s", value_parser = parse_lifetime)]
    ct_gc_interval: Duration,
    /// Conntrack entries (two per flow) each pod interface may hold among the flows that have
    /// seen a reply, which a flood of new flows cannot evict; past it a flow is tracked in the
    /// LRU with the unreplied ones.
    #[arg(long, default_value_t = enforcer_common::capacity::CT_ENDPOINT_BUDGET)]
    ct_endpoint_budget: u32,
    /// How often to re-read interfaces, routes and neighbours regardless of netlink events,
    /// in milliseconds (a safety net: netlink reports changes as they happen).
    #[arg(long, default_value_t = 2000)]
    rescan_ms: u64,
    /// The log on stderr: text (plain unless stderr is a terminal) or json (one object per
    /// line). Datapath events are not logged: they go to --events-file.
    #[arg(long, env = "ENFORCER_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: enforcer::logging::LogFormat,
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// Folder of manifests to explain against.
    #[arg(long, env = "ENFORCER_MANIFESTS")]
    manifests: PathBuf,
    /// Source: namespace/pod or an IP address.
    #[arg(long)]
    from: enforcer::explain::Endpoint,
    /// Destination: namespace/pod or an IP address.
    #[arg(long)]
    to: enforcer::explain::Endpoint,
    /// A port number (1-65535) or the name of a container port of the destination pod.
    #[arg(long)]
    port: enforcer::explain::PortArg,
    /// This node's addresses, as the agent gives them identity host (repeat for several).
    #[arg(long = "node-ip")]
    node_ips: Vec<std::net::IpAddr>,
    /// Decide as an agent run with --no-allow-host: the node reaches isolated pods only by a
    /// rule.
    #[arg(long)]
    no_allow_host: bool,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
    protocol: enforcer::model::Protocol,
    #[arg(long, value_enum, default_value = "table")]
    output: enforcer::dump::Format,
    /// Also ask the running agent's pinned maps (this node's endpoints) and say whether they
    /// agree with the manifests.
    #[arg(long)]
    live: bool,
    /// The agent's bpffs folder, for --live.
    #[arg(long, env = "ENFORCER_BPFFS", default_value = "/sys/fs/bpf/enforcer")]
    bpffs: PathBuf,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    enforcer_lab::parse_duration(s)
}

/// The mark's lowest bit, or 0 for `off`.
fn parse_mark_shift(s: &str) -> Result<u32, String> {
    use enforcer_common::endpoint_mark::MAX_SHIFT;
    if s.trim() == "off" {
        return Ok(0);
    }
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_SHIFT).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a bit from 1 to {MAX_SHIFT} (the mark's 12 bits must fit in 32), or `off`"
        )),
    }
}

fn parse_protocol(s: &str) -> Result<enforcer::model::Protocol, String> {
    enforcer::model::Protocol::parse(&s.to_ascii_uppercase())
        .ok_or_else(|| format!("{s:?} is not TCP, UDP or SCTP"))
}

/// The explanation's text and whether it was judged at all.
fn explain_cmd(a: ExplainArgs) -> anyhow::Result<(String, bool)> {
    let snap = enforcer::source::ManifestDir::new(&a.manifests).read()?;
    if !snap.errors.is_empty() {
        anyhow::bail!("rejected manifests: {}", snap.errors.join("; "));
    }
    let opts = enforcer::explain::Options {
        node_ips: a.node_ips.clone(),
        no_allow_host: a.no_allow_host,
    };
    let mut e =
        enforcer::explain::explain(&snap.cluster, &a.from, &a.to, a.protocol, &a.port, &opts)?;
    if a.live {
        let pinned = open_live(&a.bpffs)?;
        enforcer::explain::add_live(&mut e, &pinned.read_state()?, a.protocol);
    }
    let text = match a.output {
        enforcer::dump::Format::Json => serde_json::to_string_pretty(&e)? + "\n",
        enforcer::dump::Format::Table => enforcer::explain::render(&e),
    };
    Ok((text, e.judged))
}

#[derive(Subcommand)]
enum DescribeCommand {
    /// The policies that select a pod, in each direction, which isolate it, what they allow.
    Pod(DescribePodArgs),
}

#[derive(clap::Args)]
struct DescribePodArgs {
    /// The pod: namespace/name.
    pod: String,
    /// Folder of manifests the pod and policies come from.
    #[arg(long, env = "ENFORCER_MANIFESTS")]
    manifests: PathBuf,
    /// Also show what the running agent's pinned maps hold for the pod (its endpoint and
    /// modes) and whether they agree with the manifests.
    #[arg(long)]
    live: bool,
    /// The agent's bpffs folder, for --live.
    #[arg(long, env = "ENFORCER_BPFFS", default_value = "/sys/fs/bpf/enforcer")]
    bpffs: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    output: enforcer::dump::Format,
}

fn describe_pod_cmd(a: DescribePodArgs) -> anyhow::Result<String> {
    let Some((ns, name)) = a
        .pod
        .split_once('/')
        .filter(|(n, m)| !n.is_empty() && !m.is_empty())
    else {
        anyhow::bail!("{:?} is not namespace/name", a.pod);
    };
    let snap = enforcer::source::ManifestDir::new(&a.manifests).read()?;
    if !snap.errors.is_empty() {
        anyhow::bail!("rejected manifests: {}", snap.errors.join("; "));
    }
    let mut v = enforcer::describe::describe_pod(
        &snap.cluster,
        &enforcer::model::ObjectRef::new(ns, name),
    )?;
    if a.live {
        let pinned = open_live(&a.bpffs)?;
        enforcer::describe::add_live(&mut v, &pinned.read_state()?);
    }
    Ok(match a.output {
        enforcer::dump::Format::Json => serde_json::to_string_pretty(&v)? + "\n",
        enforcer::dump::Format::Table => enforcer::describe::render(&v),
    })
}

#[derive(Subcommand)]
enum MapsCommand {
    /// Print endpoints, identities, CIDR prefixes, policy entries, conntrack and counters.
    #[command(
        after_help = "Examples:\n  enforcer maps dump --output json\n  enforcer maps dump policy\n  enforcer lab exec demo node-1 -- maps dump endpoints"
    )]
    Dump {
        /// Only this part.
        #[arg(value_enum)]
        map: Option<enforcer::dump::Section>,
        /// The agent's bpffs folder.
        #[arg(long, env = "ENFORCER_BPFFS", default_value = "/sys/fs/bpf/enforcer")]
        bpffs: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        output: enforcer::dump::Format,
        /// Identities and policies as numbers (ids), not by what they stand for.
        #[arg(long)]
        numeric: bool,
        /// Only this pod's endpoint and flows (NAMESPACE/NAME).
        #[arg(long, value_parser = parse_pod)]
        pod: Option<String>,
        /// Read pins no running agent owns (left by an agent that exited with --keep-pins, or
        /// crashed); without it such pins are refused with exit status 3.
        #[arg(long)]
        allow_stale: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Lab { command } => {
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("error: cannot find the enforcer executable: {e}");
                    return ExitCode::from(2);
                }
            };
            enforcer_lab::set_agent_check(|file, text| {
                enforcer::source::parse_objects(file, text)
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
            let code = enforcer_lab::main(command, &exe);
            ExitCode::from(u8::try_from(code).unwrap_or(2))
        }
        Command::Run(a) => {
            enforcer::logging::init(a.log_format);
            let source = match (a.source, a.manifests) {
                (SourceArg::Kube, _) => SourceOptions::Kube {
                    kubeconfig: a.kubeconfig,
                },
                (SourceArg::Manifests, Some(dir)) => SourceOptions::Manifests(dir),
                (SourceArg::Manifests, None) => {
                    eprintln!("error: --source manifests needs --manifests DIR");
                    return ExitCode::from(2);
                }
            };
            let opts = AgentOptions {
                source,
                resync: a.resync,
                health_addr: a.health_addr,
                default_deny_unknown: a.default_deny_unknown,
                node: a.node,
                bpffs: a.bpffs,
                status_file: a.status_file,
                events_file: a.events_file,
                events_max_bytes: a.events_max_mb.max(1) << 20,
                keep_pins: a.keep_pins,
                allow_host_ingress: !a.no_allow_host,
                events_on_allow: a.events_on_allow,
                events_off: a.no_events,
                no_rule_counters: a.no_rule_counters,
                drop_report_window: a.drop_report_window,
                endpoint_mark_shift: Some(a.endpoint_mark_shift).filter(|n| *n != 0),
                service_defer: a.service_defer,
                service_defer_budget: a.service_defer_budget,
                event_rate: a.event_rate,
                event_burst: a.event_burst,
                rescan: Duration::from_millis(a.rescan_ms.max(50)),
                ct_lifetimes: enforcer::conntrack::Lifetimes {
                    tcp_established: a.ct_tcp_established_timeout,
                    tcp_syn: a.ct_tcp_syn_timeout,
                    tcp_close: a.ct_tcp_close_timeout,
                    other: a.ct_other_timeout,
                },
                ct_gc_interval: a.ct_gc_interval,
                ct_endpoint_budget: a.ct_endpoint_budget,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime");
            let result = rt.and_then(|rt| rt.block_on(run(opts)));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Events(a) => match enforcer::events::run(&a, &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "enforcer",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Describe {
            command: DescribeCommand::Pod(a),
        } => print_or_fail(describe_pod_cmd(a)),
        Command::Explain(a) => match explain_cmd(a) {
            Ok((text, judged)) => {
                print!("{text}");
                if judged {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(enforcer::explain::EXIT_NOT_JUDGED)
                }
            }
            Err(e) => print_or_fail(Err(e)),
        },
        Command::Status { bpffs, output } => {
            let (text, code) = enforcer::status::status(&bpffs, output);
            print!("{text}");
            ExitCode::from(code)
        }
        Command::Maps {
            command:
                MapsCommand::Dump {
                    map,
                    bpffs,
                    output,
                    allow_stale,
                    numeric,
                    pod,
                },
        } => {
            if let Some(warning) = stale_pins(&bpffs) {
                eprintln!("warning: {warning}");
                if !allow_stale {
                    eprintln!("error: refusing stale pins (--allow-stale reads them anyway)");
                    return ExitCode::from(enforcer::status::exit::NOT_RUNNING);
                }
            }
            let opts = enforcer::dump::Options {
                only: map,
                numeric,
                pod,
            };
            print_or_fail(enforcer::dump::dump(&bpffs, output, &opts))
        }
    }
}

fn parse_pod(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(s.to_string())
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

/// The pinned maps `--live` reads, with a warning when no agent owns them.
fn open_live(bpffs: &std::path::Path) -> anyhow::Result<enforcer::bpf::PinnedMaps> {
    let pinned = enforcer::bpf::PinnedMaps::open(bpffs).with_context(|| {
        format!(
            "opening the pinned maps under {} (is the agent running?)",
            bpffs.display()
        )
    })?;
    if let Some(warning) = stale_pins(bpffs) {
        eprintln!("warning: {warning}");
    }
    Ok(pinned)
}

/// Pins under `bpffs` that no running agent owns: what to say about them.
fn stale_pins(bpffs: &std::path::Path) -> Option<String> {
    use enforcer::status::record;
    if !enforcer::status::pins_exist(bpffs) {
        return None;
    }
    match record::probe(&record::dir(), bpffs) {
        record::Probe::Live(_) => None,
        record::Probe::NotRunning(rec) => Some(format!(
            "no agent runs on the pins under {}: they are stale{} and show what was last installed",
            bpffs.display(),
            rec.map(|r| format!(" (left by pid {}, started {})", r.pid, r.started))
                .unwrap_or_default()
        )),
    }
}

/// Prints a command's output, or its error (with causes) and a failing exit status.
fn print_or_fail(r: anyhow::Result<String>) -> ExitCode {
    match r {
        Ok(s) => {
            print!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A conntrack lifetime or interval: `500ms`, `60s`, `10m`, `6h`, or plain seconds.
fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!("{s:?} is not a duration like 10s, 5m or 6h")),
    }
}
