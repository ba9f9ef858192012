//! The agent's record for `enforcer status` and `maps dump` (see `status::record`).

use enforcer_common::reason;
use tracing::warn;

use super::{Agent, SourceOptions};
use crate::status::record::{AgentRecord, Held};

impl Agent {
    /// What this agent says about itself now.
    pub(super) fn record(&self) -> AgentRecord {
        let (source, source_location) = match &self.opts.source {
            SourceOptions::Manifests(dir) => ("manifests", Some(dir.display().to_string())),
            SourceOptions::Kube { kubeconfig } => {
                ("kube", kubeconfig.as_ref().map(|k| k.display().to_string()))
            }
        };
        let names = self.names.lock().expect("names lock");
        AgentRecord {
            pid: std::process::id(),
            started: self.started.clone(),
            version: crate::VERSION.to_string(),
            commit: crate::COMMIT.to_string(),
            node: self.opts.node.clone(),
            bpffs: self.opts.bpffs.clone(),
            source: source.to_string(),
            source_location,
            synced: self.health.ready(),
            generation: self.generation,
            error: self.last_error.clone(),
            rejected: self.rejected.clone(),
            priority_conflicts: self.priority_conflicts.clone(),
            held: self
                .capacity_held
                .iter()
                .map(|h| {
                    (
                        h.pod.to_string(),
                        Held {
                            reason: reason::name(reason::ENDPOINT_CAPACITY).to_string(),
                            entries: Some(h.entries),
                        },
                    )
                })
                .collect(),
            pods: self
                .interfaces
                .iter()
                .map(|(pod, ifindex)| (*ifindex, pod.to_string()))
                .collect(),
            pod_ips: names
                .pods_by_ip
                .iter()
                .map(|(ip, pod)| (ip.to_string(), pod.to_string()))
                .collect(),
            held_kinds: self.source.held_kinds(),
        }
    }

    /// Writes the record when it changed.
    pub(super) fn publish(&self) {
        let Some(owner) = &self.owner else {
            return;
        };
        if let Err(e) = owner.write(&self.record()) {
            warn!("cannot write the agent record: {e:#}");
        }
    }
}
