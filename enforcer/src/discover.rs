//! Endpoint discovery: which interface leads to each local pod, and the node's own addresses.
//!
//! A pod is bound to the pod-like interface (a veth or netkit whose peer is in another network
//! namespace) whose peer holds one of the pod's addresses: the CNI configured it there, in the
//! pod's namespace, and no other pod can write it ([`crate::peers`] reads it, [`crate::binding`]
//! decides, conflicts included). This works alike for routed CNIs (Calico, Cilium-style ptp,
//! the lab: a host route per pod through its veth) and bridge CNIs (flannel's `cni0`, K3s, the
//! reference `bridge` plugin: every pod's veth a port of one bridge), and a quiet pod stays
//! bound for as long as its address is configured.
//!
//! Routes, neighbour entries and bridge forwarding databases are hints only: their changes
//! (netlink events) make the agent look again, and an unbound pod behind a bridge is
//! [`solicit`]ed so its neighbour entry brings the agent back; none of them binds anything. A
//! pod forges neighbour and forwarding entries with a gratuitous ARP or an unsolicited
//! neighbour advertisement, and a route can be stale.
//!
//! Links and routes are read once per pass with `ip -json`, the peers' addresses over
//! rtnetlink ([`read_tables`]); the matching itself ([`match_endpoints`]) is a pure function.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use serde::Deserialize;

use crate::model::ObjectRef;

/// Link kinds (`IFLA_INFO_KIND`) a pod's host side can be when it is a bridge port. A port of
/// another kind (no kind at all: a physical NIC; `vxlan`, `bond`, `vlan`, a nested bridge) is
/// an uplink, never a pod's interface, whatever MAC it learned.
pub const POD_PORT_KINDS: &[&str] = &["veth", "netkit"];

/// The UDP port [`solicit`] sends to: discard (RFC 863).
pub const DISCARD_PORT: u16 = 9;

#[derive(Deserialize)]
struct Route {
    dst: String,
    dev: Option<String>,
    gateway: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Link {
    ifindex: u32,
    ifname: String,
    master: Option<String>,
    /// Present when the link's peer (a veth's other end) lives in another network namespace:
    /// the id this namespace gave that one.
    #[serde(default)]
    link_netnsid: Option<i64>,
    /// `IFLA_LINK`: the peer's ifindex (in the peer's namespace when `link_netnsid` is set).
    #[serde(default)]
    link_index: Option<u32>,
    linkinfo: Option<LinkInfo>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct LinkInfo {
    info_kind: Option<String>,
}

#[derive(Deserialize)]
struct AddrInfo {
    local: Option<String>,
}

#[derive(Deserialize)]
struct NeighJson {
    dst: String,
    dev: Option<String>,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

#[derive(Deserialize)]
struct FdbJson {
    mac: String,
    ifname: String,
    #[serde(default)]
    flags: Vec<String>,
    master: Option<String>,
    #[serde(default)]
    state: String,
}

fn run_json(program: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(program)
        .arg("-json")
        .args(args)
        .output()
        .with_context(|| format!("running `{program}` (install iproute2)"))?;
    if !out.status.success() {
        bail!(
            "`{program} -json {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn ip_json(args: &[&str]) -> Result<Vec<u8>> {
    run_json("ip", args)
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Group (multicast or broadcast) addresses are never a pod's.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let part = parts
                .next()
                .with_context(|| format!("MAC {s:?}: too short"))?;
            if part.is_empty() || part.len() > 2 {
                bail!("MAC {s:?}: bad byte {part:?}");
            }
            *b = u8::from_str_radix(part, 16).with_context(|| format!("MAC {s:?}"))?;
        }
        if parts.next().is_some() {
            bail!("MAC {s:?}: too long");
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The node's routes (table main) that matter for discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    /// Host routes (/32, /128) → interface name.
    pub host: BTreeMap<IpAddr, String>,
    /// Connected routes (no gateway, shorter than a host route) → interface name, such as
    /// `10.42.0.0/24 dev cni0`.
    pub connected: Vec<(IpNet, String)>,
}

fn parse_routes(raw: &[u8], out: &mut Routes) -> Result<()> {
    let routes: Vec<Route> = serde_json::from_slice(raw).context("parsing `ip route`")?;
    for r in routes {
        if r.kind.as_deref().is_some_and(|k| k != "unicast") {
            continue; // blackhole, unreachable, prohibit, ...
        }
        let Some(dev) = r.dev else {
            continue;
        };
        let (addr, len) = match r.dst.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().ok()),
            None => (r.dst.as_str(), None),
        };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue; // "default" and friends
        };
        let full = if ip.is_ipv4() { 32 } else { 128 };
        match len {
            None => {
                out.host.insert(ip, dev);
            }
            Some(l) if l == full => {
                out.host.insert(ip, dev);
            }
            Some(l) if r.gateway.is_none() => {
                if let Ok(net) = IpNet::new(ip, l) {
                    out.connected.push((net.trunc(), dev));
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Reads the node's routes (table main, both families).
pub fn routes() -> Result<Routes> {
    let mut out = Routes::default();
    for family in ["-4", "-6"] {
        let raw = ip_json(&[family, "route", "show", "table", "main"])?;
        parse_routes(&raw, &mut out)?;
    }
    Ok(out)
}

/// Host routes (/32, /128) → interface name.
pub fn host_routes() -> Result<BTreeMap<IpAddr, String>> {
    Ok(routes()?.host)
}

/// The node's interfaces and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// Interface name → ifindex.
    pub names: BTreeMap<String, u32>,
    /// Every address configured on this node (not loopback, not link-local).
    pub host_ips: Vec<IpAddr>,
    /// Interfaces holding one of those addresses: the node's own, where traffic leaves it.
    pub host_ifindexes: Vec<u32>,
    /// Interface name → link kind (`veth`, `bridge`, ...; physical interfaces have none).
    pub kinds: BTreeMap<String, String>,
    /// Interface name → its master (the bridge of a bridge port).
    pub masters: BTreeMap<String, String>,
    /// Interfaces whose peer lives in another network namespace (a pod's veth, seen from the
    /// node).
    pub peer_elsewhere: BTreeSet<String>,
    /// ifindex → (the peer's namespace id, the peer's ifindex there), for the interfaces of
    /// `peer_elsewhere` that name their peer.
    pub peers: BTreeMap<u32, (i32, u32)>,
}

impl Links {
    /// Interfaces that look like a pod's host side, whether or not a known pod claims them:
    /// a pod kind ([`POD_PORT_KINDS`]) whose peer is in another namespace, holding no node
    /// address (routed CNIs' `cali…`/`lxc…`, bridge CNIs' ports of `cni0`).
    pub fn pod_like(&self) -> BTreeSet<u32> {
        self.names
            .iter()
            .filter(|(name, ifindex)| {
                self.peer_elsewhere.contains(*name)
                    && self
                        .kinds
                        .get(*name)
                        .is_some_and(|k| POD_PORT_KINDS.contains(&k.as_str()))
                    && !self.host_ifindexes.contains(ifindex)
            })
            .map(|(_, i)| *i)
            .collect()
    }

    /// Whether the interface is a bridge.
    pub fn is_bridge(&self, name: &str) -> bool {
        self.kinds.get(name).is_some_and(|k| k == "bridge")
    }
}

/// Parses `ip -details -json address show`.
pub fn parse_links(raw: &[u8]) -> Result<Links> {
    let links: Vec<Link> = serde_json::from_slice(raw).context("parsing `ip address`")?;
    let mut out = Links::default();
    for l in links {
        out.names.insert(l.ifname.clone(), l.ifindex);
        if let Some(kind) = l.linkinfo.and_then(|i| i.info_kind) {
            out.kinds.insert(l.ifname.clone(), kind);
        }
        if let Some(master) = l.master {
            out.masters.insert(l.ifname.clone(), master);
        }
        if let Some(nsid) = l.link_netnsid {
            out.peer_elsewhere.insert(l.ifname.clone());
            if let (Ok(nsid), Some(peer)) = (i32::try_from(nsid), l.link_index) {
                out.peers.insert(l.ifindex, (nsid, peer));
            }
        }
        for a in l.addr_info {
            if let Some(ip) = a.local.and_then(|s| s.parse::<IpAddr>().ok())
                && !ip.is_loopback()
                && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
            {
                out.host_ips.push(ip);
                if !out.host_ifindexes.contains(&l.ifindex) {
                    out.host_ifindexes.push(l.ifindex);
                }
            }
        }
    }
    Ok(out)
}

/// Reads the node's interfaces and addresses.
pub fn links() -> Result<Links> {
    parse_links(&ip_json(&["-details", "address", "show"])?)
}

/// A resolved neighbour: the address is at `mac`, reached through `dev`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: Mac,
    pub dev: String,
}

/// Parses `ip -json neigh show`: the entries with a link-layer address, leaving out those that
/// are not (or no longer) resolved: `FAILED`, `INCOMPLETE`, `NONE`.
pub fn parse_neighbours(raw: &[u8]) -> Result<Vec<Neighbour>> {
    let entries: Vec<NeighJson> = serde_json::from_slice(raw).context("parsing `ip neigh`")?;
    let mut out = Vec::new();
    for e in entries {
        if e.state
            .iter()
            .any(|s| matches!(s.as_str(), "FAILED" | "INCOMPLETE" | "NONE"))
        {
            continue;
        }
        let (Ok(ip), Some(dev), Some(mac)) = (
            e.dst.parse::<IpAddr>(),
            e.dev,
            e.lladdr.and_then(|m| m.parse::<Mac>().ok()),
        ) else {
            continue; // no address, not Ethernet, ...
        };
        out.push(Neighbour { ip, mac, dev });
    }
    Ok(out)
}

/// Reads the neighbour tables (ARP and NDP: `ip neigh show` lists both families).
pub fn neighbours() -> Result<Vec<Neighbour>> {
    parse_neighbours(&ip_json(&["neigh", "show"])?)
}

/// A MAC a bridge learned on one of its ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub bridge: String,
    pub mac: Mac,
    pub port: String,
}

/// Parses `bridge -json fdb show`: the learned (dynamic) entries of bridge ports. Left out:
/// the devices' own entries (`self`: multicast, the bridge's and ports' addresses), `permanent`
/// entries (a port's own MAC) and `static` ones (configured, not learned), and group addresses.
pub fn parse_fdb(raw: &[u8]) -> Result<Vec<FdbEntry>> {
    let entries: Vec<FdbJson> = serde_json::from_slice(raw).context("parsing `bridge fdb`")?;
    let mut out = Vec::new();
    for e in entries {
        let Some(bridge) = e.master else {
            continue;
        };
        if e.flags.iter().any(|f| f == "self") || !matches!(e.state.as_str(), "" | "stale") {
            continue;
        }
        let Ok(mac) = e.mac.parse::<Mac>() else {
            continue;
        };
        if mac.is_group() {
            continue;
        }
        out.push(FdbEntry {
            bridge,
            mac,
            port: e.ifname,
        });
    }
    out.sort();
    out.dedup(); // one per VLAN on a VLAN-filtering bridge
    Ok(out)
}

/// Reads the bridges' forwarding databases.
pub fn fdb() -> Result<Vec<FdbEntry>> {
    parse_fdb(&run_json("bridge", &["fdb", "show"])?)
}

/// Everything [`match_endpoints`] reads, captured once per pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub links: Links,
    pub routes: Routes,
    /// Pod-like interface (ifindex, [`Links::pod_like`]) → the addresses its peer holds in the
    /// pod's namespace ([`crate::peers`]): what binds a pod to its interface.
    pub peer_addrs: BTreeMap<u32, Vec<IpAddr>>,
}

/// Reads links, routes, and the addresses of every pod-like interface's peer.
///
/// Neighbour entries and bridge forwarding databases are not read: a pod can write both
/// (gratuitous ARP, unsolicited neighbour advertisements), so they bind nothing; their changes
/// (netlink events) only make the agent look again.
pub fn read_tables() -> Result<Tables> {
    // The three commands run at once: a pass costs one process's time, not three (this is on
    // the path from a new interface to its endpoint being enforced).
    let (links, v4, v6) = std::thread::scope(|s| {
        let links = s.spawn(|| ip_json(&["-details", "address", "show"]));
        let v4 = s.spawn(|| ip_json(&["-4", "route", "show", "table", "main"]));
        let v6 = s.spawn(|| ip_json(&["-6", "route", "show", "table", "main"]));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Vec<u8>>>| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a discovery thread panicked")))
        };
        (join(links), join(v4), join(v6))
    });
    let links = parse_links(&links?)?;
    let mut routes = Routes::default();
    parse_routes(&v4?, &mut routes)?;
    parse_routes(&v6?, &mut routes)?;
    let pod_like = links.pod_like();
    let peers: BTreeMap<u32, (i32, u32)> = links
        .peers
        .iter()
        .filter(|(i, _)| pod_like.contains(i))
        .map(|(i, p)| (*i, *p))
        .collect();
    let (peer_addrs, errors) =
        crate::peers::read(&peers).context("opening a netlink socket for the peers' addresses")?;
    for e in errors {
        // A pod deleted between the two reads; its interfaces bind nothing this pass.
        tracing::debug!("{e}");
    }
    Ok(Tables {
        links,
        routes,
        peer_addrs,
    })
}

/// What [`match_endpoints`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matched {
    /// Local pod → the ifindex of its host-side interface.
    pub interfaces: BTreeMap<ObjectRef, u32>,
    /// Pods and interfaces whose addresses name no single owner: the interfaces are held
    /// fail-closed, the pods bound nowhere ([`crate::binding`]).
    pub conflicts: Vec<crate::binding::Conflict>,
    /// Addresses of unbound pods that a bridge's connected route covers: what to [`solicit`]
    /// (the neighbour event it brings makes the agent look again, a hint, never a binding).
    pub unresolved: Vec<IpAddr>,
}

/// Matches local pods to interfaces: the pod-like interface whose peer holds one of the pod's
/// addresses, or (no such interface) its interface in `previous` while that is still its alone
/// ([`crate::binding::bind`]); routes, neighbours and forwarding databases are not evidence.
/// Pods bound nowhere are left out; their addresses covered by a bridge's connected route are
/// listed in [`Matched::unresolved`].
pub fn match_endpoints<'a>(
    pods: impl IntoIterator<Item = (ObjectRef, &'a [IpAddr])>,
    tables: &Tables,
    previous: &BTreeMap<ObjectRef, u32>,
) -> Matched {
    let pods: Vec<(ObjectRef, &[IpAddr])> = pods.into_iter().collect();
    let bound = crate::binding::bind(
        pods.iter().map(|(p, ips)| (p.clone(), *ips)),
        &tables.peer_addrs,
        previous,
    );
    let links = &tables.links;
    let in_conflict: BTreeSet<&ObjectRef> =
        bound.conflicts.iter().flat_map(|c| c.pods.iter()).collect();
    let mut unresolved = Vec::new();
    for (pod, ips) in &pods {
        if bound.interfaces.contains_key(pod) || in_conflict.contains(pod) {
            continue;
        }
        for ip in *ips {
            let behind_bridge = tables
                .routes
                .connected
                .iter()
                .any(|(net, dev)| net.contains(ip) && links.is_bridge(dev));
            if behind_bridge && !unresolved.contains(ip) {
                unresolved.push(*ip);
            }
        }
    }
    Matched {
        interfaces: bound.interfaces,
        conflicts: bound.conflicts,
        unresolved,
    }
}

/// Makes the kernel resolve these addresses (ARP for IPv4, neighbour solicitation for IPv6) by
/// sending each one empty UDP datagram to the discard port from an unprivileged, unconnected,
/// non-blocking socket. Returns how many datagrams the kernel accepted (queued behind the
/// resolution); addresses it refuses (no route, family disabled) are skipped.
///
/// Why this is harmless: the datagram carries no payload, to the discard port (RFC 863), whose
/// only defined behaviour is to throw data away; a pod with nothing listening answers at most
/// one ICMP port unreachable (rate limited by its kernel), which lands on a socket already
/// closed. It leaves the node only if the caller passes an address the node routes elsewhere:
/// pass [`Matched::unresolved`], which holds only addresses covered by a connected route of a
/// local bridge. On the wire it is one ARP request / neighbour solicitation and, if the pod
/// exists, one small datagram; the pod's reply is what makes the bridge learn its MAC. Callers
/// rate-limit it (say, once per address per few seconds): nothing here remembers.
pub fn solicit(ips: &[IpAddr]) -> usize {
    let open = |local: IpAddr| {
        let s = UdpSocket::bind(SocketAddr::new(local, 0)).ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    };
    let v4 = ips
        .iter()
        .any(IpAddr::is_ipv4)
        .then(|| open(Ipv4Addr::UNSPECIFIED.into()))
        .flatten();
    let v6 = ips
        .iter()
        .any(IpAddr::is_ipv6)
        .then(|| open(Ipv6Addr::UNSPECIFIED.into()))
        .flatten();
    let mut sent = 0;
    for ip in ips {
        let socket = if ip.is_ipv4() { &v4 } else { &v6 };
        if let Some(s) = socket
            && s.send_to(&[], SocketAddr::new(*ip, DISCARD_PORT)).is_ok()
        {
            sent += 1;
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    #[test]
    fn pod_like_interfaces_are_veths_with_a_peer_elsewhere_and_no_address() {
        let l = parse_links(
            br#"[{"ifindex":1,"ifname":"lo","addr_info":[{"local":"127.0.0.1"}]},
                {"ifindex":2,"ifname":"eth0","linkinfo":{"info_kind":"veth"}},
                {"ifindex":3,"ifname":"lxc1","link_netnsid":0,"linkinfo":{"info_kind":"veth"}},
                {"ifindex":4,"ifname":"veth9","link_netnsid":1,"master":"cni0","linkinfo":{"info_kind":"veth"}},
                {"ifindex":5,"ifname":"fabric0","link_netnsid":2,"linkinfo":{"info_kind":"veth"},"addr_info":[{"local":"198.18.0.1"}]},
                {"ifindex":6,"ifname":"cni0","linkinfo":{"info_kind":"bridge"},"addr_info":[{"local":"10.42.0.1"}]}]"#,
        )
        .unwrap();
        assert_eq!(l.pod_like(), BTreeSet::from([3, 4]));
    }

    fn pod(name: &str) -> ObjectRef {
        ObjectRef::new("ns", name)
    }

    /// A bridge node: `cni0` 10.42.0.0/24 with pod ports vethA 3 and vethB 4, a routed veth
    /// lxc1 7; the peers' addresses as the pods' namespaces hold them.
    fn node() -> Tables {
        let mut links = Links::default();
        for (name, ifindex) in [
            ("eth0", 2),
            ("cni0", 10),
            ("vethA", 3),
            ("vethB", 4),
            ("lxc1", 7),
        ] {
            links.names.insert(name.into(), ifindex);
        }
        links.kinds.insert("cni0".into(), "bridge".into());
        links.host_ips = vec![ip("192.168.1.5"), ip("10.42.0.1")];
        links.host_ifindexes = vec![2, 10];
        Tables {
            links,
            routes: Routes {
                // A stale host route: 10.42.0.10 is vethA's pod, not lxc1's.
                host: [
                    (ip("10.42.0.10"), "lxc1".to_string()),
                    (ip("10.1.0.7"), "lxc1".to_string()),
                ]
                .into(),
                connected: vec![
                    ("10.42.0.0/24".parse().unwrap(), "cni0".into()),
                    ("192.168.1.0/24".parse().unwrap(), "eth0".into()),
                ],
            },
            peer_addrs: [
                (3, vec![ip("10.42.0.10"), ip("fd42::10")]),
                (4, vec![ip("10.42.0.11")]),
                (7, vec![ip("10.1.0.7")]),
            ]
            .into(),
        }
    }

    fn run(t: &Tables, pods: &[(&str, Vec<IpAddr>)]) -> Matched {
        match_endpoints(
            pods.iter().map(|(n, ips)| (pod(n), ips.as_slice())),
            t,
            &BTreeMap::new(),
        )
    }

    #[test]
    fn pods_are_bound_by_their_peers_addresses_not_by_routes() {
        let t = node();
        let m = run(
            &t,
            &[
                ("a", vec![ip("10.42.0.10"), ip("fd42::10")]),
                ("b", vec![ip("10.42.0.11")]),
                ("r", vec![ip("10.1.0.7")]),
                ("c", vec![ip("10.42.0.12")]),
                ("far", vec![ip("10.99.0.1")]),
            ],
        );
        assert_eq!(
            m.interfaces,
            [(pod("a"), 3), (pod("b"), 4), (pod("r"), 7)].into()
        );
        assert!(m.conflicts.is_empty());
        // Unbound and behind the bridge: solicited; elsewhere: never (it would leave the node).
        assert_eq!(m.unresolved, vec![ip("10.42.0.12")]);
    }

    #[test]
    fn conflicting_pods_are_bound_nowhere_and_not_solicited() {
        let mut t = node();
        t.peer_addrs.get_mut(&4).unwrap().push(ip("10.42.0.10"));
        let m = run(
            &t,
            &[("a", vec![ip("10.42.0.10")]), ("b", vec![ip("10.42.0.11")])],
        );
        assert!(m.interfaces.is_empty(), "{m:?}");
        assert_eq!(m.conflicts.len(), 1);
        assert_eq!(m.conflicts[0].ifindexes, vec![3, 4]);
        assert!(m.unresolved.is_empty());
    }

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(mac("02:00:00:00:00:0A").to_string(), "02:00:00:00:00:0a");
        assert_eq!(mac("2:0:0:0:0:a"), mac("02:00:00:00:00:0a"));
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:0a:0b",
            "02:00:00:00:00:xx",
            "020:0:0:0:0:0",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert!(mac("33:33:00:00:00:01").is_group());
        assert!(!mac("02:00:00:00:00:0a").is_group());
    }

    // Captured on this machine (Linux 6.18, iproute2 6.1): bridge cni0 10.42.0.1/24 and
    // fd42::1/64, pod 10.42.0.10 / fd42::10 (MAC 02:00:00:00:00:0a) behind port vethA, a routed
    // veth vethR with 10.43.0.5/32, after one solicit() of 10.42.0.10, fd42::10 and the absent
    // 10.42.0.77.
    const NEIGH: &str = r#"[{"dst":"10.42.0.10","dev":"cni0","lladdr":"02:00:00:00:00:0a","state":["REACHABLE"]},{"dst":"10.42.0.77","dev":"cni0","state":["INCOMPLETE"]},{"dst":"fd42::10","dev":"cni0","lladdr":"02:00:00:00:00:0a","state":["REACHABLE"]}]"#;
    // An earlier capture of the same setup (the pod's MAC was random), a few seconds after the
    // solicit: the absent address failed. The last entry (a router on eth0) is hand-written in
    // the format iproute2 prints.
    const NEIGH_LATER: &str = r#"[{"dst":"10.42.0.10","dev":"cni0","lladdr":"6e:88:24:20:90:cd","state":["REACHABLE"]},{"dst":"10.42.0.77","dev":"cni0","state":["FAILED"]},{"dst":"fd42::10","dev":"cni0","lladdr":"6e:88:24:20:90:cd","state":["REACHABLE"]},{"dst":"fe80::1","dev":"eth0","lladdr":"02:42:ac:11:00:01","router":null,"state":["STALE"]}]"#;
    const FDB: &str = r#"[{"mac":"33:33:00:00:00:01","ifname":"cni0","flags":["self"],"state":"permanent"},{"mac":"01:00:5e:00:00:6a","ifname":"cni0","flags":["self"],"state":"permanent"},{"mac":"33:33:00:00:00:6a","ifname":"cni0","flags":["self"],"state":"permanent"},{"mac":"01:00:5e:00:00:01","ifname":"cni0","flags":["self"],"state":"permanent"},{"mac":"33:33:ff:aa:2f:c4","ifname":"cni0","flags":["self"],"state":"permanent"},{"mac":"33:33:ff:00:00:01","ifname":"cni0","flags":["self"],"state":"permanent"},{"mac":"02:00:00:00:00:0a","ifname":"vethA","flags":[],"master":"cni0","state":""},{"mac":"d2:07:cb:6d:e4:25","ifname":"vethA","flags":[],"master":"cni0","state":"permanent"},{"mac":"33:33:00:00:00:01","ifname":"vethA","flags":["self"],"state":"permanent"},{"mac":"01:00:5e:00:00:01","ifname":"vethA","flags":["self"],"state":"permanent"},{"mac":"33:33:ff:6d:e4:25","ifname":"vethA","flags":["self"],"state":"permanent"},{"mac":"33:33:00:00:00:01","ifname":"vethR","flags":["self"],"state":"permanent"},{"mac":"01:00:5e:00:00:01","ifname":"vethR","flags":["self"],"state":"permanent"}]"#;
    // `ip -details -json address show`, trimmed to the fields read here and a few others.
    const ADDR: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"operstate":"UNKNOWN","address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host"}]},{"ifindex":2,"ifname":"cni0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"operstate":"UNKNOWN","address":"d2:07:cb:6d:e4:25","linkinfo":{"info_kind":"bridge"},"addr_info":[{"family":"inet","local":"10.42.0.1","prefixlen":24,"scope":"global"},{"family":"inet6","local":"fd42::1","prefixlen":64,"scope":"global"},{"family":"inet6","local":"fe80::28b2:12ff:feaa:2fc4","prefixlen":64,"scope":"link"}]},{"ifindex":3,"link_index":2,"ifname":"vethA","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"master":"cni0","operstate":"UP","address":"d2:07:cb:6d:e4:25","link_netnsid":0,"linkinfo":{"info_kind":"veth","info_slave_kind":"bridge"},"addr_info":[{"family":"inet6","local":"fe80::d007:cbff:fe6d:e425","prefixlen":64,"scope":"link"}]},{"ifindex":4,"link_index":2,"ifname":"vethR","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"operstate":"LOWERLAYERDOWN","address":"d2:54:13:e6:af:fa","link_netnsid":1,"linkinfo":{"info_kind":"veth"},"addr_info":[]}]"#;
    // The last three routes (default, via a gateway, a blackhole) are hand-written.
    const ROUTE4: &str = r#"[{"dst":"10.42.0.0/24","dev":"cni0","protocol":"kernel","scope":"link","prefsrc":"10.42.0.1","flags":[]},{"dst":"10.43.0.5","dev":"vethR","scope":"link","flags":["linkdown"]},{"dst":"default","gateway":"192.168.1.1","dev":"eth0","flags":[]},{"dst":"10.96.0.0/12","gateway":"192.168.1.1","dev":"eth0","flags":[]},{"type":"blackhole","dst":"10.50.0.0/24","flags":[]}]"#;
    const ROUTE6: &str = r#"[{"dst":"fd42::/64","dev":"cni0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},{"dst":"fe80::/64","dev":"cni0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},{"dst":"fe80::/64","dev":"vethA","protocol":"kernel","metric":256,"flags":[],"pref":"medium"}]"#;

    #[test]
    fn parses_ip_neigh() {
        let n = parse_neighbours(NEIGH.as_bytes()).unwrap();
        let a = mac("02:00:00:00:00:0a");
        assert_eq!(
            n,
            vec![
                Neighbour {
                    ip: ip("10.42.0.10"),
                    mac: a,
                    dev: "cni0".into()
                },
                Neighbour {
                    ip: ip("fd42::10"),
                    mac: a,
                    dev: "cni0".into()
                },
            ]
        );
        let n = parse_neighbours(NEIGH_LATER.as_bytes()).unwrap();
        let ips: Vec<IpAddr> = n.iter().map(|n| n.ip).collect();
        assert_eq!(ips, vec![ip("10.42.0.10"), ip("fd42::10"), ip("fe80::1")]);
        assert!(parse_neighbours(b"[]").unwrap().is_empty());
        assert!(parse_neighbours(b"{").is_err());
    }

    #[test]
    fn parses_bridge_fdb() {
        let f = parse_fdb(FDB.as_bytes()).unwrap();
        assert_eq!(
            f,
            vec![FdbEntry {
                bridge: "cni0".into(),
                mac: mac("02:00:00:00:00:0a"),
                port: "vethA".into()
            }]
        );
        assert!(parse_fdb(b"[{\"mac\":1}]").is_err());
    }

    #[test]
    fn parses_links_and_routes() {
        let l = parse_links(ADDR.as_bytes()).unwrap();
        assert_eq!(l.names["vethA"], 3);
        assert!(l.is_bridge("cni0") && !l.is_bridge("vethA"));
        assert_eq!(l.kinds["vethR"], "veth");
        assert_eq!(l.masters, [("vethA".into(), "cni0".into())].into());
        assert_eq!(l.host_ips, vec![ip("10.42.0.1"), ip("fd42::1")]);
        assert_eq!(l.host_ifindexes, vec![2]);
        // Each veth names its peer: (the peer's namespace id, its ifindex there).
        assert_eq!(l.peers, [(3, (0, 2)), (4, (1, 2))].into());
        assert_eq!(l.pod_like(), [3, 4].into());

        let mut r = Routes::default();
        parse_routes(ROUTE4.as_bytes(), &mut r).unwrap();
        parse_routes(ROUTE6.as_bytes(), &mut r).unwrap();
        assert_eq!(r.host, [(ip("10.43.0.5"), "vethR".to_string())].into());
        let connected: Vec<String> = r
            .connected
            .iter()
            .map(|(n, d)| format!("{n} {d}"))
            .collect();
        assert_eq!(
            connected,
            [
                "10.42.0.0/24 cni0",
                "fd42::/64 cni0",
                "fe80::/64 cni0",
                "fe80::/64 vethA"
            ]
        );
    }

    #[test]
    fn captured_tables_match_the_pod() {
        let mut routes = Routes::default();
        parse_routes(ROUTE4.as_bytes(), &mut routes).unwrap();
        parse_routes(ROUTE6.as_bytes(), &mut routes).unwrap();
        let t = Tables {
            links: parse_links(ADDR.as_bytes()).unwrap(),
            routes,
            // What the pods' namespaces hold (the neighbour and fdb captures above bind nothing).
            peer_addrs: [
                (3, vec![ip("10.42.0.10"), ip("fd42::10")]),
                (4, vec![ip("10.43.0.5")]),
            ]
            .into(),
        };
        let m = run(
            &t,
            &[
                ("p", vec![ip("10.42.0.10"), ip("fd42::10")]),
                ("r", vec![ip("10.43.0.5")]),
                ("gone", vec![ip("10.42.0.77")]),
            ],
        );
        assert_eq!(m.interfaces, [(pod("p"), 3), (pod("r"), 4)].into());
        assert_eq!(m.unresolved, vec![ip("10.42.0.77")]);
    }
}
