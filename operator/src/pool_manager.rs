//! The warm pool's loop, run by the leader: it makes sure the pool's anchor ConfigMap and
//! NetworkPolicy exist, watches the pool's pods, the SkyFunctions and their Deployments, and
//! applies [`crate::pool::plan`] every 250 ms and on every change. Decisions live in
//! [`crate::pool`] and [`crate::desired`]; this module only does the I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use skython_crds::{Runtime, SkyFunction};
use skython_runner_pod::wire;
use tokio::sync::Notify;

use crate::controller::MANAGER;
use crate::desired::{
    MANAGED_BY_SELECTOR, OperatorConfig, POOL_TEMPLATE_ANNOTATION, PoolConfig, pool_anchor,
    pool_network_policy, pool_pod,
};
use crate::metrics::OperatorMetrics;
use crate::pool::{Observed, PlanSettings, PodState, PoolAction, RUNTIMES, Target, plan, state};

/// How often the plan runs without a change (a refill that is due, an idle claim).
const TICK: Duration = Duration::from_millis(250);
/// How long to wait before setting up again after a failure (RBAC, the API server away).
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
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let (pods, pods_w) = reflector::store();
    let (functions, functions_w) = reflector::store();
    let (deployments, deployments_w) = reflector::store();
    let events = stream::select_all([
        watcher(
            pods_api.clone(),
            watcher::Config::default().labels(wire::POOL_LABEL),
        )
        .default_backoff()
        .reflect(pods_w)
        .map(|e| e.map(drop))
        .boxed(),
        watcher(
            Api::<SkyFunction>::namespaced(client.clone(), &namespace),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(functions_w)
        .map(|e| e.map(drop))
        .boxed(),
        watcher(
            Api::<Deployment>::namespaced(client.clone(), &namespace),
            watcher::Config::default().labels(MANAGED_BY_SELECTOR),
        )
        .default_backoff()
        .reflect(deployments_w)
        .map(|e| e.map(drop))
        .boxed(),
    ]);
    let stores = Stores {
        pods,
        functions,
        deployments,
    };
    let changed = Notify::new();
    tokio::select! {
        () = stop => {}
        () = drive(events, &changed) => {}
        () = manage(&client, &namespace, &cfg, &pool, &metrics, stores, pods_api, &changed) => {}
    }
    metrics.pool_pods.reset();
}

/// Feeds the reflectors (the stores fill as the watches are read), and says when something
/// changed.
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
    pods: Store<Pod>,
    functions: Store<SkyFunction>,
    deployments: Store<Deployment>,
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

#[allow(clippy::too_many_arguments)]
async fn manage(
    client: &Client,
    namespace: &str,
    cfg: &OperatorConfig,
    pool: &PoolConfig,
    metrics: &OperatorMetrics,
    stores: Stores,
    api: Api<Pod>,
    changed: &Notify,
) {
    let templates = loop {
        match set_up(client, namespace, cfg, pool).await {
            Ok(templates) => break templates,
            Err(e) => {
                tracing::warn!(retry_in = ?RETRY, "setting up the warm pool: {e}");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let settings = PlanSettings {
        targets: templates
            .iter()
            .map(|(runtime, pod)| Target {
                runtime: *runtime,
                size: pool.size(*runtime),
                template: pod
                    .annotations()
                    .get(POOL_TEMPLATE_ANNOTATION)
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect(),
        refill_interval: SignedDuration::try_from_secs_f64(1.0 / pool.refill_per_second)
            .unwrap_or(SignedDuration::MAX),
    };
    // Before the first lists are in, every pod would look missing.
    let _ = tokio::join!(
        stores.pods.wait_until_ready(),
        stores.functions.wait_until_ready(),
        stores.deployments.wait_until_ready(),
    );
    tracing::info!(
        namespace,
        size = pool.size,
        size_full = pool.size_full,
        refill_per_second = pool.refill_per_second,
        "warm pool running"
    );
    let mut in_flight = InFlight::default();
    let mut last_created: HashMap<Runtime, Timestamp> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = changed.notified() => {}
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
        count(metrics, &observed.pods);
        let now = Timestamp::now();
        for action in plan(now, &settings, &observed, &last_created) {
            match action {
                PoolAction::Create(runtime) => {
                    last_created.insert(runtime, now);
                    let Some((_, template)) = templates.iter().find(|(r, _)| *r == runtime) else {
                        continue;
                    };
                    match api.create(&PostParams::default(), template).await {
                        Ok(pod) => {
                            tracing::info!(runtime = runtime.as_str(), pod = %pod.name_any(), "pool pod created");
                            metrics
                                .pool_created
                                .with_label_values(&[runtime.as_str()])
                                .inc();
                            in_flight.created.push((Instant::now(), pod));
                        }
                        Err(e) => {
                            tracing::warn!(runtime = runtime.as_str(), "creating a pool pod: {e}")
                        }
                    }
                }
                PoolAction::Delete {
                    pod,
                    runtime,
                    function,
                    reason,
                } => {
                    let deleted = match api.delete(&pod, &DeleteParams::default()).await {
                        Ok(_) => true,
                        Err(kube::Error::Api(s)) if s.is_not_found() => true,
                        Err(e) => {
                            tracing::warn!(%pod, "deleting a pool pod: {e}");
                            false
                        }
                    };
                    if deleted {
                        tracing::info!(
                            %pod,
                            %runtime,
                            function = function.as_deref().unwrap_or(""),
                            reason = reason.as_str(),
                            "pool pod retired"
                        );
                        metrics
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

/// Makes sure the anchor and the NetworkPolicy exist; returns the pod to create per runtime.
async fn set_up(
    client: &Client,
    namespace: &str,
    cfg: &OperatorConfig,
    pool: &PoolConfig,
) -> Result<Vec<(Runtime, Pod)>, SetUpError> {
    let anchors: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    // The chart makes the anchor; only an operator run without it makes its own. Never
    // recreated while running: its deletion means the pool should go.
    let anchor = match anchors.get_opt(&pool.name).await? {
        Some(anchor) => anchor,
        None => {
            tracing::info!(name = %pool.name, "creating the warm pool's anchor ConfigMap");
            anchors
                .create(&PostParams::default(), &pool_anchor(namespace, pool))
                .await?
        }
    };
    let policy = pool_network_policy(&anchor, cfg, pool)?;
    Api::<NetworkPolicy>::namespaced(client.clone(), namespace)
        .patch(
            &pool.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&policy),
        )
        .await?;
    RUNTIMES
        .into_iter()
        .map(|runtime| Ok((runtime, pool_pod(runtime, &anchor, cfg, pool)?)))
        .collect()
}

#[derive(Debug, thiserror::Error)]
enum SetUpError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Desired(#[from] crate::desired::DesiredError),
}

/// The pods-by-state gauge, zero for a runtime or state with none.
fn count(metrics: &OperatorMetrics, pods: &[&Pod]) {
    let mut counts: BTreeMap<(String, PodState), i64> = RUNTIMES
        .iter()
        .flat_map(|r| PodState::ALL.map(|s| ((r.as_str().to_string(), s), 0)))
        .collect();
    for pod in pods {
        if let (Some(runtime), Some(s)) = (crate::pool::runtime_label(pod), state(pod)) {
            *counts.entry((runtime.to_string(), s)).or_default() += 1;
        }
    }
    for ((runtime, s), n) in counts {
        metrics
            .pool_pods
            .with_label_values(&[&runtime, s.as_str()])
            .set(n);
    }
}
