//! The agent with `--source kube`, end to end: a two-node lab whose agents watch the real
//! kube-apiserver (with etcd, in the lab's control-plane namespace on its fabric) as the install
//! bundle's ServiceAccount. NetworkPolicies are created, changed and deleted through the API
//! server and real connections show when every node enforces them (the time from the API
//! write to the verdict flipping on both nodes is printed: p50, p99 and max of 100 each); an
//! agent is killed and restarted under steady traffic without losing an allowed connection or
//! letting a denied packet through. (API faults, compaction and control-plane restarts:
//! kube_faults.rs.)
//!
//! Needs root and the control plane `cargo xtask setup` builds. Everything lives in the lab's
//! own network namespaces and is removed on exit.

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
    let at = |q: f64| ms(v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]);
    format!(
        "{name}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
        at(0.50),
        at(0.99),
        ms(v[v.len() - 1]),
        v.len()
    )
}

#[test]
fn api_writes_flip_verdicts_on_every_node() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let mut run = Run::start(SCENARIO, Source::Kube);
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
        let mark = |run: &Run| run.lab().api().unwrap().mark().kinds["NetworkPolicy"];
        let before = mark(&run);
        let t0 = Instant::now();
        run.delete(&policy(false));
        // What the lab waits for carries the deletion (a DELETE's answer does not say it).
        assert!(
            mark(&run) > before,
            "the deletion's resourceVersion is in the mark"
        );
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

const UP: &str = r#"
nodes: [node-1, node-2]
namespaces: [{name: x}]
pods:
  - {namespace: x, name: client, node: node-1, labels: {app: client}}
  - {namespace: x, name: web, node: node-2, labels: {app: web}, ports: [{port: 80, protocol: TCP}]}
services: [{namespace: x, name: web, selector: {app: web}, ports: [{port: 80}]}]
"#;

const DENY_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-web, namespace: x}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress]}
"#;

/// Takes a lab down on drop, also when an assertion failed.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .args(["lab", "down", &self.0])
            .output();
    }
}

fn shown(o: &std::process::Output) -> String {
    format!(
        "status {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `lab up --source kube`: the objects are in the real API server as the cluster's
/// components would have written them (the pod's node, then its addresses in its status), the
/// printed kubeconfig lets kubectl on the machine reach the server, and `lab apply` goes
/// through the server to the agents.
#[test]
fn a_lab_left_running_serves_kubectl() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    common::require_root("the kube lab tests");
    let dir = std::env::temp_dir().join(format!("enforcer-kube-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (scenario, policy) = (dir.join("up.yaml"), dir.join("deny.yaml"));
    std::fs::write(&scenario, UP).unwrap();
    std::fs::write(&policy, DENY_WEB).unwrap();
    let name = format!("kube-up-{}", std::process::id());
    let enforcer = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
            .args(args)
            .output()
            .expect("running enforcer")
    };
    let up = enforcer(&[
        "lab",
        "up",
        scenario.to_str().unwrap(),
        "--name",
        &name,
        "--source",
        "kube",
        "--output",
        "json",
    ]);
    let _down = Down(name.clone());
    assert!(up.status.success(), "{}", shown(&up));
    let j: Value = serde_json::from_slice(&up.stdout).expect("JSON");
    let cp = &j["control_plane"];
    assert_eq!(cp["server"], "https://198.19.255.254:6443", "{j}");
    let kubectl = |args: &[&str]| {
        std::process::Command::new(cp["kubectl"].as_str().unwrap())
            .arg("--kubeconfig")
            .arg(cp["kubeconfig"].as_str().unwrap())
            .args(args)
            .output()
            .expect("running kubectl")
    };

    // The pods as the scheduler and the kubelet leave them.
    let o = kubectl(&["get", "pods", "-n", "x", "-o", "json"]);
    assert!(o.status.success(), "{}", shown(&o));
    let pods: Value = serde_json::from_slice(&o.stdout).unwrap();
    let web = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == "web")
        .expect("x/web in the API");
    assert_eq!(web["spec"]["nodeName"], "node-2");
    assert_eq!(
        web["status"]["podIPs"][0]["ip"],
        j["pods"]["x/web"]["addresses"][0]
    );
    assert_eq!(web["spec"]["serviceAccountName"], "default");
    let o = kubectl(&[
        "get",
        "service",
        "web",
        "-n",
        "x",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        j["services"]["x/web"]["cluster_ip"].as_str().unwrap(),
        "{}",
        shown(&o)
    );
    // The agents read as the bundle's ServiceAccount.
    let o = kubectl(&[
        "auth",
        "can-i",
        "watch",
        "networkpolicies",
        "--as=system:serviceaccount:enforcer-system:enforcer",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "yes",
        "{}",
        shown(&o)
    );

    let probe = || {
        let o = enforcer(&[
            "lab", "probe", &name, "x/client", "x/web", "80/TCP", "--output", "json",
        ]);
        assert!(o.status.success(), "{}", shown(&o));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["outcome"].as_str().unwrap().to_string()
    };
    assert_eq!(probe(), "allowed");
    let o = enforcer(&["lab", "apply", &name, policy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", shown(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("networkpolicy x/deny-web created"),
        "{}",
        shown(&o)
    );
    let o = kubectl(&["get", "networkpolicy", "deny-web", "-n", "x", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "networkpolicy.networking.k8s.io/deny-web",
        "{}",
        shown(&o)
    );
    assert_eq!(probe(), "denied");
    let o = enforcer(&["lab", "delete", &name, policy.to_str().unwrap()]);
    assert!(o.status.success(), "{}", shown(&o));
    let o = kubectl(&["get", "networkpolicies", "-n", "x", "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "",
        "{}",
        shown(&o)
    );
    assert_eq!(probe(), "allowed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `lab demo --source kube`: the K3s example through the real API server, its policies applied
/// with kubectl (what kubectl said is in the report), every probe as expected.
#[test]
fn the_demo_runs_through_the_api_server_and_kubectl() {
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    common::require_root("the kube lab tests");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(["lab", "demo", "--source", "kube", "--output", "json"])
        .output()
        .expect("running enforcer");
    assert!(o.status.success(), "{}", shown(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(common::mismatches(&report).is_empty(), "{report}");
    let changes: Vec<&str> = report["steps"][1]["changes"]
        .as_array()
        .expect("step 1 changes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(changes.contains(&"$ kubectl apply -f -"), "{changes:?}");
    let created = changes
        .iter()
        .filter(|c| c.starts_with("networkpolicy.networking.k8s.io/") && c.ends_with(" created"))
        .count();
    assert_eq!(created, 8, "{changes:?}");
}

const NODES: &str = r#"
nodes: [node-1, {name: node-2, labels: {zone: a}}]
namespaces: [{name: x}]
pods:
  - {namespace: x, name: a, node: node-1, ips: [10.42.1.10, "fd00:42::1:10"], ports: [{port: 80}]}
  - {namespace: x, name: b, node: node-2, ips: [10.42.2.10, "fd00:42::2:10"], ports: [{port: 80}]}
probes:
  - {from: x/a, to: x/b, port: 80, expect: allow}
steps:
  - relabel: [{node: node-2, labels: {zone: b, disk: ssd}}]
"#;

/// Every node is a Node object in the API server, as its kubelet registers it (labels with
/// `kubernetes.io/hostname` and `kubernetes.io/os`, an `InternalIP` per fabric address, one of
/// each family here, through the status subresource); a step's `relabel` rewrites its labels and keeps its addresses,
/// and the lab still waits for the agents (on the kinds they report).
#[test]
fn nodes_are_node_objects_in_the_api_and_relabel_rewrites_them() {
    use axum::http::Method;
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    common::require_root("the kube lab tests");
    let mut run = Run::start(NODES, Source::Kube);
    let get = |run: &Run, name: &str| -> Value {
        let api = run.lab().api().expect("kube source");
        let (code, v) = run
            .block_on(
                api.client()
                    .request(Method::GET, &format!("/api/v1/nodes/{name}"), None),
            )
            .expect("reading a Node");
        assert_eq!(code, 200, "{v}");
        v
    };
    let node2 = get(&run, "node-2");
    assert_eq!(
        node2["metadata"]["labels"],
        json!({"zone": "a", "kubernetes.io/hostname": "node-2", "kubernetes.io/os": "linux"}),
        "{node2}"
    );
    let fabric = run.plan.nodes[run.node_index("node-2")].fabric_ips.clone();
    let internal: Vec<String> = node2["status"]["addresses"]
        .as_array()
        .expect("status.addresses")
        .iter()
        .filter(|a| a["type"] == "InternalIP")
        .map(|a| a["address"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = fabric.iter().map(ToString::to_string).collect();
    assert_eq!(want.len(), 2, "dual-stack: {want:?}");
    assert_eq!(internal, want, "{node2}");
    assert_eq!(
        get(&run, "node-1")["metadata"]["labels"],
        json!({"kubernetes.io/hostname": "node-1", "kubernetes.io/os": "linux"})
    );

    let changes = run.plan.steps[1].changes.clone();
    let Run {
        rt,
        res,
        lab,
        plan,
        opts,
    } = &mut run;
    rt.as_ref()
        .unwrap()
        .block_on(lab.as_mut().unwrap().change(plan, &changes, res, opts))
        .unwrap_or_else(|e| panic!("the relabel step: {e:#}"));
    let after = get(&run, "node-2");
    assert_eq!(
        after["metadata"]["labels"],
        json!({
            "zone": "b",
            "disk": "ssd",
            "kubernetes.io/hostname": "node-2",
            "kubernetes.io/os": "linux",
        }),
        "{after}"
    );
    assert_eq!(after["status"]["addresses"], node2["status"]["addresses"]);
}
