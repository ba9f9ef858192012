//! From a parsed scenario to a plan: every name the run creates (namespaces, interfaces), every
//! address, and every probe resolved to a source pod, a destination address and a port number.
//! Pure: everything that can be wrong with a scenario is found here, before anything is created.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::scenario::{
    Cidr, Cni, Endpoint, Family, Labels, Object, ObjectKey, PortRef, PortSpec, ProbeSpec, Relabel,
    Scenario, ScenarioError, Target,
};
use crate::services::{ClusterIps, ServicePlan};

/// The label every namespace carries.
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// The labels every node carries (the kubelet sets them).
pub const NODE_HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
pub const NODE_OS_LABEL: &str = "kubernetes.io/os";

/// A node's labels: those given, with `kubernetes.io/hostname` and `kubernetes.io/os`.
pub fn node_labels(name: &str, given: &Labels) -> Labels {
    let mut l = given.clone();
    l.insert(NODE_HOSTNAME_LABEL.into(), name.to_string());
    l.insert(NODE_OS_LABEL.into(), "linux".into());
    l
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    /// Network namespace name (with the run prefix).
    pub netns: String,
    /// The node's own addresses (IPv4, then IPv6 when the lab uses IPv6): on the fabric when
    /// there is one, else on `svc0`. Pods route them, so the node's own connections (to pods,
    /// or through a Service) get their replies.
    pub fabric_ips: Vec<IpAddr>,
    pub cni: Cni,
    /// Where this node's pods take their addresses when they give none.
    pub pod_cidr: Cidr,
    /// On a bridge node: the addresses of its bridge `cni0` (each the first address of a pod
    /// prefix: podCIDR's, and one of the other family where the lab uses it), which are its
    /// pods' gateways. Empty on a routed node.
    pub bridge_ips: Vec<Cidr>,
    /// Its labels at the start (with `kubernetes.io/hostname` and `kubernetes.io/os`): its
    /// Node object's, with `fabric_ips` as its `InternalIP` addresses.
    pub labels: Labels,
    /// Host processes listening in the node's namespace (on its fabric addresses); the ports
    /// of its host-networked pods are served there too, as those pods'.
    pub ports: Vec<PortSpec>,
}

impl NodePlan {
    pub fn is_bridge(&self) -> bool {
        self.cni == Cni::Bridge
    }

    /// The bridge's address of `ip`'s family (a bridge node's pods route through it).
    pub fn bridge_ip_for(&self, ip: &IpAddr) -> Option<IpAddr> {
        self.bridge_ips
            .iter()
            .map(|c| c.nth(1).expect("a bridge prefix has a first address"))
            .find(|g| g.is_ipv4() == ip.is_ipv4())
    }

    /// Whether `ip` is on one of the bridge's subnets (its connected routes).
    pub fn bridge_covers(&self, ip: &IpAddr) -> bool {
        self.bridge_ips.iter().any(|c| c.contains(ip))
    }
}

/// An endpoint outside the cluster, on the fabric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
    pub netns: String,
    /// Its port on the fabric bridge.
    pub fabric_if: String,
}

/// A pod or a host, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ep {
    Pod(usize),
    Host(usize),
    /// A node's own namespace (`node:NAME`).
    Node(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    /// Index into `Plan::nodes`.
    pub node: usize,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
    /// Its network namespace: its node's for a host-networked pod.
    pub netns: String,
    /// The host side of the pod's veth, in the node namespace (empty for a host-networked
    /// pod, which has none).
    pub host_if: String,
    /// `hostNetwork: true`: in its node's namespace, with its node's addresses (`ips`).
    pub host_network: bool,
}

impl PodPlan {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What a step changes before its probes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Objects other than Services (policies), as given.
    pub apply: Vec<Object>,
    /// Services created or replaced, with their cluster IPs.
    pub apply_services: Vec<ServicePlan>,
    /// Objects (Services too, `kind: Service`) removed.
    pub delete: Vec<ObjectKey>,
    /// Pod index → its new labels.
    pub relabel_pods: Vec<(usize, Labels)>,
    /// Namespace → its new labels (with the name label).
    pub relabel_namespaces: Vec<(String, Labels)>,
    /// Node index → its new labels (with the hostname and os labels).
    pub relabel_nodes: Vec<(usize, Labels)>,
}

impl Changes {
    /// One line per change, for people: `+` applied, `-` deleted, `~` relabelled.
    pub fn describe(&self, pods: &[PodPlan], nodes: &[NodePlan]) -> Vec<String> {
        let labels = |l: &Labels| {
            let v: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(",")
            }
        };
        let mut out: Vec<String> = self.apply.iter().map(|o| format!("+ {}", o.key)).collect();
        out.extend(
            self.apply_services
                .iter()
                .map(|s| format!("+ Service {} ({})", s.key(), s.cluster_ip)),
        );
        out.extend(self.delete.iter().map(|k| format!("- {k}")));
        out.extend(
            self.relabel_pods
                .iter()
                .map(|(i, l)| format!("~ pod {} labels {}", pods[*i].key(), labels(l))),
        );
        out.extend(
            self.relabel_namespaces
                .iter()
                .map(|(n, l)| format!("~ namespace {n} labels {}", labels(l))),
        );
        out.extend(
            self.relabel_nodes
                .iter()
                .map(|(i, l)| format!("~ node {} labels {}", nodes[*i].name, labels(l))),
        );
        out
    }

    pub fn is_empty(&self) -> bool {
        self.apply.is_empty()
            && self.apply_services.is_empty()
            && self.delete.is_empty()
            && self.relabel_pods.is_empty()
            && self.relabel_namespaces.is_empty()
            && self.relabel_nodes.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub spec: ProbeSpec,
    pub src: Ep,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// The pod or host that owns `dst_ip`, if any.
    pub dst: Option<Ep>,
    /// For a probe to a Service: `namespace/name` (`dst_ip` is its cluster IP).
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    pub changes: Changes,
    pub probes: Vec<ProbePlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub prefix: String,
    pub nodes: Vec<NodePlan>,
    /// Namespace → labels (including `kubernetes.io/metadata.name`), as at the start.
    pub namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<PodPlan>,
    pub hosts: Vec<HostPlan>,
    /// The namespace of the bridge joining the nodes and hosts (when there is more than one
    /// node, or any host).
    pub fabric: Option<String>,
    /// Objects applied at the start (the scenario's `policies`, but Services).
    pub objects: Vec<Object>,
    /// Services at the start (`services`, and `kind: Service` among `policies`).
    pub services: Vec<ServicePlan>,
    /// Every cluster IP the scenario assigns, at any step (for later changes to a live lab).
    pub cluster_ips: ClusterIps,
    /// Step 0 (no changes, the top-level probes), then one per `steps` entry.
    pub steps: Vec<StepPlan>,
    /// With `--source kube`: where etcd and kube-apiserver run (see
    /// [`Plan::add_control_plane`]).
    pub control_plane: Option<ControlPlanePlan>,
}

/// The namespace of the lab's control plane, on the fabric like a control-plane node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlanePlan {
    pub netns: String,
    /// kube-apiserver's address, on the control plane's `eth0`.
    pub ip: IpAddr,
    /// Its port on the fabric bridge.
    pub fabric_if: String,
}

/// The control plane's address: in the nodes' RFC 2544 range, at its far end from theirs.
pub const CONTROL_PLANE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);

impl Plan {
    /// Gives the lab a control-plane namespace on the fabric (and a fabric, should a single
    /// node without hosts have none): the agents reach kube-apiserver across it, as on a real
    /// cluster. Fails if a scenario address is the control plane's.
    pub fn add_control_plane(&mut self) -> Result<(), ScenarioError> {
        if self.control_plane.is_some() {
            return Ok(());
        }
        let ip = IpAddr::V4(CONTROL_PLANE_IP);
        let nodes = self.nodes.iter().flat_map(|n| n.fabric_ips.iter());
        if nodes.chain(self.lab_addresses().iter()).any(|a| *a == ip) {
            return Err(ScenarioError {
                path: "nodes".into(),
                reason: format!(
                    "{ip} is the address of the lab's control plane (--source kube); give \
                     the scenario another"
                ),
            });
        }
        let mut taken: BTreeSet<String> = self
            .nodes
            .iter()
            .map(|n| n.netns.clone())
            .chain(self.pods.iter().map(|p| p.netns.clone()))
            .chain(self.hosts.iter().map(|h| h.netns.clone()))
            .chain(self.fabric.clone())
            .collect();
        if self.fabric.is_none() {
            self.fabric = Some(netns_name(&self.prefix, "fabric", &mut taken));
        }
        self.control_plane = Some(ControlPlanePlan {
            netns: netns_name(&self.prefix, "control-plane", &mut taken),
            ip,
            fabric_if: "cp0".into(),
        });
        Ok(())
    }
}

impl Plan {
    /// Every pod and host address (what a pod has routes to, with the nodes' addresses). A
    /// host-networked pod's are its node's, so they are not among them.
    pub fn lab_addresses(&self) -> BTreeSet<IpAddr> {
        self.netns_pods()
            .flat_map(|p| p.ips.iter().copied())
            .chain(self.hosts.iter().flat_map(|h| h.ips.iter().copied()))
            .collect()
    }

    pub fn ips_of(&self, ep: Ep) -> &[IpAddr] {
        match ep {
            Ep::Pod(i) => &self.pods[i].ips,
            Ep::Host(i) => &self.hosts[i].ips,
            Ep::Node(i) => &self.nodes[i].fabric_ips,
        }
    }

    /// `namespace/pod` or the host's name.
    pub fn name_of(&self, ep: Ep) -> String {
        match ep {
            Ep::Pod(i) => self.pods[i].key(),
            Ep::Host(i) => self.hosts[i].name.clone(),
            Ep::Node(i) => format!("node:{}", self.nodes[i].name),
        }
    }

    /// Whether `ep` has a network namespace of its own, with its `eth0` (a pod not on its
    /// node's network, a host), rather than its node's.
    pub fn has_own_netns(&self, ep: Ep) -> bool {
        match ep {
            Ep::Pod(i) => !self.pods[i].host_network,
            Ep::Host(_) => true,
            Ep::Node(_) => false,
        }
    }

    pub fn netns_of(&self, ep: Ep) -> &str {
        match ep {
            Ep::Pod(i) => &self.pods[i].netns,
            Ep::Host(i) => &self.hosts[i].netns,
            Ep::Node(i) => &self.nodes[i].netns,
        }
    }

    pub fn ports_of(&self, ep: Ep) -> &[PortSpec] {
        match ep {
            Ep::Pod(i) => &self.pods[i].ports,
            Ep::Host(i) => &self.hosts[i].ports,
            Ep::Node(i) => &self.nodes[i].ports,
        }
    }

    /// Every pod, then every host, then every node.
    pub fn endpoints(&self) -> impl Iterator<Item = Ep> {
        (0..self.pods.len())
            .map(Ep::Pod)
            .chain((0..self.hosts.len()).map(Ep::Host))
            .chain((0..self.nodes.len()).map(Ep::Node))
    }

    pub fn uses_ipv6(&self) -> bool {
        self.lab_addresses().iter().any(IpAddr::is_ipv6)
    }

    /// The pods of a node that have their own namespace and veth (not the host-networked).
    pub fn pods_on(&self, node: usize) -> impl Iterator<Item = &PodPlan> {
        self.netns_pods().filter(move |p| p.node == node)
    }

    /// The pods with their own namespace (all but the host-networked ones).
    pub fn netns_pods(&self) -> impl Iterator<Item = &PodPlan> {
        self.pods.iter().filter(|p| !p.host_network)
    }

    /// What pods (by way of their node) and nodes route to `svc0` (see
    /// [`crate::services::routes_for`]), for every cluster IP the scenario gives.
    pub fn service_routes(&self) -> Vec<(IpAddr, u8)> {
        crate::services::routes_for(&self.cluster_ips)
    }

    pub fn find_pod(&self, namespace: &str, name: &str) -> Option<usize> {
        self.pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
    }

    /// Resolves a probe against this lab, with the Services that exist at that moment.
    pub fn resolve(
        &self,
        services: &[ServicePlan],
        spec: &ProbeSpec,
    ) -> Result<ProbePlan, ScenarioError> {
        resolve_probe(&self.nodes, &self.pods, &self.hosts, services, spec)
    }
}

fn err<T>(path: &str, reason: impl Into<String>) -> Result<T, ScenarioError> {
    Err(ScenarioError {
        path: path.into(),
        reason: reason.into(),
    })
}

/// FNV-1a, for short stable name suffixes.
pub fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Longest namespace-name body we build before hashing (file names in /run/netns).
const MAX_NETNS_BODY: usize = 40;

fn netns_name(prefix: &str, body: &str, taken: &mut BTreeSet<String>) -> String {
    let mut name = if body.len() <= MAX_NETNS_BODY {
        format!("{prefix}{body}")
    } else {
        let cut: String = body.chars().take(MAX_NETNS_BODY - 9).collect();
        format!("{prefix}{cut}-{:08x}", fnv(body) as u32)
    };
    let mut salt = 0u32;
    while taken.contains(&name) {
        salt += 1;
        let cut: String = body.chars().take(MAX_NETNS_BODY - 9).collect();
        name = format!(
            "{prefix}{cut}-{:08x}",
            fnv(&format!("{body}#{salt}")) as u32
        );
    }
    taken.insert(name.clone());
    name
}

/// `lxc` + 8 hex digits: 11 characters, within IFNAMSIZ.
fn host_if_name(key: &str, taken: &mut BTreeSet<String>) -> String {
    let mut salt = 0u32;
    loop {
        let seed = if salt == 0 {
            key.to_string()
        } else {
            format!("{key}#{salt}")
        };
        let name = format!("lxc{:08x}", fnv(&seed) as u32);
        if taken.insert(name.clone()) {
            return name;
        }
        salt += 1;
    }
}

/// A node's fabric addresses: 198.18.0.<i+1> (RFC 2544, never routed) and fd00:198:18::<i+1>.
pub fn node_fabric_ips(node: usize, ipv6: bool) -> Vec<IpAddr> {
    let n = (node + 1).min(254);
    let mut out = vec![IpAddr::V4(Ipv4Addr::new(198, 18, 0, n as u8))];
    if ipv6 {
        out.push(IpAddr::V6(Ipv6Addr::new(
            0xfd00, 0x198, 0x18, 0, 0, 0, 0, n as u16,
        )));
    }
    out
}

/// The IPv4 pod CIDR of the node with this index: 10.42.<i+1>.0/24.
pub fn node_pod_cidr_v4(node: usize) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 42, (node + 1).min(255) as u8, 0), 24)
}

/// The IPv6 pod prefix of a bridge node with this index, when its podCIDR is IPv4 and the lab
/// uses IPv6: fd00:10:42:<i+1>::/64.
pub fn node_pod_cidr_v6(node: usize) -> Cidr {
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x10,
            0x42,
            (node + 1) as u16,
            0,
            0,
            0,
            0,
        )),
        len: 64,
    }
}

/// A node's addresses on the fabric: those the scenario gives, completed with the default
/// address of each family the lab uses that they lack (a node routes every family its pods
/// have).
fn node_ips(given: Option<&Vec<IpAddr>>, node: usize, ipv6: bool) -> Vec<IpAddr> {
    let Some(given) = given else {
        return node_fabric_ips(node, ipv6);
    };
    let mut out = given.clone();
    for d in node_fabric_ips(node, ipv6) {
        if !out.iter().any(|a| a.is_ipv4() == d.is_ipv4()) {
            out.push(d);
        }
    }
    out
}

/// A bridge node's bridge prefixes: podCIDR, and one of the other family if the lab uses it.
fn bridge_prefixes(pod_cidr: Cidr, node: usize, ipv6: bool) -> Vec<Cidr> {
    let mut out = vec![pod_cidr];
    if pod_cidr.addr.is_ipv6() {
        let (base, len) = node_pod_cidr_v4(node);
        out.push(Cidr {
            addr: IpAddr::V4(base),
            len,
        });
    } else if ipv6 {
        out.push(node_pod_cidr_v6(node));
    }
    out
}

fn namespace_exists(ns: &str, exists: impl Fn(&str) -> bool) -> bool {
    exists(ns) || enforcer_objects::BUILT_IN_NAMESPACES.contains(&ns)
}

/// An error naming the object when its namespace is neither one of the lab's (`exists`) nor
/// one every cluster has.
pub fn missing_namespace(o: &Object, exists: impl Fn(&str) -> bool) -> Result<(), ScenarioError> {
    match &o.key.namespace {
        Some(ns) if !namespace_exists(ns, exists) => err(
            &format!("{}.metadata.namespace", o.path),
            format!(
                "{}: namespace {ns:?} does not exist in the lab (pods and `namespaces` make \
                 them)",
                o.key
            ),
        ),
        _ => Ok(()),
    }
}

/// Builds the plan. `prefix` names everything this run creates (`enf-1a2b3c-`).
pub fn plan(s: &Scenario, prefix: &str) -> Result<Plan, ScenarioError> {
    let node_names = s.node_names();
    if node_names.len() > 200 {
        return err("nodes", "the lab runs at most 200 nodes");
    }
    let ipv6 = s
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().flatten())
        .chain(s.hosts.iter().flat_map(|h| h.ips.iter()))
        .any(IpAddr::is_ipv6);
    let mut taken_netns = BTreeSet::new();
    let fabric = (node_names.len() > 1 || !s.hosts.is_empty())
        .then(|| netns_name(prefix, "fabric", &mut taken_netns));
    let nodes: Vec<NodePlan> = s
        .node_specs()
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let pod_cidr = n.pod_cidr.unwrap_or_else(|| {
                let (base, len) = node_pod_cidr_v4(i);
                Cidr {
                    addr: IpAddr::V4(base),
                    len,
                }
            });
            NodePlan {
                labels: node_labels(&n.name, &n.labels),
                ports: n.ports.clone(),
                name: n.name.clone(),
                netns: netns_name(prefix, &n.name, &mut taken_netns),
                fabric_ips: node_ips(n.ips.as_ref(), i, ipv6),
                cni: n.cni,
                pod_cidr,
                bridge_ips: match n.cni {
                    Cni::Bridge => bridge_prefixes(pod_cidr, i, ipv6),
                    Cni::Routed => Vec::new(),
                },
            }
        })
        .collect();

    // Namespaces: declared ones, then those only pods mention.
    let mut namespaces: BTreeMap<String, Labels> = BTreeMap::new();
    for ns in &s.namespaces {
        let mut labels = ns.labels.clone();
        labels.insert(NS_NAME_LABEL.into(), ns.name.clone());
        namespaces.insert(ns.name.clone(), labels);
    }
    for p in &s.pods {
        namespaces
            .entry(p.namespace.clone())
            .or_insert_with(|| Labels::from([(NS_NAME_LABEL.to_string(), p.namespace.clone())]));
    }
    // Objects live in the lab's namespaces (or those every cluster has), as in a cluster.
    let objects = s
        .policies
        .iter()
        .chain(s.steps.iter().flat_map(|st| st.apply.iter()));
    for o in objects {
        missing_namespace(o, |ns| namespaces.contains_key(ns))?;
    }
    for svc in &s.services {
        if !namespace_exists(&svc.namespace, |ns| namespaces.contains_key(ns)) {
            return err(
                &format!("{}.namespace", svc.path),
                format!("namespace {:?} does not exist in the lab", svc.namespace),
            );
        }
    }

    // The fabric's and the explicit addresses first, so that assigned ones avoid them.
    let mut used: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for ip in &n.fabric_ips {
            if let Some(other) = used.insert(*ip, format!("node {} on the lab's fabric", n.name)) {
                return err(
                    &format!("nodes[{i}].ips"),
                    format!("{ip} is already the address of {other}"),
                );
            }
        }
        for c in &n.bridge_ips {
            let gw = c.nth(1).expect("a bridge prefix has a first address");
            if let Some(other) = used.insert(gw, format!("node {}'s bridge cni0", n.name)) {
                return err(
                    &format!("nodes[{i}].podCIDR"),
                    format!("{gw} (the bridge's address) is already the address of {other}"),
                );
            }
        }
    }
    let mut hosts = Vec::new();
    for (i, h) in s.hosts.iter().enumerate() {
        for ip in &h.ips {
            if let Some(other) = used.insert(*ip, format!("host {}", h.name)) {
                return err(
                    &format!("hosts[{i}].ips"),
                    format!("{ip} is already the address of {other}"),
                );
            }
        }
        hosts.push(HostPlan {
            name: h.name.clone(),
            ips: h.ips.clone(),
            ports: h.ports.clone(),
            netns: netns_name(prefix, &format!("host-{}", h.name), &mut taken_netns),
            fabric_if: format!("h{i}"),
        });
    }
    for (i, p) in s.pods.iter().enumerate() {
        for ip in p.ips.iter().flatten().filter(|_| !p.host_network) {
            let who = format!("{}/{}", p.namespace, p.name);
            if let Some(other) = used.insert(*ip, who) {
                return err(
                    &format!("pods[{i}].ips"),
                    format!("{ip} is already the address of {other}"),
                );
            }
        }
    }

    let mut taken_if = BTreeSet::new();
    // Assigned addresses start at the 10th of the pod CIDR (the 2nd in a tiny one).
    let mut next_host: Vec<u128> = nodes
        .iter()
        .map(|n| if n.pod_cidr.nth(16).is_some() { 10 } else { 2 })
        .collect();
    let mut pods = Vec::new();
    for (i, p) in s.pods.iter().enumerate() {
        let path = format!("pods[{i}]");
        let node = match &p.node {
            None => 0,
            Some(n) => match nodes.iter().position(|x| &x.name == n) {
                Some(ix) => ix,
                None => {
                    return err(
                        &format!("{path}.node"),
                        format!("no node {n:?} (nodes: {})", node_names.join(", ")),
                    );
                }
            },
        };
        let ips = match &p.ips {
            _ if p.host_network => nodes[node].fabric_ips.clone(),
            Some(ips) => ips.clone(),
            None => {
                let cidr = nodes[node].pod_cidr;
                let ip = loop {
                    let h = next_host[node];
                    // The last address of an IPv4 prefix is its broadcast address.
                    let last = cidr.addr.is_ipv4() && cidr.nth(h + 1).is_none();
                    let Some(ip) = cidr.nth(h).filter(|_| !last && h < 65_536) else {
                        return err(
                            &path,
                            format!(
                                "node {} has no free address left in {cidr}",
                                nodes[node].name
                            ),
                        );
                    };
                    next_host[node] += 1;
                    if !used.contains_key(&ip) {
                        break ip;
                    }
                };
                used.insert(ip, format!("{}/{}", p.namespace, p.name));
                vec![ip]
            }
        };
        let key = format!("{}/{}", p.namespace, p.name);
        let (netns, host_if) = if p.host_network {
            (nodes[node].netns.clone(), String::new())
        } else {
            (
                netns_name(
                    prefix,
                    &format!("{}-{}", p.namespace, p.name),
                    &mut taken_netns,
                ),
                host_if_name(&key, &mut taken_if),
            )
        };
        pods.push(PodPlan {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            node,
            labels: p.labels.clone(),
            ips,
            ports: p.ports.clone(),
            netns,
            host_if,
            host_network: p.host_network,
        });
    }
    // A node's namespace serves its own ports and those of its host-networked pods: no
    // port twice (a second host-networked pod with the same port cannot run on that node).
    for (ni, n) in nodes.iter().enumerate() {
        let mut served: BTreeMap<(u16, crate::scenario::Protocol), String> = BTreeMap::new();
        for x in &n.ports {
            served.insert((x.port, x.protocol), format!("node {}", n.name));
        }
        for (i, p) in pods.iter().enumerate() {
            if !p.host_network || p.node != ni {
                continue;
            }
            for x in &p.ports {
                if let Some(other) = served.insert((x.port, x.protocol), p.key()) {
                    return err(
                        &format!("pods[{i}].ports"),
                        format!(
                            "{} port {} is already served on node {} by {other} (a \
                             host-networked pod's ports are its node's)",
                            x.protocol, x.port, n.name
                        ),
                    );
                }
            }
        }
    }

    let find_pod = |ns: &str, name: &str| {
        pods.iter()
            .position(|p| p.namespace == ns && p.name == name)
    };

    // Services: cluster IPs assigned in order of appearance, avoiding every lab address.
    let mut cluster_ips = ClusterIps::new(used.clone());
    let asked = s
        .services
        .iter()
        .chain(s.policies.iter().filter_map(|o| o.service.as_ref()))
        .chain(
            s.steps
                .iter()
                .flat_map(|st| st.apply.iter().filter_map(|o| o.service.as_ref())),
        );
    for spec in asked {
        cluster_ips.want(spec);
    }
    let mut present_svcs: BTreeMap<String, ServicePlan> = BTreeMap::new();
    let mut initial_objects = Vec::new();
    let svc_specs = s
        .services
        .iter()
        .cloned()
        .chain(s.policies.iter().filter_map(|o| o.service.clone()));
    for spec in svc_specs {
        let key = format!("{}/{}", spec.namespace, spec.name);
        if present_svcs.contains_key(&key) {
            return err(&spec.path, format!("Service {key} is given twice"));
        }
        let sp = cluster_ips
            .plan(&spec)
            .or_else(|e| err(&format!("{}.clusterIP", spec.path), e))?;
        present_svcs.insert(key, sp);
    }
    for o in &s.policies {
        if o.service.is_none() {
            initial_objects.push(o.clone());
        }
    }
    let initial_services: Vec<ServicePlan> = present_svcs.values().cloned().collect();
    let current = |m: &BTreeMap<String, ServicePlan>| m.values().cloned().collect::<Vec<_>>();

    let resolve_all = |probes: &[ProbeSpec], svcs: &[ServicePlan]| {
        probes
            .iter()
            .map(|p| resolve_probe(&nodes, &pods, &hosts, svcs, p))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut steps = vec![StepPlan {
        changes: Changes::default(),
        probes: resolve_all(&s.probes, &initial_services)?,
    }];

    // Objects present as steps go, so that a delete of something absent is caught here.
    let mut present: BTreeSet<ObjectKey> = s
        .policies
        .iter()
        .map(|o| o.key.clone())
        .chain(
            s.services
                .iter()
                .map(|x| ObjectKey::new("Service", Some(x.namespace.clone()), &x.name)),
        )
        .collect();
    for st in &s.steps {
        let mut changes = Changes::default();
        for o in &st.apply {
            present.insert(o.key.clone());
            match &o.service {
                Some(spec) => {
                    let sp = cluster_ips
                        .plan(spec)
                        .or_else(|e| err(&format!("{}.spec.clusterIP", o.path), e))?;
                    present_svcs.insert(sp.key(), sp.clone());
                    changes.apply_services.push(sp);
                }
                None => changes.apply.push(o.clone()),
            }
        }
        for (path, key) in &st.delete {
            if !present.remove(key) {
                return err(path, format!("{key} does not exist at this step"));
            }
            if key.kind == "Service" {
                present_svcs.remove(&format!(
                    "{}/{}",
                    key.namespace.as_deref().unwrap_or("default"),
                    key.name
                ));
            }
            changes.delete.push(key.clone());
        }
        for r in &st.relabel {
            match r {
                Relabel::Pod {
                    path,
                    namespace,
                    name,
                    labels,
                } => match find_pod(namespace, name) {
                    Some(i) => changes.relabel_pods.push((i, labels.clone())),
                    None => {
                        return err(&format!("{path}.pod"), format!("no pod {namespace}/{name}"));
                    }
                },
                Relabel::Namespace { path, name, labels } => {
                    if !namespaces.contains_key(name) {
                        return err(
                            &format!("{path}.namespace"),
                            format!("no namespace {name:?}"),
                        );
                    }
                    let mut labels = labels.clone();
                    labels.insert(NS_NAME_LABEL.into(), name.clone());
                    changes.relabel_namespaces.push((name.clone(), labels));
                }
                Relabel::Node { path, name, labels } => {
                    let Some(i) = nodes.iter().position(|n| &n.name == name) else {
                        return err(
                            &format!("{path}.node"),
                            format!("no node {name:?} (nodes: {})", node_names.join(", ")),
                        );
                    };
                    changes.relabel_nodes.push((i, node_labels(name, labels)));
                }
            }
        }
        steps.push(StepPlan {
            changes,
            probes: resolve_all(&st.probes, &current(&present_svcs))?,
        });
    }

    Ok(Plan {
        prefix: prefix.to_string(),
        nodes,
        namespaces,
        pods,
        hosts,
        fabric,
        objects: initial_objects,
        services: initial_services,
        cluster_ips,
        steps,
        control_plane: None,
    })
}

/// Resolves one probe: its source endpoint and address, its destination address and port
/// number (a Service's cluster IP and port for `svc:`), with the Services that exist.
pub fn resolve_probe(
    nodes: &[NodePlan],
    pods: &[PodPlan],
    hosts: &[HostPlan],
    services: &[ServicePlan],
    spec: &ProbeSpec,
) -> Result<ProbePlan, ScenarioError> {
    let path = &spec.path;
    let find_pod = |ns: &str, name: &str| {
        pods.iter()
            .position(|p| p.namespace == ns && p.name == name)
    };
    let find_host = |name: &str| hosts.iter().position(|h| h.name == name);
    let find_node = |name: &str| nodes.iter().position(|n| n.name == name);
    let ips_of = |ep: Ep| match ep {
        Ep::Pod(i) => &pods[i].ips,
        Ep::Host(i) => &hosts[i].ips,
        Ep::Node(i) => &nodes[i].fabric_ips,
    };
    let no_node = |key: &str, name: &str| {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        err(
            &format!("{path}.{key}"),
            format!("no node {name:?} (nodes: {})", names.join(", ")),
        )
    };
    let mut service: Option<&ServicePlan> = None;
    let src = match &spec.from {
        Endpoint::Pod { namespace, name } => match find_pod(namespace, name) {
            Some(i) => Ep::Pod(i),
            None => {
                return err(
                    &format!("{path}.from"),
                    format!("no pod {namespace}/{name}"),
                );
            }
        },
        Endpoint::Host(h) => match find_host(h) {
            Some(i) => Ep::Host(i),
            None => return err(&format!("{path}.from"), format!("no host {h:?}")),
        },
        Endpoint::Node(n) => match find_node(n) {
            Some(i) => Ep::Node(i),
            None => return no_node("from", n),
        },
    };
    let (dst, candidates): (Option<Ep>, Vec<IpAddr>) = match &spec.to {
        Target::Pod { namespace, name } => match find_pod(namespace, name) {
            Some(i) => (Some(Ep::Pod(i)), pods[i].ips.clone()),
            None => return err(&format!("{path}.to"), format!("no pod {namespace}/{name}")),
        },
        Target::Ip(ip) => {
            let owner = pods
                .iter()
                .position(|p| !p.host_network && p.ips.contains(ip))
                .map(Ep::Pod)
                .or_else(|| hosts.iter().position(|h| h.ips.contains(ip)).map(Ep::Host))
                .or_else(|| {
                    nodes
                        .iter()
                        .position(|n| n.fabric_ips.contains(ip))
                        .map(Ep::Node)
                });
            (owner, vec![*ip])
        }
        Target::Host(h) => match find_host(h) {
            Some(i) => (Some(Ep::Host(i)), hosts[i].ips.clone()),
            None => return err(&format!("{path}.to"), format!("no host {h:?}")),
        },
        Target::Node(n) => match find_node(n) {
            Some(i) => (Some(Ep::Node(i)), nodes[i].fabric_ips.clone()),
            None => return no_node("to", n),
        },
        Target::Service { namespace, name } => {
            let Some(svc) = services
                .iter()
                .find(|s| &s.namespace == namespace && &s.name == name)
            else {
                return err(
                    &format!("{path}.to"),
                    format!("no Service {namespace}/{name} at this step"),
                );
            };
            service = Some(svc);
            (None, vec![svc.cluster_ip])
        }
    };
    let src_ips = ips_of(src);
    let src_families: BTreeSet<Family> = src_ips.iter().map(Family::of).collect();
    let dst_ip = candidates.iter().copied().find(|ip| {
        let f = Family::of(ip);
        src_families.contains(&f) && spec.family.is_none_or(|want| want == f)
    });
    let Some(dst_ip) = dst_ip else {
        let want = match spec.family {
            Some(f) => format!("an {} address", f.label()),
            None => "an address of a family the source has".to_string(),
        };
        return err(
            path,
            format!(
                "{} ({}) and {} ({}) have no common address family: need {want}",
                spec.from_text,
                fmt_ips(src_ips),
                spec.to_text,
                fmt_ips(&candidates)
            ),
        );
    };
    let src_ip = src_ips
        .iter()
        .copied()
        .find(|ip| Family::of(ip) == Family::of(&dst_ip))
        .expect("family checked above");
    let dst_port = match (&spec.port, service) {
        (port, Some(svc)) => match svc.find_port(port, spec.protocol) {
            Ok(p) => p.port,
            Err(e) => return err(&format!("{path}.port"), e),
        },
        (PortRef::Number(n), None) => *n,
        (PortRef::Name(name), None) => {
            // On a node: the named port of one of its host-networked pods.
            let on_node = match dst {
                Some(Ep::Node(ni)) => pods.iter().position(|p| {
                    p.host_network
                        && p.node == ni
                        && p.ports.iter().any(|x| x.name.as_deref() == Some(name))
                }),
                _ => None,
            };
            let Some(t) = on_node.or(match dst {
                Some(Ep::Pod(t)) => Some(t),
                _ => None,
            }) else {
                return err(
                    &format!("{path}.port"),
                    format!(
                        "named port {name:?} needs a pod target; {} is no pod's address",
                        spec.to_text
                    ),
                );
            };
            let Some(ps) = pods[t]
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
            else {
                return err(
                    &format!("{path}.port"),
                    format!("pod {} declares no port named {name:?}", pods[t].key()),
                );
            };
            if ps.protocol != spec.protocol {
                return err(
                    &format!("{path}.port"),
                    format!(
                        "port {name:?} of {} is {}, the probe is {}",
                        pods[t].key(),
                        ps.protocol,
                        spec.protocol
                    ),
                );
            }
            ps.port
        }
    };
    Ok(ProbePlan {
        spec: spec.clone(),
        src,
        src_ip,
        dst_ip,
        dst_port,
        dst,
        service: service.map(ServicePlan::key),
    })
}

fn fmt_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    const PREFIX: &str = "enf-abcdef-";

    fn plan_of(text: &str) -> Result<Plan, ScenarioError> {
        plan(&parse(text).unwrap(), PREFIX)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const PODS: &str = "
pods:
  - {namespace: x, name: a, ports: [{name: serve-80-tcp, port: 80}, {name: serve-81-udp, port: 81, protocol: UDP}]}
  - {namespace: x, name: b, ips: [10.42.1.10, 'fd00::b'], ports: [{name: serve-81-udp, port: 8081, protocol: UDP}]}
  - {namespace: y, name: c}
  - {namespace: y, name: v6, ips: ['fd00::6']}
";

    #[test]
    fn names_addresses_and_namespaces() {
        let p = plan_of(PODS).unwrap();
        assert_eq!(p.nodes[0].name, "node-1");
        assert_eq!(p.nodes[0].netns, "enf-abcdef-node-1");
        assert_eq!(p.pods[0].netns, "enf-abcdef-x-a");
        // Assigned addresses skip the explicit one.
        assert_eq!(p.pods[0].ips, vec![ip("10.42.1.11")]);
        assert_eq!(p.pods[2].ips, vec![ip("10.42.1.12")]);
        assert_eq!(p.pods[1].ips, vec![ip("10.42.1.10"), ip("fd00::b")]);
        for pod in &p.pods {
            assert!(pod.host_if.starts_with("lxc") && pod.host_if.len() == 11);
        }
        let ifs: BTreeSet<_> = p.pods.iter().map(|x| &x.host_if).collect();
        assert_eq!(ifs.len(), 4);
        // Namespaces only pods mention exist, with the name label.
        assert_eq!(p.namespaces["y"][NS_NAME_LABEL], "y");
        assert_eq!(p.lab_addresses().len(), 5);
    }

    #[test]
    fn long_and_clashing_namespace_names_are_made_unique() {
        let long = "a".repeat(60);
        let text = format!(
            "pods:\n  - {{namespace: x-a, name: b}}\n  - {{namespace: x, name: a-b}}\n  - {{namespace: x, name: {long}}}\n"
        );
        let p = plan_of(&text).unwrap();
        assert_eq!(p.pods[0].netns, "enf-abcdef-x-a-b");
        assert_ne!(p.pods[1].netns, p.pods[0].netns);
        assert!(p.pods[2].netns.len() <= PREFIX.len() + MAX_NETNS_BODY);
    }

    #[test]
    fn probes_resolve_family_and_named_ports() {
        let text = format!(
            "{PODS}probes:
  - {{from: x/a, to: x/b, port: serve-81-udp, protocol: UDP}}
  - {{from: y/v6, to: x/b, port: 80}}
  - {{from: x/b, to: x/a, port: serve-81-udp, protocol: UDP}}
  - {{from: x/b, to: y/v6, port: 80}}
  - {{from: x/b, to: x/b, port: 80, family: 6}}
  - {{from: x/a, to: 10.42.1.10, port: serve-81-udp, protocol: UDP}}
  - {{from: x/a, to: 192.0.2.1, port: 80}}
"
        );
        let p = plan_of(&text).unwrap();
        let pr = &p.steps[0].probes;
        assert_eq!((pr[0].dst_ip, pr[0].dst_port), (ip("10.42.1.10"), 8081));
        assert_eq!((pr[1].src_ip, pr[1].dst_ip), (ip("fd00::6"), ip("fd00::b")));
        assert_eq!(pr[2].dst_port, 81, "a name means the target's own port");
        assert_eq!((pr[3].src_ip, pr[3].dst_ip), (ip("fd00::b"), ip("fd00::6")));
        assert_eq!(pr[4].dst_ip, ip("fd00::b"));
        assert_eq!((pr[5].dst, pr[5].dst_port), (Some(Ep::Pod(1)), 8081));
        assert_eq!(pr[6].dst, None);
    }

    #[test]
    fn unresolvable_probes_are_errors_with_paths() {
        let cases = [
            (
                "{from: x/z, to: x/b, port: 80}",
                "probes[0].from",
                "no pod x/z",
            ),
            (
                "{from: x/a, to: x/z, port: 80}",
                "probes[0].to",
                "no pod x/z",
            ),
            (
                "{from: x/a, to: y/v6, port: 80}",
                "probes[0]",
                "no common address family",
            ),
            (
                "{from: x/a, to: x/b, port: 80, family: 6}",
                "probes[0]",
                "need an IPv6 address",
            ),
            (
                "{from: x/a, to: x/b, port: nope}",
                "probes[0].port",
                "no port named \"nope\"",
            ),
            (
                "{from: x/b, to: x/a, port: serve-80-tcp, protocol: UDP}",
                "probes[0].port",
                "is TCP, the probe is UDP",
            ),
            (
                "{from: x/a, to: 192.0.2.1, port: http}",
                "probes[0].port",
                "needs a pod target",
            ),
            ("{from: x/a, to: ext, port: 80}", "probes[0].to", "no host"),
            (
                "{from: ext, to: x/a, port: 80}",
                "probes[0].from",
                "no host",
            ),
            (
                "{from: x/a, to: 'svc:x/s', port: 80}",
                "probes[0].to",
                "no Service x/s at this step",
            ),
            (
                "{from: 'node:n9', to: x/a, port: 80}",
                "probes[0].from",
                "no node \"n9\" (nodes: node-1)",
            ),
            (
                "{from: x/a, to: 'node:n9', port: 80}",
                "probes[0].to",
                "no node \"n9\"",
            ),
            (
                "{from: x/a, to: 'node:node-1', port: metrics}",
                "probes[0].port",
                "needs a pod target",
            ),
        ];
        for (probe, path, why) in cases {
            let e = plan_of(&format!("{PODS}probes: [{probe}]\n")).unwrap_err();
            assert_eq!(e.path, path, "{probe}: {e}");
            assert!(e.reason.contains(why), "{probe}: {e}");
        }
    }

    #[test]
    fn host_networked_pods_and_nodes_resolve_to_node_addresses() {
        let p = plan_of(
            "nodes: [n1, {name: n2, ports: [{port: 22}]}]
pods:
  - {namespace: x, name: a}
  - {namespace: kube-system, name: h, node: n2, hostNetwork: true, ports: [{name: metrics, port: 9100}]}
probes:
  - {from: x/a, to: kube-system/h, port: metrics}
  - {from: x/a, to: 'node:n2', port: metrics}
  - {from: 'node:n1', to: 'node:n2', port: 22}
  - {from: x/a, to: 198.18.0.2, port: 22}
",
        )
        .unwrap();
        let h = &p.pods[1];
        assert!(h.host_network && h.host_if.is_empty());
        assert_eq!(h.netns, p.nodes[1].netns);
        assert_eq!(h.ips, vec![ip("198.18.0.2")]);
        // Its address is its node's: not a pod address of the lab.
        assert!(!p.lab_addresses().contains(&ip("198.18.0.2")));
        assert_eq!(p.pods_on(1).count(), 0);
        let pr = &p.steps[0].probes;
        assert_eq!((pr[0].dst_ip, pr[0].dst_port), (ip("198.18.0.2"), 9100));
        assert_eq!(pr[0].dst, Some(Ep::Pod(1)));
        assert_eq!((pr[1].dst_ip, pr[1].dst_port), (ip("198.18.0.2"), 9100));
        assert_eq!(pr[1].dst, Some(Ep::Node(1)));
        assert_eq!((pr[2].src, pr[2].src_ip), (Ep::Node(0), ip("198.18.0.1")));
        assert_eq!(pr[3].dst, Some(Ep::Node(1)));
        assert_eq!(p.name_of(Ep::Node(1)), "node:n2");
        assert_eq!(p.ports_of(Ep::Node(1)).len(), 1);
    }

    #[test]
    fn scenario_level_errors() {
        let e = plan_of("pods: [{namespace: x, name: a, node: n2}]").unwrap_err();
        assert_eq!(e.path, "pods[0].node");
        let e = plan_of("pods: [{namespace: x, name: a, ips: [10.0.0.1]}, {namespace: x, name: b, ips: [10.0.0.1]}]").unwrap_err();
        assert!(e.reason.contains("already the address of x/a"), "{e}");
        let e = plan_of(
            "namespaces: [{name: x}]\nservices: [{namespace: x, name: s, clusterIP: 127.0.0.1, ports: [{port: 80}]}]",
        )
        .unwrap_err();
        assert_eq!(e.path, "services[0].clusterIP");
        assert!(e.reason.contains("cannot be a cluster IP"), "{e}");
        let e = plan_of("nodes: [a, b]\npods: [{namespace: x, name: a, ips: [198.18.0.2]}]")
            .unwrap_err();
        assert!(e.reason.contains("node b on the lab's fabric"), "{e}");
        let e = plan_of("hosts: [{name: h, ips: [192.0.2.1]}]\npods: [{namespace: x, name: a, ips: [192.0.2.1]}]")
            .unwrap_err();
        assert!(e.reason.contains("already the address of host h"), "{e}");
        let e = plan_of(&format!(
            "{PODS}steps: [{{delete: [{{kind: NetworkPolicy, namespace: x, name: p}}]}}]"
        ))
        .unwrap_err();
        assert_eq!(e.path, "steps[0].delete[0]");
        assert!(e.reason.contains("does not exist"), "{e}");
        let e = plan_of(&format!(
            "{PODS}steps: [{{relabel: [{{pod: x/q, labels: {{}}}}]}}]"
        ))
        .unwrap_err();
        assert_eq!(e.path, "steps[0].relabel[0].pod");
        let e = plan_of(&format!(
            "{PODS}steps: [{{relabel: [{{namespace: q, labels: {{}}}}]}}]"
        ))
        .unwrap_err();
        assert_eq!(e.path, "steps[0].relabel[0].namespace");
        let e = plan_of(&format!(
            "{PODS}steps: [{{relabel: [{{node: n9, labels: {{}}}}]}}]"
        ))
        .unwrap_err();
        assert_eq!(e.path, "steps[0].relabel[0].node");
        assert!(e.reason.contains("no node \"n9\" (nodes: node-1)"), "{e}");
        // A node serves a port once: its own, or one host-networked pod's.
        let e = plan_of(
            "nodes: [{name: n1, ports: [{port: 22}]}]\npods: [{namespace: x, name: h, hostNetwork: true, ports: [{port: 22}]}]",
        )
        .unwrap_err();
        assert_eq!(e.path, "pods[0].ports");
        assert!(
            e.reason.contains("already served on node n1 by node n1"),
            "{e}"
        );
        let e = plan_of(
            "pods:\n  - {namespace: x, name: h1, hostNetwork: true, ports: [{port: 9100}]}\n  - {namespace: x, name: h2, hostNetwork: true, ports: [{port: 9100}]}",
        )
        .unwrap_err();
        assert_eq!(e.path, "pods[1].ports");
        assert!(e.reason.contains("by x/h1"), "{e}");
        // On different nodes, or different protocols, they do not clash.
        plan_of(
            "nodes: [n1, n2]\npods:\n  - {namespace: x, name: h1, hostNetwork: true, ports: [{port: 9100}]}\n  - {namespace: x, name: h2, node: n2, hostNetwork: true, ports: [{port: 9100}, {port: 22, protocol: UDP}]}\n",
        )
        .unwrap();
        // Objects and Services live in the lab's namespaces (or one every cluster has).
        let e = plan_of(&format!(
            "{PODS}steps: [{{apply: [{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: p, namespace: ghost}}, spec: {{podSelector: {{}}}}}}]}}]"
        ))
        .unwrap_err();
        assert_eq!(e.path, "steps[0].apply[0].metadata.namespace");
        assert!(
            e.reason.starts_with(
                "NetworkPolicy ghost/p: namespace \"ghost\" does not exist in the lab"
            ),
            "{e}"
        );
        let e = plan_of(&format!(
            "{PODS}services: [{{namespace: ghost, name: s, ports: [{{port: 80}}]}}]"
        ))
        .unwrap_err();
        assert_eq!(e.path, "services[0].namespace");
        plan_of(&format!(
            "{PODS}policies: [{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: p}}, spec: {{podSelector: {{}}}}}}]"
        ))
        .expect("`default` exists in every cluster");
    }

    #[test]
    fn steps_carry_their_changes() {
        let text = format!(
            "{PODS}policies:
  - {{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: p, namespace: x}}, spec: {{podSelector: {{}}}}}}
steps:
  - delete: [{{kind: NetworkPolicy, namespace: x, name: p}}]
    relabel: [{{pod: y/c, labels: {{a: b}}}}, {{namespace: y, labels: {{t: u}}}}]
  - apply: [{{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: p, namespace: x}}, spec: {{podSelector: {{}}}}}}]
"
        );
        let p = plan_of(&text).unwrap();
        assert_eq!(p.steps.len(), 3);
        assert!(p.steps[0].changes.is_empty());
        let c = &p.steps[1].changes;
        assert_eq!(c.delete.len(), 1);
        assert_eq!(c.relabel_pods[0].0, 2);
        assert_eq!(c.relabel_namespaces[0].1[NS_NAME_LABEL], "y");
        assert_eq!(c.relabel_namespaces[0].1["t"], "u");
        assert_eq!(p.steps[2].changes.apply.len(), 1);
    }

    #[test]
    fn nodes_and_hosts_join_a_fabric() {
        let text = "
nodes: [n1, n2]
pods:
  - {namespace: x, name: a}
  - {namespace: x, name: b, node: n2}
  - {namespace: x, name: c, node: n2, ips: ['fd00::c']}
hosts:
  - {name: ext, ips: [192.0.2.10, '2001:db8::10'], ports: [{port: 80}]}
probes:
  - {from: ext, to: x/b, port: 80}
  - {from: x/c, to: ext, port: 80}
  - {from: x/a, to: 192.0.2.10, port: 80}
";
        let p = plan_of(text).unwrap();
        assert_eq!(p.fabric.as_deref(), Some("enf-abcdef-fabric"));
        assert_eq!(
            p.nodes[1].fabric_ips,
            vec![ip("198.18.0.2"), ip("fd00:198:18::2")]
        );
        assert_eq!(p.pods[0].ips, vec![ip("10.42.1.10")]);
        assert_eq!(p.pods[1].ips, vec![ip("10.42.2.10")]);
        assert_eq!(p.hosts[0].netns, "enf-abcdef-host-ext");
        let pr = &p.steps[0].probes;
        assert_eq!((pr[0].src, pr[0].src_ip), (Ep::Host(0), ip("192.0.2.10")));
        assert_eq!(
            (pr[1].dst, pr[1].dst_ip),
            (Some(Ep::Host(0)), ip("2001:db8::10"))
        );
        assert_eq!(pr[2].dst, Some(Ep::Host(0)));
        assert!(p.lab_addresses().contains(&ip("2001:db8::10")));
        assert_eq!(
            plan_of("pods: [{namespace: x, name: a}]").unwrap().fabric,
            None
        );
    }

    #[test]
    fn bridge_nodes_take_pod_addresses_from_their_pod_cidr() {
        let text = "
nodes:
  - {name: n1, cni: bridge, podCIDR: 10.42.0.0/24}
  - {name: n2, cni: bridge, ips: [172.18.0.12]}
  - n3
pods:
  - {namespace: x, name: a, node: n1}
  - {namespace: x, name: b, node: n2}
  - {namespace: x, name: c, node: n3, ips: ['fd00::c']}
";
        let p = plan_of(text).unwrap();
        assert!(p.nodes[0].is_bridge() && !p.nodes[2].is_bridge());
        assert_eq!(p.pods[0].ips, vec![ip("10.42.0.10")]);
        assert_eq!(p.pods[1].ips, vec![ip("10.42.2.10")]);
        assert_eq!(
            p.nodes[0].bridge_ip_for(&ip("10.42.0.10")),
            Some(ip("10.42.0.1"))
        );
        assert_eq!(
            p.nodes[1].bridge_ip_for(&ip("fd00::c")),
            Some(ip("fd00:10:42:2::1"))
        );
        assert_eq!(
            p.nodes[1].fabric_ips,
            vec![ip("172.18.0.12"), ip("fd00:198:18::2")]
        );
        assert!(p.nodes[2].bridge_ips.is_empty());
        let e = plan_of(
            "nodes: [{name: n1, cni: bridge}]\npods: [{namespace: x, name: a, ips: [10.42.1.1]}]",
        )
        .unwrap_err();
        assert!(e.reason.contains("bridge cni0"), "{e}");
        let e = plan_of("nodes: [{name: n1, podCIDR: 10.42.0.0/30}]\npods: [{namespace: x, name: a}, {namespace: x, name: b}]")
            .unwrap_err();
        assert!(
            e.reason.contains("no free address left in 10.42.0.0/30"),
            "{e}"
        );
    }

    #[test]
    fn every_shipped_scenario_plans() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/scenarios");
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                plan_of(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
        plan_of(crate::DEMO_SCENARIO).unwrap();
    }
}
