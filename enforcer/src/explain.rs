//! `enforcer explain`: the verdict for one connection and the policies and rules that decide it.
//!
//! Offline, from manifests: the cluster is compiled as if every pod were local (each gets a
//! made-up interface), and the connection is decided twice, by the compiled maps looked up the
//! way the datapath looks them up and by the reference evaluator; the two must agree.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Result, bail};
use enforcer_common::{direction, reason};
use serde::Serialize;

use crate::compiler::{Cluster, Ids, NodeInput, POLICY_ID_HOST, compile, plan};
use crate::lookup::{Decision, decide};
use crate::model::{ObjectRef, Pod, Protocol};
use crate::reference::{Env, Flow};
use crate::state::MapState;

/// One end of the connection: a pod or an address.
#[derive(Clone, Debug)]
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
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => {
                Ok(Endpoint::Pod(ObjectRef::new(ns, name)))
            }
            _ => Err(format!("{s:?} is neither namespace/pod nor an IP address")),
        }
    }
}

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
    /// What the reference evaluator says.
    pub reference_allows: bool,
    /// What the running agent's maps say, when the pod is an endpoint of this node and the
    /// maps were asked (`--live`).
    pub live: Option<LiveSide>,
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
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub port: u16,
    pub allowed: bool,
    pub sides: Vec<Side>,
    /// Whether the compiled maps and the reference evaluator agree on every side.
    pub agree: bool,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    /// With `--live`: whether the live maps agree with the manifests on every local side.
    pub live_agrees: Option<bool>,
}

fn pod<'a>(c: &'a Cluster, r: &ObjectRef) -> Result<&'a Pod> {
    match c.pods.get(r) {
        Some(p) => Ok(p),
        None => bail!("no pod {r} in the manifests"),
    }
}

fn first_ip(p: &Pod, family_of: Option<IpAddr>) -> Result<IpAddr> {
    p.ips
        .iter()
        .find(|ip| family_of.is_none_or(|f| f.is_ipv4() == ip.is_ipv4()))
        .copied()
        .ok_or_else(|| anyhow::anyhow!("pod {} has no address of the right family", p.key()))
}

/// Explains `from → to` on `protocol`/`port` over the manifests' cluster.
pub fn explain(
    cluster: &Cluster,
    from: &Endpoint,
    to: &Endpoint,
    protocol: Protocol,
    port: u16,
) -> Result<Explanation> {
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
        host_ips: Vec::new(),
        allow_host_ingress: true,
    };
    let mut ids = Ids::default();
    let empty = MapState::default();
    let compiled = compile(cluster, &node, &mut ids, &empty);
    let state = plan(&empty, &compiled, &mut ids);
    let env = Env {
        cluster,
        host_ips: &node.host_ips,
        allow_host_ingress: true,
    };

    let (src_pod, dst_pod) = (
        match from {
            Endpoint::Pod(r) => Some(pod(cluster, r)?),
            Endpoint::Ip(_) => None,
        },
        match to {
            Endpoint::Pod(r) => Some(pod(cluster, r)?),
            Endpoint::Ip(_) => None,
        },
    );
    let dst_ip = match (to, dst_pod) {
        (Endpoint::Ip(ip), _) => *ip,
        (_, Some(p)) => first_ip(p, src_pod.and_then(|s| s.ips.first().copied()))?,
        _ => unreachable!("an endpoint is a pod or an address"),
    };
    let src_ip = match (from, src_pod) {
        (Endpoint::Ip(ip), _) => *ip,
        (_, Some(p)) => first_ip(p, Some(dst_ip))?,
        _ => unreachable!("an endpoint is a pod or an address"),
    };

    let mut sides = Vec::new();
    let mut side = |p: &Pod, dir: u8, peer: IpAddr| {
        let ifindex = node.interfaces[&p.key()];
        let d: Decision = decide(&state, ifindex, dir, peer, protocol.number(), port);
        let ep = &compiled.endpoints[&state.endpoints[&ifindex].endpoint_id];
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
        sides.push(Side {
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
                    compiled
                        .policies
                        .get(&e.policy_id)
                        .map(ObjectRef::to_string)
                        .unwrap_or_else(|| format!("#{}", e.policy_id))
                }
            }),
            rule: d.entry.map(|e| e.rule_index),
            reference_allows: env.allows(p, &flow),
            live: None,
        });
    };
    if let Some(p) = src_pod {
        side(p, direction::EGRESS, dst_ip);
    }
    if let Some(p) = dst_pod {
        side(p, direction::INGRESS, src_ip);
    }
    let allowed = sides.iter().all(|s| s.allowed);
    let agree = sides.iter().all(|s| s.allowed == s.reference_allows);
    Ok(Explanation {
        from: match from {
            Endpoint::Pod(r) => format!("{r} ({src_ip})"),
            Endpoint::Ip(ip) => ip.to_string(),
        },
        to: match to {
            Endpoint::Pod(r) => format!("{r} ({dst_ip})"),
            Endpoint::Ip(ip) => ip.to_string(),
        },
        protocol: protocol.to_string(),
        port,
        allowed,
        sides,
        agree,
        src_ip,
        dst_ip,
        live_agrees: None,
    })
}

/// Adds what the live maps of this node's agent decide for the sides that are local endpoints
/// here (found by the pod's address in `IP_IDENTITY`), and whether they agree with the
/// manifests. Sides of pods on other nodes stay without a live answer.
pub fn add_live(e: &mut Explanation, live: &MapState, protocol: Protocol) {
    let mut all_agree = true;
    let mut any = false;
    for side in &mut e.sides {
        let (dir, own, peer) = if side.direction == "egress" {
            (direction::EGRESS, e.src_ip, e.dst_ip)
        } else {
            (direction::INGRESS, e.dst_ip, e.src_ip)
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

/// Text for people.
pub fn render(e: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} → {} {}/{}: {}",
        e.from,
        e.to,
        e.protocol,
        e.port,
        if e.allowed { "ALLOWED" } else { "DENIED" }
    );
    for side in &e.sides {
        let verdict = if side.allowed { "allow" } else { "deny" };
        let why = match (&side.policy, side.reason) {
            (Some(p), _) => format!(
                "allowed by {p} {} rule {}",
                side.direction,
                side.rule.unwrap_or(0)
            ),
            (None, "not-isolated") => {
                "not isolated: no policy selects it for this direction".into()
            }
            (None, _) => format!(
                "isolated by [{}] and no rule allows it",
                side.isolated_by.join(", ")
            ),
        };
        let _ = writeln!(
            s,
            "  {:<7} at {}: {verdict}: {why}",
            side.direction, side.pod
        );
    }
    for side in &e.sides {
        if let Some(l) = &side.live {
            let _ = writeln!(
                s,
                "  live maps, {} at {} (ifindex {}): {} ({}){}",
                side.direction,
                side.pod,
                l.ifindex,
                if l.allowed { "allow" } else { "deny" },
                l.reason,
                if l.agrees {
                    ""
                } else {
                    "  DISAGREES with the manifests"
                }
            );
        }
    }
    match e.live_agrees {
        Some(true) => {
            let _ = writeln!(s, "  the live maps agree with the manifests");
        }
        Some(false) => {
            let _ = writeln!(
                s,
                "  WARNING: the live maps disagree with the manifests (a change not yet installed, or drift)"
            );
        }
        None => {}
    }
    if !e.agree {
        let _ = writeln!(
            s,
            "  WARNING: the compiled maps and the reference evaluator disagree"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_objects;

    #[test]
    fn explains_isolation_and_rules() {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{port: 80}]}]
"#;
        let mut c = Cluster::default();
        for o in parse_objects("t.yaml", yaml).unwrap() {
            c.insert(o);
        }
        let a: Endpoint = "x/a".parse().unwrap();
        let b: Endpoint = "x/b".parse().unwrap();
        let ok = explain(&c, &a, &b, Protocol::Tcp, 80).unwrap();
        assert!(ok.allowed && ok.agree);
        assert_eq!(ok.sides[1].policy.as_deref(), Some("x/allow-a"));
        let no = explain(&c, &a, &b, Protocol::Tcp, 81).unwrap();
        assert!(!no.allowed && no.agree);
        assert_eq!(no.sides[1].isolated_by, vec!["x/allow-a".to_string()]);
        assert!(render(&no).contains("isolated by [x/allow-a] and no rule allows it"));
        let ext = explain(&c, &"192.0.2.1".parse().unwrap(), &b, Protocol::Tcp, 80).unwrap();
        assert!(!ext.allowed && ext.sides.len() == 1);

        // Live: a node where only b is local. Its maps agree; a node whose maps lack the rule
        // (a change not installed yet) is reported as disagreeing.
        let node = NodeInput {
            held: Default::default(),
            conflicted: Default::default(),
            node: "n".into(),
            interfaces: [(ObjectRef::new("x", "b"), 7)].into(),
            host_ips: Vec::new(),
            allow_host_ingress: true,
        };
        let mut ids = Ids::default();
        let empty = MapState::default();
        let live = plan(&empty, &compile(&c, &node, &mut ids, &empty), &mut ids);
        let mut e = explain(&c, &a, &b, Protocol::Tcp, 80).unwrap();
        add_live(&mut e, &live, Protocol::Tcp);
        assert_eq!(e.live_agrees, Some(true));
        assert!(e.sides[0].live.is_none(), "a is not local to this node");
        assert_eq!(e.sides[1].live.as_ref().unwrap().ifindex, 7);
        let mut stale = live.clone();
        stale.policy.clear();
        let mut e = explain(&c, &a, &b, Protocol::Tcp, 80).unwrap();
        add_live(&mut e, &stale, Protocol::Tcp);
        assert_eq!(e.live_agrees, Some(false));
        assert!(render(&e).contains("DISAGREES"));
    }
}
