//! The cluster as the agent sees it: one manifest file per object in a folder, written
//! atomically (hidden temp file + rename), then `.generation` bumped so the agent can say which
//! complete set it has applied.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::plan::{Changes, Plan, PodPlan, fnv};
use crate::scenario::{Labels, ObjectKey};

/// The cluster's objects at one point of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, Labels>,
    /// Labels of each pod of the plan, by index.
    pub pod_labels: Vec<Labels>,
    pub objects: BTreeMap<ObjectKey, Value>,
}

impl ClusterState {
    pub fn initial(plan: &Plan) -> Self {
        ClusterState {
            namespaces: plan.namespaces.clone(),
            pod_labels: plan.pods.iter().map(|p| p.labels.clone()).collect(),
            objects: plan
                .objects
                .iter()
                .map(|o| (o.key.clone(), o.value.clone()))
                .collect(),
        }
    }

    pub fn apply(&mut self, c: &Changes) {
        for o in &c.apply {
            self.objects.insert(o.key.clone(), o.value.clone());
        }
        for k in &c.delete {
            self.objects.remove(k);
        }
        for (i, labels) in &c.relabel_pods {
            self.pod_labels[*i] = labels.clone();
        }
        for (ns, labels) in &c.relabel_namespaces {
            self.namespaces.insert(ns.clone(), labels.clone());
        }
    }

    /// File name → object, for every object of the cluster.
    pub fn manifests(&self, plan: &Plan) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for (name, labels) in &self.namespaces {
            out.insert(
                file_name(&["namespace", name]),
                json!({
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels},
                }),
            );
        }
        for (pod, labels) in plan.pods.iter().zip(&self.pod_labels) {
            out.insert(
                file_name(&["pod", &pod.namespace, &pod.name]),
                pod_manifest(plan, pod, labels),
            );
        }
        for (key, value) in &self.objects {
            let kind = key.kind.to_ascii_lowercase();
            let ns = key.namespace.as_deref().unwrap_or("");
            out.insert(file_name(&[&kind, ns, &key.name]), value.clone());
        }
        out
    }
}

/// A Pod as the API server would hold it once running.
pub fn pod_manifest(plan: &Plan, pod: &PodPlan, labels: &Labels) -> Value {
    let ports: Vec<Value> = pod
        .ports
        .iter()
        .map(|p| {
            let mut v = json!({"containerPort": p.port, "protocol": p.protocol.as_str()});
            if let Some(n) = &p.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    let ips: Vec<String> = pod.ips.iter().map(|i| i.to_string()).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": pod.namespace, "name": pod.name, "labels": labels},
        "spec": {
            "nodeName": plan.nodes[pod.node].name,
            "containers": [{"name": "main", "image": "enforcer-lab", "ports": ports}],
        },
        "status": {
            "phase": "Running",
            "podIP": ips.first(),
            "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>(),
        },
    })
}

/// `kind_namespace_name.yaml`; `_` appears in no Kubernetes name, so names cannot collide.
/// Anything unexpected in a part is replaced and a hash keeps the name unique.
pub fn file_name(parts: &[&str]) -> String {
    let joined = parts.join("_");
    let clean: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '~'
            }
        })
        .collect();
    let clean = clean.trim_start_matches('.').to_string();
    if clean == joined && clean.len() <= 200 {
        format!("{clean}.yaml")
    } else {
        let cut: String = clean.chars().take(180).collect();
        format!("{cut}~{:016x}.yaml", fnv(&joined))
    }
}

/// Writes a file atomically: a hidden temp file beside it (the agent ignores hidden files),
/// then a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("no parent folder")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("bad file name")?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The manifests folder and what is in it.
pub struct ManifestWriter {
    dir: PathBuf,
    written: BTreeMap<String, Value>,
    generation: u64,
}

impl ManifestWriter {
    pub fn new(dir: PathBuf) -> Self {
        ManifestWriter {
            dir,
            written: BTreeMap::new(),
            generation: 0,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the folder hold exactly `want`, then bumps `.generation`; returns the new one.
    pub fn sync(&mut self, want: &BTreeMap<String, Value>) -> Result<u64> {
        for (name, value) in want {
            if self.written.get(name) != Some(value) {
                let text = serde_norway::to_string(value)
                    .with_context(|| format!("serializing {name}"))?;
                write_atomic(&self.dir.join(name), text.as_bytes())?;
            }
        }
        for name in self.written.keys() {
            if !want.contains_key(name) {
                let p = self.dir.join(name);
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        self.written = want.clone();
        self.generation += 1;
        write_atomic(
            &self.dir.join(".generation"),
            format!("{}\n", self.generation).as_bytes(),
        )?;
        Ok(self.generation)
    }
}
