//! The operator's Prometheus metrics and its small HTTP server (`/metrics`, `/healthz`,
//! `/readyz`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct OperatorMetrics {
    registry: Registry,
    /// Reconciles by outcome (`applied`, `invalid_source`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by error kind.
    pub failures: IntCounterVec,
    pub duration: Histogram,
    /// 1 while this replica holds the lease.
    pub leader: IntGauge,
    /// The warm pool's pods by runtime and state (`available`, `claimed`, `starting`), as the
    /// leader sees them.
    pub pool_pods: IntGaugeVec,
    /// Pool pods created, by runtime.
    pub pool_created: IntCounterVec,
    /// Pool pods deleted, by runtime and reason (`excess`, `stale_template`, `exited`,
    /// `function_gone`, `outdated`, `took_over`, `idle`).
    pub pool_retired: IntCounterVec,
    /// Set once the CRD is found and the controller runs (or stands by).
    pub ready: AtomicBool,
}

impl OperatorMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "skython_operator_reconciles_total",
                "SkyFunction reconciles by outcome",
            ),
            &["outcome"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "skython_operator_reconcile_errors_total",
                "Failed SkyFunction reconciles by error kind",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "skython_operator_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let leader = IntGauge::new(
            "skython_operator_leader",
            "1 while this replica leads and reconciles",
        )?;
        let pool_pods = IntGaugeVec::new(
            Opts::new(
                "skython_operator_pool_pods",
                "Warm pool pods by runtime and state (available, claimed, starting)",
            ),
            &["runtime", "state"],
        )?;
        let pool_created = IntCounterVec::new(
            Opts::new(
                "skython_operator_pool_pods_created_total",
                "Warm pool pods created, by runtime",
            ),
            &["runtime"],
        )?;
        let pool_retired = IntCounterVec::new(
            Opts::new(
                "skython_operator_pool_pods_retired_total",
                "Warm pool pods deleted, by runtime and reason",
            ),
            &["runtime", "reason"],
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(pool_pods.clone()))?;
        registry.register(Box::new(pool_created.clone()))?;
        registry.register(Box::new(pool_retired.clone()))?;
        Ok(OperatorMetrics {
            registry,
            reconciles,
            failures,
            duration,
            leader,
            pool_pods,
            pool_created,
            pool_retired,
            ready: AtomicBool::new(false),
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("encoding metrics failed: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

pub fn router(metrics: Arc<OperatorMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

async fn metrics_text(State(m): State<Arc<OperatorMetrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        m.render(),
    )
}

async fn readyz(State(m): State<Arc<OperatorMetrics>>) -> impl IntoResponse {
    if m.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
