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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
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

impl PodView {
    /// `None` for a pod that is not a runner pod (no function label, no uid).
    pub fn of(pod: &Pod) -> Option<PodView> {
        let function = pod.labels().get(FUNCTION_LABEL)?.clone();
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
        Some(PodView {
            uid: pod.metadata.uid.clone()?,
            name: pod.name_any(),
            function: FunctionRef {
                namespace: pod.namespace()?,
                name: function,
            },
            ip: status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            port,
            ready,
            deleting: pod.metadata.deletion_timestamp.is_some(),
        })
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

    /// The watched pod with this uid.
    pub fn pod(&self, uid: &str) -> Option<PodView> {
        self.inner().pods.get(uid).cloned()
    }

    /// A Pod object appeared or changed.
    pub fn apply(&self, pod: PodView) {
        let f = pod.function.clone();
        {
            let mut inner = self.inner();
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
            let Some(pod) = inner.pods.remove(uid) else {
                return;
            };
            rebuild(&mut inner, &pod.function);
            pod.function
        };
        self.wake(&f);
    }

    /// The watch restarted: `pods` is everything there is.
    pub fn replace_all(&self, pods: Vec<PodView>) {
        let functions: Vec<FunctionRef> = {
            let mut inner = self.inner();
            let mut functions: Vec<FunctionRef> = inner.backends.keys().cloned().collect();
            inner.pods = pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
            let Inner {
                pods, announced, ..
            } = &mut *inner;
            announced.retain(|uid, _| pods.contains_key(uid));
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

/// Recomputes one function's backends, keeping the `Backend` of a pod whose address holds (its
/// in-flight count goes on).
fn rebuild(inner: &mut Inner, f: &FunctionRef) {
    let old = inner.backends.remove(f).unwrap_or_default();
    let mut fresh: Vec<Arc<Backend>> = Vec::new();
    for pod in inner.pods.values().filter(|p| &p.function == f) {
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
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(p)) => {
                if let Some(v) = PodView::of(&p) {
                    pods.apply(v);
                }
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = &p.metadata.uid {
                    pods.delete(uid);
                }
            }
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(p)) => listing.extend(PodView::of(&p)),
            Ok(watcher::Event::InitDone) => {
                pods.replace_all(std::mem::take(&mut listing));
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
}
