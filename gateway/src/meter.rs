//! Per-key usage metering: calls, errors and time of the calls each API key made, summed in
//! memory and written to the store once a second (one write for all keys), like invocations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use skython_store::{KeyUsageDelta, Store};
use tokio::sync::Mutex as AsyncMutex;

const EVERY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct KeyMeter {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    pending: Mutex<HashMap<String, KeyUsageDelta>>,
    /// One flush at a time, so a reader's flush waits for one already writing.
    flushing: AsyncMutex<()>,
}

impl KeyMeter {
    /// Starts the background flusher (it stops when the meter is dropped).
    pub fn start(store: Arc<dyn Store>) -> Self {
        let meter = KeyMeter {
            inner: Arc::new(Inner {
                store,
                pending: Mutex::default(),
                flushing: AsyncMutex::new(()),
            }),
        };
        let weak = Arc::downgrade(&meter.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                KeyMeter { inner }.flush().await;
            }
        });
        meter
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, KeyUsageDelta>> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one call made with key `id`.
    pub fn record(&self, id: &str, failed: bool, duration: Duration) {
        add(
            &mut self.pending(),
            KeyUsageDelta {
                id: id.to_string(),
                calls: 1,
                errors: u64::from(failed),
                duration_ms: duration.as_secs_f64() * 1000.0,
                last_used_at: Timestamp::now(),
            },
        );
    }

    /// Writes what was counted so far (before a read, so it sees every finished call). A
    /// failed write keeps the counts for the next try.
    pub async fn flush(&self) {
        let _one = self.inner.flushing.lock().await;
        let batch: Vec<KeyUsageDelta> = self.pending().drain().map(|(_, d)| d).collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.inner.store.record_key_usage(&batch).await {
            tracing::warn!("could not record key usage: {e}");
            let mut pending = self.pending();
            for d in batch {
                add(&mut pending, d);
            }
        }
    }
}

fn add(pending: &mut HashMap<String, KeyUsageDelta>, d: KeyUsageDelta) {
    match pending.get_mut(&d.id) {
        Some(p) => {
            p.calls += d.calls;
            p.errors += d.errors;
            p.duration_ms += d.duration_ms;
            p.last_used_at = p.last_used_at.max(d.last_used_at);
        }
        None => {
            pending.insert(d.id.clone(), d);
        }
    }
}
