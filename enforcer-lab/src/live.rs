//! A lab left running: `lab up` builds a scenario and returns, leaving its agents and servers
//! up; `probe`, `exec`, `apply` and `delete` use it; `down` takes it away; `list` shows it.
//!
//! `up` plans the scenario (so a bad file fails at once), makes the run folder
//! (`/run/enforcer-lab/<prefix>/`, with `scenario.yaml` and `meta.json`), and starts a *keeper*:
//! this same program, `<exe> lab keep <prefix>`, in a session of its own. The keeper builds the
//! lab exactly as `lab run` does, registers itself as the run's owner, holds the servers and
//! the agents (its children, which die with it), saves the cluster state in `state.json`, and
//! says `ready` (or why it failed) through a pipe `up` gave it; `up` then prints how to use the
//! lab and exits. The keeper stays until SIGTERM (`lab down`), then tears everything down in
//! order. Should it die some other way, the run is stale: its leftovers go with the next
//! `lab down` or the next run, as any dead run's do.
//!
//! The other commands need no conversation with the keeper: the plan is recomputed from
//! `scenario.yaml` and the prefix (planning is deterministic), the state comes from
//! `state.json`, and `apply` writes the manifests, the Services' rules and `state.json` under a
//! lock, then waits on the agents' status files.
//!
//! Here: the lab's name and state, `up`, `keep`, `exec` and `down`; `probe.rs`: `probe` and
//! `forge`; `apply.rs`: `apply` and `delete`; `view.rs`: what `up` and `list` print.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

mod apply;
mod probe;
mod view;
pub use apply::apply;
pub use probe::{forge, probe};
pub use view::list;
use view::usage;

use crate::lab::{self, SavedState};
use crate::manifests::write_atomic;
use crate::netns::{self, Netns};
use crate::plan::Plan;
use crate::runs::{self, RunInfo};
use crate::{Output, RunOptions, UpOptions, load};

pub const SCENARIO_FILE: &str = "scenario.yaml";
pub const STATE_FILE: &str = "state.json";
pub const KEEPER_LOG: &str = "keeper.log";
/// With `--source kube`: kubectl's kubeconfig for the lab (admin, through the keeper).
pub const KUBECONFIG_FILE: &str = "kubeconfig";
const LOCK_FILE: &str = "lock";
/// The descriptor on which the keeper finds the pipe back to `up`.
const STATUS_FD: i32 = 3;

fn is_root() -> bool {
    // SAFETY: a plain getter.
    unsafe { libc::geteuid() == 0 }
}

fn need_root(what: &str) -> Result<()> {
    if is_root() {
        Ok(())
    } else {
        bail!("{what} needs root (network namespaces, eBPF): run it with sudo")
    }
}

/// Is this program `enforcer lab …` (the lab one level down) or a lab-only binary?
fn under_lab() -> bool {
    std::env::args().nth(1).as_deref() == Some("lab")
}

/// How a user calls these commands: `enforcer lab` (or the lab-only binary's name).
pub fn shown_cmd() -> String {
    let argv0 = std::env::args().next().unwrap_or_else(|| "enforcer".into());
    let base = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(argv0);
    if under_lab() {
        format!("{base} lab")
    } else {
        base
    }
}

/// A lab name: what `up --name` takes (and what `down`, `probe`, … find it by).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !runs::is_prefix(&format!("{name}-"));
    if ok {
        Ok(())
    } else {
        bail!(
            "{name:?} is not a lab name (lower-case letters, digits and '-', at most 40, \
             not like a run prefix)"
        )
    }
}

/// A name from a file name: `examples/k3s-multi-tenant.yaml` → `k3s-multi-tenant`.
fn name_from_file(file: &Path) -> String {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name = name.trim_matches('-').chars().take(40).collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() { "lab".into() } else { name }
}

/// The run a name (or a run prefix like `enf-1a2b3c`) designates.
pub fn find_run(name: &str) -> Option<RunInfo> {
    runs::list().into_iter().find(|r| {
        r.meta.as_ref().and_then(|m| m.name.as_deref()) == Some(name)
            || r.prefix.trim_end_matches('-') == name
    })
}

/// A lab left running, with its plan and its state as last saved.
struct Live {
    info: RunInfo,
    plan: Plan,
    dir: PathBuf,
}

impl Live {
    fn open(name: &str) -> Result<Live> {
        let Some(info) = find_run(name) else {
            bail!(
                "no lab named {name:?} (`{} list` shows the labs)",
                shown_cmd()
            );
        };
        let dir = runs::run_dir(&info.prefix);
        let is_up = info.meta.as_ref().is_some_and(|m| m.kind == "up");
        if !is_up {
            bail!("{name} is a `lab run` in progress, not a lab left running by `lab up`");
        }
        if !info.alive {
            bail!(
                "lab {name} is not running (its keeper is gone); `{} down {name}` removes \
                 what is left",
                shown_cmd()
            );
        }
        let text = std::fs::read_to_string(dir.join(SCENARIO_FILE))
            .with_context(|| format!("reading {}", dir.join(SCENARIO_FILE).display()))?;
        let mut plan = load(&text, &format!("lab {name}"), &info.prefix)?;
        if info.meta.as_ref().and_then(|m| m.source.as_deref()) == Some("kube") {
            plan.add_control_plane()?;
        }
        Ok(Live { info, plan, dir })
    }

    fn name(&self) -> String {
        self.info
            .meta
            .as_ref()
            .and_then(|m| m.name.clone())
            .unwrap_or_else(|| self.info.prefix.trim_end_matches('-').to_string())
    }

    fn state(&self) -> Result<SavedState> {
        let path = self.dir.join(STATE_FILE);
        let text = std::fs::read(&path)
            .with_context(|| format!("reading {} (is the lab still starting?)", path.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join(node)
    }
}

pub fn save_state(dir: &Path, s: &SavedState) -> Result<()> {
    write_atomic(&dir.join(STATE_FILE), &serde_json::to_vec_pretty(s)?)
}

// ---------------------------------------------------------------------------------------------
// up and keep

/// `lab up FILE [--name NAME]`: returns the exit status.
pub fn up(file: &Path, name: Option<String>, opts: &UpOptions, output: Output) -> i32 {
    match up_inner(file, name, opts, output) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("enforcer lab: error: {e:#}");
            2
        }
    }
}

fn up_inner(file: &Path, name: Option<String>, opts: &UpOptions, output: Output) -> Result<i32> {
    let source = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {source}"))?;
    let name = name.unwrap_or_else(|| name_from_file(file));
    check_name(&name)?;
    let prefix = runs::new_prefix();
    let mut plan = load(&text, &source, &prefix)?;
    if opts.source == lab::Source::Kube {
        plan.add_control_plane()
            .with_context(|| format!("{source}: cannot run this scenario"))?;
    }
    need_root("`lab up`")?;

    let (removed, problems) = runs::remove_stale();
    for p in &removed {
        eprintln!("enforcer lab: removed the leftovers of an earlier run {p}");
    }
    for p in problems {
        eprintln!("enforcer lab: cleaning an earlier run: {p}");
    }
    if let Some(r) = find_run(&name) {
        bail!(
            "a lab named {name} is already up (run {}): `{} down {name}` first, or give \
             another --name",
            r.prefix.trim_end_matches('-'),
            shown_cmd()
        );
    }

    let dir = runs::run_dir(&prefix);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(SCENARIO_FILE), &text)?;
    runs::write_meta(
        &prefix,
        &runs::Meta::for_run(Some(name.clone()), &plan, "up"),
    )?;
    let log = std::fs::File::create(dir.join(KEEPER_LOG))?;

    let (read_end, write_end) = pipe()?;
    let (exe, mut args) = self_invocation()?;
    args.extend(["keep".into(), prefix.clone().into()]);
    args.extend(forwarded(opts));
    let w = write_end.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: a Ctrl-C at this terminal later does not reach it.
            libc::setsid();
            // The status pipe as descriptor 3, kept across exec.
            if w == STATUS_FD {
                if libc::fcntl(w, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(w, STATUS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut keeper = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            runs::remove(&prefix);
            return Err(anyhow!(e).context(format!("starting {}", exe.display())));
        }
    };
    drop(write_end);
    eprintln!(
        "enforcer lab: starting lab {name} (run {})…",
        prefix.trim_end_matches('-')
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let said = rt.block_on(async {
        let read = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::from(read_end);
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            s
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            s = read => Ok::<Option<String>, anyhow::Error>(Some(s.unwrap_or_default())),
            _ = tokio::signal::ctrl_c() => Ok(None),
            _ = term.recv() => Ok(None),
        }
    })?;
    let fail = |why: String, keeper: &mut std::process::Child| -> Result<i32> {
        // The keeper tears down what it built; whatever remains goes here.
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(keeper.id() as i32, libc::SIGTERM);
        }
        let _ = keeper.wait();
        for p in runs::remove(&prefix) {
            eprintln!("enforcer lab: cleanup: {p}");
        }
        eprintln!("enforcer lab: error: lab {name}: {why}");
        Ok(2)
    };
    match said {
        None => fail("interrupted".into(), &mut keeper),
        Some(s) if s.starts_with("ready") => {
            match output {
                Output::Table => print!("{}", usage(&name, &plan, &dir)),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&view::up_json(&name, &plan, &dir))?
                ),
            }
            Ok(0)
        }
        Some(s) if s.is_empty() => {
            let log = std::fs::read_to_string(dir.join(KEEPER_LOG)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            fail(
                format!(
                    "the keeper exited before the lab was up\n{}",
                    tail.join("\n")
                ),
                &mut keeper,
            )
        }
        Some(s) => fail(
            s.trim_start_matches("error: ").trim_end().to_string(),
            &mut keeper,
        ),
    }
}

/// `pipe2(O_CLOEXEC)`: read end, write end.
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: fresh descriptors, owned from here on.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// This program and the arguments that reach the lab's commands (`lab` under `enforcer`).
fn self_invocation() -> Result<(PathBuf, Vec<OsString>)> {
    let exe = std::env::current_exe().context("finding this program")?;
    let args = if under_lab() {
        vec!["lab".into()]
    } else {
        Vec::new()
    };
    Ok((exe, args))
}

/// The options `up` passes on to its keeper.
fn forwarded(opts: &UpOptions) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "--agent-timeout".into(),
        format!("{}ms", opts.agent_timeout.as_millis()).into(),
    ];
    if let Some(a) = &opts.agent_cmd {
        v.push("--agent-cmd".into());
        v.push(a.clone().into_os_string());
    }
    if opts.verbose {
        v.push("--verbose".into());
    }
    if opts.source == lab::Source::Kube {
        v.extend(["--source".into(), "kube".into()]);
    }
    v
}

/// The keeper's half of the status pipe, when it was started by `up`.
fn status_pipe() -> Option<std::fs::File> {
    // SAFETY: probing and then owning descriptor 3, which `up` set up for us.
    unsafe {
        if libc::fcntl(STATUS_FD, libc::F_GETFD) < 0 {
            return None;
        }
        // Not to be inherited by the agents (`up` would wait for them to close it).
        libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        Some(std::fs::File::from_raw_fd(STATUS_FD))
    }
}

/// `lab keep PREFIX`: the process that holds a lab started by `up`.
pub fn keep(prefix: &str, opts: &RunOptions, enforcer_exe: &Path) -> i32 {
    let mut status = status_pipe();
    let mut say = |msg: &str| {
        if let Some(mut f) = status.take() {
            let _ = f.write_all(msg.as_bytes());
        }
    };
    let prefix = if prefix.ends_with('-') {
        prefix.to_string()
    } else {
        format!("{prefix}-")
    };
    let dir = runs::run_dir(&prefix);
    let prepared = (|| -> Result<(Plan, runs::Meta)> {
        if !runs::is_prefix(&prefix) {
            bail!("{prefix:?} is not a run prefix");
        }
        let text = std::fs::read_to_string(dir.join(SCENARIO_FILE))
            .with_context(|| format!("reading {}", dir.join(SCENARIO_FILE).display()))?;
        let meta = runs::read_meta(&prefix).context("the run has no meta.json")?;
        let source = format!("lab {}", meta.name.as_deref().unwrap_or("?"));
        let mut plan = load(&text, &source, &prefix)?;
        if meta.source.as_deref() == Some("kube") {
            plan.add_control_plane()?;
        }
        Ok((plan, meta))
    })();
    let (plan, meta) = match prepared {
        Ok(x) => x,
        Err(e) => {
            say(&format!("error: {e:#}"));
            eprintln!("enforcer lab keep: error: {e:#}");
            return 2;
        }
    };
    let agent = opts.agent_cmd.as_deref().unwrap_or(enforcer_exe);
    let lab_opts = crate::lab_options(opts);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("error: starting the async runtime: {e}"));
            return 2;
        }
    };
    let mut res = lab::Resources::new(&plan.prefix);
    let result: Result<()> = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let lab = tokio::select! {
            l = lab::build(&plan, agent, &lab_opts, &mut res, &meta) => l?,
            _ = term.recv() => bail!("terminated (SIGTERM) while starting"),
            _ = int.recv() => bail!("interrupted (SIGINT) while starting"),
            _ = hup.recv() => bail!("hung up (SIGHUP) while starting"),
        };
        save_state(&dir, &lab.saved())?;
        // kubectl on the machine reaches the lab's API server through this.
        let _proxy = match lab.api() {
            Some(api) => Some(api.serve_kubectl(&dir.join(KUBECONFIG_FILE)).await?),
            None => None,
        };
        eprintln!(
            "enforcer lab keep: lab {} is up (generation {})",
            meta.name.as_deref().unwrap_or("?"),
            lab.generation
        );
        say("ready\n");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    for a in &mut res.agents {
                        if let Some(st) = a.exited() {
                            let msg = format!(
                                "agent on {} exited ({st}); its pods are no longer enforced\n--- last lines of {} ---\n{}",
                                a.node,
                                a.log.display(),
                                a.log_tail(20)
                            );
                            eprintln!("enforcer lab keep: {msg}");
                            let _ = std::fs::write(dir.join("problems"), msg);
                        }
                    }
                }
            }
        }
        eprintln!("enforcer lab keep: taking the lab down");
        Ok(())
    });
    if let Err(e) = &result {
        say(&format!("error: {e:#}"));
        eprintln!("enforcer lab keep: error: {e:#}");
    }
    crate::shutdown(rt, &mut res);
    if result.is_ok() { 0 } else { 2 }
}

// ---------------------------------------------------------------------------------------------
// exec

/// `lab exec NAME NODE -- ARGS…`: the enforcer in a node's network namespace; its exit status.
pub fn exec(name: &str, node: &str, args: &[OsString], enforcer_exe: &Path) -> i32 {
    match exec_inner(name, node, args, enforcer_exe) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("enforcer lab: error: {e:#}");
            2
        }
    }
}

fn exec_inner(name: &str, node: &str, args: &[OsString], exe: &Path) -> Result<i32> {
    need_root("`lab exec`")?;
    let live = Live::open(name)?;
    let Some(n) = live.plan.nodes.iter().find(|n| n.name == node) else {
        bail!(
            "lab {} has no node {node:?} (nodes: {})",
            live.name(),
            live.plan
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let ns = Netns::open(&n.netns)?;
    let fd = ns.raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("ENFORCER_NODE", &n.name)
        .env(
            "ENFORCER_BPFFS",
            runs::bpffs_dir(&live.plan.prefix).join(&n.name),
        )
        .env("ENFORCER_MANIFESTS", live.dir.join("manifests"))
        .env(
            "ENFORCER_EVENTS_FILE",
            live.node_dir(&n.name).join("events.jsonl"),
        );
    // SAFETY: only an async-signal-safe syscall between fork and exec (setns, not `ip netns
    // exec`, so /sys/fs/bpf stays as it is).
    unsafe {
        cmd.pre_exec(move || netns::enter(fd));
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

// ---------------------------------------------------------------------------------------------
// down and list

/// Stops a run's owner (a keeper or a `lab run`), waits for it to tear down, then removes
/// whatever is left. Returns problems.
pub fn stop_run(r: &RunInfo) -> Vec<String> {
    if let Some(pid) = runs::live_owner(&r.prefix) {
        // SAFETY: signalling the process recorded (pid and start time) as the run's owner.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        // Wait for the process itself, not its record: the owner removes the run folder (and
        // the record with it) while tearing down, before it has exited.
        let started = Instant::now();
        while crate::agent::start_time(pid).is_some() && started.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    runs::remove(&r.prefix)
}

/// `lab down [NAME] [--all]`.
pub fn down(name: Option<&str>, all: bool) -> i32 {
    if !is_root() {
        eprintln!("enforcer lab: error: removing lab runs needs root");
        return 2;
    }
    let targets: Vec<RunInfo> = match (name, all) {
        (Some(n), _) => match find_run(n) {
            Some(r) => vec![r],
            None => {
                eprintln!(
                    "enforcer lab: error: no lab named {n:?} (`{} list` shows the labs)",
                    shown_cmd()
                );
                return 2;
            }
        },
        (None, true) => runs::list(),
        (None, false) => {
            let (removed, problems) = runs::remove_stale();
            for p in &removed {
                println!("removed {}", p.trim_end_matches('-'));
            }
            if removed.is_empty() {
                println!("nothing to remove");
            }
            for p in &problems {
                eprintln!("enforcer lab: {p}");
            }
            return if problems.is_empty() { 0 } else { 2 };
        }
    };
    let mut problems = Vec::new();
    for r in &targets {
        let p = stop_run(r);
        let label = match r.meta.as_ref().and_then(|m| m.name.as_deref()) {
            Some(n) => format!("{n} ({})", r.prefix.trim_end_matches('-')),
            None => r.prefix.trim_end_matches('-').to_string(),
        };
        println!("removed {label}");
        problems.extend(p);
    }
    if targets.is_empty() {
        println!("nothing to remove");
    }
    for p in &problems {
        eprintln!("enforcer lab: {p}");
    }
    if problems.is_empty() { 0 } else { 2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            name_from_file(Path::new("examples/k3s-multi-tenant.yaml")),
            "k3s-multi-tenant"
        );
        assert_eq!(name_from_file(Path::new("My_Lab.v2.yaml")), "my-lab-v2");
        assert_eq!(name_from_file(Path::new("___.yaml")), "lab");
        assert!(check_name("demo").is_ok());
        assert!(check_name("Demo").is_err());
        assert!(check_name("enf-1a2b3c").is_err(), "looks like a run prefix");
        assert!(check_name("-x").is_err());
    }
}
