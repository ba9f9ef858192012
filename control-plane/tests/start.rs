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

#[test]
fn restarts_keep_the_state_and_compaction_drops_history() {
    use control_plane::Process;
    let mut cp = ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e}"));
    cp.kubectl_ok(&["create", "namespace", "kept"]).unwrap();
    let get = |cp: &ControlPlane| cp.kubectl_ok(&["get", "namespace", "kept", "-o", "name"]);

    cp.restart(Process::ApiServer)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&cp).unwrap().trim(), "namespace/kept");
    cp.restart(Process::Etcd).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&cp).unwrap().trim(), "namespace/kept");
    // The log holds both runs.
    let log = std::fs::read_to_string(cp.dir().join("kube-apiserver.log")).unwrap();
    let version = format!("Version: {}", control_plane::pins::KUBERNETES.version());
    assert_eq!(log.matches(&version).count(), 2);

    // While etcd is down the API server is not ready, and says why.
    cp.stop(Process::Etcd);
    let err = cp
        .kubectl_ok(&["get", "--raw=/readyz"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("etcd"), "{err}");
    cp.start_again(Process::Etcd)
        .unwrap_or_else(|e| panic!("{e}"));

    let revision = cp.compact().unwrap_or_else(|e| panic!("{e}"));
    assert!(revision > 1, "{revision}");
    let old = cp
        .etcdctl()
        .args(["get", "/registry/namespaces/kept", "--rev=1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&old.stderr);
    assert!(
        !old.status.success() && err.contains("required revision has been compacted"),
        "{err}"
    );
}
