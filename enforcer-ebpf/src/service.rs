//! Egress to a Service address, judged on the translated flow (see docs/architecture.md).

use crate::{conntrack::*, endpoint::*, events::*, maps::*, parse::*, policy::*};
use aya_ebpf::programs::TcContext;
use enforcer_common::*;

/// Sentinel of `service_egress`: no deferred flow here, or it is allowed; go on.
pub(crate) const CONTINUE: i32 = i32::MIN;

/// Judges the deferred egress of a flow a local endpoint opened to a Service address, on the
/// translated packet. Allowed: conntrack entries at the sender, under the tuple it sent and
/// the reply it will see (both with the Service address, as the reverse NAT restores it).
#[inline(always)]
pub(crate) fn service_egress(ctx: &TcContext, pkt: &mut Packet, config: &Config) -> i32 {
    let key = pending_key(&pkt.flow);
    let Some(pending) = PENDING.get_ptr(&key) else {
        return CONTINUE;
    };
    // SAFETY: copied out at once.
    let pending = unsafe { *pending };
    let _ = PENDING.remove(&key);
    let Some(ep) = endpoint(pending.ifindex, config) else {
        return CONTINUE;
    };
    if ep.egress_mode != mode::ENFORCE && ep.egress_mode != mode::AUDIT {
        return CONTINUE;
    }
    let mut why = decide(&ep, direction::EGRESS, &pkt.flow, config, true);
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
    insert_ct_pair(&sent, &why, config, ct_flags::SERVICE);
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

/// Defers the egress verdict of a new flow to a Service address (see `service_egress`).
#[inline(always)]
pub(crate) fn defer_to_service(pkt: &Packet, ifindex: u32) {
    let v = PendingValue {
        daddr: addr_key(&pkt.flow.daddr).addr,
        dport_be: pkt.flow.dport_be,
        _pad: 0,
        ifindex,
    };
    let _ = PENDING.insert(&pending_key(&pkt.flow), &v, 0);
}
