//! Service egress, decided against the Service's backends (pure; see docs/architecture.md,
//! "Services").
//!
//! kube-proxy translates a Service address to one of its backends after `from_endpoint` has
//! seen the packet. Rather than wait for the translated packet (which may never meet another
//! program: a host-networked backend, an L3 device, masquerade, IPVS), the agent judges every
//! backend of every Service port with each isolated endpoint's egress entries and writes the
//! outcome under the Service's identity:
//! - every backend allowed: `POLICY_ACTION_ALLOW` (admitted at the pod);
//! - none: no entry (dropped at the pod, `NO_RULE`);
//! - some: `POLICY_ACTION_DEFER`, and the port's backends go to `SERVICE_BACKENDS`, so that
//!   only the translated packet can claim the deferred verdict;
//! - some, but a backend the endpoint may not reach is the node itself (no program meets a
//!   packet delivered locally), or the backends are unknown: `POLICY_ACTION_UNBOUND`
//!   (dropped at the pod, `SERVICE_UNBOUND`): fail closed.
//!
//! Backends are what kube's endpoints controller makes of the selector: every pod of the
//! Service's namespace whose labels match, at the target port (a number, or the pod's own
//! container port of that name and protocol), with an address of the cluster IP's family.
//! Readiness is not known here; a pod that is not ready yet counts as a backend, which only
//! ever makes a verdict mixed (deferred), never wrongly all-allowed or all-denied.

use std::collections::BTreeMap;
use std::net::IpAddr;

use enforcer_common::{
    IdentityValue, IpAddrKey, POLICY_ACTION_ALLOW, POLICY_ACTION_DEFER, POLICY_ACTION_UNBOUND,
    PolicyKey, PolicyValue, ServiceBackendKey, direction, policy_prefix,
};

use crate::compiler::{Cluster, ip_key};
use crate::lookup::rule_lookup;
use crate::model::{Protocol, ServiceTarget};
use crate::state::Lpm;

/// One port of one Service address, with its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortBackends {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// (address, port) of each backend; `None` when the Service has no selector (its
    /// endpoints are written by someone else and unknown here).
    pub backends: Option<Vec<(IpAddr, u16)>>,
}

/// Every Service port of the cluster with its backends.
pub fn backends(cluster: &Cluster) -> Vec<ServicePortBackends> {
    let mut out = Vec::new();
    for svc in cluster.services.values() {
        for address in &svc.cluster_ips {
            for port in &svc.ports {
                let backends = svc.selector.as_ref().map(|selector| {
                    let mut b: Vec<(IpAddr, u16)> = cluster
                        .pods
                        .values()
                        .filter(|p| {
                            p.namespace == svc.namespace
                                && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                        })
                        .filter_map(|p| {
                            let target = match &port.target {
                                ServiceTarget::Number(n) => Some(*n),
                                ServiceTarget::Name(name) => p.named_port(name, port.protocol),
                            }?;
                            let ip = p
                                .ips
                                .iter()
                                .find(|ip| ip_key(**ip).is_v4_mapped() == address.is_ipv4())?;
                            Some((*ip, target))
                        })
                        .collect();
                    b.sort();
                    b.dedup();
                    b
                });
                out.push(ServicePortBackends {
                    address: *address,
                    port: port.port,
                    protocol: port.protocol,
                    backends,
                });
            }
        }
    }
    out
}

/// Adds one endpoint's Service entries (under each Service identity, exact port) to its
/// compiled egress `entries`, and the backends of its deferred ports to `service_backends`.
#[allow(clippy::too_many_arguments)]
pub fn verdicts(
    services: &[ServicePortBackends],
    service_ips: &BTreeMap<IpAddrKey, u32>,
    ip_identity: &BTreeMap<IpAddrKey, IdentityValue>,
    cidr_identity: &BTreeMap<Lpm<IpAddrKey>, IdentityValue>,
    host_ips: &[IpAddr],
    entries: &mut BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    service_backends: &mut BTreeMap<ServiceBackendKey, u32>,
) {
    let mut add = Vec::new();
    for s in services {
        let Some(service_id) = service_ips.get(&ip_key(s.address)) else {
            continue;
        };
        let proto = s.protocol.number();
        let key = Lpm {
            prefix_len: policy_prefix::FULL,
            data: PolicyKey {
                policy_set: 0,
                identity: *service_id,
                direction: direction::EGRESS,
                proto,
                port_be: s.port.to_be(),
            },
        };
        let mark = |action| PolicyValue {
            policy_id: 0,
            rule_index: 0,
            action,
            flags: 0,
        };
        let Some(backends) = &s.backends else {
            add.push((key, mark(POLICY_ACTION_UNBOUND)));
            continue;
        };
        let judged: Vec<(IpAddr, u16, Option<PolicyValue>)> = backends
            .iter()
            .map(|(ip, port)| {
                let r = rule_lookup(
                    entries,
                    ip_identity,
                    cidr_identity,
                    0,
                    direction::EGRESS,
                    *ip,
                    proto,
                    *port,
                    true,
                );
                let allowed = r
                    .entry
                    .map(|(v, _)| v)
                    .filter(|v| v.action == POLICY_ACTION_ALLOW);
                (*ip, *port, allowed)
            })
            .collect();
        let allowed = judged.iter().filter(|b| b.2.is_some()).count();
        if allowed == 0 {
            // None (or no backend at all): no entry, dropped at the pod as no rule allows it.
            continue;
        }
        if allowed == judged.len() {
            let first = judged[0].2.expect("allowed");
            add.push((key, first));
            continue;
        }
        // Mixed: the translated packet decides, unless a backend it may not reach is one no
        // program would meet once translated (the node's own address).
        if judged
            .iter()
            .any(|(ip, _, v)| v.is_none() && host_ips.contains(ip))
        {
            add.push((key, mark(POLICY_ACTION_UNBOUND)));
            continue;
        }
        add.push((key, mark(POLICY_ACTION_DEFER)));
        for (ip, port, _) in &judged {
            service_backends.insert(
                ServiceBackendKey {
                    service_addr: ip_key(s.address).addr,
                    backend_addr: ip_key(*ip).addr,
                    service_port_be: s.port.to_be(),
                    backend_port_be: port.to_be(),
                    proto,
                    _pad: [0; 3],
                },
                1,
            );
        }
    }
    entries.extend(add);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::{Ids, NodeInput, compile};
    use crate::model::ObjectRef;
    use crate::source::parse_objects;
    use crate::state::MapState;
    use enforcer_common::identity;

    const BASE: &str = r#"
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: client, labels: {app: client}}
spec: {nodeName: n1}
status: {podIPs: [{ip: 10.0.0.7}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: a, labels: {app: web, v: a}}
spec:
  nodeName: n2
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {podIPs: [{ip: 10.0.1.1}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: b, labels: {app: web, v: b}}
spec:
  nodeName: n2
  containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]
status: {podIPs: [{ip: 10.0.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: host, labels: {app: host}}
spec: {nodeName: n1, hostNetwork: true}
status: {podIPs: [{ip: 172.31.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: x, name: web}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: x, name: mixed-host}
spec: {clusterIP: 10.96.0.11, selector: {v: a}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: x, name: manual}
spec: {clusterIP: 10.96.0.12, ports: [{port: 443}]}
"#;

    /// The client's Service entry for (address, TCP port) and the backends installed.
    fn verdict(extra: &str, svc: &str, port: u16) -> (Option<u8>, usize) {
        let mut c = Cluster::default();
        for obj in parse_objects("t.yaml", &format!("{BASE}---\n{extra}")).unwrap() {
            c.insert(obj);
        }
        let node = NodeInput {
            node: "n1".into(),
            interfaces: [(ObjectRef::new("x", "client"), 5)].into(),
            host_ips: vec!["172.31.0.1".parse().unwrap()],
            allow_host_ingress: true,
            ..NodeInput::default()
        };
        let mut ids = Ids::default();
        let out = compile(&c, &node, &mut ids, &MapState::default());
        let id = out.service_ips[&ip_key(svc.parse().unwrap())];
        assert_ne!(id & identity::SERVICE_FLAG, 0);
        let ep = out.endpoints.values().next().unwrap();
        let action = ep
            .entries
            .iter()
            .find(|(k, _)| k.data.identity == id && u16::from_be(k.data.port_be) == port)
            .map(|(_, v)| v.action);
        (action, out.service_backends.len())
    }

    fn egress(to: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{namespace: x, name: p}}\nspec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress: [{to}]\n"
        )
    }

    #[test]
    fn each_service_port_gets_the_verdict_of_its_backends() {
        // Named target port: a at 8080, b at 9090.
        let none = egress("{ports: [{port: 53, protocol: UDP}]}");
        assert_eq!(verdict(&none, "10.96.0.10", 80), (None, 0));
        let all = egress("{to: [{podSelector: {matchLabels: {app: web}}}]}");
        assert_eq!(
            verdict(&all, "10.96.0.10", 80),
            (Some(POLICY_ACTION_ALLOW), 0)
        );
        // 8080 only: a allowed, b (9090) not: deferred, both backends bound.
        let port =
            egress("{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 8080}]}");
        assert_eq!(
            verdict(&port, "10.96.0.10", 80),
            (Some(POLICY_ACTION_DEFER), 2)
        );
        // No selector: the backends are unknown.
        assert_eq!(
            verdict(&all, "10.96.0.12", 443),
            (Some(POLICY_ACTION_UNBOUND), 0)
        );
    }

    #[test]
    fn a_mixed_port_with_a_denied_backend_on_the_node_fails_closed() {
        let mut extra = String::from(
            "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x, name: h2, labels: {v: a}}\nspec: {nodeName: n1, hostNetwork: true}\nstatus: {podIPs: [{ip: 172.31.0.1}]}\n---\n",
        );
        extra.push_str(&egress("{to: [{podSelector: {matchLabels: {app: web}}}]}"));
        // Backends: a (allowed) and the node itself (h2, host-networked, not allowed).
        assert_eq!(
            verdict(&extra, "10.96.0.11", 80),
            (Some(POLICY_ACTION_UNBOUND), 0)
        );
    }
}
