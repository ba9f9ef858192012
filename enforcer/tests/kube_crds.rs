//! The CustomResourceDefinitions of deploy/crds/ against the real control plane (see
//! kube_server.rs): the server accepts them and a sample object of each kind, and refuses a
//! misspelt field in a sample (the schemas are structural, so validation is strict).
//!
//! And the agent on a cluster without them: it syncs and enforces NetworkPolicies, says once
//! per CRD that it is absent, and once the CRDs are installed holds their objects (counted in
//! `enforcer status`, not enforced by this version).
//!
//! Needs root (network namespaces). Everything is removed on exit, also on failure.

mod agent_lab;
mod kube_common;

use control_plane::{ControlPlane, Options};
use kube_common::*;

fn apply_crds(cp: &ControlPlane) -> String {
    let out = ok(
        &cp.kubectl()
            .arg("apply")
            .arg("-f")
            .arg(deploy_dir().join("crds"))
            .output()
            .unwrap(),
        "kubectl apply -f deploy/crds/",
    );
    // Served once Established.
    ok(
        &cp.kubectl()
            .args([
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd",
                "-l",
                "app.kubernetes.io/part-of=enforcer",
            ])
            .output()
            .unwrap(),
        "waiting for the CRDs",
    );
    out
}

/// One object of each kind, with the field the misspelling test changes (original, typo, the
/// server's path of the typo).
const SAMPLES: &[(&str, &str, (&str, &str, &str))] = &[
    (
        "clusternetworkpolicy.policy.networking.k8s.io/deny-with-ports",
        r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-with-ports}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces: {matchLabels: {kubernetes.io/metadata.name: sensitive-ns}}
  ingress:
    - name: deny-web
      action: Deny
      from:
        - pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}
      protocols:
        - tcp: {destinationPort: {number: 8080}}
        - udp: {destinationPort: {range: {start: 9000, end: 9090}}}
        - destinationNamedPort: http
  egress:
    - name: pass-dns
      action: Pass
      to:
        - networks: [192.0.2.0/24]
"#,
        (
            "destinationNamedPort:",
            "destinationNamePort:",
            "destinationNamePort",
        ),
    ),
    (
        "adminnetworkpolicy.policy.networking.k8s.io/cluster-control",
        r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: cluster-control}
spec:
  priority: 34
  subject:
    namespaces: {}
  ingress:
    - name: allow-monitoring
      action: Allow
      from:
        - namespaces: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
      ports:
        - portNumber: {protocol: TCP, port: 9100}
  egress:
    - name: deny-test-net
      action: Deny
      to:
        - networks: [198.51.100.0/24]
"#,
        ("portNumber:", "portNumbr:", "portNumbr"),
    ),
    (
        "baselineadminnetworkpolicy.policy.networking.k8s.io/default",
        r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject:
    namespaces: {matchLabels: {tenant: a}}
  ingress:
    - name: default-deny
      action: Deny
      from:
        - namespaces: {}
"#,
        ("subject:", "subjct:", "subjct"),
    ),
    (
        // As shared seed 004 writes it (a HostEndpoint per node, all its interfaces).
        "hostendpoint.crd.projectcalico.org/node-1",
        r#"
apiVersion: crd.projectcalico.org/v1
kind: HostEndpoint
metadata:
  name: node-1
  labels:
    host-endpoint: ingress
spec:
  interfaceName: "*"
  node: "node-1"
"#,
        ("interfaceName:", "interfaceNme:", "interfaceNme"),
    ),
    (
        // Seed 004's drop-other-ingress, in the CRD storage group.
        "globalnetworkpolicy.crd.projectcalico.org/drop-other-ingress",
        r#"
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: drop-other-ingress}
spec:
  order: 20
  preDNAT: true
  applyOnForward: true
  selector: has(host-endpoint)
  ingress:
    - action: Deny
      source:
        nets: [10.240.0.0/16, 192.168.0.0/16]
"#,
        ("preDNAT:", "preDnat:", "preDnat"),
    ),
];

#[test]
fn the_crds_and_a_sample_of_each_kind_are_accepted_and_a_misspelt_field_refused() {
    let cp = start(Options::default());
    let applied = apply_crds(&cp);
    for crd in [
        "clusternetworkpolicies.policy.networking.k8s.io",
        "adminnetworkpolicies.policy.networking.k8s.io",
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
        "hostendpoints.crd.projectcalico.org",
        "globalnetworkpolicies.crd.projectcalico.org",
    ] {
        assert!(
            applied.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{crd} created"
            )),
            "{crd}: {applied}"
        );
    }
    for (name, yaml, (field, typo, path)) in SAMPLES {
        let out = ok(
            &with_stdin(
                cp.kubectl().args(["apply", "--validate=strict", "-f", "-"]),
                yaml,
            ),
            &format!("applying {name}"),
        );
        assert!(out.contains(&format!("{name} created")), "{name}: {out}");
        // Read back as stored.
        ok(
            &cp.kubectl()
                .args(["get", name, "-o", "json"])
                .output()
                .unwrap(),
            &format!("reading {name}"),
        );
        assert!(yaml.contains(field), "{name}: {field}");
        let bad = yaml.replacen(field, typo, 1);
        let out = with_stdin(
            cp.kubectl()
                .args(["apply", "--dry-run=server", "--validate=strict", "-f", "-"]),
            &bad,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("unknown field") && err.contains(path),
            "{name}: the misspelt {path} is refused: {err}"
        );
    }
    // The schema's values are checked too: an action of the other API is refused.
    let out = with_stdin(
        cp.kubectl().args(["apply", "--dry-run=server", "-f", "-"]),
        &SAMPLES[0].1.replace("action: Deny", "action: Allow"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Unsupported value: \"Allow\""),
        "ClusterNetworkPolicy's action is Accept|Deny|Pass: {err}"
    );
}

const CNP: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: admin-deny-x}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: x}}}
  ingress:
    - action: Deny
      from: [{namespaces: {}}]
"#;

fn held(lab: &agent_lab::Lab) -> serde_json::Value {
    let out = lab.cli(&[
        "status",
        "--bpffs",
        lab.bpffs.to_str().unwrap(),
        "--output",
        "json",
    ]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map(|v| v["agent"]["held_kinds"].clone())
        .unwrap_or_default()
}

#[test]
fn the_agent_works_without_the_crds_and_enforces_or_holds_their_objects_once_they_appear() {
    use std::time::{Duration, Instant};
    let mut lab = agent_lab::Lab::new("crds");
    let cp = start(Options {
        netns: Some(lab.node_ns.clone()),
        ..Default::default()
    });
    apply_bundle(&cp);
    create_pod(&cp, agent_lab::POD_IP);
    ok(
        &with_stdin(
            cp.kubectl().args(["apply", "-f", "-"]),
            agent_lab::DENY_INGRESS,
        ),
        "the NetworkPolicy",
    );
    let kc = cp
        .service_account_kubeconfig("enforcer-system", "enforcer")
        .unwrap_or_else(|e| panic!("{e}"));
    lab.start(&["--source", "kube", "--kubeconfig", kc.to_str().unwrap()]);
    lab.wait_status("synced without the CRDs", |s| {
        s["endpoints"] == 1 && s["error"].is_null()
    });
    let modes = agent_lab::endpoint_modes(&lab.dump());
    assert_eq!(
        modes,
        [("enforce".to_string(), "allow-all".to_string())],
        "the policy enforced"
    );

    // Looked for again (1 s, 2 s, 4 s...) but said once per CRD.
    std::thread::sleep(Duration::from_secs(4));
    let log = std::fs::read_to_string(lab.dir.join("agent.log")).unwrap_or_default();
    for crd in [
        "clusternetworkpolicies.policy.networking.k8s.io",
        "adminnetworkpolicies.policy.networking.k8s.io",
        "baselineadminnetworkpolicies.policy.networking.k8s.io",
        "hostendpoints.crd.projectcalico.org",
        "globalnetworkpolicies.crd.projectcalico.org",
    ] {
        let said = log
            .lines()
            .filter(|l| l.contains("CRD absent") && l.contains(&format!("crd=\"{crd}\"")))
            .count();
        assert_eq!(said, 1, "{crd} said absent once; agent log:\n{log}");
    }
    let h = held(&lab);
    assert_eq!(h["HostEndpoint"], serde_json::Value::Null, "{h}");
    // The cluster-wide policies are enforced, not held.
    assert_eq!(h.as_object().map(|o| o.len()), Some(2), "{h}");

    apply_crds(&cp);
    ok(
        &with_stdin(cp.kubectl().args(["apply", "-f", "-"]), CNP),
        "the ClusterNetworkPolicy",
    );
    // Enforced from the moment its CRD is served: the pod's ingress gets the Admin tier, and
    // the Deny rule's entry names the policy.
    let start = Instant::now();
    loop {
        let d = lab.dump();
        let tiers = d["endpoints"]
            .as_object()
            .and_then(|e| e.values().next())
            .map(|e| e["tiers"].clone())
            .unwrap_or_default();
        if tiers == serde_json::json!(["ingress:Admin"]) && held(&lab)["HostEndpoint"] == 0 {
            let admin: Vec<&serde_json::Value> = d["policy"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["tier"] == "Admin")
                .collect();
            assert!(
                !admin.is_empty()
                    && admin
                        .iter()
                        .all(|p| p["policy"] == "ClusterNetworkPolicy/admin-deny-x"
                            && p["action"] == "deny"),
                "{admin:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the agent enforces the ClusterNetworkPolicy: {tiers}; agent log:\n{}",
            std::fs::read_to_string(lab.dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = lab.cli(&["status", "--bpffs", lab.bpffs.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("NOT ENFORCED BY THIS VERSION")
            && text.contains("HostEndpoint                 0 objects held")
            && !text.contains("ClusterNetworkPolicy "),
        "{text}"
    );
    // Still enforcing what it enforced.
    let modes = agent_lab::endpoint_modes(&lab.dump());
    assert_eq!(modes, [("enforce".to_string(), "allow-all".to_string())]);
    assert!(lab.stop(), "the agent exits cleanly on SIGTERM");
}
