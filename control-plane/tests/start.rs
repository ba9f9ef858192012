//! The harness itself: etcd and kube-apiserver come up with TLS and RBAC, and everything they
//! made is gone after drop. Needs root (network namespaces) and `cargo xtask setup`.

use control_plane::{ControlPlane, Options};

#[test]
fn starts_serves_tls_with_rbac_and_cleans_up() {
    let cp = ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("control plane ready in {:?}", cp.started_in());
    let out = cp.kubectl_ok(&["get", "namespaces", "-o", "name"]).unwrap();
    assert!(out.contains("namespace/default"), "{out}");
    let dir = cp.dir().to_path_buf();
    let netns = cp.netns().to_string();
    drop(cp);
    assert!(!dir.exists(), "{} removed", dir.display());
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&netns),
        "netns {netns} removed"
    );
}

#[test]
fn restarts_keep_the_state_and_compaction_drops_history() {
    use control_plane::Process;
    let mut cp = ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e}"));
    cp.kubectl_ok(&["create", "namespace", "kept"]).unwrap();
    let get = |cp: &ControlPlane| cp.kubectl_ok(&["get", "namespace", "kept", "-o", "name"]);

    cp.restart(Process::ApiServer)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&cp).unwrap().trim(), "namespace/kept");
    cp.restart(Process::Etcd).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&cp).unwrap().trim(), "namespace/kept");
    // The log holds both runs.
    let log = std::fs::read_to_string(cp.dir().join("kube-apiserver.log")).unwrap();
    let version = format!("Version: {}", control_plane::pins::KUBERNETES.version());
    assert_eq!(log.matches(&version).count(), 2);

    // While etcd is down the API server is not ready, and says why.
    cp.stop(Process::Etcd);
    let err = cp
        .kubectl_ok(&["get", "--raw=/readyz"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("etcd"), "{err}");
    cp.start_again(Process::Etcd)
        .unwrap_or_else(|e| panic!("{e}"));

    let revision = cp.compact().unwrap_or_else(|e| panic!("{e}"));
    assert!(revision > 1, "{revision}");
    let old = cp
        .etcdctl()
        .args(["get", "/registry/namespaces/kept", "--rev=1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&old.stderr);
    assert!(
        !old.status.success() && err.contains("required revision has been compacted"),
        "{err}"
    );
}

/// Not a test of its own: the child process of `a_killed_owner_leaves_nothing_behind`, which
/// starts a control plane, says where it is and waits to be killed.
#[test]
#[ignore = "run as a child process by a_killed_owner_leaves_nothing_behind"]
fn owner_killed_with_its_control_plane() {
    use control_plane::Process;
    let Some(report) = std::env::var_os("ENFORCER_CP_REPORT") else {
        return;
    };
    let cp = ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let text = format!(
        "{} {} {} {}",
        cp.pid(Process::Etcd).unwrap(),
        cp.pid(Process::ApiServer).unwrap(),
        cp.netns(),
        cp.dir().display()
    );
    let tmp = std::path::PathBuf::from(format!("{}.tmp", report.to_string_lossy()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &report).unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// A test killed before its drop runs: etcd and kube-apiserver die with it, and the next start
/// (here `sweep_stale` alone) removes its namespace and folder.
#[test]
fn a_killed_owner_leaves_nothing_behind() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let report = std::env::temp_dir().join(format!("enforcer-cp-report-{}", std::process::id()));
    let _ = std::fs::remove_file(&report);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "owner_killed_with_its_control_plane",
            "--include-ignored",
            "--nocapture",
        ])
        .env("ENFORCER_CP_REPORT", &report)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&report) {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited ({status}) before its control plane was up");
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "no control plane in the child"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_file(&report);
    let parts: Vec<&str> = text.split(' ').collect();
    let [etcd, apiserver, netns, dir] = parts[..] else {
        panic!("{text}")
    };
    child.kill().unwrap();
    child.wait().unwrap();

    // Gone, or a zombie about to be reaped by init.
    let gone = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let start = Instant::now();
    while !(gone(etcd) && gone(apiserver)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "etcd ({etcd}) and kube-apiserver ({apiserver}) outlived their owner"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let netns_exists = || std::path::Path::new("/run/netns").join(netns).exists();
    assert!(netns_exists(), "no drop ran, so {netns} is still there");
    assert!(std::path::Path::new(dir).exists(), "{dir}");
    control_plane::sweep_stale();
    assert!(!netns_exists(), "{netns} swept");
    assert!(!std::path::Path::new(dir).exists(), "{dir} swept");
}

/// What a watch from a revision etcd has compacted gets: with the API server's watch cache
/// (the default) it is still served from the cache; without it, 410 Gone (`Expired`) at once,
/// which is why `Options::apiserver_args` exists.
#[test]
fn a_watch_from_a_compacted_revision_is_410_gone_without_the_watch_cache() {
    let watch_after_compaction = |cp: &ControlPlane| {
        cp.kubectl_ok(&["create", "namespace", "a"]).unwrap();
        let list = cp
            .kubectl_ok(&["get", "--raw", "/api/v1/namespaces"])
            .unwrap();
        let at = list.find("\"resourceVersion\":\"").unwrap() + "\"resourceVersion\":\"".len();
        let rv: String = list[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        for i in 0..3 {
            let note = format!("n={i}");
            cp.kubectl_ok(&["annotate", "namespace", "a", &note, "--overwrite"])
                .unwrap();
        }
        let compacted = cp.compact().unwrap_or_else(|e| panic!("{e}"));
        assert!(compacted > rv.parse().unwrap(), "{compacted} > {rv}");
        let watch = format!("/api/v1/namespaces?watch=1&timeoutSeconds=1&resourceVersion={rv}");
        cp.kubectl_ok(&["get", "--raw", &watch]).unwrap()
    };

    let cached = ControlPlane::start(Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let events = watch_after_compaction(&cached);
    assert!(
        events.contains("\"type\":\"MODIFIED\"") && !events.contains("\"code\":410"),
        "{events}"
    );
    drop(cached);

    let uncached = ControlPlane::start(Options {
        apiserver_args: vec!["--watch-cache=false".into()],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let events = watch_after_compaction(&uncached);
    assert!(
        events.contains("\"type\":\"ERROR\"")
            && events.contains("\"reason\":\"Expired\",\"code\":410"),
        "{events}"
    );
}
