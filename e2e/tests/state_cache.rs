//! The workers' state cache on the embedded store (`runner/PROTOCOL.md`, "State cache"): values
//! cached in each worker and plain `store`s sent without waiting must still read as one store.
//! A call sees every write of the calls that finished before it started (on whichever worker),
//! a running call sees other calls' writes as they commit, and a store past the quota still
//! raises in the call and is never read. (A write-behind store refused after its call returned
//! is the runner's test: `a_refused_write_behind_fails_its_call_and_replaces_the_worker`.)

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use skython_e2e::{Skython, skython_bin};

const WORKERS: usize = 4;

/// Stores with `op: "store"`; otherwise holds the worker for `hold` seconds (so that concurrent
/// calls spread over the workers) and loads.
const STORE_OR_LOAD: &str = "import os, time\n\
from skython import load, store\n\n\
def main(op: str, key: str = 'k', value: int = 0, hold: float = 0.0):\n    \
    if op == 'store':\n        \
        store(key, value)\n        \
        return 'stored'\n    \
    time.sleep(hold)\n    \
    return {'value': load(key, 'missing'), 'pid': os.getpid()}\n";

/// `n` calls at once; their answers (each must be 200).
fn at_once(s: &Skython, function: &str, n: usize, args: Value) -> Vec<Value> {
    std::thread::scope(|scope| {
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let args = args.clone();
                scope.spawn(move || {
                    let (status, body) = s.call(function, args);
                    assert_eq!(status, 200, "{body}");
                    body
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

#[test]
fn every_worker_reads_a_store_made_by_a_call_that_finished_before() {
    let s = Skython::start(&[]);
    s.deploy_ok("cached", STORE_OR_LOAD, json!({"concurrency": WORKERS}));
    let mut pids = HashSet::new();
    for round in 0..15 {
        let stored = s.call("admin/cached", json!({"op": "store", "value": round}));
        assert_eq!(stored, (200, json!("stored")));
        let loads = at_once(
            &s,
            "admin/cached",
            2 * WORKERS,
            json!({"op": "load", "hold": 0.05}),
        );
        for answer in loads {
            assert_eq!(answer["value"], json!(round), "round {round}: {answer}");
            pids.insert(answer["pid"].as_i64());
        }
    }
    assert!(
        pids.len() >= 2,
        "the loads ran on {} worker(s): the test needs several",
        pids.len()
    );
}

#[test]
fn a_running_call_sees_a_store_that_another_call_made_meanwhile() {
    let s = Skython::start(&[]);
    let source = "import time\n\
from skython import load, store\n\n\
def main(op: str):\n    \
    if op == 'set':\n        \
        store('flag', 'go')\n        \
        return 'set'\n    \
    deadline = time.time() + 20\n    \
    while time.time() < deadline:\n        \
        if load('flag') == 'go':\n            \
            return 'seen'\n        \
        time.sleep(0.005)\n    \
    return 'never seen'\n";
    s.deploy_ok("poll", source, json!({"concurrency": 2}));
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| s.call("admin/poll", json!({"op": "wait"})));
        // The waiting call has cached the flag's absence by now.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            s.call("admin/poll", json!({"op": "set"})),
            (200, json!("set"))
        );
        assert_eq!(waiting.join().unwrap(), (200, json!("seen")));
    });
}

#[test]
fn a_store_past_the_quota_raises_in_its_call_and_is_never_read() {
    let s = Skython::start(&["--state-max-keys-per-owner", "1"]);
    s.deploy_ok("quota", STORE_OR_LOAD, json!({"concurrency": 1}));
    let store = |key: &str, value: i64| {
        s.call(
            "admin/quota",
            json!({"op": "store", "key": key, "value": value}),
        )
    };
    let load =
        |key: &str| s.call("admin/quota", json!({"op": "load", "key": key})).1["value"].clone();
    assert_eq!(store("a", 1), (200, json!("stored")));
    let (status, body) = store("b", 2);
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "function_error", "{body}");
    assert_eq!(body["error"]["type"], "StateError", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("state quota exceeded"),
        "the message names the quota: {message}"
    );
    assert_eq!(load("b"), json!("missing"));
    assert_eq!(load("a"), json!(1));
    assert_eq!(store("a", 3), (200, json!("stored")));
    assert_eq!(load("a"), json!(3));
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let s = Skython::start(&[]);
    refused_as_in_use(
        Command::new(skython_bin())
            .args(["up", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(&s.data_dir)
            .env("SKYTHON_LOG", "warn"),
    );
    // The first one goes on serving.
    s.deploy_ok("still", "def main():\n    return 1\n", json!({}));
    assert_eq!(s.call("admin/still", json!({})), (200, json!(1)));
}

#[test]
fn a_store_copy_into_a_running_servers_file_is_refused() {
    let s = Skython::start(&[]);
    let db = s.data_dir.join("skython.db");
    let elsewhere = tempfile::tempdir().unwrap();
    let source = elsewhere.path().join("source.db");
    std::fs::copy(&db, &source).unwrap();
    refused_as_in_use(
        Command::new(skython_bin())
            .args(["store", "copy", "--from"])
            .arg(format!("sqlite://{}", source.display()))
            .arg("--to")
            .arg(format!("sqlite://{}", db.display())),
    );
}

/// Runs `cmd`, which must fail saying that a running server holds the SQLite file.
fn refused_as_in_use(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().expect("run skython");
    assert!(!out.status.success(), "it ran: {cmd:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another Skython server"),
        "says why: {stderr}"
    );
}
