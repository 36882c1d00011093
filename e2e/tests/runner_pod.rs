//! `skython runner`, the process of a runner pod, over real HTTP with real Python workers: what
//! the operator's Deployments run, tested here without a cluster.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use skython_e2e::{Process, eventually, free_port, skython_bin};

/// Writes the two files the operator's ConfigMap holds.
fn function_dir(source: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = json!({"owner": "alice", "endpoint": "calc", "source": "ignored: source.py wins",
                      "timeoutSeconds": 5, "concurrency": 2});
    std::fs::write(dir.path().join("function.json"), spec.to_string()).unwrap();
    std::fs::write(dir.path().join("source.py"), source).unwrap();
    dir
}

fn runner(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(skython_bin());
    cmd.args(["runner", "--function-dir"])
        .arg(dir)
        .args(["--port", &port.to_string(), "--runtime-dir"])
        .arg(dir.join("runtime"))
        .env("SKYTHON_LOG", "warn");
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

    let metrics = c
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(r#"skython_calls_total{function="alice/calc",outcome="ok"} 2"#),
        "{metrics}"
    );
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
