//! The upstream Kubernetes e2e NetworkPolicy suite (`test/e2e/network/netpol/network_policy.go`),
//! ported to lab scenarios under tests/e2e-netpol (one file per upstream test; see the README
//! there). Every scenario runs on the real datapath, in throwaway network namespaces, and every
//! probe with an expectation must match; a failure lists every mismatching probe. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// The `ginkgo.It`s of upstream network_policy.go (per-test pod topologies, kubernetes PR
/// #137110): 42 in "NetworkPolicy between server and client", 3 in "... using UDP" and 3 in
/// "... using SCTP". Each is one file in tests/e2e-netpol.
const UPSTREAM_TESTS: usize = 48;

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e-netpol")
}

fn scenarios() -> Vec<PathBuf> {
    let dir = scenario_dir();
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    v.sort();
    v
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the e2e NetworkPolicy lab tests need root (network namespaces, BPF); run them as root"
    );
}

fn name_of(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `from -> to port/protocol: expected X, observed Y` for every probe with an expectation
/// that was observed otherwise (an `unsupported` probe is not a mismatch).
fn mismatches(report: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for step in report["steps"].as_array().into_iter().flatten() {
        let n = step["step"].as_u64().unwrap_or(0);
        for p in step["probes"].as_array().into_iter().flatten() {
            let (Some(expected), Some(observed)) = (p["expected"].as_str(), p["observed"].as_str())
            else {
                continue;
            };
            if observed == "unsupported" || observed == expected {
                continue;
            }
            let mut line = format!(
                "step {n}: {} -> {} {}/{}: expected {expected}, observed {observed}",
                p["from"].as_str().unwrap_or("?"),
                p["to"].as_str().unwrap_or("?"),
                p["port"],
                p["protocol"].as_str().unwrap_or("?"),
            );
            if p["events"].as_array().is_some_and(|e| !e.is_empty()) {
                line.push_str(&format!(" (events: {})", p["events"]));
            }
            out.push(line);
        }
    }
    out
}

/// The two suites share the machine's two cores: one at a time, so probe timeouts mean policy.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn upstream_netpol_suite_matches_its_reachability_matrices() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root();
    let files = scenarios();
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
    require_root();
    let dir = std::env::temp_dir().join(format!("enforcer-e2e-2nodes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for f in scenarios() {
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

fn run_suite(files: &[PathBuf], label: &str) {
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut probes, mut expectations, mut unsupported) = (0, 0, 0);
    for file in files {
        let name = name_of(file);
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .args(["lab", "run"])
            .arg(file)
            .args(["--output", "json"])
            .output()
            .expect("running enforcer lab");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let report: Value = match serde_json::from_str(&stdout) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!(
                    "{name}: no JSON report ({e}); exit {:?}\nstderr:\n{stderr}",
                    out.status.code()
                ));
                continue;
            }
        };

        let mut expected = 0;
        for step in report["steps"].as_array().into_iter().flatten() {
            for p in step["probes"].as_array().into_iter().flatten() {
                probes += 1;
                if p["expected"].is_string() {
                    expected += 1;
                }
                if p["observed"] == "unsupported" {
                    unsupported += 1;
                }
            }
        }
        expectations += expected;

        let wrong = mismatches(&report);
        let reported = report["mismatches"].as_u64();
        if !wrong.is_empty() {
            failures.push(format!(
                "{name}: {} mismatching probes:\n  {}",
                wrong.len(),
                wrong.join("\n  ")
            ));
        } else if !out.status.success() || reported != Some(0) || expected == 0 {
            failures.push(format!(
                "{name}: exit {:?}, mismatches {reported:?}, {expected} expectations\nstderr:\n{stderr}",
                out.status.code()
            ));
        } else {
            eprintln!("{name}: {expected} expectations met ({:.1?})", t.elapsed());
        }
    }
    eprintln!(
        "{label}: {} scenarios, {probes} probes ({expectations} with an expectation, {unsupported} unsupported) in {:.1?}",
        files.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{label}: {} of {} upstream tests fail:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
