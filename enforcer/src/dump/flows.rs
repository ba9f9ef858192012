//! `maps dump conntrack`: the flows the conntrack tables hold, both ends named, with the policy
//! rule that admitted each.

use std::fmt::Write as _;
use std::net::IpAddr;

use enforcer_common::{CtKey, CtValue, ct_flags, ct_state, direction};
use serde::Serialize;

use super::names::Namer;
use crate::agent::{addr_from_bytes, protocol_name};

/// One end of a flow.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct End {
    /// `namespace/pod`, `host`, `world`, or the identity of the address's ipBlock prefix.
    pub name: String,
    pub address: String,
    pub port: u16,
}

/// One flow as one endpoint's conntrack holds it (a flow between two pods of this node is
/// listed at each).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Flow {
    /// The pod whose interface holds the entry (`ifindex N` when unknown).
    pub endpoint: String,
    pub ifindex: u32,
    /// `egress`: the endpoint opened the flow; `ingress`: the peer did.
    pub direction: &'static str,
    pub protocol: String,
    /// The side that opened the flow.
    pub client: End,
    pub server: End,
    pub state: &'static str,
    /// Seconds since the flow's first packet.
    pub age_seconds: u64,
    /// Seconds since the entry was created, changed state, or was last found in use by the
    /// garbage collector (which looks every `--ct-gc-interval`).
    pub idle_seconds: u64,
    /// `namespace/name` of the policy whose rule admitted it; none when no policy isolates
    /// the endpoint in that direction.
    pub policy: Option<String>,
    pub rule: Option<u32>,
    /// Admitted only because the policy audits.
    pub audit: bool,
    /// `established` (never evicted) or `lru`.
    pub table: &'static str,
}

fn addr(b: [u8; 16]) -> IpAddr {
    let v4 = b[..10].iter().all(|x| *x == 0) && b[10] == 0xff && b[11] == 0xff;
    addr_from_bytes(b, if v4 { 4 } else { 6 })
}

/// The flows of the tables' entries: the entry each flow has in its opening direction (the
/// other, `REPLY`, is the same flow), filtered to those touching `pod` when given.
pub fn flows(
    entries: &[(CtKey, CtValue, &'static str)],
    namer: &Namer,
    now_ns: u64,
    pod: Option<&str>,
) -> Vec<Flow> {
    let mut out: Vec<Flow> = entries
        .iter()
        .filter(|(_, v, _)| v.flags & ct_flags::REPLY == 0)
        .map(|(k, v, table)| {
            let end = |a: [u8; 16], port_be: u16| {
                let ip = addr(a);
                End {
                    name: namer.address(ip),
                    address: ip.to_string(),
                    port: u16::from_be(port_be),
                }
            };
            Flow {
                endpoint: namer
                    .pod_at(k.ifindex)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("ifindex {}", k.ifindex)),
                ifindex: k.ifindex,
                direction: if k.direction == direction::INGRESS {
                    "ingress"
                } else {
                    "egress"
                },
                protocol: protocol_name(k.proto),
                client: end(k.saddr, k.sport_be),
                server: end(k.daddr, k.dport_be),
                state: ct_state::name(v.state),
                age_seconds: now_ns.saturating_sub(v.created_ns) / 1_000_000_000,
                idle_seconds: now_ns.saturating_sub(v.last_ns) / 1_000_000_000,
                policy: (v.policy_id != 0).then(|| namer.policy(v.policy_id)),
                rule: (v.policy_id != 0).then_some(v.rule_index),
                audit: v.flags & ct_flags::AUDIT != 0,
                table,
            }
        })
        .filter(|f| pod.is_none_or(|p| f.endpoint == p || f.client.name == p || f.server.name == p))
        .collect();
    out.sort_by(|a, b| {
        (
            &a.endpoint,
            &a.client.address,
            a.client.port,
            &a.server.address,
            a.server.port,
        )
            .cmp(&(
                &b.endpoint,
                &b.client.address,
                b.client.port,
                &b.server.address,
                b.server.port,
            ))
    });
    out
}

fn duration(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

/// The flows as a table.
pub fn render(s: &mut String, flows: &[Flow]) {
    let _ = writeln!(
        s,
        "FLOWS\n{:<7} {:<12} {:<5} {:<5} {:<44} {:<44} {:<28} ADMITTED BY",
        "PROTO", "STATE", "AGE", "IDLE", "CLIENT", "SERVER", "JUDGED AT"
    );
    for f in flows {
        let end = |e: &End| format!("{} {}:{}", e.name, e.address, e.port);
        let admitted = match (&f.policy, f.rule) {
            (Some(p), Some(r)) => format!("{p} rule {r}{}", if f.audit { " (audit)" } else { "" }),
            _ => "no policy isolates it".to_string(),
        };
        let _ = writeln!(
            s,
            "{:<7} {:<12} {:<5} {:<5} {:<44} {:<44} {:<28} {admitted}",
            f.protocol,
            f.state,
            duration(f.age_seconds),
            duration(f.idle_seconds),
            end(&f.client),
            end(&f.server),
            format!("{} {}", f.direction, f.endpoint),
        );
    }
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::names::Names;
    use crate::state::MapState;
    use crate::status::record::AgentRecord;
    use enforcer_common::{NameKey, name_kind};

    #[test]
    fn a_flow_is_listed_once_with_both_ends_and_its_rule_named() {
        let ip = |s: &str| crate::compiler::ip_key(s.parse().unwrap()).addr;
        let k = CtKey {
            saddr: ip("10.0.0.6"),
            daddr: ip("10.0.0.5"),
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            direction: direction::INGRESS,
            _pad: 0,
            ifindex: 7,
        };
        let v = CtValue {
            created_ns: 0,
            last_ns: 1_000_000_000,
            state: ct_state::ESTABLISHED,
            policy_id: 9,
            rule_index: 1,
            ..Default::default()
        };
        let reply = CtValue {
            flags: ct_flags::REPLY,
            ..v
        };
        let entries = [(k, v, "established"), (k.reversed(), reply, "established")];
        let names = Names::from([(
            NameKey {
                kind: name_kind::POLICY,
                id: 9,
            },
            "x/allow-web".to_string(),
        )]);
        let mut rec: AgentRecord =
            serde_json::from_value(serde_json::json!({"pid": 1, "started": "", "version": "",
                "commit": "", "node": "", "bpffs": "/x", "source": "manifests",
                "source_location": null, "synced": true, "generation": null, "error": null}))
            .unwrap();
        rec.pods.insert(7, "x/web".into());
        rec.pod_ips.insert("10.0.0.5".into(), "x/web".into());
        rec.pod_ips.insert("10.0.0.6".into(), "y/client".into());
        let st = MapState::default();
        let namer = Namer {
            names: &names,
            record: Some(&rec),
            state: &st,
            numeric: false,
        };
        let f = flows(&entries, &namer, 61_000_000_000, None);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].client.name, "y/client");
        assert_eq!(f[0].server.name, "x/web");
        assert_eq!(f[0].server.port, 80);
        assert_eq!(f[0].direction, "ingress");
        assert_eq!(f[0].idle_seconds, 60);
        assert_eq!(f[0].age_seconds, 61, "{f:?}");
        assert_eq!(f[0].policy.as_deref(), Some("x/allow-web"));
        let mut s = String::new();
        render(&mut s, &f);
        assert!(s.contains("y/client 10.0.0.6:40000"), "{s}");
        assert!(s.contains("ingress x/web"), "{s}");
        assert!(s.contains("x/allow-web rule 1"), "{s}");
        assert!(s.contains("AGE   IDLE"), "{s}");
        assert_eq!(flows(&entries, &namer, 0, Some("y/client")).len(), 1);
        assert!(flows(&entries, &namer, 0, Some("z/other")).is_empty());
    }
}
