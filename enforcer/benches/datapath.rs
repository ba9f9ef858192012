//! Datapath benchmark: nanoseconds per packet with BPF_PROG_TEST_RUN, as ratios against an empty
//! TC program measured in the same run (`cargo xtask bench`; needs root).
//!
//! For each cluster size (pods × policies) it generates a cluster, compiles it with the real
//! compiler for one node with 110 local endpoints, installs it with the real kernel edge, and
//! measures, on one endpoint's ingress program:
//! - `empty`: the baseline program that only returns;
//! - `established`: a packet (an ACK) of a flow that has been answered (one parse, one lookup,
//!   and the per-rule packet and byte counter); `est-nc`: the same with per-rule counters off;
//! - `new allowed`: the first packet of a new flow that a rule allows (parse, conntrack miss,
//!   identity + CIDR + policy lookups, two conntrack inserts);
//! - `new denied`: the first packet of a flow no rule allows (lookups, counter, drop event).
//!
//! Each size runs twice: NetworkPolicies only, and with both cluster-wide tiers populated
//! beside them (100 Admin and 100 Baseline ClusterNetworkPolicies, all selecting the measured
//! endpoint, none matching the measured flows, so a new flow pays every Admin lookup before the
//! NetworkPolicy tier decides). The tiers table gives the tiered cost over the NetworkPolicy-only
//! cost at the same sizes.
//!
//! `empty` and `established` run one packet many times inside the kernel (`repeat`), the most
//! precise figure. A new flow is new only once, so new flows run as many distinct packets, one
//! run each; the baseline is measured the same way (`empty/1`), and new-flow ratios are against
//! it, so each ratio compares like with like.
//!
//! Options: `--quick` (fewer sizes and samples, for CI smoke runs), `--json` (one JSON object),
//! `--established-only` (skip the new-flow samples: a fast look at the hot path).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use enforcer::bpf::{Datapath, Prog, TC_DROP, TC_PASS};
use enforcer::compiler::{Cluster, Ids, NodeInput, compile, plan};
use enforcer::model::ObjectRef;
use enforcer::source::parse_objects;
use enforcer::state::MapState;
use enforcer_common::{direction, identity, policy_prefix};

/// ifindex BPF_PROG_TEST_RUN gives its packets (loopback).
const TEST_IFINDEX: u32 = 1;
const LOCAL_PODS: usize = 110;
const NAMESPACES: usize = 100;

struct Sizes {
    pods: usize,
    policies: usize,
    /// 100 Admin and 100 Baseline ClusterNetworkPolicies beside the NetworkPolicies.
    tiers: bool,
}

/// Cluster-wide policies per tier in the tiered runs.
const TIER_POLICIES: usize = 100;

#[derive(serde::Serialize)]
struct Row {
    pods: usize,
    policies: usize,
    tiers: bool,
    policy_entries: usize,
    ip_entries: usize,
    install_ms: f64,
    empty_ns: f64,
    established_ns: f64,
    /// The same, with per-rule counters off.
    established_nc_ns: f64,
    empty_single_ns: f64,
    new_allowed_ns: f64,
    new_denied_ns: f64,
}

fn pod_ip(i: usize) -> Ipv4Addr {
    let n = (10u32 << 24) | (64 << 16) | i as u32;
    Ipv4Addr::from(n)
}

/// The generated cluster as manifests, parsed by the same code as the agent's folder source.
fn cluster(s: &Sizes) -> Result<Cluster> {
    let mut y = String::new();
    for n in 0..NAMESPACES {
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}, labels: {{team: t-{}}}}}\n",
            n % 10
        ));
    }
    for i in 0..s.pods {
        let node = if i < LOCAL_PODS { "node-1" } else { "node-2" };
        y.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{i}, namespace: ns-{}, labels: {{app: app-{}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: i}}]}}\n\
             status: {{podIPs: [{{ip: {}}}]}}\n",
            i % NAMESPACES,
            (i / NAMESPACES) % 50,
            pod_ip(i)
        ));
    }
    for i in 0..s.policies {
        // Policy i selects one of two apps in its namespace, so each local pod is selected by
        // about policies/200 of them, and admits one app from the namespaces of one team.
        let mut rule = format!(
            "  - from: [{{namespaceSelector: {{matchLabels: {{team: t-{}}}}}, podSelector: {{matchLabels: {{app: app-{}}}}}}}]\n    ports: [{{protocol: TCP, port: {}}}]\n",
            (i / 7) % 10,
            (i / 3) % 50,
            8000 + i % 1000
        );
        if i % 10 == 0 {
            rule.push_str(&format!(
                "  - from: [{{ipBlock: {{cidr: 198.51.100.0/24, except: [198.51.100.{}/28]}}}}]\n",
                (i / 10 % 16) * 16
            ));
        }
        y.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: pol-{i}, namespace: ns-{}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: app-{}}}}}\n  policyTypes: [Ingress]\n  ingress:\n{}",
            i % NAMESPACES,
            (i / NAMESPACES) % 2,
            rule
        ));
    }
    if s.tiers {
        y.push_str(&tier_policies());
    }
    let mut c = Cluster::default();
    for obj in parse_objects("bench.yaml", &y).context("generated manifests")? {
        c.insert(obj);
    }
    Ok(c)
}

/// Admin and Baseline policies that select every pod (so the measured endpoint holds both
/// tiers) with rules on ports no measured flow uses (20000 and up) from the first 25 apps, so a
/// measured flow pays the tiers' lookups and the NetworkPolicy tier still decides it.
fn tier_policies() -> String {
    let mut y = String::new();
    for (tier, word) in [("Admin", "Deny"), ("Baseline", "Accept")] {
        for i in 0..TIER_POLICIES {
            y.push_str(&format!(
                "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
                 metadata: {{name: {}-{i}}}\nspec:\n  tier: {tier}\n  priority: {}\n  \
                 subject: {{namespaces: {{}}}}\n  ingress:\n  \
                 - action: {word}\n    from: [{{pods: {{namespaceSelector: {{matchLabels: {{team: t-{}}}}}, podSelector: {{matchLabels: {{app: app-{}}}}}}}}}]\n    \
                 protocols: [{{tcp: {{destinationPort: {{number: {}}}}}}}]\n  \
                 - action: Pass\n    from: [{{namespaces: {{matchLabels: {{team: t-{}}}}}}}]\n    \
                 protocols: [{{udp: {{destinationPort: {{range: {{start: {}, end: {}}}}}}}}}]\n",
                tier.to_lowercase(),
                i % 1000,
                i % 10,
                i % 25,
                20000 + i,
                (i + 3) % 10,
                30000 + i,
                30010 + i,
            ));
        }
    }
    y
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn tcp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    p.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p
}

/// A peer and port the endpoint's ingress allows, and a peer it does not.
fn pick_flows(state: &MapState, set: u32) -> Result<((Ipv4Addr, u16), Ipv4Addr)> {
    let allowed = state
        .policy
        .iter()
        .filter(|(k, _)| {
            k.data.policy_set == set
                && k.data.tier == enforcer_common::tier::NETWORK_POLICY
                && k.data.direction == direction::INGRESS
                && k.prefix_len == policy_prefix::FULL
                && k.data.identity >= identity::FIRST_LABEL
                && k.data.identity & identity::CIDR_FLAG == 0
        })
        .map(|(k, _)| (k.data.identity, u16::from_be(k.data.port_be)))
        .collect::<Vec<_>>();
    let me = pod_ip(0);
    let ip_of = |want: &dyn Fn(u32) -> bool| {
        state.ip_identity.iter().find_map(|(k, v)| {
            let a = std::net::Ipv6Addr::from(k.addr).to_ipv4_mapped()?;
            (want(v.identity) && a != me).then_some(a)
        })
    };
    // The first allowed (identity, port) with a pod other than the endpoint itself.
    let ((peer, port), _) = allowed
        .iter()
        .find_map(|&(id, port)| Some(((ip_of(&|i| i == id)?, port), ())))
        .with_context(|| format!("no peer pod for any of {} allow entries", allowed.len()))?;
    let used: std::collections::BTreeSet<u32> = state
        .policy
        .keys()
        .filter(|k| {
            k.data.policy_set == set && k.data.tier == enforcer_common::tier::NETWORK_POLICY
        })
        .map(|k| k.data.identity)
        .collect();
    let denied = ip_of(&|i| !used.contains(&i)).context("no pod without a rule")?;
    Ok(((peer, port), denied))
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2] as f64
}

/// Best of a few in-kernel repeat loops (ns per run).
fn repeated(dp: &mut Datapath, prog: Prog, pkt: &[u8], repeat: u32, rounds: usize) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let r = dp.test_run(prog, pkt, repeat)?;
        best = best.min(r.duration.as_nanos() as f64);
    }
    Ok(best)
}

/// Packets per round of `singles`; the figure is the lowest of the rounds' medians, so one
/// noisy stretch (the other core busy) does not decide it.
const ROUNDS: usize = 3;

/// Median over distinct packets run once each (ns per run), lowest of `ROUNDS` rounds.
fn singles(
    dp: &mut Datapath,
    prog: Prog,
    packets: impl Iterator<Item = Vec<u8>>,
    want: i32,
) -> Result<f64> {
    let packets: Vec<Vec<u8>> = packets.collect();
    if packets.is_empty() {
        return Ok(0.0);
    }
    let per_round = packets.len().div_ceil(ROUNDS);
    let mut best = f64::MAX;
    for chunk in packets.chunks(per_round) {
        best = best.min(singles_once(dp, prog, chunk.iter().cloned(), want)?);
    }
    Ok(best)
}

fn singles_once(
    dp: &mut Datapath,
    prog: Prog,
    packets: impl Iterator<Item = Vec<u8>>,
    want: i32,
) -> Result<f64> {
    let mut samples = Vec::new();
    for (i, p) in packets.enumerate() {
        let r = dp.test_run(prog, &p, 1)?;
        if r.verdict != want {
            bail!(
                "{prog:?}: verdict {} for sample {i}, expected {want}",
                r.verdict
            );
        }
        samples.push(r.duration.as_nanos() as u64);
        if i % 1024 == 1023 {
            // Keep the ring buffer from filling, so every denied sample pays for its event.
            dp.drain_events();
        }
    }
    Ok(median(samples))
}

fn measure(s: &Sizes, samples: usize, repeat: u32, established_only: bool) -> Result<Row> {
    let c = cluster(s)?;
    let mut interfaces = std::collections::BTreeMap::new();
    for i in 0..LOCAL_PODS.min(s.pods) {
        let ifindex = if i == 0 {
            TEST_IFINDEX
        } else {
            1000 + i as u32
        };
        interfaces.insert(
            ObjectRef::new(format!("ns-{}", i % NAMESPACES), format!("p-{i}")),
            ifindex,
        );
    }
    let node = NodeInput {
        held: Default::default(),
        conflicted: Default::default(),
        node: "node-1".into(),
        interfaces,
        host_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
        allow_host_ingress: true,
    };
    let mut ids = Ids::default();
    let installed = MapState::default();
    let compiled = compile(&c, &node, &mut ids, &installed);
    let state = plan(&installed, &compiled, &mut ids);

    let mut dp = Datapath::load_unpinned().context("loading the datapath (root?)")?;
    let t = Instant::now();
    dp.install(&state, 1, 0)?;
    let install_ms = t.elapsed().as_secs_f64() * 1e3;

    let ep = state.endpoints[&TEST_IFINDEX];
    let ((peer, port), denied_peer) = pick_flows(&state, ep.policy_set)?;
    let me = pod_ip(0);

    // An established flow: its SYN, the answer (which moves it to the established table),
    // then its packets, ACKs.
    let syn = tcp_packet(peer, me, 40000, port, SYN);
    let base = tcp_packet(peer, me, 40000, port, ACK);
    let empty_ns = repeated(&mut dp, Prog::Empty, &base, repeat, 5)?;
    let first = dp.test_run(Prog::ToEndpoint, &syn, 1)?;
    if first.verdict != TC_PASS {
        bail!("the allowed flow was dropped");
    }
    let answer = tcp_packet(me, peer, port, 40000, SYN | ACK);
    if dp.test_run(Prog::FromEndpoint, &answer, 1)?.verdict != TC_PASS {
        bail!("the allowed flow's answer was dropped");
    }
    let established_ns = repeated(&mut dp, Prog::ToEndpoint, &base, repeat, 5)?;
    let mut config = dp.config()?;
    config.flags |= enforcer_common::config_flags::RULE_COUNTERS_OFF;
    dp.set_config(config)?;
    let established_nc_ns = repeated(&mut dp, Prog::ToEndpoint, &base, repeat, 5)?;
    config.flags &= !enforcer_common::config_flags::RULE_COUNTERS_OFF;
    dp.set_config(config)?;
    let samples = if established_only { 0 } else { samples };
    let empty_single_ns = singles(
        &mut dp,
        Prog::Empty,
        (0..samples).map(|_| base.clone()),
        TC_PASS,
    )?;
    let new_allowed_ns = singles(
        &mut dp,
        Prog::ToEndpoint,
        // Distinct source ports across all rounds: every packet is a new flow.
        (0..samples).map(|i| tcp_packet(peer, me, 1024 + (i % 60000) as u16, port, SYN)),
        TC_PASS,
    )?;
    let new_denied_ns = singles(
        &mut dp,
        Prog::ToEndpoint,
        (0..samples).map(|i| tcp_packet(denied_peer, me, 1024 + (i % 60000) as u16, port, SYN)),
        TC_DROP,
    )?;
    Ok(Row {
        pods: s.pods,
        policies: s.policies,
        tiers: s.tiers,
        policy_entries: state.policy.len(),
        ip_entries: state.ip_identity.len(),
        install_ms,
        empty_ns,
        established_ns,
        established_nc_ns,
        empty_single_ns,
        new_allowed_ns,
        new_denied_ns,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let established_only = args.iter().any(|a| a == "--established-only");
    if unsafe { libc::geteuid() } != 0 {
        bail!("the datapath benchmark loads eBPF programs: run it as root (cargo xtask bench)");
    }
    let (pods, policies, samples, repeat): (&[usize], &[usize], usize, u32) = if quick {
        (&[1_000, 10_000], &[100, 1_000], 2_000, 100_000)
    } else {
        (
            &[1_000, 10_000, 100_000],
            &[100, 1_000, 10_000],
            20_000,
            1_000_000,
        )
    };
    let mut rows = Vec::new();
    for &p in pods {
        for &q in policies {
            for tiers in [false, true] {
                let row = measure(
                    &Sizes {
                        pods: p,
                        policies: q,
                        tiers,
                    },
                    samples,
                    repeat,
                    established_only,
                )
                .with_context(|| format!("{p} pods, {q} policies, tiers {tiers}"))?;
                if !json {
                    eprintln!(
                        "measured {p} pods x {q} policies{} ({} policy entries, install {:.0} ms)",
                        if tiers {
                            " + 100 Admin + 100 Baseline"
                        } else {
                            ""
                        },
                        row.policy_entries,
                        row.install_ms
                    );
                }
                rows.push(row);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "\n{:>7} {:>6} {:>8} | {:>7} {:>7} {:>6} {:>7} {:>6} | {:>8} {:>7} {:>7} {:>6} {:>6}",
        "pods",
        "pols",
        "entries",
        "empty",
        "estab",
        "ratio",
        "est-nc",
        "ratio",
        "empty/1",
        "new-ok",
        "new-no",
        "ok/e",
        "no/e"
    );
    for r in rows.iter().filter(|r| !r.tiers) {
        println!(
            "{:>7} {:>6} {:>8} | {:>6.1}n {:>6.1}n {:>5.2}x {:>6.1}n {:>5.2}x | {:>7.0}n {:>6.0}n {:>6.0}n {:>5.2}x {:>5.2}x",
            r.pods,
            r.policies,
            r.policy_entries,
            r.empty_ns,
            r.established_ns,
            r.established_ns / r.empty_ns,
            r.established_nc_ns,
            r.established_nc_ns / r.empty_ns,
            r.empty_single_ns,
            r.new_allowed_ns,
            r.new_denied_ns,
            r.new_allowed_ns / r.empty_single_ns,
            r.new_denied_ns / r.empty_single_ns,
        );
    }
    // The tiers: the same sizes with 100 Admin and 100 Baseline policies, over the
    // NetworkPolicy-only figures of the same run.
    println!(
        "\nwith both tiers populated (100 Admin + 100 Baseline), against NetworkPolicies only:\n\
         {:>7} {:>6} {:>8} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6}",
        "pods",
        "pols",
        "entries",
        "new-ok",
        "tiered",
        "ratio",
        "new-no",
        "tiered",
        "ratio",
        "estab",
        "tiered",
        "ratio"
    );
    for t in rows.iter().filter(|r| r.tiers) {
        let Some(b) = rows
            .iter()
            .find(|r| !r.tiers && r.pods == t.pods && r.policies == t.policies)
        else {
            continue;
        };
        println!(
            "{:>7} {:>6} {:>8} | {:>6.0}n {:>6.0}n {:>5.2}x | {:>6.0}n {:>6.0}n {:>5.2}x | {:>6.1}n {:>6.1}n {:>5.2}x",
            t.pods,
            t.policies,
            t.policy_entries,
            b.new_allowed_ns,
            t.new_allowed_ns,
            t.new_allowed_ns / b.new_allowed_ns,
            b.new_denied_ns,
            t.new_denied_ns,
            t.new_denied_ns / b.new_denied_ns,
            b.established_ns,
            t.established_ns,
            t.established_ns / b.established_ns,
        );
    }
    // Scaling: a new flow's cost at the largest pod count against the smallest, per policy count.
    println!("\nnew-flow cost, largest vs smallest pod count (same policy count):");
    for &q in policies {
        let at = |p: usize| {
            rows.iter()
                .find(|r| !r.tiers && r.pods == p && r.policies == q)
        };
        if let (Some(lo), Some(hi)) = (at(pods[0]), at(*pods.last().unwrap())) {
            println!(
                "  {q:>6} policies: allowed {:.2}x, denied {:.2}x ({} → {} pods)",
                hi.new_allowed_ns / lo.new_allowed_ns,
                hi.new_denied_ns / lo.new_denied_ns,
                pods[0],
                pods.last().unwrap()
            );
        }
    }
    Ok(())
}
