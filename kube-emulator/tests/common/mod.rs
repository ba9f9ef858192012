//! Test support: a throwaway network namespace per test, and a small raw HTTP client.
//!
//! Network safety: every test binds and connects only inside a network namespace it created
//! (`emu-test-<pid>-<n>`), deleted afterwards, also when the test panics.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The longest a test body may run.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Deletes the network namespace when dropped.
struct NetnsGuard {
    name: String,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let ok = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed (these tests need root and iproute2): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `body` in a fresh network namespace (with `lo` up), on a dedicated thread with a
/// current-thread tokio runtime; the server and the clients of the test all live there.
/// Panics of the body are re-raised after the namespace is gone.
pub fn in_netns<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "emu-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    ip(&["netns", "add", &name]);
    let guard = NetnsGuard { name: name.clone() };
    ip(&["-n", &name, "link", "set", "lo", "up"]);
    let thread_name = name.clone();
    let result = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let path = format!("/run/netns/{thread_name}");
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns on a valid namespace fd; it only changes this thread's namespace.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the runtime");
            rt.block_on(async move {
                tokio::time::timeout(TEST_TIMEOUT, body(thread_name))
                    .await
                    .expect("the test timed out");
            });
        })
        .expect("spawning the test thread")
        .join();
    drop(guard);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Starts an emulator on 127.0.0.1 (inside the test's namespace).
pub async fn start(emu: &kube_emulator::Emulator) -> SocketAddr {
    emu.bind("127.0.0.1:0".parse().unwrap())
        .await
        .expect("binding the emulator")
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    content_type: &str,
) -> hyper::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the emulator");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", content_type)
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One request with a raw body; returns the status code, headers and the body as JSON (Null
/// if it is not JSON).
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
) -> (u16, hyper::HeaderMap, Value) {
    let resp = send(addr, method, path, Some(body.to_vec()), content_type).await;
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .expect("reading the body")
        .to_bytes();
    (
        code,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// One JSON request.
pub async fn req(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let ct = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let b = body.map(|b| b.to_string()).unwrap_or_default();
    let (code, _, v) = raw(addr, method, path, b.as_bytes(), ct).await;
    (code, v)
}

/// What the next read of a watch stream gave.
#[derive(Debug)]
pub enum Next {
    Event(Value),
    /// The body ended properly (last chunk received).
    End,
    /// The connection broke mid-body.
    Broken(String),
    /// Nothing within the wait.
    Quiet,
}

/// A watch response body, read line by line.
pub struct Watch {
    pub status: u16,
    pub content_type: String,
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

impl Watch {
    pub async fn open(addr: SocketAddr, path: &str) -> Watch {
        let resp = send(addr, "GET", path, None, "application/json").await;
        Watch {
            status: resp.status().as_u16(),
            content_type: resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body: resp.into_body(),
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next event, waiting at most `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let v: Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("bad event line {:?}: {e}", String::from_utf8_lossy(&line))
                });
                return Next::Event(v);
            }
            if self.done {
                assert!(
                    self.buf.is_empty(),
                    "a partial line at the end: {:?}",
                    self.buf
                );
                return Next::End;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Next::Quiet,
                Ok(None) => self.done = true,
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                Ok(Some(Err(e))) => return Next::Broken(e.to_string()),
            }
        }
    }

    /// The next event; panics if none comes within 5 s.
    pub async fn next(&mut self) -> Value {
        match self.next_within(Duration::from_secs(5)).await {
            Next::Event(v) => v,
            other => panic!("expected a watch event, got {other:?}"),
        }
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_change(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] != "BOOKMARK" {
                return v;
            }
        }
    }
}

/// `(type, name)` of an event.
pub fn ev(v: &Value) -> (String, String) {
    (
        v["type"].as_str().unwrap_or("").to_string(),
        v["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

pub fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion in {obj}"))
}

pub fn namespace(name: &str) -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

pub fn pod(ns: &str, name: &str, labels: Value) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    })
}

pub fn policy(ns: &str, name: &str) -> Value {
    serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    })
}

/// Waits until `f` holds (polling every 20 ms), panicking with `what` after `secs`.
pub async fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
