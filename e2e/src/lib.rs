//! Harness for the end-to-end tests: starts the real `skython up` binary on a free port with a
//! temporary data directory and the runtime virtualenv, and talks to it over real HTTP.
//!
//! The binary is `$SKYTHON_BIN` (the Makefile sets it), else `skython` next to the test
//! executable's `deps/` directory. The Python is `$SKYTHON_PYTHON`, else the default of `up`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

pub mod cluster;
pub mod helm;
pub mod mongo;
pub mod people;

pub const TOKEN: &str = "sky_e2e_admin_token";

/// The checkout under test, found at run time (cargo runs tests with `CARGO_MANIFEST_DIR` set):
/// a build reused from another checkout would carry that checkout's path in `env!`.
pub fn repo_root() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test");
    Path::new(&dir).join("..")
}

/// Something `make` builds into the cache: `$ENV`, else `~/.cache/skython/RELATIVE`. A test
/// without it fails saying `how` to get it.
pub fn cached(env: &str, relative: &str, how: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/skython")
            .join(relative)
    });
    assert!(path.exists(), "{} is missing: {how}", path.display());
    path
}

pub fn skython_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("SKYTHON_BIN") {
        return b.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("skython"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p skython-cli` (or `make test`)",
        bin.display()
    );
    bin
}

pub struct Skython {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    http: reqwest::blocking::Client,
}

impl Skython {
    /// A fresh instance with its own data directory.
    pub fn start(extra: &[&str]) -> Skython {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Skython::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// An instance on an existing data directory (for restarts).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Skython {
        let mut cmd = Command::new(skython_bin());
        cmd.args(["up", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("SKYTHON_ADMIN_TOKEN", TOKEN);
        Skython::start_with(cmd, data_dir)
    }

    /// Runs a prepared `skython up` command and waits for its URL.
    pub fn start_with(mut cmd: Command, data_dir: &Path) -> Skython {
        // `make test` sets it for the tests that want the full runtime (they pass it as a
        // flag); every other server would preload TensorFlow for nothing.
        cmd.env_remove("SKYTHON_PYTHON_FULL");
        // Quiet by default; `SKYTHON_E2E_LOG=info,skython_cluster=debug` to see a server's story.
        cmd.env(
            "SKYTHON_LOG",
            std::env::var("SKYTHON_E2E_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start skython up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("Skython is running at ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("skython up did not print its URL within 120 s (see stderr above)");
            }
        };
        Skython {
            child: Some(child),
            url,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
        }
    }

    /// A server this test did not start (e.g. a gateway installed on the cluster), whose admin
    /// token is [`TOKEN`].
    pub fn attach(url: &str) -> Skython {
        Skython {
            child: None,
            url: url.trim_end_matches('/').to_string(),
            data_dir: PathBuf::new(),
            _tmp: None,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
        }
    }

    /// Stops the server (SIGTERM, then waits).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            for _ in 0..150 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> (u16, Value) {
        let resp = req.send().expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req)
    }

    /// POST /api/v1/functions with the given spec fields; `access` is `public` unless given,
    /// so tests call endpoints without a key (tests of access set it).
    pub fn deploy(&self, mut spec: Value) -> (u16, Value) {
        if let Some(m) = spec.as_object_mut() {
            m.entry("access").or_insert_with(|| "public".into());
        }
        self.api(reqwest::Method::POST, "/functions", Some(spec))
    }

    /// Deploys `source` as admin/`endpoint` and asserts it became ready.
    pub fn deploy_ok(&self, endpoint: &str, source: &str, more: Value) -> Value {
        let mut spec = json!({"endpoint": endpoint, "source": source});
        if let Value::Object(m) = more {
            spec.as_object_mut().expect("object").extend(m);
        }
        let (status, body) = self.deploy(spec);
        assert_eq!(status, 201, "deploy {endpoint}: {body}");
        assert_eq!(body["status"]["conditions"][0]["status"], "True", "{body}");
        body
    }

    /// POST /fn/{name} with a raw body.
    pub fn call_raw(&self, name: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, Value) {
        self.send(self.http.post(format!("{}/fn/{name}", self.url)).body(body))
    }

    pub fn call(&self, name: &str, args: Value) -> (u16, Value) {
        self.call_raw(name, args.to_string())
    }

    /// A GET that may find nothing listening: `None` then.
    pub fn try_get(&self, path: &str) -> Option<(u16, String)> {
        let resp = self.http.get(format!("{}{path}", self.url)).send().ok()?;
        Some((resp.status().as_u16(), resp.text().unwrap_or_default()))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .expect("request");
        (resp.status().as_u16(), resp.text().expect("body"))
    }

    /// `/metrics` as the admin reads it (it needs the admin's or the metrics token).
    pub fn metrics(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(TOKEN)
            .send()
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200, "/metrics with the admin token");
        resp.text().expect("body")
    }

    /// The value of one Prometheus sample, e.g. `skython_workers{function="admin/f"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.metrics();
        text.lines().find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }
}

impl Drop for Skython {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// A port that was free a moment ago (for processes that take a fixed port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed when the test ends, however it ends.
pub struct Process(pub Child);

impl Process {
    /// SIGTERM, then up to 15 s for a clean exit; the exit code (`None`: killed).
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        for _ in 0..150 {
            if let Ok(Some(st)) = self.0.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
