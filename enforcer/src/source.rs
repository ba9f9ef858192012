//! Sources of cluster state. The manifests folder source lives here: it reads Namespace, Pod,
//! NetworkPolicy, Service and EndpointSlice YAML (or JSON) from a folder and keeps, per file, the last version that parsed
//! and validated, so a bad edit is reported and the last good state keeps enforcing.

// Errors here are rare, off the hot path, and carry every detail a user needs to find the bad
// field; boxing them would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use enforcer_objects::{BUILT_IN_NAMESPACES, Object as K8s, ObjectError, decode_document};
use serde::Deserialize;

use crate::compiler::Cluster;
use crate::model::{
    EndpointSlice, InvalidObject, Namespace, ObjectRef, Pod, Policy, Service,
    endpoint_slice_from_api, namespace_from_api, pod_from_api, policy_from_api, service_from_api,
};

use crate::cluster_policy::{self, ClusterPolicy};

/// A validated object, as the index stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Policy(Policy),
    Service(Service),
    EndpointSlice(EndpointSlice),
    /// ClusterNetworkPolicy, AdminNetworkPolicy or BaselineAdminNetworkPolicy.
    ClusterPolicy(ClusterPolicy),
    Node(crate::model::Node),
}

impl Cluster {
    /// Creates or replaces an object.
    pub fn insert(&mut self, obj: Object) {
        match obj {
            Object::Namespace(n) => {
                self.namespaces.insert(n.name.clone(), n);
            }
            Object::Pod(p) => {
                self.pods.insert(p.key(), p);
            }
            Object::Policy(p) => {
                self.policies.insert(p.key(), p);
            }
            Object::Service(s) => {
                self.services.insert(s.key(), s);
            }
            Object::EndpointSlice(s) => {
                self.slices.insert(s.key(), s);
            }
            Object::ClusterPolicy(p) => {
                self.cluster_policies.insert(p.key(), p);
            }
            Object::Node(n) => {
                self.nodes.insert(n.name.clone(), n);
            }
        }
    }
}

/// Each variant names the file (and the document) and then says why, once: the cause is part
/// of the message (these errors are collected as lines of text), not a chained source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{file}: document {doc}: {reason}")]
    Yaml {
        file: String,
        doc: usize,
        reason: String,
    },
    /// Refused by the strict decoder: an unknown kind or apiVersion, an unknown field (with
    /// the nearest known one), a value of the wrong type.
    #[error("{file}: document {doc}: {error}")]
    Object {
        file: String,
        doc: usize,
        error: ObjectError,
    },
    #[error("{file}: {error}")]
    Invalid { file: String, error: InvalidObject },
    #[error("{file}: {error}")]
    Io { file: String, error: std::io::Error },
}

impl Object {
    /// The namespace of a namespaced object.
    fn namespace(&self) -> Option<&str> {
        match self {
            Object::Namespace(_) | Object::ClusterPolicy(_) | Object::Node(_) => None,
            Object::Pod(p) => Some(&p.namespace),
            Object::Policy(p) => Some(&p.namespace),
            Object::Service(s) => Some(&s.namespace),
            Object::EndpointSlice(s) => Some(&s.namespace),
        }
    }

    /// `NetworkPolicy x/p`.
    fn label(&self) -> String {
        let (kind, key) = match self {
            Object::Namespace(n) => return format!("Namespace {}", n.name),
            Object::ClusterPolicy(p) => return format!("{} {}", p.kind.name(), p.name),
            Object::Node(n) => return format!("Node {}", n.name),
            Object::Pod(p) => ("Pod", p.key()),
            Object::Policy(p) => ("NetworkPolicy", p.key()),
            Object::Service(s) => ("Service", s.key()),
            Object::EndpointSlice(s) => ("EndpointSlice", s.key()),
        };
        format!("{kind} {key}")
    }
}

/// The objects of one document (one object, or a list's items), decoded strictly, then
/// validated.
fn objects_of(
    file: &str,
    doc: usize,
    value: &serde_json::Value,
) -> Result<Vec<Object>, SourceError> {
    let decoded = decode_document(value).map_err(|error| SourceError::Object {
        file: file.to_string(),
        doc,
        error,
    })?;
    let invalid = |error| SourceError::Invalid {
        file: file.to_string(),
        error,
    };
    decoded
        .into_iter()
        .map(|o| {
            Ok(match o {
                K8s::Namespace(n) => Object::Namespace(namespace_from_api(&n).map_err(invalid)?),
                K8s::Pod(p) => Object::Pod(pod_from_api(&p).map_err(invalid)?),
                K8s::NetworkPolicy(p) => Object::Policy(policy_from_api(&p).map_err(invalid)?),
                K8s::Service(s) => Object::Service(service_from_api(&s).map_err(invalid)?),
                K8s::EndpointSlice(s) => {
                    Object::EndpointSlice(endpoint_slice_from_api(&s).map_err(invalid)?)
                }
                K8s::ClusterNetworkPolicy(p) => {
                    Object::ClusterPolicy(cluster_policy::from_cnp(&p).map_err(invalid)?)
                }
                K8s::AdminNetworkPolicy(p) => {
                    Object::ClusterPolicy(cluster_policy::from_anp(&p).map_err(invalid)?)
                }
                K8s::BaselineAdminNetworkPolicy(p) => {
                    Object::ClusterPolicy(cluster_policy::from_banp(&p).map_err(invalid)?)
                }
                K8s::Node(n) => Object::Node(crate::model::node_from_api(&n).map_err(invalid)?),
            })
        })
        .collect()
}

/// Parses every document of a YAML (or JSON) text into validated objects, each with the
/// number of its document.
fn parse_documents(file: &str, text: &str) -> Result<Vec<(usize, Object)>, SourceError> {
    let mut out = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let doc = i + 1;
        let value = serde_json::Value::deserialize(de).map_err(|e| SourceError::Yaml {
            file: file.to_string(),
            doc,
            reason: e.to_string(),
        })?;
        if value.is_null() {
            continue; // an empty document (`---` at the end)
        }
        out.extend(objects_of(file, doc, &value)?.into_iter().map(|o| (doc, o)));
    }
    Ok(out)
}

/// Parses every document of a YAML (or JSON) text into validated objects.
pub fn parse_objects(file: &str, text: &str) -> Result<Vec<Object>, SourceError> {
    Ok(parse_documents(file, text)?
        .into_iter()
        .map(|(_, o)| o)
        .collect())
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
}

/// The result of reading the folder once.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub cluster: Cluster,
    /// Files whose current content was rejected (their last good content is in `cluster`),
    /// and objects not in force because their namespace does not exist.
    pub errors: Vec<String>,
    /// The integer in `.generation`, read before the files, if present.
    pub generation: Option<u64>,
    /// Whether any file changed since the previous read.
    pub changed: bool,
}

/// A folder of manifests. Hidden files are ignored (except `.generation`), so writers can write
/// `.name.tmp` and rename it into place.
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, (Fingerprint, Vec<(usize, Object)>)>,
    errors: BTreeMap<PathBuf, (Fingerprint, String)>,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn is_manifest(p: &Path) -> bool {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !name.starts_with('.')
            && (name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json"))
    }

    /// Reads what changed since the last call and returns the whole state.
    pub fn read(&mut self) -> Result<Snapshot, SourceError> {
        let io = |error| SourceError::Io {
            file: self.dir.display().to_string(),
            error,
        };
        // Read the generation first: a writer bumps it after the files, so every file of that
        // generation is already in place.
        let generation = fs::read_to_string(self.dir.join(".generation"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let mut seen = Vec::new();
        let mut changed = false;
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            if !Self::is_manifest(&path) || !path.is_file() {
                continue;
            }
            seen.push(path.clone());
            let meta = entry.metadata().map_err(io)?;
            let fp = Fingerprint {
                modified: meta.modified().ok(),
                len: meta.len(),
            };
            let unchanged = self.files.get(&path).is_some_and(|(f, _)| *f == fp)
                || self.errors.get(&path).is_some_and(|(f, _)| *f == fp);
            if unchanged {
                continue;
            }
            changed = true;
            let name = path.display().to_string();
            let parsed = fs::read_to_string(&path)
                .map_err(|error| SourceError::Io {
                    file: name.clone(),
                    error,
                })
                .and_then(|text| parse_documents(&name, &text));
            match parsed {
                Ok(objs) => {
                    self.errors.remove(&path);
                    self.files.insert(path, (fp, objs));
                }
                Err(e) => {
                    self.errors.insert(path, (fp, e.to_string()));
                }
            }
        }
        let before = self.files.len() + self.errors.len();
        self.files.retain(|p, _| seen.contains(p));
        self.errors.retain(|p, _| seen.contains(p));
        changed |= self.files.len() + self.errors.len() != before;

        // An object in a namespace the folder does not hold (nor every cluster has) is not in
        // force, and said so, until its namespace appears: in a cluster it could not exist.
        // Its file stays good (the object itself is fine), so it needs no edit then.
        let namespaces: BTreeSet<&str> = self
            .files
            .values()
            .flat_map(|(_, objs)| objs)
            .filter_map(|(_, o)| match o {
                Object::Namespace(n) => Some(n.name.as_str()),
                _ => None,
            })
            .chain(BUILT_IN_NAMESPACES.iter().copied())
            .collect();
        let mut errors: Vec<String> = self.errors.values().map(|(_, e)| e.clone()).collect();
        let mut cluster = Cluster::default();
        for (path, (_, objs)) in &self.files {
            for (doc, o) in objs {
                match o.namespace() {
                    Some(ns) if !namespaces.contains(ns) => errors.push(format!(
                        "{}: document {doc}: {}: metadata.namespace: namespace {ns:?} does not \
                         exist (not in force until it does)",
                        path.display(),
                        o.label()
                    )),
                    _ => cluster.insert(o.clone()),
                }
            }
        }
        Ok(Snapshot {
            cluster,
            errors,
            generation,
            changed,
        })
    }
}

/// Keys of everything in a cluster, for logs.
pub fn summary(c: &Cluster) -> String {
    let pols: Vec<String> = c.policies.keys().map(ObjectRef::to_string).collect();
    format!(
        "{} namespaces, {} pods, {} policies [{}]",
        c.namespaces.len(),
        c.pods.len(),
        c.policies.len(),
        pols.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_yaml_names_file_and_field() {
        let e = parse_objects(
            "p.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {matchLabels: [1]}}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("p.yaml") && e.contains("spec.podSelector.matchLabels"),
            "{e}"
        );
        assert!(e.contains("x/a"), "{e}");
        let e = parse_objects("q.yaml", "kind: [").unwrap_err().to_string();
        assert!(e.starts_with("q.yaml: document 1"), "{e}");
        let e = parse_objects(
            "r.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{ports: [{protocol: ICMP}]}]}",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "r.yaml: NetworkPolicy x/a: spec.ingress[0].ports[0].protocol: unknown protocol \"ICMP\" (TCP, UDP or SCTP)"
        );
    }

    #[test]
    fn folder_keeps_last_good_file() {
        let dir = std::env::temp_dir().join(format!("enforcer-src-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let good = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";
        fs::write(dir.join("p.yaml"), good).unwrap();
        fs::write(dir.join(".generation"), "7").unwrap();
        fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let mut src = ManifestDir::new(&dir);
        let s = src.read().unwrap();
        assert_eq!(s.generation, Some(7));
        assert!(s.changed && s.errors.is_empty());
        assert_eq!(s.cluster.policies.len(), 1);
        assert_eq!(
            s.cluster.namespaces["x"].labels["kubernetes.io/metadata.name"],
            "x"
        );
        let s = src.read().unwrap();
        assert!(!s.changed);
        // A broken edit: reported, last good content kept.
        fs::write(dir.join("p.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {policyTypes: [Sideways]}\n").unwrap();
        let s = src.read().unwrap();
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(s.errors[0].contains("spec.policyTypes[0]"));
        assert_eq!(s.cluster.policies.len(), 1);
        fs::remove_file(dir.join("p.yaml")).unwrap();
        let s = src.read().unwrap();
        assert!(s.changed && s.errors.is_empty() && s.cluster.policies.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    const NS_X: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";

    #[test]
    fn misspelt_fields_and_unknown_kinds_are_refused() {
        let e = parse_objects(
            "p.yaml",
            &format!("{NS_X}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{podSelector: {{matchLabel: {{app: web}}}}}}]}}]\n"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "p.yaml: document 2: NetworkPolicy x/a: spec.ingress[0].from[0].podSelector.matchLabel: unknown field \"matchLabel\" (did you mean matchLabels?)"
        );
        let e = parse_objects(
            "d.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: x}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("d.yaml: document 1: Deployment x/d: kind: unknown kind \"Deployment\": enforcer reads Namespace (v1)"),
            "{e}"
        );
        // Lists: their items too.
        let e = parse_objects(
            "l.yaml",
            "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Namespace, metadata: {name: x, lables: {}}}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("items[0] (Namespace x): metadata.lables"), "{e}");
    }

    #[test]
    fn an_object_in_a_missing_namespace_is_reported_and_not_in_force() {
        let dir = std::env::temp_dir().join(format!("enforcer-src-ns-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("p.yaml"),
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d}\nspec: {podSelector: {}}\n",
        )
        .unwrap();
        let mut src = ManifestDir::new(&dir);
        let s = src.read().unwrap();
        let file = dir.join("p.yaml").display().to_string();
        assert_eq!(
            s.errors,
            [format!(
                "{file}: document 1: NetworkPolicy x/a: metadata.namespace: namespace \"x\" does not exist (not in force until it does)"
            )]
        );
        // `default` exists in every cluster.
        let keys: Vec<String> = s.cluster.policies.keys().map(ToString::to_string).collect();
        assert_eq!(keys, ["default/d"]);
        // The namespace arrives: the policy is in force, no edit needed.
        fs::write(dir.join("ns.yaml"), NS_X).unwrap();
        let s = src.read().unwrap();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.cluster.policies.len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
