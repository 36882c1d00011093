//! Users and credentials in MongoDB. A credential's id is its `_id`; `hash` has a unique index
//! (what `authenticate` looks up), listings use (owner, kind, created_at).
//!
//! Older Skythons kept one `token_hash` in each `users` document, with a unique index on it.
//! [`MongoStore::connect`] migrates: it drops that index (users without the field would collide
//! on it), then turns each `token_hash` into the user's token `default` and removes the field.
//! Each step can be repeated, so two gateways starting at once, or one stopped half way, leave
//! the same result.

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff::Timestamp;
use mongodb::ClientSession;
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};

use super::{
    Failure, MongoStore, backend, collect, count, from_micros, index, is_duplicate_key, micros,
    store_error,
};
use crate::accounts::check_owner;
use crate::{
    Credential, CredentialKind, KeyUsage, KeyUsageDelta, Result, StoreError, User, UserRecord,
    UserStore, legacy_token_id,
};

/// The index of older Skythons on `users.token_hash`.
const LEGACY_TOKEN_INDEX: &str = "token_hash";

/// MongoDB's "index not found" (another gateway dropped it first).
const INDEX_NOT_FOUND: i32 = 27;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct UserDoc {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_hash: Option<String>,
    is_admin: bool,
    created_at: i64,
}

/// Absent optional fields are left out (not null): `$max` then sets a first `last_used_at`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CredentialDoc {
    #[serde(rename = "_id")]
    id: String,
    kind: CredentialKind,
    owner: String,
    name: String,
    hash: String,
    prefix: String,
    #[serde(default)]
    functions: Vec<String>,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_at: Option<i64>,
    #[serde(default)]
    calls: i64,
    #[serde(default)]
    errors: i64,
    #[serde(default)]
    duration_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_used_at: Option<i64>,
}

/// A `users` document as older Skythons wrote it.
#[derive(Debug, Deserialize)]
struct LegacyUserDoc {
    name: String,
    token_hash: String,
    created_at: i64,
}

/// A count as MongoDB keeps it (at most `i64::MAX`).
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl UserDoc {
    fn new(user: &User, password_hash: Option<&str>) -> UserDoc {
        UserDoc {
            name: user.name.clone(),
            password_hash: password_hash.map(str::to_string),
            is_admin: user.is_admin,
            created_at: micros(user.created_at),
        }
    }

    fn into_user(self) -> Result<User> {
        Ok(User {
            name: self.name,
            is_admin: self.is_admin,
            created_at: from_micros(self.created_at)?,
        })
    }
}

impl CredentialDoc {
    fn new(k: &Credential) -> CredentialDoc {
        CredentialDoc {
            id: k.id.clone(),
            kind: k.kind,
            owner: k.owner.clone(),
            name: k.name.clone(),
            hash: k.hash.clone(),
            prefix: k.prefix.clone(),
            functions: k.functions.clone(),
            created_at: micros(k.created_at),
            expires_at: k.expires_at.map(micros),
            revoked_at: k.revoked_at.map(micros),
            calls: signed(k.usage.calls),
            errors: signed(k.usage.errors),
            duration_ms: k.usage.duration_ms,
            last_used_at: k.usage.last_used_at.map(micros),
        }
    }

    fn into_credential(self) -> Result<Credential> {
        let time = |t: Option<i64>| t.map(from_micros).transpose();
        Ok(Credential {
            id: self.id,
            kind: self.kind,
            owner: self.owner,
            name: self.name,
            hash: self.hash,
            prefix: self.prefix,
            functions: self.functions,
            created_at: from_micros(self.created_at)?,
            expires_at: time(self.expires_at)?,
            revoked_at: time(self.revoked_at)?,
            usage: KeyUsage {
                calls: count(self.calls),
                errors: count(self.errors),
                duration_ms: self.duration_ms,
                last_used_at: time(self.last_used_at)?,
            },
        })
    }
}

fn credential_exists(id: &str) -> StoreError {
    StoreError::Conflict(format!(
        "credential {id} cannot be added: its id or its secret is already in use"
    ))
}

impl MongoStore {
    pub(super) async fn create_account_indexes(&self) -> Result<()> {
        self.users
            .create_index(index(doc! { "name": 1 }, "name", true))
            .await
            .map_err(store_error)?;
        self.credentials
            .create_indexes([
                index(doc! { "hash": 1 }, "hash", true),
                index(
                    doc! { "owner": 1, "kind": 1, "created_at": -1 },
                    "owner_kind_created_at",
                    false,
                ),
            ])
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Moves each `token_hash` of an older Skython's `users` into `credentials` (see the module
    /// doc).
    pub(super) async fn migrate_legacy_tokens(&self) -> Result<()> {
        let indexes = self.users.list_index_names().await.map_err(store_error)?;
        if indexes.iter().any(|n| n == LEGACY_TOKEN_INDEX) {
            match self.users.drop_index(LEGACY_TOKEN_INDEX).await {
                Err(e)
                    if !matches!(e.kind.as_ref(),
                    mongodb::error::ErrorKind::Command(c) if c.code == INDEX_NOT_FOUND) =>
                {
                    return Err(store_error(e));
                }
                _ => {}
            }
        }
        let cursor = self
            .users
            .clone_with_type::<LegacyUserDoc>()
            .find(doc! { "token_hash": { "$exists": true } })
            .await
            .map_err(store_error)?;
        for legacy in collect(cursor).await? {
            let token = Credential {
                id: legacy_token_id(&legacy.name),
                kind: CredentialKind::Token,
                owner: legacy.name.clone(),
                name: "default".into(),
                hash: legacy.token_hash,
                prefix: String::new(),
                functions: Vec::new(),
                created_at: from_micros(legacy.created_at)?,
                expires_at: None,
                revoked_at: None,
                usage: KeyUsage::default(),
            };
            let mut fields =
                mongodb::bson::to_document(&CredentialDoc::new(&token)).map_err(backend)?;
            fields.remove("_id");
            let moved = self
                .credentials
                .update_one(doc! { "_id": &token.id }, doc! { "$setOnInsert": fields })
                .upsert(true)
                .await;
            match moved {
                // A duplicate: another gateway moved it at the same moment.
                Err(e) if !is_duplicate_key(&e) => return Err(store_error(e)),
                _ => {}
            }
            self.users
                .update_one(
                    doc! { "name": &legacy.name },
                    doc! { "$unset": { "token_hash": "" } },
                )
                .await
                .map_err(store_error)?;
            tracing::info!(user = %legacy.name, "moved the user's token into credentials");
        }
        Ok(())
    }

    /// Inserts credentials one by one, so that a conflict names the one that has it.
    async fn insert_credentials_in(
        &self,
        s: &mut ClientSession,
        credentials: &[Credential],
    ) -> Result<(), Failure> {
        for k in credentials {
            match self
                .credentials
                .insert_one(CredentialDoc::new(k))
                .session(&mut *s)
                .await
            {
                Ok(_) => {}
                Err(e) if is_duplicate_key(&e) => return Err(credential_exists(&k.id).into()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn create_user_in(
        &self,
        s: &mut ClientSession,
        user: &UserDoc,
        credentials: &[Credential],
    ) -> Result<(), Failure> {
        match self.users.insert_one(user).session(&mut *s).await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                return Err(
                    StoreError::Conflict(format!("user {} already exists", user.name)).into(),
                );
            }
            Err(e) => return Err(e.into()),
        }
        self.insert_credentials_in(s, credentials).await
    }

    async fn import_user_in(
        &self,
        s: &mut ClientSession,
        user: &UserDoc,
        credentials: &[Credential],
    ) -> Result<(), Failure> {
        self.users
            .replace_one(doc! { "name": &user.name }, user)
            .upsert(true)
            .session(&mut *s)
            .await?;
        self.credentials
            .delete_many(doc! { "owner": &user.name })
            .session(&mut *s)
            .await?;
        self.insert_credentials_in(s, credentials)
            .await
            .map_err(|e| match e {
                Failure::Store(StoreError::Conflict(_)) => StoreError::Conflict(format!(
                    "cannot import user {}: another user holds one of its credentials' ids or \
                     secrets",
                    user.name
                ))
                .into(),
                e => e,
            })
    }
}

#[async_trait]
impl UserStore for MongoStore {
    async fn create_user(
        &self,
        user: &User,
        password_hash: Option<&str>,
        credentials: &[Credential],
    ) -> Result<()> {
        check_owner(&user.name, credentials)?;
        let doc = UserDoc::new(user, password_hash);
        self.transaction(&(self, &doc, credentials), |s, &(store, doc, creds)| {
            Box::pin(store.create_user_in(s, doc, creds))
        })
        .await
    }

    async fn get_user(&self, name: &str) -> Result<Option<User>> {
        let found = self
            .users
            .find_one(doc! { "name": name })
            .await
            .map_err(store_error)?;
        found.map(UserDoc::into_user).transpose()
    }

    async fn password_hash(&self, name: &str) -> Result<Option<String>> {
        let found = self
            .users
            .find_one(doc! { "name": name })
            .await
            .map_err(store_error)?;
        Ok(found.and_then(|u| u.password_hash))
    }

    async fn set_password_hash(&self, name: &str, phc: &str) -> Result<()> {
        let updated = self
            .users
            .update_one(
                doc! { "name": name },
                doc! { "$set": { "password_hash": phc } },
            )
            .await
            .map_err(store_error)?;
        if updated.matched_count == 0 {
            return Err(StoreError::NotFound(format!("user {name}")));
        }
        Ok(())
    }

    async fn add_credential(&self, credential: &Credential) -> Result<()> {
        if self.get_user(&credential.owner).await?.is_none() {
            return Err(StoreError::NotFound(format!("user {}", credential.owner)));
        }
        match self
            .credentials
            .insert_one(CredentialDoc::new(credential))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Err(credential_exists(&credential.id)),
            Err(e) => Err(store_error(e)),
        }
    }

    async fn authenticate(&self, hash: &str, now: Timestamp) -> Result<Option<(Credential, User)>> {
        let Some(found) = self
            .credentials
            .find_one(doc! { "hash": hash })
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let credential = found.into_credential()?;
        // A dead credential costs no second round trip.
        if !credential.is_live(now) {
            return Ok(None);
        }
        Ok(self
            .get_user(&credential.owner)
            .await?
            .map(|user| (credential, user)))
    }

    async fn list_credentials(&self, owner: &str, kind: CredentialKind) -> Result<Vec<Credential>> {
        let cursor = self
            .credentials
            .find(doc! { "owner": owner, "kind": kind.as_str() })
            .sort(doc! { "created_at": -1, "_id": -1 })
            .await
            .map_err(store_error)?;
        collect(cursor)
            .await?
            .into_iter()
            .map(CredentialDoc::into_credential)
            .collect()
    }

    async fn get_credential(&self, owner: &str, id: &str) -> Result<Option<Credential>> {
        let found = self
            .credentials
            .find_one(doc! { "_id": id, "owner": owner })
            .await
            .map_err(store_error)?;
        found.map(CredentialDoc::into_credential).transpose()
    }

    async fn revoke_credential(&self, owner: &str, id: &str, at: Timestamp) -> Result<bool> {
        let this = doc! { "_id": id, "owner": owner };
        let mut live = this.clone();
        live.insert("revoked_at", doc! { "$exists": false });
        let revoked = self
            .credentials
            .update_one(live, doc! { "$set": { "revoked_at": micros(at) } })
            .await
            .map_err(store_error)?;
        if revoked.matched_count > 0 {
            return Ok(true);
        }
        // Revoked before (its first time stays), or not there at all.
        let exists = self
            .credentials
            .count_documents(this)
            .await
            .map_err(store_error)?;
        Ok(exists > 0)
    }

    async fn prune_sessions(&self, before: Timestamp) -> Result<u64> {
        let deleted = self
            .credentials
            .delete_many(doc! {
                "kind": CredentialKind::Session.as_str(),
                "expires_at": { "$lt": micros(before) },
            })
            .await
            .map_err(store_error)?;
        Ok(deleted.deleted_count)
    }

    async fn record_key_usage(&self, deltas: &[KeyUsageDelta]) -> Result<()> {
        // One atomic update per key: batches are a few keys (those used since the last report).
        for d in deltas {
            self.credentials
                .update_one(
                    doc! { "_id": &d.id, "kind": CredentialKind::Key.as_str() },
                    doc! {
                        "$inc": {
                            "calls": signed(d.calls),
                            "errors": signed(d.errors),
                            "duration_ms": d.duration_ms,
                        },
                        "$max": { "last_used_at": micros(d.last_used_at) },
                    },
                )
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }

    async fn export_users(&self) -> Result<Vec<UserRecord>> {
        let cursor = self
            .credentials
            .find(doc! {})
            .sort(doc! { "owner": 1, "created_at": 1, "_id": 1 })
            .await
            .map_err(store_error)?;
        let mut credentials: BTreeMap<String, Vec<Credential>> = BTreeMap::new();
        for d in collect(cursor).await? {
            let k = d.into_credential()?;
            credentials.entry(k.owner.clone()).or_default().push(k);
        }
        let cursor = self
            .users
            .find(doc! {})
            .sort(doc! { "name": 1 })
            .await
            .map_err(store_error)?;
        collect(cursor)
            .await?
            .into_iter()
            .map(|mut d| {
                let password_hash = d.password_hash.take();
                let user = d.into_user()?;
                Ok(UserRecord {
                    credentials: credentials.remove(&user.name).unwrap_or_default(),
                    user,
                    password_hash,
                })
            })
            .collect()
    }

    async fn import_user(&self, record: &UserRecord) -> Result<()> {
        check_owner(&record.user.name, &record.credentials)?;
        let doc = UserDoc::new(&record.user, record.password_hash.as_deref());
        let creds = record.credentials.as_slice();
        self.transaction(&(self, &doc, creds), |s, &(store, doc, creds)| {
            Box::pin(store.import_user_in(s, doc, creds))
        })
        .await
    }
}
