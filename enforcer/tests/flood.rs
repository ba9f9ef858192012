//! A deny flood of 100k packets/s at one pod, every packet a new flow (a fresh destination
//! port), through the real agent and datapath in a lab node: the pod's drop events stay within
//! its limit (burst, then rate), everything held back is counted as suppressed, another pod's
//! connections keep working, and the CPU the flood costs is printed next to the same flood with
//! events off (`--no-events`), measured in the same run: the datapath's own time per packet
//! (kernel BPF statistics) and the whole machine's busy time.
//!
//! Needs root. Turns `kernel.bpf_stats_enabled` on for the measurement and restores it.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::run::Run;
use enforcer_common::{counter, reason};
use enforcer_lab::lab::Source;
use serde_json::Value;

const SCENARIO: &str = r#"
namespaces: [{name: x}]
pods:
  - {namespace: x, name: victim, labels: {app: victim}, ports: [{port: 80, protocol: TCP}]}
  - {namespace: x, name: attacker, labels: {app: attacker}}
  - {namespace: x, name: client, labels: {app: client}}
  - {namespace: x, name: server, labels: {app: server}, ports: [{port: 80, protocol: TCP}]}
policies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: victim-deny-all, namespace: x}
    spec: {podSelector: {matchLabels: {app: victim}}, policyTypes: [Ingress]}
probes:
  - {from: x/client, to: x/server, port: 80, protocol: TCP, expect: allow}
  - {from: x/attacker, to: x/victim, port: 80, protocol: TCP, expect: deny}
"#;

const RATE: u64 = 100_000;
const SECONDS: u64 = 2;
/// The agent's defaults: --event-rate 100 --event-burst 200.
const EVENT_RATE: u64 = 100;
const EVENT_BURST: u64 = 200;

/// Restores `kernel.bpf_stats_enabled` on drop.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> BpfStats {
        let path = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(path).unwrap_or_else(|_| "0".into());
        std::fs::write(path, "1").expect("enabling BPF statistics");
        BpfStats(old.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// (run_time_ns, run_cnt) summed over the loaded programs named `name`.
fn prog_stats(name: &str) -> (u64, u64) {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    let progs: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    let mut sum = (0, 0);
    for p in progs.as_array().unwrap() {
        if p["name"] == name {
            sum.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            sum.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    sum
}

/// Busy CPU time of the whole machine (everything but idle and iowait), in milliseconds.
fn busy_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let busy: u64 = f.iter().sum::<u64>() - f[3] - f[4];
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    busy * 1000 / hz.max(1)
}

fn victim_events(run: &Run) -> usize {
    let file = run.lab().dir.join("node-1").join("events.jsonl");
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("\"x/victim\"") && l.contains("\"drop\""))
        .count()
}

const BATCH: usize = 64;

/// Datagrams to one address, each to another destination port, sent with sendmmsg(2).
struct Batch {
    addrs: Vec<libc::sockaddr_in>,
    iov: libc::iovec,
    payload: Box<[u8; 16]>,
}

impl Batch {
    fn new(dst: SocketAddr) -> Batch {
        let SocketAddr::V4(v4) = dst else {
            panic!("the flood is IPv4")
        };
        let mut payload = Box::new([0u8; 16]);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: payload.len(),
        };
        Batch {
            addrs: vec![sin; BATCH],
            iov,
            payload,
        }
    }

    /// Sends `n` datagrams, the first to port `1 + first % 60000`; returns how many went.
    fn send(&mut self, sock: &UdpSocket, first: u64, n: usize) -> usize {
        use std::os::fd::AsRawFd;
        let _ = &self.payload;
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(n);
        for i in 0..n {
            let port = 1 + ((first + i as u64) % 60_000) as u16;
            self.addrs[i].sin_port = port.to_be();
            // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = &mut self.iov;
            h.msg_hdr.msg_iovlen = 1;
            msgs.push(h);
        }
        // SAFETY: `msgs` holds `n` initialised headers pointing at live buffers.
        let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        r.max(0) as usize
    }
}

struct Flood {
    sent: u64,
    elapsed: Duration,
    drops: u64,
    suppressed: u64,
    /// Drops of a flow already reported within the report window (the ports wrap around).
    repeated: u64,
    events: usize,
    prog_ns_per_packet: f64,
    machine_cpu_ms: u64,
    side_ok: u64,
    side_failed: u64,
}

fn flood(run: &Run, label: &str) -> Flood {
    let pinned = enforcer::bpf::PinnedMaps::open(
        &enforcer_lab::runs::bpffs_dir(&run.plan.prefix).join("node-1"),
    )
    .expect("pinned maps");
    let counters = || pinned.counters().unwrap();
    let victim = SocketAddr::new(run.ip("victim"), 0);
    let attacker_ip = run.ip("attacker");
    // Four source ports × 60000 destination ports: every packet of the flood is a new flow.
    let socks = run
        .ns("attacker")
        .run(move || {
            (0..4)
                .map(|_| Ok(UdpSocket::bind(SocketAddr::new(attacker_ip, 0))?))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .unwrap();
    // Another pod's connections, all through the flood.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let side = {
        let (ns, stop, ok, failed) = (run.ns("client"), stop.clone(), ok.clone(), failed.clone());
        let server = SocketAddr::new(run.ip("server"), 80);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = ns.run(move || {
                    Ok(
                        std::net::TcpStream::connect_timeout(&server, Duration::from_millis(500))
                            .is_ok(),
                    )
                });
                if r.unwrap_or(false) {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Let the event bucket refill completely from the previous flood.
    std::thread::sleep(Duration::from_secs(3));
    let (c0, e0, p0) = (counters(), victim_events(run), prog_stats("to_endpoint"));
    let m0 = busy_ms();
    let start = Instant::now();
    let total = RATE * SECONDS;
    let mut sent = 0u64;
    let mut batch = Batch::new(victim);
    while sent < total {
        // Paced: whatever is due by now, in sendmmsg batches.
        let due = (start.elapsed().as_micros() as u64 * RATE / 1_000_000).min(total);
        while sent < due {
            // A batch never crosses a wrap of the destination ports.
            let n = (due - sent).min(BATCH as u64).min(60_000 - sent % 60_000) as usize;
            let sock = &socks[(sent / 60_000) as usize % socks.len()];
            sent += batch.send(sock, sent, n) as u64;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let elapsed = start.elapsed();
    // Let the last packets and their events through.
    std::thread::sleep(Duration::from_millis(500));
    let m1 = busy_ms();
    let (c1, e1, p1) = (counters(), victim_events(run), prog_stats("to_endpoint"));
    stop.store(true, Ordering::Relaxed);
    side.join().unwrap();
    let f = Flood {
        sent,
        elapsed,
        drops: c1[reason::NO_RULE as usize] - c0[reason::NO_RULE as usize],
        suppressed: c1[counter::EVENTS_SUPPRESSED as usize]
            - c0[counter::EVENTS_SUPPRESSED as usize],
        repeated: c1[counter::EVENTS_REPEATED as usize] - c0[counter::EVENTS_REPEATED as usize],
        events: e1 - e0,
        prog_ns_per_packet: (p1.0 - p0.0) as f64 / (p1.1 - p0.1).max(1) as f64,
        machine_cpu_ms: m1 - m0,
        side_ok: ok.load(Ordering::Relaxed),
        side_failed: failed.load(Ordering::Relaxed),
    };
    eprintln!(
        "{label}: {} packets in {:.2?} ({:.0} pps); {} dropped, {} events, {} suppressed, {} repeats; \
         to_endpoint {:.0} ns/packet; machine busy {} ms; other pods' \
         connections {} ok / {} failed",
        f.sent,
        f.elapsed,
        f.sent as f64 / f.elapsed.as_secs_f64(),
        f.drops,
        f.events,
        f.suppressed,
        f.repeated,
        f.prog_ns_per_packet,
        f.machine_cpu_ms,
        f.side_ok,
        f.side_failed
    );
    f
}

#[test]
fn a_deny_flood_stays_within_the_event_limits() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    common::require_root("the flood test");
    let mut run = Run::start(SCENARIO, Source::Manifests);
    let _stats = BpfStats::enable();

    let on = flood(&run, "events on ");
    // Nearly every packet reached the datapath and was dropped (ARP may take the first few).
    assert!(
        on.drops >= on.sent * 99 / 100,
        "drops {} of {}",
        on.drops,
        on.sent
    );
    let secs = on.elapsed.as_secs_f64() + 0.5;
    let ceiling = EVENT_BURST + (EVENT_RATE as f64 * secs) as u64 + 20;
    assert!(
        (on.events as u64) <= ceiling,
        "events {} above the limit {ceiling}",
        on.events
    );
    assert!(
        on.events as u64 >= EVENT_BURST,
        "the burst is reported: {}",
        on.events
    );
    assert_eq!(
        on.suppressed + on.repeated + on.events as u64,
        on.drops,
        "every drop not reported is counted (suppressed, or a repeat of a reported flow)"
    );
    assert_eq!(on.side_failed, 0, "other pods' connections are unaffected");
    assert!(
        on.side_ok > 50,
        "other pods' connections were tried: {}",
        on.side_ok
    );

    run.kill_agent("node-1", libc::SIGTERM);
    run.restart_agent("node-1", &["--no-events"]);
    let off = flood(&run, "events off");
    assert_eq!(off.events, 0, "no events with --no-events");
    assert!(off.drops >= off.sent * 99 / 100);
    assert_eq!(off.side_failed, 0);
    eprintln!(
        "flood cost, events on / off: datapath {:.0} / {:.0} ns per packet ({:.2}x); machine \
         busy {} / {} ms ({:.2}x)",
        on.prog_ns_per_packet,
        off.prog_ns_per_packet,
        on.prog_ns_per_packet / off.prog_ns_per_packet.max(1.0),
        on.machine_cpu_ms,
        off.machine_cpu_ms,
        on.machine_cpu_ms as f64 / off.machine_cpu_ms.max(1) as f64
    );
}
