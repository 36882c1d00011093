//! The zygote: one long-lived Python process per runtime that has imported the runtime libraries
//! and forks a worker per request. This is the single place where workers are spawned, which the
//! sandbox wraps.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::Deserialize;
use skython_crds::Signature;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::protocol::{self, FunctionError, Hello, WorkerSpec, kind};
use crate::worker::Worker;
use crate::{Error, Result};

/// Largest control answer we accept (an inspect answer for a large source).
const MAX_CONTROL_FRAME: usize = 4 << 20;
/// The zygote imports numpy, pandas and scipy before saying hello.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start a runtime's zygote.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The Python interpreter (normally the runtime virtualenv's).
    pub python: PathBuf,
    /// Where the runtime's Python files are written (see [`crate::install_python_files`]).
    pub python_path: PathBuf,
    /// Modules the zygote imports before forking; `None` means the default list.
    pub preload: Option<String>,
    /// Working directory of the zygote and its workers.
    pub workdir: PathBuf,
}

struct Running {
    child: Child,
    ctl: UnixStream,
    hello: Hello,
}

/// The result of inspecting a source without running it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Inspection {
    Ok { signature: Signature },
    Invalid { error: SourceError },
}

/// Why a source cannot be deployed: a syntax error or no clear entry function.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct SourceError {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<String>>,
}

pub struct Zygote {
    config: RuntimeConfig,
    running: Mutex<Option<Running>>,
}

impl Zygote {
    pub fn new(config: RuntimeConfig) -> Self {
        Zygote {
            config,
            running: Mutex::new(None),
        }
    }

    /// Starts the zygote if it is not running, and says what it loaded.
    pub async fn start(&self) -> Result<Hello> {
        let mut guard = self.running.lock().await;
        Ok(self.ensure(&mut guard).await?.hello.clone())
    }

    async fn ensure<'a>(&self, slot: &'a mut Option<Running>) -> Result<&'a mut Running> {
        let alive = slot
            .as_mut()
            .is_some_and(|r| matches!(r.child.try_wait(), Ok(None)));
        if !alive {
            *slot = Some(self.launch().await?);
        }
        slot.as_mut()
            .ok_or_else(|| Error::Protocol("the zygote vanished".into()))
    }

    async fn launch(&self) -> Result<Running> {
        let cfg = &self.config;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let theirs = OwnedFd::from(theirs);
        let mut cmd = Command::new(&cfg.python);
        cmd.arg("-m")
            .arg("skython_runtime")
            .current_dir(&cfg.workdir)
            .env_clear()
            .envs(crate::base_env(&cfg.python_path))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(p) = &cfg.preload {
            cmd.env("SKYTHON_PRELOAD", p);
        }
        crate::pass_fd_as_3(&mut cmd, theirs);
        let child = cmd.spawn().map_err(|e| Error::Start {
            python: cfg.python.display().to_string(),
            reason: e.to_string(),
        })?;
        // The Command holds the child's end of the socket; drop it so a dying zygote means EOF.
        drop(cmd);
        ours.set_nonblocking(true)?;
        let mut ctl = UnixStream::from_std(ours)?;
        let (k, payload) = tokio::time::timeout(
            START_TIMEOUT,
            protocol::read_frame(&mut ctl, MAX_CONTROL_FRAME),
        )
        .await
        .map_err(|_| Error::Start {
            python: cfg.python.display().to_string(),
            reason: format!("no hello within {START_TIMEOUT:?}"),
        })?
        .map_err(|e| Error::Start {
            python: cfg.python.display().to_string(),
            reason: format!("it exited before saying hello ({e}); see its stderr above"),
        })?;
        if k != kind::HELLO {
            return Err(Error::Protocol(format!(
                "expected hello, got frame {:?}",
                k as char
            )));
        }
        let hello: Hello = serde_json::from_slice(&payload)?;
        tracing::info!(
            pid = hello.pid,
            python = %hello.python,
            preloaded = ?hello.preloaded,
            start_ms = hello.start_ms,
            "python zygote ready"
        );
        for m in &hello.missing {
            tracing::warn!("runtime library not importable: {m}");
        }
        Ok(Running { child, ctl, hello })
    }

    /// One request/answer on the control channel; a broken channel drops the zygote so the next
    /// request starts a fresh one.
    async fn request(&self, k: u8, payload: &[u8], fd: Option<&OwnedFd>) -> Result<(u8, Vec<u8>)> {
        let mut guard = self.running.lock().await;
        let running = self.ensure(&mut guard).await?;
        let res = exchange(&mut running.ctl, k, payload, fd).await;
        if res.is_err()
            && let Some(mut r) = guard.take()
        {
            let _ = r.child.start_kill();
        }
        res
    }

    /// Checks a source's syntax and finds its entry function, without running it.
    pub async fn inspect(
        &self,
        source: &str,
        filename: &str,
        entrypoint: Option<&str>,
    ) -> Result<Inspection> {
        let req =
            serde_json::json!({"source": source, "filename": filename, "entrypoint": entrypoint});
        let (k, payload) = self
            .request(kind::INSPECT, &serde_json::to_vec(&req)?, None)
            .await?;
        if k != kind::INSPECT {
            return Err(Error::Protocol(format!(
                "expected an inspect answer, got {:?}",
                k as char
            )));
        }
        Ok(serde_json::from_slice(&payload)?)
    }

    /// Forks a worker for `spec` and waits until it has loaded the function.
    pub async fn spawn(&self, spec: &WorkerSpec, load_timeout: Duration) -> Result<Worker> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let theirs = OwnedFd::from(theirs);
        let (k, payload) = self
            .request(kind::SPAWN, &serde_json::to_vec(spec)?, Some(&theirs))
            .await?;
        drop(theirs);
        match k {
            kind::SPAWNED => {}
            kind::SPAWN_FAILED => {
                let v: serde_json::Value = serde_json::from_slice(&payload)?;
                return Err(Error::Spawn(
                    v["message"].as_str().unwrap_or("unknown").into(),
                ));
            }
            other => {
                return Err(Error::Protocol(format!(
                    "expected spawned, got {:?}",
                    other as char
                )));
            }
        }
        #[derive(Deserialize)]
        struct Spawned {
            pid: i32,
        }
        let Spawned { pid } = serde_json::from_slice(&payload)?;
        ours.set_nonblocking(true)?;
        let mut worker = Worker::new(pid, UnixStream::from_std(ours)?, spec.max_result_bytes);
        match tokio::time::timeout(load_timeout, worker.wait_ready()).await {
            Ok(Ok(())) => Ok(worker),
            Ok(Err(e)) => {
                worker.kill();
                Err(e)
            }
            Err(_) => {
                worker.kill();
                Err(Error::Load(FunctionError {
                    code: "load_timeout".into(),
                    type_: None,
                    message: format!(
                        "loading the function took longer than its timeout of {load_timeout:?}"
                    ),
                    traceback: None,
                    expected: None,
                    logs: None,
                }))
            }
        }
    }
}

/// Sends one frame (with an optional descriptor) and reads the answer.
async fn exchange(
    ctl: &mut UnixStream,
    k: u8,
    payload: &[u8],
    fd: Option<&OwnedFd>,
) -> Result<(u8, Vec<u8>)> {
    let hdr = protocol::header(k, payload.len());
    let sent = match fd {
        Some(fd) => {
            let raw = [fd.as_raw_fd()];
            loop {
                ctl.writable().await?;
                let res = ctl.try_io(Interest::WRITABLE, || {
                    let iov = [IoSlice::new(&hdr), IoSlice::new(payload)];
                    let cmsg = [ControlMessage::ScmRights(&raw)];
                    sendmsg::<()>(ctl.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                        .map_err(std::io::Error::from)
                });
                match res {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        None => 0,
    };
    // Whatever sendmsg did not take (or everything, without a descriptor) goes as plain bytes.
    let mut rest = Vec::with_capacity(hdr.len() + payload.len());
    rest.extend_from_slice(&hdr);
    rest.extend_from_slice(payload);
    ctl.write_all(&rest[sent.min(rest.len())..]).await?;
    Ok(protocol::read_frame(ctl, MAX_CONTROL_FRAME).await?)
}
