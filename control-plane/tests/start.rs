//! The harness itself: etcd and kube-apiserver come up with TLS and RBAC, and everything they
//! made is gone after drop. Needs root (network namespaces) and `cargo xtask setup`.

use control_plane::{ControlPlane, Options};

#[test]
fn starts_serves_tls_with_rbac_and_cleans_up() {
    let cp = ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("control plane ready in {:?}", cp.started_in());
    let out = cp.kubectl_ok(&["get", "namespaces", "-o", "name"]).unwrap();
    assert!(out.contains("namespace/default"), "{out}");
    let dir = cp.dir().to_path_buf();
    let netns = cp.netns().to_string();
    drop(cp);
    assert!(!dir.exists(), "{} removed", dir.display());
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&netns),
        "netns {netns} removed"
    );
}
