//! The Skython gateway: one axum app that serves
//!
//! - `POST /fn/{owner}/{endpoint}`: calls of deployed functions, handed to the [`Platform`];
//! - `/api/v1/...`: the developer API (deploy, check, test-run, invocations, logs), OpenAPI at
//!   `/api/openapi.json`;
//! - `/healthz`, `/readyz`, `/metrics`.
//!
//! Where functions live and run is the [`Platform`]'s business: [`LocalPlatform`] keeps them in
//! the [`Store`] and runs them on the [`Deployments`] (a worker pool per called function, a
//! cache rebuilt on demand), answering the workers' state requests from the store. Users,
//! tokens and invocation records are in the store whatever the platform.

#![forbid(unsafe_code)]

pub mod access;
pub mod accounts;
pub mod api;
pub mod auth;
pub mod contract;
pub mod credentials;
pub mod deployments;
pub mod error;
pub mod invoke;
pub mod local;
pub mod login_limit;
pub mod meter;
pub mod metrics;
pub mod openapi;
pub mod platform;
mod recorder;
pub mod serve;
pub mod skybox;
mod state_hub;
mod web;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aide::axum::ApiRouter;
use aide::axum::routing::{delete_with, get_with, post_with};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skython_crds::Runtime;
use skython_runner::Zygote;
use skython_store::{StateQuota, Store};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use auth::{AdminToken, bootstrap_admin};
pub use deployments::Deployments;
pub use local::LocalPlatform;
pub use metrics::Metrics;
pub use platform::Platform;
pub use recorder::Recorder;

/// Per-call limits the gateway enforces for every function.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Largest request body (413 above).
    pub max_body_bytes: usize,
    /// Largest JSON return value.
    pub max_result_bytes: usize,
    /// Output kept per call; the rest is counted and said to be dropped.
    pub max_log_bytes: usize,
    /// Largest JSON value one `store()` may write.
    pub max_state_value_bytes: usize,
    /// State one owner may keep, all their functions together.
    pub state_quota: StateQuota,
    /// Callers that may wait for a busy function's worker (429 above).
    pub queue_limit: usize,
    /// Invocations kept per function.
    pub invocations_kept: usize,
    /// Processes and threads one function's workers may have together (with cgroups).
    pub max_procs_per_function: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 6 << 20,
            max_result_bytes: 10 << 20,
            max_log_bytes: 64 << 10,
            max_state_value_bytes: 1 << 20,
            state_quota: StateQuota::default(),
            queue_limit: 1000,
            invocations_kept: 200,
            max_procs_per_function: 256,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The base URL clients use, for the `url` of functions.
    pub public_url: String,
    pub limits: Limits,
    /// The egress proxy of sandboxed runtimes (functions with `network: internet` go out
    /// through it).
    pub egress: Option<Arc<skython_runner::egress::EgressProxy>>,
    /// Control groups for functions' workers, where the machine offers them to us.
    pub cgroups: Option<Arc<skython_runner::cgroup::Cgroups>>,
    /// A token that may read `/metrics` besides the admin's API token (for a scraper).
    pub metrics_token: Option<String>,
    /// Workers cache state values and send plain `store`s without waiting (`runner/PROTOCOL.md`,
    /// "State cache"). Only right where this gateway is the store's one writer: the embedded
    /// SQLite held by this server alone; ignored for a store that does not order its writes.
    pub state_cache: bool,
    /// Who may create accounts.
    pub signup: auth::SignupMode,
    /// Failed logins allowed per account and per address.
    pub login_limits: login_limit::LoginLimits,
    /// How long a failed login waits before it answers.
    pub login_failure_delay: Duration,
}

impl GatewayConfig {
    /// A configuration with every setting at its default (what tests start from).
    pub fn new(public_url: &str) -> Self {
        GatewayConfig {
            public_url: public_url.to_string(),
            limits: Limits::default(),
            egress: None,
            cgroups: None,
            metrics_token: None,
            state_cache: false,
            signup: auth::SignupMode::default(),
            login_limits: login_limit::LoginLimits::default(),
            login_failure_delay: Duration::from_millis(500),
        }
    }
}

/// What every handler reads: one `Arc`, so a request's clone of it is one count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub config: Arc<GatewayConfig>,
    /// Users, tokens, invocation records and state (and the functions, for `LocalPlatform`).
    pub store: Arc<dyn Store>,
    /// This machine's zygotes, for inspecting sources and test runs in either mode (and the
    /// worker pools of `LocalPlatform`).
    pub deployments: Arc<Deployments>,
    /// Where functions live and run: every read and write of a function and every call.
    pub platform: Arc<dyn Platform>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Whose secrets are whose (cached lookups).
    pub credentials: Arc<credentials::Credentials>,
    pub login_limiter: std::sync::Mutex<login_limit::LoginLimiter>,
    /// Sign-ups per address ([`login_limit::LoginLimits::SIGNUPS`]).
    pub signup_limiter: std::sync::Mutex<login_limit::LoginLimiter>,
    /// Usage of API keys.
    pub meter: meter::KeyMeter,
}

impl AppState {
    /// The local install (`skython up`): functions live in `store` and run on this machine's
    /// worker pools ([`LocalPlatform`]). Starts the background tasks (invocation writer, idle
    /// reaper).
    pub fn new(
        config: GatewayConfig,
        store: Arc<dyn Store>,
        zygotes: HashMap<Runtime, Arc<Zygote>>,
    ) -> Result<Self, prometheus::Error> {
        let metrics = Arc::new(Metrics::new()?);
        let deployments = Self::deployments(&config, &store, zygotes);
        let platform = Arc::new(LocalPlatform::new(
            store.clone(),
            deployments.clone(),
            metrics.clone(),
            &config.public_url,
        ));
        Ok(Self::wire(config, store, deployments, platform, metrics))
    }

    /// The gateway over another platform (`skython gateway`). `zygotes` still inspect sources
    /// and run drafts here, `store` keeps users, tokens and invocations, and `metrics` is shared
    /// with the platform so its calls count in the gateway's series.
    pub fn with_platform(
        config: GatewayConfig,
        store: Arc<dyn Store>,
        zygotes: HashMap<Runtime, Arc<Zygote>>,
        metrics: Arc<Metrics>,
        platform: Arc<dyn Platform>,
    ) -> Self {
        let deployments = Self::deployments(&config, &store, zygotes);
        Self::wire(config, store, deployments, platform, metrics)
    }

    fn deployments(
        config: &GatewayConfig,
        store: &Arc<dyn Store>,
        zygotes: HashMap<Runtime, Arc<Zygote>>,
    ) -> Arc<Deployments> {
        Arc::new(Deployments::new(
            store.clone(),
            zygotes,
            config.limits.clone(),
            config.egress.clone(),
            config.cgroups.clone(),
            config.state_cache,
        ))
    }

    fn wire(
        config: GatewayConfig,
        store: Arc<dyn Store>,
        deployments: Arc<Deployments>,
        platform: Arc<dyn Platform>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let recorder = Recorder::start(
            store.clone(),
            metrics.clone(),
            config.limits.invocations_kept,
        );
        let reaper = Arc::downgrade(&deployments);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let Some(d) = reaper.upgrade() else { return };
                let n = d.reap();
                if n > 0 {
                    tracing::debug!(stopped = n, "stopped idle workers");
                }
            }
        });
        // Sessions that ended are of no use: drop them now and then.
        let pruned = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let Some(store) = pruned.upgrade() else {
                    return;
                };
                if let Err(e) = store.prune_sessions(jiff::Timestamp::now()).await {
                    tracing::warn!("could not prune ended sessions: {e}");
                }
            }
        });
        let app = AppState(Arc::new(Shared {
            login_limiter: std::sync::Mutex::new(login_limit::LoginLimiter::new(
                config.login_limits,
            )),
            signup_limiter: std::sync::Mutex::new(login_limit::LoginLimiter::new(
                login_limit::LoginLimits::SIGNUPS,
            )),
            config: Arc::new(config),
            credentials: Arc::new(credentials::Credentials::new(store.clone())),
            meter: meter::KeyMeter::start(store.clone()),
            store,
            deployments,
            platform,
            metrics,
            recorder,
        }));
        // Functions deployed before the catalogue existed, or applied with kubectl, are found
        // too. The platform may still be starting (a cluster's registry syncing): try again.
        let indexing = app.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                match skybox::reindex(&indexing).await {
                    Ok(n) => {
                        tracing::debug!(functions = n, "catalogue indexed");
                        return;
                    }
                    Err(e) => tracing::debug!("indexing the catalogue: {}", e.message),
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            tracing::warn!(
                "could not index the catalogue; functions are indexed at their next deploy"
            );
        });
        app
    }
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    // The web app's files and pages are what a browser gets where no API route is.
    with_fallbacks(routes().into(), "see /api/openapi.json", web::respond)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Every route, each with its operation in the OpenAPI document ([`openapi`] describes them).
pub(crate) fn routes() -> ApiRouter<AppState> {
    use openapi as doc;
    let api = ApiRouter::new()
        .api_route(
            "/functions",
            post_with(api::create_function, doc::create_function)
                .get_with(api::list_functions, doc::list_functions),
        )
        .api_route(
            "/functions/{owner}/{endpoint}",
            get_with(api::get_function, doc::get_function)
                .put_with(api::replace_function, doc::replace_function)
                .delete_with(api::delete_function, doc::delete_function),
        )
        .api_route(
            "/functions/{owner}/{endpoint}/invocations",
            get_with(api::invocations, doc::invocations),
        )
        .api_route(
            "/functions/{owner}/{endpoint}/logs",
            get_with(api::logs, doc::logs),
        )
        .api_route(
            "/functions/{owner}/{endpoint}/openapi.json",
            get_with(contract::openapi_json, doc::function_openapi),
        )
        .api_route(
            "/functions/{owner}/{endpoint}/snippets",
            get_with(contract::snippets_json, doc::snippets),
        )
        .api_route(
            "/functions/{owner}/{endpoint}/clone",
            post_with(skybox::clone_function, doc::clone_function),
        )
        .api_route(
            "/functions/{owner}/{endpoint}/versions",
            get_with(skybox::list_versions, doc::list_versions),
        )
        .api_route(
            "/functions/{owner}/{endpoint}/versions/{version}",
            get_with(skybox::get_version, doc::get_version),
        )
        .api_route(
            "/functions/{owner}/{endpoint}/rollback",
            post_with(skybox::rollback, doc::rollback),
        )
        .api_route("/skybox", get_with(skybox::search, doc::search))
        .api_route("/test-run", post_with(api::test_run, doc::test_run))
        .api_route("/check", post_with(api::check, doc::check))
        .api_route("/me", get_with(api::me, doc::me))
        .api_route("/accounts", post_with(accounts::sign_up, doc::sign_up))
        .api_route("/sessions", post_with(accounts::log_in, doc::log_in))
        .api_route(
            "/sessions/current",
            delete_with(accounts::log_out, doc::log_out),
        )
        .api_route(
            "/tokens",
            post_with(accounts::create_token, doc::create_token)
                .get_with(accounts::list_tokens, doc::list_tokens),
        )
        .api_route(
            "/tokens/{id}",
            delete_with(accounts::revoke_token, doc::revoke_token),
        )
        .api_route(
            "/keys",
            post_with(accounts::create_key, doc::create_key)
                .get_with(accounts::list_keys, doc::list_keys),
        )
        .api_route(
            "/keys/{id}",
            get_with(accounts::get_key, doc::get_key)
                .delete_with(accounts::revoke_key, doc::revoke_key),
        );
    let routes = ApiRouter::new()
        .nest("/api/v1", api)
        .api_route(
            "/api/openapi.json",
            get_with(openapi::openapi_json, doc::document_route),
        )
        .api_route("/healthz", get_with(|| async { "ok" }, doc::healthz))
        .api_route("/readyz", get_with(readyz, doc::readyz))
        .api_route("/metrics", get_with(metrics_text, doc::metrics))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let rid = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::debug_span!("http", method = %req.method(), uri = %req.uri(), request_id = %rid)
            })
            // A function's 5xx is the function's business, not a gateway failure worth an ERROR.
            .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    // Endpoint calls are the hot path: they set their request id and span themselves (the
    // layers above cost about a tenth of a warm call's gateway time).
    let calls = ApiRouter::new().api_route(
        "/fn/{owner}/{endpoint}",
        post_with(invoke::call_function, doc::call_function)
            .options_with(invoke::preflight, doc::preflight),
    );
    calls.merge(routes)
}

/// JSON errors (not axum's plain text) for unknown routes and methods; `hint` says where to look.
/// They sit outside the request-id layers, so they set the request id themselves.
pub fn with_json_fallbacks<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    hint: &'static str,
) -> Router<S> {
    with_fallbacks(router, hint, |_, _, _| None)
}

/// What answers a request no route took, if anything, before the JSON 404.
type Pages = fn(&Method, &str, &HeaderMap) -> Option<Response>;

/// The JSON fallbacks, with `pages` asked first for a request no route took.
fn with_fallbacks<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    hint: &'static str,
    pages: Pages,
) -> Router<S> {
    router
        .fallback(move |req: Request<axum::body::Body>| async move {
            if let Some(page) = pages(req.method(), req.uri().path(), req.headers()) {
                return page;
            }
            let e = error::ApiError::not_found(format!("no such route; {hint}"));
            invoke::with_request_id(Err(e), invoke::request_id(req.headers()))
        })
        .method_not_allowed_fallback(move |req: Request<axum::body::Body>| async move {
            let e = error::ApiError::new(
                error::ErrorCode::MethodNotAllowed,
                format!(
                    "{} is not allowed on {}; {hint}",
                    req.method(),
                    req.uri().path()
                ),
            );
            invoke::with_request_id(Err(e), invoke::request_id(req.headers()))
        })
}

async fn readyz(State(app): State<AppState>) -> Response {
    for rt in app.deployments.runtimes() {
        let runtime = if rt == "full" {
            Runtime::Full
        } else {
            Runtime::Standard
        };
        if let Some(z) = app.deployments.zygote(runtime)
            && let Err(e) = z.start().await
        {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("runtime {rt}: {e}"),
            )
                .into_response();
        }
    }
    if let Err(e) = app.store.get_user(auth::ADMIN).await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")).into_response();
    }
    if let Err(e) = app.platform.ready().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("platform: {e}")).into_response();
    }
    "ready".into_response()
}

async fn metrics_text(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, error::ApiError> {
    auth::may_read_metrics(&headers, &app).await?;
    let pools = app.deployments.all();
    let mut text = app.metrics.render(
        pools
            .iter()
            .map(|d| (d.label.as_str(), d.pool.live(), d.pool.pipelined())),
    );
    text.push_str(&app.platform.render_metrics());
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response())
}
