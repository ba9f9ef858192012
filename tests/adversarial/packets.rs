//! Adversarial tests: forged packets against the loaded programs (BPF_PROG_TEST_RUN): spoofed sources, forged HOST, v4-mapped addresses, neighbour discovery, ICMP errors, fragments.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
//! The pod under test is the fixture's endpoint (ifindex 1, `POD`/`POD6`); the forged packets
//! leave it (`OUT`, its `from_endpoint`) or arrive at it (`IN`, its `to_endpoint`).
#[path = "../../enforcer/tests/common/packets.rs"]
mod packets;

use enforcer::bpf::TestSkb;
use enforcer::compiler::{ip_key, net_key};
use enforcer::state::MapState;
use enforcer_common::{
    IdentityValue, config_flags, direction, identity, mode, policy_prefix, reason, verdict,
};
use packets::*;

/// Another pod on this node (endpoint 8), which the pod under test's peers admit (identity C).
const LOCAL: &str = "10.0.0.20";
const LOCAL6: &str = "fd00::20";
const LOCAL_EP: u32 = 8;
/// The node's own address, and the bridge's (on bridge CNIs `cni0` holds a node address).
const NODE: &str = "10.0.0.1";
const NODE6: &str = "fd00::1";
const BRIDGE: &str = "10.0.1.1";
const BRIDGE6: &str = "fd00:0:0:1::1";
const ICMPV6: u8 = 58;
/// A remote pod with no rule, in IPv6.
const PEER_B6: &str = "fd00::9";
const MODES: [(u32, &str); 3] = [
    (mode::UNMANAGED, "unmanaged"),
    (mode::ALLOW_ALL, "allow-all"),
    (mode::ENFORCE, "enforced"),
];

/// The fixture's state, plus: another local pod, the node's and the bridge's addresses (HOST,
/// admitted into the pod as the compiler admits the node), v6 peers, and egress rules so that
/// every packet the pod sends from its own address is allowed whatever the egress mode.
fn state(ingress: u32, egress: u32) -> MapState {
    let mut st = base_state(ingress, egress);
    let mut add = |ip: &str, id: u32, ep: u32| {
        st.ip_identity.insert(
            ip_key(addr(ip)),
            IdentityValue {
                identity: id,
                endpoint_id: ep,
            },
        );
    };
    add(LOCAL, ID_C, LOCAL_EP);
    add(PEER_B6, ID_B, 0);
    add(LOCAL6, ID_C, LOCAL_EP);
    for ip in [NODE, NODE6, BRIDGE, BRIDGE6] {
        add(ip, identity::HOST, 0);
    }
    let (ing, eg) = (direction::INGRESS, direction::EGRESS);
    allow(
        &mut st,
        identity::HOST,
        ing,
        0,
        0,
        policy_prefix::ANY_PROTO,
        (1, 0),
    );
    allow(&mut st, ID_C, eg, 0, 0, policy_prefix::ANY_PROTO, (25, 0));
    allow(&mut st, ID_A, eg, 0, 0, policy_prefix::ANY_PROTO, (26, 0));
    st
}

fn name(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// TCP, UDP and ICMP echo from `src4`/`src6` out of the pod to admitted peers, in both families.
fn sent_from(src4: &str, src6: &str, p: &str, pass: bool, why: u8) -> Vec<Row> {
    vec![
        row(
            name(format!("{p}: TCP")),
            OUT,
            ipv4(src4, PEER_C, TCP, &tcp(41000, 8000)),
            pass,
            why,
        ),
        row(
            name(format!("{p}: UDP")),
            OUT,
            ipv4(src4, PEER_C, UDP, &udp(41001, 53)),
            pass,
            why,
        ),
        row(
            name(format!("{p}: ICMP")),
            OUT,
            ipv4(src4, PEER_C, ICMP, &icmp_echo(8, 41002)),
            pass,
            why,
        ),
        row(
            name(format!("{p}: TCP over IPv6")),
            OUT,
            ipv6(src6, PEER_A6, TCP, &tcp(41003, 8000)),
            pass,
            why,
        ),
        row(
            name(format!("{p}: UDP over IPv6")),
            OUT,
            ipv6(src6, PEER_A6, UDP, &udp(41004, 53)),
            pass,
            why,
        ),
        row(
            name(format!("{p}: ICMPv6")),
            OUT,
            ipv6(src6, PEER_A6, ICMPV6, &icmp_echo(128, 41005)),
            pass,
            why,
        ),
    ]
}

/// Under every egress mode: what the pod sends from `src4`/`src6` drops as `why`, with one
/// event and a counter each, and what it sends from its own addresses still passes.
fn forging(src4: &str, src6: &str, why: u8) {
    for (egress, m) in MODES {
        let mut f = Fixture::new(&state(mode::ENFORCE, egress));
        let mut rows = sent_from(src4, src6, &format!("{m} egress, forged"), false, why);
        rows.extend(sent_from(
            POD,
            POD6,
            &format!("{m} egress, own source"),
            true,
            0,
        ));
        check(&mut f, rows);
        let c = f.dp.counters().unwrap();
        assert_eq!(c[why as usize], 6, "{m}: forged packets counted: {c:?}");
    }
}

#[test]
fn a_pod_forging_another_local_pods_source_is_dropped() {
    forging(LOCAL, LOCAL6, reason::SPOOFED);
}

#[test]
fn a_pod_forging_a_remote_pods_source_is_dropped() {
    forging(PEER_A, PEER_A6, reason::SPOOFED);
}

#[test]
fn a_pod_forging_the_nodes_address_is_dropped() {
    forging(NODE, NODE6, reason::SPOOFED);
}

#[test]
fn a_pod_forging_the_bridges_address_is_dropped() {
    forging(BRIDGE, BRIDGE6, reason::SPOOFED);
}

#[test]
fn a_pod_forging_an_outside_address_is_dropped() {
    forging(OUTSIDE, "2001:db8::1", reason::SPOOFED);
}

#[test]
fn a_pod_forging_a_v4_mapped_source_is_dropped() {
    // Only IPv6 can carry one; the IPv4 rows use a plain forged address.
    for (egress, m) in MODES {
        let mut f = Fixture::new(&state(mode::ENFORCE, egress));
        let mapped = "::ffff:10.0.0.10";
        let rows = vec![
            row(
                name(format!("{m}: TCP from ::ffff:C")),
                OUT,
                ipv6(mapped, PEER_A6, TCP, &tcp(41003, 8000)),
                false,
                reason::INVALID_ADDRESS,
            ),
            row(
                name(format!("{m}: UDP from ::ffff:C")),
                OUT,
                ipv6(mapped, PEER_A6, UDP, &udp(41004, 53)),
                false,
                reason::INVALID_ADDRESS,
            ),
            row(
                name(format!("{m}: ICMPv6 from ::ffff:C")),
                OUT,
                ipv6(mapped, PEER_A6, ICMPV6, &icmp_echo(128, 41005)),
                false,
                reason::INVALID_ADDRESS,
            ),
            row(
                name(format!("{m}: UDP from the pod to ::ffff:DNS")),
                OUT,
                ipv6(POD6, "::ffff:192.0.2.53", UDP, &udp(41006, 53)),
                false,
                reason::INVALID_ADDRESS,
            ),
        ];
        check(&mut f, rows);
    }
}

#[test]
fn a_v4_mapped_address_cannot_borrow_an_ipv4_identity_or_flow() {
    let mut f = Fixture::new(&state(mode::ENFORCE, mode::ENFORCE));
    check(
        &mut f,
        vec![
            // C is admitted into the pod on every protocol: its v4-mapped twin is not C.
            row(
                "into the pod from ::ffff:C",
                IN,
                ipv6("::ffff:10.0.0.10", POD6, UDP, &udp(1, 9)),
                false,
                reason::INVALID_ADDRESS,
            ),
            row(
                "an IPv4 flow from A",
                IN,
                ipv4(PEER_A, POD, TCP, &tcp(42000, 80)),
                true,
                0,
            ),
            // Its conntrack key, written IPv4-mapped, is the same as this packet's.
            row(
                "the same flow in IPv6 clothes",
                IN,
                ipv6("::ffff:10.0.0.8", "::ffff:10.0.0.7", TCP, &tcp(42000, 80)),
                false,
                reason::INVALID_ADDRESS,
            ),
            row(
                "out of the node",
                Prog::ToNetwork,
                ipv6("::ffff:10.0.0.7", "::ffff:198.51.100.1", UDP, &udp(1, 9)),
                false,
                reason::INVALID_ADDRESS,
            ),
        ],
    );
}

#[test]
fn the_unspecified_source_passes_only_for_dhcp_and_duplicate_address_detection() {
    let mut f = Fixture::new(&state(mode::ENFORCE, mode::ALLOW_ALL));
    check(
        &mut f,
        vec![
            row(
                "DHCP discover from 0.0.0.0",
                OUT,
                ipv4("0.0.0.0", "255.255.255.255", UDP, &udp(68, 67)),
                true,
                0,
            ),
            row(
                "anything else from 0.0.0.0",
                OUT,
                ipv4("0.0.0.0", PEER_C, UDP, &udp(68, 53)),
                false,
                reason::SPOOFED,
            ),
            row(
                "DHCPv6 solicit from link-local",
                OUT,
                ipv6("fe80::7", "ff02::1:2", UDP, &udp(546, 547)),
                true,
                0,
            ),
            row(
                "anything else from link-local",
                OUT,
                ipv6("fe80::7", PEER_A6, TCP, &tcp(41000, 8000)),
                false,
                reason::SPOOFED,
            ),
            row(
                "duplicate-address detection from ::",
                OUT,
                nd("::", "ff02::1:ff00:7", 135, Some(POD6), 255),
                true,
                0,
            ),
            row(
                "MLDv2 report from ::",
                OUT,
                nd("::", "ff02::16", 143, None, 1),
                true,
                0,
            ),
            row(
                "anything else from ::",
                OUT,
                ipv6("::", PEER_A6, UDP, &udp(41000, 53)),
                false,
                reason::SPOOFED,
            ),
        ],
    );
}

// --- HOST -----------------------------------------------------------------------------------

/// `check` with the skb fields a test may set (where the packet entered the node).
fn check_skb(f: &mut Fixture, rows: Vec<(Row, TestSkb)>) {
    let mut failures = Vec::new();
    for (r, skb) in rows {
        let got =
            f.dp.test_run_skb(r.prog, &r.packet, 1, &skb)
                .unwrap()
                .verdict;
        let want = if r.pass { TC_PASS } else { TC_DROP };
        let drops: Vec<_> = f
            .events()
            .into_iter()
            .filter(|e| e.verdict == verdict::DROP)
            .collect();
        if got != want {
            failures.push(format!("{}: verdict {got}, want {want}", r.name));
        } else if !r.pass && (drops.len() != 1 || drops[0].reason != r.reason) {
            failures.push(format!("{}: drop events {drops:?}", r.name));
        } else if r.pass && !drops.is_empty() {
            failures.push(format!("{}: passed with a drop event", r.name));
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

const FROM_THE_NODE: TestSkb = TestSkb {
    ingress_ifindex: 0,
    mark: 0,
    gso_size: 0,
    gso_segs: 0,
};
/// Entered through another pod's interface (routed, or bridged from its port).
const FROM_A_POD: TestSkb = TestSkb {
    ingress_ifindex: 5,
    mark: 0,
    gso_size: 0,
    gso_segs: 0,
};

#[test]
fn the_nodes_address_arriving_from_a_pod_interface_is_not_the_host() {
    let mut st = state(mode::ENFORCE, mode::ENFORCE);
    // The node's address also falls in an ipBlock the pod admits on UDP 9: as WORLD plus its
    // CIDR identity, that much still passes.
    st.cidr_identity.insert(
        net_key("10.0.0.0/30".parse().unwrap()),
        IdentityValue {
            identity: identity::CIDR_FLAG | 2,
            endpoint_id: 0,
        },
    );
    allow(
        &mut st,
        identity::CIDR_FLAG | 2,
        direction::INGRESS,
        UDP,
        9,
        policy_prefix::FULL,
        (27, 0),
    );
    let mut f = Fixture::new(&st);
    let probe = |sport| ipv4(NODE, POD, TCP, &tcp(sport, 8080));
    check_skb(
        &mut f,
        vec![
            (
                row("the node's own probe", IN, probe(43000), true, 0),
                FROM_THE_NODE,
            ),
            (
                row(
                    "the pod back to itself through a Service, masqueraded (hairpin)",
                    IN,
                    probe(43005),
                    true,
                    0,
                ),
                TestSkb {
                    ingress_ifindex: IFINDEX,
                    ..TestSkb::default()
                },
            ),
            (
                row(
                    "the node's address from a pod interface",
                    IN,
                    probe(43001),
                    false,
                    reason::NO_RULE,
                ),
                FROM_A_POD,
            ),
            (
                row(
                    "the bridge's address from a pod interface",
                    IN,
                    ipv4(BRIDGE, POD, TCP, &tcp(43002, 8080)),
                    false,
                    reason::NO_RULE,
                ),
                FROM_A_POD,
            ),
            (
                row(
                    "the node's v6 address from a pod interface",
                    IN,
                    ipv6(NODE6, POD6, TCP, &tcp(43003, 8080)),
                    false,
                    reason::NO_RULE,
                ),
                FROM_A_POD,
            ),
            (
                row(
                    "the node's address from a pod interface, in an admitted ipBlock",
                    IN,
                    ipv4(NODE, POD, UDP, &udp(43004, 9)),
                    true,
                    0,
                ),
                FROM_A_POD,
            ),
        ],
    );
    let c = f.dp.counters().unwrap();
    assert_eq!(c[reason::ALLOWED_HOST as usize], 2, "{c:?}");
}

// --- ARP and neighbour discovery --------------------------------------------------------------

#[test]
fn a_pod_forging_arp_for_another_address_is_dropped() {
    for (egress, m) in MODES {
        let mut f = Fixture::new(&state(mode::ENFORCE, egress));
        let mut rows = Vec::new();
        for (who, ip) in [
            ("another local pod", LOCAL),
            ("a remote pod", PEER_A),
            ("the node", NODE),
            ("the bridge", BRIDGE),
        ] {
            for (op, kind) in [(2, "reply"), (1, "request")] {
                rows.push(row(
                    name(format!("{m}: ARP {kind} claiming {who}'s address")),
                    OUT,
                    arp_from(op, ip, NODE),
                    false,
                    reason::SPOOFED,
                ));
            }
        }
        rows.push(row(
            name(format!("{m}: ARP from the pod's own address")),
            OUT,
            arp_from(1, POD, NODE),
            true,
            0,
        ));
        rows.push(row(
            name(format!("{m}: ARP probe from 0.0.0.0")),
            OUT,
            arp_from(1, "0.0.0.0", POD),
            true,
            0,
        ));
        rows.push(row(
            name(format!("{m}: ARP into the pod")),
            IN,
            arp_from(2, NODE, POD),
            true,
            0,
        ));
        check(&mut f, rows);
    }
}

#[test]
fn a_pod_advertising_another_ipv6_address_is_dropped() {
    for (egress, m) in MODES {
        let mut f = Fixture::new(&state(mode::ENFORCE, egress));
        let mut rows = Vec::new();
        for (who, ip) in [
            ("another local pod", LOCAL6),
            ("a remote pod", PEER_A6),
            ("the node", NODE6),
            ("the bridge", BRIDGE6),
        ] {
            rows.push(row(
                name(format!("{m}: unsolicited NA for {who}'s address")),
                OUT,
                nd("fe80::7", "ff02::1", 136, Some(ip), 255),
                false,
                reason::SPOOFED,
            ));
            rows.push(row(
                name(format!("{m}: solicited NA for {who}'s address")),
                OUT,
                nd("fe80::7", "fe80::1", 136, Some(ip), 255),
                false,
                reason::SPOOFED,
            ));
            rows.push(row(
                name(format!("{m}: NS from {who}'s address")),
                OUT,
                nd(ip, "ff02::1:ff00:1", 135, Some(NODE6), 255),
                false,
                reason::SPOOFED,
            ));
        }
        rows.push(row(
            name(format!("{m}: NA for the pod's own address")),
            OUT,
            nd("fe80::7", "ff02::1", 136, Some(POD6), 255),
            true,
            0,
        ));
        rows.push(row(
            name(format!("{m}: NS from the pod's own address")),
            OUT,
            nd(POD6, "ff02::1:ff00:1", 135, Some(NODE6), 255),
            true,
            0,
        ));
        check(&mut f, rows);
    }
}

#[test]
fn neighbour_discovery_that_does_not_look_genuine_goes_through_policy() {
    let mut f = Fixture::new(&state(mode::ENFORCE, mode::ENFORCE));
    check(
        &mut f,
        vec![
            row(
                "NS with hop limit 255",
                IN,
                nd("fe80::1", "ff02::1:ff00:7", 135, Some(POD6), 255),
                true,
                0,
            ),
            row(
                "NS a router forwarded (hop limit 64)",
                IN,
                nd("fe80::1", "ff02::1:ff00:7", 135, Some(POD6), 64),
                false,
                reason::NO_RULE,
            ),
            row(
                "NA from an outside global address",
                IN,
                nd("2001:db8::1", POD6, 136, Some("2001:db8::1"), 255),
                false,
                reason::NO_RULE,
            ),
            row(
                "NA from the node",
                IN,
                nd(NODE6, POD6, 136, Some(NODE6), 255),
                true,
                0,
            ),
            row(
                "NS to an outside unicast address",
                OUT,
                nd(POD6, "2001:db8::1", 135, Some("2001:db8::1"), 255),
                false,
                reason::NO_RULE,
            ),
            row(
                "MLD report with hop limit 1",
                OUT,
                nd("fe80::7", "ff02::16", 143, None, 1),
                true,
                0,
            ),
            row(
                "MLD report with hop limit 255",
                OUT,
                nd("fe80::7", "ff02::16", 143, None, 255),
                false,
                reason::NO_RULE,
            ),
            row(
                "router advertisement from the pod",
                OUT,
                nd("fe80::7", "ff02::1", 134, None, 255),
                false,
                reason::SPOOFED,
            ),
            row(
                "redirect from the pod",
                OUT,
                nd("fe80::7", "fe80::1", 137, None, 255),
                false,
                reason::SPOOFED,
            ),
            row(
                "router advertisement from the node",
                IN,
                nd("fe80::1", "ff02::1", 134, None, 255),
                true,
                0,
            ),
        ],
    );
}

#[test]
fn a_held_interface_passes_nothing_but_arp_and_genuine_neighbour_discovery() {
    let held = |reason| {
        vec![
            row("ARP", OUT, arp_from(1, "0.0.0.0", NODE), true, 0),
            row(
                "genuine NS",
                OUT,
                nd("fe80::7", "ff02::1:ff00:1", 135, Some(NODE6), 255),
                true,
                0,
            ),
            row(
                "NS with hop limit 64",
                OUT,
                nd("fe80::7", "ff02::1:ff00:1", 135, Some(NODE6), 64),
                false,
                reason,
            ),
            row(
                "NS with hop limit 64, in",
                IN,
                nd("fe80::1", "ff02::1:ff00:7", 135, Some(POD6), 64),
                false,
                reason,
            ),
            row("LLDP", OUT, eth(0x88cc), false, reason),
            row(
                "ICMPv6 echo",
                IN,
                ipv6(NODE6, POD6, ICMPV6, &icmp_echo(128, 9)),
                false,
                reason,
            ),
            row(
                "NA for the node's address",
                OUT,
                nd("fe80::7", "ff02::1", 136, Some(NODE6), 255),
                false,
                reason::SPOOFED,
            ),
            row(
                "ARP claiming another pod's address",
                OUT,
                arp_from(2, LOCAL, NODE),
                false,
                reason::SPOOFED,
            ),
        ]
    };
    // Held by the agent: endpoint id 0, deny-all.
    let mut st = state(mode::DENY_ALL, mode::DENY_ALL);
    let ep = st.endpoints.get_mut(&IFINDEX).unwrap();
    ep.endpoint_id = 0;
    // A held endpoint's policy set carries why it is held; 0: nobody claims it.
    ep.policy_set = 0;
    let mut f = Fixture::new(&st);
    check(&mut f, held(reason::ENDPOINT_UNKNOWN));
    // Attached, no entry yet, with --default-deny-unknown.
    let mut st = state(mode::DENY_ALL, mode::DENY_ALL);
    st.endpoints.clear();
    let mut f = Fixture::new(&st);
    let mut c = f.dp.config().unwrap();
    c.flags |= config_flags::DENY_UNKNOWN;
    f.dp.set_config(c).unwrap();
    check(&mut f, held(reason::ENDPOINT_UNKNOWN));
}

// --- ICMP errors ------------------------------------------------------------------------------

/// An IP packet without its Ethernet header, as an ICMP error quotes it.
fn quote(p: &[u8], len: usize) -> Vec<u8> {
    p[14..14 + len].to_vec()
}

#[test]
fn an_icmp_error_whose_addresses_do_not_match_its_flow_is_judged_alone() {
    let mut f = Fixture::new(&state(mode::ENFORCE, mode::ENFORCE));
    let query = ipv4(POD, DNS, UDP, &udp(5353, 53));
    let q = quote(&query, 28);
    let inbound = ipv4(PEER_A, POD, TCP, &tcp(44000, 80));
    let qt = quote(&inbound, 28);
    let query6 = ipv6(POD6, PEER_A6, UDP, &udp(5354, 53));
    let q6 = quote(&query6, 48);
    check(
        &mut f,
        vec![
            row("the pod's DNS query", OUT, query, true, 0),
            row("a flow into the pod", IN, inbound, true, 0),
            row("the pod's v6 query", OUT, query6, true, 0),
            row(
                "port unreachable from the server",
                IN,
                ipv4(DNS, POD, ICMP, &icmp_error(3, &q)),
                true,
                0,
            ),
            row(
                "port unreachable from a pod that is not the server",
                IN,
                ipv4(PEER_B, POD, ICMP, &icmp_error(3, &q)),
                false,
                reason::NO_RULE,
            ),
            row(
                "time exceeded from a pod that is no router",
                IN,
                ipv4(PEER_B, POD, ICMP, &icmp_error(11, &q)),
                false,
                reason::NO_RULE,
            ),
            row(
                "fragmentation needed from a router on the path",
                IN,
                {
                    let mut p = ipv4("203.0.113.1", POD, ICMP, &icmp_error(3, &q));
                    p[35] = 4;
                    p
                },
                true,
                0,
            ),
            row(
                "an error about the pod's flow sent to another address",
                IN,
                ipv4(DNS, PEER_B, ICMP, &icmp_error(3, &q)),
                false,
                reason::NO_RULE,
            ),
            row(
                "the pod's error about A's flow, sent to B",
                OUT,
                ipv4(POD, PEER_B, ICMP, &icmp_error(3, &qt)),
                false,
                reason::NO_RULE,
            ),
            row(
                "the pod's error about A's flow, sent to A",
                OUT,
                ipv4(POD, PEER_A, ICMP, &icmp_error(3, &qt)),
                true,
                0,
            ),
            row(
                "v6 port unreachable from the server",
                IN,
                ipv6(PEER_A6, POD6, ICMPV6, &icmp_error(1, &q6)),
                true,
                0,
            ),
            row(
                "v6 port unreachable from a pod that is not the server",
                IN,
                ipv6(PEER_B6, POD6, ICMPV6, &icmp_error(1, &q6)),
                false,
                reason::NO_RULE,
            ),
        ],
    );
}

#[test]
fn an_icmp_error_about_a_revoked_flow_is_dropped() {
    let before = state(mode::ENFORCE, mode::ENFORCE);
    let mut f = Fixture::new(&before);
    let query = ipv4(POD, DNS, UDP, &udp(5353, 53));
    let q = quote(&query, 28);
    check(
        &mut f,
        vec![row("the pod's DNS query", OUT, query, true, 0)],
    );
    // The egress rule to the DNS block goes.
    let mut after = before.clone();
    after
        .policy
        .retain(|k, v| !(k.data.direction == direction::EGRESS && v.policy_id == 22));
    f.dp.install(&after, 2, 0).unwrap();
    check(
        &mut f,
        vec![
            row(
                "port unreachable about the revoked flow",
                IN,
                ipv4(DNS, POD, ICMP, &icmp_error(3, &q)),
                false,
                reason::POLICY_REVOKED,
            ),
            row(
                "the flow itself is gone too",
                OUT,
                ipv4(POD, DNS, UDP, &udp(5353, 53)),
                false,
                reason::NO_RULE,
            ),
        ],
    );
}

// --- Fragments --------------------------------------------------------------------------------

/// A UDP datagram of `len` payload bytes from `src`:`sport` to `dst`:`dport`, cut into IPv4
/// fragments of at most 1480 bytes of IP payload (the first carries the UDP header).
fn udp_fragments(
    src: &str,
    dst: &str,
    sport: u16,
    dport: u16,
    id: u16,
    len: usize,
) -> Vec<Vec<u8>> {
    let mut dgram = Vec::new();
    dgram.extend_from_slice(&sport.to_be_bytes());
    dgram.extend_from_slice(&dport.to_be_bytes());
    dgram.extend_from_slice(&((8 + len) as u16).to_be_bytes());
    dgram.extend_from_slice(&[0, 0]);
    dgram.extend(std::iter::repeat_n(0xab, len));
    let mut out = Vec::new();
    for (i, chunk) in dgram.chunks(1480).enumerate() {
        let offset = (i * 1480 / 8) as u16;
        let more = (i + 1) * 1480 < dgram.len();
        out.push(ipv4_frag(
            src,
            dst,
            UDP,
            chunk,
            id,
            offset | if more { 0x2000 } else { 0 },
        ));
    }
    out
}

#[test]
fn later_fragments_of_a_large_dns_answer_through_an_established_flow_pass() {
    // The pod's egress is isolated (DNS to the block only) and so is its ingress: the answer,
    // 3 KB with EDNS, comes back in three fragments through the query's conntrack entries.
    let mut f = Fixture::new(&state(mode::ENFORCE, mode::ENFORCE));
    let answer = udp_fragments(DNS, POD, 53, 5353, 77, 3000);
    assert_eq!(answer.len(), 3);
    let mut rows = vec![row(
        "the query",
        OUT,
        ipv4(POD, DNS, UDP, &udp(5353, 53)),
        true,
        0,
    )];
    for (i, p) in answer.into_iter().enumerate() {
        rows.push(row(
            [
                "answer, first fragment",
                "answer, second fragment",
                "answer, last fragment",
            ][i],
            IN,
            p,
            true,
            0,
        ));
    }
    // A datagram to a Service address passes deferred; its later fragments follow it.
    let to_service = udp_fragments(POD, SVC, 5000, 8080, 78, 2000);
    for (i, p) in to_service.into_iter().enumerate() {
        rows.push(row(
            [
                "to a Service, first fragment",
                "to a Service, last fragment",
            ][i],
            OUT,
            p,
            true,
            0,
        ));
    }
    check(&mut f, rows);
    // Not isolated: what the pod may send anyway leaves whole.
    let mut f = Fixture::new(&state(mode::ENFORCE, mode::ALLOW_ALL));
    let mut rows = Vec::new();
    for (i, p) in udp_fragments(POD, OUTSIDE, 5001, 9999, 79, 2000)
        .into_iter()
        .enumerate()
    {
        rows.push(row(
            [
                "not isolated, first fragment",
                "not isolated, last fragment",
            ][i],
            OUT,
            p,
            true,
            0,
        ));
    }
    check(&mut f, rows);
}

#[test]
fn ipv6_fragments_with_an_extension_header_after_the_fragment_header_are_keyed_alike() {
    let mut f = Fixture::new(&state(mode::ENFORCE, mode::ENFORCE));
    // Fragment header (next: destination options) → destination options (next: TCP) → TCP in
    // the first fragment; the later fragment carries only the fragment header and payload.
    let first = |id: u32, dport: u16| {
        let mut ext = vec![60, 0, 0, 1];
        ext.extend_from_slice(&id.to_be_bytes());
        ext.extend_from_slice(&[TCP, 0, 1, 4, 0, 0, 0, 0]);
        ipv6_ext(PEER_A6, POD6, 44, &ext, &tcp(45000, dport))
    };
    let later = |id: u32| {
        let mut ext = vec![60, 0];
        ext.extend_from_slice(&(4u16 << 3).to_be_bytes());
        ext.extend_from_slice(&id.to_be_bytes());
        // Payload that would read as a destination options header claiming 2 KB.
        ipv6_ext(
            PEER_A6,
            POD6,
            44,
            &ext,
            &[17, 255, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
        )
    };
    check(
        &mut f,
        vec![
            row("first fragment to port 80", IN, first(900, 80), true, 0),
            row("its later fragment", IN, later(900), true, 0),
            row(
                "first fragment to port 81",
                IN,
                first(901, 81),
                false,
                reason::NO_RULE,
            ),
            row(
                "its later fragment",
                IN,
                later(901),
                false,
                reason::FRAGMENT_UNKNOWN,
            ),
        ],
    );
}

#[test]
fn ipv4_big_tcp_is_not_dropped_as_malformed() {
    let mut f = Fixture::new(&state(mode::ENFORCE, mode::ENFORCE));
    // A GSO packet past 64 KiB carries total length 0 (BPF_PROG_TEST_RUN takes one page of
    // data, so a short one stands for it: what the parser sees is the same).
    let big = |sport| {
        let mut p = ipv4(PEER_A, POD, TCP, &tcp(sport, 80));
        p.extend(std::iter::repeat_n(0u8, 1400));
        p[16] = 0;
        p[17] = 0;
        p
    };
    let gso = TestSkb {
        ingress_ifindex: 3,
        mark: 0,
        gso_size: 1448,
        gso_segs: 46,
    };
    let not_gso = TestSkb {
        ingress_ifindex: 3,
        ..TestSkb::default()
    };
    check_skb(
        &mut f,
        vec![
            (
                row("BIG TCP from an allowed peer", IN, big(46000), true, 0),
                gso,
            ),
            (
                row(
                    "BIG TCP to a port no rule allows",
                    IN,
                    {
                        let mut p = big(46001);
                        p[36..38].copy_from_slice(&81u16.to_be_bytes());
                        p
                    },
                    false,
                    reason::NO_RULE,
                ),
                gso,
            ),
            (
                row(
                    "total length 0 without GSO",
                    IN,
                    big(46002),
                    false,
                    reason::MALFORMED,
                ),
                not_gso,
            ),
        ],
    );
}
