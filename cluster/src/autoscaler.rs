//! The autoscaler: in-flight and queued calls per function → replicas, written through the
//! SkyFunction's `scale` subresource. The gateway sees every call, so it needs no sidecar: the
//! router's counts are sampled every [`AutoscalerConfig::sample_interval`].
//!
//! The decision follows Knative's KPA, whose defaults have years of production behind them:
//! - **target per replica**: `scaling.targetConcurrency`, else `concurrency` (what one pod serves
//!   at once);
//! - **stable window** (60 s): out of panic, the average demand over it decides. Long enough to
//!   ride out the gaps between bursts, so replicas are not torn down only to cold-start again.
//!   A lower count is written only when no higher count was wanted during a whole stable window:
//!   scale-downs wait for it, and a demand hovering at a boundary cannot flap the count;
//! - **panic window** (6 s, a tenth of the stable one): when its average demand needs at least
//!   twice the ready replicas ([`AutoscalerConfig::panic_threshold`]), the autoscaler panics: it
//!   follows the panic window up at once and never scales down, until the demand has stayed
//!   below the threshold for a stable window. With no replica ready, any demand panics and the
//!   latest demand counts in full (nothing serves it, so averaging would only hide it): a burst
//!   from zero gets, at once, as many replicas as it needs;
//! - **bounds**: always within `[scaling.minReplicas, scaling.maxReplicas]`; never below one
//!   while replicas exist, until nothing was in flight or queued for `scaling.idleSecondsToZero`
//!   (then `minReplicas`, and the function's history is forgotten, so that a later call starts
//!   afresh rather than from an old burst's average).
//!
//! [`decide`] is that rule, a plain function of a [`History`]; [`Autoscaler`] is the loop that
//! samples, decides and writes. With several gateway replicas, one leads (a Lease) and writes;
//! the others keep sampling and deciding, so that a new leader starts with data.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde_json::json;
use skython_crds::{SkyFunction, SkyFunctionSpec};
use skython_operator::leader::{LeaderElector, LeaseConfig};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{FunctionRef, Load};

/// The autoscaler's tunables (`skython gateway` flags); the defaults are Knative's, see the
/// module doc for why.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalerConfig {
    /// How often each function's demand is sampled and decided on. Default 100 ms: fine enough
    /// to see a burst within a tenth of a second, and a sample is only a read of the router's
    /// counters. Writes happen only when a decision changes.
    pub sample_interval: Duration,
    /// Out of panic, the average demand over this window decides, and a lower count waits for
    /// this long without a higher one wanted. Default 60 s (Knative's `stable-window`).
    pub stable_window: Duration,
    /// The window that detects bursts. Default 6 s (Knative's `panic-window-percentage`, 10 %).
    pub panic_window: Duration,
    /// Panic when the panic window's demand needs this many times the ready replicas.
    /// Default 2.0 (Knative's `panic-threshold-percentage`, 200 %).
    pub panic_threshold: f64,
    /// Longest wait for one read or write of a scale subresource; the loop goes on without it.
    /// Default 5 s.
    pub api_timeout: Duration,
    /// After a failed read or write of a function's scale, the next try waits this long (no
    /// request storm, no log line per tick). Default 2 s.
    pub retry_after: Duration,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            sample_interval: Duration::from_millis(100),
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            api_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(2),
        }
    }
}

/// What the decision takes from a function's spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Calls in flight per replica to aim for (at least 1).
    pub target: u32,
    pub min: u32,
    /// At least `min` and at least 1.
    pub max: u32,
    pub idle_to_zero: Duration,
}

impl Bounds {
    pub fn of(spec: &SkyFunctionSpec) -> Bounds {
        let s = &spec.scaling;
        let max = s.max_replicas.max(s.min_replicas).max(1);
        Bounds {
            target: s.target_concurrency.unwrap_or(spec.concurrency).max(1),
            min: s.min_replicas,
            max,
            idle_to_zero: Duration::from_secs(s.idle_seconds_to_zero.into()),
        }
    }

    fn clamp(&self, n: u32) -> u32 {
        n.max(self.min).min(self.max)
    }
}

/// One function's recent demand and decisions.
#[derive(Debug, Clone)]
pub struct History {
    /// (when, in flight + queued), over the last stable window.
    samples: VecDeque<(Instant, u32)>,
    /// Sum of `samples`' demands.
    sum: u64,
    /// The last sample with demand (or when the history began).
    last_busy: Instant,
    /// The non-panic wants of the last stable window, decreasing from the front: the front is
    /// their maximum, what a scale-down must wait out.
    wants: VecDeque<(Instant, u32)>,
    panic: Option<Panic>,
}

#[derive(Debug, Clone, Copy)]
struct Panic {
    /// The last decision over the panic threshold.
    last_over: Instant,
    /// The highest count decided during this panic: never gone below while it lasts.
    peak: u32,
}

impl History {
    /// A history that begins now, with `current` replicas running: they are kept for a stable
    /// window (a restarted or new leader does not scale down before it has seen a window).
    pub fn new(now: Instant, current: u32) -> History {
        History {
            samples: VecDeque::new(),
            sum: 0,
            last_busy: now,
            wants: VecDeque::from([(now, current)]),
            panic: None,
        }
    }

    /// Adds a sample of demand (in flight + queued) and drops those older than `stable_window`.
    pub fn record(&mut self, now: Instant, demand: u32, stable_window: Duration) {
        self.samples.push_back((now, demand));
        self.sum += u64::from(demand);
        if demand > 0 {
            self.last_busy = now;
        }
        while let Some(&(t, d)) = self.samples.front() {
            if now.saturating_duration_since(t) < stable_window {
                break;
            }
            self.samples.pop_front();
            self.sum -= u64::from(d);
        }
    }

    fn latest(&self) -> u32 {
        self.samples.back().map_or(0, |s| s.1)
    }

    /// Replicas needed for the average demand of the samples younger than `window`.
    fn need(&self, now: Instant, window: Duration, target: u32) -> u32 {
        let (sum, n) = self
            .samples
            .iter()
            .rev()
            .take_while(|(t, _)| now.saturating_duration_since(*t) < window)
            .fold((0u64, 0u64), |(s, n), (_, d)| (s + u64::from(*d), n + 1));
        replicas_for(sum, n, target)
    }

    /// Records a non-panic want; returns the highest of the last stable window.
    fn hold(&mut self, now: Instant, want: u32, stable_window: Duration) -> u32 {
        while self.wants.back().is_some_and(|&(_, w)| w <= want) {
            self.wants.pop_back();
        }
        self.wants.push_back((now, want));
        while let Some(&(t, _)) = self.wants.front() {
            if now.saturating_duration_since(t) < stable_window {
                break;
            }
            self.wants.pop_front();
        }
        self.wants.front().map_or(want, |w| w.1)
    }

    /// Forgets everything but the rest itself: the next burst is judged on its own.
    fn rest(&mut self, now: Instant, replicas: u32) {
        self.samples.clear();
        self.sum = 0;
        self.wants = VecDeque::from([(now, replicas)]);
        self.panic = None;
    }
}

/// Replicas that serve an average demand of `sum / n` at `target` per replica.
fn replicas_for(sum: u64, n: u64, target: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    let per = n * u64::from(target.max(1));
    u32::try_from(sum.div_ceil(per)).unwrap_or(u32::MAX)
}

/// A decision: the replicas wanted now, and whether in panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub panic: bool,
}

/// The replicas a function should have now, after the samples in `history`. `current` is its
/// count now (`spec.replicas`), `ready` how many of those serve.
pub fn decide(
    history: &mut History,
    bounds: &Bounds,
    current: u32,
    ready: u32,
    now: Instant,
    cfg: &AutoscalerConfig,
) -> Decision {
    let latest = history.latest();
    if latest == 0 && now.saturating_duration_since(history.last_busy) >= bounds.idle_to_zero {
        history.rest(now, bounds.min);
        return Decision {
            replicas: bounds.clamp(bounds.min),
            panic: false,
        };
    }

    let stable = history.need(now, cfg.stable_window, bounds.target);
    let mut burst = history.need(now, cfg.panic_window, bounds.target);
    if ready == 0 {
        burst = burst.max(replicas_for(latest.into(), 1, bounds.target));
    }
    let over = burst > 0 && f64::from(burst) >= cfg.panic_threshold * f64::from(ready);
    match &mut history.panic {
        Some(p) if over => p.last_over = now,
        None if over => {
            history.panic = Some(Panic {
                last_over: now,
                peak: 0,
            })
        }
        Some(p) if now.saturating_duration_since(p.last_over) >= cfg.stable_window => {
            history.panic = None
        }
        _ => {}
    }

    // Replicas exist or calls wait: keep at least one until the function is idle.
    let floor = if current > 0 || latest > 0 {
        bounds.min.max(1)
    } else {
        bounds.min
    };
    let mut replicas = history.hold(now, stable.max(floor), cfg.stable_window);
    if let Some(p) = &mut history.panic {
        replicas = replicas.max(burst).max(p.peak);
        p.peak = replicas;
    }
    Decision {
        replicas: bounds.clamp(replicas),
        panic: history.panic.is_some(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registering the autoscaler's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Every function's demand now, as the router counts it (functions absent: no demand).
pub type DemandSource = Arc<dyn Fn() -> HashMap<FunctionRef, Load> + Send + Sync>;

/// Told of every count written: the function, from, to (for the router's cold-start metrics).
pub type OnScaled = Arc<dyn Fn(&FunctionRef, u32, u32) + Send + Sync>;

/// The autoscaler's metrics, registered in the gateway's registry.
#[derive(Clone)]
struct Metrics {
    desired: IntGaugeVec,
    panic: IntGaugeVec,
    writes: IntCounterVec,
    write_seconds: Histogram,
    leader: IntGauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let desired = IntGaugeVec::new(
            Opts::new(
                "autoscaler_desired_replicas",
                "Replicas the autoscaler wants per function",
            ),
            &["function"],
        )?;
        let panic = IntGaugeVec::new(
            Opts::new(
                "autoscaler_panic",
                "1 while the autoscaler is in panic mode for the function",
            ),
            &["function"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "autoscaler_scale_writes_total",
                "Replica counts written through the scale subresource, by outcome",
            ),
            &["function", "outcome"],
        )?;
        let write_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "autoscaler_scale_write_seconds",
                "Time one write of a scale subresource took",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let leader = IntGauge::new(
            "autoscaler_leader",
            "1 while this gateway's autoscaler leads (writes decisions)",
        )?;
        registry.register(Box::new(desired.clone()))?;
        registry.register(Box::new(panic.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(write_seconds.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Metrics {
            desired,
            panic,
            writes,
            write_seconds,
            leader,
        })
    }

    fn forget(&self, label: &str) {
        let _ = self.desired.remove_label_values(&[label]);
        let _ = self.panic.remove_label_values(&[label]);
        for outcome in ["ok", "error"] {
            let _ = self.writes.remove_label_values(&[label, outcome]);
        }
    }
}

/// The running autoscaler: samples every function's demand, decides, and (when leading) writes
/// changed counts. Dropping it stops the loop; [`Autoscaler::shutdown`] also gives up the Lease.
pub struct Autoscaler {
    pokes: mpsc::UnboundedSender<FunctionRef>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Autoscaler {
    /// Starts the loop. `functions` is the gateway's reflector of SkyFunctions (specs, ready
    /// replicas); `lease` elects one writer among gateway replicas (`None`: this one always
    /// writes).
    pub fn spawn(
        client: kube::Client,
        functions: Store<SkyFunction>,
        demand: DemandSource,
        on_scaled: OnScaled,
        cfg: AutoscalerConfig,
        lease: Option<LeaseConfig>,
        registry: &Registry,
    ) -> Result<Autoscaler, Error> {
        let metrics = Metrics::new(registry)?;
        let (pokes, poked) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let leading = Arc::new(AtomicBool::new(lease.is_none()));
        let mut tasks = Vec::new();
        if let Some(lease) = lease {
            let every = lease.duration / 3;
            let elector = LeaderElector::new(client.clone(), lease);
            tasks.push(tokio::spawn(lead(
                elector,
                every,
                leading.clone(),
                metrics.leader.clone(),
                stopped.clone(),
            )));
        } else {
            metrics.leader.set(1);
        }
        let scaler = Scaler {
            client,
            functions,
            demand,
            on_scaled,
            cfg,
            metrics,
            leading,
            was_leading: false,
            tracked: HashMap::new(),
        };
        tasks.push(tokio::spawn(scaler.run(poked, stopped)));
        Ok(Autoscaler { pokes, stop, tasks })
    }

    /// Decides for `f` now rather than at the next tick: the router calls it when a call for a
    /// function at zero has been counted as queued.
    pub fn poke(&self, f: &FunctionRef) {
        // The loop only ends with the Autoscaler, so this cannot fail while it matters.
        let _ = self.pokes.send(f.clone());
    }

    /// Stops the loop and, when leading, releases the Lease so another gateway takes over at once.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Keeps `leading` true exactly while this replica holds the Lease. A failed renewal counts as
/// lost at once: a pause in scaling is harmless, two writers are not.
async fn lead(
    elector: LeaderElector,
    every: Duration,
    leading: Arc<AtomicBool>,
    gauge: IntGauge,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let now = match elector.try_lead().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("autoscaler lease: {e}");
                false
            }
        };
        if leading.swap(now, Ordering::SeqCst) != now {
            tracing::info!(leading = now, "autoscaler leadership changed");
        }
        gauge.set(i64::from(now));
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if leading.swap(false, Ordering::SeqCst) {
        elector.release().await;
    }
    gauge.set(0);
}

/// How long a count this loop wrote wins over the watched object's at most (the watch has
/// normally shown the write within milliseconds; past this, someone may have changed it since).
const TRUST_WRITTEN: Duration = Duration::from_secs(10);

/// A count this loop wrote, and the object's version that write made.
#[derive(Debug, Clone)]
struct Written {
    replicas: u32,
    version: Option<String>,
    at: Instant,
}

/// One function as the loop follows it.
struct Tracked {
    /// Its metrics' `function` label.
    label: String,
    /// The count this loop last wrote, trusted over the watched object until the watch shows
    /// that write (a moment later; a busy machine can make it seconds, and deciding from the
    /// older count would write the same count again).
    written: Option<Written>,
    /// Created when `current` is first known.
    history: Option<History>,
    /// No API call for this function before then (after a failure).
    quiet_until: Option<Instant>,
    /// `Load::started` at the last sample.
    started: u64,
}

struct Scaler {
    client: kube::Client,
    functions: Store<SkyFunction>,
    demand: DemandSource,
    on_scaled: OnScaled,
    cfg: AutoscalerConfig,
    metrics: Metrics,
    leading: Arc<AtomicBool>,
    was_leading: bool,
    tracked: HashMap<FunctionRef, Tracked>,
}

impl Scaler {
    async fn run(
        mut self,
        mut poked: mpsc::UnboundedReceiver<FunctionRef>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.cfg.sample_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => self.tick(None).await,
                Some(f) = poked.recv() => {
                    let mut these = HashSet::from([f]);
                    while let Ok(f) = poked.try_recv() {
                        these.insert(f);
                    }
                    self.tick(Some(&these)).await;
                }
            }
        }
    }

    /// Samples and decides for every function (or only `only`), writing changes when leading.
    async fn tick(&mut self, only: Option<&HashSet<FunctionRef>>) {
        let leading = self.leading.load(Ordering::SeqCst);
        if leading && !self.was_leading {
            // Counts come from the watched objects (whoever wrote them); what this replica
            // wrote itself stays trusted until the watch shows it. Failed writes may go again.
            for t in self.tracked.values_mut() {
                t.quiet_until = None;
            }
        }
        self.was_leading = leading;
        let loads = (self.demand)();
        let mut seen = HashSet::new();
        for obj in self.functions.state() {
            let (Some(namespace), Some(name)) = (&obj.metadata.namespace, &obj.metadata.name)
            else {
                continue;
            };
            if obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let f = FunctionRef {
                namespace: namespace.clone(),
                name: name.clone(),
            };
            if only.is_none_or(|o| o.contains(&f)) {
                let load = loads.get(&f).copied().unwrap_or_default();
                self.step(&f, &obj, load, leading).await;
            }
            seen.insert(f);
        }
        if only.is_none() {
            let gone: Vec<FunctionRef> = self
                .tracked
                .keys()
                .filter(|f| !seen.contains(*f))
                .cloned()
                .collect();
            for f in gone {
                if let Some(t) = self.tracked.remove(&f) {
                    self.metrics.forget(&t.label);
                }
            }
        }
    }

    async fn step(&mut self, f: &FunctionRef, obj: &SkyFunction, load: Load, leading: bool) {
        let now = Instant::now();
        let bounds = Bounds::of(&obj.spec);
        let api = Api::<SkyFunction>::namespaced(self.client.clone(), &f.namespace);
        let t = self.tracked.entry(f.clone()).or_insert(Tracked {
            // As the gateway's other series name functions: owner/endpoint.
            label: format!("{}/{}", obj.spec.owner, obj.spec.endpoint),
            written: None,
            history: None,
            quiet_until: None,
            started: load.started,
        });
        // Calls that came and went between two samples were demand too: without this, a
        // function called often with short calls would look idle and be scaled to zero.
        let demand = if load.started != t.started {
            (load.in_flight + load.queued).max(1)
        } else {
            load.in_flight + load.queued
        };
        t.started = load.started;
        if t.quiet_until.is_some_and(|q| now < q) {
            // Still sample: the history must not miss demand while the API is unreachable.
            if let Some(h) = &mut t.history {
                h.record(now, demand, self.cfg.stable_window);
            }
            return;
        }
        // Unset: what the operator runs, `max(minReplicas, 1)`.
        let stored = obj.spec.replicas.unwrap_or(bounds.min.max(1));
        // Our own write, until the watched object shows it (or a while has passed).
        if t.written.as_ref().is_some_and(|w| {
            w.version.is_some() && w.version == obj.metadata.resource_version
                || now.saturating_duration_since(w.at) >= TRUST_WRITTEN
        }) {
            t.written = None;
        }
        let current = t.written.as_ref().map_or(stored, |w| w.replicas);
        let h = t.history.get_or_insert_with(|| History::new(now, current));
        h.record(now, demand, self.cfg.stable_window);
        let ready = obj.status.as_ref().map_or(0, |s| s.ready_replicas);
        let d = decide(h, &bounds, current, ready, now, &self.cfg);
        let label = t.label.clone();
        self.metrics
            .desired
            .with_label_values(&[&label])
            .set(d.replicas.into());
        self.metrics
            .panic
            .with_label_values(&[&label])
            .set(i64::from(d.panic));
        if !writes(d.replicas, current, load, leading) {
            return;
        }
        let started = Instant::now();
        let written = write_scale(&api, &f.name, d.replicas, self.cfg.api_timeout).await;
        self.metrics
            .write_seconds
            .observe(started.elapsed().as_secs_f64());
        match written {
            Ok(version) => {
                tracing::info!(function = %f, from = current, to = d.replicas, panic = d.panic, "scaled");
                (self.on_scaled)(f, current, d.replicas);
                self.metrics.writes.with_label_values(&[&label, "ok"]).inc();
                t.written = Some(Written {
                    replicas: d.replicas,
                    version,
                    at: now,
                });
            }
            Err(e) => {
                tracing::warn!(function = %f, to = d.replicas, "writing the scale: {e}");
                self.metrics
                    .writes
                    .with_label_values(&[&label, "error"])
                    .inc();
                // Go by the watched object: the write may have landed after all.
                t.written = None;
                t.quiet_until = Some(now + self.cfg.retry_after);
            }
        }
    }
}

/// Whether a decision is written now: by the leader, when it changes the count, unless it is a
/// scale-up the pool pods being claimed for the function cover. Those count as its replicas
/// once their claims are recorded; written before, the operator would start pods of the
/// function's own that the claimed ones make useless.
fn writes(decided: u32, current: u32, load: Load, leading: bool) -> bool {
    let covered = decided > current && decided <= current.saturating_add(load.claiming);
    leading && decided != current && !covered
}

#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

async fn write_scale(
    api: &Api<SkyFunction>,
    name: &str,
    replicas: u32,
    timeout: Duration,
) -> Result<Option<String>, ApiError> {
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    let scale = tokio::time::timeout(
        timeout,
        api.patch_scale(name, &PatchParams::default(), &patch),
    )
    .await
    .map_err(|_| ApiError::Timeout(timeout))??;
    // The scale subresource carries its object's version.
    Ok(scale.metadata.resource_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    #[test]
    fn a_scale_up_waits_for_the_claims_that_cover_it() {
        let claiming = |n| Load {
            claiming: n,
            ..Load::default()
        };
        assert!(
            !writes(1, 0, claiming(1), true),
            "one claim covers one replica"
        );
        assert!(!writes(2, 0, claiming(2), true));
        assert!(
            writes(3, 0, claiming(2), true),
            "the burst needs more than the claims"
        );
        assert!(writes(1, 0, claiming(0), true));
        assert!(
            writes(0, 1, claiming(1), true),
            "a scale-down is not a claim's"
        );
        assert!(!writes(1, 1, claiming(0), true), "no change");
        assert!(!writes(1, 0, claiming(0), false), "not leading");
    }

    fn bounds(target: u32, min: u32, max: u32, idle_secs: u64) -> Bounds {
        Bounds {
            target,
            min,
            max,
            idle_to_zero: Duration::from_secs(idle_secs),
        }
    }

    /// A function driven tick by tick, with its replicas following each decision (all ready).
    struct Sim {
        cfg: AutoscalerConfig,
        bounds: Bounds,
        history: History,
        now: Instant,
        current: u32,
        ready: u32,
        decisions: Vec<Decision>,
    }

    impl Sim {
        fn new(bounds: Bounds, current: u32) -> Sim {
            let now = Instant::now();
            Sim {
                cfg: AutoscalerConfig::default(),
                bounds,
                history: History::new(now, current),
                now,
                current,
                ready: current,
                decisions: Vec::new(),
            }
        }

        /// `secs` of ticks at `demand`; returns the last decision.
        fn run(&mut self, demand: u32, secs: f64) -> Decision {
            let ticks = (secs / TICK.as_secs_f64()).round() as u32;
            let mut last = None;
            for _ in 0..ticks {
                last = Some(self.tick(demand));
            }
            last.expect("at least one tick")
        }

        fn tick(&mut self, demand: u32) -> Decision {
            self.now += TICK;
            self.history
                .record(self.now, demand, self.cfg.stable_window);
            let d = decide(
                &mut self.history,
                &self.bounds,
                self.current,
                self.ready,
                self.now,
                &self.cfg,
            );
            self.current = d.replicas;
            self.ready = d.replicas;
            self.decisions.push(d);
            d
        }

        /// How many times the count changed over the decisions so far.
        fn changes(&self) -> usize {
            self.decisions
                .windows(2)
                .filter(|w| w[0].replicas != w[1].replicas)
                .count()
        }
    }

    #[test]
    fn a_burst_from_zero_gets_what_it_needs_at_the_first_decision() {
        let mut s = Sim::new(bounds(4, 0, 20, 300), 0);
        s.run(0, 120.0);
        s.ready = 0;
        let d = s.tick(50);
        assert_eq!(
            d,
            Decision {
                replicas: 13,
                panic: true
            },
            "ceil(50 / 4)"
        );
    }

    #[test]
    fn one_call_at_zero_gets_one_replica_at_once() {
        let mut s = Sim::new(bounds(4, 0, 10, 300), 0);
        s.run(0, 10.0);
        s.ready = 0;
        assert_eq!(s.tick(1).replicas, 1);
    }

    #[test]
    fn no_demand_at_zero_stays_at_zero() {
        let mut s = Sim::new(bounds(4, 0, 10, 1), 0);
        assert_eq!(s.run(0, 120.0).replicas, 0);
        assert_eq!(s.changes(), 0);
    }

    #[test]
    fn a_burst_while_pods_start_raises_the_count_to_the_whole_burst() {
        // The router pokes at the first call; the rest arrive before any pod is ready.
        let mut s = Sim::new(bounds(4, 0, 20, 300), 0);
        s.ready = 0;
        assert_eq!(s.tick(1).replicas, 1);
        s.ready = 0;
        assert_eq!(s.tick(30).replicas, 8);
    }

    #[test]
    fn steady_load_settles_on_demand_over_target_without_panic() {
        let mut s = Sim::new(bounds(4, 0, 10, 300), 1);
        let d = s.run(10, 180.0);
        assert_eq!(
            d,
            Decision {
                replicas: 3,
                panic: false
            }
        );
        let changes = s.changes();
        s.run(10, 120.0);
        assert_eq!(s.changes(), changes, "no write while the load is steady");
    }

    #[test]
    fn target_concurrency_overrides_concurrency() {
        let mut spec = SkyFunctionSpec::new("o", "e", "def main(): pass");
        spec.concurrency = 8;
        assert_eq!(Bounds::of(&spec).target, 8);
        spec.scaling.target_concurrency = Some(2);
        let b = Bounds::of(&spec);
        assert_eq!(b.target, 2);
        let mut s = Sim::new(b, 1);
        assert_eq!(s.run(10, 180.0).replicas, 5);
    }

    #[test]
    fn idle_goes_to_zero_after_idle_seconds_to_zero_and_not_before() {
        let mut s = Sim::new(bounds(4, 0, 10, 120), 1);
        s.run(8, 90.0);
        assert!(s.run(0, 119.9).replicas >= 1, "not before 120 s idle");
        assert_eq!(
            s.tick(0),
            Decision {
                replicas: 0,
                panic: false
            }
        );
        assert_eq!(s.run(0, 60.0).replicas, 0, "and it stays there");
    }

    #[test]
    fn a_short_idle_setting_is_not_held_up_by_the_windows() {
        let mut s = Sim::new(bounds(4, 0, 10, 2), 0);
        s.ready = 0;
        s.run(40, 5.0);
        assert!(s.decisions.last().unwrap().panic);
        assert!(s.run(0, 1.9).replicas > 0);
        assert_eq!(s.run(0, 0.1).replicas, 0);
    }

    #[test]
    fn after_a_rest_a_single_call_is_not_judged_by_the_old_burst() {
        let mut s = Sim::new(bounds(1, 0, 20, 1), 0);
        s.run(15, 10.0);
        assert_eq!(s.run(0, 2.0).replicas, 0);
        s.ready = 0;
        assert_eq!(s.tick(1).replicas, 1);
    }

    #[test]
    fn min_replicas_above_zero_never_reach_zero() {
        let mut s = Sim::new(bounds(4, 2, 10, 1), 0);
        assert_eq!(s.tick(0).replicas, 2, "raised to minReplicas");
        s.run(30, 30.0);
        assert!(s.current > 2);
        assert_eq!(s.run(0, 600.0).replicas, 2);
        assert!(s.decisions.iter().all(|d| d.replicas >= 2));
    }

    #[test]
    fn max_replicas_cap_every_decision() {
        let mut s = Sim::new(bounds(1, 0, 5, 300), 0);
        s.ready = 0;
        assert_eq!(s.tick(100).replicas, 5);
        s.run(100, 120.0);
        assert!(s.decisions.iter().all(|d| d.replicas <= 5));
        let mut over = Sim::new(bounds(1, 0, 5, 300), 9);
        assert_eq!(
            over.tick(1).replicas,
            5,
            "a count above the bound comes down to it"
        );
    }

    #[test]
    fn panic_starts_at_twice_the_ready_replicas_and_follows_the_burst_up() {
        let mut s = Sim::new(bounds(4, 0, 50, 300), 2);
        s.run(6, 120.0);
        assert_eq!(s.current, 2);
        let mut panicked_at = None;
        for i in 0..60 {
            let d = s.tick(80);
            if d.panic && panicked_at.is_none() {
                panicked_at = Some(i);
            }
        }
        assert!(
            panicked_at.is_some_and(|i| i < 10),
            "within a second: {panicked_at:?}"
        );
        assert_eq!(s.current, 20, "the panic window's need: 80 / 4");
    }

    #[test]
    fn panic_keeps_replicas_up_until_it_ends() {
        let mut s = Sim::new(bounds(4, 0, 50, 300), 2);
        s.run(6, 120.0);
        s.run(80, 6.0);
        let peak = s.current;
        assert_eq!(peak, 20);
        let before = s.decisions.len();
        // The burst ends: while in panic the count never goes down.
        s.run(4, 60.0);
        let after: Vec<Decision> = s.decisions[before..].to_vec();
        let in_panic = after.iter().take_while(|d| d.panic).count();
        assert!(in_panic > 400, "panic outlasts the burst: {in_panic} ticks");
        assert!(after[..in_panic].iter().all(|d| d.replicas == peak));
        // It ends a stable window after the demand last crossed the threshold; then the
        // stable window decides, and comes down.
        assert!(
            in_panic < after.len(),
            "the panic ended within a stable window"
        );
        assert!(after.last().unwrap().replicas < peak);
    }

    #[test]
    fn scale_down_waits_a_stable_window_after_the_last_higher_want() {
        let mut s = Sim::new(bounds(4, 0, 10, 300), 1);
        s.run(12, 120.0);
        assert_eq!(s.current, 3);
        let before = s.decisions.len();
        s.run(4, 60.0);
        assert!(
            s.decisions[before..].iter().all(|d| d.replicas == 3),
            "nothing lower within a stable window of the drop"
        );
        // The average falls over the next window; once only 1 was wanted for a window, 1.
        assert_eq!(s.run(4, 120.0).replicas, 1);
        assert!(
            s.decisions[before..]
                .windows(2)
                .all(|w| w[1].replicas <= w[0].replicas),
            "down only, step by step"
        );
    }

    #[test]
    fn demand_at_a_boundary_does_not_flap() {
        let mut s = Sim::new(bounds(4, 0, 10, 300), 2);
        // The average hovers around 8, the boundary between 2 and 3 replicas.
        for i in 0..6000 {
            s.tick(if i % 2 == 0 { 7 } else { 9 } + u32::from(i % 7 == 0));
        }
        assert!(s.changes() <= 1, "{} changes", s.changes());
    }

    #[test]
    fn a_new_history_keeps_the_current_count_for_a_stable_window() {
        // A restarted or newly elected gateway has no data yet: it must not undo the replicas.
        let mut s = Sim::new(bounds(4, 0, 10, 300), 5);
        assert!(s.run(0, 59.9).replicas == 5);
        assert_eq!(s.run(0, 0.2).replicas, 1, "then at least one until idle");
    }

    #[test]
    fn replicas_for_rounds_up_in_integers() {
        assert_eq!(replicas_for(0, 10, 4), 0);
        assert_eq!(replicas_for(80, 10, 4), 2, "exactly 8 per sample");
        assert_eq!(replicas_for(81, 10, 4), 3);
        assert_eq!(replicas_for(5, 0, 4), 0, "no samples");
    }

    #[test]
    fn metrics_register_and_render_as_text() {
        use prometheus::Encoder;
        let registry = Registry::new_custom(Some("skython".into()), None).unwrap();
        let m = Metrics::new(&registry).unwrap();
        m.desired.with_label_values(&["alice/fn"]).set(3);
        m.write_seconds.observe(0.01);
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#"skython_autoscaler_desired_replicas{function="alice/fn"} 3"#));
        assert!(text.contains("skython_autoscaler_scale_write_seconds_count 1"));
        m.forget("alice/fn");
        assert!(!registry.gather().iter().any(|mf| {
            mf.name() == "skython_autoscaler_desired_replicas" && !mf.get_metric().is_empty()
        }));
    }
}
