//! Writes finished calls to the store in batches, off the request path: a call never waits for
//! its invocation record, and a slow store drops records (counted) rather than slowing calls.

use std::collections::HashMap;
use std::sync::Arc;

use skython_store::{Invocation, Store};
use tokio::sync::{mpsc, oneshot};

use crate::Metrics;

const QUEUE: usize = 10_000;
/// Most records one batch gathers before it is written.
const BATCH: usize = 8_192;
/// How long a batch may gather records before it is written. Records are history, so they may
/// wait this long (a flush does not). Under load, writing a transaction per handful of calls was
/// a third of the gateway's CPU (SQLite's commit); gathering also lets a batch skip the records
/// of a busy function that the store would prune in the same transaction (only the newest
/// `keep` per function are kept), so a hot function costs at most `keep` rows per batch.
const GATHER: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Clone)]
pub struct Recorder {
    records: mpsc::Sender<Invocation>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    metrics: Arc<Metrics>,
}

impl Recorder {
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>, keep: usize) -> Self {
        let (records, mut rx) = mpsc::channel::<Invocation>(QUEUE);
        let (flushes, mut flush_rx) = mpsc::channel::<oneshot::Sender<()>>(64);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            let mut flushed = Vec::new();
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
                    Some(done) = flush_rx.recv() => flushed.push(done),
                }
                // Gather by sleeping, not by waking for each record; a flush cuts it short.
                if flushed.is_empty() {
                    let gathered = tokio::time::sleep(GATHER);
                    tokio::select! {
                        () = gathered => {}
                        Some(done) = flush_rx.recv() => flushed.push(done),
                    }
                }
                while batch.len() < BATCH
                    && let Ok(record) = rx.try_recv()
                {
                    batch.push(record);
                }
                let records = newest_per_function(std::mem::take(&mut batch), keep);
                if !records.is_empty()
                    && let Err(e) = store.record_invocations(&records, keep).await
                {
                    tracing::error!(
                        lost = records.len(),
                        "writing invocation records failed: {e}"
                    );
                }
                for done in flushed.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Recorder {
            records,
            flushes,
            metrics,
        }
    }

    pub fn record(&self, invocation: Invocation) {
        if self.records.try_send(invocation).is_err() {
            self.metrics.invocation_records_dropped.inc();
        }
    }

    /// Waits until everything recorded so far is in the store.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.flushes.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// The records of `batch` (oldest first) that the store keeps: the newest `keep` of each
/// function, in their order.
fn newest_per_function(mut batch: Vec<Invocation>, keep: usize) -> Vec<Invocation> {
    let mut newer: HashMap<(&str, &str), usize> = HashMap::new();
    let kept: Vec<bool> = batch
        .iter()
        .rev()
        .map(|i| {
            let n = newer
                .entry((i.owner.as_str(), i.endpoint.as_str()))
                .or_default();
            *n += 1;
            *n <= keep
        })
        .collect();
    let mut kept = kept.into_iter().rev();
    batch.retain(|_| kept.next().unwrap_or(false));
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(owner: &str, endpoint: &str, id: usize) -> Invocation {
        Invocation {
            request_id: id.to_string(),
            owner: owner.into(),
            endpoint: endpoint.into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            duration_ms: 1.0,
            status: 200,
            outcome: "ok".into(),
            error: None,
            logs: String::new(),
            cold_start: false,
        }
    }

    #[test]
    fn a_batch_keeps_the_newest_records_of_each_function_in_order() {
        let batch = vec![
            inv("a", "f", 1),
            inv("a", "g", 2),
            inv("a", "f", 3),
            inv("b", "f", 4),
            inv("a", "f", 5),
            inv("a", "f", 6),
        ];
        let ids = |v: Vec<Invocation>| v.into_iter().map(|i| i.request_id).collect::<Vec<_>>();
        assert_eq!(
            ids(newest_per_function(batch.clone(), 2)),
            ["2", "4", "5", "6"]
        );
        assert_eq!(ids(newest_per_function(batch.clone(), 10)).len(), 6);
        assert!(newest_per_function(batch, 0).is_empty());
    }
}
