//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the enforcer binary, and the
//! commit it is built from (`ENFORCER_COMMIT`, shown by `--version` and `enforcer::VERSION`).
//!
//! The object is looked for, in order, at `$ENFORCER_BPF_OBJECT`, under `$CARGO_TARGET_DIR`, and
//! under the workspace's `target/`. A missing object fails the build with the command that makes
//! it, rather than producing a binary that cannot enforce anything.

use std::path::PathBuf;

const REL: &str = "bpfel-unknown-none/release/enforcer-ebpf";

fn main() {
    commit();
    println!("cargo:rerun-if-env-changed=ENFORCER_BPF_OBJECT");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest
        .parent()
        .expect("enforcer/ is inside the workspace")
        .to_path_buf();

    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("ENFORCER_BPF_OBJECT") {
        candidates.push(PathBuf::from(p));
    }
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        candidates.push(
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
            .join(REL),
        );
    }
    candidates.push(workspace.join("target").join(REL));

    match candidates.iter().find(|p| p.is_file()) {
        Some(object) => {
            println!("cargo:rerun-if-changed={}", object.display());
            println!(
                "cargo:rustc-env=ENFORCER_BPF_OBJECT_PATH={}",
                object.display()
            );
        }
        None => {
            for p in &candidates {
                println!("cargo:rerun-if-changed={}", p.display());
            }
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            panic!(
                "\n\nThe eBPF datapath object is missing (looked at: {}).\n\
                 Build it first with:\n\n    cargo xtask build-ebpf\n\n\
                 (or point ENFORCER_BPF_OBJECT at a built object)\n",
                looked.join(", ")
            );
        }
    }
}

/// Sets `ENFORCER_COMMIT` for the crate: `$ENFORCER_COMMIT` when set (a build without the
/// repository, e.g. the container image's), else `git rev-parse --short HEAD` with `-dirty` when
/// tracked files differ from it, else `unknown` (no git, or not a repository). Reruns when HEAD,
/// the branch it names, the packed refs or the index change.
fn commit() {
    println!("cargo:rerun-if-env-changed=ENFORCER_COMMIT");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it");
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&manifest)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let from_env = std::env::var("ENFORCER_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = from_env.or_else(|| {
        let head = git(&["rev-parse", "--short", "HEAD"]).filter(|h| !h.is_empty())?;
        // Worktrees keep HEAD and the index apart from the shared refs: ask git for each path.
        let mut watched = vec!["HEAD".to_string(), "index".into(), "packed-refs".into()];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for w in watched {
            if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
                let p = PathBuf::from(&manifest).join(p);
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
        let dirty = git(&[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ])
        .is_some_and(|s| !s.is_empty());
        Some(if dirty { format!("{head}-dirty") } else { head })
    });
    println!(
        "cargo:rustc-env=ENFORCER_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
