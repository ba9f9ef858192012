//! The lab tier: every scenario under tests/scenarios runs on the real datapath, in throwaway
//! network namespaces, and every probe with an expectation must match. Needs root.

use std::path::{Path, PathBuf};
use std::process::Command;

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
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
        "the lab tests need root (network namespaces, BPF); run them as root"
    );
}

#[test]
fn every_scenario_matches_its_expectations() {
    require_root();
    let files = scenarios();
    assert!(files.len() >= 3, "expected at least three lab scenarios");
    let mut failures = Vec::new();
    let mut probes = 0;
    for file in &files {
        let out = Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .args(["lab", "run"])
            .arg(file)
            .args(["--output", "json"])
            .output()
            .expect("running enforcer lab");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = match serde_json::from_str(&stdout) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!(
                    "{}: no JSON report ({e}); exit {:?}\nstderr:\n{}",
                    file.display(),
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                ));
                continue;
            }
        };
        let mut expected = 0;
        for step in report["steps"].as_array().into_iter().flatten() {
            for p in step["probes"].as_array().into_iter().flatten() {
                probes += 1;
                if p.get("expected").is_some_and(|e| !e.is_null()) {
                    expected += 1;
                }
            }
        }
        let mismatches = report["mismatches"].as_u64().unwrap_or(u64::MAX);
        if !out.status.success() || mismatches != 0 || expected == 0 {
            failures.push(format!(
                "{}: exit {:?}, {mismatches} mismatches, {expected} expectations\n{}\nstderr:\n{}",
                file.display(),
                out.status.code(),
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
        } else {
            eprintln!(
                "{}: {expected} expectations met",
                file.file_name().unwrap().to_string_lossy()
            );
        }
    }
    eprintln!("{} scenarios, {probes} probes", files.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
