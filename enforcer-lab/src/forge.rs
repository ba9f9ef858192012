//! Forged packets, as a hostile pod makes them: a TCP SYN, a UDP datagram, an ICMP echo
//! request or an SCTP INIT with any source address, built byte by byte and sent from a raw socket inside the
//! pod's network namespace (IPv4 with `IP_HDRINCL`, IPv6 with `IPV6_HDRINCL`: the kernel sends
//! the header as written and resolves the next hop itself). A pod needs no privilege beyond the
//! default container capabilities for this (`CAP_NET_RAW`).
//!
//! [`Sniffer`] watches an interface of another namespace (the target pod's `eth0`) with a
//! packet socket, below the IP layer: what it sees has reached the target, whether or not the
//! target's kernel would then accept it (a TCP SYN to a closed port, a v4-mapped source).
//!
//! The SCTP INIT is also how the lab probes SCTP where the kernel has no SCTP sockets: the
//! INIT a pod's SCTP stack would send first, from the pod's own address, watched for on the
//! target's `eth0` ([`init_reaches`]), or, for a node's own address, counted on the input hook
//! of the node's namespace by an nftables table of the probe's own ([`init_delivered`]).
//!
//! Building packets ([`packet`]) is pure and tested here; sending and sniffing are thin edges.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// What a forged packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A TCP SYN to `dst_port`.
    TcpSyn,
    /// A UDP datagram to `dst_port`.
    Udp,
    /// An ICMP (ICMPv6) echo request; `dst_port` is unused.
    Echo,
    /// An SCTP INIT chunk (the first packet of an association) to `dst_port`, with its CRC32c.
    SctpInit,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::TcpSyn, Kind::Udp, Kind::Echo];

    pub fn name(self) -> &'static str {
        match self {
            Kind::TcpSyn => "TCP",
            Kind::Udp => "UDP",
            Kind::Echo => "ICMP",
            Kind::SctpInit => "SCTP",
        }
    }

    fn ip_proto(self, v6: bool) -> u8 {
        match (self, v6) {
            (Kind::TcpSyn, _) => 6,
            (Kind::Udp, _) => 17,
            (Kind::Echo, false) => 1,
            (Kind::Echo, true) => 58,
            (Kind::SctpInit, _) => 132,
        }
    }
}

/// A forged packet: any source, the target's address, and `tag` (the source port, or the echo
/// identifier) that tells this packet apart from every other one the target sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forged {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub kind: Kind,
    pub dst_port: u16,
    pub tag: u16,
}

/// The payload every forged UDP datagram and echo request carries.
pub const PAYLOAD: &[u8] = b"enforcer-lab forged";

/// Whether two addresses go in one header: both IPv4, or both IPv6 (a v4-mapped IPv6 source
/// is IPv6).
fn same_header_family(a: &IpAddr, b: &IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// The IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) of an IPv4 address.
pub fn v4_mapped(ip: &IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => Some(IpAddr::V6(a.to_ipv6_mapped())),
        IpAddr::V6(_) => None,
    }
}

/// The one's-complement sum of 16-bit words (RFC 1071), folded, not inverted.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut acc = 0u32;
    // Every part but the last has an even length here (headers), so summing part by part
    // keeps the words aligned.
    for p in parts {
        acc = sum16(p, acc);
    }
    !(acc as u16)
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// CRC32c (Castagnoli, reflected, as SCTP uses it: RFC 9260 appendix A).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet of one INIT chunk (RFC 9260 3.3.2, no parameters): source port `tag`,
/// verification tag 0 (as an INIT must have), initiate tag and initial TSN from `tag`, one
/// stream each way; the CRC32c over the packet goes in the checksum field, least significant
/// byte first (as Linux writes it).
fn sctp_init(f: &Forged) -> Vec<u8> {
    let mut p = vec![0u8; 12 + 20];
    p[0..2].copy_from_slice(&f.tag.to_be_bytes());
    p[2..4].copy_from_slice(&f.dst_port.to_be_bytes());
    // p[4..8]: verification tag 0; p[8..12]: checksum, below.
    let c = &mut p[12..];
    c[0] = 1; // INIT
    c[2..4].copy_from_slice(&20u16.to_be_bytes());
    c[4..8].copy_from_slice(&(u32::from(f.tag) << 16 | 0x5eed).to_be_bytes()); // initiate tag
    c[8..12].copy_from_slice(&106_496u32.to_be_bytes()); // a_rwnd
    c[12..14].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    c[14..16].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    c[16..20].copy_from_slice(&(u32::from(f.tag) << 8 | 1).to_be_bytes()); // initial TSN
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// The transport header and payload of `f`, with its checksum (over the pseudo-header for TCP,
/// UDP and ICMPv6; over itself for ICMP; CRC32c over itself for SCTP).
fn transport(f: &Forged) -> Vec<u8> {
    if f.kind == Kind::SctpInit {
        return sctp_init(f);
    }
    let v6 = f.dst.is_ipv6();
    let proto = f.kind.ip_proto(v6);
    let mut l4 = match f.kind {
        Kind::TcpSyn => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&f.tag.to_be_bytes());
            h[2..4].copy_from_slice(&f.dst_port.to_be_bytes());
            h[4..8].copy_from_slice(&(u32::from(f.tag) << 16 | 0x5eed).to_be_bytes());
            h[12] = 5 << 4; // data offset: 5 words
            h[13] = 0x02; // SYN
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            h
        }
        Kind::Udp => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&f.tag.to_be_bytes());
            h[2..4].copy_from_slice(&f.dst_port.to_be_bytes());
            h[4..6].copy_from_slice(&((8 + PAYLOAD.len()) as u16).to_be_bytes());
            h.extend_from_slice(PAYLOAD);
            h
        }
        Kind::Echo => {
            let mut h = vec![0u8; 8];
            h[0] = if v6 { 128 } else { 8 };
            h[4..6].copy_from_slice(&f.tag.to_be_bytes());
            h[6..8].copy_from_slice(&1u16.to_be_bytes());
            h.extend_from_slice(PAYLOAD);
            h
        }
        Kind::SctpInit => unreachable!("built by sctp_init"),
    };
    let len = l4.len() as u32;
    let csum = if f.kind == Kind::Echo && !v6 {
        checksum(&[&l4])
    } else {
        let mut pseudo = octets(&f.src);
        pseudo.extend(octets(&f.dst));
        if v6 {
            pseudo.extend(len.to_be_bytes());
            pseudo.extend([0, 0, 0, proto]);
        } else {
            pseudo.extend([0, proto]);
            pseudo.extend((len as u16).to_be_bytes());
        }
        let c = checksum(&[&pseudo, &l4]);
        // UDP sends a computed zero as all ones (zero means "no checksum").
        if f.kind == Kind::Udp && c == 0 {
            0xffff
        } else {
            c
        }
    };
    let at = match f.kind {
        Kind::TcpSyn => 16,
        Kind::Udp => 6,
        Kind::Echo => 2,
        Kind::SctpInit => unreachable!("built by sctp_init"),
    };
    l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    l4
}

/// The whole IP packet of `f`: an IPv4 header (no options, TTL 64, DF) or an IPv6 header (hop
/// limit 64), then the transport header and payload.
pub fn packet(f: &Forged) -> Result<Vec<u8>> {
    if !same_header_family(&f.src, &f.dst) {
        bail!(
            "{} and {} are not of one family (write an IPv4 source as ::ffff:a.b.c.d to forge it into IPv6)",
            f.src,
            f.dst
        );
    }
    let l4 = transport(f);
    let v6 = f.dst.is_ipv6();
    let proto = f.kind.ip_proto(v6);
    let mut out = if v6 {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        h[6] = proto;
        h[7] = 64;
        h[8..24].copy_from_slice(&octets(&f.src));
        h[24..40].copy_from_slice(&octets(&f.dst));
        h
    } else {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&f.tag.to_be_bytes());
        h[6] = 0x40; // DF
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&octets(&f.src));
        h[16..20].copy_from_slice(&octets(&f.dst));
        let c = checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    };
    out.extend(l4);
    Ok(out)
}

/// Whether an IP packet (from its first byte) is `f`: same addresses, protocol, tag and port.
pub fn matches(pkt: &[u8], f: &Forged) -> bool {
    let v6 = f.dst.is_ipv6();
    let (src, dst, proto, l4) = match pkt.first().map(|b| b >> 4) {
        Some(4) if !v6 && pkt.len() >= 20 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let src = IpAddr::from(<[u8; 4]>::try_from(&pkt[12..16]).expect("4 bytes"));
            let dst = IpAddr::from(<[u8; 4]>::try_from(&pkt[16..20]).expect("4 bytes"));
            (src, dst, pkt[9], pkt.get(ihl..).unwrap_or_default())
        }
        Some(6) if v6 && pkt.len() >= 40 => {
            let src = IpAddr::from(<[u8; 16]>::try_from(&pkt[8..24]).expect("16 bytes"));
            let dst = IpAddr::from(<[u8; 16]>::try_from(&pkt[24..40]).expect("16 bytes"));
            (src, dst, pkt[6], &pkt[40..])
        }
        _ => return false,
    };
    if src != f.src || dst != f.dst || proto != f.kind.ip_proto(v6) || l4.len() < 8 {
        return false;
    }
    let word = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    match f.kind {
        Kind::TcpSyn | Kind::Udp => word(0) == f.tag && word(2) == f.dst_port,
        Kind::Echo => l4[0] == if v6 { 128 } else { 8 } && word(4) == f.tag,
        Kind::SctpInit => {
            word(0) == f.tag && word(2) == f.dst_port && l4.len() >= 16 && l4[12] == 1
        }
    }
}

fn last_error(what: &str) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::last_os_error()).context(what.to_string())
}

fn socket(domain: i32, ty: i32, proto: i32) -> Result<OwnedFd> {
    // SAFETY: a plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(last_error("opening a raw socket (needs CAP_NET_RAW)"));
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let sa: socket2::SockAddr = SocketAddr::new(ip, 0).into();
    // SAFETY: SockAddr holds a valid sockaddr_storage of `len` bytes.
    (unsafe { std::ptr::read(sa.as_ptr().cast()) }, sa.len())
}

/// Sends `f` from inside `ns`, from a raw socket that writes its own IP header.
pub fn send(ns: &Netns, f: &Forged) -> Result<()> {
    let pkt = packet(f)?;
    let dst = f.dst;
    ns.run(move || {
        let (domain, level, opt) = if dst.is_ipv6() {
            (libc::AF_INET6, libc::IPPROTO_IPV6, IPV6_HDRINCL)
        } else {
            (libc::AF_INET, libc::IPPROTO_IP, libc::IP_HDRINCL)
        };
        let fd = socket(domain, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads an int we own.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(last_error("asking to write the IP header (HDRINCL)"));
        }
        let (sa, len) = sockaddr(dst);
        // SAFETY: the buffer and the address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&sa as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if n < 0 {
            return Err(last_error(&format!("sending a forged packet to {dst}")));
        }
        Ok(())
    })
}

/// `IPV6_HDRINCL` (linux/in6.h; not in every libc crate).
const IPV6_HDRINCL: i32 = 36;

/// A packet socket on one interface of a namespace: every IP packet that reaches it, from the
/// moment it is opened.
pub struct Sniffer {
    fd: OwnedFd,
    /// Packets read so far (the IP packet, from its first byte).
    seen: Vec<Vec<u8>>,
}

impl Sniffer {
    /// Watches `dev` (e.g. `eth0`) in `ns`.
    pub fn open(ns: &Netns, dev: &str) -> Result<Sniffer> {
        let dev = std::ffi::CString::new(dev).context("interface name")?;
        let fd = ns.run(move || {
            // SAFETY: if_nametoindex reads a NUL-terminated string we own.
            let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
            if ifindex == 0 {
                return Err(last_error(&format!("no interface {dev:?}")));
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )?;
            // SAFETY: an all-zero sockaddr_ll is valid; we fill what bind reads.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: bind reads a sockaddr_ll we own.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(last_error("binding a packet socket"));
            }
            Ok(fd)
        })?;
        Ok(Sniffer {
            fd,
            seen: Vec::new(),
        })
    }

    /// Reads what has arrived (without waiting) into `seen`.
    fn drain(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 65_536];
        loop {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Ok(());
                }
                return Err(anyhow::Error::new(e).context("reading a packet socket"));
            }
            self.seen.push(buf[..n as usize].to_vec());
        }
    }

    /// Whether `f` arrives within `wait` (returns as soon as it has).
    pub fn saw(&mut self, f: &Forged, wait: Duration) -> Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            self.drain()?;
            if self.seen.iter().any(|p| matches(p, f)) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Sends `f` from `src` three times, spread over `timeout` (as an SCTP stack retransmits its
/// INIT), asking `arrived(wait)` after each whether it has arrived, waiting at most `wait`; the
/// answer comes as soon as one copy has.
fn init_arrives(
    src: &Netns,
    f: &Forged,
    timeout: Duration,
    mut arrived: impl FnMut(Duration) -> Result<bool>,
) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    for _ in 0..3 {
        send(src, f)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if arrived((timeout / 3).min(left))? {
            return Ok(true);
        }
    }
    arrived(deadline.saturating_duration_since(Instant::now()))
}

/// Whether `f` (an SCTP INIT from the source's own address) sent from `src` reaches `dev` of
/// `dst` within `timeout` ([`init_arrives`]), seen by a packet socket there. Blocking.
pub fn init_reaches(
    src: &Netns,
    dst: &Netns,
    dev: &str,
    f: &Forged,
    timeout: Duration,
) -> Result<bool> {
    let mut sniffer = Sniffer::open(dst, dev)?;
    init_arrives(src, f, timeout, |wait| sniffer.saw(f, wait))
}

/// The nftables table that counts one probe's INIT in a node's namespace: the process and the
/// probe's source port make it unique (two `lab probe` runs may share a live lab).
pub fn init_counter_table(f: &Forged) -> String {
    format!("enforcer-lab-sctp-{}-{}", std::process::id(), f.tag)
}

/// The script that creates `table` (failing if it exists) with a counter `init` of the INITs
/// that are `f` (addresses, ports, chunk type 1) on the input hook, at the last priority: a
/// packet counted there was let through by every TC program on its way (the source pod's
/// egress at its veth, before the bridge or the route) and by every earlier input chain, and
/// is what the node's SCTP stack would be handed. A packet socket in the node's namespace
/// would see it on the pod's host-side veth before that veth's TC ingress program judged it.
/// Payload matches only (`sctp sport` is `th` at an SCTP `meta l4proto`): no SCTP module.
pub fn init_counter_script(table: &str, f: &Forged) -> String {
    let fam = if f.dst.is_ipv6() { "ip6" } else { "ip" };
    let rule = format!(
        "{fam} saddr {} {fam} daddr {} sctp sport {} sctp dport {} @th,96,8 1 counter name init",
        f.src, f.dst, f.tag, f.dst_port
    );
    [
        format!("create table inet {table}"),
        format!("table inet {table} {{"),
        "  counter init {}".into(),
        "  chain input {".into(),
        format!("    type filter hook input priority {INPUT_LAST}; policy accept;"),
        format!("    {rule}"),
        "  }".into(),
        "}".into(),
    ]
    .map(|l| l + "\n")
    .concat()
}

/// The last priority of a hook (`NF_IP_PRI_LAST`).
const INPUT_LAST: i32 = i32::MAX;

/// The packets count of `nft -j list counter` output.
fn counter_packets(json: &str) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_str(json).context("nft's JSON")?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|o| o["counter"]["packets"].as_u64())
        .context("no counter in nft's answer")
}

/// Deletes a counting table when the probe ends, however it ends.
struct CounterTable<'a> {
    ns: &'a Netns,
    table: String,
}

impl Drop for CounterTable<'_> {
    fn drop(&mut self) {
        let script = format!("delete table inet {}\n", self.table);
        if let Err(e) = crate::netns::nft_blocking(self.ns, &["-f", "-"], Some(&script)) {
            tracing::warn!("removing the SCTP probe's table: {e:#}");
        }
    }
}

/// Whether `f` (an SCTP INIT from the source's own address) sent from `src` is handed to the
/// stack of `node` (a node's namespace: the target is the node's address, or a host-networked
/// pod's) within `timeout` ([`init_arrives`]): counted by a table of its own on the input hook
/// ([`init_counter_script`]), which is removed again. Blocking.
pub fn init_delivered(src: &Netns, node: &Netns, f: &Forged, timeout: Duration) -> Result<bool> {
    let table = init_counter_table(f);
    crate::netns::nft_blocking(node, &["-f", "-"], Some(&init_counter_script(&table, f)))
        .context("counting the SCTP INIT in the node's namespace")?;
    let guard = CounterTable { ns: node, table };
    let count = || -> Result<u64> {
        let out = crate::netns::nft_blocking(
            guard.ns,
            &["-j", "list", "counter", "inet", &guard.table, "init"],
            None,
        )?;
        counter_packets(&out)
    };
    init_arrives(src, f, timeout, |wait| {
        let until = Instant::now() + wait;
        loop {
            if count()? > 0 {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Parses what `lab forge` sends: `80/TCP`, `53/UDP`, `ICMP` (an echo request).
pub fn parse_what(s: &str) -> Result<(Kind, u16)> {
    let up = s.to_ascii_uppercase();
    if up == "ICMP" || up == "ICMPV6" {
        return Ok((Kind::Echo, 0));
    }
    let (port, proto) = up.split_once('/').unwrap_or((up.as_str(), "TCP"));
    let kind = match proto {
        "TCP" => Kind::TcpSyn,
        "UDP" => Kind::Udp,
        other => bail!("{other:?}: forge sends TCP, UDP or ICMP"),
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((kind, p)),
        _ => bail!("{s:?}: expected PORT/TCP, PORT/UDP or ICMP"),
    }
}

/// The address of `ips` a forged source of `src`'s family goes to (a v4-mapped source is
/// IPv6).
pub fn target_for(src: &IpAddr, ips: &[IpAddr]) -> Option<IpAddr> {
    ips.iter().copied().find(|a| same_header_family(a, src))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn packets_carry_valid_checksums_and_match_themselves() {
        for kind in Kind::ALL {
            for (src, dst) in [
                ("10.42.1.12", "10.42.1.11"),
                ("fd00::c", "fd00::b"),
                ("::ffff:10.42.1.12", "fd00::b"),
            ] {
                let f = Forged {
                    src: ip(src),
                    dst: ip(dst),
                    kind,
                    dst_port: 80,
                    tag: 40_001,
                };
                let p = packet(&f).unwrap();
                assert!(matches(&p, &f), "{f:?}");
                assert!(!matches(&p, &Forged { tag: 40_002, ..f }));
                assert!(!matches(&p, &Forged { src: ip(dst), ..f }));
                let (hdr, l4) = if f.dst.is_ipv4() {
                    assert_eq!(checksum(&[&p[..20]]), 0, "IPv4 header checksum");
                    (20, &p[20..])
                } else {
                    (40, &p[40..])
                };
                assert_eq!(p.len(), hdr + l4.len());
                // Verifying over the pseudo-header (or ICMP alone) gives zero.
                let v = if kind == Kind::Echo && f.dst.is_ipv4() {
                    checksum(&[l4])
                } else {
                    let mut pseudo = octets(&f.src);
                    pseudo.extend(octets(&f.dst));
                    let proto = kind.ip_proto(f.dst.is_ipv6());
                    if f.dst.is_ipv6() {
                        pseudo.extend((l4.len() as u32).to_be_bytes());
                        pseudo.extend([0, 0, 0, proto]);
                    } else {
                        pseudo.extend([0, proto]);
                        pseudo.extend((l4.len() as u16).to_be_bytes());
                    }
                    checksum(&[&pseudo, l4])
                };
                assert_eq!(v, 0, "{f:?}");
            }
        }
    }

    #[test]
    fn crc32c_is_castagnoli() {
        // The check value of CRC-32C, and RFC 3720's vector of 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn sctp_inits_are_valid_inits_and_match_themselves() {
        for (src, dst) in [("10.42.1.12", "10.42.1.11"), ("fd00::c", "fd00::b")] {
            let f = Forged {
                src: ip(src),
                dst: ip(dst),
                kind: Kind::SctpInit,
                dst_port: 9003,
                tag: 40_001,
            };
            let p = packet(&f).unwrap();
            let (hdr, proto) = if f.dst.is_ipv4() {
                assert_eq!(checksum(&[&p[..20]]), 0, "IPv4 header checksum");
                (20, p[9])
            } else {
                (40, p[6])
            };
            assert_eq!(proto, 132);
            let l4 = &p[hdr..];
            assert_eq!(l4.len(), 32);
            assert_eq!(&l4[0..4], &[0x9c, 0x41, 0x23, 0x2b], "ports 40001 > 9003");
            assert_eq!(&l4[4..8], &[0; 4], "an INIT's verification tag is 0");
            assert_eq!((l4[12], l4[13], &l4[14..16]), (1, 0, &[0u8, 20][..]));
            assert_ne!(&l4[16..20], &[0; 4], "the initiate tag is not 0");
            assert!(l4[24..26] != [0, 0] && l4[26..28] != [0, 0], "streams");
            // The checksum: CRC32c of the packet with the field zeroed, low byte first.
            let mut zeroed = l4.to_vec();
            zeroed[8..12].fill(0);
            assert_eq!(l4[8..12], crc32c(&zeroed).to_le_bytes());
            assert!(matches(&p, &f));
            assert!(!matches(&p, &Forged { tag: 40_002, ..f }));
            assert!(!matches(
                &p,
                &Forged {
                    dst_port: 9005,
                    ..f
                }
            ));
            assert!(!matches(
                &p,
                &Forged {
                    kind: Kind::Udp,
                    ..f
                }
            ));
        }
    }

    #[test]
    fn init_counters_match_one_probe_on_the_input_hook() {
        let f = Forged {
            src: ip("10.42.1.12"),
            dst: ip("198.18.0.1"),
            kind: Kind::SctpInit,
            dst_port: 34351,
            tag: 40_001,
        };
        let table = init_counter_table(&f);
        assert_eq!(
            table,
            format!("enforcer-lab-sctp-{}-40001", std::process::id())
        );
        assert_eq!(
            init_counter_script("t", &f),
            "create table inet t\n\
             table inet t {\n  counter init {}\n  chain input {\n    \
             type filter hook input priority 2147483647; policy accept;\n    \
             ip saddr 10.42.1.12 ip daddr 198.18.0.1 sctp sport 40001 sctp dport 34351 \
             @th,96,8 1 counter name init\n  }\n}\n"
        );
        // The chunk type the rule reads (bits 96..104 of the SCTP header) is an INIT's.
        let p = packet(&f).unwrap();
        assert_eq!(p[20 + 96 / 8], 1);
        let v6 = init_counter_script(
            "t",
            &Forged {
                src: ip("fd00:42:1::c"),
                dst: ip("fd00:198:18::1"),
                ..f
            },
        );
        assert!(v6.contains("ip6 saddr fd00:42:1::c ip6 daddr fd00:198:18::1 sctp sport 40001"));
        assert!(!v6.contains("ip saddr"));
    }

    #[test]
    fn counters_read_from_nft_json() {
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "inet", "name": "init", "table": "t", "handle": 2,
            "packets": 3, "bytes": 156}}]}"#;
        assert_eq!(counter_packets(out).unwrap(), 3);
        assert!(counter_packets(r#"{"nftables": [{"metainfo": {}}]}"#).is_err());
        assert!(counter_packets("Error: No such file or directory").is_err());
    }

    #[test]
    fn what_to_forge_parses() {
        assert_eq!(parse_what("80/tcp").unwrap(), (Kind::TcpSyn, 80));
        assert_eq!(parse_what("53/UDP").unwrap(), (Kind::Udp, 53));
        assert_eq!(parse_what("icmp").unwrap(), (Kind::Echo, 0));
        assert_eq!(parse_what("8080").unwrap(), (Kind::TcpSyn, 8080));
        assert!(parse_what("80/SCTP").is_err());
        assert!(parse_what("0/TCP").is_err());
        let ips = [ip("10.0.0.2"), ip("fd00::2")];
        assert_eq!(
            target_for(&ip("::ffff:10.0.0.3"), &ips),
            Some(ip("fd00::2"))
        );
        assert_eq!(target_for(&ip("10.0.0.3"), &ips[1..]), None);
    }

    #[test]
    fn families_must_agree() {
        let f = Forged {
            src: ip("10.0.0.1"),
            dst: ip("fd00::1"),
            kind: Kind::Udp,
            dst_port: 53,
            tag: 1,
        };
        assert!(packet(&f).is_err());
        assert_eq!(v4_mapped(&ip("10.0.0.1")), Some(ip("::ffff:10.0.0.1")));
    }
}
