//! The developer API under `/api/v1`: deploy, read, replace, delete and list functions, check
//! and test-run drafts, and read recent invocations and logs. Bearer-token auth.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use skython_crds::{
    Access, Runtime, Signature, SkyFunctionSpec, SkyFunctionStatus, Visibility, is_dns_label,
};
use skython_runner::{Caller, Inspection, SourceError, run_once};
use skython_store::{FunctionFilter, FunctionRecord, FunctionStats, Invocation, StateScope};

use crate::AppState;
use crate::auth::AuthUser;
use crate::contract::ArgSchema;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::invoke::{CallOutput, check_args};
use crate::skybox;

/// A function as the API shows it: the spec fields (without `env`), then what the platform
/// observed.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = without_env)]
pub struct FunctionView {
    /// `env` is always empty here, so it is not serialized: its values are secrets.
    #[serde(flatten)]
    spec: SkyFunctionSpec,
    /// The names of the function's environment variables, for its owner (and the admin) only.
    /// Their values are never shown; a replace (`PUT`) without `env` keeps them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_names: Option<Vec<String>>,
    /// Who may call it: `access`, or what its visibility implies when `access` is unset.
    pub effective_access: Access,
    pub status: SkyFunctionStatus,
    pub generation: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Calls so far, clones made of it, and the function it was cloned from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<StatsView>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    pub calls: u64,
    /// Calls that failed (counted in `calls` too).
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_called_at: Option<String>,
    pub clones: u64,
    /// `owner/endpoint` of the function this one was cloned from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloned_from: Option<String>,
}

impl From<FunctionStats> for StatsView {
    fn from(s: FunctionStats) -> Self {
        StatsView {
            calls: s.calls,
            errors: s.errors,
            last_called_at: s.last_called_at.map(|t| t.to_string()),
            clones: s.clones,
            cloned_from: s.cloned_from,
        }
    }
}

impl FunctionView {
    /// What `viewer` may see of a function: never the values of its `env`, and its names only
    /// if the viewer manages the function.
    pub fn new(mut r: FunctionRecord, viewer: Option<&AuthUser>) -> Self {
        let env = std::mem::take(&mut r.spec.env);
        FunctionView {
            env_names: viewer
                .is_some_and(|v| v.may_manage(&r.spec.owner))
                .then(|| env.into_iter().map(|e| e.name).collect()),
            effective_access: r.spec.effective_access(),
            spec: r.spec,
            status: r.status,
            generation: r.generation,
            created_at: r.created_at.to_string(),
            updated_at: r.updated_at.to_string(),
            stats: None,
        }
    }

    /// The view with the function's statistics from the catalogue (a function's page).
    pub async fn with_stats(
        app: &AppState,
        r: FunctionRecord,
        viewer: Option<&AuthUser>,
    ) -> ApiResult<Self> {
        // As in a listing: the counts include every call finished before the page was asked.
        app.recorder.flush().await;
        let s = app
            .store
            .function_stats(&r.spec.owner, &r.spec.endpoint)
            .await?;
        let mut view = FunctionView::new(r, viewer);
        view.stats = Some(s.into());
        Ok(view)
    }
}

/// The schema of [`FunctionView`]: its flattened spec has no `env`.
fn without_env(schema: &mut schemars::Schema) {
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.remove("env");
    }
}

/// A function in a listing (without its source), with its statistics.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSummary {
    pub owner: String,
    pub endpoint: String,
    pub description: String,
    pub tags: Vec<String>,
    pub visibility: Visibility,
    pub runtime: Runtime,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    pub updated_at: String,
    pub stats: StatsView,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FunctionList {
    pub items: Vec<FunctionSummary>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this owner's functions.
    pub owner: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// How many, newest first (default 50, at most 1000).
    pub limit: Option<usize>,
}

/// `{owner}/{endpoint}` of a function's routes (named, so the document names them).
#[derive(Debug, Deserialize, JsonSchema)]
pub struct FunctionPath {
    /// The owner's user name.
    pub owner: String,
    /// The function's endpoint name.
    pub endpoint: String,
}

/// `{owner}/{endpoint}/versions/{version}`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct VersionPath {
    /// The owner's user name.
    pub owner: String,
    /// The function's endpoint name.
    pub endpoint: String,
    /// The version's number (its generation).
    pub version: i64,
}

/// `{id}` of a token or key.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CredentialPath {
    /// The credential's id.
    pub id: String,
}

/// A draft to run once without deploying it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestRunRequest {
    pub source: String,
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// The arguments: an object (keywords) or an array (positional). Default `{}`.
    #[serde(default)]
    pub args: Option<Value>,
    /// State is kept apart from the deployed function's, under this endpoint name.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
}

/// A draft to check while it is written: nothing runs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    pub source: String,
    #[serde(default)]
    pub entrypoint: Option<String>,
    #[serde(default)]
    pub runtime: Runtime,
}

/// A draft's verdict: its signature if it would deploy, else what is wrong with it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    pub problems: Vec<Problem>,
}

/// What is wrong with a source, and where: what a deploy of it is refused with (`code`,
/// `message` and the rest are the error body's).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub code: ErrorCode,
    pub message: String,
    /// The line of a syntax error (from 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// The text of that line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The functions that could be the entrypoint (`ambiguous_entrypoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<String>>,
}

impl From<SourceError> for Problem {
    fn from(e: SourceError) -> Self {
        let code = match e.code.as_str() {
            "syntax_error" => ErrorCode::SyntaxError,
            "no_entrypoint" => ErrorCode::NoEntrypoint,
            "ambiguous_entrypoint" => ErrorCode::AmbiguousEntrypoint,
            "entrypoint_not_found" => ErrorCode::EntrypointNotFound,
            // The source exhausted a limit of its inspection (runner/python/skython_runtime/inspection.py).
            "source_too_large" => ErrorCode::SourceTooLarge,
            "source_too_deeply_nested" => ErrorCode::SourceTooDeeplyNested,
            "source_too_complex" => ErrorCode::SourceTooComplex,
            _ => ErrorCode::InvalidSource,
        };
        Problem {
            code,
            message: e.message,
            line: e.line,
            column: e.column,
            text: e.text,
            candidates: e.candidates,
        }
    }
}

/// The error a deploy of the source is refused with: the problem's fields in its body.
impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        let mut extra = match serde_json::to_value(&p) {
            Ok(Value::Object(fields)) => fields,
            _ => Default::default(),
        };
        extra.remove("code");
        extra.remove("message");
        ApiError {
            extra,
            ..ApiError::new(p.code, p.message)
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestRunResponse {
    /// The HTTP status the deployed endpoint would answer with.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
    pub logs: String,
    pub duration_ms: f64,
    pub signature: Signature,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InvocationList {
    pub items: Vec<InvocationView>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvocationView {
    pub request_id: String,
    pub started_at: String,
    pub duration_ms: f64,
    pub status: u16,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub logs: String,
    pub cold_start: bool,
}

impl From<Invocation> for InvocationView {
    fn from(i: Invocation) -> Self {
        InvocationView {
            request_id: i.request_id,
            started_at: i.started_at.to_string(),
            duration_ms: i.duration_ms,
            status: i.status,
            outcome: i.outcome,
            error: i.error,
            logs: i.logs,
            cold_start: i.cold_start,
        }
    }
}

/// Parses a JSON body whatever its content type says (`curl -d` sends form encoding).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    if body.trim_ascii().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(ErrorCode::InvalidBody, format!("invalid body: {e}"))
        }
        _ => ApiError::new(
            ErrorCode::BadJson,
            format!("the request body is not valid JSON: {e}"),
        ),
    })
}

/// The top-level property names of a type's JSON schema.
fn properties(schema: &schemars::Schema) -> BTreeSet<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// Fields of [`FunctionView`] that are not the spec's, from both schemas.
static VIEW_ONLY: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    let spec = properties(&schemars::schema_for!(SkyFunctionSpec));
    let view = properties(&schemars::schema_for!(FunctionView));
    view.difference(&spec).cloned().collect()
});

/// Spec fields that are not the developer's to deploy: the replica count belongs to the
/// autoscaler (on Kubernetes, the SkyFunction's `scale` subresource).
pub(crate) const NOT_DEPLOYABLE: [&str; 1] = ["replicas"];

/// The spec's top-level field names a body may carry, from its schema: anything else in a body
/// is a mistake.
static SPEC_FIELDS: LazyLock<BTreeSet<String>> = LazyLock::new(|| {
    let mut fields = properties(&schemars::schema_for!(SkyFunctionSpec));
    fields.retain(|k| !NOT_DEPLOYABLE.contains(&k.as_str()));
    fields
});

/// Every invalid field at once, in the message and as `fields`.
pub(crate) fn validate(spec: &SkyFunctionSpec) -> ApiResult<()> {
    let errors = spec.validate();
    if errors.is_empty() {
        return Ok(());
    }
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Err(ApiError::new(ErrorCode::InvalidSpec, message)
        .with("fields", serde_json::to_value(&errors).unwrap_or_default()))
}

/// Reads a spec from a request body, filling `owner` (the caller) and `endpoint` (the path).
pub fn parse_spec(
    mut body: Value,
    user: &AuthUser,
    path: Option<(&str, &str)>,
) -> ApiResult<SkyFunctionSpec> {
    let obj = body.as_object_mut().ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidBody,
            "the body must be a JSON object of SkyFunction spec fields",
        )
    })?;
    if obj.contains_key("replicas") {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "replicas is not deployable: the platform scales a function between \
             scaling.minReplicas and scaling.maxReplicas; set those instead",
        ));
    }
    // What a GET of the function adds to the spec is read-only: a client may send back what
    // it read (like Kubernetes ignoring `status` in an update).
    for k in VIEW_ONLY.iter() {
        obj.remove(k);
    }
    let unknown: Vec<&String> = obj.keys().filter(|k| !SPEC_FIELDS.contains(*k)).collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = SPEC_FIELDS.iter().map(String::as_str).collect();
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                "unknown field(s) {unknown:?}; the spec fields are {}",
                known.join(", ")
            ),
        ));
    }
    for (field, from_path) in [
        ("owner", path.map(|p| p.0)),
        ("endpoint", path.map(|p| p.1)),
    ] {
        match (obj.get(field), from_path) {
            (Some(Value::String(given)), Some(p)) if given != p => {
                return Err(ApiError::new(
                    ErrorCode::InvalidBody,
                    format!("{field} {given:?} in the body differs from {p:?} in the URL"),
                ));
            }
            (None, Some(p)) => {
                obj.insert(field.into(), p.into());
            }
            _ => {}
        }
    }
    obj.entry("owner")
        .or_insert_with(|| user.0.name.clone().into());
    let spec: SkyFunctionSpec = serde_json::from_value(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidBody, format!("invalid spec: {e}")))?;
    validate(&spec)?;
    if !user.may_manage(&spec.owner) {
        return Err(ApiError::forbidden(format!(
            "{} may not manage functions of {}",
            user.0.name, spec.owner
        )));
    }
    Ok(spec)
}

/// Syntax check and entry function, without running anything.
pub(crate) async fn inspect(app: &AppState, spec: &SkyFunctionSpec) -> ApiResult<Signature> {
    examine(app, spec).await?.map_err(ApiError::from)
}

/// The source's signature, or what is wrong with the source; an error if it could not be
/// inspected (its runtime is missing or failed).
async fn examine(app: &AppState, spec: &SkyFunctionSpec) -> ApiResult<Result<Signature, Problem>> {
    let runtime = spec.runtime;
    let zygote = app.deployments.zygote(runtime).ok_or_else(|| {
        ApiError::new(
            ErrorCode::RuntimeUnavailable,
            format!(
                "runtime {:?} is not installed on this server (available: {})",
                runtime.as_str(),
                app.deployments.runtimes().join(", ")
            ),
        )
        .with_status(StatusCode::BAD_REQUEST)
    })?;
    let filename = format!("{}.py", spec.endpoint);
    match zygote
        .inspect(&spec.source, &filename, spec.entrypoint.as_deref())
        .await
    {
        Ok(Inspection::Ok { signature }) => Ok(Ok(signature)),
        Ok(Inspection::Invalid { error }) => Ok(Err(error.into())),
        Err(e) => {
            tracing::error!("inspecting a source failed: {e}");
            Err(ApiError::new(
                ErrorCode::RuntimeUnavailable,
                "the Python runtime is not available; see the server log",
            ))
        }
    }
}

/// A draft of `user`'s as their function `endpoint`, to inspect or run.
fn draft(
    user: &AuthUser,
    endpoint: &str,
    source: &str,
    entrypoint: Option<String>,
    runtime: Runtime,
) -> SkyFunctionSpec {
    let mut spec = SkyFunctionSpec::new(&user.0.name, endpoint, source);
    spec.entrypoint = entrypoint;
    spec.runtime = runtime;
    spec
}

/// Who the token belongs to.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    pub name: String,
    pub is_admin: bool,
}

pub async fn me(user: AuthUser) -> Json<Me> {
    Json(Me {
        name: user.0.name,
        is_admin: user.0.is_admin,
    })
}

pub async fn create_function(
    State(app): State<AppState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body: Value = json_body(&body?)?;
    let spec = parse_spec(body, &user, None)?;
    let record = deploy(&app, spec, None, None).await?;
    Ok((
        StatusCode::CREATED,
        Json(FunctionView::new(record, Some(&user))),
    )
        .into_response())
}

pub async fn replace_function(
    State(app): State<AppState>,
    user: AuthUser,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<FunctionView>> {
    let body: Value = json_body(&body?)?;
    // `env` values are never shown, so clients cannot send them back: a body without `env`
    // keeps the current ones (`"env": []` removes them).
    let keeps_env = body.get("env").is_none();
    let mut spec = parse_spec(body, &user, Some((&owner, &endpoint)))?;
    let current = app
        .platform
        .get_function(&owner, &endpoint)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "function {owner}/{endpoint} does not exist; create it with POST /api/v1/functions"
            ))
        })?;
    if keeps_env {
        spec.env = current.spec.env.clone();
    }
    let record = deploy(&app, spec, Some(&current), None).await?;
    Ok(Json(FunctionView::new(record, Some(&user))))
}

/// Deploys a checked spec: the source inspected (syntax, entry function, signature), then a new
/// function (`current` None) or the version after `current`, indexed in the skybox and
/// recorded as a version (`restored_from`: the version a rollback brings back).
pub(crate) async fn deploy(
    app: &AppState,
    spec: SkyFunctionSpec,
    current: Option<&FunctionRecord>,
    restored_from: Option<i64>,
) -> ApiResult<FunctionRecord> {
    let signature = inspect(app, &spec).await?;
    let now = jiff::Timestamp::now();
    let status = SkyFunctionStatus {
        signature: Some(signature),
        ..Default::default()
    };
    let record = match current {
        None => {
            let record = FunctionRecord {
                status,
                spec,
                generation: 1,
                created_at: now,
                updated_at: now,
            };
            app.platform.create_function(record).await?
        }
        Some(c) => {
            let record = FunctionRecord {
                status,
                spec,
                generation: c.generation + 1,
                created_at: c.created_at,
                updated_at: now,
            };
            app.platform.replace_function(record, c.generation).await?
        }
    };
    skybox::deployed(app, &record, restored_from).await;
    Ok(record)
}

/// The function if the caller may see it: its owner and the admin always, anyone (signed in
/// or not) if public; 404 otherwise, so private names stay private.
pub(crate) async fn visible(
    app: &AppState,
    user: Option<&AuthUser>,
    owner: &str,
    endpoint: &str,
) -> ApiResult<FunctionRecord> {
    let missing = || ApiError::function_not_found(owner, endpoint);
    if !is_dns_label(owner) || !is_dns_label(endpoint) {
        return Err(missing());
    }
    match app.platform.get_function(owner, endpoint).await? {
        Some(r)
            if r.spec.visibility == Visibility::Public
                || user.is_some_and(|u| u.may_manage(owner)) =>
        {
            Ok(r)
        }
        _ => Err(missing()),
    }
}

pub async fn get_function(
    State(app): State<AppState>,
    user: Option<AuthUser>,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
) -> ApiResult<Json<FunctionView>> {
    let record = visible(&app, user.as_ref(), &owner, &endpoint).await?;
    Ok(Json(
        FunctionView::with_stats(&app, record, user.as_ref()).await?,
    ))
}

pub async fn delete_function(
    State(app): State<AppState>,
    user: AuthUser,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
) -> ApiResult<StatusCode> {
    visible(&app, Some(&user), &owner, &endpoint).await?;
    if !user.may_manage(&owner) {
        return Err(ApiError::forbidden(format!(
            "{} may not delete functions of {owner}",
            user.0.name
        )));
    }
    if !app.platform.delete_function(&owner, &endpoint).await? {
        return Err(ApiError::function_not_found(&owner, &endpoint));
    }
    app.store.remove_from_catalog(&owner, &endpoint).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_functions(
    State(app): State<AppState>,
    user: AuthUser,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<FunctionList>> {
    let Query(q) = query?;
    let filter = match (&q.owner, user.0.is_admin) {
        (Some(o), true) => FunctionFilter {
            owner: Some(o.clone()),
            include_public: false,
        },
        (None, true) => FunctionFilter::default(),
        (Some(o), false) if *o == user.0.name => FunctionFilter {
            owner: Some(o.clone()),
            include_public: false,
        },
        // Someone else's functions: only the public ones.
        (Some(_), false) => FunctionFilter {
            owner: None,
            include_public: true,
        },
        (None, false) => FunctionFilter {
            owner: Some(user.0.name.clone()),
            include_public: true,
        },
    };
    let mut records = app.platform.list_functions(&filter).await?;
    records.retain(|r| q.owner.as_ref().is_none_or(|o| r.spec.owner == *o));
    let names: Vec<(String, String)> = records
        .iter()
        .map(|r| (r.spec.owner.clone(), r.spec.endpoint.clone()))
        .collect();
    // The counts include every call finished before the listing.
    app.recorder.flush().await;
    let stats = app.store.functions_stats(&names).await?;
    let items = records
        .into_iter()
        .zip(stats)
        .map(|(r, stats)| FunctionSummary {
            ready: r
                .status
                .ready_condition()
                .is_some_and(|c| c.status == "True"),
            url: r.status.url.clone(),
            signature: r.status.signature.clone(),
            updated_at: r.updated_at.to_string(),
            owner: r.spec.owner,
            endpoint: r.spec.endpoint,
            description: r.spec.description,
            tags: r.spec.tags,
            visibility: r.spec.visibility,
            runtime: r.spec.runtime,
            stats: stats.into(),
        })
        .collect();
    Ok(Json(FunctionList { items }))
}

pub async fn test_run(
    State(app): State<AppState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<TestRunResponse>> {
    let req: TestRunRequest = json_body(&body?)?;
    let endpoint = req.endpoint.clone().unwrap_or_else(|| "draft".into());
    let mut spec = draft(
        &user,
        &endpoint,
        &req.source,
        req.entrypoint.clone(),
        req.runtime,
    );
    if let Some(t) = req.timeout_seconds {
        spec.timeout_seconds = t;
    }
    validate(&spec)?;
    let args = serde_json::to_vec(
        req.args
            .as_ref()
            .unwrap_or(&Value::Object(Default::default())),
    )
    .map_err(|e| ApiError::new(ErrorCode::InvalidBody, e.to_string()))?;
    let args = check_args(&args)?.to_vec();
    let signature = inspect(&app, &spec).await?;
    // Refused as the deployed endpoint would refuse them, before a worker starts.
    if let Err(e) = ArgSchema::from_signature(&signature).check(&args) {
        return Ok(Json(TestRunResponse {
            status: e.status.as_u16(),
            result: None,
            error: e.body().get("error").cloned(),
            logs: String::new(),
            duration_ms: 0.0,
            signature,
        }));
    }
    let zygote = app
        .deployments
        .zygote(spec.runtime)
        .ok_or_else(|| ApiError::internal("runtime vanished"))?;
    // The grant lives as long as this test run.
    let (mut worker_spec, _egress) = app.deployments.worker_spec(&spec, &signature.entrypoint);
    // Whatever the draft starts is killed with its group when the run ends.
    let group = app.deployments.group(
        &format!("{}.~draft-{endpoint}", spec.owner),
        &spec,
        &mut worker_spec,
    );
    // Drafts keep their state apart from the deployed function's.
    let state = Arc::new(app.deployments.scoped_state(StateScope {
        owner: spec.owner.clone(),
        function: format!("~draft/{endpoint}"),
    }));
    let started = Instant::now();
    // The draft runs as its author, who is also the one calling it.
    let caller = Caller::User {
        name: user.0.name.clone(),
    };
    let res = run_once(
        zygote,
        &worker_spec,
        &args,
        &caller,
        state,
        Duration::from_secs(spec.timeout_seconds.into()),
        group.as_ref(),
    )
    .await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let out = CallOutput::from_result(res);
    let body: Value = serde_json::from_slice(&out.body).unwrap_or(Value::Null);
    let ok = out.status == StatusCode::OK;
    Ok(Json(TestRunResponse {
        status: out.status.as_u16(),
        result: ok.then(|| body.clone()),
        error: (!ok).then(|| body.get("error").cloned().unwrap_or(Value::Null)),
        logs: out.logs,
        duration_ms,
        signature,
    }))
}

/// Checks a draft as a deploy would, answering what is wrong with its source as problems
/// (not errors): an editor checks as its user types.
pub async fn check(
    State(app): State<AppState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<CheckResult>> {
    let req: CheckRequest = json_body(&body?)?;
    let spec = draft(&user, "draft", &req.source, req.entrypoint, req.runtime);
    // An emptied editor is a draft without a function (the inspector says so), not a bad
    // request.
    if !spec.source.trim().is_empty() {
        validate(&spec)?;
    }
    Ok(Json(match examine(&app, &spec).await? {
        Ok(signature) => CheckResult {
            ok: true,
            signature: Some(signature),
            problems: Vec::new(),
        },
        Err(problem) => CheckResult {
            ok: false,
            signature: None,
            problems: vec![problem],
        },
    }))
}

fn limit(q: Result<Query<LimitQuery>, QueryRejection>) -> ApiResult<usize> {
    let Query(q) = q?;
    match q.limit.unwrap_or(50) {
        0 => Err(ApiError::new(
            ErrorCode::BadQuery,
            "limit must be at least 1",
        )),
        n => Ok(n.min(1000)),
    }
}

pub async fn invocations(
    State(app): State<AppState>,
    user: AuthUser,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
    query: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Json<InvocationList>> {
    let n = limit(query)?;
    visible(&app, Some(&user), &owner, &endpoint).await?;
    if !user.may_manage(&owner) {
        return Err(ApiError::forbidden(
            "only the owner may read a function's invocations",
        ));
    }
    app.recorder.flush().await;
    let items = app.store.recent_invocations(&owner, &endpoint, n).await?;
    Ok(Json(InvocationList {
        items: items.into_iter().map(Into::into).collect(),
    }))
}

/// Like `invocations`, but only the calls that printed something or failed.
pub async fn logs(
    State(app): State<AppState>,
    user: AuthUser,
    Path(FunctionPath { owner, endpoint }): Path<FunctionPath>,
    query: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Json<InvocationList>> {
    let Json(all) = invocations(
        State(app),
        user,
        Path(FunctionPath { owner, endpoint }),
        Ok(Query(LimitQuery { limit: Some(1000) })),
    )
    .await?;
    let n = limit(query)?;
    let items = all
        .items
        .into_iter()
        .filter(|i| !i.logs.is_empty() || i.error.is_some())
        .take(n)
        .collect();
    Ok(Json(InvocationList { items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_error(e: SourceError) -> ApiError {
        Problem::from(e).into()
    }

    fn source_err(code: &str) -> SourceError {
        SourceError {
            code: code.into(),
            message: format!("why: {code}"),
            line: None,
            column: None,
            text: None,
            candidates: None,
        }
    }

    #[test]
    fn sources_over_an_inspection_limit_are_bad_requests_with_their_code() {
        for code in [
            "source_too_large",
            "source_too_deeply_nested",
            "source_too_complex",
        ] {
            let e = source_error(source_err(code));
            assert_eq!((e.status, e.code.as_str()), (StatusCode::BAD_REQUEST, code));
            assert_eq!(e.message, format!("why: {code}"));
        }
    }

    #[test]
    fn a_body_may_not_set_replicas() {
        let user = AuthUser(
            skython_store::User {
                name: "alice".into(),
                is_admin: false,
                created_at: jiff::Timestamp::now(),
            },
            crate::auth::token_credential("alice", "test", "sky_pat_test"),
        );
        let body = serde_json::json!({"endpoint": "f", "source": "def f(): pass", "replicas": 3});
        let e = parse_spec(body, &user, None).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_body")
        );
        assert!(e.message.contains("scaling.minReplicas"), "{}", e.message);
        assert!(!SPEC_FIELDS.contains("replicas"));
        assert!(SPEC_FIELDS.contains("scaling"));
    }

    #[test]
    fn what_a_get_returned_may_be_sent_back_as_a_spec() {
        let user = AuthUser(
            skython_store::User {
                name: "alice".into(),
                is_admin: false,
                created_at: jiff::Timestamp::now(),
            },
            crate::auth::token_credential("alice", "test", "sky_pat_test"),
        );
        let body = serde_json::json!({"endpoint": "f", "source": "def f(): pass",
            "status": {}, "generation": 3, "createdAt": "x", "updatedAt": "y",
            "envNames": [], "effectiveAccess": "key", "stats": {"calls": 1}});
        assert_eq!(parse_spec(body, &user, None).unwrap().endpoint, "f");
        assert_eq!(
            VIEW_ONLY.iter().map(String::as_str).collect::<Vec<_>>(),
            [
                "createdAt",
                "effectiveAccess",
                "envNames",
                "generation",
                "stats",
                "status",
                "updatedAt"
            ]
        );
        let typo = serde_json::json!({"endpoint": "f", "source": "def f(): pass", "sorce": ""});
        assert_eq!(
            parse_spec(typo, &user, None).unwrap_err().code,
            "invalid_body"
        );
    }

    #[test]
    fn a_problem_is_the_error_body_of_a_refused_deploy() {
        let e = source_error(SourceError {
            line: Some(2),
            column: Some(9),
            text: Some("    retur x".into()),
            ..source_err("syntax_error")
        });
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"code": "syntax_error", "message": "why: syntax_error",
                "line": 2, "column": 9, "text": "    retur x"}})
        );
        let problem = Problem::from(source_err("ambiguous_entrypoint"));
        assert_eq!(
            serde_json::to_value(&problem).unwrap(),
            serde_json::json!({"code": "ambiguous_entrypoint", "message": "why: ambiguous_entrypoint"})
        );
    }

    #[test]
    fn an_unknown_source_error_is_an_invalid_source() {
        let e = source_error(source_err("something_new"));
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_source")
        );
    }
}
