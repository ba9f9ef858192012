//! The registry of lab runs under `/run/enforcer-lab/<prefix>/`: who owns a run (pid and start
//! time), which agents it started, and the removal of runs whose owner is gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::agent::start_time;
use crate::netns;

pub const RUN_ROOT: &str = "/run/enforcer-lab";
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const OWNER: &str = "owner";
const AGENTS: &str = "agents";
const META: &str = "meta.json";

/// What `lab list` shows of a run, and what the commands on a live lab need to find it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    /// The name given to `lab up` (none for `lab run`).
    pub name: Option<String>,
    /// `run` (a scenario run) or `up` (a lab left running).
    pub kind: String,
    pub nodes: Vec<String>,
    /// Seconds since the epoch.
    pub started: u64,
    /// `kube` when the lab runs a control plane (`--source kube`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Meta {
    pub fn for_run(name: Option<String>, plan: &crate::plan::Plan, kind: &str) -> Meta {
        Meta {
            name,
            kind: kind.to_string(),
            nodes: plan.nodes.iter().map(|n| n.name.clone()).collect(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            source: plan.control_plane.is_some().then(|| "kube".to_string()),
        }
    }
}

pub fn write_meta(prefix: &str, meta: &Meta) -> Result<()> {
    let path = run_dir(prefix).join(META);
    crate::manifests::write_atomic(&path, &serde_json::to_vec_pretty(meta)?)
}

pub fn read_meta(prefix: &str) -> Option<Meta> {
    let text = std::fs::read(run_dir(prefix).join(META)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// `enf-` + 6 hex digits + `-`.
pub fn is_prefix(s: &str) -> bool {
    s.len() == 11
        && s.starts_with("enf-")
        && s.ends_with('-')
        && s[4..10].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A fresh run prefix.
pub fn new_prefix() -> String {
    let mut b = [0u8; 3];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let x = (t as u64) ^ u64::from(std::process::id());
        b = [(x >> 16) as u8, (x >> 8) as u8, x as u8];
    }
    format!("enf-{:02x}{:02x}{:02x}-", b[0], b[1], b[2])
}

pub fn run_dir(prefix: &str) -> PathBuf {
    Path::new(RUN_ROOT).join(prefix.trim_end_matches('-'))
}

pub fn bpffs_dir(prefix: &str) -> PathBuf {
    Path::new(BPFFS_ROOT).join(prefix.trim_end_matches('-'))
}

fn pid_line(pid: u32) -> String {
    format!("{pid} {}\n", start_time(pid).unwrap_or(0))
}

/// Creates the run folder and records this process as its owner.
pub fn register(prefix: &str) -> Result<PathBuf> {
    let dir = run_dir(prefix);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(OWNER), pid_line(std::process::id()))
        .with_context(|| format!("writing {}", dir.join(OWNER).display()))?;
    Ok(dir)
}

/// Records an agent, so that a later cleanup can stop it if this process dies first.
pub fn record_agent(prefix: &str, pid: u32) -> Result<()> {
    use std::io::Write;
    let path = run_dir(prefix).join(AGENTS);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(pid_line(pid).as_bytes())?;
    Ok(())
}

/// Pids (with start times) in a file of `pid starttime` lines that are still those processes.
fn live_pids(path: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let pid: u32 = it.next()?.parse().ok()?;
            let st: u64 = it.next()?.parse().ok()?;
            (start_time(pid) == Some(st)).then_some(pid)
        })
        .collect()
}

/// The run's owner (a `lab run`, or the keeper of a lab left running), if it is alive.
pub fn live_owner(prefix: &str) -> Option<u32> {
    live_pids(&run_dir(prefix).join(OWNER)).into_iter().next()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub prefix: String,
    pub owner: Option<u32>,
    pub alive: bool,
    pub netns: Vec<String>,
    pub meta: Option<Meta>,
}

/// Every run known by its folder or by namespaces carrying a run prefix.
pub fn list() -> Vec<RunInfo> {
    let mut prefixes: Vec<String> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(RUN_ROOT) {
        for e in rd.flatten() {
            if let Ok(name) = e.file_name().into_string() {
                let p = format!("{name}-");
                if is_prefix(&p) && !prefixes.contains(&p) {
                    prefixes.push(p);
                }
            }
        }
    }
    let all_ns = netns::list();
    for n in &all_ns {
        if n.len() > 11 && is_prefix(&n[..11]) && !prefixes.contains(&n[..11].to_string()) {
            prefixes.push(n[..11].to_string());
        }
    }
    prefixes.sort();
    prefixes
        .into_iter()
        .map(|prefix| {
            let dir = run_dir(&prefix);
            let owner = std::fs::read_to_string(dir.join(OWNER))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse().ok());
            let alive = !live_pids(&dir.join(OWNER)).is_empty();
            let netns = all_ns
                .iter()
                .filter(|n| n.starts_with(&prefix))
                .cloned()
                .collect();
            RunInfo {
                meta: read_meta(&prefix),
                prefix,
                owner,
                alive,
                netns,
            }
        })
        .collect()
}

/// Removes everything of one run: its agents, namespaces, pins and folder. Returns problems.
pub fn remove(prefix: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let dir = run_dir(prefix);
    for pid in live_pids(&dir.join(AGENTS)) {
        // SAFETY: signalling a process recorded (pid and start time) as this run's agent.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let started = std::time::Instant::now();
        while start_time(pid).is_some() && started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if start_time(pid).is_some() {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
    let names: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    problems.extend(netns::delete(&names));
    let pins = bpffs_dir(prefix);
    if pins.exists()
        && let Err(e) = std::fs::remove_dir_all(&pins)
    {
        problems.push(format!("removing {}: {e}", pins.display()));
    }
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        problems.push(format!("removing {}: {e}", dir.display()));
    }
    problems
}

/// Removes the runs whose owner is dead; returns their prefixes and any problems.
pub fn remove_stale() -> (Vec<String>, Vec<String>) {
    let mut removed = Vec::new();
    let mut problems = Vec::new();
    for r in list() {
        if r.alive {
            continue;
        }
        // A run registers itself before it creates anything: a folder without an owner file
        // may be a run being born; leave it unless it has namespaces (then it is an orphan).
        let dir = run_dir(&r.prefix);
        if r.owner.is_none() && dir.exists() && r.netns.is_empty() {
            let young = std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age < Duration::from_secs(60));
            if young {
                continue;
            }
        }
        problems.extend(remove(&r.prefix));
        removed.push(r.prefix);
    }
    (removed, problems)
}
