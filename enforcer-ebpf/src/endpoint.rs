//! The endpoint an interface stands for, in the current generation.

use crate::{PASS, events::*, maps::*, parse::*, policy::*, source::*};
use aya_ebpf::programs::TcContext;
use enforcer_common::*;

/// What events name when no endpoint is there: an interface held before its pod is known
/// (`DENY_UNKNOWN`), or the node's own interface (`to_network`).
pub(crate) const NO_ENDPOINT: EndpointInfo = EndpointInfo {
    endpoint_id: 0,
    policy_set: 0,
    ingress_mode: mode::DENY_ALL,
    egress_mode: mode::DENY_ALL,
    tiers: 0,
    tier_set: 0,
    baseline_set: 0,
};

/// An attached interface no endpoint entry names: the agent attached to it when it appeared,
/// before any pod claimed it. Untouched by default; with `DENY_UNKNOWN` it is held: nothing
/// passes but ARP and genuine neighbour discovery, and those only with no address that a known
/// endpoint or the node owns.
#[inline(always)]
pub(crate) fn unknown_endpoint(
    ctx: &TcContext,
    ifindex: u32,
    dir: u8,
    parsed: u8,
    pkt: &Packet,
    config: &Config,
) -> i32 {
    let reason = if parsed == PARSE_INVALID_ADDRESS {
        reason::INVALID_ADDRESS
    } else if config.flags & config_flags::DENY_UNKNOWN == 0 {
        return PASS;
    } else {
        let slot = config.generation() as usize;
        let forged = if dir == direction::EGRESS {
            forged(&NO_ENDPOINT, parsed, pkt, slot)
        } else {
            0
        };
        match parsed {
            _ if forged != 0 => forged,
            PARSE_ARP => return PASS,
            PARSE_NEIGHBOR_DISCOVERY if genuine_nd(dir, pkt, slot) => return PASS,
            _ => reason::ENDPOINT_UNKNOWN,
        }
    };
    drop_packet(
        ctx,
        &NO_ENDPOINT,
        ifindex,
        dir,
        &pkt.flow,
        &Why::new(reason),
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
        tiers: s.tiers,
        tier_set: s.tier_set,
        baseline_set: s.baseline_set,
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
