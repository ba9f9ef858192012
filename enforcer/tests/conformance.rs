//! The ClusterNetworkPolicy conformance suite of kubernetes-sigs/network-policy-api, ported to
//! lab scenarios (tests/conformance, one file per upstream test): every file runs on the real
//! datapath with `enforcer lab run` (two nodes, one lab per file, in sequence) and every probe
//! must get what upstream expects. SCTP probes count like the others: where the kernel has no
//! SCTP sockets the lab observes them one way (a hand-built INIT reaches the target or not;
//! docs/scenario-format.md: on the target's `eth0`, or on its node's input hook for a node's
//! own address), and no probe may be `unsupported`. Needs root.
//! The experimental ones included: named ports, and `nodes` peers (the lab writes its nodes as
//! Node objects, which the agent reads; the node-peer tests probe a host-networked pod at its
//! node's address).

mod common;

use std::process::Command;
use std::time::Instant;

use common::{ONE_AT_A_TIME, mismatches, require_root, scenarios};
use serde_json::Value;

/// The upstream suite has 24 tests (tests/conformance/README.md).
const UPSTREAM_TESTS: usize = 24;

#[test]
fn every_conformance_test_gets_what_upstream_expects() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the conformance tests");
    let files = scenarios("tests/conformance");
    assert_eq!(
        files.len(),
        UPSTREAM_TESTS,
        "one scenario per upstream test: {files:?}"
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut probes, mut expectations, mut unsupported, mut sctp) = (0, 0, 0, 0);
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .args(["lab", "run"])
            .arg(file)
            .args(["--output", "json"])
            .output()
            .expect("running enforcer lab");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let took = t.elapsed();

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
        let (mut expected, mut file_sctp) = (0, 0);
        for step in report["steps"].as_array().into_iter().flatten() {
            for p in step["probes"].as_array().into_iter().flatten() {
                probes += 1;
                if p["expected"].is_string() {
                    expected += 1;
                }
                if p["protocol"] == "SCTP" {
                    file_sctp += 1;
                }
                if p["observed"] == "unsupported" {
                    unsupported += 1;
                    failures.push(format!(
                        "{name}: step {}: an unsupported probe (every probe must run): {p}",
                        step["step"]
                    ));
                }
            }
        }
        sctp += file_sctp;
        expectations += expected;
        let wrong = mismatches(&report);
        if !wrong.is_empty() {
            failures.push(format!(
                "{name}: {} mismatching probes:\n  {}",
                wrong.len(),
                wrong.join("\n  ")
            ));
        } else if !out.status.success() || report["mismatches"].as_u64() != Some(0) || expected == 0
        {
            failures.push(format!(
                "{name}: exit {:?}, mismatches {:?}, {expected} expectations\nstderr:\n{stderr}",
                out.status.code(),
                report["mismatches"]
            ));
        } else {
            eprintln!("{name}: {expected} expectations met, {file_sctp} SCTP probes ({took:.1?})");
        }
    }
    eprintln!(
        "tests/conformance: {} files, {probes} probes ({expectations} with an expectation, \
         {sctp} SCTP, {unsupported} unsupported) in {:.1?}",
        files.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "tests/conformance: {} of {} upstream tests fail:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
