//! Which runner pods serve which function, and at what address.
//!
//! Two sources, because the API server learns a new pod's IP only at the kubelet's next relist
//! (up to a second after the pod listens) and its readiness later still:
//! - the Pod watch: a Ready pod with an IP is routable (what a restarted gateway, or a second
//!   one, starts from);
//! - announcements: a pod says where it listens as soon as it does; it becomes routable once
//!   `internal` has checked the announcement (its token names this very pod, and whoever listens
//!   at the address proves holding that token) and as long as the watch does not contradict it
//!   (another IP, the pod going away).
//!
//! A pod being deleted, or one that announced it is draining, takes no new calls; its calls in
//! flight finish (the router holds its `Backend` until they do).
//!
//! The same watch sees the warm pool: unclaimed pool pods (label `skython.io/pool`, no function
//! label), which `pool` claims for a function. A pod this gateway claimed serves that function at
//! once, from the claim's own record, before its labels reach the API server and the watch.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use skython_crds::Runtime;
use skython_runner_pod::wire::POOL_LABEL;
use tokio::sync::Notify;

use crate::FunctionRef;

/// Labels the operator puts on runner pods (operator/src/desired.rs).
pub const RUNNER_SELECTOR: &str = "app.kubernetes.io/name=skython-runner";
pub const FUNCTION_LABEL: &str = "skython.io/function";
/// The runner's port when the pod does not say (operator/src/desired.rs: RUNNER_PORT).
const DEFAULT_PORT: u16 = 8080;

/// What routing needs to know of a Pod object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub uid: String,
    pub name: String,
    pub function: FunctionRef,
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub ready: bool,
    pub deleting: bool,
}

/// What any runner pod shows: uid, name, IP, port, readiness, deletion.
struct Basics {
    uid: String,
    name: String,
    ip: Option<IpAddr>,
    port: u16,
    ready: bool,
    deleting: bool,
}

fn basics(pod: &Pod) -> Option<Basics> {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let port = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.name.as_deref() == Some("http")))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(DEFAULT_PORT);
    Some(Basics {
        uid: pod.metadata.uid.clone()?,
        name: pod.name_any(),
        ip: status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
        port,
        ready,
        deleting: pod.metadata.deletion_timestamp.is_some(),
    })
}

impl PodView {
    /// `None` for a pod that is not a function's runner pod (no function label, no uid).
    pub fn of(pod: &Pod) -> Option<PodView> {
        let function = pod.labels().get(FUNCTION_LABEL)?.clone();
        let b = basics(pod)?;
        Some(PodView {
            uid: b.uid,
            name: b.name,
            function: FunctionRef {
                namespace: pod.namespace()?,
                name: function,
            },
            ip: b.ip,
            port: b.port,
            ready: b.ready,
            deleting: b.deleting,
        })
    }
}

/// An unclaimed pool pod: the pool label (its runtime), no function label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPodView {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub runtime: Runtime,
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub ready: bool,
    pub deleting: bool,
    /// The runner container's memory limit: a function that asks for more is not claimed onto it.
    pub memory_bytes: Option<u64>,
}

impl PoolPodView {
    pub fn of(pod: &Pod) -> Option<PoolPodView> {
        let labels = pod.labels();
        if labels.contains_key(FUNCTION_LABEL) {
            return None;
        }
        let runtime = match labels.get(POOL_LABEL)?.as_str() {
            "standard" => Runtime::Standard,
            "full" => Runtime::Full,
            _ => return None,
        };
        let b = basics(pod)?;
        let memory_bytes = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.resources.as_ref()?.limits.as_ref()?.get("memory"))
            .and_then(|q| skython_crds::parse_memory_bytes(&q.0));
        Some(PoolPodView {
            memory_bytes,
            uid: b.uid,
            name: b.name,
            namespace: pod.namespace()?,
            runtime,
            ip: b.ip,
            port: b.port,
            ready: b.ready,
            deleting: b.deleting,
        })
    }

    /// Where a claim may reach it: Ready, with an IP, not going away.
    pub fn claimable_at(&self) -> Option<SocketAddr> {
        (self.ready && !self.deleting)
            .then_some(self.ip)
            .flatten()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// A checked announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    pub addr: SocketAddr,
    pub draining: bool,
}

/// Where calls for this pod go, if anywhere: its announced address while the watch agrees
/// with it, else its watched IP once Ready.
pub fn routable_address(pod: &PodView, announced: Option<&Announced>) -> Option<SocketAddr> {
    if pod.deleting || announced.is_some_and(|a| a.draining) {
        return None;
    }
    match (announced, pod.ip) {
        (Some(a), Some(ip)) if a.addr.ip() != ip => None,
        (Some(a), _) => Some(a.addr),
        (None, Some(ip)) if pod.ready => Some(SocketAddr::new(ip, pod.port)),
        (None, _) => None,
    }
}

/// A pod calls can go to. Its in-flight count is what the router balances on.
#[derive(Debug)]
pub struct Backend {
    pub uid: String,
    pub name: String,
    pub addr: SocketAddr,
    in_flight: AtomicU32,
    /// Set when the pod may take no new calls (gone from the routable set, or refused a
    /// connection); calls already sent finish.
    retired: AtomicBool,
}

impl Backend {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Takes a slot if the pod has fewer than `limit` calls in flight.
    pub fn try_acquire(&self, limit: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, PodView>,
    announced: HashMap<String, Announced>,
    backends: HashMap<FunctionRef, Vec<Arc<Backend>>>,
    /// When each function last had no routable pod and got one (for cold-start metrics).
    became_routable: HashMap<FunctionRef, Instant>,
    /// When a pod of each function was last seen for the first time.
    pod_seen: HashMap<FunctionRef, Instant>,
    /// Pool pods this gateway claimed, as the claim made them (until the watch shows them).
    claimed: HashMap<String, PodView>,
    /// Unclaimed pool pods, by uid.
    pool: HashMap<String, PoolPodView>,
    /// Pool pods this gateway took for a claim: never offered again, whatever the claim's fate.
    taken: std::collections::HashSet<String>,
}

/// The routable pods of every function, kept current by the Pod watch and announcements.
#[derive(Default)]
pub struct Pods {
    inner: Mutex<Inner>,
    /// One per function: woken when its pods change or one of its calls ends.
    notify: Mutex<HashMap<FunctionRef, Arc<Notify>>>,
}

impl Pods {
    pub fn new() -> Arc<Self> {
        Arc::new(Pods::default())
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The function's wake-up: notified when a pod of it becomes routable or a call ends.
    pub fn notifier(&self, f: &FunctionRef) -> Arc<Notify> {
        let mut n = self.notify.lock().unwrap_or_else(|p| p.into_inner());
        n.entry(f.clone()).or_default().clone()
    }

    /// Wakes everyone waiting on `f` (its pods changed).
    pub fn wake(&self, f: &FunctionRef) {
        self.notifier(f).notify_waiters();
    }

    /// Wakes one call waiting on `f` (a slot came free): one slot, one caller, not a stampede
    /// of every waiting call. A woken call that leaves without taking it passes it on.
    pub fn wake_one(&self, f: &FunctionRef) {
        self.notifier(f).notify_one();
    }

    /// The function's routable pods now.
    pub fn backends(&self, f: &FunctionRef) -> Vec<Arc<Backend>> {
        self.inner().backends.get(f).cloned().unwrap_or_default()
    }

    /// How many pods of each function are routable.
    pub fn ready_counts(&self) -> HashMap<FunctionRef, usize> {
        self.inner()
            .backends
            .iter()
            .map(|(f, b)| (f.clone(), b.len()))
            .collect()
    }

    /// The watched (or claimed by this gateway) pod with this uid.
    pub fn pod(&self, uid: &str) -> Option<PodView> {
        let inner = self.inner();
        inner
            .pods
            .get(uid)
            .or_else(|| inner.claimed.get(uid))
            .cloned()
    }

    /// An unclaimed pool pod appeared or changed.
    pub fn apply_pool(&self, pod: PoolPodView) {
        let mut inner = self.inner();
        if !inner.taken.contains(&pod.uid) {
            inner.pool.insert(pod.uid.clone(), pod);
        }
    }

    /// Takes a claimable pool pod of `runtime` with at least `memory` bytes (any will do: all
    /// are alike) for a claim; it is offered to nobody else afterwards.
    pub fn take_pool_pod(
        &self,
        runtime: Runtime,
        memory: Option<u64>,
    ) -> Option<(PoolPodView, SocketAddr)> {
        let mut inner = self.inner();
        let (uid, addr) = inner
            .pool
            .values()
            .filter(|p| p.runtime == runtime && fits(p, memory))
            .find_map(|p| Some((p.uid.clone(), p.claimable_at()?)))?;
        let pod = inner.pool.remove(&uid)?;
        inner.taken.insert(uid);
        Some((pod, addr))
    }

    /// Claimable pool pods of `runtime` (with at least `memory` bytes) now.
    pub fn pool_available(&self, runtime: Runtime, memory: Option<u64>) -> usize {
        self.inner()
            .pool
            .values()
            .filter(|p| p.runtime == runtime && fits(p, memory) && p.claimable_at().is_some())
            .count()
    }

    /// A pool pod this gateway specialised for `pod.function`: routable at once.
    pub fn add_claimed(&self, pod: PodView) {
        let f = pod.function.clone();
        {
            let mut inner = self.inner();
            inner.claimed.insert(pod.uid.clone(), pod);
            rebuild(&mut inner, &f);
        }
        self.wake(&f);
    }

    /// A Pod object appeared or changed.
    pub fn apply(&self, pod: PodView) {
        let f = pod.function.clone();
        {
            let mut inner = self.inner();
            // A claimed pool pod now shows its function's labels.
            inner.pool.remove(&pod.uid);
            // A pod now showing another IP than it announced: the watch wins.
            if let (Some(a), Some(ip)) = (inner.announced.get(&pod.uid), pod.ip)
                && a.addr.ip() != ip
            {
                tracing::warn!(pod = %pod.name, announced = %a.addr, ip = %ip, "a pod's IP differs from its announcement; dropping the announcement");
                inner.announced.remove(&pod.uid);
            }
            if !inner.pods.contains_key(&pod.uid) {
                inner.pod_seen.insert(f.clone(), Instant::now());
            }
            inner.pods.insert(pod.uid.clone(), pod);
            rebuild(&mut inner, &f);
        }
        self.wake(&f);
    }

    /// A Pod object is gone.
    pub fn delete(&self, uid: &str) {
        let f = {
            let mut inner = self.inner();
            inner.announced.remove(uid);
            inner.pool.remove(uid);
            inner.taken.remove(uid);
            let claimed = inner.claimed.remove(uid);
            let Some(pod) = inner.pods.remove(uid).or(claimed) else {
                return;
            };
            rebuild(&mut inner, &pod.function);
            pod.function
        };
        self.wake(&f);
    }

    /// The watch restarted: `pods` and `pool` are everything there is.
    pub fn replace_all(&self, pods: Vec<PodView>, pool: Vec<PoolPodView>) {
        let functions: Vec<FunctionRef> = {
            let mut inner = self.inner();
            let mut functions: Vec<FunctionRef> = inner.backends.keys().cloned().collect();
            inner.pods = pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
            let Inner {
                pods,
                announced,
                claimed,
                pool: unclaimed,
                taken,
                ..
            } = &mut *inner;
            // A claimed pod the listing shows unlabelled (its claim not recorded yet) stays
            // claimed; one not listed at all is gone.
            let listed: std::collections::HashSet<&String> =
                pool.iter().map(|p| &p.uid).chain(pods.keys()).collect();
            claimed.retain(|uid, _| listed.contains(uid));
            taken.retain(|uid| listed.contains(uid));
            *unclaimed = pool
                .into_iter()
                .filter(|p| !taken.contains(&p.uid) && !claimed.contains_key(&p.uid))
                .map(|p| (p.uid.clone(), p))
                .collect();
            announced.retain(|uid, _| pods.contains_key(uid) || claimed.contains_key(uid));
            functions.extend(inner.pods.values().map(|p| p.function.clone()));
            functions.sort();
            functions.dedup();
            for f in &functions {
                rebuild(&mut inner, f);
            }
            functions
        };
        for f in &functions {
            self.wake(f);
        }
    }

    /// Records a checked announcement of the pod `uid` (which must be watched already).
    pub fn announce(&self, uid: &str, announced: Announced) -> bool {
        let f = {
            let mut inner = self.inner();
            let Some(f) = inner.pods.get(uid).map(|p| p.function.clone()) else {
                return false;
            };
            inner.announced.insert(uid.to_string(), announced);
            rebuild(&mut inner, &f);
            f
        };
        self.wake(&f);
        true
    }

    /// A connection to the pod was refused: no new calls until the watch or an announcement
    /// says otherwise.
    pub fn unreachable(&self, f: &FunctionRef, backend: &Backend) {
        backend.retired.store(true, Ordering::Relaxed);
        let mut inner = self.inner();
        inner.announced.remove(&backend.uid);
        if let Some(list) = inner.backends.get_mut(f) {
            list.retain(|b| b.uid != backend.uid);
        }
    }

    /// When a new pod of the function last appeared in the watch (for cold-start metrics).
    pub fn pod_seen(&self, f: &FunctionRef) -> Option<Instant> {
        self.inner().pod_seen.get(f).copied()
    }

    /// When the function last went from no routable pod to some (for cold-start metrics).
    pub fn became_routable(&self, f: &FunctionRef) -> Option<Instant> {
        self.inner().became_routable.get(f).copied()
    }
}

/// Whether a pool pod has the memory a function asks for (a pod that states no limit has).
fn fits(p: &PoolPodView, memory: Option<u64>) -> bool {
    match (p.memory_bytes, memory) {
        (Some(has), Some(wants)) => has >= wants,
        _ => true,
    }
}

/// Recomputes one function's backends, keeping the `Backend` of a pod whose address holds (its
/// in-flight count goes on).
fn rebuild(inner: &mut Inner, f: &FunctionRef) {
    let old = inner.backends.remove(f).unwrap_or_default();
    let mut fresh: Vec<Arc<Backend>> = Vec::new();
    // The watch's view of a pod wins over the claim's record of it.
    let claimed_only = inner
        .claimed
        .values()
        .filter(|p| !inner.pods.contains_key(&p.uid));
    for pod in inner
        .pods
        .values()
        .chain(claimed_only)
        .filter(|p| &p.function == f)
    {
        // A pod this gateway specialised is ready for it, whatever the kubelet's last probe
        // (taken while it specialised) says.
        let claimed_ready;
        let pod = if !pod.ready && inner.claimed.contains_key(&pod.uid) {
            claimed_ready = PodView {
                ready: true,
                ..pod.clone()
            };
            &claimed_ready
        } else {
            pod
        };
        let Some(addr) = routable_address(pod, inner.announced.get(&pod.uid)) else {
            continue;
        };
        let kept = old
            .iter()
            .find(|b| b.uid == pod.uid && b.addr == addr && !b.is_retired())
            .cloned();
        fresh.push(kept.unwrap_or_else(|| {
            Arc::new(Backend {
                uid: pod.uid.clone(),
                name: pod.name.clone(),
                addr,
                in_flight: AtomicU32::new(0),
                retired: AtomicBool::new(false),
            })
        }));
    }
    for b in &old {
        if !fresh.iter().any(|n| Arc::ptr_eq(n, b)) {
            b.retired.store(true, Ordering::Relaxed);
        }
    }
    if old.is_empty() && !fresh.is_empty() {
        inner.became_routable.insert(f.clone(), Instant::now());
    }
    if !fresh.is_empty() {
        inner.backends.insert(f.clone(), fresh);
    }
}

/// Keeps `pods` current from the Pod watch (runner pods only) until the process ends; `synced`
/// turns true once the first listing is in.
pub async fn watch(
    client: kube::Client,
    namespace: Option<String>,
    pods: Arc<Pods>,
    synced: Arc<AtomicBool>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<Pod> = match &namespace {
        Some(ns) => kube::Api::namespaced(client, ns),
        None => kube::Api::all(client),
    };
    let stream = watcher(api, watcher::Config::default().labels(RUNNER_SELECTOR)).default_backoff();
    futures::pin_mut!(stream);
    let mut listing: Vec<PodView> = Vec::new();
    let mut pool_listing: Vec<PoolPodView> = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(p)) => {
                if let Some(v) = PodView::of(&p) {
                    pods.apply(v);
                } else if let Some(v) = PoolPodView::of(&p) {
                    pods.apply_pool(v);
                }
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = &p.metadata.uid {
                    pods.delete(uid);
                }
            }
            Ok(watcher::Event::Init) => {
                listing.clear();
                pool_listing.clear();
            }
            Ok(watcher::Event::InitApply(p)) => {
                listing.extend(PodView::of(&p));
                pool_listing.extend(PoolPodView::of(&p));
            }
            Ok(watcher::Event::InitDone) => {
                pods.replace_all(
                    std::mem::take(&mut listing),
                    std::mem::take(&mut pool_listing),
                );
                synced.store(true, Ordering::Release);
            }
            Err(e) => tracing::warn!("watching runner pods: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> FunctionRef {
        FunctionRef {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn pod(uid: &str, ip: Option<&str>, ready: bool) -> PodView {
        PodView {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            function: f("hello"),
            ip: ip.map(|i| i.parse().unwrap()),
            port: 8080,
            ready,
            deleting: false,
        }
    }

    fn announced(addr: &str) -> Announced {
        Announced {
            addr: addr.parse().unwrap(),
            draining: false,
        }
    }

    #[test]
    fn a_ready_watched_pod_is_routable_at_its_ip() {
        assert_eq!(
            routable_address(&pod("a", Some("10.88.1.2"), true), None),
            Some("10.88.1.2:8080".parse().unwrap())
        );
    }

    #[test]
    fn a_pod_not_ready_and_not_announced_is_not_routable() {
        assert_eq!(
            routable_address(&pod("a", Some("10.88.1.2"), false), None),
            None
        );
        assert_eq!(routable_address(&pod("a", None, false), None), None);
    }

    #[test]
    fn an_announced_pod_is_routable_before_the_api_shows_its_ip() {
        let a = announced("10.88.1.2:8080");
        assert_eq!(
            routable_address(&pod("a", None, false), Some(&a)),
            Some(a.addr)
        );
    }

    #[test]
    fn an_announcement_the_watch_contradicts_is_not_routable() {
        let a = announced("10.88.1.9:8080");
        assert_eq!(
            routable_address(&pod("a", Some("10.88.1.2"), true), Some(&a)),
            None
        );
    }

    #[test]
    fn draining_and_deleting_pods_take_no_new_calls() {
        let draining = Announced {
            draining: true,
            ..announced("10.88.1.2:8080")
        };
        assert_eq!(
            routable_address(&pod("a", Some("10.88.1.2"), true), Some(&draining)),
            None
        );
        let mut deleting = pod("a", Some("10.88.1.2"), true);
        deleting.deleting = true;
        assert_eq!(routable_address(&deleting, None), None);
    }

    #[test]
    fn a_pods_backend_and_its_count_survive_updates() {
        let pods = Pods::new();
        pods.apply(pod("a", Some("10.88.1.2"), true));
        let b = pods.backends(&f("hello"));
        assert!(b[0].try_acquire(4));
        pods.apply(pod("a", Some("10.88.1.2"), true));
        let again = pods.backends(&f("hello"));
        assert!(Arc::ptr_eq(&b[0], &again[0]));
        assert_eq!(again[0].in_flight(), 1);
    }

    #[test]
    fn a_pod_that_goes_away_retires_its_backend() {
        let pods = Pods::new();
        pods.apply(pod("a", Some("10.88.1.2"), true));
        let b = pods.backends(&f("hello"));
        let mut gone = pod("a", Some("10.88.1.2"), true);
        gone.deleting = true;
        pods.apply(gone);
        assert!(pods.backends(&f("hello")).is_empty());
        assert!(
            b[0].is_retired(),
            "calls in flight finish, new ones go elsewhere"
        );
    }

    #[test]
    fn an_announcement_counts_only_for_a_watched_pod() {
        let pods = Pods::new();
        assert!(!pods.announce("a", announced("10.88.1.2:8080")));
        pods.apply(pod("a", None, false));
        assert!(pods.announce("a", announced("10.88.1.2:8080")));
        assert_eq!(pods.backends(&f("hello")).len(), 1);
    }

    #[test]
    fn slots_stop_at_the_limit() {
        let pods = Pods::new();
        pods.apply(pod("a", Some("10.88.1.2"), true));
        let b = &pods.backends(&f("hello"))[0];
        assert!(b.try_acquire(2) && b.try_acquire(2));
        assert!(!b.try_acquire(2));
        b.release();
        assert!(b.try_acquire(2));
    }

    fn pool_pod(uid: &str, ready: bool) -> PoolPodView {
        PoolPodView {
            uid: uid.into(),
            name: format!("pool-{uid}"),
            namespace: "ns".into(),
            runtime: Runtime::Standard,
            ip: Some("10.88.1.50".parse().unwrap()),
            port: 8080,
            ready,
            deleting: false,
            memory_bytes: Some(256 << 20),
        }
    }

    fn claimed(uid: &str) -> PodView {
        PodView {
            ..pod(uid, Some("10.88.1.50"), true)
        }
    }

    #[test]
    fn only_ready_pool_pods_of_the_runtime_are_taken_and_each_once() {
        let pods = Pods::new();
        pods.apply_pool(pool_pod("p1", false));
        assert!(
            pods.take_pool_pod(Runtime::Standard, None).is_none(),
            "not ready"
        );
        assert!(pods.take_pool_pod(Runtime::Full, None).is_none());
        pods.apply_pool(pool_pod("p1", true));
        assert_eq!(pods.pool_available(Runtime::Standard, None), 1);
        let (taken, addr) = pods.take_pool_pod(Runtime::Standard, None).unwrap();
        assert_eq!((taken.uid.as_str(), addr.port()), ("p1", 8080));
        pods.apply_pool(pool_pod("p1", true));
        assert!(
            pods.take_pool_pod(Runtime::Standard, None).is_none(),
            "a taken pod is never offered again, whatever the watch says"
        );
    }

    #[test]
    fn a_claimed_pod_serves_its_function_before_the_watch_shows_its_labels() {
        let pods = Pods::new();
        pods.add_claimed(claimed("p1"));
        assert_eq!(pods.backends(&f("hello")).len(), 1);
        assert_eq!(pods.pod("p1").unwrap().function, f("hello"));
    }

    #[test]
    fn a_claimed_pod_stays_routable_while_the_kubelet_still_says_unready() {
        let pods = Pods::new();
        pods.add_claimed(claimed("p1"));
        let b = pods.backends(&f("hello"));
        pods.apply(PodView {
            ready: false,
            ..claimed("p1")
        });
        let now = pods.backends(&f("hello"));
        assert_eq!(now.len(), 1);
        assert!(
            Arc::ptr_eq(&b[0], &now[0]),
            "its calls in flight keep counting"
        );
    }

    #[test]
    fn a_deleted_claimed_pod_stops_serving() {
        let pods = Pods::new();
        pods.add_claimed(claimed("p1"));
        pods.delete("p1");
        assert!(pods.backends(&f("hello")).is_empty());
        assert!(pods.pod("p1").is_none());
    }

    #[test]
    fn a_relisting_keeps_an_unlabelled_claim_and_drops_a_vanished_one() {
        let pods = Pods::new();
        pods.add_claimed(claimed("p1"));
        pods.add_claimed(claimed("p2"));
        // p1 listed still unlabelled (its claim not recorded yet); p2 gone.
        pods.replace_all(vec![], vec![pool_pod("p1", true)]);
        assert!(pods.pod("p1").is_some());
        assert!(pods.pod("p2").is_none());
        assert_eq!(
            pods.pool_available(Runtime::Standard, None),
            0,
            "p1 is not offered"
        );
    }

    #[test]
    fn a_function_that_asks_for_more_memory_than_a_pool_pod_has_is_not_claimed_onto_it() {
        let pods = Pods::new();
        pods.apply_pool(pool_pod("p1", true));
        assert_eq!(pods.pool_available(Runtime::Standard, Some(1 << 30)), 0);
        assert!(
            pods.take_pool_pod(Runtime::Standard, Some(1 << 30))
                .is_none()
        );
        assert!(
            pods.take_pool_pod(Runtime::Standard, Some(128 << 20))
                .is_some()
        );
    }
}
