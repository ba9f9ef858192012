//! Which interface is a pod's: the pod-to-interface binding, from state a pod cannot move.
//!
//! A pod is bound to the host-side interface whose peer (the pod's end of the veth pair, in the
//! pod's network namespace) holds one of the pod's addresses ([`crate::peers`]). Nothing else
//! decides: host routes, neighbour entries and bridge forwarding databases only make the agent
//! look again sooner. A pod forges the last two with one gratuitous ARP or unsolicited neighbour
//! advertisement, and a route can be stale; neither can move a binding.
//!
//! What a pod can still do with `NET_ADMIN` in its own namespace is configure someone else's
//! address on its interface. Then the evidence is ambiguous, and the binding refuses to guess:
//! pods and interfaces linked by shared addresses form a group; a group of exactly one pod and
//! one interface is a binding, anything larger is a [`Conflict`]: all its interfaces are held
//! fail-closed and its pods are bound nowhere, until the addresses are unambiguous again. No
//! order (ids, names, age) picks a winner.
//!
//! A pod with `NET_ADMIN` could also remove its own address to leave its interface unbound (and
//! so unmanaged, without `--default-deny-unknown`). So a binding, once made, stays while its
//! pod and its interface exist and nothing points elsewhere: a pod whose addresses are behind no
//! interface keeps its previous one, unless that interface is now bound to another pod or in a
//! conflict.
//!
//! Pure: [`bind`] reads the pods' addresses, the peers' addresses and the previous bindings,
//! nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::model::ObjectRef;

/// Pods and interfaces whose addresses overlap in a way that names no single owner: two pods'
/// addresses behind one interface, or one pod's addresses behind two interfaces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// The pods involved (every pod with an address behind one of `ifindexes`).
    pub pods: Vec<ObjectRef>,
    /// The host-side interfaces involved: all held fail-closed.
    pub ifindexes: Vec<u32>,
    /// The addresses that link them: which interface's peer holds which pod address.
    pub evidence: Vec<(u32, IpAddr, ObjectRef)>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pods: Vec<String> = self.pods.iter().map(|p| p.to_string()).collect();
        write!(
            f,
            "pods {} share interfaces {:?}:",
            pods.join(", "),
            self.ifindexes
        )?;
        for (ifindex, ip, pod) in &self.evidence {
            write!(f, " {pod}'s {ip} is behind ifindex {ifindex};")?;
        }
        Ok(())
    }
}

/// What [`bind`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    /// Pod → its host-side interface (unambiguous bindings only).
    pub interfaces: BTreeMap<ObjectRef, u32>,
    /// Ambiguous groups, sorted.
    pub conflicts: Vec<Conflict>,
}

impl Bound {
    /// Every interface held because of a conflict.
    pub fn conflicted(&self) -> BTreeSet<u32> {
        self.conflicts
            .iter()
            .flat_map(|c| c.ifindexes.iter().copied())
            .collect()
    }
}

/// Binds pods to interfaces. `peers`: host-side pod interface (ifindex) → the addresses its
/// peer holds (only interfaces that look like a pod's belong here). A pod none of whose
/// addresses any peer holds keeps its interface in `previous` (the last pass's bindings) if that
/// is still a pod interface and nothing else claims it; else it is left out (not configured
/// yet, or not on this node).
pub fn bind<'a>(
    pods: impl IntoIterator<Item = (ObjectRef, &'a [IpAddr])>,
    peers: &BTreeMap<u32, Vec<IpAddr>>,
    previous: &BTreeMap<ObjectRef, u32>,
) -> Bound {
    let mut behind: BTreeMap<IpAddr, Vec<u32>> = BTreeMap::new();
    for (ifindex, ips) in peers {
        for ip in ips {
            behind.entry(*ip).or_default().push(*ifindex);
        }
    }
    // Edges pod — interface, with the address that makes each.
    let mut pod_edges: BTreeMap<ObjectRef, BTreeSet<u32>> = BTreeMap::new();
    let mut if_edges: BTreeMap<u32, BTreeSet<ObjectRef>> = BTreeMap::new();
    let mut evidence: Vec<(u32, IpAddr, ObjectRef)> = Vec::new();
    let mut quiet = Vec::new();
    for (pod, ips) in pods {
        if !ips.iter().any(|ip| behind.contains_key(ip)) {
            quiet.push(pod);
            continue;
        }
        for ip in ips {
            for ifindex in behind.get(ip).into_iter().flatten() {
                pod_edges.entry(pod.clone()).or_default().insert(*ifindex);
                if_edges.entry(*ifindex).or_default().insert(pod.clone());
                evidence.push((*ifindex, *ip, pod.clone()));
            }
        }
    }

    let mut out = Bound::default();
    let mut seen: BTreeSet<ObjectRef> = BTreeSet::new();
    for start in pod_edges.keys() {
        if seen.contains(start) {
            continue;
        }
        // The group of `start`: everything reachable over shared addresses.
        let (mut group_pods, mut group_ifs) = (BTreeSet::new(), BTreeSet::new());
        let mut todo = vec![start.clone()];
        while let Some(pod) = todo.pop() {
            if !group_pods.insert(pod.clone()) {
                continue;
            }
            for ifindex in &pod_edges[&pod] {
                if group_ifs.insert(*ifindex) {
                    todo.extend(if_edges[ifindex].iter().cloned());
                }
            }
        }
        seen.extend(group_pods.iter().cloned());
        if let ([pod], [ifindex]) = (
            &group_pods.iter().collect::<Vec<_>>()[..],
            &group_ifs.iter().collect::<Vec<_>>()[..],
        ) {
            out.interfaces.insert((*pod).clone(), **ifindex);
            continue;
        }
        let mut ev: Vec<(u32, IpAddr, ObjectRef)> = evidence
            .iter()
            .filter(|(i, _, _)| group_ifs.contains(i))
            .cloned()
            .collect();
        ev.sort();
        ev.dedup();
        out.conflicts.push(Conflict {
            pods: group_pods.into_iter().collect(),
            ifindexes: group_ifs.into_iter().collect(),
            evidence: ev,
        });
    }
    out.conflicts.sort();

    // Pods with no evidence keep their previous interface while it is theirs alone.
    let taken: BTreeSet<u32> = out
        .interfaces
        .values()
        .copied()
        .chain(out.conflicted())
        .collect();
    for pod in quiet {
        if let Some(ifindex) = previous.get(&pod)
            && peers.contains_key(ifindex)
            && !taken.contains(ifindex)
            && !out.interfaces.values().any(|i| i == ifindex)
        {
            out.interfaces.insert(pod, *ifindex);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod(name: &str) -> ObjectRef {
        ObjectRef::new("ns", name)
    }

    fn run(pods: &[(&str, Vec<IpAddr>)], peers: &[(u32, Vec<IpAddr>)]) -> Bound {
        let peers: BTreeMap<u32, Vec<IpAddr>> = peers.iter().cloned().collect();
        bind(
            pods.iter().map(|(n, ips)| (pod(n), ips.as_slice())),
            &peers,
            &BTreeMap::new(),
        )
    }

    #[test]
    fn each_pod_is_bound_to_the_interface_whose_peer_holds_its_address() {
        let b = run(
            &[
                ("a", vec![ip("10.42.0.10"), ip("fd42::10")]),
                ("b", vec![ip("10.42.0.11")]),
                ("v6only", vec![ip("10.42.0.12"), ip("fd42::12")]),
                ("absent", vec![ip("10.42.0.77")]),
            ],
            &[
                (3, vec![ip("10.42.0.10"), ip("fd42::10")]),
                (4, vec![ip("10.42.0.11")]),
                // Dual-stack pod whose IPv4 address is not configured yet: bound by the other.
                (5, vec![ip("fd42::12")]),
                // A pod-like interface whose peer holds no known pod's address.
                (6, vec![ip("10.42.0.99")]),
                (7, vec![]),
            ],
        );
        assert_eq!(
            b.interfaces,
            [(pod("a"), 3), (pod("b"), 4), (pod("v6only"), 5)].into()
        );
        assert!(b.conflicts.is_empty());
    }

    #[test]
    fn a_pod_holding_another_pods_address_conflicts_with_it() {
        let b = run(
            &[
                ("victim", vec![ip("10.42.0.10")]),
                ("attacker", vec![ip("10.42.0.11")]),
                ("bystander", vec![ip("10.42.0.12")]),
            ],
            &[
                (3, vec![ip("10.42.0.10")]),
                (4, vec![ip("10.42.0.11"), ip("10.42.0.10")]),
                (5, vec![ip("10.42.0.12")]),
            ],
        );
        assert_eq!(b.interfaces, [(pod("bystander"), 5)].into());
        assert_eq!(b.conflicts.len(), 1);
        let c = &b.conflicts[0];
        assert_eq!(c.pods, vec![pod("attacker"), pod("victim")]);
        assert_eq!(c.ifindexes, vec![3, 4]);
        assert_eq!(b.conflicted(), [3, 4].into());
        let text = c.to_string();
        assert!(
            text.contains("ns/victim") && text.contains("ns/attacker"),
            "{text}"
        );
    }

    #[test]
    fn two_pods_on_one_interface_conflict_whatever_their_order() {
        let peers = [(4, vec![ip("10.42.0.10"), ip("10.42.0.11")])];
        let one = run(
            &[("a", vec![ip("10.42.0.10")]), ("b", vec![ip("10.42.0.11")])],
            &peers,
        );
        let other = run(
            &[("b", vec![ip("10.42.0.11")]), ("a", vec![ip("10.42.0.10")])],
            &peers,
        );
        assert_eq!(one, other);
        assert!(one.interfaces.is_empty());
        assert_eq!(one.conflicts[0].pods, vec![pod("a"), pod("b")]);
        assert_eq!(one.conflicts[0].ifindexes, vec![4]);
    }

    #[test]
    fn one_pods_address_behind_two_interfaces_holds_both() {
        let b = run(
            &[("a", vec![ip("10.42.0.10")])],
            &[(3, vec![ip("10.42.0.10")]), (4, vec![ip("10.42.0.10")])],
        );
        assert!(b.interfaces.is_empty());
        assert_eq!(b.conflicted(), [3, 4].into());
    }

    #[test]
    fn conflicts_chain_through_shared_addresses() {
        // a on 3; b on 4 also holds a's address; c on 5 also holds b's: one group.
        let b = run(
            &[
                ("a", vec![ip("10.0.0.1")]),
                ("b", vec![ip("10.0.0.2")]),
                ("c", vec![ip("10.0.0.3")]),
            ],
            &[
                (3, vec![ip("10.0.0.1")]),
                (4, vec![ip("10.0.0.2"), ip("10.0.0.1")]),
                (5, vec![ip("10.0.0.3"), ip("10.0.0.2")]),
            ],
        );
        assert!(b.interfaces.is_empty());
        assert_eq!(b.conflicts.len(), 1);
        assert_eq!(b.conflicts[0].ifindexes, vec![3, 4, 5]);
    }

    #[test]
    fn a_pod_removing_its_own_address_keeps_its_binding_while_nothing_else_claims_it() {
        let pods = [
            (pod("a"), vec![ip("10.0.0.1")]),
            (pod("b"), vec![ip("10.0.0.2")]),
            (pod("c"), vec![ip("10.0.0.3")]),
            (pod("gone"), vec![ip("10.0.0.4")]),
        ];
        let previous: BTreeMap<ObjectRef, u32> = [
            (pod("a"), 3),
            (pod("b"), 4),
            (pod("c"), 5),
            (pod("gone"), 9),
        ]
        .into();
        // a's peer holds nothing now (a removed its address); 4, b's, now holds d's address;
        // 5, c's, holds e's, and c's address is behind 6; 9 is gone.
        let peers: BTreeMap<u32, Vec<IpAddr>> = [
            (3, vec![]),
            (4, vec![ip("10.0.0.5")]),
            (5, vec![ip("10.0.0.6")]),
            (6, vec![ip("10.0.0.3")]),
        ]
        .into();
        let with_d = [
            pods.to_vec(),
            vec![
                (pod("d"), vec![ip("10.0.0.5")]),
                (pod("e"), vec![ip("10.0.0.6")]),
            ],
        ]
        .concat();
        let b = bind(
            with_d.iter().map(|(p, ips)| (p.clone(), ips.as_slice())),
            &peers,
            &previous,
        );
        // a keeps 3 (nothing else there); b's 4 is d's now; c is found on 6 by its address;
        // 5 is e's; gone's interface is gone.
        assert_eq!(
            b.interfaces,
            [(pod("a"), 3), (pod("c"), 6), (pod("d"), 4), (pod("e"), 5)].into()
        );
        // A previous interface in a conflict is not kept either.
        let peers: BTreeMap<u32, Vec<IpAddr>> =
            [(3, vec![ip("10.0.0.2")]), (4, vec![ip("10.0.0.2")])].into();
        let b = bind(
            pods.iter().map(|(p, ips)| (p.clone(), ips.as_slice())),
            &peers,
            &previous,
        );
        assert!(b.interfaces.is_empty(), "{b:?}");
        assert_eq!(b.conflicted(), [3, 4].into());
    }
}
