//! Endpoint discovery and rtnetlink notifications against the real kernel (privileged).
//!
//! Every test works in network namespaces it makes (`disc-<pid>-<n>`) and removes them on exit,
//! pass or fail ([`Netns`]'s Drop). The test body runs on a thread that joined the "node"
//! namespace first, so the `ip`/`bridge` commands it runs, the sockets it opens and the packets
//! it sends all live there.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use enforcer::discover::{self, Matched};
use enforcer::model::ObjectRef;
use enforcer::netlink::{Change, Subscription};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "discovery tests need root (network namespaces); run them as root"
    );
}

/// A network namespace of this test process, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "disc-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        Netns { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not delete network namespace {}", self.name);
        }
    }
}

/// Runs a command, failing the test (with its stderr) if it fails; returns its stdout.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `body` on a thread that joined `ns` first (the panic, if any, is passed on).
fn in_netns<R: Send + 'static>(ns: &Netns, body: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/run/netns/{}", ns.name);
    let thread = std::thread::spawn(move || {
        let f = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns on a valid namespace descriptor; it only affects this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        body()
    });
    match thread.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The ifindex of an interface of the current namespace, as `ip link` says.
fn ifindex(name: &str) -> u32 {
    let raw = sh(&["ip", "-json", "link", "show", "dev", name]);
    let v: serde_json::Value = serde_json::from_str(&raw).expect("ip -json link");
    v[0]["ifindex"].as_u64().expect("ifindex") as u32
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn discover(pods: &[(&str, Vec<IpAddr>)]) -> Matched {
    let tables = discover::read_tables().expect("reading the tables");
    discover::match_endpoints(
        pods.iter()
            .map(|(name, ips)| (ObjectRef::new("default", *name), ips.as_slice())),
        &tables,
        &Default::default(),
    )
}

#[test]
fn bridge_and_routed_pods_are_found() {
    require_root();
    let node = Netns::new();
    let (pod_a, pod_b, pod_r) = (Netns::new(), Netns::new(), Netns::new());
    let (a, b, r) = (pod_a.name.clone(), pod_b.name.clone(), pod_r.name.clone());

    in_netns(&node, move || {
        sh(&["ip", "link", "set", "lo", "up"]);
        sh(&["ip", "link", "add", "cni0", "type", "bridge"]);
        sh(&["ip", "link", "set", "cni0", "up"]);
        sh(&["ip", "addr", "add", "10.42.0.1/24", "dev", "cni0"]);
        sh(&["ip", "addr", "add", "fd42::1/64", "dev", "cni0", "nodad"]);
        for (ns, host, v4, v6) in [
            (&a, "vethA", "10.42.0.10/24", "fd42::10/64"),
            (&b, "vethB", "10.42.0.11/24", "fd42::11/64"),
        ] {
            sh(&[
                "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            sh(&["ip", "link", "set", host, "master", "cni0", "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", "eth0"]);
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", "eth0", "nodad"]);
        }
        // A routed pod in the same node: a host route through its veth, no bridge.
        sh(&[
            "ip", "link", "add", "vethR", "type", "veth", "peer", "name", "eth0", "netns", &r,
        ]);
        sh(&["ip", "link", "set", "vethR", "up"]);
        sh(&["ip", "-n", &r, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &r, "addr", "add", "10.43.0.5/32", "dev", "eth0"]);
        sh(&["ip", "route", "add", "10.43.0.5/32", "dev", "vethR"]);

        let (if_a, if_b, if_r) = (ifindex("vethA"), ifindex("vethB"), ifindex("vethR"));
        let pods = [
            ("a", vec![ip("10.42.0.10"), ip("fd42::10")]),
            ("b", vec![ip("10.42.0.11"), ip("fd42::11")]),
            ("r", vec![ip("10.43.0.5")]),
            ("absent", vec![ip("10.42.0.77")]),
        ];
        let key = |n: &str| ObjectRef::new("default", n);

        let want = [(key("a"), if_a), (key("b"), if_b), (key("r"), if_r)].into();
        // Before anything talked (no neighbour entry, nothing in the bridge's forwarding
        // database) every pod is bound: by the addresses its namespace holds.
        let started = Instant::now();
        let before = discover(&pods);
        eprintln!(
            "discovery pass (links, routes, peers' addresses): {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(before.interfaces, want, "{before:?}");
        assert!(before.conflicts.is_empty(), "{before:?}");
        assert_eq!(before.unresolved, vec![ip("10.42.0.77")]);
        // Any one of a pod's addresses binds it.
        let partial = discover(&[
            ("a-v4", vec![ip("10.42.0.10")]),
            ("b-v6", vec![ip("fd42::11")]),
        ]);
        assert_eq!(
            partial.interfaces,
            [(key("a-v4"), if_a), (key("b-v6"), if_b)].into()
        );

        // Soliciting (the hint that makes the kernel resolve) changes no binding.
        let sent = discover::solicit(&[ip("10.42.0.10"), ip("fd42::11"), ip("10.42.0.77")]);
        assert_eq!(sent, 3, "every address accepted for sending");
        std::thread::sleep(Duration::from_millis(50));
        let after = discover(&pods);
        assert_eq!(
            after.interfaces,
            want,
            "neighbours:\n{}\nfdb:\n{}",
            sh(&["ip", "neigh", "show"]),
            sh(&["bridge", "fdb", "show", "br", "cni0"])
        );
        // The absent address stays unresolved (its neighbour entry is INCOMPLETE or FAILED).
        assert_eq!(after.unresolved, vec![ip("10.42.0.77")]);
    });
}

/// Waits (5 s at most) for a change the predicate accepts; returns it and how long it took.
async fn wait_for(
    sub: &mut Subscription,
    what: &str,
    pred: impl Fn(&Change) -> bool,
) -> (Change, Duration) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let batch = match tokio::time::timeout_at(deadline, sub.next_batch()).await {
            Ok(b) => b.expect("reading the subscription"),
            Err(_) => panic!("no {what} within 5 s; saw {seen:#?}"),
        };
        assert!(!batch.is_empty(), "next_batch returned an empty batch");
        if let Some(c) = batch.iter().find(|c| pred(c)) {
            return (c.clone(), started.elapsed());
        }
        seen.extend(batch);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn netlink_reports_links_routes_and_neighbours() {
    require_root();
    let node = Netns::new();
    let pod = Netns::new();
    let (p, n) = (pod.name.clone(), node.name.clone());
    in_netns(&node, move || {
        runtime().block_on(async move {
            let mut sub = Subscription::open().expect("opening the subscription");
            assert!(sub.receive_buffer().unwrap() >= 1 << 20);

            // A pod's veth: created with its peer in the pod's namespace.
            let t = Instant::now();
            sh(&["ip", "link", "add", "vethN", "type", "veth", "peer", "name", "eth0", "netns", &p]);
            let command = t.elapsed();
            let (added, latency) = wait_for(&mut sub, "LinkAdded vethN", |c| {
                matches!(c, Change::LinkAdded { name, .. } if name == "vethN")
            })
            .await;
            eprintln!(
                "netlink: link event after {:.3} ms (from `ip link add` returning; the command \
                 itself took {:.1} ms)",
                latency.as_secs_f64() * 1e3,
                command.as_secs_f64() * 1e3
            );
            let Change::LinkAdded {
                ifindex,
                kind,
                master,
                peer_in_other_netns,
                ..
            } = added
            else {
                unreachable!()
            };
            assert_eq!(ifindex, discover_ifindex("vethN"));
            assert_eq!(kind.as_deref(), Some("veth"));
            assert_eq!(master, None);
            assert!(peer_in_other_netns, "the peer is in {p}");

            // CNI style: both ends made in the pod, the host end moved to the node.
            sh(&["ip", "-n", &p, "link", "add", "eth1", "type", "veth", "peer", "name", "vethC"]);
            sh(&["ip", "-n", &p, "link", "set", "vethC", "netns", &n]);
            let (moved, _) = wait_for(&mut sub, "LinkAdded vethC", |c| {
                matches!(c, Change::LinkAdded { name, .. } if name == "vethC")
            })
            .await;
            assert!(
                matches!(&moved, Change::LinkAdded { kind: Some(k), peer_in_other_netns: true, .. } if k == "veth"),
                "{moved:?}"
            );

            // A plain veth pair in the node, and a bridge port: no peer elsewhere; master set.
            sh(&["ip", "link", "add", "br0", "type", "bridge"]);
            let (br, _) = wait_for(&mut sub, "LinkAdded br0", |c| {
                matches!(c, Change::LinkAdded { name, .. } if name == "br0")
            })
            .await;
            assert!(
                matches!(&br, Change::LinkAdded { kind: Some(k), peer_in_other_netns: false, .. } if k == "bridge"),
                "{br:?}"
            );
            sh(&["ip", "link", "add", "vethL", "type", "veth", "peer", "name", "vethM"]);
            sh(&["ip", "link", "set", "vethL", "master", "br0"]);
            let br0 = discover_ifindex("br0");
            let (port, _) = wait_for(&mut sub, "vethL on br0", |c| {
                matches!(c, Change::LinkAdded { name, master: Some(m), .. } if name == "vethL" && *m == br0)
            })
            .await;
            assert!(
                matches!(&port, Change::LinkAdded { peer_in_other_netns: false, .. }),
                "{port:?}"
            );

            sh(&["ip", "link", "set", "vethN", "up"]);
            sh(&["ip", "route", "add", "10.77.0.0/24", "dev", "vethN"]);
            wait_for(&mut sub, "Route", |c| *c == Change::Route).await;
            sh(&["ip", "neigh", "add", "10.77.0.9", "lladdr", "02:00:00:00:00:09", "dev", "vethN"]);
            wait_for(&mut sub, "Neighbour", |c| *c == Change::Neighbour).await;
            sh(&["ip", "addr", "add", "10.78.0.1/24", "dev", "vethN"]);
            wait_for(&mut sub, "Address", |c| *c == Change::Address).await;
            sh(&["ip", "-6", "addr", "add", "fd78::1/64", "dev", "vethN", "nodad"]);
            wait_for(&mut sub, "Address (IPv6)", |c| *c == Change::Address).await;
            // An address configured inside the pod's namespace (the peer's end): reported too,
            // since it is what binds the pod to vethN.
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(100), sub.next_batch()).await
            {
            }
            sh(&["ip", "-n", &p, "addr", "add", "10.79.0.1/32", "dev", "eth0"]);
            wait_for(&mut sub, "Address in the pod's namespace", |c| {
                *c == Change::Address
            })
            .await;

            sh(&["ip", "link", "del", "vethN"]);
            let (removed, _) = wait_for(&mut sub, "LinkRemoved vethN", |c| {
                matches!(c, Change::LinkRemoved { .. })
            })
            .await;
            assert_eq!(
                removed,
                Change::LinkRemoved {
                    ifindex,
                    name: "vethN".into()
                }
            );
        });
    });
}

fn discover_ifindex(name: &str) -> u32 {
    let links = discover::links().expect("links");
    let from_links = links.names.get(name).copied();
    assert_eq!(from_links, Some(ifindex(name)), "{name}");
    ifindex(name)
}

#[test]
fn netlink_overflow_is_a_resync() {
    require_root();
    let node = Netns::new();
    in_netns(&node, || {
        runtime().block_on(async {
            // The smallest queue the kernel grants: a few notifications fill it.
            let mut sub = Subscription::with_receive_buffer(1).expect("opening");
            let mut batch = String::new();
            for i in 0..20 {
                batch.push_str(&format!("link add o{i} type veth peer name p{i}\n"));
            }
            let mut child = Command::new("ip")
                .args(["-batch", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .expect("ip -batch");
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(batch.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success());

            let changes = sub.next_batch().await.expect("reading");
            assert!(
                changes.contains(&Change::Resync),
                "40 link notifications into a {} byte queue, no Resync: {changes:?}",
                sub.receive_buffer().unwrap()
            );
            // Drain what is left, then the subscription keeps working (the queue still holds
            // only a couple of notifications: one of the pair's two is enough).
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(50), sub.next_batch()).await
            {
            }
            sh(&[
                "ip", "link", "add", "after", "type", "veth", "peer", "name", "after1",
            ]);
            wait_for(
                &mut sub,
                "LinkAdded after the overflow",
                |c| matches!(c, Change::LinkAdded { name, .. } if name.starts_with("after")),
            )
            .await;
        });
    });
}
