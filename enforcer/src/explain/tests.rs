//! explain's unit tests: resolution, not judged, named ports, the agent's options, live.
use super::*;
use crate::source::parse_objects;

#[test]
fn explains_isolation_and_rules() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}]}]
"#;
    let mut c = Cluster::default();
    for o in parse_objects("t.yaml", yaml).unwrap() {
        c.insert(o);
    }
    let a: Endpoint = "x/a".parse().unwrap();
    let b: Endpoint = "x/b".parse().unwrap();
    let ok = explain(
        &c,
        &a,
        &b,
        Protocol::Tcp,
        &PortArg::Number(80),
        &Options::default(),
    )
    .unwrap();
    assert!(ok.allowed == Some(true) && ok.agree);
    assert_eq!(ok.sides[1].policy.as_deref(), Some("x/allow-a"));
    let no = explain(
        &c,
        &a,
        &b,
        Protocol::Tcp,
        &PortArg::Number(81),
        &Options::default(),
    )
    .unwrap();
    assert!(no.allowed == Some(false) && no.agree);
    assert_eq!(no.sides[1].isolated_by, vec!["x/allow-a".to_string()]);
    assert!(render(&no).contains("isolated by [x/allow-a] and no rule allows it"));
    let ext = explain(
        &c,
        &"192.0.2.1".parse().unwrap(),
        &b,
        Protocol::Tcp,
        &PortArg::Number(80),
        &Options::default(),
    )
    .unwrap();
    assert!(ext.allowed == Some(false) && ext.sides.len() == 1);

    // Live: a node where only b is local. Its maps agree; a node whose maps lack the rule
    // (a change not installed yet) is reported as disagreeing.
    let node = NodeInput {
        held: Default::default(),
        conflicted: Default::default(),
        node: "n".into(),
        interfaces: [(ObjectRef::new("x", "b"), 7)].into(),
        host_ips: Vec::new(),
        allow_host_ingress: true,
    };
    let mut ids = Ids::default();
    let empty = MapState::default();
    let live = plan(&empty, &compile(&c, &node, &mut ids, &empty), &mut ids);
    let mut e = explain(
        &c,
        &a,
        &b,
        Protocol::Tcp,
        &PortArg::Number(80),
        &Options::default(),
    )
    .unwrap();
    add_live(&mut e, &live, Protocol::Tcp);
    assert_eq!(e.live_agrees, Some(true));
    assert!(e.sides[0].live.is_none(), "a is not local to this node");
    assert_eq!(e.sides[1].live.as_ref().unwrap().ifindex, 7);
    let mut stale = live.clone();
    stale.policy.clear();
    let mut e = explain(
        &c,
        &a,
        &b,
        Protocol::Tcp,
        &PortArg::Number(80),
        &Options::default(),
    )
    .unwrap();
    add_live(&mut e, &stale, Protocol::Tcp);
    assert_eq!(e.live_agrees, Some(false));
    assert!(render(&e).contains("DISAGREES"));
}

/// The demo lab's cluster (examples/k3s-multi-tenant.yaml after its step 1), with the
/// addresses the lab gives its pods.
const DEMO: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: nginx, namespace: sample1, labels: {app: nginx}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.42.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: curl, namespace: sample2, labels: {app: curl}}
status: {podIP: 10.42.0.13}
---
apiVersion: v1
kind: Pod
metadata: {name: node-agent, namespace: kube-system}
spec: {hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 10.0.9.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-by-default, namespace: sample1}
spec: {podSelector: {}, ingress: []}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-same-namespace, namespace: sample1}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: outside-but-test-net, namespace: sample1}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 198.51.100.0/24]}}], ports: [{port: http}]}]
"#;

fn demo() -> Cluster {
    let mut c = Cluster::default();
    for o in parse_objects("demo.yaml", DEMO).unwrap() {
        c.insert(o);
    }
    c
}

fn ep(s: &str) -> Endpoint {
    s.parse().unwrap()
}

#[test]
fn addresses_are_resolved_to_their_pods_and_the_live_maps_agree() {
    // The issue's finding: by address, sample2/curl → sample1/nginx printed ALLOWED.
    let c = demo();
    let e = explain(
        &c,
        &ep("10.42.0.13"),
        &ep("10.42.0.10"),
        Protocol::Tcp,
        &PortArg::Number(80),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(e.verdict, "denied");
    assert_eq!(e.allowed, Some(false));
    assert_eq!(e.from.pod(), Some("sample2/curl"));
    assert_eq!(e.to.pod(), Some("sample1/nginx"));
    assert_eq!(e.sides.len(), 2);
    assert_eq!(e.sides[1].reason, "no-rule-allows");
    let named = explain(
        &c,
        &ep("sample2/curl"),
        &ep("sample1/nginx"),
        Protocol::Tcp,
        &PortArg::Number(80),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(named.sides, e.sides, "by name and by address alike");
    let text = render(&e);
    assert!(
        text.contains("10.42.0.13 → 10.42.0.10 TCP/80: DENIED"),
        "{text}"
    );
    assert!(text.contains("pod sample2/curl (identity"), "{text}");

    // The node's maps (every pod local) agree.
    let node = NodeInput {
        held: Default::default(),
        conflicted: Default::default(),
        node: "node-1".into(),
        interfaces: [
            (ObjectRef::new("sample1", "nginx"), 2),
            (ObjectRef::new("sample2", "curl"), 5),
        ]
        .into(),
        host_ips: Vec::new(),
        allow_host_ingress: true,
    };
    let mut ids = Ids::default();
    let empty = MapState::default();
    let live = plan(&empty, &compile(&c, &node, &mut ids, &empty), &mut ids);
    let mut e = e;
    add_live(&mut e, &live, Protocol::Tcp);
    assert_eq!(e.live_agrees, Some(true));
    assert_eq!(e.sides[1].live.as_ref().unwrap().reason, "no-rule-allows");
}

#[test]
fn no_pod_at_either_end_is_not_judged() {
    let c = demo();
    let e = explain(
        &c,
        &ep("1.2.3.4"),
        &ep("5.6.7.8"),
        Protocol::Tcp,
        &PortArg::Number(80),
        &Options::default(),
    )
    .unwrap();
    assert_eq!(e.verdict, "not-judged");
    assert!(!e.judged && e.allowed.is_none() && e.sides.is_empty());
    let text = render(&e);
    assert!(
        text.contains("1.2.3.4 → 5.6.7.8 TCP/80: NOT JUDGED"),
        "{text}"
    );
    assert!(
        text.contains("enforcer judges only traffic to or from pods"),
        "{text}"
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["verdict"], "not-judged");
    assert_eq!(json["judged"], false);
    // A host-network pod is no endpoint either: its address is a node.
    let e = explain(
        &c,
        &ep("kube-system/node-agent"),
        &ep("192.0.2.1"),
        Protocol::Tcp,
        &PortArg::Number(80),
        &Options::default(),
    )
    .unwrap();
    assert!(!e.judged);
    assert!(
        matches!(e.from.seen_as, Seen::Node { .. }),
        "{:?}",
        e.from.seen_as
    );
}

#[test]
fn ends_are_seen_as_the_datapath_sees_them() {
    let c = demo();
    let opts = Options {
        node_ips: vec!["10.0.9.1".parse().unwrap()],
        no_allow_host: false,
    };
    let to = ep("sample1/nginx");
    let tcp80 = PortArg::Number(80);
    // This node: host, admitted by the agent's default.
    let e = explain(&c, &ep("10.0.9.1"), &to, Protocol::Tcp, &tcp80, &opts).unwrap();
    assert_eq!(e.from.seen_as, Seen::Host);
    assert_eq!((e.allowed, e.sides[0].reason), (Some(true), "host"));
    assert!(render(&e).contains("the node's own address"));
    // ... and with --no-allow-host it is denied (10/8 is excepted from the ipBlock).
    let strict = Options {
        no_allow_host: true,
        ..opts.clone()
    };
    let e = explain(&c, &ep("10.0.9.1"), &to, Protocol::Tcp, &tcp80, &strict).unwrap();
    assert_eq!(e.allowed, Some(false));
    // An outside address inside the ipBlock: a CIDR identity, allowed by the rule.
    let e = explain(&c, &ep("192.0.2.1"), &to, Protocol::Tcp, &tcp80, &opts).unwrap();
    match &e.from.seen_as {
        Seen::Cidr { blocks, .. } => assert_eq!(
            blocks,
            &["sample1/outside-but-test-net ingress rule 0: 0.0.0.0/0 except 10.0.0.0/8, 198.51.100.0/24".to_string()]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.allowed, Some(true));
    // An excepted one: a CIDR identity of the except prefix, no rule, denied.
    let e = explain(&c, &ep("198.51.100.7"), &to, Protocol::Tcp, &tcp80, &opts).unwrap();
    assert_eq!(e.allowed, Some(false));
    match &e.from.seen_as {
        Seen::Cidr {
            blocks,
            excepted_from,
            ..
        } => {
            assert!(blocks.is_empty());
            assert_eq!(excepted_from.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    // An address in no ipBlock at all: the world.
    let e = explain(
        &c,
        &ep("fd00::9"),
        &ep("fd00::10"),
        Protocol::Tcp,
        &tcp80,
        &opts,
    )
    .unwrap();
    assert_eq!(e.from.seen_as, Seen::World);
}

#[test]
fn named_ports_resolve_on_the_destination_pod() {
    let c = demo();
    let o = Options::default();
    let http = PortArg::Name("http".into());
    let e = explain(
        &c,
        &ep("192.0.2.1"),
        &ep("sample1/nginx"),
        Protocol::Tcp,
        &http,
        &o,
    )
    .unwrap();
    assert_eq!((e.port, e.allowed), (80, Some(true)));
    let err = explain(
        &c,
        &ep("192.0.2.1"),
        &ep("sample1/nginx"),
        Protocol::Tcp,
        &PortArg::Name("dns".into()),
        &o,
    )
    .unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "--port dns: pod sample1/nginx has no TCP container port named \"dns\" (it has: http TCP/80)"
    );
    let err = explain(
        &c,
        &ep("sample1/nginx"),
        &ep("192.0.2.1"),
        Protocol::Tcp,
        &http,
        &o,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains(
            "a named port is looked up on the destination pod, and 192.0.2.1 is no pod's address"
        ),
        "{err:#}"
    );
    let err = explain(
        &c,
        &ep("sample1/nginx"),
        &ep("fd00::1"),
        Protocol::Tcp,
        &PortArg::Number(80),
        &o,
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("has no address of the other end's family"),
        "{err:#}"
    );
}
