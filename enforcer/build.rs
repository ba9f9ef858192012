//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the enforcer binary.
//!
//! The object is looked for, in order, at `$ENFORCER_BPF_OBJECT`, under `$CARGO_TARGET_DIR`, and
//! under the workspace's `target/`. A missing object fails the build with the command that makes
//! it, rather than producing a binary that cannot enforce anything.

use std::path::PathBuf;

const REL: &str = "bpfel-unknown-none/release/enforcer-ebpf";

fn main() {
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
