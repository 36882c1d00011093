//! The conformance suite on the MongoDB backend, against a real MongoDB-wire server (`make test`
//! starts SecantusDB and sets SKYTHON_MONGODB_URL), plus what only this backend has: its indexes,
//! and losing the server and getting it back (SKYTHON_SECANTUSD names the server binary these
//! tests start themselves).

#[macro_use]
mod conformance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use mongodb::bson::{Document, doc};
use skython_e2e::free_port;
use skython_e2e::mongo::{
    SecantusServer, fresh_database, fresh_database_url, server_url, with_database,
};
use skython_store::{
    CredentialKind, MongoStore, StateQuota, StateScope, StateStore, Store, StoreError, User,
    UserStore, legacy_token_id,
};

async fn fresh_store() -> Arc<dyn Store> {
    Arc::new(MongoStore::connect(&fresh_database_url()).await.unwrap())
}

conformance_suite!(fresh_store());

#[tokio::test]
async fn connect_creates_the_indexes_queries_use() {
    let database = fresh_database();
    let url = with_database(&server_url(), &database);
    MongoStore::connect(&url).await.unwrap();
    let db = mongodb::Client::with_uri_str(&url)
        .await
        .unwrap()
        .database(&database);
    let unique_keys = |name: &'static str| {
        let db = db.clone();
        async move {
            let mut found = Vec::new();
            let mut cursor = db
                .collection::<Document>(name)
                .list_indexes()
                .await
                .unwrap();
            while cursor.advance().await.unwrap() {
                let index = cursor.deserialize_current().unwrap();
                let keys: Vec<String> = index.keys.keys().cloned().collect();
                let unique = index.options.and_then(|o| o.unique).unwrap_or(false);
                found.push((keys.join(","), unique));
            }
            found.sort();
            found
        }
    };
    let expect = |v: &[(&str, bool)]| {
        let mut v: Vec<_> = v.iter().map(|(k, u)| (k.to_string(), *u)).collect();
        v.sort();
        v
    };
    assert_eq!(
        unique_keys("state").await,
        expect(&[("_id", false), ("owner,function,key", true)])
    );
    assert_eq!(
        unique_keys("users").await,
        expect(&[("_id", false), ("name", true)])
    );
    assert_eq!(
        unique_keys("credentials").await,
        expect(&[
            ("_id", false),
            ("hash", true),
            ("owner,kind,created_at", false)
        ])
    );
    assert_eq!(
        unique_keys("functions").await,
        expect(&[
            ("_id", false),
            ("owner,endpoint", true),
            ("visibility,owner,endpoint", false)
        ])
    );
    assert_eq!(
        unique_keys("invocations").await,
        expect(&[("_id", false), ("owner,endpoint,seq", false)])
    );
}

/// What an older Skython left: users with one `token_hash` each, unique-indexed.
#[tokio::test]
async fn connect_moves_the_tokens_of_older_users_into_credentials() {
    let database = fresh_database();
    let url = with_database(&server_url(), &database);
    let users = mongodb::Client::with_uri_str(&url)
        .await
        .unwrap()
        .database(&database)
        .collection::<Document>("users");
    users
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! { "token_hash": 1 })
                .options(
                    mongodb::options::IndexOptions::builder()
                        .name("token_hash".to_string())
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    let created = 1_700_000_000_123_456_i64;
    users
        .insert_many([
            doc! { "name": "admin", "token_hash": "hash-a", "is_admin": true, "created_at": created },
            doc! { "name": "alice", "token_hash": "hash-b", "is_admin": false, "created_at": created },
        ])
        .await
        .unwrap();

    // Twice, as two gateways starting one after the other would.
    MongoStore::connect(&url).await.unwrap();
    let store = MongoStore::connect(&url).await.unwrap();
    let (token, admin) = store
        .authenticate("hash-a", Timestamp::now())
        .await
        .unwrap()
        .expect("the admin's token still works");
    assert!(admin.is_admin);
    assert_eq!(
        (token.id, token.kind, token.name, token.owner),
        (
            legacy_token_id("admin"),
            CredentialKind::Token,
            "default".to_string(),
            "admin".to_string()
        )
    );
    assert_eq!(token.created_at.as_microsecond(), created);
    assert_eq!(
        store
            .list_credentials("alice", CredentialKind::Token)
            .await
            .unwrap()
            .len(),
        1
    );
    let left = users
        .count_documents(doc! { "token_hash": { "$exists": true } })
        .await
        .unwrap();
    assert_eq!(left, 0);
    let names = users.list_index_names().await.unwrap();
    assert!(!names.iter().any(|n| n == "token_hash"), "{names:?}");
    // Users without the field no longer collide on the old index.
    store
        .create_user(
            &User {
                name: "bob".into(),
                is_admin: false,
                created_at: Timestamp::now(),
            },
            None,
            &[],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn connecting_to_nothing_is_unavailable() {
    let port = free_port();
    let started = Instant::now();
    let e = MongoStore::connect(&format!(
        "mongodb://127.0.0.1:{port}/?directConnection=true"
    ))
    .await
    .err()
    .expect("no server listens there");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_malformed_url_is_refused_naming_it() {
    let e = MongoStore::connect("mongodb://h:notaport/")
        .await
        .err()
        .expect("not a URL");
    assert!(
        matches!(&e, StoreError::Backend(m) if m.to_string().contains("invalid MongoDB URI")),
        "{e}"
    );
}

/// The store on a server that was just started: connecting fails until it answers.
async fn connect_when_up(url: &str) -> MongoStore {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match MongoStore::connect(url).await {
            Ok(s) => return s,
            Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the server did not come up: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_server_makes_state_unavailable_and_its_return_heals() {
    let storage = tempfile::tempdir().unwrap();
    let scope = StateScope {
        owner: "alice".into(),
        function: "f".into(),
    };
    let q = StateQuota::default();

    let mut server = SecantusServer::start(storage.path());
    let store = connect_when_up(&server.url("skython")).await;
    store.state_put(&scope, "n", "41", q).await.unwrap();
    server.stop();

    let started = Instant::now();
    let e = store.state_get(&scope, "n").await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    let e = store.state_put(&scope, "n", "42", q).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");

    // Same port, same storage: the same store reconnects by itself and finds the data.
    server.resume();
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        match store.state_get(&scope, "n").await {
            Ok(v) => break v,
            Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the store did not heal: {e}"),
        }
    };
    assert_eq!(value.as_deref(), Some("41"));
    store.state_put(&scope, "n", "43", q).await.unwrap();
    assert_eq!(
        store.state_get(&scope, "n").await.unwrap().as_deref(),
        Some("43")
    );
}

/// Two stores on one fresh database: separate connection pools and separate in-process locks,
/// as two gateway replicas have, so only MongoDB's transactions keep their writes apart.
async fn two_gateways() -> [Arc<dyn Store>; 2] {
    let url = fresh_database_url();
    [
        Arc::new(MongoStore::connect(&url).await.unwrap()),
        Arc::new(MongoStore::connect(&url).await.unwrap()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_through_two_gateways_all_count() {
    conformance::concurrent_increments_all_count(two_gateways().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_two_gateways_cannot_pass_the_quota_together() {
    conformance::concurrent_writers_cannot_pass_the_quota_together(two_gateways().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_if_race_across_two_gateways_has_exactly_one_winner_per_round() {
    conformance::a_set_if_race_has_exactly_one_winner_per_round(two_gateways().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_sqlite_into_mongodb() {
    conformance::copy_moves_everything_and_repeating_it_adds_nothing(
        Arc::new(skython_store::SqliteStore::open_in_memory().unwrap()),
        fresh_store().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_mongodb_rank_the_skybox_alike() {
    conformance::catalog::backends_rank_the_skybox_alike(
        Arc::new(skython_store::SqliteStore::open_in_memory().unwrap()),
        fresh_store().await,
    )
    .await;
}

#[tokio::test]
async fn searches_read_an_index_not_every_entry() {
    use skython_store::SearchQuery;
    let store = MongoStore::connect(&fresh_database_url()).await.unwrap();
    let arc: Arc<dyn Store> = Arc::new(store.clone());
    conformance::catalog::load_skybox(&*arc).await;
    let query = |text: &str, tags: &[&str]| SearchQuery {
        text: text.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        limit: 10,
        offset: 0,
    };
    for (q, index) in [
        (query("temp celsius", &[]), "terms"),
        (query("rate", &["finance"]), "terms"),
        (query("", &["finance"]), "tags"),
        (query("", &[]), "public_calls"),
    ] {
        let plan = store.explain_search(&q).await.unwrap().to_string();
        assert!(
            plan.contains("IXSCAN") && plan.contains(&format!("\"indexName\": \"{index}\"")),
            "{q:?}: {plan}"
        );
        assert!(!plan.contains("COLLSCAN"), "{q:?}: {plan}");
    }
}
