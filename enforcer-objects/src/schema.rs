//! Unknown fields, found by walking a value beside its kind's JSON schema.
//!
//! The schemas are k8s-openapi's own (`JsonSchema` impls generated, like its deserializers,
//! from the Kubernetes OpenAPI document), rendered once per kind with schemars: every struct is
//! an object with `properties`; maps (labels, annotations, `resources.limits`) have
//! `additionalProperties`; free-form values (`managedFields[].fieldsV1`) have neither, and any
//! key goes there, as in the API server.

use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value};

use crate::{Kind, Problem, nearest};

fn root<T: JsonSchema>() -> Value {
    SchemaGenerator::default()
        .into_root_schema_for::<T>()
        .to_value()
}

/// The schema (with its `$defs`) of a kind, rendered once.
pub fn of(kind: Kind) -> &'static Value {
    static SCHEMAS: OnceLock<Vec<Value>> = OnceLock::new();
    let all = SCHEMAS.get_or_init(|| {
        Kind::ALL
            .iter()
            .map(|k| match k {
                Kind::Namespace => root::<Namespace>(),
                Kind::Pod => root::<Pod>(),
                Kind::Service => root::<Service>(),
                Kind::NetworkPolicy => root::<NetworkPolicy>(),
                Kind::EndpointSlice => root::<EndpointSlice>(),
                Kind::ClusterNetworkPolicy => root::<crate::ClusterNetworkPolicy>(),
                Kind::AdminNetworkPolicy => root::<crate::AdminNetworkPolicy>(),
                Kind::BaselineAdminNetworkPolicy => root::<crate::BaselineAdminNetworkPolicy>(),
                Kind::Node => root::<k8s_openapi::api::core::v1::Node>(),
            })
            .collect()
    });
    let i = Kind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is in ALL");
    &all[i]
}

/// The schema of a list: `metadata` is a ListMeta, and the list's own fields are those
/// k8s-openapi's `List` writes (it writes them all, even empty).
fn list_schema() -> &'static Value {
    static LIST: OnceLock<Value> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut meta = root::<ListMeta>();
        let defs = meta
            .as_object_mut()
            .and_then(|m| m.remove("$defs"))
            .unwrap_or_else(|| Value::Object(Map::new()));
        let fields = serde_json::to_value(k8s_openapi::List::<NetworkPolicy>::default())
            .expect("a List serializes");
        let mut props = Map::new();
        for k in fields.as_object().into_iter().flat_map(|m| m.keys()) {
            let sub = if k == "metadata" {
                meta.clone()
            } else {
                Value::Object(Map::new())
            };
            props.insert(k.clone(), sub);
        }
        serde_json::json!({"type": "object", "properties": props, "$defs": defs})
    })
}

/// Follows `$ref`s (`#/$defs/…`) to the schema they name.
fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
    for _ in 0..32 {
        let Some(target) = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| root.pointer(p))
        else {
            break;
        };
        s = target;
    }
    s
}

/// `spec.ingress[0]`, with map keys that are not plain names quoted
/// (`metadata.labels["app.kubernetes.io/name"]`).
fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

fn walk(root: &Value, schema: &Value, v: &Value, path: &str, out: &mut Vec<Problem>) {
    let s = resolve(root, schema);
    match v {
        Value::Object(map) => {
            let props = s.get("properties").and_then(Value::as_object);
            let more = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, sub) in map {
                let p = join(path, k);
                if let Some(ks) = props.and_then(|ps| ps.get(k)) {
                    walk(root, ks, sub, &p, out);
                } else if let Some(ms) = more {
                    walk(root, ms, sub, &p, out);
                } else if let Some(ps) = props {
                    let hint = match nearest(k, ps.keys().map(String::as_str)) {
                        Some(n) => format!(" (did you mean {n}?)"),
                        None => {
                            let names: Vec<&str> = ps.keys().map(String::as_str).collect();
                            format!(" (known fields here: {})", names.join(", "))
                        }
                    };
                    out.push(Problem {
                        field: p,
                        reason: format!("unknown field {k:?}{hint}"),
                    });
                }
                // Neither properties nor a value schema: free-form, any key goes.
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(root, is, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Every field of `v` (an object of `kind`) that the kind's schema does not have.
pub fn unknown_fields(kind: Kind, v: &Value) -> Vec<Problem> {
    let root = of(kind);
    let mut out = Vec::new();
    walk(root, root, v, "", &mut out);
    out
}

/// Every field of a list's own (items aside) that a list does not have.
pub fn unknown_list_fields(v: &Value) -> Vec<Problem> {
    let root = list_schema();
    let mut out = Vec::new();
    walk(root, root, v, "", &mut out);
    out
}
