//! Calls to runner pods: the ready pod with the fewest calls in flight (below the function's
//! `concurrency`), over keep-alive connections; otherwise a bounded wait for one.
//!
//! A call that finds its function without a pod may claim a warm pool pod (`pool`); unless a
//! claim covers it, it wakes the autoscaler at once (no tick to wait for). It waits with the
//! others in the function's queue: a full queue answers 503
//! `queue_full`, a wait past the deadline 504 `cold_start_timeout` (or `queue_timeout` when
//! pods existed but stayed busy). A call is sent once: a refused connection (nothing reached
//! the pod) tries another pod, anything after that is the call's answer (502 when the pod
//! died mid-call), so a function never runs twice for one call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use skython_gateway::error::{ApiError, ErrorCode};
use skython_gateway::invoke::CallOutput;
use skython_gateway::platform::Called;
use skython_runner::Caller;
use skython_runner_pod::wire::{CALLER_HEADER, caller_header};

use crate::metrics::ClusterMetrics;
use crate::pods::{Backend, Pods};
use crate::{FunctionRef, Load};

/// How long and how many calls may wait for a pod.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Calls that may wait per function; more get 503 `queue_full`.
    pub queue_limit: u32,
    /// How long a call may wait for a pod (from zero: the whole cold start).
    pub queue_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            queue_limit: 1000,
            queue_timeout: Duration::from_secs(30),
        }
    }
}

/// Where one call goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub function: FunctionRef,
    /// The SkyFunction (what a pool pod is specialised with).
    pub object: Arc<skython_crds::SkyFunction>,
    /// `owner/endpoint`, for metrics and logs.
    pub label: String,
    /// Calls one pod serves at once.
    pub concurrency: u32,
    /// The function's own timeout: the pod answers 504 past it.
    pub timeout: Duration,
}

#[derive(Default)]
struct Counters {
    in_flight: AtomicU32,
    queued: AtomicU32,
    started: AtomicU64,
}

/// Asks for a scale-up of a function that has calls and no pod.
pub type ScaleUp = Arc<dyn Fn(&FunctionRef) + Send + Sync>;

/// Offered each call that starts to wait, with the number of calls waiting: may claim a pool pod
/// for the function (in the background; the pod wakes the waiting calls when it serves).
/// Returns whether a claim under way covers the call: then the function's scale-up is left to
/// the autoscaler's next look (and to the claim, should it fail), off the claim's path.
pub type Claim = Arc<dyn Fn(&Target, u32) -> bool + Send + Sync>;

pub struct Router {
    pods: Arc<Pods>,
    http: reqwest::Client,
    config: RouterConfig,
    counters: Mutex<HashMap<FunctionRef, (String, Arc<Counters>)>>,
    /// When each function was last scaled up from zero (for cold-start metrics).
    woken: Mutex<HashMap<FunctionRef, Instant>>,
    scale_up: ScaleUp,
    claim: Claim,
    metrics: Arc<ClusterMetrics>,
}

/// Extra time past a function's timeout before the gateway gives up on its pod (the pod
/// answers 504 itself at the timeout).
const POD_SLACK: Duration = Duration::from_secs(5);

impl Router {
    pub fn new(
        pods: Arc<Pods>,
        config: RouterConfig,
        scale_up: ScaleUp,
        claim: Claim,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(skython_gateway::serve::CLIENT_POOL_IDLE)
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()?;
        Ok(Router {
            pods,
            http,
            config,
            counters: Mutex::default(),
            woken: Mutex::default(),
            scale_up,
            claim,
            metrics,
        })
    }

    fn counters(&self, t: &Target) -> Arc<Counters> {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.entry(t.function.clone())
            .or_insert_with(|| (t.label.clone(), Arc::default()))
            .1
            .clone()
    }

    /// Each function's calls in flight and waiting, with its label.
    pub fn load(&self) -> HashMap<FunctionRef, (String, Load)> {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.iter()
            .map(|(f, (label, n))| {
                let load = Load {
                    in_flight: n.in_flight.load(Ordering::Relaxed),
                    queued: n.queued.load(Ordering::Relaxed),
                    started: n.started.load(Ordering::Relaxed),
                    claiming: 0,
                };
                (f.clone(), (label.clone(), load))
            })
            .collect()
    }

    /// Runs one call for `caller` on a pod of `t`, waiting for one if need be.
    pub async fn call(
        &self,
        t: &Target,
        args: Bytes,
        request_id: &str,
        caller: &Caller,
    ) -> Result<Called, ApiError> {
        // Encoded once, not per attempt; an anonymous call carries no header.
        let caller = (!caller.is_anonymous()).then(|| caller_header(caller));
        let arrived = Instant::now();
        let counters = self.counters(t);
        counters.started.fetch_add(1, Ordering::Relaxed);
        let notify = self.pods.notifier(&t.function);
        let mut queued: Option<Queued> = None;
        let mut saw_pod = false;
        let mut cold = false;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let backends = self.pods.backends(&t.function);
            saw_pod |= !backends.is_empty();
            if let Some(backend) = pick(&backends, t.concurrency) {
                let waited = arrived.elapsed();
                drop(queued.take());
                if waited > Duration::from_millis(1) {
                    self.metrics
                        .queue_wait
                        .with_label_values(&[&t.label])
                        .observe(waited.as_secs_f64());
                }
                // The call runs in its own task holding the slot: a client that hangs up does not
                // cut the pod off mid-call, and the slot comes back when the pod answers.
                let slot = Slot::take(&counters, &backend, &self.pods, &t.function);
                let task = tokio::spawn(send(
                    self.http.clone(),
                    self.metrics.clone(),
                    t.clone(),
                    slot,
                    args.clone(),
                    request_id.to_string(),
                    caller.clone(),
                ));
                let sent = task.await.unwrap_or_else(|e| {
                    Sent::Answered(Called {
                        output: failed(ApiError::internal(format!("the call's task failed: {e}"))),
                        cold_start: false,
                    })
                });
                match sent {
                    Sent::Refused => {
                        // Nothing reached the pod: another may take it.
                        self.pods.unreachable(&t.function, &backend);
                        continue;
                    }
                    Sent::Answered(mut called) => {
                        if cold {
                            self.cold_start_done(t, arrived);
                        }
                        called.cold_start |= cold;
                        return Ok(called);
                    }
                }
            }
            if queued.is_none() {
                if counters.queued.load(Ordering::Relaxed) >= self.config.queue_limit {
                    return Err(ApiError::new(
                        ErrorCode::QueueFull,
                        format!(
                            "{} calls already wait for a pod of {}; try again later",
                            self.config.queue_limit, t.label
                        ),
                    ));
                }
                queued = Some(Queued::new(counters.clone()));
                let claimed = (self.claim)(t, counters.queued.load(Ordering::Relaxed));
                if backends.is_empty() {
                    cold = true;
                    self.metrics
                        .cold_starts
                        .with_label_values(&[&t.label])
                        .inc();
                    // A scale write now would put the API server, the operator and the
                    // Deployment's pod on the node's CPUs while the claimed pod loads.
                    if !claimed {
                        (self.scale_up)(&t.function);
                    }
                }
            }
            let left = self.config.queue_timeout.saturating_sub(arrived.elapsed());
            if tokio::time::timeout(left, notified).await.is_err() {
                let (code, what) = if saw_pod {
                    (ErrorCode::QueueTimeout, "a pod of the function to be free")
                } else {
                    (
                        ErrorCode::ColdStartTimeout,
                        "a pod of the function to start",
                    )
                };
                return Err(ApiError::new(
                    code,
                    format!(
                        "waited {:.1} s for {what} ({}); try again",
                        self.config.queue_timeout.as_secs_f64(),
                        t.label
                    ),
                ));
            }
        }
    }

    /// The autoscaler wrote `to` replicas for `f` (from `from`).
    pub fn scaled(&self, f: &FunctionRef, from: u32, to: u32) {
        if from == 0 && to > 0 {
            let mut w = self.woken.lock().unwrap_or_else(|p| p.into_inner());
            w.insert(f.clone(), Instant::now());
        }
    }

    fn cold_start_done(&self, t: &Target, arrived: Instant) {
        let phase = |name: &str, at: Option<Instant>| {
            if let Some(at) = at.filter(|at| *at >= arrived) {
                self.metrics
                    .cold_start_phase
                    .with_label_values(&[&t.label, name])
                    .observe((at - arrived).as_secs_f64());
            }
        };
        let woken = {
            let w = self.woken.lock().unwrap_or_else(|p| p.into_inner());
            w.get(&t.function).copied()
        };
        phase("scale", woken);
        phase("pod_created", self.pods.pod_seen(&t.function));
        phase("port_open", self.pods.became_routable(&t.function));
        phase("first_answer", Some(Instant::now()));
    }
}

/// Sends one call to the slot's pod and reads its answer.
async fn send(
    http: reqwest::Client,
    metrics: Arc<ClusterMetrics>,
    t: Target,
    slot: Slot,
    args: Bytes,
    request_id: String,
    caller: Option<String>,
) -> Sent {
    let backend = &slot.backend;
    let url = format!("http://{}/", backend.addr);
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-request-id", request_id);
    if let Some(caller) = caller {
        req = req.header(CALLER_HEADER, caller);
    }
    let res = req.body(args).timeout(t.timeout + POD_SLACK).send().await;
    let fail = |kind: &str, e: ApiError| {
        metrics
            .pod_failures
            .with_label_values(&[&t.label, kind])
            .inc();
        Sent::Answered(Called {
            output: failed(e),
            cold_start: false,
        })
    };
    let resp = match res {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            metrics
                .pod_failures
                .with_label_values(&[&t.label, "refused"])
                .inc();
            tracing::warn!(function = %t.label, pod = %backend.name, "connecting to the pod failed: {e}");
            return Sent::Refused;
        }
        Err(e) if e.is_timeout() => return fail("timeout", pod_timeout(&t)),
        Err(e) => return broken(&slot, &t, &metrics, &e),
    };
    let status = resp.status();
    let cold_start = resp.headers().contains_key("x-skython-cold-start");
    match resp.bytes().await {
        Ok(body) => Sent::Answered(Called {
            output: output(status, body),
            cold_start,
        }),
        Err(e) if e.is_timeout() => fail("timeout", pod_timeout(&t)),
        Err(e) => broken(&slot, &t, &metrics, &e),
    }
}

/// The connection to the pod failed after the call was sent: the call fails (it may have run),
/// and the pod takes no new call until the watch or an announcement shows it again. Marked
/// before the slot is given back, so a waiting call never picks a pod that just died (its
/// other pooled connections are dead too).
fn broken(slot: &Slot, t: &Target, metrics: &ClusterMetrics, e: &reqwest::Error) -> Sent {
    slot.pods.unreachable(&slot.function, &slot.backend);
    metrics
        .pod_failures
        .with_label_values(&[&t.label, "broken"])
        .inc();
    Sent::Answered(Called {
        output: failed(pod_broken(&slot.backend.name, e)),
        cold_start: false,
    })
}

/// A call's place on a pod, given back however the call ends: the pod's slot, the function's
/// in-flight count, and a wake-up for one waiting call.
struct Slot {
    counters: Arc<Counters>,
    backend: Arc<Backend>,
    pods: Arc<Pods>,
    function: FunctionRef,
}

impl Slot {
    /// For a backend whose slot `pick` took.
    fn take(
        counters: &Arc<Counters>,
        backend: &Arc<Backend>,
        pods: &Arc<Pods>,
        f: &FunctionRef,
    ) -> Slot {
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Slot {
            counters: counters.clone(),
            backend: backend.clone(),
            pods: pods.clone(),
            function: f.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.backend.release();
        if self.counters.queued.load(Ordering::Relaxed) > 0 {
            self.pods.wake_one(&self.function);
        }
    }
}

enum Sent {
    Refused,
    Answered(Called),
}

/// A place in the function's queue, given back however the wait ends.
struct Queued(Arc<Counters>);

impl Queued {
    fn new(c: Arc<Counters>) -> Self {
        c.queued.fetch_add(1, Ordering::Relaxed);
        Queued(c)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pod with the fewest calls in flight that has a free slot; takes the slot.
pub fn pick(backends: &[Arc<Backend>], concurrency: u32) -> Option<Arc<Backend>> {
    let mut order: Vec<&Arc<Backend>> = backends.iter().filter(|b| !b.is_retired()).collect();
    order.sort_by_key(|b| b.in_flight());
    order
        .into_iter()
        .find(|b| b.try_acquire(concurrency.max(1)))
        .cloned()
}

/// The pod's answer as the gateway's: the same status and JSON, the outcome from its error code.
fn output(status: reqwest::StatusCode, body: Bytes) -> CallOutput {
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    // The pod ends its JSON with a newline (for curl); the gateway adds its own.
    let trimmed = body.trim_ascii_end().len();
    let body = body.slice(..trimmed);
    if status.is_success() {
        return CallOutput {
            status,
            body,
            outcome: "ok".into(),
            error: None,
            logs: String::new(),
        };
    }
    let err: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let field = |k: &str| {
        err.as_ref()
            .and_then(|v| v["error"][k].as_str())
            .map(String::from)
    };
    CallOutput {
        status,
        outcome: field("code").unwrap_or_else(|| "pod_error".into()),
        error: field("message").or_else(|| Some(format!("the pod answered {status}"))),
        body,
        logs: String::new(),
    }
}

fn failed(e: ApiError) -> CallOutput {
    CallOutput {
        status: e.status,
        body: Bytes::from(e.body().to_string()),
        outcome: e.code.to_string(),
        error: Some(e.message),
        logs: String::new(),
    }
}

fn pod_timeout(t: &Target) -> ApiError {
    ApiError::new(
        ErrorCode::Timeout,
        format!(
            "the pod did not answer within the function's timeout ({} s) and {} s more",
            t.timeout.as_secs(),
            POD_SLACK.as_secs()
        ),
    )
}

fn pod_broken(pod: &str, e: &reqwest::Error) -> ApiError {
    ApiError::new(
        ErrorCode::PodFailed,
        format!("the runner pod {pod} failed during the call ({e}); the call may have run"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::PodView;

    fn pods_with(n: usize) -> (Arc<Pods>, FunctionRef) {
        let f = FunctionRef {
            namespace: "ns".into(),
            name: "hello".into(),
        };
        let pods = Pods::new();
        for i in 0..n {
            pods.apply(PodView {
                uid: format!("u{i}"),
                name: format!("p{i}"),
                function: f.clone(),
                ip: Some(format!("10.88.1.{}", i + 1).parse().unwrap()),
                port: 8080,
                ready: true,
                deleting: false,
            });
        }
        (pods, f)
    }

    /// A real HTTP server on loopback standing in for a pod: answers `1` after `delay`.
    async fn slow_pod(delay: Duration) -> std::net::SocketAddr {
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move || async move {
                tokio::time::sleep(delay).await;
                "1"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// A router with one ready pod, `slow_pod(delay)`, for a function of `concurrency` 1.
    async fn one_pod(delay: Duration) -> (Arc<Router>, Arc<Pods>, Target) {
        router_to(slow_pod(delay).await)
    }

    /// A router with one ready pod at `addr`, for a function of `concurrency` 1.
    fn router_to(addr: std::net::SocketAddr) -> (Arc<Router>, Arc<Pods>, Target) {
        let f = FunctionRef {
            namespace: "ns".into(),
            name: "slow".into(),
        };
        let pods = Pods::new();
        pods.apply(PodView {
            uid: "u".into(),
            name: "p".into(),
            function: f.clone(),
            ip: Some(addr.ip()),
            port: addr.port(),
            ready: true,
            deleting: false,
        });
        let metrics = Arc::new(ClusterMetrics::new().unwrap());
        let no_scaling: ScaleUp = Arc::new(|_: &FunctionRef| {});
        let no_pool: Claim = Arc::new(|_: &Target, _| false);
        let router = Router::new(
            pods.clone(),
            RouterConfig::default(),
            no_scaling,
            no_pool,
            metrics,
        );
        let t = Target {
            function: f,
            object: Arc::new(skython_crds::SkyFunction::new(
                "a.slow",
                skython_crds::SkyFunctionSpec::new("a", "slow", "def slow(): pass"),
            )),
            label: "a/slow".into(),
            concurrency: 1,
            timeout: Duration::from_secs(5),
        };
        (Arc::new(router.unwrap()), pods, t)
    }

    #[tokio::test]
    async fn the_pod_hears_who_called_and_nothing_for_an_anonymous_call() {
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(|headers: axum::http::HeaderMap| async move {
                match headers.get(CALLER_HEADER) {
                    Some(v) => v.to_str().unwrap_or("?").to_string(),
                    None => "none".to_string(),
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (router, _pods, t) = router_to(addr);
        let alice = Caller::User {
            name: "alice".into(),
        };
        let heard = router.call(&t, Bytes::new(), "r1", &alice).await.unwrap();
        assert_eq!(&heard.output.body[..], br#"{"kind":"user","name":"alice"}"#);
        let heard = router
            .call(&t, Bytes::new(), "r2", &Caller::Anonymous)
            .await
            .unwrap();
        assert_eq!(&heard.output.body[..], b"none");
    }

    #[tokio::test]
    async fn a_caller_that_leaves_mid_call_gives_the_slot_back_when_the_pod_answers() {
        let (router, pods, t) = one_pod(Duration::from_millis(300)).await;
        let f = t.function.clone();
        let left = tokio::time::timeout(
            Duration::from_millis(50),
            router.call(&t, Bytes::new(), "r1", &Caller::Anonymous),
        )
        .await;
        assert!(left.is_err(), "the caller left before the answer");
        assert_eq!(router.load()[&f].1.in_flight, 1, "the call goes on");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(router.load()[&f].1.in_flight, 0);
        assert_eq!(
            pods.backends(&f)[0].in_flight(),
            0,
            "the pod's slot is free again"
        );
        let next = router
            .call(&t, Bytes::new(), "r2", &Caller::Anonymous)
            .await
            .unwrap();
        assert_eq!(&next.output.body[..], b"1");
    }

    #[tokio::test]
    async fn calls_beyond_concurrency_wait_and_each_freed_slot_serves_the_next() {
        let (router, _pods, t) = one_pod(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let calls: Vec<_> = (0..4)
            .map(|i| {
                let (router, t) = (router.clone(), t.clone());
                tokio::spawn(async move {
                    router
                        .call(&t, Bytes::new(), &format!("r{i}"), &Caller::Anonymous)
                        .await
                })
            })
            .collect();
        for c in calls {
            assert_eq!(&c.await.unwrap().unwrap().output.body[..], b"1");
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400),
            "one at a time on a pod of concurrency 1: {took:?}"
        );
        assert_eq!(
            router.load()[&t.function].1,
            Load {
                in_flight: 0,
                queued: 0,
                started: 4,
                claiming: 0,
            }
        );
    }

    /// Scale-ups a cold call asks for (no pod at all) when a claim does or does not cover it.
    async fn scale_ups_of_a_cold_call(claim_covers: bool) -> usize {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        let scale_up: ScaleUp = Arc::new(move |_: &FunctionRef| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let claim: Claim = Arc::new(move |_: &Target, _| claim_covers);
        let (_, _, t) = router_to("127.0.0.1:9".parse().unwrap());
        let config = RouterConfig {
            queue_timeout: Duration::from_millis(50),
            ..RouterConfig::default()
        };
        let metrics = Arc::new(ClusterMetrics::new().unwrap());
        let router = Router::new(Pods::new(), config, scale_up, claim, metrics).unwrap();
        let waited = router
            .call(&t, Bytes::new(), "r1", &Caller::Anonymous)
            .await;
        assert!(waited.is_err(), "no pod ever comes");
        asked.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_cold_call_a_pool_claim_covers_leaves_the_scale_up_to_the_autoscaler() {
        assert_eq!(scale_ups_of_a_cold_call(true).await, 0);
    }

    #[tokio::test]
    async fn a_cold_call_no_claim_covers_asks_for_a_scale_up_at_once() {
        assert_eq!(scale_ups_of_a_cold_call(false).await, 1);
    }

    #[test]
    fn the_pod_with_fewest_calls_in_flight_is_picked() {
        let (pods, f) = pods_with(3);
        let b = pods.backends(&f);
        assert!(b[0].try_acquire(4) && b[0].try_acquire(4) && b[1].try_acquire(4));
        let chosen = pick(&b, 4).unwrap();
        assert_eq!(chosen.uid, b[2].uid);
        assert_eq!(chosen.in_flight(), 1, "picking takes the slot");
    }

    #[test]
    fn no_pod_is_picked_when_all_are_at_concurrency() {
        let (pods, f) = pods_with(2);
        let b = pods.backends(&f);
        for x in &b {
            assert!(x.try_acquire(1));
        }
        assert!(pick(&b, 1).is_none());
    }

    #[test]
    fn a_pods_error_answer_keeps_its_status_and_code() {
        let out = output(
            reqwest::StatusCode::BAD_REQUEST,
            Bytes::from_static(b"{\"error\":{\"code\":\"bad_arguments\",\"message\":\"m\"}}\n"),
        );
        assert_eq!(out.status, StatusCode::BAD_REQUEST);
        assert_eq!(out.outcome, "bad_arguments");
        assert_eq!(out.error.as_deref(), Some("m"));
        assert!(out.body.ends_with(b"}"), "the pod's newline is not doubled");
    }

    #[test]
    fn a_pods_success_is_the_value() {
        let out = output(reqwest::StatusCode::OK, Bytes::from_static(b"42\n"));
        assert_eq!(
            (out.status, &out.body[..], out.outcome.as_str()),
            (StatusCode::OK, &b"42"[..], "ok")
        );
    }
}
