//! The cluster as the agent sees it: one manifest file per object in a folder, written
//! atomically (hidden temp file + rename), then `.generation` bumped so the agent can say which
//! complete set it has applied.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::plan::{Changes, NodePlan, Plan, PodPlan, fnv};
use crate::scenario::{Labels, ObjectKey};
use crate::services::{ClusterIps, ServicePlan};

/// The cluster's objects at one point of the run (saved as JSON for a lab left running).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, Labels>,
    /// Labels of each pod of the plan, by index.
    pub pod_labels: Vec<Labels>,
    /// Labels of each node of the plan, by index (written out as Node objects).
    #[serde(default)]
    pub node_labels: Vec<Labels>,
    #[serde(with = "object_list")]
    pub objects: BTreeMap<ObjectKey, Value>,
    /// `namespace/name` → the Service with its cluster IP.
    pub services: BTreeMap<String, ServicePlan>,
    /// Cluster IPs given so far, and the addresses none may take.
    pub cluster_ips: ClusterIps,
}

/// Objects as a list of `{key, value}` (JSON object keys must be strings).
mod object_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    use crate::scenario::ObjectKey;

    #[derive(Serialize, Deserialize)]
    struct Entry {
        key: ObjectKey,
        value: Value,
    }

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<ObjectKey, Value>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let v: Vec<Entry> = m
            .iter()
            .map(|(k, v)| Entry {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<ObjectKey, Value>, D::Error> {
        let v: Vec<Entry> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|e| (e.key, e.value)).collect())
    }
}

impl ClusterState {
    pub fn initial(plan: &Plan) -> Self {
        ClusterState {
            namespaces: plan.namespaces.clone(),
            pod_labels: plan.pods.iter().map(|p| p.labels.clone()).collect(),
            node_labels: plan.nodes.iter().map(|n| n.labels.clone()).collect(),
            objects: plan
                .objects
                .iter()
                .map(|o| (o.key.clone(), o.value.clone()))
                .collect(),
            services: plan.services.iter().map(|s| (s.key(), s.clone())).collect(),
            cluster_ips: plan.cluster_ips.clone(),
        }
    }

    pub fn service_list(&self) -> Vec<ServicePlan> {
        self.services.values().cloned().collect()
    }

    pub fn apply(&mut self, c: &Changes) {
        for o in &c.apply {
            self.objects.insert(o.key.clone(), o.value.clone());
        }
        for s in &c.apply_services {
            self.services.insert(s.key(), s.clone());
        }
        for k in &c.delete {
            if k.kind == "Service" {
                let ns = k.namespace.as_deref().unwrap_or("default");
                self.services.remove(&format!("{ns}/{}", k.name));
            } else {
                self.objects.remove(k);
            }
        }
        for (i, labels) in &c.relabel_pods {
            self.pod_labels[*i] = labels.clone();
        }
        for (ns, labels) in &c.relabel_namespaces {
            self.namespaces.insert(ns.clone(), labels.clone());
        }
        for (i, labels) in &c.relabel_nodes {
            if let Some(l) = self.node_labels.get_mut(*i) {
                *l = labels.clone();
            }
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
        for (node, labels) in plan.nodes.iter().zip(&self.node_labels) {
            out.insert(
                file_name(&["node", &node.name]),
                node_manifest(node, labels),
            );
        }
        for (pod, labels) in plan.pods.iter().zip(&self.pod_labels) {
            out.insert(
                file_name(&["pod", &pod.namespace, &pod.name]),
                pod_manifest(plan, pod, labels),
            );
        }
        for svc in self.services.values() {
            out.insert(
                file_name(&["service", &svc.namespace, &svc.name]),
                svc.manifest(),
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

/// A Node as the API server holds it once its kubelet has registered it: its labels (with
/// `kubernetes.io/hostname` and `kubernetes.io/os`, as the plan gives them) and, in
/// `status.addresses`, an `InternalIP` for each of its fabric addresses and its `Hostname`.
pub fn node_manifest(node: &NodePlan, labels: &Labels) -> Value {
    let mut addresses: Vec<Value> = node
        .fabric_ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": node.name}));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "status": {"addresses": addresses},
    })
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
    let mut spec = json!({
        "nodeName": plan.nodes[pod.node].name,
        "containers": [{"name": "main", "image": "enforcer-lab", "ports": ports}],
    });
    if pod.host_network {
        // Its addresses (below) are its node's, as the kubelet reports them.
        spec["hostNetwork"] = json!(true);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": pod.namespace, "name": pod.name, "labels": labels},
        "spec": spec,
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

    /// A writer taking over a folder that holds `written` at `generation` (another process
    /// wrote it: a lab left running, changed by `lab apply`).
    pub fn resume(dir: PathBuf, written: BTreeMap<String, Value>, generation: u64) -> Self {
        ManifestWriter {
            dir,
            written,
            generation,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;
    use crate::scenario::parse;

    const TEXT: &str = "
namespaces: [{name: x, labels: {team: a}}]
pods:
  - {namespace: x, name: a, labels: {pod: a}, ips: [10.0.0.1, 'fd00::1'], ports: [{name: http, port: 80}, {port: 53, protocol: UDP}]}
policies:
  - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: p, namespace: x}, spec: {podSelector: {}}}
steps:
  - delete: [{kind: NetworkPolicy, namespace: x, name: p}]
    relabel: [{pod: x/a, labels: {pod: b}}, {namespace: x, labels: {}}]
";

    #[test]
    fn pods_look_like_the_api_server_holds_them() {
        let p = plan(&parse(TEXT).unwrap(), "enf-000000-").unwrap();
        let m = ClusterState::initial(&p).manifests(&p);
        let pod = &m["pod_x_a.yaml"];
        assert_eq!(
            pod["metadata"],
            json!({"namespace": "x", "name": "a", "labels": {"pod": "a"}})
        );
        assert_eq!(pod["spec"]["nodeName"], json!("node-1"));
        assert_eq!(
            pod["spec"]["containers"][0]["ports"],
            json!([
                {"name": "http", "containerPort": 80, "protocol": "TCP"},
                {"containerPort": 53, "protocol": "UDP"}
            ])
        );
        assert_eq!(pod["status"]["podIP"], json!("10.0.0.1"));
        assert_eq!(
            pod["status"]["podIPs"],
            json!([{"ip": "10.0.0.1"}, {"ip": "fd00::1"}])
        );
        assert_eq!(
            m["namespace_x.yaml"]["metadata"]["labels"],
            json!({"team": "a", "kubernetes.io/metadata.name": "x"})
        );
        assert_eq!(
            m["networkpolicy_x_p.yaml"]["spec"],
            json!({"podSelector": {}})
        );
        assert_eq!(m.len(), 4, "{:?}", m.keys());
    }

    #[test]
    fn nodes_look_like_their_kubelet_registered_them_and_relabel_changes_them() {
        let text = "
nodes: [node-1, {name: node-2, labels: {zone: a}}]
namespaces: [{name: x}]
pods: [{namespace: x, name: a, ips: [10.0.0.1, 'fd00::1']}]
steps:
  - relabel: [{node: node-2, labels: {zone: b, disk: ssd}}]
";
        let p = plan(&parse(text).unwrap(), "enf-000000-").unwrap();
        let mut s = ClusterState::initial(&p);
        let m = s.manifests(&p);
        let node = &m["node_node-2.yaml"];
        assert_eq!(node["apiVersion"], json!("v1"));
        assert_eq!(node["kind"], json!("Node"));
        assert_eq!(
            node["metadata"],
            json!({"name": "node-2", "labels": {
                "zone": "a",
                "kubernetes.io/hostname": "node-2",
                "kubernetes.io/os": "linux",
            }})
        );
        assert_eq!(
            node["status"]["addresses"],
            json!([
                {"type": "InternalIP", "address": "198.18.0.2"},
                {"type": "InternalIP", "address": "fd00:198:18::2"},
                {"type": "Hostname", "address": "node-2"},
            ])
        );
        assert_eq!(
            m["node_node-1.yaml"]["metadata"]["labels"],
            json!({"kubernetes.io/hostname": "node-1", "kubernetes.io/os": "linux"})
        );
        // The agent's strict decoder takes it as a v1 Node.
        assert!(matches!(
            enforcer_objects::decode(node),
            Ok(enforcer_objects::Object::Node(_))
        ));

        s.apply(&p.steps[1].changes);
        let m = s.manifests(&p);
        assert_eq!(
            m["node_node-2.yaml"]["metadata"]["labels"],
            json!({
                "zone": "b",
                "disk": "ssd",
                "kubernetes.io/hostname": "node-2",
                "kubernetes.io/os": "linux",
            })
        );
        assert_eq!(
            m["node_node-2.yaml"]["status"], node["status"],
            "a relabel leaves the addresses"
        );
    }

    #[test]
    fn steps_change_the_state() {
        let p = plan(&parse(TEXT).unwrap(), "enf-000000-").unwrap();
        let mut s = ClusterState::initial(&p);
        s.apply(&p.steps[1].changes);
        let m = s.manifests(&p);
        assert!(!m.contains_key("networkpolicy_x_p.yaml"));
        assert_eq!(m["pod_x_a.yaml"]["metadata"]["labels"], json!({"pod": "b"}));
        assert_eq!(
            m["namespace_x.yaml"]["metadata"]["labels"],
            json!({"kubernetes.io/metadata.name": "x"})
        );
    }

    #[test]
    fn the_state_survives_json() {
        let text = format!(
            "{TEXT}services: [{{namespace: x, name: s, selector: {{pod: a}}, ports: [{{port: 80, targetPort: http}}]}}]\n"
        );
        let p = plan(&parse(&text).unwrap(), "enf-000000-").unwrap();
        let s = ClusterState::initial(&p);
        let json = serde_json::to_string(&s).unwrap();
        let back: ClusterState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.manifests(&p), s.manifests(&p));
        assert_eq!(
            s.manifests(&p)["service_x_s.yaml"]["spec"]["clusterIP"],
            json!("10.96.0.10")
        );
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        assert_eq!(file_name(&["pod", "x", "a.b"]), "pod_x_a.b.yaml");
        let odd = file_name(&["networkpolicy", "x", "../../etc"]);
        assert!(!odd.contains('/') && !odd.starts_with('.'), "{odd}");
        assert_ne!(file_name(&["a", "b/c"]), file_name(&["a", "b:c"]));
    }

    #[test]
    fn the_writer_writes_removes_and_counts() {
        let dir = std::env::temp_dir().join(format!("enforcer-lab-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = ManifestWriter::new(dir.clone());
        let mut want = BTreeMap::new();
        want.insert("a.yaml".to_string(), json!({"kind": "A"}));
        want.insert("b.yaml".to_string(), json!({"kind": "B"}));
        assert_eq!(w.sync(&want).unwrap(), 1);
        want.remove("a.yaml");
        assert_eq!(w.sync(&want).unwrap(), 2);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec![".generation", "b.yaml"]);
        assert_eq!(
            std::fs::read_to_string(dir.join(".generation")).unwrap(),
            "2\n"
        );
        let b: Value =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("b.yaml")).unwrap()).unwrap();
        assert_eq!(b, json!({"kind": "B"}));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
