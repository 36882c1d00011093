//! Users and credentials in SQLite: `users` (with the password's PHC string) and `credentials`,
//! UNIQUE on `hash` (what `authenticate` looks up) and indexed by (owner, kind, created_at) for
//! listings. Functions of a key are a JSON array. There is no foreign key from credentials to
//! users: the writer thread checks the owner in the same step, as MongoDB has to.

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{SqliteStore, backend, count, from_micros, is_unique_violation, json_col, micros};
use crate::accounts::check_owner;
use crate::{
    Credential, CredentialKind, KeyUsage, KeyUsageDelta, Result, StoreError, User, UserRecord,
    UserStore,
};

const CREDENTIAL_COLUMNS: &str = "id, kind, owner, name, hash, prefix, functions, created_at, \
     expires_at, revoked_at, calls, errors, duration_ms, last_used_at";

/// How many columns [`credential_row`] reads.
const CREDENTIAL_WIDTH: usize = 14;

/// A credential by its hash, with its user (the columns of [`CREDENTIAL_COLUMNS`], then a user's).
const AUTHENTICATE: &str = "SELECT c.id, c.kind, c.owner, c.name, c.hash, c.prefix, c.functions,
     c.created_at, c.expires_at, c.revoked_at, c.calls, c.errors, c.duration_ms, c.last_used_at,
     u.name, u.is_admin, u.created_at
     FROM credentials AS c JOIN users AS u ON u.name = c.owner WHERE c.hash = ?1";

fn user_row(r: &Row<'_>, at: usize) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(at)?,
        is_admin: r.get(at + 1)?,
        created_at: from_micros(r.get(at + 2)?)?,
    })
}

fn optional_time(us: Option<i64>) -> rusqlite::Result<Option<Timestamp>> {
    us.map(from_micros).transpose()
}

/// A credential from the columns [`CREDENTIAL_COLUMNS`] names, in that order.
fn credential_row(r: &Row<'_>) -> rusqlite::Result<Credential> {
    let kind: String = r.get(1)?;
    let kind = CredentialKind::parse(&kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            Type::Text,
            format!("unknown credential kind {kind:?}").into(),
        )
    })?;
    Ok(Credential {
        id: r.get(0)?,
        kind,
        owner: r.get(2)?,
        name: r.get(3)?,
        hash: r.get(4)?,
        prefix: r.get(5)?,
        functions: json_col(6, r.get(6)?)?,
        created_at: from_micros(r.get(7)?)?,
        expires_at: optional_time(r.get(8)?)?,
        revoked_at: optional_time(r.get(9)?)?,
        usage: KeyUsage {
            calls: count(r.get(10)?),
            errors: count(r.get(11)?),
            duration_ms: r.get(12)?,
            last_used_at: optional_time(r.get(13)?)?,
        },
    })
}

/// A count as SQLite keeps it (at most `i64::MAX`).
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn insert_credential(c: &Connection, k: &Credential) -> Result<()> {
    let functions = serde_json::to_string(&k.functions).map_err(backend)?;
    let inserted = c
        .prepare_cached(&format!(
            "INSERT INTO credentials ({CREDENTIAL_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ))
        .and_then(|mut st| {
            st.execute(params![
                k.id,
                k.kind.as_str(),
                k.owner,
                k.name,
                k.hash,
                k.prefix,
                functions,
                micros(k.created_at),
                k.expires_at.map(micros),
                k.revoked_at.map(micros),
                signed(k.usage.calls),
                signed(k.usage.errors),
                k.usage.duration_ms,
                k.usage.last_used_at.map(micros),
            ])
        });
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(credential_exists(k)),
        Err(e) => Err(backend(e)),
    }
}

fn credential_exists(k: &Credential) -> StoreError {
    StoreError::Conflict(format!(
        "credential {} cannot be added: its id or its secret is already in use",
        k.id
    ))
}

fn user_exists(c: &Connection, name: &str) -> Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )
    .map_err(backend)
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(
        &self,
        user: &User,
        password_hash: Option<&str>,
        credentials: &[Credential],
    ) -> Result<()> {
        check_owner(&user.name, credentials)?;
        let (user, phc, credentials) = (
            user.clone(),
            password_hash.map(str::to_string),
            credentials.to_vec(),
        );
        self.write(move |c| {
            // Dropped without a commit on any error: nothing is kept.
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let inserted = tx.execute(
                "INSERT INTO users (name, password_hash, is_admin, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![user.name, phc, user.is_admin, micros(user.created_at)],
            );
            match inserted {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::Conflict(format!(
                        "user {} already exists",
                        user.name
                    )));
                }
                Err(e) => return Err(backend(e)),
            }
            for k in &credentials {
                insert_credential(&tx, k)?;
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn get_user(&self, name: &str) -> Result<Option<User>> {
        let name = name.to_string();
        self.lookup(move |c| {
            c.query_row(
                "SELECT name, is_admin, created_at FROM users WHERE name = ?1",
                [name],
                |r| user_row(r, 0),
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn password_hash(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_string();
        self.lookup(move |c| {
            c.query_row(
                "SELECT password_hash FROM users WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(backend)
        })
        .await
    }

    async fn set_password_hash(&self, name: &str, phc: &str) -> Result<()> {
        let (name, phc) = (name.to_string(), phc.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE users SET password_hash = ?2 WHERE name = ?1",
                    params![name, phc],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("user {name}")));
            }
            Ok(())
        })
        .await
    }

    async fn add_credential(&self, credential: &Credential) -> Result<()> {
        let k = credential.clone();
        self.write(move |c| {
            // The writer runs one job at a time: the owner cannot vanish in between.
            if !user_exists(c, &k.owner)? {
                return Err(StoreError::NotFound(format!("user {}", k.owner)));
            }
            insert_credential(c, &k)
        })
        .await
    }

    async fn authenticate(&self, hash: &str, now: Timestamp) -> Result<Option<(Credential, User)>> {
        let hash = hash.to_string();
        let found = self
            .lookup(move |c| {
                // Every call with a key comes here: a cached statement skips the parser.
                c.prepare_cached(AUTHENTICATE)
                    .and_then(|mut st| {
                        st.query_row([hash], |r| {
                            Ok((credential_row(r)?, user_row(r, CREDENTIAL_WIDTH)?))
                        })
                        .optional()
                    })
                    .map_err(backend)
            })
            .await?;
        Ok(found.filter(|(k, _)| k.is_live(now)))
    }

    async fn list_credentials(&self, owner: &str, kind: CredentialKind) -> Result<Vec<Credential>> {
        let owner = owner.to_string();
        self.scan(move |c| {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE owner = ?1 AND kind = ?2
                     ORDER BY created_at DESC, id DESC"
                ))
                .map_err(backend)?;
            st.query_map(params![owner, kind.as_str()], credential_row)
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)
        })
        .await
    }

    async fn get_credential(&self, owner: &str, id: &str) -> Result<Option<Credential>> {
        let (owner, id) = (owner.to_string(), id.to_string());
        self.lookup(move |c| {
            c.query_row(
                &format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1 AND owner = ?2"
                ),
                params![id, owner],
                credential_row,
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn revoke_credential(&self, owner: &str, id: &str, at: Timestamp) -> Result<bool> {
        let (owner, id) = (owner.to_string(), id.to_string());
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE credentials SET revoked_at = coalesce(revoked_at, ?3)
                     WHERE id = ?1 AND owner = ?2",
                    params![id, owner, micros(at)],
                )
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn prune_sessions(&self, before: Timestamp) -> Result<u64> {
        self.write(move |c| {
            let n = c
                .execute(
                    "DELETE FROM credentials WHERE kind = 'session' AND expires_at < ?1",
                    [micros(before)],
                )
                .map_err(backend)?;
            Ok(n as u64)
        })
        .await
    }

    async fn record_key_usage(&self, deltas: &[KeyUsageDelta]) -> Result<()> {
        if deltas.is_empty() {
            return Ok(());
        }
        let deltas = deltas.to_vec();
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            {
                let mut st = tx
                    .prepare_cached(
                        "UPDATE credentials SET calls = calls + ?2, errors = errors + ?3,
                         duration_ms = duration_ms + ?4,
                         last_used_at = max(coalesce(last_used_at, ?5), ?5)
                         WHERE id = ?1 AND kind = 'key'",
                    )
                    .map_err(backend)?;
                for d in &deltas {
                    st.execute(params![
                        d.id,
                        signed(d.calls),
                        signed(d.errors),
                        d.duration_ms,
                        micros(d.last_used_at)
                    ])
                    .map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn export_users(&self) -> Result<Vec<UserRecord>> {
        self.scan(|c| {
            let mut credentials: BTreeMap<String, Vec<Credential>> = BTreeMap::new();
            let mut st = c
                .prepare(&format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY owner, created_at, id"
                ))
                .map_err(backend)?;
            for k in st.query_map([], credential_row).map_err(backend)? {
                let k = k.map_err(backend)?;
                credentials.entry(k.owner.clone()).or_default().push(k);
            }
            let mut st = c
                .prepare(
                    "SELECT name, is_admin, created_at, password_hash FROM users ORDER BY name",
                )
                .map_err(backend)?;
            st.query_map([], |r| {
                let user = user_row(r, 0)?;
                Ok(UserRecord {
                    credentials: credentials.remove(&user.name).unwrap_or_default(),
                    user,
                    password_hash: r.get(3)?,
                })
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)
        })
        .await
    }

    async fn import_user(&self, record: &UserRecord) -> Result<()> {
        check_owner(&record.user.name, &record.credentials)?;
        let r = record.clone();
        self.write(move |c| {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            tx.execute(
                "INSERT INTO users (name, password_hash, is_admin, created_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash,
                 is_admin = excluded.is_admin, created_at = excluded.created_at",
                params![
                    r.user.name,
                    r.password_hash,
                    r.user.is_admin,
                    micros(r.user.created_at)
                ],
            )
            .map_err(backend)?;
            tx.execute("DELETE FROM credentials WHERE owner = ?1", [&r.user.name])
                .map_err(backend)?;
            for k in &r.credentials {
                insert_credential(&tx, k).map_err(|e| match e {
                    StoreError::Conflict(_) => StoreError::Conflict(format!(
                        "cannot import user {}: another user holds credential {} or its secret",
                        r.user.name, k.id
                    )),
                    e => e,
                })?;
            }
            tx.commit().map_err(backend)
        })
        .await
    }
}
