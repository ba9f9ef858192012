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
    maps::{
        Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
    programs::TcContext,
};
use enforcer_common::{
    Config, CtKey, CtValue, EndpointInfo, EndpointValue, Event, EventBucket, EventLimit, FragKey,
    FragValue, IdentitySlots, IpAddrKey, NameKey, NameValue, POLICY_ACTION_ALLOW,
    POLICY_ACTION_DENY, PendingKey, PendingValue, PolicyKey, PolicyValue, RuleCounter,
    RuleCounterKey, capacity, config_flags, counter, ct_flags, direction, identity, mode,
    policy_prefix, reason, verdict,
};

// --- Maps -------------------------------------------------------------------------------------

#[map]
static ENDPOINTS: HashMap<u32, EndpointValue> = HashMap::with_max_entries(capacity::ENDPOINTS, 0);

#[map]
static IP_IDENTITY: HashMap<IpAddrKey, IdentitySlots> =
    HashMap::with_max_entries(capacity::IP_IDENTITY, 0);

#[map]
static CIDR_IDENTITY: LpmTrie<IpAddrKey, IdentitySlots> =
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

/// Service (ClusterIP) addresses: egress to them is judged after the DNAT.
#[map]
static SERVICE_IPS: HashMap<IpAddrKey, u32> = HashMap::with_max_entries(capacity::SERVICE_IPS, 0);

/// New flows to a Service address waiting for their egress verdict (see `PendingKey`).
#[map]
static PENDING: LruHashMap<PendingKey, PendingValue> =
    LruHashMap::with_max_entries(capacity::PENDING, 0);

/// Per-endpoint event token buckets (see `Config::event_rate`).
#[map]
static EVENT_BUCKETS: LruHashMap<u32, EventBucket> =
    LruHashMap::with_max_entries(capacity::ENDPOINTS, 0);

/// What the agent's ids stand for (see `enforcer_common::name_kind`); for readers of the pins,
/// never read here.
#[map]
static NAMES: HashMap<NameKey, NameValue> = HashMap::with_max_entries(capacity::NAMES, 0);

/// Per-CPU scratch space for the parsed packet: the 512-byte BPF stack cannot hold it beside
/// the conntrack and policy keys.
#[map]
static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

#[map]
static DROP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// Packets and bytes per admitting rule (see `RuleCounterKey`).
#[map]
static RULE_COUNTERS: PerCpuHashMap<RuleCounterKey, RuleCounter> =
    PerCpuHashMap::with_max_entries(capacity::RULE_COUNTERS, 0);

/// When each recently dropped flow was last reported (`Config::drop_report_window_ms`).
#[map]
static DROP_REPORTS: LruHashMap<CtKey, u64> =
    LruHashMap::with_max_entries(capacity::DROP_REPORTS, 0);

/// Per-endpoint event limits from policy annotations (key: ifindex); absent: `Config`'s.
#[map]
static EVENT_LIMITS: HashMap<u32, EventLimit> = HashMap::with_max_entries(capacity::ENDPOINTS, 0);

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

/// What the node sends out of its own interfaces: only flows whose egress was deferred at a
/// Service address are judged here, now that the DNAT has named the real destination.
#[classifier]
pub fn to_network(ctx: TcContext) -> i32 {
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: as in endpoint_program.
    let pkt = unsafe { &mut *pkt };
    pkt.reset();
    if parse(&ctx, pkt) != PARSE_IP {
        return PASS;
    }
    let config = config();
    match service_egress(&ctx, pkt, &config) {
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
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(pkt) = SCRATCH.get_ptr_mut(0) else {
        // Cannot happen (a one-slot array always has slot 0); failing closed is still right.
        return DROP;
    };
    // SAFETY: this CPU's slot, used by this program invocation only (TC programs do not nest on
    // one CPU); reset before use.
    let pkt = unsafe { &mut *pkt };
    pkt.reset();
    let parsed = parse(ctx, pkt);
    let config = config();

    // Conntrack first, before even the endpoint lookup: an established flow, a reply, or an ICMP
    // error about one, admitted under the current policy revision, costs this one lookup.
    if parsed == PARSE_IP {
        let ct_key = if pkt.kind == KIND_ICMP_ERROR {
            pkt.quoted.related_key(ifindex, dir)
        } else {
            pkt.flow.ct_key(ifindex, dir)
        };
        if let Some(ct) = CONNTRACK.get_ptr_mut(&ct_key) {
            // SAFETY: a live LRU value; fields are read and written whole.
            if unsafe { (*ct).revision } == config.revision || pkt.kind == KIND_ICMP_ERROR {
                if config.flags & config_flags::RULE_COUNTERS_OFF == 0 {
                    count_rule(ctx, unsafe { &*ct }, dir);
                }
                return PASS;
            }
            return recheck(ctx, ifindex, dir, pkt, &ct_key, ct, &config);
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
    let ep_mode = mode_of(&ep, dir);
    if ep_mode == mode::UNMANAGED {
        return PASS;
    }
    try_new_flow(ctx, &ep, ifindex, ep_mode, dir, parsed, pkt, &config)
}

/// An attached interface no endpoint entry names: the agent attached to it when it appeared,
/// before a pod claimed it. It passes, unless the node holds unknown interfaces fail-closed.
#[inline(always)]
fn unknown_endpoint(
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

/// Sentinel of `service_egress`: no deferred flow here, or it is allowed; go on.
const CONTINUE: i32 = i32::MIN;

/// Judges the deferred egress of a flow a local endpoint opened to a Service address, on the
/// translated packet. Allowed: conntrack entries at the sender, under the tuple it sent and
/// the reply it will see (both with the Service address, as the reverse NAT restores it).
#[inline(always)]
fn service_egress(ctx: &TcContext, pkt: &mut Packet, config: &Config) -> i32 {
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
    let mut why = decide(&ep, direction::EGRESS, &pkt.flow, config);
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
fn pending_key(flow: &Flow) -> PendingKey {
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
fn defer_to_service(pkt: &Packet, ifindex: u32) {
    let v = PendingValue {
        daddr: addr_key(&pkt.flow.daddr).addr,
        dport_be: pkt.flow.dport_be,
        _pad: 0,
        ifindex,
    };
    let _ = PENDING.insert(&pending_key(&pkt.flow), &v, 0);
}

/// The endpoint on `ifindex` in the current generation.
#[inline(always)]
fn endpoint(ifindex: u32, config: &Config) -> Option<EndpointInfo> {
    let v = ENDPOINTS.get_ptr(&ifindex)?;
    let slot = (config.generation & 1) as usize;
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
fn mode_of(ep: &EndpointInfo, dir: u8) -> u32 {
    if dir == direction::INGRESS {
        ep.ingress_mode
    } else {
        ep.egress_mode
    }
}

/// A packet of a managed direction that conntrack does not know.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn try_new_flow(
    ctx: &TcContext,
    ep: &EndpointInfo,
    ifindex: u32,
    ep_mode: u32,
    dir: u8,
    parsed: u8,
    pkt: &mut Packet,
    config: &Config,
) -> i32 {
    match parsed {
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
        // Endpoint id 0: an interface held until its pod is known (`--default-deny-unknown`).
        let why = Why::new(if ep.endpoint_id == 0 {
            reason::ENDPOINT_UNKNOWN
        } else {
            reason::ENDPOINT_DENY_ALL
        });
        return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
    }
    if pkt.kind == KIND_UNKNOWN_FRAGMENT {
        let why = Why::new(reason::FRAGMENT_UNKNOWN);
        return drop_packet(ctx, ep, ifindex, dir, &pkt.flow, &why);
    }
    let isolated = ep_mode == mode::ENFORCE || ep_mode == mode::AUDIT;
    if isolated
        && dir == direction::EGRESS
        && pkt.kind != KIND_ICMP_ERROR
        && SERVICE_IPS.get_ptr(&addr_key(&pkt.flow.daddr)).is_some()
    {
        // The real destination is known only after kube-proxy's DNAT: judge it there.
        defer_to_service(pkt, ifindex);
        return PASS;
    }
    let mut why = if isolated {
        decide(ep, dir, &pkt.flow, config)
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
    admit(ctx, ep, ifindex, dir, pkt, &why, config);
    PASS
}

/// In audit mode a flow no rule allows passes, as `AUDIT_WOULD_DROP`; returns whether that
/// happened (the caller reports it).
#[inline(always)]
fn audit(why: &mut Why, ep_mode: u32) -> bool {
    if ep_mode == mode::AUDIT && !why.allowed && why.reason == reason::NO_RULE {
        why.allowed = true;
        why.reason = reason::AUDIT_WOULD_DROP;
        return true;
    }
    false
}

/// A conntrack hit admitted under an older policy revision: judge the flow again, once, under
/// the current policy (in the direction it was opened), so a revoked policy cuts established
/// connections instead of letting them live on.
#[inline(always)]
fn recheck(
    ctx: &TcContext,
    ifindex: u32,
    dir: u8,
    pkt: &mut Packet,
    ct_key: &CtKey,
    ct: *mut CtValue,
    config: &Config,
) -> i32 {
    let Some(ep) = endpoint(ifindex, config) else {
        // No longer an endpoint: nothing to enforce here.
        return PASS;
    };
    // SAFETY: a live LRU value, read whole.
    let flags = unsafe { (*ct).flags };
    if flags & ct_flags::SERVICE != 0 {
        // Judged on a destination this tuple does not show; keep it (a known gap).
        // SAFETY: as above.
        unsafe { (*ct).revision = config.revision };
        return PASS;
    }
    let opened_dir = if flags & ct_flags::REPLY != 0 {
        pkt.opened = pkt.flow.reversed();
        dir ^ 1
    } else {
        pkt.opened = pkt.flow;
        dir
    };
    let opened_mode = mode_of(&ep, opened_dir);
    let mut why = match opened_mode {
        mode::ENFORCE | mode::AUDIT => decide(&ep, opened_dir, &pkt.opened, config),
        mode::DENY_ALL => Why::new(reason::ENDPOINT_DENY_ALL),
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

/// An address as it sits in the packet (network order), held in 32-bit words: BPF has no
/// unaligned loads, so a `[u8; 16]` would be copied byte by byte (through a byte-loop memcpy),
/// while words move in four instructions. The memory layout is the same as `[u8; 16]`.
type Addr = [u32; 4];

/// `::ffff:0:0/96` in the first three words, as they sit in memory.
const V4_MAPPED_WORD2: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

#[inline(always)]
fn v4_mapped(a: u32) -> Addr {
    [0, 0, V4_MAPPED_WORD2, a]
}

#[inline(always)]
fn addr_key(a: &Addr) -> IpAddrKey {
    // SAFETY: IpAddrKey is 16 bytes of plain data, laid out as the words are.
    unsafe { core::mem::transmute::<Addr, IpAddrKey>(*a) }
}

/// A conntrack key built word by word (see `Addr`); the layout is `CtKey`'s, asserted below.
#[inline(always)]
fn ct_key(
    saddr: &Addr,
    daddr: &Addr,
    sport_be: u16,
    dport_be: u16,
    proto: u8,
    dir: u8,
    ifindex: u32,
) -> CtKey {
    let w: [u32; 11] = [
        saddr[0],
        saddr[1],
        saddr[2],
        saddr[3],
        daddr[0],
        daddr[1],
        daddr[2],
        daddr[3],
        u32::from_ne_bytes(pair(sport_be, dport_be)),
        u32::from_ne_bytes([proto, dir, 0, 0]),
        ifindex,
    ];
    // SAFETY: CtKey is 44 bytes of plain data: saddr, daddr, sport_be, dport_be, proto,
    // direction, _pad, ifindex, in this order (repr(C), no implicit padding).
    unsafe { core::mem::transmute::<[u32; 11], CtKey>(w) }
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

#[inline(always)]
fn pair(a: u16, b: u16) -> [u8; 4] {
    let a = a.to_ne_bytes();
    let b = b.to_ne_bytes();
    [a[0], a[1], b[0], b[1]]
}

/// The addresses, protocol and ports of a packet, as it travels.
#[derive(Clone, Copy)]
struct Flow {
    saddr: Addr,
    daddr: Addr,
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
    fn ct_key(&self, ifindex: u32, dir: u8) -> CtKey {
        ct_key(
            &self.saddr,
            &self.daddr,
            self.sport_be,
            self.dport_be,
            self.proto,
            dir,
            ifindex,
        )
    }

    /// The same flow seen from the other end.
    #[inline(always)]
    fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            ..*self
        }
    }
}

/// The original packet an ICMP error quotes.
#[derive(Clone, Copy)]
struct Quoted {
    saddr: Addr,
    daddr: Addr,
    sport_be: u16,
    dport_be: u16,
    proto: u8,
}

impl Quoted {
    /// The error travels against the quoted packet, so it belongs to the flow whose reply
    /// direction is this one: the quoted tuple, reversed, in this direction.
    #[inline(always)]
    fn related_key(&self, ifindex: u32, dir: u8) -> CtKey {
        ct_key(
            &self.daddr,
            &self.saddr,
            self.dport_be,
            self.sport_be,
            self.proto,
            dir,
            ifindex,
        )
    }
}

struct Packet {
    flow: Flow,
    /// `KIND_*`.
    kind: u8,
    /// Set once the addresses were read from this packet.
    have_addrs: u8,
    /// Set when the packet is a fragment.
    is_fragment: u8,
    is_first_fragment: u8,
    frag_id: u32,
    l4_off: usize,
    quoted: Quoted,
    /// The flow in the direction it was opened (re-checks of replies).
    opened: Flow,
}

impl Packet {
    /// Clears what the parser sets only on some paths. Addresses are always written before they
    /// are read, except on early malformed exits, which clear them themselves (clearing them
    /// here would cost a memset call on every packet).
    #[inline(always)]
    fn reset(&mut self) {
        // Volatile, so LLVM cannot merge the stores into a memset, which BPF lowers to a call
        // of a byte loop.
        use core::ptr::write_volatile as w;
        // SAFETY: plain field writes through a valid &mut.
        unsafe {
            w(&mut self.flow.sport_be, 0);
            w(&mut self.flow.dport_be, 0);
            w(&mut self.flow.proto, 0);
            w(&mut self.flow.family, 0);
            w(&mut self.flow.has_ports, 0);
            w(&mut self.kind, KIND_PLAIN);
            w(&mut self.have_addrs, 0);
            w(&mut self.is_fragment, 0);
            w(&mut self.is_first_fragment, 0);
            w(&mut self.frag_id, 0);
            w(&mut self.l4_off, 0);
        }
    }

    #[inline(always)]
    fn clear_addrs(&mut self) {
        self.flow.saddr = [0; 4];
        self.flow.daddr = [0; 4];
    }
}

/// Reads a `T` (an integer) at `off` bytes into the packet: straight from the linear data when
/// it is there (the common case, and the fast one), else through the helper that also reaches
/// paged data. Packet fields are not always aligned; the kernels we run on (x86-64, arm64) do
/// unaligned loads, and the verifier only insists on alignment under BPF_F_STRICT_ALIGNMENT.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    if off > MAX_OFFSET {
        return Err(());
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above; T is an integer (see above on
        // alignment).
        Ok(unsafe { *((start + off) as *const T) })
    } else {
        ctx.load::<T>(off).map_err(|_| ())
    }
}

/// An IPv6 address at `off`.
#[inline(always)]
fn read_addr6(ctx: &TcContext, off: usize) -> Result<Addr, ()> {
    Ok([
        read::<u32>(ctx, off)?,
        read::<u32>(ctx, off + 4)?,
        read::<u32>(ctx, off + 8)?,
        read::<u32>(ctx, off + 12)?,
    ])
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
        if pkt.have_addrs == 0 {
            // Cut short before the addresses: report zeros, not the last packet's.
            pkt.clear_addrs();
        }
        return PARSE_MALFORMED;
    }
    parse_l4(ctx, pkt)
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ()> {
    pkt.flow.family = 4;
    let version_ihl: u8 = read(ctx, ETH_HLEN)?;
    let tot_len_be: u16 = read(ctx, ETH_HLEN + 2)?;
    let id_be: u16 = read(ctx, ETH_HLEN + 4)?;
    let frag_be: u16 = read(ctx, ETH_HLEN + 6)?;
    pkt.flow.proto = read(ctx, ETH_HLEN + 9)?;
    pkt.flow.saddr = v4_mapped(read(ctx, ETH_HLEN + 12)?);
    pkt.flow.daddr = v4_mapped(read(ctx, ETH_HLEN + 16)?);
    pkt.have_addrs = 1;
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be(tot_len_be) as usize;
    if version_ihl >> 4 != 4 || ihl < 20 || tot_len < ihl || ETH_HLEN + tot_len > ctx.len() as usize
    {
        return Err(());
    }
    let frag = u16::from_be(frag_be);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    if offset != 0 || more {
        pkt.is_fragment = 1;
        pkt.is_first_fragment = (offset == 0) as u8;
        pkt.frag_id = u16::from_be(id_be) as u32;
    }
    pkt.l4_off = ETH_HLEN + ihl;
    Ok(())
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ()> {
    pkt.flow.family = 6;
    let version: u8 = read(ctx, ETH_HLEN)?;
    let payload_len_be: u16 = read(ctx, ETH_HLEN + 4)?;
    let next_header: u8 = read(ctx, ETH_HLEN + 6)?;
    pkt.flow.saddr = read_addr6(ctx, ETH_HLEN + 8)?;
    pkt.flow.daddr = read_addr6(ctx, ETH_HLEN + 24)?;
    pkt.have_addrs = 1;
    pkt.flow.proto = next_header;
    if version >> 4 != 6
        || ETH_HLEN + 40 + u16::from_be(payload_len_be) as usize > ctx.len() as usize
    {
        return Err(());
    }
    let mut next = next_header;
    let mut off = ETH_HLEN + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let h: u16 = read(ctx, off)?;
                let h = h.to_ne_bytes();
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            IPV6_AH => {
                let h: u16 = read(ctx, off)?;
                let h = h.to_ne_bytes();
                next = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let h: u64 = read(ctx, off)?;
                let h = h.to_ne_bytes();
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
        let Ok(ports) = read::<u32>(ctx, l4_off) else {
            return PARSE_MALFORMED;
        };
        let b = ports.to_ne_bytes();
        pkt.flow.sport_be = u16::from_ne_bytes([b[0], b[1]]);
        pkt.flow.dport_be = u16::from_ne_bytes([b[2], b[3]]);
        pkt.flow.has_ports = 1;
    } else if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
        let Ok(h) = read::<u64>(ctx, l4_off) else {
            return PARSE_MALFORMED;
        };
        let h = h.to_ne_bytes();
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
    let w: [u32; 10] = [
        flow.saddr[0],
        flow.saddr[1],
        flow.saddr[2],
        flow.saddr[3],
        flow.daddr[0],
        flow.daddr[1],
        flow.daddr[2],
        flow.daddr[3],
        id,
        flow.proto as u32,
    ];
    // SAFETY: FragKey is saddr, daddr, id, proto and three padding bytes, repr(C), 40 bytes; on
    // little-endian `proto as u32` puts proto first and zeroes the padding.
    unsafe { core::mem::transmute::<[u32; 10], FragKey>(w) }
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
    // Single bytes are read as part of a 16-bit word here: at a variable offset, the verifier
    // cannot prove a 1-byte read in bounds from the comparison LLVM makes of it.
    let l4_off;
    if v6 {
        q.proto = read::<u16>(ctx, off + 6)?.to_ne_bytes()[0];
        q.saddr = read_addr6(ctx, off + 8)?;
        q.daddr = read_addr6(ctx, off + 24)?;
        l4_off = off + 40;
    } else {
        let version_ihl = read::<u16>(ctx, off)?.to_ne_bytes()[0];
        let ihl = ((version_ihl & 0x0f) as usize) * 4;
        if version_ihl >> 4 != 4 || ihl < 20 {
            return Err(());
        }
        q.proto = read::<u16>(ctx, off + 8)?.to_ne_bytes()[1];
        q.saddr = v4_mapped(read(ctx, off + 12)?);
        q.daddr = v4_mapped(read(ctx, off + 16)?);
        l4_off = off + ihl;
    }
    let h: u64 = read(ctx, l4_off)?;
    let h = h.to_ne_bytes();
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
fn decide(ep: &EndpointInfo, dir: u8, flow: &Flow, config: &Config) -> Why {
    let slot = (config.generation & 1) as usize;
    let peer = if dir == direction::EGRESS {
        flow.daddr
    } else {
        flow.saddr
    };
    let peer_key = addr_key(&peer);
    // Identity 0 in the current slot means "no entry in this generation".
    let peer_identity = match unsafe { IP_IDENTITY.get(&peer_key) } {
        Some(v) if v.identity[slot] != 0 => v.identity[slot],
        _ => identity::WORLD,
    };
    let peer_cidr_identity = match CIDR_IDENTITY.get(Key::new(128, peer_key)) {
        Some(v) => v.identity[slot],
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

/// Counts a packet of an admitted flow against the rule that admitted it (none: not counted
/// here; verdicts by reason are counted when flows are judged).
#[inline(always)]
fn count_rule(ctx: &TcContext, ct: &CtValue, dir: u8) {
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
fn insert_ct_pair(key: &CtKey, why: &Why, config: &Config, flags: u32) -> CtValue {
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
fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config {
            revision: 0,
            flags: 0,
            generation: 0,
            event_rate_milli: 0,
            event_burst: 0,
            drop_report_window_ms: 0,
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
fn write_event(
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
        (*e)._pad = 0;
        (*e).packet_len = ctx.len();
        (*e).policy_set = ep.policy_set;
    }
    entry.submit(0);
}

/// One token from the endpoint's event bucket, refilled at its rate (`EVENT_LIMITS`, else
/// `Config::event_rate_milli`) up to its burst. Updates race between CPUs; the limit is
/// approximate by a few events, never unbounded.
#[inline(always)]
fn take_event_token(ifindex: u32, config: &Config) -> bool {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
