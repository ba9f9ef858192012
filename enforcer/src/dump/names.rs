//! Names for what the maps hold as numbers: identities and policies (the agent's `NAMES`
//! map), pods by interface and by address (the agent's record, `status::record`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use enforcer_common::{IpAddrKey, NameKey, identity, name_kind};

use crate::compiler::{Compiled, IdentityInfo};
use crate::state::MapState;
use crate::status::record::AgentRecord;

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
            IdentityInfo::Node(labels) => {
                let l: Vec<String> = labels.iter().map(|(a, b)| format!("{a}={b}")).collect();
                format!("node {{{}}}", l.join(","))
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

/// An identity as a number: `any`, `host`, `world`, `cidr:N` or the number.
pub fn identity_number(id: u32) -> String {
    match id {
        identity::ANY => "any".into(),
        identity::HOST => "host".into(),
        identity::WORLD => "world".into(),
        i if i & identity::CIDR_FLAG != 0 => format!("cidr:{}", i & !identity::CIDR_FLAG),
        i => i.to_string(),
    }
}

/// Turns the maps' numbers into names (or, with `numeric`, leaves them numbers).
pub struct Namer<'a> {
    pub names: &'a Names,
    pub record: Option<&'a AgentRecord>,
    pub state: &'a MapState,
    pub numeric: bool,
}

impl Namer<'_> {
    /// An identity by what it stands for (`sample1 {app=nginx}`, `ipBlock 10.0.0.0/8`, `host`).
    pub fn identity(&self, id: u32) -> String {
        if self.numeric || matches!(id, identity::ANY | identity::HOST | identity::WORLD) {
            return identity_number(id);
        }
        self.names
            .get(&NameKey {
                kind: name_kind::IDENTITY,
                id,
            })
            .cloned()
            .unwrap_or_else(|| identity_number(id))
    }

    /// A policy as `namespace/name` (`#id` with `numeric`, or when the agent did not name it).
    pub fn policy(&self, id: u32) -> String {
        let named = self.names.get(&NameKey {
            kind: name_kind::POLICY,
            id,
        });
        match named {
            Some(n) if !self.numeric => n.clone(),
            _ => format!("#{id}"),
        }
    }

    /// The pod behind a programmed interface.
    pub fn pod_at(&self, ifindex: u32) -> Option<&str> {
        self.record?.pods.get(&ifindex).map(String::as_str)
    }

    /// The pod holding an address (any node's).
    pub fn pod_with(&self, ip: IpAddr) -> Option<&str> {
        self.record?
            .pod_ips
            .get(&ip.to_string())
            .map(String::as_str)
    }

    /// Who an address is, as the datapath sees it: its pod, else `host` (this node), else the
    /// identity of the ipBlock partition prefix holding it, else `world`.
    pub fn address(&self, ip: IpAddr) -> String {
        if let Some(p) = self.pod_with(ip) {
            return p.to_string();
        }
        let key = crate::compiler::ip_key(ip);
        if let Some(v) = self.state.ip_identity.get(&key) {
            return self.identity(v.identity);
        }
        let best = self
            .state
            .cidr_identity
            .iter()
            .filter(|(k, _)| contains(&k.data, k.prefix_len, &key))
            .max_by_key(|(k, _)| k.prefix_len);
        match best {
            Some((_, v)) => self.identity(v.identity),
            None => "world".into(),
        }
    }
}

/// Whether the prefix `net/len` holds `addr` (both 16-byte keys).
fn contains(net: &IpAddrKey, len: u32, addr: &IpAddrKey) -> bool {
    let len = len.min(128) as usize;
    let (bytes, bits) = (len / 8, len % 8);
    if net.addr[..bytes] != addr.addr[..bytes] {
        return false;
    }
    bits == 0 || {
        let mask = 0xffu8 << (8 - bits);
        net.addr[bytes] & mask == addr.addr[bytes] & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Lpm;
    use enforcer_common::IdentityValue;

    #[test]
    fn addresses_are_named_by_pod_host_prefix_or_world() {
        let mut st = MapState::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        st.ip_identity.insert(
            crate::compiler::ip_key(ip("192.0.2.1")),
            IdentityValue {
                identity: identity::HOST,
                endpoint_id: 0,
            },
        );
        let cidr = identity::CIDR_FLAG | 1;
        st.cidr_identity.insert(
            Lpm {
                prefix_len: 96 + 24,
                data: crate::compiler::ip_key(ip("198.51.100.0")),
            },
            IdentityValue {
                identity: cidr,
                endpoint_id: 0,
            },
        );
        let names = Names::from([(
            NameKey {
                kind: name_kind::IDENTITY,
                id: cidr,
            },
            "ipBlock 198.51.100.0/24".to_string(),
        )]);
        let mut rec: AgentRecord =
            serde_json::from_value(serde_json::json!({"pid": 1, "started": "", "version": "",
                "commit": "", "node": "", "bpffs": "/x", "source": "manifests",
                "source_location": null, "synced": true, "generation": null, "error": null}))
            .unwrap();
        rec.pod_ips.insert("10.0.0.5".into(), "x/a".into());
        let n = Namer {
            names: &names,
            record: Some(&rec),
            state: &st,
            numeric: false,
        };
        assert_eq!(n.address(ip("10.0.0.5")), "x/a");
        assert_eq!(n.address(ip("192.0.2.1")), "host");
        assert_eq!(n.address(ip("198.51.100.77")), "ipBlock 198.51.100.0/24");
        assert_eq!(n.address(ip("203.0.113.9")), "world");
        let numeric = Namer { numeric: true, ..n };
        assert_eq!(numeric.address(ip("198.51.100.77")), "cidr:1");
        assert_eq!(numeric.policy(9), "#9");
    }
}
