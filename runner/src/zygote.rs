//! The zygote: one long-lived Python process per runtime that has imported the runtime libraries
//! and forks a worker per request. This is the single place where workers are spawned, which the
//! sandbox wraps.

use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::Deserialize;
use skython_crds::Signature;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, Semaphore};

use crate::cgroup::Group;
use crate::protocol::{self, FunctionError, Hello, WorkerSpec, kind};
use crate::sandbox::{self, Mount, Sandbox};
use crate::worker::{FrameLimits, Worker};
use crate::{Error, Result};

/// Where the egress proxy's directory appears in sandboxes.
const EGRESS_INSIDE: &str = "/run/skython-egress";
/// Largest control answer we accept (an inspect answer for a large source).
const MAX_CONTROL_FRAME: usize = 4 << 20;
/// Sources inspected at once (each in a child of its own, limited to 1 GiB of address space
/// and 10 s of CPU): bounds what concurrent hostile deploys can take from the host.
const MAX_INSPECTIONS: usize = 4;
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
    /// Working directory of the zygote and its workers (unsandboxed; sandboxed ones use `/tmp`).
    pub workdir: PathBuf,
    pub sandbox: Sandbox,
    /// The egress proxy's directory, mounted into the sandbox for the relay.
    pub egress_dir: Option<PathBuf>,
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

/// The zygote's answer to an inspection it forked a child for (`P`): the child's verdict comes
/// on the socket sent with the request.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Inspecting {
    /// In the zygote's PID namespace: for the log only.
    pid: i32,
    /// When the child is past its own wall-clock limit.
    deadline_seconds: u64,
    /// The verdict if the child ends without one: a limit stopped it (`source_too_complex`).
    unanswered: Inspection,
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
    /// Shared with the task of the request in progress (see [`Zygote::request`]).
    running: Arc<Mutex<Option<Running>>>,
    /// Inspection children at once: each may take 1 GiB and a CPU for seconds.
    inspections: Arc<Semaphore>,
}

impl Zygote {
    pub fn new(config: RuntimeConfig) -> Self {
        Zygote {
            config,
            running: Arc::new(Mutex::new(None)),
            inspections: Arc::new(Semaphore::new(MAX_INSPECTIONS)),
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

    /// The zygote's command with its whole environment, unsandboxed or inside bubblewrap, and
    /// the descriptors the sandbox needs.
    async fn command(&self) -> Result<(Command, Vec<(OwnedFd, i32)>)> {
        let cfg = &self.config;
        let argv: Vec<OsString> = vec![
            cfg.python.clone().into(),
            "-m".into(),
            "skython_runtime".into(),
        ];
        let Sandbox::Bubblewrap(bw) = &cfg.sandbox else {
            let mut cmd = Command::new(&cfg.python);
            cmd.args(&argv[1..])
                .env_clear()
                .envs(crate::base_env(&cfg.python_path));
            return Ok((cmd, vec![]));
        };
        let mut mounts: Vec<Mount> = python_dirs(&cfg.python)
            .await?
            .into_iter()
            .map(|d| Mount {
                host: d.clone(),
                inside: d,
            })
            .collect();
        mounts.push(Mount {
            host: cfg.python_path.clone(),
            inside: sandbox::RUNTIME_INSIDE.into(),
        });
        if let Some(dir) = &cfg.egress_dir {
            mounts.push(Mount {
                host: dir.clone(),
                inside: EGRESS_INSIDE.into(),
            });
        }
        let launch = sandbox::launch(bw, &mounts, &argv)?;
        let mut cmd = Command::new(&launch.program);
        cmd.args(&launch.args)
            .env_clear()
            .envs(crate::base_env(Path::new(sandbox::RUNTIME_INSIDE)))
            .env(
                "SKYTHON_WORKER_SECCOMP_FD",
                sandbox::WORKER_SECCOMP_FD.to_string(),
            )
            .env("SKYTHON_WORKER_TMP_BYTES", bw.tmp_bytes.to_string())
            .env("SKYTHON_WORKER_SHM_BYTES", bw.shm_bytes.to_string());
        if let Some(d) = &bw.drop_to {
            cmd.env("SKYTHON_MAX_PROCS", d.max_procs.to_string());
        }
        if cfg.egress_dir.is_some() {
            let socket = Path::new(EGRESS_INSIDE).join(crate::egress::SOCKET_NAME);
            cmd.env("SKYTHON_EGRESS_SOCKET", socket)
                .env("SKYTHON_EGRESS_RELAY", crate::egress::RELAY_ADDR);
        }
        Ok((cmd, launch.fds))
    }

    async fn launch(&self) -> Result<Running> {
        let cfg = &self.config;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let theirs = OwnedFd::from(theirs);
        let (mut cmd, mut fds) = self.command().await?;
        fds.push((theirs, 3));
        // Nothing of the gateway's own output reaches the sandbox: workers could read it (the
        // gateway's log, with tokens in it) or forge lines in it. What the zygote, bubblewrap and
        // the staging helper write to stderr comes back on a pipe and is logged here.
        cmd.current_dir(&cfg.workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(p) = &cfg.preload {
            cmd.env("SKYTHON_PRELOAD", p);
        }
        crate::pass_fds(&mut cmd, fds)?;
        let mut child = cmd.spawn().map_err(|e| Error::Start {
            python: cfg.python.display().to_string(),
            reason: e.to_string(),
        })?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(log_stderr(stderr));
        }
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
            reason: format!("it exited before saying hello ({e}); its stderr is in the log above"),
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
    /// request starts a fresh one. The exchange runs in a task of its own: a caller that leaves
    /// halfway (a client that disconnects during its deploy) would otherwise leave a request
    /// half sent or its answer unread, and the channel out of step for every later request.
    /// `fd` (sent with the request) is closed once the zygote has answered.
    async fn request(&self, k: u8, payload: Vec<u8>, fd: Option<OwnedFd>) -> Result<(u8, Vec<u8>)> {
        let mut guard = self.running.clone().lock_owned().await;
        self.ensure(&mut guard).await?;
        let exchanged = tokio::spawn(async move {
            let running = guard
                .as_mut()
                .ok_or_else(|| Error::Protocol("the zygote vanished".into()))?;
            let res = exchange(&mut running.ctl, k, &payload, fd.as_ref()).await;
            if res.is_err()
                && let Some(mut r) = guard.take()
            {
                let _ = r.child.start_kill();
            }
            res
        });
        exchanged
            .await
            .map_err(|e| Error::Protocol(format!("the control request's task failed: {e}")))?
    }

    /// Checks a source's syntax and finds its entry function, without running it.
    ///
    /// The zygote forks a child per source and answers at once; the child's verdict comes on a
    /// socket of its own, read here without holding the control channel, so a slow or hostile
    /// source delays nobody else's worker starts.
    pub async fn inspect(
        &self,
        source: &str,
        filename: &str,
        entrypoint: Option<&str>,
    ) -> Result<Inspection> {
        let req = serde_json::json!({
            "source": source,
            "filename": filename,
            "entrypoint": entrypoint,
            "maxSourceBytes": skython_crds::MAX_SOURCE_BYTES,
        });
        // Never fails: the semaphore is not closed.
        let slot = self
            .inspections
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Inspect(e.to_string()))?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let theirs = OwnedFd::from(theirs);
        // Once the zygote answered, the child holds the only other end: its exit is our end of
        // file.
        let (k, payload) = self
            .request(kind::INSPECT, serde_json::to_vec(&req)?, Some(theirs))
            .await?;
        match k {
            // Refused before the fork (too large).
            kind::INSPECT => Ok(serde_json::from_slice(&payload)?),
            kind::SPAWNED => {
                let child: Inspecting = serde_json::from_slice(&payload)?;
                ours.set_nonblocking(true)?;
                let socket = UnixStream::from_std(ours)?;
                // In a task that keeps the slot until the child is done, even if our caller
                // leaves: the slots bound the children, not the callers.
                let reading = tokio::spawn(async move {
                    let v = verdict(socket, child).await;
                    drop(slot);
                    v
                });
                reading.await.map_err(|e| {
                    Error::Inspect(format!("the task reading the verdict failed: {e}"))
                })?
            }
            kind::SPAWN_FAILED => Err(Error::Inspect(failure_message(&payload))),
            other => Err(Error::Protocol(format!(
                "expected an inspect answer, got {:?}",
                other as char
            ))),
        }
    }

    /// Forks a worker for `spec` and waits until it has loaded the function.
    pub async fn spawn(
        &self,
        spec: &WorkerSpec,
        load_timeout: Duration,
        group: Option<&Group>,
    ) -> Result<Worker> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        // The kernel then tells us the worker's pid as *we* see it: a sandboxed worker lives in
        // a PID namespace of its own, where its pid means something else.
        nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::PassCred, &true)
            .map_err(std::io::Error::from)?;
        let theirs = OwnedFd::from(theirs);
        let (k, payload) = self
            .request(kind::SPAWN, serde_json::to_vec(spec)?, Some(theirs))
            .await?;
        match k {
            kind::SPAWNED => {}
            kind::SPAWN_FAILED => return Err(Error::Spawn(failure_message(&payload))),
            other => {
                return Err(Error::Protocol(format!(
                    "expected spawned, got {:?}",
                    other as char
                )));
            }
        }
        ours.set_nonblocking(true)?;
        let stream = UnixStream::from_std(ours)?;
        // The worker's first frame (`started`) comes right after the fork, before any user code.
        let pid = tokio::time::timeout(load_timeout, sender_pid(&stream))
            .await
            .map_err(|_| {
                Error::Spawn(format!("the worker did not start within {load_timeout:?}"))
            })??;
        // Credentials on every later frame would only cost (the kernel attaches them per send).
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::PassCred, &false)
            .map_err(std::io::Error::from)?;
        let mut worker = Worker::new(pid, stream, FrameLimits::for_spec(spec));
        if let Some(g) = group {
            if let Err(e) = g.add(pid) {
                worker.kill();
                return Err(Error::Spawn(format!(
                    "placing the worker in its cgroup: {e}"
                )));
            }
            worker.watch_oom(g.oom_probe());
        }
        worker.go().await?;
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
                    retire: false,
                }))
            }
        }
    }
}

/// Longest line of the zygote's stderr that is logged whole.
const MAX_STDERR_LINE: usize = 8 << 10;

/// Logs what the zygote (and bubblewrap before it) writes to stderr, line by line. Workers
/// never write there (their descriptors 0-2 are `/dev/null`), so this is the runtime's own
/// output, bounded anyway.
async fn log_stderr(stderr: tokio::process::ChildStderr) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut lines = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut lines)
            .take(MAX_STDERR_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                tracing::warn!(target: "skython::zygote", "{}", text.trim_end());
            }
        }
    }
}

/// The inspection child's verdict (`I`) or failure (`E`), read from its socket within its
/// deadline. A child that ends without one was stopped by a limit; one still running at the
/// deadline ends by its own alarm (dropping the socket is all that is left to do here).
async fn verdict(mut socket: UnixStream, child: Inspecting) -> Result<Inspection> {
    let deadline = Duration::from_secs(child.deadline_seconds);
    match tokio::time::timeout(
        deadline,
        protocol::read_frame(&mut socket, MAX_CONTROL_FRAME),
    )
    .await
    {
        Ok(Ok((kind::INSPECT, payload))) => Ok(serde_json::from_slice(&payload)?),
        Ok(Ok((kind::SPAWN_FAILED, payload))) => Err(Error::Inspect(failure_message(&payload))),
        Ok(Ok((other, _))) => Err(Error::Protocol(format!(
            "expected an inspection verdict, got {:?}",
            other as char
        ))),
        Ok(Err(e)) => {
            tracing::info!(
                pid = child.pid,
                "a source's inspection ended without a verdict: {e}"
            );
            Ok(child.unanswered)
        }
        Err(_) => {
            tracing::info!(
                pid = child.pid,
                "a source's inspection overran {deadline:?}"
            );
            Ok(child.unanswered)
        }
    }
}

/// The message of the zygote's `E` answer (`{message}`), whatever else it holds.
fn failure_message(payload: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "no reason given".into())
}

/// The pid, in our PID namespace, of the process that wrote the first bytes waiting on `stream`
/// (the worker's `started` frame). Peeks, so the frame stays to be read.
async fn sender_pid(stream: &UnixStream) -> Result<i32> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    loop {
        stream.readable().await?;
        let res = stream.try_io(Interest::READABLE, || {
            let mut byte = [0u8; 1];
            let mut iov = [std::io::IoSliceMut::new(&mut byte)];
            let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let msg = recvmsg::<()>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_PEEK,
            )
            .map_err(std::io::Error::from)?;
            if msg.bytes == 0 {
                return Ok(None);
            }
            let pid = msg
                .cmsgs()
                .map_err(std::io::Error::from)?
                .find_map(|c| match c {
                    ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                    _ => None,
                });
            Ok(Some(pid))
        });
        match res {
            Ok(Some(Some(pid))) => return Ok(pid),
            Ok(Some(None)) => {
                return Err(Error::Protocol(
                    "the worker's first message carried no credentials".into(),
                ));
            }
            Ok(None) => {
                return Err(Error::Spawn(
                    "the worker exited before it loaded the function".into(),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The directories a Python installation reads (its prefixes: the virtualenv and the
/// installation it was made from), asked of the interpreter itself with `-I` (isolated: no
/// site-specific code of anyone's runs). System directories are in every sandbox already.
async fn python_dirs(python: &Path) -> Result<Vec<PathBuf>> {
    let start = |reason: String| Error::Start {
        python: python.display().to_string(),
        reason,
    };
    let out = Command::new(python)
        .args([
            "-I",
            "-c",
            "import sys, json; print(json.dumps(sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})))",
        ])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| start(e.to_string()))?;
    if !out.status.success() {
        return Err(start(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let dirs: Vec<PathBuf> = serde_json::from_slice(&out.stdout)?;
    Ok(dirs
        .into_iter()
        .filter(|d| {
            !["/usr", "/lib", "/bin"]
                .iter()
                .any(|sys| d.starts_with(sys))
        })
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn inspecting(deadline_seconds: u64) -> Inspecting {
        Inspecting {
            pid: 1,
            deadline_seconds,
            unanswered: serde_json::from_value(serde_json::json!({
                "ok": false,
                "error": {"code": "source_too_complex", "message": "stopped by a limit"}
            }))
            .unwrap(),
        }
    }

    /// Our end (async, as `inspect` reads it) and the child's.
    fn socket() -> (UnixStream, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (UnixStream::from_std(ours).unwrap(), theirs)
    }

    fn too_complex(verdict: Result<Inspection>) -> bool {
        matches!(verdict, Ok(Inspection::Invalid { error }) if error.code == "source_too_complex")
    }

    #[tokio::test]
    async fn the_childs_verdict_is_the_inspection() {
        let (ours, mut theirs) = socket();
        let answer = br#"{"ok": true, "signature": {"entrypoint": "main", "params": []}}"#;
        theirs
            .write_all(&protocol::header(kind::INSPECT, answer.len()))
            .unwrap();
        theirs.write_all(answer).unwrap();
        match verdict(ours, inspecting(20)).await.unwrap() {
            Inspection::Ok { signature } => assert_eq!(signature.entrypoint, "main"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_child_that_ends_without_a_verdict_was_stopped_by_a_limit() {
        let (ours, mut theirs) = socket();
        theirs
            .write_all(&protocol::header(kind::INSPECT, 100))
            .unwrap();
        drop(theirs); // killed in the middle of its answer
        assert!(too_complex(verdict(ours, inspecting(20)).await));
    }

    #[tokio::test]
    async fn a_child_still_silent_at_its_deadline_is_given_up() {
        let (ours, _theirs) = socket();
        assert!(too_complex(verdict(ours, inspecting(0)).await));
    }

    #[tokio::test]
    async fn a_child_that_could_not_inspect_is_an_error_not_a_verdict() {
        let (ours, mut theirs) = socket();
        let failed = br#"{"message": "confining the inspection failed"}"#;
        theirs
            .write_all(&protocol::header(kind::SPAWN_FAILED, failed.len()))
            .unwrap();
        theirs.write_all(failed).unwrap();
        match verdict(ours, inspecting(20)).await {
            Err(Error::Inspect(m)) => assert_eq!(m, "confining the inspection failed"),
            other => panic!("{other:?}"),
        }
    }
}
