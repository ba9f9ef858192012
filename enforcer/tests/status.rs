//! `enforcer status`, stale pins in `maps dump`, and a failed start cleaning up after itself,
//! with a real agent process on a throwaway node (see agent_lab). Needs root.

mod agent_lab;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use agent_lab::*;
use serde_json::Value;

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

impl Lab {
    fn status_cmd(&self, json_out: bool) -> Output {
        let bpffs = self.bpffs.to_string_lossy().into_owned();
        let mut args = vec!["status", "--bpffs", &bpffs];
        if json_out {
            args.extend(["--output", "json"]);
        }
        self.cli(&args)
    }

    fn dump_raw(&self, extra: &[&str]) -> Output {
        let bpffs = self.bpffs.to_string_lossy().into_owned();
        let mut args = vec!["maps", "dump", "--output", "json", "--bpffs", &bpffs];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    /// Runs an agent in the node namespace to its end (a start meant to fail).
    fn run_to_end(&self, manifests: &Path) -> Output {
        Command::new("nsenter")
            .env("ENFORCER_RUN_DIR", self.run_dir())
            .arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg(EXE)
            .arg("run")
            .arg("--manifests")
            .arg(manifests)
            .args(["--node", "node-1", "--rescan-ms", "100", "--bpffs"])
            .arg(&self.bpffs)
            .stdin(Stdio::null())
            .output()
            .expect("running the agent")
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn status_names_the_running_agent_and_its_health_in_the_exit_code() {
    let mut lab = Lab::new("status");
    lab.write("cluster.yaml", CLUSTER);
    lab.write("policy.yaml", DENY_INGRESS);
    let out = lab.status_cmd(true);
    assert_eq!(code(&out), 3, "no agent yet: {out:?}");
    assert_eq!(json(&out)["health"], "not-running");

    lab.start(&[]);
    lab.wait_status("installed", |s| s["endpoints"] == 1);
    let out = lab.status_cmd(true);
    let v = json(&out);
    assert_eq!(code(&out), 0, "{v:#}");
    assert_eq!(v["health"], "healthy");
    let a = &v["agent"];
    assert_eq!(a["pid"], lab.agents[0].id());
    assert_eq!(a["version"], enforcer::VERSION);
    assert_eq!(a["commit"], enforcer::COMMIT);
    assert_eq!(a["node"], "node-1");
    assert_eq!(a["source"], "manifests");
    assert_eq!(a["synced"], true);
    assert!(a["started"].as_str().unwrap().ends_with("+00:00"), "{a}");
    assert_eq!(v["maps"]["ENDPOINTS"]["entries"], 1, "{v:#}");
    assert!(v["maps"]["POLICY"]["capacity"].as_u64().unwrap() > 0);
    assert_eq!(v["events"]["lost"], 0);
    let table = String::from_utf8(lab.status_cmd(false).stdout).unwrap();
    assert!(table.contains("HEALTH     healthy"), "{table}");
    assert!(table.contains("AGENT      running, pid"), "{table}");

    // A rejected object: degraded (exit 1), the object and its reason named.
    lab.write("broken.yaml", BAD_CIDR);
    lab.wait_status("the bad policy reported", |s| !s["error"].is_null());
    let out = lab.status_cmd(true);
    let v = json(&out);
    assert_eq!(code(&out), 1, "{v:#}");
    assert_eq!(v["health"], "degraded");
    let rejected = v["agent"]["rejected"].to_string();
    assert!(
        rejected.contains("broken") && rejected.contains("10.0.0.0/33"),
        "{rejected}"
    );
    assert!(
        v["problems"].to_string().contains("1 object rejected"),
        "{v:#}"
    );

    assert!(lab.stop());
    let out = lab.status_cmd(true);
    assert_eq!(code(&out), 3, "{out:?}");
    assert!(
        json(&out)["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("no agent runs on")
    );
}

#[test]
fn maps_dump_refuses_stale_pins_unless_allowed() {
    let mut lab = Lab::new("stale");
    lab.write("cluster.yaml", CLUSTER);
    lab.start(&["--keep-pins"]);
    lab.wait_status("installed", |s| s["endpoints"] == 1);
    assert_eq!(code(&lab.dump_raw(&[])), 0, "a live agent's pins are read");
    assert!(lab.stop());

    // The pins outlive the agent (--keep-pins): stale, refused without --allow-stale.
    let out = lab.dump_raw(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code(&out), 3, "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("no agent runs on the pins under") && err.contains("--allow-stale"),
        "{err}"
    );
    let out = lab.dump_raw(&["--allow-stale"]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: no agent runs"));
    assert_eq!(json(&out)["endpoints"].as_object().unwrap().len(), 1);
    let out = lab.status_cmd(true);
    assert_eq!(code(&out), 3);
    assert!(
        json(&out)["problems"][0]
            .as_str()
            .unwrap()
            .contains("stale")
    );

    // An agent killed outright leaves its record, not its lock: still stale, and named.
    lab.start(&["--keep-pins"]);
    lab.wait_status("the second agent installed", |s| s["endpoints"] == 1);
    assert_eq!(code(&lab.dump_raw(&[])), 0);
    let pid = lab.agents[0].id();
    let mut a = lab.agents.pop().unwrap();
    a.kill().unwrap();
    a.wait().unwrap();
    let out = lab.dump_raw(&[]);
    assert_eq!(code(&out), 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("left by pid {pid}")),
        "{out:?}"
    );
}

#[test]
fn a_failed_start_removes_the_pins_it_created() {
    let lab = Lab::new("failfresh");
    assert!(!lab.bpffs.exists());
    let out = lab.run_to_end(&lab.dir.join("no-such-folder"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no-such-folder"), "{err}");
    assert!(
        !lab.bpffs.exists(),
        "the failed start left {}: {:?}",
        lab.bpffs.display(),
        std::fs::read_dir(&lab.bpffs).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    assert!(!lab.tc_attached());
    let left: Vec<_> = std::fs::read_dir(lab.run_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the failed start left {left:?}");
}

#[test]
fn a_failed_start_leaves_the_pins_it_would_have_taken_over() {
    let mut lab = Lab::new("failtake");
    lab.write("cluster.yaml", CLUSTER);
    lab.write("policy.yaml", DENY_INGRESS);
    lab.start(&["--keep-pins"]);
    lab.wait_status("installed", |s| s["endpoints"] == 1);
    assert!(lab.stop());
    let before = lab.dump_with(&["--allow-stale"]);
    assert!(lab.tc_attached());

    let out = lab.run_to_end(&lab.dir.join("no-such-folder"));
    assert!(!out.status.success());
    assert!(pins_exist(&lab.bpffs), "the earlier agent's pins stay");
    assert!(lab.tc_attached(), "and keep enforcing");
    let after = lab.dump_with(&["--allow-stale"]);
    assert_eq!(after["endpoints"], before["endpoints"]);
    assert_eq!(after["policy"], before["policy"]);
}
