//! Packets built by hand and the packet-table fixture: one endpoint on ifindex 1 (where
//! BPF_PROG_TEST_RUN hands packets in), isolated both ways, with a handful of rules. Shared by
//! `datapath.rs` and the adversarial packet tables in `tests/adversarial/`.
#![allow(dead_code, unused_imports)] // each test file uses its own part

use std::net::IpAddr;

pub use enforcer::bpf::Prog;

pub use enforcer::bpf::{Datapath, TC_DROP, TC_PASS};
use enforcer::compiler::{ip_key, net_key};
use enforcer::state::{Lpm, MapState};
use enforcer_common::{
    EndpointInfo, Event, IdentityValue, POLICY_ACTION_ALLOW, PolicyKey, PolicyValue, counter,
    direction, identity, mode, policy_prefix, reason, verdict,
};

pub const IFINDEX: u32 = 1;
pub const EP_ID: u32 = 7;
pub const SET: u32 = 3;
pub const POD: &str = "10.0.0.7";
pub const POD6: &str = "fd00::7";
/// Allowed into the pod on TCP 80 and SCTP 9000.
pub const PEER_A: &str = "10.0.0.8";
pub const PEER_A6: &str = "fd00::8";
pub const ID_A: u32 = 300;
/// Known pod with no rule.
pub const PEER_B: &str = "10.0.0.9";
pub const ID_B: u32 = 301;
/// Allowed into the pod on every protocol (ICMP included).
pub const PEER_C: &str = "10.0.0.10";
pub const ID_C: u32 = 302;
/// ipBlock the pod may reach on UDP 53.
pub const BLOCK: &str = "192.0.2.0/24";
pub const ID_BLOCK: u32 = identity::CIDR_FLAG | 1;
pub const DNS: &str = "192.0.2.53";
pub const OUTSIDE: &str = "198.51.100.1";
/// A ClusterIP; the pod may reach A on TCP 8080 (what the Service translates to).
pub const SVC: &str = "10.96.0.10";
/// The Service identity of `SVC`.
pub const ID_SVC: u32 = identity::SERVICE_FLAG | 1;

/// A `SERVICE_BACKENDS` key: `backend`:`backend_port` is a backend of `service`:`port`.
pub fn service_backend(
    service: &str,
    port: u16,
    proto: u8,
    backend: &str,
    backend_port: u16,
) -> enforcer_common::ServiceBackendKey {
    enforcer_common::ServiceBackendKey {
        service_addr: ip_key(addr(service)).addr,
        backend_addr: ip_key(addr(backend)).addr,
        service_port_be: port.to_be(),
        backend_port_be: backend_port.to_be(),
        proto,
        _pad: [0; 3],
    }
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;

// --- Packets ------------------------------------------------------------------------------------

pub fn eth(ethertype: u16) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

pub fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets()
}

pub fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// IPv4 header with `payload` after it; `frag` is the raw flags+offset field.
pub fn ipv4_hdr(
    src: &str,
    dst: &str,
    proto: u8,
    payload_len: usize,
    id: u16,
    frag: u16,
) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&v4(src));
    h.extend_from_slice(&v4(dst));
    h
}

pub fn ipv4(src: &str, dst: &str, proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv4_frag(src, dst, proto, l4, 1, 0)
}

pub fn ipv4_frag(src: &str, dst: &str, proto: u8, l4: &[u8], id: u16, frag: u16) -> Vec<u8> {
    let mut p = eth(0x0800);
    p.extend(ipv4_hdr(src, dst, proto, l4.len(), id, frag));
    p.extend_from_slice(l4);
    p
}

/// IPv6 packet; `ext` is a chain of extension headers already encoded, `first` the first
/// next-header value (the chain's own next-header fields lead on to `proto`).
pub fn ipv6_ext(src: &str, dst: &str, first: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut p = eth(0x86dd);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&v6(src));
    p.extend_from_slice(&v6(dst));
    p.extend_from_slice(ext);
    p.extend_from_slice(l4);
    p
}

pub fn ipv6(src: &str, dst: &str, proto: u8, l4: &[u8]) -> Vec<u8> {
    ipv6_ext(src, dst, proto, &[], l4)
}

pub fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    h
}

pub fn sctp(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    // Verification tag, checksum, then an INIT chunk header.
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 20]);
    h
}

pub fn icmp_echo(ty: u8, id: u16) -> Vec<u8> {
    let mut h = vec![ty, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0, 1, 1, 2, 3, 4]);
    h
}

/// ICMP error (`ty`) quoting `quoted` (an IP packet without its Ethernet header).
pub fn icmp_error(ty: u8, quoted: &[u8]) -> Vec<u8> {
    let mut h = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    h.extend_from_slice(quoted);
    h
}

/// An IPv4 header whose IHL claims options the packet does not have. (BPF_PROG_TEST_RUN itself
/// refuses packets cut inside the fixed IP header, so such cuts are shown with fields that point
/// past the end instead.)
pub fn short_v4() -> Vec<u8> {
    let mut p = eth(0x0800);
    p.extend(ipv4_hdr(PEER_A, POD, TCP, 0, 1, 0));
    p[14] = 0x4f;
    p
}

pub fn arp() -> Vec<u8> {
    let mut p = eth(0x0806);
    p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    p.extend_from_slice(&[0u8; 20]);
    p
}

/// ICMPv6 neighbour discovery (or MLD) message `ty` with hop limit `hops`; NS/NA carry
/// `target` after their 4 reserved/flag bytes.
pub fn nd(src: &str, dst: &str, ty: u8, target: Option<&str>, hops: u8) -> Vec<u8> {
    let mut icmp = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    if ty == 136 {
        icmp[4] = 0x60; // solicited, override
    }
    if let Some(t) = target {
        icmp.extend_from_slice(&v6(t));
    }
    let mut p = ipv6(src, dst, 58, &icmp);
    p[21] = hops;
    p
}

/// ARP over Ethernet for IPv4: `op` 1 request, 2 reply; sender and target protocol addresses.
pub fn arp_from(op: u16, sender: &str, target: &str) -> Vec<u8> {
    let mut p = eth(0x0806);
    p.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&v4(sender));
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&v4(target));
    p
}

// --- Fixture ------------------------------------------------------------------------------------

pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the datapath tests load eBPF programs and need root; run them with README's test command"
    );
}

pub fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn allow(
    st: &mut MapState,
    id: u32,
    dir: u8,
    proto: u8,
    port: u16,
    prefix: u32,
    (policy_id, rule): (u32, u16),
) {
    st.policy.insert(
        Lpm {
            prefix_len: prefix,
            data: PolicyKey::new(
                SET,
                id,
                dir,
                enforcer_common::tier::NETWORK_POLICY,
                proto,
                port.to_be(),
            ),
        },
        PolicyValue {
            policy_id,
            rule_index: rule,
            action: POLICY_ACTION_ALLOW,
            flags: 0,
            rank: 0,
        },
    );
}

/// The map state of the tables: one endpoint, isolated both ways, with a handful of rules.
pub fn base_state(ingress_mode: u32, egress_mode: u32) -> MapState {
    let mut st = MapState::default();
    st.endpoints.insert(
        IFINDEX,
        EndpointInfo {
            endpoint_id: EP_ID,
            policy_set: SET,
            ingress_mode,
            egress_mode,
            tiers: 0,
            tier_set: 0,
            baseline_set: 0,
        },
    );
    for (ip, id, ep) in [
        (POD, 400, EP_ID),
        (POD6, 400, EP_ID),
        (PEER_A, ID_A, 0),
        (PEER_A6, ID_A, 0),
        (PEER_B, ID_B, 0),
        (PEER_C, ID_C, 0),
    ] {
        st.ip_identity.insert(
            ip_key(addr(ip)),
            IdentityValue {
                identity: id,
                endpoint_id: ep,
            },
        );
    }
    st.cidr_identity.insert(
        net_key(BLOCK.parse().unwrap()),
        IdentityValue {
            identity: ID_BLOCK,
            endpoint_id: 0,
        },
    );
    let ing = direction::INGRESS;
    let eg = direction::EGRESS;
    allow(&mut st, ID_A, ing, TCP, 80, policy_prefix::FULL, (20, 0));
    allow(&mut st, ID_A, ing, SCTP, 9000, policy_prefix::FULL, (20, 1));
    allow(&mut st, ID_C, ing, 0, 0, policy_prefix::ANY_PROTO, (21, 0));
    allow(&mut st, ID_BLOCK, eg, UDP, 53, policy_prefix::FULL, (22, 0));
    allow(&mut st, ID_A, eg, TCP, 8080, policy_prefix::FULL, (24, 0));
    // SVC TCP 80 and UDP 8080 → A:8080 or B:8080 (egress allows A on TCP 8080 only): the
    // TCP port's verdict is deferred to the translated packet; so is the UDP one's (as if the
    // agent had judged it mixed).
    st.service_ips.insert(ip_key(addr(SVC)), ID_SVC);
    for (proto, port) in [(TCP, 80u16), (UDP, 8080)] {
        st.policy.insert(
            Lpm {
                prefix_len: policy_prefix::FULL,
                data: PolicyKey::new(
                    SET,
                    ID_SVC,
                    eg,
                    enforcer_common::tier::SERVICE,
                    proto,
                    port.to_be(),
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
        for backend in [PEER_A, PEER_B] {
            st.service_backends
                .insert(service_backend(SVC, port, proto, backend, 8080), 1);
        }
    }
    // 8000-8003: one port prefix of 14 bits.
    allow(
        &mut st,
        identity::ANY,
        eg,
        TCP,
        8000,
        policy_prefix::port_prefix(14),
        (23, 0),
    );
    st
}

pub struct Fixture {
    pub dp: Datapath,
}

impl Fixture {
    pub fn new(state: &MapState) -> Self {
        require_root();
        let mut dp = Datapath::load_unpinned().expect("loading the datapath");
        dp.install(state, 1, 0).expect("installing");
        assert_eq!(
            &dp.read_state().unwrap(),
            state,
            "maps hold what was installed"
        );
        Fixture { dp }
    }

    pub fn run(&mut self, prog: Prog, packet: &[u8]) -> i32 {
        self.dp.test_run(prog, packet, 1).expect("test run").verdict
    }

    pub fn events(&mut self) -> Vec<Event> {
        self.dp.drain_events()
    }
}

/// One row of a packet table.
pub struct Row {
    pub name: &'static str,
    pub prog: Prog,
    pub packet: Vec<u8>,
    pub pass: bool,
    /// For drops: the reason the event must carry.
    pub reason: u8,
}

pub fn row(name: &'static str, prog: Prog, packet: Vec<u8>, pass: bool, reason: u8) -> Row {
    Row {
        name,
        prog,
        packet,
        pass,
        reason,
    }
}

/// Runs the rows in order (later rows may rely on conntrack entries of earlier ones), checking
/// the verdict and, for drops, exactly one event with the right reason.
pub fn check(f: &mut Fixture, rows: Vec<Row>) {
    let mut failures = Vec::new();
    for r in rows {
        let got = match f.dp.test_run(r.prog, &r.packet, 1) {
            Ok(res) => res.verdict,
            Err(e) => {
                failures.push(format!("{}: BPF_PROG_TEST_RUN failed: {e}", r.name));
                continue;
            }
        };
        let want = if r.pass { TC_PASS } else { TC_DROP };
        let events = f.events();
        if got != want {
            failures.push(format!("{}: verdict {got}, want {want}", r.name));
            continue;
        }
        let drops: Vec<&Event> = events
            .iter()
            .filter(|e| e.verdict == verdict::DROP)
            .collect();
        if r.pass && !drops.is_empty() {
            failures.push(format!("{}: passed but emitted a drop event", r.name));
        }
        if !r.pass {
            if drops.len() != 1 {
                failures.push(format!("{}: {} drop events, want 1", r.name, drops.len()));
            } else if drops[0].reason != r.reason {
                failures.push(format!(
                    "{}: drop reason {}, want {}",
                    r.name,
                    reason::name(drops[0].reason),
                    reason::name(r.reason)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "packet table failures:\n{}",
        failures.join("\n")
    );
}

pub use Prog::{FromEndpoint as OUT, ToEndpoint as IN};
