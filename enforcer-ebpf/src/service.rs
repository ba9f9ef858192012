//! Egress to a Service address (see docs/architecture.md, "Services").
//!
//! The agent knows every Service port's backends and judges them for each endpoint, writing
//! the result under the Service's identity (`SERVICE_IPS`) in the endpoint's policy set:
//! - every backend allowed (`POLICY_ACTION_ALLOW`): the flow is admitted here, at the pod;
//! - none allowed (no entry): dropped here;
//! - some (`POLICY_ACTION_DEFER`): the verdict waits for the translated packet, bound to it:
//!   only a packet to one of the port's backends (`SERVICE_BACKENDS`) that the endpoint did not
//!   send there itself, within `ServiceConfig::defer_ms`, may claim it, and each endpoint has
//!   its own budget of outstanding deferrals (`SERVICE_DEFERRALS`);
//! - some, but a backend the endpoint may not reach is one no program meets once translated,
//!   or the backends are unknown (`POLICY_ACTION_UNBOUND`): dropped as `SERVICE_UNBOUND`.
//!
//! So a translated packet that meets no program (a host-networked backend, an L3 device,
//! masquerade, IPVS) is never needed to decide, except for ports with mixed backends.

use crate::{PASS, conntrack::*, endpoint::*, events::*, maps::*, parse::*, policy::*};
use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key, programs::TcContext};
use enforcer_common::*;

/// Sentinel of `service_egress`: no deferred flow here, or it is allowed; go on.
pub(crate) const CONTINUE: i32 = i32::MIN;

/// The Service entry of the endpoint's policy set for this Service port, if any. The agent
/// writes these with the exact port only (`policy_prefix::FULL`).
#[inline(always)]
fn service_entry(policy_set: u32, service_id: u32, flow: &Flow) -> Option<PolicyValue> {
    let key = Key::new(
        policy_prefix::FULL,
        PolicyKey::new(
            policy_set,
            service_id,
            direction::EGRESS,
            tier::SERVICE,
            flow.proto,
            if flow.has_ports != 0 {
                flow.dport_be
            } else {
                0
            },
        ),
    );
    POLICY.get(&key).copied()
}

/// The verdict a Service entry stands for; `DEFER` is left to the caller (`allowed` false,
/// reason `NO_RULE`, `policy_id` 0 is not enough to tell: see `service_new_flow`).
#[inline(always)]
fn entry_verdict(entry: Option<PolicyValue>, service_id: u32) -> Why {
    let mut why = Why::new(reason::NO_RULE);
    why.allowed = false;
    why.peer_identity = service_id;
    if let Some(v) = entry {
        why.policy_id = v.policy_id;
        why.rule_index = v.rule_index;
        match v.action {
            POLICY_ACTION_ALLOW => {
                why.allowed = true;
                why.reason = reason::ALLOWED_BY_RULE;
            }
            POLICY_ACTION_DENY => why.reason = reason::DENY_RULE,
            POLICY_ACTION_UNBOUND => why.reason = reason::SERVICE_UNBOUND,
            _ => {}
        }
    }
    why
}

/// Audit mode passes what the policies in audit mode would drop, unbound Services included.
#[inline(always)]
fn audit_service(why: &mut Why, ep_mode: u32) -> bool {
    if ep_mode == mode::AUDIT && !why.allowed && why.reason == reason::SERVICE_UNBOUND {
        why.allowed = true;
        why.reason = reason::AUDIT_WOULD_DROP;
        return true;
    }
    audit(why, ep_mode)
}

/// Counts a verdict that `drop_packet` does not count itself (policy verdicts and allows).
#[inline(always)]
fn count_verdict(why: &Why) {
    if why.allowed || why.reason == reason::NO_RULE || why.reason == reason::DENY_RULE {
        count(why.reason as u32);
    }
}

/// A new flow from an isolated endpoint to a Service address (`service_id` from
/// `SERVICE_IPS`), at `from_endpoint`.
#[inline(always)]
pub(crate) fn service_new_flow(
    ctx: &TcContext,
    ep: &EndpointInfo,
    ifindex: u32,
    ep_mode: u32,
    service_id: u32,
    pkt: &Packet,
    config: &Config,
) -> i32 {
    let entry = service_entry(ep.policy_set, service_id, &pkt.flow);
    if let Some(v) = entry
        && v.action == POLICY_ACTION_DEFER
    {
        return defer(ctx, ep, ifindex, service_id, pkt);
    }
    let mut why = entry_verdict(entry, service_id);
    let audited = audit_service(&mut why, ep_mode);
    count_verdict(&why);
    if !why.allowed {
        return drop_packet(ctx, ep, ifindex, direction::EGRESS, &pkt.flow, &why);
    }
    if audited {
        emit(
            ctx,
            ep,
            ifindex,
            direction::EGRESS,
            &pkt.flow,
            &why,
            verdict::AUDIT,
        );
    }
    let flags = if audited {
        ct_flags::SERVICE | ct_flags::AUDIT
    } else {
        ct_flags::SERVICE
    };
    let Some(value) = insert_ct_pair(
        &pkt.flow.ct_key(ifindex, direction::EGRESS),
        &why,
        config,
        flags,
    ) else {
        // Conntrack could not hold it: refused rather than passed untracked.
        return drop_packet(
            ctx,
            ep,
            ifindex,
            direction::EGRESS,
            &pkt.flow,
            &Why::new(reason::CT_BUDGET),
        );
    };
    if config.flags & config_flags::RULE_COUNTERS_OFF == 0 {
        count_rule(ctx, &value, direction::EGRESS);
    }
    if config.flags & config_flags::EVENTS_ON_ALLOW != 0 {
        emit(
            ctx,
            ep,
            ifindex,
            direction::EGRESS,
            &pkt.flow,
            &why,
            verdict::ALLOW,
        );
    }
    PASS
}

#[inline(always)]
fn service_config() -> (u64, u32) {
    let c = SERVICE_CONFIG.get(0).copied().unwrap_or_default();
    let ms = if c.defer_ms == 0 {
        service_defaults::DEFER_MS
    } else {
        c.defer_ms
    };
    let budget = if c.budget == 0 || c.budget > capacity::SERVICE_DEFER_BUDGET_MAX {
        service_defaults::BUDGET
    } else {
        c.budget
    };
    (ms as u64 * 1_000_000, budget)
}

/// Records the deferral, if the endpoint's budget allows one more.
#[inline(always)]
fn defer(ctx: &TcContext, ep: &EndpointInfo, ifindex: u32, service_id: u32, pkt: &Packet) -> i32 {
    let (lifetime_ns, budget) = service_config();
    let now = unsafe { bpf_ktime_get_ns() };
    if !take_deferral(ifindex, now, lifetime_ns, budget) {
        let mut why = Why::new(reason::SERVICE_UNBOUND);
        why.peer_identity = service_id;
        return drop_packet(ctx, ep, ifindex, direction::EGRESS, &pkt.flow, &why);
    }
    let v = PendingValue {
        created_ns: now,
        daddr: addr_key(&pkt.flow.daddr).addr,
        dport_be: pkt.flow.dport_be,
        _pad: 0,
        ifindex,
    };
    let _ = PENDING.insert(&pending_key(&pkt.flow), &v, 0);
    PASS
}

/// One more outstanding deferral for the endpoint: at most `budget` per window of the
/// deferral lifetime, so at most twice that are live at once (the window before may still
/// have some) and `PENDING` holds every endpoint's share. The count is not atomic: CPUs racing
/// at the limit may overshoot it by one each, which the capacity's slack absorbs.
#[inline(always)]
fn take_deferral(ifindex: u32, now: u64, lifetime_ns: u64, budget: u32) -> bool {
    match SERVICE_DEFERRALS.get_ptr_mut(&ifindex) {
        // SAFETY: a live LRU value; fields read and written whole.
        Some(b) => unsafe {
            if now.saturating_sub((*b).window_start_ns) >= lifetime_ns {
                (*b).window_start_ns = now;
                (*b).outstanding = 0;
            }
            if (*b).outstanding >= budget {
                return false;
            }
            (*b).outstanding += 1;
            true
        },
        None => {
            let b = DeferralBudget {
                window_start_ns: now,
                outstanding: 1,
                _pad: 0,
            };
            let _ = SERVICE_DEFERRALS.insert(&ifindex, &b, 0);
            true
        }
    }
}

/// A deferral claimed or expired gives its place back.
#[inline(always)]
fn release_deferral(ifindex: u32) {
    if let Some(b) = SERVICE_DEFERRALS.get_ptr_mut(&ifindex) {
        // SAFETY: as in take_deferral.
        unsafe {
            if (*b).outstanding > 0 {
                (*b).outstanding -= 1;
            }
        }
    }
}

#[inline(always)]
fn backend_key(pending: &PendingValue, flow: &Flow) -> ServiceBackendKey {
    // SAFETY: 16 bytes of plain data either way.
    let svc: Addr = unsafe { core::mem::transmute::<[u8; 16], Addr>(pending.daddr) };
    let w: [u32; 10] = [
        svc[0],
        svc[1],
        svc[2],
        svc[3],
        flow.daddr[0],
        flow.daddr[1],
        flow.daddr[2],
        flow.daddr[3],
        u32::from_ne_bytes(pair(pending.dport_be, flow.dport_be)),
        flow.proto as u32,
    ];
    // SAFETY: ServiceBackendKey is service_addr, backend_addr, service_port_be,
    // backend_port_be, proto and three padding bytes, repr(C), 40 bytes; on little-endian
    // `proto as u32` puts proto first and zeroes the padding.
    unsafe { core::mem::transmute::<[u32; 10], ServiceBackendKey>(w) }
}

/// Judges the deferred egress of a flow a local endpoint opened to a Service port, on the
/// translated packet, where the DNAT has named the backend. Allowed: conntrack entries at the
/// sender, under the tuple it sent and the reply it will see (both with the Service address,
/// as the reverse NAT restores it), and the backend in `SERVICE_FLOWS` for re-checks.
#[inline(always)]
pub(crate) fn service_egress(ctx: &TcContext, pkt: &mut Packet, config: &Config) -> i32 {
    let key = pending_key(&pkt.flow);
    let Some(pending) = PENDING.get_ptr(&key) else {
        return CONTINUE;
    };
    // SAFETY: copied out at once.
    let pending = unsafe { *pending };
    let (lifetime_ns, _) = service_config();
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(pending.created_ns) > lifetime_ns {
        // Nobody claimed it in time: the translated packet died (TTL, a full queue) or met
        // no program. Whatever comes now is judged as itself.
        let _ = PENDING.remove(&key);
        release_deferral(pending.ifindex);
        return CONTINUE;
    }
    // Bound to the translated flow: a packet to anything but one of the port's backends is
    // not the DNAT of this flow, and neither is one the endpoint sent there itself (judged and
    // tracked at from_endpoint). Either is judged as itself; the deferral waits on.
    let direct = pkt.flow.ct_key(pending.ifindex, direction::EGRESS);
    if SERVICE_BACKENDS
        .get_ptr(&backend_key(&pending, &pkt.flow))
        .is_none()
        || CT_ESTABLISHED.get_ptr(&direct).is_some()
        || CONNTRACK.get_ptr(&direct).is_some()
    {
        return CONTINUE;
    }
    let _ = PENDING.remove(&key);
    release_deferral(pending.ifindex);
    let Some(ep) = endpoint(pending.ifindex, config) else {
        return CONTINUE;
    };
    if !judged(&ep, direction::EGRESS, ep.egress_mode) {
        return CONTINUE;
    }
    let mut why = decide(
        &ep,
        direction::EGRESS,
        &pkt.flow,
        config,
        Arrival::FromSource,
    );
    let audited = audit(&mut why, ep.egress_mode);
    count(why.reason as u32);
    if audited {
        emit(
            ctx,
            &ep,
            pending.ifindex,
            direction::EGRESS,
            &pkt.flow,
            &why,
            verdict::AUDIT,
        );
    }
    if !why.allowed {
        return drop_packet(
            ctx,
            &ep,
            pending.ifindex,
            direction::EGRESS,
            &pkt.flow,
            &why,
        );
    }
    // The tuple the endpoint sent: the Service address and port in place of the backend's.
    // SAFETY: PendingValue.daddr is 16 bytes of plain data, as Addr is.
    let svc: Addr = unsafe { core::mem::transmute::<[u8; 16], Addr>(pending.daddr) };
    let sent = ct_key(
        &pkt.flow.saddr,
        &svc,
        pkt.flow.sport_be,
        pending.dport_be,
        pkt.flow.proto,
        direction::EGRESS,
        pending.ifindex,
    );
    let flags = if audited {
        ct_flags::SERVICE | ct_flags::AUDIT
    } else {
        ct_flags::SERVICE
    };
    if insert_ct_pair(&sent, &why, config, flags).is_none() {
        return drop_packet(
            ctx,
            &ep,
            pending.ifindex,
            direction::EGRESS,
            &pkt.flow,
            &Why::new(reason::CT_BUDGET),
        );
    }
    let backend = ServiceFlowValue {
        backend_addr: addr_key(&pkt.flow.daddr).addr,
        backend_port_be: pkt.flow.dport_be,
        _pad: 0,
    };
    let _ = SERVICE_FLOWS.insert(&sent, &backend, 0);
    if config.flags & config_flags::EVENTS_ON_ALLOW != 0 {
        emit(
            ctx,
            &ep,
            pending.ifindex,
            direction::EGRESS,
            &pkt.flow,
            &why,
            verdict::ALLOW,
        );
    }
    CONTINUE
}

/// The re-check of a Service flow (`ct_flags::SERVICE`) after a policy change: the Service
/// lookup again, on the tuple the endpoint sent (`opened`, found under `opened_key`); for a
/// port with mixed backends, the backend it was admitted for. An address that is no longer a
/// Service's is judged as itself.
#[inline(always)]
pub(crate) fn service_rejudge(
    ep: &EndpointInfo,
    opened_mode: u32,
    opened: &Flow,
    opened_key: &CtKey,
    config: &Config,
) -> Why {
    match opened_mode {
        _ if judged(ep, direction::EGRESS, opened_mode) => {}
        mode::DENY_ALL => return Why::new(ep.held_reason()),
        _ => return Why::new(reason::ALLOWED_NOT_ISOLATED),
    }
    let Some(service_id) = SERVICE_IPS.get_ptr(&addr_key(&opened.daddr)) else {
        return decide(ep, direction::EGRESS, opened, config, Arrival::FromSource);
    };
    // SAFETY: a live map value, read whole.
    let service_id = unsafe { *service_id };
    let entry = service_entry(ep.policy_set, service_id, opened);
    let mut why = match entry {
        Some(v) if v.action == POLICY_ACTION_DEFER => match SERVICE_FLOWS.get_ptr(opened_key) {
            Some(b) => {
                // SAFETY: a live LRU value, copied at once.
                let b = unsafe { *b };
                let mut f = *opened;
                // SAFETY: 16 bytes of plain data either way.
                f.daddr = unsafe { core::mem::transmute::<[u8; 16], Addr>(b.backend_addr) };
                f.dport_be = b.backend_port_be;
                decide(ep, direction::EGRESS, &f, config, Arrival::FromSource)
            }
            // Admitted for every backend, or its backend forgotten: which one it reaches is
            // unknown, so it cannot be kept.
            None => {
                let mut why = Why::new(reason::SERVICE_UNBOUND);
                why.peer_identity = service_id;
                why
            }
        },
        _ => entry_verdict(entry, service_id),
    };
    audit_service(&mut why, opened_mode);
    why
}

#[inline(always)]
pub(crate) fn pending_key(flow: &Flow) -> PendingKey {
    let w: [u32; 5] = [
        flow.saddr[0],
        flow.saddr[1],
        flow.saddr[2],
        flow.saddr[3],
        u32::from_ne_bytes({
            let p = flow.sport_be.to_ne_bytes();
            [p[0], p[1], flow.proto, 0]
        }),
    ];
    // SAFETY: PendingKey is saddr, sport_be, proto, _pad: 20 bytes of plain data, repr(C).
    unsafe { core::mem::transmute::<[u32; 5], PendingKey>(w) }
}
