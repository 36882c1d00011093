//! Writes finished calls to the store in batches, off the request path: a call never waits for
//! its invocation record, and a slow store drops records (counted) rather than slowing calls.

use std::sync::Arc;

use skython_store::{Invocation, Store};
use tokio::sync::{mpsc, oneshot};

use crate::Metrics;

const QUEUE: usize = 10_000;
const BATCH: usize = 512;
/// How long a batch may gather records before it is written. Under load, a transaction per
/// handful of calls was a third of the gateway's CPU (SQLite's commit); records are history,
/// so they may wait this long (a flush does not). Longer (100 ms) saved little more and made
/// each commit a millisecond-long pause for the calls sharing its CPU (p99 at concurrency 1).
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

enum Msg {
    Record(Invocation),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
}

impl Recorder {
    pub fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>, keep: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        tokio::spawn(async move {
            let mut msgs = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut msgs, BATCH).await > 0 {
                let deadline = tokio::time::Instant::now() + GATHER;
                let mut seen = 0;
                while msgs.len() < BATCH && !msgs[seen..].iter().any(|m| matches!(m, Msg::Flush(_)))
                {
                    seen = msgs.len();
                    let more = rx.recv_many(&mut msgs, BATCH - seen);
                    if !matches!(tokio::time::timeout_at(deadline, more).await, Ok(n) if n > 0) {
                        break;
                    }
                }
                let mut batch = Vec::with_capacity(msgs.len());
                let mut flushed = Vec::new();
                for m in msgs.drain(..) {
                    match m {
                        Msg::Record(i) => batch.push(i),
                        Msg::Flush(done) => flushed.push(done),
                    }
                }
                if !batch.is_empty()
                    && let Err(e) = store.record_invocations(&batch, keep).await
                {
                    tracing::error!(lost = batch.len(), "writing invocation records failed: {e}");
                }
                for done in flushed {
                    let _ = done.send(());
                }
            }
        });
        Recorder { tx, metrics }
    }

    pub fn record(&self, invocation: Invocation) {
        if self.tx.try_send(Msg::Record(invocation)).is_err() {
            self.metrics.invocation_records_dropped.inc();
        }
    }

    /// Waits until everything recorded so far is in the store.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
