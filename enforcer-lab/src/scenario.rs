//! The scenario file (see `docs/scenario-format.md`): parsed strictly, so that a misspelt key
//! is an error naming the key and its path (`pods[2].lables`) instead of a silently ignored
//! field. Parsing walks a generic YAML value by hand, which gives every error the exact path
//! of the offending value. Kubernetes objects (`policies`, `apply`) are decoded strictly as the
//! agent decodes them (`enforcer_objects`: known kind and apiVersion, no unknown field, the
//! nearest known one suggested) and kept as given.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde_norway::{Mapping, Value};

/// A parse error: where (a path like `probes[3].port`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ScenarioError {
    pub path: String,
    pub reason: String,
}

fn err<T>(path: &str, reason: impl Into<String>) -> Result<T, ScenarioError> {
    Err(ScenarioError {
        path: if path.is_empty() {
            "(top level)".into()
        } else {
            path.into()
        },
        reason: reason.into(),
    })
}

pub type Labels = BTreeMap<String, String>;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port as a probe or a Service gives it: a number or a name of the target's ports.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    pub name: String,
    pub labels: Labels,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub labels: Labels,
    pub ips: Option<Vec<IpAddr>>,
    pub ports: Vec<PortSpec>,
    /// `hostNetwork: true`: the pod runs in its node's own network namespace, with the node's
    /// addresses (no `ips`); its ports are host processes of that node.
    pub host_network: bool,
}

/// How a node connects its pods (the scenario's `cni`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cni {
    /// Each pod has its own routed veth, as Calico and Cilium do.
    #[default]
    Routed,
    /// The node's pods share a Linux bridge (`cni0`) holding the pod CIDR's first address, as
    /// flannel and K3s do.
    Bridge,
}

/// An address prefix with no host bits set (`10.42.2.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(*a) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(*a) & mask == u128::from(net)
            }
            _ => false,
        }
    }

    /// The `n`th address of the prefix (0 is the network address); `None` past its end.
    pub fn nth(&self, n: u128) -> Option<IpAddr> {
        match self.addr {
            IpAddr::V4(net) => {
                let size = 1u128 << (32 - u32::from(self.len));
                (n < size).then(|| IpAddr::V4((u32::from(net) + n as u32).into()))
            }
            IpAddr::V6(net) => {
                let bits = 128 - u32::from(self.len);
                (bits >= 127 || n < (1u128 << bits))
                    .then(|| IpAddr::V6((u128::from(net) + n).into()))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not a CIDR like 10.42.2.0/24");
        let (a, l) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let len: u8 = l.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(bad());
        }
        let c = Cidr { addr, len };
        let truncated = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        if truncated != addr {
            return Err(format!(
                "{s:?} has host bits set (the prefix is {truncated}/{len})"
            ));
        }
        Ok(c)
    }
}

/// A lab node (an entry of `nodes`: a name, or an object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    /// The node's own addresses on the fabric (default: assigned).
    pub ips: Option<Vec<IpAddr>>,
    /// Where the node's pods take their addresses when they give none (default: assigned).
    pub pod_cidr: Option<Cidr>,
    pub cni: Cni,
    /// The node's labels as given (the lab adds `kubernetes.io/hostname` and
    /// `kubernetes.io/os`).
    pub labels: Labels,
    /// Host processes listening in the node's own network namespace (no names).
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: PortRef,
    pub protocol: Protocol,
}

/// A ClusterIP Service, from the scenario's `services` or a `kind: Service` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Where it is in the file, for messages.
    pub path: String,
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Option<IpAddr>,
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
}

/// The source of a probe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Pod {
        namespace: String,
        name: String,
    },
    Host(String),
    /// `node:NAME`: a process in the node's own network namespace.
    Node(String),
}

/// The destination of a probe.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Pod {
        namespace: String,
        name: String,
    },
    Host(String),
    Ip(IpAddr),
    Service {
        namespace: String,
        name: String,
    },
    /// `node:NAME`: the node's own address (a node port, or a host-networked pod's).
    Node(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Where it is in the file (`steps[1].probes[0]`), for messages.
    pub path: String,
    /// `from` and `to` exactly as written, for output.
    pub from_text: String,
    pub to_text: String,
    pub from: Endpoint,
    pub to: Target,
    pub port: PortRef,
    pub protocol: Protocol,
    pub expect: Option<Verdict>,
    pub family: Option<Family>,
}

/// A Kubernetes object kept as given, with its identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub path: String,
    pub key: ObjectKey,
    pub value: serde_json::Value,
    /// For `kind: Service`: what the lab translates.
    pub service: Option<ServiceSpec>,
}

/// kind, namespace (a namespaced kind's defaults to `default`, as `kubectl apply` without
/// `-n`), name.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl ObjectKey {
    pub fn new(kind: &str, namespace: Option<String>, name: &str) -> Self {
        let namespaced = enforcer_objects::Kind::from_name(kind).is_some_and(|k| k.namespaced());
        let namespace = match namespace {
            None if namespaced => Some("default".to_string()),
            ns => ns,
        };
        ObjectKey {
            kind: kind.to_string(),
            namespace,
            name: name.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relabel {
    Pod {
        path: String,
        namespace: String,
        name: String,
        labels: Labels,
    },
    Namespace {
        path: String,
        name: String,
        labels: Labels,
    },
    Node {
        path: String,
        name: String,
        labels: Labels,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    pub apply: Vec<Object>,
    pub delete: Vec<(String, ObjectKey)>,
    pub relabel: Vec<Relabel>,
    pub probes: Vec<ProbeSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// `None` when the file does not list nodes (one routed node named `node-1`).
    pub nodes: Option<Vec<NodeSpec>>,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodSpec>,
    pub hosts: Vec<HostSpec>,
    pub services: Vec<ServiceSpec>,
    pub policies: Vec<Object>,
    pub probes: Vec<ProbeSpec>,
    pub steps: Vec<StepSpec>,
}

impl Scenario {
    pub fn node_names(&self) -> Vec<String> {
        self.node_specs().into_iter().map(|n| n.name).collect()
    }

    /// The nodes, with the default (one routed node named `node-1`) when none are listed.
    pub fn node_specs(&self) -> Vec<NodeSpec> {
        self.nodes.clone().unwrap_or_else(|| {
            vec![NodeSpec {
                name: "node-1".into(),
                ips: None,
                pod_cidr: None,
                cni: Cni::Routed,
                labels: Labels::new(),
                ports: Vec::new(),
            }]
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The keys the parser accepts, where (docs/scenario-format.md names every one; a test checks).

const ROOT_KEYS: &[&str] = &[
    "nodes",
    "namespaces",
    "pods",
    "hosts",
    "services",
    "policies",
    "probes",
    "steps",
];
const NODE_KEYS: &[&str] = &["name", "labels", "ips", "podCIDR", "cni", "ports"];
const NAMESPACE_KEYS: &[&str] = &["name", "labels"];
const POD_KEYS: &[&str] = &[
    "namespace",
    "name",
    "node",
    "labels",
    "ips",
    "ports",
    "hostNetwork",
];
const POD_PORT_KEYS: &[&str] = &["name", "port", "protocol"];
const HOST_KEYS: &[&str] = &["name", "ips", "ports"];
const HOST_PORT_KEYS: &[&str] = &["port", "protocol"];
const SERVICE_KEYS: &[&str] = &["namespace", "name", "clusterIP", "selector", "ports"];
const SERVICE_PORT_KEYS: &[&str] = &["name", "port", "targetPort", "protocol"];
const PROBE_KEYS: &[&str] = &["from", "to", "port", "protocol", "expect", "family"];
const STEP_KEYS: &[&str] = &["apply", "delete", "relabel", "probes"];
const DELETE_KEYS: &[&str] = &["apiVersion", "kind", "namespace", "name"];
const RELABEL_KEYS: &[&str] = &["pod", "namespace", "node", "labels"];

/// Every mapping of a scenario file whose keys the parser checks, by its place in the file
/// (`pods[].ports[]`), with the keys it accepts there. Kubernetes objects (`policies`, `apply`)
/// are not here: their fields are the kinds' own schemas.
pub const KEYS: &[(&str, &[&str])] = &[
    ("", ROOT_KEYS),
    ("nodes[]", NODE_KEYS),
    ("nodes[].ports[]", HOST_PORT_KEYS),
    ("namespaces[]", NAMESPACE_KEYS),
    ("pods[]", POD_KEYS),
    ("pods[].ports[]", POD_PORT_KEYS),
    ("hosts[]", HOST_KEYS),
    ("hosts[].ports[]", HOST_PORT_KEYS),
    ("services[]", SERVICE_KEYS),
    ("services[].ports[]", SERVICE_PORT_KEYS),
    ("probes[]", PROBE_KEYS),
    ("steps[]", STEP_KEYS),
    ("steps[].delete[]", DELETE_KEYS),
    ("steps[].relabel[]", RELABEL_KEYS),
];

// ---------------------------------------------------------------------------------------------
// Walking the YAML value.

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A mapping whose keys are all among `allowed`.
fn mapping<'v>(v: &'v Value, path: &str, allowed: &[&str]) -> Result<&'v Mapping, ScenarioError> {
    let Value::Mapping(m) = v else {
        return err(path, format!("expected a mapping, got {}", kind_of(v)));
    };
    for k in m.keys() {
        let Value::String(k) = k else {
            return err(path, format!("keys must be strings, got {}", kind_of(k)));
        };
        if !allowed.contains(&k.as_str()) {
            return err(
                &join(path, k),
                format!("unknown key (expected one of: {})", allowed.join(", ")),
            );
        }
    }
    Ok(m)
}

/// The value of `key`, `None` when absent or null.
fn field<'v>(m: &'v Mapping, key: &str) -> Option<&'v Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn required<'v>(m: &'v Mapping, path: &str, key: &str) -> Result<&'v Value, ScenarioError> {
    field(m, key).map_or_else(|| err(&join(path, key), "required"), Ok)
}

fn string(v: &Value, path: &str) -> Result<String, ScenarioError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => err(path, "must not be empty"),
        other => err(path, format!("expected a string, got {}", kind_of(other))),
    }
}

fn sequence<'v>(v: &'v Value, path: &str) -> Result<&'v Vec<Value>, ScenarioError> {
    match v {
        Value::Sequence(s) => Ok(s),
        other => err(path, format!("expected a list, got {}", kind_of(other))),
    }
}

/// Items of an optional list field, each with its path.
fn items<'v>(
    m: &'v Mapping,
    path: &str,
    key: &str,
) -> Result<Vec<(String, &'v Value)>, ScenarioError> {
    let p = join(path, key);
    match field(m, key) {
        None => Ok(Vec::new()),
        Some(v) => Ok(sequence(v, &p)?
            .iter()
            .enumerate()
            .map(|(i, v)| (index(&p, i), v))
            .collect()),
    }
}

/// A DNS-1123 label (namespace names, node names): what Kubernetes accepts.
fn dns_label(s: &str, path: &str) -> Result<(), ScenarioError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        err(
            path,
            format!("{s:?} is not a valid name (lower-case letters, digits and '-', at most 63)"),
        )
    }
}

/// A DNS-1123 subdomain (pod names).
fn dns_subdomain(s: &str, path: &str) -> Result<(), ScenarioError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        err(
            path,
            format!("{s:?} is not a valid name (lower-case letters, digits, '-' and '.')"),
        )
    }
}

fn name_field(m: &Mapping, path: &str, key: &str) -> Result<String, ScenarioError> {
    let p = join(path, key);
    let s = string(required(m, path, key)?, &p)?;
    dns_label(&s, &p)?;
    Ok(s)
}

fn labels(v: Option<&Value>, path: &str) -> Result<Labels, ScenarioError> {
    let Some(v) = v else {
        return Ok(Labels::new());
    };
    let Value::Mapping(m) = v else {
        return err(
            path,
            format!("expected a mapping of labels, got {}", kind_of(v)),
        );
    };
    let mut out = Labels::new();
    for (k, val) in m {
        let Value::String(k) = k else {
            return err(
                path,
                format!("label keys must be strings, got {}", kind_of(k)),
            );
        };
        let p = join(path, k);
        label_key(k, &p)?;
        let val = match val {
            Value::String(s) => s.clone(),
            other => {
                return err(
                    &p,
                    format!(
                        "label values must be strings, got {} (quote it)",
                        kind_of(other)
                    ),
                );
            }
        };
        label_value(&val, &p)?;
        out.insert(k.clone(), val);
    }
    Ok(out)
}

fn label_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn label_key(k: &str, path: &str) -> Result<(), ScenarioError> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| dns_subdomain(p, path).is_ok());
    if prefix_ok && label_name_ok(name) {
        Ok(())
    } else {
        err(path, format!("{k:?} is not a valid label key"))
    }
}

fn label_value(v: &str, path: &str) -> Result<(), ScenarioError> {
    if v.is_empty() || label_name_ok(v) {
        Ok(())
    } else {
        err(path, format!("{v:?} is not a valid label value"))
    }
}

fn ip(v: &Value, path: &str) -> Result<IpAddr, ScenarioError> {
    let s = string(v, path)?;
    s.parse()
        .or_else(|_| err(path, format!("{s:?} is not an IP address")))
}

fn port_number(v: &Value, path: &str) -> Result<u16, ScenarioError> {
    match v.as_u64() {
        Some(n @ 1..=65535) => Ok(n as u16),
        _ => err(path, "expected a port number between 1 and 65535"),
    }
}

fn port_ref(v: &Value, path: &str) -> Result<PortRef, ScenarioError> {
    match v {
        Value::Number(_) => Ok(PortRef::Number(port_number(v, path)?)),
        Value::String(s) => match s.parse::<u64>() {
            // "80" in quotes: a number, the way a user means it.
            Ok(n) => Ok(PortRef::Number(port_number(
                &Value::Number(n.into()),
                path,
            )?)),
            Err(_) => {
                port_name(s, path)?;
                Ok(PortRef::Name(s.clone()))
            }
        },
        other => err(
            path,
            format!("expected a port number or name, got {}", kind_of(other)),
        ),
    }
}

/// An IANA_SVC_NAME, as Kubernetes checks container port names.
fn port_name(s: &str, path: &str) -> Result<(), ScenarioError> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        err(
            path,
            format!(
                "{s:?} is not a valid port name (at most 15 lower-case letters, digits and '-')"
            ),
        )
    }
}

fn protocol(m: &Mapping, path: &str) -> Result<Protocol, ScenarioError> {
    let p = join(path, "protocol");
    match field(m, "protocol") {
        None => Ok(Protocol::Tcp),
        Some(v) => match string(v, &p)?.as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => err(&p, format!("{other:?} is not TCP, UDP or SCTP")),
        },
    }
}

fn ports(m: &Mapping, path: &str, named: bool) -> Result<Vec<PortSpec>, ScenarioError> {
    let mut out: Vec<PortSpec> = Vec::new();
    for (p, v) in items(m, path, "ports")? {
        let allowed = if named { POD_PORT_KEYS } else { HOST_PORT_KEYS };
        let pm = mapping(v, &p, allowed)?;
        let name = match field(pm, "name") {
            None => None,
            Some(v) => {
                let s = string(v, &join(&p, "name"))?;
                port_name(&s, &join(&p, "name"))?;
                Some(s)
            }
        };
        let port = port_number(required(pm, &p, "port")?, &join(&p, "port"))?;
        let protocol = protocol(pm, &p)?;
        if let Some(n) = &name
            && out.iter().any(|o| o.name.as_ref() == Some(n))
        {
            return err(&join(&p, "name"), format!("port name {n:?} is used twice"));
        }
        if out.iter().any(|o| o.port == port && o.protocol == protocol) {
            return err(&p, format!("{protocol} port {port} is listed twice"));
        }
        out.push(PortSpec {
            name,
            port,
            protocol,
        });
    }
    Ok(out)
}

fn ips(m: &Mapping, path: &str) -> Result<Option<Vec<IpAddr>>, ScenarioError> {
    if field(m, "ips").is_none() {
        return Ok(None);
    }
    let mut out: Vec<IpAddr> = Vec::new();
    for (p, v) in items(m, path, "ips")? {
        let a = ip(v, &p)?;
        if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
            return err(&p, format!("{a} cannot be an endpoint address"));
        }
        if let IpAddr::V6(v6) = a
            && v6.segments()[0] & 0xffc0 == 0xfe80
        {
            return err(&p, format!("{a} is link-local"));
        }
        if out.contains(&a) {
            return err(&p, format!("{a} is listed twice"));
        }
        out.push(a);
    }
    if out.is_empty() {
        return err(&join(path, "ips"), "must list at least one address");
    }
    Ok(Some(out))
}

fn namespaced_name(s: &str, path: &str) -> Result<(String, String), ScenarioError> {
    match s.split_once('/') {
        Some((ns, name)) => {
            dns_label(ns, path)?;
            dns_subdomain(name, path)?;
            Ok((ns.to_string(), name.to_string()))
        }
        None => err(path, format!("{s:?} is not namespace/name")),
    }
}

/// `node:NAME`: the node's name, checked.
fn node_ref(s: &str, path: &str) -> Result<Option<String>, ScenarioError> {
    match s.strip_prefix("node:") {
        Some(name) => {
            dns_label(name, path)?;
            Ok(Some(name.to_string()))
        }
        None => Ok(None),
    }
}

fn endpoint(v: &Value, path: &str) -> Result<(String, Endpoint), ScenarioError> {
    let s = string(v, path)?;
    if let Some(name) = node_ref(&s, path)? {
        return Ok((s, Endpoint::Node(name)));
    }
    if s.contains('/') {
        let (namespace, name) = namespaced_name(&s, path)?;
        Ok((s, Endpoint::Pod { namespace, name }))
    } else if s.parse::<IpAddr>().is_ok() {
        err(
            path,
            "a probe's source must be a pod (namespace/name) or a host, not an address",
        )
    } else {
        dns_subdomain(&s, path)?;
        Ok((s.clone(), Endpoint::Host(s)))
    }
}

fn target(v: &Value, path: &str) -> Result<(String, Target), ScenarioError> {
    let s = string(v, path)?;
    if let Some(rest) = s.strip_prefix("svc:") {
        let (namespace, name) = namespaced_name(rest, path)?;
        return Ok((s, Target::Service { namespace, name }));
    }
    if let Some(name) = node_ref(&s, path)? {
        return Ok((s, Target::Node(name)));
    }
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok((s, Target::Ip(a)));
    }
    if s.contains('/') {
        let (namespace, name) = namespaced_name(&s, path)?;
        Ok((s, Target::Pod { namespace, name }))
    } else {
        dns_subdomain(&s, path)?;
        Ok((s.clone(), Target::Host(s)))
    }
}

fn probes(m: &Mapping, path: &str) -> Result<Vec<ProbeSpec>, ScenarioError> {
    let mut out = Vec::new();
    for (p, v) in items(m, path, "probes")? {
        let pm = mapping(v, &p, PROBE_KEYS)?;
        let (from_text, from) = endpoint(required(pm, &p, "from")?, &join(&p, "from"))?;
        let (to_text, to) = target(required(pm, &p, "to")?, &join(&p, "to"))?;
        let port = port_ref(required(pm, &p, "port")?, &join(&p, "port"))?;
        let protocol = protocol(pm, &p)?;
        let expect = match field(pm, "expect") {
            None => None,
            Some(v) => match string(v, &join(&p, "expect"))?.as_str() {
                "allow" => Some(Verdict::Allow),
                "deny" => Some(Verdict::Deny),
                other => {
                    return err(
                        &join(&p, "expect"),
                        format!("{other:?} is not allow or deny"),
                    );
                }
            },
        };
        let family = match field(pm, "family") {
            None => None,
            Some(v) => match v.as_u64() {
                Some(4) => Some(Family::V4),
                Some(6) => Some(Family::V6),
                _ => return err(&join(&p, "family"), "expected 4 or 6"),
            },
        };
        out.push(ProbeSpec {
            path: p,
            from_text,
            to_text,
            from,
            to,
            port,
            protocol,
            expect,
            family,
        });
    }
    Ok(out)
}

/// A Kubernetes object: a mapping with `kind` and `metadata.name`, kept as given.
fn object(v: &Value, path: &str) -> Result<Object, ScenarioError> {
    let Value::Mapping(m) = v else {
        return err(
            path,
            format!(
                "expected a Kubernetes object (a mapping), got {}",
                kind_of(v)
            ),
        );
    };
    let kind = string(required(m, path, "kind")?, &join(path, "kind"))?;
    required(m, path, "apiVersion")?;
    let mpath = join(path, "metadata");
    let Value::Mapping(meta) = required(m, path, "metadata")? else {
        return err(&mpath, "expected a mapping");
    };
    let name = string(required(meta, &mpath, "name")?, &join(&mpath, "name"))?;
    let namespace = match field(meta, "namespace") {
        None => None,
        Some(v) => Some(string(v, &join(&mpath, "namespace"))?),
    };
    if matches!(kind.as_str(), "Pod" | "Namespace") {
        return err(
            &join(path, "kind"),
            format!(
                "{kind} objects are made by the lab: declare them under `{}` instead",
                if kind == "Pod" { "pods" } else { "namespaces" }
            ),
        );
    }
    let value = serde_json::to_value(v)
        .or_else(|e| err(path, format!("cannot be represented as JSON: {e}")))?;
    // Strictly, as the agent reads it: a known kind and apiVersion, no unknown field.
    enforcer_objects::decode(&value).or_else(|e| err(path, e.to_string()))?;
    let service = if kind == "Service" {
        Some(service_object(m, path, namespace.as_deref(), &name)?)
    } else {
        None
    };
    Ok(Object {
        path: path.to_string(),
        key: ObjectKey::new(&kind, namespace, &name),
        value,
        service,
    })
}

/// The ports of a Service (`strict`: the scenario's `services`, where unknown keys are errors;
/// otherwise a Kubernetes object, whose fields the strict decoder has checked already).
fn service_ports(m: &Mapping, path: &str, strict: bool) -> Result<Vec<ServicePort>, ScenarioError> {
    let mut out: Vec<ServicePort> = Vec::new();
    // (Kubernetes wants a name on each port of a multi-port Service; the lab does not insist,
    // probes name ports by number too.)
    for (pp, v) in &items(m, path, "ports")? {
        let pm = if strict {
            mapping(v, pp, SERVICE_PORT_KEYS)?
        } else {
            match v {
                Value::Mapping(pm) => pm,
                other => return err(pp, format!("expected a mapping, got {}", kind_of(other))),
            }
        };
        let name = match field(pm, "name") {
            None => None,
            Some(v) => {
                let s = string(v, &join(pp, "name"))?;
                dns_label(&s, &join(pp, "name"))?;
                Some(s)
            }
        };
        let port = port_number(required(pm, pp, "port")?, &join(pp, "port"))?;
        let target_port = match field(pm, "targetPort") {
            None => PortRef::Number(port),
            Some(v) => port_ref(v, &join(pp, "targetPort"))?,
        };
        let protocol = protocol(pm, pp)?;
        if let Some(n) = &name
            && out.iter().any(|o| o.name.as_ref() == Some(n))
        {
            return err(&join(pp, "name"), format!("port name {n:?} is used twice"));
        }
        if out.iter().any(|o| o.port == port && o.protocol == protocol) {
            return err(pp, format!("{protocol} port {port} is listed twice"));
        }
        out.push(ServicePort {
            name,
            port,
            target_port,
            protocol,
        });
    }
    if out.is_empty() {
        return err(&join(path, "ports"), "a Service needs at least one port");
    }
    Ok(out)
}

/// A `kind: Service` object (apiVersion v1): only ClusterIP Services with a cluster IP.
fn service_object(
    m: &Mapping,
    path: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<ServiceSpec, ScenarioError> {
    let mpath = join(path, "metadata");
    dns_label(name, &join(&mpath, "name"))?;
    let namespace = namespace.unwrap_or("default").to_string();
    dns_label(&namespace, &join(&mpath, "namespace"))?;
    let spath = join(path, "spec");
    let Value::Mapping(spec) = required(m, path, "spec")? else {
        return err(&spath, "expected a mapping");
    };
    if let Some(t) = field(spec, "type") {
        let t = string(t, &join(&spath, "type"))?;
        if t != "ClusterIP" {
            return err(
                &join(&spath, "type"),
                format!("the lab translates ClusterIP Services only, not {t}"),
            );
        }
    }
    let mut cluster_ip = None;
    if let Some(v) = field(spec, "clusterIP") {
        let p = join(&spath, "clusterIP");
        if v.as_str() == Some("None") {
            return err(&p, "headless Services (clusterIP: None) are not supported");
        }
        cluster_ip = Some(ip(v, &p)?);
    }
    for (p, v) in items(spec, &spath, "clusterIPs")? {
        let a = ip(v, &p)?;
        match cluster_ip {
            None => cluster_ip = Some(a),
            Some(c) if c == a => {}
            Some(c) if c.is_ipv4() == a.is_ipv4() => {
                return err(&p, format!("{a} differs from spec.clusterIP {c}"));
            }
            // A second family: the lab translates the first cluster IP only.
            Some(_) => {}
        }
    }
    let selector = labels(field(spec, "selector"), &join(&spath, "selector"))?;
    Ok(ServiceSpec {
        path: path.to_string(),
        namespace,
        name: name.to_string(),
        cluster_ip,
        selector,
        ports: service_ports(spec, &spath, false)?,
    })
}

fn objects(m: &Mapping, path: &str, key: &str) -> Result<Vec<Object>, ScenarioError> {
    let mut out: Vec<Object> = Vec::new();
    for (p, v) in items(m, path, key)? {
        let o = object(v, &p)?;
        if let Some(prev) = out.iter().find(|x| x.key == o.key) {
            return err(&p, format!("{} is already given at {}", o.key, prev.path));
        }
        out.push(o);
    }
    Ok(out)
}

fn step(v: &Value, path: &str) -> Result<StepSpec, ScenarioError> {
    let m = mapping(v, path, STEP_KEYS)?;
    let apply = objects(m, path, "apply")?;
    let mut delete = Vec::new();
    for (p, v) in items(m, path, "delete")? {
        let dm = mapping(v, &p, DELETE_KEYS)?;
        let kind = string(required(dm, &p, "kind")?, &join(&p, "kind"))?;
        let name = string(required(dm, &p, "name")?, &join(&p, "name"))?;
        let namespace = match field(dm, "namespace") {
            None => None,
            Some(v) => Some(string(v, &join(&p, "namespace"))?),
        };
        delete.push((p, ObjectKey::new(&kind, namespace, &name)));
    }
    let mut relabel = Vec::new();
    for (p, v) in items(m, path, "relabel")? {
        let rm = mapping(v, &p, RELABEL_KEYS)?;
        let lp = join(&p, "labels");
        let new_labels = labels(Some(required(rm, &p, "labels")?), &lp)?;
        match (field(rm, "pod"), field(rm, "namespace"), field(rm, "node")) {
            (Some(pod), None, None) => {
                let pp = join(&p, "pod");
                let (namespace, name) = namespaced_name(&string(pod, &pp)?, &pp)?;
                relabel.push(Relabel::Pod {
                    path: p,
                    namespace,
                    name,
                    labels: new_labels,
                });
            }
            (None, Some(ns), None) => {
                let np = join(&p, "namespace");
                let name = string(ns, &np)?;
                dns_label(&name, &np)?;
                relabel.push(Relabel::Namespace {
                    path: p,
                    name,
                    labels: new_labels,
                });
            }
            (None, None, Some(node)) => {
                let np = join(&p, "node");
                let name = string(node, &np)?;
                dns_label(&name, &np)?;
                relabel.push(Relabel::Node {
                    path: p,
                    name,
                    labels: new_labels,
                });
            }
            _ => return err(&p, "give exactly one of `pod`, `namespace` and `node`"),
        }
    }
    let probes = probes(m, path)?;
    Ok(StepSpec {
        apply,
        delete,
        relabel,
        probes,
    })
}

/// Kubernetes objects from a YAML file (one or more documents, or a `List`), as `kubectl apply
/// -f` takes them: for `lab apply` and `lab delete` on a lab left running.
pub fn parse_objects(text: &str) -> Result<Vec<Object>, ScenarioError> {
    use serde::Deserialize;
    let mut out: Vec<Object> = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let path = format!("document {}", i + 1);
        let v = Value::deserialize(de).or_else(|e| err(&path, format!("not valid YAML: {e}")))?;
        if v.is_null() {
            continue;
        }
        let json = serde_json::to_value(&v)
            .or_else(|e| err(&path, format!("cannot be represented as JSON: {e}")))?;
        // A list (`kind: List`, or a typed one like NetworkPolicyList), its own fields checked.
        let found =
            match enforcer_objects::list_items(&json).or_else(|e| err(&path, e.to_string()))? {
                Some(list) => list
                    .iter()
                    .enumerate()
                    .map(|(j, item)| {
                        let p = index(&join(&path, "items"), j);
                        let item: Value = serde_norway::to_value(item)
                            .or_else(|e| err(&p, format!("cannot be read: {e}")))?;
                        object(&item, &p)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => vec![object(&v, &path)?],
            };
        for o in found {
            if let Some(prev) = out.iter().find(|x| x.key == o.key) {
                return err(
                    &o.path,
                    format!("{} is already given at {}", o.key, prev.path),
                );
            }
            out.push(o);
        }
    }
    if out.is_empty() {
        return err("", "no objects in the file");
    }
    Ok(out)
}

/// A probe given on the command line (`lab probe`): checked as a scenario's probe is.
pub fn parse_probe(
    from: &str,
    to: &str,
    port: &str,
    protocol: &str,
    family: Option<u8>,
) -> Result<ProbeSpec, ScenarioError> {
    let mut m = Mapping::new();
    m.insert("from".into(), from.into());
    m.insert("to".into(), to.into());
    m.insert("port".into(), port.into());
    m.insert("protocol".into(), protocol.to_ascii_uppercase().into());
    if let Some(f) = family {
        m.insert("family".into(), u64::from(f).into());
    }
    let mut root = Mapping::new();
    root.insert("probes".into(), Value::Sequence(vec![Value::Mapping(m)]));
    // Errors name the argument (`port: …`), not a place in a file (`probes[0].port: …`).
    let mut v = probes(&root, "").map_err(|mut e| {
        e.path = e.path.replacen("probes[0].", "", 1);
        e
    })?;
    let mut p = v.pop().expect("one probe in, one out");
    p.path = "probe".into();
    Ok(p)
}

/// An entry of `nodes`: a name, or `{name, labels, ips, podCIDR, cni, ports}`.
fn node(v: &Value, path: &str) -> Result<NodeSpec, ScenarioError> {
    if let Value::String(_) = v {
        let name = string(v, path)?;
        dns_label(&name, path)?;
        return Ok(NodeSpec {
            name,
            ips: None,
            pod_cidr: None,
            cni: Cni::Routed,
            labels: Labels::new(),
            ports: Vec::new(),
        });
    }
    let nm = mapping(v, path, NODE_KEYS)?;
    let name = name_field(nm, path, "name")?;
    let labels = labels(field(nm, "labels"), &join(path, "labels"))?;
    let ports = ports(nm, path, false)?;
    let ips = ips(nm, path)?;
    let pod_cidr = match field(nm, "podCIDR") {
        None => None,
        Some(v) => {
            let p = join(path, "podCIDR");
            let c: Cidr = string(v, &p)?.parse().or_else(|e: String| err(&p, e))?;
            let max = if c.addr.is_ipv4() { 32 } else { 128 };
            if max - c.len < 2 {
                return err(
                    &p,
                    format!("{c} is too small (the bridge takes its first address)"),
                );
            }
            Some(c)
        }
    };
    let cni = match field(nm, "cni") {
        None => Cni::Routed,
        Some(v) => {
            let p = join(path, "cni");
            match string(v, &p)?.as_str() {
                "routed" => Cni::Routed,
                "bridge" => Cni::Bridge,
                other => return err(&p, format!("{other:?}: expected routed or bridge")),
            }
        }
    };
    Ok(NodeSpec {
        name,
        ips,
        pod_cidr,
        cni,
        labels,
        ports,
    })
}

/// Parses a scenario file's text.
pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    let root: Value =
        serde_norway::from_str(text).or_else(|e| err("", format!("not valid YAML: {e}")))?;
    if root.is_null() {
        return err("", "the file is empty");
    }
    let m = mapping(&root, "", ROOT_KEYS)?;

    let nodes = match field(m, "nodes") {
        None => None,
        Some(_) => {
            let mut out: Vec<NodeSpec> = Vec::new();
            for (p, v) in items(m, "", "nodes")? {
                let n = node(v, &p)?;
                if out.iter().any(|o| o.name == n.name) {
                    return err(&p, format!("node {:?} is listed twice", n.name));
                }
                out.push(n);
            }
            if out.is_empty() {
                return err("nodes", "must list at least one node");
            }
            Some(out)
        }
    };

    let mut namespaces: Vec<NamespaceSpec> = Vec::new();
    for (p, v) in items(m, "", "namespaces")? {
        let nm = mapping(v, &p, NAMESPACE_KEYS)?;
        let name = name_field(nm, &p, "name")?;
        if namespaces.iter().any(|n| n.name == name) {
            return err(
                &join(&p, "name"),
                format!("namespace {name:?} is listed twice"),
            );
        }
        let labels = labels(field(nm, "labels"), &join(&p, "labels"))?;
        namespaces.push(NamespaceSpec { name, labels });
    }

    let mut pods: Vec<PodSpec> = Vec::new();
    for (p, v) in items(m, "", "pods")? {
        let pm = mapping(v, &p, POD_KEYS)?;
        let namespace = name_field(pm, &p, "namespace")?;
        let name = string(required(pm, &p, "name")?, &join(&p, "name"))?;
        dns_subdomain(&name, &join(&p, "name"))?;
        if pods
            .iter()
            .any(|x| x.namespace == namespace && x.name == name)
        {
            return err(&p, format!("pod {namespace}/{name} is listed twice"));
        }
        let node = match field(pm, "node") {
            None => None,
            Some(v) => Some(string(v, &join(&p, "node"))?),
        };
        let host_network = match field(pm, "hostNetwork") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return err(
                    &join(&p, "hostNetwork"),
                    format!("expected true or false, got {}", kind_of(other)),
                );
            }
        };
        let ips = ips(pm, &p)?;
        if host_network && ips.is_some() {
            return err(
                &join(&p, "ips"),
                "a host-networked pod has its node's addresses: give no `ips`",
            );
        }
        pods.push(PodSpec {
            labels: labels(field(pm, "labels"), &join(&p, "labels"))?,
            ips,
            host_network,
            ports: ports(pm, &p, true)?,
            namespace,
            name,
            node,
        });
    }

    let mut hosts: Vec<HostSpec> = Vec::new();
    for (p, v) in items(m, "", "hosts")? {
        let hm = mapping(v, &p, HOST_KEYS)?;
        let name = string(required(hm, &p, "name")?, &join(&p, "name"))?;
        dns_subdomain(&name, &join(&p, "name"))?;
        if hosts.iter().any(|h| h.name == name) {
            return err(&join(&p, "name"), format!("host {name:?} is listed twice"));
        }
        let Some(ips) = ips(hm, &p)? else {
            return err(&join(&p, "ips"), "required");
        };
        hosts.push(HostSpec {
            ports: ports(hm, &p, false)?,
            name,
            ips,
        });
    }

    let mut services: Vec<ServiceSpec> = Vec::new();
    for (p, v) in items(m, "", "services")? {
        let sm = mapping(v, &p, SERVICE_KEYS)?;
        let namespace = name_field(sm, &p, "namespace")?;
        let name = name_field(sm, &p, "name")?;
        let cluster_ip = match field(sm, "clusterIP") {
            None => None,
            Some(v) => Some(ip(v, &join(&p, "clusterIP"))?),
        };
        let selector = labels(field(sm, "selector"), &join(&p, "selector"))?;
        if services
            .iter()
            .any(|x| x.namespace == namespace && x.name == name)
        {
            return err(&p, format!("Service {namespace}/{name} is listed twice"));
        }
        services.push(ServiceSpec {
            ports: service_ports(sm, &p, true)?,
            path: p,
            namespace,
            name,
            cluster_ip,
            selector,
        });
    }

    let policies = objects(m, "", "policies")?;
    let probes = probes(m, "")?;
    let mut steps = Vec::new();
    for (p, v) in items(m, "", "steps")? {
        steps.push(step(v, &p)?);
    }
    Ok(Scenario {
        nodes,
        namespaces,
        pods,
        hosts,
        services,
        policies,
        probes,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "
namespaces:
  - {name: x, labels: {ns: x}}
pods:
  - {namespace: x, name: a, labels: {pod: a}, ports: [{name: serve-80-tcp, port: 80, protocol: TCP}]}
  - {namespace: x, name: b, ips: [10.42.1.10, 'fd00:42::1:10']}
";

    fn error_of(text: &str) -> ScenarioError {
        parse(text).expect_err("should not parse")
    }

    #[test]
    fn the_contract_example_parses() {
        let text = "
nodes: [node-1, node-2]
namespaces:
  - name: x
    labels: {ns: x}
pods:
  - namespace: x
    name: a
    node: node-1
    labels: {pod: a}
    ips: [10.42.1.10, \"fd00:42::1:10\"]
    ports:
      - {name: serve-80-tcp, port: 80, protocol: TCP}
      - {name: serve-81-udp, port: 81, protocol: UDP}
hosts:
  - name: ext-1
    ips: [192.0.2.10]
    ports: [{port: 80, protocol: TCP}]
services:
  - namespace: x
    name: s-x-a
    clusterIP: 10.96.0.10
    selector: {pod: a}
    ports: [{name: http, port: 8080, targetPort: 80, protocol: TCP}]
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny-all, namespace: x}
    spec: {podSelector: {}, policyTypes: [Ingress]}
probes:
  - {from: x/a, to: x/b, port: 80, protocol: TCP, expect: allow}
  - {from: x/a, to: ext-1, port: 80, protocol: TCP}
  - {from: x/a, to: \"x/b\", port: serve-81-udp, protocol: UDP}
  - {from: x/a, to: svc:x/s-x-a, port: 8080, protocol: TCP, family: 4}
  - {from: x/a, to: 192.0.2.10, port: 80, protocol: SCTP, expect: deny}
steps:
  - apply:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow, namespace: x}
        spec: {podSelector: {}}
    delete: [ {kind: NetworkPolicy, namespace: x, name: deny-all} ]
    relabel: [ {pod: x/a, labels: {pod: a, role: db}}, {namespace: x, labels: {ns: y}} ]
    probes: [ {from: x/a, to: x/b, port: 80} ]
";
        let s = parse(text).unwrap();
        assert_eq!(s.node_names(), vec!["node-1", "node-2"]);
        assert_eq!(s.pods[0].ports[1].protocol, Protocol::Udp);
        assert_eq!(
            s.hosts[0].ips,
            vec!["192.0.2.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(s.services[0].ports[0].target_port, PortRef::Number(80));
        assert_eq!(
            s.policies[0].key,
            ObjectKey::new("NetworkPolicy", Some("x".into()), "deny-all")
        );
        assert_eq!(s.probes[1].to, Target::Host("ext-1".into()));
        assert_eq!(s.probes[2].port, PortRef::Name("serve-81-udp".into()));
        assert_eq!(
            s.probes[3].to,
            Target::Service {
                namespace: "x".into(),
                name: "s-x-a".into()
            }
        );
        assert_eq!(s.probes[3].family, Some(Family::V4));
        assert_eq!(s.probes[4].to, Target::Ip("192.0.2.10".parse().unwrap()));
        assert_eq!(s.probes[4].expect, Some(Verdict::Deny));
        let st = &s.steps[0];
        assert_eq!(st.apply.len(), 1);
        assert_eq!(st.delete[0].1.name, "deny-all");
        assert_eq!(st.relabel.len(), 2);
        assert_eq!(st.probes[0].protocol, Protocol::Tcp, "TCP by default");
        assert_eq!(st.probes[0].path, "steps[0].probes[0]");
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let cases = [
            (format!("{BASE}probe: []\n"), "probe"),
            (
                "pods:\n  - {namespace: x, name: a}\n  - {namespace: x, name: b}\n  - {namespace: x, name: c, lables: {a: b}}\n".to_string(),
                "pods[2].lables",
            ),
            (
                format!("{BASE}probes: [{{from: x/a, to: x/b, port: 80, expct: allow}}]\n"),
                "probes[0].expct",
            ),
            (
                "pods: [{namespace: x, name: a, ports: [{port: 80}, {port: 81, protocl: UDP}]}]\n"
                    .to_string(),
                "pods[0].ports[1].protocl",
            ),
            (
                format!("{BASE}steps: [{{probes: []}}, {{relabel: [{{pod: x/a, lables: {{}}}}]}}]\n"),
                "steps[1].relabel[0].lables",
            ),
            ("namespaces: [{name: x, label: {}}]\n".to_string(), "namespaces[0].label"),
            (
                "hosts: [{name: h, ips: [192.0.2.1], ports: [{name: p, port: 1}]}]\n".to_string(),
                "hosts[0].ports[0].name",
            ),
            (
                "services: [{namespace: x, name: s, ports: [{port: 1, target: 2}]}]\n".to_string(),
                "services[0].ports[0].target",
            ),
            (
                format!("{BASE}steps: [{{delete: [{{kind: NetworkPolicy, nmae: x}}]}}]\n"),
                "steps[0].delete[0].nmae",
            ),
        ];
        for (text, path) in cases {
            let e = error_of(&text);
            assert_eq!(e.path, path, "{text}");
            assert!(e.reason.starts_with("unknown key"), "{e}");
        }
    }

    #[test]
    fn bad_values_say_where_and_why() {
        let cases = [
            (
                "pods: [{namespace: x, name: a, ports: [{port: 80, protocol: tcp}]}]",
                "pods[0].ports[0].protocol",
                "is not TCP",
            ),
            (
                "pods: [{namespace: x, name: a, ports: [{port: 70000}]}]",
                "pods[0].ports[0].port",
                "between 1 and 65535",
            ),
            (
                "pods: [{namespace: x, name: a, ips: [10.0.0.300]}]",
                "pods[0].ips[0]",
                "not an IP address",
            ),
            (
                "pods: [{namespace: x, name: a, labels: {tier: 1}}]",
                "pods[0].labels.tier",
                "must be strings",
            ),
            (
                "pods: [{namespace: X, name: a}]",
                "pods[0].namespace",
                "not a valid name",
            ),
            ("pods: [{namespace: x}]", "pods[0].name", "required"),
            (
                "pods: [{namespace: x, name: a}, {namespace: x, name: a}]",
                "pods[1]",
                "listed twice",
            ),
            (
                "probes: [{from: x/a, to: x/b, port: 80, expect: maybe}]",
                "probes[0].expect",
                "not allow or deny",
            ),
            (
                "probes: [{from: x/a, to: x/b, port: 80, family: 5}]",
                "probes[0].family",
                "4 or 6",
            ),
            (
                "probes: [{from: 10.0.0.1, to: x/b, port: 80}]",
                "probes[0].from",
                "not an address",
            ),
            (
                "probes: [{from: x/a, to: x/b}]",
                "probes[0].port",
                "required",
            ),
            (
                "probes: [{from: x/a, to: x/b, port: Serve_80}]",
                "probes[0].port",
                "not a valid port name",
            ),
            ("policies: [42]", "policies[0]", "Kubernetes object"),
            (
                "policies: [{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {}}]",
                "policies[0].metadata.name",
                "required",
            ),
            (
                "policies: [{apiVersion: v1, kind: Pod, metadata: {name: p}}]",
                "policies[0].kind",
                "declare them under `pods`",
            ),
            (
                "steps: [{relabel: [{pod: x/a, namespace: x, labels: {}}]}]",
                "steps[0].relabel[0]",
                "exactly one",
            ),
            ("nodes: []", "nodes", "at least one"),
            (
                "nodes: [{name: n, cni: calico}]",
                "nodes[0].cni",
                "routed or bridge",
            ),
            (
                "nodes: [{name: n, podCIDR: 10.42.1.1/24}]",
                "nodes[0].podCIDR",
                "host bits",
            ),
            (
                "nodes: [{name: n, podCIDR: 10.42.1.0}]",
                "nodes[0].podCIDR",
                "not a CIDR",
            ),
            (
                "nodes: [{name: n, podCIDR: 10.42.1.0/31}]",
                "nodes[0].podCIDR",
                "too small",
            ),
            (
                "nodes: [{name: n, mtu: 1400}]",
                "nodes[0].mtu",
                "unknown key",
            ),
            (
                "nodes: [{name: n, labels: {zone: 1}}]",
                "nodes[0].labels.zone",
                "quote it",
            ),
            (
                "nodes: [{name: n, ports: [{name: ssh, port: 22}]}]",
                "nodes[0].ports[0].name",
                "unknown key",
            ),
            (
                "pods: [{namespace: x, name: a, hostNetwork: true, ips: [10.0.0.1]}]",
                "pods[0].ips",
                "give no `ips`",
            ),
            (
                "pods: [{namespace: x, name: a, hostNetwork: yes please}]",
                "pods[0].hostNetwork",
                "true or false",
            ),
            (
                "probes: [{from: \"node:Node1\", to: x/a, port: 80}]",
                "probes[0].from",
                "not a valid name",
            ),
            (
                "steps: [{relabel: [{node: n, pod: x/a, labels: {}}]}]",
                "steps[0].relabel[0]",
                "exactly one",
            ),
            ("nodes: [{cni: bridge}]", "nodes[0].name", "required"),
            ("nodes: [n, {name: n}]", "nodes[1]", "listed twice"),
            ("pods: {a: b}", "pods", "expected a list"),
        ];
        for (text, path, why) in cases {
            let e = error_of(text);
            assert_eq!(e.path, path, "{text}: {e}");
            assert!(e.reason.contains(why), "{text}: {e}");
        }
        assert!(error_of("").reason.contains("empty"));
        assert!(error_of("a: [").reason.contains("not valid YAML"));
        assert!(error_of("- 1").reason.contains("expected a mapping"));
    }

    #[test]
    fn nodes_are_names_or_objects() {
        let s = parse(
            "nodes:\n  - node-1\n  - {name: node-2, cni: bridge, podCIDR: 10.42.2.0/24, ips: [172.18.0.12]}\n  - {name: node-3, cni: routed}",
        )
        .unwrap();
        let n = s.node_specs();
        assert_eq!(n[0].cni, Cni::Routed);
        assert_eq!(n[1].cni, Cni::Bridge);
        assert_eq!(n[1].pod_cidr, Some("10.42.2.0/24".parse().unwrap()));
        assert_eq!(n[1].ips, Some(vec!["172.18.0.12".parse().unwrap()]));
        assert_eq!(n[2].pod_cidr, None);
        let s = parse(
            "nodes: [{name: n1, labels: {zone: a}, ports: [{port: 22}, {port: 53, protocol: UDP}]}]\npods: [{namespace: x, name: h, hostNetwork: true, ports: [{name: metrics, port: 9100}]}]\nprobes: [{from: \"node:n1\", to: \"node:n1\", port: 22}]\nsteps: [{relabel: [{node: n1, labels: {zone: b}}]}]",
        )
        .unwrap();
        let n = &s.node_specs()[0];
        assert_eq!(n.labels["zone"], "a");
        assert_eq!(n.ports[1].protocol, Protocol::Udp);
        assert!(s.pods[0].host_network);
        assert_eq!(s.probes[0].from, Endpoint::Node("n1".into()));
        assert_eq!(s.probes[0].to, Target::Node("n1".into()));
        assert!(matches!(&s.steps[0].relabel[0], Relabel::Node { name, .. } if name == "n1"));
        let c: Cidr = "fd00:42:2::/64".parse().unwrap();
        assert!(c.contains(&"fd00:42:2::5".parse().unwrap()));
        assert!(!c.contains(&"fd00:42:3::5".parse().unwrap()));
        assert_eq!(c.nth(1), Some("fd00:42:2::1".parse().unwrap()));
        let c: Cidr = "10.42.2.0/24".parse().unwrap();
        assert_eq!(c.nth(255), Some("10.42.2.255".parse().unwrap()));
        assert_eq!(c.nth(256), None);
    }

    #[test]
    fn quoted_numbers_are_ports_and_policies_keep_their_content() {
        let s = parse(
            "probes: [{from: x/a, to: x/b, port: \"80\"}]\npolicies:\n  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {name: p}\n    spec: {podSelector: {matchLabels: {a: b}}, ingress: [{}]}\n",
        )
        .unwrap();
        assert_eq!(s.probes[0].port, PortRef::Number(80));
        let p = &s.policies[0];
        assert_eq!(p.key.namespace.as_deref(), Some("default"));
        assert_eq!(
            p.value["spec"]["podSelector"]["matchLabels"]["a"],
            serde_json::json!("b")
        );
        assert_eq!(p.value["spec"]["ingress"], serde_json::json!([{}]));
    }

    #[test]
    fn object_files_and_cli_probes() {
        let objs = parse_objects(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: List\nitems:\n  - {apiVersion: v1, kind: Service, metadata: {name: s}, spec: {selector: {a: b}, ports: [{port: 80}]}}\n",
        )
        .unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1].key, ObjectKey::new("Service", None, "s"));
        assert_eq!(objs[1].key.namespace.as_deref(), Some("default"));
        assert_eq!(objs[1].service.as_ref().unwrap().ports[0].port, 80);
        let e = parse_objects("kind: Pod\napiVersion: v1\nmetadata: {name: a}\n").unwrap_err();
        assert_eq!(e.path, "document 1.kind");
        let e = parse_objects(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {type: NodePort, ports: [{port: 80}]}\n",
        )
        .unwrap_err();
        assert!(e.reason.contains("ClusterIP Services only"), "{e}");
        assert!(parse_objects("---\n").is_err());

        let p = parse_probe("x/a", "svc:x/s", "http", "udp", Some(6)).unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.port, PortRef::Name("http".into()));
        assert_eq!(p.family, Some(Family::V6));
        let e = parse_probe("x/a", "x/b", "80", "ICMP", None).unwrap_err();
        assert_eq!(e.path, "protocol", "the argument, not a place in a file");
    }

    #[test]
    fn kubernetes_objects_are_decoded_strictly() {
        let e = error_of(
            "policies:\n  - apiVersion: networking.k8s.io/v1\n    kind: NetworkPolicy\n    metadata: {name: p, namespace: x}\n    spec: {podSelector: {matchLables: {a: b}}}\n",
        );
        assert_eq!(e.path, "policies[0]");
        assert_eq!(
            e.reason,
            "NetworkPolicy x/p: spec.podSelector.matchLables: unknown field \"matchLables\" (did you mean matchLabels?)"
        );
        let e = error_of(
            "steps: [{apply: [{apiVersion: cilium.io/v2, kind: CiliumNetworkPolicy, metadata: {name: c}}]}]\n",
        );
        assert_eq!(e.path, "steps[0].apply[0]");
        assert!(
            e.reason
                .contains("unknown kind \"CiliumNetworkPolicy\": enforcer reads"),
            "{e}"
        );
        let e = error_of(
            "policies: [{apiVersion: networking.k8s.io/v2, kind: NetworkPolicy, metadata: {name: p}}]\n",
        );
        assert!(
            e.reason
                .contains("NetworkPolicy is read as networking.k8s.io/v1"),
            "{e}"
        );
        // `lab apply` files: a list's own fields, and its items by place.
        let e = parse_objects("apiVersion: v1\nkind: List\nitem: []\n").unwrap_err();
        assert_eq!(e.path, "document 1");
        assert!(e.reason.contains("(did you mean items?)"), "{e}");
        let e = parse_objects(
            "apiVersion: v1\nkind: List\nitems:\n  - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: p}, spec: {ingres: []}}\n",
        )
        .unwrap_err();
        assert_eq!(e.path, "document 1.items[0]");
        assert!(e.reason.contains("spec.ingres: unknown field"), "{e}");
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 4);
        parse(crate::DEMO_SCENARIO).unwrap();
    }
}
