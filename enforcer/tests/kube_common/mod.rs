//! What the kube tests (kube_server.rs, kube_crds.rs, kube_faults.rs) share: the real control
//! plane started for a test, kubectl run and checked, the install bundle, and a pod written as
//! the scheduler and the kubelet would write it.

#![allow(dead_code)] // each test file uses its own part

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use control_plane::{ControlPlane, Options};

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Starts etcd and kube-apiserver (root: network namespaces).
pub fn start(options: Options) -> ControlPlane {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the control-plane tests need root (network namespaces)"
    );
    let cp = ControlPlane::start(options).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("control plane ready in {:.1?}", cp.started_in());
    cp
}

pub fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("running kubectl")
}

/// Runs the command with `input` on its stdin.
pub fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Its stdout, after asserting it succeeded.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl apply -f -` of `text`, as admin.
pub fn apply(cp: &ControlPlane, text: &str, what: &str) -> String {
    ok(
        &with_stdin(cp.kubectl().args(["apply", "-f", "-"]), text),
        what,
    )
}

/// `kubectl apply -f deploy/`.
pub fn apply_bundle(cp: &ControlPlane) -> String {
    ok(
        &output(cp.kubectl().arg("apply").arg("-f").arg(deploy_dir())),
        "kubectl apply -f deploy/",
    )
}

/// Namespace x with its default ServiceAccount (no controller-manager makes it) and pod x/a on
/// node-1, as the scheduler leaves it.
pub const POD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
"#;

/// Creates [`POD`], then reports its address `ip` through the status subresource, as a kubelet.
pub fn create_pod(cp: &ControlPlane, ip: &str) {
    apply(cp, POD, "creating the pod");
    ok(
        &output(cp.kubectl().args([
            "patch",
            "pod",
            "a",
            "-n",
            "x",
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(
                r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#
            ),
        ])),
        "the pod's status",
    );
}
