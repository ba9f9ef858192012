//! The HTTP/1.1 side: connections, routing, REST verbs, discovery and the `/emulator/...`
//! control endpoints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::patch;
use crate::resource::Resource;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::store::{Key, WatchFrom};
use crate::util;
use crate::watch::{self, WatchTask};
use crate::{Emulator, Stats};

/// The most a request body may hold (the real server's limit is 3 MiB too).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// The watch timeout when the client gives none (the real server picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// A response body: a whole buffer, or the events of a watch.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

type Resp = Response<Body>;

fn json_response(code: u16, v: &impl Serialize) -> Resp {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::Full(Some(Bytes::from(bytes))));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error_response(e: &ApiError) -> Resp {
    let mut r = json_response(e.code, &e.status());
    if matches!(e.code, 429 | 503) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn text_response(code: u16, text: &'static str) -> Resp {
    let mut r = Response::new(Body::Full(Some(Bytes::from_static(text.as_bytes()))));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves one accepted connection until it closes or a `drop_watches` cuts it.
pub(crate) async fn serve_connection(emu: Emulator, stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let conn_kill = Arc::new(Notify::new());
    let kill = conn_kill.clone();
    let svc = service_fn(move |req| {
        let emu = emu.clone();
        let kill = kill.clone();
        async move { Ok::<_, Infallible>(handle(&emu, req, kill).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        // Dropping the connection closes the socket mid-stream, without the last chunk.
        _ = conn_kill.notified() => {}
    }
}

/// The parsed request line.
struct Req {
    method: Method,
    query: HashMap<String, String>,
    content_type: String,
    body: Incoming,
}

impl Req {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    fn flag(&self, k: &str) -> Result<bool, ApiError> {
        match self.q(k) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid value {other:?} for query parameter {k}: want true or false"
            ))),
        }
    }

    async fn bytes(self) -> Result<Bytes, ApiError> {
        match http_body_util::Limited::new(self.body, MAX_BODY)
            .collect()
            .await
        {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::from_code(
                413,
                format!("the request body is larger than {MAX_BODY} bytes"),
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "reading the request body: {e}"
            ))),
        }
    }

    /// The body as JSON (empty → None).
    async fn json(self) -> Result<Option<Value>, ApiError> {
        let ct = self.content_type.clone();
        let bytes = self.bytes().await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        if !(ct.is_empty() || ct.contains("json") || ct == "*/*") {
            return Err(ApiError::from_code(
                415,
                format!(
                    "the body content type {ct:?} is not supported: the emulator only reads JSON"
                ),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
    }
}

/// Where a request goes.
enum Target {
    Collection {
        res: Resource,
        ns: Option<String>,
    },
    Object {
        res: Resource,
        ns: Option<String>,
        name: String,
        status: bool,
    },
}

fn route(segs: &[&str]) -> Option<Target> {
    let (group, rest) = match segs {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, "v1", rest @ ..] if Resource::GROUPS.contains(group) => (*group, rest),
        _ => return None,
    };
    let find = |plural: &str| Resource::from_path(group, plural);
    let ns_res = Resource::Namespace;
    let target = match rest {
        [plural] => Target::Collection {
            res: find(plural)?,
            ns: None,
        },
        ["namespaces", name] if group.is_empty() => Target::Object {
            res: ns_res,
            ns: None,
            name: name.to_string(),
            status: false,
        },
        ["namespaces", name, "status"] if group.is_empty() => Target::Object {
            res: ns_res,
            ns: None,
            name: name.to_string(),
            status: true,
        },
        ["namespaces", ns, plural] => Target::Collection {
            res: find(plural).filter(|r| r.namespaced())?,
            ns: Some(ns.to_string()),
        },
        ["namespaces", ns, plural, name] => Target::Object {
            res: find(plural).filter(|r| r.namespaced())?,
            ns: Some(ns.to_string()),
            name: name.to_string(),
            status: false,
        },
        ["namespaces", ns, plural, name, "status"] => Target::Object {
            res: find(plural).filter(|r| r.namespaced() && r.has_status())?,
            ns: Some(ns.to_string()),
            name: name.to_string(),
            status: true,
        },
        _ => return None,
    };
    Some(target)
}

pub(crate) async fn handle(emu: &Emulator, req: Request<Incoming>, conn_kill: Arc<Notify>) -> Resp {
    let path = req.uri().path().to_string();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let method = req.method().clone();
    let r = Req {
        method,
        query,
        content_type,
        body: req.into_body(),
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.first() == Some(&"emulator") {
        return control(emu, &segs[1..], r)
            .await
            .unwrap_or_else(|e| error_response(&e));
    }
    let failure = {
        let mut st = emu.lock();
        st.counters.requests += 1;
        st.take_failure()
    };
    if let Some(code) = failure {
        let e = ApiError::from_code(code, format!("injected failure ({code})"));
        return error_response(&e);
    }
    api(emu, &segs, r, conn_kill)
        .await
        .unwrap_or_else(|e| error_response(&e))
}

async fn api(
    emu: &Emulator,
    segs: &[&str],
    r: Req,
    conn_kill: Arc<Notify>,
) -> Result<Resp, ApiError> {
    if let Some(doc) = discovery(segs) {
        if r.method != Method::GET {
            return Err(method_not_allowed());
        }
        return Ok(doc);
    }
    let Some(target) = route(segs) else {
        return Err(ApiError::path_not_found());
    };
    match target {
        Target::Collection { res, ns } => match r.method {
            Method::GET if r.flag("watch")? => watch(emu, res, ns, None, &r, conn_kill),
            Method::GET => list(emu, res, ns, &r),
            Method::POST => {
                if res.namespaced() && ns.is_none() {
                    return Err(method_not_allowed());
                }
                let body = r.json().await?.ok_or_else(|| {
                    ApiError::bad_request(
                        "the request body is empty: expected the object to create",
                    )
                })?;
                let obj = emu.write(|st| st.create(res, ns.as_deref(), body))?;
                Ok(json_response(201, &*obj))
            }
            Method::DELETE => delete_collection(emu, res, ns, r).await,
            _ => Err(method_not_allowed()),
        },
        Target::Object {
            res,
            ns,
            name,
            status,
        } => {
            let nss = ns.clone().unwrap_or_default();
            match r.method {
                Method::GET if r.flag("watch")? && !status => {
                    watch(emu, res, ns, Some(name), &r, conn_kill)
                }
                Method::GET => match emu.lock().get(res, &nss, &name) {
                    Some(o) => Ok(json_response(200, &**o)),
                    None => Err(ApiError::not_found(res, &name)),
                },
                Method::PUT => {
                    let body = r.json().await?.ok_or_else(|| {
                        ApiError::bad_request("the request body is empty: expected the new object")
                    })?;
                    let obj = emu.write(|st| st.update(res, ns.as_deref(), &name, body, status))?;
                    Ok(json_response(200, &*obj))
                }
                Method::PATCH => {
                    let ct = r.content_type.clone();
                    let body = r.json().await?.ok_or_else(|| {
                        ApiError::bad_request("the request body is empty: expected a patch")
                    })?;
                    let obj = emu.write(|st| {
                        let old = st
                            .get(res, &nss, &name)
                            .ok_or_else(|| ApiError::not_found(res, &name))?;
                        let mut new = (**old).clone();
                        match ct.as_str() {
                            "application/merge-patch+json"
                            | "application/strategic-merge-patch+json" => {
                                if !body.is_object() {
                                    return Err(ApiError::bad_request(
                                        "a merge patch must be a JSON object",
                                    ));
                                }
                                patch::merge_patch(&mut new, &body)
                            }
                            "application/json-patch+json" => patch::json_patch(&mut new, &body)
                                .map_err(|e| {
                                    ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}"))
                                })?,
                            other => {
                                return Err(ApiError::from_code(
                                    415,
                                    format!(
                                        "the patch content type {other:?} is not supported: use application/merge-patch+json, application/strategic-merge-patch+json or application/json-patch+json"
                                    ),
                                ));
                            }
                        }
                        if new["metadata"]["namespace"] != old["metadata"]["namespace"] {
                            return Err(ApiError::bad_request(
                                "a patch cannot change metadata.namespace",
                            ));
                        }
                        st.update(res, ns.as_deref(), &name, new, status)
                    })?;
                    Ok(json_response(200, &*obj))
                }
                Method::DELETE if !status => {
                    let opts = delete_options(r.json().await?)?;
                    let pre = &opts["preconditions"];
                    let (uid, rv) = (pre["uid"].as_str(), pre["resourceVersion"].as_str());
                    let obj = emu.write(|st| st.delete(res, &nss, &name, uid, rv))?;
                    Ok(json_response(200, &*obj))
                }
                _ => Err(method_not_allowed()),
            }
        }
    }
}

/// Checks the shape of a DeleteOptions body (absent is fine).
fn delete_options(body: Option<Value>) -> Result<Value, ApiError> {
    let opts = body.unwrap_or_else(|| json!({}));
    if !opts.is_object() {
        return Err(ApiError::bad_request(format!(
            "DeleteOptions must be a JSON object, not {}",
            crate::store::type_name(&opts)
        )));
    }
    let pre = &opts["preconditions"];
    if !pre.is_null() && !pre.is_object() {
        return Err(ApiError::bad_request(
            "DeleteOptions.preconditions must be an object",
        ));
    }
    for f in ["uid", "resourceVersion"] {
        if !pre[f].is_null() && !pre[f].is_string() {
            return Err(ApiError::bad_request(format!(
                "DeleteOptions.preconditions.{f} must be a string"
            )));
        }
    }
    Ok(opts)
}

fn method_not_allowed() -> ApiError {
    ApiError::from_code(
        405,
        "the server does not allow this method on the requested resource",
    )
}

fn selectors(res: Resource, r: &Req, name: Option<&str>) -> Result<Selectors, ApiError> {
    let labels =
        LabelSelector::parse(r.q("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    let mut field = r.q("fieldSelector").unwrap_or("").to_string();
    if let Some(name) = name {
        // A watch on one object is a watch with metadata.name=<name>, as in the real server.
        if !field.is_empty() {
            field.push(',');
        }
        field.push_str(&format!("metadata.name={name}"));
    }
    let fields = FieldSelector::parse(&field, res).map_err(ApiError::bad_request)?;
    Ok(Selectors { labels, fields })
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "invalid resourceVersion {s:?}: must be an unsigned integer"
        ))
    })
}

#[derive(Serialize)]
struct ListOut<'a> {
    kind: &'a str,
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    metadata: Value,
    items: Vec<&'a Value>,
}

fn list(emu: &Emulator, res: Resource, ns: Option<String>, r: &Req) -> Result<Resp, ApiError> {
    let token = r.q("continue").filter(|s| !s.is_empty());
    {
        let mut st = emu.lock();
        *st.counters.lists.entry(res.plural().into()).or_default() += 1;
        if token.is_some() {
            *st.counters
                .list_continues
                .entry(res.plural().into())
                .or_default() += 1;
        }
    }
    let sel = selectors(res, r, None)?;
    let limit: usize = match r.q("limit").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid limit {s:?}: must be a non-negative integer"
            ))
        })?,
    };
    let rv_param = r.q("resourceVersion").filter(|s| !s.is_empty());
    let rv_match = r.q("resourceVersionMatch").filter(|s| !s.is_empty());
    let invalid = |m: &str| {
        ApiError::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {m}"),
        )
    };
    if token.is_some() && rv_param.is_some_and(|v| v != "0") {
        return Err(ApiError::bad_request(
            "specifying resource version is not allowed when using continue",
        ));
    }
    if let Some(m) = rv_match {
        if rv_param.is_none() {
            return Err(invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if m != "NotOlderThan" && m != "Exact" {
            return Err(invalid(&format!(
                "resourceVersionMatch: Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\""
            )));
        }
        if m == "Exact" && rv_param == Some("0") {
            return Err(invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    let st = emu.lock();
    // The snapshot: its RV, and the key to start after.
    let (at, after): (u64, Option<(String, String)>) = if let Some(t) = token {
        let (at, tns, tname) = util::decode_continue(t)
            .ok_or_else(|| ApiError::bad_request(format!("continue key is not valid: {t:?}")))?;
        if at < st.floor {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ));
        }
        if at > st.rv {
            return Err(ApiError::bad_request(format!(
                "continue key is not valid: {t:?}"
            )));
        }
        (at, Some((tns, tname)))
    } else {
        match (rv_param, rv_match) {
            (None | Some("0"), _) => (st.rv, None),
            (Some(v), m) => {
                let n = parse_rv(v)?;
                if n > st.rv {
                    return Err(ApiError::from_code(
                        504,
                        format!("Too large resource version: {n}, current: {}", st.rv),
                    ));
                }
                if m == Some("Exact") {
                    if n < st.floor {
                        return Err(ApiError::expired(format!(
                            "too old resource version: {n} ({})",
                            st.floor
                        )));
                    }
                    (n, None)
                } else {
                    (st.rv, None)
                }
            }
        }
    };
    let snapshot = if at == st.rv {
        None
    } else {
        Some(st.objects_at(res, at))
    };
    let objects: Box<dyn Iterator<Item = (&Key, &Arc<Value>)>> = match &snapshot {
        Some(m) => Box::new(m.iter()),
        None => Box::new(
            st.objects
                .range((res, String::new(), String::new())..)
                .take_while(|(k, _)| k.0 == res),
        ),
    };
    let mut matching = objects.filter(|(k, v)| {
        ns.as_ref().is_none_or(|ns| *ns == k.1)
            && after
                .as_ref()
                .is_none_or(|(ans, aname)| (&k.1, &k.2) > (ans, aname))
            && sel.matches(v)
    });
    let mut items: Vec<&Value> = Vec::new();
    let mut last: Option<&Key> = None;
    while limit == 0 || items.len() < limit {
        let Some((k, v)) = matching.next() else {
            break;
        };
        items.push(v);
        last = Some(k);
    }
    let rest = matching.count();
    let mut metadata = json!({"resourceVersion": at.to_string()});
    if rest > 0 {
        if let Some(k) = last {
            metadata["continue"] = json!(util::encode_continue(at, &k.1, &k.2));
        }
        if sel.is_empty() {
            metadata["remainingItemCount"] = json!(rest);
        }
    }
    let out = ListOut {
        kind: res.list_kind(),
        api_version: res.api_version(),
        metadata,
        items,
    };
    Ok(json_response(200, &out))
}

fn watch(
    emu: &Emulator,
    res: Resource,
    ns: Option<String>,
    name: Option<String>,
    r: &Req,
    conn_kill: Arc<Notify>,
) -> Result<Resp, ApiError> {
    let sel = selectors(res, r, name.as_deref())?;
    let invalid = |m: &str| {
        ApiError::new(
            422,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {m}"),
        )
    };
    let send_initial = r.flag("sendInitialEvents")?;
    let bookmarks = r.flag("allowWatchBookmarks")?;
    let rv_match = r.q("resourceVersionMatch").filter(|s| !s.is_empty());
    if send_initial {
        if rv_match != Some("NotOlderThan") {
            return Err(invalid(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !bookmarks {
            return Err(invalid(
                "allowWatchBookmarks: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
    } else if rv_match.is_some() {
        return Err(invalid(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    // 0 means "the default", as in the real server; very long ones are capped at a year.
    let timeout = match r.q("timeoutSeconds").filter(|s| !s.is_empty() && *s != "0") {
        None => DEFAULT_WATCH_TIMEOUT,
        Some(s) => Duration::from_secs(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid timeoutSeconds {s:?}: must be a non-negative integer"
            ))
        })?)
        .min(crate::MAX_DURATION),
    };
    let from = match r.q("resourceVersion").filter(|s| !s.is_empty()) {
        _ if send_initial => WatchFrom::Now,
        None | Some("0") => WatchFrom::Now,
        Some(v) => WatchFrom::Rv(parse_rv(v)?),
    };
    let mut st = emu.lock();
    *st.counters.watches.entry(res.plural().into()).or_default() += 1;
    let (id, initial, pos) = match st.register_watch(res, ns, sel, from, conn_kill) {
        Ok(x) => x,
        Err(e) => {
            // The real server answers 200 and sends one ERROR event, then ends the stream.
            st.counters.expired_watches += 1;
            let mut resp = json_response(200, &Value::Null);
            *resp.body_mut() = Body::Full(Some(watch::line("ERROR", &e.status())));
            return Ok(resp);
        }
    };
    drop(st);
    let (tx, rx) = mpsc::channel(256);
    let task = WatchTask {
        emu: emu.clone(),
        id,
        res,
        tx,
        initial,
        initial_end: send_initial.then_some(pos),
        bookmarks,
        deadline: Instant::now() + timeout,
    };
    tokio::spawn(task.run());
    let mut resp = Response::new(Body::Stream(rx));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

async fn delete_collection(
    emu: &Emulator,
    res: Resource,
    ns: Option<String>,
    r: Req,
) -> Result<Resp, ApiError> {
    let sel = selectors(res, &r, None)?;
    delete_options(r.json().await?)?;
    let deleted = emu.write(|st| {
        let keys: Vec<Key> = st
            .objects
            .iter()
            .filter(|(k, v)| {
                k.0 == res && ns.as_ref().is_none_or(|ns| *ns == k.1) && sel.matches(v)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in keys {
            // A namespace deletion may already have removed objects of a later key.
            match st.delete(res, &k.1, &k.2, None, None) {
                Ok(o) => out.push(o),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })?;
    let rv = emu.resource_version();
    let out = ListOut {
        kind: res.list_kind(),
        api_version: res.api_version(),
        metadata: json!({"resourceVersion": rv.to_string()}),
        items: deleted.iter().map(|o| &**o).collect(),
    };
    Ok(json_response(200, &out))
}

fn api_resources(group_version: &str, res: &[Resource]) -> Value {
    let resources: Vec<Value> = res
        .iter()
        .flat_map(|r| {
            let main = json!({
                "name": r.plural(),
                "singularName": r.kind().to_ascii_lowercase(),
                "namespaced": r.namespaced(),
                "kind": r.kind(),
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                "shortNames": r.short_names(),
            });
            let status = json!({
                "name": format!("{}/status", r.plural()),
                "singularName": "",
                "namespaced": r.namespaced(),
                "kind": r.kind(),
                "verbs": ["get", "patch", "update"],
            });
            std::iter::once(main).chain(r.has_status().then_some(status))
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

fn discovery(segs: &[&str]) -> Option<Resp> {
    let doc = match segs {
        ["healthz"] | ["livez"] | ["readyz"] => return Some(text_response(200, "ok")),
        ["version"] => json!({
            "major": "1",
            "minor": "37",
            "emulationMajor": "1",
            "emulationMinor": "37",
            "gitVersion": "v1.37.0-kube-emulator",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "none",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }),
        ["api"] => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        }),
        ["api", "v1"] => api_resources("v1", &Resource::of_group("")),
        ["apis"] => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": Resource::GROUPS.map(group_doc),
        }),
        ["apis", group] if Resource::GROUPS.contains(group) => {
            let mut g = group_doc(group);
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            g
        }
        ["apis", group, "v1"] if Resource::GROUPS.contains(group) => {
            api_resources(&format!("{group}/v1"), &Resource::of_group(group))
        }
        _ => return None,
    };
    Some(json_response(200, &doc))
}

fn group_doc(group: &str) -> Value {
    let v = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"name": group, "versions": [v], "preferredVersion": v})
}

/// `/emulator/...`: the test controls, for a client in another process.
async fn control(emu: &Emulator, segs: &[&str], r: Req) -> Result<Resp, ApiError> {
    let op = segs.join("/").replace('-', "_");
    if op == "stats" {
        if r.method != Method::GET && r.method != Method::POST {
            return Err(method_not_allowed());
        }
        let s: Stats = emu.stats();
        return Ok(json_response(200, &s));
    }
    if r.method != Method::POST {
        return Err(method_not_allowed());
    }
    let query = r.query.clone();
    let body = r.json().await?.unwrap_or(Value::Null);
    // A parameter from the query string or the JSON body.
    let param = |k: &str| -> Option<u64> {
        query
            .get(k)
            .and_then(|v| v.parse().ok())
            .or_else(|| body.get(k).and_then(Value::as_u64))
    };
    let missing = |k: &str| {
        ApiError::bad_request(format!(
            "/emulator/{op} needs the parameter {k:?} (query string or JSON body)"
        ))
    };
    match op.as_str() {
        "drop_watches" => emu.drop_watches(),
        "compact" => emu.compact(),
        "fail_next" => {
            let n = param("n").ok_or_else(|| missing("n"))?;
            let code = param("code").ok_or_else(|| missing("code"))?;
            let n = u32::try_from(n).map_err(|_| ApiError::bad_request("n is too large"))?;
            let code = u16::try_from(code)
                .ok()
                .filter(|c| (100..=999).contains(c))
                .ok_or_else(|| ApiError::bad_request("code must be an HTTP status code"))?;
            emu.fail_next(n, code);
        }
        "bookmark_interval" => {
            let ms = param("ms")
                .or_else(|| param("seconds").map(|s| s.saturating_mul(1000)))
                .ok_or_else(|| missing("ms"))?;
            emu.set_bookmark_interval(Duration::from_millis(ms));
        }
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!(
                    "unknown emulator control {op:?}: one of drop_watches, compact, fail_next, bookmark_interval, stats"
                ),
            ));
        }
    }
    Ok(json_response(
        200,
        &json!({"ok": true, "resourceVersion": emu.resource_version().to_string()}),
    ))
}
