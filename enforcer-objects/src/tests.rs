use serde_json::{Value, json};

use super::*;

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).unwrap()
}

fn err(text: &str) -> String {
    decode_document(&yaml(text)).unwrap_err().to_string()
}

const POLICY: &str =
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";

#[test]
fn a_good_policy_decodes() {
    let objs = decode_document(&yaml(&format!(
        "{POLICY}spec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  policyTypes: [Ingress]\n  ingress:\n    - from: [{{podSelector: {{matchExpressions: [{{key: a, operator: In, values: [b]}}]}}}}]\n      ports: [{{port: http, protocol: TCP}}, {{port: 80, endPort: 90}}]\n"
    )))
    .unwrap();
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0].kind(), Kind::NetworkPolicy);
    assert_eq!(objs[0].label(), "NetworkPolicy x/p");
    assert_eq!(objs[0].namespace(), Some("x"));
}

#[test]
fn typos_at_every_depth_name_their_path_and_the_nearest_field() {
    assert_eq!(
        err(&format!(
            "{POLICY}spec:\n  podSelector: {{}}\n  ingress:\n    - from:\n        - podSelector: {{matchLabel: {{app: web}}}}\n"
        )),
        "NetworkPolicy x/p: spec.ingress[0].from[0].podSelector.matchLabel: unknown field \"matchLabel\" (did you mean matchLabels?)"
    );
    assert_eq!(
        err(&format!(
            "{POLICY}spec:\n  podSelector: {{}}\n  ingres: [{{}}]\n"
        )),
        "NetworkPolicy x/p: spec.ingres: unknown field \"ingres\" (did you mean ingress?)"
    );
    assert_eq!(
        err(&format!(
            "{POLICY}spec:\n  podSelector: {{matchLables: {{a: b}}}}\n"
        )),
        "NetworkPolicy x/p: spec.podSelector.matchLables: unknown field \"matchLables\" (did you mean matchLabels?)"
    );
    // Top level and metadata; case.
    assert_eq!(
        err(&format!("{POLICY}sepc: {{}}\n")),
        "NetworkPolicy x/p: sepc: unknown field \"sepc\" (did you mean spec?)"
    );
    assert!(
        err("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, lables: {a: b}}\n")
            .ends_with("metadata.lables: unknown field \"lables\" (did you mean labels?)")
    );
    assert!(
        err(&format!("{POLICY}spec: {{podselector: {{}}}}\n"))
            .ends_with("(did you mean podSelector?)")
    );
    // Deep in a list of a list: egress[1].ports[0].
    assert!(
        err(&format!(
            "{POLICY}spec:\n  podSelector: {{}}\n  egress: [{{}}, {{ports: [{{prot: 80}}]}}]\n"
        ))
        .contains("spec.egress[1].ports[0].prot: unknown field \"prot\" (did you mean port?)")
    );
    // Far from anything: the known fields are listed.
    assert!(
        err(&format!(
            "{POLICY}spec:\n  podSelector: {{}}\n  ingress: [{{sources: []}}]\n"
        ))
        .ends_with(
            "spec.ingress[0].sources: unknown field \"sources\" (known fields here: from, ports)"
        )
    );
    // Every unknown field, not just the first.
    let e = err(&format!(
        "{POLICY}spec: {{podSelector: {{}}, ingres: [], egres: []}}\n"
    ));
    assert!(e.contains("spec.ingres") && e.contains("spec.egres"), "{e}");
}

#[test]
fn maps_and_free_form_fields_take_any_key() {
    decode(&yaml(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  namespace: x\n  labels: {app.kubernetes.io/name: a, anything: b}\n  annotations: {whatever/key: v}\n  managedFields: [{manager: m, fieldsV1: {f:spec: {f:containers: {}}}}]\nspec:\n  nodeName: n\n  containers: [{name: c, image: i, resources: {limits: {cpu: 1, memory: 1Gi}}, ports: [{containerPort: 80}]}]\nstatus: {podIPs: [{ip: 10.0.0.1}]}\n",
    ))
    .unwrap();
    let e = err(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPrt: 80}]}]}\n",
    );
    assert!(
        e.ends_with("spec.containers[0].ports[0].containerPrt: unknown field \"containerPrt\" (did you mean containerPort?)"),
        "{e}"
    );
    // A key that is not a plain name is quoted in the path.
    let e = err(&format!(
        "{POLICY}spec: {{podSelector: {{}}, \"a.b/c\": 1}}\n"
    ));
    assert!(e.contains("spec[\"a.b/c\"]: unknown field"), "{e}");
}

#[test]
fn wrong_types_name_their_path() {
    assert_eq!(
        err(&format!(
            "{POLICY}spec: {{podSelector: {{matchLabels: [1]}}}}\n"
        )),
        "NetworkPolicy x/p: spec.podSelector.matchLabels: invalid type: sequence, expected a map"
    );
}

#[test]
fn unknown_kinds_and_api_versions_say_what_is_read() {
    let e = err(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolcy\nmetadata: {name: p, namespace: x}\n",
    );
    assert!(
        e.starts_with("NetworkPolcy x/p: kind: unknown kind \"NetworkPolcy\" (did you mean NetworkPolicy?): enforcer reads Namespace (v1), Pod (v1), Service (v1), NetworkPolicy (networking.k8s.io/v1), EndpointSlice (discovery.k8s.io/v1), ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2), AdminNetworkPolicy (policy.networking.k8s.io/v1alpha1), BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1), Node (v1), and Lists of them"),
        "{e}"
    );
    let e = err("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n");
    assert!(
        e.starts_with("CiliumNetworkPolicy p: kind: unknown kind \"CiliumNetworkPolicy\": enforcer reads Namespace"),
        "{e}"
    );
    let e = err("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
    assert!(
        e.contains("unknown kind \"Deployment\": enforcer reads"),
        "{e}"
    );
    assert_eq!(
        err(
            "apiVersion: networking.k8s.io/v2\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n"
        ),
        "NetworkPolicy x/p: apiVersion: unknown apiVersion \"networking.k8s.io/v2\": NetworkPolicy is read as networking.k8s.io/v1"
    );
    assert_eq!(
        err("apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n"),
        "NetworkPolicy x/p: apiVersion: unknown apiVersion \"v1\": NetworkPolicy is read as networking.k8s.io/v1"
    );
    assert_eq!(
        err("kind: Namespace\nmetadata: {name: x}\n"),
        "Namespace x: apiVersion: not set (Namespace is v1)"
    );
    assert!(err("metadata: {name: x}\n").starts_with("object x: kind: not set (enforcer reads"));
}

#[test]
fn lists_check_their_own_fields_and_name_the_item() {
    let objs = decode_document(&yaml(
        "apiVersion: v1\nkind: List\nmetadata: {resourceVersion: \"\"}\nitems:\n  - {apiVersion: v1, kind: Namespace, metadata: {name: x}}\n  - {apiVersion: v1, kind: Service, metadata: {name: s, namespace: x}, spec: {ports: [{port: 80}]}}\n",
    ))
    .unwrap();
    assert_eq!(objs.len(), 2);
    // A typed list's items may leave their kind out.
    let objs = decode_document(&yaml(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems: [{metadata: {name: p, namespace: x}, spec: {podSelector: {}}}]\n",
    ))
    .unwrap();
    assert_eq!(objs[0].kind(), Kind::NetworkPolicy);
    assert_eq!(
        err("apiVersion: v1\nkind: List\nitem: []\n"),
        "List <unnamed>: item: unknown field \"item\" (did you mean items?)"
    );
    assert_eq!(
        err(&format!(
            "apiVersion: v1\nkind: List\nitems:\n  - {{apiVersion: v1, kind: Namespace, metadata: {{name: x}}}}\n  - {}",
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: p, namespace: x}, spec: {ingres: []}}"
        )),
        "items[1] (NetworkPolicy x/p): spec.ingres: unknown field \"ingres\" (did you mean ingress?)"
    );
    assert!(
        err("apiVersion: v2\nkind: List\nitems: []\n")
            .contains("unknown apiVersion \"v2\" for List (enforcer reads List v1)")
    );
}

#[test]
fn a_missing_namespace_is_named() {
    let o = decode(&yaml(&format!("{POLICY}spec: {{podSelector: {{}}}}\n"))).unwrap();
    assert!(o.check_namespace(|n| n == "x").is_ok());
    assert_eq!(
        o.check_namespace(|n| n == "y").unwrap_err().to_string(),
        "NetworkPolicy x/p: metadata.namespace: namespace \"x\" does not exist"
    );
    // `default` (what an object without a namespace is in) exists in every cluster.
    let o = decode(&yaml(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n",
    ))
    .unwrap();
    assert_eq!(o.namespace(), Some("default"));
    assert!(o.check_namespace(|_| false).is_ok());
    let ns = decode(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}))
        .unwrap();
    assert!(ns.check_namespace(|_| false).is_ok());
}

#[test]
fn the_schema_knows_every_field_the_types_write() {
    // A round trip through k8s-openapi's types keeps exactly the fields they know: every
    // field they write must be one the schema has.
    let full = yaml(&format!(
        "{POLICY}spec:\n  podSelector: {{matchLabels: {{a: b}}, matchExpressions: [{{key: k, operator: In, values: [v]}}]}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{{from: [{{podSelector: {{}}, namespaceSelector: {{}}}}, {{ipBlock: {{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}}}], ports: [{{port: 80, endPort: 81, protocol: TCP}}]}}]\n  egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0}}}}], ports: [{{port: dns, protocol: UDP}}]}}]\n"
    ));
    let Object::NetworkPolicy(p) = decode(&full).unwrap() else {
        panic!()
    };
    let back = serde_json::to_value(&p).unwrap();
    assert_eq!(back, full);
    assert!(schema::unknown_fields(Kind::NetworkPolicy, &back).is_empty());
}

#[test]
fn nearest_names() {
    assert_eq!(
        nearest("matchLabel", ["matchLabels", "matchExpressions"]),
        Some("matchLabels")
    );
    assert_eq!(nearest("to", ["from", "ports"]), None);
    assert_eq!(
        nearest("CiliumNetworkPolicy", ["NetworkPolicy", "Pod"]),
        None
    );
    assert_eq!(nearest("NAME", ["name"]), Some("name"));
}
