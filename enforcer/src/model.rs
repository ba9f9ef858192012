//! The cluster as the compiler sees it: trimmed, validated Namespaces, Pods and NetworkPolicies.
//!
//! Conversion from the Kubernetes API types happens here and only here, so the compiler never
//! sees an `Option` whose meaning depends on the API's defaulting rules: every default of
//! networking.k8s.io/v1 is applied on the way in, and every invalid field is rejected with an
//! error that names the object and the field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace as KNamespace, Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KEndpointSlice;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy as KPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub type Labels = BTreeMap<String, String>;

/// `namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An object that failed validation: which object, which field, why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {reason}")]
pub struct InvalidObject {
    pub kind: &'static str,
    pub object: String,
    pub field: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
    /// Parses the API's protocol string (exact, upper case, as the API server validates it).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Always holds `kubernetes.io/metadata.name`.
    pub labels: Labels,
    /// Annotated `enforcer.io/audit: "true"`: every policy of the namespace is in audit mode.
    pub audit: bool,
}

/// The annotation that puts a NetworkPolicy, or every policy of a Namespace, in audit mode:
/// its isolation is not enforced, and what it would drop is reported as audit events.
pub const AUDIT_ANNOTATION: &str = "enforcer.io/audit";

fn annotated_audit(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(AUDIT_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// A Service, reduced to what the datapath needs: its cluster addresses, and what makes its
/// backends (the selector and the ports). Traffic to the addresses is DNATed by kube-proxy to a
/// backend, so a pod's egress to them is judged against the backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.selector`; `None` (absent or empty): the Service has no endpoints of its own
    /// (they come from EndpointSlices someone else writes: [`EndpointSlice`]).
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
}

/// One port of a Service: `port` on the cluster addresses, translated to `target` on each
/// backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`; `None`: unnamed (absent or empty).
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub target: ServiceTarget,
}

/// `targetPort`: a number, or the name of a container port of each backend pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceTarget {
    Number(u16),
    Name(String),
}

impl Service {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(self.namespace.clone(), self.name.clone())
    }
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An EndpointSlice (discovery.k8s.io/v1), reduced to what the backends of a Service without a
/// selector need: which Service, which addresses may receive its traffic, on which ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label; `None`: the slice belongs to no Service.
    pub service: Option<String>,
    /// The endpoints kube-proxy may send to (ready, or serving while terminating); FQDN
    /// slices have none (kube-proxy ignores them).
    pub endpoints: Vec<SliceEndpoint>,
    pub ports: Vec<SlicePort>,
}

/// One endpoint of a slice: its addresses (all of the slice's family).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent: ready). When not ready, the endpoint is serving while
    /// terminating, which kube-proxy uses only when no endpoint of the Service is ready.
    pub ready: bool,
}

/// One port of a slice; a Service port takes the slice port of its own name and protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// `None`: unnamed (absent or empty).
    pub name: Option<String>,
    /// `None`: no port (kube-proxy skips such a port).
    pub port: Option<u16>,
    pub protocol: Protocol,
}

impl EndpointSlice {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(self.namespace.clone(), self.name.clone())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node: Option<String>,
    pub host_network: bool,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }
    /// The container port a named port resolves to on this pod, for one protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

/// A label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.operator {
                    Operator::In => v.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => v.is_some(),
                    Operator::DoesNotExist => v.is_none(),
                }
            })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// One element of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`. `namespaces: None` means the policy's own
    /// namespace; `pods: None` means every pod of the selected namespaces.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    IpBlock(IpBlock),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    /// Every port of the protocol.
    Any,
    /// `port`..=`end` (end == port without endPort).
    Range(u16, u16),
    /// A named container port.
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortRef,
}

/// One ingress or egress rule. Empty `peers` means every peer; empty `ports` every port and
/// protocol (the API's "empty or missing" for both).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// Isolates ingress (policyTypes, defaulted).
    pub ingress_isolation: bool,
    pub egress_isolation: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Annotated `enforcer.io/audit: "true"` (see [`AUDIT_ANNOTATION`]).
    pub audit: bool,
    /// The events limit of the endpoints this policy selects (see [`EVENT_RATE_ANNOTATIONS`]).
    pub event_limit: Option<EventLimitSpec>,
}

/// Annotations that set the event limit of a policy's endpoints: a rate as iptables writes it
/// (`10/minute`, `5/second`, `2/s`, `100/hour`, `1/day`, or a bare number of events per second)
/// and a burst. K3s's kube-router names are accepted as aliases (and the misspelled
/// `kube-router.io.io/…-burst` that K3s users copy from a well-known article), so manifests
/// written for K3s keep their limits.
pub const EVENT_RATE_ANNOTATIONS: [&str; 2] = [
    "enforcer.io/event-rate",
    "kube-router.io/netpol-nflog-limit",
];
pub const EVENT_BURST_ANNOTATIONS: [&str; 3] = [
    "enforcer.io/event-burst",
    "kube-router.io/netpol-nflog-limit-burst",
    "kube-router.io.io/netpol-nflog-limit-burst",
];

/// An event limit from annotations: thousandths of an event per second, and a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventLimitSpec {
    pub rate_milli: u32,
    pub burst: u32,
}

/// kube-router's default when only one of the two annotations is given: 10/minute, burst 10.
const DEFAULT_LIMIT: EventLimitSpec = EventLimitSpec {
    rate_milli: 10_000 / 60,
    burst: 10,
};

/// Parses `N[/second|/minute|/hour|/day]` (also `/s`, `/m`, `/h`, `/d`, `/sec`, `/min`) into
/// thousandths of an event per second.
pub fn parse_rate(s: &str) -> Result<u32, String> {
    let (num, unit) = s.trim().split_once('/').unwrap_or((s.trim(), "second"));
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like 10/minute"))?;
    let per_secs: u64 = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (second, minute, hour, day)"
            ));
        }
    };
    if n == 0 {
        return Err(format!("{s:?}: the rate must be above 0"));
    }
    // The kernel counts in thousandths of an event per second: slower rates round up to that.
    let milli = (n.saturating_mul(1000) / per_secs).max(1);
    u32::try_from(milli).map_err(|_| format!("{s:?} is too high (at most 4000000/second)"))
}

fn annotated_event_limit(
    ctx: &Ctx<'_>,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<Option<EventLimitSpec>, InvalidObject> {
    let Some(a) = meta.annotations.as_ref() else {
        return Ok(None);
    };
    let find = |names: &[&'static str]| names.iter().find_map(|n| a.get(*n).map(|v| (*n, v)));
    let rate = find(&EVENT_RATE_ANNOTATIONS);
    let burst = find(&EVENT_BURST_ANNOTATIONS);
    if rate.is_none() && burst.is_none() {
        return Ok(None);
    }
    let mut out = DEFAULT_LIMIT;
    if let Some((name, v)) = rate {
        out.rate_milli =
            parse_rate(v).map_err(|r| ctx.err(format!("metadata.annotations[{name}]"), r))?;
    }
    if let Some((name, v)) = burst {
        out.burst = v.trim().parse().map_err(|_| {
            ctx.err(
                format!("metadata.annotations[{name}]"),
                format!("{v:?} is not a whole number of events"),
            )
        })?;
    }
    Ok(Some(out))
}

impl Policy {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }
}

// --- conversion ---------------------------------------------------------------------------------

pub(crate) struct Ctx<'a> {
    pub(crate) kind: &'static str,
    pub(crate) object: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> InvalidObject {
        InvalidObject {
            kind: self.kind,
            object: self.object.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub(crate) fn meta_name(
    name: &Option<String>,
    kind: &'static str,
) -> Result<String, InvalidObject> {
    match name.as_deref() {
        Some(n) if !n.is_empty() => Ok(n.to_string()),
        _ => Err(InvalidObject {
            kind,
            object: "<unnamed>".into(),
            field: "metadata.name".into(),
            reason: "is required".into(),
        }),
    }
}

/// Converts a Namespace.
pub fn namespace_from_api(ns: &KNamespace) -> Result<Namespace, InvalidObject> {
    let name = meta_name(&ns.metadata.name, "Namespace")?;
    let mut labels: Labels = ns.metadata.labels.clone().unwrap_or_default();
    // The API server always sets this label; manifests written by hand may not.
    labels.insert("kubernetes.io/metadata.name".into(), name.clone());
    Ok(Namespace {
        name,
        labels,
        audit: annotated_audit(&ns.metadata),
    })
}

/// Converts a Service: `spec.clusterIPs` (or `spec.clusterIP`); headless Services ("None") and
/// Services without an address yet have none.
pub fn service_from_api(svc: &KService) -> Result<Service, InvalidObject> {
    let name = meta_name(&svc.metadata.name, "Service")?;
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = svc.spec.as_ref();
    let mut raw: Vec<String> = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
    if raw.is_empty()
        && let Some(ip) = spec.and_then(|s| s.cluster_ip.clone())
    {
        raw.push(ip);
    }
    let mut cluster_ips = Vec::new();
    for (i, ip) in raw.iter().enumerate() {
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let parsed = ip.parse::<IpAddr>().map_err(|e| InvalidObject {
            kind: "Service",
            object: format!("{namespace}/{name}"),
            field: format!("spec.clusterIPs[{i}]"),
            reason: format!("{ip:?} is not an IP address: {e}"),
        })?;
        cluster_ips.push(parsed);
    }
    let invalid = |field: String, reason: String| InvalidObject {
        kind: "Service",
        object: format!("{namespace}/{name}"),
        field,
        reason,
    };
    let mut ports = Vec::new();
    for (i, p) in spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| {
                invalid(
                    format!("spec.ports[{i}].port"),
                    format!("{} is not a port number (1-65535)", p.port),
                )
            })?;
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => Protocol::parse(s).ok_or_else(|| {
                invalid(
                    format!("spec.ports[{i}].protocol"),
                    format!("{s:?} is not TCP, UDP or SCTP"),
                )
            })?,
        };
        let target = match &p.target_port {
            None => ServiceTarget::Number(port),
            Some(IntOrString::Int(n)) => ServiceTarget::Number(
                u16::try_from(*n).ok().filter(|n| *n != 0).ok_or_else(|| {
                    invalid(
                        format!("spec.ports[{i}].targetPort"),
                        format!("{n} is not a port number (1-65535)"),
                    )
                })?,
            ),
            Some(IntOrString::String(s)) => match s.parse::<u16>() {
                Ok(n) if n != 0 => ServiceTarget::Number(n),
                _ if !s.is_empty() => ServiceTarget::Name(s.clone()),
                _ => {
                    return Err(invalid(
                        format!("spec.ports[{i}].targetPort"),
                        "empty".into(),
                    ));
                }
            },
        };
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            protocol,
            target,
        });
    }
    let selector = spec
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
        .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok(Service {
        namespace,
        name,
        cluster_ips,
        selector,
        ports,
    })
}

/// Converts an EndpointSlice: `addressType` IPv4, IPv6 or FQDN; every address must be an
/// address of that family (an IPv4-mapped IPv6 address is refused, so it can never alias an
/// IPv4 backend); endpoints neither ready nor serving are left out.
pub fn endpoint_slice_from_api(es: &KEndpointSlice) -> Result<EndpointSlice, InvalidObject> {
    let name = meta_name(&es.metadata.name, "EndpointSlice")?;
    let namespace = es
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let object = format!("{namespace}/{name}");
    let ctx = Ctx {
        kind: "EndpointSlice",
        object: &object,
    };
    let family = match es.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "FQDN" => None,
        other => {
            return Err(ctx.err(
                "addressType",
                format!("{other:?} is not IPv4, IPv6 or FQDN"),
            ));
        }
    };
    let mut endpoints = Vec::new();
    for (i, e) in es.endpoints.iter().flatten().enumerate() {
        let field = format!("endpoints[{i}]");
        if e.addresses.is_empty() {
            return Err(ctx.err(format!("{field}.addresses"), "must have an address"));
        }
        let Some(v4) = family else {
            continue; // hostnames: kube-proxy does not use FQDN slices
        };
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            let bad =
                |why: &str| ctx.err(format!("{field}.addresses[{j}]"), format!("{a:?} {why}"));
            let ip: IpAddr = a.parse().map_err(|_| bad("is not an IP address"))?;
            let v4_mapped = matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
            if ip.is_ipv4() != v4 || v4_mapped {
                return Err(bad(&format!("is not an {} address", es.address_type)));
            }
            addresses.push(ip);
        }
        let cond = e.conditions.as_ref();
        let ready = cond.and_then(|c| c.ready).unwrap_or(true);
        let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
        if ready || serving {
            endpoints.push(SliceEndpoint { addresses, ready });
        }
    }
    let mut ports = Vec::new();
    for (i, p) in es.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let port = p
            .port
            .map(|n| {
                u16::try_from(n).ok().filter(|n| *n != 0).ok_or_else(|| {
                    ctx.err(
                        format!("{field}.port"),
                        format!("{n} is not a port number (1-65535)"),
                    )
                })
            })
            .transpose()?;
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(s) => Protocol::parse(s).ok_or_else(|| {
                ctx.err(
                    format!("{field}.protocol"),
                    format!("{s:?} is not TCP, UDP or SCTP"),
                )
            })?,
        };
        ports.push(SlicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            protocol,
        });
    }
    let service = es
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
        .cloned();
    Ok(EndpointSlice {
        namespace,
        name,
        service,
        endpoints,
        ports,
    })
}

/// The labels of a namespace that the index has not seen (a pod may arrive before it).
pub fn implicit_namespace(name: &str) -> Namespace {
    let mut labels = Labels::new();
    labels.insert("kubernetes.io/metadata.name".into(), name.to_string());
    Namespace {
        name: name.to_string(),
        labels,
        audit: false,
    }
}

/// A node as policy sees it: its labels and the addresses of `status.addresses` (what a
/// ClusterNetworkPolicy `nodes` peer selects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    pub addresses: Vec<IpAddr>,
}

/// Converts a Node: its labels and the IP addresses among its `status.addresses` (host names
/// are not addresses a packet carries).
pub fn node_from_api(node: &k8s_openapi::api::core::v1::Node) -> Result<Node, InvalidObject> {
    let name = meta_name(&node.metadata.name, "Node")?;
    let mut addresses: Vec<IpAddr> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| a.address.parse().ok())
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(Node {
        labels: node.metadata.labels.clone().unwrap_or_default(),
        name,
        addresses,
    })
}

/// Converts a Pod, keeping only what policy needs.
pub fn pod_from_api(pod: &KPod) -> Result<Pod, InvalidObject> {
    let name = meta_name(&pod.metadata.name, "Pod")?;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let object = format!("{namespace}/{name}");
    let ctx = Ctx {
        kind: "Pod",
        object: &object,
    };
    let spec = pod.spec.as_ref();
    let mut ports = Vec::new();
    if let Some(spec) = spec {
        for (ci, c) in spec.containers.iter().enumerate() {
            for (pi, p) in c.ports.iter().flatten().enumerate() {
                let field = format!("spec.containers[{ci}].ports[{pi}]");
                let port = u16::try_from(p.container_port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        ctx.err(
                            format!("{field}.containerPort"),
                            format!("{} is not a port number (1-65535)", p.container_port),
                        )
                    })?;
                let protocol = match p.protocol.as_deref() {
                    None => Protocol::Tcp,
                    Some(s) => Protocol::parse(s).ok_or_else(|| {
                        ctx.err(
                            format!("{field}.protocol"),
                            format!("unknown protocol {s:?} (TCP, UDP or SCTP)"),
                        )
                    })?,
                };
                ports.push(ContainerPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port,
                    protocol,
                });
            }
        }
    }
    let mut ips = Vec::new();
    if let Some(status) = &pod.status {
        let listed: Vec<&str> = match &status.pod_ips {
            Some(list) if !list.is_empty() => list.iter().map(|p| p.ip.as_str()).collect(),
            _ => status.pod_ip.as_deref().into_iter().collect(),
        };
        for (i, s) in listed.iter().enumerate() {
            let ip: IpAddr = s.parse().map_err(|_| {
                ctx.err(
                    format!("status.podIPs[{i}].ip"),
                    format!("{s:?} is not an IP address"),
                )
            })?;
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    // Pods that have finished hold no address any more, whatever their status still says.
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if finished {
        ips.clear();
    }
    Ok(Pod {
        namespace,
        name,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        node: spec.and_then(|s| s.node_name.clone()),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ips,
        ports,
    })
}

pub(crate) fn selector_from_api(
    ctx: &Ctx<'_>,
    field: &str,
    sel: &KSelector,
) -> Result<Selector, InvalidObject> {
    let mut out = Selector {
        match_labels: sel.match_labels.clone().unwrap_or_default(),
        match_expressions: Vec::new(),
    };
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        if e.key.is_empty() {
            return Err(ctx.err(format!("{f}.key"), "must not be empty"));
        }
        let operator = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return Err(ctx.err(
                    format!("{f}.operator"),
                    format!("unknown operator {other:?} (In, NotIn, Exists or DoesNotExist)"),
                ));
            }
        };
        let values = e.values.clone().unwrap_or_default();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(ctx.err(
                    format!("{f}.values"),
                    format!("must be non-empty for operator {}", e.operator),
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(ctx.err(
                    format!("{f}.values"),
                    format!("must be empty for operator {}", e.operator),
                ));
            }
            _ => {}
        }
        out.match_expressions.push(Requirement {
            key: e.key.clone(),
            operator,
            values,
        });
    }
    Ok(out)
}

fn ipblock_from_api(ctx: &Ctx<'_>, field: &str, b: &IPBlock) -> Result<IpBlock, InvalidObject> {
    let cidr: IpNet = b.cidr.parse().map_err(|_| {
        ctx.err(
            format!("{field}.cidr"),
            format!("{:?} is not a CIDR", b.cidr),
        )
    })?;
    let cidr = cidr.trunc();
    if is_v4_mapped_net(&cidr) {
        return Err(ctx.err(format!("{field}.cidr"), v4_mapped_reason(&cidr)));
    }
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let net: IpNet = e
            .parse()
            .map_err(|_| ctx.err(&f, format!("{e:?} is not a CIDR")))?;
        let net = net.trunc();
        if is_v4_mapped_net(&net) {
            return Err(ctx.err(&f, v4_mapped_reason(&net)));
        }
        if !cidr.contains(&net) || net == cidr {
            return Err(ctx.err(
                &f,
                format!("{e} must be strictly within the block's cidr {cidr}"),
            ));
        }
        except.push(net);
    }
    Ok(IpBlock { cidr, except })
}

/// A prefix inside `::ffff:0:0/96`: IPv4 addresses are keyed IPv4-mapped in the maps, so such a
/// block would silently match IPv4 peers (and no IPv6 packet carries one: the datapath drops
/// them). Blocks that merely contain the range (`::/0`) are fine: IPv4 is partitioned apart.
pub(crate) fn is_v4_mapped_net(net: &IpNet) -> bool {
    match net {
        IpNet::V6(n) => {
            let mapped =
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)
                    .expect("a valid prefix");
            mapped.contains(n)
        }
        IpNet::V4(_) => false,
    }
}

pub(crate) fn v4_mapped_reason(net: &IpNet) -> String {
    format!(
        "{net} is an IPv4-mapped IPv6 block (::ffff:0:0/96), which would alias IPv4 addresses; \
         write the IPv4 block instead"
    )
}

fn peer_from_api(ctx: &Ctx<'_>, field: &str, p: &NetworkPolicyPeer) -> Result<Peer, InvalidObject> {
    let has_sel = p.pod_selector.is_some() || p.namespace_selector.is_some();
    match (&p.ip_block, has_sel) {
        (Some(_), true) => Err(ctx.err(
            field,
            "ipBlock may not be combined with podSelector or namespaceSelector",
        )),
        (Some(b), false) => Ok(Peer::IpBlock(ipblock_from_api(
            ctx,
            &format!("{field}.ipBlock"),
            b,
        )?)),
        (None, true) => Ok(Peer::Pods {
            namespaces: p
                .namespace_selector
                .as_ref()
                .map(|s| selector_from_api(ctx, &format!("{field}.namespaceSelector"), s))
                .transpose()?,
            pods: p
                .pod_selector
                .as_ref()
                .map(|s| selector_from_api(ctx, &format!("{field}.podSelector"), s))
                .transpose()?,
        }),
        (None, false) => Err(ctx.err(
            field,
            "must specify podSelector, namespaceSelector or ipBlock",
        )),
    }
}

fn port_from_api(
    ctx: &Ctx<'_>,
    field: &str,
    p: &NetworkPolicyPort,
) -> Result<PortSpec, InvalidObject> {
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some(s) => Protocol::parse(s).ok_or_else(|| {
            ctx.err(
                format!("{field}.protocol"),
                format!("unknown protocol {s:?} (TCP, UDP or SCTP)"),
            )
        })?,
    };
    let port = match (&p.port, p.end_port) {
        (None, None) => PortRef::Any,
        (None, Some(_)) => {
            return Err(ctx.err(
                format!("{field}.endPort"),
                "may only be set together with a numeric port",
            ));
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err(ctx.err(
                    format!("{field}.endPort"),
                    "may not be set with a named port",
                ));
            }
            // A numeric string is how some manifests write numbers; the API keeps it a name,
            // and so do we, but an empty name is invalid.
            if name.is_empty() || name.len() > 15 {
                return Err(ctx.err(
                    format!("{field}.port"),
                    format!("{name:?} is not a valid port name (1-15 characters)"),
                ));
            }
            PortRef::Named(name.clone())
        }
        (Some(IntOrString::Int(n)), end) => {
            let start = u16::try_from(*n).ok().filter(|p| *p != 0).ok_or_else(|| {
                ctx.err(
                    format!("{field}.port"),
                    format!("{n} is not a port number (1-65535)"),
                )
            })?;
            let end = match end {
                None => start,
                Some(e) => {
                    let e16 = u16::try_from(e).ok().ok_or_else(|| {
                        ctx.err(
                            format!("{field}.endPort"),
                            format!("{e} is not a port number (1-65535)"),
                        )
                    })?;
                    if e16 < start {
                        return Err(ctx.err(
                            format!("{field}.endPort"),
                            format!("{e} is below port {start}"),
                        ));
                    }
                    e16
                }
            };
            PortRef::Range(start, end)
        }
    };
    Ok(PortSpec { protocol, port })
}

fn rule_from_api(
    ctx: &Ctx<'_>,
    field: &str,
    peer_field: &str,
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
) -> Result<Rule, InvalidObject> {
    let mut rule = Rule::default();
    for (i, p) in peers.into_iter().flatten().enumerate() {
        rule.peers.push(peer_from_api(
            ctx,
            &format!("{field}.{peer_field}[{i}]"),
            p,
        )?);
    }
    for (i, p) in ports.into_iter().flatten().enumerate() {
        rule.ports
            .push(port_from_api(ctx, &format!("{field}.ports[{i}]"), p)?);
    }
    Ok(rule)
}

/// Converts and validates a NetworkPolicy, applying the API's defaults.
pub fn policy_from_api(p: &KPolicy) -> Result<Policy, InvalidObject> {
    let name = meta_name(&p.metadata.name, "NetworkPolicy")?;
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let object = format!("{namespace}/{name}");
    let ctx = Ctx {
        kind: "NetworkPolicy",
        object: &object,
    };
    let spec = p.spec.clone().unwrap_or_default();
    let pod_selector = match &spec.pod_selector {
        Some(s) => selector_from_api(&ctx, "spec.podSelector", s)?,
        None => Selector::default(),
    };
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        ingress.push(rule_from_api(
            &ctx,
            &format!("spec.ingress[{i}]"),
            "from",
            r.from.as_ref(),
            r.ports.as_ref(),
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        egress.push(rule_from_api(
            &ctx,
            &format!("spec.egress[{i}]"),
            "to",
            r.to.as_ref(),
            r.ports.as_ref(),
        )?);
    }
    // Defaulting of policyTypes, as the API server does it: Ingress always, Egress when the
    // policy has at least one egress rule.
    let (ingress_isolation, egress_isolation) = match spec.policy_types.as_deref() {
        None | Some([]) => (true, !egress.is_empty()),
        Some(types) => {
            let mut ing = false;
            let mut eg = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ing = true,
                    "Egress" => eg = true,
                    other => {
                        return Err(ctx.err(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (Ingress or Egress)"),
                        ));
                    }
                }
            }
            (ing, eg)
        }
    };
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        ingress_isolation,
        egress_isolation,
        ingress,
        egress,
        audit: annotated_audit(&p.metadata),
        event_limit: annotated_event_limit(&ctx, &p.metadata)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<Policy, InvalidObject> {
        let p: KPolicy = serde_norway::from_str(yaml).unwrap();
        policy_from_api(&p)
    }

    #[test]
    fn policy_types_default() {
        let p = policy("metadata: {name: a, namespace: x}\nspec: {podSelector: {}}").unwrap();
        assert!(p.ingress_isolation && !p.egress_isolation);
        let p = policy("metadata: {name: a, namespace: x}\nspec: {podSelector: {}, egress: [{}]}")
            .unwrap();
        assert!(p.ingress_isolation && p.egress_isolation);
        // An empty egress list is no egress section for defaulting.
        let p = policy("metadata: {name: a, namespace: x}\nspec: {podSelector: {}, egress: []}")
            .unwrap();
        assert!(!p.egress_isolation);
        let p = policy(
            "metadata: {name: a, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}",
        )
        .unwrap();
        assert!(!p.ingress_isolation && p.egress_isolation);
    }

    #[test]
    fn event_limit_annotations_and_kube_router_aliases() {
        assert_eq!(parse_rate("10/minute"), Ok(166));
        assert_eq!(parse_rate("5/s"), Ok(5000));
        assert_eq!(parse_rate("7"), Ok(7000));
        assert_eq!(parse_rate("24/day"), Ok(1));
        assert!(parse_rate("0/minute").is_err());
        assert!(parse_rate("1/week").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("lots").is_err());
        let policy = |ann: &str| {
            let p: KPolicy = serde_norway::from_str(&format!(
                "metadata: {{name: a, namespace: x, annotations: {{{ann}}}}}\nspec: {{}}"
            ))
            .unwrap();
            policy_from_api(&p)
        };
        let p = policy("kube-router.io/netpol-nflog-limit: 2/second").unwrap();
        assert_eq!(
            p.event_limit,
            Some(EventLimitSpec {
                rate_milli: 2000,
                burst: 10
            })
        );
        let p = policy("kube-router.io.io/netpol-nflog-limit-burst: \"3\"").unwrap();
        assert_eq!(p.event_limit.unwrap().burst, 3);
        assert_eq!(p.event_limit.unwrap().rate_milli, 166);
        let p = policy("enforcer.io/event-rate: 100/second, enforcer.io/event-burst: \"50\"");
        assert_eq!(
            p.unwrap().event_limit,
            Some(EventLimitSpec {
                rate_milli: 100_000,
                burst: 50
            })
        );
        let e = policy("enforcer.io/event-burst: many")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "NetworkPolicy x/a: metadata.annotations[enforcer.io/event-burst]: \"many\" is not a whole number of events"
        );
        assert_eq!(policy("other: x").unwrap().event_limit, None);
    }

    #[test]
    fn audit_annotation() {
        let ns: KNamespace = serde_norway::from_str(
            "metadata: {name: x, annotations: {enforcer.io/audit: \"true\"}}",
        )
        .unwrap();
        assert!(namespace_from_api(&ns).unwrap().audit);
        let ns: KNamespace = serde_norway::from_str("metadata: {name: x}").unwrap();
        assert!(!namespace_from_api(&ns).unwrap().audit);
        let p = policy(
            "metadata: {name: a, namespace: x, annotations: {enforcer.io/audit: \"True\"}}\nspec: {}",
        )
        .unwrap();
        assert!(p.audit);
    }

    #[test]
    fn invalid_fields_are_named() {
        let e = policy(
            "metadata: {name: a, namespace: x}\nspec:\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}",
        )
        .unwrap_err();
        assert_eq!(e.object, "x/a");
        assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.except[0]");
        let e = policy(
            "metadata: {name: a, namespace: x}\nspec:\n  egress:\n  - ports: [{port: 80, endPort: 79}]",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.egress[0].ports[0].endPort");
        let e = policy(
            "metadata: {name: a, namespace: x}\nspec:\n  egress:\n  - ports: [{port: http, endPort: 90}]",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.egress[0].ports[0].endPort");
        let e = policy(
            "metadata: {name: a, namespace: x}\nspec:\n  egress:\n  - ports: [{port: 80, protocol: ICMP}]",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.egress[0].ports[0].protocol");
        let e = policy(
            "metadata: {name: a, namespace: x}\nspec:\n  podSelector: {matchExpressions: [{key: a, operator: Maybe}]}",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.podSelector.matchExpressions[0].operator");
        let e = policy("metadata: {name: a, namespace: x}\nspec:\n  ingress:\n  - from: [{}]")
            .unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].from[0]");
        let e = policy(
            "metadata: {name: a, namespace: x}\nspec:\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.300/8}}]",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.cidr");
        assert!(
            e.to_string()
                .starts_with("NetworkPolicy x/a: spec.ingress[0]")
        );
    }

    #[test]
    fn an_ipv4_mapped_ipblock_is_rejected_by_name() {
        let e = policy(
            "metadata: {name: a, namespace: x}\nspec:\n  egress:\n  - to: [{ipBlock: {cidr: '::ffff:10.0.0.0/104'}}]",
        )
        .unwrap_err();
        assert_eq!(e.object, "x/a");
        assert_eq!(e.field, "spec.egress[0].to[0].ipBlock.cidr");
        assert!(e.reason.contains("IPv4-mapped"), "{e}");
        let e = policy(
            "metadata: {name: a, namespace: x}\nspec:\n  ingress:\n  - from: [{ipBlock: {cidr: '::/0', except: ['::ffff:0:0/96']}}]",
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.except[0]");
        assert!(e.reason.contains("IPv4-mapped"), "{e}");
        // A block that only contains the range stays valid.
        policy(
            "metadata: {name: a, namespace: x}\nspec:\n  ingress:\n  - from: [{ipBlock: {cidr: '::/0', except: ['fd00::/8']}}]",
        )
        .unwrap();
    }

    #[test]
    fn selectors() {
        let mut l = Labels::new();
        l.insert("a".into(), "1".into());
        let s = |yaml: &str| {
            let k: KSelector = serde_norway::from_str(yaml).unwrap();
            let ctx = Ctx {
                kind: "NetworkPolicy",
                object: "x/y",
            };
            selector_from_api(&ctx, "s", &k).unwrap()
        };
        assert!(s("{}").matches(&l));
        assert!(s("{matchLabels: null}").matches(&l));
        assert!(s("{matchLabels: {a: '1'}}").matches(&l));
        assert!(!s("{matchLabels: {a: '2'}}").matches(&l));
        assert!(s("{matchExpressions: [{key: a, operator: In, values: ['1','2']}]}").matches(&l));
        assert!(!s("{matchExpressions: [{key: a, operator: NotIn, values: ['1']}]}").matches(&l));
        assert!(s("{matchExpressions: [{key: b, operator: NotIn, values: ['1']}]}").matches(&l));
        assert!(s("{matchExpressions: [{key: a, operator: Exists}]}").matches(&l));
        assert!(s("{matchExpressions: [{key: b, operator: DoesNotExist}]}").matches(&l));
        assert!(!s("{matchExpressions: [{key: a, operator: DoesNotExist}]}").matches(&l));
    }
}
