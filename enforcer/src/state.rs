//! The desired content of the datapath maps, and the minimal diff between two of them.
//!
//! This is the boundary between the pure policy compiler (which produces a [`MapState`]) and the
//! kernel edge (which installs a [`MapDiff`] with [`crate::bpf`]). Nothing here touches a kernel.

use std::collections::BTreeMap;

use enforcer_common::{
    EndpointInfo, EndpointSlot, EndpointValue, IdentitySlots, IdentityValue, IpAddrKey, PolicyKey,
    PolicyValue, ServiceBackendKey, mode,
};

/// Key of an LPM trie entry: data plus prefix length in bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lpm<K> {
    pub prefix_len: u32,
    pub data: K,
}

/// Everything the agent installs in the maps (conntrack, events and counters are the kernel's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    /// ifindex of the host-side interface → endpoint.
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// Pod or host address → label identity.
    pub ip_identity: BTreeMap<IpAddrKey, IdentityValue>,
    /// ipBlock partition prefix → CIDR identity.
    pub cidr_identity: BTreeMap<Lpm<IpAddrKey>, IdentityValue>,
    pub policy: BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    /// Service (ClusterIP) addresses → Service identity.
    pub service_ips: BTreeMap<IpAddrKey, u32>,
    /// Backends of the Service ports some endpoint's verdict is deferred for (value 1).
    pub service_backends: BTreeMap<ServiceBackendKey, u32>,
}

/// Writes and deletes of one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapChanges<K, V> {
    pub upserts: Vec<(K, V)>,
    pub deletes: Vec<K>,
}

impl<K, V> Default for MapChanges<K, V> {
    fn default() -> Self {
        Self {
            upserts: Vec::new(),
            deletes: Vec::new(),
        }
    }
}

impl<K, V> MapChanges<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
    pub fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

/// The minimal logical change from one [`MapState`] to another: what the agent logs and what
/// tells it whether there is anything to install. The kernel edge installs a new state as a
/// [`Transition`] planned by [`PhysState::transition`], which keeps every packet on either the
/// old or the new state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    pub endpoints: MapChanges<u32, EndpointInfo>,
    pub ip_identity: MapChanges<IpAddrKey, IdentityValue>,
    pub cidr_identity: MapChanges<Lpm<IpAddrKey>, IdentityValue>,
    pub policy: MapChanges<Lpm<PolicyKey>, PolicyValue>,
    pub service_ips: MapChanges<IpAddrKey, u32>,
    pub service_backends: MapChanges<ServiceBackendKey, u32>,
}

impl MapDiff {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.ip_identity.is_empty()
            && self.cidr_identity.is_empty()
            && self.policy.is_empty()
            && self.service_ips.is_empty()
            && self.service_backends.is_empty()
    }

    /// Number of map writes (upserts + deletes).
    pub fn len(&self) -> usize {
        self.endpoints.len()
            + self.ip_identity.len()
            + self.cidr_identity.len()
            + self.policy.len()
            + self.service_ips.len()
            + self.service_backends.len()
    }

    /// Writes per map, for logs: `endpoints +1 -0, policy +3 -2`.
    pub fn summary(&self) -> String {
        let parts = [
            (
                "endpoints",
                self.endpoints.upserts.len(),
                self.endpoints.deletes.len(),
            ),
            (
                "ip_identity",
                self.ip_identity.upserts.len(),
                self.ip_identity.deletes.len(),
            ),
            (
                "cidr_identity",
                self.cidr_identity.upserts.len(),
                self.cidr_identity.deletes.len(),
            ),
            (
                "policy",
                self.policy.upserts.len(),
                self.policy.deletes.len(),
            ),
            (
                "service_ips",
                self.service_ips.upserts.len(),
                self.service_ips.deletes.len(),
            ),
            (
                "service_backends",
                self.service_backends.upserts.len(),
                self.service_backends.deletes.len(),
            ),
        ];
        parts
            .iter()
            .filter(|(_, u, d)| u + d > 0)
            .map(|(n, u, d)| format!("{n} +{u} -{d}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn diff_map<K: Ord + Clone, V: PartialEq + Clone>(
    installed: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> MapChanges<K, V> {
    let mut out = MapChanges::default();
    for (k, v) in desired {
        if installed.get(k) != Some(v) {
            out.upserts.push((k.clone(), v.clone()));
        }
    }
    for k in installed.keys() {
        if !desired.contains_key(k) {
            out.deletes.push(k.clone());
        }
    }
    out
}

impl MapState {
    /// The writes that turn `self` (what is installed) into `desired`.
    pub fn diff(&self, desired: &MapState) -> MapDiff {
        MapDiff {
            endpoints: diff_map(&self.endpoints, &desired.endpoints),
            ip_identity: diff_map(&self.ip_identity, &desired.ip_identity),
            cidr_identity: diff_map(&self.cidr_identity, &desired.cidr_identity),
            policy: diff_map(&self.policy, &desired.policy),
            service_ips: diff_map(&self.service_ips, &desired.service_ips),
            service_backends: diff_map(&self.service_backends, &desired.service_backends),
        }
    }

    /// Applies a diff in memory.
    pub fn apply(&mut self, diff: &MapDiff) {
        fn change<K: Ord + Clone, V: Clone>(m: &mut BTreeMap<K, V>, c: &MapChanges<K, V>) {
            for k in &c.deletes {
                m.remove(k);
            }
            for (k, v) in &c.upserts {
                m.insert(k.clone(), v.clone());
            }
        }
        change(&mut self.endpoints, &diff.endpoints);
        change(&mut self.ip_identity, &diff.ip_identity);
        change(&mut self.cidr_identity, &diff.cidr_identity);
        change(&mut self.policy, &diff.policy);
        change(&mut self.service_ips, &diff.service_ips);
        change(&mut self.service_backends, &diff.service_backends);
    }
}

// --- Two generations in the kernel ------------------------------------------------------------

/// What the kernel maps hold: every endpoint, address and CIDR prefix with one value per
/// generation, and which generation is current (`Config::generation`).
///
/// A change is installed as a [`Transition`]: (1) write the new state into the other slot of
/// every entry it touches, and add the entries it needs (for a CIDR prefix that only one
/// generation has, the other slot holds what that generation's longest covering prefix says, so
/// longest-prefix match answers as that generation alone would); (2) switch the generation in
/// one write; (3) collapse both slots to the new values and delete what the new state lacks.
/// Every packet sees the whole old state or the whole new one, whatever the change: labels,
/// policies, namespaces, pod addresses, the CIDR partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhysState {
    pub generation: u8,
    pub endpoints: BTreeMap<u32, EndpointValue>,
    pub ip_identity: BTreeMap<IpAddrKey, IdentitySlots>,
    pub cidr_identity: BTreeMap<Lpm<IpAddrKey>, IdentitySlots>,
    pub policy: BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    pub service_ips: BTreeMap<IpAddrKey, u32>,
    pub service_backends: BTreeMap<ServiceBackendKey, u32>,
}

/// One write to the kernel maps (owned values: a transition outlives its inputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhysWrite {
    EndpointUpsert(u32, EndpointValue),
    EndpointDelete(u32),
    IpUpsert(IpAddrKey, IdentitySlots),
    IpDelete(IpAddrKey),
    CidrUpsert(Lpm<IpAddrKey>, IdentitySlots),
    CidrDelete(Lpm<IpAddrKey>),
    PolicyUpsert(Lpm<PolicyKey>, PolicyValue),
    PolicyDelete(Lpm<PolicyKey>),
    ServiceUpsert(IpAddrKey, u32),
    ServiceDelete(IpAddrKey),
    BackendUpsert(ServiceBackendKey, u32),
    BackendDelete(ServiceBackendKey),
    /// `Config::generation` (written with the revision, in one write).
    Flip(u8),
}

/// The writes that install a new state: prepare, flip, clean up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transition {
    pub prepare: Vec<PhysWrite>,
    pub flip_to: u8,
    pub cleanup: Vec<PhysWrite>,
}

impl Transition {
    /// Every write, the flip included, in order.
    pub fn writes(&self) -> Vec<PhysWrite> {
        let mut w = self.prepare.clone();
        w.push(PhysWrite::Flip(self.flip_to));
        w.extend(self.cleanup.iter().copied());
        w
    }
    pub fn len(&self) -> usize {
        self.prepare.len() + 1 + self.cleanup.len()
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

const ABSENT_SLOT: EndpointSlot = EndpointSlot {
    policy_set: 0,
    ingress_mode: mode::UNMANAGED,
    egress_mode: mode::UNMANAGED,
    tiers: 0,
    tier_set: 0,
    baseline_set: 0,
};

fn slot_of(e: &EndpointInfo) -> EndpointSlot {
    EndpointSlot {
        policy_set: e.policy_set,
        ingress_mode: e.ingress_mode,
        egress_mode: e.egress_mode,
        tiers: e.tiers,
        tier_set: e.tier_set,
        baseline_set: e.baseline_set,
    }
}

/// Longest prefix of `map` covering `p` (p itself included).
fn resolve(map: &BTreeMap<Lpm<IpAddrKey>, IdentityValue>, p: &Lpm<IpAddrKey>) -> u32 {
    (0..=p.prefix_len)
        .rev()
        .find_map(|len| {
            map.get(&Lpm {
                prefix_len: len,
                data: mask(&p.data, len),
            })
        })
        .map(|v| v.identity)
        .unwrap_or(0)
}

/// `addr` with every bit past `len` cleared.
pub fn mask(addr: &IpAddrKey, len: u32) -> IpAddrKey {
    let mut m = *addr;
    for (i, b) in m.addr.iter_mut().enumerate() {
        let bit0 = (i as u32) * 8;
        if bit0 >= len {
            *b = 0;
        } else if bit0 + 8 > len {
            *b &= 0xffu8 << (8 - (len - bit0));
        }
    }
    m
}

impl PhysState {
    /// The maps as one generation sees them, entry for entry as the datapath reads them: absent
    /// endpoints and addresses are left out; CIDR prefixes are kept even with identity 0 ("no
    /// ipBlock"), because they still take part in longest-prefix match.
    pub fn view(&self, generation: u8) -> MapState {
        let g = (generation & 1) as usize;
        MapState {
            endpoints: self
                .endpoints
                .iter()
                .filter(|(_, v)| v.slots[g] != ABSENT_SLOT)
                .map(|(k, v)| {
                    (
                        *k,
                        EndpointInfo {
                            endpoint_id: v.endpoint_id,
                            policy_set: v.slots[g].policy_set,
                            ingress_mode: v.slots[g].ingress_mode,
                            egress_mode: v.slots[g].egress_mode,
                            tiers: v.slots[g].tiers,
                            tier_set: v.slots[g].tier_set,
                            baseline_set: v.slots[g].baseline_set,
                        },
                    )
                })
                .collect(),
            ip_identity: self
                .ip_identity
                .iter()
                .filter(|(_, v)| v.identity[g] != 0)
                .map(|(k, v)| {
                    (
                        *k,
                        IdentityValue {
                            identity: v.identity[g],
                            endpoint_id: v.endpoint_id[g],
                        },
                    )
                })
                .collect(),
            cidr_identity: self
                .cidr_identity
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        IdentityValue {
                            identity: v.identity[g],
                            endpoint_id: v.endpoint_id[g],
                        },
                    )
                })
                .collect(),
            policy: self.policy.clone(),
            service_ips: self.service_ips.clone(),
            service_backends: self.service_backends.clone(),
        }
    }

    /// The current generation as the agent thinks of it (what `compile`/`plan` start from).
    pub fn logical(&self) -> MapState {
        let mut m = self.view(self.generation);
        m.cidr_identity.retain(|_, v| v.identity != 0);
        m
    }

    pub fn apply(&mut self, w: &PhysWrite) {
        match *w {
            PhysWrite::EndpointUpsert(k, v) => {
                self.endpoints.insert(k, v);
            }
            PhysWrite::EndpointDelete(k) => {
                self.endpoints.remove(&k);
            }
            PhysWrite::IpUpsert(k, v) => {
                self.ip_identity.insert(k, v);
            }
            PhysWrite::IpDelete(k) => {
                self.ip_identity.remove(&k);
            }
            PhysWrite::CidrUpsert(k, v) => {
                self.cidr_identity.insert(k, v);
            }
            PhysWrite::CidrDelete(k) => {
                self.cidr_identity.remove(&k);
            }
            PhysWrite::PolicyUpsert(k, v) => {
                self.policy.insert(k, v);
            }
            PhysWrite::PolicyDelete(k) => {
                self.policy.remove(&k);
            }
            PhysWrite::ServiceUpsert(k, v) => {
                self.service_ips.insert(k, v);
            }
            PhysWrite::ServiceDelete(k) => {
                self.service_ips.remove(&k);
            }
            PhysWrite::BackendUpsert(k, v) => {
                self.service_backends.insert(k, v);
            }
            PhysWrite::BackendDelete(k) => {
                self.service_backends.remove(&k);
            }
            PhysWrite::Flip(g) => self.generation = g & 1,
        }
    }

    /// The write that puts back what `self` holds for the key `w` writes (rollback); none for
    /// the generation switch.
    pub fn restoring(&self, w: &PhysWrite) -> Option<PhysWrite> {
        fn back<K: Ord + Copy, V: Copy>(
            m: &BTreeMap<K, V>,
            k: K,
            up: fn(K, V) -> PhysWrite,
            del: fn(K) -> PhysWrite,
        ) -> PhysWrite {
            match m.get(&k) {
                Some(v) => up(k, *v),
                None => del(k),
            }
        }
        use PhysWrite::*;
        Some(match *w {
            EndpointUpsert(k, _) | EndpointDelete(k) => {
                back(&self.endpoints, k, EndpointUpsert, EndpointDelete)
            }
            IpUpsert(k, _) | IpDelete(k) => back(&self.ip_identity, k, IpUpsert, IpDelete),
            CidrUpsert(k, _) | CidrDelete(k) => {
                back(&self.cidr_identity, k, CidrUpsert, CidrDelete)
            }
            PolicyUpsert(k, _) | PolicyDelete(k) => {
                back(&self.policy, k, PolicyUpsert, PolicyDelete)
            }
            ServiceUpsert(k, _) | ServiceDelete(k) => {
                back(&self.service_ips, k, ServiceUpsert, ServiceDelete)
            }
            BackendUpsert(k, _) | BackendDelete(k) => {
                back(&self.service_backends, k, BackendUpsert, BackendDelete)
            }
            Flip(_) => return None,
        })
    }

    /// The writes that take the maps from what they hold to `new` (see [`PhysState`]).
    pub fn transition(&self, new: &MapState) -> Transition {
        let g = (self.generation & 1) as usize;
        let n = 1 - g;
        let old = self.logical();
        let mut t = Transition {
            flip_to: n as u8,
            ..Transition::default()
        };

        // (1) Prepare: entries the new generation needs, with both generations' values.
        for (k, v) in &new.policy {
            if self.policy.get(k) != Some(v) {
                t.prepare.push(PhysWrite::PolicyUpsert(*k, *v));
            }
        }
        // Backends before the Service identities that make deferrals (a superset while both
        // generations live; a deferral only ever checks membership).
        for (k, v) in &new.service_backends {
            if self.service_backends.get(k) != Some(v) {
                t.prepare.push(PhysWrite::BackendUpsert(*k, *v));
            }
        }
        for (k, v) in &new.service_ips {
            if self.service_ips.get(k) != Some(v) {
                t.prepare.push(PhysWrite::ServiceUpsert(*k, *v));
            }
        }
        let ep_keys: std::collections::BTreeSet<u32> = self
            .endpoints
            .keys()
            .chain(new.endpoints.keys())
            .copied()
            .collect();
        for k in &ep_keys {
            let mut slots = [ABSENT_SLOT; 2];
            slots[g] = old.endpoints.get(k).map(slot_of).unwrap_or(ABSENT_SLOT);
            slots[n] = new.endpoints.get(k).map(slot_of).unwrap_or(ABSENT_SLOT);
            let endpoint_id = new
                .endpoints
                .get(k)
                .or(old.endpoints.get(k))
                .map(|e| e.endpoint_id)
                .or(self.endpoints.get(k).map(|e| e.endpoint_id))
                .unwrap_or(0);
            let want = EndpointValue { endpoint_id, slots };
            if self.endpoints.get(k) != Some(&want) {
                t.prepare.push(PhysWrite::EndpointUpsert(*k, want));
            }
        }
        let ip_keys: std::collections::BTreeSet<IpAddrKey> = self
            .ip_identity
            .keys()
            .chain(new.ip_identity.keys())
            .copied()
            .collect();
        for k in &ip_keys {
            let mut identity = [0; 2];
            identity[g] = old.ip_identity.get(k).map(|v| v.identity).unwrap_or(0);
            identity[n] = new.ip_identity.get(k).map(|v| v.identity).unwrap_or(0);
            // The owning endpoint moves with the generation too: before the flip the old owner
            // may send from the address, from the flip on only the new one.
            let mut endpoint_id = [0; 2];
            endpoint_id[g] = old.ip_identity.get(k).map(|v| v.endpoint_id).unwrap_or(0);
            endpoint_id[n] = new.ip_identity.get(k).map(|v| v.endpoint_id).unwrap_or(0);
            let want = IdentitySlots {
                identity,
                endpoint_id,
            };
            if self.ip_identity.get(k) != Some(&want) {
                t.prepare.push(PhysWrite::IpUpsert(*k, want));
            }
        }
        let cidr_keys: std::collections::BTreeSet<Lpm<IpAddrKey>> = self
            .cidr_identity
            .keys()
            .chain(new.cidr_identity.keys())
            .copied()
            .collect();
        for k in &cidr_keys {
            let mut identity = [0; 2];
            identity[g] = resolve(&old.cidr_identity, k);
            identity[n] = resolve(&new.cidr_identity, k);
            let want = IdentitySlots {
                identity,
                endpoint_id: [0; 2],
            };
            if self.cidr_identity.get(k) != Some(&want) {
                t.prepare.push(PhysWrite::CidrUpsert(*k, want));
            }
        }

        // (3) Clean up, once the new generation is current: one value in both slots, and
        // nothing the new state lacks.
        let mut after = self.clone();
        for w in &t.prepare {
            after.apply(w);
        }
        for (k, v) in &after.endpoints {
            match new.endpoints.get(k) {
                Some(e) => {
                    let want = EndpointValue {
                        endpoint_id: e.endpoint_id,
                        slots: [slot_of(e); 2],
                    };
                    if *v != want {
                        t.cleanup.push(PhysWrite::EndpointUpsert(*k, want));
                    }
                }
                None => t.cleanup.push(PhysWrite::EndpointDelete(*k)),
            }
        }
        for (k, v) in &after.ip_identity {
            match new.ip_identity.get(k) {
                Some(e) => {
                    let want = IdentitySlots {
                        identity: [e.identity; 2],
                        endpoint_id: [e.endpoint_id; 2],
                    };
                    if *v != want {
                        t.cleanup.push(PhysWrite::IpUpsert(*k, want));
                    }
                }
                None => t.cleanup.push(PhysWrite::IpDelete(*k)),
            }
        }
        for (k, v) in &after.cidr_identity {
            match new.cidr_identity.get(k) {
                Some(e) => {
                    let want = IdentitySlots {
                        identity: [e.identity; 2],
                        endpoint_id: [0; 2],
                    };
                    if *v != want {
                        t.cleanup.push(PhysWrite::CidrUpsert(*k, want));
                    }
                }
                None => t.cleanup.push(PhysWrite::CidrDelete(*k)),
            }
        }
        for k in after.policy.keys() {
            if !new.policy.contains_key(k) {
                t.cleanup.push(PhysWrite::PolicyDelete(*k));
            }
        }
        for k in after.service_ips.keys() {
            if !new.service_ips.contains_key(k) {
                t.cleanup.push(PhysWrite::ServiceDelete(*k));
            }
        }
        for k in after.service_backends.keys() {
            if !new.service_backends.contains_key(k) {
                t.cleanup.push(PhysWrite::BackendDelete(*k));
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: u32, set: u32) -> EndpointInfo {
        EndpointInfo {
            endpoint_id: id,
            policy_set: set,
            ingress_mode: 2,
            egress_mode: 1,
            tiers: 0,
            tier_set: 0,
            baseline_set: 0,
        }
    }

    #[test]
    fn diff_is_minimal_and_applies() {
        let mut a = MapState::default();
        a.endpoints.insert(10, ep(1, 1));
        a.endpoints.insert(11, ep(2, 2));
        let mut b = MapState::default();
        b.endpoints.insert(10, ep(1, 1));
        b.endpoints.insert(12, ep(3, 3));
        let d = a.diff(&b);
        assert_eq!(d.endpoints.upserts, vec![(12, ep(3, 3))]);
        assert_eq!(d.endpoints.deletes, vec![11]);
        assert_eq!(d.len(), 2);
        let mut c = a.clone();
        c.apply(&d);
        assert_eq!(c, b);
        assert!(b.diff(&b).is_empty());
    }
}

#[cfg(test)]
mod phys_tests {
    use super::*;

    fn cidr(net: &str, id: u32) -> (Lpm<IpAddrKey>, IdentityValue) {
        (
            crate::compiler::net_key(net.parse().unwrap()),
            IdentityValue {
                identity: id,
                endpoint_id: 0,
            },
        )
    }

    #[test]
    fn a_transition_reaches_the_new_state_and_collapses() {
        let mut old = MapState::default();
        old.cidr_identity.extend([cidr("10.0.0.0/8", 100)]);
        let mut new = MapState::default();
        new.cidr_identity
            .extend([cidr("10.0.0.0/8", 100), cidr("10.1.0.0/16", 101)]);
        let mut phys = PhysState::default();
        for w in phys.transition(&old).writes() {
            phys.apply(&w);
        }
        assert_eq!(phys.logical(), old);
        let t = phys.transition(&new);
        // The new prefix is prepared with the old answer in the current slot.
        let k = crate::compiler::net_key("10.1.0.0/16".parse().unwrap());
        let mut identity = [0; 2];
        identity[phys.generation as usize] = 100;
        identity[1 - phys.generation as usize] = 101;
        assert!(t.prepare.contains(&PhysWrite::CidrUpsert(
            k,
            IdentitySlots {
                identity,
                endpoint_id: [0; 2],
            }
        )));
        for w in t.writes() {
            phys.apply(&w);
        }
        assert_eq!(phys.logical(), new);
        assert!(
            phys.cidr_identity
                .values()
                .all(|v| v.identity[0] == v.identity[1])
        );
        assert!(
            phys.transition(&new).prepare.is_empty(),
            "nothing left to do"
        );
    }

    #[test]
    fn an_address_changes_owner_at_the_flip() {
        let ip = crate::compiler::ip_key("10.0.0.5".parse().unwrap());
        let owned_by = |endpoint_id| {
            let mut m = MapState::default();
            m.ip_identity.insert(
                ip,
                IdentityValue {
                    identity: 300,
                    endpoint_id,
                },
            );
            m
        };
        let mut phys = PhysState::default();
        for w in phys.transition(&owned_by(1)).writes() {
            phys.apply(&w);
        }
        let t = phys.transition(&owned_by(2));
        for w in &t.prepare {
            phys.apply(w);
            // Before the flip the current generation still names the old owner.
            assert_eq!(phys.view(phys.generation).ip_identity[&ip].endpoint_id, 1);
        }
        phys.apply(&PhysWrite::Flip(t.flip_to));
        assert_eq!(phys.view(phys.generation).ip_identity[&ip].endpoint_id, 2);
        for w in &t.cleanup {
            phys.apply(w);
        }
        assert_eq!(phys.ip_identity[&ip].endpoint_id, [2, 2]);
    }
}
