//! MongoDB for the tests: the server `make test` starts (`SKYTHON_MONGODB_URL`), a fresh
//! database on it per test, and SecantusDB servers of a test's own (`SKYTHON_SECANTUSD`) for
//! tests that stop and restart theirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Process, free_port};

/// The shared test server's URL (no database).
pub fn server_url() -> String {
    std::env::var("SKYTHON_MONGODB_URL").expect(
        "SKYTHON_MONGODB_URL is not set: these tests need a MongoDB-wire server (`make test` \
         starts one; by hand: `make mongo-start`, then \
         SKYTHON_MONGODB_URL=mongodb://127.0.0.1:27099/?directConnection=true)",
    )
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a mongodb:// URL");
    let (hosts, tail) = rest.split_once('/').unwrap_or((rest, ""));
    match tail.split_once('?').map(|(_, o)| o) {
        Some(o) => format!("{scheme}://{hosts}/{database}?{o}"),
        None => format!("{scheme}://{hosts}/{database}"),
    }
}

/// A database name no other test (in this run or an earlier one) uses.
pub fn fresh_database() -> String {
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

/// A fresh database on the shared test server.
pub fn fresh_database_url() -> String {
    with_database(&server_url(), &fresh_database())
}

/// A SecantusDB server of the test's own on a fixed port and storage, so that it can be
/// stopped and started again as the same server; killed when dropped.
pub struct SecantusServer {
    pub port: u16,
    storage: PathBuf,
    process: Option<Process>,
}

impl SecantusServer {
    /// Starts one on a free port with its storage in `storage` (it does not wait for it to
    /// answer: clients retry until it does).
    pub fn start(storage: &Path) -> SecantusServer {
        let mut s = SecantusServer {
            port: free_port(),
            storage: storage.to_path_buf(),
            process: None,
        };
        s.resume();
        s
    }

    /// `mongodb://127.0.0.1:PORT/DATABASE?directConnection=true`
    pub fn url(&self, database: &str) -> String {
        format!(
            "mongodb://127.0.0.1:{}/{database}?directConnection=true",
            self.port
        )
    }

    /// Stops it as an operator would (SIGTERM) and waits until it has.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn resume(&mut self) {
        let bin = std::env::var("SKYTHON_SECANTUSD").expect(
            "SKYTHON_SECANTUSD is not set: it names the secantusd-py that `make venv-mongo` \
             installs (~/.cache/skython/venv-mongo/bin/secantusd-py)",
        );
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(&self.storage)
            .args(["--log-level", "WARNING"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        self.process = Some(Process(child));
    }
}
