//! Conntrack: two tables, so that a flood of new flows cannot empty the flows that work.
//!
//! - `CONNTRACK` (LRU): flows that have not seen a reply yet, and closing flows. A flood of
//!   new flows churns this table only; what it evicts first is what a flood makes.
//! - `CT_ESTABLISHED` (plain hash, never evicted): a flow moves here at its first reply (TCP:
//!   the handshake answered; others: any reply), while its interface is under its budget
//!   (`CtSettings::endpoint_budget`); a flow past the budget stays in the LRU. Closing TCP flows
//!   (RST, or FIN both ways) move back to the LRU. The agent's garbage collector deletes idle
//!   entries by state and protocol (`ct_state`).
//!
//! The established path is one lookup in the plain hash, a byte test (`seen`) and a flags test;
//! everything that changes a flow's state runs only on the packets that change it.

use crate::{
    PASS, endpoint::*, events::*, maps::*, parse::*, policy::*, service::service_rejudge, source::*,
};
use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, programs::TcContext};
use enforcer_common::*;

/// `track` found no entry: the packet starts a new flow.
pub(crate) const MISS: i32 = i32::MIN;

/// Which table an entry was found in.
const ESTABLISHED: u8 = 0;
const LRU: u8 = 1;

const EEXIST: i64 = 17;

#[inline(always)]
fn ct_get(table: u8, key: &CtKey) -> Option<*mut CtValue> {
    if table == ESTABLISHED {
        CT_ESTABLISHED.get_ptr_mut(key)
    } else {
        CONNTRACK.get_ptr_mut(key)
    }
}

/// Deletes an entry; true when this call deleted it.
#[inline(always)]
fn ct_remove(table: u8, key: &CtKey) -> bool {
    if table == ESTABLISHED {
        CT_ESTABLISHED.remove(key).is_ok()
    } else {
        CONNTRACK.remove(key).is_ok()
    }
}

#[inline(always)]
fn count_by(index: u32, n: u64) {
    if let Some(p) = DROP_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; no other writer while this program runs on this CPU.
        unsafe { *p += n };
    }
}

/// The conntrack stage: an entry for the packet's tuple (`related`: an ICMP error, the flow it
/// quotes) under the current policy revision passes it; `MISS` when there is none.
#[inline(always)]
pub(crate) fn track(
    ctx: &TcContext,
    skb: &Skb,
    dir: u8,
    pkt: &mut Packet,
    related: bool,
    config: &Config,
) -> i32 {
    let ifindex = skb.ifindex;
    let ct_key = if related {
        pkt.quoted
            .related_flow(pkt.flow.family)
            .ct_key(ifindex, dir)
    } else {
        pkt.flow.ct_key(ifindex, dir)
    };
    // Flows that have seen a reply first: the common case, one lookup in a plain hash.
    let (ct, table) = match CT_ESTABLISHED.get_ptr_mut(&ct_key) {
        Some(ct) => (ct, ESTABLISHED),
        None => match CONNTRACK.get_ptr_mut(&ct_key) {
            Some(ct) => (ct, LRU),
            None => return MISS,
        },
    };
    // SAFETY: a live map value; fields are read and written whole.
    if unsafe { (*ct).revision } != config.revision {
        return recheck(ctx, skb, dir, pkt, related, &ct_key, ct, table, config);
    }
    // Liveness for the garbage collector: written once per collector pass, not per packet.
    // SAFETY: as above.
    if unsafe { (*ct).seen } == 0 {
        unsafe { (*ct).seen = 1 };
    }
    let counting = config.flags & config_flags::RULE_COUNTERS_OFF == 0;
    if table == LRU || pkt.tcp_flags & (tcp_flags::FIN | tcp_flags::RST | tcp_flags::SYN) != 0 {
        // SAFETY: as above; copied whole, the entry may move below.
        let v = unsafe { *ct };
        if follow(ifindex, pkt, &ct_key, ct, &v, table) == MISS {
            return MISS;
        }
        if counting {
            count_rule(ctx, &v, dir);
        }
        return PASS;
    }
    if counting {
        // SAFETY: as above.
        count_rule(ctx, unsafe { &*ct }, dir);
    }
    PASS
}

/// State changes, on the packets that make them: a reply promotes an LRU entry, RST or FIN
/// both ways closes, a SYN on a closed flow starts a new one (`MISS`).
#[inline(always)]
fn follow(
    ifindex: u32,
    pkt: &Packet,
    key: &CtKey,
    ct: *mut CtValue,
    v: &CtValue,
    table: u8,
) -> i32 {
    if pkt.kind == KIND_ICMP_ERROR {
        // An error about a flow is no reply from its peer.
        return PASS;
    }
    let f = pkt.tcp_flags;
    if pkt.flow.proto == IPPROTO_TCP {
        if f & tcp_flags::RST != 0 {
            if v.state != ct_state::CLOSING {
                close(key, v, table);
            }
            return PASS;
        }
        if f & tcp_flags::FIN != 0 {
            if v.flags & ct_flags::FIN == 0 {
                // SAFETY: a live map value, one field written.
                unsafe { (*ct).flags = v.flags | ct_flags::FIN };
                let other_fin = match ct_get(table, &key.reversed()) {
                    // SAFETY: as above, read.
                    Some(o) => (unsafe { (*o).flags } & ct_flags::FIN) != 0,
                    None => true,
                };
                if other_fin && v.state != ct_state::CLOSING {
                    close(key, v, table);
                }
            }
            return PASS;
        }
        if f & tcp_flags::SYN != 0 && f & tcp_flags::ACK == 0 && v.state == ct_state::CLOSING {
            // A port reused after a close: a new connection, judged as one (the old flow's
            // reply entry must not admit a SYN its policy never allowed).
            let _ = ct_remove(table, key);
            let _ = ct_remove(table, &key.reversed());
            count_by(counter::CT_REVOKED, 2);
            return MISS;
        }
    }
    if table == LRU
        && v.flags & ct_flags::REPLY != 0
        && (v.state == ct_state::NEW || v.state == ct_state::LEGACY)
    {
        promote(ifindex, key, ct, v);
    }
    PASS
}

/// Budget of `CT_ESTABLISHED` entries per interface.
#[inline(always)]
fn budget() -> u64 {
    let b = match CT_SETTINGS.get(0) {
        Some(s) => s.endpoint_budget,
        None => 0,
    };
    if b == 0 {
        capacity::CT_ENDPOINT_BUDGET as u64
    } else {
        b as u64
    }
}

/// `*p += n`, atomically: every CPU promotes into the same per-interface count. (BPF's XADD;
/// `core`'s atomics have no read-modify-write on this target.)
#[inline(always)]
fn atomic_add(p: *mut u64, n: u64) {
    // SAFETY: `p` points into a live map value (an aligned u64).
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {n}",
            p = in(reg) p,
            n = in(reg) n,
            options(nostack)
        )
    };
}

/// Reserves `n` entries of the interface's budget.
#[inline(always)]
fn take_budget(ifindex: u32, n: u64) -> bool {
    let used = match CT_USED.get_ptr_mut(&ifindex) {
        Some(p) => p,
        None => {
            let _ = CT_USED.insert(&ifindex, &0, BPF_NOEXIST as u64);
            match CT_USED.get_ptr_mut(&ifindex) {
                Some(p) => p,
                // The accounting table is full: no promotion (the flow keeps working in the LRU).
                None => return false,
            }
        }
    };
    // SAFETY: live values, read whole (the garbage collector replaces CT_FREED's whole).
    let freed = match CT_FREED.get_ptr(&ifindex) {
        Some(p) => unsafe { *p },
        None => 0,
    };
    let in_use = unsafe { *used }.wrapping_sub(freed) as i64;
    if in_use + n as i64 > budget() as i64 {
        return false;
    }
    atomic_add(used, n);
    true
}

/// Gives back `n` entries of the interface's budget (entries this program removed).
#[inline(always)]
fn give_back(ifindex: u32, n: u64) {
    if let Some(used) = CT_USED.get_ptr_mut(&ifindex) {
        atomic_add(used, n.wrapping_neg());
    }
}

/// The flow's first reply: both entries move to `CT_ESTABLISHED`, out of a flood's reach, when
/// the interface's budget allows; else they stay in the LRU, marked established.
#[inline(always)]
fn promote(ifindex: u32, key: &CtKey, ct: *mut CtValue, v: &CtValue) {
    let other = key.reversed();
    let o = CONNTRACK.get_ptr_mut(&other);
    let now = unsafe { bpf_ktime_get_ns() };
    let mut moved = *v;
    moved.state = ct_state::ESTABLISHED;
    moved.seen = 0;
    moved.last_ns = now;
    let mut moved_other = match o {
        // SAFETY: a live LRU value, copied whole.
        Some(p) => unsafe { *p },
        None => CtValue {
            flags: v.flags ^ ct_flags::REPLY,
            ..*v
        },
    };
    moved_other.state = ct_state::ESTABLISHED;
    moved_other.seen = 0;
    moved_other.last_ns = now;
    if !take_budget(ifindex, 2) {
        stay_established(ct, o, now);
        return;
    }
    let mut placed = 0u64;
    let mut refused = 0u64;
    match CT_ESTABLISHED.insert(key, &moved, BPF_NOEXIST as u64) {
        Ok(()) => {
            placed += 1;
            let _ = CONNTRACK.remove(key);
        }
        // Another CPU promoted it first.
        Err(e) if e as i64 == -EEXIST => {
            let _ = CONNTRACK.remove(key);
        }
        Err(_) => refused += 1,
    }
    match CT_ESTABLISHED.insert(&other, &moved_other, BPF_NOEXIST as u64) {
        Ok(()) => {
            placed += 1;
            let _ = CONNTRACK.remove(&other);
        }
        Err(e) if e as i64 == -EEXIST => {
            let _ = CONNTRACK.remove(&other);
        }
        Err(_) => refused += 1,
    }
    if placed < 2 {
        give_back(ifindex, 2 - placed);
    }
    count_by(counter::CT_PROMOTED, placed);
    if refused != 0 {
        // CT_ESTABLISHED is full: what did not fit keeps working from the LRU.
        if let Some(p) = CONNTRACK.get_ptr_mut(key) {
            stay_established(p, CONNTRACK.get_ptr_mut(&other), now);
        } else if let Some(p) = CONNTRACK.get_ptr_mut(&other) {
            stay_established(p, None, now);
        }
    }
}

/// A flow past its endpoint's budget: established, but in the LRU.
#[inline(always)]
fn stay_established(ct: *mut CtValue, other: Option<*mut CtValue>, now: u64) {
    // SAFETY: live LRU values, single fields written.
    unsafe {
        (*ct).state = ct_state::ESTABLISHED;
        (*ct).last_ns = now;
        if let Some(o) = other {
            (*o).state = ct_state::ESTABLISHED;
            (*o).last_ns = now;
        }
    }
    count(counter::CT_OVER_BUDGET);
}

/// RST, or FIN both ways: the flow is closing. Its entries leave `CT_ESTABLISHED` (freeing the
/// budget) for the LRU, where closed flows are the first to go and the collector gives them
/// the closing lifetime.
#[inline(always)]
fn close(key: &CtKey, v: &CtValue, table: u8) {
    let other = key.reversed();
    let now = unsafe { bpf_ktime_get_ns() };
    if table == LRU {
        for k in [key, &other] {
            if let Some(p) = CONNTRACK.get_ptr_mut(k) {
                // SAFETY: a live LRU value, single fields written.
                unsafe {
                    (*p).state = ct_state::CLOSING;
                    (*p).last_ns = now;
                }
            }
        }
        return;
    }
    let mut mine = *v;
    mine.state = ct_state::CLOSING;
    mine.last_ns = now;
    mine.seen = 0;
    let mut theirs = match CT_ESTABLISHED.get_ptr(&other) {
        // SAFETY: a live value, copied whole.
        Some(p) => unsafe { *p },
        None => CtValue {
            flags: v.flags ^ ct_flags::REPLY,
            ..*v
        },
    };
    theirs.state = ct_state::CLOSING;
    theirs.last_ns = now;
    theirs.seen = 0;
    let mut removed = 0u64;
    if CT_ESTABLISHED.remove(key).is_ok() {
        removed += 1;
    }
    if CT_ESTABLISHED.remove(&other).is_ok() {
        removed += 1;
    }
    give_back(key.ifindex, removed);
    let _ = CONNTRACK.insert(key, &mine, 0);
    let _ = CONNTRACK.insert(&other, &theirs, 0);
    count_by(counter::CT_DEMOTED, removed);
}

/// A conntrack hit admitted under an older policy revision: the flow (the packet's own, or, when
/// `related`, the flow the ICMP error quotes, as seen in this direction) is judged again, once,
/// under the current policy, in the direction it was opened.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn recheck(
    ctx: &TcContext,
    skb: &Skb,
    dir: u8,
    pkt: &mut Packet,
    related: bool,
    ct_key: &CtKey,
    ct: *mut CtValue,
    table: u8,
    config: &Config,
) -> i32 {
    let ifindex = skb.ifindex;
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
            remove_pair(ifindex, ct_key, table);
            return drop_packet(ctx, &ep, ifindex, dir, &pkt.flow, &Why::new(r));
        }
    }
    // SAFETY: a live map value, read whole.
    let flags = unsafe { (*ct).flags };
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
    // direction can show where it entered (replies enter from the pod). A hairpin stays one
    // (its replies carry no endpoint mark).
    let arrival = if flags & ct_flags::HAIRPIN != 0 {
        Arrival::Hairpin
    } else if opened_dir == direction::EGRESS || dir == direction::EGRESS {
        Arrival::FromSource
    } else {
        arrival(skb, config)
    };
    let opened_mode = mode_of(&ep, opened_dir);
    let mut why = if flags & ct_flags::SERVICE != 0 {
        let opened_key = if flags & ct_flags::REPLY != 0 {
            ct_key.reversed()
        } else {
            *ct_key
        };
        service_rejudge(&ep, opened_mode, &pkt.opened, &opened_key, config)
    } else {
        match opened_mode {
            m if judged(&ep, opened_dir, m) => {
                decide(&ep, opened_dir, &pkt.opened, config, arrival)
            }
            mode::DENY_ALL => Why::new(ep.held_reason()),
            _ => Why::new(reason::ALLOWED_NOT_ISOLATED),
        }
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
        if let Some(o) = ct_get(table, &other) {
            // SAFETY: as above.
            unsafe {
                (*o).revision = config.revision;
                (*o).policy_id = why.policy_id;
                (*o).rule_index = why.rule_index as u32;
            }
        }
        return PASS;
    }
    remove_pair(ifindex, ct_key, table);
    if why.reason == reason::NO_RULE {
        why.reason = reason::POLICY_REVOKED;
    }
    count(why.reason as u32);
    drop_packet(ctx, &ep, ifindex, dir, &pkt.flow, &why)
}

/// A revoked flow: both entries go (and their budget comes back).
#[inline(always)]
fn remove_pair(ifindex: u32, key: &CtKey, table: u8) {
    let mut removed = 0u64;
    if ct_remove(table, key) {
        removed += 1;
    }
    if ct_remove(table, &key.reversed()) {
        removed += 1;
    }
    if table == ESTABLISHED {
        give_back(ifindex, removed);
    }
    count_by(counter::CT_REVOKED, removed);
}

/// Lets a new flow in: conntrack both ways, maybe report.
/// Returns the verdict: a flow conntrack cannot hold is refused (`CT_BUDGET`).
#[inline(always)]
pub(crate) fn admit(
    ctx: &TcContext,
    ep: &EndpointInfo,
    ifindex: u32,
    dir: u8,
    pkt: &Packet,
    why: &Why,
    config: &Config,
    extra_flags: u16,
) -> i32 {
    // An error about an unknown flow opens nothing.
    if pkt.kind != KIND_ICMP_ERROR {
        let flags = extra_flags
            | if why.reason == reason::AUDIT_WOULD_DROP {
                ct_flags::AUDIT
            } else {
                0
            };
        let Some(value) = insert_ct_pair(&pkt.flow.ct_key(ifindex, dir), why, config, flags) else {
            return drop_packet(
                ctx,
                ep,
                ifindex,
                dir,
                &pkt.flow,
                &Why::new(reason::CT_BUDGET),
            );
        };
        if config.flags & config_flags::RULE_COUNTERS_OFF == 0 {
            count_rule(ctx, &value, dir);
        }
    }
    if config.flags & config_flags::EVENTS_ON_ALLOW != 0 {
        emit(ctx, ep, ifindex, dir, &pkt.flow, why, verdict::ALLOW);
    }
    PASS
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

/// Conntrack entries for an admitted flow, in the LRU until it sees a reply: its own tuple,
/// and the reversed one marked as reply. `None` when an entry could not be inserted (the LRU
/// makes room by evicting, so only a kernel allocation failure): the caller refuses the flow
/// rather than pass a flow whose replies would not be recognised.
#[inline(always)]
pub(crate) fn insert_ct_pair(
    key: &CtKey,
    why: &Why,
    config: &Config,
    flags: u16,
) -> Option<CtValue> {
    let now = unsafe { bpf_ktime_get_ns() };
    let mut value = CtValue {
        last_ns: now,
        created_ns: now,
        revision: config.revision,
        flags,
        state: ct_state::NEW,
        seen: 0,
        policy_id: why.policy_id,
        rule_index: why.rule_index as u32,
    };
    let a = CONNTRACK.insert(key, &value, 0);
    let opened = value;
    value.flags = flags | ct_flags::REPLY;
    let b = CONNTRACK.insert(&key.reversed(), &value, 0);
    count_by(counter::CT_INSERTED, a.is_ok() as u64 + b.is_ok() as u64);
    if a.is_err() || b.is_err() {
        return None;
    }
    Some(opened)
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
