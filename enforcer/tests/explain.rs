//! `explain` answers what the datapath answers: generated clusters (seeded, deterministic:
//! namespaces, pods with named container ports, NetworkPolicies with pod and namespace
//! selectors, ipBlocks with excepts, numbered, named and ranged ports, TCP, UDP and SCTP) and
//! generated flows (pod → pod, node → pod, TEST-NET host → pod, pod → outside, given by names
//! and by addresses), each decided by `explain` and by the compiled eBPF program through
//! BPF_PROG_TEST_RUN on the maps the agent would install. Every mismatch fails, naming the
//! seed and the flow; `ENFORCER_EXPLAIN_SEED=N` runs one cluster.
//!
//! Needs root (it loads the eBPF programs); README's test command runs it as root.
#[path = "common/packets.rs"]
mod packets;

use std::fmt::Write as _;

use enforcer::compiler::Cluster;
use enforcer::explain::{Endpoint, Explanation, Options, PortArg, explain};
use enforcer::model::Protocol;
use enforcer::source::parse_objects;
use enforcer_common::reason;
use packets::*;

/// SplitMix64: small, seeded, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const NODE_IP: &str = "172.16.0.1";
const NODE_IP6: &str = "fd10::1";
const NAMESPACES: [(&str, &str); 3] = [("ns0", "a"), ("ns1", "b"), ("ns2", "a")];
const APPS: [&str; 3] = ["web", "db", "api"];
/// (name, number, protocol): a name may stand for different numbers on different pods.
const CONTAINER_PORTS: [(&str, u16, &str); 6] = [
    ("http", 80, "TCP"),
    ("http", 8080, "TCP"),
    ("dns", 53, "UDP"),
    ("sig", 9000, "SCTP"),
    ("metrics", 9100, "TCP"),
    ("dns", 5353, "UDP"),
];
const BLOCKS: [(&str, &[&str]); 9] = [
    ("::/0", &["fd00::/8"]),
    ("2001:db8::/32", &["2001:db8:ff::/48"]),
    ("fd00::/64", &["fd00::2/128"]),
    ("0.0.0.0/0", &["10.0.0.0/8"]),
    ("172.16.0.0/12", &[]),
    ("192.0.2.0/24", &["192.0.2.128/25"]),
    ("198.51.100.0/24", &[]),
    ("10.0.1.0/28", &["10.0.1.2/32"]),
    ("0.0.0.0/0", &["192.0.2.0/24", "172.16.0.0/16"]),
];
/// Outside hosts (TEST-NET) and a pod-range address no pod holds.
const OUTSIDE: [&str; 8] = [
    "2001:db8::10",
    "2001:db8:ff::1",
    "fd00::99",
    "192.0.2.10",
    "192.0.2.200",
    "198.51.100.7",
    "203.0.113.5",
    "10.0.1.99",
];
const PORTS: [u16; 8] = [53, 80, 443, 5353, 8080, 8081, 9000, 9100];
const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// A pod's named container ports: (name, protocol).
type NamedPorts = Vec<(&'static str, &'static str)>;

struct Generated {
    yaml: String,
    /// (namespace/name, IPv4 address, named ports, IPv6 address)
    pods: Vec<(String, String, NamedPorts, String)>,
    opts: Options,
}

fn selector(r: &mut Rng, key: &str, values: &[&str]) -> String {
    match r.below(4) {
        0 => "{}".into(),
        1 => format!(
            "{{matchExpressions: [{{key: {key}, operator: In, values: [{}, {}]}}]}}",
            r.pick(values),
            r.pick(values)
        ),
        2 => format!(
            "{{matchExpressions: [{{key: {key}, operator: NotIn, values: [{}]}}]}}",
            r.pick(values)
        ),
        _ => format!("{{matchLabels: {{{key}: {}}}}}", r.pick(values)),
    }
}

fn peer(r: &mut Rng) -> String {
    match r.below(5) {
        0 => format!("{{podSelector: {}}}", selector(r, "app", &APPS)),
        1 => format!(
            "{{namespaceSelector: {}}}",
            selector(r, "team", &["a", "b"])
        ),
        2 => format!(
            "{{namespaceSelector: {}, podSelector: {}}}",
            selector(r, "team", &["a", "b"]),
            selector(r, "app", &APPS)
        ),
        _ => {
            let (cidr, except) = r.pick(&BLOCKS);
            if except.is_empty() {
                format!("{{ipBlock: {{cidr: \"{cidr}\"}}}}")
            } else {
                format!(
                    "{{ipBlock: {{cidr: \"{cidr}\", except: [{}]}}}}",
                    except
                        .iter()
                        .map(|e| format!("\"{e}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        }
    }
}

fn port(r: &mut Rng) -> String {
    let proto = match r.below(4) {
        0 => String::new(),
        _ => format!("protocol: {}, ", r.pick(&["TCP", "UDP", "SCTP"])),
    };
    match r.below(4) {
        0 => format!(
            "{{{proto}port: {}}}",
            r.pick(&["http", "dns", "sig", "metrics"])
        ),
        1 => {
            let p = *r.pick(&PORTS);
            format!("{{{proto}port: {p}, endPort: {}}}", p + r.below(40) as u16)
        }
        2 => format!("{{{}}}", proto.trim_end_matches(", ")),
        _ => format!("{{{proto}port: {}}}", r.pick(&PORTS)),
    }
}

fn rules(r: &mut Rng, word: &str) -> String {
    let mut out = String::from("[");
    for i in 0..r.below(3) {
        if i > 0 {
            out.push_str(", ");
        }
        let mut parts = Vec::new();
        if !r.chance(20) {
            let peers: Vec<String> = (0..1 + r.below(2)).map(|_| peer(r)).collect();
            parts.push(format!("{word}: [{}]", peers.join(", ")));
        }
        if r.chance(60) {
            let ports: Vec<String> = (0..1 + r.below(2)).map(|_| port(r)).collect();
            parts.push(format!("ports: [{}]", ports.join(", ")));
        }
        let _ = write!(out, "{{{}}}", parts.join(", "));
    }
    out.push(']');
    out
}

/// A ClusterNetworkPolicy peer: pods, namespaces, or (egress) networks.
fn cluster_peer(r: &mut Rng, egress: bool) -> String {
    match r.below(if egress { 4 } else { 3 }) {
        0 => format!("{{namespaces: {}}}", selector(r, "team", &["a", "b"])),
        1 | 2 => format!(
            "{{pods: {{namespaceSelector: {}, podSelector: {}}}}}",
            selector(r, "team", &["a", "b"]),
            selector(r, "app", &APPS)
        ),
        _ => {
            let nets: Vec<String> = (0..1 + r.below(2))
                .map(|_| format!("\"{}\"", r.pick(&BLOCKS).0))
                .collect();
            format!("{{networks: [{}]}}", nets.join(", "))
        }
    }
}

/// ClusterNetworkPolicy `protocols` (named ports only towards pods).
fn cluster_protocols(r: &mut Rng, named: bool) -> String {
    let items: Vec<String> = (0..1 + r.below(2))
        .map(|_| match r.below(if named { 4 } else { 3 }) {
            0 => {
                let p = *r.pick(&PORTS);
                format!(
                    "{{{}: {{destinationPort: {{range: {{start: {p}, end: {}}}}}}}}}",
                    r.pick(&["tcp", "udp", "sctp"]),
                    p + 1 + r.below(40) as u16
                )
            }
            3 => format!(
                "{{destinationNamedPort: {}}}",
                r.pick(&["http", "dns", "sig", "metrics"])
            ),
            _ => format!(
                "{{{}: {{destinationPort: {{number: {}}}}}}}",
                r.pick(&["tcp", "udp", "sctp"]),
                r.pick(&PORTS)
            ),
        })
        .collect();
    format!("protocols: [{}]", items.join(", "))
}

fn cluster_rules(r: &mut Rng, egress: bool) -> String {
    let word = if egress { "to" } else { "from" };
    let rules: Vec<String> = (0..r.below(4))
        .map(|_| {
            let peers: Vec<String> = (0..1 + r.below(2))
                .map(|_| cluster_peer(r, egress))
                .collect();
            let named = !peers.iter().any(|p| p.contains("networks"));
            let mut parts = vec![
                format!("action: {}", r.pick(&["Accept", "Deny", "Pass"])),
                format!("{word}: [{}]", peers.join(", ")),
            ];
            if r.chance(60) {
                parts.push(cluster_protocols(r, named));
            }
            format!("{{{}}}", parts.join(", "))
        })
        .collect();
    format!("[{}]", rules.join(", "))
}

fn cluster_policies(r: &mut Rng, y: &mut String) {
    for i in 0..r.below(4) {
        let subject = if r.chance(50) {
            format!("{{namespaces: {}}}", selector(r, "team", &["a", "b"]))
        } else {
            format!(
                "{{pods: {{namespaceSelector: {}, podSelector: {}}}}}",
                selector(r, "team", &["a", "b"]),
                selector(r, "app", &APPS)
            )
        };
        let _ = writeln!(
            y,
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: cnp{i}}}\n\
             spec: {{tier: {}, priority: {}, subject: {subject}, ingress: {}, egress: {}}}\n---",
            r.pick(&["Admin", "Baseline"]),
            r.pick(&[5, 10, 10, 20]),
            cluster_rules(r, false),
            cluster_rules(r, true),
        );
    }
}

fn generate(seed: u64) -> Generated {
    let mut r = Rng(seed);
    let mut y = String::new();
    for (ns, team) in NAMESPACES {
        let _ = writeln!(
            y,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: {team}}}}}\n---"
        );
    }
    let mut pods = Vec::new();
    for i in 0..3 + r.below(3) {
        let (ns, _) = *r.pick(&NAMESPACES);
        let app = r.pick(&APPS);
        let ip = format!("10.0.1.{}", i + 1);
        let ip6 = format!("fd00::{}", i + 1);
        let mut named = Vec::new();
        let mut ports = Vec::new();
        for (name, number, proto) in CONTAINER_PORTS {
            if r.chance(35) && !named.iter().any(|(n, _)| *n == name) {
                named.push((name, proto));
                ports.push(format!(
                    "{{name: {name}, containerPort: {number}, protocol: {proto}}}"
                ));
            }
        }
        let _ = writeln!(
            y,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {ns}, labels: {{app: {app}}}}}\n\
             spec: {{containers: [{{name: c, image: i, ports: [{}]}}]}}\n\
             status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}, {{ip: \"{ip6}\"}}]}}\n---",
            ports.join(", ")
        );
        pods.push((format!("{ns}/p{i}"), ip, named, ip6));
    }
    let _ = writeln!(
        y,
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: node-agent, namespace: kube-system}}\n\
         spec: {{hostNetwork: true, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: {NODE_IP}}}\n---"
    );
    cluster_policies(&mut r, &mut y);
    for i in 0..r.below(4) {
        let (ns, _) = *r.pick(&NAMESPACES);
        let types = match r.below(4) {
            0 => "",
            1 => "policyTypes: [Ingress], ",
            2 => "policyTypes: [Egress], ",
            _ => "policyTypes: [Ingress, Egress], ",
        };
        let _ = writeln!(
            y,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: {ns}}}\n\
             spec: {{podSelector: {}, {types}ingress: {}, egress: {}}}\n---",
            selector(&mut r, "app", &APPS),
            rules(&mut r, "from"),
            rules(&mut r, "to"),
        );
    }
    Generated {
        yaml: y,
        pods,
        opts: Options {
            node_ips: vec![NODE_IP.parse().unwrap(), NODE_IP6.parse().unwrap()],
            no_allow_host: r.chance(50),
        },
    }
}

fn cluster(g: &Generated, seed: u64) -> Cluster {
    let mut c = Cluster::default();
    let objects = parse_objects(&format!("seed-{seed}.yaml"), &g.yaml).unwrap_or_else(|e| {
        panic!(
            "seed {seed}: generated manifests do not parse: {e}\n{}",
            g.yaml
        )
    });
    for o in objects {
        c.insert(o);
    }
    c
}

/// One generated flow: each end a pod by name or by address, the node, or an outside host.
struct GenFlow {
    from: String,
    to: String,
    protocol: Protocol,
    port: PortArg,
}

fn flows(g: &Generated, seed: u64, n: usize) -> Vec<GenFlow> {
    let mut r = Rng(seed ^ 0x5eed_f10e);
    let mut out = Vec::new();
    while out.len() < n {
        let v6 = r.chance(30);
        let end = |r: &mut Rng| -> (String, Option<usize>) {
            match r.below(10) {
                0..=5 => {
                    let i = r.below(g.pods.len());
                    let (name, ip, _, ip6) = &g.pods[i];
                    let given = match (r.chance(50), v6) {
                        (true, _) => name.clone(),
                        (false, false) => ip.clone(),
                        (false, true) => ip6.clone(),
                    };
                    (given, Some(i))
                }
                6 if v6 => (NODE_IP6.into(), None),
                6 => (
                    if r.chance(50) {
                        NODE_IP.into()
                    } else {
                        "kube-system/node-agent".into()
                    },
                    None,
                ),
                _ if v6 => (OUTSIDE[r.below(3)].to_string(), None),
                _ => (OUTSIDE[3 + r.below(OUTSIDE.len() - 3)].to_string(), None),
            }
        };
        let (from, fi) = end(&mut r);
        let (to, ti) = end(&mut r);
        if fi.is_none() && ti.is_none() || (fi.is_some() && fi == ti) {
            continue;
        }
        let mut protocol = *r.pick(&PROTOCOLS);
        let port = match ti {
            Some(i) if !g.pods[i].2.is_empty() && r.chance(30) => {
                let (name, proto) = *r.pick(&g.pods[i].2);
                protocol = Protocol::parse(proto).unwrap();
                PortArg::Name(name.to_string())
            }
            _ => PortArg::Number(*r.pick(&PORTS)),
        };
        out.push(GenFlow {
            from,
            to,
            protocol,
            port,
        });
    }
    out
}

/// The reason the datapath counted for one packet (the one reason counter that moved).
fn counted(before: &[u64], after: &[u64]) -> Vec<u8> {
    (0..reason::COUNT)
        .filter(|&i| after.get(i) != before.get(i))
        .map(|i| i as u8)
        .collect()
}

/// Installs the maps of `compiled` with the endpoint of `pod` ("ns/name") moved to `IFINDEX`,
/// the interface the test runs on, and returns them.
fn install_at(
    dp: &mut Datapath,
    compiled: &enforcer::explain::Compiled,
    pod: &str,
    revision: &mut u32,
) -> enforcer::state::MapState {
    let (ns, name) = pod.split_once('/').unwrap();
    let key = enforcer::model::ObjectRef::new(ns, name);
    let ifindex = compiled.node.interfaces[&key];
    let mut state = compiled.state.clone();
    let info = state
        .endpoints
        .remove(&ifindex)
        .expect("every pod is an endpoint");
    state.endpoints.insert(IFINDEX, info);
    *revision += 1;
    dp.install(&state, *revision, 0).expect("installing");
    state
}

/// The first packet of the flow `e` explains, from source port `sport`.
fn packet_of(e: &Explanation, protocol: Protocol, sport: u16) -> Vec<u8> {
    let l4 = match protocol {
        Protocol::Tcp => tcp(sport, e.port),
        Protocol::Udp => udp(sport, e.port),
        Protocol::Sctp => sctp(sport, e.port),
    };
    let (src, dst) = (e.from.address.to_string(), e.to.address.to_string());
    if e.from.address.is_ipv6() {
        ipv6(&src, &dst, protocol.number(), &l4)
    } else {
        ipv4(&src, &dst, protocol.number(), &l4)
    }
}

/// Runs `packet` through `prog` once: whether it passed, and the names of the reasons it was
/// counted under.
fn run_counted(
    dp: &mut Datapath,
    prog: enforcer::bpf::Prog,
    packet: &[u8],
    skb: &enforcer::bpf::TestSkb,
) -> (bool, Vec<&'static str>) {
    let before = dp.counters().unwrap();
    let verdict = dp
        .test_run_skb(prog, packet, 1, skb)
        .expect("test run")
        .verdict;
    let after = dp.counters().unwrap();
    dp.drain_events();
    let names = counted(&before, &after)
        .iter()
        .map(|r| reason::name(*r))
        .collect();
    (verdict == TC_PASS, names)
}

/// Every side of `e` run through the datapath, each mismatch a line.
fn datapath_sides(
    dp: &mut Datapath,
    compiled: &enforcer::explain::Compiled,
    e: &Explanation,
    protocol: Protocol,
    sport: &mut u16,
    revision: &mut u32,
) -> Vec<String> {
    let mut wrong = Vec::new();
    for side in &e.sides {
        install_at(dp, compiled, &side.pod, revision);
        *sport += 1;
        let packet = packet_of(e, protocol, *sport);
        let prog = if side.direction == "egress" { OUT } else { IN };
        let (passed, names) = run_counted(dp, prog, &packet, &Default::default());
        if passed != side.allowed || names != [side.reason] {
            wrong.push(format!(
                "{} at {}: explain {} ({}), datapath {} ({})",
                side.direction,
                side.pod,
                if side.allowed { "allow" } else { "deny" },
                side.reason,
                if passed { "pass" } else { "drop" },
                names.join(", ")
            ));
        }
    }
    wrong
}

/// Every ingress side of `e` again as the datapath meets it on the other arrivals, against
/// `lookup::decide_from`: the endpoint's own packet back through a Service (the endpoint mark
/// of its interface: the ordered tiers judge the endpoint itself) and a packet forwarded from
/// another interface (the node's address counts as WORLD). Returns the mismatches and how many
/// sides ran.
fn arrival_sides(
    dp: &mut Datapath,
    compiled: &enforcer::explain::Compiled,
    e: &Explanation,
    protocol: Protocol,
    sport: &mut u16,
    revision: &mut u32,
) -> (Vec<String>, usize) {
    use enforcer::bpf::TestSkb;
    use enforcer::lookup::{Arrival, decide_from};
    use enforcer_common::{direction, endpoint_mark};
    let (mut wrong, mut ran) = (Vec::new(), 0);
    for side in e.sides.iter().filter(|s| s.direction == "ingress") {
        let state = install_at(dp, compiled, &side.pod, revision);
        let mark = endpoint_mark::slot(IFINDEX) << endpoint_mark::DEFAULT_SHIFT;
        let arrivals = [
            (
                "hairpin",
                Arrival::Hairpin { own: e.to.address },
                TestSkb {
                    mark: mark | 0x4000,
                    ..Default::default()
                },
            ),
            (
                "forwarded",
                Arrival::Forwarded,
                TestSkb {
                    ingress_ifindex: IFINDEX + 100,
                    ..Default::default()
                },
            ),
        ];
        for (what, arrival, skb) in arrivals {
            *sport += 1;
            let packet = packet_of(e, protocol, *sport);
            let want = decide_from(
                &state,
                IFINDEX,
                direction::INGRESS,
                e.from.address,
                protocol.number(),
                e.port,
                arrival,
            );
            let (passed, names) = run_counted(dp, IN, &packet, &skb);
            ran += 1;
            if passed != want.allowed || names != [reason::name(want.reason)] {
                wrong.push(format!(
                    "ingress at {} ({what}): lookup {} ({}), datapath {} ({})",
                    side.pod,
                    if want.allowed { "allow" } else { "deny" },
                    reason::name(want.reason),
                    if passed { "pass" } else { "drop" },
                    names.join(", ")
                ));
            }
        }
    }
    (wrong, ran)
}

#[test]
fn explain_answers_what_the_datapath_answers() {
    require_root();
    let seeds: Vec<u64> = match std::env::var("ENFORCER_EXPLAIN_SEED") {
        Ok(s) => vec![s.parse().expect("ENFORCER_EXPLAIN_SEED is a number")],
        Err(_) => (0..120).collect(),
    };
    let mut dp = Datapath::load_unpinned().expect("loading the datapath");
    let (mut sport, mut revision) = (20000u16, 0u32);
    let mut failures = Vec::new();
    let (mut judged, mut sides, mut denied, mut ipv6) = (0, 0, 0, 0);
    let (mut by_deny_rule, mut arrivals) = (0, 0);
    for &seed in &seeds {
        let g = generate(seed);
        let c = cluster(&g, seed);
        let compiled = enforcer::explain::compile_all(&c, &g.opts);
        let mut failed_here = Vec::new();
        for f in flows(&g, seed, 24) {
            let from: Endpoint = f.from.parse().unwrap();
            let to: Endpoint = f.to.parse().unwrap();
            let flow = format!(
                "seed {seed}: {} → {} {}/{} (no_allow_host {})",
                f.from,
                f.to,
                f.protocol,
                match &f.port {
                    PortArg::Number(n) => n.to_string(),
                    PortArg::Name(n) => n.clone(),
                },
                g.opts.no_allow_host
            );
            let e = match explain(&c, &from, &to, f.protocol, &f.port, &g.opts) {
                Ok(e) => e,
                Err(err) => {
                    failed_here.push(format!("{flow}: explain failed: {err:#}"));
                    continue;
                }
            };
            if !e.judged {
                failed_here.push(format!("{flow}: a pod end, yet not judged"));
                continue;
            }
            judged += 1;
            sides += e.sides.len();
            by_deny_rule += e
                .sides
                .iter()
                .filter(|s| s.reason == reason::name(reason::DENY_RULE))
                .count();
            denied += usize::from(e.allowed == Some(false));
            if !e.agree {
                failed_here.push(format!(
                    "{flow}: the compiled maps and the reference disagree"
                ));
            }
            // The same flow by the other form of each pod end decides the same.
            let v6 = e.from.address.is_ipv6();
            ipv6 += usize::from(v6);
            let other = |given: &str| -> String {
                g.pods
                    .iter()
                    .find_map(|(n, ip, _, ip6)| {
                        let own = if v6 { ip6 } else { ip };
                        (n == given)
                            .then(|| own.clone())
                            .or((ip == given || ip6 == given).then(|| n.clone()))
                    })
                    .unwrap_or_else(|| given.to_string())
            };
            let e2 = explain(
                &c,
                &other(&f.from).parse().unwrap(),
                &other(&f.to).parse().unwrap(),
                f.protocol,
                &f.port,
                &g.opts,
            )
            .expect("the other form explains too");
            // (Two names pick IPv4: compared only when the addresses are the same.)
            if (e2.from.address, e2.to.address) == (e.from.address, e.to.address)
                && e2.sides != e.sides
            {
                failed_here.push(format!("{flow}: by names and by addresses differ"));
            }
            for w in datapath_sides(
                &mut dp,
                &compiled,
                &e,
                f.protocol,
                &mut sport,
                &mut revision,
            ) {
                failed_here.push(format!("{flow}: {w}"));
            }
            let (wrong, ran) = arrival_sides(
                &mut dp,
                &compiled,
                &e,
                f.protocol,
                &mut sport,
                &mut revision,
            );
            arrivals += ran;
            failed_here.extend(wrong.into_iter().map(|w| format!("{flow}: {w}")));
        }
        if !failed_here.is_empty() {
            if failures.is_empty() {
                failed_here.push(format!("the cluster of seed {seed}:\n{}", g.yaml));
            }
            failures.extend(failed_here);
        }
    }
    eprintln!(
        "{} clusters, {judged} judged flows ({denied} denied, {ipv6} IPv6), {sides} sides run through the datapath, {by_deny_rule} denied by a cluster policy's Deny rule, {arrivals} ingress sides run again as hairpin and forwarded",
        seeds.len()
    );
    assert!(
        denied > 0 && denied < judged,
        "the generator makes both verdicts"
    );
    assert!(
        seeds.len() < 10 || by_deny_rule > 0,
        "the generator makes Deny rules decide"
    );
    assert!(
        failures.is_empty(),
        "{} mismatches between explain and the datapath:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
