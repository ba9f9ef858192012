//! The lab with `--source kube`: an in-process Kubernetes API emulator ([`kube_emulator`])
//! serves the cluster's objects; every node's agent runs `enforcer run --source kube` against it,
//! and the lab writes every change through the API over HTTP, as `kubectl` would.
//!
//! The emulator listens on 127.0.0.1:6443 inside each node's network namespace (one socket per
//! namespace, one store behind them), so no lab traffic leaves the lab's namespaces and the
//! agents' kubeconfig is the same on every node. An agent reports the highest resourceVersion it
//! has applied as its status `generation`; the lab waits for the emulator's resourceVersion after
//! its last write.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use kube_emulator::Emulator;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::netns::Netns;

/// Where the emulator listens in every node namespace.
pub const API_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 6443);

/// The lab's API server and its writer.
pub struct Api {
    pub emulator: Emulator,
    /// The namespace the lab's own requests are made from (the first node's).
    ns: Netns,
    pub kubeconfig: PathBuf,
    written: BTreeMap<String, Value>,
}

/// The REST path of an object's collection, and of the object.
pub fn paths(obj: &Value) -> Result<(String, String)> {
    let kind = obj["kind"].as_str().unwrap_or("");
    let name = obj["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("{kind} without metadata.name"))?;
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let collection = match kind {
        "Namespace" => "/api/v1/namespaces".to_string(),
        "Pod" => format!("/api/v1/namespaces/{ns}/pods"),
        "Service" => format!("/api/v1/namespaces/{ns}/services"),
        "NetworkPolicy" => format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies"),
        other => bail!("the lab's API cannot store kind {other:?}"),
    };
    let object = format!("{collection}/{name}");
    Ok((collection, object))
}

fn is_namespace(v: &Value) -> bool {
    v["kind"] == "Namespace"
}

impl Api {
    /// Starts the emulator on every node namespace (serving on the current runtime) and writes
    /// the agents' kubeconfig into `dir`.
    pub fn start(nodes: &[Netns], dir: &Path, tasks: &mut Vec<JoinHandle<()>>) -> Result<Api> {
        let emulator = Emulator::new();
        for ns in nodes {
            let listener = ns
                .run(|| {
                    std::net::TcpListener::bind(API_ADDR)
                        .with_context(|| format!("binding the lab API on {API_ADDR}"))
                })
                .with_context(|| format!("in {}", ns.name))?;
            listener.set_nonblocking(true)?;
            tasks.push(emulator.serve(listener)?);
        }
        let kubeconfig = dir.join("kubeconfig");
        kube_emulator::write_kubeconfig(&kubeconfig, API_ADDR)
            .with_context(|| format!("writing {}", kubeconfig.display()))?;
        Ok(Api {
            emulator,
            ns: nodes
                .first()
                .cloned()
                .ok_or_else(|| anyhow!("a lab without nodes"))?,
            kubeconfig,
            written: BTreeMap::new(),
        })
    }

    /// One request, over a fresh connection made from inside a node namespace.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let stream = self.ns.run(|| {
            let s = std::net::TcpStream::connect(API_ADDR)
                .with_context(|| format!("connecting to the lab API {API_ADDR}"))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the lab API")?;
        let conn = tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", API_ADDR.to_string())
            .header("content-type", content_type)
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        conn.abort();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Creates or replaces an object; returns the resourceVersion of the write.
    pub async fn apply(&self, obj: &Value) -> Result<u64> {
        let (collection, path) = paths(obj)?;
        let mut obj = obj.clone();
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let (mut code, mut resp) = self.request("PUT", &path, Some(&obj)).await?;
        if code == 404 {
            (code, resp) = self.request("POST", &collection, Some(&obj)).await?;
        }
        if !(200..300).contains(&code) {
            bail!("writing {path}: HTTP {code}: {}", resp["message"]);
        }
        Ok(rv_of(&resp))
    }

    /// Deletes an object (absent is fine).
    pub async fn delete(&self, obj: &Value) -> Result<()> {
        let (_, path) = paths(obj)?;
        let (code, resp) = self.request("DELETE", &path, None).await?;
        if !(200..300).contains(&code) && code != 404 {
            bail!("deleting {path}: HTTP {code}: {}", resp["message"]);
        }
        Ok(())
    }

    /// Makes the API hold exactly `want` (file name → object, as the manifests writer takes
    /// it); returns the resourceVersion after the last write (the generation to wait for).
    pub async fn sync(&mut self, want: &BTreeMap<String, Value>) -> Result<u64> {
        let started = Instant::now();
        // Namespaces first (objects need theirs), deletions of namespaces last.
        let mut order: Vec<(&String, &Value)> = want.iter().collect();
        order.sort_by_key(|(_, v)| !is_namespace(v));
        for (name, v) in order {
            if self.written.get(name) != Some(v) {
                self.apply(v)
                    .await
                    .with_context(|| format!("writing {name}"))?;
            }
        }
        let mut gone: Vec<&Value> = self
            .written
            .iter()
            .filter(|(k, _)| !want.contains_key(*k))
            .map(|(_, v)| v)
            .collect();
        gone.sort_by_key(|v| is_namespace(v));
        for v in gone {
            self.delete(v).await?;
        }
        self.written = want.clone();
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "api sync"
        );
        Ok(self.emulator.resource_version())
    }
}

pub fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rest_paths_follow_the_api() {
        let p = json!({"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"}});
        assert_eq!(
            paths(&p).unwrap().1,
            "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/p"
        );
        let n = json!({"kind": "Namespace", "metadata": {"name": "x"}});
        assert_eq!(paths(&n).unwrap().0, "/api/v1/namespaces");
        let d = json!({"kind": "Deployment", "metadata": {"name": "d"}});
        assert!(paths(&d).unwrap_err().to_string().contains("Deployment"));
    }
}
