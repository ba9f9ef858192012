//! Step d of setup: the Kubernetes control plane the kube tests run against (kube-apiserver and
//! kubectl from `k8s.io/kubernetes`, etcd and etcdctl from `go.etcd.io/etcd`), built from
//! source with Go into a per-machine cache, once. The pins are the Go modules committed in
//! `xtask/control-plane/{kubernetes,etcd}/` (go.mod and go.sum, built with `-mod=readonly`,
//! so nothing but the modules they name, at the sums they record, is downloaded); the cache
//! folder and the version check follow from them (`control_plane::pins`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use control_plane::pins::{self, Binary, Component};

use crate::util::{self, find_in, path_dirs, run};

/// How to get Go when it is missing or too old.
const GET_GO: &str = "install Go from https://go.dev/dl/ (the linux-amd64 tarball unpacked \
                      into /usr/local, then /usr/local/go/bin in PATH), or a distribution \
                      package of that version or newer";

/// Builds every binary of the control plane that is missing or not of the pinned version.
pub fn setup() -> Result<()> {
    for component in pins::COMPONENTS {
        component_setup(component)?;
    }
    Ok(())
}

fn component_setup(c: &Component) -> Result<()> {
    let version = c.version();
    let dir = c
        .bin_dir()
        .context("cannot tell where to build the control plane: set HOME or XDG_CACHE_HOME")?;
    let mut todo: Vec<&Binary> = Vec::new();
    for b in c.binaries {
        let path = dir.join(b.name);
        match installed(&path, b, version) {
            Ok(()) => println!("ok: {} {version} ({})", b.name, path.display()),
            Err(why) => {
                println!("missing: {} {version}: {why}", b.name);
                todo.push(b);
            }
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let go = go()?;
    let module_dir = util::workspace_root()
        .join("xtask/control-plane")
        .join(c.folder);
    let work = dir.join(format!(".building-{}", std::process::id()));
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let result = build(&go, c, version, &todo, &module_dir, &work, &dir);
    let _ = fs::remove_dir_all(&work);
    result
}

fn build(
    go: &Path,
    c: &Component,
    version: &str,
    todo: &[&Binary],
    module_dir: &Path,
    work: &Path,
    dir: &Path,
) -> Result<()> {
    println!(
        "building: {} {version} with Go from the modules pinned in xtask/control-plane/{} \
         (go.mod, go.sum; {}) ...",
        todo.iter().map(|b| b.name).collect::<Vec<_>>().join(", "),
        c.folder,
        match c.name {
            "kubernetes" => "about 14 minutes of CPU on a fresh machine",
            _ => "about a minute of CPU on a fresh machine",
        }
    );
    for b in todo {
        let start = Instant::now();
        let out = work.join(b.name);
        let mut cmd = Command::new(go);
        cmd.current_dir(module_dir)
            // The go.mod's Go, never a downloaded toolchain; the committed go.mod and go.sum
            // as they are; no go.work of the user's.
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=readonly")
            .env("GOWORK", "off")
            .arg("build")
            .arg("-o")
            .arg(&out);
        let ldflags = ldflags(c, version);
        if !ldflags.is_empty() {
            cmd.arg(format!("-ldflags={ldflags}"));
        }
        cmd.arg(b.package);
        run(&mut cmd).with_context(|| format!("could not build {}", b.name))?;
        installed(&out, b, version).with_context(|| format!("the {} just built", b.name))?;
        let dest = dir.join(b.name);
        fs::rename(&out, &dest)
            .with_context(|| format!("cannot move {} to {}", out.display(), dest.display()))?;
        println!(
            "built: {} {version} in {} ({})",
            b.name,
            minutes(start.elapsed()),
            dest.display()
        );
    }
    Ok(())
}

/// The version stamp a release build of Kubernetes sets (hack/lib/version.sh), without which
/// the binaries say `v0.0.0-master`; etcd's version is a constant of its source.
fn ldflags(c: &Component, version: &str) -> String {
    if c.name != "kubernetes" {
        return String::new();
    }
    let mut parts = version.trim_start_matches('v').split('.');
    let (major, minor) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut flags = Vec::new();
    for pkg in [
        "k8s.io/component-base/version",
        "k8s.io/client-go/pkg/version",
    ] {
        for (var, value) in [
            ("gitVersion", version),
            ("gitMajor", major),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        ] {
            flags.push(format!("-X {pkg}.{var}={value}"));
        }
    }
    flags.join(" ")
}

/// Ok when `path` is an executable that says it is `version`; else why not.
fn installed(path: &Path, b: &Binary, version: &str) -> Result<()> {
    if !pins::is_executable(path) {
        bail!("no {}", path.display());
    }
    let said = util::output(path, b.version_args)?;
    let want = b.version_line(version);
    if !said.lines().any(|l| l.trim() == want) {
        bail!(
            "{} says {:?}, not {want:?}",
            path.display(),
            said.lines().next().unwrap_or("")
        );
    }
    Ok(())
}

/// The `go` command (PATH, then /usr/local/go/bin), of at least the version the go.mods ask.
fn go() -> Result<PathBuf> {
    let mut dirs = path_dirs();
    dirs.push(PathBuf::from("/usr/local/go/bin"));
    let go = find_go(&dirs)?;
    println!(
        "ok: {} ({})",
        util::output(&go, &["version"])?,
        go.display()
    );
    Ok(go)
}

/// The first `go` in `dirs`, if it is new enough.
fn find_go(dirs: &[PathBuf]) -> Result<PathBuf> {
    let Some(go) = find_in("go", dirs) else {
        bail!(
            "Go is missing: kube-apiserver, kubectl and etcd are built from source with Go {} \
             or newer; {GET_GO}",
            required_go()
        );
    };
    let said = util::output(&go, &["version"])?;
    let have = said
        .split_whitespace()
        .find_map(|w| w.strip_prefix("go").and_then(parse_version))
        .with_context(|| {
            format!(
                "cannot read the version in `{said}` ({} version)",
                go.display()
            )
        })?;
    let want = required_go();
    if have < parse_version(&want).unwrap_or_default() {
        bail!(
            "{} is too old ({said}): the control plane needs Go {want} or newer; {GET_GO}",
            go.display()
        );
    }
    Ok(go)
}

/// The newest `go` directive of the components' go.mods.
fn required_go() -> String {
    pins::COMPONENTS
        .iter()
        .filter_map(|c| go_directive(c.go_mod))
        .max_by_key(|v| parse_version(v))
        .unwrap_or("1.26.0")
        .to_string()
}

/// The `go 1.N.M` line of a go.mod.
fn go_directive(go_mod: &str) -> Option<&str> {
    go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("go "))
        .map(str::trim)
}

/// `1.26.8` -> (1, 26, 8); `1.26` -> (1, 26, 0); `1.27rc1` -> (1, 27, 0).
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut nums = v.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
    });
    let major = nums.next()?.ok()?;
    let minor = nums.next()?.ok()?;
    let patch = nums.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions() {
        assert_eq!(parse_version("1.26.8"), Some((1, 26, 8)));
        assert_eq!(parse_version("1.26"), Some((1, 26, 0)));
        assert_eq!(parse_version("1.27rc1"), Some((1, 27, 0)));
        assert_eq!(parse_version("devel"), None);
        assert!(parse_version("1.26.10") > parse_version("1.26.9"));
        assert_eq!(go_directive("module x\n\ngo 1.26.0\n"), Some("1.26.0"));
        assert_eq!(required_go(), "1.26.0");
    }

    #[test]
    fn kubernetes_is_stamped_with_its_version_and_etcd_is_not() {
        let k = ldflags(&pins::KUBERNETES, "v1.37.2");
        assert!(
            k.contains("-X k8s.io/component-base/version.gitVersion=v1.37.2"),
            "{k}"
        );
        assert!(
            k.contains("-X k8s.io/component-base/version.gitMinor=37"),
            "{k}"
        );
        assert!(
            k.contains("-X k8s.io/client-go/pkg/version.gitMajor=1"),
            "{k}"
        );
        assert_eq!(ldflags(&pins::ETCD, "v3.7.3"), "");
    }

    /// A folder of fake executables: `name` printing `text`.
    struct Fakes(PathBuf);

    impl Fakes {
        fn new(tag: &str) -> Fakes {
            let dir = std::env::temp_dir().join(format!("xtask-cp-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Fakes(dir)
        }

        fn add(&self, name: &str, text: &str) -> PathBuf {
            use std::os::unix::fs::PermissionsExt as _;
            let path = self.0.join(name);
            fs::write(&path, format!("#!/bin/sh\nprintf '%s\\n' '{text}'\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            path
        }
    }

    impl Drop for Fakes {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_binary_counts_as_built_only_when_it_reports_the_pinned_version() {
        let fakes = Fakes::new("installed");
        let apiserver = &pins::KUBERNETES.binaries[0];
        let etcd = &pins::ETCD.binaries[0];
        let good = fakes.add("good", "Kubernetes v1.37.2");
        installed(&good, apiserver, "v1.37.2").unwrap();
        // What `go build` without the version stamp gives.
        let unstamped = fakes.add("unstamped", "Kubernetes v0.0.0-master+$Format:%H$");
        let err = installed(&unstamped, apiserver, "v1.37.2").unwrap_err();
        assert!(
            format!("{err:#}").ends_with(
                "unstamped says \"Kubernetes v0.0.0-master+$Format:%H$\", not \"Kubernetes v1.37.2\""
            ),
            "{err:#}"
        );
        let older = fakes.add("older", "etcd Version: 3.7.2");
        assert!(installed(&older, etcd, "v3.7.3").is_err());
        assert!(installed(&older, etcd, "v3.7.2").is_ok());
        let err = installed(&fakes.0.join("absent"), etcd, "v3.7.3").unwrap_err();
        assert!(format!("{err:#}").starts_with("no /"), "{err:#}");
    }

    #[test]
    fn go_missing_or_too_old_says_how_to_get_it() {
        let fakes = Fakes::new("go");
        let err = find_go(std::slice::from_ref(&fakes.0)).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.starts_with("Go is missing: kube-apiserver, kubectl and etcd are built from source with Go 1.26.0 or newer; install Go from"),
            "{err}"
        );
        fakes.add("go", "go version go1.25.4 linux/amd64");
        let err = format!("{:#}", find_go(std::slice::from_ref(&fakes.0)).unwrap_err());
        assert!(err.contains("is too old (go version go1.25.4 linux/amd64): the control plane needs Go 1.26.0 or newer; install Go from"), "{err}");
        fakes.add("go", "go version go1.26.0 linux/amd64");
        assert_eq!(
            find_go(std::slice::from_ref(&fakes.0)).unwrap(),
            fakes.0.join("go")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(minutes(Duration::from_millis(7_250)), "7.2s");
        assert_eq!(minutes(Duration::from_secs(725)), "12m05s");
    }
}
