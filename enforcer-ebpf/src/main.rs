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
//! 4. policy: for a new flow in an isolated direction, the peer's label identity, then the
//!    ipBlock partition cell it falls in, then "any peer", each one longest-prefix lookup over
//!    (protocol, port); the first entry found decides. An allowed flow gets two conntrack entries
//!    (its own tuple and the reversed one) so every later packet, either way, costs one lookup;
//! 5. every drop is counted and emitted on the `EVENTS` ring buffer.
//!
//! The lookup order is written once, in `enforcer_common::PolicyKey`, and mirrored for userspace
//! in `enforcer::lookup`; the two must stay in step.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use enforcer_common::{
    Config, CtKey, CtValue, EndpointInfo, Event, FragKey, FragValue, IdentityValue, IpAddrKey,
    POLICY_ACTION_ALLOW, POLICY_ACTION_DENY, PolicyKey, PolicyValue, capacity, config_flags,
    counter, ct_flags, direction, identity, mode, policy_prefix, reason, verdict,
};

// --- Maps -------------------------------------------------------------------------------------

#[map]
static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(capacity::ENDPOINTS, 0);

#[map]
static IP_IDENTITY: HashMap<IpAddrKey, IdentityValue> =
    HashMap::with_max_entries(capacity::IP_IDENTITY, 0);

#[map]
static CIDR_IDENTITY: LpmTrie<IpAddrKey, IdentityValue> =
    LpmTrie::with_max_entries(capacity::CIDR_IDENTITY, 0);

#[map]
static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::with_max_entries(capacity::POLICY, 0);

#[map]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

#[map]
static FRAGMENTS: LruHashMap<FragKey, FragValue> =
    LruHashMap::with_max_entries(capacity::FRAGMENTS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-CPU scratch space for the parsed packet: the 512-byte BPF stack cannot hold it beside
/// the conntrack and policy keys.
#[map]
static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

#[map]
static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

// --- Verdicts ---------------------------------------------------------------------------------

/// "Not my business": the next program on the hook (TCX) or the default action (clsact) decides,
/// which is to pass unless someone else objects.
const PASS: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT as i32;

// --- Packet constants -------------------------------------------------------------------------

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_SCTP: u8 = 132;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers walked before the packet counts as malformed. Real stacks send at most a
/// few; an attacker sending more must not make the verifier's loop bound the policy.
const MAX_EXT_HEADERS: usize = 6;
/// Largest header offset we read at; keeps every offset visibly bounded for the verifier.
const MAX_OFFSET: usize = 0x3fff;

// --- Entry points -----------------------------------------------------------------------------

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

/// Does nothing: the baseline the datapath benchmark measures beside the real programs.
#[classifier]
pub fn empty(_ctx: TcContext) -> i32 {
    PASS
}

#[inline(always)]
fn endpoint_program(ctx: &TcContext, dir: u8) -> i32 {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is copied out at once; the agent replaces entries whole.
    let Some(ep) = (unsafe { ENDPOINTS.get(&ifindex) }).copied() else {
        return PASS;
    };
    let ep_mode = if dir == direction::INGRESS {
        ep.ingress_mode
    } else {
        ep.egress_mode
    };
    if ep_mode == mode::UNMANAGED {
        return PASS;
    }
    try_endpoint(ctx, &ep, ifindex, ep_mode, dir)
}

#[inline(always)]
fn try_endpoint(ctx: &TcContext, ep: &EndpointInfo, ifindex: u32, ep_mode: u32, dir: u8) -> i32 {
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        // Cannot happen (a one-slot array always has slot 0); failing closed is still right.
        return DROP;
    };
    // SAFETY: this CPU's slot, used by this program invocation only (TC programs do not nest on
    // one CPU); reset below before use.
    let pkt = unsafe { &mut *pkt };
    pkt.reset();
    match parse(ctx, pkt) {
        PARSE_IP => {}
        // Non-IP (ARP above all) is not NetworkPolicy's business; neighbour discovery is to IPv6
        // what ARP is to IPv4: no pod works without either.
        PARSE_NOT_IP | PARSE_NEIGHBOR_DISCOVERY => return PASS,
        _ => {
            let why = Why::new(reason::MALFORMED);
            return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
        }
    }
    if ep_mode == mode::DENY_ALL {
        let why = Why::new(reason::ENDPOINT_DENY_ALL);
        return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
    }

    // Conntrack first: an established flow, a reply, or an ICMP error about one, passes here.
    let ct_key = if pkt.kind == KIND_ICMP_ERROR {
        pkt.quoted.related_key(ep.endpoint_id, dir)
    } else {
        pkt.flow.ct_key(ep.endpoint_id, dir)
    };
    if CONNTRACK.get_ptr(&ct_key).is_some() {
        return PASS;
    }
    if pkt.kind == KIND_UNKNOWN_FRAGMENT {
        let why = Why::new(reason::FRAGMENT_UNKNOWN);
        return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
    }

    let why = if ep_mode == mode::ENFORCE {
        decide(ep, dir, &pkt.flow)
    } else {
        Why::new(reason::ALLOWED_NOT_ISOLATED)
    };
    count(why.reason as u32);
    if !why.allowed {
        return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
    }
    admit(ctx, ep, ifindex, dir, pkt, &ct_key, &why);
    PASS
}

// --- Parsing ----------------------------------------------------------------------------------
//
// The parser fills one flat `Packet` and returns a status code: rich enums with payloads get
// packed into registers in ways the verifier rejects (pointer shifts), flat structs do not.

const PARSE_IP: u8 = 0;
const PARSE_NOT_IP: u8 = 1;
const PARSE_NEIGHBOR_DISCOVERY: u8 = 2;
const PARSE_MALFORMED: u8 = 3;

const KIND_PLAIN: u8 = 0;
/// First fragment of a fragmented datagram: its ports are remembered when it passes.
const KIND_FIRST_FRAGMENT: u8 = 1;
/// Later fragment whose first fragment passed: ports filled in from `FRAGMENTS`.
const KIND_LATER_FRAGMENT: u8 = 2;
/// Later fragment with no remembered first fragment.
const KIND_UNKNOWN_FRAGMENT: u8 = 3;
/// ICMP error: `quoted` holds the packet it is about.
const KIND_ICMP_ERROR: u8 = 4;

/// The addresses, protocol and ports of a packet, as it travels.
#[derive(Clone, Copy)]
struct Flow {
    saddr: [u8; 16],
    daddr: [u8; 16],
    /// TCP/UDP/SCTP ports; for ICMP echo the identifier (request: source, reply: destination).
    sport_be: u16,
    dport_be: u16,
    proto: u8,
    family: u8,
    /// 1 when the protocol has ports (TCP, UDP, SCTP): policy matches them.
    has_ports: u8,
}

impl Flow {
    #[inline(always)]
    fn ct_key(&self, endpoint_id: u32, dir: u8) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            direction: dir,
            _pad: 0,
            endpoint_id,
        }
    }
}

/// The original packet an ICMP error quotes.
#[derive(Clone, Copy)]
struct Quoted {
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport_be: u16,
    dport_be: u16,
    proto: u8,
}

impl Quoted {
    /// The error travels against the quoted packet, so it belongs to the flow whose reply
    /// direction is this one: the quoted tuple, reversed, in this direction.
    #[inline(always)]
    fn related_key(&self, endpoint_id: u32, dir: u8) -> CtKey {
        CtKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto: self.proto,
            direction: dir,
            _pad: 0,
            endpoint_id,
        }
    }
}

struct Packet {
    flow: Flow,
    /// `KIND_*`.
    kind: u8,
    /// Set when the packet is a fragment.
    is_fragment: u8,
    is_first_fragment: u8,
    frag_id: u32,
    l4_off: usize,
    quoted: Quoted,
}

impl Packet {
    /// Clears what the parser only sets on some paths (the rest it always writes).
    #[inline(always)]
    fn reset(&mut self) {
        self.flow.saddr = [0; 16];
        self.flow.daddr = [0; 16];
        self.flow.sport_be = 0;
        self.flow.dport_be = 0;
        self.flow.proto = 0;
        self.flow.family = 0;
        self.flow.has_ports = 0;
        self.kind = KIND_PLAIN;
        self.is_fragment = 0;
        self.is_first_fragment = 0;
        self.frag_id = 0;
        self.l4_off = 0;
    }
}

/// Reads a `T` at `off` bytes into the packet: straight from the linear data when it is there
/// (the common case, and the fast one), else through the helper that also reaches paged data.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    if off > MAX_OFFSET {
        return Err(());
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above.
        Ok(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    } else {
        ctx.load::<T>(off).map_err(|_| ())
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len_be: u16,
    id_be: u16,
    frag_off_be: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    version_class_flow: [u8; 4],
    payload_len_be: u16,
    next_header: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[inline(always)]
fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

#[inline(always)]
fn parse(ctx: &TcContext, pkt: &mut Packet) -> u8 {
    let Ok(ethertype_be) = read::<u16>(ctx, 12) else {
        return PARSE_NOT_IP;
    };
    let l3 = match u16::from_be(ethertype_be) {
        ETH_P_IP => parse_ipv4(ctx, pkt),
        ETH_P_IPV6 => parse_ipv6(ctx, pkt),
        // A tagged frame would carry IP past the policy: an endpoint has no business sending one.
        ETH_P_8021Q | ETH_P_8021AD => Err(()),
        _ => return PARSE_NOT_IP,
    };
    if l3.is_err() {
        return PARSE_MALFORMED;
    }
    parse_l4(ctx, pkt)
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ()> {
    pkt.flow.family = 4;
    let ip: Ipv4Hdr = read(ctx, ETH_HLEN)?;
    pkt.flow.saddr = v4_mapped(ip.saddr);
    pkt.flow.daddr = v4_mapped(ip.daddr);
    pkt.flow.proto = ip.proto;
    let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be(ip.tot_len_be) as usize;
    if ip.version_ihl >> 4 != 4
        || ihl < 20
        || tot_len < ihl
        || ETH_HLEN + tot_len > ctx.len() as usize
    {
        return Err(());
    }
    let frag = u16::from_be(ip.frag_off_be);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    if offset != 0 || more {
        pkt.is_fragment = 1;
        pkt.is_first_fragment = (offset == 0) as u8;
        pkt.frag_id = u16::from_be(ip.id_be) as u32;
    }
    pkt.l4_off = ETH_HLEN + ihl;
    Ok(())
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ()> {
    pkt.flow.family = 6;
    let ip: Ipv6Hdr = read(ctx, ETH_HLEN)?;
    pkt.flow.saddr = ip.saddr;
    pkt.flow.daddr = ip.daddr;
    pkt.flow.proto = ip.next_header;
    if ip.version_class_flow[0] >> 4 != 6
        || ETH_HLEN + 40 + u16::from_be(ip.payload_len_be) as usize > ctx.len() as usize
    {
        return Err(());
    }
    let mut next = ip.next_header;
    let mut off = ETH_HLEN + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let h: [u8; 2] = read(ctx, off)?;
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            IPV6_AH => {
                let h: [u8; 2] = read(ctx, off)?;
                next = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let h: [u8; 8] = read(ctx, off)?;
                next = h[0];
                let frag = u16::from_be_bytes([h[2], h[3]]);
                let offset = frag >> 3;
                let more = frag & 1 != 0;
                // An atomic fragment (offset 0, no more) is a whole datagram: no state needed.
                if offset != 0 || more {
                    pkt.is_fragment = 1;
                    pkt.is_first_fragment = (offset == 0) as u8;
                    pkt.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                }
                off += 8;
            }
            _ => {
                pkt.flow.proto = next;
                pkt.l4_off = off;
                return Ok(());
            }
        }
    }
    // Still inside the extension headers after the walk: judge it unreadable.
    pkt.flow.proto = next;
    Err(())
}

#[inline(always)]
fn parse_l4(ctx: &TcContext, pkt: &mut Packet) -> u8 {
    if pkt.is_fragment != 0 && pkt.is_first_fragment == 0 {
        // Later fragments carry no L4 header: take the first fragment's ports, if it passed.
        let key = frag_key(&pkt.flow, pkt.frag_id);
        match FRAGMENTS.get_ptr(&key) {
            Some(v) => {
                // SAFETY: copied at once; entries are written whole.
                let v = unsafe { *v };
                pkt.flow.sport_be = v.sport_be;
                pkt.flow.dport_be = v.dport_be;
                pkt.flow.has_ports = is_port_proto(pkt.flow.proto) as u8;
                pkt.kind = KIND_LATER_FRAGMENT;
            }
            None => pkt.kind = KIND_UNKNOWN_FRAGMENT,
        }
        return PARSE_IP;
    }
    if pkt.is_fragment != 0 {
        pkt.kind = KIND_FIRST_FRAGMENT;
    }
    let l4_off = pkt.l4_off;
    let proto = pkt.flow.proto;
    if is_port_proto(proto) {
        // TCP needs its fixed header, UDP its 8 bytes, SCTP its common header (12 bytes).
        let need = match proto {
            IPPROTO_TCP => 20,
            IPPROTO_UDP => 8,
            _ => 12,
        };
        if l4_off + need > ctx.len() as usize {
            return PARSE_MALFORMED;
        }
        let Ok(ports) = read::<[u16; 2]>(ctx, l4_off) else {
            return PARSE_MALFORMED;
        };
        pkt.flow.sport_be = ports[0];
        pkt.flow.dport_be = ports[1];
        pkt.flow.has_ports = 1;
    } else if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
        let Ok(h) = read::<[u8; 8]>(ctx, l4_off) else {
            return PARSE_MALFORMED;
        };
        let v6 = proto == IPPROTO_ICMPV6;
        let id_be = u16::from_ne_bytes([h[4], h[5]]);
        match icmp_class(v6, h[0]) {
            ICMP_ECHO_REQUEST => pkt.flow.sport_be = id_be,
            ICMP_ECHO_REPLY => pkt.flow.dport_be = id_be,
            ICMP_ERROR => {
                if parse_quoted(ctx, l4_off + 8, v6, &mut pkt.quoted).is_err() {
                    return PARSE_MALFORMED;
                }
                pkt.kind = KIND_ICMP_ERROR;
            }
            ICMP_NEIGHBOR_DISCOVERY => return PARSE_NEIGHBOR_DISCOVERY,
            _ => {}
        }
    }
    PARSE_IP
}

#[inline(always)]
fn is_port_proto(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

#[inline(always)]
fn frag_key(flow: &Flow, id: u32) -> FragKey {
    FragKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        id,
        proto: flow.proto,
        _pad: [0; 3],
    }
}

const ICMP_OTHER: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 1;
const ICMP_ECHO_REPLY: u8 = 2;
const ICMP_ERROR: u8 = 3;
const ICMP_NEIGHBOR_DISCOVERY: u8 = 4;

#[inline(always)]
fn icmp_class(v6: bool, ty: u8) -> u8 {
    if v6 {
        match ty {
            128 => ICMP_ECHO_REQUEST,
            129 => ICMP_ECHO_REPLY,
            // Destination unreachable, packet too big, time exceeded, parameter problem.
            1..=4 => ICMP_ERROR,
            // Router/neighbour solicitation and advertisement, redirect; MLD queries and reports.
            130..=137 | 143 => ICMP_NEIGHBOR_DISCOVERY,
            _ => ICMP_OTHER,
        }
    } else {
        match ty {
            8 => ICMP_ECHO_REQUEST,
            0 => ICMP_ECHO_REPLY,
            // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
            3 | 4 | 5 | 11 | 12 => ICMP_ERROR,
            _ => ICMP_OTHER,
        }
    }
}

/// The tuple of the packet an ICMP error quotes (its IP header and first 8 bytes of L4).
#[inline(always)]
fn parse_quoted(ctx: &TcContext, off: usize, v6: bool, q: &mut Quoted) -> Result<(), ()> {
    let l4_off;
    if v6 {
        let ip: Ipv6Hdr = read(ctx, off)?;
        q.saddr = ip.saddr;
        q.daddr = ip.daddr;
        q.proto = ip.next_header;
        l4_off = off + 40;
    } else {
        let ip: Ipv4Hdr = read(ctx, off)?;
        let ihl = ((ip.version_ihl & 0x0f) as usize) * 4;
        if ip.version_ihl >> 4 != 4 || ihl < 20 {
            return Err(());
        }
        q.saddr = v4_mapped(ip.saddr);
        q.daddr = v4_mapped(ip.daddr);
        q.proto = ip.proto;
        l4_off = off + ihl;
    }
    let h: [u8; 8] = read(ctx, l4_off)?;
    if is_port_proto(q.proto) {
        q.sport_be = u16::from_ne_bytes([h[0], h[1]]);
        q.dport_be = u16::from_ne_bytes([h[2], h[3]]);
    } else if q.proto == IPPROTO_ICMP || q.proto == IPPROTO_ICMPV6 {
        let id_be = u16::from_ne_bytes([h[4], h[5]]);
        match icmp_class(v6, h[0]) {
            ICMP_ECHO_REQUEST => q.sport_be = id_be,
            ICMP_ECHO_REPLY => q.dport_be = id_be,
            _ => {}
        }
    }
    Ok(())
}

// --- Policy -----------------------------------------------------------------------------------

/// A verdict and what it rests on, for the event and the counters.
struct Why {
    allowed: bool,
    reason: u8,
    peer_identity: u32,
    peer_cidr_identity: u32,
    policy_id: u32,
    rule_index: u16,
}

impl Why {
    #[inline(always)]
    fn new(reason: u8) -> Self {
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

/// The new-flow decision of an isolated direction; `enforcer::lookup::decide` is its mirror.
#[inline(always)]
fn decide(ep: &EndpointInfo, dir: u8, flow: &Flow) -> Why {
    let peer = if dir == direction::EGRESS {
        flow.daddr
    } else {
        flow.saddr
    };
    let peer_key = IpAddrKey { addr: peer };
    let peer_identity = match unsafe { IP_IDENTITY.get(&peer_key) } {
        Some(v) => v.identity,
        None => identity::WORLD,
    };
    let peer_cidr_identity = match CIDR_IDENTITY.get(Key::new(128, peer_key)) {
        Some(v) => v.identity,
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
    if found.is_none() && peer_cidr_identity != 0 {
        found = policy_lookup(ep.policy_set, peer_cidr_identity, dir, flow.proto, port_be);
    }
    let mut matched = peer_identity;
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
fn policy_lookup(
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

// --- Verdict stages ---------------------------------------------------------------------------

/// Lets a new flow in: conntrack both ways, remember a first fragment's ports, maybe report.
#[inline(always)]
fn admit(
    ctx: &TcContext,
    ep: &EndpointInfo,
    ifindex: u32,
    dir: u8,
    pkt: &Packet,
    ct_key: &CtKey,
    why: &Why,
) {
    let config = config();
    // An error about an unknown flow opens nothing.
    if pkt.kind != KIND_ICMP_ERROR {
        {
            let value = CtValue {
                created_ns: unsafe { bpf_ktime_get_ns() },
                revision: config.revision,
                flags: 0,
                policy_id: why.policy_id,
                rule_index: why.rule_index as u32,
            };
            // A full LRU evicts the oldest flow; a failed insert only costs a later lookup.
            let _ = CONNTRACK.insert(ct_key, &value, 0);
            let mut value = value;
            value.flags = ct_flags::REPLY;
            let _ = CONNTRACK.insert(&ct_key.reversed(), &value, 0);
        }
    }
    if pkt.kind == KIND_FIRST_FRAGMENT {
        let id = pkt.frag_id;
        let v = FragValue {
            sport_be: pkt.flow.sport_be,
            dport_be: pkt.flow.dport_be,
            _pad: 0,
        };
        let _ = FRAGMENTS.insert(&frag_key(&pkt.flow, id), &v, 0);
    }
    if config.flags & config_flags::EVENTS_ON_ALLOW != 0 {
        emit(ctx, ep, ifindex, dir, &pkt.flow, why, verdict::ALLOW);
    }
}

#[inline(always)]
fn drop_packet(
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
    emit(ctx, ep, ifindex, dir, flow, why, verdict::DROP);
    DROP
}

#[inline(always)]
fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config {
            revision: 0,
            flags: 0,
        },
    }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = DROP_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; no other writer while this program runs on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn emit(
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
        (*e).saddr = flow.saddr;
        (*e).daddr = flow.daddr;
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
        (*e)._pad = 0;
        (*e).packet_len = ctx.len();
        (*e).policy_set = ep.policy_set;
    }
    entry.submit(0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
