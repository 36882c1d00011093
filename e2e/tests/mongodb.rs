//! `skython up --store mongodb://…` against a real MongoDB-wire server (SecantusDB): losing the
//! database makes state calls answer 503 while other calls go on, and its return heals; a
//! one-machine install moves onto MongoDB with `skython store copy`. (The README tour and the
//! state tests run on MongoDB in their own files.)

use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use skython_e2e::mongo::{SecantusServer, fresh_database_url};
use skython_e2e::{Skython, eventually, skython_bin};

const COUNTER: &str = "from skython import incr\n\ndef main():\n    return incr('n')\n";

#[test]
fn state_calls_answer_503_while_mongodb_is_down_and_others_keep_working_until_it_heals() {
    let storage = tempfile::tempdir().unwrap();
    let mut mongo = SecantusServer::start(storage.path());
    // `up` waits for a database that is still starting.
    let s = Skython::start(&["--store", &mongo.url("skython")]);
    s.deploy_ok("counter", COUNTER, json!({}));
    s.deploy_ok(
        "add",
        "def main(a: int, b: int):\n    return a + b\n",
        json!({}),
    );
    assert_eq!(s.call("admin/counter", json!({})), (200, json!(1)));

    mongo.stop();
    let (status, body) = s.call("admin/counter", json!({}));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "state_unavailable", "{body}");
    assert_eq!(
        s.call("admin/add", json!({"a": 2, "b": 3})),
        (200, json!(5))
    );
    let (status, body) = s.api(Method::GET, "/functions", None);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("storage_unavailable")),
        "{body}"
    );

    mongo.resume();
    assert!(
        eventually(Duration::from_secs(60), || s
            .call("admin/counter", json!({}))
            .0
            == 200),
        "state calls heal once MongoDB is back"
    );
    // The increment made before the outage is still there; the ones refused were not counted.
    assert_eq!(s.call("admin/counter", json!({})), (200, json!(3)));
}

#[test]
fn store_copy_moves_a_one_machine_install_onto_mongodb() {
    let dir = tempfile::tempdir().unwrap();
    let mut local = Skython::start_in(dir.path(), &[]);
    local.deploy_ok("counter", COUNTER, json!({"description": "counts"}));
    for n in 1..=3 {
        assert_eq!(local.call("admin/counter", json!({})), (200, json!(n)));
    }
    local.stop();

    let url = fresh_database_url();
    let out = Command::new(skython_bin())
        .args(["store", "copy", "--from"])
        .arg(format!("sqlite://{}/skython.db", dir.path().display()))
        .args(["--to", &url])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("copied 1 users, 1 functions, 1 state entries and 3 invocations"),
        "{stdout}"
    );

    let moved = Skython::start(&["--store", &url]);
    let (status, f) = moved.api(Method::GET, "/functions/admin/counter", None);
    assert_eq!(
        (status, f["description"].as_str()),
        (200, Some("counts")),
        "{f}"
    );
    assert_eq!(moved.call("admin/counter", json!({})), (200, json!(4)));
    let (_, calls) = moved.api(Method::GET, "/functions/admin/counter/invocations", None);
    assert_eq!(calls["items"].as_array().map(Vec::len), Some(4), "{calls}");
}

#[test]
fn store_copy_refuses_a_source_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(skython_bin())
        .args(["store", "copy", "--from"])
        .arg(format!("sqlite://{}/nope.db", dir.path().display()))
        .args(["--to", "sqlite://elsewhere.db"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("there is no SQLite store at"), "{stderr}");
    assert!(!dir.path().join("nope.db").exists());
    assert!(!dir.path().join("elsewhere.db").exists());
}
