//! The lab with `--source kube`: the real control plane (etcd and kube-apiserver, built from
//! source by `cargo xtask setup`, started by the `control-plane` crate) runs in a namespace of
//! its own on the lab's fabric ([`crate::plan::Plan::add_control_plane`]), with TLS, RBAC and
//! the usual admission. Every node's agent runs `enforcer run --source kube` with a token of
//! the install bundle's ServiceAccount and reaches the server across the fabric, as on a real
//! cluster; the lab writes every object through the server as admin.
//!
//! How the lab writes, as the cluster's other components would:
//! - the bundle's Namespace, ServiceAccount and RBAC first (`deploy/`, but the DaemonSet);
//! - every Namespace gets its `default` ServiceAccount (the controller-manager's job; without
//!   one the ServiceAccount admission plugin refuses pods);
//! - objects by server-side apply (create or update in one request, as `kubectl apply
//!   --server-side`); a Pod's spec (with `spec.nodeName`, as the scheduler leaves it), then
//!   its addresses through the `status` subresource, as a kubelet reports them;
//! - deletions at once (`gracePeriodSeconds=0`: no kubelet confirms a pod's end), a Namespace
//!   finalized by the lab (no namespace controller runs).
//!
//! When the agents have a change: a watch delivers one kind's events in resourceVersion
//! order, and each agent reports, per kind, the highest resourceVersion it has applied. The lab
//! keeps, per kind, the resourceVersion of its last write ([`Mark`]) and waits until every
//! agent has reached it in every kind it watches.

mod client;
mod host;
mod proxy;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use control_plane::Options;
use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use client::{ApiClient, Body};
pub use host::Host;
pub use proxy::Proxy;

use crate::netns::Netns;
use crate::plan::{ControlPlanePlan, Plan};

/// The install bundle the lab's control plane gets (the DaemonSet aside: the lab runs the
/// agents itself).
const BUNDLE: &str = concat!(
    include_str!("../../../deploy/00-namespace.yaml"),
    "\n---\n",
    include_str!("../../../deploy/10-rbac.yaml")
);
/// The bundle's ServiceAccount, which every agent authenticates as.
pub const AGENT_SA: (&str, &str) = ("enforcer-system", "enforcer");
/// The field managers of the lab's writes (`kubectl get -o yaml --show-managed-fields`).
const MANAGER: &str = "enforcer-lab";
const KUBELET_MANAGER: &str = "enforcer-lab-kubelet";

/// The files of a kube lab, in its run folder.
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";
pub const AGENT_KUBECONFIG: &str = "agent.kubeconfig";

/// What the agents must have applied for the lab's writes to be in force: the highest
/// resourceVersion the lab wrote, per kind (manifests: only the folder's generation).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub generation: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kinds: BTreeMap<String, u64>,
}

impl Mark {
    pub fn generation(generation: u64) -> Mark {
        Mark {
            generation,
            kinds: BTreeMap::new(),
        }
    }

    /// Does an agent's status (`generation`, and `resource_versions` per kind with the kube
    /// source) show this mark applied? A kind the agent does not report is one it does not
    /// watch (an agent that does not watch Nodes yet: the lab writes them all the same), so
    /// neither it nor its resourceVersion is waited for: the agent's generation (the highest
    /// resourceVersion it has applied) need only reach the kinds it reports.
    pub fn reached(&self, generation: Option<u64>, kinds: &BTreeMap<String, u64>) -> bool {
        let Some(g) = generation else {
            return false;
        };
        let need = if kinds.is_empty() {
            self.generation
        } else {
            self.kinds
                .iter()
                .filter(|(k, _)| kinds.contains_key(*k))
                .map(|(_, rv)| *rv)
                .max()
                .unwrap_or(0)
        };
        g >= need
            && self
                .kinds
                .iter()
                .all(|(k, rv)| kinds.get(k).is_none_or(|have| have >= rv))
    }

    /// The kinds of this mark an agent reporting `kinds` does not watch (none with the
    /// manifests source, which reports no kinds).
    pub fn unwatched<'a>(&'a self, kinds: &BTreeMap<String, u64>) -> Vec<&'a str> {
        if kinds.is_empty() {
            return Vec::new();
        }
        self.kinds
            .keys()
            .filter(|k| !kinds.contains_key(*k))
            .map(String::as_str)
            .collect()
    }

    fn note(&mut self, kind: &str, rv: u64) {
        self.generation = self.generation.max(rv);
        let e = self.kinds.entry(kind.to_string()).or_default();
        *e = (*e).max(rv);
    }
}

/// The REST path of an object: `/api/v1/...` or `/apis/GROUP/VERSION/...`, its namespace's
/// if it has one, the kind's plural (the lowercase kind with an English plural, as every
/// kind the lab writes has).
pub fn path_of(obj: &Value) -> Result<String> {
    let kind = obj["kind"].as_str().unwrap_or("");
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let name = obj["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("{kind} without metadata.name"))?;
    if kind.is_empty() || api_version.is_empty() {
        bail!("{name}: an object needs kind and apiVersion");
    }
    let root = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let plural = plural_of(kind);
    Ok(match obj["metadata"]["namespace"].as_str() {
        Some(ns) if kind != "Namespace" => format!("{root}/namespaces/{ns}/{plural}/{name}"),
        _ => format!("{root}/{plural}/{name}"),
    })
}

/// The lowercase kind with an English plural (as every kind the lab writes has).
fn plural_of(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

fn is_namespace(v: &Value) -> bool {
    v["kind"] == "Namespace"
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn ok(code: u16, resp: &Value, what: &str) -> Result<()> {
    if (200..300).contains(&code) {
        return Ok(());
    }
    let message = resp["message"].as_str().unwrap_or("(no message)");
    bail!("{what}: HTTP {code}: {message}")
}

/// The lab's API server and its writer.
pub struct Api {
    /// The control plane, when this process runs it (`lab run`, `lab keep`).
    host: Option<Arc<Host>>,
    cp: ControlPlanePlan,
    client: ApiClient,
    /// The agents' kubeconfig (a token of [`AGENT_SA`]).
    pub kubeconfig: PathBuf,
    /// The lab's own (admin).
    pub admin_kubeconfig: PathBuf,
    written: BTreeMap<String, Value>,
    mark: Mark,
    /// What kubectl printed for the policies it applied since the last `take_said`.
    said: Vec<String>,
}

/// Written with kubectl, as an operator would: what is not the cluster's own furniture
/// (Namespaces, Nodes, Pods, Services, which its controllers and kubelets write).
fn is_policy(v: &Value) -> bool {
    !matches!(
        v["kind"].as_str(),
        Some("Namespace" | "Node" | "Pod" | "Service")
    )
}

impl Api {
    /// Starts the control plane in the plan's control-plane namespace, installs the bundle's
    /// RBAC and writes the kubeconfigs into `dir`.
    pub async fn start(plan: &Plan, dir: &Path) -> Result<Api> {
        let cp = plan
            .control_plane
            .clone()
            .ok_or_else(|| anyhow!("the plan has no control plane (add_control_plane)"))?;
        let started = Instant::now();
        let options = Options {
            netns: Some(cp.netns.clone()),
            address: cp.ip,
            ..Options::default()
        };
        let host = tokio::task::spawn_blocking(move || Host::start(options))
            .await?
            .context("starting etcd and kube-apiserver")?;
        let host = Arc::new(host);
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "api up");
        let (admin, agent) = host
            .with_async(|cp| -> Result<(PathBuf, PathBuf)> {
                apply_bundle(cp)?;
                let agent = cp.service_account_kubeconfig(AGENT_SA.0, AGENT_SA.1)?;
                Ok((cp.admin_kubeconfig(), agent))
            })
            .await??;
        let (kubeconfig, admin_kubeconfig) =
            (dir.join(AGENT_KUBECONFIG), dir.join(ADMIN_KUBECONFIG));
        for (from, to) in [(&agent, &kubeconfig), (&admin, &admin_kubeconfig)] {
            std::fs::copy(from, to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        let client = ApiClient::connect(&Netns::open(&cp.netns)?, &admin_kubeconfig)?;
        Ok(Api {
            host: Some(host),
            cp,
            client,
            kubeconfig,
            admin_kubeconfig,
            written: BTreeMap::new(),
            mark: Mark::default(),
            said: Vec::new(),
        })
    }

    /// The writer of a lab whose control plane another process runs (`lab apply` on a lab
    /// left running): it holds `written` and has written up to `mark`.
    pub fn attach(
        plan: &Plan,
        dir: &Path,
        written: BTreeMap<String, Value>,
        mark: Mark,
    ) -> Result<Api> {
        let cp = plan
            .control_plane
            .as_ref()
            .ok_or_else(|| anyhow!("the lab runs no control plane"))?;
        let admin_kubeconfig = dir.join(ADMIN_KUBECONFIG);
        let client = ApiClient::connect(&Netns::open(&cp.netns)?, &admin_kubeconfig)?;
        Ok(Api {
            host: None,
            cp: cp.clone(),
            client,
            kubeconfig: dir.join(AGENT_KUBECONFIG),
            admin_kubeconfig,
            written,
            mark,
            said: Vec::new(),
        })
    }

    /// Listens on the machine's loopback for kubectl and writes its kubeconfig (admin) to
    /// `path`; serves until the proxy is dropped.
    pub async fn serve_kubectl(&self, path: &Path) -> Result<Proxy> {
        let server = SocketAddr::new(self.cp.ip, control_plane::API_PORT);
        let proxy = Proxy::start(Netns::open(&self.cp.netns)?, server).await?;
        let admin = std::fs::read_to_string(&self.admin_kubeconfig)
            .with_context(|| format!("reading {}", self.admin_kubeconfig.display()))?;
        // The serving certificate names 127.0.0.1 too.
        let (from, to) = (
            format!("\"https://{server}\""),
            format!("\"https://{}\"", proxy.local),
        );
        if !admin.contains(&from) {
            bail!("{} does not name {from}", self.admin_kubeconfig.display());
        }
        let text = admin.replace(&from, &to);
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(proxy)
    }

    /// The control plane, when this process runs it (tests restart its processes).
    pub fn host(&self) -> Option<&Arc<Host>> {
        self.host.as_ref()
    }

    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    /// What the agents must reach for everything written so far.
    pub fn mark(&self) -> &Mark {
        &self.mark
    }

    /// Creates or updates an object (server-side apply); a Pod's or Node's status follows
    /// through its subresource (the server ignores status in the object's own writes). Notes
    /// the write's resourceVersion in the mark.
    pub async fn apply(&mut self, obj: &Value) -> Result<()> {
        let path = path_of(obj)?;
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        let mut body = obj.clone();
        if let Some(m) = body["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let status = body.as_object_mut().and_then(|o| o.remove("status"));
        let query = format!("?fieldManager={MANAGER}&force=true");
        let (code, resp) = self
            .client
            .request(
                Method::PATCH,
                &format!("{path}{query}"),
                Some((Body::Apply, &body)),
            )
            .await?;
        ok(code, &resp, &format!("applying {path}"))?;
        self.mark.note(&kind, rv_of(&resp));
        if kind == "Namespace" {
            self.default_service_account(obj).await?;
        }
        if let Some(status) = status.clone().filter(|_| kind == "Node") {
            // As a kubelet writes it, not by server-side apply: `status.addresses` is a list
            // keyed by `type` there, and a dual-stack node has an InternalIP of each family.
            let query = format!("?fieldManager={KUBELET_MANAGER}");
            let (code, resp) = self
                .client
                .request(
                    Method::PATCH,
                    &format!("{path}/status{query}"),
                    Some((Body::MergePatch, &json!({ "status": status }))),
                )
                .await?;
            ok(code, &resp, &format!("the status of {path}"))?;
            self.mark.note(&kind, rv_of(&resp));
        }
        if let Some(status) = status.filter(|_| kind == "Pod") {
            let patch = json!({
                "apiVersion": obj["apiVersion"], "kind": kind,
                "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"]},
                "status": status,
            });
            let query = format!("?fieldManager={KUBELET_MANAGER}&force=true");
            let (code, resp) = self
                .client
                .request(
                    Method::PATCH,
                    &format!("{path}/status{query}"),
                    Some((Body::Apply, &patch)),
                )
                .await?;
            ok(code, &resp, &format!("the status of {path}"))?;
            self.mark.note(&kind, rv_of(&resp));
        }
        Ok(())
    }

    /// The `default` ServiceAccount of a namespace, as the controller-manager makes it.
    async fn default_service_account(&self, ns: &Value) -> Result<()> {
        let name = ns["metadata"]["name"].as_str().unwrap_or("");
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "default", "namespace": name}});
        let path = format!("/api/v1/namespaces/{name}/serviceaccounts");
        let (code, resp) = self
            .client
            .request(Method::POST, &path, Some((Body::Json, &sa)))
            .await?;
        if code == 409 {
            return Ok(());
        }
        ok(
            code,
            &resp,
            &format!("creating the default ServiceAccount of {name}"),
        )
    }

    /// Deletes an object at once (absent is fine).
    pub async fn delete(&mut self, obj: &Value) -> Result<()> {
        let path = path_of(obj)?;
        let kind = obj["kind"].as_str().unwrap_or("").to_string();
        // Its last resourceVersion: the deletion's comes after it (a DELETE answers with a
        // Status for most kinds, or the object as it was, never with the deletion's).
        let (code, current) = self.client.request(Method::GET, &path, None).await?;
        if code == 404 {
            return Ok(());
        }
        ok(code, &current, &format!("reading {path}"))?;
        let last = rv_of(&current);
        let (code, resp) = self
            .client
            .request(
                Method::DELETE,
                &format!("{path}?gracePeriodSeconds=0"),
                None,
            )
            .await?;
        if code == 404 {
            return Ok(());
        }
        ok(code, &resp, &format!("deleting {path}"))?;
        // The agents must see the deletion's resourceVersion, which only a watch tells (a
        // namespace's DELETE answers with it: the update that sets its deletionTimestamp, the
        // event the agents see at once; the lab finalizes it below).
        let rv = if is_namespace(obj) {
            rv_of(&resp)
        } else {
            self.client
                .deletion_rv(obj, last)
                .await
                .with_context(|| format!("the deletion of {path}"))?
        };
        self.mark.note(&kind, rv);
        if is_namespace(obj) {
            // No namespace controller empties and finalizes it: the lab does.
            let name = obj["metadata"]["name"].as_str().unwrap_or("");
            let body = json!({"apiVersion": "v1", "kind": "Namespace",
                              "metadata": {"name": name}, "spec": {"finalizers": []}});
            let (code, resp) = self
                .client
                .request(
                    Method::PUT,
                    &format!("{path}/finalize"),
                    Some((Body::Json, &body)),
                )
                .await?;
            if code != 404 {
                ok(code, &resp, &format!("finalizing {path}"))?;
            }
        }
        Ok(())
    }

    /// Makes the API hold exactly `want` (file name → object, as the manifests writer takes
    /// it); returns the mark the agents must reach.
    pub async fn sync(&mut self, want: &BTreeMap<String, Value>) -> Result<Mark> {
        let started = Instant::now();
        // Namespaces first (objects need theirs), deletions of namespaces last.
        let mut order: Vec<(&String, &Value)> = want
            .iter()
            .filter(|(name, v)| self.written.get(*name) != Some(*v))
            .collect();
        order.sort_by_key(|(_, v)| !is_namespace(v));
        // Policies through kubectl when this process runs the control plane (not `lab
        // apply`, which is itself the operator's tool).
        let (kubectl, direct): (Vec<_>, Vec<_>) = order
            .into_iter()
            .partition(|(_, v)| self.host.is_some() && is_policy(v));
        for (name, v) in direct {
            self.apply(v)
                .await
                .with_context(|| format!("writing {name}"))?;
        }
        if !kubectl.is_empty() {
            let objects: Vec<Value> = kubectl.iter().map(|(_, v)| (*v).clone()).collect();
            self.kubectl_apply(objects).await?;
        }
        let mut gone: Vec<Value> = self
            .written
            .iter()
            .filter(|(k, _)| !want.contains_key(*k))
            .map(|(_, v)| v.clone())
            .collect();
        gone.sort_by_key(is_namespace);
        for v in &gone {
            self.delete(v).await?;
        }
        self.written = want.clone();
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "api sync"
        );
        Ok(self.mark.clone())
    }
}

impl Api {
    /// `kubectl apply -f -` of `objects`, as admin; notes each one's resourceVersion and keeps
    /// what kubectl said (`networkpolicy.networking.k8s.io/x created`).
    async fn kubectl_apply(&mut self, objects: Vec<Value>) -> Result<()> {
        let host = self
            .host
            .clone()
            .ok_or_else(|| anyhow!("no control plane here"))?;
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let text = list.to_string();
        let said = host
            .with_async(move |cp| kubectl_stdin(cp, &["apply", "-f", "-"], &text))
            .await??;
        self.said.push("$ kubectl apply -f -".into());
        self.said.extend(said.lines().map(str::to_string));
        for obj in &objects_of(&list) {
            let path = path_of(obj)?;
            let (code, resp) = self.client.request(Method::GET, &path, None).await?;
            ok(code, &resp, &format!("reading {path} back"))?;
            self.mark
                .note(obj["kind"].as_str().unwrap_or(""), rv_of(&resp));
        }
        Ok(())
    }

    /// What kubectl said since the last call.
    pub fn take_said(&mut self) -> Vec<String> {
        std::mem::take(&mut self.said)
    }
}

fn objects_of(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// `kubectl ARGS` as admin with `input` on its stdin; what it printed, or its error.
fn kubectl_stdin(cp: &control_plane::ControlPlane, args: &[&str], input: &str) -> Result<String> {
    let mut child = cp
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("kubectl's stdin"))?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The CRDs of the policy kinds (deploy/crds/), as a cluster running the enforcer has them.
const CRDS: &str = concat!(
    include_str!("../../../deploy/crds/policy.networking.k8s.io.yaml"),
    "\n---\n",
    include_str!("../../../deploy/crds/crd.projectcalico.org.yaml")
);

/// `kubectl apply -f -` of the bundle and the CRDs, as admin; then waits until the API server
/// serves the CRDs' kinds, so the scenario's cluster-wide policies can be applied.
fn apply_bundle(cp: &control_plane::ControlPlane) -> Result<()> {
    kubectl_stdin(cp, &["apply", "-f", "-"], BUNDLE).context("installing the bundle's RBAC")?;
    kubectl_stdin(cp, &["apply", "-f", "-"], CRDS).context("installing the CRDs")?;
    kubectl_stdin(
        cp,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd",
            "-l",
            "app.kubernetes.io/part-of=enforcer",
        ],
        "",
    )
    .map(drop)
    .context("waiting for the CRDs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_paths_follow_the_api() {
        let p = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": "p", "namespace": "x"}});
        assert_eq!(
            path_of(&p).unwrap(),
            "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/p"
        );
        let n = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        assert_eq!(path_of(&n).unwrap(), "/api/v1/namespaces/x");
        let c = json!({"apiVersion": "policy.networking.k8s.io/v1alpha2",
                       "kind": "ClusterNetworkPolicy", "metadata": {"name": "c"}});
        assert_eq!(
            path_of(&c).unwrap(),
            "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies/c"
        );
        let s = json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "s", "namespace": "x"}});
        assert_eq!(path_of(&s).unwrap(), "/api/v1/namespaces/x/services/s");
        let bad = json!({"kind": "Pod", "metadata": {"name": "a"}});
        assert!(
            path_of(&bad)
                .unwrap_err()
                .to_string()
                .contains("apiVersion")
        );
    }

    #[test]
    fn a_mark_is_reached_kind_by_kind() {
        let mut m = Mark::default();
        m.note("Pod", 10);
        m.note("NetworkPolicy", 12);
        m.note("Pod", 7);
        assert_eq!(m.generation, 12);
        let kinds = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        // The highest resourceVersion alone is not enough: the Pod watch may lag behind.
        assert!(!m.reached(Some(12), &kinds(&[("Pod", 9), ("NetworkPolicy", 12)])));
        assert!(m.reached(Some(12), &kinds(&[("Pod", 10), ("NetworkPolicy", 12)])));
        // A kind the agent does not watch is not waited for.
        assert!(m.reached(Some(12), &kinds(&[("NetworkPolicy", 13)])));
        assert!(!m.reached(None, &kinds(&[])));
        // A kind the agent does not report (Nodes, before it watches them) is not waited for,
        // even when the lab's last write was one (so the highest resourceVersion).
        let mut n = m.clone();
        n.note("Node", 20);
        assert_eq!(n.generation, 20);
        assert!(n.reached(Some(12), &kinds(&[("Pod", 10), ("NetworkPolicy", 12)])));
        assert_eq!(
            n.unwatched(&kinds(&[("Pod", 10), ("NetworkPolicy", 12)])),
            vec!["Node"]
        );
        let all = |node| kinds(&[("Pod", 10), ("NetworkPolicy", 12), ("Node", node)]);
        assert!(!n.reached(Some(19), &all(19)));
        assert!(n.reached(Some(20), &all(20)));
        assert!(n.unwatched(&all(20)).is_empty());
        assert!(n.unwatched(&BTreeMap::new()).is_empty());
        // The manifests source: the folder's generation only.
        assert!(Mark::generation(3).reached(Some(3), &BTreeMap::new()));
        assert!(!Mark::generation(3).reached(Some(2), &BTreeMap::new()));
    }
}
