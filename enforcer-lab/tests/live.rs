//! A lab left running (`lab up`) and the commands that use it, through the lab's command line
//! (the `lab` example, which `cargo test` builds) with a stand-in agent. Needs root; skipped
//! otherwise. Its own test binary: `up` removes dead runs as it starts.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// target/debug/examples/lab, beside this test's target/debug/deps/.
fn lab_bin() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let debug = me.parent().unwrap().parent().unwrap();
    let bin = debug.join("examples/lab");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

fn lab(args: &[&str]) -> Output {
    lab_env(args, &[])
}

fn lab_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(lab_bin());
    c.args(args).current_dir(common::repo());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The run prefix `up` printed (`(run enf-xxxxxx)`).
fn prefix_of(up: &Output) -> String {
    let s = stdout(up);
    let at = s.find("(run enf-").expect("up names its run") + 5;
    format!("{}-", &s[at..at + 10])
}

/// One at a time: `up` removes stale runs, which would race with the killed-keeper test.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn keeper_pid(prefix: &str) -> u32 {
    enforcer_lab::runs::live_owner(prefix).expect("the keeper is alive")
}

#[test]
fn up_probe_exec_apply_down() {
    need_root!();
    let _one = serial();
    let fake = common::fake_agent("");
    let fake = fake.to_str().unwrap();
    let name = format!("t-{}", std::process::id());

    let up = lab(&[
        "up",
        "tests/scenarios/services.yaml",
        "--name",
        &name,
        "--agent-cmd",
        fake,
    ]);
    assert!(up.status.success(), "{}", text(&up));
    let prefix = prefix_of(&up);
    let out = stdout(&up);
    assert!(out.contains(&format!("lab {name} is up")), "{out}");
    assert!(out.contains("x/web-1     node-1  10.42.1.21"), "{out}");
    assert!(out.contains(&format!("down {name}")), "{out}");
    let keeper = keeper_pid(&prefix);

    // Listed, and its name is taken.
    let l = lab(&["list"]);
    assert!(
        stdout(&l)
            .lines()
            .any(|x| x.starts_with(&name) && x.contains(" up ")),
        "{}",
        text(&l)
    );
    let l = lab(&["list", "--output", "json"]);
    assert!(l.status.success(), "{}", text(&l));
    let j: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    let me = &j["labs"][&name];
    assert_eq!(me["state"], "up", "{j}");
    assert_eq!(me["run"], prefix.trim_end_matches('-'), "{j}");
    assert_eq!(me["nodes"], serde_json::json!(["node-1", "node-2"]), "{j}");
    let again = lab(&[
        "up",
        "tests/scenarios/no-policy.yaml",
        "--name",
        &name,
        "--agent-cmd",
        fake,
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already up"),
        "{}",
        text(&again)
    );

    // Probes: a pod, a Service (JSON, with who answered), a refused port.
    let p = lab(&["probe", &name, "x/client-1", "x/web-2", "8080/TCP"]);
    assert!(p.status.success(), "{}", text(&p));
    assert!(
        stdout(&p).contains("TCP/8080: allowed (connected"),
        "{}",
        text(&p)
    );
    let p = lab(&[
        "probe",
        &name,
        "x/client-2",
        "svc:x/web",
        "echo/UDP",
        "--output",
        "json",
    ]);
    assert!(p.status.success(), "{}", text(&p));
    let j: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    assert_eq!(j["observed"], "allow", "{j}");
    assert_eq!(j["dst"], "10.96.0.10", "{j}");
    let backend = j["backend"].as_str().unwrap();
    assert!(
        backend == "x/web-1 10.42.1.21:5353" || backend == "x/web-2 10.42.2.22:5353",
        "{backend}"
    );
    let p = lab(&["probe", &name, "x/client-1", "x/web-1", "9/TCP"]);
    assert!(p.status.success(), "a denied probe ran: {}", text(&p));
    assert!(
        stdout(&p).contains("TCP/9: refused: nothing listens"),
        "{}",
        text(&p)
    );
    let p = lab(&["probe", &name, "x/client-1", "x/nobody", "80"]);
    assert_eq!(p.status.code(), Some(2), "{}", text(&p));

    // exec: in the node's namespace, with its settings, and its exit status.
    let e = lab_env(
        &[
            "exec",
            &name,
            "node-2",
            "--",
            "-c",
            "echo $ENFORCER_NODE $ENFORCER_BPFFS $ENFORCER_MANIFESTS $ENFORCER_EVENTS_FILE; \
             readlink /proc/self/ns/net; exit 7",
        ],
        &[("ENFORCER_EXE", "/bin/sh")],
    );
    assert_eq!(e.status.code(), Some(7), "{}", text(&e));
    let run = prefix.trim_end_matches('-');
    let out = stdout(&e);
    assert!(
        out.contains(&format!(
            "node-2 /sys/fs/bpf/{run}/node-2 /run/enforcer-lab/{run}/manifests \
             /run/enforcer-lab/{run}/node-2/events.jsonl"
        )),
        "{out}"
    );
    let node_ns = std::fs::metadata(format!("/run/netns/{prefix}node-2")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        out.contains(&format!("net:[{}]", node_ns.ino())),
        "{out} (netns inode {})",
        node_ns.ino()
    );

    // apply and delete: a policy and a Service with a cluster IP outside the service range.
    let file = std::env::temp_dir().join(format!("enforcer-lab-live-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n\
         spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Ingress]}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: db2, namespace: x}\n\
         spec: {clusterIP: 172.30.0.5, selector: {app: db}, ports: [{port: 15432, targetPort: sql}]}\n",
    )
    .unwrap();
    let a = lab(&["apply", &name, file.to_str().unwrap()]);
    assert!(a.status.success(), "{}", text(&a));
    assert!(
        stdout(&a).contains("service x/db2 created (cluster IP 172.30.0.5)"),
        "{}",
        text(&a)
    );
    let manifests = enforcer_lab::runs::run_dir(&prefix).join("manifests");
    assert!(manifests.join("networkpolicy_x_p.yaml").exists());
    assert!(manifests.join("service_x_db2.yaml").exists());
    let p = lab(&["probe", &name, "y/client", "svc:x/db2", "15432/TCP"]);
    assert!(
        stdout(&p).contains("allowed (connected, answered by x/db 10.42.2.10:5432)"),
        "{}",
        text(&p)
    );
    let d = lab(&["delete", &name, file.to_str().unwrap()]);
    assert!(d.status.success(), "{}", text(&d));
    assert!(!manifests.join("service_x_db2.yaml").exists());
    let p = lab(&["probe", &name, "y/client", "svc:x/db2", "15432/TCP"]);
    assert_eq!(p.status.code(), Some(2), "gone: {}", text(&p));
    let _ = std::fs::remove_file(&file);

    // down: the keeper takes everything with it.
    let d = lab(&["down", &name]);
    assert!(d.status.success(), "{}", text(&d));
    assert!(
        enforcer_lab::agent::start_time(keeper).is_none(),
        "keeper gone; /proc/{keeper}/stat: {:?}; down said: {}",
        std::fs::read_to_string(format!("/proc/{keeper}/stat")),
        text(&d)
    );
    common::assert_clean(&prefix);
    let p = lab(&["probe", &name, "x/client-1", "x/web-2", "8080/TCP"]);
    assert_eq!(p.status.code(), Some(2), "{}", text(&p));
}

/// A keeper killed outright leaves a stale run that `lab down` removes; its agents die with it.
#[test]
fn a_killed_keeper_leaves_nothing_down_cannot_remove() {
    need_root!();
    let _one = serial();
    let fake = common::fake_agent("");
    let name = format!("k-{}", std::process::id());
    let up = lab(&[
        "up",
        "tests/scenarios/no-policy.yaml",
        "--name",
        &name,
        "--agent-cmd",
        fake.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(up.status.success(), "{}", text(&up));
    let j: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    assert_eq!(j["name"], name.as_str(), "{j}");
    assert_eq!(j["pods"]["x/a"]["node"], "node-1", "{j}");
    assert!(j["nodes"]["node-1"]["netns"].is_string(), "{j}");
    let prefix = format!("{}-", j["run"].as_str().unwrap());
    let keeper = keeper_pid(&prefix);
    // SAFETY: killing the keeper this test started.
    unsafe {
        libc::kill(keeper as i32, libc::SIGKILL);
    }
    let started = Instant::now();
    while enforcer_lab::agent::start_time(keeper).is_some() {
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let l = lab(&["list"]);
    assert!(
        stdout(&l)
            .lines()
            .any(|x| x.starts_with(&name) && x.contains("stale")),
        "{}",
        text(&l)
    );
    let p = lab(&["probe", &name, "x/a", "x/b", "80"]);
    assert_eq!(p.status.code(), Some(2), "{}", text(&p));
    assert!(
        String::from_utf8_lossy(&p.stderr).contains("not running"),
        "{}",
        text(&p)
    );
    let d = lab(&["down"]);
    assert!(d.status.success(), "{}", text(&d));
    common::assert_clean(&prefix);
}

/// `up` fails cleanly: a bad file before anything is made, an agent that dies after.
#[test]
fn up_failures_leave_nothing() {
    need_root!();
    let _one = serial();
    let bad = lab(&["up", "tests/scenarios/README.md"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let fake = common::fake_agent("exit");
    let name = format!("f-{}", std::process::id());
    let up = lab(&[
        "up",
        "tests/scenarios/no-policy.yaml",
        "--name",
        &name,
        "--agent-cmd",
        fake.to_str().unwrap(),
    ]);
    assert_eq!(up.status.code(), Some(2), "{}", text(&up));
    let err = String::from_utf8_lossy(&up.stderr);
    assert!(err.contains("failing on purpose"), "the agent's log: {err}");
    assert!(
        !stdout(&lab(&["list"])).contains(&name),
        "nothing left of {name}"
    );
}
