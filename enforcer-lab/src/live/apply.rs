//! `lab apply` and `lab delete`: all or nothing (checked first, undone when an agent rejects
//! the change), each object `created`, `configured` or `unchanged`.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::{LOCK_FILE, Live, need_root, save_state};
use crate::api::{Api, Mark};
use crate::lab::SavedState;
use crate::manifests::{ClusterState, ManifestWriter};
use crate::netns::{self, Netns};
use crate::plan::Changes;
use crate::{scenario, services};

/// `lab apply NAME FILE` (or `lab delete NAME FILE` with `delete`).
pub fn apply(name: &str, file: &Path, delete: bool, agent_timeout: Duration) -> i32 {
    match apply_inner(name, file, delete, agent_timeout) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("enforcer lab: error: {e:#}");
            2
        }
    }
}

/// `lab apply` (or `lab delete`) is all or nothing. Every object of the file is decoded
/// strictly, checked as the agent checks it (`crate::agent_check`: a port range, a CIDR), and
/// its namespace checked before anything is written, so a bad file changes nothing; should an
/// agent still reject the change (a failed map update), the lab puts back what was there (manifests, Services, saved
/// state) and waits until the agents have it again, so the lab is as before and the next
/// apply starts from there. Each object is said `created`, `configured` or `unchanged` (its
/// content as last applied), as kubectl says; a file that changes nothing writes nothing.
fn apply_inner(name: &str, file: &Path, delete: bool, agent_timeout: Duration) -> Result<()> {
    let source = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {source}"))?;
    let objects = scenario::parse_objects(&text)
        .with_context(|| format!("{source}: bad objects (nothing was applied)"))?;
    // ENFORCER_LAB_NO_AGENT_CHECK leaves the judging to the agents, so that a test can show
    // the undo below at work.
    let pre_check = std::env::var_os("ENFORCER_LAB_NO_AGENT_CHECK").is_none();
    if !delete
        && pre_check
        && let Some(check) = crate::agent_check()
    {
        check(&source, &text).map_err(|e| anyhow!("rejected: {e}\nnothing was applied"))?;
    }
    need_root(if delete {
        "`lab delete`"
    } else {
        "`lab apply`"
    })?;
    let live = Live::open(name)?;

    // One change at a time.
    let lock = std::fs::File::create(live.dir.join(LOCK_FILE))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).context("locking the lab");
    }
    let mut saved = live.state()?;
    let plan = &live.plan;
    let before = saved.state.clone();
    if !delete {
        for o in &objects {
            crate::plan::missing_namespace(o, |ns| before.namespaces.contains_key(ns))
                .with_context(|| format!("{source}: nothing was applied"))?;
        }
    }

    let mut changes = Changes::default();
    let mut said = Vec::new();
    for o in &objects {
        let key = &o.key;
        let kind = key.kind.to_ascii_lowercase();
        let id = format!(
            "{kind} {}{}",
            key.namespace
                .as_ref()
                .map(|n| format!("{n}/"))
                .unwrap_or_default(),
            key.name
        );
        if delete {
            let exists = if key.kind == "Service" {
                before.services.contains_key(&format!(
                    "{}/{}",
                    key.namespace.as_deref().unwrap_or("default"),
                    key.name
                ))
            } else {
                before.objects.contains_key(key)
            };
            if !exists {
                bail!("{}: {key} does not exist in lab {}", o.path, live.name());
            }
            changes.delete.push(key.clone());
            said.push(format!("{id} deleted"));
            continue;
        }
        match &o.service {
            Some(spec) => {
                let sp = saved
                    .state
                    .cluster_ips
                    .plan(spec)
                    .map_err(|e| anyhow!("{}: spec.clusterIP: {e}", o.path))?;
                let verb = verb(before.services.get(&sp.key()), &sp);
                said.push(format!("{id} {verb} (cluster IP {})", sp.cluster_ip));
                if verb != "unchanged" {
                    changes.apply_services.push(sp);
                }
            }
            None => {
                let verb = verb(before.objects.get(key), &o.value);
                said.push(format!("{id} {verb}"));
                if verb != "unchanged" {
                    changes.apply.push(o.clone());
                }
            }
        }
    }
    if changes.is_empty() {
        for line in &said {
            println!("{line}");
        }
        return Ok(());
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        saved.state.apply(&changes);
        install(&live, &before, &mut saved).await?;
        let problems = wait_agents(&live, &saved.mark, agent_timeout).await;
        if problems.is_empty() {
            for line in &said {
                println!("{line}");
            }
            println!(
                "generation {}: in force on {}",
                saved.generation,
                plan.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Ok(());
        }
        // Rejected: put back what was there, so that the file changes nothing.
        let rejected = std::mem::replace(&mut saved.state, before);
        install(&live, &rejected, &mut saved).await?;
        let again = wait_agents(&live, &saved.mark, agent_timeout).await;
        let outcome = if again.is_empty() {
            format!(
                "nothing was applied: lab {} is as it was (generation {})",
                live.name(),
                saved.generation
            )
        } else {
            format!(
                "putting the previous state back failed too:\n{}",
                again.join("\n")
            )
        };
        bail!("{source}: rejected:\n{}\n{outcome}", problems.join("\n"))
    })
}

/// What applying `new` over `old` (the content last applied, if any) does, in kubectl's words.
fn verb<T: PartialEq>(old: Option<&T>, new: &T) -> &'static str {
    match old {
        None => "created",
        Some(o) if o == new => "unchanged",
        Some(_) => "configured",
    }
}

/// Makes the lab hold `saved.state` where it held `from`: routes for new cluster IPs, the
/// manifests (a new generation), the Services' rules; then saves the state.
async fn install(live: &Live, from: &ClusterState, saved: &mut SavedState) -> Result<()> {
    let plan = &live.plan;
    let old_routes = services::routes_for(&from.cluster_ips);
    let new_routes: Vec<_> = services::routes_for(&saved.state.cluster_ips)
        .into_iter()
        .filter(|r| !old_routes.contains(r))
        .collect();
    netns::add_service_routes(plan, &new_routes).await?;
    let want = saved.state.manifests(plan);
    saved.mark = if plan.control_plane.is_some() {
        let mut api = Api::attach(plan, &live.dir, from.manifests(plan), saved.mark.clone())?;
        api.sync(&want).await?
    } else {
        let mut writer = ManifestWriter::resume(
            live.dir.join("manifests"),
            from.manifests(plan),
            saved.generation,
        );
        Mark::generation(writer.sync(&want)?)
    };
    saved.generation = saved.mark.generation;
    if !saved.state.services.is_empty() || saved.nft_installed {
        let nodes = plan
            .nodes
            .iter()
            .map(|n| Netns::open(&n.netns))
            .collect::<Result<Vec<_>>>()?;
        services::install(&plan.pods, &saved.state, &nodes).await?;
        saved.nft_installed = true;
    }
    save_state(&live.dir, saved)
}

/// Waits until every agent reports `generation`; returns what each one that did not said.
async fn wait_agents(live: &Live, mark: &Mark, timeout: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    for n in &live.plan.nodes {
        let status = live.node_dir(&n.name).join("status.json");
        if let Err(e) = crate::agent::wait_status(&status, mark, timeout).await {
            problems.push(format!("agent on {}: {e:#}", n.name));
        }
    }
    problems
}
