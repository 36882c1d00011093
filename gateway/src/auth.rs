//! Bearer tokens: random, shown once, stored only as SHA-256 hashes.

use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use jiff::Timestamp;
use rand::RngCore;
use sha2::{Digest, Sha256};
use skython_store::{Credential, CredentialKind, KeyUsage, Store, StoreError, User};

use crate::AppState;
use crate::error::ApiError;

pub const ADMIN: &str = "admin";

pub fn new_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("sky_{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Characters of a secret kept beside its hash, so a listing shows which one leaked.
const SHOWN_PREFIX: usize = 8;

/// A public credential id: `kind_` and 8 random hex digits.
fn new_credential_id(kind: &str) -> String {
    let mut bytes = [0u8; 4];
    rand::rng().fill_bytes(&mut bytes);
    format!("{kind}_{}", hex::encode(bytes))
}

/// The record of `owner`'s personal access token `token` called `name`.
pub fn token_credential(owner: &str, name: &str, token: &str) -> Credential {
    Credential {
        id: new_credential_id("tok"),
        kind: CredentialKind::Token,
        owner: owner.to_string(),
        name: name.to_string(),
        hash: hash_token(token),
        prefix: token.chars().take(SHOWN_PREFIX).collect(),
        functions: Vec::new(),
        created_at: Timestamp::now(),
        expires_at: None,
        revoked_at: None,
        usage: KeyUsage::default(),
    }
}

/// The authenticated caller of a developer-API request.
pub struct AuthUser(pub User);

impl AuthUser {
    /// Owners act on their own functions; the admin on everyone's.
    pub fn may_manage(&self, owner: &str) -> bool {
        self.0.is_admin || self.0.name == owner
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The bearer token of a request; `needs` says what the caller should send.
fn bearer<'a>(headers: &'a HeaderMap, needs: &str) -> Result<&'a str, ApiError> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized(&format!("{needs}: `Authorization: Bearer <token>`")))?;
    header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers, "this API needs a token")?;
        let found = (state.store)
            .authenticate(&hash_token(token), Timestamp::now())
            .await?;
        match found {
            Some((_, user)) => Ok(AuthUser(user)),
            None => Err(unauthorized("the token is not valid")),
        }
    }
}

/// `/metrics` names every function, private ones included: it answers the metrics token
/// (`--metrics-token`, for a scraper) and the admin's API token, nobody else.
pub async fn may_read_metrics(headers: &HeaderMap, state: &AppState) -> Result<(), ApiError> {
    const NEEDS: &str = "/metrics needs the admin's API token or the metrics token \
                         (--metrics-token)";
    let token = bearer(headers, NEEDS)?;
    let hash = hash_token(token);
    // Hashes are compared, so the time taken says nothing about the token.
    if (state.config.metrics_token.as_deref()).is_some_and(|t| hash_token(t) == hash) {
        return Ok(());
    }
    match state.store.authenticate(&hash, Timestamp::now()).await? {
        Some((_, user)) if user.is_admin => Ok(()),
        Some((_, user)) => Err(ApiError::forbidden(format!(
            "{} may not read /metrics; {NEEDS}",
            user.name
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
    /// The token was set from the environment (the admin's other tokens named `admin` revoked).
    FromEnv,
    /// The admin exists; its token is in this file if it is still there.
    Existing { file: Option<std::path::PathBuf> },
}

/// Creates the `admin` user on first start, with a token named `admin`, or applies
/// `SKYTHON_ADMIN_TOKEN`.
pub async fn bootstrap_admin(
    store: &dyn Store,
    data_dir: &Path,
    env_token: Option<&str>,
) -> Result<AdminToken, StoreError> {
    let file = data_dir.join("admin.token");
    let exists = store.get_user(ADMIN).await?.is_some();
    match (exists, env_token) {
        (true, Some(t)) => {
            set_admin_token(store, t).await?;
            Ok(AdminToken::FromEnv)
        }
        (false, Some(t)) => {
            create_admin(store, t).await?;
            Ok(AdminToken::FromEnv)
        }
        (true, None) => Ok(AdminToken::Existing {
            file: file.exists().then_some(file),
        }),
        (false, None) => {
            let token = new_token();
            create_admin(store, &token).await?;
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

async fn create_admin(store: &dyn Store, token: &str) -> Result<(), StoreError> {
    let admin = User {
        name: ADMIN.to_string(),
        is_admin: true,
        created_at: Timestamp::now(),
    };
    let credential = token_credential(ADMIN, ADMIN, token);
    store.create_user(&admin, None, &[credential]).await
}

/// Makes `token` the admin's token named `admin`, revoking the others of that name. The same
/// token at every start (the usual case of an environment variable) stays as it is.
async fn set_admin_token(store: &dyn Store, token: &str) -> Result<(), StoreError> {
    let now = Timestamp::now();
    let hash = hash_token(token);
    let tokens = store.list_credentials(ADMIN, CredentialKind::Token).await?;
    for old in tokens.iter().filter(|k| k.name == ADMIN && k.is_live(now)) {
        if old.hash != hash {
            store.revoke_credential(ADMIN, &old.id, now).await?;
        }
    }
    if !tokens.iter().any(|k| k.hash == hash && k.is_live(now)) {
        store
            .add_credential(&token_credential(ADMIN, ADMIN, token))
            .await?;
    }
    Ok(())
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

    #[test]
    fn tokens_are_unique_and_hashes_stable() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("sky_") && a.len() == 52);
        assert_eq!(hash_token("x"), hash_token("x"));
        assert_ne!(hash_token(&a), hash_token(&b));
    }

    #[tokio::test]
    async fn admin_bootstrap() {
        use skython_store::UserStore;
        let dir = tempfile::tempdir().unwrap();
        let store = skython_store::SqliteStore::open_in_memory().unwrap();
        let AdminToken::Created { token, file } =
            bootstrap_admin(&store, dir.path(), None).await.unwrap()
        else {
            panic!("expected a new admin")
        };
        assert_eq!(
            std::fs::read_to_string(file.unwrap()).unwrap().trim(),
            token
        );
        let (credential, admin) = store
            .authenticate(&hash_token(&token), Timestamp::now())
            .await
            .unwrap()
            .unwrap();
        assert!(admin.is_admin);
        assert_eq!(
            (credential.name.as_str(), credential.prefix.as_str()),
            (ADMIN, &token[..SHOWN_PREFIX])
        );
        // Second start: nothing changes.
        assert!(matches!(
            bootstrap_admin(&store, dir.path(), None).await.unwrap(),
            AdminToken::Existing { file: Some(_) }
        ));
        // The environment replaces the token, and giving it again at the next start keeps it.
        for _ in 0..2 {
            assert_eq!(
                bootstrap_admin(&store, dir.path(), Some("t2"))
                    .await
                    .unwrap(),
                AdminToken::FromEnv
            );
        }
        let now = Timestamp::now();
        let old = store.authenticate(&hash_token(&token), now).await.unwrap();
        assert!(old.is_none());
        let (_, admin) = store
            .authenticate(&hash_token("t2"), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(admin.name, ADMIN);
        let tokens = store
            .list_credentials(ADMIN, CredentialKind::Token)
            .await
            .unwrap();
        assert_eq!(tokens.iter().filter(|k| k.revoked_at.is_none()).count(), 1);
    }
}
