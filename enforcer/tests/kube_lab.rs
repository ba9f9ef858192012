//! The agent with `--source kube`, end to end: a two-node lab whose agents watch the lab's
//! Kubernetes API emulator over HTTP. NetworkPolicies are created, changed and deleted through
//! the API and real connections show when every node enforces them (the time from the API write
//! to the verdict flipping is printed: median and worst of 100); the API drops watches,
//! compacts its history (410 Gone) and fails requests, and enforcement follows; an agent is
//! killed and restarted under steady traffic without losing an allowed connection or letting a
//! denied packet through.
//!
//! Needs root. Everything lives in the lab's own network namespaces and is removed on exit.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::run::Run;
use enforcer_lab::lab::Source;
use enforcer_lab::netns::Netns;
use serde_json::{Value, json};

const SCENARIO: &str = r#"
nodes: [node-1, node-2]
namespaces: [{name: x}]
pods:
  - {namespace: x, name: client, node: node-1, labels: {app: client}}
  - {namespace: x, name: other, node: node-1, labels: {app: other}}
  - {namespace: x, name: t1, node: node-1, labels: {role: target}, ports: [{port: 80, protocol: TCP}]}
  - {namespace: x, name: t2, node: node-2, labels: {role: target}, ports: [{port: 80, protocol: TCP}]}
probes:
  - {from: x/client, to: x/t1, port: 80, protocol: TCP, expect: allow}
"#;

/// One TCP connection attempt from inside `ns`.
fn connects(ns: &Netns, dst: SocketAddr, timeout: Duration) -> bool {
    ns.run(move || Ok(TcpStream::connect_timeout(&dst, timeout).is_ok()))
        .unwrap_or(false)
}

const ATTEMPT: Duration = Duration::from_millis(5);

/// Probes every target until each shows `allow`; returns, per target, the time from `t0` to
/// the start of its first attempt with the new verdict.
fn until_flipped(ns: &Netns, targets: &[SocketAddr], allow: bool, t0: Instant) -> Vec<Duration> {
    let mut out = vec![None; targets.len()];
    while out.iter().any(Option::is_none) {
        for (i, t) in targets.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let start = Instant::now();
            if connects(ns, *t, ATTEMPT) == allow {
                out[i] = Some(start.duration_since(t0));
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "verdict did not flip to {} within 20 s: {out:?}",
            if allow { "allow" } else { "deny" }
        );
    }
    out.into_iter().map(Option::unwrap).collect()
}

fn policy(allow_client: bool) -> Value {
    let ingress = if allow_client {
        json!([{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                "ports": [{"port": 80, "protocol": "TCP"}]}])
    } else {
        json!([])
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "targets", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"role": "target"}},
                 "policyTypes": ["Ingress"], "ingress": ingress},
    })
}

fn stats(name: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{name}: median {:.1} ms, p90 {:.1} ms, worst {:.1} ms (n={})",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

#[test]
fn api_writes_flip_verdicts_on_every_node() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let run = Run::start(SCENARIO, Source::Kube);
    let client = run.ns("client");
    let targets = [
        SocketAddr::new(run.ip("t1"), 80),
        SocketAddr::new(run.ip("t2"), 80),
    ];
    let iterations: usize = std::env::var("ENFORCER_KUBE_FLIPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let (mut created, mut changed, mut delete) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iterations {
        // Created: both targets, on both nodes, are isolated.
        let t0 = Instant::now();
        run.apply(&policy(false));
        created.push(
            *until_flipped(&client, &targets, false, t0)
                .iter()
                .max()
                .unwrap(),
        );
        // Changed: the client is allowed in.
        let t0 = Instant::now();
        run.apply(&policy(true));
        changed.push(
            *until_flipped(&client, &targets, true, t0)
                .iter()
                .max()
                .unwrap(),
        );
        // Changed back, then deleted: allowed again.
        run.apply(&policy(false));
        until_flipped(&client, &targets, false, Instant::now());
        let t0 = Instant::now();
        run.delete(&policy(false));
        delete.push(
            *until_flipped(&client, &targets, true, t0)
                .iter()
                .max()
                .unwrap(),
        );
    }
    eprintln!("API write -> verdict flipped on both nodes (TCP connects every {ATTEMPT:?}):");
    eprintln!("  {}", stats("create", created));
    eprintln!("  {}", stats("change", changed));
    eprintln!("  {}", stats("delete", delete));

    // The API drops every watch: the agents watch again and miss nothing.
    let api = run.lab().api().unwrap();
    let emu = api.emulator.clone();
    emu.drop_watches();
    let t0 = Instant::now();
    run.apply(&policy(false));
    let d = until_flipped(&client, &targets, false, t0);
    eprintln!("after dropped watches: flipped in {d:?}");

    // The agents are cut off (every request fails, watches dropped) while the policy is
    // deleted and another object changes, and the history is compacted: their resourceVersion
    // is gone (410 Gone), so they must list again, and the deletion reaches them only through
    // that new list.
    let lists_before = emu.stats().lists_started("NetworkPolicy");
    emu.fail_next(1_000_000, 503);
    emu.drop_watches();
    let t0 = Instant::now();
    emu.delete("NetworkPolicy", Some("x"), "targets").unwrap();
    emu.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "x", "labels": {"kubernetes.io/metadata.name": "x"},
                     "annotations": {"touched": "yes"}}}));
    emu.compact();
    std::thread::sleep(Duration::from_millis(300));
    emu.fail_next(0, 503);
    let d = until_flipped(&client, &targets, true, t0);
    eprintln!("after an outage, compaction and 410 Gone: flipped in {d:?} (outage 300 ms)");
    assert!(
        emu.stats().lists_started("NetworkPolicy") > lists_before,
        "the agents listed NetworkPolicies again after 410: {:?}",
        emu.stats()
    );
    assert!(emu.stats().expired_watches > 0, "{:?}", emu.stats());

    // The API fails requests for a while: the agents back off and catch up.
    let injected = emu.stats().injected_failures;
    emu.fail_next(6, 500);
    emu.drop_watches();
    // The agents' retries take the failures (our own write must not).
    let start = Instant::now();
    while emu.stats().injected_failures < injected + 6 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            emu.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    run.apply(&policy(false));
    let d = until_flipped(&client, &targets, false, t0);
    eprintln!("after failed requests: flipped in {d:?}");
    run.delete(&policy(false));
    until_flipped(&client, &targets, true, Instant::now());
}

/// A server in `ns` on `addr` that echoes every connection until it closes.
fn echo_server(ns: &Netns, addr: SocketAddr, stop: Arc<AtomicBool>) {
    let l = ns.run(move || Ok(TcpListener::bind(addr)?)).unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

#[test]
fn agent_kill_and_restart_under_traffic() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut run = Run::start(SCENARIO, Source::Kube);
    // The client may reach the targets on 80 and 7000; `other` may not.
    let mut p = policy(true);
    p["spec"]["ingress"][0]["ports"] = json!([{"port": 80}, {"port": 7000}]);
    run.apply(&p);
    let (client, other) = (run.ns("client"), run.ns("other"));
    let t1 = run.ip("t1");
    until_flipped(&other, &[SocketAddr::new(t1, 80)], false, Instant::now());

    let stop = Arc::new(AtomicBool::new(false));
    echo_server(&run.ns("t1"), SocketAddr::new(t1, 7000), stop.clone());
    let long_lived = Arc::new(Tally::default());
    let allowed_new = Arc::new(Tally::default());
    let denied_new = Arc::new(Tally::default());
    let mut threads = Vec::new();
    {
        // One long-lived connection, a message every 5 ms, each echoed within 1 s.
        let (ns, stop, tally) = (client.clone(), stop.clone(), long_lived.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = ns
                .run(move || {
                    Ok(TcpStream::connect_timeout(
                        &SocketAddr::new(t1, 7000),
                        Duration::from_secs(1),
                    )?)
                })
                .expect("long-lived connection");
            c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut buf = [0u8; 8];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let ok = c.write_all(&i.to_le_bytes()).is_ok()
                    && c.read_exact(&mut buf).is_ok()
                    && buf == i.to_le_bytes();
                if ok {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }
    for (ns, tally, timeout) in [
        (client.clone(), allowed_new.clone(), Duration::from_secs(1)),
        (
            other.clone(),
            denied_new.clone(),
            Duration::from_millis(100),
        ),
    ] {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if connects(&ns, SocketAddr::new(t1, 80), timeout) {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
    }

    std::thread::sleep(Duration::from_millis(500));
    // Killed outright: its pins and links stay and keep enforcing while no agent runs.
    run.kill_agent("node-1", libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    let took = run.restart_agent("node-1", &["--keep-pins"]);
    eprintln!("restart after SIGKILL: ready in {took:?}");
    std::thread::sleep(Duration::from_millis(500));
    // An upgrade: SIGTERM to an agent with --keep-pins, and a new one.
    run.kill_agent("node-1", libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let took = run.restart_agent("node-1", &[]);
    eprintln!("restart after SIGTERM with --keep-pins: ready in {took:?}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let get = |t: &Tally| {
        (
            t.ok.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed),
        )
    };
    let (ll, an, dn) = (get(&long_lived), get(&allowed_new), get(&denied_new));
    eprintln!(
        "under two agent restarts: long-lived echoes {} ok / {} failed; allowed new connections \
         {} ok / {} failed; denied new connections {} got through / {} blocked",
        ll.0, ll.1, an.0, an.1, dn.0, dn.1
    );
    assert_eq!(ll.1, 0, "the long-lived allowed connection broke");
    assert!(
        ll.0 > 100,
        "the long-lived connection carried traffic: {ll:?}"
    );
    assert_eq!(an.1, 0, "an allowed new connection failed");
    assert!(an.0 > 50, "allowed connections were attempted: {an:?}");
    assert_eq!(dn.0, 0, "a denied connection got through");
    assert!(dn.1 > 10, "denied connections were attempted: {dn:?}");
}
