//! `ClusterPlatform`: the gateway's [`Platform`] on Kubernetes. It wires the registry
//! (SkyFunctions), the Pod watch, the router and the autoscaler, and serves the pods' internal
//! routes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use skython_crds::{SkyFunction, reason};
use skython_gateway::Limits;
use skython_gateway::Metrics;
use skython_gateway::access::CallPolicy;
use skython_gateway::error::{ApiError, ApiResult, ErrorCode};
use skython_gateway::platform::{Call, Called, Platform};
use skython_operator::leader::LeaseConfig;
use skython_store::{FunctionFilter, FunctionRecord, StateScope, Store};
use tracing::Instrument;

use crate::autoscaler::{Autoscaler, AutoscalerConfig, DemandSource};
use crate::internal::Internal;
use crate::metrics::ClusterMetrics;
use crate::peers::{Peers, Poke};
use crate::pods::{self, Pods};
use crate::pool::Pool;
use crate::registry::Registry;
use crate::router::{Claim, Router, RouterConfig, Target};
use crate::{FunctionRef, Load};

/// How long a deploy through the API waits for the operator's verdict on the new version.
const DEPLOY_WAIT: Duration = Duration::from_secs(30);

/// Whether the operator has said what became of the version it observed: ready, or a reason
/// that waiting will not change.
fn reported(r: &FunctionRecord) -> bool {
    let observed = r
        .status
        .observed_generation
        .is_some_and(|g| g >= r.generation);
    observed
        && r.status.ready_condition().is_some_and(|c| {
            c.status == "True"
                || matches!(
                    c.reason.as_str(),
                    reason::INVALID_SOURCE
                        | reason::ENDPOINT_TAKEN
                        | reason::PROGRESS_DEADLINE_EXCEEDED
                )
        })
}

/// How long a call waits for a gateway that just started to list the functions.
const SYNC_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
    #[error("the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Autoscaler(#[from] crate::autoscaler::Error),
}

/// What `skython gateway` tells the cluster platform.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where SkyFunctions deployed through the API are created.
    pub deploy_namespace: String,
    /// Watch (serve) SkyFunctions and pods of this namespace only; `None`: all.
    pub watch_namespace: Option<String>,
    pub router: RouterConfig,
    pub autoscaler: AutoscalerConfig,
    /// One autoscaler among gateway replicas writes (`None`: this one always does).
    pub lease: Option<LeaseConfig>,
    /// The state limits for pods' `store`/`load`.
    pub limits: Limits,
    /// With several gateway replicas: how they reach each other (`None`: this one is alone).
    pub peers: Option<PeerConfig>,
    /// Claiming warm pool pods (`None`: every cold start waits for a Deployment's pod).
    pub pool: Option<PoolConfig>,
}

/// What claiming pool pods needs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Signs specialise requests; pool pods hold its public half.
    pub key: Arc<skython_runner_pod::wire::PoolKey>,
    /// This gateway's name in the claims it records.
    pub claimed_by: String,
}

/// How gateway replicas find and trust each other.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// This replica's URL as the others reach it; also its Lease identity, so the Lease says
    /// where the leader is.
    pub advertise_url: String,
    /// A secret all replicas share.
    pub token: String,
}

pub struct ClusterPlatform {
    registry: Arc<Registry>,
    pods: Arc<Pods>,
    pods_synced: Arc<AtomicBool>,
    router: Arc<Router>,
    /// Runs as long as the platform does.
    _autoscaler: Arc<Autoscaler>,
    metrics: Arc<ClusterMetrics>,
    gateway_metrics: Arc<Metrics>,
    /// Each served function's call policy, with the resource version of the SkyFunction it
    /// was read from: read again only when that changes.
    policies: Mutex<HashMap<(String, String), VersionedPolicy>>,
}

/// A call policy and the resource version of the SkyFunction it was read from.
type VersionedPolicy = (String, Arc<CallPolicy>);

impl ClusterPlatform {
    /// Starts the watches and the autoscaler; returns the platform and the router of the pods'
    /// internal routes (to be merged into the gateway's app).
    pub async fn start(
        client: kube::Client,
        config: ClusterConfig,
        store: Arc<dyn Store>,
        gateway_metrics: Arc<Metrics>,
    ) -> Result<(Arc<Self>, axum::Router), Error> {
        let metrics = Arc::new(ClusterMetrics::new()?);
        let registry = Arc::new(Registry::start(
            client.clone(),
            config.watch_namespace.as_deref(),
            &config.deploy_namespace,
        ));
        let pods = Pods::new();
        let pods_synced = Arc::new(AtomicBool::new(false));
        tokio::spawn(pods::watch(
            client.clone(),
            config.watch_namespace.clone(),
            pods.clone(),
            pods_synced.clone(),
        ));
        // The router wakes the autoscaler, which reads the router's counts: tie the knot late.
        let autoscaler: Arc<OnceLock<Arc<Autoscaler>>> = Arc::default();
        let poke_here: Poke = {
            let autoscaler = autoscaler.clone();
            Arc::new(move |f: &FunctionRef| {
                if let Some(a) = autoscaler.get() {
                    a.poke(f);
                }
            })
        };
        let peers = match &config.peers {
            Some(p) => Some(Peers::new(p.advertise_url.clone(), p.token.clone())?),
            None => None,
        };
        // A call at zero wakes this replica's autoscaler and, when another replica leads, that
        // one's (through the next report, sent at once).
        let (to_leader, pokes_for_leader) = tokio::sync::mpsc::unbounded_channel();
        let poke = {
            let poke_here = poke_here.clone();
            let forward = peers.is_some();
            Arc::new(move |f: &FunctionRef| {
                poke_here(f);
                if forward {
                    let _ = to_leader.send(f.clone());
                }
            })
        };
        let pool = match &config.pool {
            Some(p) => Some(Pool::new(
                client.clone(),
                pods.clone(),
                p.key.clone(),
                p.claimed_by.clone(),
                poke.clone(),
                metrics.clone(),
            )?),
            None => None,
        };
        let claim: Claim = match &pool {
            Some(pool) => {
                let pool = pool.clone();
                Arc::new(move |t: &Target, waiting: u32| pool.claim_for(t, waiting))
            }
            None => Arc::new(|_: &Target, _| false),
        };
        let router = Arc::new(Router::new(
            pods.clone(),
            config.router.clone(),
            poke,
            claim,
            metrics.clone(),
        )?);
        let local: DemandSource = {
            let router = Arc::downgrade(&router);
            Arc::new(move || {
                let mut loads: HashMap<FunctionRef, Load> = router
                    .upgrade()
                    .map(|r| r.load().into_iter().map(|(f, (_, l))| (f, l)).collect())
                    .unwrap_or_default();
                for (f, n) in pool.as_ref().map(|p| p.claiming()).unwrap_or_default() {
                    loads.entry(f).or_default().claiming = n;
                }
                loads
            })
        };
        let demand: DemandSource = match &peers {
            Some(peers) => {
                let (peers, local) = (peers.clone(), local.clone());
                Arc::new(move || peers.total(local()))
            }
            None => local.clone(),
        };
        let on_scaled = {
            let router = Arc::downgrade(&router);
            Arc::new(move |f: &FunctionRef, from: u32, to: u32| {
                if let Some(r) = router.upgrade() {
                    r.scaled(f, from, to);
                }
            })
        };
        let scaler = Arc::new(Autoscaler::spawn(
            client.clone(),
            registry.store(),
            demand,
            on_scaled,
            config.autoscaler.clone(),
            config.lease.clone(),
            metrics.registry(),
        )?);
        let _ = autoscaler.set(scaler.clone());
        let resolve = {
            let registry = registry.clone();
            Arc::new(move |f: &FunctionRef| scope_of(&registry, f))
        };
        let mut internal_routes = Internal::new(
            client.clone(),
            pods.clone(),
            store,
            config.limits.clone(),
            resolve,
        )?
        .router();
        if let (Some(peers), Some(lease)) = (&peers, &config.lease) {
            internal_routes = internal_routes.merge(peers.clone().router(poke_here));
            tokio::spawn(peers.clone().report(
                kube::Api::namespaced(client, &lease.namespace),
                lease.name.clone(),
                local,
                pokes_for_leader,
            ));
        }
        let platform = Arc::new(ClusterPlatform {
            registry,
            pods,
            pods_synced,
            router,
            _autoscaler: scaler,
            metrics,
            gateway_metrics,
            policies: Mutex::default(),
        });
        Ok((platform, internal_routes))
    }

    /// The written version's status once the operator has reported on it (as a local deploy
    /// answers once a worker loaded the function), or, past [`DEPLOY_WAIT`], what is known:
    /// `Ready=False`, reason `Deploying`.
    async fn settled(
        &self,
        written: FunctionRecord,
        signature: Option<skython_crds::Signature>,
    ) -> FunctionRecord {
        let (owner, endpoint) = (written.spec.owner.clone(), written.spec.endpoint.clone());
        let deadline = Instant::now() + DEPLOY_WAIT;
        loop {
            if let Ok(Some(now)) = self.registry.get(&owner, &endpoint)
                && now.generation == written.generation
                && reported(&now)
            {
                return now;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut record = written;
        record.status.signature = record.status.signature.or(signature);
        record.status.conditions = vec![Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: "Deploying".into(),
            message: format!(
                "saved; the operator has not reported on it within {} s (is it running?)",
                DEPLOY_WAIT.as_secs()
            ),
            last_transition_time: Time(jiff::Timestamp::now()),
            observed_generation: Some(record.generation),
        }];
        record
    }

    /// Where a call for `owner/endpoint` goes: the SkyFunction that holds the endpoint.
    fn target(&self, owner: &str, endpoint: &str) -> ApiResult<Target> {
        let f = self.registry.holder(owner, endpoint).ok_or_else(|| {
            tracing::debug!(
                owner,
                endpoint,
                known = self.registry.store().state().len(),
                "no SkyFunction holds the endpoint"
            );
            ApiError::function_not_found(owner, endpoint)
        })?;
        refuse_unservable(&f)?;
        Ok(Target {
            function: FunctionRef {
                namespace: f.metadata.namespace.clone().unwrap_or_default(),
                name: f.metadata.name.clone().unwrap_or_default(),
            },
            label: format!("{owner}/{endpoint}"),
            concurrency: f.spec.concurrency.max(1),
            timeout: Duration::from_secs(f.spec.timeout_seconds.into()),
            object: f,
        })
    }
}

/// Runner pods serve a function's current version only.
fn pinned_unavailable() -> ApiError {
    ApiError::new(
        ErrorCode::PinnedVersionsUnavailable,
        "calling a pinned version (endpoint@n) is not available on Kubernetes yet; call the \
         current version, or roll back to the one you need",
    )
}

/// The state scope of the pods of `f`: the owner/endpoint it holds (none for a function
/// whose endpoint another holds, or one that is gone).
fn scope_of(registry: &Registry, f: &FunctionRef) -> Option<StateScope> {
    let key = kube::runtime::reflector::ObjectRef::new(&f.name).within(&f.namespace);
    let object = registry.store().get(&key)?;
    let holder = registry.holder(&object.spec.owner, &object.spec.endpoint)?;
    (holder.metadata.uid == object.metadata.uid).then(|| StateScope {
        owner: object.spec.owner.clone(),
        function: object.spec.endpoint.clone(),
    })
}

/// A function whose source never passed the operator's check has no pods to wait for: say so
/// at once instead of after the cold-start deadline.
fn refuse_unservable(f: &SkyFunction) -> ApiResult<()> {
    let status = f.status.clone().unwrap_or_default();
    let Some(c) = status.ready_condition() else {
        return Ok(());
    };
    if c.status != "True" && c.reason == reason::INVALID_SOURCE && status.signature.is_none() {
        return Err(ApiError::new(
            ErrorCode::FunctionUnavailable,
            format!("the function cannot run: {}", c.message),
        ));
    }
    Ok(())
}

#[async_trait]
impl Platform for ClusterPlatform {
    async fn get_function(&self, owner: &str, endpoint: &str) -> ApiResult<Option<FunctionRecord>> {
        self.registry.get(owner, endpoint)
    }

    async fn list_functions(&self, filter: &FunctionFilter) -> ApiResult<Vec<FunctionRecord>> {
        self.registry.list(filter)
    }

    async fn create_function(&self, record: FunctionRecord) -> ApiResult<FunctionRecord> {
        let created = self.registry.create(&record).await?;
        Ok(self.settled(created, record.status.signature).await)
    }

    async fn replace_function(
        &self,
        record: FunctionRecord,
        current_generation: i64,
    ) -> ApiResult<FunctionRecord> {
        let signature = record.status.signature.clone();
        let replaced = self.registry.replace(&record, current_generation).await?;
        Ok(self.settled(replaced, signature).await)
    }

    async fn delete_function(&self, owner: &str, endpoint: &str) -> ApiResult<bool> {
        let deleted = self.registry.delete(owner, endpoint).await?;
        self.policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(owner.to_string(), endpoint.to_string()));
        if deleted {
            self.gateway_metrics.forget(&format!("{owner}/{endpoint}"));
        }
        Ok(deleted)
    }

    async fn call_policy(
        &self,
        owner: &str,
        endpoint: &str,
        version: Option<i64>,
    ) -> ApiResult<Option<Arc<CallPolicy>>> {
        if version.is_some() {
            return Err(pinned_unavailable());
        }
        self.registry.synced_within(SYNC_WAIT).await?;
        let Some(f) = self.registry.holder(owner, endpoint) else {
            return Ok(None);
        };
        let version = f.metadata.resource_version.as_deref().unwrap_or_default();
        let key = (owner.to_string(), endpoint.to_string());
        let mut cache = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, schema)) = cache.get(&key)
            && seen == version
        {
            return Ok(Some(schema.clone()));
        }
        let signature = f.status.as_ref().and_then(|s| s.signature.as_ref());
        let policy = Arc::new(CallPolicy::of(&f.spec, signature));
        cache.insert(key, (version.to_string(), policy.clone()));
        Ok(Some(policy))
    }

    async fn call(&self, call: Call) -> ApiResult<Called> {
        if call.version.is_some() {
            return Err(pinned_unavailable());
        }
        self.registry.synced_within(SYNC_WAIT).await?;
        let target = self.target(&call.owner, &call.endpoint)?;
        let started = Instant::now();
        let span =
            tracing::info_span!("call", function = %target.label, request_id = %call.request_id);
        let called = self
            .router
            .call(&target, call.args, &call.request_id, &call.caller)
            .instrument(span)
            .await?;
        let m = &self.gateway_metrics;
        m.calls
            .with_label_values(&[&target.label, &called.output.outcome])
            .inc();
        m.call_duration
            .with_label_values(&[&target.label])
            .observe(started.elapsed().as_secs_f64());
        if called.cold_start {
            m.cold_starts.with_label_values(&[&target.label]).inc();
        }
        Ok(called)
    }

    fn render_metrics(&self) -> String {
        let ready = self.pods.ready_counts();
        let m = &self.metrics;
        for g in [&m.in_flight, &m.queued, &m.ready_pods] {
            g.reset();
        }
        for rt in [skython_crds::Runtime::Standard, skython_crds::Runtime::Full] {
            let n = self.pods.pool_available(rt, None);
            m.pool_pods.with_label_values(&[rt.as_str()]).set(n as i64);
        }
        for (
            f,
            (
                label,
                Load {
                    in_flight, queued, ..
                },
            ),
        ) in self.router.load()
        {
            m.in_flight
                .with_label_values(&[&label])
                .set(in_flight.into());
            m.queued.with_label_values(&[&label]).set(queued.into());
            let n = ready.get(&f).copied().unwrap_or(0);
            m.ready_pods.with_label_values(&[&label]).set(n as i64);
        }
        m.render()
    }

    async fn ready(&self) -> Result<(), String> {
        self.registry.ready()?;
        if !self.pods_synced.load(Ordering::Acquire) {
            return Err("the runner pods are not listed yet".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use skython_crds::{SkyFunctionSpec, SkyFunctionStatus};

    use super::*;

    fn record(generation: i64, observed: Option<i64>, ready: &str, reason: &str) -> FunctionRecord {
        let now = jiff::Timestamp::now();
        FunctionRecord {
            spec: SkyFunctionSpec::new("a", "f", "def f(): pass"),
            status: SkyFunctionStatus {
                observed_generation: observed,
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    reason: reason.into(),
                    message: String::new(),
                    last_transition_time: Time(now),
                    observed_generation: observed,
                }],
                ..Default::default()
            },
            generation,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_deploy_is_settled_when_the_operator_reports_ready_on_its_generation() {
        assert!(reported(&record(2, Some(2), "True", "Available")));
        assert!(
            !reported(&record(2, Some(1), "True", "Available")),
            "the previous version's verdict"
        );
        assert!(!reported(&record(2, None, "True", "Available")));
    }

    #[test]
    fn a_deploy_is_settled_by_a_failure_that_waiting_will_not_change() {
        assert!(reported(&record(1, Some(1), "False", "InvalidSource")));
        assert!(reported(&record(1, Some(1), "False", "EndpointTaken")));
        assert!(!reported(&record(1, Some(1), "False", "RollingOut")));
    }
}
