//! The install bundle in `deploy/`: every document of every `deploy/*.yaml` deserializes into
//! its Kubernetes type (k8s-openapi) with no field the type does not know, and the objects give
//! the agent what it needs and no more. Plain `cargo test`: no root, no cluster.
//!
//! k8s-openapi ignores unknown fields, so a typo would pass deserialization silently; each
//! document is therefore serialized back from its type and every key of the original that the
//! round trip lost is reported with its path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec, ServiceAccount, Toleration};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const NAMESPACE: &str = "enforcer-system";
/// What the agent needs in the kernel; see the comments in deploy/20-daemonset.yaml.
const CAPABILITIES: &[&str] = &["BPF", "NET_ADMIN", "PERFMON"];
/// (API group, resource) the agent gets, lists and watches.
const READS: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "namespaces"),
    ("", "services"),
    ("", "nodes"),
    ("networking.k8s.io", "networkpolicies"),
    ("discovery.k8s.io", "endpointslices"),
    // The cluster-wide policy kinds (deploy/crds/), enforced; then Calico's, held and counted
    // until they are enforced.
    ("policy.networking.k8s.io", "clusternetworkpolicies"),
    ("policy.networking.k8s.io", "adminnetworkpolicies"),
    ("policy.networking.k8s.io", "baselineadminnetworkpolicies"),
    ("crd.projectcalico.org", "hostendpoints"),
    ("crd.projectcalico.org", "globalnetworkpolicies"),
];
/// The agent's default --bpffs.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf/enforcer";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("enforcer/ is inside the workspace")
        .join("deploy")
}

/// One document of one file.
#[derive(Clone, Debug)]
struct Doc {
    file: String,
    /// 1-based, counting the empty documents too.
    index: usize,
    kind: String,
    /// `namespace/name`, or `name` for cluster-scoped objects.
    name: String,
    value: Value,
}

impl Doc {
    fn what(&self) -> String {
        format!(
            "{}: document {} ({} {})",
            self.file, self.index, self.kind, self.name
        )
    }
}

#[derive(Clone, Debug)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    DaemonSet(Box<DaemonSet>),
}

/// Deserializes a document into `T`, naming the field on error, then checks that serializing it
/// back keeps every key of the original (k8s-openapi drops the keys it does not know).
fn typed<T: DeserializeOwned + Serialize>(doc: &Doc) -> Result<T, String> {
    let obj: T = serde_path_to_error::deserialize(&doc.value)
        .map_err(|e| format!("{}: field {}: {}", doc.what(), e.path(), e.inner()))?;
    let back = serde_json::to_value(&obj)
        .map_err(|e| format!("{}: cannot serialize it back: {e}", doc.what()))?;
    let mut unknown = Vec::new();
    lost_keys(&doc.value, &back, "", &mut unknown);
    if unknown.is_empty() {
        Ok(obj)
    } else {
        Err(format!(
            "{}: unknown field {} (not in the {} schema: a typo?)",
            doc.what(),
            unknown.join(", "),
            doc.kind
        ))
    }
}

/// Paths (`a.b[0].c`) of the keys of `orig` that `back` lacks. A key whose value is null is the
/// same as an absent key.
fn lost_keys(orig: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                if value.is_null() {
                    continue;
                }
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(b) => lost_keys(value, b, &here, out),
                    None => out.push(here),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            for (i, (value, b)) in o.iter().zip(b).enumerate() {
                lost_keys(value, b, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Every document of a multi-document YAML text, typed by kind; all errors, each naming the
/// file, the document, the object and the field.
fn parse(file: &str, text: &str) -> Result<Vec<(Doc, Object)>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{file}: document {index}: {e}"));
                break; // the rest of the stream cannot be trusted
            }
        };
        if value.is_null() {
            continue; // an empty document (a trailing `---`)
        }
        let str_at = |p: &str| value.pointer(p).and_then(Value::as_str).unwrap_or("");
        let name = match (str_at("/metadata/namespace"), str_at("/metadata/name")) {
            (_, "") => "<unnamed>".to_string(),
            ("", n) => n.to_string(),
            (ns, n) => format!("{ns}/{n}"),
        };
        let doc = Doc {
            file: file.to_string(),
            index,
            kind: str_at("/kind").to_string(),
            name,
            value: value.clone(),
        };
        let obj = match doc.kind.as_str() {
            "Namespace" => typed(&doc).map(Object::Namespace),
            "ServiceAccount" => typed(&doc).map(Object::ServiceAccount),
            "ClusterRole" => typed(&doc).map(Object::ClusterRole),
            "ClusterRoleBinding" => typed(&doc).map(Object::ClusterRoleBinding),
            "DaemonSet" => typed(&doc).map(|d| Object::DaemonSet(Box::new(d))),
            "" => Err(format!("{}: missing field `kind`", doc.what())),
            other => Err(format!(
                "{}: kind {other} is not one this test checks (add it to `parse`)",
                doc.what()
            )),
        };
        match obj {
            Ok(obj) => out.push((doc, obj)),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Every object of `deploy/*.yaml`, in the order `kubectl apply -f deploy/` applies them
/// (file names sorted).
struct Bundle {
    objects: Vec<(Doc, Object)>,
}

impl Bundle {
    fn load() -> Bundle {
        let dir = deploy_dir();
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("listing deploy/").path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no YAML files in {}", dir.display());
        let mut objects = Vec::new();
        let mut errors = Vec::new();
        for path in files {
            let name = format!(
                "deploy/{}",
                path.file_name().expect("a file").to_string_lossy()
            );
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            match parse(&name, &text) {
                Ok(mut o) => objects.append(&mut o),
                Err(mut e) => errors.append(&mut e),
            }
        }
        assert!(
            errors.is_empty(),
            "deploy/ does not parse:\n  {}",
            errors.join("\n  ")
        );
        Bundle { objects }
    }

    /// The one object of a kind (exactly one is expected).
    fn one<T>(&self, kind: &str, pick: impl Fn(&Object) -> Option<&T>) -> (&Doc, &T) {
        let found: Vec<(&Doc, &T)> = self
            .objects
            .iter()
            .filter_map(|(d, o)| pick(o).map(|t| (d, t)))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "deploy/ should hold exactly one {kind}, found {:?}",
            found.iter().map(|(d, _)| d.what()).collect::<Vec<_>>()
        );
        found[0]
    }

    fn daemonset(&self) -> (&Doc, &DaemonSet) {
        self.one("DaemonSet", |o| match o {
            Object::DaemonSet(d) => Some(&**d),
            _ => None,
        })
    }

    fn cluster_role(&self) -> (&Doc, &ClusterRole) {
        self.one("ClusterRole", |o| match o {
            Object::ClusterRole(r) => Some(r),
            _ => None,
        })
    }

    fn binding(&self) -> (&Doc, &ClusterRoleBinding) {
        self.one("ClusterRoleBinding", |o| match o {
            Object::ClusterRoleBinding(b) => Some(b),
            _ => None,
        })
    }

    fn service_account(&self) -> (&Doc, &ServiceAccount) {
        self.one("ServiceAccount", |o| match o {
            Object::ServiceAccount(s) => Some(s),
            _ => None,
        })
    }

    fn namespace(&self) -> (&Doc, &Namespace) {
        self.one("Namespace", |o| match o {
            Object::Namespace(n) => Some(n),
            _ => None,
        })
    }
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .template
        .spec
        .as_ref()
        .expect("the DaemonSet has spec.template.spec")
}

/// The value of `--flag VALUE` or `--flag=VALUE` in `args`.
fn arg_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&prefix)
        }
    })
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// What the agent gets for a setting: the command-line flag if present (it wins), else the
/// environment variable.
fn setting<'a>(c: &'a Container, flag: &str, env: &str) -> Option<&'a str> {
    arg_value(c.args.as_deref().unwrap_or_default(), flag).or_else(|| env_value(c, env))
}

/// The container port a probe port names (a number, or the name of one of the ports).
fn resolve_port(c: &Container, port: &IntOrString) -> Option<i32> {
    match port {
        IntOrString::Int(p) => Some(*p),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port),
    }
}

/// Whether some toleration lets the pod on a node with any taint of this effect, for good.
fn tolerated(tolerations: &[Toleration], effect: &str) -> bool {
    tolerations.iter().any(|t| {
        t.operator.as_deref() == Some("Exists")
            && t.key.as_deref().unwrap_or("").is_empty()
            && t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == effect)
            && t.toleration_seconds.is_none()
    })
}

/// Everything wrong with the DaemonSet, as sentences (empty: nothing).
fn check_daemonset(ds: &DaemonSet) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |s: String| problems.push(s);
    let spec = &ds.spec;
    let Some(pod) = spec.template.spec.as_ref() else {
        return vec!["no spec.template.spec".into()];
    };

    // Selection and rollout.
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in spec.selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            problem(format!(
                "the selector's {k}={v} is not a label of the pod template"
            ));
        }
    }
    let strategy = spec.update_strategy.as_ref();
    if strategy.and_then(|s| s.type_.as_deref()) != Some("RollingUpdate") {
        problem("updateStrategy.type is not RollingUpdate".into());
    }
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    if rolling.and_then(|r| r.max_unavailable.as_ref()) != Some(&IntOrString::Int(1)) {
        problem("updateStrategy.rollingUpdate.maxUnavailable is not 1".into());
    }
    match rolling.and_then(|r| r.max_surge.as_ref()) {
        None | Some(IntOrString::Int(0)) => {}
        Some(IntOrString::String(s)) if s == "0%" => {}
        Some(other) => problem(format!(
            "maxSurge {other:?}: two agents on one node would share the pins and the health port"
        )),
    }

    // The node.
    if pod.host_network != Some(true) {
        problem("hostNetwork is not true".into());
    }
    if pod.dns_policy.as_deref() != Some("ClusterFirstWithHostNet") {
        problem("dnsPolicy is not ClusterFirstWithHostNet".into());
    }
    if pod.priority_class_name.as_deref() != Some("system-node-critical") {
        problem("priorityClassName is not system-node-critical".into());
    }
    if pod.termination_grace_period_seconds.is_none() {
        problem("no terminationGracePeriodSeconds".into());
    }
    if pod.service_account_name.as_deref().unwrap_or("").is_empty() {
        problem("no serviceAccountName".into());
    }
    if pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        problem("hostPID/hostIPC: the agent needs neither".into());
    }
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    for effect in ["NoSchedule", "PreferNoSchedule", "NoExecute"] {
        if !tolerated(tolerations, effect) {
            problem(format!("not every {effect} taint is tolerated"));
        }
    }
    if !tolerations
        .iter()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none())
    {
        problem("no catch-all toleration (operator Exists, no key, no effect)".into());
    }

    // The one container.
    if pod.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        problem("init containers: the agent needs none".into());
    }
    let [c] = pod.containers.as_slice() else {
        problem(format!(
            "{} containers, expected exactly one",
            pod.containers.len()
        ));
        return problems;
    };
    if c.image.as_deref().is_none_or(|i| !i.contains(':')) {
        problem("the image has no tag".into());
    }

    // Its command line: the image's ENTRYPOINT, then `run ...`.
    let args = c.args.as_deref().unwrap_or_default();
    if c.command.is_some() {
        problem("command is set: it would replace the image's ENTRYPOINT".into());
    }
    if args.first().map(String::as_str) != Some("run") {
        problem(format!("args {args:?} do not start with `run`"));
    }
    if setting(c, "--source", "ENFORCER_SOURCE") != Some("kube") {
        problem("the agent does not get --source kube".into());
    }
    let node_env = c.env.iter().flatten().find(|e| e.name == "NODE_NAME");
    let field = node_env
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    if field != Some("spec.nodeName") {
        problem("NODE_NAME does not come from the downward API's spec.nodeName".into());
    }
    if let Some(node) = arg_value(args, "--node")
        && node != "$(NODE_NAME)"
    {
        problem(format!("--node {node}, not $(NODE_NAME)"));
    }
    if args
        .iter()
        .any(|a| a == "--keep-pins" || a.starts_with("--keep-pins="))
    {
        problem(
            "--keep-pins is in args: it would override ENFORCER_KEEP_PINS, which uninstalling \
             sets to false"
                .into(),
        );
    }
    if env_value(c, "ENFORCER_KEEP_PINS") != Some("true") {
        problem("ENFORCER_KEEP_PINS is not \"true\" (upgrades would break enforcement)".into());
    }
    // Fail closed by default: an interface no known pod claims is held, not left open.
    if args.iter().any(|a| a.starts_with("--default-deny-unknown")) {
        problem(
            "--default-deny-unknown is in args: set ENFORCER_DEFAULT_DENY_UNKNOWN instead, so \
             the documented opt-out (set env ...=false) works"
                .into(),
        );
    }
    if env_value(c, "ENFORCER_DEFAULT_DENY_UNKNOWN") != Some("true") {
        problem(
            "ENFORCER_DEFAULT_DENY_UNKNOWN is not \"true\" (pod interfaces no known pod claims \
             would pass traffic unenforced)"
                .into(),
        );
    }

    // Health endpoints: the probes hit the port the agent listens on, on every address (the
    // kubelet probes the node's address).
    match setting(c, "--health-addr", "ENFORCER_HEALTH_ADDR").and_then(|a| a.rsplit_once(':')) {
        None => problem("no --health-addr HOST:PORT".into()),
        Some((host, port)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if !["0.0.0.0", "::", ""].contains(&host) {
                problem(format!(
                    "--health-addr listens on {host}, not on every address"
                ));
            }
            let port: Option<i32> = port.parse().ok();
            let named = c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some("health"));
            if named.map(|p| p.container_port) != port {
                problem(format!(
                    "the port named `health` is not --health-addr's port {port:?}"
                ));
            }
            for (which, probe, path) in [
                ("liveness", &c.liveness_probe, "/healthz"),
                ("readiness", &c.readiness_probe, "/readyz"),
            ] {
                let Some(get) = probe.as_ref().and_then(|p| p.http_get.as_ref()) else {
                    problem(format!("no {which} httpGet probe"));
                    continue;
                };
                if get.path.as_deref() != Some(path) {
                    problem(format!("the {which} probe does not get {path}"));
                }
                if resolve_port(c, &get.port) != port {
                    problem(format!(
                        "the {which} probe's port {:?} is not --health-addr's {port:?}",
                        get.port
                    ));
                }
                if get.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                    problem(format!("the {which} probe is not plain HTTP"));
                }
            }
        }
    }

    // Resources.
    let resources = c.resources.as_ref();
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    for (what, map, key) in [
        ("requests", requests, "cpu"),
        ("requests", requests, "memory"),
        ("limits", limits, "memory"),
    ] {
        if map.is_none_or(|m| !m.contains_key(key)) {
            problem(format!("no resources.{what}.{key}"));
        }
    }

    // Privileges: exactly the capabilities the agent needs, nothing else.
    let sc = c.security_context.clone().unwrap_or_default();
    let psc = pod.security_context.clone().unwrap_or_default();
    if sc.privileged == Some(true) {
        problem("privileged".into());
    }
    if sc.allow_privilege_escalation != Some(false) {
        problem("allowPrivilegeEscalation is not false".into());
    }
    if sc.read_only_root_filesystem != Some(true) {
        problem("readOnlyRootFilesystem is not true".into());
    }
    let caps = sc.capabilities.clone().unwrap_or_default();
    let norm = |v: Option<Vec<String>>| -> BTreeSet<String> {
        v.unwrap_or_default()
            .iter()
            .map(|cap| {
                cap.to_ascii_uppercase()
                    .trim_start_matches("CAP_")
                    .to_string()
            })
            .collect()
    };
    let drop = norm(caps.drop);
    if drop != BTreeSet::from(["ALL".to_string()]) {
        problem(format!("capabilities.drop is {drop:?}, not [ALL]"));
    }
    let add = norm(caps.add);
    let want: BTreeSet<String> = CAPABILITIES.iter().map(|c| c.to_string()).collect();
    if add != want {
        problem(format!(
            "capabilities.add is {add:?}, the agent needs exactly {want:?}"
        ));
    }
    if sc.run_as_user.or(psc.run_as_user) != Some(0) {
        problem("runAsUser is not 0 (bpf() and the root-owned pins need root)".into());
    }
    if sc.run_as_non_root.or(psc.run_as_non_root) == Some(true) {
        problem("runAsNonRoot is true".into());
    }
    let seccomp = sc.seccomp_profile.or(psc.seccomp_profile).map(|p| p.type_);
    if seccomp.as_deref() != Some("RuntimeDefault") {
        problem(format!("seccompProfile is {seccomp:?}, not RuntimeDefault"));
    }
    let apparmor = sc
        .app_armor_profile
        .or(psc.app_armor_profile)
        .map(|p| p.type_);
    if apparmor.as_deref() != Some("Unconfined") {
        problem(format!(
            "appArmorProfile is {apparmor:?}: the runtime's default profile refuses pins under \
             /sys/fs/bpf"
        ));
    }

    // Volumes: the host's bpffs, and a writable place for the events file.
    let host_paths: BTreeMap<&str, (&str, Option<&str>)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            v.host_path
                .as_ref()
                .map(|h| (v.name.as_str(), (h.path.as_str(), h.type_.as_deref())))
        })
        .collect();
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let mount_of = |host: &str| {
        mounts.iter().find(|m| {
            host_paths
                .get(m.name.as_str())
                .is_some_and(|(p, _)| *p == host)
        })
    };
    match mount_of("/sys/fs/bpf") {
        None => problem("the host's /sys/fs/bpf is not mounted".into()),
        Some(m) => {
            if host_paths[m.name.as_str()].1 != Some("DirectoryOrCreate") {
                problem("the bpffs hostPath is not type DirectoryOrCreate".into());
            }
            if m.mount_propagation.as_deref() != Some("HostToContainer") {
                problem(format!(
                    "the bpffs mountPropagation is {:?}, not HostToContainer (Bidirectional \
                     needs privileged)",
                    m.mount_propagation
                ));
            }
            if m.read_only == Some(true) {
                problem("the bpffs is mounted read-only".into());
            }
            let bpffs = setting(c, "--bpffs", "ENFORCER_BPFFS").unwrap_or(DEFAULT_BPFFS);
            if !Path::new(bpffs).starts_with(&m.mount_path) || bpffs == m.mount_path {
                problem(format!(
                    "--bpffs {bpffs} is not inside the bpffs mount {}",
                    m.mount_path
                ));
            }
        }
    }
    match mount_of("/run/enforcer") {
        None => problem("the host's /run/enforcer is not mounted".into()),
        Some(m) if m.read_only == Some(true) => {
            problem("/run/enforcer is mounted read-only".into())
        }
        Some(_) => {}
    }
    if let Some(file) = setting(c, "--events-file", "ENFORCER_EVENTS_FILE") {
        let writable = mounts
            .iter()
            .any(|m| m.read_only != Some(true) && Path::new(file).starts_with(&m.mount_path));
        if !writable {
            problem(format!(
                "--events-file {file} is not on a writable mount (the root is read-only)"
            ));
        }
    }
    problems
}

/// Everything wrong with the ClusterRole (empty: nothing).
fn check_cluster_role(role: &ClusterRole) -> Vec<String> {
    let mut problems = Vec::new();
    if role.aggregation_rule.is_some() {
        problems.push("an aggregationRule can add any rule".into());
    }
    let verbs: BTreeSet<&str> = ["get", "list", "watch"].into();
    let allowed: BTreeSet<(&str, &str)> = READS.iter().copied().collect();
    let mut granted = BTreeSet::new();
    for (i, rule) in role.rules.iter().flatten().enumerate() {
        let got: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
        if got != verbs {
            problems.push(format!(
                "rules[{i}].verbs is {got:?}, not exactly get, list, watch"
            ));
        }
        if rule
            .non_resource_urls
            .as_ref()
            .is_some_and(|u| !u.is_empty())
        {
            problems.push(format!("rules[{i}] grants nonResourceURLs"));
        }
        if rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()) {
            problems.push(format!(
                "rules[{i}] limits resourceNames: the agent reads every object"
            ));
        }
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let pair = (group.as_str(), resource.as_str());
                if allowed.contains(&pair) {
                    granted.insert(pair);
                } else {
                    problems.push(format!(
                        "rules[{i}] grants {resource:?} in API group {group:?}: the agent does \
                         not read it"
                    ));
                }
            }
        }
    }
    for missing in allowed.difference(&granted) {
        problems.push(format!(
            "no rule lets the agent read {:?} in API group {:?}",
            missing.1, missing.0
        ));
    }
    problems
}

#[test]
fn every_document_parses_into_its_type_with_no_unknown_field() {
    let bundle = Bundle::load();
    let kinds: BTreeSet<&str> = bundle
        .objects
        .iter()
        .map(|(d, _)| d.kind.as_str())
        .collect();
    let want: BTreeSet<&str> = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ]
    .into();
    assert_eq!(kinds, want, "the kinds in deploy/");
    // Exactly one of each.
    bundle.namespace();
    bundle.service_account();
    bundle.cluster_role();
    bundle.binding();
    bundle.daemonset();
}

#[test]
fn the_namespace_comes_first_and_namespaced_objects_are_in_it() {
    let bundle = Bundle::load();
    let (ns_doc, ns) = bundle.namespace();
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    for (doc, obj) in &bundle.objects {
        let (namespaced, ns) = match obj {
            Object::Namespace(o) => (false, &o.metadata.namespace),
            Object::ClusterRole(o) => (false, &o.metadata.namespace),
            Object::ClusterRoleBinding(o) => (false, &o.metadata.namespace),
            Object::ServiceAccount(o) => (true, &o.metadata.namespace),
            Object::DaemonSet(o) => (true, &o.metadata.namespace),
        };
        if namespaced {
            assert_eq!(
                ns.as_deref(),
                Some(NAMESPACE),
                "{}: namespaced objects belong in {NAMESPACE}",
                doc.what()
            );
            // `kubectl apply -f deploy/` goes file by file in name order.
            assert!(
                ns_doc.file < doc.file || (ns_doc.file == doc.file && ns_doc.index < doc.index),
                "{}: applied before the Namespace ({})",
                doc.what(),
                ns_doc.what()
            );
        } else {
            assert_eq!(
                ns.as_deref(),
                None,
                "{}: a cluster-scoped object with a namespace",
                doc.what()
            );
        }
    }
}

#[test]
fn the_daemonset_gives_the_agent_what_it_needs_and_no_more() {
    let bundle = Bundle::load();
    let (doc, ds) = bundle.daemonset();
    let problems = check_daemonset(ds);
    assert!(
        problems.is_empty(),
        "{}:\n  {}",
        doc.what(),
        problems.join("\n  ")
    );
}

#[test]
fn the_cluster_role_only_reads_what_the_agent_watches() {
    let bundle = Bundle::load();
    let (doc, role) = bundle.cluster_role();
    let problems = check_cluster_role(role);
    assert!(
        problems.is_empty(),
        "{}:\n  {}",
        doc.what(),
        problems.join("\n  ")
    );
}

#[test]
fn the_binding_names_the_daemonsets_service_account() {
    let bundle = Bundle::load();
    let (doc, binding) = bundle.binding();
    let (_, role) = bundle.cluster_role();
    let (_, sa) = bundle.service_account();
    let (_, ds) = bundle.daemonset();
    let ds_sa = pod_spec(ds).service_account_name.as_deref();
    let ds_ns = ds.metadata.namespace.as_deref();

    assert_eq!(binding.role_ref.kind, "ClusterRole", "{}", doc.what());
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io"),
        "{}",
        doc.what()
    );
    assert_eq!(
        Some(binding.role_ref.name.as_str()),
        role.metadata.name.as_deref(),
        "{}: roleRef names another ClusterRole",
        doc.what()
    );
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(subjects.len(), 1, "{}: one subject", doc.what());
    let s = &subjects[0];
    assert_eq!(s.kind, "ServiceAccount", "{}", doc.what());
    assert_eq!(
        Some(s.name.as_str()),
        ds_sa,
        "{}: not the DaemonSet's serviceAccountName",
        doc.what()
    );
    assert_eq!(
        s.namespace.as_deref(),
        ds_ns,
        "{}: not the DaemonSet's namespace",
        doc.what()
    );
    assert_eq!(
        (
            sa.metadata.name.as_deref(),
            sa.metadata.namespace.as_deref()
        ),
        (ds_sa, ds_ns),
        "the ServiceAccount in deploy/ is not the one the DaemonSet runs as"
    );
}

/// The real DaemonSet document, as JSON.
fn daemonset_value() -> Value {
    Bundle::load().daemonset().0.value.clone()
}

#[test]
fn a_typo_or_a_wrong_type_is_reported_with_its_file_document_object_and_path() {
    let good = daemonset_value();
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n";
    // (what to break, the JSON pointer, the new value, what the report must name)
    let cases: &[(&str, &str, Value, &str)] = &[
        (
            "a misspelt field",
            "/spec/template/spec/containers/0/imagePullPolicyy",
            json!("Always"),
            "unknown field spec.template.spec.containers[0].imagePullPolicyy",
        ),
        (
            "a misspelt field in metadata",
            "/spec/template/metadata/lables",
            json!({"a": "b"}),
            "unknown field spec.template.metadata.lables",
        ),
        (
            "a misspelt field deep in a volume",
            "/spec/template/spec/volumes/0/hostPath/typ",
            json!("Directory"),
            "unknown field spec.template.spec.volumes[0].hostPath.typ",
        ),
        (
            "a string where a number goes",
            "/spec/template/spec/containers/0/ports/0/containerPort",
            json!("nine"),
            "field spec.template.spec.containers[0].ports[0].containerPort: invalid type",
        ),
        (
            "a list where a boolean goes",
            "/spec/template/spec/hostNetwork",
            json!(["yes"]),
            "field spec.template.spec.hostNetwork: invalid type",
        ),
    ];
    for (what, pointer, value, expect) in cases {
        let mut broken = good.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        broken
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{what}: no object at {parent}"))
            .insert(key.to_string(), value.clone());
        // As the second document of a file, after a good one.
        let text = format!(
            "{namespace}---\n{}",
            serde_norway::to_string(&broken).expect("YAML")
        );
        let errors = match parse("deploy/broken.yaml", &text) {
            Ok(_) => panic!("{what} ({pointer}) was not reported"),
            Err(e) => e,
        };
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        let prefix = "deploy/broken.yaml: document 2 (DaemonSet enforcer-system/enforcer): ";
        assert!(
            errors[0].starts_with(prefix) && errors[0].contains(expect),
            "{what}: the report\n  {}\nshould start with\n  {prefix}\nand name\n  {expect}",
            errors[0]
        );
    }

    // Broken YAML and a missing kind are reported too.
    let errors = parse("x.yaml", "kind: [").expect_err("bad YAML");
    assert!(errors[0].starts_with("x.yaml: document 1: "), "{errors:?}");
    let errors = parse("x.yaml", "apiVersion: v1\nmetadata: {name: a}\n").expect_err("no kind");
    assert!(errors[0].contains("missing field `kind`"), "{errors:?}");

    // And the unmodified document passes, so the failures above are the breakage's.
    let text = serde_norway::to_string(&good).expect("YAML");
    if let Err(e) = parse("deploy/good.yaml", &text) {
        panic!("the unmodified DaemonSet: {e:?}");
    }
}

#[test]
fn the_content_checks_catch_a_weakened_bundle() {
    let good = daemonset_value();
    let c = "/spec/template/spec/containers/0";
    let set = |pointer: &str, value: Value| {
        let mut v = good.clone();
        *v.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("nothing at {pointer}")) = value;
        v
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "SYS_ADMIN added",
            set(
                &format!("{c}/securityContext/capabilities/add"),
                json!(["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"]),
            ),
            "capabilities.add",
        ),
        (
            "privileged",
            set(&format!("{c}/securityContext/privileged"), json!(true)),
            "privileged",
        ),
        (
            "nothing dropped",
            set(
                &format!("{c}/securityContext/capabilities/drop"),
                json!(["NET_RAW"]),
            ),
            "capabilities.drop",
        ),
        (
            "--keep-pins on the command line",
            {
                let mut v = good.clone();
                v.pointer_mut(&format!("{c}/args"))
                    .and_then(Value::as_array_mut)
                    .expect("args")
                    .push(json!("--keep-pins"));
                v
            },
            "--keep-pins is in args",
        ),
        (
            "unknown pod interfaces left open",
            {
                let mut v = good.clone();
                v.pointer_mut(&format!("{c}/env"))
                    .and_then(Value::as_array_mut)
                    .expect("env")
                    .retain(|e| e["name"] != "ENFORCER_DEFAULT_DENY_UNKNOWN");
                v
            },
            "ENFORCER_DEFAULT_DENY_UNKNOWN",
        ),
        (
            "the readiness probe on another port",
            set(&format!("{c}/readinessProbe/httpGet/port"), json!(9965)),
            "readiness probe's port",
        ),
        (
            "no tolerations",
            set("/spec/template/spec/tolerations", json!([])),
            "NoExecute",
        ),
        (
            "bidirectional propagation",
            {
                let mut v = good.clone();
                let mounts = v
                    .pointer_mut(&format!("{c}/volumeMounts"))
                    .and_then(Value::as_array_mut)
                    .expect("volumeMounts");
                for m in mounts {
                    if m["mountPath"] == "/sys/fs/bpf" {
                        m["mountPropagation"] = json!("Bidirectional");
                    }
                }
                v
            },
            "mountPropagation",
        ),
    ];
    for (what, value, expect) in cases {
        let ds: DaemonSet = serde_json::from_value(value).expect("still a DaemonSet");
        let problems = check_daemonset(&ds);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{what}: expected a problem naming {expect:?}, got {problems:?}"
        );
    }

    let bundle = Bundle::load();
    let (doc, _) = bundle.cluster_role();
    for (what, pointer, value, expect) in [
        (
            "a write verb",
            "/rules/0/verbs",
            json!(["get", "list", "watch", "create"]),
            "verbs",
        ),
        (
            "secrets",
            "/rules/0/resources",
            json!(["pods", "namespaces", "services", "secrets"]),
            "\"secrets\"",
        ),
        (
            "services missing",
            "/rules/0/resources",
            json!(["pods", "namespaces"]),
            "\"services\"",
        ),
        (
            "endpointslices missing",
            "/rules/2/resources",
            json!([]),
            "\"endpointslices\"",
        ),
        (
            "endpointslices in the wrong group",
            "/rules/2/apiGroups",
            json!([""]),
            "\"endpointslices\"",
        ),
    ] {
        let mut v = doc.value.clone();
        *v.pointer_mut(pointer).expect(pointer) = value;
        let role: ClusterRole = serde_json::from_value(v).expect("still a ClusterRole");
        let problems = check_cluster_role(&role);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{what}: expected a problem naming {expect}, got {problems:?}"
        );
    }
}

/// The exec-form array of the last `INSTRUCTION [...]` line of the final stage.
fn exec_form(stage: &str, instruction: &str) -> Option<Vec<String>> {
    stage
        .lines()
        .filter_map(|l| l.trim().strip_prefix(instruction))
        .rfind(|rest| rest.starts_with(' '))
        .map(|rest| {
            serde_json::from_str(rest.trim()).unwrap_or_else(|e| {
                panic!("deploy/Containerfile: {instruction} {rest}: not the exec form: {e}")
            })
        })
}

#[test]
fn the_containerfile_runs_the_agent() {
    let path = deploy_dir().join("Containerfile");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let stages = text
        .lines()
        .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .count();
    assert!(
        stages >= 2,
        "deploy/Containerfile should build in one stage and run in another"
    );
    let (_, runtime) = text.rsplit_once("\nFROM ").expect("a FROM line");
    assert_eq!(
        exec_form(runtime, "ENTRYPOINT"),
        Some(vec!["/usr/local/bin/enforcer".to_string()]),
        "deploy/Containerfile: ENTRYPOINT"
    );
    let cmd = exec_form(runtime, "CMD").expect("deploy/Containerfile: no CMD");
    assert_eq!(
        cmd.first().map(String::as_str),
        Some("run"),
        "deploy/Containerfile: CMD {cmd:?} does not name `run`"
    );
    assert!(
        runtime.contains("/usr/local/bin/enforcer") && runtime.contains("COPY --from="),
        "deploy/Containerfile: the runtime stage does not copy the binary from the builder"
    );
    // `ip` and `bridge`, which the agent runs.
    assert!(
        runtime.contains("iproute2"),
        "deploy/Containerfile: the runtime stage does not install iproute2"
    );
    assert!(
        text.contains("cargo xtask build-ebpf"),
        "deploy/Containerfile: the eBPF object is not built"
    );

    // The DaemonSet keeps the ENTRYPOINT and passes `run` itself.
    let bundle = Bundle::load();
    let (_, ds) = bundle.daemonset();
    let c = &pod_spec(ds).containers[0];
    assert!(c.command.is_none(), "the DaemonSet replaces the ENTRYPOINT");

    // target/ stays out of the build context.
    let ignore = fs::read_to_string(deploy_dir().join("Containerfile.dockerignore"))
        .expect("deploy/Containerfile.dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim().trim_end_matches('/') == "target"),
        "deploy/Containerfile.dockerignore does not exclude target"
    );
}
