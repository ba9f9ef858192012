//! From a parsed scenario to a plan: every name the run creates (namespaces, interfaces), every
//! address, and every probe resolved to a source pod, a destination address and a port number.
//! Pure: everything that can be wrong with a scenario is found here, before anything is created.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use crate::scenario::{
    Endpoint, Family, Labels, Object, ObjectKey, PortRef, PortSpec, ProbeSpec, Protocol, Relabel,
    Scenario, ScenarioError, Target,
};

/// The label every namespace carries.
pub const NS_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    /// Network namespace name (with the run prefix).
    pub netns: String,
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
    pub netns: String,
    /// The host side of the pod's veth, in the node namespace.
    pub host_if: String,
}

impl PodPlan {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What a step changes before its probes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub apply: Vec<Object>,
    pub delete: Vec<ObjectKey>,
    /// Pod index → its new labels.
    pub relabel_pods: Vec<(usize, Labels)>,
    /// Namespace → its new labels (with the name label).
    pub relabel_namespaces: Vec<(String, Labels)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty()
            && self.delete.is_empty()
            && self.relabel_pods.is_empty()
            && self.relabel_namespaces.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    pub spec: ProbeSpec,
    /// Source pod index.
    pub src: usize,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// The pod that owns `dst_ip`, if any.
    pub dst_pod: Option<usize>,
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
    /// Objects applied at the start (the scenario's `policies`).
    pub objects: Vec<Object>,
    /// Step 0 (no changes, the top-level probes), then one per `steps` entry.
    pub steps: Vec<StepPlan>,
}

impl Plan {
    /// Every address in the lab: what a pod has routes to.
    pub fn lab_addresses(&self) -> BTreeSet<IpAddr> {
        self.pods
            .iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect()
    }

    pub fn pods_on(&self, node: usize) -> impl Iterator<Item = &PodPlan> {
        self.pods.iter().filter(move |p| p.node == node)
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

/// The IPv4 pod CIDR of the node with this index: 10.42.<i+1>.0/24.
pub fn node_pod_cidr_v4(node: usize) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 42, (node + 1).min(255) as u8, 0), 24)
}

fn not_supported<T>(path: &str, what: &str) -> Result<T, ScenarioError> {
    err(path, format!("not supported yet: {what}"))
}

/// Builds the plan. `prefix` names everything this run creates (`enf-1a2b3c-`).
pub fn plan(s: &Scenario, prefix: &str) -> Result<Plan, ScenarioError> {
    let node_names = s.node_names();
    if node_names.len() > 1 {
        return not_supported(
            "nodes",
            "more than one node (this version of the lab runs a single node)",
        );
    }
    if !s.hosts.is_empty() {
        return not_supported("hosts", "hosts outside the cluster");
    }
    if !s.services.is_empty() {
        return not_supported("services", "Services");
    }

    let mut taken_netns = BTreeSet::new();
    let nodes: Vec<NodePlan> = node_names
        .iter()
        .map(|n| NodePlan {
            name: n.clone(),
            netns: netns_name(prefix, n, &mut taken_netns),
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

    // Explicit addresses first, so that assigned ones avoid them.
    let mut used: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (i, p) in s.pods.iter().enumerate() {
        for ip in p.ips.iter().flatten() {
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
    let mut next_host: Vec<u32> = vec![10; nodes.len()];
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
            Some(ips) => ips.clone(),
            None => {
                let (base, _) = node_pod_cidr_v4(node);
                let ip = loop {
                    let h = next_host[node];
                    if h > 254 {
                        return err(
                            &path,
                            format!(
                                "node {} has no free address left in {base}/24",
                                nodes[node].name
                            ),
                        );
                    }
                    next_host[node] += 1;
                    let o = base.octets();
                    let ip = IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], h as u8));
                    if !used.contains_key(&ip) {
                        break ip;
                    }
                };
                used.insert(ip, format!("{}/{}", p.namespace, p.name));
                vec![ip]
            }
        };
        let key = format!("{}/{}", p.namespace, p.name);
        pods.push(PodPlan {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            node,
            labels: p.labels.clone(),
            ips,
            ports: p.ports.clone(),
            netns: netns_name(
                prefix,
                &format!("{}-{}", p.namespace, p.name),
                &mut taken_netns,
            ),
            host_if: host_if_name(&key, &mut taken_if),
        });
    }

    let find_pod = |ns: &str, name: &str| {
        pods.iter()
            .position(|p| p.namespace == ns && p.name == name)
    };

    let resolve = |spec: &ProbeSpec| -> Result<ProbePlan, ScenarioError> {
        let path = &spec.path;
        let src = match &spec.from {
            Endpoint::Pod { namespace, name } => match find_pod(namespace, name) {
                Some(i) => i,
                None => {
                    return err(
                        &format!("{path}.from"),
                        format!("no pod {namespace}/{name}"),
                    );
                }
            },
            Endpoint::Host(h) => return err(&format!("{path}.from"), format!("no host {h:?}")),
        };
        let (dst_pod, candidates): (Option<usize>, Vec<IpAddr>) = match &spec.to {
            Target::Pod { namespace, name } => match find_pod(namespace, name) {
                Some(i) => (Some(i), pods[i].ips.clone()),
                None => return err(&format!("{path}.to"), format!("no pod {namespace}/{name}")),
            },
            Target::Ip(ip) => (pods.iter().position(|p| p.ips.contains(ip)), vec![*ip]),
            Target::Host(h) => return err(&format!("{path}.to"), format!("no host {h:?}")),
            Target::Service { .. } => {
                return not_supported(&format!("{path}.to"), "probes to Services");
            }
        };
        let src_families: BTreeSet<Family> = pods[src].ips.iter().map(Family::of).collect();
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
                    fmt_ips(&pods[src].ips),
                    spec.to_text,
                    fmt_ips(&candidates)
                ),
            );
        };
        let src_ip = pods[src]
            .ips
            .iter()
            .copied()
            .find(|ip| Family::of(ip) == Family::of(&dst_ip))
            .expect("family checked above");
        let dst_port = match &spec.port {
            PortRef::Number(n) => *n,
            PortRef::Name(name) => {
                let Some(t) = dst_pod else {
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
            dst_pod,
        })
    };

    let mut steps = vec![StepPlan {
        changes: Changes::default(),
        probes: s.probes.iter().map(resolve).collect::<Result<_, _>>()?,
    }];

    // Objects present as steps go, so that a delete of something absent is caught here.
    let mut present: BTreeSet<ObjectKey> = s.policies.iter().map(|o| o.key.clone()).collect();
    for (si, st) in s.steps.iter().enumerate() {
        let mut changes = Changes::default();
        for o in &st.apply {
            present.insert(o.key.clone());
            changes.apply.push(o.clone());
        }
        for (path, key) in &st.delete {
            if !present.remove(key) {
                return err(path, format!("{key} does not exist at this step"));
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
            }
        }
        let _ = si;
        steps.push(StepPlan {
            changes,
            probes: st.probes.iter().map(resolve).collect::<Result<_, _>>()?,
        });
    }

    Ok(Plan {
        prefix: prefix.to_string(),
        nodes,
        namespaces,
        pods,
        objects: s.policies.clone(),
        steps,
    })
}

fn fmt_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The protocols a pod serves, for the servers.
pub fn served(p: &PodPlan) -> impl Iterator<Item = (Protocol, u16)> + '_ {
    p.ports.iter().map(|x| (x.protocol, x.port))
}
