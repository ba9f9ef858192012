//! A TLS proxy in front of kube-apiserver that the test controls: it terminates TLS with the
//! control plane's own serving certificate (signed by its CA, valid for 127.0.0.1), so the
//! agent's kubeconfig keeps its CA, and forwards every connection over TLS to the real server.
//! HTTP is not parsed on the forwarding path; the test can instead
//! - cut every open connection mid-stream (`cut`),
//! - refuse new connections (accept and close: `refuse`),
//! - answer the next connections' first request with a real HTTP 500 or 429 + Retry-After
//!   (`fail_next`), then close them.
//!
//! It runs on a thread of its own that entered the node's network namespace, so its listener
//! and its connections to the API server live there. Stopped on drop.
#![allow(dead_code)] // each test file uses its own part

use std::collections::VecDeque;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// An answer the proxy gives instead of forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 500 Internal Server Error (a Status body, as the API server writes one).
    Internal,
    /// 429 Too Many Requests with `Retry-After: SECONDS`.
    TooMany { retry_after: u32 },
}

/// What the proxy did, counted.
#[derive(Default, Debug)]
pub struct Counts {
    pub accepted: AtomicU64,
    pub forwarded: AtomicU64,
    pub refused: AtomicU64,
    pub cut: AtomicU64,
    pub answered_500: AtomicU64,
    pub answered_429: AtomicU64,
}

impl Counts {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

struct Shared {
    refuse: AtomicBool,
    faults: Mutex<VecDeque<Fault>>,
    counts: Counts,
}

pub struct FaultProxy {
    shared: Arc<Shared>,
    cut_tx: watch::Sender<u64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Where it listens (in the namespace).
    pub addr: SocketAddr,
}

/// Moves the calling thread into the network namespace `/run/netns/NAME`.
pub fn enter_netns(name: &str) {
    let f = File::open(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("opening netns {name}: {e}"));
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

fn tls_configs(cp_dir: &Path) -> (TlsAcceptor, TlsConnector) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cp_dir.join("apiserver.crt"))
            .expect("the serving certificate")
            .collect::<Result<_, _>>()
            .expect("the serving certificate");
    let key = PrivateKeyDer::from_pem_file(cp_dir.join("apiserver.key")).expect("its key");
    // No ALPN: the client speaks HTTP/1.1, one request stream per connection at a time.
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a server config");
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(cp_dir.join("ca.crt")).expect("the CA") {
        roots.add(ca.expect("the CA")).unwrap();
    }
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        TlsAcceptor::from(Arc::new(server)),
        TlsConnector::from(Arc::new(client)),
    )
}

impl FaultProxy {
    /// Starts the proxy in `netns` on 127.0.0.1 (a free port), forwarding to `upstream`, with
    /// the certificates of the control plane in `cp_dir`.
    pub fn start(netns: &str, upstream: SocketAddr, cp_dir: &Path) -> FaultProxy {
        let (acceptor, connector) = tls_configs(cp_dir);
        let shared = Arc::new(Shared {
            refuse: AtomicBool::new(false),
            faults: Mutex::new(VecDeque::new()),
            counts: Counts::default(),
        });
        let (cut_tx, cut_rx) = watch::channel(0u64);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let netns = netns.to_string();
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            enter_netns(&netns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let mut stop_rx = stop_rx;
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        r = listener.accept() => if let Ok((tcp, _)) = r {
                            // Only cuts after this connection began concern it.
                            let mut cut = cut_rx.clone();
                            cut.borrow_and_update();
                            let c = Conn {
                                shared: sh.clone(),
                                acceptor: acceptor.clone(),
                                connector: connector.clone(),
                                upstream,
                                cut,
                            };
                            tokio::spawn(c.serve(tcp));
                        }
                    }
                }
            });
            // Dropping the runtime drops every connection.
        });
        let addr = addr_rx.recv().expect("the proxy started");
        FaultProxy {
            shared,
            cut_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
            addr,
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.shared.counts
    }

    /// Closes every connection being forwarded now (TCP close, no TLS close_notify).
    pub fn cut(&self) {
        self.cut_tx.send_modify(|n| *n += 1);
    }

    /// While on, new connections are accepted and closed at once.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// The next connections, one each, get these answers instead of the API server's.
    pub fn fail_next(&self, faults: &[Fault]) {
        self.shared
            .faults
            .lock()
            .unwrap()
            .extend(faults.iter().copied());
    }

    pub fn faults_pending(&self) -> usize {
        self.shared.faults.lock().unwrap().len()
    }

    /// A kubeconfig like `kubeconfig` whose server is this proxy.
    pub fn kubeconfig(&self, kubeconfig: &Path, upstream_url: &str, out: &Path) {
        let text = std::fs::read_to_string(kubeconfig).unwrap();
        assert!(text.contains(upstream_url), "{upstream_url} in {text}");
        let text = text.replace(upstream_url, &format!("https://{}", self.addr));
        std::fs::write(out, text).unwrap();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Conn {
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    upstream: SocketAddr,
    cut: watch::Receiver<u64>,
}

impl Conn {
    async fn serve(mut self, tcp: TcpStream) {
        let counts = &self.shared.counts;
        counts.accepted.fetch_add(1, Ordering::SeqCst);
        if self.shared.refuse.load(Ordering::SeqCst) {
            counts.refused.fetch_add(1, Ordering::SeqCst);
            drop(tcp);
            return;
        }
        let Ok(mut tls) = self.acceptor.accept(tcp).await else {
            return;
        };
        let fault = self.shared.faults.lock().unwrap().pop_front();
        if let Some(fault) = fault {
            if read_head(&mut tls).await {
                let _ = tls.write_all(answer(fault).as_bytes()).await;
                let _ = tls.shutdown().await;
                match fault {
                    Fault::Internal => &counts.answered_500,
                    Fault::TooMany { .. } => &counts.answered_429,
                }
                .fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        let Ok(up) = TcpStream::connect(self.upstream).await else {
            return;
        };
        let name = ServerName::IpAddress(self.upstream.ip().into());
        let Ok(mut up) = self.connector.connect(name, up).await else {
            return;
        };
        counts.forwarded.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut tls, &mut up) => {}
            _ = self.cut.changed() => {
                counts.cut.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Reads up to the end of a request's head; false if the client went away first.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return false;
        }
    }
    true
}

/// The HTTP response, with a Status body as kube-apiserver writes one.
fn answer(fault: Fault) -> String {
    let (code, text, reason, extra) = match fault {
        Fault::Internal => (500, "Internal Server Error", "InternalError", String::new()),
        Fault::TooMany { retry_after } => (
            429,
            "Too Many Requests",
            "TooManyRequests",
            format!("Retry-After: {retry_after}\r\n"),
        ),
    };
    let body = format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"injected by the test's proxy","reason":"{reason}","code":{code}}}"#
    );
    format!(
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
}
