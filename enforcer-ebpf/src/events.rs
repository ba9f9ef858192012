//! Drops, counters and events: the verdict stages that report.

use crate::{DROP, maps::*, parse::*, policy::*};
use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use enforcer_common::*;

#[inline(always)]
pub(crate) fn drop_packet(
    ctx: &TcContext,
    ep: &EndpointInfo,
    ifindex: u32,
    dir: u8,
    flow: &Flow,
    why: &Why,
) -> i32 {
    if why.reason != reason::NO_RULE && why.reason != reason::DENY_RULE {
        // Policy verdicts are counted where they are made; the rest here.
        count(why.reason as u32);
    }
    let config = config();
    if config.flags & config_flags::EVENTS_OFF != 0 {
        return DROP;
    }
    // Cheapest question first: a flow reported within the window is a repeat (a lookup). Only
    // a drop that will really be reported takes a token and is remembered, so a flood past the
    // limit costs a lookup and the bucket, never an insert.
    let window_ns = config.drop_report_window_ms as u64 * 1_000_000;
    let key = flow.ct_key(ifindex, dir);
    let now = unsafe { bpf_ktime_get_ns() };
    if window_ns != 0
        && let Some(t) = DROP_REPORTS.get_ptr(&key)
        // SAFETY: a live LRU value, read whole.
        && now.saturating_sub(unsafe { *t }) < window_ns
    {
        count(counter::EVENTS_REPEATED);
        return DROP;
    }
    if !take_event_token(ifindex, &config) {
        count(counter::EVENTS_SUPPRESSED);
        return DROP;
    }
    if window_ns != 0 {
        let _ = DROP_REPORTS.insert(&key, &now, 0);
    }
    write_event(ctx, ep, ifindex, dir, flow, why, verdict::DROP);
    DROP
}

#[inline(always)]
pub(crate) fn count(index: u32) {
    if let Some(p) = DROP_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; no other writer while this program runs on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub(crate) fn emit(
    ctx: &TcContext,
    ep: &EndpointInfo,
    ifindex: u32,
    dir: u8,
    flow: &Flow,
    why: &Why,
    verdict: u8,
) {
    let config = config();
    if config.flags & config_flags::EVENTS_OFF != 0 {
        return;
    }
    if !take_event_token(ifindex, &config) {
        count(counter::EVENTS_SUPPRESSED);
        return;
    }
    write_event(ctx, ep, ifindex, dir, flow, why, verdict);
}

/// Puts one event on the ring buffer (the limits are the caller's business).
#[inline(always)]
pub(crate) fn write_event(
    ctx: &TcContext,
    ep: &EndpointInfo,
    ifindex: u32,
    dir: u8,
    flow: &Flow,
    why: &Why,
    verdict: u8,
) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::EVENTS_LOST);
        return;
    };
    // Filled in place: an 80-byte event built on the stack and copied would not fit beside the
    // parser's state in the 512-byte BPF stack.
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved, writable record of size_of::<Event>() bytes; every field
    // is written before submit.
    unsafe {
        (*e).timestamp_ns = bpf_ktime_get_ns();
        (*e).endpoint_id = ep.endpoint_id;
        (*e).ifindex = ifindex;
        (*e).saddr = addr_key(&flow.saddr).addr;
        (*e).daddr = addr_key(&flow.daddr).addr;
        (*e).sport_be = flow.sport_be;
        (*e).dport_be = flow.dport_be;
        (*e).proto = flow.proto;
        (*e).direction = dir;
        (*e).verdict = verdict;
        (*e).reason = why.reason;
        (*e).peer_identity = why.peer_identity;
        (*e).peer_cidr_identity = why.peer_cidr_identity;
        (*e).policy_id = why.policy_id;
        (*e).rule_index = why.rule_index;
        (*e).family = flow.family;
        (*e).tier = why.tier;
        (*e).packet_len = ctx.len();
        (*e).policy_set = ep.policy_set;
    }
    entry.submit(0);
}

/// One token from the endpoint's event bucket, refilled at its rate (`EVENT_LIMITS`, else
/// `Config::event_rate_milli`) up to its burst. Updates race between CPUs; the limit is
/// approximate by a few events, never unbounded.
#[inline(always)]
pub(crate) fn take_event_token(ifindex: u32, config: &Config) -> bool {
    let (rate, burst) = match EVENT_LIMITS.get_ptr(&ifindex) {
        // SAFETY: a live map value, copied out.
        Some(l) => unsafe { ((*l).rate_milli, (*l).burst) },
        None => (config.event_rate_milli, config.event_burst),
    };
    if rate == 0 {
        return true;
    }
    let rate = rate as u64;
    let now = unsafe { bpf_ktime_get_ns() };
    let full = burst.max(1) as u64 * 1000;
    let Some(b) = EVENT_BUCKETS.get_ptr_mut(&ifindex) else {
        let fresh = EventBucket {
            tokens_milli: full - 1000,
            last_ns: now,
            suppressed: 0,
        };
        let _ = EVENT_BUCKETS.insert(&ifindex, &fresh, 0);
        return true;
    };
    // SAFETY: a live map value; plain field reads and writes.
    unsafe {
        let tokens = (*b).tokens_milli.min(full);
        let elapsed = now.saturating_sub((*b).last_ns);
        // Refill (thousandths) = elapsed_ns * rate / 1e9, capped at what fills the bucket; the
        // cap is tested first, so the product stays below 1e9 * `full` (no overflow).
        let need = full - tokens;
        let fill_ns = need * 1_000_000_000 / rate;
        // Only the time the granted thousandths stand for is used up: a flood of packets
        // nanoseconds apart still refills at the rate, however slow.
        let (tokens, last) = if elapsed >= fill_ns {
            (full, now)
        } else {
            let refill = elapsed * rate / 1_000_000_000;
            (
                tokens + refill,
                (*b).last_ns + refill * 1_000_000_000 / rate,
            )
        };
        (*b).last_ns = last;
        if tokens >= 1000 {
            (*b).tokens_milli = tokens - 1000;
            true
        } else {
            (*b).tokens_milli = tokens;
            (*b).suppressed += 1;
            false
        }
    }
}
