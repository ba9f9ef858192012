//! What an end of a connection is to the datapath: a pod (and its identity), this node, another
//! node, an address inside some policy's ipBlock (a CIDR identity), or the world. And the port:
//! a number (never 0) or a named container port of the destination pod.

use std::net::IpAddr;

use serde::Serialize;

use crate::compiler::{Cluster, ip_key};
use crate::lookup::cidr_lookup;
use crate::model::{ObjectRef, Peer, Protocol};
use crate::state::MapState;
use enforcer_common::identity;

/// One end of the connection as given on the command line: a pod or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Pod(ObjectRef),
    Ip(IpAddr),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse() {
            return Ok(Endpoint::Ip(ip));
        }
        match s.split_once('/') {
            Some((ns, name))
                if !ns.is_empty()
                    && ns
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !name.is_empty()
                    && !name.contains('/') =>
            {
                Ok(Endpoint::Pod(ObjectRef::new(ns, name)))
            }
            _ => Err(format!("{s:?} is neither namespace/pod nor an IP address")),
        }
    }
}

/// `--port`: a number from 1 to 65535 or the name of a container port of the destination pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortArg {
    Number(u16),
    Name(String),
}

impl std::str::FromStr for PortArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
            return match s.parse::<u32>() {
                Ok(0) => Err("port 0 is no port a connection can use; give 1-65535 or a \
                              named port of the destination pod"
                    .into()),
                Ok(n) if n <= 65535 => Ok(PortArg::Number(n as u16)),
                _ => Err(format!("{s} is past 65535, the highest port")),
            };
        }
        // An IANA_SVC_NAME: lower-case letters, digits and '-', at most 15, a letter in it.
        let valid = (1..=15).contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && s.chars().any(|c| c.is_ascii_lowercase())
            && !s.starts_with('-')
            && !s.ends_with('-');
        if valid {
            Ok(PortArg::Name(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is neither a port number (1-65535) nor a port name (lower-case letters, \
                 digits and '-', at most 15)"
            ))
        }
    }
}

/// Errors of resolving the command line against the cluster.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("no pod {0} in the manifests")]
    NoPod(ObjectRef),
    #[error("pod {0} has no address{1}")]
    NoAddress(ObjectRef, &'static str),
    #[error("--port {name}: a named port is looked up on the destination pod, and {to} is {what}")]
    NamedPortWithoutPod {
        name: String,
        to: String,
        what: &'static str,
    },
    #[error(
        "--port {name}: pod {pod} has no {protocol} container port named {name:?} (it has: {has})"
    )]
    NoSuchPort {
        name: String,
        pod: ObjectRef,
        protocol: Protocol,
        has: String,
    },
    #[error("{from} is IPv{} and {to} is IPv{}: a connection has one address family", if .from.is_ipv4() { 4 } else { 6 }, if .to.is_ipv4() { 4 } else { 6 })]
    Family { from: IpAddr, to: IpAddr },
}

/// What the datapath sees at one end.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Seen {
    /// A pod (not host-network): an endpoint enforcer judges, with its identity.
    Pod { pod: String, identity: u32 },
    /// This node's own address (`--node-ip`): identity HOST.
    Host,
    /// The address of host-network pods that is not this node's: another node, judged as the
    /// world (and its CIDR identity, if some ipBlock holds it).
    Node {
        pods: Vec<String>,
        cidr_identity: Option<u32>,
    },
    /// An address that is no pod's but lies in policies' ipBlocks: the world, with a CIDR
    /// identity.
    Cidr {
        cidr_identity: u32,
        /// The ipBlocks that hold it.
        blocks: Vec<String>,
        /// The ipBlocks whose `except` takes it out.
        excepted_from: Vec<String>,
    },
    /// Anything else: the world.
    World,
}

impl Seen {
    pub fn describe(&self) -> String {
        match self {
            Seen::Pod { pod, identity } => format!("pod {pod} (identity {identity})"),
            Seen::Host => "this node (identity host)".into(),
            Seen::Node {
                pods,
                cidr_identity,
            } => format!(
                "a node, the address of host-network pods {} (identity world{})",
                pods.join(", "),
                cidr_identity
                    .map(|c| format!(", CIDR identity {c}"))
                    .unwrap_or_default()
            ),
            Seen::Cidr {
                cidr_identity,
                blocks,
                excepted_from,
            } => {
                let mut s = "no pod;".to_string();
                if !blocks.is_empty() {
                    s.push_str(&format!(" inside ipBlocks [{}];", blocks.join("; ")));
                }
                if !excepted_from.is_empty() {
                    s.push_str(&format!(
                        " excepted from ipBlocks [{}];",
                        excepted_from.join("; ")
                    ));
                }
                format!("{s} identity world, CIDR identity {cidr_identity}")
            }
            Seen::World => "no pod, no node, in no ipBlock (identity world)".into(),
        }
    }
}

/// One end: as given, its address, and what the datapath sees.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct End {
    pub given: String,
    pub address: IpAddr,
    pub seen_as: Seen,
}

impl End {
    pub fn pod(&self) -> Option<&str> {
        match &self.seen_as {
            Seen::Pod { pod, .. } => Some(pod),
            _ => None,
        }
    }
}

/// The ipBlocks of the cluster's policies that hold `ip`, and those whose `except` takes it out
/// (with their excepts, as written).
pub fn blocks_holding(cluster: &Cluster, ip: IpAddr) -> (Vec<String>, Vec<String>) {
    let (mut held, mut excepted) = (Vec::new(), Vec::new());
    for (key, p) in &cluster.policies {
        for (dir, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
            for (i, r) in rules.iter().enumerate() {
                for peer in &r.peers {
                    if let Peer::IpBlock(b) = peer
                        && b.cidr.contains(&ip)
                    {
                        let mut s = format!("{key} {dir} rule {i}: {}", b.cidr);
                        if !b.except.is_empty() {
                            let ex: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
                            s.push_str(&format!(" except {}", ex.join(", ")));
                        }
                        if b.contains(ip) {
                            held.push(s);
                        } else {
                            excepted.push(s);
                        }
                    }
                }
            }
        }
    }
    (held, excepted)
}

/// What the datapath sees for `ip`, over the compiled `state` (identities) and the cluster.
pub fn seen(cluster: &Cluster, state: &MapState, node_ips: &[IpAddr], ip: IpAddr) -> Seen {
    if let Some(p) = cluster.pod_by_ip(ip) {
        let identity = state
            .ip_identity
            .get(&ip_key(ip))
            .map(|v| v.identity)
            .unwrap_or(identity::WORLD);
        return Seen::Pod {
            pod: p.key().to_string(),
            identity,
        };
    }
    if node_ips.contains(&ip) {
        return Seen::Host;
    }
    let cidr_identity = cidr_lookup(state, ip_key(ip))
        .map(|v| v.identity)
        .filter(|i| *i != 0);
    let host_pods: Vec<String> = cluster
        .pods
        .values()
        .filter(|p| p.host_network && p.ips.contains(&ip))
        .map(|p| p.key().to_string())
        .collect();
    if !host_pods.is_empty() {
        return Seen::Node {
            pods: host_pods,
            cidr_identity,
        };
    }
    match cidr_identity {
        Some(c) => {
            let (blocks, excepted_from) = blocks_holding(cluster, ip);
            Seen::Cidr {
                cidr_identity: c,
                blocks,
                excepted_from,
            }
        }
        None => Seen::World,
    }
}

/// The address of an end given by name (the first of the wanted family when one is asked).
pub fn address_of(
    cluster: &Cluster,
    e: &Endpoint,
    family_of: Option<IpAddr>,
) -> Result<IpAddr, ResolveError> {
    match e {
        Endpoint::Ip(ip) => Ok(*ip),
        Endpoint::Pod(r) => {
            let p = cluster
                .pods
                .get(r)
                .ok_or_else(|| ResolveError::NoPod(r.clone()))?;
            p.ips
                .iter()
                .find(|ip| family_of.is_none_or(|f| f.is_ipv4() == ip.is_ipv4()))
                .copied()
                .ok_or_else(|| {
                    ResolveError::NoAddress(
                        r.clone(),
                        if family_of.is_some() && !p.ips.is_empty() {
                            " of the other end's family"
                        } else {
                            ""
                        },
                    )
                })
        }
    }
}

/// The port number of `--port` for a flow to `to` (a named port on the destination pod).
pub fn port_number(
    cluster: &Cluster,
    port: &PortArg,
    protocol: Protocol,
    to: &End,
) -> Result<u16, ResolveError> {
    let name = match port {
        PortArg::Number(n) => return Ok(*n),
        PortArg::Name(n) => n,
    };
    let Some(pod) = to.pod() else {
        return Err(ResolveError::NamedPortWithoutPod {
            name: name.clone(),
            to: to.given.clone(),
            what: match to.seen_as {
                Seen::Host => "this node",
                Seen::Node { .. } => "a node's address (host-network pods have no own ports)",
                _ => "no pod's address",
            },
        });
    };
    let (ns, n) = pod.split_once('/').unwrap_or(("", pod));
    let r = ObjectRef::new(ns, n);
    let p = &cluster.pods[&r];
    p.named_port(name, protocol)
        .ok_or_else(|| ResolveError::NoSuchPort {
            name: name.clone(),
            pod: r.clone(),
            protocol,
            has: {
                let v: Vec<String> = p
                    .ports
                    .iter()
                    .filter_map(|c| {
                        c.name
                            .as_ref()
                            .map(|n| format!("{n} {}/{}", c.protocol, c.port))
                    })
                    .collect();
                if v.is_empty() {
                    "no named ports".into()
                } else {
                    v.join(", ")
                }
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_numbers_from_1_or_names() {
        assert_eq!("80".parse::<PortArg>(), Ok(PortArg::Number(80)));
        assert_eq!("http".parse::<PortArg>(), Ok(PortArg::Name("http".into())));
        let zero = "0".parse::<PortArg>().unwrap_err();
        assert!(zero.contains("port 0"), "{zero}");
        assert!("65536".parse::<PortArg>().unwrap_err().contains("65535"));
        assert!("HTTP".parse::<PortArg>().is_err());
        assert!("-x".parse::<PortArg>().is_err());
    }

    #[test]
    fn endpoints_are_pods_or_addresses() {
        assert_eq!(
            "x/a".parse::<Endpoint>(),
            Ok(Endpoint::Pod(ObjectRef::new("x", "a")))
        );
        assert_eq!(
            "10.0.0.1".parse::<Endpoint>(),
            Ok(Endpoint::Ip("10.0.0.1".parse().unwrap()))
        );
        assert!("x/a/b".parse::<Endpoint>().is_err());
        assert!("10.0.0.0/8".parse::<Endpoint>().is_err());
    }
}
