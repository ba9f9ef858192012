//! README's examples, run as written so that they cannot drift.
//!
//! Every README of the repository is read; from its fenced blocks:
//! - each command of a ```sh block runs, as written, from the repository root (`enforcer` is
//!   this build's binary, first on PATH), and must exit 0 — unless [`SKIPPED`] names it, with
//!   the reason;
//! - each `$ command` line of a session block (```text) runs in order in one lab; the lab's name
//!   (`demo` in the text) is made unique per run, and the lab is taken down at the end whatever
//!   happens. Each must exit 0, or with the status a `# exits N` comment on its line says; the
//!   first line of the output the README shows must be a line of what the command prints
//!   (digits masked: times, ports and counters vary);
//! - each `enforcer …` line of a synopsis block (```text, no `$`) must name a real command, and
//!   every `--flag` and every `[a|b]` choice on it must be in that command's `--help`.
//!
//! Root is needed for the lab (as for the rest of the suite).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Commands of ```sh blocks that the suite does not run, each with the reason.
const SKIPPED: &[(&str, &str)] = &[
    (
        "cargo xtask demo",
        "builds the release binary, then runs `enforcer lab demo`, which \
         the_demo_prints_what_the_readme_shows runs on this build",
    ),
    ("cargo xtask test", "the suite itself"),
    (
        "cargo xtask build-ebpf",
        "the suite's own first build step (cargo xtask test runs it before any test)",
    ),
    (
        "cargo build --release -p enforcer",
        "a release build takes minutes on two cores; the suite tests the same crate, built in \
         the test profile",
    ),
    (
        "podman build -f deploy/Containerfile --build-arg ENFORCER_COMMIT=$(git rev-parse --short HEAD) \\\n  -t REGISTRY/enforcer:TAG .",
        "needs podman, network access for the base images, and a registry of yours (REGISTRY, TAG)",
    ),
    (
        "podman push REGISTRY/enforcer:TAG",
        "needs a registry of yours",
    ),
    (
        "kubectl apply -f deploy/",
        "needs a Kubernetes cluster (enforcer/tests/kube_server.rs applies deploy/ to a real \
         kube-apiserver; enforcer/tests/deploy.rs checks deploy/*.yaml)",
    ),
    (
        "kubectl -n enforcer-system rollout status ds/enforcer",
        "needs a Kubernetes cluster",
    ),
    (
        "kubectl -n enforcer-system exec ds/enforcer -- enforcer status",
        "needs a Kubernetes cluster (`status` runs against a real agent in enforcer/tests/status.rs)",
    ),
    (
        "kubectl -n enforcer-system exec ds/enforcer -- enforcer maps dump",
        "needs a Kubernetes cluster (`maps dump` runs in the lab session below)",
    ),
    (
        "kubectl -n enforcer-system set env ds/enforcer ENFORCER_DEFAULT_DENY_UNKNOWN=false",
        "needs a Kubernetes cluster",
    ),
    (
        "kubectl -n enforcer-system set env ds/enforcer ENFORCER_KEEP_PINS=false",
        "needs a Kubernetes cluster",
    ),
    ("kubectl delete -f deploy/", "needs a Kubernetes cluster"),
    (
        "cargo test --release -p enforcer --test e2e_netpol -- --nocapture",
        "the suite runs this test (in the test profile); a release build takes minutes",
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// README.md and every README.md below it (outside `target/` and hidden folders).
fn readmes() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else if name == "README.md" {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo(), &mut out);
    out.sort();
    out
}

struct Block {
    file: String,
    line: usize,
    info: String,
    lines: Vec<String>,
}

fn blocks() -> Vec<Block> {
    let root = repo();
    let mut out = Vec::new();
    for path in readmes() {
        let file = path.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut open: Option<Block> = None;
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            match open.as_mut() {
                None => {
                    if let Some(info) = trimmed.strip_prefix("```") {
                        open = Some(Block {
                            file: file.clone(),
                            line: i + 1,
                            info: info.trim().to_string(),
                            lines: Vec::new(),
                        });
                    }
                }
                Some(b) => {
                    if trimmed.starts_with("```") {
                        out.push(open.take().unwrap());
                    } else {
                        b.lines.push(line.to_string());
                    }
                }
            }
        }
        assert!(open.is_none(), "{file}: a fenced block is not closed");
    }
    out
}

/// The commands of a ```sh block: comments dropped, `\` continuations joined.
fn sh_commands(b: &Block) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in &b.lines {
        if cur.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
            continue;
        }
        let code = strip_comment(line);
        if let Some(head) = code.strip_suffix('\\') {
            cur.push_str(head);
            cur.push_str("\\\n");
            continue;
        }
        cur.push_str(code.trim_end());
        out.push(std::mem::take(&mut cur));
    }
    out
}

/// A line without its trailing `# comment` (a `#` after whitespace).
fn strip_comment(line: &str) -> &str {
    match line.find(" #") {
        Some(i) => line[..i].trim_end(),
        None => line.trim_end(),
    }
}

/// The directory of this build's `enforcer`, to put first on PATH (the binary itself: no
/// link to make, so tests running at once cannot race and nothing is left behind).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_enforcer"))
        .parent()
        .expect("the binary has a directory")
        .to_path_buf()
}

fn shell(command: &str, bin: &Path) -> Output {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .args(["-c", command])
        .current_dir(repo())
        .env("PATH", path)
        .output()
        .expect("running sh")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_session(b: &Block) -> bool {
    b.lines.iter().any(|l| l.starts_with("$ "))
}

#[test]
fn the_skip_list_names_only_commands_the_readmes_have() {
    let all: BTreeSet<String> = blocks()
        .iter()
        .filter(|b| b.info == "sh")
        .flat_map(sh_commands)
        .collect();
    let stale: Vec<_> = SKIPPED
        .iter()
        .filter(|(c, _)| !all.contains(*c))
        .map(|(c, _)| c)
        .collect();
    assert!(stale.is_empty(), "skipped, but in no README: {stale:#?}");
}

#[test]
fn every_sh_command_of_the_readmes_runs() {
    common::require_root("README's commands");
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let bin = bin_dir();
    let mut ran = 0;
    let mut failed = Vec::new();
    for b in blocks().iter().filter(|b| b.info == "sh") {
        for command in sh_commands(b) {
            if let Some((_, why)) = SKIPPED.iter().find(|(c, _)| *c == command) {
                eprintln!("skipped ({}:{}): {command}: {why}", b.file, b.line);
                continue;
            }
            eprintln!("running ({}:{}): {command}", b.file, b.line);
            let out = shell(&command, &bin);
            ran += 1;
            if !out.status.success() {
                failed.push(format!(
                    "{}:{}: {command}: {}\n{}{}",
                    b.file,
                    b.line,
                    out.status,
                    text(&out.stdout),
                    text(&out.stderr)
                ));
            }
        }
    }
    assert!(ran >= 1, "no command ran");
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// A line for comparison: digits masked, runs of blanks made one.
fn normalized(line: &str) -> String {
    blanks_collapsed(line, true)
}

/// A line without its comment, runs of blanks made one; digits masked (a run of them made one
/// `9`) when `mask`.
fn blanks_collapsed(line: &str, mask: bool) -> String {
    let mut out = String::new();
    let mut last = ' ';
    for c in strip_comment(line).trim().chars() {
        let c = if mask && c.is_ascii_digit() { '9' } else { c };
        if mask && c == '9' && last == '9' {
            continue;
        }
        if c.is_whitespace() {
            if last != ' ' {
                out.push(' ');
            }
            last = ' ';
            continue;
        }
        out.push(c);
        last = c;
    }
    out
}

/// The lab name in a session's command (`--name demo`, `lab apply demo …`) made unique.
fn with_lab_name(command: &str, name: &str) -> String {
    let words: Vec<&str> = command.split(' ').collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let prev = if i > 0 { words[i - 1] } else { "" };
        let is_name = *w == "demo"
            && matches!(
                prev,
                "--name" | "apply" | "delete" | "exec" | "probe" | "forge" | "down"
            );
        out.push(if is_name { name } else { w });
    }
    out.join(" ")
}

/// Takes the lab down when the session ends, however it ends.
struct LabGuard {
    name: String,
    bin: PathBuf,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = shell(&format!("enforcer lab down {}", self.name), &self.bin);
    }
}

#[test]
fn every_session_of_the_readmes_runs_in_a_lab_and_prints_what_the_readme_shows() {
    common::require_root("README's lab sessions");
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let bin = bin_dir();
    let sessions: Vec<Block> = blocks().into_iter().filter(is_session).collect();
    assert!(!sessions.is_empty(), "README shows a lab session");
    let mut failed = Vec::new();
    for (n, b) in sessions.iter().enumerate() {
        let name = format!("readme{}-{n}", std::process::id());
        let _guard = LabGuard {
            name: name.clone(),
            bin: bin.clone(),
        };
        // Each command with its exit status and the first output line the README shows for it.
        let mut steps: Vec<(usize, String, i32, Option<String>)> = Vec::new();
        for (i, line) in b.lines.iter().enumerate() {
            if let Some(command) = line.strip_prefix("$ ") {
                let status = command
                    .split_once(" # exits ")
                    .map_or(0, |(_, n)| n.trim().parse().expect("# exits N"));
                steps.push((
                    b.line + 1 + i,
                    strip_comment(command).to_string(),
                    status,
                    None,
                ));
            } else if let Some(last) = steps.last_mut()
                && last.3.is_none()
                && !line.trim().is_empty()
                && line.trim() != "..."
            {
                last.3 = Some(line.clone());
            }
        }
        for (line, command, status, shown) in steps {
            let command = with_lab_name(&command, &name);
            eprintln!("running ({}:{line}): {command}", b.file);
            let out = shell(&command, &bin);
            let stdout = text(&out.stdout);
            if out.status.code() != Some(status) {
                failed.push(format!(
                    "{}:{line}: {command}: {} (the README says it exits {status})\n{stdout}{}",
                    b.file,
                    out.status,
                    text(&out.stderr)
                ));
                continue;
            }
            if let Some(shown) = shown {
                let want = normalized(&shown);
                if !stdout.lines().any(|l| normalized(l) == want) {
                    failed.push(format!(
                        "{}:{line}: {command}: the README shows\n  {shown}\nwhich is no line of what it printed:\n{stdout}",
                        b.file
                    ));
                }
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// The `--help` of the command a synopsis line names: the longest run of leading words that
/// enforcer takes as a command.
fn help_of(words: &[&str], bin: &Path) -> Option<(String, String)> {
    let lead: Vec<&str> = words
        .iter()
        .skip(1)
        .take_while(|w| {
            w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
        })
        .copied()
        .collect();
    for n in (0..=lead.len()).rev() {
        let cmd = format!("enforcer {} --help", lead[..n].join(" "));
        let out = shell(&cmd, bin);
        if out.status.success() {
            return Some((cmd, text(&out.stdout)));
        }
    }
    None
}

#[test]
fn every_flag_of_the_readmes_synopses_is_one_the_command_has() {
    let bin = bin_dir();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for b in blocks()
        .iter()
        .filter(|b| b.info == "text" && !is_session(b))
    {
        for (i, line) in b.lines.iter().enumerate() {
            let line = strip_comment(line);
            if !line.starts_with("enforcer ") {
                continue;
            }
            let at = format!("{}:{}", b.file, b.line + 1 + i);
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some((cmd, help)) = help_of(&words, &bin) else {
                wrong.push(format!("{at}: no command in {line:?}"));
                continue;
            };
            let has = |flag: &str| {
                help.match_indices(flag).any(|(j, _)| {
                    !help[j + flag.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
                })
            };
            for w in &words[1..] {
                let inner = w.trim_start_matches('[').trim_end_matches(']');
                for alt in inner.split('|') {
                    if alt.starts_with("--") {
                        checked += 1;
                        if !has(alt) {
                            wrong.push(format!("{at}: {alt} is not in `{cmd}`"));
                        }
                    } else if w.starts_with('[')
                        && !inner.contains("--")
                        && alt.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                        && !alt.is_empty()
                    {
                        // A choice among words: each one a value the command takes.
                        checked += 1;
                        if !help.contains(alt) {
                            wrong.push(format!("{at}: {alt:?} is not in `{cmd}`"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        checked >= 20,
        "only {checked} flags found: is the scan broken?"
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// README's demo output (the untyped block after `cargo xtask demo`): `cargo xtask demo` builds
/// the release binary and runs `enforcer lab demo`, which runs here on this build; every line the
/// README shows (but `...`) must be a line of what it prints.
#[test]
fn the_demo_prints_what_the_readme_shows() {
    common::require_root("README's demo");
    let _one = common::ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let all = blocks();
    let at = all
        .iter()
        .position(|b| {
            b.file == "README.md" && b.info == "sh" && sh_commands(b) == ["cargo xtask demo"]
        })
        .expect("README shows `cargo xtask demo`");
    let shown = all[at + 1..]
        .iter()
        .find(|b| b.file == "README.md" && b.info.is_empty())
        .expect("README shows the demo's output");
    let out = shell("enforcer lab demo", &bin_dir());
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}{}",
        out.status,
        text(&out.stderr)
    );
    // The demo is deterministic: digits (addresses, the probe count) compared too.
    let exact = |l: &str| blanks_collapsed(l, false);
    let printed: BTreeSet<String> = stdout.lines().map(exact).collect();
    let missing: Vec<&String> = shown
        .lines
        .iter()
        .filter(|l| !l.trim().is_empty() && l.trim() != "...")
        .filter(|l| !printed.contains(&exact(l)))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md:{}: the demo does not print these lines:\n{missing:#?}\nit printed:\n{stdout}",
        shown.line
    );
}
