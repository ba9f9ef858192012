//! The datapath's new-flow decision, evaluated over a [`MapState`] in userspace.
//!
//! This mirrors, lookup for lookup, what `enforcer-ebpf` does for a packet that misses
//! conntrack. It serves `explain` (live, from dumped maps) and the tests that prove the compiled
//! maps agree with the reference evaluator.

use std::net::IpAddr;

use std::collections::BTreeMap;

use enforcer_common::{
    IdentityValue, IpAddrKey, POLICY_ACTION_ALLOW, POLICY_ACTION_DEFER, POLICY_ACTION_DENY,
    POLICY_ACTION_UNBOUND, PolicyKey, PolicyValue, direction, identity, mode, policy_prefix,
    reason,
};

use crate::compiler::ip_key;
use crate::state::{Lpm, MapState};

/// What the datapath decides for the first packet of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `enforcer_common::reason::*`.
    pub reason: u8,
    /// The entry that decided, when one did.
    pub entry: Option<PolicyValue>,
    pub peer_identity: u32,
    pub peer_cidr_identity: u32,
    /// Egress to a Service port whose backends the policy partly allows: passed at the pod,
    /// judged on the backend after the DNAT (`allowed` says only that it passes the pod).
    pub deferred: bool,
}

/// Longest-prefix match of an address in the CIDR trie.
pub fn cidr_lookup(state: &MapState, addr: IpAddrKey) -> Option<IdentityValue> {
    cidr_lookup_in(&state.cidr_identity, addr)
}

/// [`cidr_lookup`] over a CIDR map.
pub fn cidr_lookup_in(
    cidr_identity: &BTreeMap<Lpm<IpAddrKey>, IdentityValue>,
    addr: IpAddrKey,
) -> Option<IdentityValue> {
    for len in (0..=128u32).rev() {
        let mut masked = addr;
        for (i, b) in masked.addr.iter_mut().enumerate() {
            let bit0 = (i as u32) * 8;
            if bit0 >= len {
                *b = 0;
            } else if bit0 + 8 > len {
                *b &= 0xffu8 << (8 - (len - bit0));
            }
        }
        if let Some(v) = cidr_identity.get(&Lpm {
            prefix_len: len,
            data: masked,
        }) {
            return Some(*v);
        }
    }
    None
}

/// Longest-prefix match of a policy key (only the prefix lengths the compiler writes).
pub fn policy_lookup(state: &MapState, key: PolicyKey) -> Option<PolicyValue> {
    policy_lookup_in(&state.policy, key)
}

/// [`policy_lookup`] over a policy map.
pub fn policy_lookup_in(
    policy: &BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    key: PolicyKey,
) -> Option<PolicyValue> {
    let port = u16::from_be(key.port_be);
    for bits in (0..=16u32).rev() {
        let mask: u16 = if bits == 0 {
            0
        } else {
            u16::MAX << (16 - bits)
        };
        let k = Lpm {
            prefix_len: policy_prefix::port_prefix(bits),
            data: PolicyKey {
                port_be: (port & mask).to_be(),
                ..key
            },
        };
        if let Some(v) = policy.get(&k) {
            return Some(*v);
        }
    }
    policy
        .get(&Lpm {
            prefix_len: policy_prefix::ANY_PROTO,
            data: PolicyKey {
                proto: 0,
                port_be: 0,
                ..key
            },
        })
        .copied()
}

/// Where a packet into an endpoint entered the node, which decides whether a peer address of
/// the node's own counts as the node (the datapath reads `skb_iif`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Sent by its source: a node address is the node (HOST). Also a pod's own packet back to
    /// itself through a Service, masqueraded to a node address (hairpin).
    FromSource,
    /// Entered through another interface (another pod's, the network): a node address in its
    /// source is forged or masqueraded, and is judged as WORLD plus its CIDR identity.
    Forwarded,
}

/// The decision for a new flow at the endpoint on `ifindex`, in `dir`, with `peer` the remote
/// address, `proto` the IP protocol and `port` the destination port (0 for ICMP), for a packet
/// sent by the peer itself (`Arrival::FromSource`).
pub fn decide(
    state: &MapState,
    ifindex: u32,
    dir: u8,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> Decision {
    decide_from(state, ifindex, dir, peer, proto, port, Arrival::FromSource)
}

/// [`decide`] for a packet that arrived as `arrival` says.
pub fn decide_from(
    state: &MapState,
    ifindex: u32,
    dir: u8,
    peer: IpAddr,
    proto: u8,
    port: u16,
    arrival: Arrival,
) -> Decision {
    let mut d = Decision {
        allowed: true,
        reason: reason::ALLOWED_NOT_ISOLATED,
        entry: None,
        peer_identity: identity::WORLD,
        peer_cidr_identity: 0,
        deferred: false,
    };
    let Some(ep) = state.endpoints.get(&ifindex) else {
        return d;
    };
    let m = if dir == enforcer_common::direction::INGRESS {
        ep.ingress_mode
    } else {
        ep.egress_mode
    };
    let audit = m == mode::AUDIT;
    match m {
        mode::ENFORCE | mode::AUDIT => {}
        mode::DENY_ALL => {
            d.allowed = false;
            d.reason = ep.held_reason();
            return d;
        }
        _ => return d,
    }
    if dir == direction::EGRESS
        && let Some(service_id) = state.service_ips.get(&ip_key(peer))
    {
        return service_decision(state, ep.policy_set, *service_id, proto, port, audit);
    }
    // A node address in a packet that entered from elsewhere is forged or masqueraded.
    let host_ok = !(dir == direction::INGRESS && arrival == Arrival::Forwarded);
    let r = rule_lookup(
        &state.policy,
        &state.ip_identity,
        &state.cidr_identity,
        ep.policy_set,
        dir,
        peer,
        proto,
        port,
        host_ok,
    );
    d.peer_identity = r.peer_identity;
    d.peer_cidr_identity = r.peer_cidr_identity;
    if let Some((v, matched)) = r.entry {
        d.entry = Some(v);
        if v.action == POLICY_ACTION_DENY {
            d.allowed = false;
            d.reason = reason::DENY_RULE;
            return d;
        }
        d.allowed = true;
        d.reason = if matched == identity::HOST {
            reason::ALLOWED_HOST
        } else {
            reason::ALLOWED_BY_RULE
        };
        return d;
    }
    if audit {
        d.allowed = true;
        d.reason = reason::AUDIT_WOULD_DROP;
    } else {
        d.allowed = false;
        d.reason = reason::NO_RULE;
    }
    d
}

/// What the rule lookups of a new flow find (the datapath's precedence, see `PolicyKey`).
pub struct RuleLookup {
    pub peer_identity: u32,
    pub peer_cidr_identity: u32,
    /// The entry that decides (an allow or a deny), with the identity it was found under.
    pub entry: Option<(PolicyValue, u32)>,
}

/// The peer's identity, then its CIDR identity, then "any peer", in the entries of one
/// policy set (`policy_set` 0 for the compiler's unplaced entries). Without `host_ok` the
/// node's address counts as WORLD (see [`Arrival::Forwarded`]).
#[allow(clippy::too_many_arguments)]
pub fn rule_lookup(
    policy: &BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    ip_identity: &BTreeMap<IpAddrKey, IdentityValue>,
    cidr_identity: &BTreeMap<Lpm<IpAddrKey>, IdentityValue>,
    policy_set: u32,
    dir: u8,
    peer: IpAddr,
    proto: u8,
    port: u16,
    host_ok: bool,
) -> RuleLookup {
    let addr = ip_key(peer);
    let mut peer_identity = ip_identity
        .get(&addr)
        .map(|v| v.identity)
        .unwrap_or(identity::WORLD);
    if peer_identity == identity::HOST && !host_ok {
        peer_identity = identity::WORLD;
    }
    let peer_cidr_identity = cidr_lookup_in(cidr_identity, addr)
        .map(|v| v.identity)
        .unwrap_or(0);
    let mut ids = vec![peer_identity];
    if peer_cidr_identity != 0 {
        ids.push(peer_cidr_identity);
    }
    ids.push(identity::ANY);
    let mut entry = None;
    for id in ids {
        let key = PolicyKey {
            policy_set,
            identity: id,
            direction: dir,
            proto,
            port_be: port.to_be(),
        };
        if let Some(v) = policy_lookup_in(policy, key)
            && (v.action == POLICY_ACTION_ALLOW || v.action == POLICY_ACTION_DENY)
        {
            entry = Some((v, id));
            break;
        }
    }
    RuleLookup {
        peer_identity,
        peer_cidr_identity,
        entry,
    }
}

/// The Service lookup of a new flow to a Service address (`enforcer-ebpf` service.rs): the
/// one exact entry under the Service's identity.
fn service_decision(
    state: &MapState,
    policy_set: u32,
    service_id: u32,
    proto: u8,
    port: u16,
    audit: bool,
) -> Decision {
    let entry = state
        .policy
        .get(&Lpm {
            prefix_len: policy_prefix::FULL,
            data: PolicyKey {
                policy_set,
                identity: service_id,
                direction: direction::EGRESS,
                proto,
                port_be: port.to_be(),
            },
        })
        .copied();
    let mut d = Decision {
        allowed: false,
        reason: reason::NO_RULE,
        entry,
        peer_identity: service_id,
        peer_cidr_identity: 0,
        deferred: false,
    };
    match entry.map(|v| v.action) {
        Some(POLICY_ACTION_ALLOW) => {
            d.allowed = true;
            d.reason = reason::ALLOWED_BY_RULE;
        }
        Some(POLICY_ACTION_DEFER) => {
            d.allowed = true;
            d.reason = reason::ALLOWED_BY_RULE;
            d.deferred = true;
        }
        Some(POLICY_ACTION_UNBOUND) => d.reason = reason::SERVICE_UNBOUND,
        Some(POLICY_ACTION_DENY) => d.reason = reason::DENY_RULE,
        _ => {}
    }
    if audit && !d.allowed && d.reason != reason::DENY_RULE {
        d.allowed = true;
        d.reason = reason::AUDIT_WOULD_DROP;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_common::{EndpointInfo, direction};

    #[test]
    fn the_nodes_address_is_the_node_only_when_the_node_sent_it() {
        let mut st = MapState::default();
        st.endpoints.insert(
            5,
            EndpointInfo {
                endpoint_id: 1,
                policy_set: 2,
                ingress_mode: mode::ENFORCE,
                egress_mode: mode::ENFORCE,
            },
        );
        let node: IpAddr = "10.0.0.1".parse().unwrap();
        st.ip_identity.insert(
            ip_key(node),
            IdentityValue {
                identity: identity::HOST,
                endpoint_id: 0,
            },
        );
        let host_rule = Lpm {
            prefix_len: policy_prefix::ANY_PROTO,
            data: PolicyKey {
                policy_set: 2,
                identity: identity::HOST,
                direction: direction::INGRESS,
                proto: 0,
                port_be: 0,
            },
        };
        st.policy.insert(
            host_rule,
            PolicyValue {
                policy_id: 1,
                rule_index: 0,
                action: POLICY_ACTION_ALLOW,
                flags: 0,
            },
        );
        let sent = decide_from(&st, 5, direction::INGRESS, node, 6, 80, Arrival::FromSource);
        assert!(sent.allowed);
        assert_eq!(sent.reason, reason::ALLOWED_HOST);
        let forged = decide_from(&st, 5, direction::INGRESS, node, 6, 80, Arrival::Forwarded);
        assert!(!forged.allowed);
        assert_eq!(forged.reason, reason::NO_RULE);
        assert_eq!(forged.peer_identity, identity::WORLD);
    }
}
