//! `enforcer status`: is an agent running on this node, and is it well.
//!
//! Read from the agent's record (`record`) and its pinned maps. The exit code says it:
//! 0 healthy, 1 degraded, 3 no agent runs (2 is clap's, for a usage error).

pub mod record;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use enforcer_common::{counter, mode, reason};
use serde::Serialize;

use crate::bpf::Usage;
use crate::dump::Format;
use record::{AgentRecord, Held, Probe};

/// Exit codes of `status` (and `maps dump` for stale pins).
pub mod exit {
    pub const HEALTHY: u8 = 0;
    pub const DEGRADED: u8 = 1;
    pub const NOT_RUNNING: u8 = 3;
}

/// A map at or past this fill makes the agent degraded.
pub const FULL_PERCENT: u64 = 90;

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    Degraded,
    NotRunning,
}

impl Health {
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Healthy => exit::HEALTHY,
            Health::Degraded => exit::DEGRADED,
            Health::NotRunning => exit::NOT_RUNNING,
        }
    }
}

/// Events the datapath could not deliver.
#[derive(Serialize, Default, Debug, Clone, PartialEq, Eq)]
pub struct EventLoss {
    /// Lost to a full ring buffer.
    pub lost: u64,
    /// Held back by the per-endpoint rate limit.
    pub suppressed: u64,
    /// Drops of a flow already reported within the drop report window.
    pub repeated: u64,
}

/// What the pinned maps say, for a status.
#[derive(Default, Debug, Clone)]
pub struct MapsView {
    pub usage: BTreeMap<&'static str, Usage>,
    /// Endpoints held closed: ifindex → reason.
    pub held: BTreeMap<u32, &'static str>,
    pub events: EventLoss,
}

#[derive(Serialize, Debug)]
pub struct MapUsage {
    pub entries: usize,
    pub capacity: u32,
    pub percent: u64,
}

/// `enforcer status` as JSON.
#[derive(Serialize, Debug)]
pub struct Report {
    pub health: Health,
    /// Why it is not healthy.
    pub problems: Vec<String>,
    pub bpffs: PathBuf,
    pub agent: Option<AgentRecordView>,
    /// Pods (or interfaces) held closed: name → why.
    pub held: BTreeMap<String, Held>,
    pub maps: BTreeMap<String, MapUsage>,
    pub events: Option<EventLoss>,
}

/// The agent as `status` shows it (its record without the name tables).
#[derive(Serialize, Debug)]
pub struct AgentRecordView {
    pub running: bool,
    pub pid: u32,
    pub started: String,
    pub version: String,
    pub commit: String,
    pub node: String,
    pub source: String,
    pub source_location: Option<String>,
    pub synced: bool,
    pub generation: Option<u64>,
    pub error: Option<String>,
    pub rejected: Vec<String>,
    pub priority_conflicts: Vec<String>,
    /// Kube: objects of kinds not enforced yet (`null`: CRD absent).
    pub held_kinds: BTreeMap<String, Option<usize>>,
}

fn view(r: &AgentRecord, running: bool) -> AgentRecordView {
    AgentRecordView {
        running,
        pid: r.pid,
        started: r.started.clone(),
        version: r.version.clone(),
        commit: r.commit.clone(),
        node: r.node.clone(),
        source: r.source.clone(),
        source_location: r.source_location.clone(),
        synced: r.synced,
        generation: r.generation,
        error: r.error.clone(),
        rejected: r.rejected.clone(),
        priority_conflicts: r.priority_conflicts.clone(),
        held_kinds: r.held_kinds.clone(),
    }
}

fn plural(n: usize, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// Judges what was read (pure): the health, and why.
pub fn assess(
    bpffs: &Path,
    probe: &Probe,
    maps: Result<MapsView, String>,
    pins_exist: bool,
) -> Report {
    let mut problems = Vec::new();
    let (rec, running) = match probe {
        Probe::Live(r) => (r.as_ref(), true),
        Probe::NotRunning(r) => (r.as_ref(), false),
    };
    if !running {
        problems.push(match (pins_exist, rec) {
            (true, Some(r)) => format!(
                "no agent runs on {}; its pins are stale (left by pid {}, started {})",
                bpffs.display(),
                r.pid,
                r.started
            ),
            (true, None) => format!(
                "no agent runs on {}; its pins are stale (no agent owns them)",
                bpffs.display()
            ),
            (false, _) => format!("no agent runs on {}", bpffs.display()),
        });
    }
    if let Some(r) = rec.filter(|_| running) {
        if !r.synced {
            problems.push(format!(
                "the {} source is not in sync yet (the pins keep enforcing the last state)",
                r.source
            ));
        }
        if !r.rejected.is_empty() {
            problems.push(format!(
                "{} rejected (their last valid state keeps enforcing)",
                plural(r.rejected.len(), "object")
            ));
        } else if let Some(e) = &r.error {
            problems.push(format!("last error: {e}"));
        }
    }
    let mut held = BTreeMap::new();
    let mut usage = BTreeMap::new();
    let mut events = None;
    match maps {
        Ok(m) if running || pins_exist => {
            let pods = rec.map(|r| &r.pods);
            for (ifindex, why) in &m.held {
                let name = pods
                    .and_then(|p| p.get(ifindex).cloned())
                    .unwrap_or_else(|| format!("ifindex {ifindex}"));
                let entries = rec.and_then(|r| r.held.get(&name)).and_then(|h| h.entries);
                held.insert(
                    name,
                    Held {
                        reason: why.to_string(),
                        entries,
                    },
                );
            }
            if running && !held.is_empty() {
                problems.push(format!("{} held closed", plural(held.len(), "endpoint")));
            }
            for (name, u) in &m.usage {
                let percent = if u.capacity == 0 {
                    0
                } else {
                    (u.entries as u64 * 100) / u64::from(u.capacity)
                };
                if running && percent >= FULL_PERCENT {
                    problems.push(format!(
                        "map {name} is {percent}% full ({} of {})",
                        u.entries, u.capacity
                    ));
                }
                usage.insert(
                    name.to_string(),
                    MapUsage {
                        entries: u.entries,
                        capacity: u.capacity,
                        percent,
                    },
                );
            }
            events = Some(m.events);
        }
        Ok(_) => {}
        Err(e) if running => problems.push(format!("cannot read the pinned maps: {e}")),
        Err(_) => {}
    }
    let health = if !running {
        Health::NotRunning
    } else if problems.is_empty() {
        Health::Healthy
    } else {
        Health::Degraded
    };
    Report {
        health,
        problems,
        bpffs: bpffs.to_path_buf(),
        agent: rec.map(|r| view(r, running)),
        held,
        maps: usage,
        events,
    }
}

/// Reads the pinned maps for a status.
pub fn read_maps(bpffs: &Path) -> anyhow::Result<MapsView> {
    let pinned = crate::bpf::PinnedMaps::open(bpffs)?;
    let usage = pinned.usage(bpffs)?;
    let state = pinned.read_state()?;
    let held = state
        .endpoints
        .iter()
        .filter(|(_, e)| e.ingress_mode == mode::DENY_ALL)
        .map(|(i, e)| (*i, reason::name(e.held_reason())))
        .collect();
    let c = pinned.counters()?;
    let n = |i: u32| c.get(i as usize).copied().unwrap_or(0);
    Ok(MapsView {
        usage,
        held,
        events: EventLoss {
            lost: n(counter::EVENTS_LOST),
            suppressed: n(counter::EVENTS_SUPPRESSED),
            repeated: n(counter::EVENTS_REPEATED),
        },
    })
}

/// Whether any of the agent's map pins exist under `bpffs`.
pub fn pins_exist(bpffs: &Path) -> bool {
    bpffs.join(enforcer_common::names::MAP_ENDPOINTS).exists()
}

/// `enforcer status`: the output and the exit code.
pub fn status(bpffs: &Path, format: Format) -> (String, u8) {
    let probe = record::probe(&record::dir(), bpffs);
    let pins = pins_exist(bpffs);
    let maps = if pins {
        read_maps(bpffs).map_err(|e| format!("{e:#}"))
    } else {
        Err(format!("no pins under {}", bpffs.display()))
    };
    let report = assess(bpffs, &probe, maps, pins);
    let code = report.health.exit_code();
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&report).expect("status serializes") + "\n",
        Format::Table => render(&report),
    };
    (text, code)
}

/// The status as a table.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let health = match r.health {
        Health::Healthy => "healthy".to_string(),
        Health::Degraded => "degraded".to_string(),
        Health::NotRunning => "not running".to_string(),
    };
    let _ = writeln!(s, "{:<10} {health}", "HEALTH");
    for p in &r.problems {
        let _ = writeln!(s, "{:<10} - {p}", "");
    }
    let _ = writeln!(s, "{:<10} {}", "PINS", r.bpffs.display());
    if let Some(a) = &r.agent {
        let state = if a.running { "running" } else { "exited" };
        let _ = writeln!(
            s,
            "{:<10} {state}, pid {}, node {}, since {}",
            "AGENT", a.pid, a.node, a.started
        );
        let _ = writeln!(s, "{:<10} {}", "VERSION", a.version);
        let sync = if a.synced { "synced" } else { "not synced" };
        let gen_ = a
            .generation
            .map(|g| format!(", generation {g}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<10} {}{}: {sync}{gen_}",
            "SOURCE",
            a.source,
            a.source_location
                .as_ref()
                .map(|l| format!(" {l}"))
                .unwrap_or_default()
        );
        if !a.held_kinds.is_empty() {
            let _ = writeln!(s, "\nNOT ENFORCED BY THIS VERSION");
            for (kind, n) in &a.held_kinds {
                let what = match n {
                    Some(n) => format!("{} held", plural(*n, "object")),
                    None => "CRD absent (watched for)".to_string(),
                };
                let _ = writeln!(s, "  {kind:<28} {what}");
            }
        }
        if !a.priority_conflicts.is_empty() {
            let _ = writeln!(s, "\nPRIORITY CONFLICTS");
            for c in &a.priority_conflicts {
                let _ = writeln!(s, "  {c}");
            }
        }
        if !a.rejected.is_empty() {
            let _ = writeln!(s, "\nREJECTED OBJECTS");
            for e in &a.rejected {
                let _ = writeln!(s, "  {e}");
            }
        }
    }
    if !r.held.is_empty() {
        let _ = writeln!(s, "\nHELD CLOSED\n  {:<40} {:<20} ENTRIES", "POD", "REASON");
        for (pod, h) in &r.held {
            let entries = h.entries.map(|n| n.to_string()).unwrap_or_default();
            let _ = writeln!(s, "  {pod:<40} {:<20} {entries}", h.reason);
        }
    }
    if !r.maps.is_empty() {
        let _ = writeln!(
            s,
            "\nMAPS\n  {:<18} {:>10} {:>10} {:>5}",
            "MAP", "ENTRIES", "CAPACITY", "USE"
        );
        for (name, u) in &r.maps {
            let _ = writeln!(
                s,
                "  {name:<18} {:>10} {:>10} {:>4}%",
                u.entries, u.capacity, u.percent
            );
        }
    }
    if let Some(e) = &r.events {
        let _ = writeln!(
            s,
            "\nEVENTS     lost {} (ring buffer full), suppressed {} (rate limit), repeated {} (drop report window)",
            e.lost, e.suppressed, e.repeated
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> AgentRecord {
        AgentRecord {
            pid: 42,
            started: "2026-12-03T07:00:00.000+00:00".into(),
            version: "0.1.0 (abc)".into(),
            commit: "abc".into(),
            node: "node-1".into(),
            bpffs: "/sys/fs/bpf/x".into(),
            source: "manifests".into(),
            source_location: Some("/m".into()),
            synced: true,
            generation: Some(3),
            error: None,
            rejected: vec![],
            priority_conflicts: vec![],
            held: BTreeMap::new(),
            pods: BTreeMap::from([(7, "x/a".to_string())]),
            pod_ips: BTreeMap::new(),
            held_kinds: BTreeMap::new(),
        }
    }

    fn maps() -> MapsView {
        MapsView {
            usage: BTreeMap::from([(
                "POLICY",
                Usage {
                    entries: 10,
                    capacity: 100,
                },
            )]),
            held: BTreeMap::new(),
            events: EventLoss::default(),
        }
    }

    #[test]
    fn healthy_degraded_or_not_running() {
        let b = Path::new("/sys/fs/bpf/x");
        let r = assess(b, &Probe::Live(Some(rec())), Ok(maps()), true);
        assert_eq!(r.health, Health::Healthy, "{:?}", r.problems);
        assert_eq!(r.maps["POLICY"].percent, 10);
        let text = render(&r);
        assert!(text.contains("running, pid 42, node node-1"), "{text}");
        assert!(
            text.contains("manifests /m: synced, generation 3"),
            "{text}"
        );
        assert!(!text.contains("NOT ENFORCED"), "{text}");

        // Kinds this version holds but does not enforce: not a health problem, but said.
        let mut held = rec();
        held.held_kinds = BTreeMap::from([
            ("GlobalNetworkPolicy".to_string(), Some(2)),
            ("HostEndpoint".to_string(), None),
        ]);
        // Priority ties are said too, and are no health problem either.
        held.priority_conflicts = vec![
            "ClusterNetworkPolicy/a and ClusterNetworkPolicy/b share \
                                        priority 5 in the Admin tier (both select x/a): \
                                        ClusterNetworkPolicy/a is evaluated first"
                .into(),
        ];
        let r = assess(b, &Probe::Live(Some(held)), Ok(maps()), true);
        assert_eq!(r.health, Health::Healthy, "{:?}", r.problems);
        let text = render(&r);
        assert!(
            text.contains("NOT ENFORCED BY THIS VERSION\n  GlobalNetworkPolicy          2 objects held\n  HostEndpoint                 CRD absent (watched for)"),
            "{text}"
        );
        assert!(
            text.contains("PRIORITY CONFLICTS\n  ClusterNetworkPolicy/a and ClusterNetworkPolicy/b share priority 5"),
            "{text}"
        );

        let mut bad = rec();
        bad.rejected = vec!["x/broken: spec.egress[0]: bad cidr".into()];
        bad.synced = false;
        let mut m = maps();
        m.held.insert(7, "endpoint-capacity");
        m.usage.get_mut("POLICY").unwrap().entries = 95;
        let r = assess(b, &Probe::Live(Some(bad)), Ok(m), true);
        assert_eq!(r.health, Health::Degraded);
        assert_eq!(r.health.exit_code(), 1);
        let all = r.problems.join("\n");
        for want in [
            "not in sync",
            "1 object rejected",
            "1 endpoint held closed",
            "POLICY is 95% full",
        ] {
            assert!(all.contains(want), "{want} in {all}");
        }
        assert_eq!(r.held["x/a"].reason, "endpoint-capacity");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["health"], "degraded");
        assert_eq!(json["held"]["x/a"]["reason"], "endpoint-capacity");
        assert_eq!(json["maps"]["POLICY"]["capacity"], 100);

        let r = assess(b, &Probe::NotRunning(Some(rec())), Ok(maps()), true);
        assert_eq!(r.health.exit_code(), 3);
        assert!(
            r.problems[0].contains("pins are stale (left by pid 42"),
            "{:?}",
            r.problems
        );
        let r = assess(b, &Probe::NotRunning(None), Err("no pins".into()), false);
        assert_eq!(r.health, Health::NotRunning);
        assert_eq!(
            r.problems,
            vec!["no agent runs on /sys/fs/bpf/x".to_string()]
        );
    }
}
