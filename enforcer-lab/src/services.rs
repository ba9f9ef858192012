//! ClusterIP Services, translated on every lab node the way kube-proxy's nftables mode does:
//! in each node namespace one table, `inet enforcer-lab-svc`, whose nat chains DNAT
//! `clusterIP:port/protocol` to the Service's ready endpoints (every pod of the Service's
//! namespace that its selector matches, on any node) at their target port, picking one at
//! random (`numgen random`). The prerouting chain translates what the node forwards (pod
//! traffic), the output chain what the node itself sends. Like kube-proxy:
//!
//! - a packet to a cluster IP that no rule translated (a port the Service lacks, or a Service
//!   without endpoints) is rejected (ICMP port unreachable) in the filter chains;
//! - a pod reaching itself through its own Service (hairpin) is masqueraded to the node's
//!   address, so that the reply goes back through the node and is un-DNATed.
//!
//! The whole table is replaced in one `nft -f` transaction whenever the Services or their
//! endpoints change (a step's apply, delete or relabel), so no packet sees half a table.
//! Cluster IPs are routed: pods send the service range (and any other cluster IP) to their
//! node, and nodes route it to `svc0`, a bridge without ports (so that the node's own
//! connections find a route before the output chain translates them; what no rule translates
//! goes nowhere).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::plan::{PodPlan, fnv};
use crate::scenario::{Labels, PortRef, Protocol, ServicePort, ServiceSpec};

/// The nftables table the lab owns in every node namespace.
pub const NFT_TABLE: &str = "enforcer-lab-svc";
/// The interface the nodes route cluster IPs to.
pub const SVC_IF: &str = "svc0";
/// Where cluster IPs are assigned from (the kube-apiserver default service CIDR).
pub const SERVICE_CIDR_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 16);

/// A Service as the lab runs it: with its cluster IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: IpAddr,
    pub selector: Labels,
    pub ports: Vec<ServicePort>,
}

impl ServicePlan {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The port a probe names: by number (and protocol) or by name.
    pub fn find_port(&self, port: &PortRef, protocol: Protocol) -> Result<&ServicePort, String> {
        let found = match port {
            PortRef::Number(n) => self
                .ports
                .iter()
                .find(|p| p.port == *n && p.protocol == protocol),
            PortRef::Name(name) => self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str())),
        };
        match found {
            Some(p) if p.protocol == protocol => Ok(p),
            Some(p) => Err(format!(
                "port {port} of Service {} is {}, the probe is {protocol}",
                self.key(),
                p.protocol
            )),
            None => Err(format!(
                "Service {} has no {protocol} port {port} (ports: {})",
                self.key(),
                self.ports
                    .iter()
                    .map(|p| match &p.name {
                        Some(n) => format!("{n} {}/{}", p.port, p.protocol),
                        None => format!("{}/{}", p.port, p.protocol),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The v1 Service as the API server would hold it once created.
    pub fn manifest(&self) -> serde_json::Value {
        use serde_json::json;
        let ports: Vec<serde_json::Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({
                    "port": p.port,
                    "targetPort": match &p.target_port {
                        PortRef::Number(n) => json!(n),
                        PortRef::Name(s) => json!(s),
                    },
                    "protocol": p.protocol.as_str(),
                });
                if let Some(n) = &p.name {
                    v["name"] = json!(n);
                }
                v
            })
            .collect();
        let family = if self.cluster_ip.is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"namespace": self.namespace, "name": self.name},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.cluster_ip.to_string(),
                "clusterIPs": [self.cluster_ip.to_string()],
                "ipFamilies": [family],
                "ipFamilyPolicy": "SingleStack",
                "selector": self.selector,
                "ports": ports,
            },
        })
    }
}

/// Cluster IPs: explicit ones checked, missing ones assigned from [`SERVICE_CIDR_V4`] (from
/// .10 up), one per Service name for the whole run (a Service applied again keeps its IP).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIps {
    /// `namespace/name` → its cluster IP.
    pub assigned: BTreeMap<String, IpAddr>,
    /// Addresses of pods, hosts and nodes, which no Service may take.
    pub reserved: BTreeMap<IpAddr, String>,
    /// Cluster IPs that Services ask for by name (`namespace/name`), at any step: never
    /// assigned to another Service.
    #[serde(default)]
    pub wanted: BTreeMap<IpAddr, String>,
}

impl ClusterIps {
    pub fn new(reserved: BTreeMap<IpAddr, String>) -> Self {
        ClusterIps {
            assigned: BTreeMap::new(),
            reserved,
            wanted: BTreeMap::new(),
        }
    }

    /// Notes the cluster IP a Service asks for, so that no Service without one takes it first.
    pub fn want(&mut self, s: &ServiceSpec) {
        if let Some(ip) = s.cluster_ip {
            self.wanted
                .entry(ip)
                .or_insert_with(|| format!("{}/{}", s.namespace, s.name));
        }
    }

    /// The Service with its cluster IP, or why it cannot have the one it asks for.
    pub fn plan(&mut self, s: &ServiceSpec) -> Result<ServicePlan, String> {
        let key = format!("{}/{}", s.namespace, s.name);
        let ip = match s.cluster_ip {
            Some(ip) => {
                if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                    return Err(format!("{ip} cannot be a cluster IP"));
                }
                if let IpAddr::V6(v6) = ip
                    && v6.is_unicast_link_local()
                {
                    return Err(format!("{ip} is link-local"));
                }
                if let Some(who) = self.reserved.get(&ip) {
                    return Err(format!("{ip} is already the address of {who}"));
                }
                if let Some((other, _)) =
                    self.assigned.iter().find(|(k, a)| **a == ip && **k != key)
                {
                    return Err(format!("{ip} is already the cluster IP of Service {other}"));
                }
                ip
            }
            None => match self.assigned.get(&key) {
                Some(ip) => *ip,
                None => self
                    .next_free()
                    .ok_or("no free cluster IP left in 10.96.0.0/16")?,
            },
        };
        self.assigned.insert(key, ip);
        Ok(ServicePlan {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            cluster_ip: ip,
            selector: s.selector.clone(),
            ports: s.ports.clone(),
        })
    }

    fn next_free(&self) -> Option<IpAddr> {
        let taken: BTreeSet<&IpAddr> = self.assigned.values().collect();
        let base = u32::from(SERVICE_CIDR_V4.0);
        let size = 1u32 << (32 - SERVICE_CIDR_V4.1);
        (10..size - 1)
            .map(|i| IpAddr::V4(Ipv4Addr::from(base + i)))
            .find(|ip| {
                !taken.contains(ip)
                    && !self.reserved.contains_key(ip)
                    && !self.wanted.contains_key(ip)
            })
    }
}

/// What pods (by way of their node) and nodes route to `svc0`: the service range, and each
/// cluster IP outside it as a host prefix.
pub fn routes_for(ips: &ClusterIps) -> Vec<(IpAddr, u8)> {
    let mut out = vec![(IpAddr::V4(SERVICE_CIDR_V4.0), SERVICE_CIDR_V4.1)];
    for ip in ips.assigned.values() {
        if !in_service_cidr(ip) {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            if !out.contains(&(*ip, len)) {
                out.push((*ip, len));
            }
        }
    }
    out
}

/// Installs the Services of `state` on every node (`nft -f` in each, in parallel).
pub async fn install(
    pods: &[PodPlan],
    state: &crate::manifests::ClusterState,
    nodes: &[crate::netns::Netns],
) -> anyhow::Result<()> {
    use anyhow::Context;
    let script = nft_script(pods, &state.pod_labels, &state.service_list());
    let mut jobs = tokio::task::JoinSet::new();
    for ns in nodes {
        let ns = ns.clone();
        let script = script.clone();
        jobs.spawn(async move { crate::netns::nft(&ns, &script).await });
    }
    while let Some(r) = jobs.join_next().await {
        r.context("nft task")?
            .context("installing the Services' rules")?;
    }
    Ok(())
}

/// Is `ip` inside the service range every pod and node routes anyway?
pub fn in_service_cidr(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX << (32 - SERVICE_CIDR_V4.1);
            u32::from(*a) & mask == u32::from(SERVICE_CIDR_V4.0)
        }
        IpAddr::V6(_) => false,
    }
}

/// One endpoint of a Service port: a pod (by index), its address and the target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub pod: usize,
    pub ip: IpAddr,
    pub port: u16,
}

/// Does `labels` satisfy `selector`? An empty selector selects nothing (a Service without a
/// selector has no endpoints of its own).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The ready endpoints of one port of `svc`: every pod of its namespace that its selector
/// matches (with the labels it has now), at the target port — a number as is, a name looked up
/// in that pod's own declared ports (with the Service port's protocol); a pod that declares no
/// such port is no endpoint of this port. Addresses of the cluster IP's family only.
pub fn backends(
    pods: &[PodPlan],
    pod_labels: &[Labels],
    svc: &ServicePlan,
    port: &ServicePort,
) -> Vec<Backend> {
    let mut out = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        if pod.namespace != svc.namespace || !selects(&svc.selector, &pod_labels[i]) {
            continue;
        }
        let target = match &port.target_port {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => pod
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == port.protocol)
                .map(|p| p.port),
        };
        let ip = pod
            .ips
            .iter()
            .find(|ip| ip.is_ipv4() == svc.cluster_ip.is_ipv4());
        if let (Some(port), Some(ip)) = (target, ip) {
            out.push(Backend {
                pod: i,
                ip: *ip,
                port,
            });
        }
    }
    out
}

fn proto_kw(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn fam_kw(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

fn sock(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The script that makes a node's table hold exactly these Services (replacing whatever it
/// held, in one transaction). `services` in any order; the output is sorted and stable.
pub fn nft_script(pods: &[PodPlan], pod_labels: &[Labels], services: &[ServicePlan]) -> String {
    let mut services: Vec<&ServicePlan> = services.iter().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut dispatch = String::new();
    let mut chains = String::new();
    let mut hairpin: BTreeSet<IpAddr> = BTreeSet::new();
    let mut cluster_ips: BTreeSet<IpAddr> = BTreeSet::new();
    for svc in &services {
        cluster_ips.insert(svc.cluster_ip);
        for port in &svc.ports {
            let backends = backends(pods, pod_labels, svc, port);
            let proto = proto_kw(port.protocol);
            let port_label = port.name.clone().unwrap_or_else(|| port.port.to_string());
            let comment = format!("{} {port_label}", svc.key());
            if backends.is_empty() {
                // No endpoints: the filter chains reject it.
                let _ = writeln!(dispatch, "    # {comment}: no endpoints");
                continue;
            }
            let chain = format!("svc-{}/{}/{proto}/{}", svc.namespace, svc.name, port.port);
            let _ = writeln!(
                dispatch,
                "    {} daddr {} {proto} dport {} goto {chain} comment \"{comment}\"",
                fam_kw(&svc.cluster_ip),
                svc.cluster_ip,
                port.port
            );
            let mut arms = Vec::new();
            let mut ep_chains = String::new();
            for (i, b) in backends.iter().enumerate() {
                let ep = format!(
                    "ep-{:08x}",
                    fnv(&format!("{chain} {} {}", b.ip, b.port)) as u32
                );
                arms.push(format!("{i} : goto {ep}"));
                let _ = writeln!(
                    ep_chains,
                    "  chain {ep} {{\n    meta l4proto {proto} dnat {} to {} comment \"{}/{} {}\"\n  }}",
                    fam_kw(&b.ip),
                    sock(&b.ip, b.port),
                    pods[b.pod].namespace,
                    pods[b.pod].name,
                    sock(&b.ip, b.port),
                );
                hairpin.insert(b.ip);
            }
            let _ = writeln!(
                chains,
                "  chain {chain} {{\n    numgen random mod {} vmap {{ {} }}\n  }}",
                backends.len(),
                arms.join(", ")
            );
            chains.push_str(&ep_chains);
        }
    }

    let mut out = String::new();
    // Create-then-delete makes the delete succeed whether or not the table exists.
    let _ = writeln!(out, "table inet {NFT_TABLE} {{}}");
    let _ = writeln!(out, "delete table inet {NFT_TABLE}");
    let _ = writeln!(out, "table inet {NFT_TABLE} {{");
    let _ = writeln!(out, "  chain services {{");
    out.push_str(&dispatch);
    let _ = writeln!(out, "  }}");
    let _ = writeln!(
        out,
        "  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}"
    );
    let _ = writeln!(
        out,
        "  chain nat-output {{\n    type nat hook output priority -100; policy accept;\n    jump services\n  }}"
    );
    let _ = writeln!(
        out,
        "  chain nat-postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;"
    );
    for ip in &hairpin {
        let fam = fam_kw(ip);
        let _ = writeln!(
            out,
            "    {fam} saddr {ip} {fam} daddr {ip} ct status dnat masquerade comment \"hairpin\""
        );
    }
    let _ = writeln!(out, "  }}");
    out.push_str(&chains);
    let _ = writeln!(
        out,
        "  chain filter-forward {{\n    type filter hook forward priority filter; policy accept;\n    jump cluster-ips-check\n  }}"
    );
    let _ = writeln!(
        out,
        "  chain filter-output {{\n    type filter hook output priority filter; policy accept;\n    jump cluster-ips-check\n  }}"
    );
    let _ = writeln!(out, "  chain cluster-ips-check {{");
    for fam in ["ip", "ip6"] {
        let ips: Vec<String> = cluster_ips
            .iter()
            .filter(|ip| fam_kw(ip) == fam)
            .map(|ip| ip.to_string())
            .collect();
        if !ips.is_empty() {
            let _ = writeln!(
                out,
                "    {fam} daddr {{ {} }} reject comment \"a cluster IP, not translated: no such port or no endpoints\"",
                ips.join(", ")
            );
        }
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::scenario::parse;

    const TEXT: &str = "
nodes: [n1, n2]
pods:
  - {namespace: x, name: a, node: n1, labels: {app: web}, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]}
  - {namespace: x, name: b, node: n2, labels: {app: web}, ips: [10.42.2.20, 'fd00::b'], ports: [{name: http, port: 8080}]}
  - {namespace: x, name: c, node: n2, labels: {app: db}, ports: [{name: http, port: 80}]}
  - {namespace: y, name: a, node: n1, labels: {app: web}, ports: [{name: http, port: 80}]}
services:
  - namespace: x
    name: web
    selector: {app: web}
    ports:
      - {name: http, port: 8080, targetPort: http}
      - {name: raw, port: 81, targetPort: 80}
      - {name: dns, port: 53, targetPort: dns, protocol: UDP}
  - {namespace: x, name: web6, clusterIP: 'fd00:96::10', selector: {app: web}, ports: [{port: 80, targetPort: http}]}
  - {namespace: x, name: empty, clusterIP: 10.96.5.5, selector: {app: nothing}, ports: [{port: 80}]}
";

    fn setup() -> crate::plan::Plan {
        plan(&parse(TEXT).unwrap(), "enf-000000-").unwrap()
    }

    fn svc<'a>(p: &'a crate::plan::Plan, name: &str) -> &'a ServicePlan {
        p.services.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn cluster_ips_are_assigned_and_checked() {
        let p = setup();
        let ips: Vec<String> = p
            .services
            .iter()
            .map(|s| format!("{} {}", s.key(), s.cluster_ip))
            .collect();
        assert_eq!(
            ips,
            vec![
                "x/empty 10.96.5.5",
                "x/web 10.96.0.10",
                "x/web6 fd00:96::10"
            ]
        );
        let e = plan(
            &parse("pods: [{namespace: x, name: a, ips: [10.96.0.10]}]\nservices: [{namespace: x, name: s, clusterIP: 10.96.0.10, ports: [{port: 80}]}]").unwrap(),
            "enf-000000-",
        )
        .unwrap_err();
        assert_eq!(e.path, "services[0].clusterIP");
        assert!(e.reason.contains("already the address of x/a"), "{e}");
        let e = plan(
            &parse("namespaces: [{name: x}]\nservices: [{namespace: x, name: s, clusterIP: 10.96.0.10, ports: [{port: 80}]}, {namespace: x, name: t, clusterIP: 10.96.0.10, ports: [{port: 80}]}]").unwrap(),
            "enf-000000-",
        )
        .unwrap_err();
        assert!(e.reason.contains("cluster IP of Service x/s"), "{e}");
        // An IP asked for later (or in a later step) is not given to an earlier Service.
        let p = plan(
            &parse("namespaces: [{name: x}]\nservices: [{namespace: x, name: a, ports: [{port: 80}]}, {namespace: x, name: dns, clusterIP: 10.96.0.10, ports: [{port: 53}]}]\nsteps: [{apply: [{apiVersion: v1, kind: Service, metadata: {name: b, namespace: x}, spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}}]}]").unwrap(),
            "enf-000000-",
        )
        .unwrap();
        let got: Vec<String> = p
            .services
            .iter()
            .map(|s| format!("{} {}", s.key(), s.cluster_ip))
            .collect();
        assert_eq!(got, vec!["x/a 10.96.0.12", "x/dns 10.96.0.10"]);
    }

    #[test]
    fn backends_follow_selector_namespace_and_named_ports() {
        let p = setup();
        let labels: Vec<Labels> = p.pods.iter().map(|x| x.labels.clone()).collect();
        let web = svc(&p, "web");
        let b = |port: usize| -> Vec<(usize, String, u16)> {
            backends(&p.pods, &labels, web, &web.ports[port])
                .into_iter()
                .map(|b| (b.pod, b.ip.to_string(), b.port))
                .collect()
        };
        // By name: each pod's own number; not y/a (other namespace), not x/c (not selected).
        assert_eq!(
            b(0),
            vec![(0, "10.42.1.10".into(), 80), (1, "10.42.2.20".into(), 8080)]
        );
        // By number: as is, whatever the pod declares.
        assert_eq!(
            b(1),
            vec![(0, "10.42.1.10".into(), 80), (1, "10.42.2.20".into(), 80)]
        );
        // A name with the wrong protocol or not declared: no endpoint on that pod.
        assert_eq!(b(2), vec![(0, "10.42.1.10".into(), 53)]);
        // IPv6 cluster IP: IPv6 addresses only.
        let v6 = svc(&p, "web6");
        let got = backends(&p.pods, &labels, v6, &v6.ports[0]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ip.to_string(), "fd00::b");
        // A relabel changes the endpoints.
        let mut relabeled = labels.clone();
        relabeled[2].insert("app".into(), "web".into());
        relabeled[0].clear();
        let got: Vec<usize> = backends(&p.pods, &relabeled, web, &web.ports[1])
            .iter()
            .map(|b| b.pod)
            .collect();
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn nft_rules_translate_like_kube_proxy() {
        let p = setup();
        let labels: Vec<Labels> = p.pods.iter().map(|x| x.labels.clone()).collect();
        let script = nft_script(&p.pods, &labels, &p.services);
        let lines: Vec<&str> = script.lines().map(str::trim).collect();
        let has = |l: &str| lines.contains(&l);
        // Replaced whole, in one transaction.
        assert_eq!(
            &lines[..3],
            &[
                "table inet enforcer-lab-svc {}",
                "delete table inet enforcer-lab-svc",
                "table inet enforcer-lab-svc {"
            ]
        );
        // Dispatch on cluster IP, protocol and Service port.
        assert!(has(
            "ip daddr 10.96.0.10 tcp dport 8080 goto svc-x/web/tcp/8080 comment \"x/web http\""
        ));
        assert!(has(
            "ip daddr 10.96.0.10 udp dport 53 goto svc-x/web/udp/53 comment \"x/web dns\""
        ));
        assert!(has(
            "ip6 daddr fd00:96::10 tcp dport 80 goto svc-x/web6/tcp/80 comment \"x/web6 80\""
        ));
        assert!(
            !script.contains("10.96.5.5 tcp dport"),
            "no endpoints: no DNAT"
        );
        // Random choice among the endpoints, each a DNAT to pod:targetPort.
        let pos = lines
            .iter()
            .position(|l| *l == "chain svc-x/web/tcp/8080 {")
            .unwrap();
        assert!(
            lines[pos + 1].starts_with("numgen random mod 2 vmap { 0 : goto ep-"),
            "{}",
            lines[pos + 1]
        );
        assert!(has(
            "meta l4proto tcp dnat ip to 10.42.1.10:80 comment \"x/a 10.42.1.10:80\""
        ));
        assert!(has(
            "meta l4proto tcp dnat ip to 10.42.2.20:8080 comment \"x/b 10.42.2.20:8080\""
        ));
        assert!(has(
            "meta l4proto tcp dnat ip to 10.42.2.20:80 comment \"x/b 10.42.2.20:80\""
        ));
        assert!(has(
            "meta l4proto tcp dnat ip6 to [fd00::b]:8080 comment \"x/b [fd00::b]:8080\""
        ));
        let pos = lines
            .iter()
            .position(|l| *l == "chain svc-x/web/udp/53 {")
            .unwrap();
        assert!(lines[pos + 1].starts_with("numgen random mod 1 vmap { 0 : goto ep-"));
        // Both hooks: forwarded (pods) and the node's own traffic.
        assert!(has(
            "type nat hook prerouting priority dstnat; policy accept;"
        ));
        assert!(has("type nat hook output priority -100; policy accept;"));
        // Hairpin and the rejects.
        assert!(has(
            "ip saddr 10.42.1.10 ip daddr 10.42.1.10 ct status dnat masquerade comment \"hairpin\""
        ));
        assert!(script.contains("ip daddr { 10.96.0.10, 10.96.5.5 } reject"));
        assert!(script.contains("ip6 daddr { fd00:96::10 } reject"));
        // Stable output whatever the order of the Services.
        let mut rev = p.services.clone();
        rev.reverse();
        assert_eq!(nft_script(&p.pods, &labels, &rev), script);
    }

    #[test]
    fn an_empty_table_is_still_a_valid_script() {
        let p = setup();
        let s = nft_script(&p.pods, &[], &[]);
        assert!(s.contains("chain services {\n  }"), "{s}");
        assert!(!s.contains("reject"));
    }

    #[test]
    fn service_manifests_are_v1_services() {
        let p = setup();
        let m = svc(&p, "web").manifest();
        assert_eq!(m["apiVersion"], "v1");
        assert_eq!(m["kind"], "Service");
        assert_eq!(
            m["metadata"],
            serde_json::json!({"namespace": "x", "name": "web"})
        );
        assert_eq!(m["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(m["spec"]["clusterIPs"], serde_json::json!(["10.96.0.10"]));
        assert_eq!(m["spec"]["selector"], serde_json::json!({"app": "web"}));
        assert_eq!(
            m["spec"]["ports"][0],
            serde_json::json!({"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"})
        );
        assert_eq!(m["spec"]["ports"][1]["targetPort"], serde_json::json!(80));
    }

    #[test]
    fn probes_name_service_ports() {
        let p = setup();
        let web = svc(&p, "web");
        assert_eq!(
            web.find_port(&PortRef::Name("dns".into()), Protocol::Udp)
                .unwrap()
                .port,
            53
        );
        assert_eq!(
            web.find_port(&PortRef::Number(81), Protocol::Tcp)
                .unwrap()
                .port,
            81
        );
        let e = web
            .find_port(&PortRef::Name("dns".into()), Protocol::Tcp)
            .unwrap_err();
        assert!(e.contains("is UDP, the probe is TCP"), "{e}");
        let e = web
            .find_port(&PortRef::Number(82), Protocol::Tcp)
            .unwrap_err();
        assert!(
            e.contains("no TCP port 82 (ports: http 8080/TCP, raw 81/TCP, dns 53/UDP)"),
            "{e}"
        );
    }
}
