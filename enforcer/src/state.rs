//! The desired content of the datapath maps, and the minimal diff between two of them.
//!
//! This is the boundary between the pure policy compiler (which produces a [`MapState`]) and the
//! kernel edge (which installs a [`MapDiff`] with [`crate::bpf`]). Nothing here touches a kernel.

use std::collections::BTreeMap;

use enforcer_common::{EndpointInfo, IdentityValue, IpAddrKey, PolicyKey, PolicyValue};

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

/// The minimal set of map writes that turns one [`MapState`] into another.
///
/// Apply order (so that no packet sees a mix of old and new policy for one endpoint):
/// 1. upserts of `ip_identity`, `cidr_identity` and `policy` (new entries are only reachable
///    through a `policy_set` or identity that is not live yet, or add allows that the new state
///    has anyway);
/// 2. `endpoints` deletes and upserts: the atomic flip of each endpoint's mode and `policy_set`;
/// 3. deletes of `policy`, `cidr_identity` and `ip_identity`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    pub endpoints: MapChanges<u32, EndpointInfo>,
    pub ip_identity: MapChanges<IpAddrKey, IdentityValue>,
    pub cidr_identity: MapChanges<Lpm<IpAddrKey>, IdentityValue>,
    pub policy: MapChanges<Lpm<PolicyKey>, PolicyValue>,
}

impl MapDiff {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.ip_identity.is_empty()
            && self.cidr_identity.is_empty()
            && self.policy.is_empty()
    }

    /// Number of map writes (upserts + deletes).
    pub fn len(&self) -> usize {
        self.endpoints.len() + self.ip_identity.len() + self.cidr_identity.len() + self.policy.len()
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
        }
    }

    /// Applies a diff in memory (what the kernel holds after a successful install).
    pub fn apply(&mut self, diff: &MapDiff) {
        fn apply_one<K: Ord + Clone, V: Clone>(m: &mut BTreeMap<K, V>, c: &MapChanges<K, V>) {
            for (k, v) in &c.upserts {
                m.insert(k.clone(), v.clone());
            }
            for k in &c.deletes {
                m.remove(k);
            }
        }
        apply_one(&mut self.endpoints, &diff.endpoints);
        apply_one(&mut self.ip_identity, &diff.ip_identity);
        apply_one(&mut self.cidr_identity, &diff.cidr_identity);
        apply_one(&mut self.policy, &diff.policy);
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
