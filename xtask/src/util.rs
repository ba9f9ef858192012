//! Small helpers: workspace paths, running commands, looking things up on disk.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (or `CARGO_BUILD_TARGET_DIR`) if set, relative
/// paths taken from the workspace root, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .iter()
        .filter_map(env::var_os)
        .find(|v| !v.is_empty())
        .map(|dir| root.join(dir))
        .unwrap_or_else(|| root.join("target"))
}

/// The cargo that runs us (`$CARGO`, set by `cargo run`), else `cargo` from PATH.
pub fn cargo() -> OsString {
    env::var_os("CARGO")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "cargo".into())
}

/// `$RUSTC` if set, else `rustc` from PATH (the rustup proxy honours `RUSTUP_TOOLCHAIN`, which
/// cargo's proxy has set, so this is the toolchain that builds the workspace).
pub fn rustc() -> OsString {
    env::var_os("RUSTC")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "rustc".into())
}

/// A cargo command run from the workspace root.
pub fn cargo_cmd() -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root());
    cmd
}

/// The command as a shell would show it (environment assignments first).
pub fn display(cmd: &Command) -> String {
    let mut out = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            out.push_str(&format!(
                "{}={} ",
                key.to_string_lossy(),
                quote(value.to_string_lossy().as_ref())
            ));
        }
    }
    out.push_str(&cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&quote(arg.to_string_lossy().as_ref()));
    }
    out
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else if s.contains('\x1f') {
        // Bash's $'...', for CARGO_ENCODED_RUSTFLAGS' separator.
        format!(
            "$'{}'",
            s.replace('\\', r"\\")
                .replace('\'', r"\'")
                .replace('\x1f', r"\x1f")
        )
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a command with inherited stdio, echoing it first; an error if it cannot start or exits
/// non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    println!("$ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its trimmed stdout if it exits 0.
pub fn output(program: impl AsRef<OsStr>, args: &[&str]) -> Result<String> {
    let program = program.as_ref();
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("could not run `{}`", program.to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.to_string_lossy(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `path` is a regular file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directories of `$PATH`.
pub fn path_dirs() -> Vec<PathBuf> {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// The first executable `name` in `dirs`.
pub fn find_in(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p))
}

/// `$HOME`.
pub fn home() -> Option<PathBuf> {
    env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether we run with effective uid 0 (read from /proc, so no libc dependency).
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `PATH` with `dir` in front, or `None` when `dir` is in `PATH` already.
pub fn path_with(dir: &Path) -> Result<Option<OsString>> {
    let mut dirs = path_dirs();
    if dirs.iter().any(|d| d == dir) {
        return Ok(None);
    }
    dirs.insert(0, dir.to_path_buf());
    env::join_paths(dirs).context("PATH").map(Some)
}

/// A human size: bytes, with KiB for larger files.
pub fn size(bytes: u64) -> String {
    if bytes >= 1024 {
        format!("{bytes} bytes, {:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} bytes")
    }
}
