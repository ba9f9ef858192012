//! `explain --live` and `describe pod --live` against a real agent in a lab (the demo's
//! cluster, examples/k3s-multi-tenant.yaml, with its policies applied): the finding,
//! an address-form explain of a flow `lab probe` sees denied, is denied and the live maps agree.
//! Needs root (network namespaces, BPF).

mod common;

use std::process::{Command, Output};

fn enforcer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("running enforcer")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Takes the lab down however the test ends.
struct Lab(String);

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = enforcer(&["lab", "down", &self.0]);
    }
}

#[test]
fn explain_and_describe_live_agree_with_the_datapath_in_the_demo_lab() {
    common::require_root("the lab tests");
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let lab = Lab(format!("exl{}", std::process::id() % 100_000));
    let o = enforcer(&[
        "lab",
        "up",
        "examples/k3s-multi-tenant.yaml",
        "--name",
        &lab.0,
    ]);
    assert!(o.status.success(), "lab up: {}", text(&o));
    let o = enforcer(&[
        "lab",
        "apply",
        &lab.0,
        "examples/policies/k3s-multi-tenant.yaml",
    ]);
    assert!(o.status.success(), "lab apply: {}", text(&o));

    let probe = enforcer(&[
        "lab",
        "probe",
        &lab.0,
        "sample2/curl",
        "sample1/nginx",
        "80/TCP",
    ]);
    assert!(
        text(&probe).contains("denied by policy"),
        "{}",
        text(&probe)
    );

    // sample2/curl → sample1/nginx by their addresses (10.42.0.13 → 10.42.0.10 in the demo).
    let o = enforcer(&[
        "lab",
        "exec",
        &lab.0,
        "node-1",
        "--",
        "explain",
        "--from",
        "10.42.0.13",
        "--to",
        "10.42.0.10",
        "--port",
        "http",
        "--live",
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["from"]["seen_as"]["pod"], "sample2/curl", "{v}");
    assert_eq!(v["to"]["seen_as"]["pod"], "sample1/nginx", "{v}");
    assert_eq!(v["verdict"], "denied", "{v}");
    assert_eq!(v["live_agrees"], true, "{v}");
    assert_eq!(v["sides"][1]["live"]["reason"], "no-rule-allows", "{v}");

    let o = enforcer(&[
        "lab",
        "exec",
        &lab.0,
        "node-1",
        "--",
        "explain",
        "--from",
        "192.0.2.1",
        "--to",
        "198.51.100.1",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    let o = enforcer(&[
        "lab",
        "exec",
        &lab.0,
        "node-1",
        "--",
        "describe",
        "pod",
        "sample1/nginx",
        "--live",
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ingress"]["isolated"], true, "{v}");
    assert_eq!(v["live"]["ingress_mode"], "enforce", "{v}");
    assert_eq!(v["live"]["agrees"], true, "{v}");
    assert_eq!(
        v["ingress"]["policies"]["sample1/deny-by-default"]["rules"],
        serde_json::json!([]),
        "{v}"
    );
}
