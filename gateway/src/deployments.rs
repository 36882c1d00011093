//! `Deployments`: the live worker pool of every called function, built on demand from the store,
//! replaced when a function changes and emptied by the idle reaper.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use skython_crds::{Network, Runtime, SkyFunctionSpec, SkyFunctionStatus};
use skython_runner::cgroup::{Cgroups, Group, GroupLimits};
use skython_runner::egress::{EgressProxy, Grant};
use skython_runner::protocol::CACHE_VALUE_MAX;
use skython_runner::{
    PoolLimits, StateAnswer, StateCache, StateHandler, StatePeer, StateRequest, StateTicket,
    WorkerPool, WorkerSpec, Zygote,
};
use skython_store::{
    FunctionRecord, QueuedWrite, StateQuota, StateScope, StateWrite, Store, StoreError, Written,
};

use crate::Limits;
use crate::access::CallPolicy;
use crate::state_hub::StateHub;

type Key = (String, String);

/// One function version's pool.
pub struct Deployed {
    pub label: String,
    pub generation: i64,
    /// Who may call this version, from which pages.
    pub policy: Arc<CallPolicy>,
    pub pool: WorkerPool,
    /// The function's way out (`network: internet`), revoked when this version is gone.
    pub egress: Option<Grant>,
}

/// The control group of a function's current version.
fn group_name(r: &FunctionRecord) -> String {
    format!("{}.{}.{}", r.spec.owner, r.spec.endpoint, r.generation)
}

/// Endpoints the store did not have, remembered for a moment: a client calling a mistyped
/// endpoint in a loop then costs no store read per call. A deploy through this gateway forgets
/// them all; one through another gateway sharing the store shows within `MISSING_FOR`.
#[derive(Default)]
struct Missing {
    since: HashMap<Key, Instant>,
    /// Deploys and deletions so far: a lookup that started before one must not mark its
    /// endpoint missing, nor install the pool of what it read.
    changes: u64,
}

const MISSING_FOR: Duration = Duration::from_secs(1);
const MISSING_MAX: usize = 10_000;

pub struct Deployments {
    store: Arc<dyn Store>,
    zygotes: HashMap<Runtime, Arc<Zygote>>,
    limits: Limits,
    egress: Option<Arc<EgressProxy>>,
    cgroups: Option<Arc<Cgroups>>,
    live: RwLock<HashMap<Key, Arc<Deployed>>>,
    missing: Mutex<Missing>,
    /// Where workers cache state: only if this gateway is its store's one writer.
    state_hub: Option<Arc<StateHub>>,
}

impl Deployments {
    pub fn new(
        store: Arc<dyn Store>,
        zygotes: HashMap<Runtime, Arc<Zygote>>,
        limits: Limits,
        egress: Option<Arc<EgressProxy>>,
        cgroups: Option<Arc<Cgroups>>,
        state_cache: bool,
    ) -> Self {
        // Caching needs the store's writes in one order, too.
        let state_hub = (state_cache && store.ordered_writes().is_some()).then(Arc::default);
        Deployments {
            store,
            zygotes,
            limits,
            egress,
            cgroups,
            live: RwLock::new(HashMap::new()),
            missing: Mutex::default(),
            state_hub,
        }
    }

    pub fn zygote(&self, runtime: Runtime) -> Option<&Arc<Zygote>> {
        self.zygotes.get(&runtime)
    }

    pub fn runtimes(&self) -> Vec<&'static str> {
        let mut r: Vec<_> = self.zygotes.keys().map(|r| r.as_str()).collect();
        r.sort();
        r
    }

    /// The function's pool, loading the function from the store on first use.
    pub async fn get(
        &self,
        owner: &str,
        endpoint: &str,
    ) -> skython_store::Result<Option<Arc<Deployed>>> {
        let key = (owner.to_string(), endpoint.to_string());
        loop {
            if let Some(d) = self.read().get(&key) {
                return Ok(Some(d.clone()));
            }
            let changes = {
                let missing = self.missing();
                if missing
                    .since
                    .get(&key)
                    .is_some_and(|at| at.elapsed() < MISSING_FOR)
                {
                    return Ok(None);
                }
                missing.changes
            };
            let Some(record) = self.store.get_function(owner, endpoint).await? else {
                let mut missing = self.missing();
                if missing.changes == changes {
                    if missing.since.len() >= MISSING_MAX {
                        missing.since.clear();
                    }
                    missing.since.insert(key, Instant::now());
                }
                return Ok(None);
            };
            let Some(fresh) = self.build(&record, &group_name(&record)) else {
                return Ok(None);
            };
            let mut live = self.write();
            // Someone may have deployed meanwhile: theirs is at least as new as what we read.
            if let Some(d) = live.get(&key) {
                return Ok(Some(d.clone()));
            }
            if self.missing().changes == changes {
                let fresh = Arc::new(fresh);
                live.insert(key, fresh.clone());
                return Ok(Some(fresh));
            }
            // A function was deployed or deleted meanwhile: if it was this one, what we read is
            // gone, and its pool must not outlive the deletion. Read again.
        }
    }

    /// Installs the pool of a new version and retires the previous one.
    pub fn replace(&self, record: &FunctionRecord) -> Option<Arc<Deployed>> {
        let fresh = Arc::new(self.build(record, &group_name(record))?);
        let key = (record.owner().to_string(), record.endpoint().to_string());
        {
            let mut missing = self.missing();
            missing.since.clear();
            missing.changes += 1;
        }
        let old = self.write().insert(key, fresh.clone());
        if let Some(old) = old {
            old.pool.retire();
        }
        Some(fresh)
    }

    /// The pool of version `version` of a function (`POST /fn/{owner}/{endpoint}@{n}`): the
    /// current version's own, or one loaded from the version the store keeps, with the
    /// function's current environment (versions keep no env values) and access. `None`: no such function
    /// or version.
    pub async fn get_pinned(
        &self,
        owner: &str,
        endpoint: &str,
        version: i64,
    ) -> skython_store::Result<Option<Arc<Deployed>>> {
        let Some(current) = self.get(owner, endpoint).await? else {
            return Ok(None);
        };
        if current.generation == version {
            return Ok(Some(current));
        }
        let key = (owner.to_string(), format!("{endpoint}@{version}"));
        if let Some(d) = self.read().get(&key) {
            return Ok(Some(d.clone()));
        }
        let (Some(v), Some(now)) = (
            self.store.get_version(owner, endpoint, version).await?,
            self.store.get_function(owner, endpoint).await?,
        ) else {
            return Ok(None);
        };
        // Who may call is the function's current choice: a version from before the owner
        // gated the function must not stay open through its pinned URL.
        let pinned = FunctionRecord {
            spec: SkyFunctionSpec {
                access: Some(now.spec.effective_access()),
                env: now.spec.env,
                allowed_origins: now.spec.allowed_origins,
                visibility: now.spec.visibility,
                ..v.spec
            },
            status: SkyFunctionStatus {
                signature: v.signature,
                ..Default::default()
            },
            generation: version,
            created_at: v.created_at,
            updated_at: v.created_at,
        };
        let Some(fresh) = self.build(&pinned, &format!("{owner}.{endpoint}.pinned-{version}"))
        else {
            return Ok(None);
        };
        Ok(Some(
            self.write().entry(key).or_insert(Arc::new(fresh)).clone(),
        ))
    }

    /// Retires a deleted function's pools, pinned versions' too (after the store forgot it).
    pub fn remove(&self, owner: &str, endpoint: &str) {
        self.missing().changes += 1;
        let pinned = format!("{endpoint}@");
        self.write().retain(|(o, e), d| {
            let gone = o == owner && (e == endpoint || e.starts_with(&pinned));
            if gone {
                d.pool.retire();
            }
            !gone
        });
    }

    /// Stops idle workers everywhere; returns how many.
    pub fn reap(&self) -> usize {
        let now = Instant::now();
        let pools: Vec<_> = self.read().values().cloned().collect();
        pools.iter().map(|d| d.pool.reap(now)).sum()
    }

    /// Every live pool, for metrics.
    pub fn all(&self) -> Vec<Arc<Deployed>> {
        self.read().values().cloned().collect()
    }

    /// A version's pool; `group` names its control group.
    fn build(&self, record: &FunctionRecord, group: &str) -> Option<Deployed> {
        let spec = &record.spec;
        let zygote = self.zygotes.get(&spec.runtime)?.clone();
        let entrypoint = record
            .status
            .signature
            .as_ref()
            .map(|s| s.entrypoint.clone())
            .or_else(|| spec.entrypoint.clone())
            .unwrap_or_else(|| "main".into());
        let (mut worker_spec, egress) = self.worker_spec(spec, &entrypoint);
        let limits = pool_limits(spec, &self.limits);
        let group = self.group(group, spec, &mut worker_spec);
        let state = Arc::new(self.scoped_state(StateScope {
            owner: spec.owner.clone(),
            function: spec.endpoint.clone(),
        }));
        Some(Deployed {
            label: format!("{}/{}", spec.owner, spec.endpoint),
            generation: record.generation,
            policy: Arc::new(CallPolicy::of(spec, record.status.signature.as_ref())),
            pool: WorkerPool::new(zygote, worker_spec, limits, state).in_group(group),
            egress,
        })
    }

    /// The control group of a function version (or a test run) named `name`, where the machine
    /// has cgroups; its memory group is then the workers' memory limit, not `RLIMIT_AS`.
    pub fn group(
        &self,
        name: &str,
        spec: &SkyFunctionSpec,
        worker_spec: &mut WorkerSpec,
    ) -> Option<Group> {
        let cg = self.cgroups.as_ref()?;
        let (function, worker) = group_limits(spec, &self.limits);
        let group = cg
            .group(name, function, worker)
            .map_err(|e| tracing::error!(function = %name, "no cgroup, rlimits only: {e}"))
            .ok()?;
        // The memory cgroup counts what the worker really uses; an address-space limit on top
        // would only refuse libraries that reserve much and use little (TensorFlow).
        worker_spec.memory_bytes = None;
        Some(group)
    }

    /// How workers load the function, and its egress grant if it may use the network (only
    /// sandboxed runtimes have a proxy; unsandboxed ones have the host's network anyway).
    pub fn worker_spec(
        &self,
        spec: &SkyFunctionSpec,
        entrypoint: &str,
    ) -> (WorkerSpec, Option<Grant>) {
        let mut ws = worker_spec(spec, entrypoint, &self.limits);
        let grant = match (&self.egress, spec.network) {
            (Some(proxy), Network::Internet) => match proxy.grant(&ws.label) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::error!(function = %ws.label, "no egress token: {e}");
                    None
                }
            },
            _ => None,
        };
        if let Some(g) = &grant {
            ws.env.extend(g.env());
        }
        (ws, grant)
    }

    pub fn scoped_state(&self, scope: StateScope) -> ScopedState {
        ScopedState {
            hub: self.state_hub.clone(),
            ..ScopedState::new(self.store.clone(), scope, &self.limits)
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Arc<Deployed>>> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Arc<Deployed>>> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }

    fn missing(&self) -> std::sync::MutexGuard<'_, Missing> {
        self.missing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How a worker loads and runs one function under the server's limits.
pub fn worker_spec(spec: &SkyFunctionSpec, entrypoint: &str, limits: &Limits) -> WorkerSpec {
    WorkerSpec {
        label: format!("{}/{}", spec.owner, spec.endpoint),
        source: spec.source.clone(),
        filename: format!("{}.py", spec.endpoint),
        entrypoint: entrypoint.into(),
        env: spec.env_map(),
        memory_bytes: Some(spec.memory_bytes()),
        // A call may use as much CPU time as its wall-clock budget (plus a second of slack).
        cpu_seconds_per_call: Some(u64::from(spec.timeout_seconds) + 1),
        max_result_bytes: limits.max_result_bytes,
        max_log_bytes: limits.max_log_bytes,
        max_state_value_bytes: limits.max_state_value_bytes,
        state_cache: false,
    }
}

/// The cgroup limits of a function version (all its workers together) and of each of its
/// workers. A worker gets what the spec gives a replica: `resources.memory` (on top of the
/// zygote's shared pages) and `resources.cpu`, so a call runs as fast whether or not others run
/// beside it; the version gets the memory of `concurrency` workers and the process cap.
pub fn group_limits(spec: &SkyFunctionSpec, limits: &Limits) -> (GroupLimits, GroupLimits) {
    let workers = u64::from(spec.concurrency.max(1));
    let function = GroupLimits {
        memory_bytes: Some(spec.memory_bytes().saturating_mul(workers)),
        pids: Some(limits.max_procs_per_function),
        cpu_millis: None,
    };
    let worker = GroupLimits {
        memory_bytes: Some(spec.memory_bytes()),
        pids: None,
        cpu_millis: Some(spec.cpu_millis()),
    };
    (function, worker)
}

/// The local meaning of the spec's scaling fields: one replica whose pool holds up to
/// `concurrency` workers, keeps `minReplicas` of them warm, and stops the rest after idling.
pub fn pool_limits(spec: &SkyFunctionSpec, limits: &Limits) -> PoolLimits {
    let max_workers = spec.concurrency.max(1) as usize;
    PoolLimits {
        max_workers,
        min_workers: (spec.scaling.min_replicas as usize).min(max_workers),
        queue_limit: limits.queue_limit,
        idle_timeout: Duration::from_secs(spec.scaling.idle_seconds_to_zero.into()),
        call_timeout: Duration::from_secs(spec.timeout_seconds.into()),
    }
}

/// Answers a worker's state requests within one (owner, function) scope.
pub struct ScopedState {
    store: Arc<dyn Store>,
    scope: StateScope,
    max_value_bytes: usize,
    quota: StateQuota,
    /// Set where the workers cache state.
    hub: Option<Arc<StateHub>>,
}

impl ScopedState {
    /// State of `scope` in `store`, under the gateway's value size limit and owner quota.
    pub fn new(store: Arc<dyn Store>, scope: StateScope, limits: &Limits) -> Self {
        ScopedState {
            store,
            scope,
            max_value_bytes: limits.max_state_value_bytes,
            quota: limits.state_quota,
            hub: None,
        }
    }

    /// The write a `store` asks for, or its refusal: the value (and the expected value of a
    /// compare-and-set) must be JSON within the value size limit.
    fn store_write(
        &self,
        key: &str,
        value: String,
        expect: Option<String>,
    ) -> Result<StateWrite, StateAnswer> {
        self.check_size(key, "value", &value)?;
        if serde_json::from_str::<serde::de::IgnoredAny>(&value).is_err() {
            return Err(StateAnswer::refused(
                "bad_value",
                "state values must be JSON",
            ));
        }
        let Some(expect) = expect else {
            return Ok(StateWrite::Set { value });
        };
        self.check_size(key, "expected value", &expect)?;
        match serde_json::from_str(&expect) {
            Ok(expect) => Ok(StateWrite::SetIf { value, expect }),
            Err(_) => Err(StateAnswer::refused(
                "bad_value",
                "the expected value of a compare-and-set must be JSON",
            )),
        }
    }

    fn check_size(&self, key: &str, what: &str, json: &str) -> Result<(), StateAnswer> {
        if json.len() > self.max_value_bytes {
            return Err(StateAnswer::refused(
                "value_too_large",
                format!(
                    "the {what} for {key:?} is {} bytes of JSON, more than the limit of {} bytes",
                    json.len(),
                    self.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    async fn write(&self, key: &str, write: StateWrite) -> Result<StateAnswer, StoreError> {
        let written = self
            .store
            .state_write(&self.scope, key, &write, self.quota)
            .await?;
        if let Some(hub) = &self.hub {
            hub.changed(&self.scope, key);
        }
        let done = StateAnswer {
            ok: true,
            ..Default::default()
        };
        Ok(match written {
            // Only a compare-and-set is told it won: a plain store always does.
            Written::Stored => StateAnswer {
                won: matches!(write, StateWrite::SetIf { .. }).then_some(true),
                ..done
            },
            Written::Lost => StateAnswer {
                won: Some(false),
                ..done
            },
            Written::Counted(number) => StateAnswer {
                value: Some(number),
                ..done
            },
        })
    }
}

const MAX_KEY_CHARS: usize = 512;
const MAX_KEYS_LISTED: usize = 10_000;

#[async_trait]
impl StateHandler for ScopedState {
    async fn handle(&self, request: StateRequest) -> StateAnswer {
        let key = match &request {
            StateRequest::Load { key }
            | StateRequest::Store { key, .. }
            | StateRequest::Incr { key, .. }
            | StateRequest::Delete { key } => Some(key),
            StateRequest::Keys { .. } => None,
        };
        if let Some(Err(refused)) = key.map(|k| check_key(k)) {
            return refused;
        }
        let s = &self.scope;
        let res = match request {
            StateRequest::Load { key } => {
                self.store.state_get(s, &key).await.map(|v| StateAnswer {
                    ok: true,
                    found: Some(v.is_some()),
                    value: v,
                    ..Default::default()
                })
            }
            StateRequest::Store { key, value, expect } => {
                match self.store_write(&key, value, expect) {
                    Ok(write) => self.write(&key, write).await,
                    Err(refused) => return refused,
                }
            }
            StateRequest::Incr { key, by, default } => {
                self.write(&key, StateWrite::Incr { by, default }).await
            }
            StateRequest::Delete { key } => {
                let deleted = self.store.state_delete(s, &key).await;
                if let Some(hub) = &self.hub {
                    hub.changed(s, &key);
                }
                deleted.map(|found| StateAnswer {
                    ok: true,
                    found: Some(found),
                    ..Default::default()
                })
            }
            StateRequest::Keys { prefix } => self
                .store
                .state_keys(s, &prefix, MAX_KEYS_LISTED)
                .await
                .map(|keys| StateAnswer {
                    ok: true,
                    keys: Some(keys),
                    ..Default::default()
                }),
        };
        res.unwrap_or_else(|e| refusal(s, e))
    }

    fn cache(&self) -> Option<&dyn StateCache> {
        self.hub.as_ref().map(|_| self as &dyn StateCache)
    }
}

impl StateCache for ScopedState {
    fn attach(&self, peer: StatePeer) {
        if let Some(hub) = &self.hub {
            hub.attach(&self.scope, peer);
        }
    }

    fn flush(&self) {
        if let Some(ordered) = self.store.ordered_writes() {
            ordered.flush_state_writes();
        }
    }

    fn write_behind(&self, from: &StatePeer, key: String, value: String) -> StateTicket {
        let (Some(hub), Some(ordered)) = (&self.hub, self.store.ordered_writes()) else {
            let refused = StateAnswer::refused("state_unavailable", "no write-behind here");
            return Box::pin(std::future::ready(refused));
        };
        let chain = hub.chain(&self.scope, from);
        let pushed = (value.len() <= CACHE_VALUE_MAX).then(|| value.clone());
        let write = match check_key(&key).and_then(|()| self.store_write(&key, value, None)) {
            Ok(w) => w,
            Err(refused) => {
                // The writes it sent after this one must not land either.
                chain.break_off();
                return Box::pin(std::future::ready(refused));
            }
        };
        let (hub, scope, from, pushed_key) =
            (hub.clone(), self.scope.clone(), from.clone(), key.clone());
        let on_commit = Box::new(move |written: &skython_store::Result<Written>| {
            from.count_own_write();
            if written.is_ok() {
                match &pushed {
                    Some(value) => hub.stored(&scope, &from, &pushed_key, value),
                    None => hub.changed(&scope, &pushed_key),
                }
            }
        });
        let committed = ordered.queue_state_write(QueuedWrite {
            scope: self.scope.clone(),
            key,
            write,
            quota: self.quota,
            chain: Some(chain),
            on_commit: Some(on_commit),
        });
        let scope = self.scope.clone();
        Box::pin(async move {
            match committed.await {
                Ok(Ok(_)) => StateAnswer {
                    ok: true,
                    ..Default::default()
                },
                Ok(Err(e)) => refusal(&scope, e),
                Err(_) => refusal(&scope, StoreError::Unavailable("the store stopped".into())),
            }
        })
    }
}

/// A key the gateway takes: the worker checks too, but its frames are untrusted.
fn check_key(key: &str) -> Result<(), StateAnswer> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
        return Err(StateAnswer::refused(
            "bad_key",
            format!("state keys must be 1-{MAX_KEY_CHARS} characters"),
        ));
    }
    Ok(())
}

/// What the function hears when the store refuses a request or fails. The details of a failure
/// go to the server's log: they are about the platform, not the function.
fn refusal(scope: &StateScope, e: StoreError) -> StateAnswer {
    let (owner, function) = (&scope.owner, &scope.function);
    match e {
        StoreError::QuotaExceeded(q) => StateAnswer::refused("quota_exceeded", q.to_string()),
        // The store's message names the key and what it holds: the function's own business.
        StoreError::Invalid(m) => StateAnswer::refused("invalid_write", m),
        // The worker's earlier write failed; this one may work when sent again.
        StoreError::Aborted(m) => StateAnswer::refused("state_unavailable", m),
        StoreError::Unavailable(m) => {
            tracing::warn!(%owner, %function, "state storage unavailable: {m}");
            StateAnswer::refused("state_unavailable", "the state storage cannot be reached")
        }
        e => {
            tracing::error!(%owner, %function, "state request failed: {e}");
            StateAnswer::refused("storage_error", "the state storage failed; try again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_scaling_maps_to_pool_limits() {
        let mut spec = SkyFunctionSpec::new("a", "f", "def f(): pass");
        spec.concurrency = 3;
        spec.scaling.min_replicas = 5;
        spec.scaling.idle_seconds_to_zero = 7;
        spec.timeout_seconds = 2;
        let l = pool_limits(&spec, &Limits::default());
        assert_eq!(l.max_workers, 3);
        assert_eq!(
            l.min_workers, 3,
            "never more warm workers than the pool may hold"
        );
        assert_eq!(l.idle_timeout, Duration::from_secs(7));
        assert_eq!(l.call_timeout, Duration::from_secs(2));
        assert_eq!(l.queue_limit, Limits::default().queue_limit);
    }

    #[test]
    fn a_version_gets_its_workers_memory_and_each_worker_a_replicas_resources() {
        let mut spec = SkyFunctionSpec::new("a", "f", "def f(): pass");
        spec.concurrency = 4;
        spec.resources.memory = "256Mi".into();
        spec.resources.cpu = "250m".into();
        let limits = Limits {
            max_procs_per_function: 99,
            ..Limits::default()
        };
        let (function, worker) = group_limits(&spec, &limits);
        assert_eq!(
            function,
            GroupLimits {
                memory_bytes: Some(1 << 30),
                pids: Some(99),
                cpu_millis: None,
            }
        );
        assert_eq!(
            worker,
            GroupLimits {
                memory_bytes: Some(256 << 20),
                pids: None,
                cpu_millis: Some(250),
            }
        );
    }

    #[tokio::test]
    async fn state_is_scoped_and_limited() {
        let store: Arc<dyn Store> = Arc::new(skython_store::SqliteStore::open_in_memory().unwrap());
        let mk = |owner: &str, f: &str| ScopedState {
            store: store.clone(),
            scope: StateScope {
                owner: owner.into(),
                function: f.into(),
            },
            max_value_bytes: 16,
            quota: StateQuota::default(),
            hub: None,
        };
        let (a, b) = (mk("alice", "f"), mk("bob", "f"));
        let put = a
            .handle(StateRequest::Store {
                key: "n".into(),
                value: "1".into(),
                expect: None,
            })
            .await;
        assert!(put.ok);
        let got = a.handle(StateRequest::Load { key: "n".into() }).await;
        assert_eq!(got.value.as_deref(), Some("1"));
        let other = b.handle(StateRequest::Load { key: "n".into() }).await;
        assert_eq!(other.found, Some(false));
        let big = a
            .handle(StateRequest::Store {
                key: "n".into(),
                value: format!("\"{}\"", "x".repeat(20)),
                expect: None,
            })
            .await;
        assert_eq!(big.error.unwrap().code, "value_too_large");
        let bad = a
            .handle(StateRequest::Store {
                key: "n".into(),
                value: "{".into(),
                expect: None,
            })
            .await;
        assert_eq!(bad.error.unwrap().code, "bad_value");
        let empty = a.handle(StateRequest::Load { key: String::new() }).await;
        assert_eq!(empty.error.unwrap().code, "bad_key");
        // What was stored before the refused writes is intact.
        assert_eq!(
            a.handle(StateRequest::Load { key: "n".into() })
                .await
                .value
                .as_deref(),
            Some("1")
        );
    }

    #[tokio::test]
    async fn a_write_past_the_owners_quota_is_refused_naming_it() {
        let store: Arc<dyn Store> = Arc::new(skython_store::SqliteStore::open_in_memory().unwrap());
        let state = |f: &str| ScopedState {
            store: store.clone(),
            scope: StateScope {
                owner: "alice".into(),
                function: f.into(),
            },
            max_value_bytes: 1024,
            quota: StateQuota {
                max_keys: 1,
                max_bytes: 1024,
            },
            hub: None,
        };
        let put = |f: &'static str, key: &'static str| {
            let state = state(f);
            async move {
                state
                    .handle(StateRequest::Store {
                        key: key.into(),
                        value: "1".into(),
                        expect: None,
                    })
                    .await
            }
        };
        assert!(put("f", "a").await.ok);
        let refused = put("g", "b").await;
        let err = refused.error.unwrap();
        assert_eq!(err.code, "quota_exceeded");
        assert_eq!(
            err.message,
            "state quota exceeded: alice may keep at most 1 keys (all functions together); \
             1 in use, this write would make 2"
        );
    }

    #[test]
    fn workers_cache_state_only_where_the_gateway_is_the_one_writer() {
        let caching = |one_writer: bool| {
            let store: Arc<dyn Store> =
                Arc::new(skython_store::SqliteStore::open_in_memory().unwrap());
            let d = Deployments::new(
                store,
                HashMap::new(),
                Limits::default(),
                None,
                None,
                one_writer,
            );
            d.scoped_state(alices_state().scope).cache().is_some()
        };
        assert!(caching(true));
        assert!(!caching(false));
    }

    /// alice/f's state in a fresh in-memory store, values up to 16 bytes.
    fn alices_state() -> ScopedState {
        ScopedState {
            store: Arc::new(skython_store::SqliteStore::open_in_memory().unwrap()),
            scope: StateScope {
                owner: "alice".into(),
                function: "f".into(),
            },
            max_value_bytes: 16,
            quota: StateQuota::default(),
            hub: None,
        }
    }

    fn store(key: &str, value: &str, expect: Option<&str>) -> StateRequest {
        StateRequest::Store {
            key: key.into(),
            value: value.into(),
            expect: expect.map(Into::into),
        }
    }

    fn incr(key: &str, by: i64, default: i64) -> StateRequest {
        StateRequest::Incr {
            key: key.into(),
            by: by.into(),
            default: default.into(),
        }
    }

    async fn load(state: &ScopedState, key: &str) -> Option<String> {
        state
            .handle(StateRequest::Load { key: key.into() })
            .await
            .value
    }

    #[tokio::test]
    async fn incr_counts_from_the_default_and_answers_the_new_number() {
        let state = alices_state();
        let first = state.handle(incr("n", 1, 10)).await;
        assert_eq!(
            first,
            StateAnswer {
                ok: true,
                value: Some("11".into()),
                ..Default::default()
            }
        );
        let second = state.handle(incr("n", -3, 10)).await;
        assert_eq!(second.value.as_deref(), Some("8"));
        assert_eq!(load(&state, "n").await.as_deref(), Some("8"));
    }

    #[tokio::test]
    async fn incr_of_a_non_number_is_refused_with_the_stores_message() {
        let state = alices_state();
        assert!(state.handle(store("n", r#""seven""#, None)).await.ok);
        let err = state.handle(incr("n", 1, 0)).await.error.unwrap();
        assert_eq!(
            (err.code.as_str(), err.message.as_str()),
            (
                "invalid_write",
                r#"incr needs a number under "n", found a string"#
            )
        );
        assert_eq!(load(&state, "n").await.as_deref(), Some(r#""seven""#));
    }

    #[tokio::test]
    async fn incr_checks_the_key_like_any_request() {
        let err = alices_state().handle(incr("", 1, 0)).await.error.unwrap();
        assert_eq!(err.code, "bad_key");
    }

    #[tokio::test]
    async fn compare_and_set_writes_only_over_the_expected_value_and_says_so() {
        let state = alices_state();
        let won = |a: StateAnswer| (a.ok, a.won);
        assert_eq!(
            won(state.handle(store("k", "1", Some("null"))).await),
            (true, Some(true)),
            "null expects a missing key"
        );
        assert_eq!(
            won(state.handle(store("k", "2", Some("null"))).await),
            (true, Some(false))
        );
        assert_eq!(
            won(state.handle(store("k", "3", Some("1.0"))).await),
            (true, Some(true)),
            "1.0 equals the stored 1"
        );
        assert_eq!(load(&state, "k").await.as_deref(), Some("3"));
    }

    #[tokio::test]
    async fn a_plain_store_is_not_told_it_won() {
        let answer = alices_state().handle(store("k", "1", None)).await;
        assert_eq!(
            answer,
            StateAnswer {
                ok: true,
                ..Default::default()
            }
        );
    }

    #[tokio::test]
    async fn the_expected_value_is_checked_like_a_value() {
        let state = alices_state();
        let code = |a: StateAnswer| a.error.unwrap().code;
        assert_eq!(
            code(state.handle(store("k", "1", Some("{"))).await),
            "bad_value"
        );
        let big = format!("\"{}\"", "x".repeat(20));
        let err = state
            .handle(store("k", "1", Some(&big)))
            .await
            .error
            .unwrap();
        assert_eq!(err.code, "value_too_large");
        assert!(
            err.message.starts_with("the expected value for \"k\""),
            "{}",
            err.message
        );
        assert_eq!(
            code(state.handle(store("k", "{", Some("null"))).await),
            "bad_value",
            "the new value too"
        );
        assert_eq!(load(&state, "k").await, None, "nothing was written");
    }

    fn scope() -> StateScope {
        StateScope {
            owner: "alice".into(),
            function: "f".into(),
        }
    }

    #[test]
    fn an_unavailable_store_is_state_unavailable_without_its_details() {
        let answer = refusal(
            &scope(),
            StoreError::Unavailable("mongodb://db:27017: connection refused".into()),
        );
        assert_eq!(
            answer,
            StateAnswer::refused("state_unavailable", "the state storage cannot be reached")
        );
    }

    #[test]
    fn an_invalid_write_keeps_the_stores_message() {
        let answer = refusal(&scope(), StoreError::Invalid("incr needs a number".into()));
        assert_eq!(
            answer,
            StateAnswer::refused("invalid_write", "incr needs a number")
        );
    }

    #[test]
    fn a_failing_store_is_a_storage_error() {
        let answer = refusal(&scope(), StoreError::Backend("disk I/O error".into()));
        assert_eq!(answer.error.unwrap().code, "storage_error");
    }
}
