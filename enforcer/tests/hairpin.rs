//! A pod reaching itself through a Service meets the cluster-wide tiers as itself (the
//! ClusterNetworkPolicy API: "a pod reaching its own address is not subject to these policies;
//! through a Service it is"), though kube-proxy masquerades its packet to the node's address.
//! The datapath knows the packet by the endpoint mark `from_endpoint` writes
//! (`enforcer_common::endpoint_mark`); these run the compiled maps through BPF_PROG_TEST_RUN:
//!
//! - what a pod sends leaves with its interface's slot in the mark, other mark bits kept, and a
//!   slot the pod wrote itself overwritten (a pod cannot claim another's);
//! - into the pod, the node's address with the pod's own mark is the pod for the Admin tier (an
//!   Admin Deny of its namespace drops it), and still the node for NetworkPolicy (a pod cannot
//!   block itself there); without the mark, or with another interface's slot, it is the node;
//! - a flow admitted as a hairpin is re-judged as one after a policy change, even on a reply
//!   (which carries no mark);
//! - `lookup::decide_from` (explain's mirror) gives the same verdicts.
//!
//! Needs root (it loads the eBPF programs); README's test command runs it as root.
#[path = "common/packets.rs"]
mod packets;

use enforcer::bpf::TestSkb;
use enforcer::compiler::Cluster;
use enforcer::explain::{Options, compile_all};
use enforcer::lookup::{Arrival, decide_from};
use enforcer::source::parse_objects;
use enforcer_common::{direction, endpoint_mark, reason};
use packets::*;

const NODE_IP: &str = "172.16.0.1";
const A: &str = "10.0.1.1";
const B: &str = "10.0.1.2";

const PODS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, image: i, ports: [{containerPort: 80}]}]}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.2}
";

/// An Admin Deny of everything from namespace x into it.
const ADMIN_DENY_X: &str = "
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-from-x}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress:
  - name: from-x
    action: Deny
    from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}]
";

/// A NetworkPolicy isolating a and admitting nothing (the node still reaches it).
const NP_ISOLATE_A: &str = "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-a, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Ingress]}
";

/// The maps for `yaml`, with pod a's endpoint on `IFINDEX` (the interface the test runs on).
fn state_of(yaml: &str) -> enforcer::state::MapState {
    let mut c = Cluster::default();
    for o in parse_objects("hairpin.yaml", yaml).expect("the manifests parse") {
        c.insert(o);
    }
    let opts = Options {
        node_ips: vec![NODE_IP.parse().unwrap()],
        no_allow_host: false,
    };
    let compiled = compile_all(&c, &opts);
    let mut state = compiled.state.clone();
    let a = compiled.node.interfaces[&enforcer::model::ObjectRef::new("x", "a")];
    let info = state.endpoints.remove(&a).expect("a is an endpoint");
    state.endpoints.insert(IFINDEX, info);
    state
}

fn own_mark() -> u32 {
    endpoint_mark::slot(IFINDEX) << endpoint_mark::DEFAULT_SHIFT
}

/// The verdict and the reasons counted for one packet into a.
fn into_a(dp: &mut Datapath, src: &str, sport: u16, skb: &TestSkb) -> (bool, Vec<&'static str>) {
    let before = dp.counters().unwrap();
    let verdict = dp
        .test_run_skb(IN, &ipv4(src, A, 6, &tcp(sport, 80)), 1, skb)
        .expect("test run")
        .verdict;
    let after = dp.counters().unwrap();
    dp.drain_events();
    let reasons = (0..reason::COUNT)
        .filter(|&i| after.get(i) != before.get(i))
        .map(|i| reason::name(i as u8))
        .collect();
    (verdict == TC_PASS, reasons)
}

#[test]
fn what_a_pod_sends_carries_its_own_endpoint_mark() {
    require_root();
    let mut dp = Datapath::load_unpinned().expect("loading the datapath");
    dp.install(&state_of(PODS), 1, 0).expect("installing");
    let mask = endpoint_mark::mask(endpoint_mark::DEFAULT_SHIFT);
    // Other bits (kube-proxy's 0x4000) stay; a slot the pod forged is overwritten.
    for given in [
        0x4000,
        0x4000 | (0x123 << endpoint_mark::DEFAULT_SHIFT),
        mask,
    ] {
        let skb = TestSkb {
            mark: given,
            ..Default::default()
        };
        let r = dp
            .test_run_skb(OUT, &ipv4(A, "10.96.0.10", 6, &tcp(40000, 8080)), 1, &skb)
            .expect("test run");
        assert_eq!(
            r.mark,
            (given & !mask) | own_mark(),
            "mark {given:#x} leaves as the interface's slot over the pod's other bits"
        );
    }
    // Turned off, the program leaves the mark alone.
    dp.set_endpoint_mark(None).unwrap();
    let skb = TestSkb {
        mark: 0x4000 | (0x123 << endpoint_mark::DEFAULT_SHIFT),
        ..Default::default()
    };
    let r = dp
        .test_run_skb(OUT, &ipv4(A, "10.96.0.10", 6, &tcp(40001, 8080)), 1, &skb)
        .expect("test run");
    assert_eq!(r.mark, skb.mark);
}

#[test]
fn a_pod_back_through_a_service_meets_the_admin_tier_as_itself() {
    require_root();
    let mut dp = Datapath::load_unpinned().expect("loading the datapath");
    let state = state_of(&format!("{PODS}{ADMIN_DENY_X}"));
    dp.install(&state, 1, 0).expect("installing");
    let hairpin = TestSkb {
        mark: own_mark() | 0x4000,
        ..Default::default()
    };
    let other_slot = TestSkb {
        mark: endpoint_mark::slot(IFINDEX + 1) << endpoint_mark::DEFAULT_SHIFT,
        ..Default::default()
    };
    let cases = [
        // (what, source, skb, arrival, allowed, reason)
        (
            "a back to itself through a Service (masqueraded to the node)",
            NODE_IP,
            hairpin,
            Arrival::Hairpin {
                own: A.parse().unwrap(),
            },
            false,
            "denied-by-rule",
        ),
        (
            "the node itself (no mark)",
            NODE_IP,
            TestSkb::default(),
            Arrival::FromSource,
            true,
            "not-isolated",
        ),
        (
            "the node's address with another pod's mark",
            NODE_IP,
            other_slot,
            Arrival::FromSource,
            true,
            "not-isolated",
        ),
        (
            "b, in the denied namespace",
            B,
            TestSkb::default(),
            Arrival::FromSource,
            false,
            "denied-by-rule",
        ),
    ];
    for (i, (what, src, skb, arrival, allowed, why)) in cases.into_iter().enumerate() {
        let got = into_a(&mut dp, src, 30000 + i as u16, &skb);
        assert_eq!(got, (allowed, vec![why]), "{what}");
        let want = decide_from(
            &state,
            IFINDEX,
            direction::INGRESS,
            src.parse().unwrap(),
            6,
            80,
            arrival,
        );
        assert_eq!(
            (want.allowed, reason::name(want.reason)),
            (allowed, why),
            "lookup's mirror: {what}"
        );
    }

    // NetworkPolicy still sees the node: an isolating policy with no rule lets it in.
    let np = state_of(&format!("{PODS}{NP_ISOLATE_A}"));
    dp.install(&np, 2, 0).expect("installing");
    assert_eq!(
        into_a(&mut dp, NODE_IP, 30100, &hairpin),
        (true, vec!["host"]),
        "NetworkPolicy tier: a pod cannot block itself"
    );
}

#[test]
fn a_hairpin_flow_is_rejudged_as_one_after_a_change() {
    require_root();
    let mut dp = Datapath::load_unpinned().expect("loading the datapath");
    let open = state_of(PODS);
    dp.install(&open, 1, 0).expect("installing");
    let hairpin = TestSkb {
        mark: own_mark(),
        ..Default::default()
    };
    // Opened while nothing selects a.
    assert_eq!(
        into_a(&mut dp, NODE_IP, 31000, &hairpin),
        (true, vec!["not-isolated"])
    );
    let reply = ipv4(A, NODE_IP, 6, &tcp(80, 31000));
    assert_eq!(dp.test_run(OUT, &reply, 1).unwrap().verdict, TC_PASS);
    // The Admin Deny arrives; the next packet is a's reply (no mark on it): still a hairpin.
    dp.install(&state_of(&format!("{PODS}{ADMIN_DENY_X}")), 3, 0)
        .expect("installing");
    assert_eq!(
        dp.test_run(OUT, &reply, 1).unwrap().verdict,
        TC_DROP,
        "the reply of a hairpin flow is re-judged as a's own flow"
    );
    dp.drain_events();
}
