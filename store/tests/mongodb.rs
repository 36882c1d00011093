//! The conformance suite on the MongoDB backend, against a real MongoDB-wire server (`make test`
//! starts SecantusDB and sets SKYTHON_MONGODB_URL), plus what only this backend has: its indexes,
//! and losing the server and getting it back (SKYTHON_SECANTUSD names the server binary these
//! tests start themselves).

#[macro_use]
mod conformance;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mongodb::bson::Document;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use skython_store::{
    MongoStore, StateQuota, StateScope, StateStore, StateWrite, Store, StoreError, Written,
};

fn server_url() -> String {
    std::env::var("SKYTHON_MONGODB_URL").expect(
        "SKYTHON_MONGODB_URL is not set: these tests need a MongoDB-wire server \
         (`scripts/mongo.sh start`, then SKYTHON_MONGODB_URL=mongodb://127.0.0.1:27099/?directConnection=true)",
    )
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a mongodb:// URL");
    let (hosts, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let options = tail.split_once('?').map(|(_, o)| o);
    match options {
        Some(o) => format!("{scheme}://{hosts}/{database}?{o}"),
        None => format!("{scheme}://{hosts}/{database}"),
    }
}

/// A database no other test (in this run or an earlier one) uses.
fn fresh_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "t{}_{nanos}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn fresh_store() -> Arc<dyn Store> {
    let url = with_database(&server_url(), &fresh_database());
    Arc::new(MongoStore::connect(&url).await.unwrap())
}

conformance_suite!(fresh_store());

#[test]
fn the_database_in_a_url_is_replaced_or_added() {
    assert_eq!(
        with_database("mongodb://h:1/?directConnection=true", "d"),
        "mongodb://h:1/d?directConnection=true"
    );
    assert_eq!(
        with_database("mongodb://u:p@h:1,g:2/old?a=b", "d"),
        "mongodb://u:p@h:1,g:2/d?a=b"
    );
    assert_eq!(with_database("mongodb://h", "d"), "mongodb://h/d");
}

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A secantusd-py of our own, stopped (SIGTERM) or killed when dropped.
struct Server {
    child: Child,
}

impl Server {
    fn start(port: u16, storage: &Path) -> Server {
        let bin = std::env::var("SKYTHON_SECANTUSD").expect(
            "SKYTHON_SECANTUSD is not set: it names the secantusd-py that `make venv-mongo` \
             installs (~/.cache/skython/venv-mongo/bin/secantusd-py)",
        );
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--storage-path")
            .arg(storage)
            .args(["--log-level", "WARNING"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Server { child }
    }

    /// Stops it the way an operator would, and waits until it has.
    fn stop(mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        kill(pid, Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "secantusd-py did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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
    let port = free_port();
    let url = format!("mongodb://127.0.0.1:{port}/skython?directConnection=true");
    let scope = StateScope {
        owner: "alice".into(),
        function: "f".into(),
    };
    let q = StateQuota::default();

    let server = Server::start(port, storage.path());
    let store = connect_when_up(&url).await;
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
    let _server = Server::start(port, storage.path());
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
    let url = with_database(&server_url(), &fresh_database());
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
