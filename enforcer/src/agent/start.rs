//! The agent's start, between loading the datapath and the first reconcile. A failure hands
//! the datapath back, so that `run` can undo what this start made (`Datapath::abandon`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tracing::warn;

use super::{Agent, AgentOptions, Names, Source, write_events};
use crate::bpf::Datapath;
use crate::compiler::{Cluster, Ids};
use crate::metrics::Health;
use crate::model::ObjectRef;

type Started = (
    Agent,
    tokio::task::JoinHandle<()>,
    Option<crate::netlink::Subscription>,
);

/// Configures the loaded datapath, opens the source and runs the first reconcile.
pub(super) async fn start(
    opts: &AgentOptions,
    mut datapath: Datapath,
    health: &Arc<Health>,
) -> std::result::Result<Started, (anyhow::Error, Datapath)> {
    let prepared = match prepare(opts, &mut datapath, health) {
        Ok(p) => p,
        Err(e) => return Err((e, datapath)),
    };
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    if let Err(e) = datapath.spawn_event_reader(ev_tx) {
        return Err((e, datapath));
    }
    let source = match Source::open(&opts.source).await {
        Ok(s) => s,
        Err(e) => return Err((e, datapath)),
    };
    let events_task = tokio::spawn(write_events(
        ev_rx,
        opts.node.clone(),
        prepared.names.clone(),
        opts.events_file.clone(),
        opts.events_max_bytes,
    ));
    let mut agent = Agent {
        source,
        opts: opts.clone(),
        datapath,
        installed: prepared.installed,
        ids: Ids::default(),
        cluster: Cluster::default(),
        generation: None,
        resource_versions: BTreeMap::new(),
        last_error: None,
        revision: prepared.revision,
        interfaces: BTreeMap::new(),
        host_ips: Vec::new(),
        held: BTreeSet::new(),
        unclaimed: BTreeSet::new(),
        install_failed: false,
        tables: None,
        solicited: BTreeMap::new(),
        conflicted: BTreeSet::new(),
        conflicts: Vec::new(),
        names: prepared.names,
        health: health.clone(),
        noticed: None,
        capacity_held: Vec::new(),
        pinned_policies: Some(prepared.pinned_policies),
        rule_labels: BTreeSet::new(),
        event_loss: crate::events::loss::LossWarnings::new(crate::events::loss::INTERVAL),
        policy_capacity: prepared.policy_capacity,
        owner: None,
        started: crate::events::rfc3339_ms(jiff::Timestamp::now(), &jiff::tz::TimeZone::UTC),
        rejected: Vec::new(),
        priority_conflicts: Vec::new(),
    };
    // Links, addresses, routes and neighbours as they change: a new pod interface is
    // programmed within milliseconds, not at the next rescan. Opened before the first scan so
    // nothing between the two is missed.
    let netlink = match crate::netlink::Subscription::open() {
        Ok(s) => Some(s),
        Err(e) => {
            warn!("no netlink events ({e}); interfaces are found by the periodic rescan only");
            None
        }
    };
    if let Err(e) = agent.reconcile(true, true) {
        events_task.abort();
        return Err((e, agent.datapath));
    }
    Ok((agent, events_task, netlink))
}

struct Prepared {
    installed: crate::state::MapState,
    revision: u32,
    policy_capacity: u32,
    names: Arc<Mutex<Names>>,
    pinned_policies: BTreeMap<u32, ObjectRef>,
}

fn prepare(opts: &AgentOptions, datapath: &mut Datapath, health: &Arc<Health>) -> Result<Prepared> {
    let installed = datapath.read_state().context("reading the pinned maps")?;
    datapath
        .set_event_limits(opts.event_rate.saturating_mul(1000), opts.event_burst)
        .context("writing the event limits")?;
    datapath
        .set_drop_report_window(opts.drop_report_window)
        .context("writing the drop report window")?;
    datapath
        .set_endpoint_mark(opts.endpoint_mark_shift)
        .context("writing the endpoint mark")?;
    datapath
        .set_ct_settings(enforcer_common::CtSettings {
            endpoint_budget: opts.ct_endpoint_budget,
            _pad: 0,
        })
        .context("writing the conntrack settings")?;
    datapath
        .set_service_deferral(opts.service_defer, opts.service_defer_budget)
        .context("writing the Service deferral settings")?;
    // The garbage collector walks the conntrack tables on a thread of its own, with its own
    // handles: the reconcile loop never waits for a walk.
    let collector = crate::conntrack::Collector {
        tables: datapath
            .ct_tables()
            .context("opening the conntrack tables")?,
        lifetimes: opts.ct_lifetimes,
    };
    crate::conntrack::spawn(collector, opts.ct_gc_interval, health.clone())
        .context("starting the conntrack garbage collector")?;
    // Continue the revision of the agent before us (pinned), so that conntrack entries it
    // admitted are re-checked under our first install rather than mistaken for current.
    let revision = datapath
        .config()
        .context("reading the pinned configuration")?
        .revision;
    // What the agent before us named its policy ids (for seeding ours; empty on a fresh node).
    let pinned_policies = datapath
        .names()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            k.kind == enforcer_common::name_kind::POLICY && k.id >= crate::compiler::FIRST_POLICY_ID
        })
        .filter_map(|(k, v)| {
            let (ns, name) = v.split_once('/')?;
            Some((k.id, ObjectRef::new(ns, name)))
        })
        .collect();
    Ok(Prepared {
        installed,
        revision,
        policy_capacity: datapath.policy_capacity(),
        names: Arc::new(Mutex::new(Names::default())),
        pinned_policies,
    })
}
