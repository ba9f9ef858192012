//! Packet tables run against the loaded datapath with BPF_PROG_TEST_RUN.
//!
//! Needs root (CAP_BPF, CAP_NET_ADMIN); README's test command runs it as root. Each test loads
//! its own unpinned copy of the programs and maps, so tests do not share state and leave nothing
//! behind. BPF_PROG_TEST_RUN hands the packet in on the loopback device (ifindex 1), so the
//! endpoint under test sits on ifindex 1.
#[path = "common/packets.rs"]
mod packets;

use enforcer::compiler::ip_key;
use enforcer::state::{Lpm, MapState};
use enforcer_common::{
    IdentityValue, counter, direction, identity, mode, policy_prefix, reason, verdict,
};
use packets::*;

// --- Tables -------------------------------------------------------------------------------------

#[test]
fn ingress_rules_and_replies() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    check(
        &mut f,
        vec![
            row(
                "allowed peer, allowed port",
                IN,
                ipv4(PEER_A, POD, TCP, &tcp(40000, 80)),
                true,
                0,
            ),
            row(
                "reply of the allowed flow",
                OUT,
                ipv4(POD, PEER_A, TCP, &tcp(80, 40000)),
                true,
                0,
            ),
            row(
                "established, again",
                IN,
                ipv4(PEER_A, POD, TCP, &tcp(40000, 80)),
                true,
                0,
            ),
            row(
                "allowed peer, other port",
                IN,
                ipv4(PEER_A, POD, TCP, &tcp(40000, 81)),
                false,
                reason::NO_RULE,
            ),
            row(
                "allowed peer, other protocol",
                IN,
                ipv4(PEER_A, POD, UDP, &udp(40000, 80)),
                false,
                reason::NO_RULE,
            ),
            row(
                "peer without a rule",
                IN,
                ipv4(PEER_B, POD, TCP, &tcp(40001, 80)),
                false,
                reason::NO_RULE,
            ),
            row(
                "unknown address",
                IN,
                ipv4(OUTSIDE, POD, TCP, &tcp(40001, 80)),
                false,
                reason::NO_RULE,
            ),
            row(
                "not a reply: pod opens to A",
                OUT,
                ipv4(POD, PEER_A, TCP, &tcp(80, 40001)),
                false,
                reason::NO_RULE,
            ),
            row(
                "SCTP allowed port",
                IN,
                ipv4(PEER_A, POD, SCTP, &sctp(5000, 9000)),
                true,
                0,
            ),
            row(
                "SCTP other port",
                IN,
                ipv4(PEER_A, POD, SCTP, &sctp(5000, 9001)),
                false,
                reason::NO_RULE,
            ),
            row(
                "any protocol: TCP",
                IN,
                ipv4(PEER_C, POD, TCP, &tcp(1, 2)),
                true,
                0,
            ),
            row(
                "any protocol: ping",
                IN,
                ipv4(PEER_C, POD, ICMP, &icmp_echo(8, 77)),
                true,
                0,
            ),
            row(
                "ping reply",
                OUT,
                ipv4(POD, PEER_C, ICMP, &icmp_echo(0, 77)),
                true,
                0,
            ),
            row(
                "ping from A (ports only)",
                IN,
                ipv4(PEER_A, POD, ICMP, &icmp_echo(8, 78)),
                false,
                reason::NO_RULE,
            ),
            row("ARP", IN, arp(), true, 0),
            row("ARP out", OUT, arp(), true, 0),
        ],
    );
    let c = f.dp.counters().unwrap();
    assert_eq!(
        c[reason::NO_RULE as usize],
        7,
        "no-rule drops counted: {c:?}"
    );
    assert_eq!(
        c[reason::ALLOWED_BY_RULE as usize],
        4,
        "allowed new flows counted: {c:?}"
    );
    assert_eq!(c[counter::EVENTS_LOST as usize], 0);
}

#[test]
fn drop_event_names_the_flow() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    assert_eq!(
        f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(40001, 8080))),
        TC_DROP
    );
    let ev = f.events();
    assert_eq!(ev.len(), 1);
    let e = ev[0];
    assert_eq!(e.endpoint_id, EP_ID);
    assert_eq!(e.ifindex, IFINDEX);
    assert_eq!(e.saddr, ip_key(addr(PEER_B)).addr);
    assert_eq!(e.daddr, ip_key(addr(POD)).addr);
    assert_eq!(u16::from_be(e.sport_be), 40001);
    assert_eq!(u16::from_be(e.dport_be), 8080);
    assert_eq!(e.proto, TCP);
    assert_eq!(e.direction, direction::INGRESS);
    assert_eq!(e.verdict, verdict::DROP);
    assert_eq!(e.reason, reason::NO_RULE);
    assert_eq!(e.peer_identity, ID_B);
    assert_eq!(e.family, 4);
    assert_eq!(e.policy_set, SET);
    assert_eq!(e.packet_len as usize, 14 + 20 + 20);
}

#[test]
fn egress_cidr_ports_and_ranges() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    check(
        &mut f,
        vec![
            row(
                "UDP 53 into the block",
                OUT,
                ipv4(POD, DNS, UDP, &udp(5353, 53)),
                true,
                0,
            ),
            row(
                "DNS answer",
                IN,
                ipv4(DNS, POD, UDP, &udp(53, 5353)),
                true,
                0,
            ),
            row(
                "UDP 53 outside the block",
                OUT,
                ipv4(POD, OUTSIDE, UDP, &udp(5353, 53)),
                false,
                reason::NO_RULE,
            ),
            row(
                "TCP 53 into the block",
                OUT,
                ipv4(POD, DNS, TCP, &tcp(5353, 53)),
                false,
                reason::NO_RULE,
            ),
            row(
                "range start",
                OUT,
                ipv4(POD, OUTSIDE, TCP, &tcp(1000, 8000)),
                true,
                0,
            ),
            row(
                "range end",
                OUT,
                ipv4(POD, PEER_B, TCP, &tcp(1000, 8003)),
                true,
                0,
            ),
            row(
                "past the range",
                OUT,
                ipv4(POD, OUTSIDE, TCP, &tcp(1000, 8004)),
                false,
                reason::NO_RULE,
            ),
            row(
                "before the range",
                OUT,
                ipv4(POD, OUTSIDE, TCP, &tcp(1000, 7999)),
                false,
                reason::NO_RULE,
            ),
        ],
    );
}

#[test]
fn ipv6_and_extension_headers() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    // Hop-by-hop (8 bytes) → destination options (8 bytes) → TCP.
    let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    // Seven destination-options headers: past the walk's limit.
    let mut deep = Vec::new();
    for i in 0..7 {
        deep.extend_from_slice(&[if i < 6 { 60 } else { 6 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    check(
        &mut f,
        vec![
            row(
                "v6 allowed",
                IN,
                ipv6(PEER_A6, POD6, TCP, &tcp(40000, 80)),
                true,
                0,
            ),
            row(
                "v6 reply",
                OUT,
                ipv6(POD6, PEER_A6, TCP, &tcp(80, 40000)),
                true,
                0,
            ),
            row(
                "v6 other port",
                IN,
                ipv6(PEER_A6, POD6, TCP, &tcp(40000, 81)),
                false,
                reason::NO_RULE,
            ),
            row(
                "v6 unknown peer",
                IN,
                ipv6("fd00::99", POD6, TCP, &tcp(40000, 80)),
                false,
                reason::NO_RULE,
            ),
            row(
                "v6 behind two ext headers",
                IN,
                ipv6_ext(PEER_A6, POD6, 0, &ext, &tcp(40002, 80)),
                true,
                0,
            ),
            row(
                "v6 port hidden behind ext headers",
                IN,
                ipv6_ext(PEER_A6, POD6, 0, &ext, &tcp(40003, 81)),
                false,
                reason::NO_RULE,
            ),
            row(
                "v6 too many ext headers",
                IN,
                ipv6_ext(PEER_A6, POD6, 60, &deep, &tcp(40004, 80)),
                false,
                reason::MALFORMED,
            ),
            row(
                "neighbour solicitation",
                IN,
                nd("fe80::1", "ff02::1:ff00:7", 135, Some(POD6), 255),
                true,
                0,
            ),
            row(
                "neighbour solicitation a router forwarded: policy judges it",
                IN,
                nd("fe80::1", "ff02::1:ff00:7", 135, Some(POD6), 64),
                false,
                reason::NO_RULE,
            ),
            row(
                "neighbour advertisement out",
                OUT,
                nd("fe80::7", "fe80::1", 136, Some("fe80::7"), 255),
                true,
                0,
            ),
            row(
                "v6 ping from a ports-only peer",
                IN,
                ipv6(PEER_A6, POD6, 58, &icmp_echo(128, 5)),
                false,
                reason::NO_RULE,
            ),
        ],
    );
}

#[test]
fn malformed_and_non_ip() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    let good = ipv4(PEER_A, POD, TCP, &tcp(40000, 80));
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    let mut long_total = good.clone();
    long_total[16..18].copy_from_slice(&200u16.to_be_bytes());
    let truncated_tcp = {
        let mut p = eth(0x0800);
        p.extend(ipv4_hdr(PEER_A, POD, TCP, 10, 1, 0));
        p.extend_from_slice(&tcp(40000, 80)[..10]);
        p
    };
    let mut vlan = eth(0x8100);
    vlan.extend_from_slice(&[0, 5, 0x08, 0x00]);
    vlan.extend_from_slice(&good[14..]);
    let short_v4 = short_v4();
    let mut short_v6 = ipv6(PEER_A6, POD6, TCP, &tcp(40000, 80));
    short_v6[18..20].copy_from_slice(&100u16.to_be_bytes());
    // A hop-by-hop header claiming 16 bytes, of which 8 are there.
    let cut_ext = ipv6_ext(PEER_A6, POD6, 0, &[6, 1, 0, 0, 0, 0, 0, 0], &[]);
    check(
        &mut f,
        vec![
            row(
                "IHL past the end of the packet",
                IN,
                short_v4.clone(),
                false,
                reason::MALFORMED,
            ),
            row(
                "IPv4 with no L4 header",
                IN,
                good[..34].to_vec(),
                false,
                reason::MALFORMED,
            ),
            row("IHL below 5", IN, bad_ihl, false, reason::MALFORMED),
            row(
                "version 6 in an IPv4 frame",
                IN,
                bad_version,
                false,
                reason::MALFORMED,
            ),
            row(
                "total length past the packet",
                IN,
                long_total,
                false,
                reason::MALFORMED,
            ),
            row(
                "TCP header cut short",
                IN,
                truncated_tcp,
                false,
                reason::MALFORMED,
            ),
            row(
                "IPv6 payload length past the end",
                IN,
                short_v6,
                false,
                reason::MALFORMED,
            ),
            row(
                "IPv6 extension header cut short",
                IN,
                cut_ext,
                false,
                reason::MALFORMED,
            ),
            row("802.1Q tagged IP", OUT, vlan, false, reason::MALFORMED),
            row("unknown ethertype", IN, eth(0x88cc), true, 0),
            row("the good packet still passes", IN, good, true, 0),
        ],
    );
}

#[test]
fn icmp_errors_follow_their_flow() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    let query = ipv4(POD, DNS, UDP, &udp(5353, 53));
    let quoted = query[14..].to_vec();
    let unknown = ipv4(POD, OUTSIDE, UDP, &udp(5353, 53))[14..].to_vec();
    let tcp_in = ipv4(PEER_A, POD, TCP, &tcp(40000, 80));
    let quoted_tcp = tcp_in[14..14 + 28].to_vec();
    check(
        &mut f,
        vec![
            row("query", OUT, query, true, 0),
            row(
                "port unreachable about it",
                IN,
                ipv4(DNS, POD, ICMP, &icmp_error(3, &quoted)),
                true,
                0,
            ),
            row(
                "error about a flow never seen",
                IN,
                ipv4(OUTSIDE, POD, ICMP, &icmp_error(3, &unknown)),
                false,
                reason::NO_RULE,
            ),
            row("inbound allowed TCP", IN, tcp_in, true, 0),
            row(
                "pod's host unreachable about it",
                OUT,
                ipv4(POD, PEER_A, ICMP, &icmp_error(3, &quoted_tcp)),
                true,
                0,
            ),
            row(
                "error with a truncated quote",
                IN,
                ipv4(DNS, POD, ICMP, &icmp_error(3, &quoted[..10])),
                false,
                reason::MALFORMED,
            ),
        ],
    );
    // ICMPv6: packet too big about an allowed v6 flow.
    let v6_in = ipv6(PEER_A6, POD6, TCP, &tcp(40010, 80));
    let quoted6 = v6_in[14..14 + 48].to_vec();
    check(
        &mut f,
        vec![
            row("v6 allowed flow", IN, v6_in, true, 0),
            row(
                "packet too big about it",
                OUT,
                ipv6(POD6, PEER_A6, 58, &icmp_error(2, &quoted6)),
                true,
                0,
            ),
        ],
    );
}

#[test]
fn fragments() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    let mf = 0x2000;
    // Later fragments carry 8-byte units of payload with no UDP header.
    let body = [0u8; 16];
    let frag6 = |id: u32, offset_units: u16, more: bool, payload: &[u8]| {
        let mut ext = vec![UDP, 0];
        ext.extend_from_slice(&((offset_units << 3) | more as u16).to_be_bytes());
        ext.extend_from_slice(&id.to_be_bytes());
        ipv6_ext(PEER_A6, POD6, 44, &ext, payload)
    };
    let mut v6_tcp_first = vec![TCP, 0, 0, 1];
    v6_tcp_first.extend_from_slice(&9u32.to_be_bytes());
    check(
        &mut f,
        vec![
            row(
                "first fragment, allowed",
                OUT,
                ipv4_frag(POD, DNS, UDP, &udp(5353, 53), 42, mf),
                true,
                0,
            ),
            row(
                "later fragment of it",
                OUT,
                ipv4_frag(POD, DNS, UDP, &body, 42, 3),
                true,
                0,
            ),
            row(
                "last fragment of it",
                OUT,
                ipv4_frag(POD, DNS, UDP, &body, 42, 5),
                true,
                0,
            ),
            row(
                "later fragment, first never seen",
                OUT,
                ipv4_frag(POD, DNS, UDP, &body, 43, 3),
                false,
                reason::FRAGMENT_UNKNOWN,
            ),
            row(
                "first fragment, denied",
                OUT,
                ipv4_frag(POD, OUTSIDE, UDP, &udp(5353, 53), 44, mf),
                false,
                reason::NO_RULE,
            ),
            row(
                "later fragment of the denied one",
                OUT,
                ipv4_frag(POD, OUTSIDE, UDP, &body, 44, 3),
                false,
                reason::FRAGMENT_UNKNOWN,
            ),
            row(
                "v6 first fragment, denied port",
                IN,
                frag6(7, 0, true, &udp(1, 80)),
                false,
                reason::NO_RULE,
            ),
            row(
                "v6 later fragment of it",
                IN,
                frag6(7, 2, false, &body),
                false,
                reason::FRAGMENT_UNKNOWN,
            ),
        ],
    );
}

#[test]
fn endpoint_modes() {
    // Not isolated for ingress: everything in passes, and is tracked so the replies pass the
    // isolated egress.
    let mut f = Fixture::new(&base_state(mode::ALLOW_ALL, mode::ENFORCE));
    check(
        &mut f,
        vec![
            row(
                "not isolated: peer without a rule",
                IN,
                ipv4(PEER_B, POD, TCP, &tcp(1, 2)),
                true,
                0,
            ),
            row(
                "reply through isolated egress",
                OUT,
                ipv4(POD, PEER_B, TCP, &tcp(2, 1)),
                true,
                0,
            ),
            row(
                "egress still isolated",
                OUT,
                ipv4(POD, PEER_B, TCP, &tcp(3, 4)),
                false,
                reason::NO_RULE,
            ),
            row(
                "malformed, not isolated direction",
                IN,
                short_v4(),
                false,
                reason::MALFORMED,
            ),
        ],
    );
    let mut f = Fixture::new(&base_state(mode::DENY_ALL, mode::DENY_ALL));
    check(
        &mut f,
        vec![
            row(
                "held fail-closed: allowed peer",
                IN,
                ipv4(PEER_A, POD, TCP, &tcp(40000, 80)),
                false,
                reason::ENDPOINT_DENY_ALL,
            ),
            row(
                "held fail-closed: out",
                OUT,
                ipv4(POD, DNS, UDP, &udp(1, 53)),
                false,
                reason::ENDPOINT_DENY_ALL,
            ),
            row("held fail-closed: ARP still works", IN, arp(), true, 0),
            row(
                "held fail-closed: ND still works",
                OUT,
                nd("fe80::7", "fe80::1", 135, Some("fe80::1"), 255),
                true,
                0,
            ),
        ],
    );
    // Unmanaged both ways, and no endpoint at all: untouched.
    let mut f = Fixture::new(&base_state(mode::UNMANAGED, mode::UNMANAGED));
    check(
        &mut f,
        vec![
            row("unmanaged", IN, ipv4(PEER_B, POD, TCP, &tcp(1, 2)), true, 0),
            row("unmanaged malformed", IN, short_v4(), true, 0),
        ],
    );
    assert_eq!(
        f.dp.conntrack_len().unwrap(),
        0,
        "unmanaged traffic is not tracked"
    );
    let mut none = base_state(mode::ENFORCE, mode::ENFORCE);
    none.endpoints.clear();
    let mut f = Fixture::new(&none);
    check(
        &mut f,
        vec![row(
            "no endpoint entry",
            IN,
            ipv4(PEER_B, POD, TCP, &tcp(1, 2)),
            true,
            0,
        )],
    );
}

#[test]
fn conntrack_holds_both_directions() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    assert_eq!(f.run(IN, &ipv4(PEER_A, POD, TCP, &tcp(40000, 80))), TC_PASS);
    let ct = f.dp.conntrack().unwrap();
    assert_eq!(ct.len(), 2, "a new flow makes exactly two entries");
    let fwd = ct
        .iter()
        .find(|(k, _)| k.direction == direction::INGRESS)
        .expect("forward entry");
    assert_eq!(fwd.0.ifindex, IFINDEX);
    assert_eq!(fwd.1.policy_id, 20);
    let rev = ct
        .iter()
        .find(|(k, _)| k.direction == direction::EGRESS)
        .expect("reply entry");
    assert_eq!(rev.0, fwd.0.reversed());
    assert_eq!(rev.1.flags, enforcer_common::ct_flags::REPLY);
    f.dp.clear_conntrack().unwrap();
    assert_eq!(
        f.run(OUT, &ipv4(POD, PEER_A, TCP, &tcp(80, 40000))),
        TC_DROP,
        "without conntrack the reply is a new, denied flow"
    );
}

#[test]
fn failed_install_rolls_back() {
    // A diff whose last write fails (an LPM prefix longer than the key) must leave the maps as
    // they were, and the old policy enforcing.
    let before = base_state(mode::ENFORCE, mode::ENFORCE);
    let mut f = Fixture::new(&before);
    let mut after = before.clone();
    after.endpoints.get_mut(&IFINDEX).unwrap().ingress_mode = mode::ALLOW_ALL;
    after.ip_identity.remove(&ip_key(addr(PEER_B)));
    allow(
        &mut after,
        ID_B,
        direction::INGRESS,
        TCP,
        22,
        policy_prefix::FULL,
        (30, 0),
    );
    after.cidr_identity.insert(
        Lpm {
            prefix_len: 129,
            data: ip_key(addr(OUTSIDE)),
        },
        IdentityValue {
            identity: identity::CIDR_FLAG | 9,
            endpoint_id: 0,
        },
    );
    let err = f.dp.install(&after, 2, 0).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("CIDR_IDENTITY") && msg.contains("rolled back"),
        "{msg}"
    );
    assert_eq!(
        f.dp.read_state().unwrap(),
        before,
        "maps are back to the installed state"
    );
    assert_eq!(f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(1, 22))), TC_DROP);
}

#[test]
fn service_egress_is_judged_after_the_dnat() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    let net = Prog::ToNetwork;
    check(
        &mut f,
        vec![row(
            "to the Service: deferred",
            OUT,
            ipv4(POD, SVC, TCP, &tcp(5555, 80)),
            true,
            0,
        )],
    );
    assert_eq!(
        f.dp.conntrack_len().unwrap(),
        0,
        "nothing admitted before the DNAT"
    );
    check(
        &mut f,
        vec![
            row(
                "translated to A:8080, leaving the node",
                net,
                ipv4(POD, PEER_A, TCP, &tcp(5555, 8080)),
                true,
                0,
            ),
            row(
                "reply, reverse-translated",
                IN,
                ipv4(SVC, POD, TCP, &tcp(80, 5555)),
                true,
                0,
            ),
            row(
                "next packet of the flow",
                OUT,
                ipv4(POD, SVC, TCP, &tcp(5555, 80)),
                true,
                0,
            ),
            row(
                "another flow to the Service",
                OUT,
                ipv4(POD, SVC, TCP, &tcp(5556, 80)),
                true,
                0,
            ),
            row(
                "translated to B, which egress does not allow",
                net,
                ipv4(POD, PEER_B, TCP, &tcp(5556, 8080)),
                false,
                reason::NO_RULE,
            ),
            row(
                "no reply for the denied one",
                IN,
                ipv4(SVC, POD, TCP, &tcp(80, 5556)),
                false,
                reason::NO_RULE,
            ),
            row(
                "node traffic nobody deferred",
                net,
                ipv4(DNS, OUTSIDE, UDP, &udp(1, 2)),
                true,
                0,
            ),
        ],
    );
    let ct = f.dp.conntrack().unwrap();
    assert!(
        ct.iter().any(|(k, v)| k.daddr == ip_key(addr(SVC)).addr
            && u16::from_be(k.dport_be) == 80
            && k.direction == direction::EGRESS
            && v.flags & enforcer_common::ct_flags::SERVICE != 0),
        "the flow is tracked under the tuple the pod sent: {ct:?}"
    );
}

#[test]
fn events_are_rate_limited_per_endpoint() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    f.dp.set_event_limits(1000, 3).unwrap();
    for port in 0..10u16 {
        let p = ipv4(PEER_B, POD, TCP, &tcp(40000 + port, 80));
        assert_eq!(
            f.run(IN, &p),
            TC_DROP,
            "the verdict does not depend on the limit"
        );
    }
    let events = f.events();
    assert_eq!(
        events.len(),
        3,
        "the burst, then nothing within the same second"
    );
    let c = f.dp.counters().unwrap();
    assert_eq!(c[counter::EVENTS_SUPPRESSED as usize], 7);
    assert_eq!(c[reason::NO_RULE as usize], 10, "every drop is counted");
    assert_eq!(f.dp.suppressed_events().unwrap(), vec![(IFINDEX, 7)]);
    // No limit: every drop reports again.
    f.dp.set_event_limits(0, 0).unwrap();
    assert_eq!(f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(50000, 80))), TC_DROP);
    assert_eq!(f.events().len(), 1);
}

#[test]
fn per_endpoint_event_limits_and_events_off() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    // kube-router's default for an annotated policy: 10/minute, burst 2 here; this endpoint
    // only, the global default (no limit) elsewhere.
    let limit = enforcer_common::EventLimit {
        rate_milli: 166,
        burst: 2,
    };
    f.dp.set_endpoint_event_limits(&[(IFINDEX, limit)].into())
        .unwrap();
    for port in 0..6u16 {
        assert_eq!(
            f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(41000 + port, 80))),
            TC_DROP
        );
    }
    assert_eq!(f.events().len(), 2, "the endpoint's own burst");
    assert_eq!(f.dp.suppressed_events().unwrap(), vec![(IFINDEX, 4)]);
    // Without the override the global limit (none) applies again.
    f.dp.set_endpoint_event_limits(&Default::default()).unwrap();
    assert_eq!(f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(42000, 80))), TC_DROP);
    assert_eq!(f.events().len(), 1);

    // Events off: verdicts and counters as before, nothing on the ring buffer.
    let mut c = f.dp.config().unwrap();
    c.flags |= enforcer_common::config_flags::EVENTS_OFF;
    f.dp.set_config(c).unwrap();
    let before = f.dp.counters().unwrap()[reason::NO_RULE as usize];
    assert_eq!(f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(43000, 80))), TC_DROP);
    assert!(f.events().is_empty());
    assert_eq!(
        f.dp.counters().unwrap()[reason::NO_RULE as usize],
        before + 1
    );
}

#[test]
fn an_unknown_interface_is_held_only_with_deny_unknown() {
    // Attached, but no endpoint entry: the agent attached when the interface appeared.
    let mut f = Fixture::new(&MapState::default());
    let p = ipv4(PEER_A, POD, TCP, &tcp(46000, 80));
    assert_eq!(f.run(IN, &p), TC_PASS, "unmanaged by default");
    let mut c = f.dp.config().unwrap();
    c.flags |= enforcer_common::config_flags::DENY_UNKNOWN;
    f.dp.set_config(c).unwrap();
    assert_eq!(f.run(IN, &ipv4(PEER_A, POD, TCP, &tcp(46001, 80))), TC_DROP);
    assert_eq!(f.run(OUT, &ipv4(POD, PEER_A, UDP, &udp(5353, 53))), TC_DROP);
    assert_eq!(
        f.run(OUT, &arp()),
        TC_PASS,
        "ARP passes: the pod can be discovered"
    );
    let ev = f.events();
    assert_eq!(ev.len(), 2);
    assert!(
        ev.iter()
            .all(|e| e.reason == reason::ENDPOINT_UNKNOWN && e.endpoint_id == 0)
    );
}

#[test]
fn a_flows_retries_make_one_drop_event() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    f.dp.set_drop_report_window(std::time::Duration::from_secs(5))
        .unwrap();
    let syn = ipv4(PEER_B, POD, TCP, &tcp(45000, 80));
    for _ in 0..3 {
        assert_eq!(f.run(IN, &syn), TC_DROP, "every retry is dropped");
    }
    assert_eq!(f.events().len(), 1, "one event for the blocked connection");
    let c = f.dp.counters().unwrap();
    assert_eq!(c[counter::EVENTS_REPEATED as usize], 2);
    assert_eq!(c[reason::NO_RULE as usize], 3, "every drop is counted");
    // Another flow (another source port) is reported on its own.
    assert_eq!(f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(45001, 80))), TC_DROP);
    assert_eq!(f.events().len(), 1);
    // Window 0: every drop reports.
    f.dp.set_drop_report_window(std::time::Duration::ZERO)
        .unwrap();
    assert_eq!(f.run(IN, &syn), TC_DROP);
    assert_eq!(f.run(IN, &syn), TC_DROP);
    assert_eq!(f.events().len(), 2);
}

#[test]
fn rule_counters_count_both_directions_of_admitted_flows() {
    let mut f = Fixture::new(&base_state(mode::ENFORCE, mode::ENFORCE));
    let syn = ipv4(PEER_A, POD, TCP, &tcp(44000, 80));
    let reply = ipv4(POD, PEER_A, TCP, &tcp(80, 44000));
    assert_eq!(f.run(IN, &syn), TC_PASS);
    assert_eq!(f.run(OUT, &reply), TC_PASS);
    assert_eq!(f.run(IN, &syn), TC_PASS);
    // A flow no rule admitted (egress not isolated by a rule here) is not counted per rule.
    assert_eq!(f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(44001, 80))), TC_DROP);
    let rules = f.dp.rule_counters().unwrap();
    let key = enforcer_common::RuleCounterKey {
        policy_id: 20,
        rule_index: 0,
        direction: direction::INGRESS,
        _pad: 0,
    };
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[&key].packets, 3);
    assert_eq!(
        rules[&key].bytes,
        (syn.len() * 2 + reply.len()) as u64,
        "bytes as TC sees them"
    );
}

#[test]
fn audit_mode_reports_what_it_would_drop_and_passes_it() {
    let mut f = Fixture::new(&base_state(mode::AUDIT, mode::ENFORCE));
    // Allowed by a rule: passes, no report.
    assert_eq!(f.run(IN, &ipv4(PEER_A, POD, TCP, &tcp(40000, 80))), TC_PASS);
    assert!(f.events().is_empty());
    // No rule: passes, reported once as an audit event; the reply passes as a reply.
    assert_eq!(f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(40001, 81))), TC_PASS);
    let ev = f.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].verdict, verdict::AUDIT);
    assert_eq!(ev[0].reason, reason::AUDIT_WOULD_DROP);
    assert_eq!(ev[0].peer_identity, ID_B);
    assert_eq!(
        f.run(OUT, &ipv4(POD, PEER_B, TCP, &tcp(81, 40001))),
        TC_PASS
    );
    assert_eq!(f.run(IN, &ipv4(PEER_B, POD, TCP, &tcp(40001, 81))), TC_PASS);
    assert!(
        f.events().is_empty(),
        "established packets are not reported again"
    );
    let c = f.dp.counters().unwrap();
    assert_eq!(c[reason::AUDIT_WOULD_DROP as usize], 1);
    // The enforced direction still drops.
    assert_eq!(f.run(OUT, &ipv4(POD, PEER_B, TCP, &tcp(1, 2))), TC_DROP);
}
