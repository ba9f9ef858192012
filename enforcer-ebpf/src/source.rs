//! What a packet may claim about where it comes from: the source address of what an endpoint
//! sends (anti-spoofing), the sender of its ARP and neighbour advertisements, the HOST identity,
//! and whether neighbour discovery looks like what it claims to be.
//!
//! Identity is bound to the interface, never taken from the packet alone: an address belongs to
//! the endpoint that `IP_IDENTITY` names for it in the current generation, so a pod can neither
//! borrow another pod's (local or remote) identity, nor the node's, nor poison the node's
//! neighbour table with someone else's address.

use aya_ebpf::programs::TcContext;
use enforcer_common::*;

use crate::{maps::*, parse::*, policy::Arrival};

/// Who an address belongs to in the current generation.
pub(crate) struct Owner {
    /// `IP_IDENTITY` has the address (a pod, anywhere, or the node).
    pub(crate) known: bool,
    /// The local endpoint that owns it, 0 when none.
    pub(crate) endpoint_id: u32,
    pub(crate) identity: u32,
}

#[inline(always)]
pub(crate) fn owner(a: &Addr, slot: usize) -> Owner {
    match unsafe { IP_IDENTITY.get(&addr_key(a)) } {
        Some(v) if v.identity[slot] != 0 => Owner {
            known: true,
            endpoint_id: v.endpoint_id[slot],
            identity: v.identity[slot],
        },
        _ => Owner {
            known: false,
            endpoint_id: 0,
            identity: 0,
        },
    }
}

/// Whether the endpoint may use `a` as its own. A held interface (endpoint id 0, no pod known
/// yet) owns nothing, but may claim what nobody else owns (its pod's address is not known yet).
#[inline(always)]
pub(crate) fn is_mine(ep: &EndpointInfo, a: &Addr, slot: usize) -> bool {
    let o = owner(a, slot);
    if ep.endpoint_id == 0 {
        !o.known
    } else {
        o.endpoint_id == ep.endpoint_id
    }
}

/// An `ENDPOINTS` entry whose current slot is empty: an endpoint the agent is adding (before
/// the flip) or removing (after it). It is no endpoint in this generation, and passes as an
/// interface with no entry does.
#[inline(always)]
pub(crate) fn is_absent(ep: &EndpointInfo) -> bool {
    ep.policy_set == 0 && ep.ingress_mode == mode::UNMANAGED && ep.egress_mode == mode::UNMANAGED
}

#[inline(always)]
fn is_unspecified(a: &Addr) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0
}

/// `fe80::/10`.
#[inline(always)]
pub(crate) fn is_link_local6(a: &Addr) -> bool {
    a[0] & u32::from_ne_bytes([0xff, 0xc0, 0, 0]) == u32::from_ne_bytes([0xfe, 0x80, 0, 0])
}

/// `ff00::/8`.
#[inline(always)]
fn is_multicast6(a: &Addr) -> bool {
    a[0] & u32::from_ne_bytes([0xff, 0, 0, 0]) == u32::from_ne_bytes([0xff, 0, 0, 0])
}

#[inline(always)]
fn ports_are(flow: &Flow, sport: u16, dport: u16) -> bool {
    flow.proto == IPPROTO_UDP && flow.sport_be == sport.to_be() && flow.dport_be == dport.to_be()
}

/// The reason to drop what an endpoint sends because of what it claims to be (0: nothing
/// forged). Runs on the conntrack-miss path of `from_endpoint` only: every conntrack entry at an
/// endpoint's egress was made for a source this check passed (a new flow it opened), or is the
/// reverse of a flow into it (whose source is the address that flow was sent to).
#[inline(always)]
pub(crate) fn forged(ep: &EndpointInfo, parsed: u8, pkt: &Packet, slot: usize) -> u8 {
    let flow = &pkt.flow;
    match parsed {
        PARSE_IP => {
            if ep.endpoint_id == 0 || is_mine(ep, &flow.saddr, slot) {
                return 0;
            }
            let unspecified = if flow.family == 4 {
                flow.saddr[3] == 0
            } else {
                is_unspecified(&flow.saddr)
            };
            // A DHCP client has no address yet; a DHCPv6 client speaks from its link-local one.
            let dhcp = pkt.kind == KIND_PLAIN
                && ((flow.family == 4 && unspecified && ports_are(flow, 68, 67))
                    || (flow.family == 6
                        && is_link_local6(&flow.saddr)
                        && ports_are(flow, 546, 547)));
            if dhcp { 0 } else { reason::SPOOFED }
        }
        // An address we cannot read cannot be checked: nothing forwards a packet it cannot
        // parse either, so nothing is lost.
        PARSE_MALFORMED if pkt.have_addrs == 0 => reason::MALFORMED,
        PARSE_MALFORMED if ep.endpoint_id != 0 && !is_mine(ep, &flow.saddr, slot) => {
            reason::SPOOFED
        }
        // The sender address is what the node's neighbour table learns: 0.0.0.0 only probes.
        PARSE_ARP if flow.saddr[3] != 0 && !is_mine(ep, &flow.saddr, slot) => reason::SPOOFED,
        PARSE_NEIGHBOR_DISCOVERY => forged_nd(ep, pkt, slot),
        _ => 0,
    }
}

/// Neighbour discovery from an endpoint: never a router's messages; its source is its own,
/// link-local, or unspecified for duplicate-address detection and the MLD reports sent
/// meanwhile; an advertisement names only an address of its own (or a link-local one) as its
/// target.
#[inline(always)]
fn forged_nd(ep: &EndpointInfo, pkt: &Packet, slot: usize) -> u8 {
    let s = &pkt.flow.saddr;
    let t = pkt.icmp_type;
    // A pod is no router: its router advertisements and redirects would take over the routes
    // of the pods beside it on a bridge.
    if t == ND_ROUTER_ADVERT || t == ND_REDIRECT {
        return reason::SPOOFED;
    }
    let source_ok = is_link_local6(s)
        || (is_unspecified(s) && (t == ND_NEIGHBOR_SOLICIT || t == MLD_REPORT || t == MLD2_REPORT))
        || is_mine(ep, s, slot);
    if !source_ok {
        return reason::SPOOFED;
    }
    if t == ND_NEIGHBOR_ADVERT
        && !is_link_local6(&pkt.nd_target)
        && !is_mine(ep, &pkt.nd_target, slot)
    {
        return reason::SPOOFED;
    }
    0
}

/// Whether neighbour discovery or MLD looks like what it claims to be, and so passes without
/// policy: ND with hop limit 255 and MLD with hop limit 1 (a router would have lowered the
/// first and dropped the second: it comes from the link), from a link-local, unspecified (only
/// what duplicate-address detection sends) or known address, to a multicast, link-local or
/// known address. Router advertisements and redirects never come from a pod. Anything else is
/// plain ICMPv6 to policy.
#[inline(always)]
pub(crate) fn genuine_nd(dir: u8, pkt: &Packet, slot: usize) -> bool {
    let t = pkt.icmp_type;
    let mld = matches!(t, MLD_QUERY | MLD_REPORT | MLD_DONE | MLD2_REPORT);
    let hops = if mld { 1 } else { 255 };
    if pkt.hop_limit != hops {
        return false;
    }
    // Router advertisements, redirects and MLD queries are a router's to send, not a pod's.
    if dir == direction::EGRESS && (t == ND_ROUTER_ADVERT || t == ND_REDIRECT || t == MLD_QUERY) {
        return false;
    }
    let s = &pkt.flow.saddr;
    let d = &pkt.flow.daddr;
    let source_ok = is_link_local6(s)
        || (is_unspecified(s) && (t == ND_NEIGHBOR_SOLICIT || t == MLD_REPORT || t == MLD2_REPORT))
        || (!mld && owner(s, slot).known);
    source_ok && (is_multicast6(d) || is_link_local6(d) || (!mld && owner(d, slot).known))
}

/// The skb fields the endpoint programs read, loaded once at entry: reading one field from
/// two places invites the compiler to keep an offset context pointer for later, which the
/// verifier refuses.
#[derive(Clone, Copy)]
pub(crate) struct Skb {
    pub(crate) ifindex: u32,
    /// `skb_iif`: the interface the packet entered the node by (0: the node sent it).
    ingress_ifindex: u32,
    mark: u32,
}

impl Skb {
    #[inline(always)]
    pub(crate) fn read(ctx: &TcContext) -> Self {
        // SAFETY: fields of the context the program was handed.
        unsafe {
            let s = ctx.skb.skb;
            Skb {
                ifindex: (*s).ifindex,
                ingress_ifindex: (*s).ingress_ifindex,
                mark: (*s).mark,
            }
        }
    }
}

/// Who sent a packet into an endpoint (see `policy::Arrival`):
/// - the endpoint itself, back through a Service, when the mark carries this interface's slot
///   (`mark_endpoint` wrote it on the way out; kube-proxy masqueraded the source to the node);
/// - the node, when the packet has no ingress interface (`skb_iif` 0: the node sent it) or
///   entered from this very interface (a hairpin with the mark off: the pod's own
///   from_endpoint checked its source);
/// - else it entered from another pod's interface (routed, or bridged from its port) or from
///   the network, and a node address in its source is judged as WORLD plus its CIDR identity.
#[inline(always)]
pub(crate) fn arrival(skb: &Skb, config: &Config) -> Arrival {
    if hairpin_flag(skb, config) != 0 {
        Arrival::Hairpin
    } else if skb.ingress_ifindex == 0 || skb.ingress_ifindex == skb.ifindex {
        Arrival::FromSource
    } else {
        Arrival::Forwarded
    }
}

/// `ct_flags::HAIRPIN` when the packet's endpoint mark is this interface's own slot, else 0
/// (the mark off: `Config::endpoint_mark_shift` 0). Arithmetic without a branch, so that the
/// verifier carries one unknown value rather than walking the rest of the program twice.
#[inline(always)]
pub(crate) fn hairpin_flag(skb: &Skb, config: &Config) -> u16 {
    let shift = config.endpoint_mark_shift as u64;
    // 1 when the mark is off (shift 0); a bit no slot has then keeps the comparison false.
    let off = shift.wrapping_sub(1) >> 63;
    let seen = (((skb.mark as u64) >> (shift & 31)) & endpoint_mark::SLOTS as u64) | (off << 20);
    let differs = seen ^ endpoint_mark::slot(skb.ifindex) as u64;
    // 1 exactly when `differs` is 0 (it is below 2^21).
    let same = differs.wrapping_sub(1) >> 63;
    (same as u16) * ct_flags::HAIRPIN
}

/// Writes this interface's slot into the endpoint mark of what the endpoint sends (see
/// `enforcer_common::endpoint_mark`), over whatever the pod left there: it is how the packet,
/// once the node has routed and perhaps masqueraded it, still says which endpoint sent it.
#[inline(always)]
pub(crate) fn mark_endpoint(ctx: &TcContext, skb: &Skb, config: &Config) {
    let shift = config.endpoint_mark_shift;
    if shift == 0 || shift > endpoint_mark::MAX_SHIFT {
        return;
    }
    let ours = endpoint_mark::slot(skb.ifindex) << shift;
    ctx.set_mark((skb.mark & !endpoint_mark::mask(shift)) | ours);
}

/// An ICMP error belongs to the flow it quotes only when it travels between that flow's ends:
/// its receiver is the quoted sender, and its sender is the quoted receiver. Into an endpoint
/// the sender may also be a router on the path (time exceeded, fragmentation needed), so any
/// address that is not a pod's (the node, the world) is accepted there; out of an endpoint it
/// never is, for a pod is no router.
#[inline(always)]
pub(crate) fn error_matches(dir: u8, pkt: &Packet, slot: usize) -> bool {
    let (f, q) = (&pkt.flow, &pkt.quoted);
    if f.daddr != q.saddr {
        return false;
    }
    if f.saddr == q.daddr {
        return true;
    }
    dir == direction::INGRESS && owner(&f.saddr, slot).identity < identity::FIRST_LABEL
}
