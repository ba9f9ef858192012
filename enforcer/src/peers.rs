//! The addresses configured on the far end of the node's pod interfaces: for a host-side veth
//! (or netkit) whose peer lives in a pod's network namespace, what that peer holds.
//!
//! This is what binds a pod to its interface (see [`crate::binding`]): the pod's address is
//! configured on its end of the pair by the CNI, in a namespace the node reads but no other pod
//! writes. Neighbour entries, bridge forwarding databases and even routes are state a pod can
//! forge (gratuitous ARP, unsolicited neighbour advertisements) or that goes stale; these
//! addresses are not.
//!
//! How: one rtnetlink `RTM_GETADDR` dump per peer namespace, addressed by the namespace id the
//! node gave it (`IFLA_LINK_NETNSID` of the host side), with `IFA_TARGET_NETNSID` (Linux 4.20+;
//! the request must be strictly checked, `NETLINK_GET_STRICT_CHK`, so the kernel reads the
//! attribute instead of ignoring it). No `setns`, no process per pod: a node with a hundred pods
//! reads them all in about a millisecond over one socket. The peer's ifindex (`IFLA_LINK`) picks
//! its addresses out of the namespace's.
//!
//! The parsing ([`parse_dump`]) is pure and never panics on bad input.

use std::collections::BTreeMap;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// `struct ifaddrmsg`: family u8, prefixlen u8, flags u8, scope u8, index u32.
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_TARGET_NETNSID: u16 = 10;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
/// `RT_SCOPE_HOST`: loopback addresses.
const SCOPE_HOST: u8 = 254;

/// An address configured in another namespace: on interface `ifindex` (that namespace's
/// numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerAddr {
    pub ifindex: u32,
    pub ip: IpAddr,
}

/// A dump reply that is not well-formed netlink, or the kernel's refusal.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("netlink reply truncated at byte {0}")]
    Truncated(usize),
    #[error("the kernel refused the address dump of namespace id {nsid}: {error}")]
    Refused { nsid: i32, error: io::Error },
    #[error("address dump of namespace id {nsid}: {error}")]
    Io { nsid: i32, error: io::Error },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// What one datagram of a dump reply says: the addresses it lists, and whether the dump is over
/// (`NLMSG_DONE`) or failed (`NLMSG_ERROR` with its errno).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DumpPart {
    pub addrs: Vec<PeerAddr>,
    pub done: bool,
    pub errno: Option<i32>,
}

/// Parses one datagram of an `RTM_GETADDR` dump reply. Loopback (scope host) and IPv6
/// link-local addresses are left out: every namespace has them, and they name no pod.
pub fn parse_dump(buf: &[u8]) -> Result<DumpPart, DumpError> {
    let mut out = DumpPart::default();
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let (Some(len), Some(kind)) = (u32_at(rest, 0), u16_at(rest, 4)) else {
            return Err(DumpError::Truncated(offset));
        };
        let len = len as usize;
        let Some(payload) = rest.get(NLMSG_HDRLEN..len).filter(|_| len >= NLMSG_HDRLEN) else {
            return Err(DumpError::Truncated(offset));
        };
        match kind {
            NLMSG_DONE => out.done = true,
            NLMSG_ERROR => {
                let code = u32_at(payload, 0).ok_or(DumpError::Truncated(offset))? as i32;
                if code != 0 {
                    out.errno = Some(-code);
                }
                out.done = true;
            }
            RTM_NEWADDR => out.addrs.extend(parse_addr(payload)),
            _ => {}
        }
        offset = offset.saturating_add(align4(len)).min(buf.len());
    }
    Ok(out)
}

/// One `RTM_NEWADDR`: the local address (`IFA_LOCAL`, else `IFA_ADDRESS`: IPv6 sends only the
/// latter, and on a point-to-point IPv4 link `IFA_ADDRESS` is the far end).
fn parse_addr(payload: &[u8]) -> Option<PeerAddr> {
    let header = payload.get(..IFADDRMSG_LEN)?;
    let (family, scope, ifindex) = (header[0], header[3], u32_at(header, 4)?);
    if scope == SCOPE_HOST {
        return None;
    }
    let (mut local, mut address) = (None, None);
    let mut attrs = payload.get(IFADDRMSG_LEN..)?;
    while attrs.len() >= 4 {
        let (len, t) = (usize::from(u16_at(attrs, 0)?), u16_at(attrs, 2)? & 0x3fff);
        let data = attrs.get(4..len).filter(|_| len >= 4)?;
        let ip = match (family, data.len()) {
            (AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?))),
            (AF_INET6, 16) => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?))),
            _ => None,
        };
        match t {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            _ => {}
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    let ip = local.or(address)?;
    if ip.is_loopback() || matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
        return None;
    }
    Some(PeerAddr { ifindex, ip })
}

/// The request: `RTM_GETADDR` dump of both families in namespace `nsid`.
fn request(nsid: i32, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + IFADDRMSG_LEN + 8;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&RTM_GETADDR.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[0u8; IFADDRMSG_LEN]); // AF_UNSPEC: both families, every interface
    b.extend_from_slice(&8u16.to_ne_bytes());
    b.extend_from_slice(&IFA_TARGET_NETNSID.to_ne_bytes());
    b.extend_from_slice(&nsid.to_ne_bytes());
    b
}

/// A netlink socket for address dumps of other namespaces, in the calling thread's namespace
/// (namespace ids are relative to it).
pub struct PeerReader {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl PeerReader {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked and owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let on: libc::c_int = 1;
        // SAFETY: `on` is a valid c_int for the length passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_GET_STRICT_CHK,
                (&raw const on).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // A stuck kernel reply must not stall the agent's only task.
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval for the length passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(PeerReader {
            fd,
            seq: 0,
            buf: vec![0; 32 << 10],
        })
    }

    /// The addresses of namespace `nsid` (as this namespace numbers it), by interface.
    pub fn addresses(&mut self, nsid: i32) -> Result<Vec<PeerAddr>, DumpError> {
        let io = |error| DumpError::Io { nsid, error };
        self.seq = self.seq.wrapping_add(1);
        let req = request(nsid, self.seq);
        // SAFETY: `req` is valid for reads of its length; the kernel is the default peer.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io(io::Error::last_os_error()));
        }
        let mut out = Vec::new();
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io(e));
            }
            let part = parse_dump(&self.buf[..n as usize])?;
            out.extend(part.addrs);
            if let Some(errno) = part.errno {
                return Err(DumpError::Refused {
                    nsid,
                    error: io::Error::from_raw_os_error(errno),
                });
            }
            if part.done {
                return Ok(out);
            }
        }
    }
}

/// Host-side interface (ifindex) → the addresses its peer holds.
pub type PeerAddrs = BTreeMap<u32, Vec<IpAddr>>;

/// Reads the peers' addresses: for each host-side interface (ifindex → (peer namespace id, peer
/// ifindex in it)), the addresses its peer holds. One dump per namespace, however many
/// interfaces lead into it. A namespace that cannot be read (gone meanwhile) leaves its
/// interfaces out, so they bind no pod, and is returned as an error beside the rest.
pub fn read(peers: &BTreeMap<u32, (i32, u32)>) -> io::Result<(PeerAddrs, Vec<DumpError>)> {
    let mut reader = PeerReader::open()?;
    let mut by_ns: BTreeMap<i32, Vec<(u32, u32)>> = BTreeMap::new();
    for (host, (nsid, peer)) in peers {
        by_ns.entry(*nsid).or_default().push((*host, *peer));
    }
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (nsid, ifaces) in by_ns {
        match reader.addresses(nsid) {
            Ok(addrs) => {
                for (host, peer) in ifaces {
                    let mut ips: Vec<IpAddr> = addrs
                        .iter()
                        .filter(|a| a.ifindex == peer)
                        .map(|a| a.ip)
                        .collect();
                    ips.sort();
                    ips.dedup();
                    out.insert(host, ips);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    Ok((out, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&[0u8; 10]);
        b.extend_from_slice(payload);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    fn addr(family: u8, scope: u8, ifindex: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut p = vec![family, 24, 0, scope];
        p.extend_from_slice(&ifindex.to_ne_bytes());
        for (t, data) in attrs {
            p.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            p.extend_from_slice(&t.to_ne_bytes());
            p.extend_from_slice(data);
            while p.len() % 4 != 0 {
                p.push(0);
            }
        }
        msg(RTM_NEWADDR, &p)
    }

    #[test]
    fn addresses_of_both_families_are_read_and_loopback_and_link_local_skipped() {
        let v6: Ipv6Addr = "fd42::10".parse().unwrap();
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let mut buf = addr(AF_INET, 254, 1, &[(IFA_LOCAL, &[127, 0, 0, 1])]);
        buf.extend(addr(
            AF_INET,
            0,
            2,
            &[
                (IFA_ADDRESS, &[10, 42, 0, 1]),
                (IFA_LOCAL, &[10, 42, 0, 10]),
            ],
        ));
        buf.extend(addr(AF_INET6, 0, 2, &[(IFA_ADDRESS, &v6.octets())]));
        buf.extend(addr(AF_INET6, 253, 2, &[(IFA_ADDRESS, &ll.octets())]));
        let part = parse_dump(&buf).unwrap();
        assert_eq!(
            part.addrs,
            vec![
                PeerAddr {
                    ifindex: 2,
                    ip: "10.42.0.10".parse().unwrap()
                },
                PeerAddr {
                    ifindex: 2,
                    ip: v6.into()
                },
            ]
        );
        assert!(!part.done);
        let done = parse_dump(&msg(NLMSG_DONE, &0u32.to_ne_bytes())).unwrap();
        assert!(done.done && done.errno.is_none());
        let err = parse_dump(&msg(NLMSG_ERROR, &(-22i32).to_ne_bytes())).unwrap();
        assert_eq!(err.errno, Some(22));
    }

    #[test]
    fn garbage_never_panics() {
        let good = addr(AF_INET, 0, 2, &[(IFA_LOCAL, &[10, 42, 0, 10])]);
        for cut in 0..good.len() {
            let _ = parse_dump(&good[..cut]);
        }
        let mut seed = 7u32;
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..3 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (seed as usize >> 8) % b.len();
                b[i] = (seed >> 20) as u8;
            }
            let _ = parse_dump(&b);
        }
    }
}
