//! `enforcer describe pod NS/NAME`: the policies that select one pod, in each direction, which
//! of them isolate it, and what they allow (peers by selector and by the pods they match today,
//! ipBlocks with their excepts, ports), like `kubectl describe networkpolicy` from the pod's
//! side. A pure core over a [`Cluster`]; `--live` adds what the agent's pinned maps hold for
//! the pod (its endpoint and modes) and whether they agree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use enforcer_common::mode;
use serde::Serialize;

use crate::compiler::{Cluster, ip_key};
use crate::model::{ObjectRef, Operator, Peer, Pod, PortRef, PortSpec, Rule, Selector};
use crate::state::MapState;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescribeError {
    #[error("no pod {0} in the manifests")]
    NoPod(ObjectRef),
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub pod: String,
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<IpAddr>,
    pub host_network: bool,
    pub ingress: DirectionView,
    pub egress: DirectionView,
    /// With `--live`: what this node's agent holds for the pod.
    pub live: Option<LiveView>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct DirectionView {
    /// Whether some policy isolates the pod in this direction (then only what the rules allow
    /// gets through).
    pub isolated: bool,
    /// The policies that select the pod, by name.
    pub policies: BTreeMap<String, PolicyView>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    /// Whether the policy isolates the pod in this direction (its policyTypes); one that does
    /// not has no rules here.
    pub isolates: bool,
    pub rules: Vec<RuleView>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct RuleView {
    /// Empty: every peer.
    pub peers: Vec<PeerView>,
    /// Empty: every port and protocol.
    pub ports: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// The peer as written: `pods app=web in namespace x`, `ipBlock 0.0.0.0/0 except …`.
    pub peer: String,
    /// The pods it matches today (pod peers only).
    pub matches: Option<Vec<String>>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct LiveView {
    /// The pod's endpoint on this node, if it is local here.
    pub ifindex: Option<u32>,
    pub ingress_mode: Option<&'static str>,
    pub egress_mode: Option<&'static str>,
    /// Whether the installed modes agree with the isolation the manifests give.
    pub agrees: Option<bool>,
}

/// `app=web,tier in (a, b)`, or `all` for the empty selector.
pub fn selector_text(s: &Selector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in &s.match_expressions {
        parts.push(match r.operator {
            Operator::In => format!("{} in ({})", r.key, r.values.join(", ")),
            Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(", ")),
            Operator::Exists => r.key.clone(),
            Operator::DoesNotExist => format!("!{}", r.key),
        });
    }
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join(",")
    }
}

fn port_text(p: &PortSpec) -> String {
    match &p.port {
        PortRef::Any => format!("{}/any", p.protocol),
        PortRef::Range(a, b) if a == b => format!("{}/{a}", p.protocol),
        PortRef::Range(a, b) => format!("{}/{a}-{b}", p.protocol),
        PortRef::Named(n) => format!("{}/{n}", p.protocol),
    }
}

fn peer_view(c: &Cluster, policy_ns: &str, peer: &Peer) -> PeerView {
    match peer {
        Peer::IpBlock(b) => {
            let mut s = format!("ipBlock {}", b.cidr);
            if !b.except.is_empty() {
                let ex: Vec<String> = b.except.iter().map(|e| e.to_string()).collect();
                s.push_str(&format!(" except {}", ex.join(", ")));
            }
            PeerView {
                peer: s,
                matches: None,
            }
        }
        Peer::Pods { namespaces, pods } => {
            let peer = match (namespaces, pods) {
                (None, Some(p)) => format!("pods {} in namespace {policy_ns}", selector_text(p)),
                (None, None) => format!("every pod in namespace {policy_ns}"),
                (Some(n), None) => format!("every pod in namespaces {}", selector_text(n)),
                (Some(n), Some(p)) => format!(
                    "pods {} in namespaces {}",
                    selector_text(p),
                    selector_text(n)
                ),
            };
            let matches = c
                .pods
                .values()
                .filter(|q| !q.host_network)
                .filter(|q| match namespaces {
                    None => q.namespace == policy_ns,
                    Some(n) => n.matches(&c.namespace_labels(&q.namespace)),
                })
                .filter(|q| pods.as_ref().is_none_or(|p| p.matches(&q.labels)))
                .map(|q| q.key().to_string())
                .collect();
            PeerView {
                peer,
                matches: Some(matches),
            }
        }
    }
}

fn rule_view(c: &Cluster, ns: &str, r: &Rule) -> RuleView {
    RuleView {
        peers: r.peers.iter().map(|p| peer_view(c, ns, p)).collect(),
        ports: r.ports.iter().map(port_text).collect(),
    }
}

fn direction(c: &Cluster, pod: &Pod, ingress: bool) -> DirectionView {
    let mut policies = BTreeMap::new();
    for (key, p) in &c.policies {
        if p.namespace != pod.namespace || !p.pod_selector.matches(&pod.labels) {
            continue;
        }
        let (isolates, rules) = if ingress {
            (p.ingress_isolation, &p.ingress)
        } else {
            (p.egress_isolation, &p.egress)
        };
        let rules = if isolates {
            rules
                .iter()
                .map(|r| rule_view(c, &p.namespace, r))
                .collect()
        } else {
            Vec::new()
        };
        policies.insert(key.to_string(), PolicyView { isolates, rules });
    }
    DirectionView {
        isolated: !pod.host_network && policies.values().any(|p| p.isolates),
        policies,
    }
}

/// The pod's view over the manifests' cluster.
pub fn describe_pod(c: &Cluster, r: &ObjectRef) -> Result<PodView, DescribeError> {
    let pod = c
        .pods
        .get(r)
        .ok_or_else(|| DescribeError::NoPod(r.clone()))?;
    Ok(PodView {
        pod: r.to_string(),
        labels: pod.labels.clone(),
        addresses: pod.ips.clone(),
        host_network: pod.host_network,
        ingress: direction(c, pod, true),
        egress: direction(c, pod, false),
        live: None,
    })
}

/// Adds what the live maps hold for the pod: its endpoint (found by its address) and modes.
pub fn add_live(v: &mut PodView, live: &MapState) {
    let endpoint = v
        .addresses
        .iter()
        .filter_map(|ip| live.ip_identity.get(&ip_key(*ip)))
        .map(|i| i.endpoint_id)
        .find(|id| *id != 0)
        .and_then(|id| live.endpoints.iter().find(|(_, e)| e.endpoint_id == id));
    v.live = Some(match endpoint {
        None => LiveView {
            ifindex: None,
            ingress_mode: None,
            egress_mode: None,
            agrees: None,
        },
        Some((&ifindex, e)) => {
            // Isolated ⇔ enforce (or audit, or held deny-all); not isolated ⇔ allow-all.
            let fits = |isolated: bool, m: u32| {
                if isolated {
                    matches!(m, mode::ENFORCE | mode::AUDIT | mode::DENY_ALL)
                } else {
                    matches!(m, mode::ALLOW_ALL | mode::DENY_ALL)
                }
            };
            LiveView {
                ifindex: Some(ifindex),
                ingress_mode: Some(crate::dump::mode_name(e.ingress_mode)),
                egress_mode: Some(crate::dump::mode_name(e.egress_mode)),
                agrees: Some(
                    fits(v.ingress.isolated, e.ingress_mode)
                        && fits(v.egress.isolated, e.egress_mode),
                ),
            }
        }
    });
}

/// Text for people.
pub fn render(v: &PodView) -> String {
    let mut s = String::new();
    let labels: Vec<String> = v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let addrs: Vec<String> = v.addresses.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(s, "Pod:        {}", v.pod);
    let _ = writeln!(s, "Labels:     {}", labels.join(","));
    let _ = writeln!(s, "Addresses:  {}", addrs.join(", "));
    if v.host_network {
        let _ = writeln!(
            s,
            "            host network: not an endpoint enforcer judges (the node's address)"
        );
    }
    for (word, d, peers) in [("Ingress", &v.ingress, "From"), ("Egress", &v.egress, "To")] {
        let _ = writeln!(
            s,
            "{word}:    {}",
            if d.isolated {
                "isolated: only what a rule below allows"
            } else {
                "not isolated: everything allowed"
            }
        );
        if d.policies.is_empty() {
            let _ = writeln!(s, "  no policy selects the pod");
        }
        for (name, p) in &d.policies {
            if !p.isolates {
                let _ = writeln!(s, "  {name}: selects the pod, does not isolate {word}");
                continue;
            }
            let _ = writeln!(
                s,
                "  {name}: isolates{}",
                if p.rules.is_empty() {
                    "; no rule: allows nothing"
                } else {
                    ""
                }
            );
            for (i, r) in p.rules.iter().enumerate() {
                let ports = if r.ports.is_empty() {
                    "any port".to_string()
                } else {
                    r.ports.join(", ")
                };
                let _ = writeln!(s, "    rule {i}: ports {ports}");
                if r.peers.is_empty() {
                    let _ = writeln!(s, "      {peers}: anyone");
                }
                for peer in &r.peers {
                    let m = match &peer.matches {
                        Some(m) if m.is_empty() => " (matches no pod today)".to_string(),
                        Some(m) => format!(" ({})", m.join(", ")),
                        None => String::new(),
                    };
                    let _ = writeln!(s, "      {peers}: {}{m}", peer.peer);
                }
            }
        }
    }
    if let Some(l) = &v.live {
        match l.ifindex {
            None => {
                let _ = writeln!(s, "Live:       not an endpoint of this node's agent");
            }
            Some(i) => {
                let _ = writeln!(
                    s,
                    "Live:       ifindex {i}, ingress {}, egress {}: {}",
                    l.ingress_mode.unwrap_or("?"),
                    l.egress_mode.unwrap_or("?"),
                    if l.agrees == Some(true) {
                        "agrees with the manifests"
                    } else {
                        "DISAGREES with the manifests (a change not yet installed, or drift)"
                    }
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::{Ids, NodeInput, compile, plan};
    use crate::source::parse_objects;

    const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {team: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: y, labels: {app: client}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from:
        - {namespaceSelector: {matchLabels: {team: b}}, podSelector: {matchExpressions: [{key: app, operator: In, values: [client]}]}}
        - {ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}
      ports: [{port: http}, {protocol: UDP, port: 5000, endPort: 5010}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-only, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{}]
"#;

    fn cluster() -> Cluster {
        let mut c = Cluster::default();
        for o in parse_objects("t.yaml", YAML).unwrap() {
            c.insert(o);
        }
        c
    }

    #[test]
    fn a_pod_sees_its_policies_by_direction_with_peers_and_ports() {
        let c = cluster();
        let v = describe_pod(&c, &ObjectRef::new("x", "web")).unwrap();
        assert!(v.ingress.isolated && v.egress.isolated);
        assert_eq!(
            v.ingress.policies.keys().collect::<Vec<_>>(),
            ["x/egress-only", "x/web-in"]
        );
        assert!(!v.ingress.policies["x/egress-only"].isolates);
        let rule = &v.ingress.policies["x/web-in"].rules[0];
        assert_eq!(rule.ports, ["TCP/http", "UDP/5000-5010"]);
        assert_eq!(
            rule.peers[0],
            PeerView {
                peer: "pods app in (client) in namespaces team=b".into(),
                matches: Some(vec!["y/client".into()]),
            }
        );
        assert_eq!(rule.peers[1].peer, "ipBlock 0.0.0.0/0 except 10.0.0.0/8");
        assert_eq!(v.egress.policies["x/egress-only"].rules[0].peers, []);
        let text = render(&v);
        assert!(
            text.contains("x/egress-only: selects the pod, does not isolate Ingress"),
            "{text}"
        );
        assert!(text.contains("To: anyone"), "{text}");
        assert!(
            text.contains("From: pods app in (client) in namespaces team=b (y/client)"),
            "{text}"
        );

        let other = describe_pod(&c, &ObjectRef::new("y", "client")).unwrap();
        assert!(!other.ingress.isolated && other.ingress.policies.is_empty());
        assert!(render(&other).contains("no policy selects the pod"));
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["ingress"]["policies"]["x/web-in"]["isolates"], true);
        assert_eq!(
            describe_pod(&c, &ObjectRef::new("x", "nope"))
                .unwrap_err()
                .to_string(),
            "no pod x/nope in the manifests"
        );
    }

    #[test]
    fn live_modes_are_checked_against_the_manifests() {
        let c = cluster();
        let node = NodeInput {
            held: Default::default(),
            conflicted: Default::default(),
            node: "n".into(),
            interfaces: [(ObjectRef::new("x", "web"), 7)].into(),
            host_ips: Vec::new(),
            allow_host_ingress: true,
        };
        let mut ids = Ids::default();
        let empty = MapState::default();
        let live = plan(&empty, &compile(&c, &node, &mut ids, &empty), &mut ids);
        let mut v = describe_pod(&c, &ObjectRef::new("x", "web")).unwrap();
        add_live(&mut v, &live);
        let l = v.live.clone().unwrap();
        assert_eq!((l.ifindex, l.agrees), (Some(7), Some(true)));
        assert_eq!(l.ingress_mode, Some("enforce"));
        let mut stale = live.clone();
        for e in stale.endpoints.values_mut() {
            e.ingress_mode = mode::ALLOW_ALL;
        }
        add_live(&mut v, &stale);
        assert_eq!(v.live.as_ref().unwrap().agrees, Some(false));
        assert!(render(&v).contains("DISAGREES"));
        let mut remote = describe_pod(&c, &ObjectRef::new("y", "client")).unwrap();
        add_live(&mut remote, &live);
        assert!(render(&remote).contains("not an endpoint of this node's agent"));
    }
}
