//! Requests to the lab's kube-apiserver, made from inside a network namespace of the lab.
//!
//! The API server is reachable only on the lab's fabric, so the client's sockets must be made
//! in a lab namespace. A thread enters the namespace for good and runs its own single-threaded
//! runtime holding a `kube::Client` (TLS and authentication from a kubeconfig); requests reach
//! it over a channel. Every connection the client opens is opened on that thread, hence in
//! that namespace.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::netns::{self, Netns};

/// The content type of a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    Json,
    /// Server-side apply (`application/apply-patch+yaml`; JSON is YAML).
    Apply,
    MergePatch,
}

impl Body {
    fn content_type(self) -> &'static str {
        match self {
            Body::Json => "application/json",
            Body::Apply => "application/apply-patch+yaml",
            Body::MergePatch => "application/merge-patch+json",
        }
    }
}

enum Call {
    Request {
        method: http::Method,
        path: String,
        body: Option<(Body, Vec<u8>)>,
        reply: oneshot::Sender<Result<(u16, Value)>>,
    },
    /// The resourceVersion of an object's deletion (see [`ApiClient::deletion_rv`]).
    Deleted {
        object: Value,
        after: u64,
        reply: oneshot::Sender<Result<u64>>,
    },
}

/// A client of the lab's API server; its thread ends when it is dropped.
pub struct ApiClient {
    tx: mpsc::UnboundedSender<Call>,
}

impl ApiClient {
    /// Starts the client's thread in `ns`, authenticated by `kubeconfig`.
    pub fn connect(ns: &Netns, kubeconfig: &Path) -> Result<ApiClient> {
        let text = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let kc = kube::config::Kubeconfig::from_yaml(&text)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Call>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let fd = ns.raw_fd();
        let name = ns.name.clone();
        // The thread keeps the namespace open through its own handle.
        let ns = ns.clone();
        std::thread::Builder::new()
            .name("lab-api".into())
            .spawn(move || {
                let _ns = ns;
                let started = (|| -> Result<_> {
                    netns::enter(fd).with_context(|| format!("entering netns {name}"))?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let client = rt.block_on(async {
                        let config =
                            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
                        anyhow::Ok(kube::Client::try_from(config)?)
                    })?;
                    Ok((rt, client))
                })();
                let (rt, client) = match started {
                    Ok(x) => {
                        let _ = ready_tx.send(Ok(()));
                        x
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    while let Some(call) = rx.recv().await {
                        let client = client.clone();
                        tokio::spawn(async move {
                            match call {
                                Call::Request {
                                    method,
                                    path,
                                    body,
                                    reply,
                                } => {
                                    let what = format!("{method} {path}");
                                    let r = send(&client, method, &path, body)
                                        .await
                                        .with_context(|| what);
                                    let _ = reply.send(r);
                                }
                                Call::Deleted {
                                    object,
                                    after,
                                    reply,
                                } => {
                                    let _ = reply.send(deleted_at(&client, &object, after).await);
                                }
                            }
                        });
                    }
                });
            })
            .context("spawning the API client's thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the API client's thread ended"))?
            .with_context(|| format!("the API client from {}", kubeconfig.display()))?;
        Ok(ApiClient { tx })
    }

    /// One request; the HTTP status and the body as JSON (`null` if it is not JSON).
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(Body, &Value)>,
    ) -> Result<(u16, Value)> {
        let (reply, rx) = oneshot::channel();
        let body = body.map(|(kind, v)| (kind, v.to_string().into_bytes()));
        self.tx
            .send(Call::Request {
                method,
                path: path.to_string(),
                body,
                reply,
            })
            .map_err(|_| anyhow!("the API client's thread ended"))?;
        rx.await
            .map_err(|_| anyhow!("the API client's thread ended"))?
    }

    /// The resourceVersion of the deletion of `object`, whose last version was `after`: a
    /// DELETE answers with the object as it was (its last resourceVersion, not the
    /// deletion's), so the deletion's is read from a watch of that one object from `after`.
    pub async fn deletion_rv(&self, object: &Value, after: u64) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Call::Deleted {
                object: object.clone(),
                after,
                reply,
            })
            .map_err(|_| anyhow!("the API client's thread ended"))?;
        rx.await
            .map_err(|_| anyhow!("the API client's thread ended"))?
    }
}

async fn deleted_at(client: &kube::Client, object: &Value, after: u64) -> Result<u64> {
    use futures::StreamExt as _;
    use kube::api::{Api, ApiResource, DynamicObject, WatchEvent, WatchParams};
    let kind = object["kind"].as_str().unwrap_or("");
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    let gvk = kube::api::GroupVersionKind::try_from(&kube::core::TypeMeta {
        api_version: api_version.into(),
        kind: kind.into(),
    })?;
    let plural = super::plural_of(kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(ns) if kind != "Namespace" => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    };
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(10);
    let mut events = api.watch(&wp, &after.to_string()).await?.boxed();
    while let Some(ev) = events.next().await {
        if let WatchEvent::Deleted(o) = ev? {
            let rv = o.metadata.resource_version.unwrap_or_default();
            return rv
                .parse()
                .with_context(|| format!("the deletion's resourceVersion {rv:?}"));
        }
    }
    anyhow::bail!("no deletion of {kind} {name} after resourceVersion {after} within 10 s")
}

async fn send(
    client: &kube::Client,
    method: http::Method,
    path: &str,
    body: Option<(Body, Vec<u8>)>,
) -> Result<(u16, Value)> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "application/json");
    let bytes = match body {
        Some((kind, bytes)) => {
            req = req.header("content-type", kind.content_type());
            bytes
        }
        None => Vec::new(),
    };
    let req = req.body(kube::client::Body::from(bytes))?;
    let resp = client.send(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}
