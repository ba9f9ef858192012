//! `cargo xtask`: prerequisites, the eBPF build, the test suite, the demo and the benchmark.
//!
//! Dependency-light on purpose (std::process, anyhow, clap): it has to build on a fresh
//! machine before anything else is installed.

mod control_plane;
mod setup;
mod util;

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::{
    setup::OnMissing,
    util::{cargo_cmd, run},
};

/// The eBPF crate and its target.
const EBPF_PACKAGE: &str = "enforcer-ebpf";
const EBPF_TARGET: &str = "bpfel-unknown-none";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test, demo and benchmark the enforcer",
    long_about = "Build, test, demo and benchmark the enforcer.\n\n\
                  Every command installs what it needs first (the rust-src component, bpf-linker \
                  built against the toolchain's own LLVM, and for setup/test/demo the Debian \
                  packages the tests use); when everything is there, that check takes a few \
                  tens of milliseconds.",
    after_long_help = "Examples:\n  \
                       cargo xtask test          # the whole test suite (as root)\n  \
                       cargo xtask demo          # the K3s isolation demo on the real datapath\n  \
                       cargo xtask build-ebpf    # just the eBPF object"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the prerequisites (idempotent)
    #[command(
        long_about = "Install the prerequisites, each only if missing, one line per step:\n\n  \
                      a. the rust-src component of the active toolchain (for -Z build-std=core);\n  \
                      b. bpf-linker 0.13.0, built with `cargo install` against the LLVM shared \
                      library that ships with rustc (through an LLVM prefix of symlinks in \
                      $XDG_CACHE_HOME/enforcer/llvm-prefix, default ~/.cache/...; keep it, the \
                      installed linker loads libLLVM from there);\n  \
                      c. the Debian packages providing ip, iptables, nft, ipset, iperf3 and \
                      bpftool (apt-get; needs root);\n  \
                      d. the Kubernetes control plane the kube tests run against: kube-apiserver \
                      and kubectl from k8s.io/kubernetes, etcd and etcdctl from go.etcd.io/etcd, \
                      built with Go (1.26 or newer, not installed by setup) from the modules \
                      pinned in xtask/control-plane/ into \
                      $XDG_CACHE_HOME/enforcer/control-plane/<component>-<version>/bin (default \
                      ~/.cache/...; ENFORCER_CONTROL_PLANE_DIR overrides it); about 15 minutes of \
                      CPU on a fresh machine, nothing when built.",
        after_long_help = "Examples:\n  \
                           cargo xtask setup\n  \
                           cargo xtask setup --skip-packages   # without root: a, b and d"
    )]
    Setup {
        /// Skip the Debian packages (step c)
        #[arg(long)]
        skip_packages: bool,
    },

    /// Build the eBPF object (target/bpfel-unknown-none/release/enforcer-ebpf)
    #[command(
        long_about = "Build the eBPF object: installs rust-src and bpf-linker if missing, then runs\n\n  \
                      RUSTC_BOOTSTRAP=1 cargo build -p enforcer-ebpf --release \
                      --target bpfel-unknown-none -Z build-std=core\n\n\
                      from the workspace root, with the outer RUSTFLAGS-like variables removed \
                      and `-Cdebuginfo=2 -Clink-arg=--btf` as the only rustflags (so the object \
                      carries BTF). CARGO_TARGET_DIR is respected. `cargo build -p enforcer` \
                      embeds the object it leaves in <target>/bpfel-unknown-none/release/.",
        after_long_help = "Examples:\n  \
                           cargo xtask build-ebpf\n  \
                           cargo xtask build-ebpf --debug   # dev profile, .../debug/enforcer-ebpf"
    )]
    BuildEbpf(EbpfArgs),

    /// Run the whole test suite: setup, eBPF build, fmt, clippy, cargo test (needs root)
    #[command(
        long_about = "Run the whole test suite, stage by stage, stopping at the first failure:\n\n  \
                      setup       all prerequisites, Debian packages and the control plane \
                      included\n  \
                      build-ebpf  the eBPF object\n  \
                      fmt         cargo fmt --all --check\n  \
                      clippy      cargo clippy --workspace --exclude enforcer-ebpf --all-targets \
                      -- -D warnings\n  \
                      test        cargo test --workspace --exclude enforcer-ebpf [ARGS]\n\n\
                      Arguments after `--` go to `cargo test`. Without root the privileged tests \
                      (datapath, lab) fail or skip. Ends with the time of each stage and \
                      `all tests passed`.",
        after_long_help = "Examples:\n  \
                           cargo xtask test\n  \
                           cargo xtask test -- -p enforcer-lab\n  \
                           cargo xtask test -- lab -- --nocapture"
    )]
    Test {
        /// Arguments for `cargo test` (after `--`)
        #[arg(last = true)]
        args: Vec<String>,
    },

    /// Run the demo: build everything, then `enforcer lab demo` (needs root)
    #[command(
        long_about = "Run the demo: setup, the eBPF object, `cargo build --release -p enforcer`, \
                      then `target/release/enforcer lab demo [ARGS]` in place of this process (its \
                      exit code is the command's). Arguments after `--` go to `enforcer lab demo`.",
        after_long_help = "Examples:\n  \
                           cargo xtask demo\n  \
                           cargo xtask demo -- --source kube   # through kube-apiserver and kubectl\n  \
                           cargo xtask demo -- --help"
    )]
    Demo {
        /// Arguments for `enforcer lab demo` (after `--`)
        #[arg(last = true)]
        args: Vec<String>,
    },

    /// Run the datapath benchmark (cargo bench -p enforcer --bench datapath)
    #[command(
        long_about = "Run the datapath benchmark: rust-src and bpf-linker if missing, the eBPF \
                      object, then `cargo bench -p enforcer --bench datapath -- [ARGS]`. Arguments \
                      after `--` go to the benchmark.",
        after_long_help = "Examples:\n  \
                           cargo xtask bench\n  \
                           cargo xtask bench -- --help"
    )]
    Bench {
        /// Arguments for the benchmark binary (after `--`)
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(clap::Args, Clone, Copy, Default)]
struct EbpfArgs {
    /// Build with the dev profile instead of release
    #[arg(long)]
    debug: bool,
    /// Do not ask bpf-linker for BTF (-Clink-arg=--btf)
    #[arg(long)]
    no_btf: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup { skip_packages } => cmd_setup(skip_packages),
        Cmd::BuildEbpf(args) => build_ebpf(args).map(|_| ()),
        Cmd::Test { args } => cmd_test(&args),
        Cmd::Demo { args } => cmd_demo(&args),
        Cmd::Bench { args } => cmd_bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn cmd_setup(skip_packages: bool) -> Result<()> {
    setup::rust_src()?;
    setup::bpf_linker()?;
    if skip_packages {
        println!("skipped: packages (--skip-packages)");
    } else {
        setup::packages(OnMissing::Error)?;
    }
    control_plane::setup()
}

/// Builds the eBPF object and returns its path.
fn build_ebpf(args: EbpfArgs) -> Result<PathBuf> {
    setup::rust_src()?;
    let linker_dir = setup::bpf_linker()?;

    let mut cmd = cargo_cmd();
    cmd.args(["build", "-p", EBPF_PACKAGE]);
    if !args.debug {
        cmd.arg("--release");
    }
    cmd.args(["--target", EBPF_TARGET, "-Z", "build-std=core"]);
    for var in setup::RUSTFLAGS_VARS {
        cmd.env_remove(var);
    }
    // `-Z build-std` on the stable toolchain.
    cmd.env("RUSTC_BOOTSTRAP", "1");
    if !args.no_btf {
        // What aya-build passes too: full debug info, from which bpf-linker emits BTF.
        cmd.env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
        );
    }
    // rustc runs `bpf-linker` from PATH.
    if let Some(path) = util::path_with(&linker_dir)? {
        cmd.env("PATH", path);
    }
    run(&mut cmd).context("the eBPF build failed")?;

    let object = ebpf_object(args.debug);
    let len = fs::metadata(&object)
        .with_context(|| format!("the build left no object at {}", object.display()))?
        .len();
    println!("built: {} ({})", object.display(), util::size(len));
    Ok(object)
}

/// `<target>/bpfel-unknown-none/{release,debug}/enforcer-ebpf`.
fn ebpf_object(debug: bool) -> PathBuf {
    util::target_dir()
        .join(EBPF_TARGET)
        .join(if debug { "debug" } else { "release" })
        .join(EBPF_PACKAGE)
}

/// A cargo command for the host crates. When the object is not where enforcer's build script
/// looks by default (a CARGO_TARGET_DIR elsewhere), point it there with ENFORCER_BPF_OBJECT,
/// unless the caller already set that.
fn host_cargo(object: &Path) -> Command {
    let mut cmd = cargo_cmd();
    let default = util::workspace_root()
        .join("target")
        .join(EBPF_TARGET)
        .join("release")
        .join(EBPF_PACKAGE);
    if object != default && std::env::var_os("ENFORCER_BPF_OBJECT").is_none() {
        cmd.env("ENFORCER_BPF_OBJECT", object);
    }
    cmd
}

fn warn_not_root(what: &str) {
    if !util::is_root() {
        println!("warning: not running as root: {what}");
    }
}

/// Stages run in order, timed; the first failure stops them.
struct Stages {
    done: Vec<(&'static str, Duration)>,
    total: usize,
}

impl Stages {
    fn new(total: usize) -> Self {
        Self {
            done: Vec::new(),
            total,
        }
    }

    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        println!();
        println!("==> [{}/{}] {name}", self.done.len() + 1, self.total);
        let start = Instant::now();
        let result = f();
        self.done.push((name, start.elapsed()));
        match result {
            Ok(value) => Ok(value),
            Err(err) => {
                self.summary();
                println!("FAILED: stage `{name}`");
                Err(err.context(format!("stage `{name}` failed")))
            }
        }
    }

    fn summary(&self) {
        println!();
        println!("stage        time");
        for (name, elapsed) in &self.done {
            println!("{name:<12} {:>7.1}s", elapsed.as_secs_f64());
        }
        let total: Duration = self.done.iter().map(|(_, d)| *d).sum();
        println!("{:<12} {:>7.1}s", "total", total.as_secs_f64());
    }
}

fn cmd_test(args: &[String]) -> Result<()> {
    const NOT_ROOT: &str = "the privileged tests (BPF datapath, lab scenarios) will fail or skip";
    warn_not_root(NOT_ROOT);
    let mut stages = Stages::new(5);
    stages.run("setup", || {
        setup::rust_src()?;
        setup::bpf_linker()?;
        setup::packages(OnMissing::Warn)?;
        control_plane::setup()
    })?;
    let object = stages.run("build-ebpf", || build_ebpf(EbpfArgs::default()))?;
    stages.run("fmt", || {
        run(host_cargo(&object).args(["fmt", "--all", "--check"]))
    })?;
    stages.run("clippy", || {
        run(host_cargo(&object).args([
            "clippy",
            "--workspace",
            "--exclude",
            EBPF_PACKAGE,
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    stages.run("test", || {
        run(host_cargo(&object)
            .args(["test", "--workspace", "--exclude", EBPF_PACKAGE])
            .args(args))
    })?;
    stages.summary();
    warn_not_root(NOT_ROOT);
    println!("all tests passed");
    Ok(())
}

fn cmd_demo(args: &[String]) -> Result<()> {
    warn_not_root("the demo needs root (network namespaces, BPF programs)");
    setup::rust_src()?;
    setup::bpf_linker()?;
    setup::packages(OnMissing::Warn)?;
    if wants_kube(args) {
        // The lab runs the real control plane: built once per machine.
        control_plane::setup()?;
    }
    let object = build_ebpf(EbpfArgs::default())?;
    run(host_cargo(&object).args(["build", "--release", "-p", "enforcer"]))?;

    let enforcer = util::target_dir().join("release/enforcer");
    let mut cmd = Command::new(&enforcer);
    cmd.args(["lab", "demo"]).args(args);
    println!("$ {}", util::display(&cmd));
    let err = cmd.exec();
    bail!("could not run {}: {err}", enforcer.display())
}

/// `--source kube` (or `--source=kube`) among the demo's arguments.
fn wants_kube(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "--source" && w[1] == "kube")
        || args.iter().any(|a| a == "--source=kube")
}

fn cmd_bench(args: &[String]) -> Result<()> {
    let object = build_ebpf(EbpfArgs::default())?;
    let mut cmd = host_cargo(&object);
    cmd.args(["bench", "-p", "enforcer", "--bench", "datapath"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    run(&mut cmd)
}
