//! The command line as a user meets it: `--version` names the commit, completions are
//! generated, `--help` offers only what a command supports, and errors say each thing once.
//! No root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn enforcer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running enforcer")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version_names_the_commit_of_head() {
    let out = enforcer(&["--version"]);
    assert!(out.status.success());
    let version = text(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo())
        .output()
        .expect("git");
    assert!(head.status.success(), "the tests run in a git checkout");
    let head = text(&head.stdout).trim().to_string();
    // `enforcer 0.1.0 (1a2b3c4)` or `(1a2b3c4-dirty)`.
    let commit = version
        .split(['(', ')'])
        .nth(1)
        .unwrap_or_else(|| panic!("no commit in {version:?}"));
    let hash = commit.trim_end_matches("-dirty");
    assert!(
        hash.len() >= 7 && head.starts_with(hash),
        "{version:?} does not name HEAD ({head})"
    );
    assert_eq!(
        version.trim(),
        format!("enforcer {}", enforcer::VERSION),
        "--version shows enforcer::VERSION"
    );
}

#[test]
fn completions_are_generated_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = enforcer(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for sub in ["run", "maps", "explain", "events", "lab", "completions"] {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = enforcer(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
