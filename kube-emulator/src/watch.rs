//! One watch stream: a task that turns the store's history into newline-delimited JSON
//! events on the response body.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Emulator;
use crate::error::ApiError;
use crate::resource::Resource;
use crate::store::Drain;

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    object: &'a Value,
}

/// One event line (`{"type":..,"object":..}\n`).
pub(crate) fn line(ty: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&Line { ty, object }).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The object of a BOOKMARK event: the kind with only `metadata.resourceVersion`.
pub(crate) fn bookmark(res: Resource, rv: u64, initial_end: bool) -> Value {
    let mut o = json!({
        "kind": res.kind(),
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
    });
    if initial_end {
        o["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    o
}

/// The 410 ERROR event that ends a watch whose history was compacted away.
pub(crate) fn expired_line(pos: u64, floor: u64) -> Bytes {
    let e = ApiError::expired(format!("too old resource version: {pos} ({floor})"));
    line("ERROR", &e.status())
}

/// Unregisters the watch however the task ends.
struct Registration {
    emu: Emulator,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.emu.lock().watches.remove(&self.id);
    }
}

pub(crate) struct WatchTask {
    pub emu: Emulator,
    pub id: u64,
    pub res: Resource,
    pub tx: mpsc::Sender<Bytes>,
    pub initial: Vec<Arc<Value>>,
    /// Send the `k8s.io/initial-events-end` bookmark at this RV after the initial events.
    pub initial_end: Option<u64>,
    pub bookmarks: bool,
    pub deadline: Instant,
}

impl WatchTask {
    pub(crate) async fn run(self) {
        let _registration = Registration {
            emu: self.emu.clone(),
            id: self.id,
        };
        let deadline = self.deadline;
        // At the deadline the task ends and drops its sender: the body ends cleanly.
        let _ = tokio::time::timeout_at(deadline, self.stream()).await;
    }

    async fn stream(self) {
        let tx = &self.tx;
        let send = |b: Bytes| async move { tx.send(b).await.is_ok() };
        for o in &self.initial {
            if !send(line("ADDED", o)).await {
                return;
            }
        }
        if let Some(rv) = self.initial_end
            && !send(line("BOOKMARK", &bookmark(self.res, rv, true))).await
        {
            return;
        }
        let mut epoch = self.emu.inner.epoch.subscribe();
        let mut interval = self.emu.inner.bookmark_interval.subscribe();
        let mut next_bookmark = Instant::now() + *interval.borrow_and_update();
        loop {
            epoch.borrow_and_update();
            let drained = self.emu.lock().drain(self.id);
            let pos = match drained {
                Drain::Gone => return,
                Drain::Expired(pos, floor) => {
                    self.emu.lock().counters.expired_watches += 1;
                    send(expired_line(pos, floor)).await;
                    return;
                }
                Drain::Events(events, pos) => {
                    for (ty, o) in events {
                        if !send(line(ty.as_str(), &o)).await {
                            return;
                        }
                    }
                    pos
                }
            };
            tokio::select! {
                _ = tx.closed() => return,
                r = epoch.changed() => if r.is_err() { return },
                r = interval.changed() => {
                    if r.is_err() {
                        return;
                    }
                    next_bookmark = Instant::now() + *interval.borrow_and_update();
                }
                _ = tokio::time::sleep_until(next_bookmark), if self.bookmarks => {
                    if !send(line("BOOKMARK", &bookmark(self.res, pos, false))).await {
                        return;
                    }
                    next_bookmark = Instant::now() + *interval.borrow();
                }
            }
        }
    }
}
