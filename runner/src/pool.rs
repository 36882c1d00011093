//! `WorkerPool`: the warm workers of one function version. It grows with concurrent calls up to
//! its limit, queues a bounded number of callers beyond that, and shrinks idle workers away.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cgroup::Group;
use crate::protocol::WorkerSpec;
use crate::worker::{CallResult, Outcome, StateHandler, Worker};
use crate::zygote::Zygote;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct PoolLimits {
    /// Workers (and so calls in flight) at most.
    pub max_workers: usize,
    /// Workers kept warm even when idle.
    pub min_workers: usize,
    /// Callers allowed to wait for a worker; one more is refused (429).
    pub queue_limit: usize,
    /// A worker idle this long is stopped (down to `min_workers`).
    pub idle_timeout: Duration,
    /// Wall-clock limit of one call, and of loading the function.
    pub call_timeout: Duration,
}

pub struct CallReport {
    pub result: CallResult,
    /// The call had to start a worker first.
    pub cold_start: bool,
}

pub struct WorkerPool {
    zygote: Arc<Zygote>,
    spec: WorkerSpec,
    limits: PoolLimits,
    permits: Arc<Semaphore>,
    /// Most recently used last, so the front holds the longest idle.
    idle: Mutex<Vec<Worker>>,
    live: AtomicUsize,
    waiting: AtomicUsize,
    cold_starts: AtomicU64,
    retired: AtomicBool,
    /// The function's cgroup, if the machine offers them.
    group: Option<Group>,
}

/// Undoes a `waiting` increment however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);
impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WorkerPool {
    pub fn new(zygote: Arc<Zygote>, spec: WorkerSpec, limits: PoolLimits) -> Self {
        WorkerPool {
            zygote,
            spec,
            permits: Arc::new(Semaphore::new(limits.max_workers.max(1))),
            limits,
            idle: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            cold_starts: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            group: None,
        }
    }

    /// Puts every worker of this pool in `group`.
    pub fn in_group(mut self, group: Option<Group>) -> Self {
        self.group = group;
        self
    }

    pub fn spec(&self) -> &WorkerSpec {
        &self.spec
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.limits
    }

    /// Runs one call on a warm worker, starting one if none is free and the pool may grow.
    pub async fn call(&self, args: &[u8], state: &dyn StateHandler) -> Result<CallReport> {
        let _permit = self.admit().await?;
        let (mut worker, cold_start) = match self.take_idle() {
            Some(w) => (w, false),
            None => (self.start_worker().await?, true),
        };
        let timeout = self.limits.call_timeout;
        match tokio::time::timeout(timeout, worker.call(args, state)).await {
            Ok(Ok(result)) => {
                match &result.outcome {
                    Outcome::Failed(e) if e.retire => self.discard(worker),
                    _ => self.release(worker),
                }
                Ok(CallReport { result, cold_start })
            }
            Ok(Err(e)) => {
                self.discard(worker);
                Err(e)
            }
            Err(_) => {
                self.discard(worker);
                Err(Error::Timeout(timeout))
            }
        }
    }

    async fn admit(&self) -> Result<OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        let _waiting = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.queue_limit {
            return Err(Error::QueueFull {
                workers: self.limits.max_workers,
                queue: self.limits.queue_limit,
            });
        }
        match tokio::time::timeout(
            self.limits.call_timeout,
            self.permits.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::Retired),
            Err(_) => Err(Error::QueueTimeout(self.limits.call_timeout)),
        }
    }

    fn take_idle(&self) -> Option<Worker> {
        loop {
            let w = self.idle.lock().ok()?.pop()?;
            if !w.is_gone() {
                return Some(w);
            }
            tracing::warn!(pid = w.pid(), function = %self.spec.label, "idle worker had exited");
            self.discard(w);
        }
    }

    async fn start_worker(&self) -> Result<Worker> {
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        let w = self
            .zygote
            .spawn(&self.spec, self.limits.call_timeout, self.group.as_ref())
            .await?;
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(w)
    }

    fn release(&self, mut w: Worker) {
        if self.retired.load(Ordering::SeqCst) {
            return self.discard(w);
        }
        w.idle_since = Instant::now();
        match self.idle.lock() {
            Ok(mut idle) => idle.push(w),
            Err(_) => self.discard(w),
        }
    }

    fn discard(&self, w: Worker) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        drop(w);
    }

    /// Starts workers until `n` are warm (or the pool is busy); reports a load failure.
    pub async fn warm(&self, n: usize) -> Result<()> {
        while self.live() < n.min(self.limits.max_workers) {
            let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
                return Ok(());
            };
            let w = self.start_worker().await?;
            self.release(w);
        }
        Ok(())
    }

    /// Stops workers idle longer than the idle timeout, keeping `min_workers`; returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let Ok(mut idle) = self.idle.lock() else {
            return 0;
        };
        let mut stopped = Vec::new();
        while let Some(w) = idle.first() {
            let expired = now.saturating_duration_since(w.idle_since) >= self.limits.idle_timeout;
            if !expired || self.live() - stopped.len() <= self.limits.min_workers {
                break;
            }
            stopped.push(idle.remove(0));
        }
        drop(idle);
        let n = stopped.len();
        for w in stopped {
            self.discard(w);
        }
        n
    }

    /// Stops the idle workers now and the busy ones when their call ends (a new version or a
    /// deleted function).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        let drained: Vec<Worker> = self
            .idle
            .lock()
            .map(|mut i| i.drain(..).collect())
            .unwrap_or_default();
        for w in drained {
            self.discard(w);
        }
    }

    /// Workers alive (idle or busy).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn cold_starts(&self) -> u64 {
        self.cold_starts.load(Ordering::Relaxed)
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.retire();
    }
}

/// Runs a draft once in a fresh worker that is stopped afterwards (the test-run API).
pub async fn run_once(
    zygote: &Zygote,
    spec: &WorkerSpec,
    args: &[u8],
    state: &dyn StateHandler,
    timeout: Duration,
) -> Result<CallResult> {
    let mut worker = zygote.spawn(spec, timeout, None).await?;
    let res = tokio::time::timeout(timeout, worker.call(args, state)).await;
    drop(worker);
    res.map_err(|_| Error::Timeout(timeout))?
}
