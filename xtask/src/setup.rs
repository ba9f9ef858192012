//! Prerequisites: the rust-src component, bpf-linker against the toolchain's own LLVM, and the
//! Debian packages the tests use. Every step checks first and only acts when something is
//! missing, so a second run takes a few tens of milliseconds.

use std::{
    env, fs,
    io::Read as _,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{self, display, find_in, home, is_executable, is_root, output, path_dirs, run};

/// The bpf-linker release we install.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM majors that bpf-linker release has a cargo feature (`llvm-N`) for.
const BPF_LINKER_LLVM_MAJORS: &[u32] = &[21, 22, 23];

/// Environment variables of an outer cargo (or the user's shell) that must not reach the
/// cargo we start for a different target or for `cargo install`.
pub const RUSTFLAGS_VARS: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
];

/// Commands the tests run, and the Debian package providing each.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("ipset", "ipset"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
];

/// The toolchain's sysroot (`rustc --print sysroot`).
fn sysroot() -> Result<PathBuf> {
    let rustc = util::rustc();
    output(&rustc, &["--print", "sysroot"])
        .map(PathBuf::from)
        .context("cannot find the Rust toolchain (is rustc in PATH?)")
}

/// Step a: the rust-src component, which `-Z build-std=core` compiles for the BPF target.
pub fn rust_src() -> Result<()> {
    let library = sysroot()?.join("lib/rustlib/src/rust/library");
    if library.join("core").is_dir() {
        println!("ok: rust-src installed");
        return Ok(());
    }
    println!("installing: rust-src (rustup component add rust-src) ...");
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add", "rust-src"]);
    run(&mut cmd).context(
        "could not add the rust-src component; with a toolchain not managed by rustup, \
         install its rust-src (the standard library sources) by hand",
    )?;
    if !library.join("core").is_dir() {
        bail!(
            "rustup added rust-src but {} is still missing (does rustup manage the toolchain \
             whose rustc is first in PATH?)",
            library.display()
        );
    }
    println!("ok: rust-src installed");
    Ok(())
}

/// The LLVM major version rustc was built with (`rustc -vV`, line `LLVM version: 22.1.2`).
fn rustc_llvm_major() -> Result<u32> {
    let rustc = util::rustc();
    let verbose = output(&rustc, &["-vV"])?;
    let version = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(str::trim)
        .context("`rustc -vV` prints no `LLVM version:` line")?;
    version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM major of `{version}` (rustc -vV)"))
}

/// Where `cargo install` puts binaries: `$CARGO_INSTALL_ROOT/bin`, `$CARGO_HOME/bin` or
/// `~/.cargo/bin`.
fn install_bin_dir() -> Option<PathBuf> {
    let var = |name| {
        env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("CARGO_INSTALL_ROOT")
        .or_else(|| var("CARGO_HOME"))
        .or_else(|| home().map(|h| h.join(".cargo")))
        .map(|root| root.join("bin"))
}

/// Directories where a bpf-linker may be: PATH, then cargo's install directories.
fn bpf_linker_candidates() -> Vec<PathBuf> {
    let mut dirs = path_dirs();
    let var = |name| {
        env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let extra = [
        var("CARGO_INSTALL_ROOT").map(|r| r.join("bin")),
        var("CARGO_HOME").map(|r| r.join("bin")),
        if var("CARGO_HOME").is_none() {
            home().map(|h| h.join(".cargo/bin"))
        } else {
            None
        },
    ];
    for dir in extra.into_iter().flatten() {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Step b: a bpf-linker that runs. Returns the directory holding it (to put in front of PATH
/// for the eBPF build, since rustc finds the linker through PATH).
pub fn bpf_linker() -> Result<PathBuf> {
    let mut broken = Vec::new();
    for dir in bpf_linker_candidates() {
        let bin = dir.join("bpf-linker");
        if !is_executable(&bin) {
            continue;
        }
        match output(&bin, &["--version"]) {
            Ok(version) => {
                println!("ok: {version} ({})", bin.display());
                return Ok(dir);
            }
            Err(err) => broken.push(format!("{}: {err:#}", bin.display())),
        }
    }
    for b in &broken {
        println!("note: a bpf-linker that does not run: {b}");
    }
    install_bpf_linker()
}

/// Builds bpf-linker against the LLVM shared library that ships with the Rust toolchain
/// (`$(rustc --print sysroot)/lib/libLLVM.so.*`), so no system LLVM is needed and the linker
/// reads exactly the bitcode rustc writes.
fn install_bpf_linker() -> Result<PathBuf> {
    let major = rustc_llvm_major()?;
    if !BPF_LINKER_LLVM_MAJORS.contains(&major) {
        bail!(
            "rustc is built with LLVM {major}, but bpf-linker {BPF_LINKER_VERSION} only supports \
             LLVM {BPF_LINKER_LLVM_MAJORS:?}; use a Rust toolchain with one of those, or \
             install a matching bpf-linker yourself (it must be in PATH or ~/.cargo/bin)"
        );
    }
    let prefix = llvm_prefix()?;
    println!(
        "installing: bpf-linker {BPF_LINKER_VERSION} (built against rustc's LLVM {major}, \
         LLVM_PREFIX={}; takes a few minutes) ...",
        prefix.display()
    );
    let install = |locked: bool| {
        let mut cmd = Command::new(util::cargo());
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION]);
        if locked {
            cmd.arg("--locked");
        }
        cmd.args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix);
        for var in RUSTFLAGS_VARS {
            cmd.env_remove(var);
        }
        run(&mut cmd)
    };
    if let Err(err) = install(true) {
        println!("note: {err:#}; retrying without --locked");
        install(false).context("could not install bpf-linker")?;
    }
    let dir = install_bin_dir().context("cannot tell where cargo installs binaries")?;
    let bin = dir.join("bpf-linker");
    let version = output(&bin, &["--version"]).with_context(|| {
        format!(
            "the bpf-linker just installed ({}) does not run",
            bin.display()
        )
    })?;
    println!("ok: {version} installed ({})", bin.display());
    Ok(dir)
}

/// `$XDG_CACHE_HOME/enforcer/llvm-prefix` (or `~/.cache/...`): an LLVM "installation" made of
/// the toolchain's libLLVM, which bpf-linker's build script links against (`LLVM_PREFIX/lib`)
/// and records as the binary's runpath. So this directory must stay after the install.
///
/// `bin/llvm-config` is an empty executable: with `LLVM_PREFIX` set the build script never
/// runs it, it only has to exist. Symlinks for other toolchains' libLLVM are left alone, as
/// bpf-linkers built earlier may still load them.
fn llvm_prefix() -> Result<PathBuf> {
    let cache = env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home().map(|h| h.join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let prefix = cache.join("enforcer/llvm-prefix");

    let lib_dir = sysroot()?.join("lib");
    let real = toolchain_libllvm(&lib_dir)?;
    let soname = real
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();

    let bin = prefix.join("bin");
    let lib = prefix.join("lib");
    for dir in [&bin, &lib] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let llvm_config = bin.join("llvm-config");
    if !llvm_config.is_file() {
        fs::write(&llvm_config, b"")
            .with_context(|| format!("cannot create {}", llvm_config.display()))?;
    }
    fs::set_permissions(&llvm_config, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", llvm_config.display()))?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = lib.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == real) {
            continue;
        }
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
        }
        symlink(&real, &link)
            .with_context(|| format!("cannot link {} -> {}", link.display(), real.display()))?;
    }
    Ok(prefix)
}

/// The toolchain's real libLLVM ELF, `libLLVM.so.<version>-rust-...`. (The
/// `libLLVM-N-rust-*.so` next to it is a linker script naming that file, not the library.)
fn toolchain_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .filter(|p| is_elf(p))
        .collect();
    found.sort();
    match found.pop() {
        Some(real) => Ok(real),
        None => bail!(
            "the Rust toolchain has no shared LLVM library (no ELF file {}/libLLVM.so.*), so \
             bpf-linker cannot be built against it; install bpf-linker yourself \
             (https://github.com/aya-rs/bpf-linker) with an LLVM of the same major as rustc",
            lib_dir.display()
        ),
    }
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// What to do when Debian packages are missing and cannot be installed (not root, no apt).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    /// Fail.
    Error,
    /// Print a warning and go on (the tests that need them fail or skip later).
    Warn,
}

/// Step c: the commands the tests run, from Debian packages.
pub fn packages(on_missing: OnMissing) -> Result<()> {
    // Root's PATH has the sbin directories, a user's often not; look there too.
    let mut dirs = path_dirs();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    let missing = || -> Vec<(&str, &str)> {
        PACKAGES
            .iter()
            .copied()
            .filter(|(cmd, _)| find_in(cmd, &dirs).is_none())
            .collect()
    };
    let describe = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(cmd, pkg)| {
                if cmd == pkg {
                    pkg.to_string()
                } else {
                    format!("{pkg} ({cmd})")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all = describe(PACKAGES);
    let todo = missing();
    if todo.is_empty() {
        println!("ok: packages {all}");
        return Ok(());
    }
    let names: Vec<&str> = todo.iter().map(|(_, pkg)| *pkg).collect();
    let apt_get = find_in("apt-get", &dirs);
    let problem = match (&apt_get, is_root()) {
        (None, _) => Some(format!(
            "missing packages: {}; there is no apt-get here, install them with the system's \
             package manager",
            describe(&todo)
        )),
        (Some(_), false) => Some(format!(
            "missing packages: {}; installing them needs root: \
             sudo apt-get install -y --no-install-recommends {}",
            describe(&todo),
            names.join(" ")
        )),
        (Some(_), true) => None,
    };
    if let Some(problem) = problem {
        match on_missing {
            OnMissing::Error => bail!(problem),
            OnMissing::Warn => {
                println!("warning: {problem}");
                return Ok(());
            }
        }
    }
    let apt_get = apt_get.expect("checked above");
    println!("installing: {} (apt-get install) ...", names.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new(&apt_get);
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&names);
    if let Err(err) = run(&mut install) {
        println!("note: {err:#}; updating the package lists and retrying");
        run(&mut apt(&["update"])).context("apt-get update failed")?;
        run(&mut install).with_context(|| format!("could not install {}", names.join(" ")))?;
    }
    let still = missing();
    if !still.is_empty() {
        bail!(
            "`{}` succeeded but these commands are still missing: {}",
            display(&install),
            describe(&still)
        );
    }
    println!("ok: packages {all}");
    Ok(())
}
