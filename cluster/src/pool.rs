//! Claiming warm pool pods: a call for a function with no pod of its own takes an unclaimed
//! pool pod (the operator keeps a few per runtime running, zygote warm, no function), sends it
//! the function signed with the pool key, and routes to it as soon as it answers, tens of
//! milliseconds instead of a pod's start.
//!
//! Nothing on the call's path waits for the API server: the claim is this gateway's choice
//! (`Pods::take_pool_pod`; the pod itself accepts one specialisation only, so two replicas that
//! pick the same pod cannot both have it: the second hears 409 and takes another), and it is
//! recorded on the Pod afterwards (the function's labels, who claimed it and when, the version,
//! and the SkyFunction as its controller, so the function's ReplicaSet never adopts it and its
//! deletion takes the pod along). The labels put the pod under its function's NetworkPolicy and
//! in every gateway's routing; the operator retires it once the function's Deployment serves,
//! or after `idleSecondsToZero`. A claimed pod never returns to the pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{Patch, PatchParams};
use skython_crds::SkyFunction;
use skython_operator::desired::{CHECKSUM_ANNOTATION, checksum};
use skython_runner_pod::wire::{self, PoolKey};

use crate::FunctionRef;
use crate::metrics::ClusterMetrics;
use crate::pods::{FUNCTION_LABEL, PodView, Pods, PoolPodView};
use crate::router::{ScaleUp, Target};

/// How long a pool pod may take to load a function (its own imports included).
const SPECIALISE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pool pods tried for one claim when they refuse (taken by another replica) or cannot be reached.
const CLAIM_ATTEMPTS: usize = 3;

/// Whether one more pool pod should be claimed for a function: only while no pod serves it (a
/// cold start, and the burst that came with it: the claims under way count), and only as many
/// as the waiting calls need (`concurrency` calls per pod). Once a pod serves, more calls wait
/// for it or for the Deployment's pods, which the autoscaler scales: a function under load
/// does not keep taking the pool's pods as they are made.
pub fn should_claim(pods: usize, pending: u32, concurrency: u32, waiting: u32) -> bool {
    pods == 0 && pending.saturating_mul(concurrency.max(1)) < waiting
}

/// The longest load error kept on a burnt pod's annotation (the gateway logs all of it).
const LOAD_ERROR_ANNOTATED: usize = 1000;

/// The merge patch recording a claim on the Pod: the function's labels (its NetworkPolicy and
/// every gateway's routing select by them), who claimed it and when, the version it serves,
/// and the SkyFunction as its only owner and controller. `load_error`: why the function did
/// not load there (the pod serves nothing; the operator retires it).
pub fn claim_patch(
    f: &SkyFunction,
    claimed_by: &str,
    at: jiff::Timestamp,
    load_error: Option<&str>,
) -> serde_json::Value {
    let owner = f.controller_owner_ref(&());
    let mut patch = serde_json::json!({
        "metadata": {
            "labels": {
                FUNCTION_LABEL: f.metadata.name,
                "skython.io/owner": f.spec.owner,
                "skython.io/endpoint": f.spec.endpoint,
            },
            "annotations": {
                wire::CLAIMED_BY_ANNOTATION: claimed_by,
                wire::CLAIMED_AT_ANNOTATION: at.to_string(),
                CHECKSUM_ANNOTATION: checksum(f),
            },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        }
    });
    if let Some(e) = load_error {
        let mut e = e.trim().to_string();
        if let Some((cut, _)) = e.char_indices().nth(LOAD_ERROR_ANNOTATED) {
            e.truncate(cut);
            e.push_str("… (cut; the gateway's log has all of it)");
        }
        patch["metadata"]["annotations"][wire::LOAD_FAILED_ANNOTATION] = e.into();
    }
    patch
}

/// What a pool pod is sent: the function as its Deployment's pods see it, and its entry
/// function when the operator has read it (the pod then need not).
pub fn specialise_request(
    pod_uid: &str,
    function: &FunctionRef,
    f: &SkyFunction,
) -> wire::Specialise {
    wire::Specialise {
        pod_uid: pod_uid.to_string(),
        function: function.to_string(),
        spec: skython_crds::SkyFunctionSpec {
            replicas: None,
            ..f.spec.clone()
        },
        entrypoint: f.checked_entrypoint().map(String::from),
    }
}

/// The memory the function asks for per pod (a pool pod with less would fail it).
fn memory(t: &Target) -> Option<u64> {
    skython_crds::parse_memory_bytes(&t.object.spec.resources.memory)
}

/// How one attempt at a pool pod ended.
#[derive(Debug)]
enum Attempt {
    Specialised,
    /// Another gateway replica specialised it first (409).
    Refused,
    /// The pod could not be reached or answered oddly: another pod may do.
    Unreachable(String),
    /// The function cannot load (422): no pod would do better.
    Failed(String),
}

/// Versions of functions that failed to load in a pool pod. They are not claimed for again:
/// each try would burn another pool pod (a broken function called in a loop would drain the
/// pool); their calls take the Deployment path, whose pods report the error.
#[derive(Debug, Default)]
pub struct LoadFailures(HashMap<FunctionRef, String>);

impl LoadFailures {
    pub fn record(&mut self, f: &FunctionRef, version: &str) {
        self.0.insert(f.clone(), version.to_string());
    }

    /// Whether `version` of `f` failed to load in a pool pod (a newer version may be claimed).
    pub fn blocks(&self, f: &FunctionRef, version: &str) -> bool {
        self.0.get(f).is_some_and(|v| v == version)
    }
}

pub struct Pool {
    client: kube::Client,
    pods: Arc<Pods>,
    key: Arc<PoolKey>,
    /// This gateway's name in the claim annotation.
    claimed_by: String,
    http: reqwest::Client,
    /// Asks for the function's scale-up when a claim that covered its calls ends without a pod.
    scale_up: ScaleUp,
    metrics: Arc<ClusterMetrics>,
    /// Claims under way, per function.
    pending: Mutex<HashMap<FunctionRef, u32>>,
    load_failures: Mutex<LoadFailures>,
}

impl Pool {
    pub fn new(
        client: kube::Client,
        pods: Arc<Pods>,
        key: Arc<PoolKey>,
        claimed_by: String,
        scale_up: ScaleUp,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .build()?;
        Ok(Arc::new(Pool {
            client,
            pods,
            key,
            claimed_by,
            http,
            scale_up,
            metrics,
            pending: Mutex::default(),
            load_failures: Mutex::default(),
        }))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<FunctionRef, u32>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims under way (specialising, or not yet recorded on the pod), per function.
    pub fn claiming(&self) -> HashMap<FunctionRef, u32> {
        self.pending().clone()
    }

    fn load_failures(&self) -> std::sync::MutexGuard<'_, LoadFailures> {
        self.load_failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call of `t` waits with `waiting - 1` others: claims a pool pod for it if one is due
    /// and there is one. Returns at once, with whether claims under way cover the call; the
    /// claim goes on in its own task and wakes the function's waiting calls when the pod
    /// serves (or asks for the function's scale-up when it ends without a pod).
    pub fn claim_for(self: &Arc<Self>, t: &Target, waiting: u32) -> bool {
        let runtime = t.object.spec.runtime;
        {
            let mut pending = self.pending();
            let n = pending.get(&t.function).copied().unwrap_or(0);
            let pods = self.pods.backends(&t.function).len();
            if !should_claim(pods, n, t.concurrency, waiting) {
                return pods == 0 && n > 0;
            }
            // Only now: the checksum hashes the source, and calls queueing behind busy pods
            // pass here too.
            if self
                .load_failures()
                .blocks(&t.function, &checksum(&t.object))
            {
                return false;
            }
            if self.pods.pool_available(runtime, memory(t)) == 0 {
                self.metrics
                    .pool_claims
                    .with_label_values(&[runtime.as_str(), "miss"])
                    .inc();
                return false;
            }
            pending.insert(t.function.clone(), n + 1);
        }
        let pool = self.clone();
        let t = t.clone();
        tokio::spawn(async move {
            let claimed = pool.claim(&t).await;
            {
                let mut pending = pool.pending();
                if let Some(n) = pending.get_mut(&t.function) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        pending.remove(&t.function);
                    }
                }
            }
            // After the claim is off the books: the autoscaler holds scale-ups claims cover.
            if !claimed {
                (pool.scale_up)(&t.function);
            }
        });
        true
    }

    /// Tries pool pods until one serves `t` (or none is left, or the function cannot load);
    /// whether one does.
    async fn claim(&self, t: &Target) -> bool {
        let runtime = t.object.spec.runtime.as_str();
        for _ in 0..CLAIM_ATTEMPTS {
            let Some((pod, addr)) = self.pods.take_pool_pod(t.object.spec.runtime, memory(t))
            else {
                self.metrics
                    .pool_claims
                    .with_label_values(&[runtime, "miss"])
                    .inc();
                return false;
            };
            let started = Instant::now();
            let attempt = self.specialise(&pod, addr, t).await;
            let outcome = match &attempt {
                Attempt::Specialised => "hit",
                Attempt::Refused => "refused",
                Attempt::Unreachable(_) | Attempt::Failed(_) => "failed",
            };
            self.metrics
                .pool_claims
                .with_label_values(&[runtime, outcome])
                .inc();
            match attempt {
                Attempt::Specialised => {
                    self.metrics
                        .pool_specialise
                        .with_label_values(&[runtime])
                        .observe(started.elapsed().as_secs_f64());
                    tracing::info!(function = %t.label, pod = %pod.name, took_ms = started.elapsed().as_millis() as u64, "claimed a pool pod");
                    self.pods.add_claimed(PodView {
                        uid: pod.uid.clone(),
                        name: pod.name.clone(),
                        function: t.function.clone(),
                        ip: Some(addr.ip()),
                        port: addr.port(),
                        ready: true,
                        deleting: false,
                    });
                    self.record(&pod, t, None).await;
                    return true;
                }
                Attempt::Refused => {
                    tracing::debug!(function = %t.label, pod = %pod.name, "a pool pod was claimed by another gateway first");
                }
                Attempt::Unreachable(why) => {
                    tracing::warn!(function = %t.label, pod = %pod.name, "a pool pod could not be specialised: {why}");
                }
                Attempt::Failed(why) => {
                    // The function's code may have run there: the pod is the function's now
                    // (recorded, so the operator retires it and no gateway offers it again).
                    tracing::warn!(function = %t.label, pod = %pod.name, "the function did not load in a pool pod (its calls take the Deployment path from now on): {why}");
                    self.load_failures()
                        .record(&t.function, &checksum(&t.object));
                    self.record(&pod, t, Some(&why)).await;
                    return false;
                }
            }
        }
        false
    }

    async fn specialise(&self, pod: &PoolPodView, addr: SocketAddr, t: &Target) -> Attempt {
        let request = specialise_request(&pod.uid, &t.function, &t.object);
        let body = match serde_json::to_vec(&request) {
            Ok(b) => b,
            Err(e) => return Attempt::Failed(format!("encoding the function: {e}")),
        };
        let signature = self.key.sign(&body);
        let res = self
            .http
            .post(format!("http://{addr}{}", wire::SPECIALISE_PATH))
            .header("content-type", "application/json")
            .header(wire::SIGNATURE_HEADER, signature)
            .body(body)
            .timeout(SPECIALISE_TIMEOUT)
            .send()
            .await;
        let resp = match res {
            Ok(r) => r,
            Err(e) => return Attempt::Unreachable(e.to_string()),
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        match status.as_u16() {
            200..=299 => Attempt::Specialised,
            409 => Attempt::Refused,
            422 => Attempt::Failed(text),
            _ => Attempt::Unreachable(format!("answered {status}: {text}")),
        }
    }

    /// Writes the claim on the Pod (after the call has its pod: off the call's path). A pod
    /// whose claim cannot be recorded keeps serving this gateway; the others take it for
    /// unclaimed until the write lands, and their specialise is refused.
    async fn record(&self, pod: &PoolPodView, t: &Target, load_error: Option<&str>) {
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &pod.namespace);
        let now = jiff::Timestamp::now();
        let patch = claim_patch(&t.object, &self.claimed_by, now, load_error);
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            match api
                .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.metrics
                        .pool_claim
                        .with_label_values(&[t.object.spec.runtime.as_str()])
                        .observe(started.elapsed().as_secs_f64());
                    return;
                }
                Err(e) if attempt == 5 => {
                    tracing::error!(function = %t.label, pod = %pod.name, "recording the claim on the pod failed (the gateway needs `patch pods`): {e}");
                }
                Err(e) => {
                    tracing::warn!(function = %t.label, pod = %pod.name, "recording the claim failed, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_a_pod_serves_claims_nothing() {
        assert!(!should_claim(1, 0, 1, 10));
    }

    #[test]
    fn a_cold_function_claims_until_the_claims_cover_the_waiting_calls() {
        assert!(should_claim(0, 0, 1, 1), "the first call claims");
        assert!(
            !should_claim(0, 1, 1, 1),
            "one claim serves one waiting call"
        );
        assert!(should_claim(0, 1, 1, 2));
        assert!(
            !should_claim(0, 1, 4, 4),
            "a pod of concurrency 4 serves four"
        );
        assert!(should_claim(0, 1, 4, 5));
    }

    #[test]
    fn a_version_that_failed_to_load_is_not_claimed_for_again_but_a_new_one_is() {
        let f = FunctionRef {
            namespace: "fns".into(),
            name: "alice.hello".into(),
        };
        let mut failures = LoadFailures::default();
        assert!(!failures.blocks(&f, "v1"));
        failures.record(&f, "v1");
        assert!(failures.blocks(&f, "v1"));
        assert!(
            !failures.blocks(&f, "v2"),
            "a fixed version may be claimed for"
        );
        let other = FunctionRef {
            name: "bob.hello".into(),
            ..f.clone()
        };
        assert!(!failures.blocks(&other, "v1"));
    }

    #[test]
    fn a_specialise_request_names_the_entry_function_the_operator_read() {
        let mut f = SkyFunction::new(
            "alice.hello",
            skython_crds::SkyFunctionSpec::new("alice", "hello", "def hello(): pass"),
        );
        f.spec.replicas = Some(3);
        f.metadata.generation = Some(1);
        let function = FunctionRef {
            namespace: "fns".into(),
            name: "alice.hello".into(),
        };
        let unread = specialise_request("uid-1", &function, &f);
        assert_eq!(
            unread.entrypoint, None,
            "no status yet: the pod reads the source"
        );
        assert_eq!(unread.spec.replicas, None, "the pod has no say in scaling");
        assert_eq!(unread.function, "fns/alice.hello");
        f.status = Some(skython_crds::SkyFunctionStatus {
            observed_generation: Some(1),
            signature: Some(skython_crds::Signature {
                entrypoint: "hello".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let read = specialise_request("uid-1", &function, &f);
        assert_eq!(read.entrypoint.as_deref(), Some("hello"));
    }

    #[test]
    fn a_claim_labels_the_pod_for_its_function_and_makes_the_function_its_controller() {
        let mut f = SkyFunction::new(
            "alice.hello",
            skython_crds::SkyFunctionSpec::new("alice", "hello", "def hello(): pass"),
        );
        f.metadata.namespace = Some("fns".into());
        f.metadata.uid = Some("uid-1".into());
        let at: jiff::Timestamp = "2026-12-07T03:00:00Z".parse().unwrap();
        let p = claim_patch(&f, "gw-1", at, None);
        let m = &p["metadata"];
        assert_eq!(m["labels"][FUNCTION_LABEL], "alice.hello");
        assert_eq!(m["labels"]["skython.io/owner"], "alice");
        assert_eq!(m["labels"]["skython.io/endpoint"], "hello");
        assert_eq!(m["annotations"][wire::CLAIMED_BY_ANNOTATION], "gw-1");
        assert_eq!(
            m["annotations"][wire::CLAIMED_AT_ANNOTATION],
            "2026-12-07T03:00:00Z"
        );
        assert_eq!(m["annotations"][CHECKSUM_ANNOTATION], checksum(&f));
        let owners = m["ownerReferences"].as_array().unwrap();
        assert_eq!(owners.len(), 1, "the pool's anchor is no longer an owner");
        assert_eq!(owners[0]["uid"], "uid-1");
        assert_eq!(owners[0]["controller"], true);
        assert!(m["annotations"][wire::LOAD_FAILED_ANNOTATION].is_null());
    }

    #[test]
    fn a_claim_whose_function_did_not_load_says_why_on_the_pod() {
        let f = SkyFunction::new(
            "alice.hello",
            skython_crds::SkyFunctionSpec::new("alice", "hello", "import nope"),
        );
        let at = jiff::Timestamp::UNIX_EPOCH;
        let p = claim_patch(&f, "gw-1", at, Some("No module named 'nope'\n"));
        assert_eq!(
            p["metadata"]["annotations"][wire::LOAD_FAILED_ANNOTATION],
            "No module named 'nope'"
        );
        let long = "é".repeat(5000);
        let p = claim_patch(&f, "gw-1", at, Some(&long));
        let kept = p["metadata"]["annotations"][wire::LOAD_FAILED_ANNOTATION]
            .as_str()
            .unwrap();
        assert!(kept.starts_with(&"é".repeat(LOAD_ERROR_ANNOTATED)));
        assert!(
            kept.ends_with("(cut; the gateway's log has all of it)"),
            "{kept}"
        );
    }
}
