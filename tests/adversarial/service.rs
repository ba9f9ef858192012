//! Adversarial tests: Service egress against unbound deferrals.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
//! Packet tables run the datapath with BPF_PROG_TEST_RUN: `from_endpoint` sees what the pod
//! sends (the Service address), `to_network` what leaves the node once kube-proxy translated
//! it (the backend).

#[path = "../../enforcer/tests/common/mod.rs"]
mod common;
#[path = "../../enforcer/tests/common/packets.rs"]
mod packets;

use std::time::Duration;

use enforcer::compiler::{Cluster, Ids, NodeInput, compile, ip_key, plan};
use enforcer::model::ObjectRef;
use enforcer::source::parse_objects;
use enforcer::state::{Lpm, MapState};
use enforcer_common::{
    EndpointInfo, PolicyKey, PolicyValue, ct_flags, direction, mode, policy_prefix, reason,
};
use packets::*;

const NET: Prog = Prog::ToNetwork;

/// Every backend denied: a Service whose only backend is B.
const SVC_DENIED: &str = "10.96.0.12";

fn state() -> MapState {
    let mut st = base_state(mode::ENFORCE, mode::ENFORCE);
    let id = enforcer_common::identity::SERVICE_FLAG | 2;
    st.service_ips.insert(ip_key(addr(SVC_DENIED)), id);
    st
}

/// The attack of the issue, as a packet table: a deferral left behind by a packet that died
/// after the DNAT (TTL 1) is claimed by the next packet from the same port to an allowed
/// destination, and the Service tuple is admitted for whatever backend the next DNAT picks.
#[test]
fn a_deferral_is_claimed_only_by_its_translated_packet() {
    let mut f = Fixture::new(&state());
    check(
        &mut f,
        vec![
            // A Service none of whose backends the pod may reach: dropped at the pod.
            row(
                "to a Service with no allowed backend",
                OUT,
                ipv4(POD, SVC_DENIED, UDP, &udp(4000, 53)),
                false,
                reason::NO_RULE,
            ),
            // Mixed backends: deferred; the translated packet dies with TTL 1.
            row(
                "to the Service from port 5555 (TTL 1)",
                OUT,
                ipv4(POD, SVC, TCP, &tcp(5555, 80)),
                true,
                0,
            ),
            row(
                "from 5555 to an allowed destination that is no backend",
                OUT,
                ipv4(POD, OUTSIDE, TCP, &tcp(5555, 8000)),
                true,
                0,
            ),
            row(
                "... leaving the node: judged as itself, claims nothing",
                NET,
                ipv4(POD, OUTSIDE, TCP, &tcp(5555, 8000)),
                true,
                0,
            ),
            row(
                "to the Service again from 5555: a new deferral, no conntrack",
                OUT,
                ipv4(POD, SVC, TCP, &tcp(5555, 80)),
                true,
                0,
            ),
            row(
                "translated to B, which the pod may not reach",
                NET,
                ipv4(POD, PEER_B, TCP, &tcp(5555, 8080)),
                false,
                reason::NO_RULE,
            ),
            // The same with an allowed destination that is a backend, sent to directly.
            row(
                "to the Service from 5556 (TTL 1)",
                OUT,
                ipv4(POD, SVC, TCP, &tcp(5556, 80)),
                true,
                0,
            ),
            row(
                "from 5556 straight to backend A (allowed)",
                OUT,
                ipv4(POD, PEER_A, TCP, &tcp(5556, 8080)),
                true,
                0,
            ),
            row(
                "... leaving the node: sent there itself, claims nothing",
                NET,
                ipv4(POD, PEER_A, TCP, &tcp(5556, 8080)),
                true,
                0,
            ),
            row(
                "to the Service again from 5556",
                OUT,
                ipv4(POD, SVC, TCP, &tcp(5556, 80)),
                true,
                0,
            ),
            row(
                "translated to B",
                NET,
                ipv4(POD, PEER_B, TCP, &tcp(5556, 8080)),
                false,
                reason::NO_RULE,
            ),
        ],
    );
    let ct = f.dp.conntrack().unwrap();
    assert!(
        !ct.iter()
            .any(|(k, v)| k.daddr == ip_key(addr(SVC)).addr && v.flags & ct_flags::SERVICE != 0),
        "no Service flow was admitted: {ct:?}"
    );
}

/// A deferral waits for its translated packet for the deferral lifetime only: a packet after
/// it claims nothing, and the endpoint gets its place back.
#[test]
fn a_deferral_nobody_claims_expires() {
    let mut f = Fixture::new(&state());
    f.dp.set_service_deferral(Duration::from_millis(50), 0)
        .unwrap();
    assert_eq!(f.run(OUT, &ipv4(POD, SVC, TCP, &tcp(6000, 80))), TC_PASS);
    assert_eq!(f.dp.pending().unwrap().len(), 1);
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(
        f.run(NET, &ipv4(POD, PEER_A, TCP, &tcp(6000, 8080))),
        TC_PASS,
        "judged as itself"
    );
    assert!(f.dp.pending().unwrap().is_empty(), "the deferral is gone");
    let ct = f.dp.conntrack().unwrap();
    assert!(
        !ct.iter().any(|(_, v)| v.flags & ct_flags::SERVICE != 0),
        "an expired deferral admits nothing: {ct:?}"
    );
    check(
        &mut f,
        vec![row(
            "so no reply comes back through it",
            IN,
            ipv4(SVC, POD, TCP, &tcp(80, 6000)),
            false,
            reason::NO_RULE,
        )],
    );
}

/// Runs `body` on a thread in a network namespace of its own holding a veth pair (so a
/// second endpoint has an interface (a veth pair) BPF_PROG_TEST_RUN can hand packets in on); the namespace
/// and the interface go with the thread.
fn with_second_interface<T: Send>(body: impl FnOnce(u32) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare(CLONE_NEWNET)"
            );
            let ok = std::process::Command::new("ip")
                .args([
                    "link", "add", "enfsvc0", "type", "veth", "peer", "name", "enfsvc1",
                ])
                .status()
                .expect("ip link add")
                .success();
            assert!(ok, "ip link add enfsvc0 type veth");
            let ifindex = unsafe { libc::if_nametoindex(c"enfsvc0".as_ptr()) };
            assert!(ifindex > 1);
            body(ifindex)
        })
        .join()
        .expect("test thread")
    })
}

/// One pod floods deferrals (new flows to a Service with mixed backends, from every port) to
/// evict another pod's; the victim's deferral must still be there for its translated packet.
#[test]
fn a_flood_of_deferrals_from_one_pod_does_not_evict_another_pods() {
    require_root();
    const VICTIM: &str = "10.0.0.20";
    with_second_interface(|victim_if| {
        let mut st = state();
        st.ip_identity.insert(
            ip_key(addr(VICTIM)),
            enforcer_common::IdentityValue {
                identity: 400,
                endpoint_id: 8,
            },
        );
        st.endpoints.insert(
            victim_if,
            EndpointInfo {
                endpoint_id: 8,
                policy_set: SET,
                ingress_mode: mode::ENFORCE,
                egress_mode: mode::ENFORCE,
                tiers: 0,
                tier_set: 0,
                baseline_set: 0,
            },
        );
        // UDP 80 of the Service is mixed too, so the flood has twice 65535 ports.
        st.policy.insert(
            Lpm {
                prefix_len: policy_prefix::FULL,
                data: PolicyKey::new(
                    SET,
                    ID_SVC,
                    direction::EGRESS,
                    enforcer_common::tier::SERVICE,
                    UDP,
                    80u16.to_be(),
                ),
            },
            PolicyValue {
                policy_id: 0,
                rule_index: 0,
                action: enforcer_common::POLICY_ACTION_DEFER,
                flags: 0,
                rank: 0,
            },
        );
        let mut f = Fixture::new(&st);
        f.dp.set_event_limits(1000, 1).unwrap();
        // Long enough that the victim's deferral outlives the flood (which takes seconds).
        f.dp.set_service_deferral(Duration::from_secs(60), 0)
            .unwrap();
        let victim = ipv4(VICTIM, SVC, TCP, &tcp(7000, 80));
        let r = f.dp.test_run_at(OUT, &victim, 1, victim_if).unwrap();
        assert_eq!(r.verdict, TC_PASS, "the victim's flow is deferred");

        let mut refused = 0u32;
        let started = std::time::Instant::now();
        for proto in [TCP, UDP] {
            for port in 1..=65535u16 {
                let l4 = if proto == TCP {
                    tcp(port, 80)
                } else {
                    udp(port, 80)
                };
                if f.run(OUT, &ipv4(POD, SVC, proto, &l4)) == TC_DROP {
                    refused += 1;
                }
            }
        }
        f.events();
        let counters = f.dp.counters().unwrap();
        assert!(
            f.dp.pending()
                .unwrap()
                .iter()
                .any(|(k, v)| k.saddr == ip_key(addr(VICTIM)).addr && v.ifindex == victim_if),
            "the victim's deferral survived the flood"
        );
        // At most one budget per deferral lifetime the flood lasted.
        let windows = started.elapsed().as_secs() as u32 / 60 + 1;
        let deferred = 2 * 65535 - refused;
        assert!(
            deferred <= windows * enforcer_common::capacity::SERVICE_DEFER_BUDGET_MAX,
            "the flooder is held to its budget: {deferred} deferred in {windows} windows"
        );
        assert_eq!(
            counters[reason::SERVICE_UNBOUND as usize],
            refused as u64,
            "each refusal counted as service-unbound"
        );
        // And it is still there to judge the victim's translated packet.
        let r =
            f.dp.test_run(NET, &ipv4(VICTIM, PEER_B, TCP, &tcp(7000, 8080)), 1)
                .unwrap();
        assert_eq!(r.verdict, TC_DROP, "the victim's egress judged on B");
        // The flooder's refusals never touched the victim's budget.
        let next = ipv4(VICTIM, SVC, TCP, &tcp(7001, 80));
        let r = f.dp.test_run_at(OUT, &next, 1, victim_if).unwrap();
        assert_eq!(r.verdict, TC_PASS);
    });
}

/// A Service flow admitted under one policy keeps passing after a change that revokes it.
#[test]
fn a_revoked_service_flow_is_cut() {
    // Deferred (mixed backends) and admitted for A; then the rule that allowed A goes.
    let mut f = Fixture::new(&state());
    check(
        &mut f,
        vec![
            row(
                "to the Service",
                OUT,
                ipv4(POD, SVC, TCP, &tcp(5555, 80)),
                true,
                0,
            ),
            row(
                "translated to A: admitted",
                NET,
                ipv4(POD, PEER_A, TCP, &tcp(5555, 8080)),
                true,
                0,
            ),
            row(
                "next packet",
                OUT,
                ipv4(POD, SVC, TCP, &tcp(5555, 80)),
                true,
                0,
            ),
        ],
    );
    let mut revoked = state();
    revoked.policy.retain(|k, v| {
        !(k.data.identity == ID_A && k.data.direction == direction::EGRESS && v.policy_id == 24)
    });
    f.dp.install(&revoked, 2, 0).unwrap();
    check(
        &mut f,
        vec![
            row(
                "after the revocation: cut",
                OUT,
                ipv4(POD, SVC, TCP, &tcp(5555, 80)),
                false,
                reason::POLICY_REVOKED,
            ),
            row(
                "its reply too",
                IN,
                ipv4(SVC, POD, TCP, &tcp(80, 5555)),
                false,
                reason::NO_RULE,
            ),
        ],
    );

    // Admitted at the pod (every backend allowed); then the Service entry goes.
    let mut all = state();
    let key = Lpm {
        prefix_len: policy_prefix::FULL,
        data: PolicyKey::new(
            SET,
            ID_SVC,
            direction::EGRESS,
            enforcer_common::tier::SERVICE,
            TCP,
            80u16.to_be(),
        ),
    };
    all.policy.insert(
        key,
        PolicyValue {
            policy_id: 24,
            rule_index: 0,
            action: enforcer_common::POLICY_ACTION_ALLOW,
            flags: 0,
            rank: 0,
        },
    );
    let mut f = Fixture::new(&all);
    check(
        &mut f,
        vec![row(
            "every backend allowed: admitted at the pod",
            OUT,
            ipv4(POD, SVC, TCP, &tcp(5600, 80)),
            true,
            0,
        )],
    );
    let mut none = all.clone();
    none.policy.remove(&key);
    f.dp.install(&none, 2, 0).unwrap();
    check(
        &mut f,
        vec![row(
            "none allowed any more: cut",
            OUT,
            ipv4(POD, SVC, TCP, &tcp(5600, 80)),
            false,
            reason::POLICY_REVOKED,
        )],
    );
}

const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: client, labels: {app: client}}
spec: {nodeName: node-1}
status: {podIPs: [{ip: 10.0.0.7}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: api, labels: {app: api}}
spec: {nodeName: node-1, hostNetwork: true}
status: {podIPs: [{ip: 172.31.255.1}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: x, name: web, labels: {app: api}}
spec: {nodeName: node-2}
status: {podIPs: [{ip: 10.0.1.5}]}
---
apiVersion: v1
kind: Service
metadata: {namespace: x, name: api}
spec:
  clusterIP: 10.96.0.20
  selector: {app: api}
  ports: [{port: 443, targetPort: 6443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: client-egress}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
    - ports: [{port: 53, protocol: UDP}]
"#;

/// The compiled state of `CLUSTER` plus `extra` objects, with the client on `IFINDEX`.
fn compiled(extra: &str) -> MapState {
    let mut c = Cluster::default();
    for obj in parse_objects("test.yaml", &format!("{CLUSTER}\n---\n{extra}")).unwrap() {
        c.insert(obj);
    }
    let node = NodeInput {
        node: "node-1".into(),
        interfaces: [(ObjectRef::new("x", "client"), IFINDEX)].into(),
        host_ips: vec!["172.31.255.1".parse().unwrap()],
        allow_host_ingress: true,
        held: Default::default(),
        conflicted: Default::default(),
    };
    let mut ids = Ids::default();
    let installed = MapState::default();
    let out = compile(&c, &node, &mut ids, &installed);
    plan(&installed, &out, &mut ids)
}

/// A host-networked backend (the node's own address) is reached by local delivery: no
/// program sees the translated packet, so a deferred verdict would never be judged.
#[test]
fn a_service_whose_backend_is_the_node_is_judged_at_from_endpoint() {
    let svc = "10.96.0.20";
    // Egress to DNS only: no backend allowed, dropped at the pod.
    let mut f = Fixture::new(&compiled(""));
    check(
        &mut f,
        vec![row(
            "no backend allowed",
            OUT,
            ipv4(POD, svc, TCP, &tcp(5000, 443)),
            false,
            reason::NO_RULE,
        )],
    );
    // The pod backend allowed, the node not: mixed, and the node's backend meets no program.
    let pods = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: to-web}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.1.0/24}}], ports: [{port: 6443}]}]
"#;
    let mut f = Fixture::new(&compiled(pods));
    check(
        &mut f,
        vec![row(
            "mixed, a denied backend on the node",
            OUT,
            ipv4(POD, svc, TCP, &tcp(5001, 443)),
            false,
            reason::SERVICE_UNBOUND,
        )],
    );
    // Both allowed: admitted at the pod, tracked under the Service tuple.
    let both = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: to-api}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.1.0/24}}, {ipBlock: {cidr: 172.31.255.1/32}}], ports: [{port: 6443}]}]
"#;
    let mut f = Fixture::new(&compiled(both));
    check(
        &mut f,
        vec![row(
            "every backend allowed",
            OUT,
            ipv4(POD, svc, TCP, &tcp(5002, 443)),
            true,
            0,
        )],
    );
    assert!(f.dp.pending().unwrap().is_empty(), "nothing deferred");
    let ct = f.dp.conntrack().unwrap();
    assert!(
        ct.iter().any(|(k, v)| k.daddr == ip_key(addr(svc)).addr
            && k.direction == direction::EGRESS
            && v.flags & ct_flags::SERVICE != 0),
        "admitted at from_endpoint: {ct:?}"
    );
}

/// On an L3 device (tunl0, WireGuard) the translated packet has no Ethernet header; read as
/// if it had one, it is not IP and the deferred verdict is never judged.
#[test]
fn to_network_judges_a_packet_without_an_ethernet_header() {
    let mut f = Fixture::new(&state());
    let bare = |src: &str, dst: &str, l4: &[u8]| {
        let mut p = ipv4_hdr(src, dst, TCP, l4.len(), 1, 0);
        p.extend_from_slice(l4);
        p
    };
    assert_eq!(f.run(OUT, &ipv4(POD, SVC, TCP, &tcp(5700, 80))), TC_PASS);
    assert_eq!(
        f.run(Prog::ToNetworkL3, &bare(POD, PEER_B, &tcp(5700, 8080))),
        TC_DROP,
        "translated to B over an L3 device: judged and dropped"
    );
    assert_eq!(f.run(OUT, &ipv4(POD, SVC, TCP, &tcp(5701, 80))), TC_PASS);
    assert_eq!(
        f.run(Prog::ToNetworkL3, &bare(POD, PEER_A, &tcp(5701, 8080))),
        TC_PASS
    );
    let ct = f.dp.conntrack().unwrap();
    assert!(
        ct.iter()
            .any(|(k, v)| u16::from_be(k.sport_be) == 5701 && v.flags & ct_flags::SERVICE != 0),
        "the allowed one is admitted: {ct:?}"
    );
    assert!(enforcer::bpf::link_type_has_header(1));
    assert!(!enforcer::bpf::link_type_has_header(768), "tunl0");
    assert!(!enforcer::bpf::link_type_has_header(65534), "WireGuard");
}

const LAB: &str = r#"
nodes: [node-1, node-2]
namespaces: [{name: x, labels: {ns: x}}]
pods:
  - {namespace: x, name: client, node: node-1, labels: {app: client}}
  - {namespace: x, name: dns, node: node-2, labels: {app: dns}}
  - {namespace: x, name: ok, node: node-2, labels: {app: mixed, tier: ok}}
  - {namespace: x, name: bad, node: node-1, labels: {app: mixed, tier: bad}}
  - {namespace: x, name: secret, node: node-2, labels: {app: secret}}
services:
  - {namespace: x, name: mixed, clusterIP: 10.96.0.90, selector: {app: mixed}, ports: [{port: 9000, targetPort: 9000, protocol: UDP}]}
  - {namespace: x, name: secret, clusterIP: 10.96.0.91, selector: {app: secret}, ports: [{port: 9000, targetPort: 9000, protocol: UDP}]}
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: client-egress, namespace: x}
    spec:
      podSelector: {matchLabels: {app: client}}
      policyTypes: [Egress]
      egress:
        - to: [{podSelector: {matchLabels: {app: dns}}}]
          ports: [{protocol: UDP, port: 53}]
        - to: [{podSelector: {matchLabels: {tier: ok}}}]
          ports: [{protocol: UDP, port: 9000}]
"#;

/// The TTL-1 attack end to end, on real packets through the lab's kube-proxy (nftables DNAT):
/// a pod allowed egress only to DNS (and to one backend of the `mixed` Service) sends to a
/// Service with TTL 1 from port X (the translated packet dies in the node's forwarding), then
/// from X to the DNS pod, then to the Service again from X. The backends it may not reach
/// (`bad` of `mixed`, the only backend of `secret`) must never receive anything.
#[test]
fn a_deferral_cannot_be_claimed_by_a_packet_to_another_destination() {
    use std::net::{SocketAddr, UdpSocket};
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    common::require_root("the lab tests");
    let run = common::run::Run::start(LAB, enforcer_lab::lab::Source::Manifests);
    let listen = |pod: &str, port: u16| {
        let s = run
            .ns(pod)
            .run(move || Ok(UdpSocket::bind(("0.0.0.0", port))?))
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    };
    let (ok, bad, secret, _dns) = (
        listen("ok", 9000),
        listen("bad", 9000),
        listen("secret", 9000),
        listen("dns", 53),
    );
    let dns: SocketAddr = (run.ip("dns"), 53).into();
    let client = run.ip("client");
    for (service, svc_ip) in [("mixed", "10.96.0.90"), ("secret", "10.96.0.91")] {
        let svc: SocketAddr = (addr(svc_ip), 9000).into();
        for x in 0..8u16 {
            let port = 41000 + x + if service == "secret" { 100 } else { 0 };
            let sock = run
                .ns("client")
                .run(move || Ok(UdpSocket::bind(("0.0.0.0", port))?))
                .unwrap();
            sock.set_ttl(1).unwrap();
            let _ = sock.send_to(b"ttl1", svc);
            std::thread::sleep(Duration::from_millis(30));
            sock.set_ttl(64).unwrap();
            sock.send_to(b"dns", dns).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            for _ in 0..3 {
                let _ = sock.send_to(b"again", svc);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let received = |s: &UdpSocket| {
        let mut n = 0;
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            if from.ip() == client {
                n += 1;
            }
        }
        n
    };
    let (ok, bad, secret) = (received(&ok), received(&bad), received(&secret));
    assert_eq!(bad, 0, "a backend the client may not reach received {bad}");
    assert_eq!(
        secret, 0,
        "a backend the client may not reach received {secret}"
    );
    assert!(
        ok > 0,
        "the allowed backend received nothing: the Service is broken"
    );
}
