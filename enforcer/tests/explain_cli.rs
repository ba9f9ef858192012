//! `enforcer explain` on the command line: addresses resolved to pods, traffic with no pod at
//! either end not judged (its own exit status), named ports, port 0 refused, the agent's
//! options. No root needed.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A manifests folder of its own under the temp dir, removed on drop.
struct Manifests(PathBuf);

impl Manifests {
    fn new(tag: &str, yaml: &str) -> Manifests {
        let d =
            std::env::temp_dir().join(format!("enforcer-explain-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cluster.yaml"), yaml).unwrap();
        Manifests(d)
    }

    fn explain(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .arg("explain")
            .arg("--manifests")
            .arg(&self.0)
            .args(args)
            .env_remove("ENFORCER_MANIFESTS")
            .output()
            .expect("running enforcer")
    }
}

impl Drop for Manifests {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The demo lab's sample1/nginx isolated to its namespace, sample2/curl outside it.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: sample1}
---
apiVersion: v1
kind: Namespace
metadata: {name: sample2}
---
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
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-same-namespace, namespace: sample1}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}]}]
"#;

#[test]
fn explain_resolves_addresses_and_does_not_judge_what_has_no_pod() {
    let m = Manifests::new("resolve", CLUSTER);
    // The issue's finding: by address, sample2/curl → sample1/nginx was ALLOWED.
    let o = m.explain(&["--from", "10.42.0.13", "--to", "10.42.0.10", "--port", "80"]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    assert!(
        text.starts_with("10.42.0.13 → 10.42.0.10 TCP/80: DENIED\n"),
        "{text}"
    );
    assert!(text.contains("pod sample2/curl (identity"), "{text}");
    assert!(text.contains("ingress at sample1/nginx: deny"), "{text}");

    // No pod at either end: not judged, exit 3, said plainly.
    let o = m.explain(&["--from", "1.2.3.4", "--to", "5.6.7.8", "--port", "80"]);
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    let text = out(&o);
    assert!(
        text.contains("1.2.3.4 → 5.6.7.8 TCP/80: NOT JUDGED"),
        "{text}"
    );
    assert!(
        text.contains(
            "NOT JUDGED: neither end is a pod; enforcer judges only traffic to or from pods"
        ),
        "{text}"
    );
    let o = m.explain(&[
        "--from", "1.2.3.4", "--to", "5.6.7.8", "--port", "80", "--output", "json",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["verdict"], "not-judged");
    assert_eq!(v["judged"], false);
    assert!(v["allowed"].is_null());
    assert_eq!(v["from"]["seen_as"]["kind"], "world");
}

#[test]
fn explain_takes_named_ports_refuses_port_0_and_decides_as_the_agent() {
    let m = Manifests::new("ports", CLUSTER);
    let o = m.explain(&[
        "--from",
        "sample1/curl",
        "--to",
        "sample1/nginx",
        "--port",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("port 0 is no port a connection can use"),
        "{}",
        err(&o)
    );

    let o = m.explain(&[
        "--from",
        "sample2/curl",
        "--to",
        "sample1/nginx",
        "--port",
        "http",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("TCP/80: DENIED"), "{}", out(&o));
    let o = m.explain(&[
        "--from",
        "sample2/curl",
        "--to",
        "sample1/nginx",
        "--port",
        "https",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        "error: --port https: pod sample1/nginx has no TCP container port named \"https\" (it has: http TCP/80)\n"
    );

    // The node: admitted by the agent's default, not with --no-allow-host.
    let node = [
        "--from",
        "10.0.9.1",
        "--to",
        "sample1/nginx",
        "--port",
        "80",
        "--node-ip",
        "10.0.9.1",
    ];
    let o = m.explain(&node);
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("TCP/80: ALLOWED"), "{}", out(&o));
    assert!(out(&o).contains("10.0.9.1: this node"), "{}", out(&o));
    let o = m.explain(&[&node[..], &["--no-allow-host"]].concat());
    assert!(out(&o).contains("TCP/80: DENIED"), "{}", out(&o));
}

#[test]
fn describe_pod_shows_the_policies_from_the_pods_side() {
    let m = Manifests::new("describe", CLUSTER);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .args(["describe", "pod"])
            .args(args)
            .arg("--manifests")
            .arg(&m.0)
            .output()
            .expect("running enforcer")
    };
    let o = run(&["sample1/nginx"]);
    assert!(o.status.success(), "{}", err(&o));
    let text = out(&o);
    assert!(text.starts_with("Pod:        sample1/nginx\n"), "{text}");
    assert!(
        text.contains("Ingress:    isolated: only what a rule below allows"),
        "{text}"
    );
    assert!(
        text.contains("  sample1/allow-same-namespace: isolates"),
        "{text}"
    );
    assert!(
        text.contains("From: pods all in namespace sample1 (sample1/nginx)"),
        "{text}"
    );
    assert!(
        text.contains("Egress:    not isolated: everything allowed"),
        "{text}"
    );

    let o = run(&["sample1/nginx", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["ingress"]["isolated"], true);
    assert_eq!(
        v["ingress"]["policies"]["sample1/allow-same-namespace"]["rules"][0]["peers"][0]["matches"],
        serde_json::json!(["sample1/nginx"])
    );

    let o = run(&["sample1/gone"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "error: no pod sample1/gone in the manifests\n");
}
