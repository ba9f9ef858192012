//! The conntrack tables as the agent's garbage collector and the dumps see them: a handle of
//! its own on each map (its own file descriptors), so the collector runs on its own thread,
//! never on the agent's reconcile loop.

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use enforcer_common::{CtKey, CtSettings, CtValue, counter, names};

use super::{AyaError, BpfError, Result, counters, ignore_missing, map_err};

/// `CONNTRACK` (the LRU: unreplied and closing flows) or `CT_ESTABLISHED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    Lru,
    Established,
}

impl Table {
    pub fn map_name(self) -> &'static str {
        match self {
            Table::Lru => names::MAP_CONNTRACK,
            Table::Established => names::MAP_CT_ESTABLISHED,
        }
    }
}

/// Own handles on the conntrack maps and the counters.
pub struct CtTables {
    lru: Map,
    est: Map,
    used: Map,
    freed: Map,
    counters: Map,
}

/// A second file descriptor on a loaded map.
fn dup(m: &Map, name: &'static str) -> Result<Map> {
    let data = match m {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuArray(d) | Map::Array(d) => d,
        _ => return Err(BpfError::MissingMap(name)),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| BpfError::Map {
            name,
            error: AyaError::of(&MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            })),
        })?;
    Map::from_map_data(MapData::from_fd(fd).map_err(map_err(name))?).map_err(map_err(name))
}

impl CtTables {
    pub(crate) fn open<'a>(map: impl Fn(&'static str) -> Result<&'a Map>) -> Result<Self> {
        Ok(Self {
            lru: dup(map(names::MAP_CONNTRACK)?, names::MAP_CONNTRACK)?,
            est: dup(map(names::MAP_CT_ESTABLISHED)?, names::MAP_CT_ESTABLISHED)?,
            used: dup(map(names::MAP_CT_USED)?, names::MAP_CT_USED)?,
            freed: dup(map(names::MAP_CT_FREED)?, names::MAP_CT_FREED)?,
            counters: dup(map(names::MAP_DROP_COUNTERS)?, names::MAP_DROP_COUNTERS)?,
        })
    }

    fn data(&self, t: Table) -> &Map {
        match t {
            Table::Lru => &self.lru,
            Table::Established => &self.est,
        }
    }

    fn data_mut(&mut self, t: Table) -> &mut Map {
        match t {
            Table::Lru => &mut self.lru,
            Table::Established => &mut self.est,
        }
    }

    /// Every entry of one table (a syscall or two per entry: call off the reconcile loop).
    pub fn entries(&self, t: Table) -> Result<Vec<(CtKey, CtValue)>> {
        let m: BpfHashMap<&MapData, CtKey, CtValue> =
            BpfHashMap::try_from(self.data(t)).map_err(map_err(t.map_name()))?;
        // An entry deleted while walking (the datapath, eviction) is skipped, not an error.
        Ok(m.iter().filter_map(|r| r.ok()).collect())
    }

    pub fn get(&self, t: Table, k: &CtKey) -> Option<CtValue> {
        let m: BpfHashMap<&MapData, CtKey, CtValue> = BpfHashMap::try_from(self.data(t)).ok()?;
        m.get(k, 0).ok()
    }

    /// Marks an entry idle from `now_ns` (it was `seen` since the last pass): re-read just
    /// before the write, so a state the datapath changed meanwhile is kept. False if it is gone.
    pub fn refresh(&mut self, t: Table, k: &CtKey, now_ns: u64) -> Result<bool> {
        let Some(mut v) = self.get(t, k) else {
            return Ok(false);
        };
        v.seen = 0;
        v.last_ns = v.last_ns.max(now_ns);
        let mut m: BpfHashMap<&mut MapData, CtKey, CtValue> =
            BpfHashMap::try_from(self.data_mut(t)).map_err(map_err(t.map_name()))?;
        // BPF_EXIST: never re-create an entry deleted meanwhile.
        match m.insert(k, v, 2) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(map_err(t.map_name())(e)),
        }
    }

    /// Deletes an entry; false if it was gone already (the datapath moved or removed it).
    pub fn delete(&mut self, t: Table, k: &CtKey) -> Result<bool> {
        let mut m: BpfHashMap<&mut MapData, CtKey, CtValue> =
            BpfHashMap::try_from(self.data_mut(t)).map_err(map_err(t.map_name()))?;
        match m.remove(k) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(map_err(t.map_name())(e)),
        }
    }

    /// `CT_USED` (datapath) and `CT_FREED` (collector) per interface.
    pub fn accounting(&self) -> Result<(BTreeMap<u32, u64>, BTreeMap<u32, u64>)> {
        let read = |d: &Map, n: &'static str| -> Result<BTreeMap<u32, u64>> {
            let m: BpfHashMap<&MapData, u32, u64> = BpfHashMap::try_from(d).map_err(map_err(n))?;
            Ok(m.iter().filter_map(|r| r.ok()).collect())
        };
        Ok((
            read(&self.used, names::MAP_CT_USED)?,
            read(&self.freed, names::MAP_CT_FREED)?,
        ))
    }

    pub fn set_freed(&mut self, ifindex: u32, freed: u64) -> Result<()> {
        let n = names::MAP_CT_FREED;
        let mut m: BpfHashMap<&mut MapData, u32, u64> =
            BpfHashMap::try_from(&mut self.freed).map_err(map_err(n))?;
        m.insert(ifindex, freed, 0).map_err(map_err(n))
    }

    /// Forgets an interface's accounting (no entries left, nothing in use).
    pub fn forget(&mut self, ifindex: u32) -> Result<()> {
        let mut m: BpfHashMap<&mut MapData, u32, u64> =
            BpfHashMap::try_from(&mut self.used).map_err(map_err(names::MAP_CT_USED))?;
        ignore_missing(m.remove(&ifindex)).map_err(map_err(names::MAP_CT_USED))?;
        let mut m: BpfHashMap<&mut MapData, u32, u64> =
            BpfHashMap::try_from(&mut self.freed).map_err(map_err(names::MAP_CT_FREED))?;
        ignore_missing(m.remove(&ifindex)).map_err(map_err(names::MAP_CT_FREED))
    }

    /// The datapath's counters (verdicts by reason, then its own), summed over CPUs.
    pub fn counters(&self) -> Result<Vec<u64>> {
        counters(&self.counters)
    }

    /// Adds to a counter slot only the agent writes (`counter::CT_GC_DELETED*`).
    pub fn add_to_counter(&mut self, slot: u32, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let name = names::MAP_DROP_COUNTERS;
        let mut a: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(&mut self.counters).map_err(map_err(name))?;
        let cur = a.get(&slot, 0).map_err(map_err(name))?;
        let mut v: Vec<u64> = cur.iter().copied().collect();
        v[0] = v[0].wrapping_add(n);
        let values = PerCpuValues::try_from(v).map_err(|e| BpfError::Map {
            name,
            error: AyaError::of(&MapError::SyscallError(aya::sys::SyscallError {
                call: "per-cpu values",
                io_error: e,
            })),
        })?;
        a.set(slot, values, 0).map_err(map_err(name))
    }
}

/// Writes the conntrack settings the datapath reads.
pub(crate) fn set_settings(m: &mut Map, s: CtSettings) -> Result<()> {
    let n = names::MAP_CT_SETTINGS;
    let mut a: Array<&mut MapData, CtSettings> = Array::try_from(m).map_err(map_err(n))?;
    a.set(0, s, 0).map_err(map_err(n))
}

/// What the conntrack tables hold and what happened to them: for `maps dump` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CtSummary {
    /// Entries in the LRU (unreplied, closing, and established flows past their budget).
    pub lru_entries: usize,
    /// Entries in `CT_ESTABLISHED`.
    pub established_entries: usize,
    /// Entries by state name, both tables.
    pub by_state: BTreeMap<String, usize>,
    /// The datapath's and the collector's conntrack counters (see `counter::CT_*`).
    pub inserted: u64,
    pub promoted: u64,
    pub over_budget: u64,
    pub demoted: u64,
    pub revoked: u64,
    pub gc_deleted: u64,
    pub gc_deleted_established: u64,
    /// Entries the LRU evicted to make room (what went in, less what is there and what left
    /// otherwise): what a flood cost other flows that had no reply yet.
    pub evicted: u64,
    /// `CT_ESTABLISHED` entries in use per interface (ifindex), with entries.
    pub in_use: BTreeMap<u32, u64>,
}

impl CtSummary {
    pub fn total(&self) -> usize {
        self.lru_entries + self.established_entries
    }

    /// From the tables' entries and counters (a walk: call off the reconcile loop).
    pub fn read(t: &CtTables) -> Result<Self> {
        let lru = t.entries(Table::Lru)?;
        let est = t.entries(Table::Established)?;
        let c = t.counters()?;
        let (used, freed) = t.accounting()?;
        Ok(Self::from_parts(&lru, &est, &c, &used, &freed))
    }

    pub fn from_parts(
        lru: &[(CtKey, CtValue)],
        est: &[(CtKey, CtValue)],
        c: &[u64],
        used: &BTreeMap<u32, u64>,
        freed: &BTreeMap<u32, u64>,
    ) -> Self {
        let at = |i: u32| c.get(i as usize).copied().unwrap_or(0);
        let mut by_state = BTreeMap::new();
        for (_, v) in lru.iter().chain(est) {
            *by_state
                .entry(enforcer_common::ct_state::name(v.state).to_string())
                .or_insert(0) += 1;
        }
        let mut s = CtSummary {
            lru_entries: lru.len(),
            established_entries: est.len(),
            by_state,
            inserted: at(counter::CT_INSERTED),
            promoted: at(counter::CT_PROMOTED),
            over_budget: at(counter::CT_OVER_BUDGET),
            demoted: at(counter::CT_DEMOTED),
            revoked: at(counter::CT_REVOKED),
            gc_deleted: at(counter::CT_GC_DELETED),
            gc_deleted_established: at(counter::CT_GC_DELETED_ESTABLISHED),
            evicted: 0,
            in_use: BTreeMap::new(),
        };
        // Into the LRU: inserts and demotions; out of it otherwise: promotions, the collector,
        // revocations (counted for both tables: an upper bound), what is left.
        let into = s.inserted + s.demoted;
        let out = s.promoted + s.gc_deleted + s.revoked + s.lru_entries as u64;
        s.evicted = into.saturating_sub(out);
        for (ifindex, u) in used {
            let n = u.wrapping_sub(freed.get(ifindex).copied().unwrap_or(0));
            if n != 0 {
                s.in_use.insert(*ifindex, n);
            }
        }
        s
    }
}
