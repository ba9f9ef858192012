//! `enforcer maps dump`: what a running agent installed, read from its pinned maps, with every
//! identity, policy and pod named (`names`), and the flows conntrack holds (`flows`).

pub mod flows;
pub mod names;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use enforcer_common::{direction, mode, policy_prefix, reason};
use serde::Serialize;

use crate::agent::protocol_name;
use crate::bpf::ct::CtSummary;
use crate::state::MapState;
use crate::status::record::AgentRecord;
pub use names::{Namer, Names, identity_number as identity_name, names_of};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

pub fn mode_name(m: u32) -> &'static str {
    match m {
        mode::UNMANAGED => "unmanaged",
        mode::ALLOW_ALL => "allow-all",
        mode::ENFORCE => "enforce",
        mode::DENY_ALL => "deny-all",
        mode::AUDIT => "audit",
        _ => "?",
    }
}

fn addr_key(a: &enforcer_common::IpAddrKey) -> String {
    key_ip(a).to_string()
}

fn key_ip(a: &enforcer_common::IpAddrKey) -> std::net::IpAddr {
    let fam = if a.is_v4_mapped() { 4 } else { 6 };
    crate::agent::addr_from_bytes(a.addr, fam)
}

fn dir_name(d: u8) -> &'static str {
    if d == direction::INGRESS {
        "ingress"
    } else {
        "egress"
    }
}

#[derive(Serialize)]
struct EndpointRow {
    /// The pod behind the interface (from the agent's record).
    pod: Option<String>,
    endpoint_id: u32,
    policy_set: u32,
    ingress: &'static str,
    egress: &'static str,
    /// The ordered tiers holding rules for it, per direction (`ingress:Admin`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tiers: Vec<String>,
    /// For an endpoint held closed (`deny-all`): why (`endpoint-capacity`, `endpoint-unknown`,
    /// ...); its `policy_set` is that reason, not a set.
    #[serde(skip_serializing_if = "Option::is_none")]
    held_for: Option<&'static str>,
}

#[derive(Serialize)]
struct IdentityRow {
    /// The pod holding the address, if a pod does.
    pod: Option<String>,
    /// What the identity stands for (`--numeric`: its number).
    identity: String,
    endpoint_id: u32,
}

#[derive(Serialize)]
struct CidrRow {
    identity: String,
}

#[derive(Serialize)]
struct PolicyRow {
    policy_set: u32,
    direction: &'static str,
    /// `Admin`, `NetworkPolicy`, `Baseline`, or `Service` (a Service port's verdict).
    tier: &'static str,
    /// The peer identity, by what it stands for (`--numeric`: its number).
    peer: String,
    protocol: String,
    port: String,
    /// `namespace/name` or `Kind/name` (`--numeric`: `#id`).
    policy: String,
    rule: u16,
    action: &'static str,
    /// In an ordered tier: the rule's place in the tier's order (lower first).
    #[serde(skip_serializing_if = "Option::is_none")]
    rank: Option<u32>,
}

/// The name of a `POLICY` entry's action.
pub fn action_name(a: u8) -> &'static str {
    match a {
        enforcer_common::POLICY_ACTION_ALLOW => "allow",
        enforcer_common::POLICY_ACTION_DENY => "deny",
        enforcer_common::POLICY_ACTION_PASS => "pass",
        enforcer_common::POLICY_ACTION_DEFER => "defer",
        enforcer_common::POLICY_ACTION_UNBOUND => "unbound",
        _ => "unknown",
    }
}

/// The ordered tiers an endpoint holds, as `direction:Tier`.
fn tiers_of(e: &enforcer_common::EndpointInfo) -> Vec<String> {
    let mut out = Vec::new();
    for dir in [
        enforcer_common::direction::INGRESS,
        enforcer_common::direction::EGRESS,
    ] {
        for t in [
            enforcer_common::tier::ADMIN,
            enforcer_common::tier::BASELINE,
        ] {
            if e.has_tier(dir, t) {
                out.push(format!(
                    "{}:{}",
                    dir_name(dir),
                    enforcer_common::tier::name(t)
                ));
            }
        }
    }
    out
}

#[derive(Serialize)]
struct Conntrack {
    #[serde(flatten)]
    summary: CtSummary,
    flows: Vec<flows::Flow>,
}

/// The dump as JSON: maps keyed by interface, address and prefix; lists where the key is
/// composite.
#[derive(Serialize)]
struct Dump {
    /// By ifindex.
    endpoints: BTreeMap<u32, EndpointRow>,
    /// By address.
    identities: BTreeMap<String, IdentityRow>,
    /// By prefix.
    cidrs: BTreeMap<String, CidrRow>,
    policy: Vec<PolicyRow>,
    conntrack: Conntrack,
    /// New-flow verdicts by reason (drops and allows), and events lost to a full ring buffer.
    verdicts: BTreeMap<String, u64>,
    /// Packets and bytes of the flows each rule admitted (both directions of each flow).
    rules: Vec<RuleRow>,
}

#[derive(Serialize)]
struct RuleRow {
    policy: String,
    rule: u16,
    direction: &'static str,
    packets: u64,
    bytes: u64,
}

/// Kernel-owned counters, as `maps dump` shows them.
#[derive(Default)]
pub struct Counters {
    /// `DROP_COUNTERS`, summed over CPUs.
    pub verdicts: Vec<u64>,
    /// `RULE_COUNTERS`, summed over CPUs.
    pub rules: BTreeMap<enforcer_common::RuleCounterKey, enforcer_common::RuleCounter>,
}

/// What to show and how.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub only: Option<Section>,
    /// Identities and policies as numbers.
    pub numeric: bool,
    /// Only the endpoints and flows of this pod (`namespace/name`).
    pub pod: Option<String>,
}

/// Everything read from the pins (and the agent's record) for one dump.
pub struct Input<'a> {
    pub state: &'a MapState,
    pub conntrack: &'a CtSummary,
    /// Conntrack entries with the table each is in.
    pub entries: &'a [(
        enforcer_common::CtKey,
        enforcer_common::CtValue,
        &'static str,
    )],
    pub counters: &'a Counters,
    pub names: &'a Names,
    pub record: Option<&'a AgentRecord>,
    /// CLOCK_MONOTONIC now (conntrack idle times).
    pub now_ns: u64,
}

fn port_text(k: &crate::state::Lpm<enforcer_common::PolicyKey>) -> (String, String) {
    let d = &k.data;
    if k.prefix_len <= policy_prefix::ANY_PROTO {
        ("any".to_string(), "any".to_string())
    } else if k.prefix_len == policy_prefix::ANY_PORT {
        (protocol_name(d.proto), "any".to_string())
    } else if k.prefix_len == policy_prefix::FULL {
        (protocol_name(d.proto), u16::from_be(d.port_be).to_string())
    } else {
        let bits = k.prefix_len - policy_prefix::ANY_PORT;
        let lo = u16::from_be(d.port_be);
        let hi = lo | (u16::MAX >> bits);
        (protocol_name(d.proto), format!("{lo}-{hi}"))
    }
}

fn build(i: &Input, o: &Options) -> Dump {
    let n = Namer {
        names: i.names,
        record: i.record,
        state: i.state,
        numeric: o.numeric,
    };
    let state = i.state;
    let pod_ok = |p: Option<&str>| o.pod.as_deref().is_none_or(|want| p == Some(want));
    Dump {
        endpoints: state
            .endpoints
            .iter()
            .filter(|(ifindex, _)| pod_ok(n.pod_at(**ifindex)))
            .map(|(ifindex, e)| {
                (
                    *ifindex,
                    EndpointRow {
                        pod: n.pod_at(*ifindex).map(str::to_string),
                        endpoint_id: e.endpoint_id,
                        policy_set: e.policy_set,
                        ingress: mode_name(e.ingress_mode),
                        egress: mode_name(e.egress_mode),
                        tiers: tiers_of(e),
                        held_for: (e.ingress_mode == mode::DENY_ALL)
                            .then(|| reason::name(e.held_reason())),
                    },
                )
            })
            .collect(),
        identities: state
            .ip_identity
            .iter()
            .map(|(a, v)| {
                let pod = n.pod_with(key_ip(a)).map(str::to_string);
                (
                    addr_key(a),
                    IdentityRow {
                        pod,
                        identity: n.identity(v.identity),
                        endpoint_id: v.endpoint_id,
                    },
                )
            })
            .collect(),
        cidrs: state
            .cidr_identity
            .iter()
            .map(|(k, v)| {
                let v4 = k.data.is_v4_mapped() && k.prefix_len >= 96;
                let len = if v4 { k.prefix_len - 96 } else { k.prefix_len };
                (
                    format!("{}/{len}", addr_key(&k.data)),
                    CidrRow {
                        identity: n.identity(v.identity),
                    },
                )
            })
            .collect(),
        policy: state
            .policy
            .iter()
            .map(|(k, v)| {
                let (protocol, port) = port_text(k);
                PolicyRow {
                    policy_set: k.data.policy_set,
                    direction: dir_name(k.data.direction),
                    tier: enforcer_common::tier::name(k.data.tier),
                    peer: n.identity(k.data.identity),
                    protocol,
                    port,
                    policy: n.policy(v.policy_id),
                    rule: v.rule_index,
                    action: action_name(v.action),
                    rank: matches!(
                        k.data.tier,
                        enforcer_common::tier::ADMIN | enforcer_common::tier::BASELINE
                    )
                    .then_some(v.rank),
                }
            })
            .collect(),
        conntrack: Conntrack {
            summary: i.conntrack.clone(),
            flows: flows::flows(i.entries, &n, i.now_ns, o.pod.as_deref()),
        },
        rules: i
            .counters
            .rules
            .iter()
            .map(|(k, v)| RuleRow {
                policy: n.policy(k.policy_id),
                rule: k.rule_index,
                direction: dir_name(k.direction),
                packets: v.packets,
                bytes: v.bytes,
            })
            .collect(),
        verdicts: i
            .counters
            .verdicts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| {
                let name = if r < reason::COUNT {
                    reason::name(r as u8).to_string()
                } else {
                    enforcer_common::counter::name(r as u32).to_string()
                };
                (name, *n)
            })
            .collect(),
    }
}

/// One part of the dump (`enforcer maps dump MAP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Endpoints,
    Identities,
    Cidrs,
    Policy,
    Conntrack,
    Counters,
}

/// Renders what was read as a table or JSON: everything, or one section.
pub fn render(i: &Input, format: Format, o: &Options) -> String {
    let d = build(i, o);
    let only = o.only;
    let want = |sec: Section| only.is_none_or(|o| o == sec);
    if let Format::Json = format {
        let v = serde_json::to_value(&d).expect("dump serializes");
        let v = match only {
            None => v,
            Some(sec) => {
                let key = match sec {
                    Section::Endpoints => "endpoints",
                    Section::Identities => "identities",
                    Section::Cidrs => "cidrs",
                    Section::Policy => "policy",
                    Section::Conntrack => "conntrack",
                    Section::Counters => {
                        return serde_json::to_string_pretty(&serde_json::json!({
                            "verdicts": v["verdicts"], "rules": v["rules"],
                        }))
                        .expect("dump serializes")
                            + "\n";
                    }
                };
                serde_json::json!({ key: v[key] })
            }
        };
        return serde_json::to_string_pretty(&v).expect("dump serializes") + "\n";
    }
    let mut s = String::new();
    if want(Section::Endpoints) {
        render_endpoints(&mut s, &d);
    }
    if want(Section::Identities) {
        render_identities(&mut s, &d);
    }
    if want(Section::Cidrs) {
        let _ = writeln!(s, "CIDR PARTITION\n{:<44} IDENTITY", "PREFIX");
        for (prefix, c) in &d.cidrs {
            let _ = writeln!(s, "{prefix:<44} {}", c.identity);
        }
        s.push('\n');
    }
    if want(Section::Policy) {
        render_policy(&mut s, &d);
    }
    if want(Section::Conntrack) {
        render_conntrack(&mut s, &d.conntrack.summary, i.record);
        flows::render(&mut s, &d.conntrack.flows);
    }
    if want(Section::Counters) {
        let _ = writeln!(s, "VERDICTS (new flows, by reason)");
        for (r, n) in &d.verdicts {
            let _ = writeln!(s, "{r:<20} {n}");
        }
        let _ = writeln!(
            s,
            "\nRULES (packets and bytes of the flows each rule admitted)\n{:<8} {:<5} {:<12} {:<12} POLICY",
            "DIR", "RULE", "PACKETS", "BYTES"
        );
        for r in &d.rules {
            let _ = writeln!(
                s,
                "{:<8} {:<5} {:<12} {:<12} {}",
                r.direction, r.rule, r.packets, r.bytes, r.policy
            );
        }
    }
    s.trim_end().to_string() + "\n"
}

fn render_conntrack(s: &mut String, c: &CtSummary, record: Option<&AgentRecord>) {
    let _ = writeln!(
        s,
        "CONNTRACK ENTRIES {}\n  unreplied/closing (LRU)  {}\n  established (no eviction) {}",
        c.total(),
        c.lru_entries,
        c.established_entries
    );
    for (state, n) in &c.by_state {
        let _ = writeln!(s, "  state {state:<19} {n}");
    }
    let _ = writeln!(
        s,
        "  inserted {}  promoted {}  over-budget {}  demoted {}  revoked {}\n  \
         gc-deleted {} (established {})  evicted {}",
        c.inserted,
        c.promoted,
        c.over_budget,
        c.demoted,
        c.revoked,
        c.gc_deleted,
        c.gc_deleted_established,
        c.evicted
    );
    if !c.in_use.is_empty() {
        let _ = writeln!(s, "  {:<8} {:<10} POD", "IFINDEX", "IN USE");
        for (ifindex, n) in &c.in_use {
            let pod = record
                .and_then(|r| r.pods.get(ifindex))
                .map(String::as_str)
                .unwrap_or("");
            let _ = writeln!(s, "  {ifindex:<8} {n:<10} {pod}");
        }
    }
    s.push('\n');
}

fn render_endpoints(s: &mut String, d: &Dump) {
    let _ = writeln!(
        s,
        "ENDPOINTS\n{:<8} {:<9} {:<6} {:<10} {:<10} POD",
        "IFINDEX", "ENDPOINT", "SET", "INGRESS", "EGRESS"
    );
    for (ifindex, e) in &d.endpoints {
        let _ = writeln!(
            s,
            "{:<8} {:<9} {:<6} {:<10} {:<10} {}{}{}",
            ifindex,
            e.endpoint_id,
            e.policy_set,
            e.ingress,
            e.egress,
            e.pod.as_deref().unwrap_or("-"),
            e.held_for
                .map(|r| format!(" (held: {r})"))
                .unwrap_or_default(),
            if e.tiers.is_empty() {
                String::new()
            } else {
                format!(" (tiers: {})", e.tiers.join(", "))
            }
        );
    }
    s.push('\n');
}

fn render_identities(s: &mut String, d: &Dump) {
    let _ = writeln!(
        s,
        "IP IDENTITIES\n{:<40} {:<8} {:<32} IDENTITY",
        "ADDRESS", "ENDPOINT", "POD"
    );
    for (address, i) in &d.identities {
        let _ = writeln!(
            s,
            "{address:<40} {:<8} {:<32} {}",
            i.endpoint_id,
            i.pod.as_deref().unwrap_or("-"),
            i.identity
        );
    }
    s.push('\n');
}

fn render_policy(s: &mut String, d: &Dump) {
    let _ = writeln!(
        s,
        "POLICY ENTRIES\n{:<6} {:<8} {:<14} {:<7} {:<12} {:<7} {:<44} PEER",
        "SET", "DIR", "TIER", "PROTO", "PORT", "ACTION", "POLICY (RULE)"
    );
    for p in &d.policy {
        let _ = writeln!(
            s,
            "{:<6} {:<8} {:<14} {:<7} {:<12} {:<7} {:<44} {}",
            p.policy_set,
            p.direction,
            p.tier,
            p.protocol,
            p.port,
            p.action,
            format!("{} ({})", p.policy, p.rule),
            p.peer
        );
    }
    s.push('\n');
}

/// Reads the pinned maps under `bpffs` (and the agent's record) and renders them.
pub fn dump(bpffs: &Path, format: Format, o: &Options) -> Result<String> {
    let pinned = crate::bpf::PinnedMaps::open(bpffs).with_context(|| {
        format!(
            "opening the pinned maps under {} (is the agent running?)",
            bpffs.display()
        )
    })?;
    let record = match crate::status::record::probe(&crate::status::record::dir(), bpffs) {
        crate::status::record::Probe::Live(r) | crate::status::record::Probe::NotRunning(r) => r,
    };
    if let (Some(pod), Some(r)) = (&o.pod, &record)
        && !r.pod_ips.values().any(|p| p == pod)
        && !r.pods.values().any(|p| p == pod)
    {
        anyhow::bail!("--pod {pod}: the agent knows no such pod");
    }
    let state = pinned.read_state()?;
    let entries = pinned.conntrack_entries()?;
    let input = Input {
        state: &state,
        conntrack: &pinned.conntrack()?,
        entries: &entries,
        counters: &Counters {
            verdicts: pinned.counters()?,
            rules: pinned.rule_counters()?,
        },
        names: &pinned.names()?,
        record: record.as_ref(),
        now_ns: crate::conntrack::monotonic_ns(),
    };
    Ok(render(&input, format, o))
}

#[cfg(test)]
mod tests;
