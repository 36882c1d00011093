//! One conformance suite for every [`Store`] backend: `conformance_suite!(make_store)` in a test
//! file expands to one `#[tokio::test]` per behaviour below, each with a fresh, empty store.
//! Backend-specific behaviour (files, schemas, connections) is tested beside each backend.

#![allow(dead_code)]

pub mod catalog;

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::json;
use skython_crds::{SkyFunctionSpec, SkyFunctionStatus, Visibility};
use skython_store::{
    Credential, CredentialKind, FunctionFilter, FunctionRecord, Invocation, KeyUsage,
    KeyUsageDelta, QuotaExceeded, QuotaKind, Result, StateEntry, StateQuota, StateScope,
    StateWrite, Store, StoreError, User, UserRecord, Written,
};

/// Expands to one test per behaviour; `$new` is an async expression giving an `Arc<dyn Store>`
/// that no other test uses.
#[macro_export]
macro_rules! conformance_suite {
    ($new:expr) => {
        $crate::conformance_suite!(@tests $new;
            a_user_created_with_a_token_authenticates_with_it,
            a_taken_name_is_a_conflict_and_nothing_is_kept,
            a_secret_in_use_is_a_conflict,
            a_credential_needs_its_owner,
            a_revoked_credential_no_longer_authenticates,
            an_expired_session_does_not_authenticate,
            credentials_list_by_kind_newest_first,
            another_owners_credential_is_not_found,
            key_usage_adds_up_over_batches,
            pruning_removes_only_expired_sessions,
            password_hashes_are_set_and_read,
            users_export_and_import_with_their_credentials,
            functions_round_trip_with_optimistic_concurrency,
            timestamps_keep_microseconds,
            listing_filters_by_owner_and_visibility,
            state_is_isolated_and_prefixes_are_literal,
            delete_removes_only_that_functions_state_and_invocations,
            invocations_keep_the_newest,
            concurrent_writes_all_land,
            a_key_past_the_owners_quota_is_refused_and_nothing_is_lost,
            values_past_the_owners_byte_quota_are_refused_and_the_old_value_stays,
            replacing_a_value_counts_only_the_difference,
            another_owner_is_unaffected_by_a_full_quota,
            deleting_a_function_gives_its_state_back_to_the_quota,
            incr_counts_from_the_default,
            incr_of_a_string_is_refused_and_keeps_it,
            set_if_writes_only_over_the_expected_value,
            state_exports_in_pages_and_imports_without_quota,
            unicode_keys_and_values_round_trip,
        );
        $crate::catalog_suite!($new);
        $crate::conformance_suite!(@races $new;
            concurrent_writers_cannot_pass_the_quota_together,
            concurrent_increments_all_count,
            a_set_if_race_has_exactly_one_winner_per_round,
        );
    };
    (@tests $new:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: std::sync::Arc<dyn skython_store::Store> = $new.await;
                conformance::$name(store).await;
            }
        )*
    };
    // Races between two handles; here both are the one store (a backend's own tests also run
    // them on two handles of one database, as two gateways have).
    (@races $new:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: std::sync::Arc<dyn skython_store::Store> = $new.await;
                conformance::$name([store.clone(), store]).await;
            }
        )*
    };
}

fn now() -> Timestamp {
    // Backends keep microseconds: compare with what a read gives back.
    Timestamp::from_microsecond(Timestamp::now().as_microsecond()).unwrap()
}

fn record(owner: &str, endpoint: &str) -> FunctionRecord {
    record_at(owner, endpoint, now())
}

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

fn invocation(owner: &str, endpoint: &str, id: usize) -> Invocation {
    Invocation {
        request_id: format!("r{id}"),
        owner: owner.into(),
        endpoint: endpoint.into(),
        started_at: now(),
        duration_ms: 1.5,
        status: 200,
        outcome: "ok".into(),
        error: None,
        logs: format!("log {id}\n"),
        cold_start: id == 0,
    }
}

fn incr(by: i64) -> StateWrite {
    StateWrite::Incr {
        by: by.into(),
        default: 0.into(),
    }
}

const SMALL: StateQuota = StateQuota {
    max_keys: 3,
    max_bytes: 10,
};

fn quota_error(r: Result<()>) -> QuotaExceeded {
    match r {
        Err(StoreError::QuotaExceeded(q)) => q,
        other => panic!("expected a quota error, got {other:?}"),
    }
}

fn user(name: &str) -> User {
    User {
        name: name.into(),
        is_admin: false,
        created_at: now(),
    }
}

/// `now` moved by `seconds` (earlier if negative).
fn later(seconds: i64) -> Timestamp {
    now() + jiff::SignedDuration::from_secs(seconds)
}

fn credential(kind: CredentialKind, owner: &str, id: &str, hash: &str) -> Credential {
    Credential {
        id: id.into(),
        kind,
        owner: owner.into(),
        name: if kind == CredentialKind::Session {
            String::new()
        } else {
            format!("{id} of {owner}")
        },
        hash: hash.into(),
        prefix: "sky_1234".into(),
        functions: if kind == CredentialKind::Key {
            vec![format!("{owner}/*"), "bob/weather".into()]
        } else {
            Vec::new()
        },
        created_at: now(),
        expires_at: (kind == CredentialKind::Session).then(|| later(3600)),
        revoked_at: None,
        usage: KeyUsage::default(),
    }
}

fn token(owner: &str, id: &str, hash: &str) -> Credential {
    credential(CredentialKind::Token, owner, id, hash)
}

/// A user with one token (id `tok_<name>`, hash `h_<name>`).
async fn user_with_token(s: &dyn Store, name: &str) -> (User, Credential) {
    let (u, t) = (
        user(name),
        token(name, &format!("tok_{name}"), &format!("h_{name}")),
    );
    s.create_user(&u, None, std::slice::from_ref(&t))
        .await
        .unwrap();
    (u, t)
}

pub async fn a_user_created_with_a_token_authenticates_with_it(s: Arc<dyn Store>) {
    let mut admin = user("root");
    admin.is_admin = true;
    let t = token("root", "tok_1", "h1");
    s.create_user(&admin, None, std::slice::from_ref(&t))
        .await
        .unwrap();
    assert_eq!(s.get_user("root").await.unwrap(), Some(admin.clone()));
    assert_eq!(s.authenticate("h1", now()).await.unwrap(), Some((t, admin)));
    assert_eq!(s.authenticate("h2", now()).await.unwrap(), None);
    assert!(s.get_user("nobody").await.unwrap().is_none());
}

pub async fn a_taken_name_is_a_conflict_and_nothing_is_kept(s: Arc<dyn Store>) {
    let (alice, _) = user_with_token(&*s, "alice").await;
    let mut again = user("alice");
    again.is_admin = true;
    let fresh = token("alice", "tok_new", "h_new");
    assert!(matches!(
        s.create_user(&again, Some("$argon2id$x"), std::slice::from_ref(&fresh)).await,
        Err(StoreError::Conflict(m)) if m == "user alice already exists"
    ));
    assert_eq!(s.get_user("alice").await.unwrap(), Some(alice));
    assert_eq!(s.authenticate("h_new", now()).await.unwrap(), None);
    assert_eq!(s.password_hash("alice").await.unwrap(), None);
}

pub async fn a_secret_in_use_is_a_conflict(s: Arc<dyn Store>) {
    user_with_token(&*s, "alice").await;
    // A new user whose second credential repeats alice's hash: the user is not kept either.
    let creds = [
        token("bob", "tok_b1", "h_b1"),
        token("bob", "tok_b2", "h_alice"),
    ];
    assert!(matches!(
        s.create_user(&user("bob"), None, &creds).await,
        Err(StoreError::Conflict(m)) if m.contains("tok_b2")
    ));
    assert!(s.get_user("bob").await.unwrap().is_none());
    assert_eq!(s.authenticate("h_b1", now()).await.unwrap(), None);
    // The same for a credential added later, and for a reused id.
    assert!(matches!(
        s.add_credential(&token("alice", "tok_a2", "h_alice")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.add_credential(&token("alice", "tok_alice", "h_other"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.list_credentials("alice", CredentialKind::Token)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn a_credential_needs_its_owner(s: Arc<dyn Store>) {
    assert!(matches!(
        s.add_credential(&token("nobody", "tok_1", "h1")).await,
        Err(StoreError::NotFound(m)) if m == "user nobody"
    ));
    assert_eq!(s.authenticate("h1", now()).await.unwrap(), None);
    assert!(matches!(
        s.create_user(&user("alice"), None, &[token("bob", "tok_1", "h1")]).await,
        Err(StoreError::Invalid(m)) if m.contains("bob")
    ));
    assert!(s.get_user("alice").await.unwrap().is_none());
}

pub async fn a_revoked_credential_no_longer_authenticates(s: Arc<dyn Store>) {
    user_with_token(&*s, "alice").await;
    let key = credential(CredentialKind::Key, "alice", "key_1", "hk");
    s.add_credential(&key).await.unwrap();
    assert!(s.authenticate("hk", now()).await.unwrap().is_some());
    let first = later(-10);
    assert!(s.revoke_credential("alice", "key_1", first).await.unwrap());
    assert_eq!(s.authenticate("hk", now()).await.unwrap(), None);
    // Revoking again keeps the first time.
    assert!(s.revoke_credential("alice", "key_1", now()).await.unwrap());
    let revoked = s.get_credential("alice", "key_1").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(first));
    // Other credentials are untouched; another owner's or a missing one is not revoked.
    assert!(s.authenticate("h_alice", now()).await.unwrap().is_some());
    assert!(
        !s.revoke_credential("bob", "tok_alice", now())
            .await
            .unwrap()
    );
    assert!(
        !s.revoke_credential("alice", "key_nope", now())
            .await
            .unwrap()
    );
    assert!(s.authenticate("h_alice", now()).await.unwrap().is_some());
}

pub async fn an_expired_session_does_not_authenticate(s: Arc<dyn Store>) {
    user_with_token(&*s, "alice").await;
    let mut session = credential(CredentialKind::Session, "alice", "ses_1", "hs");
    session.expires_at = Some(later(60));
    s.add_credential(&session).await.unwrap();
    assert_eq!(
        s.authenticate("hs", now()).await.unwrap().map(|(k, _)| k),
        Some(session)
    );
    assert_eq!(s.authenticate("hs", later(61)).await.unwrap(), None);
}

pub async fn credentials_list_by_kind_newest_first(s: Arc<dyn Store>) {
    let (_, first) = user_with_token(&*s, "alice").await;
    user_with_token(&*s, "bob").await;
    let mut older = token("alice", "tok_old", "h_old");
    older.created_at = later(-100);
    let mut newer = token("alice", "tok_new", "h_new");
    newer.created_at = later(100);
    for k in [&older, &newer] {
        s.add_credential(k).await.unwrap();
    }
    s.revoke_credential("alice", "tok_new", now())
        .await
        .unwrap();
    let key = credential(CredentialKind::Key, "alice", "key_1", "hk");
    s.add_credential(&key).await.unwrap();
    let ids = |list: Vec<Credential>| list.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s
            .list_credentials("alice", CredentialKind::Token)
            .await
            .unwrap()),
        ["tok_new", "tok_alice", "tok_old"]
    );
    assert_eq!(
        s.list_credentials("alice", CredentialKind::Key)
            .await
            .unwrap(),
        [key]
    );
    assert!(
        s.list_credentials("alice", CredentialKind::Session)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_credentials("alice", CredentialKind::Token)
            .await
            .unwrap()[1],
        first
    );
}

pub async fn another_owners_credential_is_not_found(s: Arc<dyn Store>) {
    let (_, alices) = user_with_token(&*s, "alice").await;
    user_with_token(&*s, "bob").await;
    assert_eq!(
        s.get_credential("alice", "tok_alice").await.unwrap(),
        Some(alices)
    );
    assert_eq!(s.get_credential("bob", "tok_alice").await.unwrap(), None);
    assert_eq!(s.get_credential("alice", "tok_nope").await.unwrap(), None);
}

pub async fn key_usage_adds_up_over_batches(s: Arc<dyn Store>) {
    user_with_token(&*s, "alice").await;
    for (id, hash) in [("key_1", "h1"), ("key_2", "h2")] {
        s.add_credential(&credential(CredentialKind::Key, "alice", id, hash))
            .await
            .unwrap();
    }
    let delta = |id: &str, calls, errors, duration_ms, last_used_at| KeyUsageDelta {
        id: id.into(),
        calls,
        errors,
        duration_ms,
        last_used_at,
    };
    let (t1, t2) = (later(-20), later(-10));
    s.record_key_usage(&[
        delta("key_1", 3, 1, 4.5, t2),
        delta("key_2", 1, 0, 1.0, t1),
        delta("key_gone", 5, 5, 5.0, t1),
    ])
    .await
    .unwrap();
    // A late report of older calls does not move `last_used_at` back; tokens are not metered.
    s.record_key_usage(&[
        delta("key_1", 2, 0, 0.5, t1),
        delta("tok_alice", 1, 0, 1.0, t2),
    ])
    .await
    .unwrap();
    s.record_key_usage(&[]).await.unwrap();
    let usage = |id: &'static str| {
        let s = s.clone();
        async move { s.get_credential("alice", id).await.unwrap().unwrap().usage }
    };
    let expect = |calls, errors, duration_ms, last_used_at| KeyUsage {
        calls,
        errors,
        duration_ms,
        last_used_at: Some(last_used_at),
    };
    assert_eq!(usage("key_1").await, expect(5, 1, 5.0, t2));
    assert_eq!(usage("key_2").await, expect(1, 0, 1.0, t1));
    assert_eq!(usage("tok_alice").await, KeyUsage::default());
}

pub async fn pruning_removes_only_expired_sessions(s: Arc<dyn Store>) {
    user_with_token(&*s, "alice").await;
    let mut expired = token("alice", "tok_expired", "h_expired");
    expired.expires_at = Some(later(-60));
    let mut old = credential(CredentialKind::Session, "alice", "ses_old", "h1");
    old.expires_at = Some(later(-60));
    let live = credential(CredentialKind::Session, "alice", "ses_live", "h2");
    for k in [&expired, &old, &live] {
        s.add_credential(k).await.unwrap();
    }
    assert_eq!(s.prune_sessions(now()).await.unwrap(), 1);
    let ids = |list: Vec<Credential>| list.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s
            .list_credentials("alice", CredentialKind::Session)
            .await
            .unwrap()),
        ["ses_live"]
    );
    // An expired token is not a session: it stays, listed as expired.
    assert_eq!(
        s.get_credential("alice", "tok_expired").await.unwrap(),
        Some(expired)
    );
    assert_eq!(s.prune_sessions(now()).await.unwrap(), 0);
}

pub async fn password_hashes_are_set_and_read(s: Arc<dyn Store>) {
    s.create_user(&user("alice"), Some("$argon2id$v=19$one"), &[])
        .await
        .unwrap();
    user_with_token(&*s, "bob").await;
    assert_eq!(
        s.password_hash("alice").await.unwrap().as_deref(),
        Some("$argon2id$v=19$one")
    );
    assert_eq!(s.password_hash("bob").await.unwrap(), None);
    assert_eq!(s.password_hash("nobody").await.unwrap(), None);
    s.set_password_hash("bob", "$argon2id$v=19$two")
        .await
        .unwrap();
    assert_eq!(
        s.password_hash("bob").await.unwrap().as_deref(),
        Some("$argon2id$v=19$two")
    );
    assert!(matches!(
        s.set_password_hash("nobody", "x").await,
        Err(StoreError::NotFound(m)) if m == "user nobody"
    ));
}

pub async fn users_export_and_import_with_their_credentials(s: Arc<dyn Store>) {
    user_with_token(&*s, "bob").await;
    let (alice, alices) = user_with_token(&*s, "alice").await;
    let mut key = credential(CredentialKind::Key, "alice", "key_1", "hk");
    key.created_at = later(10);
    s.add_credential(&key).await.unwrap();
    s.revoke_credential("alice", "key_1", later(20))
        .await
        .unwrap();
    s.record_key_usage(&[KeyUsageDelta {
        id: "key_1".into(),
        calls: 2,
        errors: 1,
        duration_ms: 3.25,
        last_used_at: later(15),
    }])
    .await
    .unwrap();
    s.set_password_hash("alice", "phc-a").await.unwrap();
    let key = s.get_credential("alice", "key_1").await.unwrap().unwrap();

    let exported = s.export_users().await.unwrap();
    let names: Vec<_> = exported.iter().map(|r| r.user.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(
        exported[0],
        UserRecord {
            user: alice,
            password_hash: Some("phc-a".into()),
            credentials: vec![alices, key],
        }
    );

    let carol = UserRecord {
        user: User {
            name: "carol".into(),
            is_admin: true,
            created_at: Timestamp::new(1_600_000_000, 1_000).unwrap(),
        },
        password_hash: None,
        credentials: vec![
            token("carol", "tok_c1", "hc1"),
            credential(CredentialKind::Session, "carol", "ses_c", "hc2"),
        ],
    };
    s.import_user(&carol).await.unwrap();
    // Importing again replaces (a copy can be repeated), credentials included.
    let mut fewer = carol.clone();
    fewer.credentials.truncate(1);
    s.import_user(&carol).await.unwrap();
    s.import_user(&fewer).await.unwrap();
    let back = s.export_users().await.unwrap();
    assert_eq!(back[2], fewer);
    assert_eq!(s.authenticate("hc2", now()).await.unwrap(), None);
    assert_eq!(
        s.authenticate("hc1", now()).await.unwrap().map(|(_, u)| u),
        Some(carol.user)
    );
    // Another user's secret is refused, and that user's import changes nothing.
    let mut thief = exported[0].clone();
    thief.user.name = "mallory".into();
    for k in &mut thief.credentials {
        k.owner = "mallory".into();
    }
    assert!(matches!(
        s.import_user(&thief).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.get_user("mallory").await.unwrap().is_none());
    assert_eq!(s.export_users().await.unwrap(), back);
}

pub async fn functions_round_trip_with_optimistic_concurrency(s: Arc<dyn Store>) {
    let r = record("alice", "add");
    s.create_function(&r).await.unwrap();
    assert_eq!(
        s.get_function("alice", "add").await.unwrap(),
        Some(r.clone())
    );
    assert!(matches!(
        s.create_function(&r).await,
        Err(StoreError::Conflict(m)) if m == "function alice/add already exists"
    ));
    let mut r2 = r.clone();
    r2.generation = 2;
    r2.spec.source = "def main(): return 2".into();
    s.replace_function(&r2, 1).await.unwrap();
    assert_eq!(
        s.get_function("alice", "add").await.unwrap(),
        Some(r2.clone())
    );
    // A stale writer that still believes generation 1 loses, and changes nothing.
    let mut stale = r.clone();
    stale.generation = 2;
    stale.spec.source = "def main(): return 'stale'".into();
    assert!(matches!(
        s.replace_function(&stale, 1).await,
        Err(StoreError::Conflict(m)) if m.starts_with("function alice/add ")
    ));
    assert_eq!(
        s.get_function("alice", "add").await.unwrap(),
        Some(r2.clone())
    );
    let missing = s.replace_function(&record("alice", "nope"), 1).await;
    assert!(matches!(&missing, Err(StoreError::NotFound(m)) if m == "function alice/nope"));
    assert_eq!(
        missing.unwrap_err().to_string(),
        "function alice/nope not found"
    );
    let status = SkyFunctionStatus {
        ready_replicas: 1,
        ..Default::default()
    };
    s.set_function_status("alice", "add", &status)
        .await
        .unwrap();
    let got = s.get_function("alice", "add").await.unwrap().unwrap();
    assert_eq!((got.status, got.generation), (status.clone(), 2));
    assert_eq!(got.spec, r2.spec);
    assert!(matches!(
        s.set_function_status("alice", "nope", &status).await,
        Err(StoreError::NotFound(m)) if m == "function alice/nope"
    ));
    assert!(s.get_function("alice", "nope").await.unwrap().is_none());
    assert!(s.get_function("bob", "add").await.unwrap().is_none());
}

pub async fn timestamps_keep_microseconds(s: Arc<dyn Store>) {
    let mut r = record("alice", "t");
    r.created_at = Timestamp::new(1_700_000_000, 123_456_789).unwrap();
    r.updated_at = Timestamp::new(-1, 999_999_000).unwrap();
    s.create_function(&r).await.unwrap();
    let got = s.get_function("alice", "t").await.unwrap().unwrap();
    assert_eq!(
        got.created_at,
        Timestamp::new(1_700_000_000, 123_456_000).unwrap()
    );
    assert_eq!(got.updated_at, r.updated_at);
}

pub async fn listing_filters_by_owner_and_visibility(s: Arc<dyn Store>) {
    let mut public = record("bob", "pub");
    public.spec.visibility = Visibility::Public;
    for r in [
        record("bob", "b"),
        record("alice", "z"),
        record("alice", "a"),
        public,
    ] {
        s.create_function(&r).await.unwrap();
    }
    let names = |v: Vec<FunctionRecord>| {
        v.into_iter()
            .map(|r| format!("{}/{}", r.spec.owner, r.spec.endpoint))
            .collect::<Vec<_>>()
    };
    let f = |owner: Option<&str>, include_public| FunctionFilter {
        owner: owner.map(String::from),
        include_public,
    };
    assert_eq!(
        names(s.list_functions(&f(None, false)).await.unwrap()),
        ["alice/a", "alice/z", "bob/b", "bob/pub"]
    );
    assert_eq!(
        names(s.list_functions(&f(Some("alice"), false)).await.unwrap()),
        ["alice/a", "alice/z"]
    );
    assert_eq!(
        names(s.list_functions(&f(Some("alice"), true)).await.unwrap()),
        ["alice/a", "alice/z", "bob/pub"]
    );
    assert_eq!(
        names(s.list_functions(&f(None, true)).await.unwrap()),
        ["bob/pub"]
    );
}

pub async fn state_is_isolated_and_prefixes_are_literal(s: Arc<dyn Store>) {
    let (a, a2, b) = (scope("alice", "f"), scope("alice", "g"), scope("bob", "f"));
    s.state_put(&a, "n", "1", StateQuota::default())
        .await
        .unwrap();
    s.state_put(&a, "n", "2", StateQuota::default())
        .await
        .unwrap();
    assert_eq!(s.state_get(&a, "n").await.unwrap().as_deref(), Some("2"));
    assert_eq!(s.state_get(&a2, "n").await.unwrap(), None);
    assert_eq!(s.state_get(&b, "n").await.unwrap(), None);
    assert!(!s.state_delete(&b, "n").await.unwrap());
    // Same key in the other scopes: each scope sees only its own value and keys.
    s.state_put(&a2, "n", "\"g\"", StateQuota::default())
        .await
        .unwrap();
    s.state_put(&b, "n", "{\"bob\":true}", StateQuota::default())
        .await
        .unwrap();
    assert_eq!(s.state_get(&a, "n").await.unwrap().as_deref(), Some("2"));
    assert_eq!(
        s.state_get(&a2, "n").await.unwrap().as_deref(),
        Some("\"g\"")
    );
    assert_eq!(
        s.state_get(&b, "n").await.unwrap().as_deref(),
        Some("{\"bob\":true}")
    );
    assert!(s.state_delete(&b, "n").await.unwrap());
    assert_eq!(s.state_get(&a, "n").await.unwrap().as_deref(), Some("2"));
    assert_eq!(s.state_keys(&a2, "", 10).await.unwrap(), ["n"]);
    for k in ["a%b", "a_c", "abc", "axe"] {
        s.state_put(&a, k, "0", StateQuota::default())
            .await
            .unwrap();
    }
    assert_eq!(s.state_keys(&a, "a%", 10).await.unwrap(), ["a%b"]);
    assert_eq!(s.state_keys(&a, "a_", 10).await.unwrap(), ["a_c"]);
    assert_eq!(
        s.state_keys(&a, "a", 10).await.unwrap(),
        ["a%b", "a_c", "abc", "axe"]
    );
    assert_eq!(s.state_keys(&a, "a", 2).await.unwrap(), ["a%b", "a_c"]);
    assert!(s.state_keys(&a, "zz", 10).await.unwrap().is_empty());
    assert!(s.state_keys(&a, "a", 0).await.unwrap().is_empty());
    assert_eq!(
        s.state_keys(&a, "", 3).await.unwrap(),
        ["a%b", "a_c", "abc"]
    );
    assert!(s.state_keys(&b, "", 10).await.unwrap().is_empty());
    assert_eq!(s.state_keys(&a2, "", 10).await.unwrap(), ["n"]);
    assert!(s.state_delete(&a, "n").await.unwrap());
    assert!(!s.state_delete(&a, "n").await.unwrap());
}

pub async fn delete_removes_only_that_functions_state_and_invocations(s: Arc<dyn Store>) {
    s.create_function(&record("alice", "f")).await.unwrap();
    s.create_function(&record("alice", "g")).await.unwrap();
    s.state_put(&scope("alice", "f"), "k", "1", StateQuota::default())
        .await
        .unwrap();
    s.state_put(&scope("alice", "g"), "k", "1", StateQuota::default())
        .await
        .unwrap();
    s.record_invocations(
        &[invocation("alice", "f", 1), invocation("alice", "g", 2)],
        10,
    )
    .await
    .unwrap();
    assert!(s.delete_function("alice", "f").await.unwrap());
    assert!(!s.delete_function("alice", "f").await.unwrap());
    assert!(s.get_function("alice", "f").await.unwrap().is_none());
    assert!(
        s.state_get(&scope("alice", "f"), "k")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.recent_invocations("alice", "f", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.state_get(&scope("alice", "g"), "k")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.recent_invocations("alice", "g", 10).await.unwrap().len(),
        1
    );
}

pub async fn invocations_keep_the_newest(s: Arc<dyn Store>) {
    let batch: Vec<_> = (0..7).map(|i| invocation("alice", "f", i)).collect();
    s.record_invocations(&batch[..4], 5).await.unwrap();
    s.record_invocations(&batch[4..], 5).await.unwrap();
    s.record_invocations(&[invocation("bob", "f", 9)], 5)
        .await
        .unwrap();
    let got = s.recent_invocations("alice", "f", 100).await.unwrap();
    let ids: Vec<_> = got.iter().map(|i| i.request_id.as_str()).collect();
    assert_eq!(ids, ["r6", "r5", "r4", "r3", "r2"]);
    assert_eq!(got[0], batch[6]);
    assert_eq!(
        s.recent_invocations("alice", "f", 2).await.unwrap().len(),
        2
    );
    assert_eq!(s.recent_invocations("bob", "f", 10).await.unwrap().len(), 1);

    // One batch spanning two functions prunes each to its own newest N.
    let mixed: Vec<_> = (10..16)
        .map(|i| invocation(if i % 2 == 0 { "carol" } else { "dave" }, "f", i))
        .collect();
    s.record_invocations(&mixed, 2).await.unwrap();
    let ids = |v: Vec<Invocation>| v.into_iter().map(|i| i.request_id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.recent_invocations("carol", "f", 10).await.unwrap()),
        ["r14", "r12"]
    );
    assert_eq!(
        ids(s.recent_invocations("dave", "f", 10).await.unwrap()),
        ["r15", "r13"]
    );
    // Functions outside the batch are not pruned.
    assert_eq!(
        s.recent_invocations("alice", "f", 100).await.unwrap().len(),
        5
    );
    s.record_invocations(&[], 0).await.unwrap();
    assert!(
        s.recent_invocations("nobody", "f", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn concurrent_writes_all_land(s: Arc<dyn Store>) {
    let sc = scope("alice", "f");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (s, sc) = (s.clone(), sc.clone());
            tokio::spawn(async move {
                s.state_put(&sc, &format!("k{i:02}"), "1", StateQuota::default())
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let keys = s.state_keys(&sc, "k", 100).await.unwrap();
    let want: Vec<_> = (0..50).map(|i| format!("k{i:02}")).collect();
    assert_eq!(keys, want);
}

pub async fn a_key_past_the_owners_quota_is_refused_and_nothing_is_lost(s: Arc<dyn Store>) {
    // Keys of all the owner's functions count together.
    s.state_put(&scope("alice", "f"), "a", "1", SMALL)
        .await
        .unwrap();
    s.state_put(&scope("alice", "g"), "b", "2", SMALL)
        .await
        .unwrap();
    s.state_put(&scope("alice", "~draft/f"), "c", "3", SMALL)
        .await
        .unwrap();
    let e = quota_error(s.state_put(&scope("alice", "f"), "d", "4", SMALL).await);
    assert_eq!(
        (e.kind, e.limit, e.used, e.after),
        (QuotaKind::Keys, 3, 3, 4)
    );
    assert!(
        s.state_get(&scope("alice", "f"), "d")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.state_get(&scope("alice", "f"), "a")
            .await
            .unwrap()
            .as_deref(),
        Some("1")
    );
    // Replacing a key adds none.
    s.state_put(&scope("alice", "f"), "a", "5", SMALL)
        .await
        .unwrap();
    // Deleting one makes room.
    assert!(s.state_delete(&scope("alice", "g"), "b").await.unwrap());
    s.state_put(&scope("alice", "f"), "d", "4", SMALL)
        .await
        .unwrap();
}

pub async fn values_past_the_owners_byte_quota_are_refused_and_the_old_value_stays(
    s: Arc<dyn Store>,
) {
    let f = scope("alice", "f");
    s.state_put(&f, "a", "\"abcd\"", SMALL).await.unwrap(); // 6 bytes
    let e = quota_error(s.state_put(&f, "b", "\"xyz\"", SMALL).await); // 5 more
    assert_eq!(
        (e.kind, e.limit, e.used, e.after),
        (QuotaKind::Bytes, 10, 6, 11)
    );
    let e = quota_error(s.state_put(&f, "a", "\"abcdefghijk\"", SMALL).await);
    assert_eq!((e.used, e.after), (6, 13));
    assert_eq!(
        s.state_get(&f, "a").await.unwrap().as_deref(),
        Some("\"abcd\"")
    );
    assert!(s.state_get(&f, "b").await.unwrap().is_none());
    // Bytes are UTF-8 bytes, not characters: "é" is two.
    let e = quota_error(s.state_put(&f, "b", "\"éé\"", SMALL).await);
    assert_eq!(e.after, 12);
}

pub async fn replacing_a_value_counts_only_the_difference(s: Arc<dyn Store>) {
    let f = scope("alice", "f");
    s.state_put(&f, "a", "12345678", SMALL).await.unwrap();
    // 8 + 9 would be over 10; the replaced value's 8 bytes are given back first.
    s.state_put(&f, "a", "123456789", SMALL).await.unwrap();
    s.state_put(&f, "b", "1", SMALL).await.unwrap();
    quota_error(s.state_put(&f, "c", "1", SMALL).await);
    s.state_put(&f, "a", "1", SMALL).await.unwrap();
    s.state_put(&f, "c", "12345678", SMALL).await.unwrap();
}

pub async fn another_owner_is_unaffected_by_a_full_quota(s: Arc<dyn Store>) {
    for k in ["a", "b", "c"] {
        s.state_put(&scope("alice", "f"), k, "1", SMALL)
            .await
            .unwrap();
    }
    quota_error(s.state_put(&scope("alice", "f"), "d", "1", SMALL).await);
    for k in ["a", "b", "c"] {
        s.state_put(&scope("bob", "f"), k, "1", SMALL)
            .await
            .unwrap();
    }
}

pub async fn deleting_a_function_gives_its_state_back_to_the_quota(s: Arc<dyn Store>) {
    s.create_function(&record("alice", "f")).await.unwrap();
    for k in ["a", "b", "c"] {
        s.state_put(&scope("alice", "f"), k, "1", SMALL)
            .await
            .unwrap();
    }
    quota_error(s.state_put(&scope("alice", "g"), "a", "1", SMALL).await);
    assert!(s.delete_function("alice", "f").await.unwrap());
    for k in ["a", "b", "c"] {
        s.state_put(&scope("alice", "g"), k, "123", SMALL)
            .await
            .unwrap();
    }
}

pub async fn concurrent_writers_cannot_pass_the_quota_together(stores: [Arc<dyn Store>; 2]) {
    let quota = StateQuota {
        max_keys: 5,
        max_bytes: 1 << 20,
    };
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let s = stores[i % 2].clone();
            tokio::spawn(async move {
                s.state_put(&scope("alice", "f"), &format!("k{i:02}"), "1", quota)
                    .await
            })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => stored += 1,
            Err(StoreError::QuotaExceeded(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(stored, 5);
    let keys = stores[1]
        .state_keys(&scope("alice", "f"), "", 100)
        .await
        .unwrap();
    assert_eq!(keys.len(), 5);
}

pub async fn incr_counts_from_the_default(s: Arc<dyn Store>) {
    let f = scope("alice", "f");
    let q = StateQuota::default();
    let from_ten = StateWrite::Incr {
        by: 1.into(),
        default: 10.into(),
    };
    let w = s.state_write(&f, "n", &from_ten, q).await.unwrap();
    assert_eq!(w, Written::Counted("11".into()));
    let w = s.state_write(&f, "n", &incr(-20), q).await.unwrap();
    assert_eq!(w, Written::Counted("-9".into()));
    assert_eq!(s.state_get(&f, "n").await.unwrap().as_deref(), Some("-9"));
}

pub async fn incr_of_a_string_is_refused_and_keeps_it(s: Arc<dyn Store>) {
    let f = scope("alice", "f");
    let q = StateQuota::default();
    s.state_put(&f, "n", "\"x\"", q).await.unwrap();
    let e = s.state_write(&f, "n", &incr(1), q).await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid(m) if m.contains("found a string")));
    assert_eq!(
        s.state_get(&f, "n").await.unwrap().as_deref(),
        Some("\"x\"")
    );
}

pub async fn concurrent_increments_all_count(stores: [Arc<dyn Store>; 2]) {
    let f = scope("alice", "f");
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (s, f) = (stores[i % 2].clone(), f.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    s.state_write(&f, "n", &incr(1), StateQuota::default())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let count = stores[1].state_get(&f, "n").await.unwrap();
    assert_eq!(count.as_deref(), Some("200"));
}

pub async fn set_if_writes_only_over_the_expected_value(s: Arc<dyn Store>) {
    let f = scope("alice", "f");
    let q = StateQuota::default();
    let set_if = |value: &str, expect| StateWrite::SetIf {
        value: value.into(),
        expect,
    };
    // Missing key: `null` is expected.
    let w = s.state_write(&f, "k", &set_if("1", json!(null)), q).await;
    assert_eq!(w.unwrap(), Written::Stored);
    let w = s.state_write(&f, "k", &set_if("2", json!(null)), q).await;
    assert_eq!(w.unwrap(), Written::Lost);
    let w = s.state_write(&f, "k", &set_if("3", json!(1.0)), q).await;
    assert_eq!(w.unwrap(), Written::Stored);
    assert_eq!(s.state_get(&f, "k").await.unwrap().as_deref(), Some("3"));
}

pub async fn a_set_if_race_has_exactly_one_winner_per_round(stores: [Arc<dyn Store>; 2]) {
    let f = scope("alice", "f");
    for round in 0..10i64 {
        let tasks: Vec<_> = (0..4)
            .map(|writer| {
                let (s, f) = (stores[writer % 2].clone(), f.clone());
                let write = StateWrite::SetIf {
                    value: json!({"round": round + 1, "writer": writer}).to_string(),
                    expect: if round == 0 {
                        json!(null)
                    } else {
                        json!({"round": round, "writer": null})
                    },
                };
                tokio::spawn(async move {
                    s.state_write(&f, "leader", &write, StateQuota::default())
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            if t.await.unwrap() == Written::Stored {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}");
        // Next round expects this round's value without knowing the winner: reset the writer.
        let next = json!({"round": round + 1, "writer": null}).to_string();
        stores[0]
            .state_put(&f, "leader", &next, StateQuota::default())
            .await
            .unwrap();
    }
}

pub async fn state_exports_in_pages_and_imports_without_quota(s: Arc<dyn Store>) {
    let q = StateQuota::default();
    for (o, f, k) in [
        ("b", "f", "1"),
        ("a", "g", "2"),
        ("a", "f", "9"),
        ("a", "f", "10"),
    ] {
        s.state_put(&scope(o, f), k, &format!("\"{o}{f}{k}\""), q)
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    let mut after: Option<StateEntry> = None;
    loop {
        let page = s.export_state(after.as_ref(), 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        all.extend(page);
    }
    let got: Vec<_> = all
        .iter()
        .map(|e| format!("{}/{}/{}={}", e.owner, e.function, e.key, e.value))
        .collect();
    assert_eq!(
        got,
        [
            "a/f/10=\"af10\"",
            "a/f/9=\"af9\"",
            "a/g/2=\"ag2\"",
            "b/f/1=\"bf1\""
        ]
    );
    let entries: Vec<_> = (0..5)
        .map(|i| StateEntry {
            owner: "c".into(),
            function: "f".into(),
            key: format!("k{i}"),
            value: i.to_string(),
        })
        .collect();
    let tiny = StateQuota {
        max_keys: 1,
        max_bytes: 1,
    };
    s.import_state(&entries).await.unwrap();
    assert_eq!(
        s.state_keys(&scope("c", "f"), "", 10).await.unwrap().len(),
        5
    );
    // What was imported counts toward the quota afterwards.
    let e = s.state_put(&scope("c", "g"), "x", "1", tiny).await;
    assert!(matches!(e, Err(StoreError::QuotaExceeded(q)) if q.used == 5));
}

pub async fn unicode_keys_and_values_round_trip(s: Arc<dyn Store>) {
    let f = scope("ålice", "f");
    let q = StateQuota::default();
    let value = json!({"naïve": "日本語 🎉", "n": [1.5, -0.0, 1e300]}).to_string();
    s.state_put(&f, "ключ/🎉", &value, q).await.unwrap();
    assert_eq!(
        s.state_get(&f, "ключ/🎉").await.unwrap().as_deref(),
        Some(value.as_str())
    );
    assert_eq!(s.state_keys(&f, "ключ", 10).await.unwrap(), ["ключ/🎉"]);
}

/// `skython store copy` from `from` into an empty `to`, twice: everything arrives once.
pub async fn copy_moves_everything_and_repeating_it_adds_nothing(
    from: Arc<dyn Store>,
    to: Arc<dyn Store>,
) {
    use skython_store::copy::{Progress, Stage, copy};
    let q = StateQuota::default();
    user_with_token(&*from, "alice").await;
    from.set_password_hash("alice", "phc").await.unwrap();
    from.add_credential(&credential(CredentialKind::Key, "alice", "key_1", "hk"))
        .await
        .unwrap();
    user_with_token(&*from, "bob").await;
    let mut public = record("alice", "pub");
    public.spec.visibility = Visibility::Public;
    public.generation = 3;
    for r in [record("alice", "f"), public.clone()] {
        from.create_function(&r).await.unwrap();
    }
    for i in 0..1200 {
        from.state_put(&scope("alice", "f"), &format!("k{i:04}"), "1", q)
            .await
            .unwrap();
    }
    from.state_put(&scope("alice", "~draft/x"), "d", "[1]", q)
        .await
        .unwrap();
    let calls: Vec<_> = (0..5).map(|i| invocation("alice", "f", i)).collect();
    from.record_invocations(&calls, 100).await.unwrap();
    for n in [1, 2] {
        from.record_version("alice", "f", &catalog::version(n, "def main(x): return x"))
            .await
            .unwrap();
    }
    from.record_clone("alice", "f", "alice", "pub")
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut progress = |p: Progress| seen.push(p);
    let copied = copy(&*from, &*to, 3, &mut progress).await.unwrap();
    assert_eq!(
        (
            copied.users,
            copied.credentials,
            copied.functions,
            copied.state_entries,
            copied.invocations
        ),
        (2, 3, 2, 1201, 3)
    );
    assert!(
        seen.iter()
            .any(|p| p.stage == Stage::State && p.done == 1201)
    );
    assert_eq!(
        to.export_users().await.unwrap(),
        from.export_users().await.unwrap()
    );
    let (key, owner) = to.authenticate("hk", now()).await.unwrap().unwrap();
    assert_eq!((key.id.as_str(), owner.name.as_str()), ("key_1", "alice"));
    assert_eq!(to.get_function("alice", "pub").await.unwrap(), Some(public));
    let keys = to
        .state_keys(&scope("alice", "f"), "k", 2000)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1200);
    assert_eq!(
        to.state_get(&scope("alice", "~draft/x"), "d")
            .await
            .unwrap()
            .as_deref(),
        Some("[1]")
    );
    let ids: Vec<_> = to
        .recent_invocations("alice", "f", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.request_id)
        .collect();
    assert_eq!(ids, ["r4", "r3", "r2"]);
    assert_eq!(
        to.list_versions("alice", "f").await.unwrap(),
        from.list_versions("alice", "f").await.unwrap()
    );
    let stats = to.function_stats("alice", "f").await.unwrap();
    assert_eq!(stats.cloned_from.as_deref(), Some("alice/pub"));

    let again = copy(&*from, &*to, 3, &mut |_| {}).await.unwrap();
    assert_eq!(
        to.function_stats("alice", "pub").await.unwrap().clones,
        1,
        "the origin counts its clone once"
    );
    assert_eq!(again.invocations, 0);
    assert_eq!(
        to.export_users().await.unwrap(),
        from.export_users().await.unwrap()
    );
    assert_eq!(
        to.recent_invocations("alice", "f", 10).await.unwrap().len(),
        3
    );
    assert_eq!(
        to.state_keys(&scope("alice", "f"), "", 2000)
            .await
            .unwrap()
            .len(),
        1200
    );
}
