//! What the lab-driven test files share: finding scenarios, running them through
//! `enforcer lab run --output json`, and listing every probe that differs.
#![allow(dead_code)] // each test file uses its own part

pub mod run;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

/// Test functions that drive labs take this, so two labs never share the machine's two cores
/// (probe timeouts must mean policy, not load).
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn require_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "{what} need root (network namespaces, BPF); run them with README's test command"
    );
}

/// The scenario files (`*.yaml`) of a folder of the repository, sorted.
pub fn scenarios(rel: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    v.sort();
    v
}

fn name_of(file: &Path) -> String {
    file.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `from -> to port/protocol: expected X, observed Y` for every probe with an expectation
/// that was observed otherwise (an `unsupported` probe is not a mismatch).
pub fn mismatches(report: &Value) -> Vec<String> {
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

/// Runs every scenario with the real agent and fails listing every probe that differs from its
/// expectation (and every scenario that could not run or expects nothing).
pub fn run_suite(files: &[PathBuf], label: &str) {
    run_suite_with(files, label, &[]);
}

/// `run_suite` with more arguments for `lab run` (`--source kube`).
pub fn run_suite_with(files: &[PathBuf], label: &str, extra: &[&str]) {
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
            .args(extra)
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
