//! The datapath's new-flow decision, evaluated over a [`MapState`] in userspace.
//!
//! This mirrors, lookup for lookup, what `enforcer-ebpf` does for a packet that misses
//! conntrack. It serves `explain` (live, from dumped maps) and the tests that prove the compiled
//! maps agree with the reference evaluator.

use std::net::IpAddr;

use std::collections::BTreeMap;

use enforcer_common::{
    EndpointInfo, IdentityValue, IpAddrKey, POLICY_ACTION_ALLOW, POLICY_ACTION_DEFER,
    POLICY_ACTION_DENY, POLICY_ACTION_PASS, POLICY_ACTION_UNBOUND, PolicyKey, PolicyValue,
    direction, identity, mode, policy_prefix, reason, tier,
};

use crate::compiler::ip_key;
use crate::state::{Lpm, MapState};

/// What the datapath decides for the first packet of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `enforcer_common::reason::*`.
    pub reason: u8,
    /// The entry that decided, when one did.
    pub entry: Option<PolicyValue>,
    /// The tier of that entry (`enforcer_common::tier::*`).
    pub tier: u8,
    /// The Pass rules that sent the flow on to a later tier, in order.
    pub passes: Vec<(u8, PolicyValue)>,
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
    /// Sent by its source: a node address is the node (HOST).
    FromSource,
    /// Entered through another interface (another pod's, the network): a node address in its
    /// source is forged or masqueraded, and is judged as WORLD plus its CIDR identity.
    Forwarded,
    /// The endpoint's own packet back through a Service, masqueraded to the node's address
    /// (the datapath knows it by the endpoint mark): the NetworkPolicy tier judges the address
    /// it arrives from as `FromSource` does, the ordered tiers judge the endpoint itself, at
    /// `own` (its address).
    Hairpin { own: IpAddr },
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
        tier: 0,
        passes: Vec::new(),
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
    if m == mode::DENY_ALL {
        d.allowed = false;
        d.reason = ep.held_reason();
        return d;
    }
    if !judged(ep, dir) {
        return d;
    }
    if dir == direction::EGRESS
        && let Some(service_id) = state.service_ips.get(&ip_key(peer))
    {
        return service_decision(
            state,
            ep.policy_set,
            *service_id,
            proto,
            port,
            m == mode::AUDIT,
        );
    }
    let arrival = if dir == direction::EGRESS {
        Arrival::FromSource
    } else {
        arrival
    };
    let view = PolicyView {
        policy: &state.policy,
        ip_identity: &state.ip_identity,
        cidr_identity: &state.cidr_identity,
    };
    let mut d = view.judge(ep, dir, peer, proto, port, arrival);
    if m == mode::AUDIT && !d.allowed && d.reason == reason::NO_RULE {
        d.allowed = true;
        d.reason = reason::AUDIT_WOULD_DROP;
    }
    d
}

/// Whether new flows of `ep` in `dir` are judged by policy (the datapath's `judged`).
pub fn judged(ep: &EndpointInfo, dir: u8) -> bool {
    let m = if dir == direction::INGRESS {
        ep.ingress_mode
    } else {
        ep.egress_mode
    };
    m == mode::ENFORCE || m == mode::AUDIT || (m == mode::ALLOW_ALL && ep.tiered(dir))
}

/// The maps the tiered decision reads.
pub struct PolicyView<'a> {
    pub policy: &'a BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    pub ip_identity: &'a BTreeMap<IpAddrKey, IdentityValue>,
    pub cidr_identity: &'a BTreeMap<Lpm<IpAddrKey>, IdentityValue>,
}

impl PolicyView<'_> {
    /// The identities an address is looked up under: its own (WORLD when it has none, or when
    /// it is the node's and `host_ok` is false) and its CIDR identity (0: none).
    fn identities_of(&self, addr: IpAddr, host_ok: bool) -> (u32, u32) {
        let addr = ip_key(addr);
        let mut id = self
            .ip_identity
            .get(&addr)
            .map(|v| v.identity)
            .unwrap_or(identity::WORLD);
        if id == identity::HOST && !host_ok {
            id = identity::WORLD;
        }
        let cidr = cidr_lookup_in(self.cidr_identity, addr)
            .map(|v| v.identity)
            .unwrap_or(0);
        (id, cidr)
    }

    /// The datapath's `decide` (enforcer-ebpf policy.rs), tier by tier, for an endpoint whose
    /// direction is judged; audit mode is the caller's. `arrival` says who the peer is (see
    /// [`Arrival`]).
    pub fn judge(
        &self,
        ep: &EndpointInfo,
        dir: u8,
        peer: IpAddr,
        proto: u8,
        port: u16,
        arrival: Arrival,
    ) -> Decision {
        let (peer_identity, peer_cidr_identity) =
            self.identities_of(peer, arrival != Arrival::Forwarded);
        // The ordered tiers' peer: the endpoint itself for its own packet back through a
        // Service.
        let (tier_identity, tier_cidr_identity) = match arrival {
            Arrival::Hairpin { own } => self.identities_of(own, true),
            _ => (peer_identity, peer_cidr_identity),
        };
        let mut d = Decision {
            allowed: false,
            reason: reason::NO_RULE,
            entry: None,
            tier: 0,
            passes: Vec::new(),
            peer_identity: tier_identity,
            peer_cidr_identity: tier_cidr_identity,
            deferred: false,
        };
        let lookup = |id: u32, t: u8| {
            let set = match t {
                tier::NETWORK_POLICY => ep.policy_set,
                tier::ADMIN => ep.tier_set,
                _ => ep.baseline_set,
            };
            policy_lookup_in(
                self.policy,
                PolicyKey::new(set, id, dir, t, proto, port.to_be()),
            )
            .filter(|v| {
                matches!(
                    v.action,
                    POLICY_ACTION_ALLOW | POLICY_ACTION_DENY | POLICY_ACTION_PASS
                )
            })
        };
        // The lookups of a tier, in order: identity, CIDR identity (if any), "any peer".
        let ids = |id: u32, cidr: u32| {
            let mut v = vec![id];
            if cidr != 0 {
                v.push(cidr);
            }
            v.push(identity::ANY);
            v
        };
        let ordered = |t: u8, d: &mut Decision| -> bool {
            let best = ids(tier_identity, tier_cidr_identity)
                .iter()
                .filter_map(|id| lookup(*id, t))
                .reduce(|a, b| if b.rank < a.rank { b } else { a });
            let Some(v) = best else {
                return false;
            };
            match v.action {
                POLICY_ACTION_ALLOW => {
                    d.allowed = true;
                    d.reason = reason::ALLOWED_BY_RULE;
                }
                POLICY_ACTION_DENY => d.reason = reason::DENY_RULE,
                _ => {
                    d.passes.push((t, v));
                    return false;
                }
            }
            d.entry = Some(v);
            d.tier = t;
            true
        };
        if ep.has_tier(dir, tier::ADMIN) && ordered(tier::ADMIN, &mut d) {
            return d;
        }
        let m = if dir == direction::INGRESS {
            ep.ingress_mode
        } else {
            ep.egress_mode
        };
        if m == mode::ENFORCE || m == mode::AUDIT {
            // The NetworkPolicy tier: allows only, the first hit in lookup order.
            d.peer_identity = peer_identity;
            d.peer_cidr_identity = peer_cidr_identity;
            if let Some((v, matched)) = ids(peer_identity, peer_cidr_identity)
                .iter()
                .find_map(|id| lookup(*id, tier::NETWORK_POLICY).map(|v| (v, *id)))
                .filter(|(v, _)| v.action == POLICY_ACTION_ALLOW)
            {
                d.entry = Some(v);
                d.tier = tier::NETWORK_POLICY;
                d.allowed = true;
                d.reason = if matched == identity::HOST {
                    reason::ALLOWED_HOST
                } else {
                    reason::ALLOWED_BY_RULE
                };
            }
            return d;
        }
        if ep.has_tier(dir, tier::BASELINE) && ordered(tier::BASELINE, &mut d) {
            return d;
        }
        d.allowed = true;
        d.reason = reason::ALLOWED_NOT_ISOLATED;
        d
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
            data: PolicyKey::new(
                policy_set,
                service_id,
                direction::EGRESS,
                tier::SERVICE,
                proto,
                port.to_be(),
            ),
        })
        .copied();
    let mut d = Decision {
        allowed: false,
        reason: reason::NO_RULE,
        entry,
        tier: tier::SERVICE,
        passes: Vec::new(),
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
                tiers: 0,
                tier_set: 0,
                baseline_set: 0,
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
            data: PolicyKey::new(
                2,
                identity::HOST,
                direction::INGRESS,
                enforcer_common::tier::NETWORK_POLICY,
                0,
                0,
            ),
        };
        st.policy.insert(
            host_rule,
            PolicyValue {
                policy_id: 1,
                rule_index: 0,
                action: POLICY_ACTION_ALLOW,
                flags: 0,
                rank: 0,
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
