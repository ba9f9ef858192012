//! The lab tier: every scenario under tests/scenarios and every example under examples/ runs
//! on the real datapath, in throwaway network namespaces, and every probe with an expectation
//! must match, with the manifests folder and again through the real kube-apiserver
//! (`--source kube`). Needs root.

mod common;

use common::{ONE_AT_A_TIME, require_root, run_suite, run_suite_with, scenarios};
use serde_json::Value;

#[test]
fn every_scenario_matches_its_expectations() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the lab tests");
    let files = scenarios("tests/scenarios");
    assert!(files.len() >= 3, "expected at least three lab scenarios");
    run_suite(&files, "tests/scenarios");
}

/// The same scenarios with the real control plane: every object written through
/// kube-apiserver (and so validated as a cluster would), every agent watching it.
#[test]
fn every_scenario_matches_its_expectations_through_the_api_server() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the lab tests");
    let files = scenarios("tests/scenarios");
    run_suite_with(
        &files,
        "tests/scenarios, --source kube",
        &["--source", "kube"],
    );
}

#[test]
fn every_example_matches_its_expectations() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the lab tests");
    let files = scenarios("examples");
    assert!(!files.is_empty(), "examples/ holds scenarios");
    run_suite(&files, "examples");
}

/// Runs a scenario with `--output json`; its report.
fn report(rel: &str) -> Value {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(["lab", "run"])
        .arg(&file)
        .args(["--output", "json"])
        .output()
        .expect("running enforcer lab");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{rel}: no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Every denied probe carries exactly one drop event, naming the target pod, the source pod,
/// the port, and the policies that isolate the target: for a default-deny (isolation, no rule
/// at all) and for rules that do not match (wrong port, wrong peer, wrong protocol), retries of
/// the connection included.
#[test]
fn every_blocked_probe_carries_exactly_one_attributed_drop_event() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the lab tests");
    let mut checked = 0;
    for (rel, policy) in [
        (
            "tests/scenarios/default-deny-ingress.yaml",
            "default-deny-ingress",
        ),
        (
            "tests/scenarios/allow-one-pod-one-port.yaml",
            "x/b-from-a-tcp-80",
        ),
    ] {
        let r = report(rel);
        for step in r["steps"].as_array().unwrap() {
            for p in step["probes"].as_array().unwrap() {
                if p["observed"] != "deny" {
                    continue;
                }
                let what = format!("{rel}: probe {p}");
                let events = p["events"].as_array().expect(&what);
                let drops: Vec<&Value> = events.iter().filter(|e| e["verdict"] == "drop").collect();
                assert_eq!(drops.len(), 1, "exactly one drop event: {what}");
                let e = drops[0];
                assert_eq!(e["endpoint"], p["to"], "names the target pod: {what}");
                assert_eq!(e["peer"], p["from"], "names the source pod: {what}");
                assert_eq!(e["direction"], "ingress", "{what}");
                assert_eq!(e["reason"], "no-rule-allows", "{what}");
                let port = p["port"].as_u64().or_else(|| {
                    // A named port: the event carries the number it resolved to.
                    e["dst_port"].as_u64()
                });
                assert_eq!(e["dst_port"].as_u64(), port, "names the port: {what}");
                let by: Vec<&str> = e["isolated_by"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert!(
                    by.iter().any(|b| b.ends_with(policy)),
                    "names the policy {policy}: {what}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "blocked probes checked: {checked}");
}

const REFUSED_OR_DENIED: &str = "\
namespaces: [{name: x}]
pods:
  - {namespace: x, name: a, labels: {app: a}}
  - namespace: x
    name: b
    labels: {app: b}
    ports: [{port: 80, protocol: TCP}]
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: b-some-ports, namespace: x}
    spec:
      podSelector: {matchLabels: {app: b}}
      policyTypes: [Ingress]
      ingress: [{ports: [{port: 80, protocol: TCP}, {port: 9, protocol: TCP}, {port: 9, protocol: UDP}]}]
";

/// Takes a lab down on drop, also when an assertion failed.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .args(["lab", "down", &self.0])
            .output();
    }
}

/// `lab probe` tells a port nothing listens on (the policy lets the packet through and the
/// target answers with a reset, or an ICMP port unreachable) from a port the policy closes
/// (dropped, with the drop event), in its text and in its JSON `outcome`.
#[test]
fn lab_probe_tells_refused_from_denied_by_policy() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the lab tests");
    let file = std::env::temp_dir().join(format!("enforcer-refused-{}.yaml", std::process::id()));
    std::fs::write(&file, REFUSED_OR_DENIED).unwrap();
    let name = format!("refused-{}", std::process::id());
    let enforcer = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .args(args)
            .output()
            .expect("running enforcer")
    };
    let shown = |o: &std::process::Output| {
        format!(
            "status {:?}\n{}{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let up = enforcer(&["lab", "up", file.to_str().unwrap(), "--name", &name]);
    let _ = std::fs::remove_file(&file);
    assert!(up.status.success(), "{}", shown(&up));
    let _down = Down(name.clone());

    for (port, outcome, says) in [
        ("80/TCP", "allowed", "TCP/80: allowed (connected)"),
        ("9/TCP", "refused", "TCP/9: refused: nothing listens"),
        ("9/UDP", "refused", "UDP/9: refused: nothing listens"),
        ("81/TCP", "denied", "TCP/81: denied by policy"),
        ("81/UDP", "denied", "UDP/81: denied by policy"),
    ] {
        let o = enforcer(&["lab", "probe", &name, "x/a", "x/b", port]);
        assert!(o.status.success(), "{port}: {}", shown(&o));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(says), "{port}: {}", shown(&o));
        if outcome == "denied" {
            assert!(
                text.contains("drop ingress at x/b: no-rule-allows"),
                "{port}: {}",
                shown(&o)
            );
        } else {
            assert!(!text.contains("drop "), "{port}: {}", shown(&o));
        }
        let o = enforcer(&[
            "lab", "probe", &name, "x/a", "x/b", port, "--output", "json",
        ]);
        assert!(o.status.success(), "{port}: {}", shown(&o));
        let j: Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(j["outcome"], outcome, "{port}: {j}");
        let drops = j["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["verdict"] == "drop")
            .count();
        assert_eq!(drops, usize::from(outcome == "denied"), "{port}: {j}");
    }
}
