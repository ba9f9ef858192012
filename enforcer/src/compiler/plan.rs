//! Step 2 of the compiler: the compiled entries placed under `policy_set` ids, given what is
//! installed (see the module doc of `compiler`).
//!
//! Each endpoint has three sets: its own (`policy_set`: the NetworkPolicy tier and its Service
//! verdicts), the Admin tier's (`tier_set`) and the Baseline tier's (`baseline_set`), placed by
//! the same rules but separately, so endpoints selected by the same cluster-wide policies
//! share one Admin set whatever NetworkPolicies select each of them (Baseline entries exist
//! only where NetworkPolicy does not decide, so they differ between isolated endpoints and the
//! rest, and are kept apart to leave the Admin set shared).

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::{
    EndpointInfo, IdentityValue, PolicyKey, PolicyValue, identity, mode, reason,
};

use super::{Compiled, CompiledEndpoint, Ids};
use crate::model::ObjectRef;
use crate::state::{Lpm, MapState};

type Entries = BTreeMap<Lpm<PolicyKey>, PolicyValue>;
/// Endpoint id → its set (`None`: no room), and the entries to write under each set.
type Placed<'c> = (BTreeMap<u32, Option<u32>>, Vec<(u32, &'c Entries)>);

fn live_identities<'a>(
    ip: impl Iterator<Item = &'a IdentityValue>,
    cidr: impl Iterator<Item = &'a IdentityValue>,
    services: impl Iterator<Item = &'a u32>,
) -> BTreeSet<u32> {
    let mut s: BTreeSet<u32> = [identity::ANY, identity::HOST, identity::WORLD].into();
    s.extend(ip.map(|v| v.identity));
    s.extend(cidr.map(|v| v.identity));
    s.extend(services.copied());
    s
}

/// An endpoint held closed because its policy set does not fit in the `POLICY` map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapacityHold {
    pub endpoint_id: u32,
    pub pod: ObjectRef,
    pub ifindex: u32,
    /// Entries its policy set needs.
    pub entries: usize,
}

/// What [`plan_with`] decides: the desired state, and the endpoints held for lack of room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Planned {
    pub state: MapState,
    pub held: Vec<CapacityHold>,
}

/// Places the compiled entries under `policy_set` ids, given what is installed, and returns the
/// complete desired map state (diff it against `installed` for the writes). The `POLICY` map's
/// real capacity; see [`plan_with`].
pub fn plan(installed: &MapState, compiled: &Compiled, ids: &mut Ids) -> MapState {
    plan_with(
        installed,
        compiled,
        ids,
        enforcer_common::capacity::POLICY as usize,
    )
    .state
}

/// The slot of an endpoint held closed for `why` (a `reason::*`): `DENY_ALL` both ways, with
/// the reason the datapath reports in `policy_set` (a `DENY_ALL` slot has no policy set).
pub fn held_endpoint(endpoint_id: u32, why: u8) -> EndpointInfo {
    EndpointInfo {
        endpoint_id,
        policy_set: u32::from(why),
        ingress_mode: mode::DENY_ALL,
        egress_mode: mode::DENY_ALL,
        tiers: 0,
        tier_set: 0,
        baseline_set: 0,
    }
}

/// What is installed, as the placement reads it.
struct Installed<'a> {
    /// Installed set → its entries (keys with `policy_set` 0).
    sets: BTreeMap<u32, Entries>,
    live_before: BTreeSet<u32>,
    live_after: BTreeSet<u32>,
    max_set: u32,
    endpoints: &'a BTreeMap<u32, EndpointInfo>,
}

/// The shared state of the two placements.
struct Placing<'a> {
    inst: Installed<'a>,
    /// Sets given to a group already (of either kind).
    taken: BTreeSet<u32>,
    /// Entries the map still has room for.
    room: usize,
}

impl Placing<'_> {
    /// Places one kind of set (`which` reads it from an installed endpoint; `entries_of` gives
    /// an endpoint's compiled entries of that kind). Returns endpoint id → its set (`None`: no
    /// room), and the entries to write under each set. Endpoints whose entries of this kind
    /// are empty and `skip_empty` get set 0.
    fn place<'c>(
        &mut self,
        compiled: &'c BTreeMap<u32, CompiledEndpoint>,
        entries_of: impl Fn(&'c CompiledEndpoint) -> &'c Entries,
        which: impl Fn(&EndpointInfo) -> u32,
        skip_empty: bool,
        ids: &mut Ids,
    ) -> Placed<'c> {
        let empty = Entries::new();
        // Which endpoints use each installed set (a held endpoint's slot names a reason).
        let mut set_users: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        let mut installed_set_of: BTreeMap<u32, u32> = BTreeMap::new();
        for e in self.inst.endpoints.values() {
            if e.ingress_mode == mode::DENY_ALL && e.egress_mode == mode::DENY_ALL {
                continue;
            }
            let s = which(e);
            if s == 0 && skip_empty {
                continue;
            }
            set_users.entry(s).or_default().insert(e.endpoint_id);
            installed_set_of.insert(e.endpoint_id, s);
        }
        // Endpoints grouped by their entries, each group in the order of its oldest endpoint.
        let mut out: BTreeMap<u32, Option<u32>> = BTreeMap::new();
        let mut groups: BTreeMap<&Entries, Vec<u32>> = BTreeMap::new();
        for (id, ep) in compiled {
            let e = entries_of(ep);
            if skip_empty && e.is_empty() {
                out.insert(*id, Some(0));
                continue;
            }
            groups.entry(e).or_default().push(*id);
        }
        let mut groups: Vec<(&Entries, Vec<u32>)> = groups.into_iter().collect();
        groups.sort_by_key(|(_, users)| users[0]);

        let mut chosen: Vec<Option<u32>> = vec![None; groups.len()];
        // 1. Sets installed with exactly these entries: nothing to write.
        for (i, (entries, users)) in groups.iter().enumerate() {
            let taken = &self.taken;
            let sets = &self.inst.sets;
            let same = |s: &u32| !taken.contains(s) && sets.get(s).unwrap_or(&empty) == *entries;
            let pick = users
                .iter()
                .filter_map(|u| installed_set_of.get(u))
                .copied()
                .find(|s| *s != 0 && same(s))
                .or_else(|| {
                    sets.keys()
                        .copied()
                        .find(|s| *s != 0 && same(s) && !entries.is_empty())
                });
            if let Some(s) = pick {
                self.taken.insert(s);
                chosen[i] = Some(s);
            }
        }
        // 2. and 3. In place where invisible, else fresh; while the map has room.
        let mut writes = Vec::new();
        for (i, (entries, users)) in groups.iter().enumerate() {
            let set = match chosen[i] {
                Some(s) => Some(s),
                None => self.fresh_or_in_place(entries, users, &installed_set_of, &set_users, ids),
            };
            if let Some(s) = set {
                self.taken.insert(s);
                writes.push((s, *entries));
            }
            for u in users {
                out.insert(*u, set);
            }
        }
        (out, writes)
    }

    /// Step 2 and 3 for one group: its endpoints' installed set, changed in place when nobody
    /// else uses it and the change is invisible to live traffic; else a fresh set; `None`
    /// when its entries do not fit.
    fn fresh_or_in_place(
        &mut self,
        entries: &Entries,
        users: &[u32],
        installed_set_of: &BTreeMap<u32, u32>,
        set_users: &BTreeMap<u32, BTreeSet<u32>>,
        ids: &mut Ids,
    ) -> Option<u32> {
        let empty = Entries::new();
        let inst = &self.inst;
        let in_place = users
            .iter()
            .filter_map(|u| installed_set_of.get(u))
            .copied()
            .find(|s| {
                let old = inst.sets.get(s).unwrap_or(&empty);
                *s != 0
                    && !self.taken.contains(s)
                    && set_users[s].iter().all(|u| users.contains(u))
                    && entries.iter().all(|(k, v)| {
                        old.get(k) == Some(v) || !inst.live_before.contains(&k.data.identity)
                    })
                    && old.keys().all(|k| {
                        entries.contains_key(k) || !inst.live_after.contains(&k.data.identity)
                    })
            });
        let (set, cost) = match in_place {
            Some(s) => {
                let old = inst.sets.get(&s).unwrap_or(&empty);
                (
                    Some(s),
                    entries.keys().filter(|k| !old.contains_key(*k)).count(),
                )
            }
            None => (None, entries.len()),
        };
        if cost > self.room {
            return None;
        }
        self.room -= cost;
        Some(set.unwrap_or_else(|| ids.fresh_set(self.inst.max_set)))
    }
}

/// As [`plan`], for a `POLICY` map of `capacity` entries.
///
/// Endpoints whose entries are identical share one `policy_set` (and, separately, one
/// `tier_set` and one `baseline_set`). Each distinct set is placed, in order of preference: on an installed set that
/// holds exactly these entries (no write); in place on the installed set its endpoints use,
/// when nobody else uses it and the change is invisible to live traffic (see the module doc);
/// else under a fresh id. During the install the map holds the installed sets and the new ones
/// at once (the old are deleted after the flip), so a set that is written costs its entries on
/// top of what is installed: the sets are placed oldest endpoint first while they fit, and the
/// endpoints of a set that does not fit are held closed (`DENY_ALL`, reported as
/// `ENDPOINT_CAPACITY`) while every other change installs.
pub fn plan_with(
    installed: &MapState,
    compiled: &Compiled,
    ids: &mut Ids,
    capacity: usize,
) -> Planned {
    let mut sets: BTreeMap<u32, Entries> = BTreeMap::new();
    let mut max_set = 0;
    for (k, v) in &installed.policy {
        max_set = max_set.max(k.data.policy_set);
        let mut bare = *k;
        bare.data.policy_set = 0;
        sets.entry(k.data.policy_set).or_default().insert(bare, *v);
    }
    for e in installed.endpoints.values() {
        if !(e.ingress_mode == mode::DENY_ALL && e.egress_mode == mode::DENY_ALL) {
            max_set = max_set
                .max(e.policy_set)
                .max(e.tier_set)
                .max(e.baseline_set);
        }
    }
    let mut placing = Placing {
        inst: Installed {
            sets,
            live_before: live_identities(
                installed.ip_identity.values(),
                installed.cidr_identity.values(),
                installed.service_ips.values(),
            ),
            live_after: live_identities(
                compiled.ip_identity.values(),
                compiled.cidr_identity.values(),
                compiled.service_ips.values(),
            ),
            max_set,
            endpoints: &installed.endpoints,
        },
        taken: BTreeSet::new(),
        room: capacity.saturating_sub(installed.policy.len()),
    };
    let (own, own_writes) = placing.place(
        &compiled.endpoints,
        |ep| &ep.entries,
        |e| e.policy_set,
        false,
        ids,
    );
    let (tier, tier_writes) = placing.place(
        &compiled.endpoints,
        |ep| &ep.tier_entries,
        |e| e.tier_set,
        true,
        ids,
    );
    let (baseline, baseline_writes) = placing.place(
        &compiled.endpoints,
        |ep| &ep.baseline_entries,
        |e| e.baseline_set,
        true,
        ids,
    );
    let mut out = Planned {
        state: MapState {
            endpoints: BTreeMap::new(),
            ip_identity: compiled.ip_identity.clone(),
            cidr_identity: compiled.cidr_identity.clone(),
            policy: BTreeMap::new(),
            service_ips: compiled.service_ips.clone(),
            service_backends: compiled.service_backends.clone(),
        },
        held: Vec::new(),
    };
    // A set is written only if an endpoint that is not held uses it.
    let mut used: BTreeSet<u32> = BTreeSet::new();
    for (id, ep) in &compiled.endpoints {
        match (
            own.get(id).copied().flatten(),
            tier.get(id).copied().flatten(),
            baseline.get(id).copied().flatten(),
        ) {
            (Some(set), Some(tier_set), Some(baseline_set)) => {
                used.insert(set);
                used.insert(tier_set);
                used.insert(baseline_set);
                out.state.endpoints.insert(
                    ep.ifindex,
                    EndpointInfo {
                        endpoint_id: *id,
                        policy_set: set,
                        ingress_mode: ep.ingress_mode,
                        egress_mode: ep.egress_mode,
                        tiers: ep.tiers,
                        tier_set,
                        baseline_set,
                    },
                );
            }
            _ => {
                out.held.push(CapacityHold {
                    endpoint_id: *id,
                    pod: ep.pod.clone(),
                    ifindex: ep.ifindex,
                    entries: ep.entries.len() + ep.tier_entries.len() + ep.baseline_entries.len(),
                });
                out.state
                    .endpoints
                    .insert(ep.ifindex, held_endpoint(*id, reason::ENDPOINT_CAPACITY));
            }
        }
    }
    for (set, entries) in own_writes
        .into_iter()
        .chain(tier_writes)
        .chain(baseline_writes)
    {
        if set == 0 || !used.contains(&set) {
            continue;
        }
        for (k, v) in entries {
            let mut key = *k;
            key.data.policy_set = set;
            out.state.policy.insert(key, *v);
        }
    }
    // Held interfaces: endpoint id 0 in DENY_ALL, which the datapath reports as
    // `endpoint-unknown`; only IP traffic is refused (ARP and neighbour discovery pass, so the
    // pod's address can be learnt and the pod discovered).
    // (No reason in the slot: endpoint id 0 with none is reported as `endpoint-unknown`.)
    for ifindex in &compiled.held {
        out.state
            .endpoints
            .entry(*ifindex)
            .or_insert(held_endpoint(0, 0));
    }
    // Interfaces whose pod is ambiguous (`binding`): held whatever else is known of them.
    for ifindex in &compiled.conflicted {
        out.state
            .endpoints
            .insert(*ifindex, held_endpoint(0, reason::ENDPOINT_CONFLICT));
    }
    out
}
