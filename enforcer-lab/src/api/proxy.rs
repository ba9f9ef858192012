//! `kubectl` on the machine against a lab left running: the API server is reachable only on
//! the lab's fabric, so the lab's keeper listens on the machine's loopback and carries each
//! connection, as bytes (TLS end to end), to kube-apiserver from inside the control plane's
//! namespace. Nothing of the lab's traffic leaves its namespaces; only the operator's API
//! requests come in, as `kubectl port-forward` or kind's published port would carry them.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::netns::Netns;

/// A listener on 127.0.0.1 forwarding to `target` in `ns`; stops when dropped.
pub struct Proxy {
    pub local: SocketAddr,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(ns: Netns, target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("listening on the machine's loopback for kubectl")?;
        let local = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let ns = ns.clone();
                tokio::spawn(async move {
                    let upstream = ns.run(move || {
                        let s = std::net::TcpStream::connect(target)
                            .with_context(|| format!("connecting to {target}"))?;
                        s.set_nonblocking(true)?;
                        Ok(s)
                    });
                    let Ok(upstream) = upstream.and_then(|s| Ok(TcpStream::from_std(s)?)) else {
                        return;
                    };
                    let mut upstream = upstream;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        Ok(Proxy { local, task })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
