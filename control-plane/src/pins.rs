//! The pinned releases of the control plane and where their binaries live.
//!
//! The pins are the committed Go modules `cargo xtask setup` builds from
//! (`xtask/control-plane/{kubernetes,etcd}/go.mod`, with their go.sum): the version of a
//! component is the one its go.mod requires, so updating a pin is `go get` there, and the
//! cache folder, the version check and the harness follow. Std only: xtask uses this module
//! without the harness.

use std::env;
use std::path::{Path, PathBuf};

/// Overrides the folder of every binary (all four in one folder), e.g. binaries built by hand.
pub const DIR_VAR: &str = "ENFORCER_CONTROL_PLANE_DIR";

/// One binary of a component: its name, the Go package it is built from, and how it says its
/// version.
#[derive(Debug)]
pub struct Binary {
    pub name: &'static str,
    pub package: &'static str,
    /// Arguments that make it print its version.
    pub version_args: &'static [&'static str],
    /// What that output contains for the pinned version, with `{}` for the version (as go.mod
    /// spells it, `v` included) or `{#}` for it without the `v`.
    version_line: &'static str,
}

impl Binary {
    /// The text `version_args`' output contains when the binary is of `version`.
    pub fn version_line(&self, version: &str) -> String {
        self.version_line
            .replace("{#}", version.trim_start_matches('v'))
            .replace("{}", version)
    }
}

/// A Go module built by setup: the folder of its go.mod and the binaries it yields.
#[derive(Debug)]
pub struct Component {
    /// Its name in the cache folder and in setup's output.
    pub name: &'static str,
    /// The module whose required version is the pin.
    pub module: &'static str,
    /// Its go.mod, compiled in.
    pub go_mod: &'static str,
    /// Its folder under `xtask/control-plane/`.
    pub folder: &'static str,
    pub binaries: &'static [Binary],
}

pub const KUBERNETES: Component = Component {
    name: "kubernetes",
    module: "k8s.io/kubernetes",
    go_mod: include_str!("../../xtask/control-plane/kubernetes/go.mod"),
    folder: "kubernetes",
    binaries: &[
        Binary {
            name: "kube-apiserver",
            package: "k8s.io/kubernetes/cmd/kube-apiserver",
            version_args: &["--version"],
            version_line: "Kubernetes {}",
        },
        Binary {
            name: "kubectl",
            package: "k8s.io/kubernetes/cmd/kubectl",
            version_args: &["version", "--client"],
            version_line: "Client Version: {}",
        },
    ],
};

pub const ETCD: Component = Component {
    name: "etcd",
    module: "go.etcd.io/etcd/server/v3",
    go_mod: include_str!("../../xtask/control-plane/etcd/go.mod"),
    folder: "etcd",
    binaries: &[
        Binary {
            name: "etcd",
            package: "go.etcd.io/etcd/server/v3",
            version_args: &["--version"],
            version_line: "etcd Version: {#}",
        },
        Binary {
            name: "etcdctl",
            package: "go.etcd.io/etcd/etcdctl/v3",
            version_args: &["version"],
            version_line: "etcdctl version: {#}",
        },
    ],
};

pub const COMPONENTS: &[&Component] = &[&KUBERNETES, &ETCD];

impl Component {
    /// The pinned version: what its go.mod requires of `module`.
    pub fn version(&self) -> &'static str {
        required_version(self.go_mod, self.module).unwrap_or_else(|| {
            panic!(
                "xtask/control-plane/{}/go.mod requires no version of {}",
                self.folder, self.module
            )
        })
    }

    /// Where its binaries are: `$ENFORCER_CONTROL_PLANE_DIR` if set, else
    /// `$XDG_CACHE_HOME/enforcer/control-plane/<name>-<version>/bin` (`~/.cache/...`).
    pub fn bin_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = env::var_os(DIR_VAR).filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(dir));
        }
        Some(
            cache_dir()?
                .join("enforcer/control-plane")
                .join(format!("{}-{}", self.name, self.version()))
                .join("bin"),
        )
    }

    /// The binary named `name` of this component, in `bin_dir`.
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        Some(self.bin_dir()?.join(name))
    }
}

/// `$XDG_CACHE_HOME` (absolute), else `$HOME/.cache`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |name| {
        env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
}

/// The version of `module` on a `require` line of a go.mod (in a block or alone).
pub fn required_version<'a>(go_mod: &'a str, module: &str) -> Option<&'a str> {
    let mut in_block = false;
    for line in go_mod.lines() {
        let line = line.split("//").next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let first = words.next();
        let spec: Vec<&str> = match first {
            Some("require") if line.ends_with('(') => {
                in_block = true;
                continue;
            }
            Some(")") => {
                in_block = false;
                continue;
            }
            Some("require") => words.collect(),
            Some(_) if in_block => line.split_whitespace().collect(),
            _ => continue,
        };
        if let [m, v] = spec[..]
            && m == module
        {
            return Some(v);
        }
    }
    None
}

/// Whether `path` is an executable file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pins_are_read_from_the_committed_go_mods() {
        // The committed modules: a change of pin is a change of go.mod.
        assert!(
            KUBERNETES.version().starts_with("v1."),
            "{}",
            KUBERNETES.version()
        );
        assert!(ETCD.version().starts_with("v3."), "{}", ETCD.version());
        // The staging modules are replaced by the release matching k8s.io/kubernetes
        // (v1.N.M -> v0.N.M), or the build mixes two releases.
        let staging = KUBERNETES.version().replacen("v1.", "v0.", 1);
        let replaces: Vec<&str> = KUBERNETES
            .go_mod
            .lines()
            .filter(|l| l.starts_with("replace k8s.io/"))
            .collect();
        assert!(replaces.len() > 20, "{replaces:?}");
        for r in replaces {
            assert!(r.ends_with(&format!(" {staging}")), "{r} (want {staging})");
        }
        // etcdctl comes from the same release as the server.
        assert_eq!(
            required_version(ETCD.go_mod, "go.etcd.io/etcd/etcdctl/v3"),
            Some(ETCD.version())
        );
    }

    #[test]
    fn require_lines_alone_and_in_blocks() {
        let m = "module x\n\ngo 1.26.0\n\nrequire a.io/b v1.2.3\n\nrequire (\n\tc.io/d v0.1.0 // indirect\n\te.io/f v2.0.0\n)\n\nreplace c.io/d => c.io/d v0.9.9\n";
        assert_eq!(required_version(m, "a.io/b"), Some("v1.2.3"));
        assert_eq!(required_version(m, "c.io/d"), Some("v0.1.0"));
        assert_eq!(required_version(m, "e.io/f"), Some("v2.0.0"));
        assert_eq!(required_version(m, "x"), None);
        assert_eq!(required_version(m, "g.io/h"), None);
    }

    #[test]
    fn version_lines() {
        assert_eq!(
            KUBERNETES.binaries[0].version_line("v1.37.2"),
            "Kubernetes v1.37.2"
        );
        assert_eq!(
            ETCD.binaries[0].version_line("v3.7.3"),
            "etcd Version: 3.7.3"
        );
    }
}
