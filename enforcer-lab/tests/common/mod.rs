//! Helpers for the root-only tests that build real namespaces with a stand-in agent.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn is_root() -> bool {
    // SAFETY: a plain getter.
    unsafe { libc::geteuid() == 0 }
}

/// Skips a test (with a note) when not root.
#[macro_export]
macro_rules! need_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The fake agent, run in `mode` (see tests/fake-agent.sh).
pub fn fake_agent(mode: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-agent.sh");
    if mode.is_empty() {
        return script;
    }
    let dir = std::env::temp_dir().join(format!("enforcer-lab-fake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = dir.join(format!("fake-{mode}.sh"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nFAKE_AGENT_MODE={mode} exec {} \"$@\"\n",
            script.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

pub fn options() -> enforcer_lab::RunOptions {
    enforcer_lab::RunOptions {
        probe_timeout: std::time::Duration::from_millis(500),
        agent_timeout: std::time::Duration::from_secs(5),
        parallel: 32,
        keep_files: false,
        verbose: false,
        agent_cmd: None,
        source: enforcer_lab::lab::Source::Manifests,
    }
}

/// Namespaces left by a run with this prefix.
pub fn leftovers(prefix: &str) -> Vec<String> {
    enforcer_lab::netns::list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

pub fn assert_clean(prefix: &str) {
    assert_eq!(
        leftovers(prefix),
        Vec::<String>::new(),
        "namespaces left behind"
    );
    assert!(
        !enforcer_lab::runs::run_dir(prefix).exists(),
        "run folder left behind"
    );
    assert!(
        !enforcer_lab::runs::bpffs_dir(prefix).exists(),
        "pins left behind"
    );
}
