//! `enforcer maps dump`: what a running agent installed, read from its pinned maps.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use enforcer_common::{NameKey, direction, identity, mode, name_kind, policy_prefix, reason};
use serde::Serialize;

use crate::agent::{addr_from_bytes, protocol_name};
use crate::bpf::ct::CtSummary;
use crate::compiler::{Compiled, IdentityInfo};
use crate::state::MapState;

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

pub fn identity_name(id: u32) -> String {
    match id {
        identity::ANY => "any".into(),
        identity::HOST => "host".into(),
        identity::WORLD => "world".into(),
        i if i & identity::CIDR_FLAG != 0 => format!("cidr:{}", i & !identity::CIDR_FLAG),
        i => i.to_string(),
    }
}

fn addr_key(a: &enforcer_common::IpAddrKey) -> String {
    let fam = if a.is_v4_mapped() { 4 } else { 6 };
    addr_from_bytes(a.addr, fam).to_string()
}

#[derive(Serialize)]
struct EndpointRow {
    ifindex: u32,
    endpoint_id: u32,
    policy_set: u32,
    ingress: &'static str,
    egress: &'static str,
    /// For an endpoint held closed (`deny-all`): why (`endpoint-capacity`, `endpoint-unknown`,
    /// ...); its `policy_set` is that reason, not a set.
    #[serde(skip_serializing_if = "Option::is_none")]
    held_for: Option<&'static str>,
}

#[derive(Serialize)]
struct IdentityRow {
    address: String,
    identity: String,
    endpoint_id: u32,
    /// What the identity stands for (from the agent's `NAMES` map).
    stands_for: Option<String>,
}

#[derive(Serialize)]
struct CidrRow {
    prefix: String,
    identity: String,
    stands_for: Option<String>,
}

#[derive(Serialize)]
struct PolicyRow {
    policy_set: u32,
    direction: &'static str,
    peer: String,
    protocol: String,
    port: String,
    policy_id: u32,
    /// `namespace/name` of the policy (from the agent's `NAMES` map).
    policy: Option<String>,
    rule: u16,
    action: &'static str,
}

#[derive(Serialize)]
struct Dump {
    endpoints: Vec<EndpointRow>,
    identities: Vec<IdentityRow>,
    cidrs: Vec<CidrRow>,
    policy: Vec<PolicyRow>,
    conntrack: CtSummary,
    /// New-flow verdicts by reason (drops and allows), and events lost to a full ring buffer.
    verdicts: Vec<(String, u64)>,
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

/// What the agent's ids stand for, as the `NAMES` map holds them.
pub type Names = BTreeMap<NameKey, String>;

/// The names the agent publishes for a compilation: every policy and every identity.
pub fn names_of(c: &Compiled) -> Names {
    let mut out = Names::new();
    for (id, p) in &c.policies {
        out.insert(
            NameKey {
                kind: name_kind::POLICY,
                id: *id,
            },
            p.to_string(),
        );
    }
    out.insert(
        NameKey {
            kind: name_kind::POLICY,
            id: crate::compiler::POLICY_ID_HOST,
        },
        "<host>".into(),
    );
    for (id, info) in &c.identities {
        let text = match info {
            IdentityInfo::Pods(k) => {
                let labels: Vec<String> =
                    k.labels.iter().map(|(a, b)| format!("{a}={b}")).collect();
                let mut t = format!("{} {{{}}}", k.namespace, labels.join(","));
                if !k.named_port_blocks.is_empty() {
                    let b: Vec<String> = k.named_port_blocks.iter().map(block_text).collect();
                    t.push_str(&format!(" in {}", b.join(", ")));
                }
                t
            }
            IdentityInfo::Cidr(blocks) if blocks.is_empty() => "in no ipBlock".to_string(),
            IdentityInfo::Cidr(blocks) => {
                let b: Vec<String> = blocks.iter().map(block_text).collect();
                format!("ipBlock {}", b.join(" | "))
            }
        };
        out.insert(
            NameKey {
                kind: name_kind::IDENTITY,
                id: *id,
            },
            text,
        );
    }
    out
}

fn block_text(b: &crate::model::IpBlock) -> String {
    if b.except.is_empty() {
        b.cidr.to_string()
    } else {
        let ex: Vec<String> = b.except.iter().map(|x| x.to_string()).collect();
        format!("{} except {}", b.cidr, ex.join(","))
    }
}

fn name(names: &Names, kind: u32, id: u32) -> Option<String> {
    names.get(&NameKey { kind, id }).cloned()
}

fn build(state: &MapState, conntrack: &CtSummary, drops: &[u64], names: &Names) -> Dump {
    Dump {
        endpoints: state
            .endpoints
            .iter()
            .map(|(ifindex, e)| EndpointRow {
                ifindex: *ifindex,
                endpoint_id: e.endpoint_id,
                policy_set: e.policy_set,
                ingress: mode_name(e.ingress_mode),
                egress: mode_name(e.egress_mode),
                held_for: (e.ingress_mode == mode::DENY_ALL).then(|| reason::name(e.held_reason())),
            })
            .collect(),
        identities: state
            .ip_identity
            .iter()
            .map(|(a, v)| IdentityRow {
                address: addr_key(a),
                identity: identity_name(v.identity),
                endpoint_id: v.endpoint_id,
                stands_for: name(names, name_kind::IDENTITY, v.identity),
            })
            .collect(),
        cidrs: state
            .cidr_identity
            .iter()
            .map(|(k, v)| {
                let v4 = k.data.is_v4_mapped() && k.prefix_len >= 96;
                let len = if v4 { k.prefix_len - 96 } else { k.prefix_len };
                CidrRow {
                    prefix: format!("{}/{len}", addr_key(&k.data)),
                    identity: identity_name(v.identity),
                    stands_for: name(names, name_kind::IDENTITY, v.identity),
                }
            })
            .collect(),
        policy: state
            .policy
            .iter()
            .map(|(k, v)| {
                let d = &k.data;
                let (protocol, port) = if k.prefix_len <= policy_prefix::ANY_PROTO {
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
                };
                PolicyRow {
                    policy_set: d.policy_set,
                    direction: if d.direction == direction::INGRESS {
                        "ingress"
                    } else {
                        "egress"
                    },
                    peer: identity_name(d.identity),
                    protocol,
                    port,
                    policy_id: v.policy_id,
                    policy: name(names, name_kind::POLICY, v.policy_id),
                    rule: v.rule_index,
                    action: if v.action == enforcer_common::POLICY_ACTION_DENY {
                        "deny"
                    } else {
                        "allow"
                    },
                }
            })
            .collect(),
        conntrack: conntrack.clone(),
        rules: Vec::new(),
        verdicts: drops
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

/// Renders a map state (plus kernel-owned counters) as a table or JSON: everything, or one
/// section.
pub fn render(
    state: &MapState,
    conntrack: &CtSummary,
    counters: &Counters,
    names: &Names,
    format: Format,
    only: Option<Section>,
) -> String {
    let mut d = build(state, conntrack, &counters.verdicts, names);
    d.rules = counters
        .rules
        .iter()
        .map(|(k, v)| RuleRow {
            policy: name(names, name_kind::POLICY, k.policy_id)
                .unwrap_or_else(|| format!("#{}", k.policy_id)),
            rule: k.rule_index,
            direction: if k.direction == direction::INGRESS {
                "ingress"
            } else {
                "egress"
            },
            packets: v.packets,
            bytes: v.bytes,
        })
        .collect();
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
        let _ = writeln!(
            s,
            "CIDR PARTITION\n{:<44} {:<12} STANDS FOR",
            "PREFIX", "IDENTITY"
        );
        for c in &d.cidrs {
            let _ = writeln!(
                s,
                "{:<44} {:<12} {}",
                c.prefix,
                c.identity,
                c.stands_for.as_deref().unwrap_or("")
            );
        }
        s.push('\n');
    }
    if want(Section::Policy) {
        render_policy(&mut s, &d);
    }
    if want(Section::Conntrack) {
        render_conntrack(&mut s, &d.conntrack);
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

fn render_conntrack(s: &mut String, c: &CtSummary) {
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
        let _ = writeln!(s, "  {:<8} ESTABLISHED ENTRIES IN USE", "IFINDEX");
        for (ifindex, n) in &c.in_use {
            let _ = writeln!(s, "  {ifindex:<8} {n}");
        }
    }
    s.push('\n');
}

fn render_endpoints(s: &mut String, d: &Dump) {
    let _ = writeln!(
        s,
        "ENDPOINTS\n{:<8} {:<9} {:<6} {:<10} {:<10}",
        "IFINDEX", "ENDPOINT", "SET", "INGRESS", "EGRESS"
    );
    for e in &d.endpoints {
        let _ = writeln!(
            s,
            "{:<8} {:<9} {:<6} {:<10} {:<10}{}",
            e.ifindex,
            e.endpoint_id,
            e.policy_set,
            e.ingress,
            e.egress,
            e.held_for
                .map(|r| format!(" held: {r}"))
                .unwrap_or_default()
        );
    }
    s.push('\n');
}

fn render_identities(s: &mut String, d: &Dump) {
    let _ = writeln!(
        s,
        "IP IDENTITIES\n{:<40} {:<10} {:<8} STANDS FOR",
        "ADDRESS", "IDENTITY", "ENDPOINT"
    );
    for i in &d.identities {
        let _ = writeln!(
            s,
            "{:<40} {:<10} {:<8} {}",
            i.address,
            i.identity,
            i.endpoint_id,
            i.stands_for.as_deref().unwrap_or("")
        );
    }
    s.push('\n');
}

fn render_policy(s: &mut String, d: &Dump) {
    let _ = writeln!(
        s,
        "POLICY ENTRIES\n{:<6} {:<8} {:<10} {:<7} {:<12} {:<5} {:<6} POLICY",
        "SET", "DIR", "PEER", "PROTO", "PORT", "RULE", "ACTION"
    );
    for p in &d.policy {
        let policy = p
            .policy
            .clone()
            .unwrap_or_else(|| format!("#{}", p.policy_id));
        let _ = writeln!(
            s,
            "{:<6} {:<8} {:<10} {:<7} {:<12} {:<5} {:<6} {policy}",
            p.policy_set, p.direction, p.peer, p.protocol, p.port, p.rule, p.action
        );
    }
    s.push('\n');
}

/// Reads the pinned maps under `bpffs` and renders them.
pub fn dump(bpffs: &Path, format: Format, only: Option<Section>) -> Result<String> {
    let pinned = crate::bpf::PinnedMaps::open(bpffs).with_context(|| {
        format!(
            "opening the pinned maps under {} (is the agent running?)",
            bpffs.display()
        )
    })?;
    let state = pinned.read_state()?;
    let ct = pinned.conntrack()?;
    let counters = Counters {
        verdicts: pinned.counters()?,
        rules: pinned.rule_counters()?,
    };
    let names = pinned.names()?;
    Ok(render(&state, &ct, &counters, &names, format, only))
}

#[cfg(test)]
mod tests {
    use super::*;
    use enforcer_common::EndpointInfo;

    #[test]
    fn one_section_or_all() {
        let mut st = MapState::default();
        st.endpoints.insert(
            7,
            EndpointInfo {
                endpoint_id: 1,
                policy_set: 2,
                ingress_mode: mode::ENFORCE,
                egress_mode: mode::ALLOW_ALL,
            },
        );
        let mut verdicts = vec![0u64; enforcer_common::counter::LEN as usize];
        verdicts[reason::NO_RULE as usize] = 3;
        let counters = Counters {
            verdicts,
            rules: [(
                enforcer_common::RuleCounterKey {
                    policy_id: 9,
                    rule_index: 1,
                    direction: direction::INGRESS,
                    _pad: 0,
                },
                enforcer_common::RuleCounter {
                    packets: 12,
                    bytes: 3400,
                },
            )]
            .into(),
        };
        let names = Names::from([
            (
                NameKey {
                    kind: name_kind::IDENTITY,
                    id: 256,
                },
                "x {pod=a}".to_string(),
            ),
            (
                NameKey {
                    kind: name_kind::POLICY,
                    id: 9,
                },
                "x/allow-web".to_string(),
            ),
        ]);
        st.ip_identity.insert(
            crate::compiler::ip_key("10.0.0.1".parse().unwrap()),
            enforcer_common::IdentityValue {
                identity: 256,
                endpoint_id: 1,
            },
        );
        let ct = CtSummary {
            lru_entries: 3,
            established_entries: 2,
            ..Default::default()
        };
        let all = render(&st, &ct, &counters, &names, Format::Table, None);
        assert!(all.contains("x {pod=a}"), "identities are named:\n{all}");
        for head in [
            "ENDPOINTS",
            "IP IDENTITIES",
            "CIDR PARTITION",
            "POLICY ENTRIES",
            "CONNTRACK ENTRIES 5",
            "established (no eviction) 2",
            "no-rule-allows       3",
            "ingress  1     12           3400         x/allow-web",
        ] {
            assert!(all.contains(head), "{head} in:\n{all}");
        }
        let ep = render(
            &st,
            &ct,
            &counters,
            &names,
            Format::Table,
            Some(Section::Endpoints),
        );
        assert!(
            ep.contains("enforce") && !ep.contains("POLICY ENTRIES"),
            "{ep}"
        );
        let json = render(
            &st,
            &ct,
            &counters,
            &names,
            Format::Json,
            Some(Section::Counters),
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["verdicts"][0], serde_json::json!(["no-rule-allows", 3]));
        assert_eq!(v["rules"][0]["packets"], 12);
        assert_eq!(v["rules"][0]["policy"], "x/allow-web");
        assert!(v.get("endpoints").is_none());
    }
}
