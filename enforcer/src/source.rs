//! Sources of cluster state. The manifests folder source lives here: it reads Namespace, Pod,
//! NetworkPolicy, Service and EndpointSlice YAML (or JSON) from a folder and keeps, per file, the last version that parsed
//! and validated, so a bad edit is reported and the last good state keeps enforcing.

// Errors here are rare, off the hot path, and carry every detail a user needs to find the bad
// field; boxing them would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Namespace as KNamespace, Pod as KPod, Service as KService};
use k8s_openapi::api::discovery::v1::EndpointSlice as KEndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy as KPolicy;
use serde::Deserialize;

use crate::compiler::Cluster;
use crate::model::{
    EndpointSlice, InvalidObject, Namespace, ObjectRef, Pod, Policy, Service,
    endpoint_slice_from_api, namespace_from_api, pod_from_api, policy_from_api, service_from_api,
};

/// A validated object, as the index stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Policy(Policy),
    Service(Service),
    EndpointSlice(EndpointSlice),
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{file}: document {doc}: {reason}")]
    Yaml {
        file: String,
        doc: usize,
        reason: String,
    },
    #[error("{file}: document {doc} ({kind} {name}): field {field}: {reason}")]
    Field {
        file: String,
        doc: usize,
        kind: String,
        name: String,
        field: String,
        reason: String,
    },
    #[error("{file}: {source}")]
    Invalid {
        file: String,
        #[source]
        source: InvalidObject,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

fn typed<T: for<'de> Deserialize<'de>>(
    file: &str,
    doc: usize,
    kind: &str,
    value: &serde_json::Value,
) -> Result<T, SourceError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let name = value
            .pointer("/metadata/namespace")
            .and_then(|n| n.as_str())
            .map(|n| format!("{n}/"))
            .unwrap_or_default()
            + value
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or("<unnamed>");
        SourceError::Field {
            file: file.to_string(),
            doc,
            kind: kind.to_string(),
            name,
            field: e.path().to_string(),
            reason: e.into_inner().to_string(),
        }
    })
}

fn object_from_value(
    file: &str,
    doc: usize,
    value: serde_json::Value,
    out: &mut Vec<Object>,
) -> Result<(), SourceError> {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let invalid = |source| SourceError::Invalid {
        file: file.to_string(),
        source,
    };
    match kind {
        "Namespace" => out.push(Object::Namespace(
            namespace_from_api(&typed::<KNamespace>(file, doc, kind, &value)?).map_err(invalid)?,
        )),
        "Pod" => out.push(Object::Pod(
            pod_from_api(&typed::<KPod>(file, doc, kind, &value)?).map_err(invalid)?,
        )),
        "NetworkPolicy" => out.push(Object::Policy(
            policy_from_api(&typed::<KPolicy>(file, doc, kind, &value)?).map_err(invalid)?,
        )),
        "Service" => out.push(Object::Service(
            service_from_api(&typed::<KService>(file, doc, kind, &value)?).map_err(invalid)?,
        )),
        "EndpointSlice" => out.push(Object::EndpointSlice(
            endpoint_slice_from_api(&typed::<KEndpointSlice>(file, doc, kind, &value)?)
                .map_err(invalid)?,
        )),
        "List" | "NamespaceList" | "PodList" | "NetworkPolicyList" | "ServiceList"
        | "EndpointSliceList" => {
            let items = value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            for item in items {
                object_from_value(file, doc, item, out)?;
            }
        }
        "" => {
            return Err(SourceError::Yaml {
                file: file.to_string(),
                doc,
                reason: "missing field `kind`".into(),
            });
        }
        // Other kinds (Deployments, ConfigMaps, ...) share folders with policies; they carry
        // nothing this source needs.
        _ => {}
    }
    Ok(())
}

/// Parses every document of a YAML (or JSON) text into validated objects.
pub fn parse_objects(file: &str, text: &str) -> Result<Vec<Object>, SourceError> {
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
        object_from_value(file, doc, value, &mut out)?;
    }
    Ok(out)
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
    /// Files whose current content was rejected (their last good content is in `cluster`).
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
    files: BTreeMap<PathBuf, (Fingerprint, Vec<Object>)>,
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
        let io = |source| SourceError::Io {
            file: self.dir.display().to_string(),
            source,
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
                .map_err(|source| SourceError::Io {
                    file: name.clone(),
                    source,
                })
                .and_then(|text| parse_objects(&name, &text));
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

        let mut cluster = Cluster::default();
        for (_, objs) in self.files.values() {
            for o in objs {
                cluster.insert(o.clone());
            }
        }
        Ok(Snapshot {
            cluster,
            errors: self.errors.values().map(|(_, e)| e.clone()).collect(),
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
            "kind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {ingress: [{ports: [{protocol: ICMP}]}]}",
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
        let good = "kind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {podSelector: {}}\n---\nkind: Namespace\nmetadata: {name: x}\n";
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
        fs::write(dir.join("p.yaml"), "kind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {policyTypes: [Sideways]}\n").unwrap();
        let s = src.read().unwrap();
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(s.errors[0].contains("spec.policyTypes[0]"));
        assert_eq!(s.cluster.policies.len(), 1);
        fs::remove_file(dir.join("p.yaml")).unwrap();
        let s = src.read().unwrap();
        assert!(s.changed && s.errors.is_empty() && s.cluster.policies.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
