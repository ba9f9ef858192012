//! Endpoint discovery: which interface leads to each local pod, and the node's own addresses.
//!
//! Routed CNIs (Calico, Cilium-style ptp, the lab) install a host route per pod address through
//! the pod's host-side veth; that route names the interface. This reads the routing table once
//! per pass (not once per pod) with `ip -json`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::model::ObjectRef;

#[derive(Deserialize)]
struct Route {
    dst: String,
    dev: Option<String>,
}

#[derive(Deserialize)]
struct Link {
    ifindex: u32,
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    local: Option<String>,
}

fn ip_json(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("ip")
        .arg("-json")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip -json {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Host routes (/32, /128) → interface name.
pub fn host_routes() -> Result<BTreeMap<IpAddr, String>> {
    let mut out = BTreeMap::new();
    for family in ["-4", "-6"] {
        let raw = ip_json(&[family, "route", "show", "table", "main"])?;
        let routes: Vec<Route> = serde_json::from_slice(&raw).context("parsing `ip route`")?;
        for r in routes {
            let (addr, len) = match r.dst.split_once('/') {
                Some((a, l)) => (a, l.parse::<u8>().ok()),
                None => (r.dst.as_str(), None),
            };
            let Ok(ip) = addr.parse::<IpAddr>() else {
                continue; // "default" and friends
            };
            let full = if ip.is_ipv4() { 32 } else { 128 };
            if len.is_none_or(|l| l == full)
                && let Some(dev) = r.dev
            {
                out.insert(ip, dev);
            }
        }
    }
    Ok(out)
}

/// The node's interfaces and addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// Interface name → ifindex.
    pub names: BTreeMap<String, u32>,
    /// Every address configured on this node (not loopback, not link-local).
    pub host_ips: Vec<IpAddr>,
    /// Interfaces holding one of those addresses: the node's own, where traffic leaves it.
    pub host_ifindexes: Vec<u32>,
}

/// Reads the node's interfaces and addresses.
pub fn links() -> Result<Links> {
    let raw = ip_json(&["address", "show"])?;
    let links: Vec<Link> = serde_json::from_slice(&raw).context("parsing `ip address`")?;
    let mut out = Links::default();
    for l in links {
        out.names.insert(l.ifname, l.ifindex);
        for a in l.addr_info {
            if let Some(ip) = a.local.and_then(|s| s.parse::<IpAddr>().ok())
                && !ip.is_loopback()
                && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
            {
                out.host_ips.push(ip);
                if !out.host_ifindexes.contains(&l.ifindex) {
                    out.host_ifindexes.push(l.ifindex);
                }
            }
        }
    }
    Ok(out)
}

/// Matches local pods to interfaces: the interface of the host route of any of the pod's
/// addresses. A pod whose addresses route through different interfaces takes the first.
pub fn match_pods<'a>(
    pods: impl Iterator<Item = (ObjectRef, &'a [IpAddr])>,
    routes: &BTreeMap<IpAddr, String>,
    names: &BTreeMap<String, u32>,
) -> BTreeMap<ObjectRef, u32> {
    let mut out = BTreeMap::new();
    for (pod, ips) in pods {
        if let Some(ifindex) = ips
            .iter()
            .filter_map(|ip| routes.get(ip))
            .find_map(|dev| names.get(dev))
        {
            out.insert(pod, *ifindex);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_match_their_host_route() {
        let routes: BTreeMap<IpAddr, String> = [
            ("10.0.0.1".parse().unwrap(), "lxc1".to_string()),
            ("fd00::2".parse().unwrap(), "lxc2".to_string()),
        ]
        .into();
        let names: BTreeMap<String, u32> = [("lxc1".into(), 7), ("lxc2".into(), 8)].into();
        let a = vec!["10.0.0.1".parse().unwrap()];
        let b = vec!["10.0.0.9".parse().unwrap(), "fd00::2".parse().unwrap()];
        let c = vec!["10.0.0.3".parse().unwrap()];
        let pods = vec![
            (ObjectRef::new("x", "a"), a.as_slice()),
            (ObjectRef::new("x", "b"), b.as_slice()),
            (ObjectRef::new("x", "c"), c.as_slice()),
        ];
        let m = match_pods(pods.into_iter(), &routes, &names);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&ObjectRef::new("x", "b")], 8);
    }
}
