//! The policy compiler: cluster state in, desired map state out. Pure: no kernel, no I/O.
//!
//! Two steps:
//! 1. [`compile`] turns the [`Cluster`] into a [`Compiled`] state: identities for every pod
//!    address and ipBlock prefix, and for every local endpoint its modes and its policy entries
//!    (keys without a `policy_set`).
//! 2. [`plan`] places the entries of each endpoint under a `policy_set` id, given what is
//!    installed: an endpoint whose change is invisible to live traffic (it only adds entries for
//!    identities no packet can carry yet, or only removes entries for identities no packet will
//!    carry any more) keeps its set and gets a minimal diff; any other change is written under a
//!    fresh set that the endpoint flips to in one map write. So no packet ever sees half of a
//!    policy change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use enforcer_common::{
    EndpointInfo, IdentityValue, IpAddrKey, POLICY_ACTION_ALLOW, PolicyKey, PolicyValue,
    ServiceBackendKey, direction, identity, mode, policy_prefix,
};
use ipnet::IpNet;

use crate::cluster_policy::ClusterPolicy;
use crate::model::{
    ContainerPort, EndpointSlice, IpBlock, Labels, Namespace, ObjectRef, Peer, Pod, Policy,
    PortRef, PortSpec, Protocol, Rule, Service, implicit_namespace,
};
use crate::state::{Lpm, MapState};

/// Policy id of the built-in rule that lets the node reach its own pods (kubelet probes).
pub const POLICY_ID_HOST: u32 = 1;
/// First policy id given to a NetworkPolicy.
pub const FIRST_POLICY_ID: u32 = 16;

/// The index the sources feed: the latest valid version of every object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<ObjectRef, Pod>,
    pub policies: BTreeMap<ObjectRef, Policy>,
    pub services: BTreeMap<ObjectRef, Service>,
    /// EndpointSlices: the backends of the Services without a selector.
    pub slices: BTreeMap<ObjectRef, EndpointSlice>,
    /// ClusterNetworkPolicies (and the v1alpha1 kinds), by [`ClusterPolicy::key`].
    pub cluster_policies: BTreeMap<ObjectRef, ClusterPolicy>,
    /// Nodes by name (what `nodes` peers select).
    pub nodes: BTreeMap<String, crate::model::Node>,
}

impl Cluster {
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        self.namespaces
            .get(ns)
            .map(|n| n.labels.clone())
            .unwrap_or_else(|| implicit_namespace(ns).labels)
    }

    /// The pod that owns an address, if any (for events and explain).
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods
            .values()
            .find(|p| !p.host_network && p.ips.contains(&ip))
    }
}

/// What the node contributes: which pods are local and where, and its own addresses.
#[derive(Clone, Debug, Default)]
pub struct NodeInput {
    pub node: String,
    /// Local pod → ifindex of its host-side interface (only pods whose interface was found).
    pub interfaces: BTreeMap<ObjectRef, u32>,
    /// The node's own addresses: identity HOST.
    pub host_ips: Vec<IpAddr>,
    /// Let the node reach its isolated pods (kubelet probes), as every CNI does.
    pub allow_host_ingress: bool,
    /// Interfaces that look like pods' but that no known pod claims (yet): held fail-closed
    /// (`--default-deny-unknown`). An interface that is also in `interfaces` is not held.
    pub held: BTreeSet<u32>,
    /// Interfaces whose pod is ambiguous (two pods' addresses behind one, or one pod's behind
    /// several: [`crate::binding::Conflict`]): held fail-closed, reported as
    /// `ENDPOINT_CONFLICT`, whatever else is known about them.
    pub conflicted: BTreeSet<u32>,
}

/// What makes two pods the same peer for policy: a pod identity.
///
/// The namespace's labels are not part of it (they are the same for all its pods at any one
/// time, and a namespace relabel then changes policy entries, not every pod's identity). The
/// named ports are, so that an egress rule with a named port is exact even when two pods with
/// the same labels map the name to different numbers.
///
/// An identity is given per address, and also names the ipBlocks of egress rules with named
/// ports that contain the address: such a rule admits a pod's port by name only at the pod's
/// addresses inside the block, so two pods alike but for their side of the block (or the two
/// families of one dual-stack pod) must be told apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    pub namespace: String,
    pub labels: Labels,
    pub named_ports: Vec<ContainerPort>,
    pub named_port_blocks: Vec<IpBlock>,
}

/// Ids that must stay stable from one compilation to the next.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    identities: BTreeMap<IdentityKey, u32>,
    cidr_identities: BTreeMap<Vec<IpBlock>, u32>,
    endpoints: BTreeMap<ObjectRef, u32>,
    policies: BTreeMap<ObjectRef, u32>,
    services: BTreeMap<IpAddrKey, u32>,
    nodes: BTreeMap<Labels, u32>,
    next_node: u32,
    next_service: u32,
    next_identity: u32,
    next_cidr: u32,
    next_endpoint: u32,
    next_policy: u32,
    next_set: u32,
}

impl Ids {
    fn get<K: Ord + Clone>(map: &mut BTreeMap<K, u32>, next: &mut u32, first: u32, k: &K) -> u32 {
        if let Some(id) = map.get(k) {
            return *id;
        }
        if *next < first {
            *next = first;
        }
        let id = *next;
        *next += 1;
        map.insert(k.clone(), id);
        id
    }
    fn identity(&mut self, k: &IdentityKey) -> u32 {
        Self::get(
            &mut self.identities,
            &mut self.next_identity,
            identity::FIRST_LABEL,
            k,
        )
    }
    /// The Service identity of a Service address (`identity::SERVICE_FLAG`).
    fn service_identity(&mut self, k: &IpAddrKey) -> u32 {
        identity::SERVICE_FLAG | Self::get(&mut self.services, &mut self.next_service, 1, k)
    }
    /// The identity of the nodes with these labels (`identity::NODE_FLAG`).
    fn node_identity(&mut self, k: &Labels) -> u32 {
        identity::NODE_FLAG | Self::get(&mut self.nodes, &mut self.next_node, 1, k)
    }
    fn cidr_identity(&mut self, k: &Vec<IpBlock>) -> u32 {
        identity::CIDR_FLAG | Self::get(&mut self.cidr_identities, &mut self.next_cidr, 1, k)
    }
    pub fn endpoint(&mut self, k: &ObjectRef) -> u32 {
        Self::get(&mut self.endpoints, &mut self.next_endpoint, 1, k)
    }
    pub fn policy(&mut self, k: &ObjectRef) -> u32 {
        Self::get(
            &mut self.policies,
            &mut self.next_policy,
            FIRST_POLICY_ID,
            k,
        )
    }
    fn identity_key(&self, id: u32) -> Option<&IdentityKey> {
        self.identities
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k)
    }
    fn cidr_blocks(&self, id: u32) -> Option<&Vec<IpBlock>> {
        self.cidr_identities
            .iter()
            .find(|(_, v)| (identity::CIDR_FLAG | **v) == id)
            .map(|(k, _)| k)
    }
    /// A `policy_set` id never used before in this agent's life (and above `floor`).
    pub fn fresh_set(&mut self, floor: u32) -> u32 {
        self.next_set = self.next_set.max(floor).max(1) + 1;
        self.next_set
    }

    /// How many ids are remembered (identities, CIDR identities, endpoints, policies).
    pub fn len(&self) -> usize {
        self.identities.len()
            + self.cidr_identities.len()
            + self.endpoints.len()
            + self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the ids of what is gone: pods and policies no longer in `cluster`, identities
    /// that neither `compiled` nor `installed` (what packets may still carry until the next
    /// install) uses. Live ids keep their numbers, and no number is given out twice (the
    /// counters never go back), so an id in a conntrack entry, a rule counter or an event
    /// never comes to stand for something else. Run after every compile: a cluster with Jobs
    /// creates pods (and label sets) forever.
    pub fn retain_live(&mut self, cluster: &Cluster, compiled: &Compiled, installed: &MapState) {
        let mut live: BTreeSet<u32> = compiled.identities.keys().copied().collect();
        for v in installed
            .ip_identity
            .values()
            .chain(installed.cidr_identity.values())
        {
            live.insert(v.identity);
        }
        self.identities.retain(|_, id| live.contains(id));
        self.cidr_identities
            .retain(|_, id| live.contains(&(identity::CIDR_FLAG | *id)));
        let installed_endpoints: BTreeSet<u32> = installed
            .endpoints
            .values()
            .map(|e| e.endpoint_id)
            .collect();
        self.endpoints
            .retain(|pod, id| cluster.pods.contains_key(pod) || installed_endpoints.contains(id));
        self.policies.retain(|policy, id| {
            cluster.policies.contains_key(policy) || compiled.policies.contains_key(id)
        });
    }

    /// Takes back the ids a previous agent gave out, from what its pins hold (`installed`:
    /// addresses → identities and endpoint ids, interfaces → endpoint ids, CIDR prefixes →
    /// CIDR identities; `policy_names`: the `NAMES` map's policy ids), so a restart renumbers
    /// nothing: conntrack entries, rule counters and events keep naming the same objects. Ids
    /// this agent already gave out win (they are in the maps too). Returns the interface each
    /// local pod was bound to: the binding of a quiet pod (one a bridge CNI has no fresh
    /// neighbour or forwarding entry for) is known only from there.
    pub fn seed_from_pins(
        &mut self,
        cluster: &Cluster,
        node: &str,
        installed: &MapState,
        policy_names: &BTreeMap<u32, ObjectRef>,
    ) -> BTreeMap<ObjectRef, u32> {
        fn take<K: Ord + Clone>(map: &mut BTreeMap<K, u32>, next: &mut u32, k: K, id: u32) {
            // Linear in the map only when the key is new to this agent (a restart: once).
            if !map.contains_key(&k) && !map.values().any(|v| *v == id) {
                map.insert(k, id);
            }
            *next = (*next).max(id.saturating_add(1));
        }
        for (id, policy) in policy_names {
            take(
                &mut self.policies,
                &mut self.next_policy,
                policy.clone(),
                *id,
            );
        }
        let blocks = named_port_blocks(cluster);
        let mut endpoint_pods: BTreeMap<u32, ObjectRef> = BTreeMap::new();
        for pod in cluster.pods.values().filter(|p| !p.host_network) {
            for ip in &pod.ips {
                let Some(v) = installed.ip_identity.get(&ip_key(*ip)) else {
                    continue;
                };
                if v.identity >= identity::FIRST_LABEL && v.identity & identity::CIDR_FLAG == 0 {
                    let key = pod_identity_key(pod, *ip, &blocks);
                    take(
                        &mut self.identities,
                        &mut self.next_identity,
                        key,
                        v.identity,
                    );
                }
                if v.endpoint_id != 0 && pod.node.as_deref() == Some(node) {
                    endpoint_pods.insert(v.endpoint_id, pod.key());
                }
            }
        }
        let mut bound = BTreeMap::new();
        for (ifindex, e) in &installed.endpoints {
            if let Some(pod) = endpoint_pods.get(&e.endpoint_id) {
                take(
                    &mut self.endpoints,
                    &mut self.next_endpoint,
                    pod.clone(),
                    e.endpoint_id,
                );
                bound.insert(pod.clone(), *ifindex);
            }
        }
        for (net, covering) in cidr_partition(cluster) {
            if let Some(v) = installed.cidr_identity.get(&net_key(net))
                && v.identity & identity::CIDR_FLAG != 0
            {
                let id = v.identity & !identity::CIDR_FLAG;
                take(&mut self.cidr_identities, &mut self.next_cidr, covering, id);
            }
        }
        bound
    }
}

/// One local endpoint, before its entries are placed under a `policy_set`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledEndpoint {
    pub pod: ObjectRef,
    pub ifindex: u32,
    pub ingress_mode: u32,
    pub egress_mode: u32,
    /// Policies that select this endpoint, per direction (for events: "isolated by …").
    pub ingress_policies: Vec<ObjectRef>,
    pub egress_policies: Vec<ObjectRef>,
    /// `EndpointInfo::tiers`: the ordered tiers holding rules for it, per direction.
    pub tiers: u32,
    /// Entries with `policy_set == 0`: the NetworkPolicy tier and the Service verdicts.
    pub entries: BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    /// The Admin tier's entries, placed under a `tier_set` of their own.
    pub tier_entries: BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    /// The Baseline tier's entries, placed under a `baseline_set` of their own.
    pub baseline_entries: BTreeMap<Lpm<PolicyKey>, PolicyValue>,
}

/// What an identity stands for (for events, dumps and explain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityInfo {
    Pods(IdentityKey),
    /// The ipBlocks covering a CIDR partition prefix.
    Cidr(Vec<IpBlock>),
    /// Another node's addresses, by the node's labels.
    Node(Labels),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub endpoints: BTreeMap<u32, CompiledEndpoint>,
    pub ip_identity: BTreeMap<IpAddrKey, IdentityValue>,
    pub cidr_identity: BTreeMap<Lpm<IpAddrKey>, IdentityValue>,
    pub identities: BTreeMap<u32, IdentityInfo>,
    pub policies: BTreeMap<u32, ObjectRef>,
    /// Service addresses → Service identity (the endpoints' verdicts per Service port are
    /// entries under it, see `crate::services`).
    pub service_ips: BTreeMap<IpAddrKey, u32>,
    /// Backends of the Service ports some endpoint's verdict is deferred for.
    pub service_backends: BTreeMap<ServiceBackendKey, u32>,
    /// Interfaces held fail-closed (see [`NodeInput::held`]).
    pub held: BTreeSet<u32>,
    /// Interfaces held for a binding conflict (see [`NodeInput::conflicted`]).
    pub conflicted: BTreeSet<u32>,
    /// Event limits of endpoints selected by policies with limit annotations: the strictest
    /// rate and burst among them (ifindex → limit).
    pub event_limits: BTreeMap<u32, enforcer_common::EventLimit>,
    /// Policies of one tier and one priority that select a common pod (the API leaves their
    /// order to the implementation: [`ClusterPolicy::order`] picks), for the agent to report.
    pub conflicts: BTreeSet<tiers::Conflict>,
}

pub fn ip_key(ip: IpAddr) -> IpAddrKey {
    match ip {
        IpAddr::V4(a) => IpAddrKey::from_v4_octets(a.octets()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddrKey::from_v4_octets(v4.octets()),
            None => IpAddrKey::from_v6_octets(a.octets()),
        },
    }
}

pub fn net_key(net: IpNet) -> Lpm<IpAddrKey> {
    match net {
        IpNet::V4(n) => Lpm {
            prefix_len: 96 + u32::from(n.prefix_len()),
            data: IpAddrKey::from_v4_octets(n.network().octets()),
        },
        IpNet::V6(n) => Lpm {
            prefix_len: u32::from(n.prefix_len()),
            data: IpAddrKey::from_v6_octets(n.network().octets()),
        },
    }
}

/// Splits `start..=end` into the fewest (value, prefix bits) port prefixes.
pub fn port_range_prefixes(start: u16, end: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(start), u32::from(end));
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

fn named_ports(pod: &Pod) -> Vec<ContainerPort> {
    let mut v: Vec<ContainerPort> = pod
        .ports
        .iter()
        .filter(|p| p.name.is_some())
        .cloned()
        .collect();
    v.sort();
    v.dedup();
    v
}

fn pod_identity_key(pod: &Pod, ip: IpAddr, named_port_blocks: &BTreeSet<IpBlock>) -> IdentityKey {
    IdentityKey {
        namespace: pod.namespace.clone(),
        labels: pod.labels.clone(),
        named_ports: named_ports(pod),
        named_port_blocks: named_port_blocks
            .iter()
            .filter(|b| b.contains(ip))
            .cloned()
            .collect(),
    }
}

/// The ipBlock peers of egress rules that name a port: the only blocks an identity must know.
fn named_port_blocks(cluster: &Cluster) -> BTreeSet<IpBlock> {
    let mut out = BTreeSet::new();
    for p in cluster.policies.values() {
        for r in &p.egress {
            if !r.ports.iter().any(|s| matches!(s.port, PortRef::Named(_))) {
                continue;
            }
            for peer in &r.peers {
                if let Peer::IpBlock(b) = peer {
                    out.insert(b.clone());
                }
            }
        }
    }
    out
}

fn identity_named_port(k: &IdentityKey, name: &str, proto: Protocol) -> Option<u16> {
    k.named_ports
        .iter()
        .find(|p| p.protocol == proto && p.name.as_deref() == Some(name))
        .map(|p| p.port)
}

/// The CIDR partition of every ipBlock in every policy: prefix → the blocks that cover it.
fn cidr_partition(cluster: &Cluster) -> BTreeMap<IpNet, Vec<IpBlock>> {
    let mut blocks = BTreeSet::new();
    for p in cluster.policies.values() {
        for r in p.ingress.iter().chain(&p.egress) {
            for peer in &r.peers {
                if let Peer::IpBlock(b) = peer {
                    blocks.insert(b.clone());
                }
            }
        }
    }
    blocks.extend(tiers::network_blocks(cluster));
    if blocks.is_empty() {
        return BTreeMap::new();
    }
    let mut prefixes: BTreeSet<IpNet> = BTreeSet::new();
    for b in &blocks {
        prefixes.insert(b.cidr);
        prefixes.extend(b.except.iter().copied());
    }
    // The IPv4 root keeps IPv4 addresses (stored IPv4-mapped) away from IPv6 blocks such as ::/0.
    prefixes.insert("0.0.0.0/0".parse().expect("constant"));
    let mut out = BTreeMap::new();
    for p in prefixes {
        let covering: Vec<IpBlock> = blocks
            .iter()
            .filter(|b| {
                b.cidr.contains(&p)
                    && !b.except.iter().any(|e| e.contains(&p))
                    && b.cidr.addr().is_ipv4() == p.addr().is_ipv4()
            })
            .cloned()
            .collect();
        out.insert(p, covering);
    }
    out
}

pub(crate) struct Resolver<'a> {
    pub(crate) cluster: &'a Cluster,
    /// Every pod identity in the cluster with the key it stands for.
    pub(crate) identities: &'a BTreeMap<u32, IdentityKey>,

    /// CIDR identity → blocks covering it.
    pub(crate) cidr_ids: &'a BTreeMap<u32, Vec<IpBlock>>,
    /// Node identity → the labels of the (other) nodes it stands for.
    pub(crate) nodes: &'a BTreeMap<u32, Labels>,
    /// This node's labels, when its Node object is known (its addresses are HOST).
    pub(crate) this_node: Option<&'a Labels>,
}

impl Resolver<'_> {
    fn peer_identities(&self, policy: &Policy, peer: &Peer) -> Vec<u32> {
        self.peer_identities_in(&policy.namespace, peer)
    }

    /// `peer`'s identities, for a policy of namespace `own` (a peer without a namespace
    /// selector means that namespace).
    pub(crate) fn peer_identities_in(&self, own: &str, peer: &Peer) -> Vec<u32> {
        match peer {
            Peer::Pods { namespaces, pods } => self
                .identities
                .iter()
                .filter(|(_, k)| match namespaces {
                    None => k.namespace == own,
                    Some(sel) => sel.matches(&self.cluster.namespace_labels(&k.namespace)),
                })
                .filter(|(_, k)| pods.as_ref().is_none_or(|sel| sel.matches(&k.labels)))
                .map(|(id, _)| *id)
                .collect(),
            Peer::IpBlock(b) => self
                .cidr_ids
                .iter()
                .filter(|(_, blocks)| blocks.contains(b))
                .map(|(id, _)| *id)
                .collect(),
        }
    }

    /// The pod identities whose addresses lie in `b` (a block of a named-port egress rule,
    /// which identities record exactly; see [`IdentityKey`]).
    pub(crate) fn pod_identities_in_block(&self, b: &IpBlock) -> Vec<u32> {
        self.identities
            .iter()
            .filter(|(_, k)| k.named_port_blocks.contains(b))
            .map(|(id, _)| *id)
            .collect()
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn push_entry(
    entries: &mut BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    dir: u8,
    tier: u8,
    ident: u32,
    proto: u8,
    port: u16,
    prefix_len: u32,
    value: PolicyValue,
) {
    let key = Lpm {
        prefix_len,
        data: PolicyKey::new(0, ident, dir, tier, proto, port.to_be()),
    };
    // First writer wins: policies are visited in order (NetworkPolicies by name, ordered tiers
    // by rank), rules in order, so the attribution of a key is deterministic.
    entries.entry(key).or_insert(value);
}

/// What one rule's peers resolve to.
#[derive(Default)]
pub(crate) struct Targets {
    /// Any peer at all (`from`/`to` empty, or a peer that fails closed).
    pub(crate) any: bool,
    pub(crate) ids: BTreeSet<u32>,
    /// The pod identities an egress named port is resolved on (the peers that are pods).
    pub(crate) named_pods: BTreeSet<u32>,
}

/// Adds the entries of one rule of `policy` for the local pod `local`.
#[allow(clippy::too_many_arguments)]
fn rule_entries(
    r: &Resolver<'_>,
    entries: &mut BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    policy: &Policy,
    policy_id: u32,
    rule_index: usize,
    rule: &Rule,
    dir: u8,
    local: &Pod,
) {
    let value = PolicyValue {
        policy_id,
        rule_index: u16::try_from(rule_index).unwrap_or(u16::MAX),
        action: POLICY_ACTION_ALLOW,
        flags: 0,
        rank: 0,
    };
    let mut t = Targets {
        any: rule.peers.is_empty(),
        ..Default::default()
    };
    if t.any {
        t.named_pods.extend(r.identities.keys().copied());
    }
    for peer in &rule.peers {
        let ids = r.peer_identities(policy, peer);
        match peer {
            Peer::Pods { .. } => t.named_pods.extend(ids.iter().copied()),
            Peer::IpBlock(b) => t.named_pods.extend(r.pod_identities_in_block(b)),
        }
        t.ids.extend(ids);
    }
    emit_rule(
        r,
        entries,
        &t,
        &rule.ports,
        dir,
        enforcer_common::tier::NETWORK_POLICY,
        local,
        value,
    );
}

/// The entries of one rule whose peers resolved to `t`, with ports `ports` (empty: every port
/// and protocol), all carrying `value`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_rule(
    r: &Resolver<'_>,
    entries: &mut BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    t: &Targets,
    ports: &[PortSpec],
    dir: u8,
    tier: u8,
    local: &Pod,
    value: PolicyValue,
) {
    let targets: Vec<u32> = if t.any {
        vec![identity::ANY]
    } else {
        t.ids.iter().copied().collect()
    };
    let mut push = |id: u32, proto: u8, port: u16, len: u32| {
        push_entry(entries, dir, tier, id, proto, port, len, value);
    };
    if ports.is_empty() {
        for id in &targets {
            push(*id, 0, 0, policy_prefix::ANY_PROTO);
        }
        return;
    }
    for spec in ports {
        let proto = spec.protocol.number();
        match &spec.port {
            PortRef::Any => {
                for id in &targets {
                    push(*id, proto, 0, policy_prefix::ANY_PORT);
                }
            }
            PortRef::Range(a, b) => {
                for (port, bits) in port_range_prefixes(*a, *b) {
                    for id in &targets {
                        push(*id, proto, port, policy_prefix::port_prefix(bits));
                    }
                }
            }
            PortRef::Named(name) if dir == direction::INGRESS => {
                // Ingress: the name is the local pod's own container port.
                if let Some(port) = local.named_port(name, spec.protocol) {
                    for id in &targets {
                        push(*id, proto, port, policy_prefix::FULL);
                    }
                }
            }
            PortRef::Named(name) => {
                // Egress: the name is each destination pod's port, so it only ever matches pods.
                for id in &t.named_pods {
                    if let Some(port) = r
                        .identities
                        .get(id)
                        .and_then(|k| identity_named_port(k, name, spec.protocol))
                    {
                        push(*id, proto, port, policy_prefix::FULL);
                    }
                }
            }
        }
    }
}

/// Compiles the cluster for one node.
///
/// `installed` is what the maps hold now: entries are also made for the identities that are
/// live there and about to disappear (harmless since installs switch generations atomically,
/// see [`crate::state::PhysState`], and they keep a reused policy set right meanwhile).
pub fn compile(
    cluster: &Cluster,
    node: &NodeInput,
    ids: &mut Ids,
    installed: &MapState,
) -> Compiled {
    let mut out = Compiled::default();

    // Pod identities and the address map. Addresses are claimed in pod-name order; the node's
    // own addresses win over any pod's (hostNetwork pods share them and have no identity).
    let mut identities: BTreeMap<u32, IdentityKey> = BTreeMap::new();
    let mut pod_identities: BTreeMap<ObjectRef, Vec<u32>> = BTreeMap::new();
    let blocks_by_name = named_port_blocks(cluster);
    for pod in cluster.pods.values().filter(|p| !p.host_network) {
        for ip in &pod.ips {
            let key = pod_identity_key(pod, *ip, &blocks_by_name);
            let id = ids.identity(&key);
            identities.insert(id, key);
            pod_identities.entry(pod.key()).or_default().push(id);
            out.ip_identity.entry(ip_key(*ip)).or_insert(IdentityValue {
                identity: id,
                endpoint_id: 0,
            });
        }
    }
    for ip in &node.host_ips {
        out.ip_identity.insert(
            ip_key(*ip),
            IdentityValue {
                identity: identity::HOST,
                endpoint_id: 0,
            },
        );
    }
    for (id, k) in &identities {
        out.identities.insert(*id, IdentityInfo::Pods(k.clone()));
    }
    // Other nodes' addresses, by their labels (what `nodes` peers select); this node's are
    // HOST. A pod's address (none should be a node's) keeps the pod's identity.
    let mut node_ids: BTreeMap<u32, Labels> = BTreeMap::new();
    for n in cluster.nodes.values().filter(|n| n.name != node.node) {
        let id = ids.node_identity(&n.labels);
        node_ids.insert(id, n.labels.clone());
        for ip in &n.addresses {
            out.ip_identity.entry(ip_key(*ip)).or_insert(IdentityValue {
                identity: id,
                endpoint_id: 0,
            });
        }
        out.identities
            .insert(id, IdentityInfo::Node(n.labels.clone()));
    }

    // CIDR partition.
    let mut cidr_ids: BTreeMap<u32, Vec<IpBlock>> = BTreeMap::new();
    for (net, blocks) in cidr_partition(cluster) {
        let id = ids.cidr_identity(&blocks);
        cidr_ids.insert(id, blocks.clone());
        out.cidr_identity.insert(
            net_key(net),
            IdentityValue {
                identity: id,
                endpoint_id: 0,
            },
        );
        out.identities.insert(id, IdentityInfo::Cidr(blocks));
    }

    for p in cluster.policies.values() {
        out.policies.insert(ids.policy(&p.key()), p.key());
    }
    for p in cluster.cluster_policies.values() {
        out.policies.insert(ids.policy(&p.key()), p.key());
    }
    let ranks = tiers::ranks(cluster);
    for svc in cluster.services.values() {
        for ip in &svc.cluster_ips {
            let k = ip_key(*ip);
            out.service_ips.insert(k, ids.service_identity(&k));
        }
    }
    let services = crate::services::backends(cluster);

    // Identities that packets may still carry until this change is installed.
    let mut all_identities = identities.clone();
    let mut all_cidr_ids = cidr_ids.clone();
    for v in installed
        .ip_identity
        .values()
        .chain(installed.cidr_identity.values())
    {
        let id = v.identity;
        if id & identity::CIDR_FLAG != 0 {
            if let (false, Some(b)) = (all_cidr_ids.contains_key(&id), ids.cidr_blocks(id)) {
                all_cidr_ids.insert(id, b.clone());
            }
        } else if id >= identity::FIRST_LABEL
            && let (false, Some(k)) = (all_identities.contains_key(&id), ids.identity_key(id))
        {
            all_identities.insert(id, k.clone());
        }
    }

    let resolver = Resolver {
        cluster,
        identities: &all_identities,
        cidr_ids: &all_cidr_ids,
        nodes: &node_ids,
        this_node: cluster.nodes.get(&node.node).map(|n| &n.labels),
    };

    for (pod_ref, ifindex) in &node.interfaces {
        let Some(pod) = cluster.pods.get(pod_ref) else {
            continue;
        };
        if pod.host_network {
            continue;
        }
        let endpoint_id = ids.endpoint(pod_ref);
        for ip in &pod.ips {
            if let Some(v) = out.ip_identity.get_mut(&ip_key(*ip))
                && pod_identities
                    .get(pod_ref)
                    .is_some_and(|ids| ids.contains(&v.identity))
            {
                v.endpoint_id = endpoint_id;
            }
        }
        let mut ep = CompiledEndpoint {
            pod: pod_ref.clone(),
            ifindex: *ifindex,
            ingress_mode: mode::ALLOW_ALL,
            egress_mode: mode::ALLOW_ALL,
            ingress_policies: Vec::new(),
            egress_policies: Vec::new(),
            tiers: 0,
            entries: BTreeMap::new(),
            tier_entries: BTreeMap::new(),
            baseline_entries: BTreeMap::new(),
        };
        // Policies in audit mode isolate only where no enforcing policy does, and then only
        // to report: the endpoint runs in AUDIT mode on their rules.
        let selecting: Vec<&Policy> = cluster
            .policies
            .values()
            .filter(|p| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
            .collect();
        if let Some(l) = selecting
            .iter()
            .filter_map(|p| p.event_limit)
            .reduce(|a, b| crate::model::EventLimitSpec {
                rate_milli: a.rate_milli.min(b.rate_milli),
                burst: a.burst.min(b.burst),
            })
        {
            out.event_limits.insert(
                *ifindex,
                enforcer_common::EventLimit {
                    rate_milli: l.rate_milli,
                    burst: l.burst,
                },
            );
        }
        let is_audit = |p: &Policy| {
            p.audit
                || cluster
                    .namespaces
                    .get(&p.namespace)
                    .is_some_and(|n| n.audit)
        };
        for dir in [direction::INGRESS, direction::EGRESS] {
            let isolating = |p: &&&Policy| {
                if dir == direction::INGRESS {
                    p.ingress_isolation
                } else {
                    p.egress_isolation
                }
            };
            let enforcing: Vec<&Policy> = selecting
                .iter()
                .filter(isolating)
                .filter(|p| !is_audit(p))
                .copied()
                .collect();
            let (mode, applied): (u32, Vec<&Policy>) = if !enforcing.is_empty() {
                (mode::ENFORCE, enforcing)
            } else {
                let auditing: Vec<&Policy> = selecting.iter().filter(isolating).copied().collect();
                if auditing.is_empty() {
                    continue;
                }
                (mode::AUDIT, auditing)
            };
            for policy in applied {
                let pid = ids.policy(&policy.key());
                let rules = if dir == direction::INGRESS {
                    ep.ingress_policies.push(policy.key());
                    &policy.ingress
                } else {
                    ep.egress_policies.push(policy.key());
                    &policy.egress
                };
                for (i, rule) in rules.iter().enumerate() {
                    rule_entries(&resolver, &mut ep.entries, policy, pid, i, rule, dir, pod);
                }
            }
            if dir == direction::INGRESS {
                ep.ingress_mode = mode;
            } else {
                ep.egress_mode = mode;
            }
        }
        tiers::endpoint_entries(&resolver, &ranks, pod, &mut ep, ids, &mut out.conflicts);
        if matches!(ep.ingress_mode, mode::ENFORCE | mode::AUDIT) && node.allow_host_ingress {
            push_entry(
                &mut ep.entries,
                direction::INGRESS,
                enforcer_common::tier::NETWORK_POLICY,
                identity::HOST,
                0,
                0,
                policy_prefix::ANY_PROTO,
                PolicyValue {
                    policy_id: POLICY_ID_HOST,
                    rule_index: 0,
                    action: POLICY_ACTION_ALLOW,
                    flags: 0,
                    rank: 0,
                },
            );
        }
        let info = EndpointInfo {
            endpoint_id,
            policy_set: 0,
            ingress_mode: ep.ingress_mode,
            egress_mode: ep.egress_mode,
            tiers: ep.tiers,
            tier_set: 0,
            baseline_set: 0,
        };
        if crate::lookup::judged(&info, direction::EGRESS) {
            crate::services::verdicts(
                &services,
                &out.service_ips,
                &out.ip_identity,
                &out.cidr_identity,
                &node.host_ips,
                &info,
                &[&ep.tier_entries, &ep.baseline_entries],
                &mut ep.entries,
                &mut out.service_backends,
            );
        }
        out.endpoints.insert(endpoint_id, ep);
    }
    let claimed: BTreeSet<u32> = node.interfaces.values().copied().collect();
    out.held = node.held.difference(&claimed).copied().collect();
    out.conflicted = node.conflicted.clone();
    out
}

mod plan;
pub use plan::{CapacityHold, Planned, held_endpoint, plan, plan_with};

mod tiers;
pub use tiers::Conflict;

#[cfg(test)]
mod fail_closed_tests;
#[cfg(test)]
mod tests;
