//! Who is asking: the developer API takes a personal access token or a session (`Authorization:
//! Bearer …`), or the browser's session cookie; calls of gated functions take API keys
//! (`access.rs`). Secrets are made and looked up in `credentials.rs`.
//!
//! Cookie-authenticated writes must come from a page of this origin (the `Origin` header, or
//! `Referer`, names the request's own host): with `SameSite=Lax` that closes cross-site request
//! forgery without a token the client would have to carry.

use std::path::Path;
use std::str::FromStr;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use jiff::Timestamp;
use skython_store::{Credential, CredentialKind, Store, StoreError, User};

use crate::AppState;
use crate::accounts::cookie;
use crate::credentials::{NewSecret, credential, hash_secret, new_secret};
use crate::error::{ApiError, ErrorCode};

pub const ADMIN: &str = "admin";

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "skython_session";

/// Who may create accounts through `POST /api/v1/accounts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignupMode {
    /// Anyone (the default of `skython up`).
    #[default]
    Open,
    /// Only the admin creates accounts.
    Invite,
    /// Nobody but the admin (the default of `skython gateway` and the Helm chart).
    Closed,
}

impl FromStr for SignupMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(SignupMode::Open),
            "invite" => Ok(SignupMode::Invite),
            "closed" => Ok(SignupMode::Closed),
            _ => Err(format!("expected open, invite or closed, got {s:?}")),
        }
    }
}

/// The authenticated caller of a developer-API request, and the credential it used.
#[derive(Debug, Clone)]
pub struct AuthUser(pub User, pub Credential);

impl AuthUser {
    /// Owners act on their own functions; the admin on everyone's.
    pub fn may_manage(&self, owner: &str) -> bool {
        self.0.is_admin || self.0.name == owner
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// The bearer secret of a request, if it has an Authorization header; `needs` says what the
/// caller should send.
pub fn bearer<'a>(headers: &'a HeaderMap, needs: &str) -> Result<Option<&'a str>, ApiError> {
    let Some(h) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    h.to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| {
            unauthorized(&format!(
                "the Authorization header must be `Bearer <token>`; {needs}"
            ))
        })
}

const NEEDS: &str = "this API needs a personal access token (`Authorization: Bearer <token>`, \
                     from sign-up or POST /api/v1/tokens) or a session";

/// Whether a cookie-authenticated request comes from a page of this origin.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    from.and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Option<AuthUser>, ApiError> {
    let (secret, from_cookie) = match bearer(&parts.headers, NEEDS)? {
        Some(s) => (s, false),
        None => match cookie(&parts.headers, SESSION_COOKIE).filter(|c| !c.is_empty()) {
            Some(c) => (c, true),
            None => return Ok(None),
        },
    };
    let Some(who) = state.credentials.authenticate(secret).await? else {
        return Err(unauthorized(if from_cookie {
            "the session has ended; log in again"
        } else {
            "the token is not valid (unknown, revoked or expired)"
        }));
    };
    if who.credential.kind == CredentialKind::Key {
        return Err(unauthorized(
            "API keys only call functions; this API needs a personal access token",
        ));
    }
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if from_cookie && !safe && !same_origin(&parts.headers) {
        return Err(ApiError::new(
            ErrorCode::CsrfCheckFailed,
            "a request authenticated by the session cookie must come from a page of this site \
             (its Origin header names another); API clients send a bearer token instead",
        ));
    }
    Ok(Some(AuthUser(who.user.clone(), who.credential.clone())))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state)
            .await?
            .ok_or_else(|| unauthorized(NEEDS))
    }
}

/// Routes anyone may use, that show more to a signed-in user: no credential is `None`, a bad
/// one still 401 (a client sending a wrong token wants to know).
impl OptionalFromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        authenticate(parts, state).await
    }
}

/// `/metrics` names every function, private ones included: it answers the metrics token
/// (`--metrics-token`, for a scraper) and the admin's API token, nobody else.
pub async fn may_read_metrics(headers: &HeaderMap, state: &AppState) -> Result<(), ApiError> {
    const NEEDS: &str = "/metrics needs the admin's API token or the metrics token \
                         (--metrics-token)";
    let token = bearer(headers, NEEDS)?
        .ok_or_else(|| unauthorized(&format!("{NEEDS}: `Authorization: Bearer <token>`")))?;
    // Hashes are compared, so the time taken says nothing about the token.
    if (state.config.metrics_token.as_deref()).is_some_and(|t| hash_secret(t) == hash_secret(token))
    {
        return Ok(());
    }
    match state.credentials.authenticate(token).await? {
        Some(who) if who.user.is_admin && who.credential.kind != CredentialKind::Key => Ok(()),
        Some(who) => Err(ApiError::forbidden(format!(
            "{} may not read /metrics; {NEEDS}",
            who.user.name
        ))),
        None => Err(unauthorized(&format!("the token is not valid; {NEEDS}"))),
    }
}

/// What `skython up` tells the person starting it about the admin token.
#[derive(Debug, PartialEq)]
pub enum AdminToken {
    /// A new admin was created with this token (also written to the token file).
    Created {
        token: String,
        file: Option<std::path::PathBuf>,
    },
    /// The token was set from the environment.
    FromEnv,
    /// The admin exists; its token is in this file if it is still there.
    Existing { file: Option<std::path::PathBuf> },
}

/// A token credential of `owner` for a secret chosen elsewhere (`SKYTHON_ADMIN_TOKEN`, tests).
pub fn token_credential(owner: &str, name: &str, secret: &str) -> Credential {
    let secret = NewSecret::given(CredentialKind::Token, secret.to_string());
    credential(&secret, CredentialKind::Token, owner, name, vec![], None)
}

/// Creates a user whose token is `secret` (automation and tests).
pub async fn create_user_with_token(
    store: &dyn Store,
    name: &str,
    is_admin: bool,
    secret: &str,
) -> Result<(), StoreError> {
    let user = User {
        name: name.into(),
        is_admin,
        created_at: Timestamp::now(),
    };
    store
        .create_user(&user, None, &[token_credential(name, "test", secret)])
        .await
}

fn admin_token(secret: &str) -> Credential {
    token_credential(ADMIN, ADMIN, secret)
}

/// Creates the `admin` user on first start, or applies `SKYTHON_ADMIN_TOKEN` (which replaces
/// the admin's earlier tokens named "admin").
pub async fn bootstrap_admin(
    store: &dyn Store,
    data_dir: &Path,
    env_token: Option<&str>,
) -> Result<AdminToken, StoreError> {
    let file = data_dir.join("admin.token");
    let exists = store.get_user(ADMIN).await?.is_some();
    let admin = || User {
        name: ADMIN.into(),
        is_admin: true,
        created_at: Timestamp::now(),
    };
    match (exists, env_token) {
        (true, Some(t)) => {
            let hash = hash_secret(t);
            let current = store.list_credentials(ADMIN, CredentialKind::Token).await?;
            match current.iter().find(|c| c.hash == hash) {
                Some(c) if c.revoked_at.is_none() => return Ok(AdminToken::FromEnv),
                // A token revoked earlier cannot come back under the same hash. Refused before
                // anything is revoked, so the admin keeps the tokens it has.
                Some(_) => {
                    return Err(StoreError::Conflict(
                        "SKYTHON_ADMIN_TOKEN was revoked earlier; choose a new one".into(),
                    ));
                }
                None => {}
            }
            for c in current
                .iter()
                .filter(|c| c.name == ADMIN && c.revoked_at.is_none())
            {
                store
                    .revoke_credential(ADMIN, &c.id, Timestamp::now())
                    .await?;
            }
            store.add_credential(&admin_token(t)).await?;
            Ok(AdminToken::FromEnv)
        }
        (false, Some(t)) => match store.create_user(&admin(), None, &[admin_token(t)]).await {
            Ok(_) => Ok(AdminToken::FromEnv),
            // Gateway replicas started together on a fresh store: another one made the admin,
            // with this same token, a moment earlier.
            Err(StoreError::Conflict(_))
                if store
                    .list_credentials(ADMIN, CredentialKind::Token)
                    .await?
                    .iter()
                    .any(|c| c.hash == hash_secret(t) && c.revoked_at.is_none()) =>
            {
                Ok(AdminToken::FromEnv)
            }
            Err(e) => Err(e),
        },
        (true, None) => Ok(AdminToken::Existing {
            file: file.exists().then_some(file),
        }),
        (false, None) => {
            let token = new_secret(CredentialKind::Token).secret;
            store
                .create_user(&admin(), None, &[admin_token(&token)])
                .await?;
            let written = write_secret(&file, &token).map_err(|e| {
                tracing::warn!("could not write {}: {e}", file.display());
            });
            Ok(AdminToken::Created {
                token,
                file: written.ok().map(|_| file),
            })
        }
    }
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    writeln!(f, "{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use skython_store::UserStore;

    async fn authenticates(store: &dyn Store, token: &str) -> Option<String> {
        store
            .authenticate(&hash_secret(token), Timestamp::now())
            .await
            .unwrap()
            .map(|(_, u)| u.name)
    }

    #[tokio::test]
    async fn the_first_start_creates_the_admin_and_writes_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = skython_store::SqliteStore::open_in_memory().unwrap();
        let AdminToken::Created { token, file } =
            bootstrap_admin(&store, dir.path(), None).await.unwrap()
        else {
            panic!("expected a new admin")
        };
        assert!(token.starts_with("sky_pat_"));
        assert_eq!(
            std::fs::read_to_string(file.unwrap()).unwrap().trim(),
            token
        );
        assert_eq!(authenticates(&store, &token).await.as_deref(), Some(ADMIN));
        assert!(store.get_user(ADMIN).await.unwrap().unwrap().is_admin);
        assert!(matches!(
            bootstrap_admin(&store, dir.path(), None).await.unwrap(),
            AdminToken::Existing { file: Some(_) }
        ));
    }

    #[tokio::test]
    async fn the_environment_token_replaces_the_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = skython_store::SqliteStore::open_in_memory().unwrap();
        let AdminToken::Created { token, .. } =
            bootstrap_admin(&store, dir.path(), None).await.unwrap()
        else {
            panic!("expected a new admin")
        };
        for _ in 0..2 {
            assert_eq!(
                bootstrap_admin(&store, dir.path(), Some("t2"))
                    .await
                    .unwrap(),
                AdminToken::FromEnv,
                "and again at the next start"
            );
        }
        assert_eq!(authenticates(&store, &token).await, None);
        assert_eq!(authenticates(&store, "t2").await.as_deref(), Some(ADMIN));
    }

    #[tokio::test]
    async fn replicas_starting_together_with_one_token_all_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = skython_store::SqliteStore::open_in_memory().unwrap();
        let start = || bootstrap_admin(&store, dir.path(), Some("t1"));
        let (a, b, c) = tokio::join!(start(), start(), start());
        for started in [a, b, c] {
            assert_eq!(started.unwrap(), AdminToken::FromEnv);
        }
        assert_eq!(authenticates(&store, "t1").await.as_deref(), Some(ADMIN));
    }

    #[tokio::test]
    async fn a_revoked_environment_token_is_refused_and_the_admin_keeps_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = skython_store::SqliteStore::open_in_memory().unwrap();
        bootstrap_admin(&store, dir.path(), Some("t1"))
            .await
            .unwrap();
        bootstrap_admin(&store, dir.path(), Some("t2"))
            .await
            .unwrap();
        assert!(matches!(
            bootstrap_admin(&store, dir.path(), Some("t1")).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(authenticates(&store, "t2").await.as_deref(), Some(ADMIN));
    }

    #[test]
    fn a_cookie_write_must_name_this_host_as_its_origin() {
        let mut h = HeaderMap::new();
        h.insert(
            header::HOST,
            HeaderValue::from_static("skython.example:8080"),
        );
        assert!(!same_origin(&h), "no Origin, no Referer");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://skython.example:8080"),
        );
        assert!(same_origin(&h));
        h.remove(header::ORIGIN);
        h.insert(
            header::REFERER,
            HeaderValue::from_static("http://skython.example:8080/editor"),
        );
        assert!(same_origin(&h));
    }

    #[test]
    fn signup_modes_parse() {
        assert_eq!("invite".parse(), Ok(SignupMode::Invite));
        assert!("maybe".parse::<SignupMode>().is_err());
    }
}
