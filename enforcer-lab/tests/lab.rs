//! The lab machinery end to end (real namespaces, veths, routes, servers and probes) with a
//! stand-in agent that enforces nothing. Needs root; skipped otherwise.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use enforcer_lab::plan::Plan;
use enforcer_lab::traffic::Observed;
use enforcer_lab::{load, run_plan, runs};

fn scenario(name: &str) -> (Plan, String) {
    let prefix = runs::new_prefix();
    let path = common::repo().join("tests/scenarios").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    (load(&text, name, &prefix).unwrap(), prefix)
}

#[test]
fn no_policy_scenario_observes_what_it_expects() {
    need_root!();
    let (plan, prefix) = scenario("no-policy.yaml");
    let started = Instant::now();
    let r = run_plan(&plan, &common::fake_agent(""), &common::options()).unwrap();
    eprintln!("no-policy.yaml ran in {:?}", started.elapsed());
    assert_eq!(r.mismatches(), 0, "{}", r.render());
    assert_eq!(r.probe_count(), 16);
    let has_sctp = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::from(132)),
    )
    .is_ok();
    // Where the kernel has no SCTP sockets, a hand-built INIT reaches the target (one way),
    // and one to a port nothing serves is refused as an SCTP stack would.
    let sctp = &r.steps[0].probes[14].outcome;
    assert_eq!(sctp.observed, Observed::Allow, "{sctp:?}");
    if !has_sctp {
        assert_eq!(
            sctp.detail,
            enforcer_lab::traffic::SCTP_INIT_SEEN,
            "{sctp:?}"
        );
    }
    let unserved = &r.steps[0].probes[15].outcome;
    assert_eq!(
        (unserved.observed, unserved.detail.as_str()),
        (Observed::Deny, "refused"),
        "{unserved:?}"
    );
    common::assert_clean(&prefix);
}

/// Without enforcement, every probe to a served port is allowed and every other one refused,
/// across steps, IPv4 and IPv6, TCP and UDP.
#[test]
fn without_enforcement_exactly_the_served_ports_answer() {
    need_root!();
    for name in [
        "allow-one-pod-one-port.yaml",
        "default-deny-ingress.yaml",
        "dual-stack-relabel.yaml",
        "multi-node-hosts.yaml",
    ] {
        let (plan, prefix) = scenario(name);
        let r = run_plan(&plan, &common::fake_agent(""), &common::options()).unwrap();
        let mut seen = 0;
        for s in &r.steps {
            for p in &s.probes {
                let served = p.probe.dst.is_some_and(|t| {
                    plan.ports_of(t)
                        .iter()
                        .any(|x| x.port == p.probe.dst_port && x.protocol == p.probe.spec.protocol)
                });
                let want = if served {
                    Observed::Allow
                } else {
                    Observed::Deny
                };
                assert_eq!(
                    p.outcome.observed, want,
                    "{name}: {}: {:?}",
                    p.probe.spec.path, p.outcome
                );
                if !served {
                    assert_eq!(p.outcome.detail, "refused", "{name}: {}", p.probe.spec.path);
                }
                seen += 1;
            }
        }
        assert_eq!(
            seen,
            plan.steps.iter().map(|s| s.probes.len()).sum::<usize>()
        );
        common::assert_clean(&prefix);
    }
}

/// Services: every probe through one is answered by one of its backends (the run checks who
/// answered, a wrong one is a mismatch), on both nodes; both backends answer, over the probes.
#[test]
fn services_reach_their_backends_from_every_node() {
    need_root!();
    let (plan, prefix) = scenario("services.yaml");
    let r = run_plan(&plan, &common::fake_agent(""), &common::options()).unwrap();
    assert_eq!(r.mismatches(), 0, "{}", r.render());
    let mut answered_by = std::collections::BTreeSet::new();
    for s in &r.steps {
        for p in &s.probes {
            if p.probe.service.is_some() && p.outcome.observed == Observed::Allow {
                let b = p
                    .outcome
                    .backend
                    .clone()
                    .expect("a Service probe says who answered");
                answered_by.insert(b.split_whitespace().next().unwrap().to_string());
            }
        }
    }
    assert!(answered_by.contains("x/web-1"), "{answered_by:?}");
    assert!(answered_by.contains("x/web-2"), "{answered_by:?}");
    assert!(answered_by.contains("x/db"), "{answered_by:?}");
    common::assert_clean(&prefix);
}

#[test]
fn the_demo_runs_and_its_first_step_is_all_allowed() {
    need_root!();
    let prefix = runs::new_prefix();
    let plan = load(enforcer_lab::DEMO_SCENARIO, "demo", &prefix).unwrap();
    let r = run_plan(&plan, &common::fake_agent(""), &common::options()).unwrap();
    assert!(r.steps[0].probes.iter().all(|p| !p.mismatch()));
    // The fake agent enforces nothing: the second step's denials are mismatches.
    assert!(r.steps[1].probes.iter().any(|p| p.mismatch()));
    common::assert_clean(&prefix);
}

#[test]
fn an_agent_that_exits_fails_the_run_with_its_log() {
    need_root!();
    let (plan, prefix) = scenario("no-policy.yaml");
    let e = run_plan(&plan, &common::fake_agent("exit"), &common::options()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("exited"), "{msg}");
    assert!(
        msg.contains("failing on purpose"),
        "the log tail is shown: {msg}"
    );
    common::assert_clean(&prefix);
}

#[test]
fn an_agent_that_rejects_the_manifests_fails_the_run() {
    need_root!();
    let (plan, prefix) = scenario("no-policy.yaml");
    let e = run_plan(&plan, &common::fake_agent("error"), &common::options()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("rejected the manifests: bad manifest on purpose"),
        "{msg}"
    );
    common::assert_clean(&prefix);
}

#[test]
fn an_agent_that_never_reports_times_out() {
    need_root!();
    let (plan, prefix) = scenario("no-policy.yaml");
    let mut o = common::options();
    o.agent_timeout = std::time::Duration::from_millis(300);
    let e = run_plan(&plan, &common::fake_agent("silent"), &o).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("did not report generation 1"), "{msg}");
    common::assert_clean(&prefix);
}

/// The safety rule: no lab namespace has a default route or a route outside the lab.
#[test]
fn lab_namespaces_only_route_lab_addresses() {
    need_root!();
    for name in [
        "dual-stack-relabel.yaml",
        "multi-node-hosts.yaml",
        "services.yaml",
    ] {
        check_routes(name);
    }
}

fn check_routes(name: &str) {
    let (plan, prefix) = scenario(name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Registered, so that another test's sweep of dead runs leaves these namespaces alone.
    let dir = runs::register(&prefix).unwrap();
    let mut created = Vec::new();
    let built = rt.block_on(enforcer_lab::netns::build(&plan, &mut created));
    let mut routes: BTreeMap<String, String> = BTreeMap::new();
    for ns in &created {
        let mut all = String::new();
        for fam in ["-4", "-6"] {
            let out = std::process::Command::new("ip")
                .args(["-n", ns, fam, "route", "show", "table", "all"])
                .output()
                .unwrap();
            all.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        routes.insert(ns.clone(), all);
    }
    let problems = enforcer_lab::netns::delete(&created);
    std::fs::remove_dir_all(&dir).unwrap();
    built.unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    common::assert_clean(&prefix);

    // Pod, host and node addresses, and the cluster IPs (routed to the nodes, which route
    // them to a bridge without ports).
    let lab: Vec<String> = plan
        .lab_addresses()
        .iter()
        .chain(plan.nodes.iter().flat_map(|n| n.fabric_ips.iter()))
        .map(|a| a.to_string())
        .chain(plan.service_routes().iter().map(|(ip, len)| match len {
            32 | 128 => ip.to_string(),
            _ => format!("{ip}/{len}"),
        }))
        .collect();
    for (ns, text) in &routes {
        for line in text.lines() {
            let dst = line.split_whitespace().next().unwrap_or("");
            let dst = dst.trim_end_matches("/32").trim_end_matches("/128");
            let ok = lab.iter().any(|a| a == dst)
                || line.contains("table local")
                || dst == "169.254.1.1"
                || dst.starts_with("fe80::")
                || dst.starts_with("multicast")
                || dst.starts_with("ff00::");
            assert!(ok, "{name}: {ns}: route outside the lab: {line}");
            assert!(!line.starts_with("default"), "{ns}: {line}");
        }
    }
}

/// Two nodes, assigned addresses, node-2 with a single pod: node-2's fabric link then has the
/// same interface index as its port on the fabric bridge (`n1`), the case where the kernel
/// used to apply the port's carrier late, and the bridge dropped what went to node-2 for up to
/// a second after the build (every probe across nodes timed out in about one run in four).
const TWO_NODES: &str = "
nodes: [node-1, node-2]
namespaces: [{name: x}, {name: y}]
pods:
  - {namespace: x, name: a, ports: [{port: 80, protocol: TCP}, {port: 80, protocol: UDP}]}
  - {namespace: y, name: a, node: node-2, ports: [{port: 80, protocol: TCP}, {port: 80, protocol: UDP}]}
probes:
  - {from: x/a, to: y/a, port: 80, protocol: TCP, expect: allow}
  - {from: y/a, to: x/a, port: 80, protocol: TCP, expect: allow}
  - {from: x/a, to: y/a, port: 80, protocol: UDP, expect: allow}
  - {from: y/a, to: x/a, port: 80, protocol: UDP, expect: allow}
  - {from: x/a, to: x/a, port: 80, protocol: TCP, expect: allow}
  - {from: y/a, to: y/a, port: 80, protocol: UDP, expect: allow}
";

/// Probes across nodes right after the build get through, every time.
#[test]
fn probes_across_nodes_pass_right_after_the_build() {
    need_root!();
    for run in 0..6 {
        let prefix = runs::new_prefix();
        let plan = load(TWO_NODES, "two nodes", &prefix).unwrap();
        let r = run_plan(&plan, &common::fake_agent(""), &common::options()).unwrap();
        assert_eq!(r.mismatches(), 0, "run {run}: {}", r.render());
        common::assert_clean(&prefix);
    }
}

/// When the build returns, every fabric port forwards and every link is up, as a dump (which,
/// unlike a request for one interface, does not make the kernel apply a pending link event)
/// shows.
#[test]
fn the_build_returns_with_every_link_up() {
    need_root!();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for run in 0..6 {
        let prefix = runs::new_prefix();
        let plan = load(TWO_NODES, "two nodes", &prefix).unwrap();
        let dir = runs::register(&prefix).unwrap();
        let mut created = Vec::new();
        let built = rt.block_on(enforcer_lab::netns::build(&plan, &mut created));
        let mut dumps = BTreeMap::new();
        for ns in &created {
            let out = std::process::Command::new("ip")
                .args(["-n", ns, "-j", "-d", "link", "show"])
                .output()
                .unwrap();
            dumps.insert(
                ns.clone(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            );
        }
        let problems = enforcer_lab::netns::delete(&created);
        std::fs::remove_dir_all(&dir).unwrap();
        built.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        common::assert_clean(&prefix);

        let checks = enforcer_lab::netns::links_to_check(&plan);
        assert_eq!(checks.len(), 5, "fabric, 2 nodes, 2 pods: {checks:?}");
        for (ns, links) in checks {
            let all: Vec<serde_json::Value> = serde_json::from_str(&dumps[&ns]).unwrap();
            for c in links {
                let link = all
                    .iter()
                    .find(|l| l["ifname"] == c.dev.as_str())
                    .unwrap_or_else(|| panic!("run {run}: {ns}: no {}", c.dev));
                assert_eq!(link["operstate"], "UP", "run {run}: {ns} {}", c.dev);
                if c.bridge_port {
                    assert_eq!(
                        link["linkinfo"]["info_slave_data"]["state"], "forwarding",
                        "run {run}: {ns} {}",
                        c.dev
                    );
                }
            }
        }
    }
}

/// Nodes' own ports, a host-networked pod (served in its node's namespace, on the node's
/// address) and `node:NAME` as source and target, across nodes, from a pod, from an outside
/// host and from a node; IPv4 and IPv6. Without enforcement every served port answers, and an
/// unserved one is refused by the node itself.
const NODES_AND_HOST_NETWORK: &str = "
nodes:
  - {name: node-1, labels: {zone: a}, ports: [{port: 22}, {port: 53, protocol: UDP}]}
  - node-2
namespaces: [{name: x}, {name: kube-system}]
pods:
  - {namespace: x, name: a, ips: [10.42.1.10, 'fd00::a'], ports: [{port: 80}]}
  - {namespace: x, name: b, node: node-2, ports: [{port: 80}, {port: 81, protocol: UDP}]}
  - namespace: kube-system
    name: exporter
    node: node-2
    hostNetwork: true
    ports: [{name: metrics, port: 9100}, {name: dns, port: 5353, protocol: UDP}]
hosts:
  - {name: ext-1, ips: [192.0.2.10, '2001:db8::10'], ports: [{port: 443}]}
probes:
  - {from: x/a, to: 'node:node-1', port: 22, expect: allow}
  - {from: x/b, to: 'node:node-1', port: 22, expect: allow}
  - {from: x/b, to: 'node:node-1', port: 53, protocol: UDP, expect: allow}
  - {from: x/a, to: 'node:node-1', port: 23, expect: deny}
  - {from: x/a, to: kube-system/exporter, port: metrics, expect: allow}
  - {from: x/b, to: kube-system/exporter, port: dns, protocol: UDP, expect: allow}
  - {from: x/a, to: 'node:node-2', port: metrics, expect: allow}
  - {from: x/a, to: 198.18.0.2, port: 9100, expect: allow}
  - {from: ext-1, to: 'node:node-1', port: 22, expect: allow}
  - {from: ext-1, to: kube-system/exporter, port: 9100, expect: allow}
  - {from: 'node:node-1', to: x/a, port: 80, expect: allow}
  - {from: 'node:node-1', to: x/b, port: 81, protocol: UDP, expect: allow}
  - {from: 'node:node-2', to: 'node:node-1', port: 22, expect: allow}
  - {from: 'node:node-1', to: ext-1, port: 443, expect: allow}
  - {from: kube-system/exporter, to: x/a, port: 80, expect: allow}
  - {from: 'node:node-1', to: x/a, port: 80, family: 6, expect: allow}
  - {from: x/a, to: 'node:node-2', port: 9100, family: 6, expect: allow}
steps:
  - relabel: [{node: node-2, labels: {zone: b}}]
    probes:
      - {from: x/a, to: 'node:node-2', port: 9100, expect: allow}
";

#[test]
fn nodes_and_host_networked_pods_serve_on_the_node() {
    need_root!();
    let prefix = runs::new_prefix();
    let plan = load(NODES_AND_HOST_NETWORK, "nodes", &prefix).unwrap();
    let exporter = plan.find_pod("kube-system", "exporter").unwrap();
    assert!(plan.pods[exporter].host_network);
    assert_eq!(plan.pods[exporter].ips, plan.nodes[1].fabric_ips);
    assert_eq!(plan.pods[exporter].netns, plan.nodes[1].netns);
    assert_eq!(plan.nodes[0].labels["zone"], "a");
    assert_eq!(plan.nodes[0].labels["kubernetes.io/hostname"], "node-1");
    assert_eq!(plan.nodes[1].labels["kubernetes.io/os"], "linux");
    assert_eq!(
        plan.steps[1].changes.describe(&plan.pods, &plan.nodes),
        vec!["~ node node-2 labels kubernetes.io/hostname=node-2,kubernetes.io/os=linux,zone=b"]
    );
    let r = run_plan(&plan, &common::fake_agent(""), &common::options()).unwrap();
    assert_eq!(r.mismatches(), 0, "{}", r.render());
    let refused = &r.steps[0].probes[3];
    assert_eq!(refused.outcome.detail, "refused", "{:?}", refused.outcome);
    // A UDP answer says who served it: the host-networked pod, on its node's address.
    let dns = &r.steps[0].probes[5];
    let by = dns.outcome.backend.as_deref().unwrap_or("");
    assert!(by.starts_with("kube-system/exporter 198.18.0.2:"), "{by}");
    common::assert_clean(&prefix);
}
