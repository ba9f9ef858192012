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
//! Each size runs in two configurations: NetworkPolicies only, and with both cluster-wide tiers
//! populated beside them (100 Admin and 100 Baseline ClusterNetworkPolicies, all selecting the
//! measured endpoint, none matching the measured flows, so a new flow pays every Admin lookup
//! before the NetworkPolicy tier decides). The tiers table gives the tiered cost over the
//! NetworkPolicy-only cost at the same sizes.
//!
//! `empty` and `established` run one packet many times inside the kernel (`repeat`), the most
//! precise figure. A new flow is new only once, so new flows run as many distinct packets, one
//! run each, and a round's value is their median; the baseline is measured the same way
//! (`empty/1`), and new-flow ratios are against it, so each ratio compares like with like.
//!
//! How figures and ratios are taken. The machine is shared and noisy, and noise that lands on
//! one configuration only (two runs of the same tiers row once gave 0.95x and 1.96x) is what
//! the ratios must not show. So both configurations of a size are loaded side by side (two
//! unpinned datapaths) and measured in alternating rounds: each round takes every quantity once
//! in each configuration, back to back (NetworkPolicies only first in even rounds, tiered first
//! in odd ones), on the same packets (flows chosen to be allowed, resp. denied, in both); a
//! first round warms both up and is dropped. This is done on a few loads, fresh pairs of
//! datapaths with the same states: how a load's maps land in memory moves its costs by several
//! percent for as long as it lives, which rounds within one load cannot cancel. A figure (ns) is
//! the lowest of its rounds' values over all loads, the best the machine gave. A ratio, in both
//! tables, is the median of the per-round ratios over all loads, each of two values taken
//! milliseconds apart: noise longer than that falls on both sides and cancels, slow drifts
//! cancel, and a round disturbed on one side is one outlier among many. So a ratio need not
//! equal the quotient of the figures beside it. The progress lines give the spread left: the
//! quartiles of the tiered/NetworkPolicy-only ratios and each load's median. The scaling lines
//! compare sizes measured minutes apart, so they stay quotients of figures, and noisier.
//!
//! Options: `--quick` (fewer sizes, rounds and samples, for CI smoke runs), `--json` (one JSON
//! object), `--established-only` (skip the new-flow samples: a fast look at the hot path).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use enforcer::bpf::{Datapath, Prog, TC_DROP, TC_PASS};
use enforcer::compiler::{Cluster, Ids, NodeInput, compile, plan};
use enforcer::model::ObjectRef;
use enforcer::source::parse_objects;
use enforcer::state::MapState;
use enforcer_common::{PolicyKey, direction, identity, policy_prefix, tier};

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

/// The measured flows: a peer and port the endpoint's ingress allows, and a peer it does not.
struct Flows {
    peer: Ipv4Addr,
    port: u16,
    denied: Ipv4Addr,
}

/// What one configuration's state says about the measured endpoint's ingress.
struct View {
    /// Address → identity, in the state's order.
    ips: Vec<(Ipv4Addr, u32)>,
    identity: HashMap<Ipv4Addr, u32>,
    /// (identity, port) the NetworkPolicy tier allows with an exact entry, in the state's order.
    allowed: Vec<(u32, u16)>,
    /// Identities with any NetworkPolicy-tier entry.
    named: BTreeSet<u32>,
}

impl View {
    fn of(state: &MapState) -> View {
        let set = state.endpoints[&TEST_IFINDEX].policy_set;
        let np = |k: &PolicyKey| k.policy_set == set && k.tier == tier::NETWORK_POLICY;
        let ips: Vec<(Ipv4Addr, u32)> = state
            .ip_identity
            .iter()
            .filter_map(|(k, v)| Some((Ipv6Addr::from(k.addr).to_ipv4_mapped()?, v.identity)))
            .collect();
        View {
            identity: ips.iter().copied().collect(),
            ips,
            allowed: state
                .policy
                .keys()
                .filter(|k| {
                    np(&k.data)
                        && k.data.direction == direction::INGRESS
                        && k.data.proto == 6
                        && k.prefix_len == policy_prefix::FULL
                        && k.data.identity >= identity::FIRST_LABEL
                        && k.data.identity & identity::CIDR_FLAG == 0
                })
                .map(|k| (k.data.identity, u16::from_be(k.data.port_be)))
                .collect(),
            named: state
                .policy
                .keys()
                .filter(|k| np(&k.data))
                .map(|k| k.data.identity)
                .collect(),
        }
    }
}

/// Flows that mean the same in every configuration: the first allowed peer and port of the
/// first state that every other state allows too, and the first peer no state's
/// NetworkPolicy tier names. Identities are numbered per compile, so the pick goes by address;
/// the verdicts are checked again on every packet.
fn pick_flows(states: &[&MapState]) -> Result<Flows> {
    let views: Vec<View> = states.iter().map(|s| View::of(s)).collect();
    let me = pod_ip(0);
    let first = &views[0];
    let (peer, port) = first
        .allowed
        .iter()
        .find_map(|&(id, port)| {
            let everywhere = |ip: &Ipv4Addr| {
                views.iter().all(|v| {
                    v.identity
                        .get(ip)
                        .is_some_and(|i| v.allowed.contains(&(*i, port)))
                })
            };
            first
                .ips
                .iter()
                .find(|&&(ip, i)| i == id && ip != me && everywhere(&ip))
                .map(|&(ip, _)| (ip, port))
        })
        .with_context(|| {
            format!(
                "no peer pod allowed in every configuration ({} allow entries in the first)",
                first.allowed.len()
            )
        })?;
    let denied = first
        .ips
        .iter()
        .map(|&(ip, _)| ip)
        .find(|ip| {
            *ip != me
                && views
                    .iter()
                    .all(|v| v.identity.get(ip).is_some_and(|i| !v.named.contains(i)))
        })
        .context("no pod without a rule in every configuration")?;
    Ok(Flows { peer, port, denied })
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2] as f64
}

/// Median, first and third quartile of per-round ratios.
#[derive(serde::Serialize, Clone, Copy)]
struct Ratio {
    median: f64,
    q1: f64,
    q3: f64,
}

impl Ratio {
    /// Of `num[r] / den[r]` over the rounds r: each ratio from two values taken close together.
    fn of(num: &[f64], den: &[f64]) -> Ratio {
        let mut v: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if v.is_empty() {
                return f64::NAN;
            }
            // Linear interpolation between the closest ranks.
            let x = q * (v.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        Ratio {
            median: at(0.5),
            q1: at(0.25),
            q3: at(0.75),
        }
    }
}

/// The lowest of the rounds' values: the best the machine gave.
fn best(v: &[f64]) -> f64 {
    v.iter().copied().reduce(f64::min).unwrap_or(0.0)
}

/// The sides in the order round `round` measures them: reversed every other round, so neither
/// configuration always runs right after the other.
fn order(round: usize, sides: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..sides).collect()
    } else {
        (0..sides).rev().collect()
    }
}

/// Median over distinct packets run once each (ns per run).
fn singles_once(dp: &mut Datapath, prog: Prog, packets: &[Vec<u8>], want: i32) -> Result<f64> {
    let mut samples = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        let r = dp.test_run(prog, p, 1)?;
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

/// One configuration's state, compiled with the real compiler for the node.
fn compile_state(s: &Sizes) -> Result<MapState> {
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
    Ok(plan(&installed, &compiled, &mut ids))
}

/// A fresh unpinned datapath with `state` installed, and the install's time (ms).
fn install(state: &MapState) -> Result<(Datapath, f64)> {
    let mut dp = Datapath::load_unpinned().context("loading the datapath (root?)")?;
    let t = Instant::now();
    dp.install(state, 1, 0)?;
    Ok((dp, t.elapsed().as_secs_f64() * 1e3))
}

/// How many loads and rounds, and how much in each.
struct Plan {
    /// Fresh pairs of datapaths per size.
    loads: usize,
    /// Rounds kept per load; one more runs first to warm both datapaths up and is dropped.
    rounds: usize,
    /// Distinct packets per round and configuration for each single-run figure.
    per_round: usize,
    /// In-kernel runs of the one packet for each repeated figure.
    repeat: u32,
    established_only: bool,
}

/// Source port of the established flow; new flows use ports below it.
const ESTABLISHED_SPORT: u16 = 40000;

/// Per-round values, `[side][round]`, of each quantity.
struct Measured {
    empty: Vec<Vec<f64>>,
    established: Vec<Vec<f64>>,
    established_nc: Vec<Vec<f64>>,
    empty_single: Vec<Vec<f64>>,
    new_allowed: Vec<Vec<f64>>,
    new_denied: Vec<Vec<f64>>,
}

impl Measured {
    /// Another load's rounds after these.
    fn append(&mut self, other: Measured) {
        for (mine, theirs) in [
            (&mut self.empty, other.empty),
            (&mut self.established, other.established),
            (&mut self.established_nc, other.established_nc),
            (&mut self.empty_single, other.empty_single),
            (&mut self.new_allowed, other.new_allowed),
            (&mut self.new_denied, other.new_denied),
        ] {
            for (m, t) in mine.iter_mut().zip(theirs) {
                m.extend(t);
            }
        }
    }
}

/// Measures every side in alternating rounds: in each round every quantity is taken once per
/// side, the sides back to back, so that a ratio between sides compares values milliseconds
/// apart; all sides run the same packets.
fn measure(sides: &mut [Datapath], flows: &Flows, p: &Plan) -> Result<Measured> {
    let n = sides.len();
    let me = pod_ip(0);
    let Flows {
        peer,
        port,
        denied: denied_peer,
    } = *flows;
    let per_side = || vec![Vec::with_capacity(p.rounds); n];
    let mut m = Measured {
        empty: per_side(),
        established: per_side(),
        established_nc: per_side(),
        empty_single: per_side(),
        new_allowed: per_side(),
        new_denied: per_side(),
    };

    // An established flow: its SYN, the answer (which moves it to the established table),
    // then its packets, ACKs.
    let syn = tcp_packet(peer, me, ESTABLISHED_SPORT, port, SYN);
    let base = tcp_packet(peer, me, ESTABLISHED_SPORT, port, ACK);
    let answer = tcp_packet(me, peer, port, ESTABLISHED_SPORT, SYN | ACK);
    for dp in sides.iter_mut() {
        if dp.test_run(Prog::ToEndpoint, &syn, 1)?.verdict != TC_PASS {
            bail!("the allowed flow was dropped");
        }
        if dp.test_run(Prog::FromEndpoint, &answer, 1)?.verdict != TC_PASS {
            bail!("the allowed flow's answer was dropped");
        }
    }
    for round in 0..=p.rounds {
        for (prog, counters_off) in [
            (Prog::Empty, false),
            (Prog::ToEndpoint, false),
            (Prog::ToEndpoint, true),
        ] {
            for i in order(round, n) {
                let dp = &mut sides[i];
                let config = dp.config()?;
                if counters_off {
                    let mut off = config;
                    off.flags |= enforcer_common::config_flags::RULE_COUNTERS_OFF;
                    dp.set_config(off)?;
                }
                let r = dp.test_run(prog, &base, p.repeat)?;
                if counters_off {
                    dp.set_config(config)?;
                }
                if prog == Prog::ToEndpoint && r.verdict != TC_PASS {
                    bail!("the established flow was dropped");
                }
                let into = match (prog, counters_off) {
                    (Prog::Empty, _) => &mut m.empty,
                    (_, false) => &mut m.established,
                    (_, true) => &mut m.established_nc,
                };
                if round > 0 {
                    into[i].push(r.duration.as_nanos() as f64);
                }
            }
        }
    }
    if p.established_only {
        return Ok(m);
    }

    // A new flow is new only once: each round takes fresh source ports, the same ones on every
    // side.
    let flows_needed = (p.rounds + 1) * p.per_round;
    if 1024 + flows_needed >= ESTABLISHED_SPORT as usize {
        bail!("{flows_needed} new flows per figure would reach the established flow's port");
    }
    for round in 0..=p.rounds {
        let ports = (round * p.per_round..(round + 1) * p.per_round).map(|i| 1024 + i as u16);
        let kinds = [
            (
                Prog::Empty,
                vec![base.clone(); p.per_round],
                TC_PASS,
                &mut m.empty_single,
            ),
            (
                Prog::ToEndpoint,
                ports
                    .clone()
                    .map(|sp| tcp_packet(peer, me, sp, port, SYN))
                    .collect(),
                TC_PASS,
                &mut m.new_allowed,
            ),
            (
                Prog::ToEndpoint,
                ports
                    .map(|sp| tcp_packet(denied_peer, me, sp, port, SYN))
                    .collect(),
                TC_DROP,
                &mut m.new_denied,
            ),
        ];
        for (prog, packets, want, into) in kinds {
            for i in order(round, n) {
                let v = singles_once(&mut sides[i], prog, &packets, want)?;
                if round > 0 {
                    into[i].push(v);
                }
            }
        }
        for dp in sides.iter_mut() {
            dp.drain_events();
        }
    }
    Ok(m)
}

#[derive(serde::Serialize)]
struct Row {
    pods: usize,
    policies: usize,
    tiers: bool,
    policy_entries: usize,
    ip_entries: usize,
    install_ms: f64,
    /// Figures (ns): the lowest of the rounds' values.
    empty_ns: f64,
    established_ns: f64,
    /// The same, with per-rule counters off.
    established_nc_ns: f64,
    empty_single_ns: f64,
    new_allowed_ns: f64,
    new_denied_ns: f64,
    /// Over `empty`, per round.
    established_ratio: Ratio,
    established_nc_ratio: Ratio,
    /// Over `empty_single`, per round.
    new_allowed_ratio: Ratio,
    new_denied_ratio: Ratio,
    /// Tiered rows: over the NetworkPolicy-only side of the same size, per round.
    #[serde(skip_serializing_if = "Option::is_none")]
    vs_network_policies: Option<TierRatios>,
}

#[derive(serde::Serialize)]
struct TierRatios {
    new_allowed: Ratio,
    new_denied: Ratio,
    established: Ratio,
    /// Medians of each load's rounds alone: what is left between loads.
    new_allowed_per_load: Vec<f64>,
    new_denied_per_load: Vec<f64>,
}

/// One size in both configurations: the NetworkPolicy-only row, then the tiered one.
fn measure_size(pods: usize, policies: usize, p: &Plan) -> Result<[Row; 2]> {
    let mut states = Vec::new();
    for tiers in [false, true] {
        let s = Sizes {
            pods,
            policies,
            tiers,
        };
        states.push(compile_state(&s).with_context(|| format!("tiers {tiers}"))?);
    }
    let flows = pick_flows(&states.iter().collect::<Vec<_>>())?;
    let mut all: Option<Measured> = None;
    let mut install_ms = [f64::MAX; 2];
    let mut per_load = [Vec::new(), Vec::new()];
    for load in 0..p.loads {
        // Fresh datapaths: their maps' placement in memory (and hash seeds) differ from load to
        // load, a difference the rounds of one load cannot cancel. Which is loaded first
        // alternates too.
        let mut dps: Vec<Option<Datapath>> = vec![None, None];
        for i in order(load, 2) {
            let (dp, ms) = install(&states[i]).with_context(|| format!("tiers {}", i == 1))?;
            install_ms[i] = install_ms[i].min(ms);
            dps[i] = Some(dp);
        }
        let mut dps: Vec<Datapath> = dps.into_iter().flatten().collect();
        let m = measure(&mut dps, &flows, p)?;
        per_load[0].push(Ratio::of(&m.new_allowed[1], &m.new_allowed[0]).median);
        per_load[1].push(Ratio::of(&m.new_denied[1], &m.new_denied[0]).median);
        match all.as_mut() {
            Some(a) => a.append(m),
            None => all = Some(m),
        }
    }
    let m = all.context("no loads")?;
    let row = |i: usize| Row {
        pods,
        policies,
        tiers: i == 1,
        policy_entries: states[i].policy.len(),
        ip_entries: states[i].ip_identity.len(),
        install_ms: install_ms[i],
        empty_ns: best(&m.empty[i]),
        established_ns: best(&m.established[i]),
        established_nc_ns: best(&m.established_nc[i]),
        empty_single_ns: best(&m.empty_single[i]),
        new_allowed_ns: best(&m.new_allowed[i]),
        new_denied_ns: best(&m.new_denied[i]),
        established_ratio: Ratio::of(&m.established[i], &m.empty[i]),
        established_nc_ratio: Ratio::of(&m.established_nc[i], &m.empty[i]),
        new_allowed_ratio: Ratio::of(&m.new_allowed[i], &m.empty_single[i]),
        new_denied_ratio: Ratio::of(&m.new_denied[i], &m.empty_single[i]),
        vs_network_policies: (i == 1).then(|| TierRatios {
            new_allowed: Ratio::of(&m.new_allowed[1], &m.new_allowed[0]),
            new_denied: Ratio::of(&m.new_denied[1], &m.new_denied[0]),
            established: Ratio::of(&m.established[1], &m.established[0]),
            new_allowed_per_load: per_load[0].clone(),
            new_denied_per_load: per_load[1].clone(),
        }),
    };
    Ok([row(0), row(1)])
}

/// `10000x100` → (10000, 100).
fn parse_size(arg: Option<&str>) -> Result<(usize, usize)> {
    let arg = arg.context("--size needs PODSxPOLICIES, for example 10000x100")?;
    let (p, q) = arg
        .split_once('x')
        .with_context(|| format!("--size {arg}: expected PODSxPOLICIES, for example 10000x100"))?;
    let n = |v: &str, what: &str, min: usize| {
        v.parse::<usize>()
            .ok()
            .filter(|n| *n >= min)
            .with_context(|| format!("--size {arg}: {what} must be a number of at least {min}"))
    };
    Ok((n(p, "pods", LOCAL_PODS)?, n(q, "policies", 1)?))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let established_only = args.iter().any(|a| a == "--established-only");
    if unsafe { libc::geteuid() } != 0 {
        bail!("the datapath benchmark loads eBPF programs: run it as root (cargo xtask bench)");
    }
    let started = Instant::now();
    // Odd round counts, so a load's median is one round's ratio.
    let (pods, policies, plan): (&[usize], &[usize], Plan) = if quick {
        (
            &[1_000, 10_000],
            &[100, 1_000],
            Plan {
                loads: 4,
                rounds: 9,
                per_round: 200,
                repeat: 100_000,
                established_only,
            },
        )
    } else {
        (
            &[1_000, 10_000, 100_000],
            &[100, 1_000, 10_000],
            Plan {
                loads: 5,
                rounds: 9,
                per_round: 640,
                repeat: 1_000_000,
                established_only,
            },
        )
    };
    // `--size PODSxPOLICIES`: that one size only, with the plan chosen above.
    let one = match args.iter().position(|a| a == "--size") {
        Some(i) => Some(parse_size(args.get(i + 1).map(String::as_str))?),
        None => None,
    };
    let (pods, policies) = match &one {
        Some((p, q)) => (std::slice::from_ref(p), std::slice::from_ref(q)),
        None => (pods, policies),
    };
    let mut rows = Vec::new();
    for &p in pods {
        for &q in policies {
            let t = Instant::now();
            let [np, tiered] =
                measure_size(p, q, &plan).with_context(|| format!("{p} pods, {q} policies"))?;
            if !json {
                let spread = |r: &Ratio| format!("{:.2}-{:.2}x", r.q1, r.q3);
                let loads = |v: &[f64]| {
                    v.iter()
                        .map(|r| format!("{r:.2}"))
                        .collect::<Vec<_>>()
                        .join("/")
                };
                let v = tiered.vs_network_policies.as_ref().expect("a tiered row");
                eprintln!(
                    "measured {p} pods x {q} policies in {:.1} s: {} policy entries (install \
                     {:.0} ms), + 100 Admin + 100 Baseline {} (install {:.0} ms)\n  tiered/NP \
                     quartiles of {} rounds: new-ok {}, new-no {}, estab {}; \
                     medians per load: new-ok {}, new-no {}",
                    t.elapsed().as_secs_f64(),
                    np.policy_entries,
                    np.install_ms,
                    tiered.policy_entries,
                    tiered.install_ms,
                    plan.loads * plan.rounds,
                    spread(&v.new_allowed),
                    spread(&v.new_denied),
                    spread(&v.established),
                    loads(&v.new_allowed_per_load),
                    loads(&v.new_denied_per_load),
                );
            }
            rows.push(np);
            rows.push(tiered);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    eprintln!("all sizes in {:.0} s", started.elapsed().as_secs_f64());
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
            r.established_ratio.median,
            r.established_nc_ns,
            r.established_nc_ratio.median,
            r.empty_single_ns,
            r.new_allowed_ns,
            r.new_denied_ns,
            r.new_allowed_ratio.median,
            r.new_denied_ratio.median,
        );
    }
    // The tiers: the same sizes with 100 Admin and 100 Baseline policies, over the
    // NetworkPolicy-only figures measured in the same rounds.
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
        let (Some(b), Some(v)) = (
            rows.iter()
                .find(|r| !r.tiers && r.pods == t.pods && r.policies == t.policies),
            t.vs_network_policies.as_ref(),
        ) else {
            continue;
        };
        println!(
            "{:>7} {:>6} {:>8} | {:>6.0}n {:>6.0}n {:>5.2}x | {:>6.0}n {:>6.0}n {:>5.2}x | {:>6.1}n {:>6.1}n {:>5.2}x",
            t.pods,
            t.policies,
            t.policy_entries,
            b.new_allowed_ns,
            t.new_allowed_ns,
            v.new_allowed.median,
            b.new_denied_ns,
            t.new_denied_ns,
            v.new_denied.median,
            b.established_ns,
            t.established_ns,
            v.established.median,
        );
    }
    // Scaling: a new flow's cost at the largest pod count against the smallest, per policy
    // count. These sizes were measured minutes apart, so these are quotients of figures.
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
