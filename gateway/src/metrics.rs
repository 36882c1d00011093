//! Prometheus metrics of the gateway (`/metrics`).

use std::collections::{HashMap, HashSet};

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Scrapes rebuild the per-pool series (reset, then fill): one at a time, or two scrapes
    /// could see each other's half-filled or doubled values.
    scrape: std::sync::Mutex<()>,
    pub calls: IntCounterVec,
    pub call_duration: HistogramVec,
    pub cold_starts: IntCounterVec,
    pub workers: IntGaugeVec,
    pipelined: IntCounterVec,
    pub invocation_records_dropped: IntCounter,
    pub signups: IntCounter,
    /// Failed logins by reason: `wrong_password` (or unknown name), `throttled`.
    pub login_failures: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("skython".into()), None)?;
        let calls = IntCounterVec::new(
            Opts::new("calls_total", "Endpoint calls by function and outcome"),
            &["function", "outcome"],
        )?;
        let call_duration = HistogramVec::new(
            HistogramOpts::new(
                "call_duration_seconds",
                "Endpoint call latency, as the gateway saw it",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
            &["function"],
        )?;
        let cold_starts = IntCounterVec::new(
            Opts::new(
                "cold_starts_total",
                "Calls that had to start a worker first",
            ),
            &["function"],
        )?;
        let workers = IntGaugeVec::new(
            Opts::new("workers", "Live Python workers per function"),
            &["function"],
        )?;
        let pipelined = IntCounterVec::new(
            Opts::new(
                "pipelined_calls_total",
                "Calls queued on a worker that was running another (short calls are batched; \
                 counted since the function's current version was deployed)",
            ),
            &["function"],
        )?;
        let invocation_records_dropped = IntCounter::new(
            "invocation_records_dropped_total",
            "Invocation records not kept because the writer fell behind",
        )?;
        let signups = IntCounter::new("signups_total", "Accounts created")?;
        let login_failures = IntCounterVec::new(
            Opts::new(
                "login_failures_total",
                "Refused logins: wrong_password (or unknown name), throttled",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(signups.clone()))?;
        registry.register(Box::new(login_failures.clone()))?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(call_duration.clone()))?;
        registry.register(Box::new(cold_starts.clone()))?;
        registry.register(Box::new(workers.clone()))?;
        registry.register(Box::new(pipelined.clone()))?;
        registry.register(Box::new(invocation_records_dropped.clone()))?;
        Ok(Metrics {
            registry,
            scrape: std::sync::Mutex::new(()),
            calls,
            call_duration,
            cold_starts,
            workers,
            pipelined,
            invocation_records_dropped,
            signups,
            login_failures,
        })
    }

    /// The text exposition, with what each live pool reports (label, live workers, pipelined
    /// calls) read at scrape time. Series of functions without a live pool (deleted ones, whose
    /// last calls may have ended after `forget`) are dropped.
    pub fn render<'a>(&self, pools: impl IntoIterator<Item = (&'a str, usize, u64)>) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.workers.reset();
        self.pipelined.reset();
        let mut live = HashSet::new();
        for (label, workers, pipelined) in pools {
            self.workers.with_label_values(&[label]).add(workers as i64);
            self.pipelined.with_label_values(&[label]).inc_by(pipelined);
            live.insert(label);
        }
        self.retain(|label| live.contains(label));
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("encoding metrics failed: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Forgets a deleted function's series.
    pub fn forget(&self, label: &str) {
        let _ = self.workers.remove_label_values(&[label]);
        let _ = self.pipelined.remove_label_values(&[label]);
        self.retain(|l| l != label);
    }

    /// Keeps the per-call series of the functions `keep` says yes to, removes the others.
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        fn prune<M: MetricVecBuilder>(vec: &MetricVec<M>, keep: &impl Fn(&str) -> bool) {
            for family in vec.collect() {
                for metric in family.get_metric() {
                    let labels: HashMap<&str, &str> = metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name(), l.value()))
                        .collect();
                    if labels.get("function").is_some_and(|f| !keep(f)) {
                        let _ = vec.remove(&labels);
                    }
                }
            }
        }
        prune(&self.calls, &keep);
        prune(&self.call_duration, &keep);
        prune(&self.cold_starts, &keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_scrapes_see_whole_values() {
        let m = std::sync::Arc::new(Metrics::new().unwrap());
        let scrapers: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        let text = m.render([("a/f", 2, 7)]);
                        assert!(
                            text.contains("skython_pipelined_calls_total{function=\"a/f\"} 7\n"),
                            "{text}"
                        );
                        assert!(
                            text.contains("skython_workers{function=\"a/f\"} 2\n"),
                            "{text}"
                        );
                    }
                })
            })
            .collect();
        for s in scrapers {
            s.join().unwrap();
        }
    }

    fn sample(m: &Metrics) {
        m.calls.with_label_values(&["a/f", "ok"]).inc();
        m.calls.with_label_values(&["a/f", "timeout"]).inc();
        m.calls.with_label_values(&["a/g", "ok"]).inc();
        m.call_duration.with_label_values(&["a/f"]).observe(0.1);
        m.cold_starts.with_label_values(&["a/f"]).inc();
    }

    #[test]
    fn a_forgotten_function_has_no_series_left() {
        let m = Metrics::new().unwrap();
        sample(&m);
        let before = m.render([("a/f", 1, 0), ("a/g", 1, 0)]);
        assert!(before.contains("function=\"a/f\""), "{before}");
        m.forget("a/f");
        let after = m.render([("a/g", 1, 0)]);
        assert!(!after.contains("a/f"), "{after}");
        assert!(
            after.contains("skython_calls_total{function=\"a/g\",outcome=\"ok\"} 1"),
            "{after}"
        );
    }

    #[test]
    fn series_of_functions_without_a_pool_are_dropped_at_scrape() {
        let m = Metrics::new().unwrap();
        // A call that ended after its function was deleted counted itself again.
        sample(&m);
        let text = m.render([("a/g", 0, 0)]);
        assert!(!text.contains("a/f"), "{text}");
        assert!(text.contains("function=\"a/g\""), "{text}");
        // Gone for good, not only hidden.
        assert!(
            !m.render([("a/f", 0, 0)])
                .contains("skython_calls_total{function=\"a/f\"")
        );
    }
}
