//! The new-flow decision of an isolated direction.

use crate::{maps::*, parse::*};
use aya_ebpf::maps::lpm_trie::Key;
use enforcer_common::*;

#[inline(always)]
pub(crate) fn audit(why: &mut Why, ep_mode: u32) -> bool {
    if ep_mode == mode::AUDIT && !why.allowed && why.reason == reason::NO_RULE {
        why.allowed = true;
        why.reason = reason::AUDIT_WOULD_DROP;
        return true;
    }
    false
}

/// A verdict and what it rests on, for the event and the counters.
pub(crate) struct Why {
    pub(crate) allowed: bool,
    pub(crate) reason: u8,
    pub(crate) peer_identity: u32,
    pub(crate) peer_cidr_identity: u32,
    pub(crate) policy_id: u32,
    pub(crate) rule_index: u16,
    /// `tier::*` of the rule that decided.
    pub(crate) tier: u8,
}

impl Why {
    #[inline(always)]
    pub(crate) fn new(reason: u8) -> Self {
        Self {
            allowed: matches!(
                reason,
                reason::ALLOWED_BY_RULE | reason::ALLOWED_NOT_ISOLATED | reason::ALLOWED_HOST
            ),
            reason,
            peer_identity: 0,
            peer_cidr_identity: 0,
            policy_id: 0,
            rule_index: 0,
            tier: 0,
        }
    }
}

/// Whether new flows in `dir` are judged by policy: isolated by NetworkPolicy (or audit), or
/// holding rules of an ordered tier (a pod selected only by ClusterNetworkPolicies is not
/// isolated, but their Deny and Accept rules still decide first).
#[inline(always)]
pub(crate) fn judged(ep: &EndpointInfo, dir: u8, ep_mode: u32) -> bool {
    ep_mode == mode::ENFORCE
        || ep_mode == mode::AUDIT
        || (ep_mode == mode::ALLOW_ALL && ep.tiered(dir))
}

/// How a packet into an endpoint reached it, which says who its source is (`FromSource` for
/// everything out of an endpoint).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Sent by its source: a peer with the node's address is the node (HOST).
    FromSource,
    /// Entered the node through another interface (another pod's, the network): the node's
    /// address in its source is forged or masqueraded, so it counts as WORLD (see
    /// `source::arrival`).
    Forwarded,
    /// The endpoint's own packet coming back through a Service (its endpoint mark, see
    /// `source::hairpin_flag`), masqueraded by kube-proxy to the node's address. The
    /// NetworkPolicy tier sees the node, as it always has (a pod cannot block itself); the
    /// ordered tiers see the pod itself, for a pod reaching itself through a Service is subject
    /// to them.
    Hairpin,
}

/// The peer of a new flow as the lookups key it.
struct Peer {
    policy_set: u32,
    /// The Admin tier's set (`EndpointInfo::tier_set`).
    tier_set: u32,
    /// The Baseline tier's set (`EndpointInfo::baseline_set`).
    baseline_set: u32,
    dir: u8,
    identity: u32,
    cidr_identity: u32,
    proto: u8,
    port_be: u16,
}

/// The identities the lookups key address `a` by: its own (WORLD when none, or when it is the
/// node's and not `host_ok`) and its CIDR identity (0: none).
#[inline(always)]
fn identities_at(a: &Addr, slot: usize, host_ok: bool) -> (u32, u32) {
    let key = addr_key(a);
    // Identity 0 in the current slot means "no entry in this generation".
    let identity = match unsafe { IP_IDENTITY.get(&key) } {
        Some(v) if v.identity[slot] == identity::HOST && !host_ok => identity::WORLD,
        Some(v) if v.identity[slot] != 0 => v.identity[slot],
        _ => identity::WORLD,
    };
    let cidr_identity = match CIDR_IDENTITY.get(Key::new(128, key)) {
        Some(v) => v.identity[slot],
        None => 0,
    };
    (identity, cidr_identity)
}

/// The new-flow decision of a judged direction (see `judged`), tier by tier as `PolicyKey`
/// documents; `enforcer::lookup::decide_from` is its mirror.
#[inline(always)]
pub(crate) fn decide(
    ep: &EndpointInfo,
    dir: u8,
    flow: &Flow,
    config: &Config,
    arrival: Arrival,
) -> Why {
    let slot = config.generation() as usize;
    let peer = if dir == direction::EGRESS {
        &flow.daddr
    } else {
        &flow.saddr
    };
    let (identity, cidr_identity) = identities_at(peer, slot, arrival != Arrival::Forwarded);
    let mut p = Peer {
        policy_set: ep.policy_set,
        tier_set: ep.tier_set,
        baseline_set: ep.baseline_set,
        dir,
        identity,
        cidr_identity,
        proto: flow.proto,
        port_be: if flow.has_ports != 0 {
            flow.dport_be
        } else {
            0
        },
    };
    // The ordered tiers' peer: the pod itself for its own packet back through a Service.
    if arrival == Arrival::Hairpin {
        (p.identity, p.cidr_identity) = identities_at(&flow.daddr, slot, true);
    }
    let mut why = Why::new(reason::NO_RULE);
    why.allowed = false;
    why.peer_identity = p.identity;
    why.peer_cidr_identity = p.cidr_identity;

    if ep.has_tier(dir, tier::ADMIN) && ordered_tier(&p, tier::ADMIN, &mut why) {
        return why;
    }
    let ep_mode = crate::endpoint::mode_of(ep, dir);
    if ep_mode == mode::ENFORCE || ep_mode == mode::AUDIT {
        // NetworkPolicy decides for what it isolates: a miss is NO_RULE. It sees the address
        // the packet came from, hairpin or not.
        (p.identity, p.cidr_identity) = (identity, cidr_identity);
        why.peer_identity = identity;
        why.peer_cidr_identity = cidr_identity;
        network_policy_tier(&p, &mut why);
        return why;
    }
    if ep.has_tier(dir, tier::BASELINE) && ordered_tier(&p, tier::BASELINE, &mut why) {
        return why;
    }
    why.allowed = true;
    why.reason = reason::ALLOWED_NOT_ISOLATED;
    why.policy_id = 0;
    why.rule_index = 0;
    why.tier = 0;
    why
}

/// The NetworkPolicy tier: allows only, so the first hit allows (identity, CIDR, any).
#[inline(always)]
fn network_policy_tier(p: &Peer, why: &mut Why) {
    let t = tier::NETWORK_POLICY;
    let mut found = rule_entry(p.policy_set, p.identity, p.dir, t, p.proto, p.port_be);
    let mut matched = p.identity;
    // Found under the CIDR identity: an ipBlock rule admitted the peer, even when the peer is
    // the node (HOST), so the reason is the rule's, not the host's.
    if found.action == 0 && p.cidr_identity != 0 {
        found = rule_entry(p.policy_set, p.cidr_identity, p.dir, t, p.proto, p.port_be);
        matched = p.cidr_identity;
    }
    if found.action == 0 {
        found = rule_entry(p.policy_set, identity::ANY, p.dir, t, p.proto, p.port_be);
        matched = identity::ANY;
    }
    if found.action == POLICY_ACTION_ALLOW {
        why.policy_id = found.policy_id;
        why.rule_index = found.rule_index;
        why.tier = t;
        why.allowed = true;
        why.reason = if matched == identity::HOST {
            reason::ALLOWED_HOST
        } else {
            reason::ALLOWED_BY_RULE
        };
    }
}

/// An ordered tier: the lowest-ranked of the three lookups' entries is the first rule that
/// matches. Returns whether it decided (Accept or Deny); Pass and no match go on.
#[inline(always)]
fn ordered_tier(p: &Peer, t: u8, why: &mut Why) -> bool {
    // Plain values with action 0 for "none" rather than `Option`s: the verifier must see every
    // field written on every path.
    let set = if t == tier::ADMIN {
        p.tier_set
    } else {
        p.baseline_set
    };
    let mut best = rule_entry(set, p.identity, p.dir, t, p.proto, p.port_be);
    if p.cidr_identity != 0 {
        let v = rule_entry(set, p.cidr_identity, p.dir, t, p.proto, p.port_be);
        if v.action != 0 && (best.action == 0 || v.rank < best.rank) {
            best = v;
        }
    }
    let v = rule_entry(set, identity::ANY, p.dir, t, p.proto, p.port_be);
    if v.action != 0 && (best.action == 0 || v.rank < best.rank) {
        best = v;
    }
    if best.action == POLICY_ACTION_ALLOW {
        why.allowed = true;
        why.reason = reason::ALLOWED_BY_RULE;
    } else if best.action == POLICY_ACTION_DENY {
        why.allowed = false;
        why.reason = reason::DENY_RULE;
    } else {
        return false;
    }
    why.policy_id = best.policy_id;
    why.rule_index = best.rule_index;
    why.tier = t;
    true
}

/// A rule's entry (allow, deny or pass) for one peer identity in one tier, or a zero value
/// (action 0) when there is none.
#[inline(always)]
fn rule_entry(policy_set: u32, id: u32, dir: u8, t: u8, proto: u8, port_be: u16) -> PolicyValue {
    let none = PolicyValue {
        policy_id: 0,
        rule_index: 0,
        action: 0,
        flags: 0,
        rank: 0,
    };
    match policy_lookup(policy_set, id, dir, t, proto, port_be) {
        Some(v) => v,
        None => none,
    }
}

/// One longest-prefix lookup over (protocol, port) for one peer identity in one tier. Entries
/// whose action is not a rule's (allow, deny, pass) do not count as found, as in the userspace
/// mirror.
#[inline(always)]
pub(crate) fn policy_lookup(
    policy_set: u32,
    id: u32,
    dir: u8,
    t: u8,
    proto: u8,
    port_be: u16,
) -> Option<PolicyValue> {
    let key = Key::new(
        policy_prefix::FULL,
        PolicyKey::new(policy_set, id, dir, t, proto, port_be),
    );
    // `t` is a constant at every call, so this choice is made at compile time.
    let map = if tier::ordered(t) {
        &POLICY_TIERS
    } else {
        &POLICY
    };
    let v = *map.get(&key)?;
    if v.action == POLICY_ACTION_ALLOW
        || v.action == POLICY_ACTION_DENY
        || v.action == POLICY_ACTION_PASS
    {
        Some(v)
    } else {
        None
    }
}
