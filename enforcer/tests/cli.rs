//! The command line as a user meets it: `--version` names the commit, completions are
//! generated, `--help` offers only what a command supports, and errors say each thing once.
//! No root needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn enforcer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_enforcer"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running enforcer")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn version_names_the_commit_of_head() {
    let out = enforcer(&["--version"]);
    assert!(out.status.success());
    let version = text(&out.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(repo())
        .output()
        .expect("git");
    assert!(head.status.success(), "the tests run in a git checkout");
    let head = text(&head.stdout).trim().to_string();
    // `enforcer 0.1.0 (1a2b3c4)` or `(1a2b3c4-dirty)`.
    let commit = version
        .split(['(', ')'])
        .nth(1)
        .unwrap_or_else(|| panic!("no commit in {version:?}"));
    let hash = commit.trim_end_matches("-dirty");
    assert!(
        hash.len() >= 7 && head.starts_with(hash),
        "{version:?} does not name HEAD ({head})"
    );
    assert_eq!(
        version.trim(),
        format!("enforcer {}", enforcer::VERSION),
        "--version shows enforcer::VERSION"
    );
}

#[test]
fn completions_are_generated_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = enforcer(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for sub in ["run", "maps", "explain", "events", "lab", "completions"] {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = enforcer(&["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn lab_up_help_offers_only_what_up_supports() {
    let out = enforcer(&["lab", "up", "--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for offered in ["--name", "--agent-timeout", "--verbose", "--source"] {
        assert!(
            help.contains(offered),
            "`lab up --help` lacks {offered}:\n{help}"
        );
    }
    // Options of `lab run` that `up` would ignore or refuse.
    for run_only in [
        "--probe-timeout",
        "--parallel",
        "--keep-files",
        "--agent-cmd",
    ] {
        assert!(
            !help.contains(run_only),
            "`lab up --help` offers {run_only}:\n{help}"
        );
    }
    for (flag, value) in [("--probe-timeout", "2s"), ("--parallel", "4")] {
        let out = enforcer(&["lab", "up", "tests/scenarios/no-policy.yaml", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("unexpected argument '{flag}'")),
            "{flag}: {err}"
        );
    }
    let out = enforcer(&[
        "lab",
        "up",
        "tests/scenarios/no-policy.yaml",
        "--keep-files",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

/// A folder under the system's temporary folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("enforcer-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn write(&self, name: &str, content: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    }

    fn dir(&self, name: &str) -> String {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The clauses of an error line (`error: a: b: c` → a, b, c), without the program's prefix.
fn clauses(line: &str) -> Vec<String> {
    let line = line
        .trim()
        .trim_start_matches("enforcer lab: ")
        .trim_start_matches("error: ");
    line.split(": ").map(|c| c.trim().to_string()).collect()
}

#[test]
fn errors_name_what_failed_and_say_each_thing_once() {
    let s = Scratch::new("errors");
    let bad_yaml = s.dir("bad-yaml");
    let bad_yaml_file = s.write("bad-yaml/q.yaml", "a: [\n");
    let typo = s.dir("typo");
    let typo_file = s.write(
        "typo/p.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}, ingres: []}\n",
    );
    let no_pins = s.dir("no-pins");
    let scenario = s.write(
        "scenario.yaml",
        "pods: [{namespace: x, name: a, lables: {}}]\n",
    );
    let not_events = s.write("not-events.txt", "hello\n");
    let missing = s.0.join("missing").display().to_string();
    let explain = |dir: &str| -> Vec<String> {
        [
            "explain",
            "--manifests",
            dir,
            "--from",
            "x/a",
            "--to",
            "x/b",
            "--port",
            "80",
        ]
        .map(String::from)
        .to_vec()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (explain(&missing), &missing),
        (explain(&bad_yaml), &bad_yaml_file),
        (explain(&typo), &typo_file),
        (
            ["maps", "dump", "--bpffs", &missing]
                .map(String::from)
                .to_vec(),
            &missing,
        ),
        (
            ["maps", "dump", "--bpffs", &no_pins]
                .map(String::from)
                .to_vec(),
            &no_pins,
        ),
        (
            ["lab", "check", &missing].map(String::from).to_vec(),
            &missing,
        ),
        (
            ["lab", "check", &scenario].map(String::from).to_vec(),
            &scenario,
        ),
        (
            ["lab", "run", &missing].map(String::from).to_vec(),
            &missing,
        ),
        (["lab", "up", &missing].map(String::from).to_vec(), &missing),
        (
            ["lab", "apply", "no-such-lab", &missing]
                .map(String::from)
                .to_vec(),
            &missing,
        ),
        (
            ["events", "--file", &missing].map(String::from).to_vec(),
            &missing,
        ),
        (
            ["events", "--file", &not_events].map(String::from).to_vec(),
            &not_events,
        ),
        (
            ["events", "--file", &no_pins].map(String::from).to_vec(),
            &no_pins,
        ),
        (
            ["lab", "delete", "no-such-lab", &missing]
                .map(String::from)
                .to_vec(),
            &missing,
        ),
        (
            ["lab", "check", &no_pins].map(String::from).to_vec(),
            &no_pins,
        ),
    ];
    let mut failures = Vec::new();
    for (args, names) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = enforcer(&args);
        let err = text(&out.stderr);
        let shown = format!("enforcer {}: {err}", args.join(" "));
        if out.status.success() {
            failures.push(format!("{shown} (exit 0)"));
            continue;
        }
        if !err.contains(names) {
            failures.push(format!("{shown} (does not name {names})"));
        }
        for line in err.lines().filter(|l| l.contains("error: ")) {
            let c = clauses(line);
            for (i, a) in c.iter().enumerate() {
                if !a.is_empty() && c[..i].contains(a) {
                    failures.push(format!("{shown} (says {a:?} twice)"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_clause_said_twice_is_caught() {
    let c = clauses(
        "error: /x: No such file or directory (os error 2): No such file or directory (os error 2)",
    );
    assert_eq!(c[0], "/x");
    assert_eq!(c[1], c[2]);
}

#[test]
fn lab_probe_arguments_are_named_as_arguments() {
    for (args, says) in [
        (["x/a", "x/b", "0"], "port: expected a port number"),
        (
            ["x/a", "x/b", "80/FOO"],
            "protocol: \"FOO\" is not TCP, UDP or SCTP",
        ),
    ] {
        let mut all = vec!["lab", "probe", "no-such-lab"];
        all.extend(args);
        let out = enforcer(&all);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(err.contains(says), "{err}");
        assert!(!err.contains("probes[0]"), "a place in a file: {err}");
    }
}

/// The datapath's errors say their cause once, whether shown alone (`{e}`, as the agent logs
/// them) or as an anyhow chain (`{e:#}`): aya's own errors repeat causes, which AyaError drops.
#[test]
fn datapath_errors_say_their_cause_once() {
    use enforcer::bpf::{AyaError, BpfError};
    let pin = BpfError::Pin {
        what: "removing a pin".into(),
        path: "/sys/fs/bpf/x/ENDPOINTS".into(),
        error: std::io::Error::from_raw_os_error(libc::EACCES),
    };
    let alone = pin.to_string();
    let chained = format!("{:#}", anyhow::Error::new(pin));
    assert_eq!(alone, chained);
    assert_eq!(
        alone,
        "removing a pin under /sys/fs/bpf/x/ENDPOINTS: Permission denied (os error 13)"
    );

    // aya: `map error: {0}` over a map error whose source is the same text, over an I/O error.
    #[derive(Debug, thiserror::Error)]
    #[error("`BPF_OBJ_GET` failed")]
    struct Syscall(#[source] std::io::Error);
    #[derive(Debug, thiserror::Error)]
    #[error("map error: {0}")]
    struct Outer(#[source] Syscall);
    let e = Outer(Syscall(std::io::Error::from_raw_os_error(libc::ENOENT)));
    let flat = AyaError::of(&e);
    assert_eq!(
        flat.to_string(),
        "map error: `BPF_OBJ_GET` failed: No such file or directory (os error 2)"
    );
    let map = BpfError::Map {
        name: "ENDPOINTS",
        error: flat,
    };
    assert_eq!(map.to_string(), format!("{:#}", anyhow::Error::new(map)));
}
