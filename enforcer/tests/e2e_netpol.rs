//! The upstream Kubernetes e2e NetworkPolicy suite (`test/e2e/network/netpol/network_policy.go`),
//! ported to lab scenarios under tests/e2e-netpol (one file per upstream test; see the README
//! there). Every scenario runs on the real datapath, in throwaway network namespaces, and every
//! probe with an expectation must match; a failure lists every mismatching probe. Needs root.

mod common;

use common::{ONE_AT_A_TIME, require_root, run_suite, scenarios};

/// The `ginkgo.It`s of upstream network_policy.go (per-test pod topologies, kubernetes PR
/// #137110): 42 in "NetworkPolicy between server and client", 3 in "... using UDP" and 3 in
/// "... using SCTP". Each is one file in tests/e2e-netpol.
const UPSTREAM_TESTS: usize = 48;

#[test]
fn upstream_netpol_suite_matches_its_reachability_matrices() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the e2e NetworkPolicy lab tests");
    let files = scenarios("tests/e2e-netpol");
    assert_eq!(
        files.len(),
        UPSTREAM_TESTS,
        "tests/e2e-netpol must hold one scenario per upstream test ({UPSTREAM_TESTS}), found {}",
        files.len()
    );
    run_suite(&files, "one node");
}

/// The same suite with the pods spread over two nodes (alternately, in file order), so every
/// verdict also holds when egress is judged on one node and ingress on another.
#[test]
fn upstream_netpol_suite_holds_across_two_nodes() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the e2e NetworkPolicy lab tests");
    let dir = std::env::temp_dir().join(format!("enforcer-e2e-2nodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for f in scenarios("tests/e2e-netpol") {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut doc: serde_norway::Value =
            serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let map = doc.as_mapping_mut().expect("a scenario is a mapping");
        if map.contains_key("nodes") {
            continue; // places its pods itself
        }
        map.insert(
            "nodes".into(),
            serde_norway::from_str("[node-1, node-2]").unwrap(),
        );
        if let Some(pods) = map.get_mut("pods").and_then(|p| p.as_sequence_mut()) {
            for (i, pod) in pods.iter_mut().enumerate() {
                let pod = pod.as_mapping_mut().expect("a pod is a mapping");
                if !pod.contains_key("node") {
                    pod.insert("node".into(), format!("node-{}", i % 2 + 1).into());
                }
            }
        }
        let out = dir.join(f.file_name().unwrap());
        std::fs::write(&out, serde_norway::to_string(&doc).unwrap()).unwrap();
        files.push(out);
    }
    assert!(
        files.len() >= UPSTREAM_TESTS - 2,
        "most scenarios spread: {}",
        files.len()
    );
    let result = std::panic::catch_unwind(|| run_suite(&files, "two nodes"));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
