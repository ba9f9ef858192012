//! The conntrack garbage collector: deletes idle entries by state and protocol, on a thread of
//! its own (a pass walks the tables, a syscall or two per entry; the reconcile loop never waits
//! for it).
//!
//! The datapath never writes a timestamp per packet: it sets an entry's `seen` byte, and a pass
//! that finds it set moves `last_ns` to now and clears it. An entry is idle since `last_ns`,
//! give or take one pass. An idle entry past its lifetime goes with its other half, unless that
//! half is still in use (one-way traffic keeps both).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use enforcer_common::{CtKey, CtValue, counter, ct_state};
use tracing::{debug, warn};

use crate::bpf::ct::{CtSummary, CtTables, Table};
use crate::metrics::{Health, Metrics};

const IPPROTO_TCP: u8 = 6;

/// How long an idle entry lives, by state (Cilium's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub tcp_established: Duration,
    pub tcp_syn: Duration,
    pub tcp_close: Duration,
    pub other: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            tcp_established: Duration::from_secs(21_600),
            tcp_syn: Duration::from_secs(60),
            tcp_close: Duration::from_secs(10),
            other: Duration::from_secs(60),
        }
    }
}

impl Lifetimes {
    pub fn of(&self, proto: u8, state: u8) -> Duration {
        if proto != IPPROTO_TCP {
            return self.other;
        }
        match state {
            ct_state::NEW => self.tcp_syn,
            ct_state::CLOSING => self.tcp_close,
            // Established, and entries from before states (whose flows may be established).
            _ => self.tcp_established,
        }
    }
}

/// What a pass does with one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In use since the last pass: idle from now on.
    Refresh,
    /// Idle, within its lifetime.
    Keep,
    /// Idle past its lifetime.
    Expired,
}

pub fn judge(k: &CtKey, v: &CtValue, now_ns: u64, l: &Lifetimes) -> Verdict {
    if v.seen != 0 {
        return Verdict::Refresh;
    }
    let idle = now_ns.saturating_sub(v.last_ns);
    if idle > l.of(k.proto, v.state).as_nanos() as u64 {
        Verdict::Expired
    } else {
        Verdict::Keep
    }
}

/// One table's pass, decided over a snapshot: entries to refresh and entries to delete. An
/// expired entry whose other half is in the table and not expired stays.
pub fn plan(entries: &[(CtKey, CtValue)], now_ns: u64, l: &Lifetimes) -> (Vec<CtKey>, Vec<CtKey>) {
    let mut refresh = Vec::new();
    let mut expired = Vec::new();
    let mut present = HashSet::with_capacity(entries.len());
    for (k, v) in entries {
        present.insert(*k);
        match judge(k, v, now_ns, l) {
            Verdict::Refresh => refresh.push(*k),
            Verdict::Keep => {}
            Verdict::Expired => expired.push(*k),
        }
    }
    let dead: HashSet<CtKey> = expired.iter().copied().collect();
    let delete = expired
        .into_iter()
        .filter(|k| {
            let r = k.reversed();
            dead.contains(&r) || !present.contains(&r)
        })
        .collect();
    (refresh, delete)
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    pub refreshed: u64,
    pub deleted_lru: u64,
    pub deleted_established: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct Collector {
    pub tables: CtTables,
    pub lifetimes: Lifetimes,
}

impl Collector {
    /// One pass over both tables at `now_ns`; returns what it did and what the tables hold
    /// after it.
    pub fn pass(&mut self, now_ns: u64) -> Result<(PassStats, CtSummary)> {
        let mut stats = PassStats::default();
        let mut freed_now: BTreeMap<u32, u64> = BTreeMap::new();
        for t in [Table::Lru, Table::Established] {
            let entries = self.tables.entries(t)?;
            let (refresh, delete) = plan(&entries, now_ns, &self.lifetimes);
            for k in &refresh {
                if self.tables.refresh(t, k, now_ns)? {
                    stats.refreshed += 1;
                }
            }
            for k in &delete {
                // Only what this call deleted counts: the datapath may have moved it first.
                if !self.tables.delete(t, k)? {
                    continue;
                }
                match t {
                    Table::Lru => stats.deleted_lru += 1,
                    Table::Established => {
                        stats.deleted_established += 1;
                        *freed_now.entry(k.ifindex).or_insert(0) += 1;
                    }
                }
            }
        }
        self.tables
            .add_to_counter(counter::CT_GC_DELETED, stats.deleted_lru)?;
        self.tables.add_to_counter(
            counter::CT_GC_DELETED_ESTABLISHED,
            stats.deleted_established,
        )?;
        // The budget the deletions free: CT_FREED is the collector's alone.
        let (_, freed) = self.tables.accounting()?;
        for (ifindex, n) in &freed_now {
            let total = freed.get(ifindex).copied().unwrap_or(0).wrapping_add(*n);
            self.tables.set_freed(*ifindex, total)?;
        }
        let est = self.tables.entries(Table::Established)?;
        let with_entries: HashSet<u32> = est.iter().map(|(k, _)| k.ifindex).collect();
        let (used_now, freed_after) = self.tables.accounting()?;
        for (ifindex, u) in &used_now {
            // An interface with nothing in use and no entries: its accounting goes, so the
            // table of interfaces does not fill up as pods come and go.
            if !with_entries.contains(ifindex)
                && freed_after.get(ifindex).copied().unwrap_or(0) == *u
            {
                self.tables.forget(*ifindex)?;
            }
        }
        let lru = self.tables.entries(Table::Lru)?;
        let c = self.tables.counters()?;
        let (used, freed) = self.tables.accounting()?;
        Ok((stats, CtSummary::from_parts(&lru, &est, &c, &used, &freed)))
    }
}

/// Exports a summary to `/metrics`.
pub fn export(m: &Metrics, s: &CtSummary) {
    m.set_map_entries("conntrack", s.lru_entries);
    m.set_map_entries("ct_established", s.established_entries);
    for (state, n) in &s.by_state {
        m.conntrack_entries
            .get_or_create(&vec![("state", state.clone())])
            .set(*n as i64);
    }
    for known in ["new", "established", "closing", "legacy"] {
        if !s.by_state.contains_key(known) {
            m.conntrack_entries
                .get_or_create(&vec![("state", known.to_string())])
                .set(0);
        }
    }
}

/// Runs passes every `interval` on a thread of its own until the process ends.
pub fn spawn(mut c: Collector, interval: Duration, health: Arc<Health>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ct-gc".into())
        .spawn(move || {
            loop {
                match c.pass(monotonic_ns()) {
                    Ok((stats, summary)) => {
                        if stats.deleted_lru + stats.deleted_established > 0 {
                            debug!(?stats, "conntrack garbage collected");
                        }
                        export(&health.metrics, &summary);
                    }
                    Err(e) => {
                        warn!("conntrack garbage collection: {e:#}");
                        health.metrics.error("conntrack-gc");
                    }
                }
                std::thread::sleep(interval);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16, dir: u8) -> CtKey {
        CtKey {
            saddr: [1; 16],
            daddr: [2; 16],
            sport_be: sport.to_be(),
            dport_be: 80u16.to_be(),
            proto: IPPROTO_TCP,
            direction: dir,
            _pad: 0,
            ifindex: 3,
        }
    }

    fn val(state: u8, last_s: u64, seen: u8) -> CtValue {
        CtValue {
            last_ns: last_s * 1_000_000_000,
            state,
            seen,
            ..Default::default()
        }
    }

    #[test]
    fn lifetimes_follow_state_and_protocol() {
        let l = Lifetimes::default();
        assert_eq!(l.of(6, ct_state::NEW), Duration::from_secs(60));
        assert_eq!(l.of(6, ct_state::ESTABLISHED), Duration::from_secs(21_600));
        assert_eq!(l.of(6, ct_state::LEGACY), Duration::from_secs(21_600));
        assert_eq!(l.of(6, ct_state::CLOSING), Duration::from_secs(10));
        assert_eq!(l.of(17, ct_state::ESTABLISHED), Duration::from_secs(60));
    }

    #[test]
    fn a_pair_goes_together_and_one_way_traffic_keeps_both() {
        let l = Lifetimes::default();
        let now = 100_000 * 1_000_000_000;
        let (a, b) = (key(1, 0), key(1, 0).reversed());
        let (c, d) = (key(2, 0), key(2, 0).reversed());
        let lone = key(3, 0);
        let entries = vec![
            // Closed 11 s ago, both idle: both go.
            (a, val(ct_state::CLOSING, 100_000 - 11, 0)),
            (b, val(ct_state::CLOSING, 100_000 - 11, 0)),
            // Established, one half idle for 7 h but the other in use: both stay.
            (c, val(ct_state::ESTABLISHED, 100_000 - 7 * 3600, 0)),
            (d, val(ct_state::ESTABLISHED, 100_000 - 7 * 3600, 1)),
            // A SYN never answered, alone (its reply half was evicted): goes.
            (lone, val(ct_state::NEW, 100_000 - 61, 0)),
        ];
        let (refresh, mut delete) = plan(&entries, now, &l);
        assert_eq!(refresh, vec![d]);
        delete.sort();
        let mut want = vec![a, b, lone];
        want.sort();
        assert_eq!(delete, want);
    }
}
