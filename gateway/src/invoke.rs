//! `POST /fn/{owner}/{endpoint}`: any HTTP client calls a deployed function with a JSON body.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skython_crds::is_dns_label;
use skython_runner::{
    CallResult, Caller, Error as RunnerError, FunctionError, Outcome, WorkerPool,
};
use skython_store::{CredentialKind, Invocation};
use tracing::Instrument;

use crate::AppState;
use crate::access::{self, CallPolicy};
use crate::error::{ApiError, ErrorCode};
use crate::metrics::Metrics;
use crate::platform::Call;
use crate::skybox;

/// A call's answer, ready to send and to record.
pub struct CallOutput {
    pub status: StatusCode,
    /// JSON: the return value, or `{"error": {...}}`.
    pub body: Bytes,
    /// `ok` or the error code.
    pub outcome: String,
    pub error: Option<String>,
    pub logs: String,
}

impl CallOutput {
    pub(crate) fn failed(e: ApiError, logs: String) -> Self {
        CallOutput {
            status: e.status,
            body: Bytes::from(e.body().to_string()),
            outcome: e.code.to_string(),
            error: Some(e.message),
            logs,
        }
    }

    /// Maps what the runner reported to the HTTP answer.
    pub fn from_result(res: Result<CallResult, RunnerError>) -> Self {
        match res {
            Ok(CallResult {
                outcome: Outcome::Returned(json),
                logs,
            }) => CallOutput {
                status: StatusCode::OK,
                body: json,
                outcome: "ok".into(),
                error: None,
                logs,
            },
            Ok(CallResult {
                outcome: Outcome::Failed(err),
                logs,
            }) => Self::failed(function_error(err), logs),
            Err(RunnerError::Load(err)) => {
                let mut logs = err.logs.clone().unwrap_or_default();
                if let Some(tb) = &err.traceback {
                    logs.push_str(tb);
                }
                Self::failed(function_error(err), logs)
            }
            Err(e) => Self::failed(runner_error(e), String::new()),
        }
    }
}

fn function_error(err: FunctionError) -> ApiError {
    let status = match err.code.as_str() {
        "bad_arguments" | "bad_json" => StatusCode::BAD_REQUEST,
        "load_timeout" => StatusCode::GATEWAY_TIMEOUT,
        // The function's storage, not the function, failed: the same call may work later.
        "state_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = match err.code.as_str() {
        "bad_arguments" => ErrorCode::BadArguments,
        "bad_json" => ErrorCode::BadJson,
        "load_error" => ErrorCode::LoadError,
        "load_timeout" => ErrorCode::LoadTimeout,
        "unserializable_result" => ErrorCode::UnserializableResult,
        "result_too_large" => ErrorCode::ResultTooLarge,
        "state_unavailable" => ErrorCode::StateUnavailable,
        _ => ErrorCode::FunctionError,
    };
    let mut e = ApiError::new(code, err.message).with_status(status);
    if let Some(t) = err.type_ {
        e = e.with("type", t);
    }
    if let Some(expected) = err.expected {
        e = e.with("expected", expected);
    }
    e
}

fn runner_error(e: RunnerError) -> ApiError {
    let msg = e.to_string();
    match e {
        RunnerError::Timeout(_) => {
            ApiError::new(ErrorCode::Timeout, format!("{msg}; the worker was stopped"))
        }
        RunnerError::Crashed(_) => ApiError::new(
            ErrorCode::WorkerCrashed,
            format!(
                "{msg}: the process exited (os._exit, a crash in native code, or a resource limit); it will be replaced"
            ),
        ),
        RunnerError::OutOfMemory(_) => ApiError::new(
            ErrorCode::OutOfMemory,
            format!("{msg}; it will be replaced"),
        ),
        RunnerError::Misbehaved(_) => ApiError::new(
            ErrorCode::WorkerCrashed,
            format!("{msg}; the worker was stopped and will be replaced"),
        ),
        RunnerError::QueueFull { .. } => ApiError::new(ErrorCode::TooManyRequests, msg),
        RunnerError::QueueTimeout(_) => ApiError::new(ErrorCode::QueueTimeout, msg),
        RunnerError::Retired => ApiError::new(ErrorCode::Retry, format!("{msg}; call again")),
        other => {
            tracing::error!("runtime failure: {other}");
            ApiError::new(
                ErrorCode::RuntimeUnavailable,
                "the Python runtime failed to start a worker; see the server log",
            )
        }
    }
}

/// Checks the body before any worker sees it: JSON, and an object or array (or empty).
pub fn check_args(body: &[u8]) -> Result<&[u8], ApiError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Ok(b"{}");
    }
    if nesting_exceeds(trimmed, MAX_NESTING) {
        return Err(ApiError::new(
            ErrorCode::BadJson,
            format!(
                "the request body nests arrays and objects more than {MAX_NESTING} levels deep"
            ),
        ));
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(trimmed) {
        return Err(ApiError::new(
            ErrorCode::BadJson,
            format!("the request body is not valid JSON: {e}"),
        ));
    }
    match trimmed[0] {
        b'{' | b'[' => Ok(trimmed),
        _ => Err(ApiError::new(
            ErrorCode::BadArguments,
            "the request body must be a JSON object (keyword arguments) or a JSON array (positional arguments)",
        )),
    }
}

/// Deepest nesting of arrays and objects accepted in arguments.
pub const MAX_NESTING: usize = 100;

/// Whether `json` nests deeper than `max` (brackets inside strings do not count). A byte scan,
/// so a hostile body costs no recursion here or in the worker.
fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Something that holds a pool.
pub trait CallTarget: Send + Sync + 'static {
    fn pool(&self) -> &WorkerPool;
}

impl CallTarget for crate::deployments::Deployed {
    fn pool(&self) -> &WorkerPool {
        &self.pool
    }
}

/// Runs one call for `caller` and counts it. A client that hangs up does not cut the worker off
/// mid-call: the call goes on, and its worker is free again when it answers.
pub async fn run_call<T: CallTarget>(
    target: Arc<T>,
    args: Bytes,
    caller: &Caller,
    metrics: &Metrics,
    label: &str,
    span: tracing::Span,
) -> (CallOutput, bool) {
    let started = Instant::now();
    let (res, cold_start) = match target.pool().call(&args, caller).instrument(span).await {
        Ok(report) => (Ok(report.result), report.cold_start),
        Err(e) => {
            let cold = matches!(e, RunnerError::Load(_));
            (Err(e), cold)
        }
    };
    let out = CallOutput::from_result(res);
    metrics
        .calls
        .with_label_values(&[label, out.outcome.as_str()])
        .inc();
    metrics
        .call_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    if cold_start {
        metrics.cold_starts.with_label_values(&[label]).inc();
    }
    (out, cold_start)
}

/// The HTTP answer of a call: the value plus a newline, so `curl` output ends its line (JSON
/// parsers ignore it).
pub fn json_response(status: StatusCode, json: &[u8], cold_start: bool) -> Response {
    let mut body = Vec::with_capacity(json.len() + 1);
    body.extend_from_slice(json);
    body.push(b'\n');
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if cold_start {
        h.insert("x-skython-cold-start", HeaderValue::from_static("true"));
    }
    resp
}

/// The caller's `x-request-id` when it is printable text, else a new UUID.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(X_REQUEST_ID) {
        Some(v) if v.to_str().is_ok_and(|s| !s.is_empty()) => v.clone(),
        _ => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("-")),
    }
}

const X_REQUEST_ID: &str = "x-request-id";

/// The answer of a call, or of its error, carrying the call's request id.
pub fn with_request_id(resp: Result<Response, ApiError>, rid: HeaderValue) -> Response {
    let mut resp = resp.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut().insert(X_REQUEST_ID, rid);
    resp
}

pub async fn call_function(
    State(app): State<AppState>,
    Path((owner, endpoint)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let rid = request_id(&headers);
    let mut policy = None;
    let resp = call(app, owner, endpoint, &headers, &rid, body, &mut policy).await;
    let mut resp = with_request_id(resp, rid);
    let origin = headers.get(header::ORIGIN);
    if origin.is_some() {
        resp.headers_mut()
            .extend(access::cors_headers(policy.as_deref(), origin));
    }
    resp
}

/// `OPTIONS /fn/{owner}/{endpoint}`: a browser asking whether a page of its origin may call.
pub async fn preflight(
    State(app): State<AppState>,
    Path((owner, endpoint)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let rid = request_id(&headers);
    let origin = headers.get(header::ORIGIN);
    let resp = async {
        let (policy, _) = policy(&app, &owner, &endpoint).await?;
        let allowed = access::preflight(&policy, origin)?;
        let mut resp = StatusCode::NO_CONTENT.into_response();
        resp.headers_mut().extend(allowed);
        Ok(resp)
    }
    .await;
    let mut resp = with_request_id(resp, rid);
    if resp.status() == StatusCode::NOT_FOUND {
        resp.headers_mut()
            .extend(access::cors_headers(None, origin));
    }
    resp
}

/// The function's call policy, and the pinned version if the path names one (`endpoint@n`):
/// 404 for names that cannot be a function, and for no such function or version.
async fn policy(
    app: &AppState,
    owner: &str,
    segment: &str,
) -> Result<(Arc<CallPolicy>, Option<i64>), ApiError> {
    let not_found = || ApiError::function_not_found(owner, segment);
    let (endpoint, version) = skybox::pinned(segment).ok_or_else(not_found)?;
    if !is_dns_label(owner) || !is_dns_label(endpoint) {
        return Err(not_found());
    }
    let policy = app
        .platform
        .call_policy(owner, endpoint, version)
        .await?
        .ok_or_else(not_found)?;
    Ok((policy, version))
}

async fn call(
    app: AppState,
    owner: String,
    endpoint: String,
    headers: &HeaderMap,
    rid: &HeaderValue,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    policy_out: &mut Option<Arc<CallPolicy>>,
) -> Result<Response, ApiError> {
    let started_at = jiff::Timestamp::now();
    let started = Instant::now();
    let (policy, version) = policy(&app, &owner, &endpoint).await?;
    let policy = policy_out.insert(policy).clone();
    // The endpoint without a pinned version, for records and metrics.
    let endpoint = policy.endpoint.clone();
    let secret = access::presented(headers)?;
    let who = match secret {
        Some(s) => app.credentials.authenticate(s).await?,
        None => None,
    };
    let caller = access::authorize(&policy, secret.is_some(), who.as_deref())?;
    let body = body?;
    let args = check_args(&body)?;
    let rid = rid.to_str().unwrap_or_default().to_string(); // printable: see `request_id`
    let (out, cold_start) = match policy.args.check(args) {
        Ok(()) => {
            let called = app
                .platform
                .call(Call {
                    owner: owner.clone(),
                    endpoint: endpoint.clone(),
                    args: Bytes::copy_from_slice(args),
                    request_id: rid.clone(),
                    caller,
                    version,
                })
                .await?;
            (called.output, called.cold_start)
        }
        // Refused before any worker saw it: counted and recorded as the worker's refusals are.
        Err(e) => {
            app.metrics
                .calls
                .with_label_values(&[&format!("{owner}/{endpoint}"), e.code.as_str()])
                .inc();
            (CallOutput::failed(e, String::new()), false)
        }
    };
    let elapsed = started.elapsed();
    if let Some(who) = who.filter(|w| w.credential.kind == CredentialKind::Key) {
        app.meter
            .record(&who.credential.id, !out.status.is_success(), elapsed);
    }
    let resp = json_response(out.status, &out.body, cold_start);
    app.recorder.record(Invocation {
        request_id: rid,
        owner,
        endpoint,
        started_at,
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        status: out.status.as_u16(),
        outcome: out.outcome,
        error: out.error,
        logs: out.logs,
        cold_start,
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_checked_before_any_worker_sees_them() {
        assert_eq!(check_args(b"").unwrap(), b"{}");
        assert_eq!(check_args(b" {\"a\": 1} \n").unwrap(), b"{\"a\": 1}");
        assert_eq!(check_args(b"[1,2]").unwrap(), b"[1,2]");
        assert_eq!(check_args(b"{\"a\":").unwrap_err().code, "bad_json");
        assert_eq!(check_args(b"a=1&b=2").unwrap_err().code, "bad_json");
        assert_eq!(check_args(b"42").unwrap_err().code, "bad_arguments");
        assert_eq!(check_args(b"null").unwrap_err().code, "bad_arguments");
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(
            check_args(deep.as_bytes()).map_err(|e| e.code.as_str()),
            Err("bad_json"),
            "nesting is bounded"
        );
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(check_args(ok.as_bytes()).is_ok());
        assert!(
            check_args(br#"{"a": "[[[[\"[[["}"#).is_ok(),
            "brackets in strings do not count"
        );
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let fe = |code: &str| {
            CallOutput::from_result(Ok(CallResult {
                outcome: Outcome::Failed(FunctionError {
                    code: code.into(),
                    type_: Some("ValueError".into()),
                    message: "m".into(),
                    traceback: Some("tb".into()),
                    expected: None,
                    logs: None,
                    retire: false,
                }),
                logs: String::new(),
            }))
        };
        let out = fe("function_error");
        assert_eq!(out.status, StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "function_error", "type": "ValueError", "message": "m"}})
        );
        assert_eq!(fe("bad_arguments").status, StatusCode::BAD_REQUEST);
        let st = |e| CallOutput::from_result(Err(e)).status;
        assert_eq!(
            st(RunnerError::Timeout(std::time::Duration::from_secs(1))),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            st(RunnerError::Crashed("x".into())),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            st(RunnerError::OutOfMemory("x".into())),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            st(RunnerError::Misbehaved("x".into())),
            StatusCode::BAD_GATEWAY,
            "a worker that breaks the protocol is the function's failure, not the runtime's"
        );
        assert_eq!(
            st(RunnerError::QueueFull {
                workers: 1,
                queue: 1
            }),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            st(RunnerError::Spawn("x".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn a_call_that_lost_its_state_storage_is_503_state_unavailable_with_its_traceback_logged() {
        let out = CallOutput::from_result(Ok(CallResult {
            outcome: Outcome::Failed(FunctionError {
                code: "state_unavailable".into(),
                type_: Some("StateUnavailable".into()),
                message: "the call could not use its state".into(),
                traceback: Some("Traceback ...".into()),
                expected: None,
                logs: None,
                retire: false,
            }),
            logs: "Traceback ...".into(),
        }));
        assert_eq!(out.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(out.outcome, "state_unavailable");
        assert_eq!(out.logs, "Traceback ...");
        let body: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "state_unavailable", "type": "StateUnavailable",
                "message": "the call could not use its state"}})
        );
    }
}
