//! The agent's record: who owns a pin folder, since when, and what it last did.
//!
//! A running agent keeps `<dir>/<bpffs encoded>.json` (dir: `/run/enforcer/agents`, or
//! `ENFORCER_RUN_DIR`) up to date after every reconcile, and holds an exclusive `flock` on
//! `<bpffs encoded>.lock` for as long as it lives. A reader that can take the lock knows no
//! agent owns the pins, whatever the record says (an agent killed with SIGKILL leaves its
//! record; the kernel drops its lock). The lock works across PID namespaces (a reader in the
//! agent's container or on the host), where a PID would not.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Where records live unless `ENFORCER_RUN_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/run/enforcer/agents";

/// An endpoint held closed, named.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Held {
    pub reason: String,
    /// Policy entries it needs (`endpoint-capacity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<usize>,
}

/// What an agent says about itself. Fields added later carry `serde(default)`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AgentRecord {
    pub pid: u32,
    /// RFC 3339.
    pub started: String,
    pub version: String,
    pub commit: String,
    pub node: String,
    pub bpffs: PathBuf,
    /// `manifests` or `kube`.
    pub source: String,
    /// The manifests folder, or the kubeconfig (none: inferred).
    pub source_location: Option<String>,
    /// The source holds a complete view and it is in the maps.
    pub synced: bool,
    /// Manifests: the `.generation` installed; kube: the resourceVersion.
    pub generation: Option<u64>,
    /// The last install or source error.
    pub error: Option<String>,
    /// Objects the source rejected, with the reason (their last valid state keeps enforcing).
    #[serde(default)]
    pub rejected: Vec<String>,
    /// Cluster-wide policies of one tier and one priority that select a common pod: the API
    /// leaves their order to the implementation (ours: kind, then name).
    #[serde(default)]
    pub priority_conflicts: Vec<String>,
    /// Pods held closed by the agent (capacity), by `namespace/name`.
    #[serde(default)]
    pub held: BTreeMap<String, Held>,
    /// The pod behind each programmed interface: ifindex → `namespace/name`.
    #[serde(default)]
    pub pods: BTreeMap<u32, String>,
    /// Pod addresses → `namespace/name` (every pod of the cluster, local or not).
    #[serde(default)]
    pub pod_ips: BTreeMap<String, String>,
    /// Kube: custom resources of kinds this version does not enforce yet, by kind: how many
    /// it holds (`null`: the CRD is absent from the cluster).
    #[serde(default)]
    pub held_kinds: BTreeMap<String, Option<usize>>,
}

/// The folder records are kept in.
pub fn dir() -> PathBuf {
    std::env::var_os("ENFORCER_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// A pin folder as a file name: its absolute path with `%` and `/` percent-encoded
/// (`/sys/fs/bpf/enforcer` → `%2Fsys%2Ffs%2Fbpf%2Fenforcer`).
pub fn encode(bpffs: &Path) -> String {
    let abs = std::path::absolute(bpffs).unwrap_or_else(|_| bpffs.to_path_buf());
    let text = abs.to_string_lossy();
    let trimmed = text.trim_end_matches('/');
    trimmed.replace('%', "%25").replace('/', "%2F")
}

fn paths(dir: &Path, bpffs: &Path) -> (PathBuf, PathBuf) {
    let base = encode(bpffs);
    (
        dir.join(format!("{base}.json")),
        dir.join(format!("{base}.lock")),
    )
}

fn flock(f: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on an open descriptor.
    unsafe { libc::flock(f.as_raw_fd(), op) == 0 }
}

/// A running agent's hold on its record: the lock lives as long as this value (and the
/// process).
pub struct Owner {
    record: PathBuf,
    lock: File,
    /// The bytes last written (an unchanged record is not written again).
    last: std::sync::Mutex<Vec<u8>>,
}

impl Owner {
    /// Takes the lock for `bpffs` under `dir`, waiting up to `wait` for an agent that is
    /// shutting down to let go. Another live agent holding it past that is an error.
    pub fn claim(dir: &Path, bpffs: &Path, wait: std::time::Duration) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (record, lock_path) = paths(dir, bpffs);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // A reader holds a shared lock for microseconds; an agent before us, until it exits.
        let start = std::time::Instant::now();
        loop {
            if flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
                return Ok(Owner {
                    record,
                    lock,
                    last: Default::default(),
                });
            }
            if start.elapsed() >= wait {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let other = read_record(&record).map(|r| format!(" (pid {})", r.pid));
        anyhow::bail!(
            "another agent{} runs on the pins under {}: it holds {}",
            other.unwrap_or_default(),
            bpffs.display(),
            lock_path.display()
        )
    }

    /// Writes the record (atomically: readers see the old one or the new one).
    pub fn write(&self, r: &AgentRecord) -> Result<()> {
        let data = serde_json::to_vec_pretty(r).expect("record serializes");
        let mut last = self.last.lock().expect("record lock");
        if *last == data {
            return Ok(());
        }
        let tmp = self.record.with_extension("json.tmp");
        std::fs::write(&tmp, &data).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.record)
            .with_context(|| format!("renaming to {}", self.record.display()))?;
        *last = data;
        Ok(())
    }

    /// Lets go on a clean exit: removes the lock file, and the record unless `keep_record`
    /// (pins kept for the next agent: the record still names what they hold).
    pub fn remove(self, keep_record: bool) {
        if !keep_record {
            let _ = std::fs::remove_file(&self.record);
        }
        let _ = std::fs::remove_file(self.record.with_extension("lock"));
        drop(self.lock);
    }
}

fn read_record(path: &Path) -> Option<AgentRecord> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Who owns a pin folder.
#[derive(Debug)]
pub enum Probe {
    /// An agent holds the lock; its record (`None` before its first write).
    Live(Option<AgentRecord>),
    /// No agent holds the lock; the record a dead agent left, if any.
    NotRunning(Option<AgentRecord>),
}

impl Probe {
    pub fn is_live(&self) -> bool {
        matches!(self, Probe::Live(_))
    }
}

/// Asks whether an agent owns `bpffs`.
pub fn probe(dir: &Path, bpffs: &Path) -> Probe {
    let (record, lock_path) = paths(dir, bpffs);
    let rec = read_record(&record);
    let Ok(lock) = File::open(&lock_path) else {
        return Probe::NotRunning(rec);
    };
    if flock(&lock, libc::LOCK_SH | libc::LOCK_NB) {
        flock(&lock, libc::LOCK_UN);
        Probe::NotRunning(rec)
    } else {
        Probe::Live(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn encodes_a_path_into_one_file_name() {
        assert_eq!(
            encode(Path::new("/sys/fs/bpf/enforcer/")),
            "%2Fsys%2Ffs%2Fbpf%2Fenforcer"
        );
        assert_eq!(encode(Path::new("/a%b")), "%2Fa%25b");
    }

    #[test]
    fn the_lock_tells_a_live_owner_from_a_dead_one() {
        let dir = std::env::temp_dir().join(format!("enf-record-{}", std::process::id()));
        let bpffs = Path::new("/sys/fs/bpf/enf-record-test");
        assert!(matches!(probe(&dir, bpffs), Probe::NotRunning(None)));
        let owner = Owner::claim(&dir, bpffs, Duration::from_millis(100)).unwrap();
        let rec = AgentRecord {
            pid: 7,
            started: "2026-12-03T07:00:00+00:00".into(),
            version: "0.1.0 (abc)".into(),
            commit: "abc".into(),
            node: "n".into(),
            bpffs: bpffs.into(),
            source: "manifests".into(),
            source_location: None,
            synced: true,
            generation: Some(1),
            error: None,
            rejected: vec![],
            priority_conflicts: vec![],
            held: BTreeMap::new(),
            pods: BTreeMap::from([(3, "x/a".to_string())]),
            pod_ips: BTreeMap::new(),
            held_kinds: BTreeMap::new(),
        };
        owner.write(&rec).unwrap();
        match probe(&dir, bpffs) {
            Probe::Live(Some(r)) => assert_eq!(r, rec),
            other => panic!("{other:?}"),
        }
        // A second claim while the first lives is refused.
        let err = format!(
            "{:#}",
            Owner::claim(&dir, bpffs, Duration::from_millis(100))
                .err()
                .unwrap()
        );
        assert!(err.contains("another agent (pid 7)"), "{err}");
        // A dead owner (lock gone) with its record left behind: not running.
        drop(owner);
        assert!(matches!(probe(&dir, bpffs), Probe::NotRunning(Some(_))));
        let owner = Owner::claim(&dir, bpffs, Duration::from_millis(100)).unwrap();
        owner.remove(false);
        assert!(matches!(probe(&dir, bpffs), Probe::NotRunning(None)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
