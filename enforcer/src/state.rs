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
    /// Service (ClusterIP) addresses.
    pub service_ips: BTreeMap<IpAddrKey, u32>,
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
/// 1. `policy` upserts: new sets, and entries for identities no packet carries yet;
/// 2. `endpoints` upserts and deletes: the atomic flip of each endpoint's modes and
///    `policy_set` (a new set also holds entries for the identities about to go away, so it is
///    right both before and after step 3);
/// 3. `ip_identity` and `cidr_identity` upserts (an address changes identity in one write);
/// 4. `ip_identity` and `cidr_identity` deletes;
/// 5. `policy` deletes (old sets, entries of identities no packet carries any more).
///
/// `service_ips` upserts go first and its deletes last: an address in that map only defers a
/// verdict to after the DNAT, which is right whenever kube-proxy translates the address.
///
/// [`MapDiff::steps`] gives the writes in this order; the kernel edge and the tests use it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    pub endpoints: MapChanges<u32, EndpointInfo>,
    pub ip_identity: MapChanges<IpAddrKey, IdentityValue>,
    pub cidr_identity: MapChanges<Lpm<IpAddrKey>, IdentityValue>,
    pub policy: MapChanges<Lpm<PolicyKey>, PolicyValue>,
    pub service_ips: MapChanges<IpAddrKey, u32>,
}

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write<'a> {
    PolicyUpsert(&'a Lpm<PolicyKey>, &'a PolicyValue),
    PolicyDelete(&'a Lpm<PolicyKey>),
    EndpointUpsert(u32, &'a EndpointInfo),
    EndpointDelete(u32),
    IpUpsert(&'a IpAddrKey, &'a IdentityValue),
    IpDelete(&'a IpAddrKey),
    CidrUpsert(&'a Lpm<IpAddrKey>, &'a IdentityValue),
    CidrDelete(&'a Lpm<IpAddrKey>),
    ServiceUpsert(&'a IpAddrKey, &'a u32),
    ServiceDelete(&'a IpAddrKey),
}

impl MapDiff {
    /// Every write of the diff, in the documented apply order.
    pub fn steps(&self) -> Vec<Write<'_>> {
        let mut w = Vec::with_capacity(self.len());
        w.extend(
            self.service_ips
                .upserts
                .iter()
                .map(|(k, v)| Write::ServiceUpsert(k, v)),
        );
        w.extend(
            self.policy
                .upserts
                .iter()
                .map(|(k, v)| Write::PolicyUpsert(k, v)),
        );
        w.extend(
            self.endpoints
                .deletes
                .iter()
                .map(|k| Write::EndpointDelete(*k)),
        );
        w.extend(
            self.endpoints
                .upserts
                .iter()
                .map(|(k, v)| Write::EndpointUpsert(*k, v)),
        );
        w.extend(
            self.ip_identity
                .upserts
                .iter()
                .map(|(k, v)| Write::IpUpsert(k, v)),
        );
        w.extend(
            self.cidr_identity
                .upserts
                .iter()
                .map(|(k, v)| Write::CidrUpsert(k, v)),
        );
        w.extend(self.ip_identity.deletes.iter().map(Write::IpDelete));
        w.extend(self.cidr_identity.deletes.iter().map(Write::CidrDelete));
        w.extend(self.policy.deletes.iter().map(Write::PolicyDelete));
        w.extend(self.service_ips.deletes.iter().map(Write::ServiceDelete));
        w
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.ip_identity.is_empty()
            && self.cidr_identity.is_empty()
            && self.policy.is_empty()
            && self.service_ips.is_empty()
    }

    /// Number of map writes (upserts + deletes).
    pub fn len(&self) -> usize {
        self.endpoints.len()
            + self.ip_identity.len()
            + self.cidr_identity.len()
            + self.policy.len()
            + self.service_ips.len()
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
    /// Applies one write in memory.
    pub fn apply_write(&mut self, w: Write<'_>) {
        match w {
            Write::PolicyUpsert(k, v) => {
                self.policy.insert(*k, *v);
            }
            Write::PolicyDelete(k) => {
                self.policy.remove(k);
            }
            Write::EndpointUpsert(k, v) => {
                self.endpoints.insert(k, *v);
            }
            Write::EndpointDelete(k) => {
                self.endpoints.remove(&k);
            }
            Write::IpUpsert(k, v) => {
                self.ip_identity.insert(*k, *v);
            }
            Write::IpDelete(k) => {
                self.ip_identity.remove(k);
            }
            Write::CidrUpsert(k, v) => {
                self.cidr_identity.insert(*k, *v);
            }
            Write::CidrDelete(k) => {
                self.cidr_identity.remove(k);
            }
            Write::ServiceUpsert(k, v) => {
                self.service_ips.insert(*k, *v);
            }
            Write::ServiceDelete(k) => {
                self.service_ips.remove(k);
            }
        }
    }

    /// The writes that turn `self` (what is installed) into `desired`.
    pub fn diff(&self, desired: &MapState) -> MapDiff {
        MapDiff {
            endpoints: diff_map(&self.endpoints, &desired.endpoints),
            ip_identity: diff_map(&self.ip_identity, &desired.ip_identity),
            cidr_identity: diff_map(&self.cidr_identity, &desired.cidr_identity),
            policy: diff_map(&self.policy, &desired.policy),
            service_ips: diff_map(&self.service_ips, &desired.service_ips),
        }
    }

    /// Applies a diff in memory (what the kernel holds after a successful install).
    pub fn apply(&mut self, diff: &MapDiff) {
        for w in diff.steps() {
            self.apply_write(w);
        }
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
