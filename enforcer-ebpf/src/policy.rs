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
        }
    }
}

/// The new-flow decision of an isolated direction; `enforcer::lookup::decide_from` is its
/// mirror. `host_ok`: a peer with the node's address counts as the node (HOST) only when the
/// packet really comes from it (see `source::from_the_node`); otherwise it is WORLD.
#[inline(always)]
pub(crate) fn decide(
    ep: &EndpointInfo,
    dir: u8,
    flow: &Flow,
    config: &Config,
    host_ok: bool,
) -> Why {
    let slot = config.generation() as usize;
    let peer = if dir == direction::EGRESS {
        flow.daddr
    } else {
        flow.saddr
    };
    let peer_key = addr_key(&peer);
    // Identity 0 in the current slot means "no entry in this generation".
    let peer_identity = match unsafe { IP_IDENTITY.get(&peer_key) } {
        Some(v) if v.identity[slot] == identity::HOST && !host_ok => identity::WORLD,
        Some(v) if v.identity[slot] != 0 => v.identity[slot],
        _ => identity::WORLD,
    };
    let peer_cidr_identity = match CIDR_IDENTITY.get(Key::new(128, peer_key)) {
        Some(v) => v.identity[slot],
        None => 0,
    };
    let port_be = if flow.has_ports != 0 {
        flow.dport_be
    } else {
        0
    };
    let mut why = Why::new(reason::NO_RULE);
    why.allowed = false;
    why.peer_identity = peer_identity;
    why.peer_cidr_identity = peer_cidr_identity;

    let mut found = policy_lookup(ep.policy_set, peer_identity, dir, flow.proto, port_be);
    let mut matched = peer_identity;
    // Found under the CIDR identity: an ipBlock rule admitted the peer, even when the peer is
    // the node (HOST), so the reason is the rule's, not the host's.
    if found.is_none() && peer_cidr_identity != 0 {
        found = policy_lookup(ep.policy_set, peer_cidr_identity, dir, flow.proto, port_be);
        matched = peer_cidr_identity;
    }
    if found.is_none() {
        found = policy_lookup(ep.policy_set, identity::ANY, dir, flow.proto, port_be);
        matched = identity::ANY;
    }
    if let Some(v) = found {
        why.policy_id = v.policy_id;
        why.rule_index = v.rule_index;
        if v.action == POLICY_ACTION_DENY {
            why.reason = reason::DENY_RULE;
        } else if v.action == POLICY_ACTION_ALLOW {
            why.allowed = true;
            why.reason = if matched == identity::HOST {
                reason::ALLOWED_HOST
            } else {
                reason::ALLOWED_BY_RULE
            };
        }
    }
    why
}

/// One longest-prefix lookup over (protocol, port) for one peer identity. Entries whose action
/// is neither allow nor deny do not count as found, as in the userspace mirror.
#[inline(always)]
pub(crate) fn policy_lookup(
    policy_set: u32,
    id: u32,
    dir: u8,
    proto: u8,
    port_be: u16,
) -> Option<PolicyValue> {
    let key = Key::new(
        policy_prefix::FULL,
        PolicyKey {
            policy_set,
            identity: id,
            direction: dir,
            proto,
            port_be,
        },
    );
    let v = *POLICY.get(&key)?;
    if v.action == POLICY_ACTION_ALLOW || v.action == POLICY_ACTION_DENY {
        Some(v)
    } else {
        None
    }
}
