//! Kubernetes objects as enforcer reads them from files: a manifests folder (`enforcer run
//! --manifests`, `enforcer explain --manifests`) and the lab's scenarios and `lab apply` files.
//! They are decoded strictly, as `kubectl apply --validate=strict` does:
//!
//! - the kind must be one enforcer reads ([`Kind`]), in its apiVersion;
//! - every field must be one the kind's schema has: an unknown or misspelt one (`matchLabel:`,
//!   `ingres:`) is an error naming its path (`spec.ingress[0].from[0].podSelector.matchLabel`)
//!   and the nearest known field;
//! - then the value is decoded into k8s-openapi's type, whose errors name their path too.
//!
//! The known fields are the JSON schemas k8s-openapi generates for its own types (its
//! `schemars` feature, [`schema`]): the same OpenAPI document its deserializers are generated
//! from, so the schema knows exactly the fields the types read, with no list kept by hand.
//!
//! Objects from the Kubernetes API (`--source kube`) do not come through here: the API server
//! validated them, and a newer one may send fields this k8s-openapi does not know.
//!
//! This crate is shared by the agent (`enforcer`) and the lab (`enforcer-lab`), which does not
//! depend on the agent's library.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod policy_api;
pub mod schema;

pub use policy_api::{AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy};

/// A kind enforcer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    NetworkPolicy,
    EndpointSlice,
    ClusterNetworkPolicy,
    AdminNetworkPolicy,
    BaselineAdminNetworkPolicy,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::NetworkPolicy,
        Kind::EndpointSlice,
        Kind::ClusterNetworkPolicy,
        Kind::AdminNetworkPolicy,
        Kind::BaselineAdminNetworkPolicy,
        Kind::Node,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            Kind::AdminNetworkPolicy => "AdminNetworkPolicy",
            Kind::BaselineAdminNetworkPolicy => "BaselineAdminNetworkPolicy",
            Kind::Node => "Node",
        }
    }

    /// The apiVersion enforcer reads the kind in.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::Node => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
            Kind::AdminNetworkPolicy | Kind::BaselineAdminNetworkPolicy => {
                "policy.networking.k8s.io/v1alpha1"
            }
        }
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace
                | Kind::Node
                | Kind::ClusterNetworkPolicy
                | Kind::AdminNetworkPolicy
                | Kind::BaselineAdminNetworkPolicy
        )
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind of a typed list (`NetworkPolicyList` → NetworkPolicy).
    fn of_list(name: &str) -> Option<Kind> {
        name.strip_suffix("List").and_then(Kind::from_name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What enforcer reads, for error messages.
pub fn kinds_read() -> String {
    let kinds: Vec<String> = Kind::ALL
        .iter()
        .map(|k| format!("{k} ({})", k.api_version()))
        .collect();
    format!("{}, and Lists of them", kinds.join(", "))
}

/// Namespaces every cluster has, whether or not a file declares them.
pub const BUILT_IN_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// A decoded object, in k8s-openapi's type.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    NetworkPolicy(Box<NetworkPolicy>),
    EndpointSlice(Box<EndpointSlice>),
    ClusterNetworkPolicy(Box<ClusterNetworkPolicy>),
    AdminNetworkPolicy(Box<AdminNetworkPolicy>),
    BaselineAdminNetworkPolicy(Box<BaselineAdminNetworkPolicy>),
    Node(Box<Node>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::ClusterNetworkPolicy(_) => Kind::ClusterNetworkPolicy,
            Object::AdminNetworkPolicy(_) => Kind::AdminNetworkPolicy,
            Object::BaselineAdminNetworkPolicy(_) => Kind::BaselineAdminNetworkPolicy,
            Object::Node(_) => Kind::Node,
        }
    }

    fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ClusterNetworkPolicy(o) => &o.metadata,
            Object::AdminNetworkPolicy(o) => &o.metadata,
            Object::BaselineAdminNetworkPolicy(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("<unnamed>")
    }

    /// The namespace of a namespaced object (`default` when not given, as `kubectl apply`
    /// without `-n`); `None` for a Namespace.
    pub fn namespace(&self) -> Option<&str> {
        self.kind()
            .namespaced()
            .then(|| self.metadata().namespace.as_deref().unwrap_or("default"))
    }

    /// `NetworkPolicy x/p`, `Namespace x`.
    pub fn label(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }

    /// An error when the object's namespace is not one of the cluster's (`exists`), or one
    /// every cluster has.
    pub fn check_namespace(&self, exists: impl Fn(&str) -> bool) -> Result<(), ObjectError> {
        match self.namespace() {
            Some(ns) if !exists(ns) && !BUILT_IN_NAMESPACES.contains(&ns) => Err(ObjectError {
                object: self.label(),
                problems: vec![Problem {
                    field: "metadata.namespace".into(),
                    reason: format!("namespace {ns:?} does not exist"),
                }],
            }),
            _ => Ok(()),
        }
    }
}

/// One thing wrong with an object: the field (a path like `spec.ingress[0].ports`) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

/// Why an object was refused: the object (`NetworkPolicy x/p`, as far as it could be read)
/// and every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ObjectError {
    pub object: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.object)?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.field, p.reason)?;
        }
        Ok(())
    }
}

fn str_at<'v>(v: &'v Value, pointer: &str) -> Option<&'v str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// `NetworkPolicy x/p` from a raw value, as far as it can be read.
fn raw_label(v: &Value) -> String {
    let kind = str_at(v, "/kind").unwrap_or("object");
    let name = str_at(v, "/metadata/name").unwrap_or("<unnamed>");
    match str_at(v, "/metadata/namespace") {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn refuse(v: &Value, field: &str, reason: String) -> ObjectError {
    ObjectError {
        object: raw_label(v),
        problems: vec![Problem {
            field: field.into(),
            reason,
        }],
    }
}

/// The nearest of `known` to `name` (case aside), if near enough to be a likely typo.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    let limit = (name.chars().count() / 3).clamp(1, 3);
    known
        .into_iter()
        .map(|k| {
            (
                strsim::damerau_levenshtein(&lower, &k.to_ascii_lowercase()),
                k,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, k)| k)
}

/// The kind of a value, checked: known, in its apiVersion. `list`: whether the kind is a list
/// (`List`, or a typed list like `NetworkPolicyList`).
fn kind_of(v: &Value) -> Result<(Option<Kind>, bool), ObjectError> {
    let kind = match v.get("kind") {
        None | Some(Value::Null) => {
            return Err(refuse(
                v,
                "kind",
                format!("not set (enforcer reads {})", kinds_read()),
            ));
        }
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err(refuse(v, "kind", "expected a string".into())),
    };
    let (known, list) = if kind == "List" {
        (None, true)
    } else if let Some(k) = Kind::from_name(kind) {
        (Some(k), false)
    } else if let Some(k) = Kind::of_list(kind) {
        (Some(k), true)
    } else {
        let names = Kind::ALL.iter().map(|k| k.name()).chain(["List"]);
        let hint = nearest(kind, names)
            .map(|k| format!(" (did you mean {k}?)"))
            .unwrap_or_default();
        return Err(refuse(
            v,
            "kind",
            format!(
                "unknown kind {kind:?}{hint}: enforcer reads {}",
                kinds_read()
            ),
        ));
    };
    let want = known.map_or("v1", Kind::api_version);
    let what = if list {
        kind.to_string()
    } else {
        format!("{kind} is read as {want}")
    };
    match v.get("apiVersion") {
        Some(Value::String(a)) if a == want => Ok((known, list)),
        None | Some(Value::Null) => Err(refuse(
            v,
            "apiVersion",
            format!("not set ({kind} is {want})"),
        )),
        Some(Value::String(a)) => Err(refuse(
            v,
            "apiVersion",
            if list {
                format!("unknown apiVersion {a:?} for {what} (enforcer reads {kind} {want})")
            } else {
                format!("unknown apiVersion {a:?}: {what}")
            },
        )),
        Some(_) => Err(refuse(v, "apiVersion", "expected a string".into())),
    }
}

fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, ObjectError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let field = e.path().to_string();
        refuse(v, &field, e.into_inner().to_string())
    })
}

/// Decodes one object (not a list): its kind and apiVersion, every field against the kind's
/// schema, then its value.
pub fn decode(v: &Value) -> Result<Object, ObjectError> {
    if !v.is_object() {
        return Err(ObjectError {
            object: "object".into(),
            problems: vec![Problem {
                field: "(top level)".into(),
                reason: "expected a mapping (a Kubernetes object)".into(),
            }],
        });
    }
    let kind = match kind_of(v)? {
        (Some(k), false) => k,
        (_, _) => {
            return Err(refuse(
                v,
                "kind",
                "a list is not an object here (give its items)".into(),
            ));
        }
    };
    let unknown = schema::unknown_fields(kind, v);
    if !unknown.is_empty() {
        return Err(ObjectError {
            object: raw_label(v),
            problems: unknown,
        });
    }
    Ok(match kind {
        Kind::Namespace => Object::Namespace(typed(v)?),
        Kind::Pod => Object::Pod(typed(v)?),
        Kind::Service => Object::Service(typed(v)?),
        Kind::NetworkPolicy => Object::NetworkPolicy(typed(v)?),
        Kind::EndpointSlice => Object::EndpointSlice(typed(v)?),
        Kind::ClusterNetworkPolicy => Object::ClusterNetworkPolicy(typed(v)?),
        Kind::AdminNetworkPolicy => Object::AdminNetworkPolicy(typed(v)?),
        Kind::BaselineAdminNetworkPolicy => Object::BaselineAdminNetworkPolicy(typed(v)?),
        Kind::Node => Object::Node(typed(v)?),
    })
}

/// The items of a list (`kind: List`, or a typed list such as `NetworkPolicyList`), its own
/// fields checked; `None` when `v` is not a list. A typed list's items may leave out their
/// kind and apiVersion: they are the list's.
pub fn list_items(v: &Value) -> Result<Option<Vec<Value>>, ObjectError> {
    if !v.is_object() {
        return Ok(None);
    }
    let (kind, list) = kind_of(v)?;
    if !list {
        return Ok(None);
    }
    let unknown = schema::unknown_list_fields(v);
    if !unknown.is_empty() {
        return Err(ObjectError {
            object: raw_label(v),
            problems: unknown,
        });
    }
    let items = match v.get("items") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(refuse(v, "items", "expected a list".into())),
    };
    Ok(Some(
        items
            .into_iter()
            .map(|mut item| {
                if let (Some(k), Value::Object(m)) = (kind, &mut item) {
                    m.entry("kind").or_insert_with(|| k.name().into());
                    m.entry("apiVersion")
                        .or_insert_with(|| k.api_version().into());
                }
                item
            })
            .collect(),
    ))
}

/// Decodes a document: one object, or every item of a list (an item's error names its place,
/// `items[2]`).
pub fn decode_document(v: &Value) -> Result<Vec<Object>, ObjectError> {
    match list_items(v)? {
        None => Ok(vec![decode(v)?]),
        Some(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                decode(item).map_err(|mut e| {
                    e.object = format!("items[{i}] ({})", e.object);
                    e
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
