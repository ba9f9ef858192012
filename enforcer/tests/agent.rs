//! The agent as a process: `enforcer run` on a throwaway node namespace with one pod.
//!
//! Checks what the lab cannot see from outside: the pins it makes and removes, a bad manifest
//! reported by file and field while the last good state keeps enforcing, `--keep-pins` and a
//! second agent taking the pins over, and SIGTERM cleaning everything up. Needs root. Every
//! namespace, pin folder and process is removed on exit, also when an assertion fails.

mod agent_lab;

use std::process::Command;
use std::time::{Duration, Instant};

use agent_lab::*;
use serde_json::Value;

#[test]
fn bad_manifests_keep_the_last_good_state_and_sigterm_cleans_up() {
    let mut lab = Lab::new("bad");
    lab.write("cluster.yaml", CLUSTER);
    lab.write("policy.yaml", DENY_INGRESS);
    lab.start(&[]);
    lab.wait_status("the pod's endpoint installed", |s| {
        s["endpoints"] == 1 && s["error"].is_null()
    });
    assert!(
        pins_exist(&lab.bpffs),
        "maps pinned under {}",
        lab.bpffs.display()
    );
    assert!(lab.tc_attached(), "both programs on the pod's interface");
    let good = lab.dump();
    assert_eq!(
        endpoint_modes(&good),
        vec![("enforce".to_string(), "allow-all".to_string())]
    );

    // A broken policy: reported with the file, the object and the field; nothing changes.
    lab.write("broken.yaml", BAD_CIDR);
    let s = lab.wait_status("the bad manifest reported", |s| !s["error"].is_null());
    let err = s["error"].as_str().unwrap();
    assert!(err.contains("broken.yaml"), "names the file: {err}");
    assert!(err.contains("x/broken"), "names the object: {err}");
    assert!(err.contains("ipBlock.cidr"), "names the field: {err}");
    std::thread::sleep(Duration::from_millis(300));
    let after = lab.dump();
    assert_eq!(after["endpoints"], good["endpoints"]);
    assert_eq!(after["policy"], good["policy"]);

    // A bad edit of a good file keeps that file's last good version.
    lab.write("policy.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-ingress, namespace: x}\nspec: {podSelector: {matchLabels: 7}}\n");
    lab.wait_status("the bad edit reported", |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("policy.yaml"))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(endpoint_modes(&lab.dump()), endpoint_modes(&good));

    // Fixing both clears the error; removing the policy un-isolates the pod.
    std::fs::remove_file(lab.manifests().join("broken.yaml")).unwrap();
    std::fs::remove_file(lab.manifests().join("policy.yaml")).unwrap();
    lab.wait_status("errors cleared", |s| s["error"].is_null());
    let start = Instant::now();
    while endpoint_modes(&lab.dump()) != vec![("allow-all".to_string(), "allow-all".to_string())] {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "policy removal not enforced"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    assert!(lab.stop(), "the agent exits cleanly on SIGTERM");
    assert!(!lab.bpffs.exists(), "pins removed on exit");
    assert!(!lab.tc_attached(), "programs detached on exit");
}

/// Strict manifests: a misspelt field, an unknown kind and a policy in a namespace that does
/// not exist are each reported (file, object, field, the nearest known name) and none is in
/// force; the homeless one comes into force when its namespace appears.
#[test]
fn misspelt_unknown_and_homeless_objects_are_reported_not_in_force() {
    let mut lab = Lab::new("strict");
    lab.write("cluster.yaml", CLUSTER);
    lab.start(&[]);
    lab.wait_status("the pod's endpoint installed", |s| {
        s["endpoints"] == 1 && s["error"].is_null()
    });
    let open = vec![("allow-all".to_string(), "allow-all".to_string())];
    assert_eq!(endpoint_modes(&lab.dump()), open);

    // `matchLabel:` would select every pod of x and isolate it.
    lab.write(
        "typo.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: typo, namespace: x}\nspec:\n  podSelector: {matchLabel: {app: nobody}}\n  policyTypes: [Ingress]\n",
    );
    let s = lab.wait_status("the typo reported", |s| {
        s["error"].as_str().is_some_and(|e| e.contains("typo.yaml"))
    });
    let err = s["error"].as_str().unwrap();
    assert!(
        err.contains("typo.yaml: document 1: NetworkPolicy x/typo: spec.podSelector.matchLabel: unknown field \"matchLabel\" (did you mean matchLabels?)"),
        "{err}"
    );
    lab.write(
        "cilium.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: x}\nspec: {endpointSelector: {}}\n",
    );
    lab.write(
        "ghost.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: ghost}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    );
    let s = lab.wait_status("all three reported", |s| {
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("cilium.yaml") && e.contains("ghost.yaml"))
    });
    let err = s["error"].as_str().unwrap();
    assert!(
        err.contains("unknown kind \"CiliumNetworkPolicy\": enforcer reads"),
        "{err}"
    );
    assert!(
        err.contains(
            "NetworkPolicy ghost/deny: metadata.namespace: namespace \"ghost\" does not exist"
        ),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        endpoint_modes(&lab.dump()),
        open,
        "none of them is in force"
    );

    // The namespace appears: that policy is in force (it isolates nothing here), its error goes.
    lab.write(
        "ghost-ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ghost}\n",
    );
    lab.wait_status("the namespace error cleared", |s| {
        s["error"].as_str().is_some_and(|e| !e.contains("ghost"))
    });
    assert!(lab.stop(), "the agent exits cleanly on SIGTERM");
}

#[test]
fn keep_pins_hands_state_to_the_next_agent() {
    let mut lab = Lab::new("keep");
    lab.write("cluster.yaml", CLUSTER);
    lab.write("policy.yaml", DENY_INGRESS);
    // As the DaemonSet sets it (the uninstall step sets it to "false").
    lab.start_env(&[], &[("ENFORCER_KEEP_PINS", "true")]);
    lab.wait_status("installed", |s| s["endpoints"] == 1);
    let before = lab.dump();
    assert!(lab.stop());
    assert!(pins_exist(&lab.bpffs), "--keep-pins leaves the maps pinned");
    assert!(
        lab.tc_attached(),
        "--keep-pins leaves the programs enforcing"
    );
    assert_eq!(
        lab.dump_with(&["--allow-stale"])["endpoints"],
        before["endpoints"],
        "the state survives the agent"
    );

    // The next agent takes the pins over (programs replaced in place) and, when stopped
    // with ENFORCER_KEEP_PINS=false, removes everything.
    lab.start_env(&[], &[("ENFORCER_KEEP_PINS", "false")]);
    lab.wait_status("the second agent installed", |s| s["endpoints"] == 1);
    assert!(lab.tc_attached());
    assert_eq!(
        endpoint_modes(&lab.dump()),
        vec![("enforce".to_string(), "allow-all".to_string())]
    );
    assert!(lab.stop());
    assert!(!lab.bpffs.exists());
    assert!(!lab.tc_attached());
}

impl Lab {
    /// One HTTP GET from inside the node namespace: (status code, body).
    fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_ns))
            .args(["curl", "-s", "-m", "2", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .expect("running curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// One UDP datagram from the node to the pod (through `to_endpoint`).
    fn send_to_pod(&self) {
        sh(&[
            "nsenter",
            &format!("--net=/run/netns/{}", self.node_ns),
            "bash",
            "-c",
            &format!("echo x > /dev/udp/{POD_IP}/9"),
        ]);
    }

    fn pod_ifindex(&self) -> u64 {
        let out = Command::new("ip")
            .args(["-n", &self.node_ns, "-json", "link", "show", "lxc-pod"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["ifindex"].as_u64().unwrap()
    }
}

fn verdict_count(dump: &Value, reason: &str) -> u64 {
    dump["verdicts"][reason].as_u64().unwrap_or(0)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const NAMESPACE_ONLY: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";

#[test]
fn default_deny_unknown_holds_a_pod_interface_until_its_pod_is_known() {
    let mut lab = Lab::new("held");
    lab.write("cluster.yaml", NAMESPACE_ONLY);
    lab.start(&["--default-deny-unknown"]);
    lab.wait_status("the unknown interface held", |s| s["endpoints"] == 1);
    let dump = lab.dump();
    let ep = &dump["endpoints"][lab.pod_ifindex().to_string()];
    assert_eq!(
        (
            ep["ingress"].as_str(),
            ep["egress"].as_str(),
            ep["endpoint_id"].as_u64()
        ),
        (Some("deny-all"), Some("deny-all"), Some(0)),
        "{dump}"
    );
    lab.send_to_pod();
    wait_for("the datagram dropped as endpoint-unknown", || {
        verdict_count(&lab.dump(), "endpoint-unknown") >= 1
    });

    // The pod becomes known: its endpoint replaces the hold, traffic passes.
    lab.write("cluster.yaml", CLUSTER);
    wait_for("the pod's endpoint programmed", || {
        let d = lab.dump();
        d["endpoints"][lab.pod_ifindex().to_string()]["endpoint_id"]
            .as_u64()
            .is_some_and(|id| id != 0)
            && endpoint_modes(&d) == vec![("allow-all".to_string(), "allow-all".to_string())]
    });
    let held_drops = verdict_count(&lab.dump(), "endpoint-unknown");
    lab.send_to_pod();
    wait_for("the datagram allowed", || {
        verdict_count(&lab.dump(), "not-isolated") >= 1
    });
    assert_eq!(verdict_count(&lab.dump(), "endpoint-unknown"), held_drops);
    assert!(lab.stop());
}

#[test]
fn resync_repairs_drift_and_health_endpoints_answer() {
    let mut lab = Lab::new("drift");
    lab.write("cluster.yaml", CLUSTER);
    lab.write("policy.yaml", DENY_INGRESS);
    lab.start(&["--resync", "1s", "--health-addr", "127.0.0.1:19964"]);
    lab.wait_status("installed", |s| s["endpoints"] == 1 && s["ready"] == true);
    assert_eq!(lab.http_get(19964, "/healthz").0, 200);
    assert_eq!(lab.http_get(19964, "/readyz").0, 200);
    let good = lab.dump();

    // Someone deletes the pod's endpoint entry behind the agent's back.
    let key: Vec<String> = (lab.pod_ifindex() as u32)
        .to_le_bytes()
        .iter()
        .map(|b| b.to_string())
        .collect();
    let mut args = vec!["bpftool", "map", "delete", "pinned"];
    let path = lab.bpffs.join("ENDPOINTS");
    args.push(path.to_str().unwrap());
    args.push("key");
    args.extend(key.iter().map(String::as_str));
    sh(&args);
    assert!(lab.dump()["endpoints"].as_object().unwrap().is_empty());

    wait_for("the drift repaired", || {
        lab.dump()["endpoints"] == good["endpoints"]
    });
    let (code, metrics) = lab.http_get(19964, "/metrics");
    assert_eq!(code, 200);
    let repaired: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("enforcer_drift_repaired_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(repaired >= 1, "drift counted on /metrics:\n{metrics}");
    for want in [
        "enforcer_ready 1",
        "enforcer_map_entries{map=\"endpoints\"} 1",
        "enforcer_programming_seconds_count",
        "enforcer_syncs_total",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    assert!(lab.stop());
}

/// A pod whose manifest is known before its interface exists (the CNI's order: the API has the
/// pod, then the runtime creates its network) is programmed as soon as the interface and its
/// route appear: netlink events, not the rescan timer (set to a minute here).
#[test]
fn a_new_pod_interface_is_programmed_within_milliseconds() {
    let mut lab = Lab::new("fast");
    let pod2 = format!("{}-pod2", lab.node_ns);
    let late = r#"
apiVersion: v1
kind: Pod
metadata: {name: late, namespace: x, labels: {app: late}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.77.0.3}]}
"#;
    lab.write("cluster.yaml", CLUSTER);
    lab.write("late.yaml", late);
    lab.write("policy.yaml", DENY_INGRESS);
    lab.start(&["--rescan-ms", "60000"]);
    lab.wait_status("the first pod installed", |s| s["endpoints"] == 1);
    sh(&["ip", "netns", "add", &pod2]);
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _gone = Gone(pod2.clone());
    let pinned = enforcer::bpf::PinnedMaps::open(&lab.bpffs).unwrap();
    let mut times = Vec::new();
    let mut from_link = Vec::new();
    for round in 0..5 {
        // The CNI's work: a veth with its pod end in the pod's namespace, then (a few
        // milliseconds later) the pod's address on its end, which binds the pod to the veth
        // (the node hears of it through netlink: the address changed in a namespace it has an
        // id for).
        let host = format!("lxc-late{round}");
        let t_link = Instant::now();
        sh(&[
            "ip",
            "-n",
            &lab.node_ns,
            "link",
            "add",
            &host,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod2,
        ]);
        sh(&["ip", "-n", &lab.node_ns, "link", "set", &host, "up"]);
        std::thread::sleep(Duration::from_millis(30));
        let t0 = Instant::now();
        sh(&[
            "ip",
            "-n",
            &pod2,
            "addr",
            "add",
            "10.77.0.3/32",
            "dev",
            "eth0",
        ]);
        let ifindex = {
            let out = Command::new("ip")
                .args(["-n", &lab.node_ns, "-json", "link", "show", &host])
                .output()
                .unwrap();
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            v[0]["ifindex"].as_u64().unwrap() as u32
        };
        loop {
            let st = pinned.read_state().unwrap();
            if st
                .endpoints
                .get(&ifindex)
                .is_some_and(|e| e.ingress_mode == enforcer_common::mode::ENFORCE)
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the new pod's interface was not programmed (the rescan is a minute away)"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        times.push(t0.elapsed());
        from_link.push(t_link.elapsed());
        // A routed CNI's host route comes next: a hint, it changes nothing.
        sh(&[
            "ip",
            "-n",
            &lab.node_ns,
            "route",
            "replace",
            "10.77.0.3/32",
            "dev",
            &host,
        ]);
        // The pod goes away again (its route with it).
        sh(&["ip", "-n", &lab.node_ns, "link", "del", &host]);
        std::thread::sleep(Duration::from_millis(100));
    }
    times.sort();
    from_link.sort();
    eprintln!(
        "pod address configured -> endpoint enforced: median {:.1?}, worst {:.1?}; link \
         created -> enforced (address 30 ms after the link): median {:.1?}, worst {:.1?} (n={})",
        times[times.len() / 2],
        times[times.len() - 1],
        from_link[from_link.len() / 2],
        from_link[from_link.len() - 1],
        times.len()
    );
    if std::env::var("SHOW_LOG").is_ok() {
        eprintln!(
            "{}",
            std::fs::read_to_string(lab.dir.join("agent.log")).unwrap()
        );
    }
    assert!(lab.stop());
}

/// The log is for people and log collectors: plain text when it goes to a file (no colour
/// codes), one JSON object per line with `--log-format json` (here through its env), and no
/// datapath event in it (they go to the events file); events held back by the rate limit are
/// told as one warning.
#[test]
fn the_log_is_plain_text_or_json_lines_and_events_stay_out_of_it() {
    let mut lab = Lab::new("log");
    lab.write("cluster.yaml", CLUSTER);
    lab.write("policy.yaml", DENY_INGRESS);
    let events = lab.dir.join("events.jsonl");
    for json in [false, true] {
        let _ = std::fs::remove_file(&events);
        let env: &[(&str, &str)] = if json {
            &[("ENFORCER_LOG_FORMAT", "json")]
        } else {
            &[]
        };
        lab.start_env(
            &[
                "--no-allow-host",
                "--events-file",
                events.to_str().unwrap(),
                "--event-rate",
                "1",
                "--event-burst",
                "1",
                "--drop-report-window",
                "0",
            ],
            env,
        );
        lab.wait_status("installed", |s| s["endpoints"] == 1);
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..5 {
            lab.send_to_pod();
        }
        let log_file = lab.dir.join("agent.log");
        let log = || std::fs::read_to_string(&log_file).unwrap();
        wait_for("the drop event in the events file", || {
            std::fs::read_to_string(&events).is_ok_and(|t| t.contains("no-rule-allows"))
        });
        wait_for("a warning about the events held back", || {
            log().contains("held back by the per-endpoint limit")
        });
        assert!(lab.stop());
        let log = log();
        assert!(
            !log.contains('\x1b'),
            "no colour codes in a log file:\n{log}"
        );
        assert!(
            !log.contains("enforcer::events") && !log.contains("\"src_port\""),
            "no event in the log:\n{log}"
        );
        assert_eq!(log.matches("held back").count(), 1, "one warning:\n{log}");
        if json {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
            }
        } else {
            assert!(log.contains(" INFO ") && log.contains("started"), "{log}");
            assert!(!log.trim_start().starts_with('{'), "{log}");
        }
    }
}

/// An Admin Deny on the lab's pod, for the upgrade test.
const ADMIN_DENY: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: admin-deny}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  ingress:
    - action: Deny
      from: [{namespaces: {}}]
      protocols: [{tcp: {destinationPort: {number: 22}}}]
"#;

type PolicyTrie = aya::maps::LpmTrie<
    aya::maps::MapData,
    enforcer_common::PolicyKey,
    enforcer_common::PolicyValue,
>;

fn pinned_trie(lab: &Lab, name: &str) -> PolicyTrie {
    let data = aya::maps::MapData::from_pin(lab.bpffs.join(name)).expect("opening the pin");
    PolicyTrie::try_from(aya::maps::Map::LpmTrie(data)).expect("an LPM trie")
}

/// A trie's entries (prefix length, key, value), in order.
fn trie_entries(
    t: &PolicyTrie,
) -> Vec<(
    u32,
    enforcer_common::PolicyKey,
    enforcer_common::PolicyValue,
)> {
    let mut v: Vec<_> = t
        .iter()
        .map(|r| r.map(|(k, v)| (k.prefix_len(), k.data(), v)).unwrap())
        .collect();
    v.sort();
    v
}

/// The same without the set ids, which a new install may place anew.
fn placed_anywhere(
    mut v: Vec<(
        u32,
        enforcer_common::PolicyKey,
        enforcer_common::PolicyValue,
    )>,
) -> Vec<(
    u32,
    enforcer_common::PolicyKey,
    enforcer_common::PolicyValue,
)> {
    for e in &mut v {
        e.1.policy_set = 0;
    }
    v.sort();
    v
}

/// An agent of the version that kept the ordered tiers in `POLICY` left its pins: this
/// version's programs look for them in `POLICY_TIERS`, so reusing that `POLICY` as it is would
/// lose every Admin Deny (fail open). The pin is replaced: the old map keeps serving the old
/// programs until the links are swapped, and the new maps are installed whole.
#[test]
fn an_upgrade_moves_ordered_tier_entries_out_of_the_networkpolicy_map() {
    use enforcer_common::{names, tier};
    let mut lab = Lab::new("tiermove");
    lab.write("cluster.yaml", CLUSTER);
    lab.write("policy.yaml", DENY_INGRESS);
    lab.write("admin.yaml", ADMIN_DENY);
    lab.start(&["--keep-pins"]);
    lab.wait_status("installed", |s| s["endpoints"] == 1);
    assert!(lab.stop());
    let tiered = trie_entries(&pinned_trie(&lab, names::MAP_POLICY_TIERS));
    assert!(
        !tiered.is_empty() && tiered.iter().all(|(_, k, _)| tier::ordered(k.tier)),
        "{tiered:?}"
    );
    let plain = trie_entries(&pinned_trie(&lab, names::MAP_POLICY));
    assert!(
        plain.iter().all(|(_, k, _)| !tier::ordered(k.tier)),
        "{plain:?}"
    );

    // The earlier version's layout: every entry in POLICY, no POLICY_TIERS pin.
    let mut old = pinned_trie(&lab, names::MAP_POLICY);
    for (len, k, v) in &tiered {
        old.insert(&aya::maps::lpm_trie::Key::new(*len, *k), *v, 0)
            .unwrap();
    }
    std::fs::remove_file(lab.bpffs.join(names::MAP_POLICY_TIERS)).unwrap();
    drop(old);
    let pin_id = |lab: &Lab| {
        aya::maps::MapInfo::from_pin(lab.bpffs.join(names::MAP_POLICY))
            .unwrap()
            .id()
    };
    let old_id = pin_id(&lab);

    lab.start(&[]);
    lab.wait_status("the upgraded agent installed", |s| s["endpoints"] == 1);
    assert_ne!(pin_id(&lab), old_id, "the old POLICY pin is replaced");
    assert_eq!(
        placed_anywhere(trie_entries(&pinned_trie(&lab, names::MAP_POLICY))),
        placed_anywhere(plain),
        "POLICY holds the NetworkPolicy entries only"
    );
    assert_eq!(
        placed_anywhere(trie_entries(&pinned_trie(&lab, names::MAP_POLICY_TIERS))),
        placed_anywhere(tiered),
        "the Admin entries are in POLICY_TIERS"
    );
    let log = std::fs::read_to_string(lab.dir.join("agent.log")).unwrap_or_default();
    assert!(log.contains("ordered-tier entries"), "{log}");
    assert!(lab.stop());
}
