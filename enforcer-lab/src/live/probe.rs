//! `lab probe` (one real connection between two endpoints of a lab left running, with the
//! events of its flow) and `lab forge` (one hand-built packet with a forged source).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use super::{Live, need_root};
use crate::lab;
use crate::netns::Netns;
use crate::report::{ProbeResult, match_events};
use crate::scenario::Protocol;
use crate::{Output, scenario, traffic};

/// `80/TCP`, `http/udp`, `80` (TCP).
pub(super) fn split_port(s: &str) -> (String, String) {
    match s.split_once('/') {
        Some((p, proto)) => (p.to_string(), proto.to_ascii_uppercase()),
        None => (s.to_string(), "TCP".to_string()),
    }
}

/// `lab probe NAME FROM TO PORT[/PROTOCOL]`.
pub fn probe(
    name: &str,
    from: &str,
    to: &str,
    port: &str,
    family: Option<u8>,
    timeout: Duration,
    output: Output,
) -> i32 {
    match probe_inner(name, from, to, port, family, timeout) {
        Ok(r) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&crate::report::probe_json(&r))
                        .expect("a probe is JSON")
                ),
                Output::Table => print!("{}", crate::report::probe_text(&r)),
            }
            0
        }
        Err(e) => {
            eprintln!("enforcer lab: error: {e:#}");
            2
        }
    }
}

fn probe_inner(
    name: &str,
    from: &str,
    to: &str,
    port: &str,
    family: Option<u8>,
    timeout: Duration,
) -> Result<ProbeResult> {
    let (port, proto) = split_port(port);
    let spec = scenario::parse_probe(from, to, &port, &proto, family)?;
    need_root("`lab probe`")?;
    let live = Live::open(name)?;
    let saved = live.state()?;
    let probe = live
        .plan
        .resolve(&saved.state.service_list(), &spec)
        .map_err(|e| anyhow!("{}", e.reason))?;
    let ns = Netns::open(live.plan.netns_of(probe.src))?;
    let (files, offsets) = event_files(&live);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dst = std::net::SocketAddr::new(probe.dst_ip, probe.dst_port);
    let payload = format!(
        "enforcer-lab {} cli probe {}",
        live.plan.prefix,
        std::process::id()
    )
    .into_bytes();
    let mut outcome = rt.block_on(traffic::probe(
        &ns,
        spec.protocol,
        probe.src_ip,
        dst,
        timeout,
        payload,
        probe.service.is_some(),
    ))?;
    if outcome.observed == traffic::Observed::Unsupported && spec.protocol == Protocol::Sctp {
        // No SCTP sockets here: a hand-built INIT, watched for where it arrives.
        let targets = lab::sctp_targets(&live.plan);
        let (target, served) = match probe.dst.filter(|_| probe.service.is_none()) {
            Some(ep) if targets.contains_key(&ep) => (
                Some((Netns::open(live.plan.netns_of(ep))?, targets[&ep].0)),
                targets[&ep].1.contains(&probe.dst_port),
            ),
            _ => (None, false),
        };
        outcome = rt.block_on(traffic::sctp_one_way(
            &ns,
            target.as_ref().map(|(n, w)| (n, *w)),
            served,
            probe.src_ip,
            dst,
            timeout,
        ))?;
    }
    if outcome.observed == traffic::Observed::Deny {
        std::thread::sleep(Duration::from_millis(150));
    }
    let mut events = Vec::new();
    for (f, off) in files.iter().zip(offsets) {
        events.extend(read_from(f, off));
    }
    let wrong_backend = lab::check_backend(
        &lab::expected_backends(&live.plan, &saved.state, &probe),
        &outcome,
    );
    Ok(ProbeResult {
        events: match_events(&events, &probe, outcome.src_port),
        probe,
        outcome,
        wrong_backend,
    })
}

/// `lab forge NAME FROM TO WHAT --source IP`.
pub fn forge(
    name: &str,
    from: &str,
    to: &str,
    what: &str,
    source: std::net::IpAddr,
    timeout: Duration,
    output: Output,
) -> i32 {
    match forge_inner(name, from, to, what, source, timeout) {
        Ok(v) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&v).expect("a forge result is JSON")
                ),
                Output::Table => {
                    println!("{}", v["summary"].as_str().unwrap_or(""));
                    for e in v["events"].as_array().into_iter().flatten() {
                        println!(
                            "  {} {} at {}: {}",
                            e["verdict"].as_str().unwrap_or("?"),
                            e["direction"].as_str().unwrap_or("?"),
                            e["endpoint"].as_str().unwrap_or("?"),
                            e["reason"].as_str().unwrap_or("?")
                        );
                    }
                }
            }
            0
        }
        Err(e) => {
            eprintln!("enforcer lab: error: {e:#}");
            2
        }
    }
}

fn forge_inner(
    name: &str,
    from: &str,
    to: &str,
    what: &str,
    source: std::net::IpAddr,
    timeout: Duration,
) -> Result<serde_json::Value> {
    use crate::forge::{self, Forged, Sniffer};
    let (kind, dst_port) = forge::parse_what(what)?;
    need_root("`lab forge`")?;
    let live = Live::open(name)?;
    let plan = &live.plan;
    let find = |s: &str| {
        plan.endpoints()
            .find(|ep| plan.name_of(*ep) == s)
            .ok_or_else(|| anyhow!("lab {name} has no pod, host or node {s:?}"))
    };
    let (src_ep, dst_ep) = (find(from)?, find(to)?);
    // Forged packets leave and are watched on an `eth0`: a pod's or a host's own namespace.
    for (ep, text) in [(src_ep, from), (dst_ep, to)] {
        if !plan.has_own_netns(ep) {
            bail!(
                "{text} is in a node's namespace: `lab forge` works between pods and hosts with their own"
            );
        }
    }
    let Some(dst) = forge::target_for(&source, plan.ips_of(dst_ep)) else {
        bail!("{to} has no address of the family of {source}");
    };
    let f = Forged {
        src: source,
        dst,
        kind,
        dst_port,
        tag: 40_000 + (std::process::id() % 20_000) as u16,
    };
    let (files, offsets) = event_files(&live);
    let mut sniffer = Sniffer::open(&Netns::open(plan.netns_of(dst_ep))?, "eth0")?;
    forge::send(&Netns::open(plan.netns_of(src_ep))?, &f)?;
    let received = sniffer.saw(&f, timeout)?;
    std::thread::sleep(Duration::from_millis(150));
    let mut events = Vec::new();
    for (file, off) in files.iter().zip(offsets) {
        events.extend(read_from(file, off).into_iter().filter(|e| {
            e["src"].as_str().and_then(|s| s.parse().ok()) == Some(f.src)
                && e["dst"].as_str().and_then(|s| s.parse().ok()) == Some(f.dst)
        }));
    }
    let port = if kind == forge::Kind::Echo {
        String::new()
    } else {
        format!(":{dst_port}")
    };
    let summary = format!(
        "{from} forged {} {source} > {dst}{port}: {} by {to}",
        kind.name(),
        if received { "RECEIVED" } else { "not received" }
    );
    Ok(serde_json::json!({
        "from": from, "to": to, "protocol": kind.name(), "src": source.to_string(),
        "dst": dst.to_string(), "dst_port": dst_port, "received": received,
        "summary": summary, "events": events,
    }))
}

/// The JSON lines of a file after `offset`.
fn read_from(path: &Path, offset: u64) -> Vec<serde_json::Value> {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every node's events file and its length now: where the events of what follows begin.
fn event_files(live: &Live) -> (Vec<PathBuf>, Vec<u64>) {
    let files: Vec<PathBuf> = live
        .plan
        .nodes
        .iter()
        .map(|n| live.node_dir(&n.name).join("events.jsonl"))
        .collect();
    let offsets = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .collect();
    (files, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_on_the_command_line() {
        assert_eq!(split_port("80/tcp"), ("80".into(), "TCP".into()));
        assert_eq!(split_port("http/UDP"), ("http".into(), "UDP".into()));
        assert_eq!(split_port("53"), ("53".into(), "TCP".into()));
    }
}
