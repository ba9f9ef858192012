//! Adversarial tests: conntrack against a flood of new flows.
//!
//! Each test is named after the attack it withstands; tests/adversarial/README.md lists them.
//! The packet tables (BPF_PROG_TEST_RUN, one endpoint on ifindex 1) follow the TCP state
//! machine, the budget and the garbage collector entry by entry; the lab test floods a real
//! node through the real agent.

#[path = "../../enforcer/tests/common/mod.rs"]
mod common;
#[path = "../../enforcer/tests/common/packets.rs"]
mod packets;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::run::Run;
use enforcer::bpf::ct::{CtSummary, Table};
use enforcer::conntrack::{Collector, Lifetimes, monotonic_ns};
use enforcer_common::{CtKey, CtSettings, counter, ct_state, direction, mode, reason, tcp_flags};
use enforcer_lab::lab::Source;
use packets::*;

const SEC: u64 = 1_000_000_000;

fn tcp_with(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = tcp(sport, dport);
    h[13] = flags;
    h
}

const SYN: u8 = tcp_flags::SYN;
const SYN_ACK: u8 = tcp_flags::SYN | tcp_flags::ACK;
const ACK: u8 = tcp_flags::ACK;
const FIN_ACK: u8 = tcp_flags::FIN | tcp_flags::ACK;
const RST: u8 = tcp_flags::RST;

/// The packet tables' endpoint, with a conntrack LRU of `lru` entries and a budget.
fn fixture(lru: u32, budget: u32) -> Fixture {
    require_root();
    let mut dp = Datapath::load_unpinned_with(&[(enforcer_common::names::MAP_CONNTRACK, lru)])
        .expect("loading the datapath");
    dp.install(&base_state(mode::ENFORCE, mode::ENFORCE), 1, 0)
        .expect("installing");
    dp.set_ct_settings(CtSettings {
        endpoint_budget: budget,
        _pad: 0,
    })
    .unwrap();
    Fixture { dp }
}

/// The entry of `key` and the table holding it.
fn entry(f: &Fixture, key: &CtKey) -> Option<(Table, enforcer_common::CtValue)> {
    let t = f.dp.ct_tables().unwrap();
    for table in [Table::Established, Table::Lru] {
        if let Some(v) = t.get(table, key) {
            return Some((table, v));
        }
    }
    None
}

/// Key of a flow PEER → POD:dport at the pod's ingress (the forward entry of an ingress flow).
fn key_in(peer: &str, sport: u16, dport: u16, proto: u8) -> CtKey {
    CtKey {
        saddr: enforcer::compiler::ip_key(addr(peer)).addr,
        daddr: enforcer::compiler::ip_key(addr(POD)).addr,
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto,
        direction: direction::INGRESS,
        _pad: 0,
        ifindex: IFINDEX,
    }
}

fn summary(f: &Fixture) -> CtSummary {
    CtSummary::read(&f.dp.ct_tables().unwrap()).unwrap()
}

fn collector(f: &Fixture) -> Collector {
    Collector {
        tables: f.dp.ct_tables().unwrap(),
        lifetimes: Lifetimes::default(),
    }
}

/// New flows in the packet tables' floods (the LRU holds 64 entries there).
const FLOOD: u16 = 3200;

/// `n` new flows the endpoint's ingress allows (PEER_C may use any protocol and port), none
/// answered: what a flood of new flows puts into conntrack. Each flow carries two packets:
/// the kernel's LRU gives an entry looked up since its insert a second chance, so a flood of
/// one-packet flows would evict itself first; a flooder only has to send twice.
fn flood(f: &mut Fixture, n: u16) {
    for i in 0..n {
        let p = ipv4(PEER_C, POD, UDP, &udp(10_000 + i, 5000));
        assert_eq!(f.run(IN, &p), TC_PASS, "flood packet {i}");
        assert_eq!(f.run(IN, &p), TC_PASS, "flood packet {i}, again");
    }
}

#[test]
fn a_flood_of_unanswered_flows_cannot_evict_an_answered_one() {
    let mut f = fixture(64, 0);
    let fwd = key_in(PEER_A, 40000, 80, TCP);
    check(
        &mut f,
        vec![row(
            "SYN from A to :80",
            IN,
            ipv4(PEER_A, POD, TCP, &tcp_with(40000, 80, SYN)),
            true,
            0,
        )],
    );
    let (t, v) = entry(&f, &fwd).expect("the SYN is tracked");
    assert_eq!((t, v.state), (Table::Lru, ct_state::NEW), "unanswered: LRU");
    check(
        &mut f,
        vec![row(
            "SYN-ACK",
            OUT,
            ipv4(POD, PEER_A, TCP, &tcp_with(80, 40000, SYN_ACK)),
            true,
            0,
        )],
    );
    for k in [fwd, fwd.reversed()] {
        let (t, v) = entry(&f, &k).expect("both entries stay");
        assert_eq!(
            (t, v.state),
            (Table::Established, ct_state::ESTABLISHED),
            "answered: moved out of the LRU"
        );
    }
    // A hundred times the LRU's capacity in new flows.
    flood(&mut f, FLOOD);
    let s = summary(&f);
    assert!(
        s.evicted >= FLOOD as u64 * 2 - 64,
        "the flood churned the LRU: {s:?}"
    );
    assert_eq!(s.established_entries, 2, "{s:?}");
    // The pod's side of the connection is egress to A:40000, which no rule allows: only the
    // answered flow's entries pass it.
    check(
        &mut f,
        vec![
            row(
                "server pushes after the flood",
                OUT,
                ipv4(POD, PEER_A, TCP, &tcp_with(80, 40000, ACK)),
                true,
                0,
            ),
            row(
                "client answers",
                IN,
                ipv4(PEER_A, POD, TCP, &tcp_with(40000, 80, ACK)),
                true,
                0,
            ),
        ],
    );
}

#[test]
fn a_pod_past_its_budget_keeps_its_flows_in_the_lru_only() {
    // Budget 2: one answered flow.
    let mut f = fixture(64, 2);
    for sport in [40000, 40001] {
        assert_eq!(
            f.run(IN, &ipv4(PEER_A, POD, TCP, &tcp_with(sport, 80, SYN))),
            TC_PASS
        );
        assert_eq!(
            f.run(OUT, &ipv4(POD, PEER_A, TCP, &tcp_with(80, sport, SYN_ACK))),
            TC_PASS
        );
    }
    let first = entry(&f, &key_in(PEER_A, 40000, 80, TCP)).unwrap();
    let second = entry(&f, &key_in(PEER_A, 40001, 80, TCP)).unwrap();
    assert_eq!(first.0, Table::Established);
    assert_eq!(
        (second.0, second.1.state),
        (Table::Lru, ct_state::ESTABLISHED),
        "past the budget: established, but in the LRU"
    );
    let s = summary(&f);
    assert_eq!(s.over_budget, 1, "{s:?}");
    assert_eq!(s.in_use.get(&IFINDEX), Some(&2), "{s:?}");
    flood(&mut f, FLOOD);
    check(
        &mut f,
        vec![
            row(
                "the flow within the budget survives the flood",
                OUT,
                ipv4(POD, PEER_A, TCP, &tcp_with(80, 40000, ACK)),
                true,
                0,
            ),
            row(
                "the flow past it was evicted: its reply is a new flow no rule allows",
                OUT,
                ipv4(POD, PEER_A, TCP, &tcp_with(80, 40001, ACK)),
                false,
                reason::NO_RULE,
            ),
        ],
    );
}

#[test]
fn a_reset_connection_is_closed_and_collected_first() {
    let mut f = fixture(1024, 0);
    for sport in [40000, 40001] {
        assert_eq!(
            f.run(IN, &ipv4(PEER_A, POD, TCP, &tcp_with(sport, 80, SYN))),
            TC_PASS
        );
        assert_eq!(
            f.run(OUT, &ipv4(POD, PEER_A, TCP, &tcp_with(80, sport, SYN_ACK))),
            TC_PASS
        );
    }
    assert_eq!(
        f.run(IN, &ipv4(PEER_A, POD, TCP, &tcp_with(40001, 80, RST))),
        TC_PASS
    );
    let reset = key_in(PEER_A, 40001, 80, TCP);
    for k in [reset, reset.reversed()] {
        let (t, v) = entry(&f, &k).unwrap();
        assert_eq!(
            (t, v.state),
            (Table::Lru, ct_state::CLOSING),
            "a reset flow leaves the established table (its budget freed)"
        );
    }
    assert_eq!(summary(&f).in_use.get(&IFINDEX), Some(&2));
    let now = monotonic_ns();
    let mut gc = collector(&f);
    // Both were used since they were made: the first pass only marks them idle.
    gc.pass(now).unwrap();
    let (stats, s) = gc.pass(now + 11 * SEC).unwrap();
    assert_eq!(stats.deleted_lru, 2, "closing lifetime 10 s: {stats:?}");
    assert_eq!(s.established_entries, 2, "the open connection stays: {s:?}");
    assert_eq!(s.gc_deleted, 2);
    let (stats, s) = gc.pass(now + 21_601 * SEC).unwrap();
    assert_eq!(
        stats.deleted_established, 2,
        "established lifetime 6 h: {stats:?}"
    );
    assert_eq!(s.total(), 0);
    assert!(
        s.in_use.is_empty(),
        "the collector gives the budget back: {s:?}"
    );
    assert_eq!(
        f.run(OUT, &ipv4(POD, PEER_A, TCP, &tcp_with(80, 40000, ACK))),
        TC_DROP,
        "a collected flow's reply is a new flow"
    );
}

#[test]
fn a_half_closed_connection_stays_open_until_both_fins() {
    let mut f = fixture(1024, 0);
    let fwd = key_in(PEER_A, 40000, 80, TCP);
    assert_eq!(
        f.run(IN, &ipv4(PEER_A, POD, TCP, &tcp_with(40000, 80, SYN))),
        TC_PASS
    );
    assert_eq!(
        f.run(OUT, &ipv4(POD, PEER_A, TCP, &tcp_with(80, 40000, SYN_ACK))),
        TC_PASS
    );
    assert_eq!(
        f.run(IN, &ipv4(PEER_A, POD, TCP, &tcp_with(40000, 80, FIN_ACK))),
        TC_PASS
    );
    let (t, v) = entry(&f, &fwd).unwrap();
    assert_eq!(
        (t, v.state),
        (Table::Established, ct_state::ESTABLISHED),
        "one FIN: the other side may still send"
    );
    assert_eq!(
        f.run(OUT, &ipv4(POD, PEER_A, TCP, &tcp_with(80, 40000, ACK))),
        TC_PASS,
        "data after the first FIN"
    );
    assert_eq!(
        f.run(OUT, &ipv4(POD, PEER_A, TCP, &tcp_with(80, 40000, FIN_ACK))),
        TC_PASS
    );
    for k in [fwd, fwd.reversed()] {
        let (t, v) = entry(&f, &k).unwrap();
        assert_eq!(
            (t, v.state),
            (Table::Lru, ct_state::CLOSING),
            "FIN both ways"
        );
    }
    assert_eq!(
        f.run(IN, &ipv4(PEER_A, POD, TCP, &tcp_with(40000, 80, ACK))),
        TC_PASS,
        "the last ACK"
    );
}

#[test]
fn a_syn_reusing_a_closed_flows_ports_is_judged_as_a_new_flow() {
    // The pod connected out to A:8080 (egress allows it); A may not connect in on any port but
    // 80. Once the connection closed, a SYN from A:8080 to the pod's old port must not ride on
    // the closed flow's reply entry.
    let mut f = fixture(1024, 0);
    let out = |flags| ipv4(POD, PEER_A, TCP, &tcp_with(5555, 8080, flags));
    let back = |flags| ipv4(PEER_A, POD, TCP, &tcp_with(8080, 5555, flags));
    check(
        &mut f,
        vec![
            row("pod connects out", OUT, out(SYN), true, 0),
            row("answer", IN, back(SYN_ACK), true, 0),
            row("pod closes", OUT, out(FIN_ACK), true, 0),
            row("A closes", IN, back(FIN_ACK), true, 0),
            row("last ACK", OUT, out(ACK), true, 0),
            row(
                "A opens a connection on the closed flow's ports",
                IN,
                back(SYN),
                false,
                reason::NO_RULE,
            ),
        ],
    );
}

#[test]
fn an_idle_flow_expires_and_an_active_one_does_not() {
    let mut f = fixture(1024, 0);
    // Two UDP flows out to DNS (egress allows UDP 53 into the block), both answered.
    for sport in [3000, 3001] {
        assert_eq!(f.run(OUT, &ipv4(POD, DNS, UDP, &udp(sport, 53))), TC_PASS);
        assert_eq!(f.run(IN, &ipv4(DNS, POD, UDP, &udp(53, sport))), TC_PASS);
    }
    assert_eq!(summary(&f).established_entries, 4);
    let now = monotonic_ns();
    let mut gc = collector(&f);
    gc.pass(now).unwrap();
    // Only the first flow has traffic after that pass, one way only.
    assert_eq!(f.run(OUT, &ipv4(POD, DNS, UDP, &udp(3000, 53))), TC_PASS);
    let (stats, _) = gc.pass(now + 30 * SEC).unwrap();
    assert_eq!(stats.refreshed, 1, "{stats:?}");
    let (stats, s) = gc.pass(now + 65 * SEC).unwrap();
    assert_eq!(
        stats.deleted_established, 2,
        "the idle flow (60 s for UDP) goes, both entries: {stats:?}"
    );
    assert_eq!(
        s.established_entries, 2,
        "the flow used 35 s ago stays, its quiet half too"
    );
    assert_eq!(s.in_use.get(&IFINDEX), Some(&2));
    check(
        &mut f,
        vec![
            row(
                "the kept flow's answer",
                IN,
                ipv4(DNS, POD, UDP, &udp(53, 3000)),
                true,
                0,
            ),
            row(
                "the collected flow's late answer is a new flow",
                IN,
                ipv4(DNS, POD, UDP, &udp(53, 3001)),
                false,
                reason::NO_RULE,
            ),
        ],
    );
}

// --- The flood, on a lab node ------------------------------------------------------------------

const SCENARIO: &str = r#"
namespaces: [{name: x}]
pods:
  - {namespace: x, name: server, labels: {app: server}}
  - {namespace: x, name: client, labels: {app: client}}
  - {namespace: x, name: attacker, labels: {app: attacker}}
  - {namespace: x, name: sink, labels: {app: sink}}
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: server-from-client, namespace: x}
    spec:
      podSelector: {matchLabels: {app: server}}
      policyTypes: [Ingress]
      ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 7000}]}]
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: client-no-ingress, namespace: x}
    spec: {podSelector: {matchLabels: {app: client}}, policyTypes: [Ingress]}
probes:
  - {from: x/attacker, to: x/server, port: 7001, protocol: TCP, expect: deny}
"#;

/// Flows per second the flood aims at, and how many it sends.
const RATE: u64 = 200_000;
const FLOWS: u64 = 400_000;
const BATCH: usize = 64;

/// Sends `FLOWS` new UDP flows from the attacker to the sink (four source ports × 60000
/// destination ports), two datagrams each, paced at `RATE` flows/s with sendmmsg(2). Returns
/// the rate reached.
fn flood_from(run: &Run) -> f64 {
    use std::os::fd::AsRawFd;
    let attacker = run.ip("attacker");
    let std::net::IpAddr::V4(sink) = run.ip("sink") else {
        panic!("the lab's pods are IPv4 first")
    };
    let socks = run
        .ns("attacker")
        .run(move || {
            (0..4)
                .map(|_| Ok(UdpSocket::bind(SocketAddr::new(attacker, 0))?))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap();
    let payload = [0u8; 16];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut _,
        iov_len: payload.len(),
    };
    let mut addrs = vec![
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(sink.octets()),
            },
            sin_zero: [0; 8],
        };
        BATCH
    ];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < FLOWS {
        let due = (start.elapsed().as_micros() as u64 * RATE / 1_000_000).min(FLOWS);
        while sent < due {
            let n = (due - sent).min(BATCH as u64).min(60_000 - sent % 60_000) as usize;
            let sock = &socks[(sent / 60_000) as usize % socks.len()];
            let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
            for (i, a) in addrs.iter_mut().enumerate().take(n) {
                a.sin_port = (1 + ((sent + i as u64) % 60_000) as u16).to_be();
                // SAFETY: a zeroed msghdr is valid; the pointers set here outlive the call.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (a as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = &mut iov;
                h.msg_hdr.msg_iovlen = 1;
                msgs.push(h);
            }
            // Each flow twice (see `flood` above: the LRU's second chance).
            // SAFETY: `msgs` holds `n` initialised headers pointing at live buffers.
            let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
            let r = r.max(0) as u32;
            // SAFETY: as above.
            unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), r, 0) };
            sent += r as u64;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    sent as f64 / start.elapsed().as_secs_f64()
}

/// The server writes `msg`; the client must read it within the timeout.
fn push(server: &mut TcpStream, client: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    server
        .write_all(msg)
        .map_err(|e| format!("server write: {e}"))?;
    let mut got = vec![0u8; msg.len()];
    client
        .read_exact(&mut got)
        .map_err(|e| format!("client read: {e}"))?;
    if got != msg {
        return Err(format!("client read {got:?}"));
    }
    Ok(())
}

#[test]
fn a_flood_of_new_flows_from_one_pod_cannot_evict_another_pods_connection() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    common::require_root("the conntrack flood test");
    let run = Run::start(SCENARIO, Source::Manifests);
    let server_addr = SocketAddr::new(run.ip("server"), 7000);
    let listener = run
        .ns("server")
        .run(move || Ok(TcpListener::bind(server_addr)?))
        .unwrap();
    let mut client = run
        .ns("client")
        .run(move || {
            Ok(TcpStream::connect_timeout(
                &server_addr,
                Duration::from_secs(5),
            )?)
        })
        .expect("the client connects to the server");
    let (mut server, _) = listener.accept().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    push(&mut server, &mut client, b"hello").expect("before the flood");

    let pinned = enforcer::bpf::PinnedMaps::open(
        &enforcer_lab::runs::bpffs_dir(&run.plan.prefix).join("node-1"),
    )
    .expect("pinned maps");
    let before = pinned.conntrack().unwrap();
    // Idle, then the flood; the connection carries nothing meanwhile, so only entries that
    // survive without traffic can pass what the server sends next into the client (whose
    // ingress admits nothing new).
    std::thread::sleep(Duration::from_secs(1));
    let rate = flood_from(&run);
    std::thread::sleep(Duration::from_millis(500));
    let after = pinned.conntrack().unwrap();
    let pushed = push(&mut server, &mut client, b"after the flood");
    std::thread::sleep(Duration::from_secs(2));
    let pushed_again = push(&mut server, &mut client, b"after an idle while");
    let answered = client
        .write_all(b"ok")
        .and_then(|()| {
            let mut b = [0u8; 2];
            server.read_exact(&mut b)
        })
        .map_err(|e| e.to_string());
    eprintln!(
        "flood: {FLOWS} new UDP flows at {rate:.0} flows/s; conntrack LRU evicted {} entries \
         (inserted {}, promoted {}, over budget {}); established entries {} before, {} after; \
         the connection: push after the flood {pushed:?}, after idling {pushed_again:?}, \
         client to server {answered:?}",
        after.evicted - before.evicted,
        after.inserted - before.inserted,
        after.promoted,
        after.over_budget,
        before.established_entries,
        after.established_entries,
    );
    assert!(
        after.evicted - before.evicted >= 100_000,
        "the flood must overflow the LRU to prove anything: {after:?}"
    );
    pushed.expect("the server's push after the flood reaches the client");
    pushed_again.expect("the server's push after idling reaches the client");
    answered.expect("the client's answer reaches the server");
    let counters = pinned.counters().unwrap();
    assert_eq!(
        counters[reason::CT_BUDGET as usize],
        0,
        "no flow was refused"
    );
    assert!(counters[counter::CT_PROMOTED as usize] >= 4);
}
