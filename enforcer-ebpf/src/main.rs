//! The enforcer datapath: two TC programs on the host side of every endpoint's interface.
//!
//! `from_endpoint` runs on TC ingress of the host-side veth, so it sees what the pod sends (the
//! pod's egress); `to_endpoint` runs on TC egress, so it sees what the pod receives (its
//! ingress). Both run the same pipeline:
//!
//! 1. endpoint: the interface's entry in `ENDPOINTS`; none, or an unmanaged direction, passes
//!    untouched (an attached program with no entry behaves as if it were not there);
//! 2. parse: Ethernet, IPv4/IPv6 (extension headers, fragments), TCP/UDP/SCTP/ICMP/ICMPv6, with
//!    every read bounds-checked; non-IP passes, a malformed packet in a managed direction drops;
//! 3. conntrack: one lookup; an established flow or a reply passes (ICMP errors are judged by the
//!    flow they quote);
//! 4. source (what the endpoint sends, on a conntrack miss, in every mode): its source address,
//!    ARP sender and neighbour advertisement target must be its own, or it drops as `SPOOFED`;
//!    neighbour discovery passes without policy only when genuine;
//! 5. policy: for a new flow in a judged direction (isolated, or holding cluster-wide rules),
//!    tier by tier (Admin, NetworkPolicy, Baseline): the peer's label identity, then the
//!    prefix partition cell it falls in, then "any peer", each one longest-prefix lookup over
//!    (protocol, port); in an ordered tier the lowest-ranked entry is the first matching rule,
//!    whose Accept or Deny decides and whose Pass goes on. An allowed flow gets two conntrack entries
//!    (its own tuple and the reversed one) so every later packet, either way, costs one lookup;
//! 6. every drop is counted and emitted on the `EVENTS` ring buffer; every first fragment that
//!    passes leaves its ports for the later fragments.
//!
//! The lookup order is written once, in `enforcer_common::PolicyKey`, and mirrored for userspace
//! in `enforcer::lookup`; the two must stay in step.
#![no_std]
#![no_main]
// BPF inline assembly: the atomic add of conntrack accounting (see conntrack::atomic_add).
#![feature(asm_experimental_arch)]
mod conntrack;
mod endpoint;
mod events;
mod maps;
mod parse;
mod policy;
mod service;
mod source;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use enforcer_common::{Config, EndpointInfo, direction, mode, reason, verdict};

use crate::{
    conntrack::{MISS, admit, remember_fragment, track},
    endpoint::{NO_ENDPOINT, endpoint, mode_of, unknown_endpoint},
    events::{count, drop_packet, emit},
    maps::{SCRATCH, SERVICE_IPS, config},
    parse::*,
    policy::{Arrival, Why, audit, decide, judged},
    service::{service_egress, service_new_flow},
    source::{
        Skb, arrival, error_matches, forged, genuine_nd, hairpin_flag, is_absent, mark_endpoint,
    },
};

// --- Verdicts ---------------------------------------------------------------------------------

/// "Not my business": the next program on the hook (TCX) or the default action (clsact) decides,
/// which is to pass unless someone else objects.
pub(crate) const PASS: i32 = TC_ACT_UNSPEC;
pub(crate) const DROP: i32 = TC_ACT_SHOT as i32;

/// What the endpoint sends: its egress.
#[classifier]
pub fn from_endpoint(ctx: TcContext) -> i32 {
    endpoint_program(&ctx, direction::EGRESS)
}

/// What the endpoint receives: its ingress.
#[classifier]
pub fn to_endpoint(ctx: TcContext) -> i32 {
    endpoint_program(&ctx, direction::INGRESS)
}

/// What the node sends out of its own interfaces: only flows whose egress was deferred at a
/// Service address are judged here, now that the DNAT has named the real destination.
#[classifier]
pub fn to_network(ctx: TcContext) -> i32 {
    network_program::<ETH_HLEN>(&ctx)
}

/// `to_network` on an L3 device (tunl0, WireGuard): its packets have no Ethernet header.
#[classifier]
pub fn to_network_l3(ctx: TcContext) -> i32 {
    network_program::<0>(&ctx)
}

#[inline(always)]
fn network_program<const L2: usize>(ctx: &TcContext) -> i32 {
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: as in endpoint_program.
    let pkt = unsafe { &mut *pkt };
    pkt.reset();
    let parsed = parse_at::<L2>(ctx, pkt);
    if parsed == PARSE_INVALID_ADDRESS {
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let why = Why::new(reason::INVALID_ADDRESS);
        return drop_packet(
            ctx,
            &NO_ENDPOINT,
            ifindex,
            direction::EGRESS,
            &pkt.flow,
            &why,
        );
    }
    if parsed != PARSE_IP {
        return PASS;
    }
    let config = config();
    match service_egress(ctx, pkt, &config) {
        DROP => DROP,
        _ => PASS,
    }
}

/// Does nothing: the baseline the datapath benchmark measures beside the real programs.
#[classifier]
pub fn empty(_ctx: TcContext) -> i32 {
    PASS
}

#[inline(always)]
fn endpoint_program(ctx: &TcContext, dir: u8) -> i32 {
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        // Cannot happen (a one-slot array always has slot 0); failing closed is still right.
        return DROP;
    };
    // SAFETY: this CPU's slot, used by this program invocation only (TC programs do not nest on
    // one CPU); reset before use.
    let pkt = unsafe { &mut *pkt };
    pkt.reset();
    let config = config();
    let skb = Skb::read(ctx);
    if dir == direction::EGRESS {
        mark_endpoint(ctx, &skb, &config);
    }
    let parsed = parse(ctx, pkt);
    let verdict = judge(ctx, dir, parsed, pkt, &config, &skb);
    // Every first fragment that passes, whatever let it pass (conntrack, a Service deferral, an
    // endpoint not isolated), leaves its ports for the later fragments of its datagram.
    if verdict == PASS && pkt.kind == KIND_FIRST_FRAGMENT && parsed == PARSE_IP {
        remember_fragment(pkt);
    }
    verdict
}

#[inline(always)]
fn judge(
    ctx: &TcContext,
    dir: u8,
    parsed: u8,
    pkt: &mut Packet,
    config: &Config,
    skb: &Skb,
) -> i32 {
    let ifindex = skb.ifindex;
    let config = *config;
    let slot = config.generation() as usize;

    // Conntrack first, before even the endpoint lookup: an established flow, a reply, or an ICMP
    // error about one, admitted under the current policy revision, costs one lookup.
    if parsed == PARSE_IP {
        let related = pkt.kind == KIND_ICMP_ERROR;
        // An error that does not travel between the ends of the flow it quotes is not about
        // that flow: it is judged as an ICMP packet of its own.
        if !related || error_matches(dir, pkt, slot) {
            let v = track(ctx, skb, dir, pkt, related, &config);
            if v != MISS {
                return v;
            }
        }
    }

    // A flow a local endpoint sent to a Service address arrives here translated: judge the
    // sender's egress now, before this endpoint's ingress.
    if parsed == PARSE_IP && dir == direction::INGRESS && service_egress(ctx, pkt, &config) == DROP
    {
        return DROP;
    }

    let Some(ep) = endpoint(ifindex, &config) else {
        return unknown_endpoint(ctx, ifindex, dir, parsed, pkt, &config);
    };
    if parsed == PARSE_INVALID_ADDRESS {
        return drop_packet(
            ctx,
            &ep,
            ifindex,
            dir,
            &pkt.flow,
            &Why::new(reason::INVALID_ADDRESS),
        );
    }
    // What a pod sends carries its own source, whatever its egress policy: a pod with none must
    // not borrow the address another pod's ingress admits.
    if dir == direction::EGRESS && !is_absent(&ep) {
        let r = forged(&ep, parsed, pkt, slot);
        if r != 0 {
            return drop_packet(ctx, &ep, ifindex, dir, &pkt.flow, &Why::new(r));
        }
    }
    let ep_mode = mode_of(&ep, dir);
    if ep_mode == mode::UNMANAGED {
        return PASS;
    }
    try_new_flow(ctx, skb, &ep, ep_mode, dir, parsed, pkt, &config)
}

/// A packet conntrack did not admit, at an endpoint that manages this direction: held
/// interfaces, fragments, Service deferral, then the policy decision.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn try_new_flow(
    ctx: &TcContext,
    skb: &Skb,
    ep: &EndpointInfo,
    ep_mode: u32,
    dir: u8,
    parsed: u8,
    pkt: &mut Packet,
    config: &Config,
) -> i32 {
    let ifindex = skb.ifindex;
    let slot = config.generation() as usize;
    match parsed {
        PARSE_IP => {}
        // ARP is not NetworkPolicy's business, and neighbour discovery is to IPv6 what ARP is to
        // IPv4: no pod works without either, held or not. Only genuine neighbour discovery
        // passes so; the rest is judged as the ICMPv6 it is.
        PARSE_ARP => return PASS,
        PARSE_NEIGHBOR_DISCOVERY if genuine_nd(dir, pkt, slot) => return PASS,
        PARSE_NEIGHBOR_DISCOVERY => {}
        // Other non-IP passes, except through a held interface.
        PARSE_NOT_IP if ep_mode != mode::DENY_ALL => return PASS,
        PARSE_NOT_IP => {}
        _ => {
            let why = Why::new(reason::MALFORMED);
            return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
        }
    }
    if ep_mode == mode::DENY_ALL {
        // Endpoint id 0: an interface held until its pod is known (`--default-deny-unknown`);
        // a pod's endpoint is held for the reason its slot carries (its policy does not fit).
        let why = Why::new(ep.held_reason());
        return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
    }
    if pkt.kind == KIND_UNKNOWN_FRAGMENT {
        let why = Why::new(reason::FRAGMENT_UNKNOWN);
        return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
    }
    let judged = judged(ep, dir, ep_mode);
    if judged
        && dir == direction::EGRESS
        && pkt.kind != KIND_ICMP_ERROR
        && let Some(service_id) = SERVICE_IPS.get_ptr(&addr_key(&pkt.flow.daddr))
    {
        // The backend is chosen by kube-proxy's DNAT, after this program: judged against the
        // Service's backends (see service.rs).
        // SAFETY: a live map value, read whole.
        let service_id = unsafe { *service_id };
        return service_new_flow(ctx, ep, ifindex, ep_mode, service_id, pkt, config);
    }
    let mut why = if judged {
        // Who sent it is worked out here, where it is used, not carried from the top: a
        // constant carried through every later stage multiplies the paths the verifier walks.
        let arrival = if dir == direction::EGRESS {
            Arrival::FromSource
        } else {
            arrival(skb, config)
        };
        decide(ep, dir, &pkt.flow, config, arrival)
    } else {
        Why::new(reason::ALLOWED_NOT_ISOLATED)
    };
    let audited = audit(&mut why, ep_mode);
    count(why.reason as u32);
    if !why.allowed {
        return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
    }
    if audited {
        emit(ctx, ep, ifindex, dir, &pkt.flow, &why, verdict::AUDIT);
    }
    // A hairpin, judged or not, stays one for the policies that judge it later.
    let flags = if dir == direction::INGRESS {
        hairpin_flag(skb, config)
    } else {
        0
    };
    admit(ctx, ep, ifindex, dir, pkt, &why, config, flags)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
