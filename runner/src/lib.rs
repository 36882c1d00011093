//! The Python runtime of Skython.
//!
//! ```text
//!  gateway ──control socket──▶ Zygote (python -m skython_runtime: numpy, pandas, … imported once)
//!     │                           │ fork per worker
//!     └──── worker socket ──────▶ Worker (one function's module loaded; serves calls one at a time)
//! ```
//!
//! [`Zygote`] is the single place where workers are spawned. [`WorkerPool`] keeps the warm workers
//! of one function version: it grows with concurrent calls up to its limit, queues a bounded number
//! of callers, replaces workers that crash or time out, and stops idle ones. The local gateway
//! uses it in-process; the runner pod uses the same pool. The wire format is in `PROTOCOL.md`.

#![deny(unsafe_code)]

pub mod cgroup;
pub mod egress;
pub mod pool;
pub mod protocol;
pub mod sandbox;
pub mod worker;
pub mod zygote;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

pub use pool::{CallReport, PoolLimits, WorkerPool, run_once};
pub use protocol::{FunctionError, Hello, StateAnswer, StateRequest, WorkerSpec};
pub use sandbox::Sandbox;
pub use worker::{CallResult, Outcome, StateHandler, Worker};
pub use zygote::{Inspection, RuntimeConfig, SourceError, Zygote};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not start the Python runtime {python}: {reason}")]
    Start { python: String, reason: String },
    #[error("the Python runtime broke the protocol: {0}")]
    Protocol(String),
    #[error("starting a worker failed: {0}")]
    Spawn(String),
    /// The zygote could not inspect a source (not a verdict on the source: e.g. fork failed).
    #[error("inspecting the source failed: {0}")]
    Inspect(String),
    #[error("{}", .0.message)]
    Load(FunctionError),
    #[error("{0}")]
    Crashed(String),
    #[error("the function did not return within {0:?}")]
    Timeout(Duration),
    #[error("all {workers} workers are busy and {queue} calls are already waiting")]
    QueueFull { workers: usize, queue: usize },
    #[error("no worker became free within {0:?}")]
    QueueTimeout(Duration),
    #[error("the function was replaced while the call waited")]
    Retired,
    #[error("worker I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad message from the Python runtime: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The runtime package (`python -m skython_runtime`) and the `skython` library, by path under
/// the zygote's import path.
const PYTHON_FILES: &[(&str, &str)] = &[
    (
        "skython_runtime/__init__.py",
        include_str!("../python/skython_runtime/__init__.py"),
    ),
    (
        "skython_runtime/__main__.py",
        include_str!("../python/skython_runtime/__main__.py"),
    ),
    (
        "skython_runtime/codec.py",
        include_str!("../python/skython_runtime/codec.py"),
    ),
    (
        "skython_runtime/inspection.py",
        include_str!("../python/skython_runtime/inspection.py"),
    ),
    (
        "skython_runtime/isolation.py",
        include_str!("../python/skython_runtime/isolation.py"),
    ),
    (
        "skython_runtime/protocol.py",
        include_str!("../python/skython_runtime/protocol.py"),
    ),
    (
        "skython_runtime/relay.py",
        include_str!("../python/skython_runtime/relay.py"),
    ),
    (
        "skython_runtime/worker.py",
        include_str!("../python/skython_runtime/worker.py"),
    ),
    (
        "skython_runtime/zygote.py",
        include_str!("../python/skython_runtime/zygote.py"),
    ),
    (
        "skython/__init__.py",
        include_str!("../python/skython/__init__.py"),
    ),
];

/// The single-module runtime of earlier versions, removed from the directories they wrote to.
const OLD_RUNTIME_MODULE: &str = "skython_runtime.py";

/// Writes the runtime's Python files into `dir` (the zygote's import path), replacing older ones.
pub fn install_python_files(dir: &Path) -> std::io::Result<()> {
    for (path, content) in PYTHON_FILES {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        write_if_changed(&path, content)?;
    }
    match std::fs::remove_file(dir.join(OLD_RUNTIME_MODULE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn write_if_changed(path: &Path, content: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(tmp, path)
}

/// The zygote's whole environment: nothing of the gateway's (which may hold secrets) leaks in.
pub(crate) fn base_env(python_path: &Path) -> Vec<(String, String)> {
    let mut env = vec![
        ("PYTHONPATH".into(), python_path.display().to_string()),
        ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ("PYTHONUNBUFFERED".into(), "1".into()),
        // Many workers share the machine's cores: one BLAS thread each avoids oversubscription.
        ("OPENBLAS_NUM_THREADS".into(), "1".into()),
        ("OMP_NUM_THREADS".into(), "1".into()),
        ("MKL_NUM_THREADS".into(), "1".into()),
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    // Machine-specific settings that numpy needs to run correctly here (see the machine notes).
    for key in [
        "OPENBLAS_CORETYPE",
        "OPENBLAS_L2_SIZE",
        "TZ",
        // The machine's trust store (functions' HTTPS through the egress proxy).
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
    ] {
        if let Ok(v) = std::env::var(key) {
            env.push((key.into(), v));
        }
    }
    env
}

/// Gives the child each descriptor at its fixed number (e.g. the zygote's control socket as 3).
#[allow(unsafe_code)]
pub(crate) fn pass_fds(cmd: &mut tokio::process::Command, fds: Vec<(OwnedFd, i32)>) {
    // Everything the child needs is allocated here, before the fork: the gateway has other
    // threads, one of which may hold the allocator's lock at the moment of the fork.
    let mut moved: Vec<(std::os::fd::RawFd, i32)> = Vec::with_capacity(fds.len());
    // SAFETY: between fork and exec the closure only calls fcntl/dup2, which are
    // async-signal-safe, and pushes into `moved` within its capacity (no allocation); it
    // touches no memory shared with other threads. The descriptors stay open in the parent until
    // the Command is dropped because the closure owns them.
    unsafe {
        cmd.pre_exec(move || {
            // First move every source above the targets, so no dup2 clobbers a later source.
            moved.clear();
            for (fd, target) in &fds {
                let high = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))?;
                moved.push((high, *target));
            }
            for &(high, target) in &moved {
                // dup2 clears close-on-exec on the target; the high copy closes at exec.
                let high = std::os::fd::BorrowedFd::borrow_raw(high);
                let _ = std::os::fd::IntoRawFd::into_raw_fd(nix::unistd::dup2_raw(high, target)?);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every Python file of the runtime is installed: a module left out would fail only at
    /// import time, in the zygote.
    #[test]
    fn every_python_file_is_installed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
        let mut on_disk = vec![];
        for dir in ["skython_runtime", "skython"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                if name.ends_with(".py") {
                    on_disk.push(format!("{dir}/{name}"));
                }
            }
        }
        on_disk.sort();
        let mut listed: Vec<String> = PYTHON_FILES.iter().map(|(p, _)| p.to_string()).collect();
        listed.sort();
        assert_eq!(listed, on_disk);
    }

    #[test]
    fn installing_writes_the_package_and_removes_the_old_module() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(OLD_RUNTIME_MODULE), "old").unwrap();
        install_python_files(dir.path()).unwrap();
        assert!(!dir.path().join(OLD_RUNTIME_MODULE).exists());
        for (path, content) in PYTHON_FILES {
            assert_eq!(
                std::fs::read_to_string(dir.path().join(path)).unwrap(),
                *content
            );
        }
        // Again, over its own files: nothing to change, nothing fails.
        install_python_files(dir.path()).unwrap();
    }
}
