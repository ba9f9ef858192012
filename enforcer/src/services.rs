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
//! Backends of a Service with a selector are what kube's endpoints controller makes of it:
//! every pod of the Service's namespace whose labels match, at the target port (a number, or
//! the pod's own container port of that name and protocol), with an address of the cluster
//! IP's family. Readiness is not known here; a pod that is not ready yet counts as a backend,
//! which only ever makes a verdict mixed (deferred), never wrongly all-allowed or all-denied.
//!
//! A Service without a selector (kubernetes.default, or any Service whose endpoints someone
//! else writes) takes its backends from its EndpointSlices (label
//! `kubernetes.io/service-name`), read as kube-proxy reads them (see [`sliced`]). Without any
//! slice its backends are unknown: unbound.

use std::collections::BTreeMap;
use std::net::IpAddr;

use enforcer_common::{
    EndpointInfo, IdentityValue, IpAddrKey, POLICY_ACTION_ALLOW, POLICY_ACTION_DEFER,
    POLICY_ACTION_DENY, POLICY_ACTION_UNBOUND, PolicyKey, PolicyValue, ServiceBackendKey,
    direction, policy_prefix, reason, tier,
};

use crate::compiler::{Cluster, ip_key};
use crate::lookup::{Decision, PolicyView};
use crate::model::{EndpointSlice, Labels, Protocol, Service, ServicePort, ServiceTarget};
use crate::state::Lpm;

/// One port of one Service address, with its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortBackends {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// (address, port) of each backend; `None` when they are unknown (a Service without a
    /// selector and without an EndpointSlice).
    pub backends: Option<Vec<(IpAddr, u16)>>,
}

/// Every Service port of the cluster with its backends.
pub fn backends(cluster: &Cluster) -> Vec<ServicePortBackends> {
    let mut out = Vec::new();
    for svc in cluster.services.values() {
        for address in &svc.cluster_ips {
            for port in &svc.ports {
                let backends = match &svc.selector {
                    Some(selector) => Some(selected(cluster, svc, selector, port, *address)),
                    None => sliced(cluster, svc, port, *address),
                };
                out.push(ServicePortBackends {
                    address: *address,
                    port: port.port,
                    protocol: port.protocol,
                    backends: backends.map(|mut b| {
                        b.sort();
                        b.dedup();
                        b
                    }),
                });
            }
        }
    }
    out
}

/// The backends of a Service with a selector: its namespace's pods whose labels match.
fn selected(
    cluster: &Cluster,
    svc: &Service,
    selector: &Labels,
    port: &ServicePort,
    address: IpAddr,
) -> Vec<(IpAddr, u16)> {
    cluster
        .pods
        .values()
        .filter(|p| {
            p.namespace == svc.namespace && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
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
        .collect()
}

/// The backends of a Service without a selector, from its EndpointSlices, as kube-proxy reads
/// them: the slice port of the Service port's name and protocol (an unnamed Service port also
/// takes a slice's only port of its protocol), the addresses of the cluster IP's family, the
/// ready endpoints, or the serving (terminating) ones when none is ready. No slice at all:
/// unknown (`None`).
fn sliced(
    cluster: &Cluster,
    svc: &Service,
    port: &ServicePort,
    address: IpAddr,
) -> Option<Vec<(IpAddr, u16)>> {
    let slices: Vec<&EndpointSlice> = cluster
        .slices
        .values()
        .filter(|s| s.namespace == svc.namespace && s.service.as_deref() == Some(&svc.name))
        .collect();
    if slices.is_empty() {
        return None;
    }
    let mut found: Vec<(IpAddr, u16, bool)> = Vec::new();
    for slice in slices {
        let by_name = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == port.protocol);
        let only = match slice.ports.as_slice() {
            [p] if port.name.is_none() && p.protocol == port.protocol => Some(p),
            _ => None,
        };
        let Some(target) = by_name.or(only).and_then(|p| p.port) else {
            continue;
        };
        for e in &slice.endpoints {
            for ip in e
                .addresses
                .iter()
                .filter(|ip| ip.is_ipv4() == address.is_ipv4())
            {
                found.push((*ip, target, e.ready));
            }
        }
    }
    let any_ready = found.iter().any(|b| b.2);
    Some(
        found
            .into_iter()
            .filter(|b| b.2 || !any_ready)
            .map(|(ip, port, _)| (ip, port))
            .collect(),
    )
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
    ep: &EndpointInfo,
    tier_entries: &[&BTreeMap<Lpm<PolicyKey>, PolicyValue>],
    entries: &mut BTreeMap<Lpm<PolicyKey>, PolicyValue>,
    service_backends: &mut BTreeMap<ServiceBackendKey, u32>,
) {
    let mut add = Vec::new();
    // The endpoint's own entries and its ordered tiers' (both under set 0 here).
    let mut all = entries.clone();
    for t in tier_entries {
        all.extend(t.iter().map(|(k, v)| (*k, *v)));
    }
    for s in services {
        let Some(service_id) = service_ips.get(&ip_key(s.address)) else {
            continue;
        };
        let proto = s.protocol.number();
        let key = Lpm {
            prefix_len: policy_prefix::FULL,
            data: PolicyKey::new(
                0,
                *service_id,
                direction::EGRESS,
                tier::SERVICE,
                proto,
                s.port.to_be(),
            ),
        };
        let mark = |action| PolicyValue {
            policy_id: 0,
            rule_index: 0,
            action,
            flags: 0,
            rank: 0,
        };
        let Some(backends) = &s.backends else {
            add.push((key, mark(POLICY_ACTION_UNBOUND)));
            continue;
        };
        let view = PolicyView {
            policy: &all,
            ip_identity,
            cidr_identity,
        };
        let decisions: Vec<Decision> = backends
            .iter()
            .map(|(ip, port)| {
                view.judge(
                    ep,
                    direction::EGRESS,
                    *ip,
                    proto,
                    *port,
                    crate::lookup::Arrival::FromSource,
                )
            })
            .collect();
        let judged: Vec<(IpAddr, u16, Option<PolicyValue>)> = backends
            .iter()
            .zip(&decisions)
            .map(|((ip, port), d)| {
                let allowed = d
                    .allowed
                    .then(|| d.entry.unwrap_or(mark(POLICY_ACTION_ALLOW)));
                (
                    *ip,
                    *port,
                    allowed.map(|v| PolicyValue {
                        action: POLICY_ACTION_ALLOW,
                        ..v
                    }),
                )
            })
            .collect();
        // Every backend denied by a rule: the first one's rule names the drop.
        if !decisions.is_empty() && decisions.iter().all(|d| d.reason == reason::DENY_RULE) {
            let v = decisions[0].entry.unwrap_or(mark(POLICY_ACTION_DENY));
            add.push((
                key,
                PolicyValue {
                    action: POLICY_ACTION_DENY,
                    ..v
                },
            ));
            continue;
        }
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

    /// kubernetes.default: no selector; its slice (if any) puts the API server at `api`.
    fn kubernetes(api: Option<&str>, rule: &str) -> String {
        let mut y = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: default, name: kubernetes}\nspec: {clusterIP: 10.96.0.1, ports: [{name: https, port: 443, targetPort: 6443}]}\n---\n",
        );
        if let Some(api) = api {
            y.push_str(&format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: default, name: kubernetes, labels: {{kubernetes.io/service-name: kubernetes}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{api}]}}]\nports: [{{name: https, port: 6443, protocol: TCP}}]\n---\n"
            ));
        }
        y.push_str(&egress(rule));
        y
    }

    #[test]
    fn a_service_without_a_selector_is_judged_against_its_endpoint_slices() {
        let to = |cidr: &str| {
            format!("{{to: [{{ipBlock: {{cidr: {cidr}}}}}], ports: [{{port: 6443}}]}}")
        };
        let dns = "{ports: [{port: 53, protocol: UDP}]}";
        // A remote control plane that an ipBlock allows: admitted at the pod.
        let remote = kubernetes(Some("192.0.2.10"), &to("192.0.2.0/24"));
        assert_eq!(
            verdict(&remote, "10.96.0.1", 443),
            (Some(POLICY_ACTION_ALLOW), 0)
        );
        // The API server on this node: every backend allowed needs no later program.
        let local = kubernetes(Some("172.31.0.1"), &to("172.31.0.1/32"));
        assert_eq!(
            verdict(&local, "10.96.0.1", 443),
            (Some(POLICY_ACTION_ALLOW), 0)
        );
        // No rule allows it: dropped at the pod.
        assert_eq!(
            verdict(&kubernetes(Some("192.0.2.10"), dns), "10.96.0.1", 443),
            (None, 0)
        );
        // The rule allows another port than the slice's: dropped.
        let other = kubernetes(
            Some("192.0.2.10"),
            "{to: [{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: 443}]}",
        );
        assert_eq!(verdict(&other, "10.96.0.1", 443), (None, 0));
        // Two API servers, one allowed: deferred with both bound; if the denied one is this
        // node (no program meets the packet once translated): unbound.
        let two =
            |other: &str| kubernetes(Some(&format!("192.0.2.10, {other}")), &to("192.0.2.0/24"));
        assert_eq!(
            verdict(&two("198.51.100.1"), "10.96.0.1", 443),
            (Some(POLICY_ACTION_DEFER), 2)
        );
        assert_eq!(
            verdict(&two("172.31.0.1"), "10.96.0.1", 443),
            (Some(POLICY_ACTION_UNBOUND), 0)
        );
        // No slice: the backends are unknown, fail closed.
        assert_eq!(
            verdict(&kubernetes(None, &to("192.0.2.0/24")), "10.96.0.1", 443),
            (Some(POLICY_ACTION_UNBOUND), 0)
        );
    }

    fn sliced_backends(yaml: &str) -> Vec<ServicePortBackends> {
        let mut c = Cluster::default();
        for obj in parse_objects("t.yaml", yaml).unwrap() {
            c.insert(obj);
        }
        backends(&c)
    }

    #[test]
    fn slices_give_ready_addresses_of_the_family_at_the_port_of_the_same_name() {
        let svc = "apiVersion: v1\nkind: Service\nmetadata: {namespace: x, name: s}\nspec: {clusterIPs: [10.96.0.5, fd00::5], ports: [{name: a, port: 80}, {name: b, port: 53, protocol: UDP}]}\n";
        let slice = |name: &str, svc: &str, family: &str, body: &str| {
            format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{namespace: x, name: {name}, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: {family}\n{body}\n"
            )
        };
        let ports = "ports: [{name: a, port: 8080}, {name: b, port: 5353, protocol: UDP}]";
        let yaml = [
            svc.to_string(),
            slice(
                "s-1",
                "s",
                "IPv4",
                &format!("endpoints: [{{addresses: [10.0.1.1]}}, {{addresses: [10.0.1.2], conditions: {{ready: false}}}}, {{addresses: [10.0.1.3], conditions: {{ready: true}}}}]\n{ports}"),
            ),
            slice(
                "s-2",
                "s",
                "IPv6",
                &format!("endpoints: [{{addresses: ['fd00::1']}}]\n{ports}"),
            ),
            // Another Service's slice, and a slice of no Service.
            slice("t-1", "t", "IPv4", &format!("endpoints: [{{addresses: [10.0.9.9]}}]\n{ports}")),
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {namespace: x, name: loose}\naddressType: IPv4\nendpoints: [{addresses: [10.0.9.8]}]\nports: [{name: a, port: 1}]\n".into(),
        ]
        .concat();
        let b = sliced_backends(&yaml);
        let of = |addr: &str, port: u16| {
            b.iter()
                .find(|s| s.address == addr.parse::<IpAddr>().unwrap() && s.port == port)
                .unwrap()
                .backends
                .clone()
                .unwrap()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            of("10.96.0.5", 80),
            [(ip("10.0.1.1"), 8080), (ip("10.0.1.3"), 8080)]
        );
        assert_eq!(
            of("10.96.0.5", 53),
            [(ip("10.0.1.1"), 5353), (ip("10.0.1.3"), 5353)]
        );
        assert_eq!(of("fd00::5", 80), [(ip("fd00::1"), 8080)]);

        // Nothing ready: the serving (terminating) endpoints are what kube-proxy uses; one
        // neither ready nor serving is no backend.
        let terminating = [
            svc.to_string(),
            slice(
                "s-1",
                "s",
                "IPv4",
                &format!("endpoints: [{{addresses: [10.0.1.2], conditions: {{ready: false, serving: true, terminating: true}}}}, {{addresses: [10.0.1.4], conditions: {{ready: false, serving: false}}}}]\n{ports}"),
            ),
        ]
        .concat();
        let b = sliced_backends(&terminating);
        assert_eq!(b[0].backends, Some(vec![(ip("10.0.1.2"), 8080)]));

        // An unnamed Service port takes the slice's only port of its protocol.
        let unnamed = "apiVersion: v1\nkind: Service\nmetadata: {namespace: x, name: s}\nspec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}\n".to_string()
            + &slice("s-1", "s", "IPv4", "endpoints: [{addresses: [10.0.1.1]}]\nports: [{name: web, port: 8080}]");
        assert_eq!(
            sliced_backends(&unnamed)[0].backends,
            Some(vec![(ip("10.0.1.1"), 8080)])
        );
        // A slice whose ports do not match: known, and empty (kube-proxy has no backend).
        let mismatch = "apiVersion: v1\nkind: Service\nmetadata: {namespace: x, name: s}\nspec: {clusterIP: 10.96.0.5, ports: [{name: a, port: 80}]}\n".to_string()
            + &slice("s-1", "s", "IPv4", "endpoints: [{addresses: [10.0.1.1]}]\nports: [{name: z, port: 8080}]");
        assert_eq!(sliced_backends(&mismatch)[0].backends, Some(vec![]));
    }

    #[test]
    fn an_invalid_endpoint_slice_is_refused_naming_the_field() {
        let head = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {namespace: x, name: e}\n";
        for (body, want) in [
            (
                "addressType: IPv5\n",
                "EndpointSlice x/e: addressType: \"IPv5\" is not IPv4, IPv6 or FQDN",
            ),
            (
                "addressType: IPv4\nendpoints: [{addresses: ['fd00::1']}]\n",
                "EndpointSlice x/e: endpoints[0].addresses[0]: \"fd00::1\" is not an IPv4 address",
            ),
            (
                "addressType: IPv6\nendpoints: [{addresses: ['::ffff:10.0.0.1']}]\n",
                "EndpointSlice x/e: endpoints[0].addresses[0]: \"::ffff:10.0.0.1\" is not an IPv6 address",
            ),
            (
                "addressType: IPv4\nendpoints: [{addresses: [10.0.0.300]}]\n",
                "EndpointSlice x/e: endpoints[0].addresses[0]: \"10.0.0.300\" is not an IP address",
            ),
            (
                "addressType: IPv4\nendpoints: [{addresses: []}]\n",
                "EndpointSlice x/e: endpoints[0].addresses: must have an address",
            ),
            (
                "addressType: IPv4\nports: [{port: 70000}]\n",
                "EndpointSlice x/e: ports[0].port: 70000 is not a port number (1-65535)",
            ),
            (
                "addressType: IPv4\nports: [{port: 80, protocol: ICMP}]\n",
                "EndpointSlice x/e: ports[0].protocol: \"ICMP\" is not TCP, UDP or SCTP",
            ),
        ] {
            let e = parse_objects("e.yaml", &format!("{head}{body}"))
                .unwrap_err()
                .to_string();
            assert_eq!(e, format!("e.yaml: {want}"));
        }
        // addressType is required; a wrongly typed field is named by its path.
        let e = parse_objects("e.yaml", head).unwrap_err().to_string();
        assert!(e.contains("addressType"), "{e}");
        let e = parse_objects("e.yaml", &format!("{head}addressType: IPv4\nendpoints: [{{addresses: [1], conditions: {{ready: maybe}}}}]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x/e") && e.contains("endpoints[0]"), "{e}");
        // FQDN slices are valid and give kube-proxy (and us) no address.
        let ok = parse_objects(
            "e.yaml",
            &format!("{head}addressType: FQDN\nendpoints: [{{addresses: [api.example.com]}}]\n"),
        )
        .unwrap();
        assert!(
            matches!(&ok[0], crate::source::Object::EndpointSlice(s) if s.endpoints.is_empty())
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
