//! Conntrack: admitting a new flow, re-checking one of an older policy revision, counting
//! packets per admitting rule.

use crate::{PASS, endpoint::*, events::*, maps::*, parse::*, policy::*, source::*};
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use enforcer_common::*;

/// A conntrack hit admitted under an older policy revision: the flow (the packet's own, or, when
/// `related`, the flow the ICMP error quotes, as seen in this direction) is judged again, once,
/// under the current policy, in the direction it was opened.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn recheck(
    ctx: &TcContext,
    ifindex: u32,
    dir: u8,
    pkt: &mut Packet,
    related: bool,
    ct_key: &CtKey,
    ct: *mut CtValue,
    config: &Config,
) -> i32 {
    let Some(ep) = endpoint(ifindex, config) else {
        // No longer an endpoint: nothing to enforce here.
        return PASS;
    };
    let slot = config.generation() as usize;
    if dir == direction::EGRESS && !is_absent(&ep) {
        // The source was checked when the flow was admitted; the address may have moved to
        // another endpoint since (or the entry predates the check).
        let r = forged(&ep, PARSE_IP, pkt, slot);
        if r != 0 {
            let _ = CONNTRACK.remove(ct_key);
            let _ = CONNTRACK.remove(&ct_key.reversed());
            return drop_packet(ctx, &ep, ifindex, dir, &pkt.flow, &Why::new(r));
        }
    }
    // SAFETY: a live LRU value, read whole.
    let flags = unsafe { (*ct).flags };
    if flags & ct_flags::SERVICE != 0 {
        // Judged on a destination this tuple does not show; keep it (a known gap).
        // SAFETY: as above.
        unsafe { (*ct).revision = config.revision };
        return PASS;
    }
    let flow = if related {
        pkt.quoted.related_flow(pkt.flow.family)
    } else {
        pkt.flow
    };
    let opened_dir = if flags & ct_flags::REPLY != 0 {
        pkt.opened = flow.reversed();
        dir ^ 1
    } else {
        pkt.opened = flow;
        dir
    };
    // A flow the node opened into the endpoint stays the node's: only a packet in the opening
    // direction can show where it entered (replies enter from the pod).
    let host_ok = opened_dir == direction::EGRESS || dir == direction::EGRESS || from_the_node(ctx);
    let opened_mode = mode_of(&ep, opened_dir);
    let mut why = match opened_mode {
        mode::ENFORCE | mode::AUDIT => decide(&ep, opened_dir, &pkt.opened, config, host_ok),
        mode::DENY_ALL => Why::new(ep.held_reason()),
        _ => Why::new(reason::ALLOWED_NOT_ISOLATED),
    };
    // Audit mode keeps the flow (its first packet was reported already).
    audit(&mut why, opened_mode);
    let other = ct_key.reversed();
    if why.allowed {
        // SAFETY: as above; a field write of a live value.
        unsafe {
            (*ct).revision = config.revision;
            (*ct).policy_id = why.policy_id;
            (*ct).rule_index = why.rule_index as u32;
        }
        if let Some(o) = CONNTRACK.get_ptr_mut(&other) {
            // SAFETY: as above.
            unsafe {
                (*o).revision = config.revision;
                (*o).policy_id = why.policy_id;
                (*o).rule_index = why.rule_index as u32;
            }
        }
        return PASS;
    }
    let _ = CONNTRACK.remove(ct_key);
    let _ = CONNTRACK.remove(&other);
    if why.reason == reason::NO_RULE {
        why.reason = reason::POLICY_REVOKED;
    }
    count(why.reason as u32);
    drop_packet(ctx, &ep, ifindex, dir, &pkt.flow, &why)
}

/// Lets a new flow in: conntrack both ways, maybe report.
#[inline(always)]
pub(crate) fn admit(
    ctx: &TcContext,
    ep: &EndpointInfo,
    ifindex: u32,
    dir: u8,
    pkt: &Packet,
    why: &Why,
    config: &Config,
) {
    // An error about an unknown flow opens nothing.
    if pkt.kind != KIND_ICMP_ERROR {
        let flags = if why.reason == reason::AUDIT_WOULD_DROP {
            ct_flags::AUDIT
        } else {
            0
        };
        let value = insert_ct_pair(&pkt.flow.ct_key(ifindex, dir), why, config, flags);
        if config.flags & config_flags::RULE_COUNTERS_OFF == 0 {
            count_rule(ctx, &value, dir);
        }
    }
    if config.flags & config_flags::EVENTS_ON_ALLOW != 0 {
        emit(ctx, ep, ifindex, dir, &pkt.flow, why, verdict::ALLOW);
    }
}

/// Counts a packet of an admitted flow against the rule that admitted it (none: not counted
/// here; verdicts by reason are counted when flows are judged).
#[inline(always)]
pub(crate) fn count_rule(ctx: &TcContext, ct: &CtValue, dir: u8) {
    if ct.policy_id == 0 {
        return;
    }
    let key = RuleCounterKey {
        policy_id: ct.policy_id,
        rule_index: ct.rule_index as u16,
        // The rule's direction is the one the flow was opened in.
        direction: if ct.flags & ct_flags::REPLY != 0 {
            dir ^ 1
        } else {
            dir
        },
        _pad: 0,
    };
    let len = ctx.len() as u64;
    match RULE_COUNTERS.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy of a live value.
        Some(c) => unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        },
        None => {
            let c = RuleCounter {
                packets: 1,
                bytes: len,
            };
            let _ = RULE_COUNTERS.insert(&key, &c, 0);
        }
    }
}

/// Conntrack entries for an admitted flow: its own tuple, and the reversed one marked as reply.
#[inline(always)]
pub(crate) fn insert_ct_pair(key: &CtKey, why: &Why, config: &Config, flags: u32) -> CtValue {
    let mut value = CtValue {
        created_ns: unsafe { bpf_ktime_get_ns() },
        revision: config.revision,
        flags,
        policy_id: why.policy_id,
        rule_index: why.rule_index as u32,
    };
    // A full LRU evicts the oldest flow; a failed insert only costs a later lookup.
    let _ = CONNTRACK.insert(key, &value, 0);
    let opened = value;
    value.flags = flags | ct_flags::REPLY;
    let _ = CONNTRACK.insert(&key.reversed(), &value, 0);
    opened
}

/// Remembers the ports (and, for IPv6, the transport protocol) of a first fragment that passed,
/// for the later fragments of its datagram, which carry neither.
#[inline(always)]
pub(crate) fn remember_fragment(pkt: &Packet) {
    let v = FragValue {
        sport_be: pkt.flow.sport_be,
        dport_be: pkt.flow.dport_be,
        proto: pkt.flow.proto,
        _pad: [0; 3],
    };
    let _ = FRAGMENTS.insert(&frag_key(&pkt.flow, pkt.frag_id, pkt.frag_proto), &v, 0);
}
