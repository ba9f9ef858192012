//! The thread that owns the lab's control plane.
//!
//! etcd and kube-apiserver die with the thread that started them (`PR_SET_PDEATHSIG`, so that
//! a killed lab leaves no server behind), and the lab runs on an async runtime whose threads
//! come and go. So one thread of our own starts them, keeps them, restarts them when a test
//! asks, and stops them when dropped; every operation on the control plane runs on it.

use std::sync::mpsc;

use anyhow::{Result, anyhow};
use control_plane::{ControlPlane, Options};

type Job = Box<dyn FnOnce(&mut ControlPlane) + Send>;

/// A control plane on its own thread; dropped (processes stopped, files removed) with it.
pub struct Host {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Host {
    /// Starts etcd and kube-apiserver (waits until the API server is ready).
    pub fn start(options: Options) -> Result<Host> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), control_plane::Error>>();
        let thread = std::thread::Builder::new()
            .name("lab-control-plane".into())
            .spawn(move || {
                let mut cp = match ControlPlane::start(options) {
                    Ok(cp) => {
                        let _ = ready_tx.send(Ok(()));
                        cp
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut cp);
                }
            })?;
        let started = ready_rx
            .recv()
            .map_err(|_| anyhow!("the control plane's thread ended while starting"))?;
        let host = Host {
            tx: Some(tx),
            thread: Some(thread),
        };
        started?;
        Ok(host)
    }

    /// Runs `f` on the control plane's thread and returns what it returns.
    pub fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ControlPlane) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |cp| {
            let _ = tx.send(f(cp));
        });
        self.tx
            .as_ref()
            .and_then(|t| t.send(job).ok())
            .ok_or_else(|| anyhow!("the control plane's thread has ended"))?;
        rx.recv()
            .map_err(|_| anyhow!("the control plane's thread has ended"))
    }

    /// `with`, from async code (the call blocks a thread of the blocking pool, not the
    /// runtime's workers).
    pub async fn with_async<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&mut ControlPlane) -> T + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.with(f)).await?
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which drops the control plane.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
