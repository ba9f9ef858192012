//! The kube source under API failures, against the real control plane (etcd and kube-apiserver
//! from `cargo xtask setup`, in the node namespace of a single-node lab). The agent runs
//! `--source kube` with a token of the bundle's ServiceAccount and reaches the API server
//! through a TLS proxy the test controls (`fault_proxy`), which
//! - cuts every open connection (dropped watches);
//! - refuses connections while the agent is to be cut off, during which the test deletes a
//!   policy, changes another object and compacts etcd: with `--watch-cache=false` the agent's
//!   next watch gets 410 Gone and it must list again;
//! - answers requests with real HTTP 500s, then 429 with Retry-After.
//!
//! And kube-apiserver, then etcd, restarted under steady TCP traffic from the node to the pod
//! (one allowed port, one denied): no connection gets a wrong verdict, the datapath keeps the
//! last state while the API is down, and the agent converges on a change made afterwards.
//! Every test checks that its fault really happened (the proxy's counts, the agent's metrics).
//!
//! Needs root (network namespaces, BPF). Everything is removed on drop, also on failure.

mod agent_lab;
mod fault_proxy;
mod kube_common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_lab::*;
use control_plane::{ControlPlane, Options, Process};
use fault_proxy::{Counts, Fault, FaultProxy, enter_netns};
use kube_common::*;

const METRICS_PORT: u16 = 19964;

/// One control plane at a time: five at once on a small machine would stretch every timing.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Dropped in field order: the proxy, the control plane, then the lab (its namespaces).
struct Setup {
    proxy: FaultProxy,
    cp: ControlPlane,
    lab: Lab,
}

fn kubectl(cp: &ControlPlane, args: &[&str]) {
    ok(
        &output(cp.kubectl().args(args)),
        &format!("kubectl {args:?}"),
    );
}

/// The pod's ingress: TCP 8080 only, from anywhere.
const ALLOW_8080: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-8080, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{ports: [{port: 8080, protocol: TCP}]}]
"#;

const ALLOW_7070: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-7070, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress: [{ports: [{port: 7070, protocol: TCP}]}]
"#;

/// A lab node with the control plane on its loopback, the bundle applied, the pod written as
/// the scheduler and kubelet would, `policy` applied (if any), and an agent synced through
/// the proxy.
fn setup(tag: &str, apiserver_args: &[&str], policy: Option<&str>, agent_args: &[&str]) -> Setup {
    let t0 = Instant::now();
    let mut lab = Lab::new(tag);
    let cp = ControlPlane::start(Options {
        netns: Some(lab.node_ns.clone()),
        apiserver_args: apiserver_args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    apply_bundle(&cp);
    create_pod(&cp, POD_IP);
    if let Some(p) = policy {
        apply(&cp, p, "the first policy");
    }
    let upstream: SocketAddr = "127.0.0.1:6443".parse().unwrap();
    let proxy = FaultProxy::start(&lab.node_ns, upstream, cp.dir());
    let sa = cp
        .service_account_kubeconfig("enforcer-system", "enforcer")
        .unwrap_or_else(|e| panic!("{e}"));
    let kc = lab.dir.join("agent.kubeconfig");
    proxy.kubeconfig(&sa, &cp.url(), &kc);
    let kc = kc.to_string_lossy().into_owned();
    let health = format!("127.0.0.1:{METRICS_PORT}");
    let mut args = vec![
        "--source",
        "kube",
        "--kubeconfig",
        &kc,
        "--health-addr",
        &health,
    ];
    args.extend_from_slice(agent_args);
    lab.start(&args);
    lab.wait_status("synced through the proxy", |s| {
        s["endpoints"] == 1 && s["error"].is_null()
    });
    eprintln!(
        "{tag}: control plane ready in {:.1?}, agent synced {:.1?} after the start",
        cp.started_in(),
        t0.elapsed()
    );
    Setup { proxy, cp, lab }
}

fn modes(lab: &Lab) -> Vec<(String, String)> {
    endpoint_modes(&lab.dump())
}

/// Polls `maps dump` until the pod's endpoint modes are `want`; the time it took.
fn wait_modes(lab: &Lab, want: (&str, &str), what: &str) -> Duration {
    let want = vec![(want.0.to_string(), want.1.to_string())];
    let start = Instant::now();
    loop {
        let modes = modes(lab);
        if modes == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "{what}: endpoint modes {modes:?}, want {want:?}; agent log:\n{}",
            agent_log(lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn agent_log(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir.join("agent.log")).unwrap_or_default()
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// The agent's /metrics (served in the node namespace).
fn metrics(lab: &Lab) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.node_ns))
        .args(["curl", "-s", "-m", "2"])
        .arg(format!("http://127.0.0.1:{METRICS_PORT}/metrics"))
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the first sample of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn policy_lists(lab: &Lab) -> u64 {
    sample(
        &metrics(lab),
        "enforcer_source_events_total",
        &["kind=\"NetworkPolicy\"", "type=\"list\""],
    )
}

/// Watch errors of every watched kind.
fn watch_errors(lab: &Lab) -> u64 {
    let m = metrics(lab);
    [
        "Namespace",
        "Pod",
        "NetworkPolicy",
        "Service",
        "EndpointSlice",
    ]
    .iter()
    .map(|k| sample(&m, "enforcer_errors_total", &[&format!("kind=\"{k}\"")]))
    .sum()
}

#[test]
fn dropped_watches_miss_nothing() {
    let _one = serial();
    let s = setup("drop", &[], None, &[]);
    wait_modes(&s.lab, ("allow-all", "allow-all"), "no policy");
    let c = s.proxy.counts();
    let forwarded = Counts::get(&c.forwarded);
    assert!(
        forwarded >= 5,
        "one watch per kind goes through the proxy: {c:?}"
    );

    // Every open connection cut mid-stream, and new ones refused for a while: the policy
    // written meanwhile cannot reach the agent until it connects again.
    s.proxy.refuse(true);
    s.proxy.cut();
    wait_for("every watch cut", Duration::from_secs(5), || {
        Counts::get(&c.cut) >= 5
    });
    apply(&s.cp, DENY_INGRESS, "the policy during the cut");
    wait_for(
        "the agent tried again and was refused",
        Duration::from_secs(15),
        || Counts::get(&c.refused) >= 1,
    );
    assert_eq!(
        modes(&s.lab),
        [("allow-all".to_string(), "allow-all".to_string())],
        "the agent is cut off: it cannot have seen the policy"
    );
    let t0 = Instant::now();
    s.proxy.refuse(false);
    wait_modes(&s.lab, ("enforce", "allow-all"), "the policy after the cut");
    eprintln!(
        "dropped watches: {} connections cut, {} refused; the policy written during the cut \
         enforced {:.0?} after the proxy let the agent in again",
        Counts::get(&c.cut),
        Counts::get(&c.refused),
        t0.elapsed()
    );
    assert!(
        Counts::get(&c.forwarded) > forwarded,
        "the agent connected again: {c:?}"
    );
}

#[test]
fn gone_after_compaction_forces_a_relist() {
    let _one = serial();
    // Without the watch cache, a watch from a compacted revision gets 410 Gone at once.
    let s = setup("gone", &["--watch-cache=false"], Some(DENY_INGRESS), &[]);
    wait_modes(&s.lab, ("enforce", "allow-all"), "the policy");
    let lists_before = wait_for("the metrics served", Duration::from_secs(10), || {
        policy_lists(&s.lab) >= 1
    });
    let _ = lists_before;
    let lists_before = policy_lists(&s.lab);
    let c = s.proxy.counts();

    // Cut off: the policy is deleted and another object changes, then etcd is compacted past
    // the agent's resourceVersion.
    s.proxy.refuse(true);
    s.proxy.cut();
    wait_for("every watch cut", Duration::from_secs(5), || {
        Counts::get(&c.cut) >= 5
    });
    kubectl(
        &s.cp,
        &["delete", "networkpolicy", "deny-ingress", "-n", "x"],
    );
    kubectl(&s.cp, &["annotate", "namespace", "x", "touched=yes"]);
    let revision = s.cp.compact().unwrap_or_else(|e| panic!("{e}"));
    wait_for(
        "the agent tried again and was refused",
        Duration::from_secs(15),
        || Counts::get(&c.refused) >= 1,
    );
    assert_eq!(
        modes(&s.lab),
        [("enforce".to_string(), "allow-all".to_string())],
        "cut off, the agent keeps enforcing the last state"
    );
    let t0 = Instant::now();
    s.proxy.refuse(false);
    wait_modes(&s.lab, ("allow-all", "allow-all"), "the deletion after 410");
    let took = t0.elapsed();
    let lists_after = wait_for("the relist counted", Duration::from_secs(5), || {
        policy_lists(&s.lab) > lists_before
    });
    let _ = lists_after;
    let log = agent_log(&s.lab);
    assert!(
        log.contains("too old resource version") || log.contains("Expired"),
        "the agent was told its resourceVersion expired (410 Gone):\n{log}"
    );
    eprintln!(
        "410 Gone: etcd compacted at revision {revision}; NetworkPolicy lists {lists_before} -> {}; \
         the deletion enforced {took:.0?} after the agent could connect again",
        policy_lists(&s.lab)
    );
}

#[test]
fn failing_requests_back_off_and_catch_up() {
    let _one = serial();
    let s = setup("fail", &[], Some(DENY_INGRESS), &[]);
    wait_modes(&s.lab, ("enforce", "allow-all"), "the policy");
    let c = s.proxy.counts();
    let errors_before = watch_errors(&s.lab);

    const N500: u64 = 8;
    const N429: u64 = 3;
    let mut faults = vec![Fault::Internal; N500 as usize];
    faults.extend([Fault::TooMany { retry_after: 1 }; N429 as usize]);
    s.proxy.fail_next(&faults);
    s.proxy.cut();
    let t0 = Instant::now();
    kubectl(
        &s.cp,
        &["delete", "networkpolicy", "deny-ingress", "-n", "x"],
    );
    // While the faults last, the datapath keeps the last state it had.
    let mut enforcing_while_failing = 0;
    wait_for(
        "every injected answer taken",
        Duration::from_secs(30),
        || {
            if s.proxy.faults_pending() > 0 && modes(&s.lab)[0].0 == "enforce" {
                enforcing_while_failing += 1;
            }
            s.proxy.faults_pending() == 0
        },
    );
    let drained = t0.elapsed();
    // Retried with a backoff, not in a tight loop (which takes 11 answers in milliseconds).
    assert!(
        drained >= Duration::from_millis(500),
        "the agent backs off between failed requests: all taken in {drained:?}"
    );
    assert!(
        enforcing_while_failing > 0,
        "the last state kept while failing"
    );
    wait_modes(
        &s.lab,
        ("allow-all", "allow-all"),
        "the deletion after the failures",
    );
    let caught_up = t0.elapsed();
    assert_eq!(Counts::get(&c.answered_500), N500, "{c:?}");
    assert_eq!(Counts::get(&c.answered_429), N429, "{c:?}");
    let errors = watch_errors(&s.lab);
    assert!(
        errors > errors_before,
        "the failures reached the agent's watches: errors {errors_before} -> {errors}"
    );
    eprintln!(
        "failing requests: {N500} x 500 and {N429} x 429 (Retry-After: 1) taken by the agent's \
         watches in {drained:.1?} (watch errors {errors_before} -> {}: a 500 is a watch error, \
         a 429 kube-client retries itself after its Retry-After); the deletion made at the \
         start enforced {caught_up:.1?} after it",
        watch_errors(&s.lab)
    );
}

/// Connections from the node to the pod, throughout: `allowed` must always connect, `denied`
/// never.
#[derive(Default)]
struct Tally {
    allowed_ok: AtomicU64,
    allowed_failed: AtomicU64,
    denied_blocked: AtomicU64,
    denied_connected: AtomicU64,
}

impl Tally {
    fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        format!(
            "allowed {} ok / {} wrong, denied {} blocked / {} wrong",
            g(&self.allowed_ok),
            g(&self.allowed_failed),
            g(&self.denied_blocked),
            g(&self.denied_connected)
        )
    }
}

/// Listeners on the pod for `ports` (accept and close), on threads in its namespace.
fn pod_listeners(pod_ns: &str, ports: &[u16], stop: &Arc<AtomicBool>) {
    for &port in ports {
        let (ns, stop) = (pod_ns.to_string(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            enter_netns(&ns);
            let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
            tx.send(()).unwrap();
            for c in l.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                drop(c);
            }
        });
        rx.recv().expect("the listener is up");
    }
}

fn connects(port: u16, timeout: Duration) -> bool {
    let dst: SocketAddr = format!("{POD_IP}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&dst, timeout).is_ok()
}

/// Probes from a thread in the node namespace, until `stop`.
fn traffic(
    node_ns: &str,
    tally: &Arc<Tally>,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let (ns, tally, stop) = (node_ns.to_string(), tally.clone(), stop.clone());
    std::thread::spawn(move || {
        enter_netns(&ns);
        while !stop.load(Ordering::Relaxed) {
            let t = Duration::from_millis(700);
            if connects(8080, t) {
                &tally.allowed_ok
            } else {
                &tally.allowed_failed
            }
            .fetch_add(1, Ordering::SeqCst);
            if connects(9090, Duration::from_millis(300)) {
                &tally.denied_connected
            } else {
                &tally.denied_blocked
            }
            .fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Whether the node reaches the pod's `port` (7070: the change made after the restart).
fn probe(node_ns: &str, port: u16) -> bool {
    let ns = node_ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        connects(port, Duration::from_millis(300))
    })
    .join()
    .unwrap()
}

fn restart_under_traffic(process: Process, tag: &str) {
    let _one = serial();
    // Host traffic is policed as any other (--no-allow-host): the node is the client.
    let mut s = setup(tag, &[], Some(ALLOW_8080), &["--no-allow-host"]);
    wait_modes(&s.lab, ("enforce", "allow-all"), "the policy");
    let stop = Arc::new(AtomicBool::new(false));
    pod_listeners(&s.lab.pod_ns, &[8080, 9090, 7070], &stop);
    // The pod's way back to the node (the node answers ARP for its own address).
    sh(&[
        "ip",
        "-n",
        &s.lab.pod_ns,
        "route",
        "add",
        "192.0.2.1/32",
        "dev",
        "eth0",
    ]);
    assert!(probe(&s.lab.node_ns, 8080), "8080 is allowed");
    assert!(!probe(&s.lab.node_ns, 9090), "9090 is denied");
    assert!(!probe(&s.lab.node_ns, 7070), "7070 is not allowed yet");
    let tally = Arc::new(Tally::default());
    let probes = traffic(&s.lab.node_ns, &tally, &stop);
    std::thread::sleep(Duration::from_secs(1));
    let before = tally.line();
    let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let ok_before = g(&tally.allowed_ok) + g(&tally.denied_blocked);
    let errors_before = watch_errors(&s.lab);

    let t0 = Instant::now();
    s.cp.stop(process);
    let stopped = t0.elapsed();
    // Down: the datapath keeps enforcing the last state.
    std::thread::sleep(Duration::from_secs(2));
    let during = tally.line();
    assert!(
        g(&tally.allowed_ok) + g(&tally.denied_blocked) >= ok_before + 10,
        "traffic went on while {} was down: {during}",
        process.name()
    );
    let t1 = Instant::now();
    s.cp.start_again(process).unwrap_or_else(|e| panic!("{e}"));
    let ready = t1.elapsed();
    // A change after the restart reaches the datapath.
    let t2 = Instant::now();
    apply(&s.cp, ALLOW_7070, "a policy after the restart");
    wait_for(
        "7070 allowed after the restart",
        Duration::from_secs(30),
        || probe(&s.lab.node_ns, 7070),
    );
    let converged = t2.elapsed();
    let errors = watch_errors(&s.lab);
    if process == Process::ApiServer {
        assert!(
            errors > errors_before,
            "the agent's watches broke with the API server: errors {errors_before} -> {errors}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    probes.join().unwrap();
    let after = tally.line();
    eprintln!(
        "{} restart under traffic: stopped in {stopped:.1?}, down 2 s, ready again in {ready:.1?}; \
         a policy applied after it (kubectl apply included) enforced in {converged:.1?}; \
         agent watch errors {errors_before} -> {errors}\n  before: {before}\n  \
         while down: {during}\n  end: {after}",
        process.name()
    );
    assert_eq!(
        g(&tally.allowed_failed),
        0,
        "no allowed connection failed: {after}"
    );
    assert_eq!(
        g(&tally.denied_connected),
        0,
        "no denied connection passed: {after}"
    );
    assert!(
        g(&tally.allowed_ok) >= 5 && g(&tally.denied_blocked) >= 5,
        "traffic ran throughout: {after}"
    );
    assert!(
        wait_modes(&s.lab, ("enforce", "allow-all"), "after the restart") < Duration::from_secs(1)
    );
}

#[test]
fn kube_apiserver_restart_under_traffic() {
    restart_under_traffic(Process::ApiServer, "apirestart");
}

#[test]
fn etcd_restart_under_traffic() {
    restart_under_traffic(Process::Etcd, "etcdrestart");
}
