//! Processes, commands and files: the I/O edge of the harness, and the sweep of what a killed
//! test left behind.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Error, io};

/// SIGTERM, then SIGKILL if it has not exited within `grace`; reaped either way.
pub(crate) fn terminate(child: &mut Child, grace: Duration) {
    // SAFETY: kill(2) on our own child's pid, which is not reaped before the wait below.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The first number after `"key":` in a JSON text.
pub(crate) fn json_number(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

pub(crate) fn write(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    fs::write(path, text).map_err(io(format!("writing {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", path.display())))
}

/// Runs a command; its stdout if it succeeds.
pub(crate) fn output(cmd: &mut Command) -> Result<String, Error> {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.output().map_err(io(format!("running {command}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn sh(args: &[&str]) -> Result<(), Error> {
    output(Command::new(args[0]).args(&args[1..])).map(drop)
}

/// The last `lines` lines of a file (at most its last 64 KiB).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return format!("(no {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let mut bytes = Vec::new();
    if f.read_to_end(&mut bytes).is_ok() {
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
/// The name of every namespace and folder a control plane makes: `enf-cp-<pid>-<n>`, the pid
/// being its owner's.
pub(crate) const PREFIX: &str = "enf-cp-";

/// The owner's pid in a name `enf-cp-<pid>-<n>`.
fn owner(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(PREFIX)?.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Removes what the control planes of processes that no longer run left behind (a test killed
/// before its drop; the processes themselves died with it): their namespaces, with anything
/// still in them, and their folders.
pub fn sweep_stale() {
    let stale =
        |name: &str| owner(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    for entry in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !stale(&name) {
            continue;
        }
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<libc::pid_t>().ok())
            {
                // SAFETY: kill(2) has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
    }
    for entry in fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if stale(&entry.file_name().to_string_lossy()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_their_owners() {
        assert_eq!(owner("enf-cp-4242-0"), Some(4242));
        assert_eq!(owner("enf-cp-4242-17"), Some(4242));
        assert_eq!(owner("enf-cp-4242"), None);
        assert_eq!(owner("enf-cp-x-1"), None);
        assert_eq!(owner("enf-agent-4242-kube-node"), None);
    }

    #[test]
    fn numbers_in_etcdctl_json() {
        let status = r#"[{"Endpoint":"http://127.0.0.1:2379","Status":{"header":{"cluster_id":1,"member_id":2,"revision":413,"raft_term":2},"version":"3.7.3"}}]"#;
        assert_eq!(json_number(status, "revision"), Some(413));
        assert_eq!(json_number(r#"{"revision": 7}"#, "revision"), Some(7));
        assert_eq!(json_number(status, "absent"), None);
    }
}
