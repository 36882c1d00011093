//! The conformance suite on the MongoDB backend, against a real MongoDB-wire server (`make test`
//! starts SecantusDB and sets SKYTHON_MONGODB_URL), plus what only this backend has: its indexes,
//! and losing the server and getting it back (SKYTHON_SECANTUSD names the server binary these
//! tests start themselves).

#[macro_use]
mod conformance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::Document;
use serde_json::json;
use skython_e2e::free_port;
use skython_e2e::mongo::{
    SecantusServer, fresh_database, fresh_database_url, server_url, with_database,
};
use skython_store::{
    MongoStore, StateQuota, StateScope, StateStore, StateWrite, Store, StoreError, Written,
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
        expect(&[("_id", false), ("name", true), ("token_hash", true)])
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
async fn two_gateways() -> [MongoStore; 2] {
    let url = fresh_database_url();
    [
        MongoStore::connect(&url).await.unwrap(),
        MongoStore::connect(&url).await.unwrap(),
    ]
}

fn alice() -> StateScope {
    StateScope {
        owner: "alice".into(),
        function: "f".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_through_two_gateways_all_count() {
    let stores = two_gateways().await;
    let incr = StateWrite::Incr {
        by: 1.into(),
        default: 0.into(),
    };
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (s, incr) = (stores[i % 2].clone(), incr.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    s.state_write(&alice(), "n", &incr, StateQuota::default())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        stores[1].state_get(&alice(), "n").await.unwrap().as_deref(),
        Some("200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_two_gateways_cannot_pass_the_quota_together() {
    let stores = two_gateways().await;
    let quota = StateQuota {
        max_keys: 5,
        max_bytes: 1 << 20,
    };
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let s = stores[i % 2].clone();
            tokio::spawn(
                async move { s.state_put(&alice(), &format!("k{i:02}"), "1", quota).await },
            )
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
    assert_eq!(
        stores[0].state_keys(&alice(), "", 100).await.unwrap().len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_if_race_across_two_gateways_has_exactly_one_winner_per_round() {
    let stores = two_gateways().await;
    for round in 0..10i64 {
        let tasks: Vec<_> = (0..4)
            .map(|writer| {
                let s = stores[writer % 2].clone();
                let write = StateWrite::SetIf {
                    value: json!({"round": round + 1, "writer": writer}).to_string(),
                    expect: if round == 0 {
                        json!(null)
                    } else {
                        json!({"round": round, "writer": null})
                    },
                };
                tokio::spawn(async move {
                    s.state_write(&alice(), "leader", &write, StateQuota::default())
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
        let next = json!({"round": round + 1, "writer": null}).to_string();
        stores[0]
            .state_put(&alice(), "leader", &next, StateQuota::default())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_sqlite_into_mongodb() {
    conformance::copy_moves_everything_and_repeating_it_adds_nothing(
        Arc::new(skython_store::SqliteStore::open_in_memory().unwrap()),
        fresh_store().await,
    )
    .await;
}
