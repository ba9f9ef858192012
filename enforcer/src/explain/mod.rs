//! `enforcer explain`: the verdict for one connection and the policies and rules that decide it.
//!
//! Offline, from manifests: the cluster is compiled as if every pod were local (each gets a
//! made-up interface), and the connection is decided twice, by the compiled maps looked up the
//! way the datapath looks them up and by the reference evaluator; the two must agree.

//! Addresses are resolved to what the datapath sees (`resolve`): a pod and its identity, this
//! node, another node, a CIDR identity, the world. Only pods are judged: a connection with no
//! pod at either end is reported as not judged, never as allowed.

mod render;
mod resolve;

use std::net::IpAddr;

use anyhow::Result;
use enforcer_common::{direction, reason};
use serde::Serialize;

use crate::compiler::{Cluster, Ids, NodeInput, POLICY_ID_HOST, compile, plan};
use crate::lookup::{Decision, decide};
use crate::model::{ObjectRef, Pod, Protocol};
use crate::reference::{Env, Flow};
use crate::state::MapState;

pub use render::render;
pub use resolve::{End, Endpoint, PortArg, ResolveError, Seen};

/// The agent's options that change verdicts, so explain decides as the agent does.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// This node's addresses (`--node-ip`): identity HOST, as the agent gives its own.
    pub node_ips: Vec<IpAddr>,
    /// The agent's `--no-allow-host`: the node's addresses reach isolated pods only by a rule.
    pub no_allow_host: bool,
}

/// The exit status of `explain` when neither end is a pod.
pub const EXIT_NOT_JUDGED: u8 = 3;

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Side {
    /// `ingress` (at the destination pod) or `egress` (at the source pod).
    pub direction: &'static str,
    pub pod: String,
    pub isolated_by: Vec<String>,
    pub allowed: bool,
    pub reason: &'static str,
    pub policy: Option<String>,
    pub rule: Option<u16>,
    /// The tier of the rule that decided (`Admin`, `NetworkPolicy`, `Baseline`; `Service` for
    /// a Service port's verdict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<&'static str>,
    /// The name of that rule, when it has one (cluster-wide rules may be named).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
    /// The Pass rules that sent the flow on to a later tier, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub passes: Vec<PassedBy>,
    /// What the reference evaluator says.
    pub reference_allows: bool,
    /// What the running agent's maps say, when the pod is an endpoint of this node and the
    /// maps were asked (`--live`).
    pub live: Option<LiveSide>,
}

/// A Pass rule on the way to the decision.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct PassedBy {
    pub tier: &'static str,
    pub policy: String,
    pub rule: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
}

/// The datapath's decision as the live maps give it.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct LiveSide {
    pub ifindex: u32,
    pub allowed: bool,
    pub reason: &'static str,
    pub agrees: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub from: End,
    pub to: End,
    pub protocol: String,
    pub port: u16,
    /// `allowed`, `denied`, or `not-judged` (no pod at either end).
    pub verdict: &'static str,
    /// Whether enforcer judges this connection at all (a pod at one end at least).
    pub judged: bool,
    /// The verdict when judged; null when not.
    pub allowed: Option<bool>,
    pub sides: Vec<Side>,
    /// Whether the compiled maps and the reference evaluator agree on every side.
    pub agree: bool,
    /// With `--live`: whether the live maps agree with the manifests on every local side.
    pub live_agrees: Option<bool>,
}

impl Explanation {
    pub fn src_ip(&self) -> IpAddr {
        self.from.address
    }
    pub fn dst_ip(&self) -> IpAddr {
        self.to.address
    }
}

/// The manifests' cluster compiled as if every pod were local to one node, as the agent with
/// `opts` would compile it.
pub struct Compiled {
    pub node: NodeInput,
    pub compiled: crate::compiler::Compiled,
    pub state: MapState,
}

pub fn compile_all(cluster: &Cluster, opts: &Options) -> Compiled {
    let node = NodeInput {
        held: Default::default(),
        conflicted: Default::default(),
        node: "explain".into(),
        interfaces: cluster
            .pods
            .values()
            .filter(|p| !p.host_network)
            .enumerate()
            .map(|(i, p)| (p.key(), 1000 + i as u32))
            .collect(),
        host_ips: opts.node_ips.clone(),
        allow_host_ingress: !opts.no_allow_host,
    };
    let mut ids = Ids::default();
    let empty = MapState::default();
    let compiled = compile(cluster, &node, &mut ids, &empty);
    let state = plan(&empty, &compiled, &mut ids);
    Compiled {
        node,
        compiled,
        state,
    }
}

fn pod_of<'a>(cluster: &'a Cluster, end: &End) -> Option<&'a Pod> {
    let (ns, name) = end.pod()?.split_once('/')?;
    cluster.pods.get(&ObjectRef::new(ns, name))
}

/// Explains `from → to` on `protocol`/`port` over the manifests' cluster.
pub fn explain(
    cluster: &Cluster,
    from: &Endpoint,
    to: &Endpoint,
    protocol: Protocol,
    port: &PortArg,
    opts: &Options,
) -> Result<Explanation> {
    let c = compile_all(cluster, opts);
    // A source given as an address picks the family of the destination pod's address.
    let hint = match from {
        Endpoint::Ip(ip) => Some(*ip),
        Endpoint::Pod(_) => None,
    };
    let dst_ip = resolve::address_of(cluster, to, hint)?;
    let src_ip = resolve::address_of(cluster, from, Some(dst_ip))?;
    if src_ip.is_ipv4() != dst_ip.is_ipv4() {
        return Err(ResolveError::Family {
            from: src_ip,
            to: dst_ip,
        }
        .into());
    }
    let end = |e: &Endpoint, ip: IpAddr| End {
        given: match e {
            Endpoint::Pod(r) => r.to_string(),
            Endpoint::Ip(ip) => ip.to_string(),
        },
        address: ip,
        seen_as: resolve::seen(cluster, &c.state, &opts.node_ips, ip),
    };
    let (from_end, to_end) = (end(from, src_ip), end(to, dst_ip));
    let port = resolve::port_number(cluster, port, protocol, &to_end)?;
    let env = Env {
        cluster,
        host_ips: &opts.node_ips,
        allow_host_ingress: !opts.no_allow_host,
    };

    let mut sides = Vec::new();
    for (p, dir, peer) in [
        (pod_of(cluster, &from_end), direction::EGRESS, dst_ip),
        (pod_of(cluster, &to_end), direction::INGRESS, src_ip),
    ] {
        if let Some(p) = p {
            sides.push(side(&c, &env, p, dir, peer, protocol, port));
        }
    }
    let judged = !sides.is_empty();
    let allowed = judged.then(|| sides.iter().all(|s| s.allowed));
    let agree = sides.iter().all(|s| s.allowed == s.reference_allows);
    Ok(Explanation {
        from: from_end,
        to: to_end,
        protocol: protocol.to_string(),
        port,
        verdict: match allowed {
            None => "not-judged",
            Some(true) => "allowed",
            Some(false) => "denied",
        },
        judged,
        allowed,
        sides,
        agree,
        live_agrees: None,
    })
}

/// One pod's decision: the compiled maps looked up as the datapath does, and the reference.
fn side(
    c: &Compiled,
    env: &Env,
    p: &Pod,
    dir: u8,
    peer: IpAddr,
    protocol: Protocol,
    port: u16,
) -> Side {
    let ifindex = c.node.interfaces[&p.key()];
    let d: Decision = decide(&c.state, ifindex, dir, peer, protocol.number(), port);
    let ep = &c.compiled.endpoints[&c.state.endpoints[&ifindex].endpoint_id];
    let isolated_by = if dir == direction::INGRESS {
        &ep.ingress_policies
    } else {
        &ep.egress_policies
    };
    let flow = Flow {
        direction: dir,
        peer,
        proto: protocol.number(),
        port,
    };
    Side {
        direction: if dir == direction::INGRESS {
            "ingress"
        } else {
            "egress"
        },
        pod: p.key().to_string(),
        isolated_by: isolated_by.iter().map(ObjectRef::to_string).collect(),
        allowed: d.allowed,
        reason: reason::name(d.reason),
        policy: d.entry.map(|e| {
            if e.policy_id == POLICY_ID_HOST {
                "<host>".to_string()
            } else {
                c.compiled
                    .policies
                    .get(&e.policy_id)
                    .map(ObjectRef::to_string)
                    .unwrap_or_else(|| format!("#{}", e.policy_id))
            }
        }),
        rule: d.entry.map(|e| e.rule_index),
        tier: d
            .entry
            .filter(|e| e.policy_id != POLICY_ID_HOST)
            .map(|_| enforcer_common::tier::name(d.tier)),
        rule_name: d
            .entry
            .and_then(|e| rule_name(c, env.cluster, e.policy_id, dir, e.rule_index)),
        passes: d
            .passes
            .iter()
            .map(|(t, v)| PassedBy {
                tier: enforcer_common::tier::name(*t),
                policy: c
                    .compiled
                    .policies
                    .get(&v.policy_id)
                    .map(ObjectRef::to_string)
                    .unwrap_or_else(|| format!("#{}", v.policy_id)),
                rule: v.rule_index,
                rule_name: rule_name(c, env.cluster, v.policy_id, dir, v.rule_index),
            })
            .collect(),
        reference_allows: env.allows(p, &flow),
        live: None,
    }
}

/// The name a cluster-wide policy gives its rule, if any.
fn rule_name(
    c: &Compiled,
    cluster: &Cluster,
    policy_id: u32,
    dir: u8,
    rule: u16,
) -> Option<String> {
    let key = c.compiled.policies.get(&policy_id)?;
    let p = cluster.cluster_policies.get(key)?;
    let rules = if dir == direction::INGRESS {
        &p.ingress
    } else {
        &p.egress
    };
    rules.get(usize::from(rule))?.name.clone()
}

/// Adds what the live maps of this node's agent decide for the sides that are local endpoints
/// here (found by the pod's address in `IP_IDENTITY`), and whether they agree with the
/// manifests. Sides of pods on other nodes stay without a live answer.
pub fn add_live(e: &mut Explanation, live: &MapState, protocol: Protocol) {
    let mut all_agree = true;
    let mut any = false;
    let (src, dst) = (e.src_ip(), e.dst_ip());
    for side in &mut e.sides {
        let (dir, own, peer) = if side.direction == "egress" {
            (direction::EGRESS, src, dst)
        } else {
            (direction::INGRESS, dst, src)
        };
        let Some(endpoint_id) = live
            .ip_identity
            .get(&crate::compiler::ip_key(own))
            .map(|v| v.endpoint_id)
            .filter(|id| *id != 0)
        else {
            continue;
        };
        let Some((&ifindex, _)) = live
            .endpoints
            .iter()
            .find(|(_, ep)| ep.endpoint_id == endpoint_id)
        else {
            continue;
        };
        let d = decide(live, ifindex, dir, peer, protocol.number(), e.port);
        let agrees = d.allowed == side.allowed;
        all_agree &= agrees;
        any = true;
        side.live = Some(LiveSide {
            ifindex,
            allowed: d.allowed,
            reason: reason::name(d.reason),
            agrees,
        });
    }
    e.live_agrees = any.then_some(all_agree);
}

#[cfg(test)]
mod tests;
