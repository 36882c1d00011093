//! The core loop over the real `skython up` process and real Python workers: deploy through the
//! API, call over HTTP, state, errors, limits, restarts.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use skython_e2e::{Skython, eventually};

const ADD: &str = "def add(a: int, b: int) -> int:\n    return a + b\n";

#[test]
fn add_answers_keyword_and_positional_calls() {
    let s = Skython::start(&[]);
    // Not deployed yet: 404 (and remembered for a moment), then callable as soon as deployed.
    for _ in 0..3 {
        let (status, body) = s.call("admin/add", json!({"a": 1, "b": 1}));
        assert_eq!(status, 404, "{body}");
    }
    let deployed = s.deploy_ok("add", ADD, json!({}));
    assert_eq!(deployed["owner"], "admin");
    assert_eq!(deployed["status"]["url"], format!("{}/fn/admin/add", s.url));
    assert_eq!(deployed["status"]["signature"]["entrypoint"], "add");
    assert_eq!(deployed["status"]["signature"]["returns"], "int");
    assert_eq!(
        s.call("admin/add", json!({"a": 2, "b": 3})),
        (200, json!(5))
    );
    assert_eq!(s.call("admin/add", json!([2, 3])), (200, json!(5)));

    // The request id comes back in a header.
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/fn/admin/add", s.url))
        .body(r#"{"a": 1, "b": 1}"#)
        .send()
        .unwrap();
    assert!(resp.headers().get("x-request-id").is_some());
    assert_eq!(resp.headers()["content-type"], "application/json");
    // A caller's own id is kept, on errors too.
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/fn/admin/add", s.url))
        .header("x-request-id", "trace-42")
        .body("{")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-request-id"], "trace-42");
    // And on the answers for unknown routes and methods.
    let client = reqwest::blocking::Client::new();
    let resp = client
        .get(format!("{}/no/such/route", s.url))
        .header("x-request-id", "trace-43")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-request-id"], "trace-43");
    let resp = client
        .get(format!("{}/fn/admin/add", s.url))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.headers().get("x-request-id").is_some());
}

#[test]
fn scientific_values_come_back_as_json() {
    let s = Skython::start(&[]);
    let source = r#"
import datetime
import numpy as np
import pandas as pd

def main(kind: str):
    if kind == "frame":
        return pd.DataFrame({"name": ["a", "b"], "score": [1.5, None]})
    if kind == "array":
        return np.arange(6).reshape(2, 3) * 2
    if kind == "scalars":
        return {"i": np.int64(7), "f": np.float32(0.5), "b": np.bool_(True)}
    if kind == "series":
        return pd.Series([1, 2, 3]).cumsum()
    if kind == "misc":
        return {"when": datetime.datetime(2024, 5, 1, 12, 30), "raw": b"hi", "set": {3, 1, 2},
                "nan": float("nan")}
    if kind == "object":
        return object()
    if kind == "surrogate":
        return {"s": "a\ud800b", "emoji": "\U0001F600"}
"#;
    s.deploy_ok("sci", source, json!({}));
    assert_eq!(
        s.call("admin/sci", json!({"kind": "frame"})),
        (
            200,
            json!([{"name": "a", "score": 1.5}, {"name": "b", "score": null}])
        )
    );
    assert_eq!(
        s.call("admin/sci", json!({"kind": "array"})),
        (200, json!([[0, 2, 4], [6, 8, 10]]))
    );
    assert_eq!(
        s.call("admin/sci", json!({"kind": "scalars"})),
        (200, json!({"i": 7, "f": 0.5, "b": true}))
    );
    assert_eq!(
        s.call("admin/sci", json!({"kind": "series"})),
        (200, json!([1, 3, 6]))
    );
    assert_eq!(
        s.call("admin/sci", json!({"kind": "misc"})),
        (
            200,
            json!({"when": "2024-05-01T12:30:00", "raw": "aGk=", "set": [1, 2, 3], "nan": null})
        )
    );
    assert_eq!(
        s.call("admin/sci", json!({"kind": "surrogate"})),
        (200, json!({"s": "a\u{fffd}b", "emoji": "😀"})),
        "a lone surrogate is escaped, never invalid UTF-8"
    );
    let (status, body) = s.call("admin/sci", json!({"kind": "object"}));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "unserializable_result");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("builtins.object"),
        "{body}"
    );
}

#[test]
fn errors_are_clear_and_the_next_call_succeeds() {
    let s = Skython::start(&[]);
    let source = r#"
import os, time

def main(mode: str = "ok", seconds: float = 0):
    if mode == "sleep":
        time.sleep(seconds)
    if mode == "exit":
        os._exit(1)
    if mode == "raise":
        print("about to fail")
        raise ValueError("mode must not be raise")
    return "alive"
"#;
    s.deploy_ok("moody", source, json!({"timeoutSeconds": 2}));

    // Past the timeout: 504 within timeout + 2 s, then a fresh worker answers.
    let t = Instant::now();
    let (status, body) = s.call("admin/moody", json!({"mode": "sleep", "seconds": 30}));
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(s.call("admin/moody", json!({})), (200, json!("alive")));

    // A worker that dies mid-call fails that call only.
    let (status, body) = s.call("admin/moody", json!({"mode": "exit"}));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "worker_crashed");
    assert_eq!(s.call("admin/moody", json!({})), (200, json!("alive")));

    // An exception: 500 with its type and message; the traceback goes to the log.
    let (status, body) = s.call("admin/moody", json!({"mode": "raise"}));
    assert_eq!(status, 500);
    assert_eq!(
        body,
        json!({"error": {"code": "function_error", "type": "ValueError", "message": "mode must not be raise"}})
    );
    let (_, logs) = s.api(Method::GET, "/functions/admin/moody/logs", None);
    let newest = &logs["items"][0];
    assert_eq!(newest["status"], 500);
    let text = newest["logs"].as_str().unwrap();
    assert!(text.contains("about to fail"), "{text}");
    assert!(
        text.contains("Traceback") && text.contains("moody.py\", line 11"),
        "{text}"
    );

    // Bad input.
    let (status, body) = s.call_raw("admin/moody", "{\"mode\": ");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_json"))
    );
    let (status, body) = s.call("admin/moody", json!({"nope": 1}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_arguments")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("nope"),
        "{body}"
    );
    let (status, body) = s.call("admin/nothing-here", json!({}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("function_not_found"))
    );
    let (status, _) = s.call("admin/..%2F..%2Fetc", json!({}));
    assert_eq!(status, 404);
}

#[test]
fn missing_parameter_names_it_with_the_signature() {
    let s = Skython::start(&[]);
    s.deploy_ok("add", ADD, json!({}));
    let (status, body) = s.call("admin/add", json!({"a": 2}));
    assert_eq!(status, 400);
    let err = &body["error"];
    assert_eq!(err["code"], "bad_arguments");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("'b'") && msg.contains("add(a: int, b: int) -> int"),
        "{msg}"
    );
    assert_eq!(
        err["expected"][1],
        json!({"name": "b", "kind": "positional_or_keyword", "annotation": "int"})
    );
    let (status, body) = s.call_raw("admin/add", "42");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_arguments"))
    );
}

#[test]
fn pool_grows_under_load_and_shrinks_when_idle() {
    let s = Skython::start(&[]);
    let source = "import time\n\ndef main(i: int):\n    time.sleep(0.02)\n    return i * 2\n";
    s.deploy_ok(
        "slow",
        source,
        json!({"concurrency": 4, "scaling": {"idleSecondsToZero": 2}}),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("{}/fn/admin/slow", s.url);
    let results: Vec<(u16, Value)> = rt.block_on(async {
        let client = reqwest::Client::new();
        let calls = (0..200).map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let r = client
                    .post(&url)
                    .body(json!({"i": i}).to_string())
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        });
        let mut out = Vec::new();
        for c in calls.collect::<Vec<_>>() {
            out.push(c.await.unwrap());
        }
        out
    });
    for (i, r) in results.iter().enumerate() {
        assert_eq!(*r, (200, json!(i * 2)));
    }
    let workers = s
        .metric("skython_workers{function=\"admin/slow\"}")
        .unwrap();
    let cold = s
        .metric("skython_cold_starts_total{function=\"admin/slow\"}")
        .unwrap();
    assert!(workers > 1.0, "the pool grew: {workers} workers");
    assert!(workers <= 4.0, "never past concurrency: {workers}");
    assert!(cold >= 2.0, "{cold} cold starts");
    assert_eq!(
        s.metric("skython_calls_total{function=\"admin/slow\",outcome=\"ok\"}"),
        Some(200.0)
    );
    assert!(
        eventually(Duration::from_secs(10), || s
            .metric("skython_workers{function=\"admin/slow\"}")
            == Some(0.0)),
        "idle workers were stopped"
    );
    // From zero, the next call starts a worker again.
    assert_eq!(s.call("admin/slow", json!({"i": 1})), (200, json!(2)));
}

#[test]
fn a_full_queue_answers_429() {
    let s = Skython::start(&["--queue-limit", "2"]);
    s.deploy_ok(
        "one",
        "import time\n\ndef main():\n    time.sleep(0.5)\n    return 1\n",
        json!({"concurrency": 1}),
    );
    let url = format!("{}/fn/admin/one", s.url);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                scope.spawn(move || {
                    reqwest::blocking::Client::new()
                        .post(&url)
                        .send()
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
}

#[test]
fn state_counts_survives_restart_and_is_scoped() {
    let dir = tempfile::tempdir().unwrap();
    let counter = "from skython import store, load\n\ndef main():\n    store(\"n\", load(\"n\", 0) + 1)\n    return load(\"n\")\n";
    let mut s = Skython::start_in(dir.path(), &[]);
    s.deploy_ok("counter", counter, json!({}));
    for i in 1..=100 {
        assert_eq!(s.call("admin/counter", json!({})), (200, json!(i)));
    }
    s.stop();
    let s = Skython::start_in(dir.path(), &[]);
    assert_eq!(
        s.call("admin/counter", json!({})),
        (200, json!(101)),
        "the count survived a restart"
    );

    // Another function of the same owner and the same function name of another owner start at 1.
    s.deploy_ok("counter2", counter, json!({}));
    s.deploy_ok("counter", counter, json!({"owner": "bob"}));
    assert_eq!(s.call("admin/counter2", json!({})), (200, json!(1)));
    assert_eq!(s.call("bob/counter", json!({})), (200, json!(1)));
    assert_eq!(s.call("bob/counter", json!({})), (200, json!(2)));
    assert_eq!(s.call("admin/counter", json!({})), (200, json!(102)));
    let lister = "from skython import keys, delete, store\n\ndef main(prefix: str = ''):\n    store('k%x', 1)\n    return keys(prefix)\n";
    s.deploy_ok("lister", lister, json!({"owner": "bob"}));
    assert_eq!(
        s.call("bob/lister", json!({})),
        (200, json!(["k%x"])),
        "bob/counter's keys are not listed"
    );
    assert_eq!(
        s.call("bob/lister", json!({"prefix": "k%"})),
        (200, json!(["k%x"]))
    );
    assert_eq!(
        s.call("bob/lister", json!({"prefix": "n"})),
        (200, json!([]))
    );
}

#[test]
fn oversized_state_values_are_refused_and_old_values_kept() {
    let s = Skython::start(&["--max-state-value-bytes", "1000"]);
    let source = "from skython import store, load, StateError\n\ndef main(size: int):\n    try:\n        store('v', 'x' * size)\n    except StateError as e:\n        return {'refused': str(e), 'kept': len(load('v', ''))}\n    return {'stored': size}\n";
    s.deploy_ok("big", source, json!({}));
    assert_eq!(
        s.call("admin/big", json!({"size": 10})),
        (200, json!({"stored": 10}))
    );
    let (status, body) = s.call("admin/big", json!({"size": 5000}));
    assert_eq!(status, 200);
    assert!(
        body["refused"].as_str().unwrap().contains("1000 bytes"),
        "{body}"
    );
    assert_eq!(body["kept"], 10);
}

#[test]
fn syntax_errors_are_refused_and_the_previous_version_kept() {
    let s = Skython::start(&[]);
    s.deploy_ok("add", ADD, json!({}));
    let broken = "def add(a, b):\n    return a +\n";
    let (status, body) = s.api(
        Method::PUT,
        "/functions/admin/add",
        Some(json!({"source": broken, "access": "public"})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "syntax_error");
    assert_eq!(body["error"]["line"], 2);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );
    assert_eq!(
        s.call("admin/add", json!({"a": 2, "b": 3})),
        (200, json!(5))
    );
    let (_, f) = s.api(Method::GET, "/functions/admin/add", None);
    assert_eq!(f["generation"], 1);
    assert_eq!(f["source"], ADD);

    // New function with a syntax error: nothing is created.
    let (status, _) = s.deploy(json!({"endpoint": "broken", "source": broken}));
    assert_eq!(status, 400);
    let (status, _) = s.api(Method::GET, "/functions/admin/broken", None);
    assert_eq!(status, 404);

    // A valid update rolls to the new version.
    let (status, body) = s.api(
        Method::PUT,
        "/functions/admin/add",
        Some(json!({"source": "def add(a, b):\n    return a * b\n", "access": "public"})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generation"], 2);
    assert_eq!(
        s.call("admin/add", json!({"a": 2, "b": 3})),
        (200, json!(6))
    );
}

#[test]
fn deploy_checks_the_spec_and_the_entry_function() {
    let s = Skython::start(&[]);
    let (status, body) =
        s.deploy(json!({"endpoint": "Bad_Name", "source": ADD, "timeoutSeconds": 0}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_spec");
    let fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["endpoint", "timeoutSeconds"]);
    let (status, body) = s.deploy(json!({"endpoint": "x", "source": ADD, "timeout": 5}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_body"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeoutSeconds"),
        "{body}"
    );
    let (status, body) =
        s.deploy(json!({"endpoint": "two", "source": "def a(): pass\ndef b(): pass\n"}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("ambiguous_entrypoint"))
    );
    assert_eq!(body["error"]["candidates"], json!(["a", "b"]));
    // `main` wins; helpers with a leading underscore do not count.
    s.deploy_ok(
        "m",
        "def helper(): return 1\n\ndef main(): return helper() + 1\n",
        json!({}),
    );
    s.deploy_ok(
        "h",
        "def _helper(): return 1\n\ndef run(): return _helper() + 2\n",
        json!({}),
    );
    assert_eq!(s.call("admin/m", json!({})), (200, json!(2)));
    assert_eq!(s.call("admin/h", json!({})), (200, json!(3)));
    // A duplicate endpoint is a conflict.
    let (status, body) = s.deploy(json!({"endpoint": "m", "source": ADD}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    // An import error is reported in the status.
    let (status, body) = s.deploy(
        json!({"endpoint": "imp", "source": "import no_such_module\n\ndef main(): pass\n"}),
    );
    assert_eq!(status, 201);
    assert_eq!(body["status"]["conditions"][0]["status"], "False");
    assert!(
        body["status"]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_module"),
        "{body}"
    );
    let (status, body) = s.call("admin/imp", json!({}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("load_error")),
        "{body}"
    );
}

#[test]
fn the_api_needs_a_token_and_limits_bodies() {
    let s = Skython::start(&["--max-body-bytes", "100000"]);
    let http = reqwest::blocking::Client::new();
    let r = http
        .get(format!("{}/api/v1/functions", s.url))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = http
        .get(format!("{}/api/v1/functions", s.url))
        .bearer_auth("wrong")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    s.deploy_ok("add", ADD, json!({}));
    let (status, body) = s.call_raw(
        "admin/add",
        format!("{{\"a\": \"{}\"}}", "x".repeat(200_000)),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    let (status, body) = s.call_raw("admin/add", "[".repeat(100_000));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_json"))
    );
    assert_eq!(
        s.call("admin/add", json!({"a": 1, "b": 2})),
        (200, json!(3)),
        "still serving"
    );
}

#[test]
fn test_run_list_invocations_and_delete() {
    let s = Skython::start(&[]);
    let draft = "def greet(name: str = 'world') -> str:\n    print('greeting', name)\n    return f'hello {name}'\n";
    let (status, body) = s.api(
        Method::POST,
        "/test-run",
        Some(json!({"source": draft, "args": {"name": "ada"}})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], 200);
    assert_eq!(body["result"], "hello ada");
    assert_eq!(body["logs"], "greeting ada\n");
    assert!(body["durationMs"].as_f64().unwrap() > 0.0);
    assert_eq!(body["signature"]["params"][0]["default"], "'world'");
    let (status, body) = s.api(
        Method::POST,
        "/test-run",
        Some(json!({"source": "def f(:\n"})),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("syntax_error"))
    );
    let (_, body) = s.api(
        Method::POST,
        "/test-run",
        Some(json!({"source": "def f():\n    return 1/0\n"})),
    );
    assert_eq!(body["status"], 500);
    assert_eq!(body["error"]["type"], "ZeroDivisionError");
    // Nothing was deployed.
    let (_, list) = s.api(Method::GET, "/functions", None);
    assert_eq!(list["items"], json!([]));

    s.deploy_ok(
        "greet",
        draft,
        json!({"description": "Says hello", "tags": ["demo"], "visibility": "public"}),
    );
    assert_eq!(
        s.call("admin/greet", json!({})),
        (200, json!("hello world"))
    );
    let (_, list) = s.api(Method::GET, "/functions", None);
    assert_eq!(list["items"][0]["endpoint"], "greet");
    assert_eq!(list["items"][0]["tags"], json!(["demo"]));
    assert_eq!(list["items"][0]["ready"], true);
    let (_, inv) = s.api(
        Method::GET,
        "/functions/admin/greet/invocations?limit=5",
        None,
    );
    let first = &inv["items"][0];
    assert_eq!(first["status"], 200);
    assert_eq!(first["logs"], "greeting world\n");
    assert!(!first["requestId"].as_str().unwrap().is_empty());
    let (status, _) = s.api(
        Method::GET,
        "/functions/admin/greet/invocations?limit=0",
        None,
    );
    assert_eq!(status, 400);

    let (status, _) = s.api(Method::DELETE, "/functions/admin/greet", None);
    assert_eq!(status, 204);
    assert_eq!(s.call("admin/greet", json!({})).0, 404);
    let (status, _) = s.api(Method::DELETE, "/functions/admin/greet", None);
    assert_eq!(status, 404);
}

#[test]
fn health_metrics_and_openapi() {
    let s = Skython::start(&[]);
    assert_eq!(s.get("/healthz"), (200, "ok".into()));
    assert_eq!(s.get("/readyz").0, 200);
    let (status, doc) = s.get("/api/openapi.json");
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/fn/{owner}/{endpoint}"]["post"].is_object());
    s.deploy_ok("add", ADD, json!({}));
    s.call("admin/add", json!({"a": 1, "b": 2}));
    s.call("admin/add", json!({"a": 1}));
    assert_eq!(
        s.metric("skython_calls_total{function=\"admin/add\",outcome=\"ok\"}"),
        Some(1.0)
    );
    assert_eq!(
        s.metric("skython_calls_total{function=\"admin/add\",outcome=\"bad_arguments\"}"),
        Some(1.0)
    );
    // One call at a time never queues behind another.
    assert_eq!(
        s.metric("skython_pipelined_calls_total{function=\"admin/add\"}"),
        Some(0.0)
    );
    let text = s.metrics();
    assert!(
        text.contains("skython_call_duration_seconds_bucket{function=\"admin/add\""),
        "{text}"
    );
    // Without a token, /metrics names no function.
    let (status, body) = s.get("/metrics");
    assert_eq!(status, 401);
    assert!(body.contains("\"code\":\"unauthorized\"") && !body.contains("admin/add"));
    let (status, body) = s.get("/nope");
    assert_eq!(status, 404);
    assert!(body.contains("\"code\":\"not_found\""));
    let (status, body) = s.get("/fn/admin/add");
    assert_eq!(status, 405);
    assert!(body.contains("\"code\":\"method_not_allowed\""), "{body}");
}

#[test]
fn a_worker_started_for_a_caller_who_left_serves_the_next_call() {
    let s = Skython::start(&[]);
    // Loading takes a second and a half; a call holds its worker as long as it is asked to.
    let source =
        "import time\ntime.sleep(1.5)\n\ndef f(hold=0):\n    time.sleep(hold)\n    return 'ok'\n";
    s.deploy_ok("slowload", source, json!({"concurrency": 2}));
    let url = format!("{}/fn/admin/slowload", s.url);
    let busy = std::thread::spawn({
        let url = url.clone();
        move || {
            reqwest::blocking::Client::new()
                .post(url)
                .body(r#"{"hold": 3}"#)
                .send()
                .map(|r| r.status().as_u16())
        }
    });
    // The one warm worker is busy: the next call starts a second one, and its caller gives up
    // while it loads.
    std::thread::sleep(Duration::from_millis(300)); // the busy call reaches its worker first
    let gave_up = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .post(&url)
        .body("{}")
        .send();
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    // The start goes on without its caller: the worker joins the pool and the next call finds
    // it warm.
    assert!(
        eventually(Duration::from_secs(10), || s
            .metric("skython_workers{function=\"admin/slowload\"}")
            == Some(2.0)),
        "the second worker finished loading"
    );
    let resp = reqwest::blocking::Client::new()
        .post(&url)
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-skython-cold-start").is_none());
    assert_eq!(busy.join().unwrap().unwrap(), 200);
}

#[test]
fn env_values_are_never_shown_and_a_replace_without_env_keeps_them() {
    let s = Skython::start(&["--metrics-token", "sky_scraper"]);
    let source = "import os\n\ndef main():\n    return os.environ.get('API_KEY')\n";
    let env = json!({"env": [{"name": "API_KEY", "value": "hunter2"}], "visibility": "public"});
    let deployed = s.deploy_ok("keyed", source, env);
    assert_eq!(deployed["envNames"], json!(["API_KEY"]));
    assert!(!deployed.to_string().contains("hunter2"), "{deployed}");
    assert_eq!(s.call("admin/keyed", json!({})), (200, json!("hunter2")));
    let (status, got) = s.api(Method::GET, "/functions/admin/keyed", None);
    assert_eq!(status, 200);
    assert!(
        got.get("env").is_none() && !got.to_string().contains("hunter2"),
        "{got}"
    );

    // What a client read, sent back without `envNames`: the value stays.
    let mut spec = got.clone();
    for k in [
        "status",
        "generation",
        "createdAt",
        "updatedAt",
        "envNames",
        "stats",
    ] {
        spec.as_object_mut().unwrap().remove(k);
    }
    spec["description"] = "v2".into();
    let (status, body) = s.api(Method::PUT, "/functions/admin/keyed", Some(spec.clone()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["generation"], 2);
    assert_eq!(s.call("admin/keyed", json!({})), (200, json!("hunter2")));
    // An explicit empty `env` removes it.
    spec["env"] = json!([]);
    let (status, body) = s.api(Method::PUT, "/functions/admin/keyed", Some(spec));
    assert_eq!(
        (status, body["envNames"].clone()),
        (200, json!([])),
        "{body}"
    );
    assert_eq!(s.call("admin/keyed", json!({})), (200, Value::Null));

    // The metrics token reads /metrics; after the delete, the function has no series.
    let scrape = || {
        reqwest::blocking::Client::new()
            .get(format!("{}/metrics", s.url))
            .bearer_auth("sky_scraper")
            .send()
            .unwrap()
    };
    let resp = scrape();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().unwrap().contains("function=\"admin/keyed\""));
    let (status, _) = s.api(Method::DELETE, "/functions/admin/keyed", None);
    assert_eq!(status, 204);
    let text = scrape().text().unwrap();
    assert!(!text.contains("keyed"), "{text}");
}
