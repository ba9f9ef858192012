//! SIGTERM in the middle of a run tears the lab down. Its own test binary: the signal goes to
//! the whole process.

mod common;

use std::time::Duration;

#[test]
fn sigterm_during_a_run_cleans_up() {
    need_root!();
    let prefix = enforcer_lab::runs::new_prefix();
    let text =
        std::fs::read_to_string(common::repo().join("tests/scenarios/no-policy.yaml")).unwrap();
    let plan = enforcer_lab::load(&text, "no-policy.yaml", &prefix).unwrap();
    let mut o = common::options();
    o.agent_timeout = Duration::from_secs(30);
    let agent = common::fake_agent("silent");
    let p = prefix.clone();
    let t = std::thread::spawn(move || enforcer_lab::run_plan(&plan, &agent, &o));
    // Wait until the lab is up (its agent is running), then signal.
    let started = std::time::Instant::now();
    while common::leftovers(&p).len() < 4 || started.elapsed() < Duration::from_millis(300) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the lab never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling ourselves; the lab's handler is installed by now.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
    let e = t.join().unwrap().unwrap_err();
    assert!(format!("{e:#}").contains("SIGTERM"), "{e:#}");
    common::assert_clean(&prefix);
}
