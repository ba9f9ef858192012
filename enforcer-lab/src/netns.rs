//! Network namespaces: creating the lab's (with `ip -batch`, a handful of processes for the
//! whole lab), entering one from a short-lived thread, and deleting them.
//!
//! Layout, routed-CNI style (as Calico does it):
//! - node namespace: the host side of every local pod's veth (`lxc…`, MAC ee:ee:ee:ee:ee:ee,
//!   IPv6 link-local fe80::1), one host route per pod address through it, forwarding on.
//! - pod namespace: `eth0` with the pod's addresses as /32 and /128 (no DAD); the gateway
//!   169.254.1.1 (and fe80::1) is a permanent neighbour entry for the host veth's MAC, so no
//!   ARP answer is needed from a node that (by the lab's safety rule) has no default route;
//!   routes via the gateway go only to the lab's own addresses. No namespace has a default
//!   route, so no lab packet can reach a real network.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::io::AsyncWriteExt;

use crate::plan::Plan;

/// The gateway every pod routes through.
pub const GATEWAY_V4: &str = "169.254.1.1";
pub const GATEWAY_V6: &str = "fe80::1";
/// The MAC of every host-side veth (Calico uses the same one).
pub const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";

/// An open network namespace.
#[derive(Clone, Debug)]
pub struct Netns {
    pub name: String,
    fd: Arc<OwnedFd>,
}

impl Netns {
    pub fn open(name: &str) -> Result<Netns> {
        let path = Path::new("/run/netns").join(name);
        let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Netns {
            name: name.to_string(),
            fd: Arc::new(f.into()),
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Runs `f` on a new thread that has entered this namespace. Sockets made there stay in
    /// the namespace after the thread ends; the thread never returns to another namespace, so
    /// no thread of the process is ever left in the wrong one.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let fd = self.fd.clone();
        let name = self.name.clone();
        std::thread::Builder::new()
            .name("lab-netns".into())
            .spawn(move || {
                enter(fd.as_raw_fd()).with_context(|| format!("entering netns {name}"))?;
                f()
            })
            .context("spawning a thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in netns {} panicked", self.name))?
    }
}

/// setns(2) into a network namespace: for this thread, or in a child before exec.
pub fn enter(fd: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on a file descriptor we own.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes a sysctl of the calling thread's network namespace.
pub fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("setting {key}={value}"))
}

/// Runs `ip [-n NS] -batch -` with these lines.
pub async fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("running `ip` (install iproute2)")?;
    let mut stdin = child.stdin.take().context("ip stdin")?;
    let text = lines.join("\n") + "\n";
    stdin
        .write_all(text.as_bytes())
        .await
        .context("writing to ip")?;
    drop(stdin);
    let out = child.wait_with_output().await.context("waiting for ip")?;
    if !out.status.success() {
        bail!(
            "`ip{} -batch` failed: {}",
            netns.map(|n| format!(" -n {n}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn host_prefix(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Creates the namespaces and links of `plan`. `created` receives each namespace name before
/// it is created, so a failure half-way still lets the caller delete what exists.
pub async fn build(plan: &Plan, created: &mut Vec<String>) -> Result<()> {
    // 1. Namespaces and veths, from the root namespace.
    let mut root = Vec::new();
    for n in &plan.nodes {
        created.push(n.netns.clone());
        root.push(format!("netns add {}", n.netns));
    }
    for p in &plan.pods {
        created.push(p.netns.clone());
        root.push(format!("netns add {}", p.netns));
    }
    for p in &plan.pods {
        root.push(format!(
            "link add {} address {HOST_MAC} netns {} type veth peer name eth0 netns {}",
            p.host_if, plan.nodes[p.node].netns, p.netns
        ));
    }
    ip_batch(None, &root).await?;

    // 2. Sysctls (no DAD on pod interfaces, forwarding on nodes), from threads in each netns.
    // IPv6 settings are needed only where IPv6 is used (a kernel may have IPv6 disabled).
    let any6 = plan.pods.iter().any(|p| p.ips.iter().any(IpAddr::is_ipv6));
    for n in &plan.nodes {
        Netns::open(&n.netns)?.run(move || {
            sysctl("net.ipv4.ip_forward", "1")?;
            if any6 {
                sysctl("net.ipv6.conf.all.forwarding", "1")?;
            }
            // The host route names the interface a reply leaves by; strict reverse-path
            // checks (inherited from the machine) add nothing here.
            sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            sysctl("net.ipv4.conf.default.rp_filter", "0")?;
            Ok(())
        })?;
    }
    let pod_ns: Vec<Netns> = plan
        .pods
        .iter()
        .map(|p| Netns::open(&p.netns))
        .collect::<Result<_>>()?;
    for (ns, p) in pod_ns.iter().zip(&plan.pods) {
        let has6 = p.ips.iter().any(IpAddr::is_ipv6);
        ns.run(move || {
            if has6 {
                sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
            }
            sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            sysctl("net.ipv4.conf.eth0.rp_filter", "0")?;
            Ok(())
        })?;
    }

    // 3. Node side, then every pod (in parallel).
    for (ni, n) in plan.nodes.iter().enumerate() {
        let mut lines = vec!["link set lo up".to_string()];
        for p in plan.pods_on(ni) {
            if any6 {
                lines.push(format!("link set {} addrgenmode none", p.host_if));
            }
            lines.push(format!("link set {} up", p.host_if));
            if any6 {
                lines.push(format!(
                    "address add {GATEWAY_V6}/64 dev {} nodad",
                    p.host_if
                ));
            }
            for ip in &p.ips {
                lines.push(format!(
                    "route add {} dev {} scope link",
                    host_prefix(ip),
                    p.host_if
                ));
            }
        }
        ip_batch(Some(&n.netns), &lines).await?;
    }

    let all = plan.lab_addresses();
    let mut jobs = tokio::task::JoinSet::new();
    for p in &plan.pods {
        let mut lines = vec!["link set lo up".to_string(), "link set eth0 up".to_string()];
        let has4 = p.ips.iter().any(|i| i.is_ipv4());
        let has6 = p.ips.iter().any(|i| i.is_ipv6());
        for ip in &p.ips {
            if ip.is_ipv4() {
                lines.push(format!("address add {} dev eth0", host_prefix(ip)));
            } else {
                lines.push(format!("address add {} dev eth0 nodad", host_prefix(ip)));
            }
        }
        if has4 {
            lines.push(format!(
                "neigh replace {GATEWAY_V4} lladdr {HOST_MAC} dev eth0 nud permanent"
            ));
            lines.push(format!("route add {GATEWAY_V4}/32 dev eth0 scope link"));
        }
        if has6 {
            lines.push(format!(
                "neigh replace {GATEWAY_V6} lladdr {HOST_MAC} dev eth0 nud permanent"
            ));
        }
        for ip in all.iter().filter(|ip| !p.ips.contains(ip)) {
            match ip {
                IpAddr::V4(_) if has4 => lines.push(format!(
                    "route add {} via {GATEWAY_V4} dev eth0",
                    host_prefix(ip)
                )),
                IpAddr::V6(_) if has6 => lines.push(format!(
                    "route add {} via {GATEWAY_V6} dev eth0",
                    host_prefix(ip)
                )),
                _ => {}
            }
        }
        let ns = p.netns.clone();
        jobs.spawn(async move { ip_batch(Some(&ns), &lines).await });
    }
    while let Some(r) = jobs.join_next().await {
        r.context("pod setup task")??;
    }
    Ok(())
}

/// Names of the network namespaces that exist.
pub fn list() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Deletes network namespaces (those that exist); returns the errors.
pub fn delete(names: &[String]) -> Vec<String> {
    let existing = list();
    let lines: Vec<String> = names
        .iter()
        .filter(|n| existing.contains(n))
        .map(|n| format!("netns delete {n}"))
        .collect();
    if lines.is_empty() {
        return Vec::new();
    }
    let run = || -> Result<()> {
        use std::io::Write;
        let mut child = std::process::Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running `ip`")?;
        child
            .stdin
            .take()
            .context("ip stdin")?
            .write_all((lines.join("\n") + "\n").as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "`ip netns delete` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    match run() {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("{e:#}")],
    }
}
