//! The throwaway node of the agent tests (agent.rs, status.rs): a node namespace with one pod
//! behind a veth, an agent process on it, and its pins; all removed on drop.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const EXE: &str = env!("CARGO_BIN_EXE_enforcer");
pub const POD_IP: &str = "10.77.0.2";

pub struct Lab {
    pub node_ns: String,
    pub pod_ns: String,
    pub bpffs: PathBuf,
    pub dir: PathBuf,
    pub agents: Vec<Child>,
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the agent tests need root (network namespaces, BPF)"
        );
        let id = format!("enf-agent-{}-{tag}", std::process::id());
        let lab = Lab {
            node_ns: format!("{id}-node"),
            pod_ns: format!("{id}-pod"),
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{id}")),
            dir: std::env::temp_dir().join(&id),
            agents: Vec::new(),
        };
        // Clean-up runs from Drop even if a step below fails.
        sh(&["ip", "netns", "add", &lab.node_ns]);
        sh(&["ip", "netns", "add", &lab.pod_ns]);
        let n = |args: &[&str]| {
            let mut v = vec!["ip", "-n", lab.node_ns.as_str()];
            v.extend_from_slice(args);
            sh(&v);
        };
        n(&[
            "link", "add", "lxc-pod", "type", "veth", "peer", "name", "eth0",
        ]);
        n(&["link", "set", "eth0", "netns", &lab.pod_ns]);
        n(&["link", "set", "lo", "up"]);
        n(&["link", "set", "lxc-pod", "up"]);
        // The node's own address, on a veth whose peer stays in the namespace (no route out of
        // it; this kernel has no dummy interfaces).
        n(&[
            "link",
            "add",
            "node0",
            "type",
            "veth",
            "peer",
            "name",
            "node0-peer",
        ]);
        n(&["addr", "add", "192.0.2.1/32", "dev", "node0"]);
        n(&["link", "set", "node0", "up"]);
        n(&["route", "add", &format!("{POD_IP}/32"), "dev", "lxc-pod"]);
        let p = |args: &[&str]| {
            let mut v = vec!["ip", "-n", lab.pod_ns.as_str()];
            v.extend_from_slice(args);
            sh(&v);
        };
        p(&["addr", "add", &format!("{POD_IP}/32"), "dev", "eth0"]);
        p(&["link", "set", "eth0", "up"]);
        std::fs::create_dir_all(&lab.dir).unwrap();
        lab
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    pub fn write(&self, file: &str, text: &str) {
        std::fs::create_dir_all(self.manifests()).unwrap();
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.manifests().join(file)).unwrap();
    }

    /// Where this lab's agents keep their records (`ENFORCER_RUN_DIR`).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// `enforcer ARGS` as an operator on the node runs it (same run dir as the agents).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(EXE)
            .env("ENFORCER_RUN_DIR", self.run_dir())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn status_file(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// Starts an agent in the node namespace (setns only: /sys/fs/bpf stays visible).
    pub fn start(&mut self, extra: &[&str]) {
        self.start_env(extra, &[]);
    }

    pub fn start_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        let _ = std::fs::remove_file(self.status_file());
        let child = Command::new("nsenter")
            .env("ENFORCER_RUN_DIR", self.run_dir())
            .envs(env.iter().copied())
            .arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg(EXE)
            .arg("run")
            .arg("--manifests")
            .arg(self.manifests())
            .args(["--node", "node-1"])
            .args(if extra.contains(&"--rescan-ms") {
                &[][..]
            } else {
                &["--rescan-ms", "100"][..]
            })
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--status-file")
            .arg(self.status_file())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("agent.log")).unwrap())
            .spawn()
            .expect("starting the agent");
        self.agents.push(child);
    }

    pub fn status(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.status_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Waits until the status satisfies `ok`.
    pub fn wait_status(&mut self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status()
                && ok(&s)
            {
                return s;
            }
            if let Some(a) = self.agents.last_mut()
                && let Ok(Some(code)) = a.try_wait()
            {
                panic!(
                    "the agent exited ({code}) while waiting for: {what}; its log:\n{}",
                    std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for: {what}; last status {:?}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dump(&self) -> Value {
        self.dump_with(&[])
    }

    /// `maps dump --output json` of this lab's pins, with more arguments; must succeed.
    pub fn dump_with(&self, extra: &[&str]) -> Value {
        let bpffs = self.bpffs.to_string_lossy().into_owned();
        let mut args = vec!["maps", "dump", "--output", "json", "--bpffs", &bpffs];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "maps dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// SIGTERM to the newest agent; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let mut a = self.agents.pop().expect("an agent runs");
        unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = a.try_wait().unwrap() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = a.kill();
                let _ = a.wait();
                panic!("the agent did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Both programs hold a pinned TCX link on the pod's interface (bpftool of this Debian
    /// does not list TCX links per device, so the pins are asked instead).
    pub fn tc_attached(&self) -> bool {
        let links = self.bpffs.join("links");
        let Ok(entries) = std::fs::read_dir(&links) else {
            return false;
        };
        let mut found = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.ends_with("-from_endpoint") || name.ends_with("-to_endpoint")) {
                continue; // to_network on the node's own interface
            }
            let out = Command::new("bpftool")
                .args(["link", "show", "pinned"])
                .arg(e.path())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            // This bpftool predates TCX and prints it as "type 11".
            if out.status.success() && (text.contains("tcx") || text.contains("type 11")) {
                found += 1;
            }
        }
        found == 2
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.node_ns])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.pod_ns])
            .status();
        let _ = enforcer::bpf::remove_pins(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.77.0.2}]}
"#;

pub const DENY_INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

pub const BAD_CIDR: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to: [{ipBlock: {cidr: 10.0.0.0/33}}]
"#;

pub fn pins_exist(bpffs: &Path) -> bool {
    bpffs.join("ENDPOINTS").exists() && bpffs.join("CONNTRACK").exists()
}

/// `maps dump`'s endpoints (a map by ifindex), in ifindex order.
pub fn endpoint_modes(dump: &Value) -> Vec<(String, String)> {
    dump["endpoints"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| {
            (
                e["ingress"].as_str().unwrap().to_string(),
                e["egress"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
