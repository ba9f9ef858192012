//! A reference evaluator that reads the specs literally: cluster state, a local pod, a direction
//! and a flow in; allow or deny out. No identities, no maps, no prefixes, no ranks.
//!
//! Tiers as the ClusterNetworkPolicy API documents them: the Admin tier (policies by
//! [`ClusterPolicy::order`], rules in order: the first matching rule decides, Pass leaves the
//! tier), then NetworkPolicy (for a pod it isolates it decides; a policy in audit mode stands
//! in for it and passes what it would drop), then the Baseline tier, then allowed.
//!
//! It exists to be obviously right, not fast; the compiler is tested against it.

use std::net::IpAddr;

use enforcer_common::direction;

use crate::cluster_policy::{Action, ClusterPeer, ClusterPolicy, ClusterRule, Tier};
use crate::compiler::Cluster;
use crate::model::{Peer, Pod, Policy, PortRef, PortSpec, Protocol};

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

    fn port_matches(&self, ports: &[PortSpec], local: &Pod, flow: &Flow) -> bool {
        if ports.is_empty() {
            return true;
        }
        let Some(proto) = Protocol::from_number(flow.proto) else {
            return false;
        };
        ports.iter().any(|spec| {
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

    /// Whether a cluster-wide rule matches the flow.
    fn cluster_rule_matches(&self, rule: &ClusterRule, local: &Pod, flow: &Flow) -> bool {
        let fails_closed = rule.action != Action::Accept;
        let mut peer_ok = false;
        for peer in &rule.peers {
            match peer {
                // Fails closed: a Deny or Pass matches everything, an Accept nothing.
                ClusterPeer::Unknown if fails_closed => return true,
                ClusterPeer::Unknown => {}
                ClusterPeer::Networks(nets) => {
                    peer_ok |= nets.iter().any(|n| n.contains(&flow.peer));
                }
                // A node's addresses are those of its Node object.
                ClusterPeer::Nodes(sel) => {
                    peer_ok |= self
                        .cluster
                        .nodes
                        .values()
                        .any(|n| n.addresses.contains(&flow.peer) && sel.matches(&n.labels));
                }
                ClusterPeer::Pods { namespaces, pods } => {
                    if let Some(pod) = self.peer_pod(flow.peer) {
                        peer_ok |= namespaces
                            .matches(&self.cluster.namespace_labels(&pod.namespace))
                            && pods.matches(&pod.labels);
                    }
                }
            }
        }
        peer_ok && self.port_matches(&rule.ports, local, flow)
    }

    /// The first matching rule of `tier` for the flow, by policy order then rule order.
    fn tier_action(&self, tier: Tier, local: &Pod, flow: &Flow) -> Option<Action> {
        let ns_labels = self.cluster.namespace_labels(&local.namespace);
        let mut policies: Vec<&ClusterPolicy> = self
            .cluster
            .cluster_policies
            .values()
            .filter(|p| {
                p.tier == tier && !local.host_network && p.selects(&ns_labels, &local.labels)
            })
            .collect();
        policies.sort_by(|a, b| a.order().cmp(&b.order()));
        for p in policies {
            let rules = if flow.direction == direction::INGRESS {
                &p.ingress
            } else {
                &p.egress
            };
            if let Some(r) = rules
                .iter()
                .find(|r| self.cluster_rule_matches(r, local, flow))
            {
                return Some(r.action);
            }
        }
        None
    }

    /// The NetworkPolicy tier: `Some(verdict)` for a pod it isolates (or a policy in audit mode
    /// stands in for), `None` when no NetworkPolicy isolates it in this direction.
    fn network_policy(&self, local: &Pod, flow: &Flow) -> Option<bool> {
        let ingress = flow.direction == direction::INGRESS;
        let mut isolated = false;
        let mut audited = false;
        for policy in self.cluster.policies.values() {
            if policy.namespace != local.namespace || !policy.pod_selector.matches(&local.labels) {
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
            // Audit mode reports what a policy would drop but enforces nothing.
            let ns_audit = self
                .cluster
                .namespaces
                .get(&policy.namespace)
                .is_some_and(|n| n.audit);
            if policy.audit || ns_audit {
                audited = true;
                continue;
            }
            isolated = true;
            for rule in rules {
                let peer_ok = rule.peers.is_empty()
                    || rule
                        .peers
                        .iter()
                        .any(|p| self.peer_matches(policy, p, flow.peer));
                if peer_ok && self.port_matches(&rule.ports, local, flow) {
                    return Some(true);
                }
            }
        }
        if isolated {
            // The node reaches the pods it isolates (kubelet probes), unless told otherwise.
            return Some(ingress && self.allow_host_ingress && self.host_ips.contains(&flow.peer));
        }
        audited.then_some(true)
    }

    /// Whether the specs allow `flow` at the local pod `local`.
    pub fn allows(&self, local: &Pod, flow: &Flow) -> bool {
        match self.tier_action(Tier::Admin, local, flow) {
            Some(Action::Accept) => return true,
            Some(Action::Deny) => return false,
            Some(Action::Pass) | None => {}
        }
        if let Some(v) = self.network_policy(local, flow) {
            return v;
        }
        !matches!(
            self.tier_action(Tier::Baseline, local, flow),
            Some(Action::Deny)
        )
    }
}
