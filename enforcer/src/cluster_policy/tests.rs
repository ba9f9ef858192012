use super::*;
use crate::source::{Object, parse_objects};

fn one(yaml: &str) -> Result<ClusterPolicy, String> {
    match parse_objects("t.yaml", yaml) {
        Ok(mut v) => match v.pop() {
            Some(Object::ClusterPolicy(p)) => Ok(p),
            other => panic!("not a cluster policy: {other:?}"),
        },
        Err(e) => Err(e.to_string()),
    }
}

fn cnp(spec: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
         metadata: {{name: c}}\nspec: {spec}\n"
    )
}

const SUBJECT: &str = "subject: {namespaces: {}}";

#[test]
fn a_full_policy_is_read_with_every_field() {
    let p = one(&cnp(&format!(
        "{{tier: Admin, priority: 10, {SUBJECT}, \
         ingress: [{{name: deny-web, action: Deny, from: [{{pods: {{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: web}}}}}}}}], \
         protocols: [{{tcp: {{destinationPort: {{number: 8080}}}}}}, {{udp: {{destinationPort: {{range: {{start: 9000, end: 9090}}}}}}}}, {{destinationNamedPort: http}}]}}], \
         egress: [{{action: Pass, to: [{{networks: [192.0.2.7/24, \"2001:db8::/32\"]}}]}}]}}"
    )))
    .unwrap();
    assert_eq!(p.key(), ObjectRef::new("ClusterNetworkPolicy", "c"));
    assert_eq!((p.tier, p.priority), (Tier::Admin, 10));
    let r = &p.ingress[0];
    assert_eq!(r.name.as_deref(), Some("deny-web"));
    assert_eq!(r.action, Action::Deny);
    // A named port stands for whichever protocol the container port has.
    assert_eq!(r.ports.len(), 2 + 3);
    assert!(r.ports.contains(&PortSpec {
        protocol: Protocol::Udp,
        port: PortRef::Range(9000, 9090)
    }));
    // Networks are truncated to their prefix, as the API's isCIDR accepts them.
    assert_eq!(
        p.egress[0].peers,
        [ClusterPeer::Networks(vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap()
        ])]
    );
}

#[test]
fn every_api_rule_is_checked_and_named() {
    let cases: &[(String, &str, &str)] = &[
        (
            cnp(&format!("{{tier: Middle, priority: 1, {SUBJECT}}}")),
            "spec.tier",
            "not one of Admin, Baseline",
        ),
        (
            cnp(&format!("{{tier: Admin, priority: 1001, {SUBJECT}}}")),
            "spec.priority",
            "0-1000",
        ),
        (
            cnp("{tier: Admin, priority: 1, subject: {}}"),
            "spec.subject",
            "exactly one of namespaces, pods",
        ),
        (
            cnp("{tier: Admin, priority: 1, subject: {namespaces: {}, pods: {podSelector: {}}}}"),
            "spec.subject",
            "not namespaces and pods",
        ),
        (
            cnp(&format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Allow, from: [{{namespaces: {{}}}}]}}]}}"
            )),
            "spec.ingress[0].action",
            "not one of Accept, Deny, Pass",
        ),
        (
            cnp(&format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: []}}]}}"
            )),
            "spec.ingress[0].from",
            "at least 1",
        ),
        (
            cnp(&format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Deny, to: [{{networks: [10.0.0.0/33]}}]}}]}}"
            )),
            "spec.egress[0].to[0].networks[0]",
            "not a CIDR",
        ),
        (
            cnp(&format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Deny, to: [{{domainNames: [example.com]}}]}}]}}"
            )),
            "spec.egress[0].to[0].domainNames",
            "not implemented",
        ),
        (
            cnp(&format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Deny, to: [{{networks: [10.0.0.0/8]}}], protocols: [{{destinationNamedPort: http}}]}}]}}"
            )),
            "spec.egress[0].protocols",
            "cannot be set with namedPorts",
        ),
        (
            cnp(&format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: 90, end: 80}}}}}}}}]}}]}}"
            )),
            "spec.ingress[0].protocols[0].tcp.destinationPort.range",
            "Start port must be less than End port",
        ),
        (
            cnp(&format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 0}}}}}}]}}]}}"
            )),
            "spec.ingress[0].protocols[0].tcp.destinationPort.number",
            "not a port number",
        ),
        (
            cnp(&format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{}}}}]}}]}}"
            )),
            "spec.ingress[0].protocols[0].tcp",
            "destinationPort must be set",
        ),
        (
            cnp(&format!(
                "{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Deny, to: [{{nodes: {{}}}}], protocols: [{{destinationNamedPort: http}}]}}]}}"
            )),
            "spec.egress[0].protocols",
            "cannot be set with namedPorts",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\n\
             metadata: {name: other}\nspec: {subject: {namespaces: {}}}\n"
                .to_string(),
            "metadata.name",
            "default",
        ),
        (
            "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\n\
             metadata: {name: default}\nspec: {subject: {namespaces: {}}, ingress: [{action: Pass, from: [{namespaces: {}}]}]}\n"
                .to_string(),
            "spec.ingress[0].action",
            "not one of Allow, Deny",
        ),
    ];
    for (yaml, field, reason) in cases {
        let err = one(yaml).expect_err(yaml);
        assert!(
            err.contains(&format!("{field}: ")) && err.contains(reason),
            "{yaml}\nwant {field}: …{reason}…, got: {err}"
        );
    }
    let rules: Vec<String> = (0..26)
        .map(|_| "{action: Deny, from: [{namespaces: {}}]}".to_string())
        .collect();
    let err = one(&cnp(&format!(
        "{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{}]}}",
        rules.join(", ")
    )))
    .unwrap_err();
    assert!(
        err.contains("spec.ingress: holds 26 items, at most 25"),
        "{err}"
    );
}

#[test]
fn a_misspelt_field_is_refused_naming_the_nearest() {
    let err = one(&cnp(&format!(
        "{{tier: Admin, priority: 1, {SUBJECT}, ingress: [{{action: Deny, from: [{{namespaces: {{}}}}], \
         protocols: [{{destinationNamePort: http}}]}}]}}"
    )))
    .unwrap_err();
    assert!(
        err.contains("spec.ingress[0].protocols[0].destinationNamePort")
            && err.contains("destinationNamedPort"),
        "{err}"
    );
}

#[test]
fn a_peer_with_no_known_field_fails_closed() {
    // What a newer CRD's peer looks like once the fields this version does not know are gone.
    let p = one(&cnp(&format!(
        "{{tier: Admin, priority: 1, {SUBJECT}, egress: [{{action: Deny, to: [{{}}]}}]}}"
    )))
    .unwrap();
    assert_eq!(p.egress[0].peers, [ClusterPeer::Unknown]);
}

#[test]
fn nodes_peers_select_nodes_by_label() {
    let p = one(&cnp(&format!(
        "{{tier: Baseline, priority: 1, {SUBJECT}, egress: [{{action: Accept, to: [{{nodes: {{matchLabels: {{zone: a}}}}}}]}}]}}"
    )))
    .unwrap();
    let ClusterPeer::Nodes(sel) = &p.egress[0].peers[0] else {
        panic!("{:?}", p.egress[0].peers)
    };
    assert_eq!(sel.match_labels.get("zone").map(String::as_str), Some("a"));
}

#[test]
fn v1alpha1_kinds_map_onto_the_same_model() {
    let anp = one(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\n\
         metadata: {name: a}\nspec: {priority: 5, subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}}, \
         ingress: [{name: r, action: Allow, from: [{namespaces: {}}], ports: [{portNumber: {port: 5432}}, {portRange: {protocol: UDP, start: 1, end: 9}}, {namedPort: pg}]}]}\n",
    )
    .unwrap();
    assert_eq!(anp.key(), ObjectRef::new("AdminNetworkPolicy", "a"));
    assert_eq!((anp.tier, anp.priority), (Tier::Admin, 5));
    assert_eq!(anp.ingress[0].action, Action::Accept);
    assert_eq!(
        anp.ingress[0].ports[..2],
        [
            PortSpec {
                protocol: Protocol::Tcp,
                port: PortRef::Range(5432, 5432)
            },
            PortSpec {
                protocol: Protocol::Udp,
                port: PortRef::Range(1, 9)
            }
        ]
    );
    let banp = one(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\n\
         metadata: {name: default}\nspec: {subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}\n",
    )
    .unwrap();
    // After every Baseline ClusterNetworkPolicy.
    assert_eq!((banp.tier, banp.priority), (Tier::Baseline, 1001));
}

#[test]
fn ties_are_ordered_by_kind_then_name() {
    let mk = |kind, name: &str, priority| ClusterPolicy {
        kind,
        name: name.into(),
        tier: Tier::Admin,
        priority,
        subject_namespaces: Selector::default(),
        subject_pods: Selector::default(),
        ingress: vec![],
        egress: vec![],
    };
    let mut v = [
        mk(ClusterKind::AdminNetworkPolicy, "a", 10),
        mk(ClusterKind::ClusterNetworkPolicy, "z", 10),
        mk(ClusterKind::ClusterNetworkPolicy, "b", 10),
        mk(ClusterKind::ClusterNetworkPolicy, "y", 9),
    ];
    v.sort_by(|a, b| a.order().cmp(&b.order()));
    let names: Vec<&str> = v.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["y", "b", "z", "a"]);
}
