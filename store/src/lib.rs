//! Storage for everything the gateway keeps: users, functions (as `SkyFunction` specs and status),
//! per-(owner, function) state for `skython.store/load`, and recent invocations with their logs.
//!
//! The gateway only sees the [`Store`] trait and the backend-neutral [`StoreError`]; the embedded
//! SQLite backend ([`SqliteStore`]) is the local default, and a MongoDB backend implements the same
//! trait for clusters.

#![forbid(unsafe_code)]

mod sqlite;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use skython_crds::{SkyFunctionSpec, SkyFunctionStatus};

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub is_admin: bool,
    pub created_at: Timestamp,
}

/// A deployed function: the spec as the user wrote it, what the platform observed, and metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    pub spec: SkyFunctionSpec,
    pub status: SkyFunctionStatus,
    /// Starts at 1 and grows by one with every spec change.
    pub generation: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl FunctionRecord {
    pub fn owner(&self) -> &str {
        &self.spec.owner
    }
    pub fn endpoint(&self) -> &str {
        &self.spec.endpoint
    }
}

#[derive(Debug, Clone, Default)]
pub struct FunctionFilter {
    /// Only this owner's functions.
    pub owner: Option<String>,
    /// Only public functions (combined with `owner` by OR: "mine or public").
    pub include_public: bool,
}

/// The namespace of a function's state: the gateway derives it from the worker's pool, never from
/// what a worker claims.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateScope {
    pub owner: String,
    pub function: String,
}

/// One finished call, kept for the owner's `invocations` and `logs` views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    pub request_id: String,
    pub owner: String,
    pub endpoint: String,
    pub started_at: Timestamp,
    pub duration_ms: f64,
    /// The HTTP status the caller got.
    pub status: u16,
    /// `ok` or the error code (`function_error`, `timeout`, `worker_crashed`, …).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Captured stdout/stderr of the call, then the traceback if it raised.
    #[serde(default)]
    pub logs: String,
    /// Whether this call had to start a worker first.
    #[serde(default)]
    pub cold_start: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a user; `Conflict` if the name is taken.
    async fn create_user(&self, name: &str, token_hash: &str, is_admin: bool) -> Result<User>;
    async fn get_user(&self, name: &str) -> Result<Option<User>>;
    async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<User>>;
    /// `NotFound` if the user does not exist.
    async fn set_user_token(&self, name: &str, token_hash: &str) -> Result<()>;

    /// Stores a new function; `Conflict` if (owner, endpoint) exists.
    async fn create_function(&self, record: &FunctionRecord) -> Result<()>;
    /// Replaces an existing function if its generation is still `expected_generation`:
    /// `NotFound` if absent, `Conflict` if someone else changed it meanwhile.
    async fn replace_function(
        &self,
        record: &FunctionRecord,
        expected_generation: i64,
    ) -> Result<()>;
    async fn get_function(&self, owner: &str, endpoint: &str) -> Result<Option<FunctionRecord>>;
    /// Sorted by owner, then endpoint.
    async fn list_functions(&self, filter: &FunctionFilter) -> Result<Vec<FunctionRecord>>;
    /// Removes the function with its state and invocations; false if it did not exist.
    async fn delete_function(&self, owner: &str, endpoint: &str) -> Result<bool>;
    /// Overwrites the status only (the spec and generation stay); `NotFound` if absent.
    async fn set_function_status(
        &self,
        owner: &str,
        endpoint: &str,
        status: &SkyFunctionStatus,
    ) -> Result<()>;

    /// The raw JSON text stored under `key`.
    async fn state_get(&self, scope: &StateScope, key: &str) -> Result<Option<String>>;
    async fn state_put(&self, scope: &StateScope, key: &str, json: &str) -> Result<()>;
    /// False if the key did not exist.
    async fn state_delete(&self, scope: &StateScope, key: &str) -> Result<bool>;
    /// Keys starting with `prefix`, sorted, at most `limit`.
    async fn state_keys(
        &self,
        scope: &StateScope,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>>;

    /// Appends finished calls, keeping only the newest `retain_per_function` per function.
    async fn record_invocations(
        &self,
        batch: &[Invocation],
        retain_per_function: usize,
    ) -> Result<()>;
    /// Newest first.
    async fn recent_invocations(
        &self,
        owner: &str,
        endpoint: &str,
        limit: usize,
    ) -> Result<Vec<Invocation>>;
}
