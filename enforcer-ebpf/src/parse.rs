//! Parsing: one flat `Packet` from the wire, every read bounds-checked.

use crate::maps::*;
use aya_ebpf::programs::TcContext;
use enforcer_common::*;

// --- Packet constants -------------------------------------------------------------------------

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const ETH_P_ARP: u16 = 0x0806;
pub(crate) const ETH_P_8021Q: u16 = 0x8100;
pub(crate) const ETH_P_8021AD: u16 = 0x88a8;

pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;
pub(crate) const IPPROTO_SCTP: u8 = 132;

pub(crate) const IPV6_HOPOPTS: u8 = 0;
pub(crate) const IPV6_ROUTING: u8 = 43;
pub(crate) const IPV6_FRAGMENT: u8 = 44;
pub(crate) const IPV6_AH: u8 = 51;
pub(crate) const IPV6_DSTOPTS: u8 = 60;
/// Extension headers walked before the packet counts as malformed. Real stacks send at most a
/// few; an attacker sending more must not make the verifier's loop bound the policy.
pub(crate) const MAX_EXT_HEADERS: usize = 6;
/// Largest header offset we read at; keeps every offset visibly bounded for the verifier.
pub(crate) const MAX_OFFSET: usize = 0x3fff;

//
// The parser fills one flat `Packet` and returns a status code: rich enums with payloads get
// packed into registers in ways the verifier rejects (pointer shifts), flat structs do not.

pub(crate) const PARSE_IP: u8 = 0;
pub(crate) const PARSE_NOT_IP: u8 = 1;
pub(crate) const PARSE_NEIGHBOR_DISCOVERY: u8 = 2;
pub(crate) const PARSE_MALFORMED: u8 = 3;
/// An IPv6 packet with an IPv4-mapped address (`::ffff:0:0/96`): no real stack sends one, and
/// it would alias the IPv4 keys (stored IPv4-mapped) of conntrack and identities.
pub(crate) const PARSE_INVALID_ADDRESS: u8 = 4;
/// An ARP packet for IPv4 over Ethernet: sender address in `flow.saddr`, target in
/// `flow.daddr`.
pub(crate) const PARSE_ARP: u8 = 5;

pub(crate) const KIND_PLAIN: u8 = 0;
/// First fragment of a fragmented datagram: its ports are remembered when it passes.
pub(crate) const KIND_FIRST_FRAGMENT: u8 = 1;
/// Later fragment whose first fragment passed: ports filled in from `FRAGMENTS`.
pub(crate) const KIND_LATER_FRAGMENT: u8 = 2;
/// Later fragment with no remembered first fragment.
pub(crate) const KIND_UNKNOWN_FRAGMENT: u8 = 3;
/// ICMP error: `quoted` holds the packet it is about.
pub(crate) const KIND_ICMP_ERROR: u8 = 4;

/// An address as it sits in the packet (network order), held in 32-bit words: BPF has no
/// unaligned loads, so a `[u8; 16]` would be copied byte by byte (through a byte-loop memcpy),
/// while words move in four instructions. The memory layout is the same as `[u8; 16]`.
pub(crate) type Addr = [u32; 4];

/// `::ffff:0:0/96` in the first three words, as they sit in memory.
pub(crate) const V4_MAPPED_WORD2: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Whether an address read from an IPv6 header lies in `::ffff:0:0/96`.
#[inline(always)]
pub(crate) fn is_v4_mapped(a: &Addr) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == V4_MAPPED_WORD2
}

#[inline(always)]
pub(crate) fn v4_mapped(a: u32) -> Addr {
    [0, 0, V4_MAPPED_WORD2, a]
}

#[inline(always)]
pub(crate) fn addr_key(a: &Addr) -> IpAddrKey {
    // SAFETY: IpAddrKey is 16 bytes of plain data, laid out as the words are.
    unsafe { core::mem::transmute::<Addr, IpAddrKey>(*a) }
}

/// A conntrack key built word by word (see `Addr`); the layout is `CtKey`'s, asserted below.
#[inline(always)]
pub(crate) fn ct_key(
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
pub(crate) fn pair(a: u16, b: u16) -> [u8; 4] {
    let a = a.to_ne_bytes();
    let b = b.to_ne_bytes();
    [a[0], a[1], b[0], b[1]]
}

/// The addresses, protocol and ports of a packet, as it travels.
#[derive(Clone, Copy)]
pub(crate) struct Flow {
    pub(crate) saddr: Addr,
    pub(crate) daddr: Addr,
    /// TCP/UDP/SCTP ports; for ICMP echo the identifier (request: source, reply: destination).
    pub(crate) sport_be: u16,
    pub(crate) dport_be: u16,
    pub(crate) proto: u8,
    pub(crate) family: u8,
    /// 1 when the protocol has ports (TCP, UDP, SCTP): policy matches them.
    pub(crate) has_ports: u8,
}

impl Flow {
    #[inline(always)]
    pub(crate) fn ct_key(&self, ifindex: u32, dir: u8) -> CtKey {
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
    pub(crate) fn reversed(&self) -> Self {
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
pub(crate) struct Quoted {
    pub(crate) saddr: Addr,
    pub(crate) daddr: Addr,
    pub(crate) sport_be: u16,
    pub(crate) dport_be: u16,
    pub(crate) proto: u8,
}

impl Quoted {
    /// The error travels against the quoted packet, so it belongs to the flow whose reply
    /// direction is this one: the quoted tuple, reversed, seen in this direction.
    #[inline(always)]
    pub(crate) fn related_flow(&self, family: u8) -> Flow {
        Flow {
            saddr: self.daddr,
            daddr: self.saddr,
            sport_be: self.dport_be,
            dport_be: self.sport_be,
            proto: self.proto,
            family,
            has_ports: is_port_proto(self.proto) as u8,
        }
    }
}

pub(crate) struct Packet {
    pub(crate) flow: Flow,
    /// `KIND_*`.
    pub(crate) kind: u8,
    /// Set once the addresses were read from this packet.
    pub(crate) have_addrs: u8,
    /// Set when the packet is a fragment.
    pub(crate) is_fragment: u8,
    pub(crate) is_first_fragment: u8,
    pub(crate) frag_id: u32,
    /// What `FRAGMENTS` is keyed by: the IPv4 protocol, or the IPv6 fragment header's next
    /// header (every fragment of a datagram carries it alike).
    pub(crate) frag_proto: u8,
    /// IPv6 hop limit (neighbour discovery must arrive with 255, MLD with 1).
    pub(crate) hop_limit: u8,
    /// ICMPv6 type of a neighbour discovery or MLD message.
    pub(crate) icmp_type: u8,
    /// Target address of a neighbour solicitation or advertisement.
    pub(crate) nd_target: Addr,
    /// TCP header flags (`tcp_flags::*`), 0 for other protocols and later fragments.
    pub(crate) tcp_flags: u8,
    l4_off: usize,
    pub(crate) quoted: Quoted,
    /// The flow in the direction it was opened (re-checks of replies).
    pub(crate) opened: Flow,
}

impl Packet {
    /// Clears what the parser sets only on some paths. Addresses are always written before they
    /// are read, except on early malformed exits, which clear them themselves (clearing them
    /// here would cost a memset call on every packet); so are `frag_proto` (set with
    /// `is_fragment`), `hop_limit` (every IPv6 packet) and `icmp_type`/`nd_target` (neighbour
    /// discovery), which only their own kind of packet reads.
    #[inline(always)]
    pub(crate) fn reset(&mut self) {
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
            // Read for every packet by conntrack (TCP or not).
            w(&mut self.tcp_flags, 0);
            w(&mut self.l4_off, 0);
        }
    }

    #[inline(always)]
    pub(crate) fn clear_addrs(&mut self) {
        self.flow.saddr = [0; 4];
        self.flow.daddr = [0; 4];
    }
}

/// Reads a `T` (an integer) at `off` bytes into the packet: straight from the linear data when
/// it is there (the common case, and the fast one), else through the helper that also reaches
/// paged data. Packet fields are not always aligned; the kernels we run on (x86-64, arm64) do
/// unaligned loads, and the verifier only insists on alignment under BPF_F_STRICT_ALIGNMENT.
#[inline(always)]
pub(crate) fn read<T: Copy>(ctx: &TcContext, off: usize) -> Result<T, ()> {
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
pub(crate) fn read_addr6(ctx: &TcContext, off: usize) -> Result<Addr, ()> {
    Ok([
        read::<u32>(ctx, off)?,
        read::<u32>(ctx, off + 4)?,
        read::<u32>(ctx, off + 8)?,
        read::<u32>(ctx, off + 12)?,
    ])
}

/// Parses a frame with an Ethernet header (every endpoint, most node interfaces).
#[inline(always)]
pub(crate) fn parse(ctx: &TcContext, pkt: &mut Packet) -> u8 {
    parse_at::<ETH_HLEN>(ctx, pkt)
}

/// Parses a packet whose IP header starts `L2` bytes in: `ETH_HLEN`, or 0 on an L3 device
/// (tunl0, WireGuard), where the packet has no link-layer header and its first nibble says
/// which IP it is.
#[inline(always)]
pub(crate) fn parse_at<const L2: usize>(ctx: &TcContext, pkt: &mut Packet) -> u8 {
    let ethertype = if L2 == 0 {
        // Through the helper: a direct 1-byte read at offset 0 compiles to a bounds check the
        // verifier cannot follow (data < data_end).
        let Ok(version) = ctx.load::<u8>(0) else {
            return PARSE_NOT_IP;
        };
        match version >> 4 {
            4 => ETH_P_IP,
            6 => ETH_P_IPV6,
            _ => return PARSE_NOT_IP,
        }
    } else {
        let Ok(ethertype_be) = read::<u16>(ctx, 12) else {
            return PARSE_NOT_IP;
        };
        u16::from_be(ethertype_be)
    };
    let l3 = match ethertype {
        ETH_P_IP => parse_ipv4::<L2>(ctx, pkt),
        ETH_P_IPV6 => {
            let l3 = parse_ipv6::<L2>(ctx, pkt);
            if pkt.have_addrs != 0
                && (is_v4_mapped(&pkt.flow.saddr) || is_v4_mapped(&pkt.flow.daddr))
            {
                return PARSE_INVALID_ADDRESS;
            }
            l3
        }
        // A tagged frame would carry IP past the policy: an endpoint has no business sending one.
        ETH_P_8021Q | ETH_P_8021AD => Err(()),
        ETH_P_ARP => return parse_arp(ctx, pkt),
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
pub(crate) fn parse_ipv4<const L2: usize>(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ()> {
    pkt.flow.family = 4;
    // As a 16-bit word: at offset 0 (L3 devices) a 1-byte read compiles to a bounds check the
    // verifier cannot follow.
    let version_ihl: u8 = read::<u16>(ctx, L2)?.to_ne_bytes()[0];
    let tot_len_be: u16 = read(ctx, L2 + 2)?;
    let id_be: u16 = read(ctx, L2 + 4)?;
    let frag_be: u16 = read(ctx, L2 + 6)?;
    pkt.flow.proto = read(ctx, L2 + 9)?;
    pkt.flow.saddr = v4_mapped(read(ctx, L2 + 12)?);
    pkt.flow.daddr = v4_mapped(read(ctx, L2 + 16)?);
    pkt.have_addrs = 1;
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    let mut tot_len = u16::from_be(tot_len_be) as usize;
    if tot_len == 0 && pkt.flow.proto == IPPROTO_TCP && gso_size(ctx) != 0 {
        // IPv4 BIG TCP: a GSO packet past 64 KiB carries total length 0 and its real length
        // in the skb (the kernel's `iph_totlen`).
        tot_len = (ctx.len() as usize).saturating_sub(L2);
    }
    if version_ihl >> 4 != 4 || ihl < 20 || tot_len < ihl || L2 + tot_len > ctx.len() as usize {
        return Err(());
    }
    let frag = u16::from_be(frag_be);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    if offset != 0 || more {
        pkt.is_fragment = 1;
        pkt.is_first_fragment = (offset == 0) as u8;
        pkt.frag_id = u16::from_be(id_be) as u32;
        pkt.frag_proto = pkt.flow.proto;
    }
    pkt.l4_off = L2 + ihl;
    Ok(())
}

#[inline(always)]
pub(crate) fn parse_ipv6<const L2: usize>(ctx: &TcContext, pkt: &mut Packet) -> Result<(), ()> {
    pkt.flow.family = 6;
    let version: u8 = read::<u16>(ctx, L2)?.to_ne_bytes()[0];
    let payload_len_be: u16 = read(ctx, L2 + 4)?;
    let nh_hops = read::<u16>(ctx, L2 + 6)?.to_ne_bytes();
    let next_header = nh_hops[0];
    pkt.hop_limit = nh_hops[1];
    pkt.flow.saddr = read_addr6(ctx, L2 + 8)?;
    pkt.flow.daddr = read_addr6(ctx, L2 + 24)?;
    pkt.have_addrs = 1;
    pkt.flow.proto = next_header;
    if version >> 4 != 6 || L2 + 40 + u16::from_be(payload_len_be) as usize > ctx.len() as usize {
        return Err(());
    }
    let mut next = next_header;
    let mut off = L2 + 40;
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
                    pkt.frag_proto = next;
                }
                off += 8;
                if offset != 0 {
                    // A later fragment is payload from here on (any further headers were in the
                    // first fragment): it is keyed by this next header, as its first fragment.
                    pkt.flow.proto = next;
                    pkt.l4_off = off;
                    return Ok(());
                }
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
pub(crate) fn parse_l4(ctx: &TcContext, pkt: &mut Packet) -> u8 {
    if pkt.is_fragment != 0 && pkt.is_first_fragment == 0 {
        // Later fragments carry no L4 header: take the first fragment's ports, if it passed.
        let key = frag_key(&pkt.flow, pkt.frag_id, pkt.frag_proto);
        match FRAGMENTS.get_ptr(&key) {
            Some(v) => {
                // SAFETY: copied at once; entries are written whole.
                let v = unsafe { *v };
                pkt.flow.sport_be = v.sport_be;
                pkt.flow.dport_be = v.dport_be;
                pkt.flow.proto = v.proto;
                pkt.flow.has_ports = is_port_proto(v.proto) as u8;
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
        if proto == IPPROTO_TCP {
            // Data offset, then the flags byte: conntrack follows SYN, FIN and RST.
            let Ok(f) = read::<u16>(ctx, l4_off + 12) else {
                return PARSE_MALFORMED;
            };
            pkt.tcp_flags = f.to_ne_bytes()[1];
        }
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
            // Fragmented neighbour discovery is refused by every stack (RFC 6980): plain ICMPv6.
            ICMP_NEIGHBOR_DISCOVERY if pkt.is_fragment == 0 => {
                pkt.icmp_type = h[0];
                if h[0] == ND_NEIGHBOR_SOLICIT || h[0] == ND_NEIGHBOR_ADVERT {
                    match read_addr6(ctx, l4_off + 8) {
                        Ok(t) => pkt.nd_target = t,
                        // No target: not what it claims to be; policy judges it.
                        Err(()) => return PARSE_IP,
                    }
                }
                return PARSE_NEIGHBOR_DISCOVERY;
            }
            _ => {}
        }
    }
    PARSE_IP
}

#[inline(always)]
pub(crate) fn is_port_proto(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP
}

#[inline(always)]
pub(crate) fn frag_key(flow: &Flow, id: u32, proto: u8) -> FragKey {
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
        proto as u32,
    ];
    // SAFETY: FragKey is saddr, daddr, id, proto and three padding bytes, repr(C), 40 bytes; on
    // little-endian `proto as u32` puts proto first and zeroes the padding.
    unsafe { core::mem::transmute::<[u32; 10], FragKey>(w) }
}

pub(crate) const ICMP_OTHER: u8 = 0;
pub(crate) const ICMP_ECHO_REQUEST: u8 = 1;
pub(crate) const ICMP_ECHO_REPLY: u8 = 2;
pub(crate) const ICMP_ERROR: u8 = 3;
pub(crate) const ICMP_NEIGHBOR_DISCOVERY: u8 = 4;

pub(crate) const MLD_QUERY: u8 = 130;
pub(crate) const MLD_REPORT: u8 = 131;
pub(crate) const MLD_DONE: u8 = 132;
pub(crate) const MLD2_REPORT: u8 = 143;
pub(crate) const ND_ROUTER_ADVERT: u8 = 134;
pub(crate) const ND_REDIRECT: u8 = 137;
pub(crate) const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub(crate) const ND_NEIGHBOR_ADVERT: u8 = 136;

#[inline(always)]
pub(crate) fn icmp_class(v6: bool, ty: u8) -> u8 {
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
pub(crate) fn parse_quoted(
    ctx: &TcContext,
    off: usize,
    v6: bool,
    q: &mut Quoted,
) -> Result<(), ()> {
    // Single bytes are read as part of a 16-bit word here: at a variable offset, the verifier
    // cannot prove a 1-byte read in bounds from the comparison LLVM makes of it.
    let l4_off;
    if v6 {
        q.proto = read::<u16>(ctx, off + 6)?.to_ne_bytes()[0];
        q.saddr = read_addr6(ctx, off + 8)?;
        q.daddr = read_addr6(ctx, off + 24)?;
        if is_v4_mapped(&q.saddr) || is_v4_mapped(&q.daddr) {
            return Err(());
        }
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

/// `__sk_buff.gso_size`: non-zero on a GSO packet.
#[inline(always)]
fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: a field of the context the program was handed.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// ARP for IPv4 over Ethernet (what the kernel's neighbour table learns from); other ARP is
/// not IP's business.
#[inline(always)]
pub(crate) fn parse_arp(ctx: &TcContext, pkt: &mut Packet) -> u8 {
    // htype 1, ptype 0x0800, hlen 6, plen 4, in one word as it sits in memory.
    const ETHER_IPV4: u64 = u64::from_ne_bytes([0, 1, 8, 0, 6, 4, 0, 0]);
    const MASK: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
    let Ok(h) = read::<u64>(ctx, ETH_HLEN) else {
        return PARSE_NOT_IP;
    };
    if h & MASK != ETHER_IPV4 {
        return PARSE_NOT_IP;
    }
    let Ok(spa) = read::<u32>(ctx, ETH_HLEN + 14) else {
        return PARSE_NOT_IP;
    };
    let Ok(tpa) = read::<u32>(ctx, ETH_HLEN + 24) else {
        return PARSE_NOT_IP;
    };
    pkt.flow.family = 4;
    pkt.flow.saddr = v4_mapped(spa);
    pkt.flow.daddr = v4_mapped(tpa);
    pkt.have_addrs = 1;
    PARSE_ARP
}
