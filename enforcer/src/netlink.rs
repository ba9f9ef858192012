//! Interface, address, route and neighbour changes from the kernel, as they happen: an rtnetlink
//! multicast subscription, so the agent can rediscover endpoints when something changed instead
//! of polling.
//!
//! [`Subscription`] is a raw `AF_NETLINK`/`NETLINK_ROUTE` socket joined to the link, IPv4/IPv6
//! address, IPv4/IPv6 route and neighbour groups, non-blocking, driven by tokio's reactor. It
//! sees the network namespace of the thread that opened it. Each message becomes a [`Change`]
//! ([`parse`], pure); only links are described in detail, the rest says "look again". A second
//! socket joins only the address groups with `NETLINK_LISTEN_ALL_NSID`: address changes inside
//! the pods' namespaces (a pod's address configured, or another pod's address added to a pod's
//! interface) are what binds pods to interfaces, and the node sees them as they happen.
//!
//! The kernel drops notifications when the socket's receive queue is full and then fails the
//! next read with `ENOBUFS`: that, like anything unreadable, is reported as [`Change::Resync`],
//! after which the caller must rescan everything.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// Receive queue asked for: a burst of a few thousand link notifications (about 2 KiB each)
/// fits. Granted as asked with `CAP_NET_ADMIN` (`SO_RCVBUFFORCE`), else capped by
/// `net.core.rmem_max`.
pub const RECEIVE_BUFFER: usize = 8 << 20;

/// Datagrams read by one [`Subscription::next_batch`] at most, so a storm cannot starve the
/// caller.
const MAX_DATAGRAMS_PER_BATCH: usize = 4096;

// rtnetlink, from <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
/// `struct ifinfomsg`: family u8, pad u8, type u16, index i32, flags u32, change u32.
const IFINFOMSG_LEN: usize = 16;
const AF_BRIDGE: u8 = 7;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_INFO_KIND: u16 = 1;
/// `NLA_TYPE_MASK`: the attribute type without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
const RTA_HDRLEN: usize = 4;

/// What changed. Links are described; for the rest, only that something changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `RTM_NEWLINK`: a link appeared, or one of its attributes changed (up/down, master,
    /// name, ...). The kernel sends one per change, so the same link can arrive many times.
    LinkAdded {
        ifindex: u32,
        name: String,
        /// `IFLA_INFO_KIND`: `veth`, `bridge`, `vxlan`, ...; none for physical interfaces.
        kind: Option<String>,
        /// `IFLA_MASTER`: the bridge (or bond, VRF) the link is a port of.
        master: Option<u32>,
        /// `IFLA_LINK_NETNSID` present: the link's peer (a veth's other end) or lower device
        /// is in another network namespace, as a pod's host-side veth is. Sent when the link
        /// is created that way or moved into this namespace; a veth whose peer is moved away
        /// later is not announced again (only the peer's `LinkRemoved` is).
        peer_in_other_netns: bool,
    },
    /// `RTM_DELLINK`: the link is gone.
    LinkRemoved { ifindex: u32, name: String },
    /// `RTM_NEWADDR`/`RTM_DELADDR`, either family.
    Address,
    /// `RTM_NEWROUTE`/`RTM_DELROUTE`, either family.
    Route,
    /// `RTM_NEWNEIGH`/`RTM_DELNEIGH`: ARP/NDP entries (every state change: reachable, stale,
    /// ...) and bridge forwarding database entries (learned, aged out).
    Neighbour,
    /// Notifications were lost (receive queue overflow) or could not be read: rescan
    /// everything.
    Resync,
}

/// A buffer that is not a well-formed sequence of netlink messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("netlink header truncated at byte {offset} ({left} bytes left)")]
    TruncatedHeader { offset: usize, left: usize },
    #[error("netlink message at byte {offset} claims {len} bytes ({left} left)")]
    BadLength {
        offset: usize,
        len: usize,
        left: usize,
    },
    #[error("link message at byte {offset}: {what}")]
    BadLink { offset: usize, what: &'static str },
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

/// Netlink attributes (`struct rtattr` / `nlattr`: len u16, type u16, data, padded to 4) as
/// (type without flags, data); `Err` on an attribute that overruns its buffer.
fn attributes(mut b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), &'static str>> {
    std::iter::from_fn(move || {
        if b.is_empty() {
            return None;
        }
        let (Some(len), Some(kind)) = (u16_at(b, 0), u16_at(b, 2)) else {
            b = &[];
            return Some(Err("attribute header truncated"));
        };
        let len = usize::from(len);
        let Some(data) = b.get(RTA_HDRLEN..len).filter(|_| len >= RTA_HDRLEN) else {
            b = &[];
            return Some(Err("attribute length out of bounds"));
        };
        b = b.get(align4(len)..).unwrap_or_default();
        Some(Ok((kind & NLA_TYPE_MASK, data)))
    })
}

/// A NUL-terminated string attribute.
fn string(data: &[u8]) -> String {
    let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// The payload of `RTM_NEWLINK`/`RTM_DELLINK`; `None` for bridge port notifications
/// (`AF_BRIDGE`: a port's bridge state, sent besides the link's own message).
fn parse_link(kind: u16, payload: &[u8], offset: usize) -> Result<Option<Change>, ParseError> {
    let bad = |what| ParseError::BadLink { offset, what };
    let header = payload
        .get(..IFINFOMSG_LEN)
        .ok_or(bad("ifinfomsg truncated"))?;
    if header[0] == AF_BRIDGE {
        return Ok(None);
    }
    let ifindex = u32_at(header, 4).ok_or(bad("ifinfomsg truncated"))?;
    let (mut name, mut link_kind, mut master, mut netnsid) = (String::new(), None, None, false);
    for attr in attributes(payload.get(IFINFOMSG_LEN..).unwrap_or_default()) {
        let (t, data) = attr.map_err(bad)?;
        match t {
            IFLA_IFNAME => name = string(data),
            IFLA_MASTER => master = Some(u32_at(data, 0).ok_or(bad("IFLA_MASTER too short"))?),
            IFLA_LINK_NETNSID => netnsid = true,
            IFLA_LINKINFO => {
                for inner in attributes(data) {
                    let (t, data) = inner.map_err(bad)?;
                    if t == IFLA_INFO_KIND {
                        link_kind = Some(string(data));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some(if kind == RTM_NEWLINK {
        Change::LinkAdded {
            ifindex,
            name,
            kind: link_kind,
            master,
            peer_in_other_netns: netnsid,
        }
    } else {
        Change::LinkRemoved { ifindex, name }
    }))
}

/// Parses one datagram read from the socket: a sequence of netlink messages (header: len u32,
/// type u16, flags u16, seq u32, pid u32, each message padded to 4 bytes). Messages of other
/// types (`NLMSG_NOOP`, `NLMSG_DONE`, `NLMSG_ERROR`, anything unknown) and bridge port
/// notifications are skipped; `NLMSG_OVERRUN` is a [`Change::Resync`]. A buffer that is not
/// well formed is an error, never a panic.
pub fn parse(buf: &[u8]) -> Result<Vec<Change>, ParseError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let left = buf.len() - offset;
        let rest = &buf[offset..];
        let (Some(len), Some(kind)) = (u32_at(rest, 0), u16_at(rest, 4)) else {
            return Err(ParseError::TruncatedHeader { offset, left });
        };
        if left < NLMSG_HDRLEN {
            return Err(ParseError::TruncatedHeader { offset, left });
        }
        let len = len as usize;
        let Some(payload) = rest.get(NLMSG_HDRLEN..len).filter(|_| len >= NLMSG_HDRLEN) else {
            return Err(ParseError::BadLength { offset, len, left });
        };
        let change = match kind {
            RTM_NEWLINK | RTM_DELLINK => parse_link(kind, payload, offset)?,
            RTM_NEWADDR | RTM_DELADDR => Some(Change::Address),
            RTM_NEWROUTE | RTM_DELROUTE => Some(Change::Route),
            RTM_NEWNEIGH | RTM_DELNEIGH => Some(Change::Neighbour),
            NLMSG_OVERRUN => Some(Change::Resync),
            NLMSG_NOOP | NLMSG_DONE | NLMSG_ERROR => None,
            _ => None,
        };
        out.extend(change);
        // The last message of a datagram may lack its padding.
        offset = offset.saturating_add(align4(len)).min(buf.len());
    }
    Ok(out)
}

/// Adds a change to a batch; the "look again" changes ([`Change::Address`], [`Change::Route`],
/// [`Change::Neighbour`], [`Change::Resync`]) at most once each.
fn push(batch: &mut Vec<Change>, change: Change) {
    let once = matches!(
        change,
        Change::Address | Change::Route | Change::Neighbour | Change::Resync
    );
    if !(once && batch.contains(&change)) {
        batch.push(change);
    }
}

/// An open rtnetlink subscription (see the module documentation).
pub struct Subscription {
    fd: AsyncFd<OwnedFd>,
    /// Address changes in the pods' namespaces (those this namespace has an id for, as every
    /// veth peer's has): what binds a pod to its interface (`crate::peers`). Reported as
    /// [`Change::Address`]. `None` where the kernel refuses `NETLINK_LISTEN_ALL_NSID`; the
    /// periodic rescan then catches them.
    peers: Option<AsyncFd<OwnedFd>>,
    buf: Vec<u8>,
}

/// `NETLINK_LISTEN_ALL_NSID` (<linux/netlink.h>): also receive the joined groups' notifications
/// from every namespace that has an id in this one.
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;
const SOL_NETLINK: libc::c_int = 270;

/// A non-blocking rtnetlink socket bound to `groups`, with a `bytes` receive queue; `all_nsid`
/// also listens to the other namespaces that have an id here.
fn open_socket(bytes: usize, groups: u32, all_nsid: bool) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
    }
    if all_nsid {
        setsockopt_int(&fd, SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, 1)?;
    }

    // SAFETY: sockaddr_nl is plain data; all zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: `addr` is a valid sockaddr_nl of the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

impl Subscription {
    /// Opens the subscription in the calling thread's network namespace, with a
    /// [`RECEIVE_BUFFER`] receive queue. Must be called inside a tokio runtime with I/O
    /// enabled (an error otherwise).
    pub fn open() -> io::Result<Self> {
        Self::with_receive_buffer(RECEIVE_BUFFER)
    }

    /// [`open`](Self::open) with another receive queue size (small ones make overflows easy
    /// to test).
    pub fn with_receive_buffer(bytes: usize) -> io::Result<Self> {
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let groups = (libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_ROUTE
            | libc::RTMGRP_NEIGH) as u32;
        let fd = open_socket(bytes, groups, false)?;
        let addresses = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        let peers = match open_socket(bytes, addresses, true) {
            // SAFETY: as below.
            Ok(p) => {
                Some(unsafe { AsyncFd::register_with_interest(p, tokio::io::Interest::READABLE) }?)
            }
            Err(e) => {
                tracing::warn!(
                    "no address notifications from the pods' namespaces ({e}); the periodic \
                     rescan finds them"
                );
                None
            }
        };
        // SAFETY: the OwnedFd keeps the descriptor open, and always the same one, for as long
        // as the AsyncFd owns it; it is never handed out mutably.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Subscription {
            fd,
            peers,
            buf: vec![0; 64 << 10],
        })
    }

    /// The receive queue the kernel granted (`SO_RCVBUF`, which counts its bookkeeping too).
    pub fn receive_buffer(&self) -> io::Result<usize> {
        let mut v: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.get_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw mut v).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(v).unwrap_or(0))
    }

    /// Waits until at least one change arrived, then returns it with every change already
    /// queued (at most a few thousand datagrams' worth). "Look again" changes are reported at
    /// most once per batch; link changes in the order they happened. Never empty.
    pub async fn next_batch(&mut self) -> io::Result<Vec<Change>> {
        let Subscription { fd, peers, buf } = self;
        let mut batch = Vec::new();
        let mut datagrams = 0;
        loop {
            let peers_readable = async {
                match peers {
                    Some(p) => p.readable().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                guard = fd.readable() => {
                    drain(guard?, buf, &mut datagrams, &mut batch, false)?;
                }
                guard = peers_readable => {
                    drain(guard?, buf, &mut datagrams, &mut batch, true)?;
                }
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }
}

/// Reads what a socket has queued into `batch` (at most [`MAX_DATAGRAMS_PER_BATCH`] datagrams
/// per batch in all). `peers`: the pods' namespaces' address socket, whose every notification is
/// a [`Change::Address`] (only address groups are joined; its link and route numbering is not
/// this namespace's, so nothing else is parsed).
fn drain(
    mut guard: tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>,
    buf: &mut [u8],
    datagrams: &mut usize,
    batch: &mut Vec<Change>,
    peers: bool,
) -> io::Result<()> {
    loop {
        if *datagrams >= MAX_DATAGRAMS_PER_BATCH {
            return Ok(());
        }
        match recv(guard.get_inner(), buf) {
            Ok((n, pid)) => {
                *datagrams += 1;
                if pid != 0 {
                    continue; // not from the kernel
                }
                let Some(data) = buf.get(..n) else {
                    // MSG_TRUNC: the datagram was larger than the buffer.
                    push(batch, Change::Resync);
                    continue;
                };
                match parse(data) {
                    Ok(_) if peers => push(batch, Change::Address),
                    Ok(changes) => {
                        for c in changes {
                            push(batch, c);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("unreadable netlink notification: {e}");
                        push(batch, Change::Resync);
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                push(batch, Change::Resync);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                guard.clear_ready();
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram: its full length (larger than `buf` if it was truncated) and the sender's
/// port id (0: the kernel).
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, u32)> {
    // SAFETY: sockaddr_nl is plain data; all zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `buf` is valid for `buf.len()` bytes of writes, `addr`/`len` for theirs.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, addr.nl_pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn link(
        ifindex: u32,
        name: &str,
        kind: Option<&str>,
        master: Option<u32>,
        peer_in_other_netns: bool,
    ) -> Change {
        Change::LinkAdded {
            ifindex,
            name: name.into(),
            kind: kind.map(Into::into),
            master,
            peer_in_other_netns,
        }
    }

    #[test]
    fn captured_link_messages() {
        assert_eq!(
            parse(&hex(VETH_NEWLINK)).unwrap(),
            vec![link(3, "veth0", Some("veth"), None, true)]
        );
        assert_eq!(
            parse(&hex(MASTER_NEWLINK)).unwrap(),
            vec![link(3, "veth0", Some("veth"), Some(2), true)]
        );
        assert_eq!(
            parse(&hex(BRIDGE_NEWLINK)).unwrap(),
            vec![link(2, "br0", Some("bridge"), None, false)]
        );
        assert_eq!(
            parse(&hex(VETH_DELLINK)).unwrap(),
            vec![Change::LinkRemoved {
                ifindex: 3,
                name: "veth0".into()
            }]
        );
        // A port leaving its bridge is not the link leaving.
        assert_eq!(parse(&hex(PORT_NEWLINK_AF_BRIDGE)).unwrap(), vec![]);
        assert_eq!(parse(&hex(PORT_DELLINK_AF_BRIDGE)).unwrap(), vec![]);
    }

    #[test]
    fn captured_other_messages() {
        assert_eq!(
            parse(&hex(NEIGH_NEWNEIGH)).unwrap(),
            vec![Change::Neighbour]
        );
        assert_eq!(parse(&hex(FDB_NEWNEIGH)).unwrap(), vec![Change::Neighbour]);
        assert_eq!(parse(&hex(ADDR_NEWADDR)).unwrap(), vec![Change::Address]);
        assert_eq!(parse(&hex(ROUTE_NEWROUTE)).unwrap(), vec![Change::Route]);
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let mut buf = hex(ROUTE_NEWROUTE);
        buf.extend(hex(VETH_DELLINK));
        buf.extend(hex(NEIGH_NEWNEIGH));
        // An NLMSG_DONE and an unknown type are skipped; an overrun is a resync.
        for kind in [NLMSG_DONE, 0x7777, NLMSG_OVERRUN] {
            buf.extend(20u32.to_ne_bytes());
            buf.extend(kind.to_ne_bytes());
            buf.extend([0; 14]);
        }
        assert_eq!(
            parse(&buf).unwrap(),
            vec![
                Change::Route,
                Change::LinkRemoved {
                    ifindex: 3,
                    name: "veth0".into()
                },
                Change::Neighbour,
                Change::Resync,
            ]
        );
    }

    #[test]
    fn truncated_buffers_are_errors_not_panics() {
        for msg in [VETH_NEWLINK, MASTER_NEWLINK, VETH_DELLINK, NEIGH_NEWNEIGH] {
            let full = hex(msg);
            for cut in 1..full.len() {
                assert!(parse(&full[..cut]).is_err(), "cut at {cut} of {msg:.16}");
            }
            assert!(parse(&full).is_ok());
        }
        assert_eq!(parse(&[]).unwrap(), vec![]);
    }

    #[test]
    fn corrupt_lengths_are_errors_not_panics() {
        let good = hex(VETH_NEWLINK);
        // Header length below the header, beyond the buffer.
        for len in [0u32, 15, good.len() as u32 + 1, u32::MAX] {
            let mut b = good.clone();
            b[..4].copy_from_slice(&len.to_ne_bytes());
            assert!(parse(&b).is_err(), "len {len}");
        }
        // A link message too short for its ifinfomsg.
        let mut b = good[..NLMSG_HDRLEN + 8].to_vec();
        let short = b.len() as u32;
        b[..4].copy_from_slice(&short.to_ne_bytes());
        assert!(matches!(parse(&b), Err(ParseError::BadLink { .. })));
        // The first attribute's length: 0, 2, past the end.
        for alen in [0u16, 2, 0xffff] {
            let mut b = good.clone();
            let at = NLMSG_HDRLEN + IFINFOMSG_LEN;
            b[at..at + 2].copy_from_slice(&alen.to_ne_bytes());
            assert!(parse(&b).is_err(), "attribute len {alen}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic xorshift stream: random buffers, and real messages with random bytes
        // overwritten.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let real = [hex(VETH_NEWLINK), hex(MASTER_NEWLINK), hex(BRIDGE_NEWLINK)];
        for i in 0..20_000 {
            let mut b = if i % 2 == 0 {
                let len = (next() % 300) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                real[i % 3].clone()
            };
            if !b.is_empty() {
                for _ in 0..(next() % 8) {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
            }
            let _ = parse(&b);
        }
    }

    #[test]
    fn look_again_changes_are_reported_once_per_batch() {
        let mut batch = Vec::new();
        for c in [
            Change::Route,
            Change::Neighbour,
            Change::Route,
            link(3, "a", None, None, false),
            link(3, "a", None, None, false),
            Change::Neighbour,
        ] {
            push(&mut batch, c);
        }
        assert_eq!(
            batch,
            vec![
                Change::Route,
                Change::Neighbour,
                link(3, "a", None, None, false),
                link(3, "a", None, None, false),
            ]
        );
    }

    #[test]
    fn open_outside_a_runtime_is_an_error() {
        assert!(Subscription::open().is_err());
    }

    // Captured on this machine (Linux 6.18) from an rtnetlink multicast socket in a throwaway
    // namespace: `ip link add br0 type bridge` (BRIDGE_NEWLINK, ifindex 2), `ip link add veth0
    // type veth peer name eth0 netns <other>` (VETH_NEWLINK, ifindex 3), `ip link set veth0
    // master br0` (MASTER_NEWLINK; FDB_NEWNEIGH, the port's address entering br0's database;
    // PORT_NEWLINK_AF_BRIDGE, the bridge's own port notification), `ip neigh add 10.1.2.3
    // lladdr 02:00:00:00:00:01 dev br0` (NEIGH_NEWNEIGH), `ip addr add 10.7.0.1/24 dev br0`
    // (ADDR_NEWADDR, ROUTE_NEWROUTE: the local route it brings), `ip link del veth0`
    // (PORT_DELLINK_AF_BRIDGE, then VETH_DELLINK).
    const VETH_NEWLINK: &str = concat!(
        "e0050000100000000000000000000000000001000300000002100000ffffffff0a000300766574683000000008000d00",
        "e803000005001000020000000500110000000000050043000000000008000400dc050000080032004400000008003300",
        "ffff000008001b000000000008001e000000000008003d000000000008001f000200000008002800ffff000008002900",
        "0000010008003a000000010008003f0000000100080040000000010008003b00f8ff070008003c00ffff000008004200",
        "0000000008002000020000000500210000000000080023000100000008002f0000000000080030000100000006004400",
        "00000000060045000000000005002700000000000a0001004edfa6f39d5300000a000200ffffffffffff0000cc001700",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000064000700000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000c002b000500020000000000100012000900010076657468000000000800250000000000",
        "0800050002000000090006006e6f6f700000000030031a008c0002008800010000000000000000000000000001000000",
        "010000000100000001000000000000000100000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000000000000000000000010270000e8030000",
        "0000000000000000000000000000000001000000a0020a00080001000000000014000500ffff00001b240f00586c0000",
        "e8030000f40002000000000040000000dc05000001000000010000000100000001000000ffffffffa00f0000e8030000",
        "00000000803a0900805101000300000058020000100000000000000001000000010000000100000060ea000000000000",
        "000000000000000000000000000000000000000001000000000000000000000010270000e80300000100000000000000",
        "00000000010000000000000000000000010000000000000000000000000000000000000080ee36000000000000000000",
        "0100000000000000000000000000000000000000000000000004000000000000ffff0000ffffffff0100000000000000",
        "000000000000000034010300260000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000003c00060007000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000001400070000000000",
        "000000000000000000000000050008000000000024000e00000000000000000000000000000000000000000000000000",
        "000000000000000004003e8004004180",
    );
    const MASTER_NEWLINK: &str = concat!(
        "44070000100000000000000000000000000001000300000002100000000000000a000300766574683000000008000d00",
        "e803000005001000020000000500110000000000050043000000000008000400dc050000080032004400000008003300",
        "ffff000008001b000000000008001e000000000008003d000100000008001f000200000008002800ffff000008002900",
        "0000010008003a000000010008003f0000000100080040000000010008003b00f8ff070008003c00ffff000008004200",
        "00000000080020000200000008000a00020000000500210000000000080023000100000008002f000000000008003000",
        "010000000600440000000000060045000000000005002700000000000a0001004edfa6f39d5300000a000200ffffffff",
        "ffff0000cc00170000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000006400070000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000000c002b0005000200000000006c011200090001007665746800000000",
        "0b0004006272696467650000500105000500010000000000060002002000000008000300020000000500040000000000",
        "05000500000000000500060000000000050007000000000005001c000000000005000800010000000500090001000000",
        "05001b000100000005001e000100000005000a000000000005000c00000000000c000d0080000000000000000c000e00",
        "800000000000000006000f00018000000600100000000000060011000180000006001200010000000500130000000000",
        "050014000000000005001d000000000006001f0000000000050020000000000005002300000000000500240000000000",
        "05002100000000000500270000000000050028000000000005002b00000000000c00150000000000000000000c001600",
        "00000000000000000c001700000000000000000005001900010000000800250000020000080026000000000008002900",
        "0000000008002a000000000008002500000000000800050002000000090006006e6f6f700000000030031a008c000200",
        "880001000000000000000000000000000100000001000000010000000100000000000000010000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000010270000e80300000000000000000000000000000000000001000000a0020a0008000100",
        "0000000014000500ffff00001b240f00586c0000e8030000f40002000000000040000000dc0500000100000001000000",
        "0100000001000000ffffffffa00f0000e803000000000000803a09008051010003000000580200001000000000000000",
        "01000000010000000100000060ea00000000000000000000000000000000000000000000000000000100000000000000",
        "0000000010270000e8030000010000000000000000000000010000000000000000000000010000000000000000000000",
        "000000000000000080ee3600000000000000000001000000000000000000000000000000000000000000000000040000",
        "00000000ffff0000ffffffff010000000000000000000000000000003401030026000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "3c0006000700000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000001400070000000000000000000000000000000000050008000000000024000e0000000000",
        "0000000000000000000000000000000000000000000000000000000004003e8004004180",
    );
    const BRIDGE_NEWLINK: &str = concat!(
        "58070000100000000000000000000000000001000200000002100000ffffffff080003006272300008000d00e8030000",
        "05001000020000000500110000000000050043000100000008000400dc050000080032004400000008003300ffff0000",
        "08001b000000000008001e000000000008003d000000000008001f000100000008002800ffff00000800290000000100",
        "08003a000000010008003f0000000100080040000000010008003b000000010008003c00ffff00000800420000000000",
        "08002000010000000500210001000000080023000000000008002f000000000008003000000000000600440000000000",
        "060045000000000005002700000000000a00010062458c69146500000a000200ffffffffffff0000cc00170000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000006400070000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000c002b0005000200000000009c0112000b00010062726964676500008c0102000c00100000000000",
        "000000000c00110000000000000000000c00120000000000000000000c001300000000000000000008000100dc050000",
        "08000200c800000008000300d00700000800040030750000080005000000000006000600008000000500070000000000",
        "06000900000000000c000b0080000000000000000c000a00800000000000000006000c000000000008000d0000000000",
        "05000e000000000005000f00000000000a0014000180c200000000000c002e00000000001f0000000800300000000000",
        "0800310000000000050016000100000005001700010000000500180000000000050019000000000005002a0000000000",
        "08001a001000000008001b000010000008001c000200000008001d000200000005002b000200000005002c0001000000",
        "0c001e0064000000000000000c001f0090650000000000000c0020009c630000000000000c002100d430000000000000",
        "0c002200e8030000000000000c002300340c000000000000050024000000000005002500000000000500260000000000",
        "090006006e6f6f700000000030031a008c00020088000100000000000000000000000000010000000100000001000000",
        "010000000000000001000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000010270000e80300000000000000000000",
        "000000000000000001000000a0020a00080001000000000014000500ffff000006240f00bc890000e8030000f4000200",
        "0000000040000000dc05000001000000010000000100000001000000ffffffffa00f0000e803000000000000803a0900",
        "805101000300000058020000100000000000000001000000010000000100000060ea0000000000000000000000000000",
        "00000000000000000000000001000000000000000000000010270000e803000001000000000000000000000001000000",
        "0000000000000000010000000000000000000000000000000000000080ee360000000000000000000100000000000000",
        "000000000000000000000000000000000004000000000000ffff0000ffffffff01000000000000000000000000000000",
        "340103002600000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "00000000000000000000000000000000000000003c000600070000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000014000700000000000000000000000000",
        "00000000050008000000000024000e000000000000000000000000000000000000000000000000000000000000000000",
        "04003e8004004180",
    );
    const PORT_NEWLINK_AF_BRIDGE: &str = concat!(
        "a8010000100000000000000000000000070001000300000002100000000000000a000300766574683000000008000a00",
        "0200000008000400dc05000005001000020000000a0001004edfa6f39d530000080005000200000050010c8005000100",
        "000000000600020020000000080003000200000005000400000000000500050000000000050006000000000005000700",
        "0000000005001c00000000000500080001000000050009000100000005001b000100000005001e000100000005000a00",
        "0000000005000c00000000000c000d0080004edfa6f39d530c000e0080004edfa6f39d5306000f000180000006001000",
        "00000000060011000180000006001200010000000500130000000000050014000000000005001d000000000006001f00",
        "000000000500200000000000050023000000000005002400000000000500210000000000050027000000000005002800",
        "0000000005002b00000000000c00150000000000000000000c00160000000000000000000c0017000000000000000000",
        "050019000100000008002500000200000800260000000000080029000000000008002a0000000000",
    );
    const PORT_DELLINK_AF_BRIDGE: &str = concat!(
        "58000000110000000000000000000000070001000300000002100000000000000a000300766574683000000008000a00",
        "0200000008000400dc05000005001000020000000a0001004edfa6f39d5300000800050000000000",
    );
    const VETH_DELLINK: &str = concat!(
        "ac020000110000000000000000000000000001000300000002100000ffffffff0a000300766574683000000008000d00",
        "e803000005001000020000000500110000000000050043000000000008000400dc050000080032004400000008003300",
        "ffff000008001b000000000008001e000000000008003d000000000008001f000200000008002800ffff000008002900",
        "0000010008003a000000010008003f0000000100080040000000010008003b00f8ff070008003c00ffff000008004200",
        "0000000008002000020000000500210000000000080023000100000008002f0000000000080030000100000006004400",
        "00000000060045000000000005002700000000000a0001004edfa6f39d5300000a000200ffffffffffff0000cc001700",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000064000700000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000c002b000500020000000000100012000900010076657468000000000800050000000000",
        "090006006e6f6f700000000004001a0024000e0000000000000000000000000000000000000000000000000000000000",
        "0000000004003e8004004180",
    );
    const NEIGH_NEWNEIGH: &str = concat!(
        "4c0000001c00000000000000a5450000020000000200000080000001080001000a0102030a0002000200000000010000",
        "08000400000000001400030000000000000000000000000001000000",
    );
    const FDB_NEWNEIGH: &str = concat!(
        "4c0000001c00000000000000000000000700000003000000800000000a0002004edfa6f39d5300000800090002000000",
        "08000f00000000001400030000000000000000000000000000000000",
    );
    const ADDR_NEWADDR: &str = concat!(
        "4c00000014000000b2aa046ba74500000218800002000000080001000a070001080002000a0700010800030062723000",
        "080008008000000014000600ffffffffffffffff9a240f009a240f00",
    );
    const ROUTE_NEWROUTE: &str = concat!(
        "3c00000018000006000000000000000002200000ff02fe020000000008000f00ff000000080001000a07000108000700",
        "0a0700010800040002000000",
    );
}
