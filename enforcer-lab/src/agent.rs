//! The real agent, one per lab node, started inside the node's network namespace.
//!
//! Contract with `enforcer run` (see the crate docs):
//! `<exe> run --manifests DIR --node NAME --bpffs /sys/fs/bpf/<prefix>/<node>
//!  --status-file <nodedir>/status.json --events-file <nodedir>/events.jsonl`.
//! The lab writes every object into DIR, then `DIR/.generation` = N; the agent, once it has
//! applied a snapshot that included generation N, rewrites the status file (atomically) with
//! `{"generation": N, "ready": true, "error": null|"why", ...}`. With `--source kube` the
//! generation is the highest resourceVersion applied, and `resource_versions` gives it per
//! kind (see [`crate::api::Mark`]).
//!
//! The child enters the namespace with setns(2) between fork and exec, not with
//! `ip netns exec` (which remounts /sys and so hides /sys/fs/bpf).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::api::Mark;
use crate::netns::Netns;

#[derive(Debug, Deserialize)]
struct Status {
    generation: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    /// Kube: the highest resourceVersion applied, per kind.
    #[serde(default)]
    resource_versions: BTreeMap<String, u64>,
}

/// Has the agent whose status file is `path` applied `mark`? `Some(Err)` when it rejected
/// what it was given; `None` while it has not got there.
fn reached(path: &Path, mark: &Mark) -> Option<Result<()>> {
    let text = std::fs::read_to_string(path).ok()?;
    let s = serde_json::from_str::<Status>(&text).ok()?;
    if !mark.reached(s.generation, &s.resource_versions) {
        return None;
    }
    let unwatched = mark.unwatched(&s.resource_versions);
    if !unwatched.is_empty() {
        // Written all the same (Nodes, to an agent that does not watch them yet).
        tracing::debug!(
            status = %path.display(),
            kinds = ?unwatched,
            "the agent does not report these kinds: not waited for"
        );
    }
    Some(match s.error {
        Some(e) => Err(anyhow!("rejected the manifests: {e}")),
        None => Ok(()),
    })
}

fn not_reached(mark: &Mark, timeout: Duration, path: &Path) -> String {
    let kinds = if mark.kinds.is_empty() {
        String::new()
    } else {
        let k: Vec<String> = mark.kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!(" (resourceVersions {})", k.join(", "))
    };
    format!(
        "did not report generation {}{kinds} in {} (status file {})",
        mark.generation,
        humantime(timeout),
        path.display()
    )
}

pub struct Agent {
    pub node: String,
    child: Option<Child>,
    pub log: PathBuf,
    pub status_file: PathBuf,
    pub events_file: PathBuf,
    events_offset: u64,
}

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), to tell a
/// process from a later one that reuses its pid. `None` when there is no such process or it
/// is a zombie (dead, not yet reaped).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// Where an agent reads the cluster from.
#[derive(Clone, Debug)]
pub enum AgentSource {
    /// `--manifests DIR`.
    Manifests(PathBuf),
    /// `--source kube --kubeconfig FILE`.
    Kube(PathBuf),
}

impl Agent {
    /// Starts `exe run …` (or `agent_cmd run …`) in `netns`; stdout and stderr go to a log in
    /// `node_dir`.
    pub fn spawn(
        exe: &Path,
        node: &str,
        netns: &Netns,
        source: &AgentSource,
        bpffs: &Path,
        node_dir: &Path,
    ) -> Result<Agent> {
        Self::spawn_with(exe, node, netns, source, bpffs, node_dir, &[])
    }

    /// [`Agent::spawn`] with more arguments for `run` (a restart with `--keep-pins`, …). A
    /// status file left by an earlier agent of the node is removed first, so waiting for a
    /// generation waits for this agent.
    pub fn spawn_with(
        exe: &Path,
        node: &str,
        netns: &Netns,
        source: &AgentSource,
        bpffs: &Path,
        node_dir: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        let log = node_dir.join("agent.log");
        let status_file = node_dir.join("status.json");
        let events_file = node_dir.join("events.jsonl");
        let _ = std::fs::remove_file(&status_file);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let fd = netns.raw_fd();
        let mut cmd = Command::new(exe);
        cmd.arg("run");
        match source {
            AgentSource::Manifests(dir) => cmd.arg("--manifests").arg(dir),
            AgentSource::Kube(kubeconfig) => cmd
                .args(["--source", "kube", "--kubeconfig"])
                .arg(kubeconfig),
        };
        cmd.arg("--node")
            .arg(node)
            .arg("--bpffs")
            .arg(bpffs)
            .arg("--status-file")
            .arg(&status_file)
            .arg("--events-file")
            .arg(&events_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                crate::netns::enter(fd)?;
                // Its own process group: a Ctrl-C reaches the lab, which stops the agent in
                // order; and the agent dies with the lab should the lab be killed.
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the agent {}", exe.display()))?;
        Ok(Agent {
            node: node.to_string(),
            child: Some(child),
            log,
            status_file,
            events_file,
            events_offset: 0,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// How the agent ended, if it has (once).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        all[start..].join("\n")
    }

    fn failure(&self, what: String) -> anyhow::Error {
        let tail = self.log_tail(25);
        anyhow::anyhow!(
            "agent on {}: {what}\n--- last lines of {} ---\n{}",
            self.node,
            self.log.display(),
            if tail.is_empty() { "(empty)" } else { &tail }
        )
    }

    /// Waits until the agent reports `mark` applied; fails if it exits, reports an error for
    /// it, or takes longer than `timeout`.
    pub async fn wait_generation(&mut self, mark: &Mark, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(self.failure(format!("exited ({status}) before it was ready")));
            }
            if let Some(r) = reached(&self.status_file, mark) {
                return r.map_err(|e| self.failure(e.to_string()));
            }
            if started.elapsed() > timeout {
                return Err(self.failure(not_reached(mark, timeout, &self.status_file)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if the agent has exited (enforcement would have stopped with it).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            self.child = None;
            return Err(self.failure(format!("exited ({status}) during the run")));
        }
        Ok(())
    }

    /// Marks the current end of the events file: `read_events` returns what comes after.
    pub fn mark_events(&mut self) {
        self.events_offset = std::fs::metadata(&self.events_file)
            .map(|m| m.len())
            .unwrap_or(0);
    }

    pub fn has_events_file(&self) -> bool {
        self.events_file.exists()
    }

    /// Complete lines appended since the mark (or the last read).
    pub fn read_events(&mut self) -> Vec<Value> {
        let Ok(mut f) = File::open(&self.events_file) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.events_offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        // Only whole lines: a line being written is read next time.
        let end = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.events_offset += end as u64;
        String::from_utf8_lossy(&buf[..end])
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGTERM (the agent detaches and unpins), then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Option<String> {
        let mut child = self.child.take()?;
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Some(format!(
            "agent on {} did not stop within {} of SIGTERM; killed",
            self.node,
            humantime(grace)
        ))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Waits until the status file `path` reports `mark` (for a lab left running, whose agents
/// are another process's children). Fails on an error for it, or after `timeout`.
pub async fn wait_status(path: &Path, mark: &Mark, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(r) = reached(path, mark) {
            return r;
        }
        if started.elapsed() > timeout {
            bail!("{}", not_reached(mark, timeout, path));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn humantime(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Is `/sys/fs/bpf` a bpffs? If not, mount one there (the agent pins its maps under it).
pub fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = c"/sys/fs/bpf";
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let out = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .output()
        .context("running mount")?;
    if !out.status.success() {
        bail!(
            "/sys/fs/bpf is not a bpf filesystem and mounting one failed: {} \
             (the kernel needs CONFIG_BPF_SYSCALL)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_times_tell_processes_apart() {
        let me = std::process::id();
        let t = super::start_time(me).expect("this process has a start time");
        assert_eq!(super::start_time(me), Some(t));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(super::start_time(pid), None, "a zombie is dead");
        child.wait().unwrap();
        assert_eq!(super::start_time(pid), None);
    }
}
