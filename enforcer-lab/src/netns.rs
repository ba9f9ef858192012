//! Network namespaces: creating the lab's (with `ip -batch`, a handful of processes for the
//! whole lab), entering one from a short-lived thread, and deleting them.
//!
//! Layout, routed-CNI style (as Calico does it):
//! - node namespace: the host side of every local pod's veth (`lxc…`, MAC ee:ee:ee:ee:ee:ee,
//!   IPv6 link-local fe80::1), one host route per pod address through it, forwarding on.
//! - pod namespace: `eth0` with the pod's addresses as /32 and /128 (no DAD); the gateway
//!   169.254.1.1 (and fe80::1) is a permanent neighbour entry for the host veth's MAC, so no
//!   ARP answer is needed from a node that (by the lab's safety rule) has no default route;
//!   routes via the gateway go only to the lab's own addresses. No namespace has a default
//!   route, so no lab packet can reach a real network.
//! - bridge nodes (`cni: bridge`, as flannel and K3s do it): the node's pods' host-side veths
//!   are ports of one bridge `cni0`, which holds the first address of the node's pod CIDR (and
//!   of an IPv6 prefix when the lab uses IPv6); a pod's address in that prefix has the prefix's
//!   length, so the pods of a node reach each other on-link through the bridge (no routing
//!   between them, as on flannel); everything else goes via `cni0`'s address, resolved by ARP
//!   and neighbour discovery. Nothing primes the node's neighbour table or the bridge's
//!   forwarding database: the agent must find a quiet pod by itself.
//! - `rp_filter` is off on every interface of every lab namespace, and nodes accept packets
//!   with a local source address (`accept_local`): the kernel's own source checks would hide a
//!   hole in the enforcer's (the enforcer must drop a forged source by itself).
//! - with several nodes or any host: a fabric namespace with a bridge joining every node and
//!   host (see [`build`]); nodes use 198.18.0.0/15 (RFC 2544) addresses on it (without a
//!   fabric, a node keeps its address on `svc0`); pods route the nodes' addresses too.
//!
//! [`build`] returns only when every link is up and every fabric port forwards (see
//! [`wait_links_ready`]), so that the first packets across nodes are not lost.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::AsyncWriteExt;

use crate::plan::{NodePlan, Plan, PodPlan};
use crate::scenario::Cidr;
use crate::services::SVC_IF;

/// The gateway every pod routes through.
pub const GATEWAY_V4: &str = "169.254.1.1";
pub const GATEWAY_V6: &str = "fe80::1";
/// The MAC of every host-side veth (Calico uses the same one).
pub const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// An open network namespace.
#[derive(Clone, Debug)]
pub struct Netns {
    pub name: String,
    fd: Arc<OwnedFd>,
}

impl Netns {
    pub fn open(name: &str) -> Result<Netns> {
        let path = Path::new("/run/netns").join(name);
        let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Netns {
            name: name.to_string(),
            fd: Arc::new(f.into()),
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Runs `f` on a new thread that has entered this namespace. Sockets made there stay in
    /// the namespace after the thread ends; the thread never returns to another namespace, so
    /// no thread of the process is ever left in the wrong one.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let fd = self.fd.clone();
        let name = self.name.clone();
        std::thread::Builder::new()
            .name("lab-netns".into())
            .spawn(move || {
                enter(fd.as_raw_fd()).with_context(|| format!("entering netns {name}"))?;
                f()
            })
            .context("spawning a thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in netns {} panicked", self.name))?
    }
}

/// setns(2) into a network namespace: for this thread, or in a child before exec.
pub fn enter(fd: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on a file descriptor we own.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes a sysctl of the calling thread's network namespace.
pub fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("setting {key}={value}"))
}

/// Runs `ip [-n NS] -batch -` with these lines.
pub async fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    ip_batch_output(netns, &[], lines).await.map(|_| ())
}

/// Runs `ip [-n NS] OPTIONS -batch -` with these lines; returns what it printed.
async fn ip_batch_output(
    netns: Option<&str>,
    options: &[&str],
    lines: &[String],
) -> Result<String> {
    if lines.is_empty() {
        return Ok(String::new());
    }
    let mut cmd = tokio::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(options)
        .args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("running `ip` (install iproute2)")?;
    let mut stdin = child.stdin.take().context("ip stdin")?;
    let text = lines.join("\n") + "\n";
    stdin
        .write_all(text.as_bytes())
        .await
        .context("writing to ip")?;
    drop(stdin);
    let out = child.wait_with_output().await.context("waiting for ip")?;
    if !out.status.success() {
        bail!(
            "`ip{} -batch` failed: {}",
            netns.map(|n| format!(" -n {n}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn host_prefix(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// The interface of a node on the fabric bridge.
pub const NODE_FABRIC_IF: &str = "fabric0";

/// The bridge of a bridge node (flannel's and K3s's name).
pub const BRIDGE_IF: &str = "cni0";

fn prefix_of(ip: &IpAddr, c: &Cidr) -> String {
    format!("{ip}/{}", c.len)
}

fn v4(ips: &[IpAddr]) -> bool {
    ips.iter().any(IpAddr::is_ipv4)
}

fn v6(ips: &[IpAddr]) -> bool {
    ips.iter().any(IpAddr::is_ipv6)
}

/// `address add` lines for an endpoint's own addresses (host prefixes, no DAD).
fn own_addresses(ips: &[IpAddr], dev: &str, lines: &mut Vec<String>) {
    for ip in ips {
        let nodad = if ip.is_ipv6() { " nodad" } else { "" };
        lines.push(format!("address add {} dev {dev}{nodad}", host_prefix(ip)));
    }
}

/// The first address of `ips` in the family of `ip`.
fn same_family(ips: &[IpAddr], ip: &IpAddr) -> Option<IpAddr> {
    ips.iter().copied().find(|a| a.is_ipv4() == ip.is_ipv4())
}

/// Creates the namespaces and links of `plan`. `created` receives each namespace name before
/// it is created, so a failure half-way still lets the caller delete what exists.
///
/// With more than one node, or hosts, a fabric namespace holds a bridge; every node
/// (`fabric0`, with its fabric addresses as host prefixes) and every host (`eth0`, with its
/// own addresses) has a port on it, and routes are per address: a node reaches a remote pod
/// through that pod's node, a host directly; a host reaches a pod through the pod's node.
pub async fn build(plan: &Plan, created: &mut Vec<String>) -> Result<()> {
    let any6 = plan.uses_ipv6();
    let fabric = plan.fabric.as_deref();

    // 1. Namespaces and veths, from the root namespace.
    let mut root = Vec::new();
    let all_ns = fabric
        .into_iter()
        .chain(plan.nodes.iter().map(|n| n.netns.as_str()))
        .chain(plan.hosts.iter().map(|h| h.netns.as_str()))
        .chain(plan.control_plane.iter().map(|c| c.netns.as_str()))
        .chain(plan.netns_pods().map(|p| p.netns.as_str()));
    for ns in all_ns {
        created.push(ns.to_string());
        root.push(format!("netns add {ns}"));
    }
    for p in plan.netns_pods() {
        let node = &plan.nodes[p.node];
        // Routed: every host side has Calico's MAC; a bridge's ports keep their own.
        let mac = if node.is_bridge() {
            String::new()
        } else {
            format!(" address {HOST_MAC}")
        };
        root.push(format!(
            "link add {}{mac} netns {} type veth peer name eth0 netns {}",
            p.host_if, node.netns, p.netns
        ));
    }
    if let Some(fab) = fabric {
        for (i, n) in plan.nodes.iter().enumerate() {
            root.push(format!(
                "link add {NODE_FABRIC_IF} netns {} type veth peer name n{i} netns {fab}",
                n.netns
            ));
        }
        for h in &plan.hosts {
            root.push(format!(
                "link add eth0 netns {} type veth peer name {} netns {fab}",
                h.netns, h.fabric_if
            ));
        }
        if let Some(cp) = &plan.control_plane {
            root.push(format!(
                "link add eth0 netns {} type veth peer name {} netns {fab}",
                cp.netns, cp.fabric_if
            ));
        }
    }
    ip_batch(None, &root).await?;

    // 2. Sysctls (no DAD where IPv6 is used, forwarding on nodes), from threads in each
    // netns. IPv6 settings only where IPv6 is used: a kernel may have IPv6 disabled.
    let has_fabric = fabric.is_some();
    for n in &plan.nodes {
        Netns::open(&n.netns)?.run(move || {
            sysctl("net.ipv4.ip_forward", "1")?;
            if any6 {
                sysctl("net.ipv6.conf.all.forwarding", "1")?;
                // No DAD on the fabric: until its link-local address is no longer tentative
                // the node sends no neighbour solicitation, and IPv6 across nodes fails for
                // the first second or two.
                if has_fabric {
                    sysctl(&format!("net.ipv6.conf.{NODE_FABRIC_IF}.accept_dad"), "0")?;
                }
            }
            // The host route names the interface a reply leaves by; strict reverse-path
            // checks (inherited from the machine) add nothing here.
            sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            sysctl("net.ipv4.conf.default.rp_filter", "0")?;
            // A pod forging the node's own address must meet the enforcer, not the kernel's
            // martian-source check.
            sysctl("net.ipv4.conf.all.accept_local", "1")?;
            Ok(())
        })?;
    }
    let ends = plan
        .netns_pods()
        .map(|p| (&p.netns, &p.ips))
        .chain(plan.hosts.iter().map(|h| (&h.netns, &h.ips)));
    for (ns, ips) in ends {
        let has6 = v6(ips);
        Netns::open(ns)?.run(move || {
            if has6 {
                sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
            }
            sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            sysctl("net.ipv4.conf.eth0.rp_filter", "0")?;
            Ok(())
        })?;
    }

    let mut batches: Vec<(String, Vec<String>)> = Vec::new();

    // 3. The fabric bridge.
    if let Some(fab) = fabric {
        let mut lines = vec![
            "link set lo up".to_string(),
            "link add br0 type bridge".to_string(),
            "link set br0 up".to_string(),
        ];
        let ports = (0..plan.nodes.len())
            .map(|i| format!("n{i}"))
            .chain(plan.hosts.iter().map(|h| h.fabric_if.clone()))
            .chain(plan.control_plane.iter().map(|c| c.fabric_if.clone()));
        for port in ports {
            lines.push(format!("link set {port} master br0"));
            lines.push(format!("link set {port} up"));
        }
        batches.push((fab.to_string(), lines));
    }

    // 4. Nodes: pod veths and host routes; the fabric and routes across it; cluster IPs to
    // `svc0` (see [`crate::services`]).
    let svc_routes = plan.service_routes();
    for (ni, n) in plan.nodes.iter().enumerate() {
        let mut lines = vec!["link set lo up".to_string()];
        lines.push(format!("link add {SVC_IF} type bridge"));
        if any6 {
            lines.push(format!("link set {SVC_IF} addrgenmode none"));
        }
        lines.push(format!("link set {SVC_IF} up"));
        lines.extend(node_service_routes(&svc_routes, "add"));
        if n.is_bridge() {
            bridge_node_lines(plan, ni, any6, &mut lines);
        } else {
            routed_node_lines(plan, ni, any6, &mut lines);
        }
        if fabric.is_none() {
            // No fabric: the node's address lives on svc0 (its own connections need one).
            own_addresses(&n.fabric_ips, SVC_IF, &mut lines);
        }
        if fabric.is_some() {
            let dev = NODE_FABRIC_IF;
            lines.push(format!("link set {dev} up"));
            own_addresses(&n.fabric_ips, dev, &mut lines);
            for (oi, other) in plan.nodes.iter().enumerate() {
                if oi == ni {
                    continue;
                }
                for ip in &other.fabric_ips {
                    lines.push(format!(
                        "route add {} dev {dev} scope link",
                        host_prefix(ip)
                    ));
                }
                for p in plan.pods_on(oi) {
                    for ip in &p.ips {
                        if let Some(via) = same_family(&other.fabric_ips, ip) {
                            lines
                                .push(format!("route add {} via {via} dev {dev}", host_prefix(ip)));
                        }
                    }
                }
            }
            let cp = plan.control_plane.iter().map(|c| &c.ip);
            for ip in plan.hosts.iter().flat_map(|h| &h.ips).chain(cp) {
                lines.push(format!(
                    "route add {} dev {dev} scope link",
                    host_prefix(ip)
                ));
            }
        }
        batches.push((n.netns.clone(), lines));
    }

    // 4b. The control plane: its address, and the nodes on-link (nothing else: it serves
    // the agents, not the pods).
    if let Some(cp) = &plan.control_plane {
        let mut lines = vec!["link set lo up".to_string(), "link set eth0 up".to_string()];
        own_addresses(&[cp.ip], "eth0", &mut lines);
        for ip in plan.nodes.iter().flat_map(|n| &n.fabric_ips) {
            if ip.is_ipv4() == cp.ip.is_ipv4() {
                lines.push(format!("route add {} dev eth0 scope link", host_prefix(ip)));
            }
        }
        batches.push((cp.netns.clone(), lines));
    }

    // 5. Hosts: their addresses, the nodes on-link, pods through their node.
    for h in &plan.hosts {
        let mut lines = vec!["link set lo up".to_string(), "link set eth0 up".to_string()];
        own_addresses(&h.ips, "eth0", &mut lines);
        for n in &plan.nodes {
            for ip in &n.fabric_ips {
                lines.push(format!("route add {} dev eth0 scope link", host_prefix(ip)));
            }
        }
        for p in plan.netns_pods() {
            let node = &plan.nodes[p.node];
            for ip in &p.ips {
                if let Some(via) = same_family(&node.fabric_ips, ip) {
                    lines.push(format!("route add {} via {via} dev eth0", host_prefix(ip)));
                }
            }
        }
        for other in plan.hosts.iter().filter(|o| o.name != h.name) {
            for ip in &other.ips {
                lines.push(format!("route add {} dev eth0 scope link", host_prefix(ip)));
            }
        }
        batches.push((h.netns.clone(), lines));
    }

    // 6. Pods: their addresses, the gateway, routes to every other lab address.
    let all = plan.lab_addresses();
    for p in plan.netns_pods() {
        let node = &plan.nodes[p.node];
        let mut lines = vec!["link set lo up".to_string(), "link set eth0 up".to_string()];
        let (has4, has6) = (v4(&p.ips), v6(&p.ips));
        if node.is_bridge() {
            bridge_pod_addresses(node, p, &mut lines);
        } else {
            own_addresses(&p.ips, "eth0", &mut lines);
            if has4 {
                lines.push(format!(
                    "neigh replace {GATEWAY_V4} lladdr {HOST_MAC} dev eth0 nud permanent"
                ));
                lines.push(format!("route add {GATEWAY_V4}/32 dev eth0 scope link"));
            }
            if has6 {
                lines.push(format!(
                    "neigh replace {GATEWAY_V6} lladdr {HOST_MAC} dev eth0 nud permanent"
                ));
            }
        }
        lines.extend(pod_service_routes(plan, p, &svc_routes, "add"));
        let neighbours: Vec<IpAddr> = if node.is_bridge() {
            plan.pods_on(p.node)
                .flat_map(|o| o.ips.iter().copied())
                .collect()
        } else {
            Vec::new()
        };
        let nodes = plan.nodes.iter().flat_map(|n| n.fabric_ips.iter());
        for ip in all.iter().chain(nodes).filter(|ip| !p.ips.contains(ip)) {
            if neighbours.contains(ip) {
                // Another pod on this bridge: on-link, through the bridge.
                lines.push(format!("route add {} dev eth0 scope link", host_prefix(ip)));
            } else if let Some(gw) = pod_gateway(plan, p, ip) {
                lines.push(format!("route add {} via {gw} dev eth0", host_prefix(ip)));
            }
        }
        batches.push((p.netns.clone(), lines));
    }

    let mut jobs = tokio::task::JoinSet::new();
    for (ns, lines) in batches {
        jobs.spawn(async move { ip_batch(Some(&ns), &lines).await });
    }
    while let Some(r) = jobs.join_next().await {
        r.context("setup task")??;
    }

    // 7. No reverse-path filter anywhere, now that every interface exists (an interface's
    // own setting counts too: the kernel uses the stricter of `all` and the interface's).
    let every_ns = fabric
        .into_iter()
        .chain(plan.nodes.iter().map(|n| n.netns.as_str()))
        .chain(plan.hosts.iter().map(|h| h.netns.as_str()))
        .chain(plan.netns_pods().map(|p| p.netns.as_str()));
    for ns in every_ns {
        Netns::open(ns)?.run(rp_filter_off)?;
    }

    // 8. Wait until the links carry traffic (see [`wait_links_ready`]).
    wait_links_ready(plan, LINKS_READY_TIMEOUT).await
}

/// Turns the reverse-path filter off on every interface of the calling thread's namespace.
fn rp_filter_off() -> Result<()> {
    let dir = Path::new("/proc/sys/net/ipv4/conf");
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path().join("rp_filter");
        std::fs::write(&path, "0").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The node side of a routed node: each pod's own veth, Calico's gateway on it, one host route
/// per pod address through it.
fn routed_node_lines(plan: &Plan, ni: usize, any6: bool, lines: &mut Vec<String>) {
    for p in plan.pods_on(ni) {
        if any6 {
            lines.push(format!("link set {} addrgenmode none", p.host_if));
        }
        lines.push(format!("link set {} up", p.host_if));
        if any6 {
            lines.push(format!(
                "address add {GATEWAY_V6}/64 dev {} nodad",
                p.host_if
            ));
        }
        for ip in &p.ips {
            lines.push(format!(
                "route add {} dev {} scope link",
                host_prefix(ip),
                p.host_if
            ));
        }
    }
}

/// The node side of a bridge node: `cni0` with the gateways' addresses (their prefixes are its
/// connected routes, as flannel's), every pod's veth a port of it; a pod address outside those
/// prefixes (a scenario's own `ips`) gets a host route on `cni0`.
fn bridge_node_lines(plan: &Plan, ni: usize, any6: bool, lines: &mut Vec<String>) {
    let n = &plan.nodes[ni];
    lines.push(format!("link add {BRIDGE_IF} type bridge"));
    for c in &n.bridge_ips {
        let gw = c.nth(1).expect("a bridge prefix has a first address");
        let nodad = if gw.is_ipv6() { " nodad" } else { "" };
        lines.push(format!(
            "address add {} dev {BRIDGE_IF}{nodad}",
            prefix_of(&gw, c)
        ));
    }
    lines.push(format!("link set {BRIDGE_IF} up"));
    for p in plan.pods_on(ni) {
        if any6 {
            lines.push(format!("link set {} addrgenmode none", p.host_if));
        }
        lines.push(format!("link set {} master {BRIDGE_IF}", p.host_if));
        // Flannel's `hairpinMode: true`: a pod reaching itself through its Service gets the
        // answer back through the port it came in by.
        lines.push(format!(
            "link set {} type bridge_slave hairpin on",
            p.host_if
        ));
        lines.push(format!("link set {} up", p.host_if));
        for ip in p.ips.iter().filter(|ip| !n.bridge_covers(ip)) {
            lines.push(format!(
                "route add {} dev {BRIDGE_IF} scope link",
                host_prefix(ip)
            ));
        }
    }
}

/// A bridge pod's addresses: with its bridge prefix's length when inside it (the connected
/// route makes the node's other pods on-link), else a host prefix and an on-link route to the
/// gateway of that family.
fn bridge_pod_addresses(node: &NodePlan, p: &PodPlan, lines: &mut Vec<String>) {
    for ip in &p.ips {
        let nodad = if ip.is_ipv6() { " nodad" } else { "" };
        match node.bridge_ips.iter().find(|c| c.contains(ip)) {
            Some(c) => lines.push(format!("address add {} dev eth0{nodad}", prefix_of(ip, c))),
            None => {
                lines.push(format!("address add {} dev eth0{nodad}", host_prefix(ip)));
                if let Some(gw) = node.bridge_ip_for(ip) {
                    lines.push(format!(
                        "route add {} dev eth0 scope link",
                        host_prefix(&gw)
                    ));
                }
            }
        }
    }
}

/// Where a pod sends what goes to `dst` (off its node, or to a node): its gateway of that
/// family, if it has an address of that family.
pub fn pod_gateway(plan: &Plan, p: &PodPlan, dst: &IpAddr) -> Option<IpAddr> {
    if !p.ips.iter().any(|a| a.is_ipv4() == dst.is_ipv4()) {
        return None;
    }
    let node = &plan.nodes[p.node];
    if node.is_bridge() {
        return node.bridge_ip_for(dst);
    }
    Some(if dst.is_ipv4() {
        GATEWAY_V4.parse().expect("a literal address")
    } else {
        GATEWAY_V6.parse().expect("a literal address")
    })
}

/// How long a new lab's links may take to come up (the kernel takes at most about a second).
pub const LINKS_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// An interface that must be ready before the lab sends anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCheck {
    pub dev: String,
    /// A port of the fabric bridge: it must be forwarding.
    pub bridge_port: bool,
    /// It must have a usable (not tentative) IPv6 link-local address: a node's fabric link in
    /// a lab that uses IPv6 (what the node forwards has a pod's source address, so its
    /// neighbour solicitations on the fabric come from that link-local address).
    pub link_local6: bool,
}

/// Every interface the lab makes, by namespace: pods' veths (both ends), nodes' and hosts'
/// fabric links, and the fabric bridge's ports.
pub fn links_to_check(plan: &Plan) -> Vec<(String, Vec<LinkCheck>)> {
    let link = |dev: &str| LinkCheck {
        dev: dev.to_string(),
        bridge_port: false,
        link_local6: false,
    };
    let mut out = Vec::new();
    if let Some(fab) = &plan.fabric {
        let ports = (0..plan.nodes.len())
            .map(|i| format!("n{i}"))
            .chain(plan.hosts.iter().map(|h| h.fabric_if.clone()))
            .chain(plan.control_plane.iter().map(|c| c.fabric_if.clone()))
            .map(|dev| LinkCheck {
                dev,
                bridge_port: true,
                link_local6: false,
            })
            .collect();
        out.push((fab.clone(), ports));
    }
    for (ni, n) in plan.nodes.iter().enumerate() {
        let mut checks: Vec<LinkCheck> = plan
            .pods_on(ni)
            .map(|p| LinkCheck {
                bridge_port: n.is_bridge(),
                ..link(&p.host_if)
            })
            .collect();
        if plan.fabric.is_some() {
            checks.push(LinkCheck {
                link_local6: plan.uses_ipv6(),
                ..link(NODE_FABRIC_IF)
            });
        }
        if !checks.is_empty() {
            out.push((n.netns.clone(), checks));
        }
    }
    let ends = plan.hosts.iter().map(|h| &h.netns);
    let cp = plan.control_plane.iter().map(|c| &c.netns);
    for ns in ends.chain(cp).chain(plan.netns_pods().map(|p| &p.netns)) {
        out.push((ns.clone(), vec![link("eth0")]));
    }
    out
}

/// Why an interface (as `ip -j -d address show` prints it) is not ready yet, if it is not.
fn not_ready(check: &LinkCheck, info: &serde_json::Value) -> Option<String> {
    let operstate = info["operstate"].as_str().unwrap_or("?");
    if operstate != "UP" {
        return Some(format!("operational state {operstate}"));
    }
    if check.bridge_port {
        let linkinfo = &info["linkinfo"];
        if linkinfo["info_slave_kind"].as_str() != Some("bridge") {
            return Some("not a bridge port".to_string());
        }
        let state = linkinfo["info_slave_data"]["state"].as_str().unwrap_or("?");
        if state != "forwarding" {
            return Some(format!("bridge port state {state}"));
        }
    }
    if check.link_local6 {
        let usable = info["addr_info"].as_array().into_iter().flatten().any(|a| {
            a["family"] == "inet6"
                && a["scope"] == "link"
                && a["tentative"] != true
                && a["dadfailed"] != true
        });
        if !usable {
            return Some("no usable IPv6 link-local address yet".to_string());
        }
    }
    None
}

/// For each check: why that interface of `ns` is not ready (`None`: ready).
///
/// One `ip -batch` per namespace, one request per interface (not a dump): a request for one
/// interface also makes the kernel apply that interface's pending link event at once.
async fn link_states(ns: &str, checks: &[LinkCheck]) -> Result<Vec<Option<String>>> {
    let lines: Vec<String> = checks
        .iter()
        .map(|c| format!("address show dev {}", c.dev))
        .collect();
    let out = ip_batch_output(Some(ns), &["-j", "-d"], &lines).await?;
    let infos: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
        .into_iter::<Vec<serde_json::Value>>()
        .map(|r| r.map(|v| v.into_iter().next().unwrap_or_default()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading `ip -j address show` in {ns}"))?;
    if infos.len() != checks.len() {
        bail!(
            "`ip -j address show` in {ns}: {} answers for {} interfaces",
            infos.len(),
            checks.len()
        );
    }
    Ok(checks
        .iter()
        .zip(&infos)
        .map(|(c, info)| not_ready(c, info))
        .collect())
}

/// Waits until every link of the lab carries traffic: operationally up, the fabric bridge's
/// ports forwarding, nodes' fabric links with an IPv6 link-local address (when the lab uses
/// IPv6).
///
/// Without this, traffic across nodes could be lost for up to a second after the build: the
/// kernel applies some carrier changes late (its link watch batches "non-urgent" events, at
/// most once a second; a veth whose index equals its peer's, as is common in new namespaces,
/// is not urgent when it comes up after its peer). Until then its operational state stays
/// down, and a bridge enables a port only when the port is operationally up, so the bridge
/// drops what goes to that node (the first ARP request, so a probe with a one-second timeout
/// fails).
pub async fn wait_links_ready(plan: &Plan, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pending = links_to_check(plan);
    loop {
        let mut jobs = tokio::task::JoinSet::new();
        for (ns, checks) in pending {
            jobs.spawn(async move {
                let states = link_states(&ns, &checks).await;
                (ns, checks, states)
            });
        }
        let mut left = Vec::new();
        let mut reasons = Vec::new();
        while let Some(r) = jobs.join_next().await {
            let (ns, checks, states) = r.context("link check task")?;
            let mut waiting = Vec::new();
            for (c, why) in checks.into_iter().zip(states?) {
                if let Some(why) = why {
                    reasons.push(format!("{ns} {}: {why}", c.dev));
                    waiting.push(c);
                }
            }
            if !waiting.is_empty() {
                left.push((ns, waiting));
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            reasons.sort();
            let more = reasons.len().saturating_sub(10);
            reasons.truncate(10);
            if more > 0 {
                reasons.push(format!("and {more} more"));
            }
            bail!(
                "the lab's links are not up after {timeout:?}: {}",
                reasons.join("; ")
            );
        }
        pending = left;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn prefix_text(ip: &IpAddr, len: u8) -> String {
    format!("{ip}/{len}")
}

/// A node's routes of cluster IPs: to `svc0`.
fn node_service_routes(routes: &[(IpAddr, u8)], verb: &str) -> Vec<String> {
    routes
        .iter()
        .map(|(ip, len)| format!("route {verb} {} dev {SVC_IF}", prefix_text(ip, *len)))
        .collect()
}

/// A pod's routes of cluster IPs (of the families it has): through its gateway, to its node.
fn pod_service_routes(
    plan: &Plan,
    p: &PodPlan,
    routes: &[(IpAddr, u8)],
    verb: &str,
) -> Vec<String> {
    routes
        .iter()
        .filter_map(|(ip, len)| {
            let gw = pod_gateway(plan, p, ip)?;
            Some(format!(
                "route {verb} {} via {gw} dev eth0",
                prefix_text(ip, *len)
            ))
        })
        .collect()
}

/// Routes cluster IPs given to a live lab (outside the service range) in every node and pod.
pub async fn add_service_routes(plan: &Plan, routes: &[(IpAddr, u8)]) -> Result<()> {
    if routes.is_empty() {
        return Ok(());
    }
    for n in &plan.nodes {
        ip_batch(Some(&n.netns), &node_service_routes(routes, "replace")).await?;
    }
    for p in plan.netns_pods() {
        ip_batch(
            Some(&p.netns),
            &pod_service_routes(plan, p, routes, "replace"),
        )
        .await?;
    }
    Ok(())
}

/// Runs `nft -f -` with `script` inside `ns` (setns between fork and exec).
pub async fn nft(ns: &Netns, script: &str) -> Result<()> {
    let fd = ns.raw_fd();
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: only an async-signal-safe syscall between fork and exec.
    unsafe {
        cmd.pre_exec(move || enter(fd));
    }
    let mut child = cmd
        .spawn()
        .context("running `nft` (install nftables: the lab translates Services with it)")?;
    let mut stdin = child.stdin.take().context("nft stdin")?;
    stdin
        .write_all(script.as_bytes())
        .await
        .context("writing to nft")?;
    drop(stdin);
    let out = child.wait_with_output().await.context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "`nft -f` in {} failed: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `nft ARGS` in `ns`, blocking, with `stdin` on its standard input (for `-f -`); returns
/// what it printed. For callers already on a blocking thread (the SCTP probes of
/// [`crate::forge`]).
pub fn nft_blocking(ns: &Netns, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    let fd = ns.raw_fd();
    let mut cmd = std::process::Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only an async-signal-safe syscall between fork and exec.
    unsafe {
        cmd.pre_exec(move || enter(fd));
    }
    let mut child = cmd
        .spawn()
        .context("running `nft` (install nftables: the lab counts SCTP INITs to nodes with it)")?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().context("nft stdin")?;
        pipe.write_all(text.as_bytes()).context("writing to nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "`nft {}` in {} failed: {}",
            args.join(" "),
            ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the network namespaces that exist.
pub fn list() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Deletes network namespaces (those that exist); returns the errors.
pub fn delete(names: &[String]) -> Vec<String> {
    let existing = list();
    let lines: Vec<String> = names
        .iter()
        .filter(|n| existing.contains(n))
        .map(|n| format!("netns delete {n}"))
        .collect();
    if lines.is_empty() {
        return Vec::new();
    }
    let run = || -> Result<()> {
        use std::io::Write;
        let mut child = std::process::Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running `ip`")?;
        child
            .stdin
            .take()
            .context("ip stdin")?
            .write_all((lines.join("\n") + "\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "`ip netns delete` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    match run() {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("{e:#}")],
    }
}
