//! The cluster platform's Prometheus series, appended to the gateway's `/metrics`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct ClusterMetrics {
    registry: Registry,
    pub in_flight: IntGaugeVec,
    pub queued: IntGaugeVec,
    pub ready_pods: IntGaugeVec,
    pub queue_wait: HistogramVec,
    pub cold_starts: IntCounterVec,
    /// Seconds from a call that found its function without a pod to each step of the start:
    /// `scale` (the scale-up was written), `pod_created` (the gateway saw the new Pod),
    /// `port_open` (the pod announced itself, checked), `first_answer`.
    pub cold_start_phase: HistogramVec,
    pub pod_failures: IntCounterVec,
    /// Claimable pool pods, by runtime.
    pub pool_pods: IntGaugeVec,
    /// Claims by runtime and outcome: `hit` (a pool pod serves the function), `miss` (a claim
    /// was due and the pool was empty), `refused` (another replica had claimed the pod), `failed`.
    pub pool_claims: IntCounterVec,
    /// From taking a pool pod to its answering that the function is loaded.
    pub pool_specialise: HistogramVec,
    /// Recording a claim on the Pod (off the call's path).
    pub pool_claim: HistogramVec,
}

const BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

impl ClusterMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("skython".into()), None)?;
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["function"]);
        let in_flight = gauge(
            "function_in_flight",
            "Calls sent to a function's pods, not answered yet",
        )?;
        let queued = gauge("function_queued", "Calls waiting for a pod of the function")?;
        let ready_pods = gauge(
            "function_ready_pods",
            "Pods of the function the gateway routes to",
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "queue_wait_seconds",
                "Time calls waited in the gateway for a pod",
            )
            .buckets(BUCKETS.to_vec()),
            &["function"],
        )?;
        let cold_starts = IntCounterVec::new(
            Opts::new(
                "pod_cold_starts_total",
                "Calls that found their function without a pod",
            ),
            &["function"],
        )?;
        let cold_start_phase = HistogramVec::new(
            HistogramOpts::new(
                "pod_cold_start_seconds",
                "From a call that found no pod to each step: scale, pod_created, port_open, first_answer",
            )
            .buckets(BUCKETS.to_vec()),
            &["function", "phase"],
        )?;
        let pod_failures = IntCounterVec::new(
            Opts::new(
                "pod_call_failures_total",
                "Calls that failed between the gateway and a pod (refused, reset, timed out)",
            ),
            &["function", "kind"],
        )?;
        let pool_pods = IntGaugeVec::new(
            Opts::new("pool_pods", "Unclaimed pool pods ready to be claimed"),
            &["runtime"],
        )?;
        let pool_claims = IntCounterVec::new(
            Opts::new(
                "pool_claims_total",
                "Pool claims by outcome: hit, miss (pool empty), refused (claimed elsewhere first), failed",
            ),
            &["runtime", "outcome"],
        )?;
        let pool_specialise = HistogramVec::new(
            HistogramOpts::new(
                "pool_specialise_seconds",
                "From taking a pool pod to the function loaded in it",
            )
            .buckets(BUCKETS.to_vec()),
            &["runtime"],
        )?;
        let pool_claim = HistogramVec::new(
            HistogramOpts::new(
                "pool_claim_seconds",
                "Recording a claim on the Pod through the API (after the call has its pod)",
            )
            .buckets(BUCKETS.to_vec()),
            &["runtime"],
        )?;
        registry.register(Box::new(pool_pods.clone()))?;
        registry.register(Box::new(pool_claims.clone()))?;
        registry.register(Box::new(pool_specialise.clone()))?;
        registry.register(Box::new(pool_claim.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(ready_pods.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(cold_starts.clone()))?;
        registry.register(Box::new(cold_start_phase.clone()))?;
        registry.register(Box::new(pod_failures.clone()))?;
        Ok(ClusterMetrics {
            registry,
            in_flight,
            queued,
            ready_pods,
            queue_wait,
            cold_starts,
            cold_start_phase,
            pod_failures,
            pool_pods,
            pool_claims,
            pool_specialise,
            pool_claim,
        })
    }

    /// Where the autoscaler registers its series too.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!("encoding metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
