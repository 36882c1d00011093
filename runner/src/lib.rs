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
pub use protocol::{Caller, FunctionError, Hello, StateAnswer, StateRequest, WorkerSpec};
pub use sandbox::Sandbox;
pub use worker::{CallResult, Outcome, StateCache, StateHandler, StatePeer, StateTicket, Worker};
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
    /// The kernel killed the worker (or a process of its) for using more than its memory limit.
    #[error("{0}")]
    OutOfMemory(String),
    /// The worker broke the protocol or its limits (e.g. user code wrote frames to the worker's
    /// socket); it was killed.
    #[error("{0}")]
    Misbehaved(String),
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
        "skython_runtime/state_cache.py",
        include_str!("../python/skython_runtime/state_cache.py"),
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
        // glibc reserves 64 MiB of address space per thread arena (up to 8 per core): libraries
        // that start thread pools (TensorFlow) would need gigabytes of address space for a few
        // MiB of memory, past any `RLIMIT_AS`. Two arenas serve single-threaded workers as well.
        ("MALLOC_ARENA_MAX".into(), "2".into()),
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
pub(crate) fn pass_fds(
    cmd: &mut tokio::process::Command,
    fds: Vec<(OwnedFd, i32)>,
) -> std::io::Result<()> {
    // Everything is prepared here, before the fork: the child of a multithreaded process may
    // only make async-signal-safe calls (no allocation: another thread may hold the allocator's
    // lock). Each source is first copied to a high, close-on-exec number, above every target,
    // so that no dup2 in the child clobbers a source it still needs.
    let high = fds
        .into_iter()
        .map(|(fd, target)| {
            let copy = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100))?;
            // SAFETY: fcntl just returned this new descriptor, owned by nothing else.
            Ok((
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) },
                target,
            ))
        })
        .collect::<std::io::Result<Vec<(OwnedFd, i32)>>>()?;
    // SAFETY: between fork and exec the closure only calls dup2, which is async-signal-safe,
    // and allocates nothing. The descriptors stay open in the parent until the Command is
    // dropped because the closure owns them.
    unsafe {
        cmd.pre_exec(move || {
            for (fd, target) in &high {
                // dup2 clears close-on-exec on the target; the high copy closes at exec.
                let target_fd = nix::unistd::dup2_raw(fd, *target)?;
                let _ = std::os::fd::IntoRawFd::into_raw_fd(target_fd);
            }
            Ok(())
        });
    }
    Ok(())
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
