//! A reference evaluator that reads the NetworkPolicy v1 spec literally: cluster state, a local
//! pod, a direction and a flow in; allow or deny out. No identities, no maps, no prefixes.
//!
//! It exists to be obviously right, not fast; the compiler is tested against it.

use std::net::IpAddr;

use enforcer_common::direction;

use crate::compiler::Cluster;
use crate::model::{Peer, Pod, Policy, PortRef, Protocol, Rule};

/// The flow as seen at the local pod.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// `direction::INGRESS` (peer → local) or `direction::EGRESS` (local → peer).
    pub direction: u8,
    pub peer: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port (0 for protocols without ports).
    pub port: u16,
}

pub struct Env<'a> {
    pub cluster: &'a Cluster,
    pub host_ips: &'a [IpAddr],
    pub allow_host_ingress: bool,
}

impl Env<'_> {
    fn peer_pod(&self, ip: IpAddr) -> Option<&Pod> {
        if self.host_ips.contains(&ip) {
            return None;
        }
        self.cluster.pod_by_ip(ip)
    }

    fn peer_matches(&self, policy: &Policy, peer: &Peer, ip: IpAddr) -> bool {
        match peer {
            Peer::IpBlock(b) => b.contains(ip),
            Peer::Pods { namespaces, pods } => {
                let Some(pod) = self.peer_pod(ip) else {
                    return false;
                };
                let ns_ok = match namespaces {
                    None => pod.namespace == policy.namespace,
                    Some(sel) => sel.matches(&self.cluster.namespace_labels(&pod.namespace)),
                };
                ns_ok && pods.as_ref().is_none_or(|sel| sel.matches(&pod.labels))
            }
        }
    }

    fn port_matches(&self, rule: &Rule, local: &Pod, flow: &Flow) -> bool {
        if rule.ports.is_empty() {
            return true;
        }
        let Some(proto) = Protocol::from_number(flow.proto) else {
            return false;
        };
        rule.ports.iter().any(|spec| {
            spec.protocol == proto
                && match &spec.port {
                    PortRef::Any => true,
                    PortRef::Range(a, b) => (*a..=*b).contains(&flow.port),
                    PortRef::Named(name) => {
                        // The named port belongs to the destination pod.
                        let dest = if flow.direction == direction::INGRESS {
                            Some(local)
                        } else {
                            self.peer_pod(flow.peer)
                        };
                        dest.and_then(|p| p.named_port(name, proto)) == Some(flow.port)
                    }
                }
        })
    }

    /// Whether the spec allows `flow` at the local pod `local`.
    pub fn allows(&self, local: &Pod, flow: &Flow) -> bool {
        let ingress = flow.direction == direction::INGRESS;
        if ingress && self.allow_host_ingress && self.host_ips.contains(&flow.peer) {
            return true;
        }
        let mut isolated = false;
        for policy in self.cluster.policies.values() {
            if policy.namespace != local.namespace || !policy.pod_selector.matches(&local.labels) {
                continue;
            }
            // Audit mode reports what a policy would drop but enforces nothing.
            let ns_audit = self
                .cluster
                .namespaces
                .get(&policy.namespace)
                .is_some_and(|n| n.audit);
            if policy.audit || ns_audit {
                continue;
            }
            let (applies, rules) = if ingress {
                (policy.ingress_isolation, &policy.ingress)
            } else {
                (policy.egress_isolation, &policy.egress)
            };
            if !applies {
                continue;
            }
            isolated = true;
            for rule in rules {
                let peer_ok = rule.peers.is_empty()
                    || rule
                        .peers
                        .iter()
                        .any(|p| self.peer_matches(policy, p, flow.peer));
                if peer_ok && self.port_matches(rule, local, flow) {
                    return true;
                }
            }
        }
        !isolated
    }
}
