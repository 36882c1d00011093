//! `skython runner`, the process of a runner pod, over real HTTP with real Python workers: what
//! the operator's Deployments run, tested here without a cluster. A small HTTP server in the
//! test plays the gateway the pod announces itself to and keeps its state through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use skython_e2e::{Process, eventually, free_port, skython_bin};
use skython_runner_pod::wire::{self, Announce};

/// Writes the two files a function's ConfigMap holds (its pods mount them when `function.json`
/// is too large for their own annotation).
fn function_dir(source: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = json!({"owner": "alice", "endpoint": "calc", "source": "ignored: source.py wins",
                      "timeoutSeconds": 5, "concurrency": 2});
    std::fs::write(dir.path().join("function.json"), spec.to_string()).unwrap();
    std::fs::write(dir.path().join("source.py"), source).unwrap();
    dir
}

fn runner(dir: &Path, port: u16) -> Command {
    let mut cmd = skython_runner(dir, port);
    cmd.arg("--function-dir").arg(dir);
    cmd
}

/// `skython runner` on `port`, writing its runtime files under `dir`; no gateway, no pool.
fn skython_runner(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(skython_bin());
    cmd.args(["runner", "--port", &port.to_string(), "--runtime-dir"])
        .arg(dir.join("runtime"))
        .env("SKYTHON_LOG", "warn")
        .env_remove(wire::ENV_GATEWAY_URL)
        .env_remove(wire::ENV_POOL_RUNTIME);
    if let Some(py) = std::env::var_os("SKYTHON_PYTHON") {
        cmd.env("SKYTHON_PYTHON", py);
    }
    cmd
}

fn start(dir: &Path) -> (Process, String) {
    let port = free_port();
    let child = runner(dir, port)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start skython runner");
    (Process(child), format!("http://127.0.0.1:{port}"))
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn send(req: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    match req.send() {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

#[test]
fn a_runner_pod_serves_its_function_at_post_root() {
    let dir = function_dir(
        "import numpy as np\n\ndef calc(xs: list, scale: float = 1.0):\n    print('scaling', len(xs))\n    return {'sum': float(np.sum(xs) * scale)}\n",
    );
    let (_p, url) = start(dir.path());
    let c = http();
    assert!(
        eventually(Duration::from_secs(90), || send(
            c.get(format!("{url}/readyz"))
        )
        .0 == 200),
        "the runner became ready"
    );
    assert_eq!(send(c.get(format!("{url}/healthz"))).0, 200);
    let (status, body) = send(
        c.post(format!("{url}/"))
            .body(r#"{"xs": [1, 2, 3], "scale": 2}"#),
    );
    assert_eq!((status, body), (200, json!({"sum": 12.0})));
    let (status, body) = send(c.post(format!("{url}/")).body("[[1.5, 2.5]]"));
    assert_eq!(
        (status, body),
        (200, json!({"sum": 4.0})),
        "positional arguments"
    );

    let (status, body) = send(c.post(format!("{url}/")).body("{\"xs\": "));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_json");
    let (status, body) = send(c.post(format!("{url}/")).body("{}"));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_arguments");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("xs"),
        "{body}"
    );
    let (status, body) = send(c.get(format!("{url}/")));
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (405, json!("method_not_allowed"))
    );
    let (status, body) = send(c.post(format!("{url}/fn/alice/calc")));
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );

    let metrics = metrics_of(&url);
    assert!(
        metrics.contains(r#"skython_calls_total{function="alice/calc",outcome="ok"} 2"#),
        "{metrics}"
    );
}

/// The caller the gateway names in its header reaches the function; none is anonymous.
#[test]
fn a_runner_pod_tells_the_function_the_caller_the_gateway_names() {
    let dir = function_dir("from skython import caller\n\ndef calc():\n    return caller()\n");
    let (_p, url) = start(dir.path());
    let c = http();
    wait_ready(&c, &url);
    let key = r#"{"kind":"key","id":"key_1","owner":"bob","name":"my-app"}"#;
    let (status, body) = send(
        c.post(format!("{url}/"))
            .header(wire::CALLER_HEADER, key)
            .body("{}"),
    );
    assert_eq!(
        (status, body),
        (
            200,
            json!({"kind": "key", "id": "key_1", "owner": "bob", "name": "my-app"})
        )
    );
    let (status, body) = send(c.post(format!("{url}/")).body("{}"));
    assert_eq!((status, body), (200, json!({"kind": "anonymous"})));
}

#[test]
fn state_is_refused_with_a_clear_error_in_a_pod() {
    let dir = function_dir(
        "from skython import store, StateError\n\ndef calc():\n    try:\n        store('k', 1)\n    except StateError as e:\n        return str(e)\n    return 'stored'\n",
    );
    let (_p, url) = start(dir.path());
    let c = http();
    assert!(eventually(Duration::from_secs(90), || send(
        c.get(format!("{url}/readyz"))
    )
    .0 == 200));
    let (status, body) = send(c.post(format!("{url}/")));
    assert_eq!(status, 200);
    assert!(
        body.as_str()
            .unwrap()
            .contains("not available in this runner pod"),
        "{body}"
    );
}

#[test]
fn a_module_that_fails_to_import_keeps_the_pod_unready_and_says_why() {
    let dir = function_dir("import no_such_module_here\n\ndef calc():\n    return 1\n");
    let (_p, url) = start(dir.path());
    let c = http();
    let mut last = (0, Value::Null);
    assert!(
        eventually(Duration::from_secs(90), || {
            last = send(c.get(format!("{url}/readyz")));
            last.1["error"]["code"] == "load_error"
        }),
        "readyz says load_error: {last:?}"
    );
    assert_eq!(last.0, 503);
    assert!(
        last.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no_such_module_here")
    );
    let (status, body) = send(c.post(format!("{url}/")));
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (500, json!("load_error"))
    );
}

#[test]
fn a_syntax_error_stops_the_runner_naming_the_line() {
    let dir = function_dir("def calc(:\n    return 1\n");
    let out = runner(dir.path(), free_port())
        .output()
        .expect("run skython runner");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let out = runner(empty.path(), free_port()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("function.json"),
        "names the missing file: {err}"
    );
}

/// What the test's gateway saw and holds.
#[derive(Default)]
struct Seen {
    /// Each announcement with its `Authorization` header.
    announcements: Vec<(String, Announce)>,
    /// The `Authorization` header of each state request.
    state_auth: Vec<String>,
    /// The function's state: key → JSON text, as the gateway's store keeps it.
    state: HashMap<String, String>,
}

/// A stand-in for the gateway's pod routes (`wire::ANNOUNCE_PATH`, `wire::STATE_PATH`), on its
/// own runtime; it stops when dropped.
struct FakeGateway {
    url: String,
    seen: Arc<Mutex<Seen>>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeGateway {
    fn start() -> FakeGateway {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let app = axum::Router::new()
            .route(wire::ANNOUNCE_PATH, post(announce))
            .route(wire::STATE_PATH, post(state))
            .with_state(seen.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        FakeGateway {
            url,
            seen,
            _runtime: runtime,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// The announcements so far, waiting up to `timeout` for at least `n`.
    fn announcements(&self, n: usize, timeout: Duration) -> Vec<(String, Announce)> {
        eventually(timeout, || self.seen().announcements.len() >= n);
        self.seen().announcements.clone()
    }
}

fn auth(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn announce(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    Json(a): Json<Announce>,
) -> StatusCode {
    seen.lock().unwrap().announcements.push((auth(&headers), a));
    StatusCode::ACCEPTED
}

/// Answers a worker's state request from the map, in the `StateAnswer` form.
async fn state(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    Json(req): Json<Value>,
) -> Json<Value> {
    let mut seen = seen.lock().unwrap();
    seen.state_auth.push(auth(&headers));
    let key = req["key"].as_str().unwrap_or_default().to_string();
    Json(match req["op"].as_str() {
        Some("store") => {
            let value = req["value"].as_str().unwrap_or_default().to_string();
            seen.state.insert(key, value);
            json!({"ok": true})
        }
        Some("load") => match seen.state.get(&key) {
            Some(value) => json!({"ok": true, "found": true, "value": value}),
            None => json!({"ok": true, "found": false}),
        },
        other => json!({"ok": false, "error": {"code": "bad_op", "message": format!("{other:?}")}}),
    })
}

/// A runner that announces to `gateway_url` with the token in `token_file`.
fn start_announcing(
    dir: &Path,
    gateway_url: &str,
    token_file: &Path,
    drain_delay_secs: u64,
) -> (Process, u16) {
    let port = free_port();
    let child = runner(dir, port)
        .env(wire::ENV_GATEWAY_URL, gateway_url)
        .env(wire::ENV_POD_IP, "127.0.0.1")
        .env(wire::ENV_TOKEN_FILE, token_file)
        .env("SKYTHON_DRAIN_DELAY_SECS", drain_delay_secs.to_string())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start skython runner");
    (Process(child), port)
}

/// One call of `source` in a runner pod whose gateway (and so its state) cannot be reached.
fn call_with_the_gateway_unreachable(source: &str) -> (u16, Value) {
    let dir = function_dir(source);
    let token = token_file(dir.path(), "token-A");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (_p, port) = start_announcing(dir.path(), &nobody, &token, 2);
    let url = format!("http://127.0.0.1:{port}");
    let c = http();
    wait_ready(&c, &url);
    send(c.post(format!("{url}/")))
}

fn token_file(dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    path
}

fn wait_ready(c: &reqwest::blocking::Client, url: &str) {
    assert!(
        eventually(Duration::from_secs(90), || send(
            c.get(format!("{url}/readyz"))
        )
        .0 == 200),
        "the runner became ready"
    );
}

#[test]
fn a_runner_announces_its_address_with_the_token_from_the_file_once_it_listens() {
    let gateway = FakeGateway::start();
    let dir = function_dir("def calc():\n    return 1\n");
    let token = token_file(dir.path(), "token-A\n");
    let (_p, port) = start_announcing(dir.path(), &gateway.url, &token, 2);
    assert!(
        eventually(Duration::from_secs(60), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the runner listens"
    );
    let seen = gateway.announcements(1, Duration::from_secs(2));
    let expected = Announce {
        ip: IpAddr::from([127, 0, 0, 1]),
        port,
        draining: false,
    };
    assert_eq!(
        seen.first(),
        Some(&("Bearer token-A".to_string(), expected)),
        "announced within 2 s of listening"
    );
}

#[test]
fn the_identity_route_proves_the_announced_token() {
    let gateway = FakeGateway::start();
    let dir = function_dir("def calc():\n    return 1\n");
    let token = token_file(dir.path(), "token-A");
    let (_p, port) = start_announcing(dir.path(), &gateway.url, &token, 2);
    gateway.announcements(1, Duration::from_secs(60));
    let (status, body) = send(
        http()
            .post(format!("http://127.0.0.1:{port}{}", wire::IDENTITY_PATH))
            .json(&json!({"nonce": "0a1b2c"})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"proof": wire::proof("token-A", "0a1b2c")}));
}

#[test]
fn store_and_load_go_through_the_gateways_state_service() {
    let gateway = FakeGateway::start();
    gateway.seen().state.insert("preset".into(), "[7]".into());
    let dir = function_dir(
        "from skython import store, load\n\ndef calc(key: str, value=None):\n    if value is not None:\n        store(key, value)\n    return load(key)\n",
    );
    let token = token_file(dir.path(), "token-A");
    let (_p, port) = start_announcing(dir.path(), &gateway.url, &token, 2);
    let url = format!("http://127.0.0.1:{port}");
    let c = http();
    wait_ready(&c, &url);

    let (status, body) = send(
        c.post(format!("{url}/"))
            .json(&json!({"key": "k", "value": {"a": [1, 2]}})),
    );
    assert_eq!((status, body), (200, json!({"a": [1, 2]})));
    let stored: Value = serde_json::from_str(&gateway.seen().state["k"]).unwrap();
    assert_eq!(stored, json!({"a": [1, 2]}), "the gateway holds the value");
    let (status, body) = send(c.post(format!("{url}/")).json(&json!({"key": "preset"})));
    assert_eq!(
        (status, body),
        (200, json!([7])),
        "load reads the gateway's state"
    );

    std::fs::write(&token, "token-B").unwrap();
    let (status, _) = send(c.post(format!("{url}/")).json(&json!({"key": "k"})));
    assert_eq!(status, 200);
    let auth = gateway.seen().state_auth.clone();
    assert!(
        auth[..auth.len() - 1].iter().all(|a| a == "Bearer token-A"),
        "{auth:?}"
    );
    assert_eq!(
        auth.last().map(String::as_str),
        Some("Bearer token-B"),
        "the token is read again on every use (the kubelet rotates it)"
    );
}

#[test]
fn on_sigterm_the_runner_announces_draining_and_still_answers_during_the_drain_delay() {
    let gateway = FakeGateway::start();
    let dir = function_dir("def calc():\n    return 'still here'\n");
    let token = token_file(dir.path(), "token-A");
    let (mut p, port) = start_announcing(dir.path(), &gateway.url, &token, 4);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&http(), &url);

    sigterm_announces_draining(&p, &gateway);
    // A new connection, as the gateway would open.
    let (status, body) = send(http().post(format!("{url}/")));
    assert_eq!((status, body), (200, json!("still here")));
    assert!(
        eventually(Duration::from_secs(15), || matches!(
            p.0.try_wait(),
            Ok(Some(_))
        )),
        "the runner stops after the drain delay"
    );
}

#[test]
fn with_the_gateway_unreachable_load_raises_a_state_error_saying_so() {
    let (status, body) = call_with_the_gateway_unreachable(
        "from skython import load, StateError\n\ndef calc():\n    try:\n        load('k')\n    except StateError as e:\n        return str(e)\n    return 'loaded'\n",
    );
    assert_eq!(status, 200, "the pod still serves calls: {body}");
    let message = body.as_str().unwrap_or_default();
    assert!(
        message.contains("state is unavailable") && message.contains("unreachable"),
        "{body}"
    );
}

#[test]
fn with_the_gateway_unreachable_a_call_that_needs_state_answers_503_state_unavailable() {
    let (status, body) = call_with_the_gateway_unreachable(
        "from skython import load\n\ndef calc():\n    return load('k')\n",
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "state_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("the call could not use its state: ")
            && message.contains("unreachable"),
        "{body}"
    );
}

#[test]
fn a_gateway_url_without_a_pod_ip_stops_the_runner_naming_the_variable() {
    let dir = function_dir("def calc():\n    return 1\n");
    let out = runner(dir.path(), free_port())
        .env(wire::ENV_GATEWAY_URL, "http://127.0.0.1:1")
        .env_remove(wire::ENV_POD_IP)
        .output()
        .expect("run skython runner");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(wire::ENV_POD_IP), "{err}");
}

// Pool mode: `skython runner --pool standard`, specialised by signed requests.

const POD_UID: &str = "0d6f1c1e-pool-pod-1";

fn pool_key() -> wire::PoolKey {
    wire::PoolKey::from_secret(b"the test pool's secret").unwrap()
}

/// A pool runner for [`POD_UID`] checking with [`pool_key`]; it keeps `dir` for its files.
fn pool_runner(dir: &Path, port: u16) -> Command {
    let mut cmd = skython_runner(dir, port);
    cmd.args(["--pool", "standard"])
        .env(wire::ENV_POOL_PUBLIC_KEY, pool_key().public_hex())
        .env(wire::ENV_POD_UID, POD_UID);
    cmd
}

/// A running pool runner, ready (claimable).
struct PoolRunner {
    process: Process,
    url: String,
    _dir: tempfile::TempDir,
}

impl PoolRunner {
    fn start() -> PoolRunner {
        PoolRunner::start_with(|_| {})
    }

    fn start_with(more: impl FnOnce(&mut Command)) -> PoolRunner {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut cmd = pool_runner(dir.path(), port);
        more(&mut cmd);
        let child = cmd
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start skython runner --pool");
        let runner = PoolRunner {
            process: Process(child),
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        wait_ready(&http(), &runner.url);
        runner
    }

    fn get(&self, path: &str) -> (u16, Value) {
        send(http().get(format!("{}{path}", self.url)))
    }

    fn call(&self, args: &str) -> (u16, Value) {
        send(http().post(format!("{}/", self.url)).body(args.to_string()))
    }

    /// `POST wire::SPECIALISE_PATH` with `body` and the `signature` header.
    fn specialise_with(&self, body: &[u8], signature: &str) -> (u16, Value) {
        send(
            http()
                .post(format!("{}{}", self.url, wire::SPECIALISE_PATH))
                .header(wire::SIGNATURE_HEADER, signature)
                .body(body.to_vec()),
        )
    }

    /// A specialise request for `source`, naming `pod_uid`, signed with the pool key.
    fn specialise(&self, pod_uid: &str, source: &str) -> (u16, Value) {
        self.sign_and_specialise(&specialise_body(pod_uid, source))
    }

    fn sign_and_specialise(&self, body: &[u8]) -> (u16, Value) {
        self.specialise_with(body, &pool_key().sign(body))
    }
}

fn specialise_request(pod_uid: &str, source: &str) -> Value {
    json!({
        "podUid": pod_uid,
        "function": "alice/calc",
        "spec": {"owner": "alice", "endpoint": "calc", "source": source,
                 "timeoutSeconds": 5, "concurrency": 2},
    })
}

fn specialise_body(pod_uid: &str, source: &str) -> Vec<u8> {
    specialise_request(pod_uid, source).to_string().into_bytes()
}

/// A specialise request that names the entry function, as a gateway does once the operator
/// has read the source.
fn specialise_body_naming(entrypoint: &str, source: &str) -> Vec<u8> {
    let mut request = specialise_request(POD_UID, source);
    request["entrypoint"] = json!(entrypoint);
    request.to_string().into_bytes()
}

const ADD: &str = "def calc(a: int, b: int):\n    return a + b\n";

#[test]
fn a_pool_runner_is_ready_before_it_has_a_function() {
    let pool = PoolRunner::start();
    assert_eq!(pool.get("/readyz").0, 200);
    assert_eq!(pool.get("/healthz").0, 200);
}

#[test]
fn a_call_to_an_unspecialised_pool_runner_answers_503_not_specialised() {
    let pool = PoolRunner::start();
    let (status, body) = pool.call(r#"{"a": 1, "b": 2}"#);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_specialised");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("pool pod waiting for a function"),
        "{body}"
    );
}

#[test]
fn a_specialise_with_a_wrong_signature_is_401_and_the_pod_stays_claimable() {
    let pool = PoolRunner::start();
    let body = specialise_body(POD_UID, ADD);
    let other = wire::PoolKey::from_secret(b"not the pool's secret").unwrap();
    for signature in [other.sign(&body), "not hex".to_string()] {
        let (status, answer) = pool.specialise_with(&body, &signature);
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (401, json!("bad_signature"))
        );
    }
    assert_eq!(pool.get("/readyz").0, 200, "still claimable");
    let (status, answer) = pool.specialise(POD_UID, ADD);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_specialise_naming_another_pod_is_403() {
    let pool = PoolRunner::start();
    let (status, body) = pool.specialise("another-pods-uid", ADD);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    assert_eq!(pool.get("/readyz").0, 200, "still claimable");
}

#[test]
fn a_signed_specialise_answers_200_and_then_the_pod_serves_the_function() {
    let pool = PoolRunner::start();
    let (status, body) = pool.specialise(POD_UID, ADD);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["function"], "alice/calc");
    assert!(body["specialiseMs"].is_u64(), "{body}");
    eprintln!("specialised in {} ms", body["specialiseMs"]);
    assert_eq!(pool.get("/readyz"), (200, json!("ready")));
    assert_eq!(pool.call(r#"{"a": 1, "b": 2}"#), (200, json!(3)));
    let metrics = metrics_of(&pool.url);
    assert!(
        metrics.contains(r#"skython_calls_total{function="alice/calc",outcome="ok"} 1"#),
        "{metrics}"
    );
}

#[test]
fn a_specialise_naming_the_entry_function_serves_it_without_reading_the_source_again() {
    let pool = PoolRunner::start();
    // Two public functions and no `entrypoint` in the spec: the pod's own reading of the
    // source would refuse it as ambiguous, so a 200 shows the request's name was used.
    let source = "def calc(a: int, b: int):\n    return a + b\n\n\
                  def double(a: int, b: int):\n    return 2 * (a + b)\n";
    let (status, body) = pool.sign_and_specialise(&specialise_body_naming("double", source));
    assert_eq!(status, 200, "{body}");
    assert_eq!(pool.call(r#"{"a": 1, "b": 2}"#), (200, json!(6)));
}

#[test]
fn a_specialise_naming_an_entry_function_the_source_lacks_answers_422_load_error() {
    let pool = PoolRunner::start();
    let (status, body) = pool.sign_and_specialise(&specialise_body_naming("nowhere", ADD));
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (422, json!("load_error"))
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("nowhere"), "{body}");
    assert_eq!(pool.get("/readyz").0, 503, "never claimable again");
}

#[test]
fn a_second_specialise_is_409() {
    let pool = PoolRunner::start();
    assert_eq!(pool.specialise(POD_UID, ADD).0, 200);
    let other = "def calc():\n    return 'another function'\n";
    let (status, body) = pool.specialise(POD_UID, other);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("already_specialised"))
    );
    assert_eq!(
        pool.call(r#"{"a": 2, "b": 2}"#),
        (200, json!(4)),
        "still the first"
    );
}

#[test]
fn a_function_that_fails_to_import_answers_422_and_the_pod_is_never_claimable_again() {
    let pool = PoolRunner::start();
    let broken = "import no_such_module_here\n\ndef calc():\n    return 1\n";
    let (status, body) = pool.specialise(POD_UID, broken);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (422, json!("load_error"))
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no_such_module_here"), "{body}");

    let (status, body) = pool.get("/readyz");
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (503, json!("load_error"))
    );
    let (status, body) = pool.specialise(POD_UID, ADD);
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("already_specialised"))
    );
}

#[test]
fn an_unspecialised_pool_runner_exits_promptly_on_sigterm() {
    let mut pool = PoolRunner::start();
    stops_cleanly_within(&mut pool.process, Duration::from_secs(2));
}

/// SIGTERM: the process exits 0 (its own handler, not the signal's default) within `limit`.
fn stops_cleanly_within(process: &mut Process, limit: Duration) {
    let asked = std::time::Instant::now();
    assert_eq!(process.terminate(), Some(0), "stopped by its own handler");
    assert!(asked.elapsed() < limit, "took {:?}", asked.elapsed());
}

/// A pod deleted as it starts: the runtime's imports take seconds on a small CPU limit, and a
/// container's first process that does not handle SIGTERM yet ignores it, holding the kubelet
/// for the pod's whole grace period.
#[test]
fn a_runner_stopped_while_its_runtime_starts_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::write(
        runtime.join("slowstart.py"),
        "import time\ntime.sleep(60)\n",
    )
    .unwrap();
    let mut cmd = pool_runner(dir.path(), free_port());
    cmd.args(["--preload", "slowstart"])
        .stderr(Stdio::inherit());
    let mut runner = Process(cmd.spawn().expect("start skython runner --pool"));
    std::thread::sleep(Duration::from_secs(1));
    stops_cleanly_within(&mut runner, Duration::from_secs(3));
}

#[test]
fn a_pool_runner_announces_itself_only_once_specialised() {
    let gateway = FakeGateway::start();
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path(), "token-A");
    let pool = PoolRunner::start_with(|cmd| {
        cmd.env(wire::ENV_GATEWAY_URL, &gateway.url)
            .env(wire::ENV_POD_IP, "127.0.0.1")
            .env(wire::ENV_TOKEN_FILE, &token);
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        gateway.seen().announcements.is_empty(),
        "an unclaimed pool pod can reach nothing, and tries nothing"
    );
    assert_eq!(pool.specialise(POD_UID, ADD).0, 200);
    let seen = gateway.announcements(1, Duration::from_secs(2));
    let port: u16 = pool.url.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        seen.first()
            .map(|(auth, a)| (auth.as_str(), a.port, a.draining)),
        Some(("Bearer token-A", port, false))
    );
}

#[test]
fn on_sigterm_a_specialised_pool_runner_drains_like_a_functions_pod() {
    let gateway = FakeGateway::start();
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path(), "token-A");
    let mut pool = PoolRunner::start_with(|cmd| {
        cmd.env(wire::ENV_GATEWAY_URL, &gateway.url)
            .env(wire::ENV_POD_IP, "127.0.0.1")
            .env(wire::ENV_TOKEN_FILE, &token)
            .env("SKYTHON_DRAIN_DELAY_SECS", "4");
    });
    assert_eq!(pool.specialise(POD_UID, ADD).0, 200);
    gateway.announcements(1, Duration::from_secs(2));

    sigterm_announces_draining(&pool.process, &gateway);
    assert_eq!(
        pool.call(r#"{"a": 1, "b": 1}"#),
        (200, json!(2)),
        "still serving"
    );
    assert!(
        eventually(Duration::from_secs(15), || matches!(
            pool.process.0.try_wait(),
            Ok(Some(_))
        )),
        "the runner stops after the drain delay"
    );
}

#[test]
fn a_pool_runner_without_the_pool_key_stops_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for key in [None, Some("abc")] {
        let mut cmd = pool_runner(dir.path(), free_port());
        match key {
            None => cmd.env_remove(wire::ENV_POOL_PUBLIC_KEY),
            Some(key) => cmd.env(wire::ENV_POOL_PUBLIC_KEY, key),
        };
        let out = cmd.output().expect("run skython runner --pool");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(wire::ENV_POOL_PUBLIC_KEY), "{key:?}: {err}");
    }
}

/// A runner's `/metrics` text.
fn metrics_of(url: &str) -> String {
    http()
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// Sends SIGTERM to `process` and sees it announce that it drains, at once.
fn sigterm_announces_draining(process: &Process, gateway: &FakeGateway) {
    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        eventually(Duration::from_secs(2), || gateway
            .seen()
            .announcements
            .iter()
            .any(|(_, a)| a.draining)),
        "announced draining at once"
    );
}
