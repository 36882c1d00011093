//! The MongoDB backend, for clusters: several gateway replicas share one durable catalogue and
//! one state through it. It keeps exactly what [`SqliteStore`](crate::SqliteStore) keeps, with the
//! same errors, limits and quota semantics; the conformance suite runs on both.
//!
//! Collections (in the URI's default database, `skython` if it names none):
//! - `users`: `{name, password_hash, is_admin, created_at}`, unique on `name`.
//! - `credentials`: `{_id: id, kind, owner, name, hash, prefix, functions, created_at,
//!   expires_at, revoked_at, calls, errors, duration_ms, last_used_at}`, unique on `hash`, and
//!   (owner, kind, created_at) for listings. A `users` document of an older Skython carries its
//!   one `token_hash`: [`MongoStore::connect`] moves it into `credentials` (see `accounts.rs`).
//! - `functions`: `{owner, endpoint, visibility, spec, status, generation, created_at,
//!   updated_at}`, unique on (owner, endpoint), and (visibility, owner, endpoint) for listings of
//!   public functions. Spec and status are JSON text, as in SQLite, so a record reads back
//!   exactly as written; the fields queries use are copied beside them.
//! - `state`: `{owner, function, key, value, bytes, updated_at}`, unique on (owner, function,
//!   key); `value` is JSON text and `bytes` its length, so usage is adjusted without reading
//!   values.
//! - `state_usage`: `{_id: owner, keys, bytes, writes}`, each owner's usage against
//!   [`StateQuota`], and a count of their state writes (see below).
//! - `invocations`: one document per call with a `seq` from `counters` (so "newest" is the same
//!   for every gateway), indexed on (owner, endpoint, seq); each function keeps its newest N.
//! - `catalog` and `function_versions`: the skybox catalogue (see `mongo/catalog.rs`).
//!
//! Timestamps are integer microseconds since the Unix epoch (BSON dates hold milliseconds).
//!
//! Why transactions: a state write reads the current value and its owner's usage, decides
//! ([`StateWrite::apply`]), checks the quota and writes the value and the usage. That must not
//! interleave with another writer (a lost `incr`, two winners of a compare-and-set, two keys past
//! the quota), so it runs in one multi-document transaction. Two transactions writing the same
//! document conflict (`WriteConflict`, labelled `TransientTransactionError`); the loser is
//! aborted at once (SecantusDB keeps a failed write's document taken until the abort arrives,
//! which starved the retries) and retried from the start after a short random pause, within
//! [`TRANSACTION_BUDGET`]. A state write begins by bumping `writes` in its owner's usage
//! document: that takes the document like a lock, so one owner's writes go one at a time (as
//! SQLite's `IMMEDIATE` transactions do) and a loser learns it on its first step, before doing
//! any work. Within one process, an owner's writers also wait their turn on a local lock rather
//! than conflict in MongoDB (50 writers of one owner took 6 s on SecantusDB by conflicts and
//! retries alone, well under one second in line); the transactions are what keeps writers of two
//! gateways apart. Deleting a key or a function and importing state adjust the usage in their
//! transaction too.
//!
//! Failures: a server that cannot be reached (no server selected within the URI's
//! `serverSelectionTimeoutMS`, 2 s unless it says otherwise; a connection lost) is
//! [`StoreError::Unavailable`], so the gateway answers 503 and calls without state keep working.
//! The driver reconnects by itself when the server is back.
//!
//! Production: transactions need a replica set (a single-node one will do) or a sharded cluster;
//! [`MongoStore::connect`] refuses a standalone server. Use the replica set's URI, e.g.
//! `mongodb://user:pass@db1,db2,db3/skython?replicaSet=rs0&authSource=admin&tls=true`:
//! credentials go in the URI (`authSource` names the database that holds the user), `tls=true`
//! encrypts the connection (`tlsCAFile=` for a private CA). Writes use the server's default write
//! concern, `majority` since MongoDB 5.0: an acknowledged write survives the loss of the primary.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jiff::Timestamp;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{
    Error as MongoError, ErrorKind, RETRYABLE_WRITE_ERROR, TRANSIENT_TRANSACTION_ERROR,
    UNKNOWN_TRANSACTION_COMMIT_RESULT, WriteFailure,
};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, ClientSession, Collection, Cursor, IndexModel};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skython_crds::{SkyFunctionStatus, Visibility};

mod catalog;

use crate::{
    FunctionFilter, FunctionRecord, FunctionStore, Invocation, InvocationStore, Result, StateEntry,
    StateQuota, StateScope, StateStore, StateUsage, StateWrite, StoreError, Written, label,
};

mod accounts;
use accounts::{CredentialDoc, UserDoc};

/// The database when the URI names none.
const DEFAULT_DATABASE: &str = "skython";

/// How long a call waits for a server when the URI does not say (the driver's default is 30 s):
/// state calls fail fast with 503 while MongoDB is away.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a transaction is retried after write conflicts before giving up.
const TRANSACTION_BUDGET: Duration = Duration::from_secs(10);

/// The longest pause between two attempts of a conflicting transaction.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Locks that line up one process's state writes per owner (owners share one by hash).
const OWNER_LOCKS: usize = 64;

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

/// The [`Store`](crate::Store) on MongoDB. Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct MongoStore {
    client: Client,
    users: Collection<UserDoc>,
    credentials: Collection<CredentialDoc>,
    functions: Collection<FunctionDoc>,
    state: Collection<StateDoc>,
    usage: Collection<UsageDoc>,
    invocations: Collection<InvocationDoc>,
    counters: Collection<Document>,
    catalog: catalog::Catalog,
    /// Striped by owner (see [`MongoStore::owner_lock`]).
    owner_locks: Arc<[tokio::sync::Mutex<()>]>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FunctionDoc {
    owner: String,
    endpoint: String,
    visibility: String,
    spec: String,
    status: String,
    generation: i64,
    created_at: i64,
    updated_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateDoc {
    owner: String,
    function: String,
    key: String,
    value: String,
    bytes: i64,
    updated_at: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct UsageDoc {
    #[serde(rename = "_id")]
    owner: String,
    #[serde(default)]
    keys: i64,
    #[serde(default)]
    bytes: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct InvocationDoc {
    owner: String,
    endpoint: String,
    seq: i64,
    request_id: String,
    started_at: i64,
    duration_ms: f64,
    status: i32,
    outcome: String,
    error: Option<String>,
    logs: String,
    cold_start: bool,
}

/// One attempt at a transaction's work, borrowing its session.
type Attempt<'s, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + 's>>;

/// Why one attempt of a transaction failed: a decision of ours (final) or the driver's error
/// (retried when MongoDB labels it transient).
enum Failure {
    Store(StoreError),
    Driver(MongoError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

impl From<MongoError> for Failure {
    fn from(e: MongoError) -> Self {
        Failure::Driver(e)
    }
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Store(e) => e,
            Failure::Driver(e) => store_error(e),
        }
    }
}

/// A connection problem (worth retrying later) rather than a refused operation; the driver has
/// already retried reads and writes once.
fn is_unavailable(e: &MongoError) -> bool {
    e.contains_label(RETRYABLE_WRITE_ERROR)
        || matches!(
            *e.kind,
            ErrorKind::Io(_)
                | ErrorKind::ServerSelection { .. }
                | ErrorKind::ConnectionPoolCleared { .. }
                | ErrorKind::DnsResolve { .. }
                | ErrorKind::Shutdown
        )
}

fn store_error(e: MongoError) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(format!("MongoDB cannot be reached: {e}"))
    } else if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) {
        StoreError::Unavailable(format!(
            "MongoDB did not confirm a commit (it may or may not have been applied): {e}"
        ))
    } else if e.contains_label(TRANSIENT_TRANSACTION_ERROR) {
        StoreError::Unavailable(format!(
            "MongoDB kept refusing a transaction for {}s (contention): {e}",
            TRANSACTION_BUDGET.as_secs()
        ))
    } else {
        StoreError::Backend(Box::new(e))
    }
}

/// Whether a failed transaction can be run again from the start: MongoDB says so (a write
/// conflict), the commit surely did not happen, and the server is there (a lost server fails
/// fast instead).
fn retryable(e: &MongoError) -> bool {
    e.contains_label(TRANSIENT_TRANSACTION_ERROR)
        && !e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
        && !is_unavailable(e)
}

fn is_duplicate_key(e: &MongoError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .iter()
            .flatten()
            .any(|w| w.code == DUPLICATE_KEY),
        _ => false,
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

fn micros(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn from_micros(us: i64) -> Result<Timestamp> {
    Timestamp::from_microsecond(us).map_err(backend)
}

/// Stored sizes and counts are never negative; 0 if one were.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn size(text: &str) -> i64 {
    i64::try_from(text.len()).unwrap_or(i64::MAX)
}

/// A limit as MongoDB takes it (where 0 means "no limit", so callers handle 0 first).
fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn state_filter(scope: &StateScope, key: &str) -> Document {
    doc! { "owner": &scope.owner, "function": &scope.function, "key": key }
}

/// An anchored regular expression matching `prefix` literally: every ASCII punctuation character
/// is escaped (PCRE reads `\` before one as that character itself).
fn prefix_pattern(prefix: &str) -> String {
    let mut re = String::with_capacity(prefix.len() * 2 + 1);
    re.push('^');
    for c in prefix.chars() {
        if c.is_ascii_punctuation() || c == ' ' {
            re.push('\\');
        }
        re.push(c);
    }
    re
}

/// A pause of up to `max`, at random, so conflicting writers do not meet again in step.
fn jitter(max: Duration) -> Duration {
    let us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rand::random_range(0..=us))
}

/// An integer field, whichever width the server chose for it.
fn integer(d: &Document, field: &str) -> Result<i64> {
    match d.get(field) {
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        Some(Bson::Int64(n)) => Ok(*n),
        other => Err(StoreError::Backend(
            format!("expected an integer in {field:?}, MongoDB gave {other:?}").into(),
        )),
    }
}

async fn collect<T: DeserializeOwned + Send + Sync>(mut cursor: Cursor<T>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while cursor.advance().await.map_err(store_error)? {
        out.push(cursor.deserialize_current().map_err(store_error)?);
    }
    Ok(out)
}

impl FunctionDoc {
    fn from_record(r: &FunctionRecord) -> Result<FunctionDoc> {
        Ok(FunctionDoc {
            owner: r.spec.owner.clone(),
            endpoint: r.spec.endpoint.clone(),
            visibility: r.spec.visibility.as_str().to_string(),
            spec: serde_json::to_string(&r.spec).map_err(backend)?,
            status: serde_json::to_string(&r.status).map_err(backend)?,
            generation: r.generation,
            created_at: micros(r.created_at),
            updated_at: micros(r.updated_at),
        })
    }

    fn into_record(self) -> Result<FunctionRecord> {
        Ok(FunctionRecord {
            spec: serde_json::from_str(&self.spec).map_err(backend)?,
            status: serde_json::from_str(&self.status).map_err(backend)?,
            generation: self.generation,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
        })
    }
}

impl InvocationDoc {
    fn into_invocation(self) -> Result<Invocation> {
        Ok(Invocation {
            request_id: self.request_id,
            owner: self.owner,
            endpoint: self.endpoint,
            started_at: from_micros(self.started_at)?,
            duration_ms: self.duration_ms,
            status: u16::try_from(self.status).map_err(backend)?,
            outcome: self.outcome,
            error: self.error,
            logs: self.logs,
            cold_start: self.cold_start,
        })
    }
}

fn index(keys: Document, name: &str, unique: bool) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_string())
                .unique(unique)
                .build(),
        )
        .build()
}

impl MongoStore {
    /// Connects to the MongoDB at `uri` and creates the indexes if missing. Fails with
    /// [`StoreError::Unavailable`] if no server answers in time, and with
    /// [`StoreError::Backend`] for a malformed URI or a standalone server (no transactions).
    pub async fn connect(uri: &str) -> Result<MongoStore> {
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            if is_unavailable(&e) {
                store_error(e)
            } else {
                StoreError::Backend(format!("invalid MongoDB URI: {e}").into())
            }
        })?;
        options
            .server_selection_timeout
            .get_or_insert(SERVER_SELECTION_TIMEOUT);
        options.app_name.get_or_insert_with(|| "skython".into());
        let database = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let client = Client::with_options(options).map_err(store_error)?;
        let db = client.database(&database);

        let hello = db
            .run_command(doc! { "hello": 1 })
            .await
            .map_err(store_error)?;
        let replicated =
            hello.contains_key("setName") || hello.get_str("msg").ok() == Some("isdbgrid");
        if !replicated {
            return Err(StoreError::Backend(
                "the MongoDB server is standalone, and Skython needs transactions: run it as a \
                 replica set (one node will do: `mongod --replSet rs0`, then `rs.initiate()`) \
                 and connect with its URI"
                    .into(),
            ));
        }

        let store = MongoStore {
            client,
            users: db.collection("users"),
            credentials: db.collection("credentials"),
            functions: db.collection("functions"),
            state: db.collection("state"),
            usage: db.collection("state_usage"),
            invocations: db.collection("invocations"),
            counters: db.collection("counters"),
            catalog: catalog::Catalog::new(&db),
            owner_locks: (0..OWNER_LOCKS).map(|_| Default::default()).collect(),
        };
        store.create_indexes().await?;
        store.migrate_legacy_tokens().await?;
        Ok(store)
    }

    async fn create_indexes(&self) -> Result<()> {
        self.create_account_indexes().await?;
        self.functions
            .create_indexes([
                index(doc! { "owner": 1, "endpoint": 1 }, "owner_endpoint", true),
                index(
                    doc! { "visibility": 1, "owner": 1, "endpoint": 1 },
                    "visibility_owner_endpoint",
                    false,
                ),
            ])
            .await
            .map_err(store_error)?;
        self.state
            .create_index(index(
                doc! { "owner": 1, "function": 1, "key": 1 },
                "owner_function_key",
                true,
            ))
            .await
            .map_err(store_error)?;
        self.invocations
            .create_index(index(
                doc! { "owner": 1, "endpoint": 1, "seq": -1 },
                "owner_endpoint_seq",
                false,
            ))
            .await
            .map_err(store_error)?;
        self.catalog.create_indexes().await?;
        Ok(())
    }

    /// Runs `attempt` in a fresh transaction and commits, until that succeeds, fails for good
    /// or [`TRANSACTION_BUDGET`] is spent. A failed attempt is aborted before anything else
    /// (SecantusDB holds a failed write's document until then, which starved the next attempts).
    /// `args` carries what `attempt` borrows, so its future may borrow the session too.
    async fn transaction<A, T, F>(&self, args: &A, mut attempt: F) -> Result<T>
    where
        A: Sync + ?Sized,
        F: for<'s> FnMut(&'s mut ClientSession, &'s A) -> Attempt<'s, T>,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let mut session = self.client.start_session().await.map_err(store_error)?;
            session.start_transaction().await.map_err(store_error)?;
            let outcome = match attempt(&mut session, args).await {
                Ok(t) => session
                    .commit_transaction()
                    .await
                    .map(|()| t)
                    .map_err(Failure::Driver),
                Err(e) => {
                    // Best effort: if the server is gone, so is the transaction.
                    let _ = session.abort_transaction().await;
                    Err(e)
                }
            };
            match outcome {
                Err(Failure::Driver(e))
                    if retryable(&e) && started.elapsed() < TRANSACTION_BUDGET =>
                {
                    tokio::time::sleep(jitter(pause)).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                done => return done.map_err(StoreError::from),
            }
        }
    }

    /// The lock that lines up this process's state writes of `owner`.
    fn owner_lock(&self, owner: &str) -> &tokio::sync::Mutex<()> {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(owner, &mut h);
        let i = std::hash::Hasher::finish(&h) as usize % self.owner_locks.len();
        &self.owner_locks[i]
    }

    async fn delete_function_in(
        &self,
        s: &mut ClientSession,
        owner: &str,
        endpoint: &str,
    ) -> Result<bool, Failure> {
        let function = doc! { "owner": owner, "endpoint": endpoint };
        let state = doc! { "owner": owner, "function": endpoint };
        let deleted = self
            .functions
            .delete_one(function.clone())
            .session(&mut *s)
            .await?;
        // What the function's state takes, given back to its owner's usage.
        let mut totals = self
            .state
            .aggregate([
                doc! { "$match": state.clone() },
                doc! { "$group": {
                    "_id": null,
                    "keys": { "$sum": 1 },
                    "bytes": { "$sum": "$bytes" },
                } },
            ])
            .session(&mut *s)
            .await?;
        let (keys, bytes) = match totals.next(&mut *s).await.transpose()? {
            Some(t) => (integer(&t, "keys")?, integer(&t, "bytes")?),
            None => (0, 0),
        };
        drop(totals);
        if keys > 0 {
            self.state.delete_many(state).session(&mut *s).await?;
            self.usage
                .update_one(
                    doc! { "_id": owner },
                    doc! { "$inc": { "keys": -keys, "bytes": -bytes } },
                )
                .session(&mut *s)
                .await?;
        }
        self.invocations
            .delete_many(function)
            .session(&mut *s)
            .await?;
        self.catalog.forget_in(s, owner, endpoint).await?;
        Ok(deleted.deleted_count > 0)
    }

    async fn state_write_in(
        &self,
        s: &mut ClientSession,
        scope: &StateScope,
        key: &str,
        write: &StateWrite,
        quota: StateQuota,
    ) -> Result<Written, Failure> {
        let filter = state_filter(scope, key);
        let owner = doc! { "_id": &scope.owner };
        // Writing the owner's usage document first takes it like a lock: another writer of
        // this owner conflicts on its first step, before doing any work, and this
        // transaction's snapshot starts after every write that came before it.
        let used = self
            .usage
            .find_one_and_update(owner.clone(), doc! { "$inc": { "writes": 1 } })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .session(&mut *s)
            .await?
            .map(|u| StateUsage {
                keys: count(u.keys),
                bytes: count(u.bytes),
            })
            .unwrap_or_default();
        let current = self.state.find_one(filter.clone()).session(&mut *s).await?;
        let decision = write.apply(key, current.as_ref().map(|d| d.value.as_str()))?;
        let Some(value) = decision.store else {
            return Ok(decision.written);
        };
        let old = current.map(|d| d.bytes);
        let new = size(&value);
        let after = used.after_write(old.map(count), count(new));
        quota
            .check(&scope.owner, used, after)
            .map_err(StoreError::from)?;
        self.state
            .update_one(
                filter,
                doc! { "$set": {
                    "value": value,
                    "bytes": new,
                    "updated_at": micros(Timestamp::now()),
                } },
            )
            .upsert(true)
            .session(&mut *s)
            .await?;
        let added = i64::from(old.is_none());
        self.usage
            .update_one(
                owner,
                doc! { "$inc": { "keys": added, "bytes": new - old.unwrap_or(0) } },
            )
            .session(&mut *s)
            .await?;
        Ok(decision.written)
    }

    async fn state_delete_in(
        &self,
        s: &mut ClientSession,
        scope: &StateScope,
        key: &str,
    ) -> Result<bool, Failure> {
        let Some(gone) = self
            .state
            .find_one_and_delete(state_filter(scope, key))
            .session(&mut *s)
            .await?
        else {
            return Ok(false);
        };
        self.usage
            .update_one(
                doc! { "_id": &gone.owner },
                doc! { "$inc": { "keys": -1, "bytes": -gone.bytes } },
            )
            .session(&mut *s)
            .await?;
        Ok(true)
    }

    async fn import_state_in(
        &self,
        s: &mut ClientSession,
        entries: &[StateEntry],
    ) -> Result<(), Failure> {
        let now = micros(Timestamp::now());
        let mut usage: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for e in entries {
            let new = size(&e.value);
            let old = self
                .state
                .find_one_and_update(
                    doc! { "owner": &e.owner, "function": &e.function, "key": &e.key },
                    doc! { "$set": { "value": &e.value, "bytes": new, "updated_at": now } },
                )
                .upsert(true)
                .return_document(ReturnDocument::Before)
                .session(&mut *s)
                .await?;
            let delta = usage.entry(&e.owner).or_default();
            delta.0 += i64::from(old.is_none());
            delta.1 += new - old.map_or(0, |d| d.bytes);
        }
        for (owner, (keys, bytes)) in usage {
            self.usage
                .update_one(
                    doc! { "_id": owner },
                    doc! { "$inc": { "keys": keys, "bytes": bytes } },
                )
                .upsert(true)
                .session(&mut *s)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl FunctionStore for MongoStore {
    async fn create_function(&self, record: &FunctionRecord) -> Result<()> {
        match self
            .functions
            .insert_one(FunctionDoc::from_record(record)?)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(StoreError::Conflict(format!(
                "{} already exists",
                label(record.owner(), record.endpoint())
            ))),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn replace_function(
        &self,
        record: &FunctionRecord,
        expected_generation: i64,
    ) -> Result<()> {
        let d = FunctionDoc::from_record(record)?;
        let replaced = self
            .functions
            .update_one(
                doc! { "owner": &d.owner, "endpoint": &d.endpoint, "generation": expected_generation },
                doc! { "$set": {
                    "visibility": &d.visibility,
                    "spec": &d.spec,
                    "status": &d.status,
                    "generation": d.generation,
                    "created_at": d.created_at,
                    "updated_at": d.updated_at,
                } },
            )
            .await
            .map_err(store_error)?;
        if replaced.matched_count == 1 {
            return Ok(());
        }
        let what = label(&d.owner, &d.endpoint);
        if self.get_function(&d.owner, &d.endpoint).await?.is_some() {
            Err(StoreError::Conflict(format!(
                "{what} was changed by someone else meanwhile; read it again and retry"
            )))
        } else {
            Err(StoreError::NotFound(what))
        }
    }

    async fn get_function(&self, owner: &str, endpoint: &str) -> Result<Option<FunctionRecord>> {
        let found = self
            .functions
            .find_one(doc! { "owner": owner, "endpoint": endpoint })
            .await
            .map_err(store_error)?;
        found.map(FunctionDoc::into_record).transpose()
    }

    async fn list_functions(&self, filter: &FunctionFilter) -> Result<Vec<FunctionRecord>> {
        let public = doc! { "visibility": Visibility::Public.as_str() };
        let query = match (&filter.owner, filter.include_public) {
            (Some(owner), true) => doc! { "$or": [{ "owner": owner }, public] },
            (Some(owner), false) => doc! { "owner": owner },
            (None, true) => public,
            (None, false) => doc! {},
        };
        let cursor = self
            .functions
            .find(query)
            .sort(doc! { "owner": 1, "endpoint": 1 })
            .await
            .map_err(store_error)?;
        collect(cursor)
            .await?
            .into_iter()
            .map(FunctionDoc::into_record)
            .collect()
    }

    async fn delete_function(&self, owner: &str, endpoint: &str) -> Result<bool> {
        self.transaction(&(self, owner, endpoint), |s, &(store, owner, endpoint)| {
            Box::pin(store.delete_function_in(s, owner, endpoint))
        })
        .await
    }

    async fn set_function_status(
        &self,
        owner: &str,
        endpoint: &str,
        status: &SkyFunctionStatus,
    ) -> Result<()> {
        let status = serde_json::to_string(status).map_err(backend)?;
        let updated = self
            .functions
            .update_one(
                doc! { "owner": owner, "endpoint": endpoint },
                doc! { "$set": { "status": status } },
            )
            .await
            .map_err(store_error)?;
        if updated.matched_count == 0 {
            return Err(StoreError::NotFound(label(owner, endpoint)));
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for MongoStore {
    async fn state_get(&self, scope: &StateScope, key: &str) -> Result<Option<String>> {
        let found = self
            .state
            .find_one(state_filter(scope, key))
            .await
            .map_err(store_error)?;
        Ok(found.map(|d| d.value))
    }

    async fn state_write(
        &self,
        scope: &StateScope,
        key: &str,
        write: &StateWrite,
        quota: StateQuota,
    ) -> Result<Written> {
        // One writer per owner at a time from this process: they would only conflict in MongoDB
        // (see the module doc), and retries cost more than waiting here.
        let _turn = self.owner_lock(&scope.owner).lock().await;
        let args = (self, scope, key, write, quota);
        self.transaction(&args, |s, &(store, scope, key, write, quota)| {
            Box::pin(store.state_write_in(s, scope, key, write, quota))
        })
        .await
    }

    async fn state_delete(&self, scope: &StateScope, key: &str) -> Result<bool> {
        let _turn = self.owner_lock(&scope.owner).lock().await;
        self.transaction(&(self, scope, key), |s, &(store, scope, key)| {
            Box::pin(store.state_delete_in(s, scope, key))
        })
        .await
    }

    async fn state_keys(
        &self,
        scope: &StateScope,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = doc! { "owner": &scope.owner, "function": &scope.function };
        if !prefix.is_empty() {
            filter.insert("key", doc! { "$regex": prefix_pattern(prefix) });
        }
        let cursor = self
            .state
            .clone_with_type::<Document>()
            .find(filter)
            .projection(doc! { "key": 1, "_id": 0 })
            .sort(doc! { "key": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(store_error)?;
        collect(cursor)
            .await?
            .into_iter()
            .map(|d| d.get_str("key").map(str::to_string).map_err(backend))
            .collect()
    }

    async fn export_state(
        &self,
        after: Option<&StateEntry>,
        limit: usize,
    ) -> Result<Vec<StateEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The entries strictly after the last one seen, in (owner, function, key) order.
        let filter = match after {
            None => doc! {},
            Some(e) => doc! { "$or": [
                { "owner": { "$gt": &e.owner } },
                { "owner": &e.owner, "function": { "$gt": &e.function } },
                { "owner": &e.owner, "function": &e.function, "key": { "$gt": &e.key } },
            ] },
        };
        let cursor = self
            .state
            .find(filter)
            .sort(doc! { "owner": 1, "function": 1, "key": 1 })
            .limit(limit_of(limit))
            .await
            .map_err(store_error)?;
        Ok(collect(cursor)
            .await?
            .into_iter()
            .map(|d| StateEntry {
                owner: d.owner,
                function: d.function,
                key: d.key,
                value: d.value,
            })
            .collect())
    }

    async fn import_state(&self, entries: &[StateEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.transaction(&(self, entries), |s, &(store, entries)| {
            Box::pin(store.import_state_in(s, entries))
        })
        .await
    }
}

#[async_trait]
impl InvocationStore for MongoStore {
    async fn record_invocations(
        &self,
        batch: &[Invocation],
        retain_per_function: usize,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Sequence numbers from one counter order calls the same way for every gateway.
        let n = limit_of(batch.len());
        let counter = self
            .counters
            .find_one_and_update(doc! { "_id": "invocations" }, doc! { "$inc": { "seq": n } })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
            .map_err(store_error)?
            .ok_or_else(|| StoreError::Backend("the invocation counter vanished".into()))?;
        let last = counter.get_i64("seq").map_err(backend)?;
        let docs = batch
            .iter()
            .zip(last - n + 1..)
            .map(|(i, seq)| InvocationDoc {
                owner: i.owner.clone(),
                endpoint: i.endpoint.clone(),
                seq,
                request_id: i.request_id.clone(),
                started_at: micros(i.started_at),
                duration_ms: i.duration_ms,
                status: i32::from(i.status),
                outcome: i.outcome.clone(),
                error: i.error.clone(),
                logs: i.logs.clone(),
                cold_start: i.cold_start,
            });
        self.invocations
            .insert_many(docs)
            .await
            .map_err(store_error)?;
        self.catalog.count_calls(batch).await?;

        let mut functions: Vec<(&str, &str)> = batch
            .iter()
            .map(|i| (i.owner.as_str(), i.endpoint.as_str()))
            .collect();
        functions.sort_unstable();
        functions.dedup();
        let keep = u64::try_from(retain_per_function).unwrap_or(u64::MAX);
        for (owner, endpoint) in functions {
            let function = doc! { "owner": owner, "endpoint": endpoint };
            // The newest record past the ones kept: it and everything older go.
            let oldest_gone = self
                .invocations
                .clone_with_type::<Document>()
                .find_one(function.clone())
                .sort(doc! { "seq": -1 })
                .skip(keep)
                .projection(doc! { "seq": 1 })
                .await
                .map_err(store_error)?;
            if let Some(d) = oldest_gone {
                let seq = d.get_i64("seq").map_err(backend)?;
                let mut older = function;
                older.insert("seq", doc! { "$lte": seq });
                self.invocations
                    .delete_many(older)
                    .await
                    .map_err(store_error)?;
            }
        }
        Ok(())
    }

    async fn recent_invocations(
        &self,
        owner: &str,
        endpoint: &str,
        limit: usize,
    ) -> Result<Vec<Invocation>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let cursor = self
            .invocations
            .find(doc! { "owner": owner, "endpoint": endpoint })
            .sort(doc! { "seq": -1 })
            .limit(limit_of(limit))
            .await
            .map_err(store_error)?;
        collect(cursor)
            .await?
            .into_iter()
            .map(InvocationDoc::into_invocation)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_literally() {
        assert_eq!(prefix_pattern("a.b*"), r"^a\.b\*");
        assert_eq!(prefix_pattern("ключ/🎉"), r"^ключ\/🎉");
        assert_eq!(prefix_pattern("a b_c%"), r"^a\ b\_c\%");
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(2)) <= Duration::from_millis(2));
        }
    }
}
