//! The CustomResourceDefinitions of deploy/crds/ against the real control plane (see
//! kube_server.rs): the server accepts them and a sample object of each kind, and refuses a
//! misspelt field in a sample (the schemas are structural, so validation is strict).
//!
//! Needs root (network namespaces). Everything is removed on exit, also on failure.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use control_plane::{ControlPlane, Options};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn start(options: Options) -> ControlPlane {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the control-plane tests need root (network namespaces)"
    );
    let cp = ControlPlane::start(options).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("control plane ready in {:.1?}", cp.started_in());
    cp
}

fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
