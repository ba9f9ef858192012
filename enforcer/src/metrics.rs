//! The agent's HTTP endpoints on `--health-addr`: `/healthz` (the agent's loop turns),
//! `/readyz` (the first full sync is in the maps) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric the agent exports. Counters the kernel keeps (verdicts by reason) are copied in
/// by the agent's loop, so they lag by at most one pass.
pub struct Metrics {
    registry: Registry,
    /// Installs that changed the maps.
    pub syncs: Counter,
    /// Errors by kind: a watched API kind (watch errors), `invalid` (rejected objects),
    /// `install` (map writes that failed; the previous state kept enforcing), `discovery`.
    pub errors: Family<Labels, Counter>,
    /// Watch events and lists received, by API kind.
    pub source_events: Family<Labels, Counter>,
    /// Entries per map (logical: endpoints, identities, CIDR cells, policy entries) and
    /// conntrack.
    pub map_entries: Family<Labels, Gauge>,
    /// Conntrack entries by state, both tables (the garbage collector's count, each pass).
    pub conntrack_entries: Family<Labels, Gauge>,
    /// From noticing a change (an API event, a manifest write, an interface) to the maps
    /// holding it.
    pub programming_seconds: Histogram,
    /// Map entries found different from the desired state by the periodic resync, and repaired.
    pub drift_repaired: Counter,
    /// Datapath verdicts by reason (per-CPU counters summed), and event accounting.
    pub datapath: Family<Labels, Counter>,
    /// 1 once the first full sync is in the maps.
    pub ready_gauge: Gauge,
    /// Packets and bytes of the flows each policy rule admitted, by policy, rule and direction.
    pub rule_packets: Family<Labels, Counter>,
    pub rule_bytes: Family<Labels, Counter>,
    /// Endpoints held closed, by reason (`endpoint-capacity`: its policy does not fit in the
    /// maps).
    pub endpoints_held: Family<Labels, Gauge>,
    /// Pod interfaces held fail-closed right now because their pod is ambiguous (two pods'
    /// addresses behind one interface, or one pod's behind several).
    pub endpoint_conflicts: Gauge,
    /// Binding conflicts detected (each logged with the pods it involves).
    pub endpoint_conflicts_total: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("enforcer");
        let syncs = Counter::default();
        registry.register("syncs", "Installs that changed the BPF maps", syncs.clone());
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "errors",
            "Errors by kind (watched API kinds, invalid, install, discovery)",
            errors.clone(),
        );
        let source_events = Family::<Labels, Counter>::default();
        registry.register(
            "source_events",
            "Watch events and lists received, by kind",
            source_events.clone(),
        );
        let map_entries = Family::<Labels, Gauge>::default();
        registry.register("map_entries", "Entries per map", map_entries.clone());
        let conntrack_entries = Family::<Labels, Gauge>::default();
        registry.register(
            "conntrack_entries",
            "Conntrack entries by state (new, established, closing), counted by the garbage collector",
            conntrack_entries.clone(),
        );
        let programming_seconds = Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ]);
        registry.register(
            "programming_seconds",
            "Time from noticing a change to the maps holding it",
            programming_seconds.clone(),
        );
        let drift_repaired = Counter::default();
        registry.register(
            "drift_repaired",
            "Map entries the periodic resync found wrong and repaired",
            drift_repaired.clone(),
        );
        let datapath = Family::<Labels, Counter>::default();
        registry.register(
            "datapath_packets",
            "Datapath verdicts by reason, and events suppressed or lost",
            datapath.clone(),
        );
        let ready_gauge = Gauge::default();
        registry.register(
            "ready",
            "1 once the first full sync is in the maps",
            ready_gauge.clone(),
        );
        let rule_packets = Family::<Labels, Counter>::default();
        registry.register(
            "rule_packets",
            "Packets of the flows each policy rule admitted (both directions)",
            rule_packets.clone(),
        );
        let rule_bytes = Family::<Labels, Counter>::default();
        registry.register(
            "rule_bytes",
            "Bytes of the flows each policy rule admitted (both directions)",
            rule_bytes.clone(),
        );
        let endpoints_held = Family::<Labels, Gauge>::default();
        registry.register(
            "endpoints_held",
            "Endpoints held closed (nothing but ARP and neighbour discovery passes), by reason",
            endpoints_held.clone(),
        );
        let endpoint_conflicts = Gauge::default();
        registry.register(
            "endpoint_conflict_interfaces",
            "Pod interfaces held fail-closed because their pod is ambiguous (endpoint-conflict)",
            endpoint_conflicts.clone(),
        );
        let endpoint_conflicts_total = Counter::default();
        registry.register(
            "endpoint_conflicts",
            "Binding conflicts detected: pods whose addresses share interfaces",
            endpoint_conflicts_total.clone(),
        );
        Metrics {
            endpoint_conflicts,
            endpoint_conflicts_total,
            endpoints_held,
            rule_packets,
            rule_bytes,
            registry,
            syncs,
            errors,
            source_events,
            map_entries,
            conntrack_entries,
            programming_seconds,
            drift_repaired,
            datapath,
            ready_gauge,
        }
    }
}

impl Metrics {
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// Sets a counter kept elsewhere (the kernel's, the source's) to its current total.
    pub fn set_counter(family: &Family<Labels, Counter>, labels: Labels, total: u64) {
        family
            .get_or_create(&labels)
            .inner()
            .store(total, Ordering::Relaxed);
    }

    pub fn set_map_entries(&self, map: &str, n: usize) {
        self.map_entries
            .get_or_create(&vec![("map", map.to_string())])
            .set(n as i64);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// What the endpoints report; shared between the agent's loop and the server.
pub struct Health {
    started: Instant,
    ready: AtomicBool,
    /// Milliseconds since `started` when the loop last turned.
    last_turn_ms: AtomicU64,
    /// The loop must turn at least this often to be healthy.
    stall_after: Duration,
    pub metrics: Metrics,
}

impl Health {
    pub fn new(stall_after: Duration) -> Arc<Self> {
        Arc::new(Health {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            last_turn_ms: AtomicU64::new(0),
            stall_after,
            metrics: Metrics::default(),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        self.metrics.ready_gauge.set(ready as i64);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Called by the agent's loop on every pass.
    pub fn turned(&self) {
        self.last_turn_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn healthy(&self) -> bool {
        let last = Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) <= self.stall_after
    }
}

async fn healthz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "agent loop stalled\n")
    }
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    if h.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first full sync\n",
        )
    }
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// Binds `addr` and serves the endpoints on the current runtime.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the health address {addr}"))?;
    let app = router(health);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("health server: {e}");
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_prometheus_text() {
        let m = Metrics::default();
        m.syncs.inc();
        m.error("Pod");
        m.set_map_entries("policy", 12);
        Metrics::set_counter(&m.datapath, vec![("reason", "no-rule-allows".into())], 7);
        m.programming_seconds.observe(0.003);
        let text = m.render();
        for want in [
            "enforcer_syncs_total 1",
            "enforcer_errors_total{kind=\"Pod\"} 1",
            "enforcer_map_entries{map=\"policy\"} 12",
            "enforcer_datapath_packets_total{reason=\"no-rule-allows\"} 7",
            "enforcer_programming_seconds_count 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn health_follows_the_loop() {
        let h = Health::new(Duration::from_millis(50));
        h.turned();
        assert!(h.healthy() && !h.ready());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!h.healthy());
        h.turned();
        h.set_ready(true);
        assert!(h.healthy() && h.ready());
    }
}
