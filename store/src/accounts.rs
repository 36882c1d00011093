//! Accounts: users with an optional password, and the credentials that act for them — personal
//! access tokens, API keys (scoped to functions, with usage metering) and browser sessions.
//!
//! Secrets are never stored: a credential keeps the SHA-256 hex hash of its secret (unique across
//! all credentials, so a lookup by hash finds one credential) and the first characters of the
//! secret, so a listing shows which one leaked. The gateway makes secrets, hashes and ids; the
//! store only keeps them and answers whether one is live.

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::Result;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub is_admin: bool,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// A personal access token: acts as its owner on the API.
    Token,
    /// An API key: lets calls through to the functions it names.
    Key,
    /// A browser session (a cookie), expiring.
    Session,
}

impl CredentialKind {
    /// The stored (and serialised) name.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Token => "token",
            CredentialKind::Key => "key",
            CredentialKind::Session => "session",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<CredentialKind> {
        [
            CredentialKind::Token,
            CredentialKind::Key,
            CredentialKind::Session,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A secret's record: never the secret, only its SHA-256 hex hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credential {
    /// Public id, e.g. `tok_5f1c2a9e`, `key_…`, `ses_…` (the gateway makes them); unique.
    pub id: String,
    pub kind: CredentialKind,
    /// The user it acts for.
    pub owner: String,
    /// What the user called it (`laptop`, `my-app`); empty for sessions.
    pub name: String,
    /// SHA-256 hex of the secret, unique across all credentials.
    pub hash: String,
    /// The first characters of the secret, shown in listings so a leaked one is recognised.
    pub prefix: String,
    /// Keys only: `owner/endpoint` or `owner/*`; empty otherwise.
    pub functions: Vec<String>,
    pub created_at: Timestamp,
    /// Sessions (and optionally tokens) stop working then.
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    /// Metering, kept for keys (zero for the others).
    pub usage: KeyUsage,
}

impl Credential {
    /// Whether it may be used at `now`: not revoked, not expired.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
}

/// What the calls made with one key added up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyUsage {
    pub calls: u64,
    pub errors: u64,
    /// Total duration of the calls.
    pub duration_ms: f64,
    pub last_used_at: Option<Timestamp>,
}

/// Calls made with one key since the last report (the gateway batches them, like invocations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyUsageDelta {
    /// The key's id.
    pub id: String,
    pub calls: u64,
    pub errors: u64,
    pub duration_ms: f64,
    pub last_used_at: Timestamp,
}

/// A user as exported by one backend and imported by another, with everything that is theirs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub user: User,
    /// PHC string (argon2id).
    pub password_hash: Option<String>,
    pub credentials: Vec<Credential>,
}

/// The id of the token a user had before credentials existed (schema 2 kept one hash per user):
/// generated ids have no second `_`, so it cannot collide with one.
pub fn legacy_token_id(user: &str) -> String {
    format!("tok_default_{user}")
}

/// Accounts and their credentials.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates a user together with its first credentials (the token sign-up returns) in one
    /// step: `Conflict` if the name is taken or a credential's id or hash exists, `Invalid` if a
    /// credential names another owner; nothing is kept then.
    async fn create_user(
        &self,
        user: &User,
        password_hash: Option<&str>,
        credentials: &[Credential],
    ) -> Result<()>;
    async fn get_user(&self, name: &str) -> Result<Option<User>>;
    /// The PHC string (argon2id) of the user's password; `None`: no such user or no password.
    async fn password_hash(&self, name: &str) -> Result<Option<String>>;
    /// `NotFound` if the user does not exist.
    async fn set_password_hash(&self, name: &str, phc: &str) -> Result<()>;
    /// `NotFound` if the owner does not exist, `Conflict` if the id or hash exists.
    async fn add_credential(&self, credential: &Credential) -> Result<()>;
    /// The credential with this hash and its user, if it is live at `now` (not revoked, not
    /// expired).
    async fn authenticate(&self, hash: &str, now: Timestamp) -> Result<Option<(Credential, User)>>;
    /// One owner's credentials of one kind, newest first, revoked ones included.
    async fn list_credentials(&self, owner: &str, kind: CredentialKind) -> Result<Vec<Credential>>;
    async fn get_credential(&self, owner: &str, id: &str) -> Result<Option<Credential>>;
    /// Sets `revoked_at` (once: revoking again keeps the first time); false if `owner` has no
    /// credential `id`.
    async fn revoke_credential(&self, owner: &str, id: &str, at: Timestamp) -> Result<bool>;
    /// Deletes sessions that expired before `before` (housekeeping); returns how many.
    async fn prune_sessions(&self, before: Timestamp) -> Result<u64>;
    /// Adds the deltas to each key's usage (unknown ids are skipped), `last_used_at` the later
    /// of the two; one write for the batch.
    async fn record_key_usage(&self, deltas: &[KeyUsageDelta]) -> Result<()>;
    /// Every user with password hash and credentials (oldest first), sorted by name (for
    /// `skython store copy`).
    async fn export_users(&self) -> Result<Vec<UserRecord>>;
    /// Writes a user as exported elsewhere, replacing one of the same name and its credentials;
    /// `Conflict` if another user holds one of the credentials' ids or hashes.
    async fn import_user(&self, record: &UserRecord) -> Result<()>;
}

/// `Invalid` unless every credential belongs to `owner` (what `create_user` and `import_user`
/// check before writing).
pub(crate) fn check_owner(owner: &str, credentials: &[Credential]) -> Result<()> {
    match credentials.iter().find(|c| c.owner != owner) {
        Some(c) => Err(crate::StoreError::Invalid(format!(
            "credential {} belongs to {}, not to user {owner}",
            c.id, c.owner
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialise_in_lowercase_and_parse_back() {
        for k in [
            CredentialKind::Token,
            CredentialKind::Key,
            CredentialKind::Session,
        ] {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
            assert_eq!(CredentialKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(CredentialKind::parse("Token"), None);
    }
}
