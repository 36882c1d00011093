//! The warm pool's loop, run by the leader: it makes sure the pool's anchor ConfigMap exists,
//! applies the pool's NetworkPolicy, watches the anchor, the runner pods (the pool's and the
//! functions'), the SkyFunctions and their Deployments, and applies [`crate::pool::plan`] on
//! every change and every 250 ms.
//! Decisions live in [`crate::pool`] and [`crate::desired`]; this module only does the I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use skython_crds::{Runtime, SkyFunction};
use tokio::sync::Notify;

use crate::controller::{MANAGER, store_and_triggers};
use crate::desired::{
    DesiredError, MANAGED_BY_SELECTOR, OperatorConfig, POOL_TEMPLATE_ANNOTATION, PoolConfig,
    RUNNER_PODS_SELECTOR, pool_anchor, pool_network_policy, pool_pod,
};
use crate::metrics::OperatorMetrics;
use crate::pool::{
    Observed, PlanSettings, PodState, PoolAction, RUNTIMES, Refills, Target, plan, runtime_label,
    state,
};

/// How often the plan runs without a change (a refill that is due, an idle claim).
const TICK: Duration = Duration::from_millis(250);
/// How long to wait before trying again after a failure (RBAC, the API server away).
const RETRY: Duration = Duration::from_secs(5);
/// How long a pod this loop created or deleted may take to show so in the watch; meanwhile
/// it is counted as the loop left it, so that a slow watch neither doubles a creation nor
/// repeats a deletion.
const SETTLE: Duration = Duration::from_secs(30);

/// Runs the pool in `namespace` until `stop` resolves.
pub async fn run(
    client: Client,
    namespace: String,
    cfg: OperatorConfig,
    pool: PoolConfig,
    metrics: Arc<OperatorMetrics>,
    stop: impl std::future::Future<Output = ()>,
) {
    let anchors = watched::<ConfigMap>(
        &client,
        &namespace,
        watcher::Config::default().fields(&format!("metadata.name={}", pool.name)),
    );
    // The functions' pods too: the pool yields to those that are starting.
    let pods = watched::<Pod>(
        &client,
        &namespace,
        watcher::Config::default().labels(RUNNER_PODS_SELECTOR),
    );
    let functions = watched::<SkyFunction>(&client, &namespace, watcher::Config::default());
    let deployments = watched::<Deployment>(
        &client,
        &namespace,
        watcher::Config::default().labels(MANAGED_BY_SELECTOR),
    );
    let events = stream::select_all([anchors.1, pods.1, functions.1, deployments.1]);
    let manager = Manager {
        pods_api: Api::namespaced(client.clone(), &namespace),
        client,
        namespace,
        cfg,
        pool,
        metrics,
    };
    let stores = Stores {
        anchor: anchors.0,
        pods: pods.0,
        functions: functions.0,
        deployments: deployments.0,
    };
    let changed = Notify::new();
    tokio::select! {
        () = stop => {}
        () = drive(events, &changed) => {}
        () = manager.manage(stores, &changed) => {}
    }
    manager.metrics.pool_pods.reset();
}

type Events = stream::BoxStream<'static, Result<(), watcher::Error>>;

/// A store of `K` in `namespace` and the watch that fills it.
fn watched<K>(client: &Client, namespace: &str, config: watcher::Config) -> (Store<K>, Events)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api = Api::<K>::namespaced(client.clone(), namespace);
    let (store, changes) = store_and_triggers(api, config);
    (store, changes.map(|e| e.map(drop)).boxed())
}

/// Reads the watches (the stores fill as they are read), and says when something changed.
async fn drive(
    mut events: impl stream::Stream<Item = Result<(), watcher::Error>> + Unpin,
    changed: &Notify,
) {
    while let Some(event) = events.next().await {
        match event {
            Ok(()) => changed.notify_one(),
            Err(e) => tracing::warn!("pool watch: {e}"),
        }
    }
}

struct Stores {
    /// The anchor ConfigMap, alone (a field selector on its name).
    anchor: Store<ConfigMap>,
    pods: Store<Pod>,
    functions: Store<SkyFunction>,
    deployments: Store<Deployment>,
}

struct Manager {
    client: Client,
    pods_api: Api<Pod>,
    namespace: String,
    cfg: OperatorConfig,
    pool: PoolConfig,
    metrics: Arc<OperatorMetrics>,
}

/// What the pool is made from while its anchor stays the same object.
struct Anchored {
    uid: String,
    /// The pod to create, per runtime.
    templates: Vec<(Runtime, Pod)>,
    settings: PlanSettings,
}

/// What this loop did that the watch may not show yet.
#[derive(Default)]
struct InFlight {
    created: Vec<(Instant, Pod)>,
    deleted: HashMap<String, Instant>,
}

impl InFlight {
    /// Forgets what the watch now shows, or what took too long to show.
    fn settle(&mut self, pods: &[Arc<Pod>]) {
        let seen: HashSet<String> = pods.iter().map(|p| p.name_any()).collect();
        let still_there: HashSet<String> = pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.name_any())
            .collect();
        self.created
            .retain(|(at, p)| at.elapsed() < SETTLE && !seen.contains(&p.name_any()));
        self.deleted
            .retain(|name, at| at.elapsed() < SETTLE && still_there.contains(name));
    }
}

impl Manager {
    async fn manage(&self, stores: Stores, changed: &Notify) {
        // The chart makes the anchor; only an operator run without it makes its own, and only
        // now: once running, a deleted anchor means the pool should go (an uninstall).
        while let Err(e) = self.ensure_anchor().await {
            tracing::warn!(retry_in = ?RETRY, "making the warm pool's anchor ConfigMap: {e}");
            tokio::time::sleep(RETRY).await;
        }
        // Before the first lists are in, every pod would look missing.
        let _ = tokio::join!(
            stores.anchor.wait_until_ready(),
            stores.pods.wait_until_ready(),
            stores.functions.wait_until_ready(),
            stores.deployments.wait_until_ready(),
        );
        let pool = &self.pool;
        tracing::info!(
            namespace = %self.namespace,
            size = pool.size,
            size_full = pool.size_full,
            refill_per_second = pool.refill_per_second,
            refill_yield_seconds = pool.refill_yield_seconds,
            "warm pool running"
        );
        // With no anchor, no pool: unclaimed pods go, claimed ones are still retired in time.
        let no_pool = PlanSettings {
            targets: RUNTIMES
                .map(|runtime| Target {
                    runtime,
                    size: 0,
                    template: String::new(),
                })
                .to_vec(),
            refill_interval: SignedDuration::MAX,
            refill_yield: SignedDuration::ZERO,
        };
        let mut anchored: Option<Anchored> = None;
        let mut retry_at = Instant::now();
        let mut in_flight = InFlight::default();
        let mut refills = Refills::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = changed.notified() => {}
            }
            let anchor = stores.anchor.state().into_iter().next();
            let uid = anchor.as_ref().and_then(|a| a.metadata.uid.clone());
            if uid != anchored.as_ref().map(|a| a.uid.clone()) {
                match anchor {
                    Some(anchor) if Instant::now() >= retry_at => {
                        match self.anchor_to(&anchor).await {
                            Ok(a) => anchored = Some(a),
                            Err(e) => {
                                tracing::warn!(retry_in = ?RETRY, "setting up the warm pool: {e}");
                                retry_at = Instant::now() + RETRY;
                            }
                        }
                    }
                    Some(_) => {}
                    None => {
                        tracing::warn!(name = %pool.name, "the warm pool's anchor ConfigMap is gone: no pool until it is back");
                        anchored = None;
                    }
                }
            }
            let pods = stores.pods.state();
            in_flight.settle(&pods);
            let functions = stores.functions.state();
            let deployments = stores.deployments.state();
            let observed = Observed {
                pods: pods
                    .iter()
                    .map(AsRef::as_ref)
                    .filter(|p| !in_flight.deleted.contains_key(&p.name_any()))
                    .chain(in_flight.created.iter().map(|(_, p)| p))
                    .collect(),
                functions: functions.iter().map(AsRef::as_ref).collect(),
                deployments: deployments.iter().map(AsRef::as_ref).collect(),
            };
            self.count(&observed.pods);
            let settings = anchored.as_ref().map_or(&no_pool, |a| &a.settings);
            let now = Timestamp::now();
            for action in plan(now, settings, &observed, &mut refills) {
                match action {
                    PoolAction::Create(runtime) => {
                        let template = anchored
                            .as_ref()
                            .and_then(|a| a.templates.iter().find(|(r, _)| *r == runtime));
                        if let Some((_, template)) = template
                            && let Some(pod) = self.create(runtime, template).await
                        {
                            in_flight.created.push((Instant::now(), pod));
                        }
                    }
                    PoolAction::Delete {
                        pod,
                        runtime,
                        function,
                        reason,
                    } => {
                        if self.delete(&pod).await {
                            tracing::info!(
                                %pod,
                                %runtime,
                                function = function.as_deref().unwrap_or(""),
                                reason = reason.as_str(),
                                "pool pod retired"
                            );
                            self.metrics
                                .pool_retired
                                .with_label_values(&[&runtime, reason.as_str()])
                                .inc();
                            in_flight.deleted.insert(pod, Instant::now());
                        }
                    }
                }
            }
        }
    }

    async fn ensure_anchor(&self) -> Result<(), kube::Error> {
        let anchors: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        if anchors.get_opt(&self.pool.name).await?.is_none() {
            tracing::info!(name = %self.pool.name, "creating the warm pool's anchor ConfigMap");
            let anchor = pool_anchor(&self.namespace, &self.pool);
            match anchors.create(&PostParams::default(), &anchor).await {
                Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// The pool owned by `anchor`: its NetworkPolicy applied, its pods' templates.
    async fn anchor_to(&self, anchor: &ConfigMap) -> Result<Anchored, SetUpError> {
        let policy = pool_network_policy(anchor, &self.cfg, &self.pool)?;
        Api::<NetworkPolicy>::namespaced(self.client.clone(), &self.namespace)
            .patch(
                &self.pool.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&policy),
            )
            .await?;
        let templates = RUNTIMES
            .into_iter()
            .map(|runtime| Ok((runtime, pool_pod(runtime, anchor, &self.cfg, &self.pool)?)))
            .collect::<Result<Vec<_>, DesiredError>>()?;
        let settings = PlanSettings {
            targets: templates
                .iter()
                .map(|(runtime, pod)| Target {
                    runtime: *runtime,
                    size: self.pool.size(*runtime),
                    template: pod
                        .annotations()
                        .get(POOL_TEMPLATE_ANNOTATION)
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect(),
            refill_interval: SignedDuration::try_from_secs_f64(1.0 / self.pool.refill_per_second)
                .unwrap_or(SignedDuration::MAX),
            refill_yield: SignedDuration::try_from_secs_f64(self.pool.refill_yield_seconds)
                .unwrap_or(SignedDuration::ZERO),
        };
        Ok(Anchored {
            uid: anchor.metadata.uid.clone().unwrap_or_default(),
            templates,
            settings,
        })
    }

    async fn create(&self, runtime: Runtime, template: &Pod) -> Option<Pod> {
        match self.pods_api.create(&PostParams::default(), template).await {
            Ok(pod) => {
                tracing::info!(runtime = runtime.as_str(), pod = %pod.name_any(), "pool pod created");
                self.metrics
                    .pool_created
                    .with_label_values(&[runtime.as_str()])
                    .inc();
                Some(pod)
            }
            Err(e) => {
                tracing::warn!(runtime = runtime.as_str(), "creating a pool pod: {e}");
                None
            }
        }
    }

    /// Deletes a pod with its grace period (a claimed one drains and finishes its calls).
    async fn delete(&self, pod: &str) -> bool {
        match self.pods_api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.is_not_found() => true,
            Err(e) => {
                tracing::warn!(%pod, "deleting a pool pod: {e}");
                false
            }
        }
    }

    /// The pods-by-state gauge, zero for a runtime or state with none.
    fn count(&self, pods: &[&Pod]) {
        let mut counts: BTreeMap<(String, PodState), i64> = RUNTIMES
            .iter()
            .flat_map(|r| PodState::ALL.map(|s| ((r.as_str().to_string(), s), 0)))
            .collect();
        for pod in pods {
            if let (Some(runtime), Some(s)) = (runtime_label(pod), state(pod)) {
                *counts.entry((runtime.to_string(), s)).or_default() += 1;
            }
        }
        for ((runtime, s), n) in counts {
            self.metrics
                .pool_pods
                .with_label_values(&[&runtime, s.as_str()])
                .set(n);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SetUpError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Desired(#[from] DesiredError),
}
