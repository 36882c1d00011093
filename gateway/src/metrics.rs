//! Prometheus metrics of the gateway (`/metrics`).

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
        })
    }

    /// The text exposition, with what each pool reports (label, live workers, pipelined
    /// calls) read at scrape time.
    pub fn render<'a>(&self, pools: impl IntoIterator<Item = (&'a str, usize, u64)>) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        self.workers.reset();
        self.pipelined.reset();
        for (label, live, pipelined) in pools {
            self.workers.with_label_values(&[label]).add(live as i64);
            self.pipelined.with_label_values(&[label]).inc_by(pipelined);
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("encoding metrics failed: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Forgets a deleted function's series.
    pub fn forget(&self, label: &str) {
        let _ = self.call_duration.remove_label_values(&[label]);
        let _ = self.cold_starts.remove_label_values(&[label]);
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
}
