//! `WorkerPool`: the warm workers of one function version. It grows with concurrent calls up to
//! its limit, queues a bounded number of callers beyond that, and shrinks idle workers away.
//!
//! When the function's calls are short, they are queued on busy workers (as many workers as
//! CPUs) instead of waiting for one to be free (pipelining, see `worker.rs`): a worker then
//! finds several calls per wake-up. Long calls are never queued behind one another there, where
//! a slow call would hold up calls another worker could have run sooner.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::cgroup::Group;
use crate::protocol::{Caller, WorkerSpec};
use crate::worker::{CallResult, Reply, StateHandler, WorkerHandle};
use crate::zygote::Zygote;
use crate::{Error, Result};

/// Calls queued on one worker at most (the running one included).
pub const MAX_PIPELINE_DEPTH: usize = 64;
/// Calls are "short" (may queue on a busy worker) while their recent average run time is below
/// this: then a worker's wake-up and socket calls are a large part of each call.
pub const SHORT_CALL: Duration = Duration::from_millis(1);
/// A worker takes as many short calls as it runs in about this long on average, so a queued
/// call waits about as long as it would for a free worker.
pub const QUEUE_BUDGET: Duration = Duration::from_millis(2);
/// A call whose worker stopped before starting it is tried on another worker this often.
const ATTEMPTS: usize = 3;

#[derive(Debug, Clone, PartialEq)]
pub struct PoolLimits {
    /// Workers (and so calls running at once) at most.
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
    shared: Arc<Shared>,
}

struct Shared {
    zygote: Arc<Zygote>,
    spec: WorkerSpec,
    limits: PoolLimits,
    state: Arc<dyn StateHandler>,
    slots: Mutex<Slots>,
    /// A worker took fewer calls, stopped, or failed to start: a waiting caller may go on.
    freed: Notify,
    waiting: AtomicUsize,
    cold_starts: AtomicU64,
    /// Calls queued on a worker that was running another.
    pipelined: AtomicU64,
    /// Names the next worker's slot (a pid may be reused once its process is gone).
    next_slot: AtomicU64,
    retired: AtomicBool,
    /// Moving average of the calls' time on a worker, in µs; `u64::MAX` before the first.
    recent_call_micros: AtomicU64,
    /// The function version's cgroup, if the machine offers them; each worker gets a group
    /// inside it. Killed and removed when the pool's last user lets go.
    group: Option<Group>,
}

#[derive(Default)]
struct Slots {
    workers: Vec<Slot>,
    /// Workers being started (counted against `max_workers`).
    starting: usize,
}

struct Slot {
    id: u64,
    worker: WorkerHandle,
    /// The worker's own cgroup: whatever the worker started (a `setsid()` daemon too) is
    /// killed with it when the slot goes, after the worker itself (fields drop in order).
    _group: Option<Group>,
    in_flight: usize,
    idle_since: Instant,
}

/// Where a call goes, given each worker's (calls in flight, idle since).
#[derive(Debug, PartialEq)]
enum Choice {
    Worker(usize),
    Start,
    Wait,
}

/// The pool's decision for one call, from the workers' loads (oldest worker first).
///
/// Short calls (`depth` > 1) go to as many workers as there are CPUs, the least busy of them,
/// each taking up to `depth` calls: more workers could not run at once, and fewer, fuller
/// workers read bigger batches per wake-up. Otherwise (and when those are full): the most
/// recently idle worker (its memory is still in the caches), else a new worker if the pool may
/// grow, else the least busy worker if it has room for `depth` calls, else wait.
fn choose(
    loads: impl Iterator<Item = (usize, Instant)>,
    starting: usize,
    max_workers: usize,
    depth: usize,
    cpus: usize,
) -> Choice {
    let mut idle: Option<(usize, Instant)> = None;
    let mut least: Option<(usize, usize)> = None;
    let mut front: Option<(usize, usize)> = None;
    let mut n = 0;
    for (i, (in_flight, since)) in loads.enumerate() {
        n += 1;
        if in_flight == 0 && idle.is_none_or(|(_, s)| since >= s) {
            idle = Some((i, since));
        }
        if least.is_none_or(|(_, f)| in_flight < f) {
            least = Some((i, in_flight));
        }
        if i < cpus && front.is_none_or(|(_, f)| in_flight < f) {
            front = Some((i, in_flight));
        }
    }
    let can_grow = n + starting < max_workers;
    if depth > 1 {
        match front {
            Some((i, 0)) => return Choice::Worker(i),
            _ if can_grow && n + starting < cpus => return Choice::Start,
            Some((i, f)) if f < depth => return Choice::Worker(i),
            _ => {}
        }
    }
    match (idle, least) {
        (Some((i, _)), _) => Choice::Worker(i),
        _ if can_grow => Choice::Start,
        (None, Some((i, f))) if f < depth => Choice::Worker(i),
        _ => Choice::Wait,
    }
}

/// CPUs this process may run on: its workers (children of its zygote) share them.
fn cpus() -> usize {
    static CPUS: std::sync::LazyLock<usize> =
        std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    *CPUS
}

/// Calls one worker may hold, from the recent average run time of a call (µs): 1 for long
/// calls, else what fits in the queue budget.
fn pipeline_depth(average_micros: u64) -> usize {
    if average_micros >= SHORT_CALL.as_micros() as u64 {
        return 1;
    }
    let fits = QUEUE_BUDGET.as_micros() as u64 / average_micros.max(1);
    usize::try_from(fits).map_or(MAX_PIPELINE_DEPTH, |n| n.clamp(1, MAX_PIPELINE_DEPTH))
}

/// The next moving average (weight 1/8) of call times in µs after `sample`.
fn average(previous: u64, sample: u64) -> u64 {
    if previous == u64::MAX {
        return sample;
    }
    let (p, s) = (previous as i64, sample.min(i64::MAX as u64 / 2) as i64);
    (p + (s - p) / 8).max(0) as u64
}

/// Undoes a `waiting` increment however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);
impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A call submitted to a worker. Its slot is freed when the worker answers, even if the caller
/// stops waiting (its client hung up): the worker still runs the call.
struct InFlight {
    shared: Arc<Shared>,
    slot: u64,
    answer: Option<oneshot::Receiver<Reply>>,
}

impl InFlight {
    async fn reply(&mut self) -> Reply {
        let reply = match self.answer.as_mut() {
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Reply::Done(
                    Err(Error::Crashed("the worker's reader stopped".into())),
                    None,
                    None,
                )
            }),
            None => Reply::NotStarted,
        };
        self.answer = None;
        reply
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let (shared, slot) = (self.shared.clone(), self.slot);
        match self.answer.take() {
            None => shared.release(slot),
            Some(rx) => {
                tokio::spawn(async move {
                    let _ = rx.await;
                    shared.release(slot);
                });
            }
        }
    }
}

enum Placed {
    Submitted(InFlight),
    Start,
    Wait,
}

/// Counts a worker being started (taken under the lock); undone however the start ends.
struct Starting(Arc<Shared>);
impl Drop for Starting {
    fn drop(&mut self) {
        self.0.slots().starting -= 1;
        self.0.freed.notify_one();
    }
}

impl Starting {
    /// Starts a worker and adds it to the pool, idle. In a task of its own: the zygote's
    /// requests must not be cut off halfway, and a worker whose caller left still serves the
    /// next one (a client that gives up during a slow load would otherwise never get a warm
    /// worker).
    async fn run(self) -> Result<()> {
        let task = tokio::spawn(async move {
            let shared = &self.0;
            let slot = shared.start().await?;
            shared.slots().workers.push(slot);
            drop(self);
            Ok(())
        });
        task.await
            .map_err(|e| Error::Spawn(format!("the task starting a worker failed: {e}")))?
    }
}

impl WorkerPool {
    /// A pool whose workers' `store`/`load` requests `state` answers.
    pub fn new(
        zygote: Arc<Zygote>,
        mut spec: WorkerSpec,
        limits: PoolLimits,
        state: Arc<dyn StateHandler>,
    ) -> Self {
        spec.state_cache = state.cache().is_some();
        WorkerPool {
            shared: Arc::new(Shared {
                zygote,
                spec,
                limits,
                state,
                slots: Mutex::new(Slots::default()),
                freed: Notify::new(),
                waiting: AtomicUsize::new(0),
                cold_starts: AtomicU64::new(0),
                pipelined: AtomicU64::new(0),
                next_slot: AtomicU64::new(0),
                retired: AtomicBool::new(false),
                recent_call_micros: AtomicU64::new(u64::MAX),
                group: None,
            }),
        }
    }

    /// Puts every worker of this pool in a group of its own inside `group`. Call before the
    /// pool is shared.
    pub fn in_group(mut self, group: Option<Group>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.group = group;
        }
        self
    }

    pub fn spec(&self) -> &WorkerSpec {
        &self.shared.spec
    }

    pub fn limits(&self) -> &PoolLimits {
        &self.shared.limits
    }

    /// Runs one call for `caller` on a warm worker, starting one if none is free and the pool
    /// may grow. The caller is only told to the function (`skython.caller()`): the call runs
    /// with the function's own state, limits and secrets.
    pub async fn call(&self, args: &[u8], caller: &Caller) -> Result<CallReport> {
        let mut cold_start = false;
        for _ in 0..ATTEMPTS {
            let (mut call, cold) = self.shared.clone().submit(args, caller).await?;
            cold_start |= cold;
            match call.reply().await {
                Reply::Done(result, held, gate) => {
                    if let Some(held) = held {
                        self.shared.observe(held);
                    }
                    let result = match (result, gate) {
                        (Ok(result), Some(gate)) => gate.settle(result).await,
                        (result, _) => result?,
                    };
                    return Ok(CallReport { result, cold_start });
                }
                Reply::NotStarted => continue,
            }
        }
        Err(Error::Crashed(format!(
            "{ATTEMPTS} workers stopped before they could start the call"
        )))
    }

    /// Starts workers until `n` are warm (or the pool is full); reports a load failure.
    pub async fn warm(&self, n: usize) -> Result<()> {
        let shared = &self.shared;
        while self.live() < n.min(shared.limits.max_workers) {
            {
                let mut slots = shared.slots();
                if slots.workers.len() + slots.starting >= shared.limits.max_workers {
                    return Ok(());
                }
                slots.starting += 1;
            }
            Starting(shared.clone()).run().await?;
        }
        Ok(())
    }

    /// Stops workers idle longer than the idle timeout, keeping `min_workers`; returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let shared = &self.shared;
        let mut slots = shared.slots();
        slots.workers.retain(|s| !s.worker.is_closed());
        let mut expired: Vec<(Instant, u64)> = slots
            .workers
            .iter()
            .filter(|s| {
                s.in_flight == 0
                    && now.saturating_duration_since(s.idle_since) >= shared.limits.idle_timeout
            })
            .map(|s| (s.idle_since, s.id))
            .collect();
        // Longest idle first; the order of the rest stays (oldest first, see `choose`).
        expired.sort();
        expired.truncate(
            slots
                .workers
                .len()
                .saturating_sub(shared.limits.min_workers),
        );
        let stopped: Vec<Slot> = slots
            .workers
            .extract_if(.., |s| expired.iter().any(|&(_, id)| id == s.id))
            .collect();
        drop(slots);
        stopped.len()
    }

    /// Stops the idle workers now and the busy ones when their calls end (a new version or a
    /// deleted function).
    pub fn retire(&self) {
        self.shared.retired.store(true, Ordering::SeqCst);
        let idle: Vec<Slot> = {
            let mut slots = self.shared.slots();
            let (idle, busy) = std::mem::take(&mut slots.workers)
                .into_iter()
                .partition(|s| s.in_flight == 0);
            slots.workers = busy;
            idle
        };
        drop(idle);
    }

    /// Workers alive (idle or busy).
    pub fn live(&self) -> usize {
        let slots = self.shared.slots();
        slots
            .workers
            .iter()
            .filter(|s| !s.worker.is_closed())
            .count()
    }

    pub fn idle_count(&self) -> usize {
        let slots = self.shared.slots();
        slots
            .workers
            .iter()
            .filter(|s| s.in_flight == 0 && !s.worker.is_closed())
            .count()
    }

    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    pub fn cold_starts(&self) -> u64 {
        self.shared.cold_starts.load(Ordering::Relaxed)
    }

    /// Calls so far that were queued on a worker busy with another call.
    pub fn pipelined(&self) -> u64 {
        self.shared.pipelined.load(Ordering::Relaxed)
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.retire();
    }
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn depth(&self) -> usize {
        pipeline_depth(self.recent_call_micros.load(Ordering::Relaxed))
    }

    fn observe(&self, held: Duration) {
        let sample = u64::try_from(held.as_micros()).unwrap_or(u64::MAX - 1);
        let previous = self.recent_call_micros.load(Ordering::Relaxed);
        // Racing updates may lose a sample; the average does not need them all.
        self.recent_call_micros
            .store(average(previous, sample), Ordering::Relaxed);
    }

    /// Places the call on a worker (waiting for room if the pool is full) and submits it.
    async fn submit(self: Arc<Self>, args: &[u8], caller: &Caller) -> Result<(InFlight, bool)> {
        let deadline = tokio::time::Instant::now() + self.limits.call_timeout;
        let mut waiting = None;
        let mut cold_start = false;
        loop {
            match self.place(args, caller) {
                Placed::Submitted(call) => return Ok((call, cold_start)),
                Placed::Start => {
                    Starting(self.clone()).run().await?;
                    // Most likely the new worker takes the call: it is the most recently idle.
                    cold_start = true;
                }
                Placed::Wait => {
                    if waiting.is_none() {
                        let n = self.waiting.fetch_add(1, Ordering::SeqCst);
                        waiting = Some(Waiting(&self.waiting));
                        if n >= self.limits.queue_limit {
                            return Err(Error::QueueFull {
                                workers: self.limits.max_workers,
                                queue: self.limits.queue_limit,
                            });
                        }
                    }
                    // A release since `place` left a permit, so none is missed.
                    if tokio::time::timeout_at(deadline, self.freed.notified())
                        .await
                        .is_err()
                    {
                        return Err(Error::QueueTimeout(self.limits.call_timeout));
                    }
                }
            }
        }
    }

    /// One placement decision under the lock: submitted to a worker, or a worker to start
    /// (counted as starting), or nowhere yet.
    fn place(self: &Arc<Self>, args: &[u8], caller: &Caller) -> Placed {
        let depth = self.depth();
        let mut slots = self.slots();
        slots.workers.retain(|s| !s.worker.is_closed());
        let loads = slots.workers.iter().map(|s| (s.in_flight, s.idle_since));
        match choose(
            loads,
            slots.starting,
            self.limits.max_workers,
            depth,
            cpus(),
        ) {
            Choice::Worker(i) => {
                let slot = &mut slots.workers[i];
                match slot.worker.submit(args, caller) {
                    Some(rx) => {
                        if slot.in_flight > 0 {
                            self.pipelined.fetch_add(1, Ordering::Relaxed);
                        }
                        slot.in_flight += 1;
                        let id = slot.id;
                        drop(slots);
                        Placed::Submitted(self.in_flight(id, rx))
                    }
                    // It stopped just now: look again without it.
                    None => {
                        drop(slots);
                        self.place(args, caller)
                    }
                }
            }
            Choice::Start => {
                slots.starting += 1;
                Placed::Start
            }
            Choice::Wait => Placed::Wait,
        }
    }

    fn in_flight(self: &Arc<Self>, slot: u64, rx: oneshot::Receiver<Reply>) -> InFlight {
        InFlight {
            shared: self.clone(),
            slot,
            answer: Some(rx),
        }
    }

    /// Starts a worker, in a cgroup of its own inside the function's if there is one.
    async fn start(&self) -> Result<Slot> {
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let group = match &self.group {
            Some(g) => Some(
                g.worker(id)
                    .map_err(|e| Error::Spawn(format!("creating the worker's cgroup: {e}")))?,
            ),
            None => None,
        };
        let worker = self
            .zygote
            .spawn(&self.spec, self.limits.call_timeout, group.as_ref())
            .await?;
        Ok(Slot {
            id,
            worker: worker.serve(self.state.clone(), self.limits.call_timeout),
            _group: group,
            in_flight: 0,
            idle_since: Instant::now(),
        })
    }

    /// One call of the worker in slot `id` ended.
    fn release(&self, id: u64) {
        let mut slots = self.slots();
        if let Some(i) = slots.workers.iter().position(|s| s.id == id) {
            let slot = &mut slots.workers[i];
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if slot.in_flight == 0 {
                slot.idle_since = Instant::now();
                if self.retired.load(Ordering::SeqCst) || slot.worker.is_closed() {
                    let gone = slots.workers.remove(i);
                    drop(slots);
                    drop(gone);
                }
            }
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }
}

/// Runs a draft once for `caller` in a fresh worker that is stopped afterwards (the test-run
/// API).
pub async fn run_once(
    zygote: &Zygote,
    spec: &WorkerSpec,
    args: &[u8],
    caller: &Caller,
    state: Arc<dyn StateHandler>,
    timeout: Duration,
    group: Option<&Group>,
) -> Result<CallResult> {
    // The worker's own group inside `group`: what it started dies with it when the run ends.
    let group = group
        .map(|g| g.worker(0))
        .transpose()
        .map_err(|e| Error::Spawn(format!("creating the worker's cgroup: {e}")))?;
    let spec = WorkerSpec {
        state_cache: state.cache().is_some(),
        ..spec.clone()
    };
    let worker = zygote
        .spawn(&spec, timeout, group.as_ref())
        .await?
        .serve(state, timeout);
    let result = worker.call(args, caller).await;
    drop(worker);
    drop(group);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn an_idle_worker_is_chosen_first_the_most_recently_idle() {
        let loads = [(0, at(1)), (3, at(0)), (0, at(5)), (0, at(2))];
        assert_eq!(choose(loads.into_iter(), 0, 4, 1, 8), Choice::Worker(2));
    }

    #[test]
    fn short_calls_stay_on_as_many_workers_as_cpus() {
        let loads = [(5, at(0)), (0, at(9)), (0, at(9))];
        assert_eq!(choose(loads.into_iter(), 0, 4, 64, 1), Choice::Worker(0));
        assert_eq!(choose(loads.into_iter(), 0, 4, 64, 2), Choice::Worker(1));
        assert_eq!(
            choose(loads.into_iter(), 0, 4, 5, 1),
            Choice::Worker(2),
            "a full one: the others after all"
        );
    }

    #[test]
    fn a_busy_pool_grows_before_it_pipelines() {
        let loads = [(1, at(0)), (2, at(0))];
        assert_eq!(choose(loads.into_iter(), 0, 3, 16, 8), Choice::Start);
        assert_eq!(
            choose(loads.into_iter(), 1, 3, 16, 8),
            Choice::Worker(0),
            "a worker being started counts against the limit"
        );
        assert_eq!(
            choose(loads.into_iter(), 0, 3, 1, 1),
            Choice::Start,
            "long calls get workers of their own"
        );
    }

    #[test]
    fn short_calls_pipeline_once_every_cpu_has_a_worker() {
        let loads = [(3, at(0)), (2, at(0))];
        assert_eq!(choose(loads.into_iter(), 0, 4, 16, 2), Choice::Worker(1));
        assert_eq!(choose(loads.into_iter(), 0, 4, 16, 3), Choice::Start);
        let full = [(16, at(0)), (16, at(0))];
        assert_eq!(
            choose(full.into_iter(), 0, 4, 16, 2),
            Choice::Start,
            "full workers: grow after all"
        );
    }

    #[test]
    fn a_full_pool_pipelines_onto_the_least_busy_worker_up_to_the_depth() {
        let loads = [(5, at(0)), (2, at(0)), (4, at(0))];
        assert_eq!(choose(loads.into_iter(), 0, 3, 16, 8), Choice::Worker(1));
        assert_eq!(choose(loads.into_iter(), 0, 3, 2, 8), Choice::Wait);
        assert_eq!(
            choose(loads.into_iter(), 0, 3, 1, 8),
            Choice::Wait,
            "long calls wait for a free worker"
        );
        assert_eq!(choose(std::iter::empty(), 0, 1, 16, 8), Choice::Start);
        assert_eq!(choose(std::iter::empty(), 1, 1, 16, 8), Choice::Wait);
    }

    #[test]
    fn short_calls_queue_as_deep_as_the_budget_allows() {
        assert_eq!(pipeline_depth(u64::MAX), 1, "unknown: no queueing yet");
        assert_eq!(pipeline_depth(1_000), 1);
        assert_eq!(pipeline_depth(900), 2);
        assert_eq!(pipeline_depth(100), 20);
        assert_eq!(pipeline_depth(10), MAX_PIPELINE_DEPTH);
        assert_eq!(pipeline_depth(0), MAX_PIPELINE_DEPTH);
    }

    #[test]
    fn the_average_follows_recent_calls() {
        assert_eq!(average(u64::MAX, 40), 40, "the first call sets it");
        assert_eq!(average(40, 120), 50);
        assert_eq!(average(50, 10), 45);
        let mut a = 40;
        for _ in 0..100 {
            a = average(a, 5_000);
        }
        assert!(a > 4_900, "{a}: slow calls soon stop pipelining");
        assert!(average(100, u64::MAX - 1) > 100, "no overflow");
    }
}
