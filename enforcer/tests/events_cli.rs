//! `enforcer events` as a command: filters validated and their synonyms taken, a file that is
//! not an event stream refused, `--since` and `--last`, and `--follow` starting at the end of
//! the file and following it across the agent's rotation. Needs no privileges.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const EXE: &str = env!("CARGO_BIN_EXE_enforcer");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d =
            std::env::temp_dir().join(format!("enforcer-events-cli-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An event line: x/a -> x/b at ingress (at x/b), x/b -> x/a at egress (at x/b); `port`
/// tells them apart; `ago` seconds before now.
fn event(direction: &str, verdict: &str, port: u16, ago: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let unix = (now.as_nanos() as u64).saturating_sub(ago * 1_000_000_000);
    let (endpoint, peer, src, dst) = if direction == "ingress" {
        ("x/b", "x/a", "10.0.0.1", "10.0.0.2")
    } else {
        ("x/b", "x/a", "10.0.0.2", "10.0.0.1")
    };
    json!({
        "time": "", "time_ns": 1, "unix_time_ns": unix, "node": "node-1", "endpoint": endpoint,
        "direction": direction, "verdict": verdict, "reason": "no-rule-allows",
        "protocol": "TCP", "src": src, "src_port": 40000, "dst": dst, "dst_port": port,
        "peer": peer, "policy": null, "rule": null, "isolated_by": ["x/deny"]
    })
    .to_string()
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        f.write_all(format!("{l}\n").as_bytes()).unwrap();
    }
}

fn events(file: &Path, args: &[&str]) -> Output {
    Command::new(EXE)
        .arg("events")
        .arg("--file")
        .arg(file)
        .args(args)
        .output()
        .unwrap()
}

/// The destination ports of the JSON lines printed, in order.
fn ports(out: &Output) -> Vec<u64> {
    assert!(
        out.status.success(),
        "events failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["dst_port"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn filters_take_the_words_people_use_and_refuse_the_rest() {
    let dir = Dir::new("filters");
    let file = dir.0.join("events.jsonl");
    append(
        &file,
        &[
            event("ingress", "drop", 80, 3600),
            event("egress", "allow", 53, 60),
            event("ingress", "audit", 8080, 1),
        ],
    );
    let json = |args: &[&str]| {
        let mut v = vec!["--output", "json"];
        v.extend_from_slice(args);
        ports(&events(&file, &v))
    };
    assert_eq!(json(&[]), vec![80, 53, 8080]);
    assert_eq!(json(&["--verdict", "deny"]), vec![80], "deny is drop");
    assert_eq!(json(&["--verdict", "drop"]), vec![80]);
    assert_eq!(json(&["--verdict", "allow"]), vec![53]);
    assert_eq!(json(&["--verdict", "audit"]), vec![8080]);
    assert_eq!(
        json(&["--direction", "in"]),
        vec![80, 8080],
        "in is ingress"
    );
    assert_eq!(json(&["--direction", "out"]), vec![53], "out is egress");
    assert_eq!(json(&["--direction", "egress"]), vec![53]);
    assert_eq!(json(&["--from", "x/a", "--to", "x/b"]), vec![80, 8080]);
    assert_eq!(json(&["--from", "x/b"]), vec![53]);
    assert_eq!(json(&["--to", "10.0.0.0/24", "--port", "53"]), vec![53]);
    assert_eq!(json(&["--since", "10m"]), vec![53, 8080]);
    assert_eq!(json(&["--last", "2"]), vec![53, 8080]);
    assert_eq!(json(&["--last", "1", "--verdict", "deny"]), vec![80]);

    // Text output: RFC 3339 with the zone's offset.
    let out = Command::new(EXE)
        .args(["events", "--verdict", "deny"])
        .env("ENFORCER_EVENTS_FILE", &file)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let when = text.split(' ').next().unwrap_or("");
    assert!(
        when.len() == "2026-12-02T18:31:07.123+00:00".len() && when.ends_with("+00:00"),
        "RFC 3339 with the zone: {text}"
    );

    for (args, accepted) in [
        (&["--verdict", "denied"][..], "drop, deny, allow, audit"),
        (&["--direction", "inbound"], "ingress, in, egress, out"),
        (&["--port", "0"], "0"),
        (&["--from", "nginx"], "namespace/name"),
        (&["--since", "yesterday"], "RFC 3339"),
    ] {
        let out = events(&file, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(accepted), "{args:?}: {err}");
    }
}

#[test]
fn a_file_that_is_not_an_event_stream_is_refused() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    for args in [&[][..], &["--follow"]] {
        let out = events(&readme, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "refused with {args:?}");
        assert!(out.stdout.is_empty());
        assert!(err.contains("README.md:1: not an event"), "{err}");
    }
    // An empty file is an event stream with nothing in it yet.
    let dir = Dir::new("empty");
    let empty = dir.0.join("events.jsonl");
    std::fs::write(&empty, "").unwrap();
    assert_eq!(
        ports(&events(&empty, &["--output", "json"])),
        Vec::<u64>::new()
    );
}

/// A running `events --follow`: its lines as they come.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(file: &Path, args: &[&str]) -> Follower {
        let mut child = Command::new(EXE)
            .args(["events", "--follow", "--output", "json", "--file"])
            .arg(file)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        // Let it open the file and reach its end.
        std::thread::sleep(Duration::from_millis(500));
        Follower { child, lines }
    }

    /// The ports of the next `n` lines (within a few seconds each), then checks nothing else
    /// comes for a moment.
    fn expect(&self, n: usize) -> Vec<u64> {
        let mut got = Vec::new();
        for _ in 0..n {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("only {got:?} of {n} lines came"));
            got.push(
                serde_json::from_str::<Value>(&l).unwrap()["dst_port"]
                    .as_u64()
                    .unwrap(),
            );
        }
        if let Ok(extra) = self.lines.recv_timeout(Duration::from_millis(400)) {
            panic!("after {got:?}, unexpected: {extra}");
        }
        got
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn follow_starts_at_the_end_and_follows_across_rotation() {
    let dir = Dir::new("follow");
    let file = dir.0.join("events.jsonl");
    append(
        &file,
        &(1..=3)
            .map(|p| event("ingress", "drop", p, 0))
            .collect::<Vec<_>>(),
    );

    let f = Follower::start(&file, &[]);
    assert_eq!(f.expect(0), Vec::<u64>::new(), "nothing of what was there");
    append(
        &file,
        &[
            event("ingress", "drop", 4, 0),
            event("egress", "drop", 5, 0),
        ],
    );
    assert_eq!(f.expect(2), vec![4, 5], "only what was appended");

    // The agent's rotation: the last lines of the old file, then the new file.
    let g = Follower::start(&file, &["--last", "1", "--direction", "in"]);
    assert_eq!(g.expect(1), vec![4], "--last 1 (matching), then follow");
    append(&file, &[event("ingress", "drop", 6, 0)]);
    let mut old = file.clone().into_os_string();
    old.push(".1");
    std::fs::rename(&file, &old).unwrap();
    append(&file, &[event("ingress", "drop", 7, 0)]);
    assert_eq!(f.expect(2), vec![6, 7]);
    assert_eq!(g.expect(2), vec![6, 7]);
    append(&file, &[event("ingress", "drop", 8, 0)]);
    assert_eq!(f.expect(1), vec![8]);

    // --since asks for history: the rotated file and the current one.
    let h = Follower::start(&file, &["--since", "1h"]);
    assert_eq!(h.expect(8), (1..=8).collect::<Vec<u64>>());
}
