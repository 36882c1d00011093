//! The runner pod's HTTP server: one function, read from the directory the operator mounts (its
//! ConfigMap), served by the same zygote, worker pool, limits, call path and JSON rules as the
//! gateway (shared from `skython-gateway`).
//!
//! `POST /` calls the function, for the caller in [`wire::CALLER_HEADER`] (anonymous without
//! it). `/healthz` answers while the process lives (liveness);
//! `/readyz` answers 200 once a worker has loaded the function, so a pod whose module fails to
//! import never receives traffic and says why. `/metrics` has the call metrics.
//! `POST wire::IDENTITY_PATH` answers the gateway's identity challenge ([`crate::identity`]).
//!
//! A pool pod ([`crate::pool`]) builds its `RunnerPod` when a gateway specialises it, from the
//! spec in the request instead of a directory, and from then on serves these same routes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use skython_crds::SkyFunctionSpec;
use skython_gateway::Limits;
use skython_gateway::deployments::{pool_limits, worker_spec};
use skython_gateway::error::{ApiError, ErrorCode};
use skython_gateway::invoke::{
    CallTarget, check_args, json_response, request_id, run_call, with_request_id,
};
use skython_gateway::metrics::Metrics;
use skython_runner::{Caller, Inspection, SourceError, StateHandler, WorkerPool, Zygote};

use crate::identity::{self, AnnouncedToken};
use crate::wire;

/// Files of the function directory (the keys of the operator's ConfigMap).
pub const SOURCE_FILE: &str = "source.py";
pub const SPEC_FILE: &str = "function.json";

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a SkyFunction spec: {source}")]
    BadSpec {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the function's source cannot be deployed: {}{}", .0.message, .0.line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Source(Box<SourceError>),
    #[error(transparent)]
    Runtime(Box<skython_runner::Error>),
    /// Why the first worker could not load the function (the message says it failed to load).
    #[error("{0}")]
    Load(String),
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
}

/// Reads the function the operator mounted: `function.json` (the spec) and `source.py`, which
/// wins over the spec's copy of the source.
pub fn read_function(dir: &Path) -> Result<SkyFunctionSpec, PodError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| PodError::Read { path, source })
    };
    let path = dir.join(SPEC_FILE);
    let mut spec: SkyFunctionSpec = serde_json::from_str(&read(SPEC_FILE)?)
        .map_err(|source| PodError::BadSpec { path, source })?;
    match read(SOURCE_FILE) {
        Ok(source) => spec.source = source,
        Err(PodError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(spec)
}

enum Readiness {
    Loading,
    Ready,
    Failed(String),
}

/// The one function this pod serves.
pub struct RunnerPod {
    label: String,
    timeout: Duration,
    pool: WorkerPool,
    metrics: Metrics,
    readiness: RwLock<Readiness>,
    limits: Limits,
    announced: Arc<AnnouncedToken>,
}

impl CallTarget for RunnerPod {
    fn pool(&self) -> &WorkerPool {
        &self.pool
    }
}

impl RunnerPod {
    /// Checks the source (without running it) and prepares the pool; no worker starts yet.
    /// The workers' `store`/`load` go to `state`; the identity route proves with the token in
    /// `announced`.
    pub async fn new(
        zygote: Arc<Zygote>,
        spec: &SkyFunctionSpec,
        limits: Limits,
        state: Arc<dyn StateHandler>,
        announced: Arc<AnnouncedToken>,
    ) -> Result<Arc<Self>, PodError> {
        let filename = format!("{}.py", spec.endpoint);
        let signature = match zygote
            .inspect(&spec.source, &filename, spec.entrypoint.as_deref())
            .await
            .map_err(|e| PodError::Runtime(Box::new(e)))?
        {
            Inspection::Ok { signature } => signature,
            Inspection::Invalid { error } => return Err(PodError::Source(Box::new(error))),
        };
        Self::checked(
            zygote,
            spec,
            &signature.entrypoint,
            limits,
            state,
            announced,
        )
    }

    /// As [`RunnerPod::new`], for a source whose entry function was found already (by the
    /// operator, for a pool pod's claim): a source that does not define it fails to load.
    pub fn checked(
        zygote: Arc<Zygote>,
        spec: &SkyFunctionSpec,
        entrypoint: &str,
        limits: Limits,
        state: Arc<dyn StateHandler>,
        announced: Arc<AnnouncedToken>,
    ) -> Result<Arc<Self>, PodError> {
        let mut pool_limits = pool_limits(spec, &limits);
        // A pod exists to serve: one worker stays loaded however long it idles.
        pool_limits.min_workers = pool_limits.min_workers.max(1);
        let label = format!("{}/{}", spec.owner, spec.endpoint);
        Ok(Arc::new(RunnerPod {
            timeout: Duration::from_secs(spec.timeout_seconds.into()),
            pool: WorkerPool::new(
                zygote,
                worker_spec(spec, entrypoint, &limits),
                pool_limits,
                state,
            ),
            label,
            metrics: Metrics::new()?,
            readiness: RwLock::new(Readiness::Loading),
            limits,
            announced,
        }))
    }

    /// `owner/endpoint`: how logs and metrics name the function.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The function's timeout: how long a call may still run when the pod stops.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Loads the function in a first worker; the pod is ready when that succeeds.
    pub async fn warm(&self) -> Result<(), PodError> {
        let result = self.pool.warm(1).await.map_err(|e| e.to_string());
        let mut r = self.readiness.write().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                *r = Readiness::Ready;
                Ok(())
            }
            Err(e) => {
                tracing::error!(function = %self.label, "loading the function failed: {e}");
                *r = Readiness::Failed(e.clone());
                Err(PodError::Load(e))
            }
        }
    }

    /// Stops idle workers beyond the one kept warm.
    pub fn reap(&self) -> usize {
        self.pool.reap(std::time::Instant::now())
    }

    pub fn router(self: Arc<Self>) -> Router {
        let body_limit = self.limits.max_body_bytes;
        let identity = identity::routes(self.announced.clone());
        let routes = Router::new()
            .route("/", post(call))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self)
            .merge(identity);
        skython_gateway::with_json_fallbacks(routes, "POST / calls the function")
            .layer(DefaultBodyLimit::max(body_limit))
    }
}

async fn call(
    State(pod): State<Arc<RunnerPod>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let rid = request_id(&headers);
    let resp = run(&pod, rid.to_str().unwrap_or_default(), &headers, body).await;
    with_request_id(resp, rid)
}

async fn run(
    pod: &Arc<RunnerPod>,
    rid: &str,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(headers)?;
    let body = body?;
    let args = Bytes::copy_from_slice(check_args(&body)?);
    let span = tracing::info_span!("call", function = %pod.label, request_id = %rid);
    let (out, cold_start) =
        run_call(pod.clone(), args, &caller, &pod.metrics, &pod.label, span).await;
    if !out.logs.is_empty() {
        // A pod's output is its log: `kubectl logs` shows what the function printed.
        tracing::info!(function = %pod.label, request_id = %rid, outcome = %out.outcome, "output:\n{}", out.logs.trim_end());
    }
    Ok(json_response(out.status, &out.body, cold_start))
}

/// Who the gateway says called: anonymous without [`wire::CALLER_HEADER`], 400 `bad_caller`
/// when it is not a caller's JSON.
fn caller(headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(wire::CALLER_HEADER) else {
        return Ok(Caller::Anonymous);
    };
    serde_json::from_slice(value.as_bytes()).map_err(|e| {
        ApiError::new(
            ErrorCode::BadCaller,
            format!(
                "the {} header must be {{\"kind\": \"anonymous\"}}, {{\"kind\": \"user\", \"name\"}} or {{\"kind\": \"key\", \"id\", \"owner\", \"name\"}}: {e}",
                wire::CALLER_HEADER
            ),
        )
    })
}

async fn readyz(State(pod): State<Arc<RunnerPod>>) -> Response {
    let r = pod.readiness.read().unwrap_or_else(|p| p.into_inner());
    let (code, message) = match &*r {
        Readiness::Ready => return "ready".into_response(),
        Readiness::Loading => (
            ErrorCode::Loading,
            "the function is still loading".to_string(),
        ),
        Readiness::Failed(msg) => (
            ErrorCode::LoadError,
            format!("the function failed to load: {msg}"),
        ),
    };
    unready(code, message)
}

/// A readiness probe's 503. Answered directly, not as an `ApiError`: probes ask every few
/// seconds, and a load failure is already in the log once.
pub(crate) fn unready(code: ErrorCode, message: String) -> Response {
    let body = ApiError::new(code, message)
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .body();
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

async fn metrics(State(pod): State<Arc<RunnerPod>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        pod.metrics
            .render([(pod.label.as_str(), pod.pool.live(), pod.pool.pipelined())]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_caller(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(wire::CALLER_HEADER, HeaderValue::from_str(value).unwrap());
        headers
    }

    const ADD: &str = "def add(a, b):\n    return a + b\n";

    /// A function directory with `function.json` (the spec of `add` with `spec_source`) and,
    /// if given, `source.py`.
    fn function_dir(spec_source: &str, source_py: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let spec = SkyFunctionSpec::new("alice", "add", spec_source);
        std::fs::write(
            dir.path().join(SPEC_FILE),
            serde_json::to_string(&spec).unwrap(),
        )
        .unwrap();
        if let Some(source) = source_py {
            std::fs::write(dir.path().join(SOURCE_FILE), source).unwrap();
        }
        dir
    }

    #[test]
    fn a_function_json_alone_is_the_whole_function() {
        // What a pod reads from its own annotation: no source.py beside it.
        let dir = function_dir(ADD, None);
        assert_eq!(
            read_function(dir.path()).unwrap(),
            SkyFunctionSpec::new("alice", "add", ADD)
        );
    }

    #[test]
    fn source_py_wins_over_the_specs_copy_of_the_source() {
        let dir = function_dir("stale", Some(ADD));
        assert_eq!(read_function(dir.path()).unwrap().source, ADD);
    }

    #[test]
    fn a_call_without_the_caller_header_is_anonymous() {
        assert_eq!(caller(&HeaderMap::new()).unwrap(), Caller::Anonymous);
    }

    #[test]
    fn the_caller_header_names_the_caller() {
        let alice = Caller::User {
            name: "alice".into(),
        };
        let headers = with_caller(&wire::caller_header(&alice));
        assert_eq!(caller(&headers).unwrap(), alice);
    }

    #[test]
    fn a_caller_header_that_is_no_caller_is_400_bad_caller() {
        for bad in ["alice", r#"{"kind":"root"}"#, r#"{"kind":"user"}"#] {
            let e = caller(&with_caller(bad)).unwrap_err();
            assert_eq!(
                (e.status, e.code.as_str()),
                (StatusCode::BAD_REQUEST, "bad_caller"),
                "{bad}"
            );
        }
    }
}
