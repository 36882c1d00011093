//! The reconcile loop: for each `SkyFunction`, check the source, apply the desired children with
//! server-side apply, and write the status when it changed. Decisions live in [`crate::desired`]
//! and [`crate::status`]; this module only does the I/O.
//! Children are applied by [`crate::children`], only those that need it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use skython_crds::SkyFunction;
use tracing::Instrument;

use crate::children::{Applied, ChildStores, apply_children};
use crate::desired::{
    CLAIMED_PODS_SELECTOR, DesiredError, MANAGED_BY_SELECTOR, OperatorConfig, SPEC_ANNOTATION,
    desired,
};
use crate::inspect::SourceInspector;
use crate::metrics::OperatorMetrics;
use crate::pool::serving_claims;
use crate::status::{
    Claim, Observed, Readiness, SourceCheck, claim, next_status, readiness, source_error_message,
};

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "skython-operator";
/// How often a healthy function is reconciled anyway (drift, e.g. a child deleted by hand
/// when its watch event was missed).
const RESYNC: Duration = Duration::from_secs(300);
/// How often a function whose endpoint another one holds looks again, so that it takes over
/// soon after the holder is deleted (nothing else tells it).
const TAKEN_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action}: {source}")]
    Kube { action: String, source: kube::Error },
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error("checking the source: {0}")]
    Inspect(#[from] skython_runner::Error),
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Desired(_) => "desired",
            Error::Inspect(_) => "inspect",
        }
    }
}

/// What the controller watches, as stores the reconciler reads.
pub struct Watched {
    /// Every `SkyFunction`: who holds which endpoint.
    pub functions: Store<SkyFunction>,
    /// The pool pods claimed for functions: they count toward their replicas.
    pub claimed_pods: Store<Pod>,
    pub children: ChildStores,
}

pub struct Context {
    pub client: Client,
    pub watched: Watched,
    /// Resolves once the functions and the claimed pods are listed ([`stores_ready`]).
    stores_ready: Shared<BoxFuture<'static, ()>>,
    applied: Applied,
    pub config: OperatorConfig,
    pub inspector: SourceInspector,
    pub metrics: Arc<OperatorMetrics>,
    pub recorder: Recorder,
    /// Consecutive failures per function, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        watched: Watched,
        config: OperatorConfig,
        inspector: SourceInspector,
        metrics: Arc<OperatorMetrics>,
        reporter: Reporter,
    ) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            stores_ready: stores_ready(&watched),
            watched,
            applied: Applied::default(),
            config,
            inspector,
            metrics,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Resolves, for every reconcile that awaits a clone of it, once the functions and the claimed
/// pods have their first list. Not `Store::wait_until_ready` in each reconcile: kube-runtime's
/// wakes only the task that polled it last (a oneshot receiver keeps one waker), and the
/// reconciles that a restarted operator starts at once would wait forever but one.
fn stores_ready(w: &Watched) -> Shared<BoxFuture<'static, ()>> {
    let (functions, claimed_pods) = (w.functions.clone(), w.claimed_pods.clone());
    async move {
        let _ = functions.wait_until_ready().await;
        let _ = claimed_pods.wait_until_ready().await;
    }
    .boxed()
    .shared()
}

fn key(f: &SkyFunction) -> String {
    format!("{}/{}", f.namespace().unwrap_or_default(), f.name_any())
}

/// Exponential backoff per function: 1 s, 2 s, 4 s … up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(9)).min(Duration::from_secs(300))
}

pub async fn reconcile(f: Arc<SkyFunction>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!("reconcile", function = %key(&f));
    reconcile_function(f, ctx).instrument(span).await
}

async fn reconcile_function(f: Arc<SkyFunction>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let name = f.name_any();
    let ns = f
        .namespace()
        .ok_or(DesiredError::MissingMetadata("namespace"))?;
    // Before the first lists are in, an older claim may be missing, and claimed pods that
    // serve the function (without them it would start pods of its own): wait for them.
    ctx.stores_ready.clone().await;
    let functions = &ctx.watched.functions;
    let claim = claim(&f, functions.state().iter().map(AsRef::as_ref));
    let check = ctx.inspector.check(&f.spec).await?;
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    let child = crate::desired::child_name(&name);
    let claimed = serving_claims(
        &f,
        ctx.watched.claimed_pods.state().iter().map(AsRef::as_ref),
    );
    let deployment = match (&claim, &check) {
        (Claim::Holds, SourceCheck::Valid(_)) => {
            let children = desired(&f, &ctx.config, claimed)?;
            let w = &ctx.watched;
            let deployment =
                apply_children(&ctx.client, &w.children, &ctx.applied, &children).await?;
            ctx.applied.prune(functions);
            Some(deployment)
        }
        // Another function serves the endpoint: this one runs no pods (those of an endpoint it
        // held before are stopped; its other children cost nothing and are reused later).
        (Claim::TakenBy(_), _) => {
            let deleted = deployments
                .delete(&child, &DeleteParams::background())
                .await;
            match deleted {
                Ok(_) => None,
                Err(kube::Error::Api(status)) if status.is_not_found() => None,
                Err(source) => {
                    return Err(Error::Kube {
                        action: format!("deleting Deployment {child}"),
                        source,
                    });
                }
            }
        }
        // Nothing is applied: a new function gets no pods, and an existing one keeps serving
        // its previous version (its ConfigMap is not touched either).
        (Claim::Holds, SourceCheck::Invalid(_)) => {
            deployments
                .get_opt(&child)
                .await
                .map_err(|source| Error::Kube {
                    action: format!("reading Deployment {child}"),
                    source,
                })?
        }
    };
    let observed = Observed {
        claim: &claim,
        check: &check,
        deployment: deployment.as_ref(),
        claimed,
    };
    let status = next_status(
        &f,
        &observed,
        ctx.config.gateway_url.as_deref(),
        jiff::Timestamp::now(),
    );
    if f.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({ "status": status });
        Api::<SkyFunction>::namespaced(ctx.client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::Kube {
                action: "writing the status".into(),
                source,
            })?;
        publish_transition(&f, &observed, &ctx).await;
    }
    ctx.failures().remove(&key(&f));
    let outcome = match (&claim, &check) {
        (Claim::TakenBy(_), _) => "endpoint_taken",
        (Claim::Holds, SourceCheck::Valid(_)) => "applied",
        (Claim::Holds, SourceCheck::Invalid(_)) => "invalid_source",
    };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    Ok(match (claim, check) {
        (Claim::TakenBy(_), _) => Action::requeue(TAKEN_RECHECK),
        (Claim::Holds, SourceCheck::Valid(_)) => Action::requeue(RESYNC),
        // Only an edit of the function can fix its source.
        (Claim::Holds, SourceCheck::Invalid(_)) => Action::await_change(),
    })
}

/// An event when the `Ready` condition changes reason, so `kubectl describe` tells the story.
async fn publish_transition(f: &SkyFunction, observed: &Observed<'_>, ctx: &Context) {
    let r = readiness(observed);
    let before = f
        .status
        .as_ref()
        .and_then(|s| s.ready_condition())
        .map(|c| c.reason.clone());
    if before.as_deref() == Some(r.reason) {
        return;
    }
    let event = Event {
        type_: if r.is_warning() {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: r.reason.into(),
        note: Some(event_note(observed, &r)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &f.object_ref(&())).await {
        tracing::warn!("publishing an event failed: {e}");
    }
}

/// The event's note: the condition's message, but a source error without what keeps serving.
fn event_note(observed: &Observed, r: &Readiness) -> String {
    match (observed.claim, observed.check) {
        (Claim::Holds, SourceCheck::Invalid(e)) => source_error_message(e),
        _ => r.message.clone(),
    }
}

pub fn error_policy(f: Arc<SkyFunction>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    ctx.metrics
        .failures
        .with_label_values(&[error.kind()])
        .inc();
    let n = {
        let mut failures = ctx.failures();
        let n = failures.entry(key(&f)).or_default();
        *n += 1;
        *n
    };
    let delay = backoff(n - 1);
    tracing::warn!(function = %key(&f), attempt = n, retry_in = ?delay, "reconcile failed: {error}");
    Action::requeue(delay)
}

/// A store of `K` filled by a watch of `config`, and the objects the watch touches (each once
/// the store has it), to trigger their owners' reconciles.
pub(crate) fn store_and_triggers<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let triggers = watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .touched_objects();
    (store, triggers)
}

/// What a store keeps of an object: not its managed fields, nor a pod's copy of its function
/// ([`SPEC_ANNOTATION`], up to 128 KiB a pod), which no decision reads.
fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(SPEC_ANNOTATION);
    }
}

/// Runs the controller until `shutdown` resolves, then lets reconciles in flight finish.
/// `context` makes the reconcilers' context from the stores the controller watches.
pub async fn run(
    client: Client,
    namespace: Option<&str>,
    context: impl FnOnce(Watched) -> Context,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let children = watcher::Config::default().labels(MANAGED_BY_SELECTOR);
    let controller = Controller::new(
        api::<SkyFunction>(&client, namespace),
        watcher::Config::default(),
    );
    // Claimed pods and children trigger their function's reconcile (their owner), once the
    // stores the reconcile reads have them.
    let (claimed_pods, claimed) = store_and_triggers(
        api::<Pod>(&client, namespace),
        watcher::Config::default().labels(CLAIMED_PODS_SELECTOR),
    );
    let (deployments, deployment_changes) =
        store_and_triggers(api::<Deployment>(&client, namespace), children.clone());
    let (config_maps, config_map_changes) =
        store_and_triggers(api::<ConfigMap>(&client, namespace), children.clone());
    let (services, service_changes) =
        store_and_triggers(api::<Service>(&client, namespace), children.clone());
    let (network_policies, network_policy_changes) =
        store_and_triggers(api::<NetworkPolicy>(&client, namespace), children);
    let ctx = Arc::new(context(Watched {
        functions: controller.store(),
        claimed_pods,
        children: ChildStores {
            config_maps,
            services,
            network_policies,
            deployments,
        },
    }));
    controller
        .owns_stream(claimed)
        .owns_stream(deployment_changes)
        .owns_stream(config_map_changes)
        .owns_stream(service_changes)
        .owns_stream(network_policy_changes)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!("controller: {e}");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_keeps_no_pods_copy_of_its_function_nor_managed_fields() {
        let checksum = (
            crate::desired::CHECKSUM_ANNOTATION.to_string(),
            "c1".to_string(),
        );
        let mut pod = Pod::default();
        pod.metadata.annotations =
            Some([(SPEC_ANNOTATION.into(), "{}".into()), checksum.clone()].into());
        pod.metadata.managed_fields = Some(vec![Default::default()]);
        slim(&mut pod);
        assert_eq!(pod.metadata.annotations, Some([checksum].into()));
        assert_eq!(pod.metadata.managed_fields, None);
    }

    #[tokio::test]
    async fn every_reconcile_waiting_for_the_stores_wakes_when_they_are_listed() {
        let (functions, mut functions_writer) = reflector::store::<SkyFunction>();
        let (claimed_pods, mut pods_writer) = reflector::store::<Pod>();
        let watched = Watched {
            functions,
            claimed_pods,
            children: ChildStores {
                config_maps: reflector::store().0,
                services: reflector::store().0,
                network_policies: reflector::store().0,
                deployments: reflector::store().0,
            },
        };
        let ready = stores_ready(&watched);
        let waiting: Vec<_> = (0..3).map(|_| tokio::spawn(ready.clone())).collect();
        // All of them wait before the lists are in.
        tokio::time::sleep(Duration::from_millis(50)).await;
        functions_writer.apply_watcher_event(&watcher::Event::InitDone);
        pods_writer.apply_watcher_event(&watcher::Event::InitDone);
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .unwrap();
        }
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = (0..12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
