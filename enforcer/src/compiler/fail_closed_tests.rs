//! Fail closed: policy sets shared, a full `POLICY` map holding only what does not fit, ids
//! seeded from the pins after a restart, and id tables that shrink when objects go.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::{direction, mode, reason};

use super::*;
use crate::lookup::decide;
use crate::source::parse_objects;

const TCP: u8 = 6;

fn cluster(yaml: &str) -> Cluster {
    let mut c = Cluster::default();
    for obj in parse_objects("test.yaml", yaml).expect("test yaml parses") {
        c.insert(obj);
    }
    c
}

fn pod(name: &str, app: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: node-1, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
    )
}

/// A policy admitting TCP on `ports` from every pod of namespace x into the pods `app=<app>`.
fn policy(name: &str, app: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{app: {app}}}}}, ingress: [{{from: [{{podSelector: {{}}}}], ports: [{}]}}]}}\n---\n",
        ports.join(", ")
    )
}

fn node(c: &Cluster) -> NodeInput {
    NodeInput {
        node: "node-1".into(),
        interfaces: c
            .pods
            .keys()
            .enumerate()
            .map(|(i, k)| (k.clone(), 100 + i as u32))
            .collect(),
        host_ips: vec!["172.31.255.1".parse().unwrap()],
        allow_host_ingress: true,
        held: Default::default(),
        conflicted: Default::default(),
    }
}

fn install(
    c: &Cluster,
    ids: &mut Ids,
    installed: &MapState,
    capacity: usize,
) -> (Planned, NodeInput) {
    let n = node(c);
    let compiled = compile(c, &n, ids, installed);
    (plan_with(installed, &compiled, ids, capacity), n)
}

/// Entries the install writes before the old ones go: the peak the map must hold.
fn peak(installed: &MapState, desired: &MapState) -> usize {
    installed
        .policy
        .keys()
        .chain(desired.policy.keys())
        .collect::<BTreeSet<_>>()
        .len()
}

fn ifindex(n: &NodeInput, name: &str) -> u32 {
    n.interfaces[&ObjectRef::new("x", name)]
}

#[test]
fn identical_policy_sets_are_shared_not_copied() {
    let c = cluster(&format!(
        "{}{}{}{}",
        pod("a", "web", "10.0.0.1"),
        pod("b", "web", "10.0.0.2"),
        pod("c", "web", "10.0.0.3"),
        policy("web", "web", &[80, 443]),
    ));
    let (p, _) = install(&c, &mut Ids::default(), &MapState::default(), 1 << 20);
    let sets: BTreeSet<u32> = p.state.endpoints.values().map(|e| e.policy_set).collect();
    assert_eq!(sets.len(), 1, "three pods, one policy: one set");
    // One peer identity (the three pods look alike) x 2 ports, plus the node's own entry:
    // once, not three times.
    assert_eq!(p.state.policy.len(), 3);
}

#[test]
fn a_pod_whose_policy_does_not_fit_is_held_and_the_rest_keep_installing() {
    // big: 3 peers x 10 ports + host = 31 entries; small: 3 x 1 + 1 = 4; the map holds 20.
    let yaml = format!(
        "{}{}{}{}{}",
        pod("big", "big", "10.0.0.1"),
        pod("small", "small", "10.0.0.2"),
        pod("open", "open", "10.0.0.3"),
        policy("big", "big", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        policy("small", "small", &[80]),
    );
    let c = cluster(&yaml);
    let mut ids = Ids::default();
    let (p, n) = install(&c, &mut ids, &MapState::default(), 20);
    assert_eq!(p.held.len(), 1, "{:?}", p.held);
    assert_eq!(p.held[0].pod, ObjectRef::new("x", "big"));
    assert_eq!(p.held[0].entries, 31);
    assert!(p.state.policy.len() <= 20);
    let big = p.state.endpoints[&ifindex(&n, "big")];
    assert_eq!(
        (big.ingress_mode, big.egress_mode),
        (mode::DENY_ALL, mode::DENY_ALL)
    );
    let peer = "10.0.0.2".parse().unwrap();
    let d = decide(
        &p.state,
        ifindex(&n, "big"),
        direction::INGRESS,
        peer,
        TCP,
        1,
    );
    assert!(!d.allowed, "held closed, not left open");
    assert_eq!(d.reason, reason::ENDPOINT_CAPACITY);
    let d = decide(
        &p.state,
        ifindex(&n, "big"),
        direction::EGRESS,
        peer,
        TCP,
        1,
    );
    assert_eq!((d.allowed, d.reason), (false, reason::ENDPOINT_CAPACITY));
    // The others are enforced as their policies say.
    let small = ifindex(&n, "small");
    assert!(
        decide(
            &p.state,
            small,
            direction::INGRESS,
            "10.0.0.3".parse().unwrap(),
            TCP,
            80
        )
        .allowed
    );
    assert!(
        !decide(
            &p.state,
            small,
            direction::INGRESS,
            "10.0.0.3".parse().unwrap(),
            TCP,
            81
        )
        .allowed
    );

    // A later change of another pod installs while big stays held.
    let c2 = cluster(&yaml.replace("[{port: 80}]", "[{port: 81}]"));
    let (p2, n2) = install(&c2, &mut ids, &p.state, 20);
    assert_eq!(p2.held.len(), 1);
    assert!(peak(&p.state, &p2.state) <= 20);
    let small = ifindex(&n2, "small");
    assert!(
        decide(
            &p2.state,
            small,
            direction::INGRESS,
            "10.0.0.3".parse().unwrap(),
            TCP,
            81
        )
        .allowed
    );
    assert!(
        !decide(
            &p2.state,
            small,
            direction::INGRESS,
            "10.0.0.3".parse().unwrap(),
            TCP,
            80
        )
        .allowed
    );
    // And once its policy fits, big is enforced by it.
    let c3 = cluster(&yaml.replace("[{port: 1}, {port: 2}, {port: 3}, {port: 4}, {port: 5}, {port: 6}, {port: 7}, {port: 8}, {port: 9}, {port: 10}]", "[{port: 1}]"));
    let (p3, n3) = install(&c3, &mut ids, &p2.state, 20);
    assert!(p3.held.is_empty(), "{:?}", p3.held);
    assert!(
        decide(
            &p3.state,
            ifindex(&n3, "big"),
            direction::INGRESS,
            "10.0.0.2".parse().unwrap(),
            TCP,
            1
        )
        .allowed
    );
}

#[test]
fn an_install_needs_no_more_than_the_changed_sets_twice() {
    let yaml = format!(
        "{}{}{}{}{}{}",
        pod("a", "a", "10.0.0.1"),
        pod("b", "b", "10.0.0.2"),
        pod("c", "c", "10.0.0.3"),
        policy("a", "a", &[1, 2]),
        policy("b", "b", &[3, 4, 5]),
        policy("c", "c", &[6, 7, 8, 9]),
    );
    let c = cluster(&yaml);
    let mut ids = Ids::default();
    let (p, _) = install(&c, &mut ids, &MapState::default(), 1 << 20);
    assert!(p.held.is_empty());
    let installed = p.state;
    // a's policy changes (7 entries -> 10): the old set and the new one, the rest untouched.
    let c2 = cluster(&yaml.replace(
        "[{port: 1}, {port: 2}]",
        "[{port: 11}, {port: 12}, {port: 13}]",
    ));
    let room = installed.policy.len() + 10;
    let mut ids_tight = ids.clone();
    let (p2, n2) = install(&c2, &mut ids, &installed, room);
    assert!(p2.held.is_empty(), "fits exactly: {:?}", p2.held);
    assert_eq!(peak(&installed, &p2.state), room);
    assert!(
        decide(
            &p2.state,
            ifindex(&n2, "a"),
            direction::INGRESS,
            "10.0.0.2".parse().unwrap(),
            TCP,
            12
        )
        .allowed
    );
    // One entry less, and only a is held; b and c keep their sets.
    let (p3, n3) = install(&c2, &mut ids_tight, &installed, room - 1);
    assert_eq!(
        p3.held
            .iter()
            .map(|h| h.pod.name.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    for name in ["b", "c"] {
        let i = ifindex(&n3, name);
        assert_eq!(
            p3.state.endpoints[&i], installed.endpoints[&i],
            "{name} unchanged"
        );
    }
}

#[test]
fn a_restart_seeded_from_the_pins_renumbers_nothing() {
    // The first agent saw z's label set and policy before a's: z got the lower ids.
    let mut c = cluster(&format!(
        "{}{}",
        pod("z", "z", "10.0.0.26"),
        policy("pz", "z", &[80])
    ));
    let mut ids = Ids::default();
    let (p1, _) = install(&c, &mut ids, &MapState::default(), 1 << 20);
    c = cluster(&format!(
        "{}{}{}{}",
        pod("z", "z", "10.0.0.26"),
        pod("a", "a", "10.0.0.1"),
        policy("pz", "z", &[80]),
        policy("pa", "a", &[80]),
    ));
    let (p2, _) = install(&c, &mut ids, &p1.state, 1 << 20);
    let pinned = p2.state;
    let names: BTreeMap<u32, ObjectRef> = compile(&c, &node(&c), &mut ids, &pinned).policies;

    // A new agent, the same cluster: seeded from the pins, it installs nothing.
    let mut fresh = Ids::default();
    let bound = fresh.seed_from_pins(&c, "node-1", &pinned, &names);
    assert_eq!(bound, node(&c).interfaces, "every binding read back");
    let compiled = compile(&c, &node(&c), &mut fresh, &pinned);
    assert_eq!(
        compiled.policies, names,
        "policy ids (rule counters) keep their meaning"
    );
    let again = plan_with(&pinned, &compiled, &mut fresh, 1 << 20).state;
    assert!(
        pinned.diff(&again).is_empty(),
        "{}",
        pinned.diff(&again).summary()
    );
    // New objects get numbers never given out before.
    let mut c3 = c.clone();
    c3.insert(
        parse_objects("t.yaml", &pod("n", "n", "10.0.0.9"))
            .unwrap()
            .remove(0),
    );
    let compiled = compile(&c3, &node(&c3), &mut fresh, &pinned);
    let n_id = compiled.ip_identity[&ip_key("10.0.0.9".parse().unwrap())].identity;
    assert!(pinned.ip_identity.values().all(|v| v.identity != n_id));
}

#[test]
fn ids_stay_bounded_when_ten_thousand_pods_come_and_go() {
    let base = format!(
        "{}{}",
        pod("web", "web", "10.0.0.1"),
        policy("web", "web", &[80])
    );
    let c0 = cluster(&base);
    let mut ids = Ids::default();
    let mut installed = MapState::default();
    let mut most = 0;
    let web_id;
    {
        let compiled = compile(&c0, &node(&c0), &mut ids, &installed);
        installed = plan_with(&installed, &compiled, &mut ids, 1 << 20).state;
        ids.retain_live(&c0, &compiled, &installed);
        web_id = installed.ip_identity[&ip_key("10.0.0.1".parse().unwrap())].identity;
    }
    for i in 0..10_000u32 {
        // A Job's pod: its own label set (controller-uid), created, then deleted.
        let job = format!("job-{i}");
        let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        let c = cluster(&format!("{base}{}", pod(&job, &job, &ip)));
        for c in [&c, &c0] {
            let compiled = compile(c, &node(c), &mut ids, &installed);
            installed = plan_with(&installed, &compiled, &mut ids, 1 << 20).state;
            ids.retain_live(c, &compiled, &installed);
            most = most.max(ids.len());
        }
    }
    assert!(most <= 8, "the id tables grew to {most}");
    assert_eq!(
        installed.ip_identity[&ip_key("10.0.0.1".parse().unwrap())].identity,
        web_id,
        "a live pod keeps its identity"
    );
}
