//! Cluster-wide, ordered policy: ClusterNetworkPolicy v1alpha2 (tiers Admin and Baseline), and
//! AdminNetworkPolicy / BaselineAdminNetworkPolicy v1alpha1 mapped onto the same model.
//!
//! Every API rule is checked here (the CRDs' OpenAPI and CEL validations: ranges, "exactly one
//! field", list lengths, named ports only towards pods), so a file gets the error the API
//! server would give, naming the field. What a rule means is in [`ClusterRule`]; how tiers are
//! ordered in [`ClusterPolicy::order`].

use std::fmt;

use enforcer_objects::policy_api as api;
use ipnet::IpNet;

use crate::model::{
    Ctx, InvalidObject, Labels, ObjectRef, PortRef, PortSpec, Protocol, Selector, is_v4_mapped_net,
    meta_name, selector_from_api, v4_mapped_reason,
};

/// The tier a cluster-wide policy belongs to (`enforcer_common::tier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Admin,
    Baseline,
}

impl Tier {
    pub fn number(self) -> u8 {
        match self {
            Tier::Admin => enforcer_common::tier::ADMIN,
            Tier::Baseline => enforcer_common::tier::BASELINE,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `Accept` (v1alpha1 `Allow`): allowed, replies and related ICMP too; nothing later is
    /// consulted in this direction.
    Accept,
    /// Dropped; nothing later is consulted.
    Deny,
    /// The rest of this tier is skipped; the next tier decides.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

/// The kind an ordered policy came from (part of its name: the kinds have separate names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterKind {
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
}

impl ClusterKind {
    pub fn name(self) -> &'static str {
        match self {
            ClusterKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            ClusterKind::AdminNetworkPolicy => "AdminNetworkPolicy",
            ClusterKind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
        }
    }

    /// The kind of a policy reference made by [`ClusterPolicy::key`].
    pub fn of_ref(r: &ObjectRef) -> Option<ClusterKind> {
        [
            ClusterKind::ClusterNetworkPolicy,
            ClusterKind::AdminNetworkPolicy,
            ClusterKind::BaselineAdminNetworkPolicy,
        ]
        .into_iter()
        .find(|k| k.name() == r.namespace)
    }
}

/// One element of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterPeer {
    /// `namespaces` (pods: empty) or `pods`: pods of the matching namespaces; never
    /// host-networked pods.
    Pods {
        namespaces: Selector,
        pods: Selector,
    },
    /// `networks`: addresses in any of the CIDRs, pods' included.
    Networks(Vec<IpNet>),
    /// `nodes` (egress only): the addresses (`status.addresses`) of the nodes whose labels the
    /// selector matches; an empty selector is every node.
    Nodes(Selector),
    /// No field this version understands (a newer CRD's peer): fails closed, so an Accept rule
    /// matches nothing through it and a Deny or Pass rule matches everything.
    Unknown,
}

/// One ingress or egress rule. Empty `ports`: every port and protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterRule {
    pub name: Option<String>,
    pub action: Action,
    pub peers: Vec<ClusterPeer>,
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub kind: ClusterKind,
    pub name: String,
    pub tier: Tier,
    /// 0-1000, lower first. A BaselineAdminNetworkPolicy (which has none) comes after every
    /// Baseline ClusterNetworkPolicy: 1001.
    pub priority: u32,
    /// The subject: pods of the namespaces `subject_namespaces` selects that `subject_pods`
    /// selects (empty for a `namespaces` subject); never host-networked pods.
    pub subject_namespaces: Selector,
    pub subject_pods: Selector,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

impl ClusterPolicy {
    /// `Kind/name`: the kind stands where a namespace would (it never clashes with one: kinds
    /// are capitalised, namespaces are not).
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(self.kind.name(), &self.name)
    }

    /// The order of evaluation within a tier: priority, then (a tie the API leaves to the
    /// implementation) the kind (ClusterNetworkPolicy before the v1alpha1 kinds), then the
    /// name. Deterministic, and the same on every node; two policies tied on priority that
    /// both select a pod are reported as a conflict (`compiler::Compiled::conflicts`).
    pub fn order(&self) -> (u32, ClusterKind, &str) {
        (self.priority, self.kind, &self.name)
    }

    /// Whether the policy's subject holds a pod with `labels` in a namespace with `ns_labels`.
    pub fn selects(&self, ns_labels: &Labels, labels: &Labels) -> bool {
        self.subject_namespaces.matches(ns_labels) && self.subject_pods.matches(labels)
    }

    /// `ClusterNetworkPolicy deny-db (Admin, priority 10)`.
    pub fn label(&self) -> String {
        format!(
            "{} {} ({}, priority {})",
            self.kind.name(),
            self.name,
            self.tier,
            self.priority
        )
    }
}

/// Most rules, peers and protocols a v1alpha2 list holds.
const MAX_ITEMS: usize = 25;
/// Most rules and peers a v1alpha1 list holds.
const MAX_ITEMS_V1ALPHA1: usize = 100;

fn one_of(ctx: &Ctx<'_>, field: &str, set: &[(&str, bool)]) -> Result<(), InvalidObject> {
    let names: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
    let given: Vec<&str> = set.iter().filter(|(_, s)| *s).map(|(n, _)| *n).collect();
    match given.len() {
        1 => Ok(()),
        0 => Err(ctx.err(
            field,
            format!("exactly one of {} must be set", names.join(", ")),
        )),
        _ => Err(ctx.err(
            field,
            format!(
                "exactly one of {} must be set, not {}",
                names.join(", "),
                given.join(" and ")
            ),
        )),
    }
}

fn list_len(
    ctx: &Ctx<'_>,
    field: &str,
    len: usize,
    min: usize,
    max: usize,
) -> Result<(), InvalidObject> {
    if len < min {
        return Err(ctx.err(field, format!("needs at least {min} item(s)")));
    }
    if len > max {
        return Err(ctx.err(
            field,
            format!("holds {len} items, at most {max} are allowed"),
        ));
    }
    Ok(())
}

fn subject(ctx: &Ctx<'_>, s: &api::Subject) -> Result<(Selector, Selector), InvalidObject> {
    one_of(
        ctx,
        "spec.subject",
        &[
            ("namespaces", s.namespaces.is_some()),
            ("pods", s.pods.is_some()),
        ],
    )?;
    if let Some(ns) = &s.namespaces {
        return Ok((
            selector_from_api(ctx, "spec.subject.namespaces", ns)?,
            Selector::default(),
        ));
    }
    let p = s.pods.as_ref().expect("one of them is set");
    namespaced_pod(ctx, "spec.subject.pods", p)
}

fn namespaced_pod(
    ctx: &Ctx<'_>,
    field: &str,
    p: &api::NamespacedPod,
) -> Result<(Selector, Selector), InvalidObject> {
    Ok((
        selector_from_api(
            ctx,
            &format!("{field}.namespaceSelector"),
            &p.namespace_selector,
        )?,
        selector_from_api(ctx, &format!("{field}.podSelector"), &p.pod_selector)?,
    ))
}

fn rule_name(
    ctx: &Ctx<'_>,
    field: &str,
    n: &Option<String>,
) -> Result<Option<String>, InvalidObject> {
    match n {
        Some(n) if n.chars().count() > 100 => {
            Err(ctx.err(format!("{field}.name"), "may be at most 100 characters"))
        }
        Some(n) if !n.is_empty() => Ok(Some(n.clone())),
        _ => Ok(None),
    }
}

fn action(ctx: &Ctx<'_>, field: &str, a: &str, allowed: &[&str]) -> Result<Action, InvalidObject> {
    let parsed = match a {
        "Accept" | "Allow" => Action::Accept,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        _ => Action::Deny,
    };
    if !allowed.contains(&a) {
        return Err(ctx.err(
            format!("{field}.action"),
            format!("{a:?} is not one of {}", allowed.join(", ")),
        ));
    }
    Ok(parsed)
}

fn ingress_peer(
    ctx: &Ctx<'_>,
    field: &str,
    p: &api::IngressPeer,
) -> Result<ClusterPeer, InvalidObject> {
    let egress = api::EgressPeer {
        namespaces: p.namespaces.clone(),
        pods: p.pods.clone(),
        ..Default::default()
    };
    egress_peer(ctx, field, &egress)
}

fn egress_peer(
    ctx: &Ctx<'_>,
    field: &str,
    p: &api::EgressPeer,
) -> Result<ClusterPeer, InvalidObject> {
    let set = [
        ("namespaces", p.namespaces.is_some()),
        ("pods", p.pods.is_some()),
        ("nodes", p.nodes.is_some()),
        ("networks", p.networks.is_some()),
        ("domainNames", p.domain_names.is_some()),
    ];
    if set.iter().all(|(_, s)| !s) {
        return Ok(ClusterPeer::Unknown);
    }
    one_of(ctx, field, &set)?;
    if let Some(ns) = &p.namespaces {
        return Ok(ClusterPeer::Pods {
            namespaces: selector_from_api(ctx, &format!("{field}.namespaces"), ns)?,
            pods: Selector::default(),
        });
    }
    if let Some(pods) = &p.pods {
        let (namespaces, pods) = namespaced_pod(ctx, &format!("{field}.pods"), pods)?;
        return Ok(ClusterPeer::Pods { namespaces, pods });
    }
    if let Some(nodes) = &p.nodes {
        return Ok(ClusterPeer::Nodes(selector_from_api(
            ctx,
            &format!("{field}.nodes"),
            nodes,
        )?));
    }
    if p.domain_names.is_some() {
        return Err(ctx.err(
            format!("{field}.domainNames"),
            "domainNames peers are not implemented by enforcer (they need DNS-aware \
             enforcement); the policy is refused rather than enforced without them",
        ));
    }
    let nets = p.networks.as_deref().unwrap_or_default();
    let f = format!("{field}.networks");
    list_len(ctx, &f, nets.len(), 1, MAX_ITEMS)?;
    let mut out = Vec::new();
    for (i, n) in nets.iter().enumerate() {
        let f = format!("{f}[{i}]");
        let net: IpNet = n.parse().map_err(|_| {
            ctx.err(
                &f,
                format!("{n:?} is not a CIDR (Invalid CIDR format provided)"),
            )
        })?;
        let net = net.trunc();
        if is_v4_mapped_net(&net) {
            return Err(ctx.err(&f, v4_mapped_reason(&net)));
        }
        out.push(net);
    }
    out.sort();
    out.dedup();
    Ok(ClusterPeer::Networks(out))
}

fn port_number(ctx: &Ctx<'_>, field: &str, n: i32) -> Result<u16, InvalidObject> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ctx.err(field, format!("{n} is not a port number (1-65535)")))
}

fn range(ctx: &Ctx<'_>, field: &str, start: i32, end: i32) -> Result<PortRef, InvalidObject> {
    let a = port_number(ctx, &format!("{field}.start"), start)?;
    let b = port_number(ctx, &format!("{field}.end"), end)?;
    if a >= b {
        return Err(ctx.err(field, "Start port must be less than End port"));
    }
    Ok(PortRef::Range(a, b))
}

fn named(ctx: &Ctx<'_>, field: &str, name: &str) -> Result<Vec<PortSpec>, InvalidObject> {
    if name.is_empty() || name.len() > 15 {
        return Err(ctx.err(
            field,
            format!("{name:?} is not a valid port name (1-15 characters)"),
        ));
    }
    // A container port name stands for its own protocol: whichever it is.
    Ok([Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .map(|protocol| PortSpec {
            protocol,
            port: PortRef::Named(name.to_string()),
        })
        .collect())
}

/// v1alpha2 `protocols`.
fn protocols(
    ctx: &Ctx<'_>,
    field: &str,
    ps: &Option<Vec<api::Protocol>>,
) -> Result<Vec<PortSpec>, InvalidObject> {
    let Some(ps) = ps else {
        return Ok(Vec::new());
    };
    let field = format!("{field}.protocols");
    list_len(ctx, &field, ps.len(), 1, MAX_ITEMS)?;
    let mut out = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        let f = format!("{field}[{i}]");
        one_of(
            ctx,
            &f,
            &[
                ("tcp", p.tcp.is_some()),
                ("udp", p.udp.is_some()),
                ("sctp", p.sctp.is_some()),
                ("destinationNamedPort", p.destination_named_port.is_some()),
            ],
        )?;
        if let Some(name) = &p.destination_named_port {
            out.extend(named(ctx, &format!("{f}.destinationNamedPort"), name)?);
            continue;
        }
        let (protocol, pp, sub) = if let Some(pp) = &p.tcp {
            (Protocol::Tcp, pp, "tcp")
        } else if let Some(pp) = &p.udp {
            (Protocol::Udp, pp, "udp")
        } else {
            (Protocol::Sctp, p.sctp.as_ref().expect("one is set"), "sctp")
        };
        let f = format!("{f}.{sub}");
        let Some(dp) = &pp.destination_port else {
            return Err(ctx.err(&f, "destinationPort must be set"));
        };
        let f = format!("{f}.destinationPort");
        one_of(
            ctx,
            &f,
            &[
                ("number", dp.number.is_some()),
                ("range", dp.range.is_some()),
            ],
        )?;
        let port = match (&dp.number, &dp.range) {
            (Some(n), _) => {
                let n = port_number(ctx, &format!("{f}.number"), *n)?;
                PortRef::Range(n, n)
            }
            (_, Some(r)) => range(ctx, &format!("{f}.range"), r.start, r.end)?,
            _ => unreachable!("one_of checked"),
        };
        out.push(PortSpec { protocol, port });
    }
    Ok(out)
}

/// v1alpha1 `ports`.
fn anp_ports(
    ctx: &Ctx<'_>,
    field: &str,
    ps: &Option<Vec<api::AnpPort>>,
) -> Result<Vec<PortSpec>, InvalidObject> {
    let Some(ps) = ps else {
        return Ok(Vec::new());
    };
    let field = format!("{field}.ports");
    list_len(ctx, &field, ps.len(), 1, MAX_ITEMS_V1ALPHA1)?;
    let protocol = |f: &str, p: &Option<String>| match p.as_deref() {
        None => Ok(Protocol::Tcp),
        Some(s) => Protocol::parse(s).ok_or_else(|| {
            ctx.err(
                format!("{f}.protocol"),
                format!("unknown protocol {s:?} (TCP, UDP or SCTP)"),
            )
        }),
    };
    let mut out = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        let f = format!("{field}[{i}]");
        one_of(
            ctx,
            &f,
            &[
                ("portNumber", p.port_number.is_some()),
                ("namedPort", p.named_port.is_some()),
                ("portRange", p.port_range.is_some()),
            ],
        )?;
        if let Some(n) = &p.port_number {
            let f = format!("{f}.portNumber");
            let port = port_number(ctx, &format!("{f}.port"), n.port)?;
            out.push(PortSpec {
                protocol: protocol(&f, &n.protocol)?,
                port: PortRef::Range(port, port),
            });
        } else if let Some(name) = &p.named_port {
            out.extend(named(ctx, &format!("{f}.namedPort"), name)?);
        } else if let Some(r) = &p.port_range {
            let f = format!("{f}.portRange");
            out.push(PortSpec {
                protocol: protocol(&f, &r.protocol)?,
                port: range(ctx, &f, r.start, r.end)?,
            });
        }
    }
    Ok(out)
}

/// A named port is a pod's: an egress rule with a peer that is not pods may not use one.
fn check_named_ports(
    ctx: &Ctx<'_>,
    field: &str,
    r: &ClusterRule,
    ports_field: &str,
) -> Result<(), InvalidObject> {
    let named = r.ports.iter().any(|p| matches!(p.port, PortRef::Named(_)));
    let not_pods = r
        .peers
        .iter()
        .any(|p| matches!(p, ClusterPeer::Networks(_) | ClusterPeer::Nodes(_)));
    if named && not_pods {
        return Err(ctx.err(
            format!("{field}.{ports_field}"),
            "networks/nodes/domainNames peer cannot be set with namedPorts since there are no \
             namedPorts for networks/nodes/domainNames",
        ));
    }
    Ok(())
}

struct Limits {
    max: usize,
    actions: &'static [&'static str],
}

fn ingress_rule(
    ctx: &Ctx<'_>,
    field: &str,
    lim: &Limits,
    name: &Option<String>,
    act: &str,
    from: &[api::IngressPeer],
    ports: Vec<PortSpec>,
) -> Result<ClusterRule, InvalidObject> {
    let action = action(ctx, field, act, lim.actions)?;
    list_len(ctx, &format!("{field}.from"), from.len(), 1, lim.max)?;
    let peers = from
        .iter()
        .enumerate()
        .map(|(i, p)| ingress_peer(ctx, &format!("{field}.from[{i}]"), p))
        .collect::<Result<_, _>>()?;
    Ok(ClusterRule {
        name: rule_name(ctx, field, name)?,
        action,
        peers,
        ports,
    })
}

#[allow(clippy::too_many_arguments)]
fn egress_rule(
    ctx: &Ctx<'_>,
    field: &str,
    lim: &Limits,
    name: &Option<String>,
    act: &str,
    to: &[api::EgressPeer],
    ports: Vec<PortSpec>,
    ports_field: &str,
) -> Result<ClusterRule, InvalidObject> {
    let action = action(ctx, field, act, lim.actions)?;
    list_len(ctx, &format!("{field}.to"), to.len(), 1, lim.max)?;
    let peers = to
        .iter()
        .enumerate()
        .map(|(i, p)| egress_peer(ctx, &format!("{field}.to[{i}]"), p))
        .collect::<Result<_, _>>()?;
    let r = ClusterRule {
        name: rule_name(ctx, field, name)?,
        action,
        peers,
        ports,
    };
    check_named_ports(ctx, field, &r, ports_field)?;
    Ok(r)
}

fn priority(ctx: &Ctx<'_>, p: i32) -> Result<u32, InvalidObject> {
    u32::try_from(p)
        .ok()
        .filter(|p| *p <= 1000)
        .ok_or_else(|| ctx.err("spec.priority", format!("{p} is not within 0-1000")))
}

/// Converts a ClusterNetworkPolicy v1alpha2.
pub fn from_cnp(p: &api::ClusterNetworkPolicy) -> Result<ClusterPolicy, InvalidObject> {
    let name = meta_name(&p.metadata.name, "ClusterNetworkPolicy")?;
    let ctx = Ctx {
        kind: "ClusterNetworkPolicy",
        object: &name,
    };
    let tier = match p.spec.tier.as_str() {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        t => {
            return Err(ctx.err("spec.tier", format!("{t:?} is not one of Admin, Baseline")));
        }
    };
    let (subject_namespaces, subject_pods) = subject(&ctx, &p.spec.subject)?;
    let lim = Limits {
        max: MAX_ITEMS,
        actions: &["Accept", "Deny", "Pass"],
    };
    let ingress = p.spec.ingress.as_deref().unwrap_or_default();
    let egress = p.spec.egress.as_deref().unwrap_or_default();
    list_len(&ctx, "spec.ingress", ingress.len(), 0, MAX_ITEMS)?;
    list_len(&ctx, "spec.egress", egress.len(), 0, MAX_ITEMS)?;
    let ingress = ingress
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("spec.ingress[{i}]");
            let ports = protocols(&ctx, &f, &r.protocols)?;
            ingress_rule(&ctx, &f, &lim, &r.name, &r.action, &r.from, ports)
        })
        .collect::<Result<_, _>>()?;
    let egress = egress
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("spec.egress[{i}]");
            let ports = protocols(&ctx, &f, &r.protocols)?;
            egress_rule(
                &ctx,
                &f,
                &lim,
                &r.name,
                &r.action,
                &r.to,
                ports,
                "protocols",
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(ClusterPolicy {
        kind: ClusterKind::ClusterNetworkPolicy,
        priority: priority(&ctx, p.spec.priority)?,
        name,
        tier,
        subject_namespaces,
        subject_pods,
        ingress,
        egress,
    })
}

#[allow(clippy::too_many_arguments)]
fn v1alpha1(
    ctx: &Ctx<'_>,
    kind: ClusterKind,
    name: String,
    tier: Tier,
    priority: u32,
    subj: &api::Subject,
    ingress: &[api::AnpIngressRule],
    egress: &[api::AnpEgressRule],
    actions: &'static [&'static str],
) -> Result<ClusterPolicy, InvalidObject> {
    let (subject_namespaces, subject_pods) = subject(ctx, subj)?;
    let lim = Limits {
        max: MAX_ITEMS_V1ALPHA1,
        actions,
    };
    list_len(ctx, "spec.ingress", ingress.len(), 0, MAX_ITEMS_V1ALPHA1)?;
    list_len(ctx, "spec.egress", egress.len(), 0, MAX_ITEMS_V1ALPHA1)?;
    let ingress = ingress
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("spec.ingress[{i}]");
            let ports = anp_ports(ctx, &f, &r.ports)?;
            ingress_rule(ctx, &f, &lim, &r.name, &r.action, &r.from, ports)
        })
        .collect::<Result<_, _>>()?;
    let egress = egress
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = format!("spec.egress[{i}]");
            let ports = anp_ports(ctx, &f, &r.ports)?;
            egress_rule(ctx, &f, &lim, &r.name, &r.action, &r.to, ports, "ports")
        })
        .collect::<Result<_, _>>()?;
    Ok(ClusterPolicy {
        kind,
        name,
        tier,
        priority,
        subject_namespaces,
        subject_pods,
        ingress,
        egress,
    })
}

/// Converts an AdminNetworkPolicy v1alpha1: the Admin tier at its priority.
pub fn from_anp(p: &api::AdminNetworkPolicy) -> Result<ClusterPolicy, InvalidObject> {
    let name = meta_name(&p.metadata.name, "AdminNetworkPolicy")?;
    let ctx = Ctx {
        kind: "AdminNetworkPolicy",
        object: &name,
    };
    let prio = priority(&ctx, p.spec.priority)?;
    v1alpha1(
        &ctx,
        ClusterKind::AdminNetworkPolicy,
        name.clone(),
        Tier::Admin,
        prio,
        &p.spec.subject,
        p.spec.ingress.as_deref().unwrap_or_default(),
        p.spec.egress.as_deref().unwrap_or_default(),
        &["Allow", "Deny", "Pass"],
    )
}

/// Converts a BaselineAdminNetworkPolicy v1alpha1 (the singleton `default`): the Baseline tier
/// after every Baseline ClusterNetworkPolicy.
pub fn from_banp(p: &api::BaselineAdminNetworkPolicy) -> Result<ClusterPolicy, InvalidObject> {
    let name = meta_name(&p.metadata.name, "BaselineAdminNetworkPolicy")?;
    let ctx = Ctx {
        kind: "BaselineAdminNetworkPolicy",
        object: &name,
    };
    if name != "default" {
        return Err(ctx.err(
            "metadata.name",
            "Only one baseline admin network policy with metadata.name=\"default\" can be \
             created in the cluster",
        ));
    }
    v1alpha1(
        &ctx,
        ClusterKind::BaselineAdminNetworkPolicy,
        name.clone(),
        Tier::Baseline,
        1001,
        &p.spec.subject,
        p.spec.ingress.as_deref().unwrap_or_default(),
        p.spec.egress.as_deref().unwrap_or_default(),
        &["Allow", "Deny"],
    )
}

#[cfg(test)]
mod tests;
