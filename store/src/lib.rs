//! Storage for everything the gateway keeps: users, functions (as `SkyFunction` specs and status),
//! per-(owner, function) state for `skython.store/load`, recent invocations with their logs, and
//! the skybox catalogue (search, call and clone counts, versions).
//!
//! One trait per concern ([`UserStore`], [`FunctionStore`], [`StateStore`], [`InvocationStore`],
//! [`CatalogStore`]; [`Store`] is all of them, what the gateway holds) with the backend-neutral
//! [`StoreError`]. The embedded SQLite backend ([`SqliteStore`]) is the local default, the
//! MongoDB backend ([`MongoStore`]) is for clusters; both run one conformance suite
//! (`tests/conformance`). What a state write does with the current value is decided once, for
//! both, in [`StateWrite`]. [`StoreLocation`] parses `--store`; [`copy`] moves everything from one
//! store into another.

#![forbid(unsafe_code)]

mod accounts;
mod catalog;
pub mod copy;
mod location;
mod mongo;
mod sqlite;
mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use skython_crds::{SkyFunctionSpec, SkyFunctionStatus};
use tokio::sync::oneshot;

pub use accounts::{
    Credential, CredentialKind, KeyUsage, KeyUsageDelta, User, UserRecord, UserStore,
    legacy_token_id,
};
pub use catalog::{
    CatalogEntry, CatalogStore, FunctionStats, FunctionVersion, SearchHit, SearchPage, SearchQuery,
};
pub use location::{StoreLocation, redacted};
pub use mongo::MongoStore;
pub use sqlite::SqliteStore;
pub use state::{Decision, StateWrite, Written, json_equal};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    QuotaExceeded(#[from] QuotaExceeded),
    /// The operation does not apply to what is stored (e.g. `incr` of a string).
    #[error("{0}")]
    Invalid(String),
    /// The backend cannot be reached (a lost connection to MongoDB, a database locked for too
    /// long): worth retrying later, unlike `Backend`.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Not applied because an earlier write of its [`WriteChain`] failed; worth retrying.
    #[error("{0}")]
    Aborted(String),
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How errors name a function.
fn label(owner: &str, endpoint: &str) -> String {
    format!("function {owner}/{endpoint}")
}

/// One stored state value, with where it belongs (for `skython store copy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEntry {
    pub owner: String,
    pub function: String,
    pub key: String,
    /// JSON text.
    pub value: String,
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

/// How much state one owner may keep, all their functions (and drafts) together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateQuota {
    pub max_keys: u64,
    /// Bytes of JSON values (keys are not counted).
    pub max_bytes: u64,
}

impl Default for StateQuota {
    fn default() -> Self {
        StateQuota {
            max_keys: 10_000,
            max_bytes: 100 << 20,
        }
    }
}

/// What one owner's state takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateUsage {
    pub keys: u64,
    pub bytes: u64,
}

impl StateUsage {
    /// The usage after writing `new_bytes` under a key that held `old_bytes` (`None`: a new key).
    pub fn after_write(self, old_bytes: Option<u64>, new_bytes: u64) -> StateUsage {
        StateUsage {
            keys: self.keys + u64::from(old_bytes.is_none()),
            bytes: (self.bytes.saturating_sub(old_bytes.unwrap_or(0))).saturating_add(new_bytes),
        }
    }
}

/// Which limit of [`StateQuota`] a write would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Keys,
    Bytes,
}

impl std::fmt::Display for QuotaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QuotaKind::Keys => "keys",
            QuotaKind::Bytes => "bytes of values",
        })
    }
}

/// A write refused because it would take its owner's state past a quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "state quota exceeded: {owner} may keep at most {limit} {kind} (all functions together); \
     {used} in use, this write would make {after}"
)]
pub struct QuotaExceeded {
    pub kind: QuotaKind,
    pub owner: String,
    pub limit: u64,
    pub used: u64,
    pub after: u64,
}

impl StateQuota {
    /// Whether a write that takes `owner`'s usage from `used` to `after` is allowed. A write
    /// that does not grow a measure passes even above its limit (e.g. after the operator lowered
    /// it), so an owner over quota can still shrink their state.
    pub fn check(
        &self,
        owner: &str,
        used: StateUsage,
        after: StateUsage,
    ) -> Result<(), QuotaExceeded> {
        for (kind, limit, used, after) in [
            (QuotaKind::Keys, self.max_keys, used.keys, after.keys),
            (QuotaKind::Bytes, self.max_bytes, used.bytes, after.bytes),
        ] {
            if after > limit && after > used {
                return Err(QuotaExceeded {
                    kind,
                    owner: owner.to_string(),
                    limit,
                    used,
                    after,
                });
            }
        }
        Ok(())
    }
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

impl Invocation {
    /// Whether the call returned a value (an error's outcome is its code).
    pub fn succeeded(&self) -> bool {
        self.outcome == "ok"
    }
}

/// The functions catalogue.
#[async_trait]
pub trait FunctionStore: Send + Sync {
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
}

/// Per-(owner, function) state behind `skython.store/load/incr`.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The raw JSON text stored under `key`.
    async fn state_get(&self, scope: &StateScope, key: &str) -> Result<Option<String>>;
    /// Applies `write` to the value under `key` as one atomic step: reading the current value,
    /// deciding ([`StateWrite::apply`]), checking the owner's `quota` and writing cannot
    /// interleave with another writer of the same owner. `QuotaExceeded` or `Invalid` change
    /// nothing.
    async fn state_write(
        &self,
        scope: &StateScope,
        key: &str,
        write: &StateWrite,
        quota: StateQuota,
    ) -> Result<Written>;
    /// `store(key, value)`: a [`StateWrite::Set`].
    async fn state_put(
        &self,
        scope: &StateScope,
        key: &str,
        json: &str,
        quota: StateQuota,
    ) -> Result<()> {
        let set = StateWrite::Set {
            value: json.to_string(),
        };
        self.state_write(scope, key, &set, quota).await.map(drop)
    }
    /// False if the key did not exist.
    async fn state_delete(&self, scope: &StateScope, key: &str) -> Result<bool>;
    /// Keys starting with `prefix`, sorted, at most `limit`.
    async fn state_keys(
        &self,
        scope: &StateScope,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>>;
    /// Every owner's state in (owner, function, key) order, the `limit` entries after `after`
    /// (for `skython store copy`).
    async fn export_state(
        &self,
        after: Option<&StateEntry>,
        limit: usize,
    ) -> Result<Vec<StateEntry>>;
    /// Writes entries as exported elsewhere, replacing values under the same keys, without
    /// quota checks (the source already held them).
    async fn import_state(&self, entries: &[StateEntry]) -> Result<()>;
    /// The store's state writes in one order, if it applies them one after another (the
    /// embedded SQLite's writer thread): what lets the gateway take writes without waiting and
    /// tell workers about them in commit order. `None` where writes commit concurrently.
    fn ordered_writes(&self) -> Option<&dyn OrderedStateWrites> {
        None
    }
}

/// Run on the store's writer once a queued write committed (or was refused), in commit order,
/// before the write's caller hears of it: for whatever must follow the commits in their order.
pub type CommitHook = Box<dyn FnOnce(&Result<Written>) + Send>;

/// A sequence of state writes that stops at its first failure: a write queued in it after one
/// that failed is not applied (`Aborted`), since it may rest on what the failed one wrote.
#[derive(Clone, Debug, Default)]
pub struct WriteChain(Arc<AtomicBool>);

impl WriteChain {
    pub fn is_broken(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn break_off(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn refused() -> StoreError {
        StoreError::Aborted("not applied: an earlier store() of the same worker failed".into())
    }
}

/// A state write for [`OrderedStateWrites::queue_state_write`].
pub struct QueuedWrite {
    pub scope: StateScope,
    pub key: String,
    pub write: StateWrite,
    pub quota: StateQuota,
    pub chain: Option<WriteChain>,
    pub on_commit: Option<CommitHook>,
}

/// State writes applied one after another, in the order they were queued.
pub trait OrderedStateWrites: Send + Sync {
    /// Queues `write` before returning (so writes queued one after another by one caller apply
    /// in that order); it waits for the next [`flush_state_writes`](Self::flush_state_writes),
    /// so that the writes a caller queues together commit together. The receiver answers once
    /// its commit returned, after `on_commit` ran.
    fn queue_state_write(&self, write: QueuedWrite) -> oneshot::Receiver<Result<Written>>;
    /// Starts the writes queued so far (everyone's).
    fn flush_state_writes(&self);
}

/// Recent calls with their logs.
#[async_trait]
pub trait InvocationStore: Send + Sync {
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

/// Everything the gateway keeps: each backend implements every concern.
pub trait Store:
    UserStore + FunctionStore + StateStore + InvocationStore + CatalogStore + 'static
{
}

impl<T> Store for T where
    T: UserStore + FunctionStore + StateStore + InvocationStore + CatalogStore + 'static
{
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: StateQuota = StateQuota {
        max_keys: 2,
        max_bytes: 10,
    };

    fn usage(keys: u64, bytes: u64) -> StateUsage {
        StateUsage { keys, bytes }
    }

    #[test]
    fn a_write_counts_a_new_key_and_the_difference_of_a_replaced_value() {
        assert_eq!(usage(1, 5).after_write(None, 3), usage(2, 8));
        assert_eq!(usage(1, 5).after_write(Some(5), 2), usage(1, 2));
        assert_eq!(usage(1, 5).after_write(Some(2), 9), usage(1, 12));
    }

    #[test]
    fn writes_within_the_quota_pass() {
        assert_eq!(QUOTA.check("a", usage(1, 5), usage(2, 10)), Ok(()));
    }

    #[test]
    fn a_key_past_the_limit_is_refused_naming_the_quota() {
        let e = QUOTA.check("alice", usage(2, 4), usage(3, 5)).unwrap_err();
        assert_eq!(
            (e.kind, e.limit, e.used, e.after),
            (QuotaKind::Keys, 2, 2, 3)
        );
        assert_eq!(
            e.to_string(),
            "state quota exceeded: alice may keep at most 2 keys (all functions together); \
             2 in use, this write would make 3"
        );
    }

    #[test]
    fn bytes_past_the_limit_are_refused_naming_the_quota() {
        let e = QUOTA.check("alice", usage(1, 8), usage(1, 11)).unwrap_err();
        assert_eq!(
            (e.kind, e.limit, e.used, e.after),
            (QuotaKind::Bytes, 10, 8, 11)
        );
        assert!(e.to_string().contains("at most 10 bytes of values"), "{e}");
    }

    #[test]
    fn an_owner_over_the_quota_may_still_shrink() {
        assert_eq!(QUOTA.check("a", usage(5, 50), usage(5, 40)), Ok(()));
        assert!(QUOTA.check("a", usage(5, 50), usage(5, 51)).is_err());
    }
}
