//! Adversarial tests: whole labs with pods that forge packets, on routed and bridge nodes.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
//!
//! The cluster: pod x/b admits only pods labelled app=c (x/c on b's node, x/d on the other
//! node). x/a is isolated from b (and has an ingress policy of its own); x/n has no policy at
//! all. a and n forge packets with the source of a pod b admits, of the node, of the bridge
//! (bridge nodes) and a v4-mapped IPv6 source; TCP SYN, UDP, ICMP echo; IPv4 and IPv6. A packet
//! socket on b's eth0 must see none of them, and each must be reported as a drop attributed to
//! its sender. The same packets with their true source, sent by c and d, reach b (so the
//! harness can see what passes).

#[path = "../../enforcer/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use common::run::Run;
use common::{ONE_AT_A_TIME, require_root};
use enforcer_lab::forge::{self, Forged, Kind, Sniffer};
use enforcer_lab::lab::Source;
use serde_json::Value;

/// The lab: two nodes of one CNI kind; a, b, c and n on node-1, d on node-2. Dual-stack
/// addresses inside the nodes' pod prefixes (bridge nodes' `cni0` subnets).
fn scenario(cni: &str) -> String {
    format!(
        "
nodes:
  - {{name: node-1, cni: {cni}, podCIDR: 10.42.1.0/24}}
  - {{name: node-2, cni: {cni}, podCIDR: 10.42.2.0/24}}
namespaces: [{{name: x}}]
pods:
  - {{namespace: x, name: a, node: node-1, labels: {{app: a}}, ips: [10.42.1.10, 'fd00:10:42:1::10']}}
  - {{namespace: x, name: b, node: node-1, labels: {{app: b}}, ips: [10.42.1.11, 'fd00:10:42:1::11'],
     ports: [{{port: 80, protocol: TCP}}, {{port: 81, protocol: UDP}}]}}
  - {{namespace: x, name: c, node: node-1, labels: {{app: c}}, ips: [10.42.1.12, 'fd00:10:42:1::12']}}
  - {{namespace: x, name: n, node: node-1, labels: {{app: n}}, ips: [10.42.1.13, 'fd00:10:42:1::13']}}
  - {{namespace: x, name: d, node: node-2, labels: {{app: c}}, ips: [10.42.2.10, 'fd00:10:42:2::10']}}
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {{name: b-admits-c, namespace: x}}
    spec:
      podSelector: {{matchLabels: {{app: b}}}}
      policyTypes: [Ingress]
      ingress: [{{from: [{{podSelector: {{matchLabels: {{app: c}}}}}}]}}]
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {{name: a-isolated, namespace: x}}
    spec:
      podSelector: {{matchLabels: {{app: a}}}}
      policyTypes: [Ingress]
"
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What an attacker claims to be.
struct Claim {
    what: &'static str,
    src: IpAddr,
    /// The reasons a drop of this forgery may be reported with.
    reasons: &'static [&'static str],
}

const SPOOFED: &[&str] = &["spoofed-source"];

/// The sources a pod on node-1 forges (to b's address of the same family).
fn claims(run: &Run, bridge: bool) -> Vec<Claim> {
    let node = &run.plan.nodes[0];
    let mut v = vec![
        ("another local pod (x/c)", ip("10.42.1.12")),
        ("another local pod (x/c)", ip("fd00:10:42:1::12")),
        ("a pod on another node (x/d)", ip("10.42.2.10")),
        ("a pod on another node (x/d)", ip("fd00:10:42:2::10")),
        ("the node's own address", node.fabric_ips[0]),
        ("the node's own address", node.fabric_ips[1]),
    ];
    if bridge {
        v.push(("the bridge's address", ip("10.42.1.1")));
        v.push(("the bridge's address", ip("fd00:10:42:1::1")));
    }
    let mut out: Vec<Claim> = v
        .into_iter()
        .map(|(what, src)| Claim {
            what,
            src,
            reasons: SPOOFED,
        })
        .collect();
    out.push(Claim {
        what: "a v4-mapped IPv6 source (x/c's ::ffff:10.42.1.12)",
        src: ip("::ffff:10.42.1.12"),
        // Dropped as an address no real packet carries, or as not the sender's.
        reasons: &["invalid-address", "spoofed-source"],
    });
    out
}

fn b_addr(family_of: &IpAddr) -> IpAddr {
    if family_of.is_ipv4() {
        ip("10.42.1.11")
    } else {
        ip("fd00:10:42:1::11")
    }
}

fn dst_port(kind: Kind) -> u16 {
    match kind {
        Kind::TcpSyn => 80,
        Kind::Udp => 81,
        Kind::Echo => 0,
        Kind::SctpInit => 9003,
    }
}

/// Every forgery of `attacker` (a pod name), each with a tag of its own from `tags`.
fn forgeries(
    run: &Run,
    bridge: bool,
    tags: &mut u16,
) -> Vec<(String, Forged, &'static [&'static str])> {
    let mut out = Vec::new();
    for c in claims(run, bridge) {
        for kind in Kind::ALL {
            *tags += 1;
            let f = Forged {
                src: c.src,
                dst: b_addr(&c.src),
                kind,
                dst_port: dst_port(kind),
                tag: *tags,
            };
            out.push((
                format!("{} {} from {}", kind.name(), c.what, c.src),
                f,
                c.reasons,
            ));
        }
    }
    out
}

/// The events of node-1's agent so far (it judges every packet a node-1 pod sends).
fn events(run: &mut Run) -> Vec<Value> {
    std::thread::sleep(Duration::from_millis(300));
    run.res.agents[0].read_events()
}

/// The drop event of `f` sent by `from` (namespace/pod), if any: its reason.
fn drop_reason(events: &[Value], from: &str, f: &Forged) -> Option<String> {
    let protocol = match (f.kind, f.dst.is_ipv4()) {
        (Kind::TcpSyn, _) => "TCP",
        (Kind::Udp, _) => "UDP",
        (Kind::Echo, true) => "ICMP",
        (Kind::Echo, false) => "ICMPv6",
        (Kind::SctpInit, _) => "SCTP",
    };
    events
        .iter()
        .filter(|e| {
            e["verdict"] == "drop"
                && e["src"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(f.src)
                && e["dst"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) == Some(f.dst)
                && e["endpoint"].as_str() == Some(from)
                && e["protocol"] == protocol
                // An echo's identifier is not a port, and a packet refused for its address
                // is not parsed to its ports (0): addresses and protocol tell those apart.
                && (f.kind == Kind::Echo
                    || [0, u64::from(f.tag)].contains(&e["src_port"].as_u64().unwrap_or(1)))
        })
        .map(|e| e["reason"].as_str().unwrap_or("?").to_string())
        .next()
}

/// The kernel's reverse-path filter must not hide a hole in the enforcer: off on every
/// interface of the nodes and the pods.
fn assert_rp_filter_off(run: &Run) {
    let nodes = run.plan.nodes.iter().map(|n| n.netns.clone());
    let pods = run.plan.pods.iter().map(|p| p.netns.clone());
    for ns in nodes.chain(pods) {
        let on = enforcer_lab::netns::Netns::open(&ns)
            .unwrap()
            .run(|| {
                let mut on = Vec::new();
                for e in std::fs::read_dir("/proc/sys/net/ipv4/conf")? {
                    let path = e?.path().join("rp_filter");
                    if std::fs::read_to_string(&path)?.trim() != "0" {
                        on.push(path.display().to_string());
                    }
                }
                Ok(on)
            })
            .unwrap();
        assert!(on.is_empty(), "{ns}: rp_filter on in {on:?}");
    }
}

/// Sends every forgery from each attacker, and genuine packets from x/c and x/d; checks what
/// b's eth0 saw and what node-1's agent reported.
fn forged_sources_never_reach_b(cni: &str, attackers: &[&str]) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the adversarial lab tests");
    let bridge = cni == "bridge";
    let mut run = Run::start(&scenario(cni), Source::Manifests);
    assert_rp_filter_off(&run);
    let b_ns = run.ns("b");
    let mut sniffer = Sniffer::open(&b_ns, "eth0").expect("sniffing b's eth0");
    run.res.agents[0].mark_events();

    // Controls: the true sources of the pods b admits reach it, every kind, both families.
    let mut tags = 20_000u16;
    let mut controls = Vec::new();
    for (pod, v4, v6) in [
        ("c", "10.42.1.12", "fd00:10:42:1::12"),
        ("d", "10.42.2.10", "fd00:10:42:2::10"),
    ] {
        for src in [ip(v4), ip(v6)] {
            for kind in Kind::ALL {
                tags += 1;
                let f = Forged {
                    src,
                    dst: b_addr(&src),
                    kind,
                    dst_port: dst_port(kind),
                    tag: tags,
                };
                forge::send(&run.ns(pod), &f).expect("sending a genuine packet");
                controls.push((format!("{} from x/{pod} ({src})", kind.name()), f));
            }
        }
    }
    // And the attackers' own sources are refused (b is enforced, on a bridge node too).
    let mut refused = Vec::new();
    for attacker in attackers {
        let own = run.plan.ips_of(run.pod(attacker)).to_vec();
        for src in own {
            for kind in Kind::ALL {
                tags += 1;
                let f = Forged {
                    src,
                    dst: b_addr(&src),
                    kind,
                    dst_port: dst_port(kind),
                    tag: tags,
                };
                forge::send(&run.ns(attacker), &f).expect("sending a genuine packet");
                refused.push((format!("{} from x/{attacker} ({src})", kind.name()), f));
            }
        }
    }
    let mut missing = Vec::new();
    for (what, f) in &controls {
        if !sniffer.saw(f, Duration::from_secs(2)).unwrap() {
            missing.push(what.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "genuine packets that b admits did not reach it (the harness or the lab is broken): {missing:?}"
    );
    let passed: Vec<_> = refused
        .iter()
        .filter(|(_, f)| sniffer.saw(f, Duration::ZERO).unwrap())
        .map(|(what, _)| what)
        .collect();
    assert!(
        passed.is_empty(),
        "b admits only app=c, yet these reached it (b is not enforced): {passed:?}"
    );

    let mut tags = 30_000u16;
    let mut sent = Vec::new();
    for attacker in attackers {
        let ns = run.ns(attacker);
        for (what, f, reasons) in forgeries(&run, bridge, &mut tags) {
            forge::send(&ns, &f).unwrap_or_else(|e| panic!("x/{attacker} forging {what}: {e:#}"));
            sent.push((format!("x/{attacker}"), what, f, reasons));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let events = events(&mut run);
    let mut failures = Vec::new();
    for (from, what, f, reasons) in &sent {
        if sniffer.saw(f, Duration::ZERO).unwrap() {
            failures.push(format!("{from} forging {what}: b received it"));
        }
        match drop_reason(&events, from, f) {
            Some(r) if reasons.contains(&r.as_str()) => {}
            Some(r) => failures.push(format!(
                "{from} forging {what}: dropped as {r}, expected {}",
                reasons.join(" or ")
            )),
            None => failures.push(format!(
                "{from} forging {what}: no drop event attributed to {from}"
            )),
        }
    }
    let attackers: BTreeSet<_> = sent.iter().map(|s| &s.0).collect();
    assert!(
        failures.is_empty(),
        "{cni} nodes, {} forgeries from {attackers:?}, {} failed:\n  {}",
        sent.len(),
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn an_isolated_pod_forging_sources_b_admits_reaches_nothing_on_routed_nodes() {
    forged_sources_never_reach_b("routed", &["a"]);
}

#[test]
fn an_isolated_pod_forging_sources_b_admits_reaches_nothing_on_bridge_nodes() {
    forged_sources_never_reach_b("bridge", &["a"]);
}

#[test]
fn a_pod_without_policy_forging_sources_b_admits_reaches_nothing_on_routed_nodes() {
    forged_sources_never_reach_b("routed", &["n"]);
}

#[test]
fn a_pod_without_policy_forging_sources_b_admits_reaches_nothing_on_bridge_nodes() {
    forged_sources_never_reach_b("bridge", &["n"]);
}
