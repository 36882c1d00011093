//! One Python worker process: a loaded function that serves calls over its own socket.

use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::BufReader;
use tokio::net::UnixStream;

use crate::protocol::{self, FunctionError, Ready, StateAnswer, StateRequest, kind};
use crate::{Error, Result};

/// Answers a worker's `store`/`load` requests. The implementation knows which (owner, function)
/// the worker serves; the worker cannot choose.
#[async_trait]
pub trait StateHandler: Send + Sync {
    async fn handle(&self, request: StateRequest) -> StateAnswer;
}

/// How a call that reached the function ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The return value as JSON.
    Returned(Bytes),
    /// The function raised, the arguments did not fit, or the value could not be encoded.
    Failed(FunctionError),
}

#[derive(Debug, Clone)]
pub struct CallResult {
    pub outcome: Outcome,
    /// What the call printed (and the traceback if it raised).
    pub logs: String,
}

pub struct Worker {
    pid: i32,
    io: BufReader<UnixStream>,
    max_frame: usize,
    pub(crate) idle_since: Instant,
}

impl Worker {
    pub(crate) fn new(pid: i32, stream: UnixStream, max_result_bytes: usize) -> Self {
        Worker {
            pid,
            io: BufReader::with_capacity(64 * 1024, stream),
            // Results are checked by the worker; the slack covers framing and error payloads.
            max_frame: max_result_bytes + (1 << 20),
            idle_since: Instant::now(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Lets a started worker go on to load its function.
    pub(crate) async fn go(&mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let hdr = protocol::header(kind::GO, 0);
        self.io.get_mut().write_all(&hdr).await?;
        Ok(())
    }

    async fn loading_frame(&mut self) -> Result<(u8, Vec<u8>)> {
        protocol::read_frame(&mut self.io, self.max_frame)
            .await
            .map_err(|e| Error::Spawn(format!("worker {} exited while loading: {e}", self.pid)))
    }

    pub(crate) async fn wait_ready(&mut self) -> Result<()> {
        let (mut k, mut payload) = self.loading_frame().await?;
        if k == kind::STARTED {
            (k, payload) = self.loading_frame().await?;
        }
        match k {
            kind::READY => {
                let ready: Ready = serde_json::from_slice(&payload)?;
                tracing::debug!(pid = ready.pid, load_ms = ready.load_ms, "worker ready");
                if !ready.logs.is_empty() {
                    tracing::debug!(pid = ready.pid, "output while loading: {}", ready.logs);
                }
                Ok(())
            }
            kind::LOAD_ERROR => Err(Error::Load(serde_json::from_slice(&payload)?)),
            other => Err(Error::Protocol(format!(
                "expected ready, got {:?}",
                other as char
            ))),
        }
    }

    /// Runs one call. An `Err` means the worker is unusable (crashed or spoke nonsense) and must
    /// be dropped; the function's own failures are an `Ok(Outcome::Failed)`.
    pub async fn call(&mut self, args: &[u8], state: &dyn StateHandler) -> Result<CallResult> {
        protocol::write_frame(self.io.get_mut(), kind::CALL, args)
            .await
            .map_err(|e| self.crashed(e))?;
        let mut logs = String::new();
        loop {
            let (k, payload) = protocol::read_frame(&mut self.io, self.max_frame)
                .await
                .map_err(|e| self.crashed(e))?;
            match k {
                kind::LOG => logs.push_str(&String::from_utf8_lossy(&payload)),
                kind::STATE_REQ => {
                    let answer = match serde_json::from_slice::<StateRequest>(&payload) {
                        Ok(req) => state.handle(req).await,
                        Err(e) => {
                            StateAnswer::refused("bad_request", format!("bad state request: {e}"))
                        }
                    };
                    protocol::write_frame(
                        self.io.get_mut(),
                        kind::STATE_ANS,
                        &serde_json::to_vec(&answer)?,
                    )
                    .await
                    .map_err(|e| self.crashed(e))?;
                }
                kind::OK => {
                    return Ok(CallResult {
                        outcome: Outcome::Returned(Bytes::from(payload)),
                        logs,
                    });
                }
                kind::ERROR => {
                    return Ok(CallResult {
                        outcome: Outcome::Failed(serde_json::from_slice(&payload)?),
                        logs,
                    });
                }
                other => {
                    return Err(Error::Protocol(format!(
                        "unexpected frame {:?} during a call",
                        other as char
                    )));
                }
            }
        }
    }

    fn crashed(&self, e: std::io::Error) -> Error {
        Error::Crashed(format!("worker {} stopped during the call ({e})", self.pid))
    }

    /// True if the worker closed its socket (it died while idle) or sent something unasked.
    pub(crate) fn is_gone(&self) -> bool {
        let mut buf = [0u8; 1];
        !matches!(self.io.get_ref().try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Kills the worker and everything it started (its process group).
    pub fn kill(&self) {
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the socket makes an idle worker exit; the kill covers a busy one.
        self.kill();
    }
}
