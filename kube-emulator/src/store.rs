//! The object store: current objects, the bounded event history (the emulator's "etcd"),
//! registered watches, counters and injected failures. Everything here runs under one lock and
//! never awaits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::error::ApiError;
use crate::resource::Resource;
use crate::selector::Selectors;
use crate::util;

/// (resource, namespace or "" for cluster-scoped, name); the BTreeMap order is the list order.
pub(crate) type Key = (Resource, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as etcd would record it.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub key: Key,
    pub ty: EventType,
    /// The object after the write (for a deletion: the last state, with the deletion's RV).
    pub object: Arc<Value>,
    /// The object before the write (None for a creation).
    pub prev: Option<Arc<Value>>,
}

/// An open watch, as the store sees it.
pub(crate) struct WatchReg {
    pub res: Resource,
    pub ns: Option<String>,
    pub selectors: Selectors,
    /// Every event with rv <= pos has been considered (sent or filtered out).
    pub pos: u64,
    /// An event this watch still needed was forgotten: it gets a 410 and ends.
    pub expired: bool,
    /// Closes the HTTP connection carrying the watch (drop_watches).
    pub conn_kill: Arc<Notify>,
}

impl WatchReg {
    fn wants(&self, key: &Key) -> bool {
        key.0 == self.res && self.ns.as_ref().is_none_or(|ns| *ns == key.1)
    }
}

/// What a watch gets when it catches up with the history.
pub(crate) enum Drain {
    Events(Vec<(EventType, Arc<Value>)>, u64),
    /// (the position the watch was at, the compaction floor)
    Expired(u64, u64),
    Gone,
}

/// Per-resource counters (plural resource name → count).
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    pub requests: u64,
    pub injected_failures: u64,
    pub lists: BTreeMap<String, u64>,
    pub list_continues: BTreeMap<String, u64>,
    pub watches: BTreeMap<String, u64>,
    pub writes: BTreeMap<String, u64>,
    pub expired_watches: u64,
    pub dropped_watches: u64,
}

pub(crate) struct Store {
    pub rv: u64,
    /// Every event with rv > floor is in `history`; watching or listing from an older RV is 410.
    pub floor: u64,
    pub objects: BTreeMap<Key, Arc<Value>>,
    pub history: VecDeque<Event>,
    pub max_events: usize,
    pub watches: HashMap<u64, WatchReg>,
    next_watch: u64,
    seed: u64,
    serial: u64,
    pub counters: Counters,
    /// (requests left to fail, code)
    pub fail: Option<(u32, u16)>,
}

/// Where a watch starts.
pub(crate) enum WatchFrom {
    /// Synthetic ADDED for every current object, then events after the current RV.
    Now,
    /// Events after this RV.
    Rv(u64),
}

fn rv_string(v: &Value) -> Option<&str> {
    v["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

impl Store {
    pub(crate) fn new(max_events: usize) -> Self {
        let mut counters = Counters::default();
        for r in Resource::ALL {
            for m in [
                &mut counters.lists,
                &mut counters.list_continues,
                &mut counters.watches,
                &mut counters.writes,
            ] {
                m.insert(r.plural().to_string(), 0);
            }
        }
        Store {
            rv: 1,
            floor: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            max_events: max_events.max(1),
            watches: HashMap::new(),
            next_watch: 1,
            seed: util::seed(),
            serial: 0,
            counters,
            fail: None,
        }
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    pub(crate) fn get(&self, res: Resource, ns: &str, name: &str) -> Option<&Arc<Value>> {
        self.objects.get(&(res, ns.to_string(), name.to_string()))
    }

    // ---- history -------------------------------------------------------------------------

    fn record(&mut self, key: Key, ty: EventType, object: Arc<Value>, prev: Option<Arc<Value>>) {
        self.history.push_back(Event {
            rv: self.rv,
            key,
            ty,
            object,
            prev,
        });
        while self.history.len() > self.max_events {
            if let Some(e) = self.history.pop_front() {
                self.forget(&e);
            }
        }
    }

    /// An event leaves the history: a watch that has not considered it yet and would have
    /// wanted it can no longer be served (410); one that would not have wanted it moves past.
    fn forget(&mut self, e: &Event) {
        for w in self.watches.values_mut() {
            if !w.expired && w.pos < e.rv {
                if w.wants(&e.key) {
                    w.expired = true;
                } else {
                    w.pos = e.rv;
                }
            }
        }
        self.floor = self.floor.max(e.rv);
    }

    /// Forgets the whole history, like an etcd compaction at the current revision.
    pub(crate) fn compact(&mut self) {
        while let Some(e) = self.history.pop_front() {
            self.forget(&e);
        }
        self.floor = self.rv;
        for w in self.watches.values_mut() {
            if !w.expired {
                w.pos = w.pos.max(self.rv);
            }
        }
    }

    /// The objects of `res` as they were at `at` (which must be >= floor).
    pub(crate) fn objects_at(&self, res: Resource, at: u64) -> BTreeMap<Key, Arc<Value>> {
        let mut m: BTreeMap<Key, Arc<Value>> = self
            .objects
            .range((res, String::new(), String::new())..)
            .take_while(|(k, _)| k.0 == res)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for e in self.history.iter().rev().take_while(|e| e.rv > at) {
            if e.key.0 != res {
                continue;
            }
            match &e.prev {
                Some(p) => {
                    m.insert(e.key.clone(), p.clone());
                }
                None => {
                    m.remove(&e.key);
                }
            }
        }
        m
    }

    // ---- watches -------------------------------------------------------------------------

    /// Registers a watch; returns its id and the objects for its synthetic ADDED events.
    pub(crate) fn register_watch(
        &mut self,
        res: Resource,
        ns: Option<String>,
        selectors: Selectors,
        from: WatchFrom,
        conn_kill: Arc<Notify>,
    ) -> Result<(u64, Vec<Arc<Value>>, u64), ApiError> {
        let (pos, initial) = match from {
            WatchFrom::Now => {
                let initial = self
                    .objects
                    .iter()
                    .filter(|(k, v)| {
                        k.0 == res
                            && ns.as_ref().is_none_or(|ns| *ns == k.1)
                            && selectors.matches(v)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                (self.rv, initial)
            }
            WatchFrom::Rv(n) => {
                if n < self.floor {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {n} ({})",
                        self.floor
                    )));
                }
                (n, Vec::new())
            }
        };
        let id = self.next_watch;
        self.next_watch += 1;
        self.watches.insert(
            id,
            WatchReg {
                res,
                ns,
                selectors,
                pos,
                expired: false,
                conn_kill,
            },
        );
        Ok((id, initial, pos))
    }

    /// The events a watch has not considered yet, with the real server's selector rules: an
    /// object that starts matching is ADDED, one that stops matching is DELETED.
    pub(crate) fn drain(&mut self, id: u64) -> Drain {
        let Some(w) = self.watches.get(&id) else {
            return Drain::Gone;
        };
        if w.expired || w.pos < self.floor {
            return Drain::Expired(w.pos, self.floor);
        }
        let start = self.history.partition_point(|e| e.rv <= w.pos);
        let mut out = Vec::new();
        for e in self.history.range(start..) {
            if !w.wants(&e.key) {
                continue;
            }
            let sel = &w.selectors;
            let now = sel.matches(&e.object);
            let before = e.prev.as_ref().is_some_and(|p| sel.matches(p));
            let ty = match e.ty {
                EventType::Added => now.then_some(EventType::Added),
                EventType::Modified => match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                },
                EventType::Deleted => (before || now).then_some(EventType::Deleted),
            };
            if let Some(ty) = ty {
                out.push((ty, e.object.clone()));
            }
        }
        let pos = self.rv.max(w.pos);
        if let Some(w) = self.watches.get_mut(&id) {
            w.pos = pos;
        }
        Drain::Events(out, pos)
    }

    /// Closes the connection of every open watch.
    pub(crate) fn drop_watches(&mut self) {
        for w in self.watches.values() {
            w.conn_kill.notify_one();
            self.counters.dropped_watches += 1;
        }
    }

    // ---- writes --------------------------------------------------------------------------

    fn commit(
        &mut self,
        key: Key,
        ty: EventType,
        mut obj: Value,
        prev: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let obj = Arc::new(obj);
        if ty == EventType::Deleted {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), obj.clone());
        }
        *self
            .counters
            .writes
            .entry(key.0.plural().to_string())
            .or_default() += 1;
        self.record(key, ty, obj.clone(), prev);
        obj
    }

    /// Checks the kind/apiVersion of a body and fills them in.
    fn check_type(res: Resource, obj: &mut Value) -> Result<(), ApiError> {
        let Some(m) = obj.as_object_mut() else {
            return Err(ApiError::bad_request(format!(
                "the body of a {} must be a JSON object, not {}",
                res.kind(),
                type_name(obj)
            )));
        };
        if let Some(k) = m.get("kind").filter(|k| !is_empty(k))
            && k.as_str() != Some(res.kind())
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind()
            )));
        }
        if let Some(v) = m.get("apiVersion").filter(|v| !is_empty(v))
            && v.as_str() != Some(res.api_version())
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
        m.insert("kind".into(), json!(res.kind()));
        m.insert("apiVersion".into(), json!(res.api_version()));
        let meta = match m
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
        {
            Value::Object(meta) => meta,
            other => {
                return Err(ApiError::bad_request(format!(
                    "metadata of a {} must be an object, not {}",
                    res.kind(),
                    type_name(other)
                )));
            }
        };
        // What the real server's typed decoding would refuse.
        for field in [
            "name",
            "generateName",
            "namespace",
            "resourceVersion",
            "uid",
            "creationTimestamp",
        ] {
            if let Some(v) = meta.get(field).filter(|v| !v.is_null() && !v.is_string()) {
                return Err(ApiError::bad_request(format!(
                    "metadata.{field} must be a string, not {}",
                    type_name(v)
                )));
            }
        }
        for field in ["labels", "annotations"] {
            match meta.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::Object(o)) if o.values().all(Value::is_string) => {}
                Some(_) => {
                    return Err(ApiError::bad_request(format!(
                        "metadata.{field} must be a map of strings"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Server-set fields the real apiserver adds (documented in the crate docs).
    fn server_defaults(res: Resource, obj: &mut Value, name: &str) {
        if res == Resource::Namespace {
            let labels = &mut obj["metadata"]["labels"];
            if !labels.is_object() {
                *labels = json!({});
            }
            labels["kubernetes.io/metadata.name"] = json!(name);
            if obj["status"]["phase"].is_null() {
                obj["status"]["phase"] = json!("Active");
            }
        }
    }

    /// The namespace of a write: the path's, else the body's, else `default`.
    fn namespace_of(
        res: Resource,
        path_ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<String, ApiError> {
        let body_ns = obj["metadata"]["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if !res.namespaced() {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            return Ok(String::new());
        }
        let ns = match (path_ns, body_ns) {
            (Some(p), Some(b)) if p != b => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (Some(p), _) => p.to_string(),
            (None, Some(b)) => b,
            (None, None) => "default".to_string(),
        };
        obj["metadata"]["namespace"] = json!(ns);
        Ok(ns)
    }

    pub(crate) fn create(
        &mut self,
        res: Resource,
        path_ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Arc<Value>, ApiError> {
        Self::check_type(res, &mut obj)?;
        let ns = Self::namespace_of(res, path_ns, &mut obj)?;
        let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
        if name.is_empty()
            && let Some(g) = obj["metadata"]["generateName"]
                .as_str()
                .filter(|g| !g.is_empty())
        {
            loop {
                let n = self.next_serial();
                name = format!("{g}{}", util::name_suffix(self.seed, n));
                if self.get(res, &ns, &name).is_none() {
                    break;
                }
            }
            obj["metadata"]["name"] = json!(name);
        }
        let label = matches!(res, Resource::Namespace | Resource::Service);
        if let Some(p) = util::name_problem(&name, label) {
            return Err(ApiError::invalid(
                res,
                &name,
                &format!("metadata.name: {p}"),
            ));
        }
        if res.namespaced() && self.get(Resource::Namespace, "", &ns).is_none() {
            return Err(ApiError::not_found(Resource::Namespace, &ns));
        }
        let key = (res, ns, name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        let n = self.next_serial();
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(util::uid(self.seed, n));
        meta["creationTimestamp"] = json!(util::rfc3339_now());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
        }
        Self::server_defaults(res, &mut obj, &name);
        Ok(self.commit(key, EventType::Added, obj, None))
    }

    /// Replaces an object (PUT, and the end of PATCH). `status_only`: the `/status`
    /// subresource, where only `.status` is taken from `new`.
    pub(crate) fn update(
        &mut self,
        res: Resource,
        path_ns: Option<&str>,
        name: &str,
        mut new: Value,
        status_only: bool,
    ) -> Result<Arc<Value>, ApiError> {
        Self::check_type(res, &mut new)?;
        let ns = Self::namespace_of(res, path_ns, &mut new)?;
        let key = (res, ns, name.to_string());
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        match new["metadata"]["name"].as_str() {
            None | Some("") => new["metadata"]["name"] = json!(name),
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            Some(_) => {}
        }
        if let Some(rv) = rv_string(&new)
            && Some(rv) != rv_string(&old)
        {
            return Err(ApiError::conflict(
                res,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let old_uid = old["metadata"]["uid"].clone();
        if let Some(u) = new["metadata"]["uid"].as_str().filter(|u| !u.is_empty())
            && Some(u) != old_uid.as_str()
        {
            return Err(ApiError::conflict(
                res,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    old_uid.as_str().unwrap_or("")
                ),
            ));
        }
        let mut obj = if status_only {
            let mut o = (*old).clone();
            match new.get("status") {
                Some(s) => o["status"] = s.clone(),
                None => {
                    if let Some(m) = o.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            o
        } else {
            new
        };
        let meta = &mut obj["metadata"];
        meta["uid"] = old_uid;
        meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let spec_changed = obj.get("spec") != old.get("spec");
        obj["metadata"]["generation"] = json!(generation + i64::from(spec_changed));
        obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        Self::server_defaults(res, &mut obj, name);
        if obj == *old {
            // The real server does not write (nor bump the RV, nor send an event) for a no-op.
            return Ok(old);
        }
        Ok(self.commit(key, EventType::Modified, obj, Some(old)))
    }

    /// Deletes an object (namespaces: their objects first). Preconditions: (uid, rv).
    pub(crate) fn delete(
        &mut self,
        res: Resource,
        ns: &str,
        name: &str,
        pre_uid: Option<&str>,
        pre_rv: Option<&str>,
    ) -> Result<Arc<Value>, ApiError> {
        let ns = if res.namespaced() { ns } else { "" };
        let key = (res, ns.to_string(), name.to_string());
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        let have_uid = old["metadata"]["uid"].as_str().unwrap_or("");
        if let Some(u) = pre_uid.filter(|u| *u != have_uid) {
            return Err(ApiError::conflict(
                res,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {have_uid}"
                ),
            ));
        }
        let have_rv = rv_string(&old).unwrap_or("");
        if let Some(r) = pre_rv.filter(|r| *r != have_rv) {
            return Err(ApiError::conflict(
                res,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {have_rv}"
                ),
            ));
        }
        if res == Resource::Namespace {
            let inside: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.0.namespaced() && k.1 == name)
                .cloned()
                .collect();
            for k in inside {
                if let Some(o) = self.objects.get(&k).cloned() {
                    self.commit(k, EventType::Deleted, (*o).clone(), Some(o));
                }
            }
        }
        Ok(self.commit(key, EventType::Deleted, (*old).clone(), Some(old)))
    }

    /// Injected failure for this request, if any.
    pub(crate) fn take_failure(&mut self) -> Option<u16> {
        let (left, code) = self.fail?;
        self.fail = (left > 1).then(|| (left - 1, code));
        self.counters.injected_failures += 1;
        Some(code)
    }
}

pub(crate) fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_str() == Some("")
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
