//! Endpoint discovery: which interface leads to each local pod, and the node's own addresses.
//!
//! Two kinds of CNI are understood:
//! - routed CNIs (Calico, Cilium-style ptp, the lab) install a host route (/32, /128) per pod
//!   address through the pod's host-side veth; that route names the interface;
//! - bridge CNIs (flannel's `cni0`, the K3s default, the reference `bridge` plugin) have one
//!   connected route (`10.42.0.0/24 dev cni0`) and every pod's host-side veth is a port of the
//!   bridge. The pod's interface is the bridge port that learned the pod's MAC: the neighbour
//!   table gives address → MAC on the bridge, the bridge's forwarding database MAC → port.
//!
//! Everything is read once per pass (not once per pod) with `ip -json` / `bridge -json`
//! ([`read_tables`]); the matching itself ([`match_endpoints`]) is a pure function.
//!
//! A bridge CNI pod that has not talked yet has no neighbour entry, and its forwarding database
//! entry ages out after the bridge's ageing time (300 s by default) when it is quiet. The first
//! is fixed by [`solicit`] (the caller sends it the [`Matched::unresolved`] addresses, rate
//! limited); the second by keeping a pod's previous port while it still exists and nothing
//! points elsewhere (the `previous` argument of [`match_endpoints`]).

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
    /// Present when the link's peer (a veth's other end) lives in another network namespace.
    #[serde(default)]
    link_netnsid: Option<i64>,
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

    /// Whether the interface can be a pod's host side behind a bridge: a port of that bridge,
    /// of a pod kind ([`POD_PORT_KINDS`]), holding no node address.
    fn is_pod_port(&self, name: &str, bridge: &str) -> bool {
        self.masters.get(name).is_some_and(|m| m == bridge)
            && self
                .kinds
                .get(name)
                .is_some_and(|k| POD_PORT_KINDS.contains(&k.as_str()))
            && self
                .names
                .get(name)
                .is_some_and(|i| !self.host_ifindexes.contains(i))
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
        if l.link_netnsid.is_some() {
            out.peer_elsewhere.insert(l.ifname.clone());
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
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
}

/// Reads links, routes, and (only where the node has a bridge) neighbours and forwarding
/// databases.
pub fn read_tables() -> Result<Tables> {
    // The five commands run at once: a pass costs one process's time, not five (this is on
    // the path from a new interface to its endpoint being enforced).
    let (links, v4, v6, neigh, fdb_raw) = std::thread::scope(|s| {
        let links = s.spawn(|| ip_json(&["-details", "address", "show"]));
        let v4 = s.spawn(|| ip_json(&["-4", "route", "show", "table", "main"]));
        let v6 = s.spawn(|| ip_json(&["-6", "route", "show", "table", "main"]));
        let neigh = s.spawn(|| ip_json(&["neigh", "show"]));
        let fdb = s.spawn(|| run_json("bridge", &["fdb", "show"]));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Vec<u8>>>| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a discovery thread panicked")))
        };
        (join(links), join(v4), join(v6), join(neigh), join(fdb))
    });
    let links = parse_links(&links?)?;
    let mut routes = Routes::default();
    parse_routes(&v4?, &mut routes)?;
    parse_routes(&v6?, &mut routes)?;
    let (neighbours, fdb) = if links.kinds.values().any(|k| k == "bridge") {
        (parse_neighbours(&neigh?)?, parse_fdb(&fdb_raw?)?)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Tables {
        links,
        routes,
        neighbours,
        fdb,
    })
}

/// What [`match_endpoints`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matched {
    /// Local pod → the ifindex of its host-side interface.
    pub interfaces: BTreeMap<ObjectRef, u32>,
    /// Addresses of unmatched pods that a bridge's connected route covers, whose bridge port is
    /// not known yet (no neighbour entry, or its MAC not in the forwarding database): what to
    /// [`solicit`].
    pub unresolved: Vec<IpAddr>,
}

/// Matches local pods to interfaces. For each pod, in order:
/// 1. the host route of any of its addresses through an interface that is not a bridge
///    (routed CNI);
/// 2. a neighbour entry of any of its addresses on a bridge, and the port of that bridge whose
///    forwarding database holds the neighbour's MAC (bridge CNI), if the port is of a pod kind
///    ([`POD_PORT_KINDS`]) and holds no node address;
/// 3. its interface in `previous` (the last pass's answer), if that is still a pod port of a
///    bridge and no pod matched it above: a quiet pod's forwarding database entry ages out, its
///    port stays.
///
/// Pods matched by none are left out; their addresses covered by a bridge's connected route are
/// listed in [`Matched::unresolved`].
pub fn match_endpoints<'a>(
    pods: impl IntoIterator<Item = (ObjectRef, &'a [IpAddr])>,
    tables: &Tables,
    previous: &BTreeMap<ObjectRef, u32>,
) -> Matched {
    let links = &tables.links;
    let mut neigh: BTreeMap<IpAddr, Vec<&Neighbour>> = BTreeMap::new();
    for n in &tables.neighbours {
        if links.is_bridge(&n.dev) {
            neigh.entry(n.ip).or_default().push(n);
        }
    }
    let mut ports: BTreeMap<(&str, Mac), u32> = BTreeMap::new();
    for e in &tables.fdb {
        if links.is_pod_port(&e.port, &e.bridge)
            && let Some(ifindex) = links.names.get(&e.port)
        {
            ports.insert((e.bridge.as_str(), e.mac), *ifindex);
        }
    }
    let by_ifindex: BTreeMap<u32, &str> =
        links.names.iter().map(|(n, i)| (*i, n.as_str())).collect();

    let mut out = Matched::default();
    let mut rest = Vec::new();
    for (pod, ips) in pods {
        let routed = ips
            .iter()
            .filter_map(|ip| tables.routes.host.get(ip))
            .filter(|dev| !links.is_bridge(dev))
            .find_map(|dev| links.names.get(dev));
        let bridged = || {
            ips.iter()
                .flat_map(|ip| neigh.get(ip).into_iter().flatten())
                .find_map(|n| ports.get(&(n.dev.as_str(), n.mac)))
        };
        match routed.or_else(bridged) {
            Some(ifindex) => {
                out.interfaces.insert(pod, *ifindex);
            }
            None => rest.push((pod, ips)),
        }
    }

    let claimed: BTreeSet<u32> = out.interfaces.values().copied().collect();
    for (pod, ips) in rest {
        let kept = previous.get(&pod).filter(|i| {
            !claimed.contains(i)
                && by_ifindex.get(i).is_some_and(|name| {
                    links
                        .masters
                        .get(*name)
                        .is_some_and(|m| links.is_bridge(m) && links.is_pod_port(name, m))
                })
        });
        if let Some(ifindex) = kept {
            out.interfaces.insert(pod, *ifindex);
            continue;
        }
        for ip in ips {
            let behind_bridge = tables
                .routes
                .connected
                .iter()
                .any(|(net, dev)| net.contains(ip) && links.is_bridge(dev));
            if behind_bridge && !out.unresolved.contains(ip) {
                out.unresolved.push(*ip);
            }
        }
    }
    out
}

/// Matches local pods to interfaces by host routes only (routed CNIs); see [`match_endpoints`]
/// for bridge CNIs too.
pub fn match_pods<'a>(
    pods: impl Iterator<Item = (ObjectRef, &'a [IpAddr])>,
    routes: &BTreeMap<IpAddr, String>,
    names: &BTreeMap<String, u32>,
) -> BTreeMap<ObjectRef, u32> {
    let mut out = BTreeMap::new();
    for (pod, ips) in pods {
        if let Some(ifindex) = ips
            .iter()
            .filter_map(|ip| routes.get(ip))
            .find_map(|dev| names.get(dev))
        {
            out.insert(pod, *ifindex);
        }
    }
    out
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

    #[test]
    fn pods_match_their_host_route() {
        let routes: BTreeMap<IpAddr, String> = [
            ("10.0.0.1".parse().unwrap(), "lxc1".to_string()),
            ("fd00::2".parse().unwrap(), "lxc2".to_string()),
        ]
        .into();
        let names: BTreeMap<String, u32> = [("lxc1".into(), 7), ("lxc2".into(), 8)].into();
        let a = vec!["10.0.0.1".parse().unwrap()];
        let b = vec!["10.0.0.9".parse().unwrap(), "fd00::2".parse().unwrap()];
        let c = vec!["10.0.0.3".parse().unwrap()];
        let pods = vec![
            (ObjectRef::new("x", "a"), a.as_slice()),
            (ObjectRef::new("x", "b"), b.as_slice()),
            (ObjectRef::new("x", "c"), c.as_slice()),
        ];
        let m = match_pods(pods.into_iter(), &routes, &names);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&ObjectRef::new("x", "b")], 8);
    }

    /// A node with bridge `cni0` (ports vethA 3, vethB 4, the uplink eth1 5), a second bridge
    /// `br1` (port vethC 6), a routed veth `lxc1` 7, and `eth0` 2 holding the node address.
    fn node() -> Tables {
        let mut links = Links::default();
        for (name, ifindex, kind, master) in [
            ("eth0", 2, None, None),
            ("cni0", 10, Some("bridge"), None),
            ("vethA", 3, Some("veth"), Some("cni0")),
            ("vethB", 4, Some("veth"), Some("cni0")),
            ("eth1", 5, None, Some("cni0")),
            ("br1", 11, Some("bridge"), None),
            ("vethC", 6, Some("veth"), Some("br1")),
            ("lxc1", 7, Some("veth"), None),
        ] {
            links.names.insert(name.into(), ifindex);
            if let Some(k) = kind {
                links.kinds.insert(name.into(), k.into());
            }
            if let Some(m) = master {
                links.masters.insert(name.into(), m.into());
            }
        }
        links.host_ips = vec![ip("192.168.1.5"), ip("10.42.0.1")];
        links.host_ifindexes = vec![2, 10];
        let routes = Routes {
            host: [(ip("10.1.0.7"), "lxc1".to_string())].into(),
            connected: vec![
                ("10.42.0.0/24".parse().unwrap(), "cni0".into()),
                ("fd42::/64".parse().unwrap(), "cni0".into()),
                ("10.43.0.0/24".parse().unwrap(), "br1".into()),
                ("192.168.1.0/24".parse().unwrap(), "eth0".into()),
            ],
        };
        let neighbours = vec![
            Neighbour {
                ip: ip("10.42.0.10"),
                mac: mac("02:00:00:00:00:0a"),
                dev: "cni0".into(),
            },
            Neighbour {
                ip: ip("fd42::11"),
                mac: mac("02:00:00:00:00:0b"),
                dev: "cni0".into(),
            },
        ];
        let fdb = vec![
            FdbEntry {
                bridge: "cni0".into(),
                mac: mac("02:00:00:00:00:0a"),
                port: "vethA".into(),
            },
            FdbEntry {
                bridge: "cni0".into(),
                mac: mac("02:00:00:00:00:0b"),
                port: "vethB".into(),
            },
        ];
        Tables {
            links,
            routes,
            neighbours,
            fdb,
        }
    }

    fn run(
        t: &Tables,
        pods: &[(&str, Vec<IpAddr>)],
        previous: &BTreeMap<ObjectRef, u32>,
    ) -> Matched {
        match_endpoints(
            pods.iter()
                .map(|(name, ips)| (ObjectRef::new("ns", *name), ips.as_slice())),
            t,
            previous,
        )
    }

    fn pod(name: &str) -> ObjectRef {
        ObjectRef::new("ns", name)
    }

    #[test]
    fn bridge_port_found_by_neighbour_and_fdb() {
        let t = node();
        let m = run(
            &t,
            &[("a", vec![ip("10.42.0.10")]), ("b", vec![ip("fd42::11")])],
            &BTreeMap::new(),
        );
        assert_eq!(m.interfaces, [(pod("a"), 3), (pod("b"), 4)].into());
        assert!(m.unresolved.is_empty());
    }

    #[test]
    fn ipv6_neighbour_of_a_dual_stack_pod() {
        let t = node();
        // No IPv4 neighbour for .11, but the IPv6 one resolves.
        let m = run(
            &t,
            &[("b", vec![ip("10.42.0.11"), ip("fd42::11")])],
            &BTreeMap::new(),
        );
        assert_eq!(m.interfaces, [(pod("b"), 4)].into());
    }

    #[test]
    fn routed_wins_over_bridge() {
        let mut t = node();
        // The pod's address also has a neighbour on cni0 (say, a leftover): the route wins.
        t.neighbours.push(Neighbour {
            ip: ip("10.1.0.7"),
            mac: mac("02:00:00:00:00:0a"),
            dev: "cni0".into(),
        });
        let m = run(&t, &[("r", vec![ip("10.1.0.7")])], &BTreeMap::new());
        assert_eq!(m.interfaces, [(pod("r"), 7)].into());
    }

    #[test]
    fn host_route_through_a_bridge_is_not_the_pods_interface() {
        let mut t = node();
        t.routes.host.insert(ip("10.42.0.10"), "cni0".into());
        let m = run(&t, &[("a", vec![ip("10.42.0.10")])], &BTreeMap::new());
        assert_eq!(m.interfaces, [(pod("a"), 3)].into());
    }

    #[test]
    fn mac_learned_on_another_bridge_is_ignored() {
        let mut t = node();
        // The neighbour is on cni0, but its MAC is only in br1's database.
        t.fdb.retain(|e| e.mac != mac("02:00:00:00:00:0a"));
        t.fdb.push(FdbEntry {
            bridge: "br1".into(),
            mac: mac("02:00:00:00:00:0a"),
            port: "vethC".into(),
        });
        let m = run(&t, &[("a", vec![ip("10.42.0.10")])], &BTreeMap::new());
        assert!(m.interfaces.is_empty(), "{m:?}");
        assert_eq!(m.unresolved, vec![ip("10.42.0.10")]);
    }

    #[test]
    fn uplinks_and_node_interfaces_are_never_pod_ports() {
        let mut t = node();
        t.fdb = vec![FdbEntry {
            bridge: "cni0".into(),
            mac: mac("02:00:00:00:00:0a"),
            port: "eth1".into(), // a physical port: no kind
        }];
        let m = run(&t, &[("a", vec![ip("10.42.0.10")])], &BTreeMap::new());
        assert!(m.interfaces.is_empty(), "{m:?}");

        t.fdb[0].port = "vethA".into();
        t.links.host_ifindexes.push(3); // vethA holds a node address
        let m = run(&t, &[("a", vec![ip("10.42.0.10")])], &BTreeMap::new());
        assert!(m.interfaces.is_empty(), "{m:?}");
    }

    #[test]
    fn missing_neighbour_is_unmatched_and_unresolved() {
        let t = node();
        let m = run(
            &t,
            &[
                ("c", vec![ip("10.42.0.12"), ip("fd42::12")]),
                // Not behind a bridge: never solicited (it would leave the node).
                ("far", vec![ip("10.99.0.1")]),
                ("lan", vec![ip("192.168.1.77")]),
            ],
            &BTreeMap::new(),
        );
        assert!(m.interfaces.is_empty(), "{m:?}");
        assert_eq!(m.unresolved, vec![ip("10.42.0.12"), ip("fd42::12")]);
    }

    #[test]
    fn neighbour_without_fdb_entry_is_unresolved() {
        let mut t = node();
        t.fdb.clear(); // aged out
        let m = run(&t, &[("a", vec![ip("10.42.0.10")])], &BTreeMap::new());
        assert!(m.interfaces.is_empty());
        assert_eq!(m.unresolved, vec![ip("10.42.0.10")]);
    }

    #[test]
    fn previous_port_is_kept_while_it_exists() {
        let mut t = node();
        t.fdb.clear();
        t.neighbours.clear();
        let previous: BTreeMap<ObjectRef, u32> = [(pod("a"), 3), (pod("r"), 7)].into();
        let m = run(
            &t,
            &[("a", vec![ip("10.42.0.10")]), ("r", vec![ip("10.1.0.99")])],
            &previous,
        );
        // a keeps its bridge port; r's previous interface is not a bridge port: gone.
        assert_eq!(m.interfaces, [(pod("a"), 3)].into());
        assert!(m.unresolved.is_empty(), "{m:?}");

        // The port is gone: unmatched, solicited.
        t.links.names.remove("vethA");
        let m = run(&t, &[("a", vec![ip("10.42.0.10")])], &previous);
        assert!(m.interfaces.is_empty());
        assert_eq!(m.unresolved, vec![ip("10.42.0.10")]);
    }

    #[test]
    fn previous_port_yields_to_current_evidence() {
        let t = node();
        // a used to be on vethB (4); b now resolves there, and a resolves to vethA.
        let previous: BTreeMap<ObjectRef, u32> = [(pod("a"), 4), (pod("c"), 4)].into();
        let m = run(
            &t,
            &[
                ("a", vec![ip("10.42.0.10")]),
                ("b", vec![ip("fd42::11")]),
                ("c", vec![ip("10.42.0.12")]),
            ],
            &previous,
        );
        assert_eq!(m.interfaces, [(pod("a"), 3), (pod("b"), 4)].into());
        assert_eq!(m.unresolved, vec![ip("10.42.0.12")]);
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
        assert!(l.is_pod_port("vethA", "cni0"));
        assert!(!l.is_pod_port("vethR", "cni0"));

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
            neighbours: parse_neighbours(NEIGH.as_bytes()).unwrap(),
            fdb: parse_fdb(FDB.as_bytes()).unwrap(),
        };
        let m = run(
            &t,
            &[
                ("p", vec![ip("10.42.0.10"), ip("fd42::10")]),
                ("r", vec![ip("10.43.0.5")]),
                ("gone", vec![ip("10.42.0.77")]),
            ],
            &BTreeMap::new(),
        );
        assert_eq!(m.interfaces, [(pod("p"), 3), (pod("r"), 4)].into());
        assert_eq!(m.unresolved, vec![ip("10.42.0.77")]);
    }
}
