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
    let files = scenarios("tests/e2e-netpol");
    let spread = Spread::new("2nodes", &files, "[node-1, node-2]");
    assert!(
        spread.files.len() >= UPSTREAM_TESTS - 2,
        "most scenarios spread: {}",
        spread.files.len()
    );
    spread.run("two nodes");
}

/// Scenarios of the suite on two bridge nodes (flannel's and K3s's `cni0`), the pods spread
/// alternately: pods of one node talk through the bridge, the agent finds them by neighbour
/// and forwarding-database entries. A sample, not the whole suite (which runs on routed nodes
/// above): ingress and egress isolation, namespace and pod selectors, named ports, UDP, an
/// ipBlock, a policy change.
#[test]
fn upstream_netpol_samples_hold_on_bridge_nodes() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the e2e NetworkPolicy lab tests");
    const SAMPLE: &[&str] = &[
        "should-support-a-default-deny-ingress-policy.yaml",
        "should-deny-egress-from-pods-based-on-podselector.yaml",
        "should-enforce-policy-based-on-podselector-and-namespaceselector.yaml",
        "should-allow-ingress-access-on-one-named-port.yaml",
        "should-allow-egress-access-to-server-in-cidr-block.yaml",
        "should-enforce-updated-policy.yaml",
        "udp-should-enforce-policy-based-on-ports.yaml",
    ];
    let files: Vec<_> = scenarios("tests/e2e-netpol")
        .into_iter()
        .filter(|f| SAMPLE.iter().any(|s| f.ends_with(s)))
        .collect();
    assert_eq!(files.len(), SAMPLE.len(), "every sampled scenario exists");
    let spread = Spread::new(
        "bridge",
        &files,
        "[{name: node-1, cni: bridge}, {name: node-2, cni: bridge}]",
    );
    assert_eq!(
        spread.files.len(),
        SAMPLE.len(),
        "every sampled scenario spreads"
    );
    spread.run("two bridge nodes");
}

/// Copies of scenarios with `nodes` set and their pods placed alternately on node-1 and
/// node-2 (scenarios that place their pods themselves are left out), in a folder removed on
/// drop.
struct Spread {
    dir: std::path::PathBuf,
    files: Vec<std::path::PathBuf>,
}

impl Drop for Spread {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Spread {
    fn run(&self, label: &str) {
        run_suite(&self.files, label);
    }

    fn new(tag: &str, sources: &[std::path::PathBuf], nodes: &str) -> Spread {
        let dir = std::env::temp_dir().join(format!("enforcer-e2e-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for f in sources {
            let text = std::fs::read_to_string(f).unwrap();
            let mut doc: serde_norway::Value =
                serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let map = doc.as_mapping_mut().expect("a scenario is a mapping");
            if map.contains_key("nodes") {
                continue; // places its pods itself
            }
            map.insert("nodes".into(), serde_norway::from_str(nodes).unwrap());
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
        Spread { dir, files }
    }
}
