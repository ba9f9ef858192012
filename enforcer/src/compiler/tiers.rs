//! The ordered tiers (ClusterNetworkPolicy Admin and Baseline) of one endpoint: their entries,
//! ranked so that the datapath's lookups return the first matching rule (see
//! `enforcer_common::PolicyKey`).
//!
//! Each rule of a tier gets a rank from the tier's order ([`ClusterPolicy::order`], then the
//! rule's index). An entry's value must be the first rule matching *every* port of its prefix,
//! but a longest-prefix lookup returns the longest prefix only: a rule for "any port" ranked
//! before a rule for port 80 would be hidden behind the port-80 entry. [`settle`] therefore
//! gives every entry the lowest-ranked value among itself and the entries of the same peer
//! whose prefixes contain it. Across peers (pod identity, CIDR identity, any) the datapath
//! takes the lowest rank of its three lookups.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::{
    POLICY_ACTION_ALLOW, POLICY_ACTION_DENY, POLICY_ACTION_PASS, PolicyKey, PolicyValue, direction,
    mode, policy_prefix, tier,
};

use super::{CompiledEndpoint, Ids, Resolver, Targets, emit_rule};
use crate::cluster_policy::{Action, ClusterPeer, ClusterPolicy, ClusterRule, Tier};
use crate::compiler::Cluster;
use crate::model::{IpBlock, ObjectRef, Peer, Pod};
use crate::state::Lpm;

/// Room for each policy's rules in the rank space (v1alpha1 allows 100 per direction).
const RULES_PER_POLICY: u32 = 128;

/// Two policies of one tier and one priority that select a common pod; which one is first is
/// [`ClusterPolicy::order`]'s choice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub tier: Tier,
    pub priority: u32,
    /// The policy evaluated first, then the other.
    pub first: ObjectRef,
    pub second: ObjectRef,
    /// A pod both select (the first one found).
    pub pod: ObjectRef,
}

/// Every `networks` CIDR, as an ipBlock without excepts for the CIDR partition (so a network
/// peer is a CIDR identity, and matches pod addresses too).
pub(super) fn network_blocks(cluster: &Cluster) -> BTreeSet<IpBlock> {
    let mut out = BTreeSet::new();
    for p in cluster.cluster_policies.values() {
        for r in p.ingress.iter().chain(&p.egress) {
            for peer in &r.peers {
                if let ClusterPeer::Networks(nets) = peer {
                    out.extend(nets.iter().map(|n| IpBlock {
                        cidr: *n,
                        except: Vec::new(),
                    }));
                }
            }
        }
    }
    out
}

/// The first rank of each cluster policy: its place in its tier's order.
pub(super) fn ranks(cluster: &Cluster) -> BTreeMap<ObjectRef, u32> {
    let mut out = BTreeMap::new();
    for t in [Tier::Admin, Tier::Baseline] {
        let mut in_tier: Vec<&ClusterPolicy> = cluster
            .cluster_policies
            .values()
            .filter(|p| p.tier == t)
            .collect();
        in_tier.sort_by(|a, b| a.order().cmp(&b.order()));
        for (i, p) in in_tier.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX / RULES_PER_POLICY);
            out.insert(p.key(), i.saturating_mul(RULES_PER_POLICY));
        }
    }
    out
}

fn action_of(a: Action) -> u8 {
    match a {
        Action::Accept => POLICY_ACTION_ALLOW,
        Action::Deny => POLICY_ACTION_DENY,
        Action::Pass => POLICY_ACTION_PASS,
    }
}

/// Adds the ordered tiers' entries of the local pod `pod` to `ep`, sets its tier bits, and
/// records priority conflicts. The Baseline tier is left out of a direction the NetworkPolicy
/// tier decides (isolated, or in audit).
pub(super) fn endpoint_entries(
    r: &Resolver<'_>,
    ranks: &BTreeMap<ObjectRef, u32>,
    pod: &Pod,
    ep: &mut CompiledEndpoint,
    ids: &mut Ids,
    conflicts: &mut BTreeSet<Conflict>,
) {
    let ns_labels = r.cluster.namespace_labels(&pod.namespace);
    let mut selecting: Vec<&ClusterPolicy> = r
        .cluster
        .cluster_policies
        .values()
        .filter(|p| p.selects(&ns_labels, &pod.labels))
        .collect();
    if selecting.is_empty() {
        return;
    }
    selecting.sort_by(|a, b| (a.tier, a.order()).cmp(&(b.tier, b.order())));
    for dir in [direction::INGRESS, direction::EGRESS] {
        let np_decides = matches!(
            if dir == direction::INGRESS {
                ep.ingress_mode
            } else {
                ep.egress_mode
            },
            mode::ENFORCE | mode::AUDIT
        );
        for t in [Tier::Admin, Tier::Baseline] {
            if t == Tier::Baseline && np_decides {
                continue;
            }
            let policies: Vec<&ClusterPolicy> = selecting
                .iter()
                .filter(|p| p.tier == t && !rules(p, dir).is_empty())
                .copied()
                .collect();
            if policies.is_empty() {
                continue;
            }
            note_conflicts(&policies, pod, conflicts);
            ep.tiers |= tier::bit(dir, t.number());
            for p in &policies {
                let pid = ids.policy(&p.key());
                let base = ranks.get(&p.key()).copied().unwrap_or(u32::MAX / 2);
                for (i, rule) in rules(p, dir).iter().enumerate() {
                    let value = PolicyValue {
                        policy_id: pid,
                        rule_index: u16::try_from(i).unwrap_or(u16::MAX),
                        action: action_of(rule.action),
                        flags: 0,
                        rank: base + u32::try_from(i).unwrap_or(RULES_PER_POLICY - 1),
                    };
                    let targets = targets(r, rule);
                    let ports = if fails_closed(rule) {
                        &[][..]
                    } else {
                        &rule.ports[..]
                    };
                    let entries = match t {
                        Tier::Admin => &mut ep.tier_entries,
                        Tier::Baseline => &mut ep.baseline_entries,
                    };
                    emit_rule(r, entries, &targets, ports, dir, t.number(), pod, value);
                }
            }
            let entries = match t {
                Tier::Admin => &mut ep.tier_entries,
                Tier::Baseline => &mut ep.baseline_entries,
            };
            settle(entries, dir, t.number());
        }
    }
}

fn rules(p: &ClusterPolicy, dir: u8) -> &[ClusterRule] {
    if dir == direction::INGRESS {
        &p.ingress
    } else {
        &p.egress
    }
}

/// A Deny or Pass rule with a peer this version does not understand matches everything: every
/// peer, every port.
fn fails_closed(rule: &ClusterRule) -> bool {
    rule.action != Action::Accept && rule.peers.contains(&ClusterPeer::Unknown)
}

fn targets(r: &Resolver<'_>, rule: &ClusterRule) -> Targets {
    let mut t = Targets::default();
    if fails_closed(rule) {
        t.any = true;
        return t;
    }
    for peer in &rule.peers {
        match peer {
            ClusterPeer::Pods { namespaces, pods } => {
                let ids = r.peer_identities_in(
                    "",
                    &Peer::Pods {
                        namespaces: Some(namespaces.clone()),
                        pods: Some(pods.clone()),
                    },
                );
                t.named_pods.extend(ids.iter().copied());
                t.ids.extend(ids);
            }
            ClusterPeer::Networks(nets) => {
                for n in nets {
                    let b = IpBlock {
                        cidr: *n,
                        except: Vec::new(),
                    };
                    t.ids.extend(
                        r.cidr_ids
                            .iter()
                            .filter(|(_, blocks)| blocks.contains(&b))
                            .map(|(id, _)| *id),
                    );
                }
            }
            ClusterPeer::Nodes(sel) => {
                t.ids.extend(
                    r.nodes
                        .iter()
                        .filter(|(_, labels)| sel.matches(labels))
                        .map(|(id, _)| *id),
                );
                if r.this_node.is_some_and(|l| sel.matches(l)) {
                    t.ids.insert(enforcer_common::identity::HOST);
                }
            }
            // An Accept rule matches nothing through a peer it does not understand.
            ClusterPeer::Unknown => {}
        }
    }
    t
}

fn note_conflicts(policies: &[&ClusterPolicy], pod: &Pod, out: &mut BTreeSet<Conflict>) {
    for w in policies.windows(2) {
        if w[0].priority == w[1].priority {
            let c = Conflict {
                tier: w[0].tier,
                priority: w[0].priority,
                first: w[0].key(),
                second: w[1].key(),
                pod: pod.key(),
            };
            // One example pod per pair is enough to report.
            if !out
                .iter()
                .any(|o| o.first == c.first && o.second == c.second)
            {
                out.insert(c);
            }
        }
    }
}

/// The prefixes strictly containing `k` that the compiler may write (any protocol, any port,
/// shorter port prefixes), longest last.
fn ancestors(k: &Lpm<PolicyKey>) -> Vec<Lpm<PolicyKey>> {
    let mut out = Vec::new();
    if k.prefix_len > policy_prefix::ANY_PROTO {
        out.push(Lpm {
            prefix_len: policy_prefix::ANY_PROTO,
            data: PolicyKey {
                proto: 0,
                port_be: 0,
                ..k.data
            },
        });
    }
    if k.prefix_len > policy_prefix::ANY_PORT {
        let port = u16::from_be(k.data.port_be);
        for bits in 0..(k.prefix_len - policy_prefix::ANY_PORT) {
            let mask = if bits == 0 {
                0
            } else {
                u16::MAX << (16 - bits)
            };
            out.push(Lpm {
                prefix_len: policy_prefix::port_prefix(bits),
                data: PolicyKey {
                    port_be: (port & mask).to_be(),
                    ..k.data
                },
            });
        }
    }
    out
}

/// Gives every entry of `tier` in `dir` the first rule (lowest rank) among its own and those of
/// the prefixes containing it, so a longest-prefix hit is the first matching rule.
pub(crate) fn settle(entries: &mut BTreeMap<Lpm<PolicyKey>, PolicyValue>, dir: u8, t: u8) {
    let updates: Vec<(Lpm<PolicyKey>, PolicyValue)> = entries
        .iter()
        .filter(|(k, _)| k.data.tier == t && k.data.direction == dir)
        .filter_map(|(k, v)| {
            let best = ancestors(k)
                .iter()
                .filter_map(|a| entries.get(a))
                .filter(|a| a.rank < v.rank)
                .min_by_key(|a| a.rank)?;
            Some((*k, *best))
        })
        .collect();
    for (k, v) in updates {
        entries.insert(k, v);
    }
}
