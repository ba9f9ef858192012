//! The lab tier: every scenario under tests/scenarios and every example under examples/ runs
//! on the real datapath, in throwaway network namespaces, and every probe with an expectation
//! must match. Needs root.

mod common;

use common::{ONE_AT_A_TIME, require_root, run_suite, scenarios};

#[test]
fn every_scenario_matches_its_expectations() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the lab tests");
    let files = scenarios("tests/scenarios");
    assert!(files.len() >= 3, "expected at least three lab scenarios");
    run_suite(&files, "tests/scenarios");
}

#[test]
fn every_example_matches_its_expectations() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    require_root("the lab tests");
    let files = scenarios("examples");
    assert!(!files.is_empty(), "examples/ holds scenarios");
    run_suite(&files, "examples");
}
