//! People and their secrets under `/api/v1`: sign-up (`accounts`), login and logout
//! (`sessions`), personal access tokens (`tokens`) and API keys that gate calls (`keys`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use skython_crds::is_dns_label;
use skython_store::{Credential, CredentialKind, KeyUsage, User};

use crate::AppState;
use crate::api::{CredentialPath, json_body};
use crate::auth::{AuthUser, SESSION_COOKIE, SignupMode};
use crate::credentials::{credential, hash_password, new_secret, verify_password};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::login_limit::{LoginLimiter, Throttled};

/// Names that are parts of the product's URLs, or would mislead.
const RESERVED: &[&str] = &[
    "admin",
    "anonymous",
    "api",
    "app",
    "assets",
    "docs",
    "fn",
    "healthz",
    "help",
    "login",
    "logout",
    "me",
    "metrics",
    "new",
    "readyz",
    "root",
    "settings",
    "signup",
    "skybox",
    "skython",
    "static",
    "system",
    "www",
];

/// Shortest and longest password accepted (NIST 800-63B: at least 8; long passphrases welcome,
/// bounded so one request cannot make argon2 hash megabytes).
const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=1024;

/// How long a browser session lasts.
const SESSION_DAYS: i64 = 14;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    /// The account name: a DNS label (lowercase letters, digits, '-'), the owner in URLs.
    pub name: String,
    /// At least 8 characters.
    pub password: String,
}

/// A new account and its first personal access token (shown once).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedUp {
    pub name: String,
    pub token: String,
    pub token_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub name: String,
    pub password: String,
}

/// A browser session: the same secret is in the `skython_session` cookie (HttpOnly) and usable
/// as a bearer token until it expires or the session is ended.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub name: String,
    pub token: String,
    pub expires_at: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for ("laptop", "ci"): 1-64 characters.
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// What the key is for ("my-app"): 1-64 characters.
    pub name: String,
    /// The functions the key may call: `owner/endpoint`, or `owner/*` for all of an owner's
    /// (present and future). Only functions the caller manages.
    pub functions: Vec<String>,
}

/// A token or key as listed: never the secret, only its first characters.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialView {
    pub id: String,
    pub name: String,
    /// The secret's first characters, to recognise it.
    pub prefix: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Calls made with the key (keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
    /// The secret itself: only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    pub calls: u64,
    pub errors: u64,
    pub total_duration_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
}

impl From<&KeyUsage> for UsageView {
    fn from(u: &KeyUsage) -> Self {
        UsageView {
            calls: u.calls,
            errors: u.errors,
            total_duration_ms: u.duration_ms,
            last_used_at: u.last_used_at.map(|t| t.to_string()),
        }
    }
}

impl CredentialView {
    fn new(c: &Credential, secret: Option<String>) -> Self {
        CredentialView {
            id: c.id.clone(),
            name: c.name.clone(),
            prefix: c.prefix.clone(),
            functions: c.functions.clone(),
            created_at: c.created_at.to_string(),
            revoked_at: c.revoked_at.map(|t| t.to_string()),
            usage: (c.kind == CredentialKind::Key).then(|| (&c.usage).into()),
            secret,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CredentialList {
    pub items: Vec<CredentialView>,
}

fn check_name(name: &str) -> ApiResult<()> {
    if !is_dns_label(name) {
        return Err(ApiError::new(
            ErrorCode::InvalidName,
            format!(
                "name must be 1-63 lowercase letters, digits or '-', starting and ending with a \
                 letter or digit, got {name:?}"
            ),
        ));
    }
    if RESERVED.contains(&name) {
        return Err(ApiError::new(
            ErrorCode::NameReserved,
            format!("{name:?} is reserved; choose another name"),
        ));
    }
    Ok(())
}

fn check_password(password: &str) -> ApiResult<()> {
    let n = password.chars().count();
    if !PASSWORD_CHARS.contains(&n) {
        return Err(ApiError::new(
            ErrorCode::WeakPassword,
            format!(
                "password must be {} to {} characters, got {n}",
                PASSWORD_CHARS.start(),
                PASSWORD_CHARS.end()
            ),
        ));
    }
    Ok(())
}

fn check_label(what: &str, name: &str) -> ApiResult<()> {
    let n = name.chars().count();
    if n == 0 || n > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidName,
            format!("a {what} name is 1-64 characters without control characters, got {name:?}"),
        ));
    }
    Ok(())
}

/// Runs argon2 off the async threads: it takes tens of milliseconds of CPU by design.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))
}

/// `POST /api/v1/accounts`: sign-up (when the instance allows it) or, for the admin, creating
/// an account.
pub async fn sign_up(
    State(app): State<AppState>,
    admin: Option<AuthUser>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: SignUp = json_body(&body?)?;
    let by_admin = admin.as_ref().is_some_and(|a| a.0.is_admin);
    match app.config.signup {
        SignupMode::Open => {}
        _ if by_admin => {}
        SignupMode::Invite => {
            return Err(ApiError::new(
                ErrorCode::SignupByInvitation,
                "accounts on this instance are created by an administrator; ask one to invite you",
            ));
        }
        SignupMode::Closed => {
            return Err(ApiError::new(
                ErrorCode::SignupClosed,
                "sign-up is closed on this instance",
            ));
        }
    }
    check_name(&req.name)?;
    check_password(&req.password)?;
    if !by_admin {
        // Each sign-up costs an argon2 hash: bounded per address.
        let (address, now) = (peer(connect), Instant::now());
        let mut limiter = locked(&app.signup_limiter);
        limiter
            .check("", address, now)
            .map_err(|t| throttled("too many sign-ups from this address", t))?;
        limiter.count("", address, now);
    }
    let password = req.password;
    let phc = blocking(move || hash_password(&password))
        .await?
        .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))?;
    let secret = new_secret(CredentialKind::Token);
    let token = credential(
        &secret,
        CredentialKind::Token,
        &req.name,
        "sign-up",
        vec![],
        None,
    );
    let user = User {
        name: req.name.clone(),
        is_admin: false,
        created_at: Timestamp::now(),
    };
    app.store
        .create_user(&user, Some(&phc), std::slice::from_ref(&token))
        .await
        .map_err(|e| match e {
            skython_store::StoreError::Conflict(_) => ApiError::new(
                ErrorCode::NameTaken,
                format!("the name {:?} is taken; choose another", req.name),
            ),
            e => e.into(),
        })?;
    app.metrics.signups.inc();
    Ok((
        StatusCode::CREATED,
        Json(SignedUp {
            name: user.name,
            token: secret.secret,
            token_id: secret.id,
        }),
    )
        .into_response())
}

/// The client's address: the connection's peer (a proxy in front of the gateway shows as one
/// client; the per-account limit still applies to each account).
fn peer(connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    connect.map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.0.ip())
}

fn locked(limiter: &Mutex<LoginLimiter>) -> MutexGuard<'_, LoginLimiter> {
    limiter.lock().unwrap_or_else(PoisonError::into_inner)
}

/// 429 `too_many_attempts`, saying when to try again.
fn throttled(what: &str, t: Throttled) -> ApiError {
    let seconds = t.retry_after.as_secs().max(1);
    ApiError::new(
        ErrorCode::TooManyAttempts,
        format!("{what}; try again in {seconds} s"),
    )
    .with("retryAfterSeconds", seconds)
}

/// The session cookie's header: `secret` for `max_age` seconds (an empty one, 0: removed).
fn session_cookie(secret: &str, max_age: i64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .ok()
}

/// `POST /api/v1/sessions`: log in with a password; sets the session cookie.
pub async fn log_in(
    State(app): State<AppState>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: Login = json_body(&body?)?;
    let address = peer(connect);
    let throttled_login = locked(&app.login_limiter).check(&req.name, address, Instant::now());
    if let Err(t) = throttled_login {
        app.metrics
            .login_failures
            .with_label_values(&["throttled"])
            .inc();
        let whose = if t.account {
            "this account"
        } else {
            "this address"
        };
        return Err(throttled(&format!("too many failed logins for {whose}"), t));
    }
    let phc = if is_dns_label(&req.name) {
        app.store.password_hash(&req.name).await?
    } else {
        None
    };
    let password = req.password;
    let ok = blocking(move || verify_password(&password, phc.as_deref())).await?;
    if !ok {
        locked(&app.login_limiter).count(&req.name, address, Instant::now());
        app.metrics
            .login_failures
            .with_label_values(&["wrong_password"])
            .inc();
        // Slows a guesser that spreads over accounts and addresses, on top of argon2's cost.
        tokio::time::sleep(app.config.login_failure_delay).await;
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "wrong name or password",
        ));
    }
    locked(&app.login_limiter).succeeded(&req.name);
    let secret = new_secret(CredentialKind::Session);
    let expires_at = Timestamp::now() + SignedDuration::from_hours(24 * SESSION_DAYS);
    let session = credential(
        &secret,
        CredentialKind::Session,
        &req.name,
        "",
        vec![],
        Some(expires_at),
    );
    app.store.add_credential(&session).await?;
    let cookie = session_cookie(
        &secret.secret,
        SESSION_DAYS * 86_400,
        app.config.public_url.starts_with("https://"),
    );
    let mut resp = (
        StatusCode::CREATED,
        Json(Session {
            name: req.name,
            token: secret.secret,
            expires_at: expires_at.to_string(),
        }),
    )
        .into_response();
    if let Some(v) = cookie {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `DELETE /api/v1/sessions/current`: ends the session the request came with.
pub async fn log_out(State(app): State<AppState>, user: AuthUser) -> ApiResult<Response> {
    if user.1.kind == CredentialKind::Session {
        revoked(&app, &user.0.name, &user.1.id).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(v) = session_cookie("", 0, app.config.public_url.starts_with("https://")) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

pub async fn create_token(
    State(app): State<AppState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: NewToken = json_body(&body?)?;
    check_label("token", &req.name)?;
    mint(&app, &user, CredentialKind::Token, &req.name, vec![]).await
}

/// A new token or key of the caller's: stored as its hash, answered once with its secret.
async fn mint(
    app: &AppState,
    user: &AuthUser,
    kind: CredentialKind,
    name: &str,
    functions: Vec<String>,
) -> ApiResult<Response> {
    let secret = new_secret(kind);
    let c = credential(&secret, kind, &user.0.name, name, functions, None);
    app.store.add_credential(&c).await?;
    Ok((
        StatusCode::CREATED,
        Json(CredentialView::new(&c, Some(secret.secret))),
    )
        .into_response())
}

/// The functions a key may be scoped to: each `owner/endpoint` or `owner/*`, of owners the
/// caller manages; a named function must exist.
async fn check_scopes(app: &AppState, user: &AuthUser, functions: &[String]) -> ApiResult<()> {
    if functions.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "functions must name at least one function: \"owner/endpoint\" or \"owner/*\"",
        ));
    }
    if functions.len() > 100 {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            "a key may be scoped to at most 100 entries; use \"owner/*\" for all of an owner's",
        ));
    }
    for f in functions {
        let Some((owner, endpoint)) = f
            .split_once('/')
            .filter(|(o, e)| is_dns_label(o) && (*e == "*" || is_dns_label(e)))
        else {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                format!("functions entries are \"owner/endpoint\" or \"owner/*\", got {f:?}"),
            ));
        };
        if !user.may_manage(owner) {
            return Err(ApiError::forbidden(format!(
                "{} may not create keys for functions of {owner}",
                user.0.name
            )));
        }
        if endpoint != "*" && app.platform.get_function(owner, endpoint).await?.is_none() {
            return Err(ApiError::function_not_found(owner, endpoint));
        }
    }
    Ok(())
}

pub async fn create_key(
    State(app): State<AppState>,
    user: AuthUser,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let req: NewKey = json_body(&body?)?;
    check_label("key", &req.name)?;
    check_scopes(&app, &user, &req.functions).await?;
    let mut functions = req.functions;
    functions.sort();
    functions.dedup();
    mint(&app, &user, CredentialKind::Key, &req.name, functions).await
}

async fn list(app: &AppState, user: &AuthUser, kind: CredentialKind) -> ApiResult<CredentialList> {
    if kind == CredentialKind::Key {
        app.meter.flush().await;
    }
    let items = app
        .store
        .list_credentials(&user.0.name, kind)
        .await?
        .iter()
        .map(|c| CredentialView::new(c, None))
        .collect();
    Ok(CredentialList { items })
}

pub async fn list_tokens(
    State(app): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<CredentialList>> {
    list(&app, &user, CredentialKind::Token).await.map(Json)
}

pub async fn list_keys(
    State(app): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<CredentialList>> {
    list(&app, &user, CredentialKind::Key).await.map(Json)
}

/// One of the caller's own credentials of `kind`: 404 for anyone else's, so ids say nothing.
async fn own(
    app: &AppState,
    user: &AuthUser,
    kind: CredentialKind,
    id: &str,
) -> ApiResult<Credential> {
    match app.store.get_credential(&user.0.name, id).await? {
        Some(c) if c.kind == kind => Ok(c),
        _ => Err(ApiError::not_found(format!("no {} {id}", kind_name(kind)))),
    }
}

fn kind_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::Token => "token",
        CredentialKind::Key => "key",
        CredentialKind::Session => "session",
    }
}

pub async fn get_key(
    State(app): State<AppState>,
    user: AuthUser,
    Path(CredentialPath { id }): Path<CredentialPath>,
) -> ApiResult<Json<CredentialView>> {
    app.meter.flush().await;
    let c = own(&app, &user, CredentialKind::Key, &id).await?;
    Ok(Json(CredentialView::new(&c, None)))
}

async fn revoke(app: &AppState, user: &AuthUser, kind: CredentialKind, id: &str) -> ApiResult<()> {
    own(app, user, kind, id).await?;
    revoked(app, &user.0.name, id).await
}

/// Revokes `owner`'s credential `id` in the store and forgets it here at once.
async fn revoked(app: &AppState, owner: &str, id: &str) -> ApiResult<()> {
    app.store
        .revoke_credential(owner, id, Timestamp::now())
        .await?;
    app.credentials.forget(owner, id);
    Ok(())
}

pub async fn revoke_token(
    State(app): State<AppState>,
    user: AuthUser,
    Path(CredentialPath { id }): Path<CredentialPath>,
) -> ApiResult<StatusCode> {
    revoke(&app, &user, CredentialKind::Token, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn revoke_key(
    State(app): State<AppState>,
    user: AuthUser,
    Path(CredentialPath { id }): Path<CredentialPath>,
) -> ApiResult<StatusCode> {
    revoke(&app, &user, CredentialKind::Key, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The cookie `name` of a request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_and_not_reserved() {
        assert!(check_name("alice-2").is_ok());
        assert_eq!(check_name("Alice").unwrap_err().code, "invalid_name");
        assert_eq!(check_name("a_b").unwrap_err().code, "invalid_name");
        assert_eq!(check_name("admin").unwrap_err().code, "name_reserved");
        assert_eq!(check_name("skybox").unwrap_err().code, "name_reserved");
    }

    #[test]
    fn passwords_have_at_least_8_characters_and_a_bound() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password("ünïcødé!").is_ok(), "characters, not bytes");
        assert_eq!(check_password("1234567").unwrap_err().code, "weak_password");
        assert!(check_password(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; skython_session=s3cret ; b=2"),
        );
        assert_eq!(cookie(&h, "skython_session"), Some("s3cret"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
