//! The endpoint an interface stands for, in the current generation.

use crate::{PASS, events::*, maps::*, parse::*, policy::*};
use aya_ebpf::programs::TcContext;
use enforcer_common::*;

#[inline(always)]
pub(crate) fn unknown_endpoint(
    ctx: &TcContext,
    ifindex: u32,
    dir: u8,
    parsed: u8,
    pkt: &Packet,
    config: &Config,
) -> i32 {
    if config.flags & config_flags::DENY_UNKNOWN == 0 || parsed != PARSE_IP {
        return PASS;
    }
    let held = EndpointInfo {
        endpoint_id: 0,
        policy_set: 0,
        ingress_mode: mode::DENY_ALL,
        egress_mode: mode::DENY_ALL,
    };
    drop_packet(
        ctx,
        &held,
        ifindex,
        dir,
        &pkt.flow,
        &Why::new(reason::ENDPOINT_UNKNOWN),
    )
}

#[inline(always)]
pub(crate) fn endpoint(ifindex: u32, config: &Config) -> Option<EndpointInfo> {
    let v = ENDPOINTS.get_ptr(&ifindex)?;
    let slot = config.generation() as usize;
    // SAFETY: a live map value; the slot the current generation names is not written while it
    // is current (the agent writes only the other one).
    let (id, s) = unsafe { ((*v).endpoint_id, (*v).slots[slot]) };
    Some(EndpointInfo {
        endpoint_id: id,
        policy_set: s.policy_set,
        ingress_mode: s.ingress_mode,
        egress_mode: s.egress_mode,
    })
}

#[inline(always)]
pub(crate) fn mode_of(ep: &EndpointInfo, dir: u8) -> u32 {
    if dir == direction::INGRESS {
        ep.ingress_mode
    } else {
        ep.egress_mode
    }
}
