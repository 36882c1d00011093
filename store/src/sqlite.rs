//! The embedded backend: one SQLite file in the data directory. SQLite is transactional, needs no
//! server and survives crashes (WAL), which is what a single-machine install wants: the whole
//! store is one file next to the rest of the data, backed up by copying it.
//!
//! Threading: one connection writes, owned by a thread of its own (`writer.rs`): callers queue
//! their writes and await the answer, so the async runtime never waits on the disk. State writes
//! queued together commit in one `IMMEDIATE` transaction (group commit), each caller answered
//! only after that commit returned; other writes run alone on the same thread, in queue order.
//! Reads of a file in WAL mode use their own connections, which never wait for the writer:
//! point lookups (a state value, a user, a function) run inline on a free one, since they take
//! microseconds and a hop to the blocking pool costs two thread switches; listings and exports
//! run on the blocking pool. A database in memory (tests) has only the writer's connection, and
//! its reads queue there too. A write that panics, or a writer that is gone, is a
//! [`StoreError::Backend`] for its callers, never a panic, and the writer goes on.
//!
//! Durability: WAL with `synchronous = NORMAL`. A commit has written its frames to the WAL file
//! when it returns, so an acknowledged write is in the OS page cache and survives the process
//! being killed (`kill -9`, a crash); the WAL is synced to disk only at checkpoints, so a power
//! loss or kernel crash may lose the last transactions acknowledged since, but never corrupts
//! the database. (Power-loss durability would be `synchronous = FULL` on the write connection:
//! one fsync per commit, which the batches would share. Not offered.)
//!
//! Layout: users and their credentials (tokens, API keys, sessions) are in `accounts.rs`; specs
//! and statuses are JSON text columns (the visibility is copied into its own column so listings
//! filter in SQL); timestamps are integer microseconds since the Unix epoch, so
//! sub-microsecond precision is dropped on the way in. `PRAGMA user_version` holds the schema
//! version; a database written by a newer Skython is refused rather than misread.
//!
//! State quotas: `state_usage` holds each owner's key count and value bytes, kept by triggers
//! on `state` (so every insert, replace and delete, a function's deletion included, updates
//! it in the same transaction). A state write reads it and writes within its batch's
//! `IMMEDIATE` transaction, so no two writers pass the quota together, not even two processes
//! on the same file (the second waits for the lock, up to the busy timeout).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod accounts;
mod catalog;
mod writer;
use skython_crds::SkyFunctionStatus;
use writer::Writer;

use crate::{
    FunctionFilter, FunctionRecord, FunctionStore, Invocation, InvocationStore, OrderedStateWrites,
    QueuedWrite, Result, StateEntry, StateQuota, StateScope, StateStore, StateWrite, StoreError,
    Written, label,
};

/// The schema this code reads and writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 4;

/// How long a statement waits for another connection's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT,
    is_admin INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    functions TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    calls INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    duration_ms REAL NOT NULL DEFAULT 0,
    last_used_at INTEGER
);
CREATE INDEX IF NOT EXISTS credentials_by_owner ON credentials (owner, kind, created_at);
CREATE TABLE IF NOT EXISTS functions (
    owner TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    visibility TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    generation INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner, endpoint)
);
CREATE TABLE IF NOT EXISTS state (
    owner TEXT NOT NULL,
    function TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (owner, function, key)
);
CREATE TABLE IF NOT EXISTS invocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    request_id TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    duration_ms REAL NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    logs TEXT NOT NULL,
    cold_start INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (owner, endpoint, id);
CREATE TABLE IF NOT EXISTS state_usage (
    owner TEXT PRIMARY KEY,
    keys INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS state_usage_insert AFTER INSERT ON state BEGIN
    INSERT INTO state_usage (owner, keys, bytes)
    VALUES (NEW.owner, 1, length(CAST(NEW.value AS BLOB)))
    ON CONFLICT (owner) DO UPDATE SET keys = keys + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS state_usage_update AFTER UPDATE OF value ON state BEGIN
    UPDATE state_usage
    SET bytes = bytes - length(CAST(OLD.value AS BLOB)) + length(CAST(NEW.value AS BLOB))
    WHERE owner = NEW.owner;
END;
CREATE TRIGGER IF NOT EXISTS state_usage_delete AFTER DELETE ON state BEGIN
    UPDATE state_usage SET keys = keys - 1, bytes = bytes - length(CAST(OLD.value AS BLOB))
    WHERE owner = OLD.owner;
END;
";

/// Version 1 had no `state_usage`: count what is stored (after `SCHEMA` created the table).
const MIGRATE_1_TO_2: &str = "
INSERT OR REPLACE INTO state_usage (owner, keys, bytes)
SELECT owner, count(*), sum(length(CAST(value AS BLOB))) FROM state GROUP BY owner;
";

/// Version 2 kept one token hash per user: it becomes the user's token `default` (its id from
/// [`legacy_token_id`](crate::legacy_token_id)), and `users` is rebuilt without the column (SQLite
/// cannot drop a UNIQUE one) and with `password_hash`. Runs after `SCHEMA` created `credentials`
/// (and left the old `users` as it was).
const MIGRATE_2_TO_3: &str = "
INSERT INTO credentials (id, kind, owner, name, hash, prefix, functions, created_at)
SELECT 'tok_default_' || name, 'token', name, 'default', token_hash, '', '[]', created_at FROM users;
CREATE TABLE users_v3 (
    name TEXT PRIMARY KEY,
    password_hash TEXT,
    is_admin INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO users_v3 (name, is_admin, created_at) SELECT name, is_admin, created_at FROM users;
DROP TABLE users;
ALTER TABLE users_v3 RENAME TO users;
";

/// The embedded [`Store`]: one SQLite database (a file, or memory for tests). Cloning is cheap and
/// shares the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Dropped first: its thread finishes the queued writes before the readers close.
    writer: Writer,
    /// Read connections (none for a database in memory, which only its own connection sees,
    /// nor without WAL, where a reader would wait for the writer's commits).
    readers: Vec<Mutex<Connection>>,
    /// Where a read that has to wait for a connection queues (spreads them).
    next_reader: AtomicUsize,
}

/// A failure as the store's callers see it: a database that stayed locked past the busy timeout
/// (another process holding a long write) is worth retrying, `Unavailable`; anything else is a
/// `Backend` failure.
fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    let e: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
    match e.downcast_ref::<rusqlite::Error>() {
        Some(e) if is_busy(e) => locked(e),
        _ => StoreError::Backend(e),
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn locked(e: &rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("the database is locked: {e}"))
}

fn schema_version(conn: &Connection) -> Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)
}

fn newer_schema(version: i64) -> StoreError {
    StoreError::Backend(
        format!(
            "the database has schema version {version}, newer than the {SCHEMA_VERSION} this \
             Skython knows; upgrade Skython (or point it at another data directory)"
        )
        .into(),
    )
}

/// True when `e` is a violation of a UNIQUE or PRIMARY KEY constraint.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi;
    matches!(
        e,
        rusqlite::Error::SqliteFailure(ffi::Error { extended_code, .. }, _)
            if *extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
                || *extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// A count or size read from SQLite (never negative; 0 if it were).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn from_micros(us: i64) -> rusqlite::Result<Timestamp> {
    Timestamp::from_microsecond(us).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, Box::new(e))
    })
}

fn json_col<T: serde::de::DeserializeOwned>(idx: usize, text: String) -> rusqlite::Result<T> {
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl SqliteStore {
    /// Opens the database file at `path`, creating it (and its parent directory) and the schema if
    /// missing. Fails with [`StoreError::Backend`] if the file was written by a newer schema.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let (conn, wal) = Self::init(Connection::open(path).map_err(backend)?)?;
        let readers = if wal {
            (0..read_connections())
                .map(|_| Self::reader(path).map(Mutex::new))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        Self::start(conn, readers)
    }

    /// A private, empty in-memory database (for tests): gone when the last clone is dropped.
    /// Its reads go through the writer, as no other connection sees it.
    pub fn open_in_memory() -> Result<SqliteStore> {
        let (conn, _) = Self::init(Connection::open_in_memory().map_err(backend)?)?;
        Self::start(conn, Vec::new())
    }

    fn start(conn: Connection, readers: Vec<Mutex<Connection>>) -> Result<SqliteStore> {
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Writer::start(conn)?,
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// A read connection to the file that `init` prepared.
    fn reader(path: &Path) -> Result<Connection> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        // It only reads: a write through it would bypass the writer's batches.
        conn.pragma_update(None, "query_only", true)
            .map_err(backend)?;
        Ok(conn)
    }

    /// Prepares the write connection and the schema; true if the database is in WAL mode.
    fn init(mut conn: Connection) -> Result<(Connection, bool)> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        // Refuse a newer database before changing anything in it (not even its journal mode).
        let version = schema_version(&conn)?;
        if version > SCHEMA_VERSION {
            return Err(newer_schema(version));
        }
        // An in-memory database answers `memory`; a file on a filesystem without shared memory
        // may keep its old mode. Both still work, only with less concurrency.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            tracing::warn!(journal_mode = %mode, "SQLite refused WAL mode; continuing without it");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;

        // Schema and version move together; IMMEDIATE takes the write lock first, so two
        // processes opening a fresh file at once cannot interleave (the second waits, then finds
        // everything in place).
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let version = schema_version(&tx)?;
        match version {
            // Fresh file, or already current: the schema is idempotent.
            0 | SCHEMA_VERSION => tx.execute_batch(SCHEMA).map_err(backend)?,
            // Migrations from older versions, each step in turn.
            1..=3 => {
                tx.execute_batch(SCHEMA).map_err(backend)?;
                if version < 2 {
                    tx.execute_batch(MIGRATE_1_TO_2).map_err(backend)?;
                }
                if version < 3 {
                    tx.execute_batch(MIGRATE_2_TO_3).map_err(backend)?;
                }
                catalog::migrate_3_to_4(&tx).map_err(backend)?;
            }
            v if v > SCHEMA_VERSION => return Err(newer_schema(v)),
            v => {
                return Err(StoreError::Backend(
                    format!("the database has unknown schema version {v}").into(),
                ));
            }
        }
        tx.execute_batch(catalog::SCHEMA).map_err(backend)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok((conn, mode.eq_ignore_ascii_case("wal")))
    }

    /// Runs `f` on the write connection (after the writes queued before it).
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.inner.writer.run(f).await
    }

    /// A point lookup (one row by its key: microseconds). It runs right here on a free read
    /// connection, without the two thread switches of the blocking pool: WAL readers never wait
    /// for the writer. If every reader is busy, it waits for one on the blocking pool.
    async fn lookup<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        for reader in &self.inner.readers {
            match reader.try_lock() {
                Ok(mut c) => return f(&mut c),
                // A read that panicked leaves nothing half done on a read-only connection.
                Err(TryLockError::Poisoned(p)) => return f(&mut p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        self.scan(f).await
    }

    /// A read that may take long (listings, exports), on the blocking pool so that the async
    /// runtime never waits on it.
    async fn scan<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        if self.inner.readers.is_empty() {
            return self.write(f).await;
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let n = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            let mut c = inner.readers[n]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            f(&mut c)
        })
        .await
        .map_err(backend)?
    }
}

/// Read connections of a database file: enough for every thread of the async runtime to look up
/// inline, and for a listing on the blocking pool beside them.
fn read_connections() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) + 2
}

/// Invocation rows written between yields of the CPU (about 50–100 µs of SQLite work).
const YIELD_EVERY: usize = 16;

fn function_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FunctionRecord> {
    Ok(FunctionRecord {
        spec: json_col(0, r.get(0)?)?,
        status: json_col(1, r.get(1)?)?,
        generation: r.get(2)?,
        created_at: from_micros(r.get(3)?)?,
        updated_at: from_micros(r.get(4)?)?,
    })
}

#[async_trait]
impl FunctionStore for SqliteStore {
    async fn create_function(&self, record: &FunctionRecord) -> Result<()> {
        let r = record.clone();
        self.write(move |c| {
            let n = c
                .execute(
                    "INSERT INTO functions (owner, endpoint, visibility, spec, status, generation, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                    params![
                        r.spec.owner,
                        r.spec.endpoint,
                        r.spec.visibility.as_str(),
                        serde_json::to_string(&r.spec).map_err(backend)?,
                        serde_json::to_string(&r.status).map_err(backend)?,
                        r.generation,
                        micros(r.created_at),
                        micros(r.updated_at)
                    ],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "{} already exists",
                    label(&r.spec.owner, &r.spec.endpoint)
                )));
            }
            Ok(())
        })
        .await
    }

    async fn replace_function(
        &self,
        record: &FunctionRecord,
        expected_generation: i64,
    ) -> Result<()> {
        let r = record.clone();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE functions SET visibility = ?3, spec = ?4, status = ?5, generation = ?6,
                     created_at = ?7, updated_at = ?8
                     WHERE owner = ?1 AND endpoint = ?2 AND generation = ?9",
                    params![
                        r.spec.owner,
                        r.spec.endpoint,
                        r.spec.visibility.as_str(),
                        serde_json::to_string(&r.spec).map_err(backend)?,
                        serde_json::to_string(&r.status).map_err(backend)?,
                        r.generation,
                        micros(r.created_at),
                        micros(r.updated_at),
                        expected_generation
                    ],
                )
                .map_err(backend)?;
            if n == 1 {
                return Ok(());
            }
            let exists: bool = c
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM functions WHERE owner = ?1 AND endpoint = ?2)",
                    params![r.spec.owner, r.spec.endpoint],
                    |row| row.get(0),
                )
                .map_err(backend)?;
            let what = label(&r.spec.owner, &r.spec.endpoint);
            if exists {
                Err(StoreError::Conflict(format!(
                    "{what} was changed by someone else meanwhile; read it again and retry"
                )))
            } else {
                Err(StoreError::NotFound(what))
            }
        })
        .await
    }

    async fn get_function(&self, owner: &str, endpoint: &str) -> Result<Option<FunctionRecord>> {
        let (o, e) = (owner.to_string(), endpoint.to_string());
        self.lookup(move |c| {
            c.query_row(
                "SELECT spec, status, generation, created_at, updated_at FROM functions
                 WHERE owner = ?1 AND endpoint = ?2",
                params![o, e],
                function_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_functions(&self, filter: &FunctionFilter) -> Result<Vec<FunctionRecord>> {
        let (owner, public) = (filter.owner.clone(), filter.include_public);
        self.scan(move |c| {
            // owner only: `owner = ?1`; public only: the second arm; both: either; neither: all.
            // (`owner = NULL` is never true, so an absent owner matches nothing by itself.)
            let mut st = c
                .prepare_cached(
                    "SELECT spec, status, generation, created_at, updated_at FROM functions
                     WHERE (?1 IS NULL AND NOT ?2) OR owner = ?1 OR (?2 AND visibility = 'public')
                     ORDER BY owner, endpoint",
                )
                .map_err(backend)?;
            st.query_map(params![owner, public], function_row)
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)
        })
        .await
    }

    async fn delete_function(&self, owner: &str, endpoint: &str) -> Result<bool> {
        let (o, e) = (owner.to_string(), endpoint.to_string());
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let n = tx
                .execute(
                    "DELETE FROM functions WHERE owner = ?1 AND endpoint = ?2",
                    params![o, e],
                )
                .map_err(backend)?;
            tx.execute(
                "DELETE FROM state WHERE owner = ?1 AND function = ?2",
                params![o, e],
            )
            .map_err(backend)?;
            tx.execute(
                "DELETE FROM invocations WHERE owner = ?1 AND endpoint = ?2",
                params![o, e],
            )
            .map_err(backend)?;
            catalog::forget(&tx, &o, &e).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn set_function_status(
        &self,
        owner: &str,
        endpoint: &str,
        status: &SkyFunctionStatus,
    ) -> Result<()> {
        let (o, e) = (owner.to_string(), endpoint.to_string());
        let s = serde_json::to_string(status).map_err(backend)?;
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE functions SET status = ?3 WHERE owner = ?1 AND endpoint = ?2",
                    params![o, e, s],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(label(&o, &e)));
            }
            Ok(())
        })
        .await
    }
}

impl OrderedStateWrites for SqliteStore {
    fn queue_state_write(
        &self,
        write: QueuedWrite,
    ) -> tokio::sync::oneshot::Receiver<Result<Written>> {
        self.inner.writer.queue_state(write)
    }

    fn flush_state_writes(&self) {
        self.inner.writer.flush_states();
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn state_get(&self, scope: &StateScope, key: &str) -> Result<Option<String>> {
        let (s, k) = (scope.clone(), key.to_string());
        // State calls are the hot path of functions that use state: cached statements skip
        // SQLite's parser (a third of a lookup's time).
        self.lookup(move |c| {
            c.prepare_cached(
                "SELECT value FROM state WHERE owner = ?1 AND function = ?2 AND key = ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![s.owner, s.function, k], |r| r.get(0))
                    .optional()
            })
            .map_err(backend)
        })
        .await
    }

    async fn state_write(
        &self,
        scope: &StateScope,
        key: &str,
        write: &StateWrite,
        quota: StateQuota,
    ) -> Result<Written> {
        let answer = self.queue_state_write(QueuedWrite {
            scope: scope.clone(),
            key: key.to_string(),
            write: write.clone(),
            quota,
            chain: None,
            on_commit: None,
        });
        self.flush_state_writes();
        answer.await.map_err(|_| writer::stopped())?
    }

    fn ordered_writes(&self) -> Option<&dyn OrderedStateWrites> {
        Some(self)
    }

    async fn state_delete(&self, scope: &StateScope, key: &str) -> Result<bool> {
        let (s, k) = (scope.clone(), key.to_string());
        self.write(move |c| {
            let n = c
                .prepare_cached("DELETE FROM state WHERE owner = ?1 AND function = ?2 AND key = ?3")
                .and_then(|mut st| st.execute(params![s.owner, s.function, k]))
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn state_keys(
        &self,
        scope: &StateScope,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        let (s, p) = (scope.clone(), prefix.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.scan(move |c| {
            // substr() compares literally: '%' and '_' in the prefix are not wildcards.
            let mut st = c
                .prepare(
                    "SELECT key FROM state WHERE owner = ?1 AND function = ?2
                     AND substr(key, 1, length(?3)) = ?3 ORDER BY key LIMIT ?4",
                )
                .map_err(backend)?;
            st.query_map(params![s.owner, s.function, p, limit], |r| r.get(0))
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(backend)
        })
        .await
    }

    async fn export_state(
        &self,
        after: Option<&StateEntry>,
        limit: usize,
    ) -> Result<Vec<StateEntry>> {
        let after = after.map(|e| (e.owner.clone(), e.function.clone(), e.key.clone()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.scan(move |c| {
            let (o, f, k) = after.unwrap_or_default();
            // Row values compare in order: the entries strictly after the last one seen.
            let mut st = c
                .prepare(
                    "SELECT owner, function, key, value FROM state
                     WHERE (owner, function, key) > (?1, ?2, ?3)
                     ORDER BY owner, function, key LIMIT ?4",
                )
                .map_err(backend)?;
            st.query_map(params![o, f, k, limit], |r| {
                Ok(StateEntry {
                    owner: r.get(0)?,
                    function: r.get(1)?,
                    key: r.get(2)?,
                    value: r.get(3)?,
                })
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)
        })
        .await
    }

    async fn import_state(&self, entries: &[StateEntry]) -> Result<()> {
        let entries = entries.to_vec();
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            {
                let mut st = tx
                    .prepare_cached(
                        "INSERT INTO state (owner, function, key, value, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (owner, function, key) DO UPDATE SET value = excluded.value,
                         updated_at = excluded.updated_at",
                    )
                    .map_err(backend)?;
                let now = micros(Timestamp::now());
                for e in &entries {
                    st.execute(params![e.owner, e.function, e.key, e.value, now])
                        .map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }
}

#[async_trait]
impl InvocationStore for SqliteStore {
    async fn record_invocations(
        &self,
        batch: &[Invocation],
        retain_per_function: usize,
    ) -> Result<()> {
        let batch = batch.to_vec();
        let keep = i64::try_from(retain_per_function).unwrap_or(i64::MAX);
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            {
                let mut ins = tx
                    .prepare_cached(
                        "INSERT INTO invocations (owner, endpoint, request_id, started_at, duration_ms,
                         status, outcome, error, logs, cold_start)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )
                    .map_err(backend)?;
                for (n, i) in batch.iter().enumerate() {
                    if n % YIELD_EVERY == YIELD_EVERY - 1 {
                        // This thread shares the CPU with calls: let a call that became
                        // runnable go first instead of waiting out the whole batch.
                        std::thread::yield_now();
                    }
                    ins.execute(params![
                        i.owner,
                        i.endpoint,
                        i.request_id,
                        micros(i.started_at),
                        i.duration_ms,
                        i.status,
                        i.outcome,
                        i.error,
                        i.logs,
                        i.cold_start
                    ])
                    .map_err(backend)?;
                }
                let mut functions: Vec<(&str, &str)> = batch
                    .iter()
                    .map(|i| (i.owner.as_str(), i.endpoint.as_str()))
                    .collect();
                functions.sort_unstable();
                functions.dedup();
                let mut prune = tx
                    .prepare_cached(
                        "DELETE FROM invocations WHERE owner = ?1 AND endpoint = ?2 AND id <=
                         (SELECT id FROM invocations WHERE owner = ?1 AND endpoint = ?2
                          ORDER BY id DESC LIMIT 1 OFFSET ?3)",
                    )
                    .map_err(backend)?;
                for (o, e) in functions {
                    std::thread::yield_now();
                    prune.execute(params![o, e, keep]).map_err(backend)?;
                }
                catalog::count_calls(&tx, &batch).map_err(backend)?;
            }
            std::thread::yield_now();
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn recent_invocations(
        &self,
        owner: &str,
        endpoint: &str,
        limit: usize,
    ) -> Result<Vec<Invocation>> {
        let (o, e) = (owner.to_string(), endpoint.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.scan(move |c| {
            let mut st = c
                .prepare(
                    "SELECT request_id, owner, endpoint, started_at, duration_ms, status, outcome,
                     error, logs, cold_start FROM invocations
                     WHERE owner = ?1 AND endpoint = ?2 ORDER BY id DESC LIMIT ?3",
                )
                .map_err(backend)?;
            st.query_map(params![o, e, limit], |r| {
                Ok(Invocation {
                    request_id: r.get(0)?,
                    owner: r.get(1)?,
                    endpoint: r.get(2)?,
                    started_at: from_micros(r.get(3)?)?,
                    duration_ms: r.get(4)?,
                    status: r.get(5)?,
                    outcome: r.get(6)?,
                    error: r.get(7)?,
                    logs: r.get(8)?,
                    cold_start: r.get(9)?,
                })
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CatalogStore, CredentialKind, User, UserStore};
    use skython_crds::SkyFunctionSpec;

    fn record_at(owner: &str, endpoint: &str, now: Timestamp) -> FunctionRecord {
        FunctionRecord {
            spec: SkyFunctionSpec::new(owner, endpoint, "def main(): return 1"),
            status: SkyFunctionStatus::default(),
            generation: 1,
            created_at: now,
            updated_at: now,
        }
    }

    fn scope(owner: &str, function: &str) -> StateScope {
        StateScope {
            owner: owner.into(),
            function: function.into(),
        }
    }

    const SMALL: StateQuota = StateQuota {
        max_keys: 3,
        max_bytes: 10,
    };

    fn quota_error(r: Result<()>) -> crate::QuotaExceeded {
        match r {
            Err(StoreError::QuotaExceeded(q)) => q,
            other => panic!("expected a quota error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_write_that_panics_is_a_backend_error_and_the_store_goes_on() {
        let s = SqliteStore::open_in_memory().unwrap();
        let failed = s
            .write(|_| -> Result<()> { panic!("a bug in a write") })
            .await;
        assert!(matches!(
            failed,
            Err(StoreError::Backend(m)) if m.to_string().contains("failed or stopped")
        ));
        s.state_put(&scope("alice", "f"), "n", "1", SMALL)
            .await
            .unwrap();
        assert_eq!(
            s.state_get(&scope("alice", "f"), "n").await.unwrap(),
            Some("1".into())
        );
    }

    #[tokio::test]
    async fn data_survives_reopening_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/skython.db");
        let created = from_micros(micros(Timestamp::now())).unwrap();
        {
            let s = SqliteStore::open(&path).unwrap();
            s.create_function(&record_at("alice", "f", created))
                .await
                .unwrap();
            s.state_put(&scope("alice", "f"), "n", "41", StateQuota::default())
                .await
                .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let pragmas = s
            .write(|c| {
                let pragma = |name: &str| -> String {
                    c.pragma_query_value(None, name, |r| r.get::<_, rusqlite::types::Value>(0))
                        .map(|v| format!("{v:?}"))
                        .unwrap()
                };
                Ok([
                    "journal_mode",
                    "synchronous",
                    "foreign_keys",
                    "busy_timeout",
                    "user_version",
                ]
                .map(pragma))
            })
            .await
            .unwrap();
        // synchronous 1 is NORMAL.
        assert_eq!(
            pragmas,
            [
                r#"Text("wal")"#,
                "Integer(1)",
                "Integer(1)",
                "Integer(5000)",
                "Integer(4)"
            ]
        );
        assert_eq!(
            s.get_function("alice", "f").await.unwrap(),
            Some(record_at("alice", "f", created))
        );
        assert_eq!(
            s.state_get(&scope("alice", "f"), "n")
                .await
                .unwrap()
                .as_deref(),
            Some("41")
        );
        drop(s);
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Backend(m)) if m.to_string().contains("schema version 99")
        ));
        // Refusing leaves the file as it was.
        let c = Connection::open(&path).unwrap();
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 99);
    }

    #[tokio::test]
    async fn a_database_locked_past_the_busy_timeout_is_unavailable_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skython.db");
        let s = SqliteStore::open(&path).unwrap();
        // Another process holds the write lock for longer than the busy timeout.
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let e = s
            .state_put(&scope("alice", "f"), "k", "1", SMALL)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("locked")),
            "{e}"
        );
        other.execute_batch("ROLLBACK").unwrap();
        s.state_put(&scope("alice", "f"), "k", "1", SMALL)
            .await
            .unwrap();
    }

    /// The schema version 2 wrote (before credentials), verbatim: old files are made with it.
    const V2_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        is_admin INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS functions (
        owner TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        visibility TEXT NOT NULL,
        spec TEXT NOT NULL,
        status TEXT NOT NULL,
        generation INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (owner, endpoint)
    );
    CREATE TABLE IF NOT EXISTS state (
        owner TEXT NOT NULL,
        function TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (owner, function, key)
    );
    CREATE TABLE IF NOT EXISTS invocations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        request_id TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        duration_ms REAL NOT NULL,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        logs TEXT NOT NULL,
        cold_start INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (owner, endpoint, id);
    CREATE TABLE IF NOT EXISTS state_usage (
        owner TEXT PRIMARY KEY,
        keys INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    CREATE TRIGGER IF NOT EXISTS state_usage_insert AFTER INSERT ON state BEGIN
        INSERT INTO state_usage (owner, keys, bytes)
        VALUES (NEW.owner, 1, length(CAST(NEW.value AS BLOB)))
        ON CONFLICT (owner) DO UPDATE SET keys = keys + 1, bytes = bytes + excluded.bytes;
    END;
    CREATE TRIGGER IF NOT EXISTS state_usage_update AFTER UPDATE OF value ON state BEGIN
        UPDATE state_usage
        SET bytes = bytes - length(CAST(OLD.value AS BLOB)) + length(CAST(NEW.value AS BLOB))
        WHERE owner = NEW.owner;
    END;
    CREATE TRIGGER IF NOT EXISTS state_usage_delete AFTER DELETE ON state BEGIN
        UPDATE state_usage SET keys = keys - 1, bytes = bytes - length(CAST(OLD.value AS BLOB))
        WHERE owner = OLD.owner;
    END;
    ";

    /// A database file as an older Skython left it: the version 2 schema, then `changes`.
    fn old_database(path: &Path, changes: &str) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(V2_SCHEMA).unwrap();
        c.execute_batch(changes).unwrap();
    }

    #[tokio::test]
    async fn a_version_2_database_keeps_its_tokens_as_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skython.db");
        let created = Timestamp::from_microsecond(1_700_000_000_123_456).unwrap();
        old_database(
            &path,
            "INSERT INTO users VALUES ('admin', 'hash-a', 1, 1700000000123456);
             INSERT INTO users VALUES ('alice', 'hash-b', 0, 1700000000123456);
             PRAGMA user_version = 2;",
        );
        let s = SqliteStore::open(&path).unwrap();
        let (token, admin) = s
            .authenticate("hash-a", Timestamp::now())
            .await
            .unwrap()
            .expect("the admin's token still works");
        assert_eq!(
            admin,
            User {
                name: "admin".into(),
                is_admin: true,
                created_at: created
            }
        );
        assert_eq!(
            (
                token.id.as_str(),
                token.kind,
                token.name.as_str(),
                token.created_at
            ),
            (
                "tok_default_admin",
                CredentialKind::Token,
                "default",
                created
            )
        );
        assert_eq!(token.id, crate::legacy_token_id("admin"));
        let alice = s.authenticate("hash-b", Timestamp::now()).await.unwrap();
        assert_eq!(alice.map(|(_, u)| u.name).as_deref(), Some("alice"));
        let (version, columns) = s
            .write(|c| {
                let mut st = c
                    .prepare("SELECT name FROM pragma_table_info('users')")
                    .unwrap();
                let columns: Vec<String> = st
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<rusqlite::Result<_>>()
                    .unwrap();
                Ok((schema_version(c)?, columns))
            })
            .await
            .unwrap();
        assert_eq!(version, 4);
        assert_eq!(columns, ["name", "password_hash", "is_admin", "created_at"]);
        s.set_password_hash("alice", "phc").await.unwrap();
        assert_eq!(
            s.password_hash("alice").await.unwrap().as_deref(),
            Some("phc")
        );
    }

    fn call(endpoint: &str, outcome: &str) -> Invocation {
        Invocation {
            request_id: format!("r-{outcome}"),
            owner: "alice".into(),
            endpoint: endpoint.into(),
            started_at: Timestamp::now(),
            duration_ms: 1.0,
            status: if outcome == "ok" { 200 } else { 500 },
            outcome: outcome.into(),
            error: None,
            logs: String::new(),
            cold_start: false,
        }
    }

    #[tokio::test]
    async fn a_version_3_catalogue_keeps_its_counts_and_counts_errors_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skython.db");
        let s = SqliteStore::open(&path).unwrap();
        s.record_invocations(&[call("f", "ok")], 10).await.unwrap();
        drop(s);
        // What version 3 left: the catalogue without its `errors` column.
        Connection::open(&path)
            .unwrap()
            .execute_batch("ALTER TABLE catalog DROP COLUMN errors; PRAGMA user_version = 3;")
            .unwrap();
        let s = SqliteStore::open(&path).unwrap();
        let before = s.function_stats("alice", "f").await.unwrap();
        assert_eq!((before.calls, before.errors), (1, 0));
        s.record_invocations(&[call("f", "function_error")], 10)
            .await
            .unwrap();
        let after = s.function_stats("alice", "f").await.unwrap();
        assert_eq!((after.calls, after.errors), (2, 1));
        let version = s.write(|c| schema_version(c)).await.unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn a_database_from_before_the_catalogue_gets_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skython.db");
        old_database(&path, "PRAGMA user_version = 2;");
        let s = SqliteStore::open(&path).unwrap();
        s.record_invocations(&[call("f", "timeout")], 10)
            .await
            .unwrap();
        let stats = s.function_stats("alice", "f").await.unwrap();
        assert_eq!((stats.calls, stats.errors), (1, 1));
    }

    #[tokio::test]
    async fn a_version_1_database_gets_its_state_counted_and_keeps_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skython.db");
        // Version 1 had no usage table and no triggers.
        old_database(
            &path,
            "DROP TRIGGER state_usage_insert; DROP TRIGGER state_usage_update;
             DROP TRIGGER state_usage_delete; DROP TABLE state_usage;
             INSERT INTO state VALUES ('alice', 'f', 'a', '1', 0), ('alice', 'f', 'b', '1', 0);
             INSERT INTO users VALUES ('alice', 'hash-a', 0, 1700000000000000);
             PRAGMA user_version = 1;",
        );
        let s = SqliteStore::open(&path).unwrap();
        let alice = s.authenticate("hash-a", Timestamp::now()).await.unwrap();
        assert_eq!(alice.map(|(_, u)| u.name).as_deref(), Some("alice"));
        s.state_put(&scope("alice", "g"), "c", "1", SMALL)
            .await
            .unwrap();
        let e = quota_error(s.state_put(&scope("alice", "g"), "d", "1", SMALL).await);
        assert_eq!((e.kind, e.used), (crate::QuotaKind::Keys, 3));
        let e = quota_error(
            s.state_put(&scope("alice", "g"), "c", "\"abcdefgh\"", SMALL)
                .await,
        );
        assert_eq!((e.kind, e.used, e.after), (crate::QuotaKind::Bytes, 3, 12));
    }
}
