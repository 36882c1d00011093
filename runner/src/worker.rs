//! One Python worker process: a loaded function that serves calls over its own socket.
//!
//! A [`Worker`] is a process being started: the handshake and the load of the function. Once it
//! is ready, [`Worker::serve`] turns it into a [`WorkerHandle`]: a reader task and a writer task
//! own the socket, and calls are *pipelined*. Several calls may be queued on one worker; it runs
//! them in order and answers each in turn, so a busy worker takes a batch of calls per wake-up
//! instead of paying a context switch and two socket calls for each.
//!
//! The call at the head of the queue is the one running. Its wall-clock limit starts when the
//! previous answer arrives. If the worker dies or overruns, the head call fails and the calls
//! queued behind it, which never started, are handed back ([`Reply::NotStarted`]) to be run
//! elsewhere.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tracing::Instrument;

use crate::cgroup::OomProbe;
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

/// The end of one submitted call.
// Built once per call and moved once through its oneshot: boxing the large variant would only
// add an allocation per call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Reply {
    /// The call ran (or broke the worker); with how long it held the worker, when measured.
    Done(Result<CallResult>, Option<Duration>),
    /// The worker stopped before it started this call: it may run on another worker.
    NotStarted,
}

/// The process group of a worker; killed once, at the latest when the last owner lets go.
struct ProcessGroup {
    pid: i32,
    killed: AtomicBool,
}

impl ProcessGroup {
    fn kill(&self) {
        if !self.killed.swap(true, Ordering::SeqCst) {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // Closing the socket makes an idle worker exit; the kill covers a busy one.
        self.kill();
    }
}

/// A worker being started: it reports, is placed, and loads its function.
pub struct Worker {
    group: ProcessGroup,
    io: BufReader<UnixStream>,
    limits: FrameLimits,
    /// Whether its cgroup's OOM killer struck, if it has a memory cgroup.
    oom: Option<OomProbe>,
}

/// What the gateway accepts from a worker. Its frames are untrusted input: user code may write to
/// the worker's socket (a background thread, `os.write` on the descriptor), so the caps the Python
/// side keeps are enforced here too, and a worker past them is killed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameLimits {
    /// Largest single frame (a result, an error, a state request).
    pub max_frame: usize,
    /// Output one call may print, in bytes.
    pub max_call_logs: usize,
}

impl FrameLimits {
    pub fn for_spec(spec: &crate::WorkerSpec) -> Self {
        FrameLimits {
            // Results are checked by the worker; the slack covers framing and error payloads.
            max_frame: spec.max_result_bytes + (1 << 20),
            // The worker counts characters (up to 4 bytes each in UTF-8) and appends a note when
            // it truncates.
            max_call_logs: spec.max_log_bytes.saturating_mul(4) + 4096,
        }
    }
}

impl Worker {
    pub(crate) fn new(pid: i32, stream: UnixStream, limits: FrameLimits) -> Self {
        Worker {
            group: ProcessGroup {
                pid,
                killed: AtomicBool::new(false),
            },
            io: BufReader::with_capacity(64 * 1024, stream),
            limits,
            oom: None,
        }
    }

    /// A worker that vanishes is then told apart from one that ran out of memory.
    pub(crate) fn watch_oom(&mut self, probe: OomProbe) {
        self.oom = Some(probe);
    }

    pub fn pid(&self) -> i32 {
        self.group.pid
    }

    /// Lets a started worker go on to load its function.
    pub(crate) async fn go(&mut self) -> Result<()> {
        let hdr = protocol::header(kind::GO, 0);
        self.io.get_mut().write_all(&hdr).await?;
        Ok(())
    }

    async fn loading_frame(&mut self) -> Result<(u8, Vec<u8>)> {
        protocol::read_frame(&mut self.io, self.limits.max_frame)
            .await
            .map_err(|e| Error::Spawn(format!("worker {} exited while loading: {e}", self.pid())))
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

    /// Kills the worker and everything it started (its process group).
    pub fn kill(&self) {
        self.group.kill();
    }

    /// Starts serving calls: the socket goes to a reader and a writer task. `call_timeout` is
    /// each call's wall-clock limit; `state` answers the calls' `store`/`load` requests.
    pub(crate) fn serve(
        self,
        state: Arc<dyn StateHandler>,
        call_timeout: Duration,
    ) -> WorkerHandle {
        let Worker {
            group,
            io,
            limits,
            oom,
        } = self;
        // Nothing follows `ready` unasked, but keep whatever the handshake read ahead.
        let read_ahead = BytesMut::from(io.buffer());
        let (rd, wr) = io.into_inner().into_split();
        let line = Arc::new(Line {
            group,
            wr,
            queue: Mutex::new(Queue::default()),
            wake_writer: Notify::new(),
        });
        let reader = Reader {
            line: line.clone(),
            rd,
            buf: read_ahead,
            logs: String::new(),
            ran: None,
            state,
            limits,
            oom,
            call_timeout,
        };
        tokio::spawn(reader.run());
        tokio::spawn(write_later(line.clone()));
        WorkerHandle { line }
    }
}

/// A ready worker that takes calls. Dropping it kills the worker.
pub struct WorkerHandle {
    line: Arc<Line>,
}

impl WorkerHandle {
    pub fn pid(&self) -> i32 {
        self.line.group.pid
    }

    /// The worker stopped (it exited, overran, broke the protocol or was killed).
    pub fn is_closed(&self) -> bool {
        self.line.queue().closed
    }

    /// Queues a call; `None` if the worker has stopped.
    pub(crate) fn submit(&self, args: &[u8]) -> Option<oneshot::Receiver<Reply>> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.line.queue();
        if q.closed {
            return None;
        }
        let head = q.pending.is_empty();
        self.line.send(&mut q, kind::CALL, args, head);
        if head {
            q.head_started = Some(Instant::now());
        }
        // The caller's span is an `info` one: with info off (`--log warn`) there is none to
        // carry, and looking it up is a walk of the subscriber's span stack on every call.
        let span = if tracing::level_enabled!(tracing::Level::INFO) {
            tracing::Span::current()
        } else {
            tracing::Span::none()
        };
        q.pending.push_back(Pending { reply: tx, span });
        Some(rx)
    }

    /// Runs one call and waits for it (the test-run API: a worker of its own, no pool).
    pub(crate) async fn call(&self, args: &[u8]) -> Result<CallResult> {
        let stopped = || Error::Crashed(format!("worker {} stopped", self.pid()));
        let rx = self.submit(args).ok_or_else(stopped)?;
        match rx.await {
            Ok(Reply::Done(result, _)) => result,
            Ok(Reply::NotStarted) | Err(_) => Err(stopped()),
        }
    }

    /// Kills the worker and everything it started (its process group).
    pub fn kill(&self) {
        self.line.group.kill();
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the handle and the worker's two tasks share.
struct Line {
    group: ProcessGroup,
    wr: OwnedWriteHalf,
    queue: Mutex<Queue>,
    wake_writer: Notify,
}

impl Line {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a frame, under the queue's lock so frames keep their order. A frame the worker is
    /// waiting for (`now`) is written at once if the socket takes it; others are left to the
    /// writer task, which runs after the gateway's other ready tasks and so writes the calls
    /// they submit together, for the worker to read in one wake-up.
    fn send(&self, q: &mut Queue, k: u8, payload: &[u8], now: bool) {
        let header = protocol::header(k, payload.len());
        let mut written = 0;
        if now && q.outbox.is_empty() && !q.writing {
            let parts = [IoSlice::new(&header), IoSlice::new(payload)];
            // An error other than a full socket means the worker is gone: the reader sees it.
            written = self.wr.try_write_vectored(&parts).unwrap_or(0);
        }
        let total = header.len() + payload.len();
        if written == total {
            return;
        }
        if written < header.len() {
            q.outbox.extend_from_slice(&header[written..]);
            q.outbox.extend_from_slice(payload);
        } else {
            q.outbox
                .extend_from_slice(&payload[written - header.len()..]);
        }
        self.wake_writer.notify_one();
    }
}

#[derive(Default)]
struct Queue {
    /// Frames the socket did not take at once, for the writer task.
    outbox: Vec<u8>,
    /// The writer task is writing (what it took from the outbox).
    writing: bool,
    /// Calls written or to be written, oldest (the running one) first.
    pending: VecDeque<Pending>,
    /// When the head call started: its submission, or the arrival of the answer before it.
    head_started: Option<Instant>,
    closed: bool,
}

impl Queue {
    /// When the running call must have answered.
    fn head_deadline(&self, call_timeout: Duration) -> Option<Instant> {
        self.head_started.map(|t| t + call_timeout)
    }
}

struct Pending {
    reply: oneshot::Sender<Reply>,
    /// The caller's span (function and request ids), for the call's state requests.
    span: tracing::Span,
}

/// Why a worker stopped serving.
enum Stop {
    Eof,
    Io(std::io::Error),
    Timeout,
    Protocol(String),
    /// It answered a call with `retire` (it hit its CPU limit) and exits.
    Retired,
}

/// Writes what the socket did not take at once (large arguments, a worker slow to read).
async fn write_later(line: Arc<Line>) {
    let mut out = Vec::new();
    loop {
        line.wake_writer.notified().await;
        // Let the other ready tasks (the gateway's other connections) submit their calls
        // first: they all go out in one write, for the worker to read in one wake-up.
        tokio::task::yield_now().await;
        loop {
            {
                let mut q = line.queue();
                if q.closed {
                    return;
                }
                std::mem::swap(&mut out, &mut q.outbox);
                q.writing = !out.is_empty();
                if !q.writing {
                    break;
                }
            }
            let mut done = 0;
            while done < out.len() {
                // A failed write means the worker is gone; the reader sees it end and answers.
                if line.wr.writable().await.is_err() {
                    return;
                }
                match line.wr.try_write(&out[done..]) {
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            out.clear();
            line.queue().writing = false;
        }
    }
}

struct Reader {
    line: Arc<Line>,
    rd: OwnedReadHalf,
    buf: BytesMut,
    /// The running call's output so far.
    logs: String,
    /// How long the running call held the worker, if the worker measured it.
    ran: Option<Duration>,
    state: Arc<dyn StateHandler>,
    limits: FrameLimits,
    oom: Option<OomProbe>,
    call_timeout: Duration,
}

impl Reader {
    async fn run(mut self) {
        let stop = self.serve().await;
        self.close(stop);
    }

    async fn serve(&mut self) -> Stop {
        // Fires at or before the running call's deadline. A call submitted to an idle worker
        // does not wake this task: while idle, the timer is set one call timeout ahead, and no
        // call submitted later has an earlier deadline; when it fires early, it is set again.
        let timer = tokio::time::sleep(self.call_timeout);
        tokio::pin!(timer);
        loop {
            loop {
                let frame = match self.next_frame() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(stop) => return stop,
                };
                if let Some(stop) = self.handle(frame).await {
                    return stop;
                }
            }
            let now = Instant::now();
            let head_deadline = self.deadline();
            if head_deadline.is_some_and(|d| d <= now) {
                return Stop::Timeout;
            }
            // Deadlines only move later, so a timer that has not fired is never late.
            if timer.is_elapsed() {
                let wake_at = head_deadline.unwrap_or(now + self.call_timeout);
                timer.as_mut().reset(wake_at.into());
            }
            tokio::select! {
                read = self.rd.read_buf(&mut self.buf) => match read {
                    Ok(0) => return Stop::Eof,
                    Ok(_) => {}
                    Err(e) => return Stop::Io(e),
                },
                () = &mut timer => {}
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.line.queue().head_deadline(self.call_timeout)
    }

    /// The next complete frame in the buffer, if any; refuses one above `max_frame` at once.
    fn next_frame(&mut self) -> Result<Option<(u8, Bytes)>, Stop> {
        let have = self.buf.len();
        if have < protocol::HEADER_LEN {
            self.buf.reserve(64 * 1024);
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.limits.max_frame {
            return Err(Stop::Protocol(format!(
                "sent a frame of {len} bytes, more than the limit of {}",
                self.limits.max_frame
            )));
        }
        let end = protocol::HEADER_LEN + len;
        if have < end {
            self.buf.reserve((end - have).max(64 * 1024));
            return Ok(None);
        }
        let k = self.buf[4];
        self.buf.advance(protocol::HEADER_LEN);
        Ok(Some((k, self.buf.split_to(len).freeze())))
    }

    async fn handle(&mut self, (k, payload): (u8, Bytes)) -> Option<Stop> {
        // An idle worker has nothing to say: whatever it sends was written by user code. Answers
        // and state requests are checked where they take their call (`finish`, `answer_state`),
        // so only the frames that attach to a running call are checked here.
        if matches!(k, kind::LOG | kind::RAN) && self.line.queue().pending.is_empty() {
            return Some(Stop::Protocol(format!(
                "sent a frame {:?} while no call was running",
                k as char
            )));
        }
        match k {
            kind::LOG => {
                if self.logs.len() + payload.len() > self.limits.max_call_logs {
                    return Some(Stop::Protocol(format!(
                        "sent more than {} bytes of output for one call",
                        self.limits.max_call_logs
                    )));
                }
                self.logs.push_str(&String::from_utf8_lossy(&payload));
                None
            }
            kind::RAN => {
                // Measured by the worker: unlike the time between answers here, it does not
                // count the time the worker waited for a CPU.
                self.ran = std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_micros);
                None
            }
            kind::STATE_REQ => self.answer_state(&payload).await,
            kind::OK => {
                let result = CallResult {
                    outcome: Outcome::Returned(payload),
                    logs: std::mem::take(&mut self.logs),
                };
                self.finish(result, false)
            }
            kind::ERROR => match serde_json::from_slice::<FunctionError>(&payload) {
                Ok(e) => {
                    let retire = e.retire;
                    let result = CallResult {
                        outcome: Outcome::Failed(e),
                        logs: std::mem::take(&mut self.logs),
                    };
                    self.finish(result, retire)
                }
                Err(e) => Some(Stop::Protocol(format!("bad error frame: {e}"))),
            },
            other => Some(Stop::Protocol(format!(
                "sent an unexpected frame {:?}",
                other as char
            ))),
        }
    }

    async fn answer_state(&mut self, payload: &[u8]) -> Option<Stop> {
        let (span, deadline) = {
            let q = self.line.queue();
            let span = q.pending.front().map(|p| p.span.clone());
            (span, q.head_deadline(self.call_timeout))
        };
        let (Some(span), Some(deadline)) = (span, deadline) else {
            return Some(Stop::Protocol(
                "sent a state request with no call running".into(),
            ));
        };
        let answer = match serde_json::from_slice::<StateRequest>(payload) {
            Ok(req) => {
                let handled = self.state.handle(req).instrument(span);
                match tokio::time::timeout_at(deadline.into(), handled).await {
                    Ok(a) => a,
                    Err(_) => return Some(Stop::Timeout),
                }
            }
            Err(e) => StateAnswer::refused("bad_request", format!("bad state request: {e}")),
        };
        let body = match serde_json::to_vec(&answer) {
            Ok(b) => b,
            Err(e) => return Some(Stop::Protocol(format!("encoding a state answer: {e}"))),
        };
        let mut q = self.line.queue();
        self.line.send(&mut q, kind::STATE_ANS, &body, true);
        None
    }

    /// The head call answered: hand it its result; the next one starts now.
    fn finish(&mut self, result: CallResult, retire: bool) -> Option<Stop> {
        let mut q = self.line.queue();
        let Some(head) = q.pending.pop_front() else {
            return Some(Stop::Protocol("sent an answer with no call running".into()));
        };
        let held = self.ran.take();
        q.head_started = (!q.pending.is_empty()).then(Instant::now);
        // A retiring worker takes nothing more; closed before the caller hears of it.
        q.closed |= retire;
        drop(q);
        let _ = head.reply.send(Reply::Done(Ok(result), held));
        retire.then_some(Stop::Retired)
    }

    /// The worker is done: kill what is left of it and answer every queued call.
    fn close(self, stop: Stop) {
        let pending = {
            let mut q = self.line.queue();
            q.closed = true;
            q.outbox.clear();
            q.head_started = None;
            std::mem::take(&mut q.pending)
        };
        let we_killed = self.line.group.killed.load(Ordering::SeqCst);
        self.line.group.kill();
        self.line.wake_writer.notify_one();
        let pid = self.line.group.pid;
        let head_error = match stop {
            Stop::Retired => None,
            Stop::Timeout => Some(Error::Timeout(self.call_timeout)),
            Stop::Eof | Stop::Io(_) if self.oom.as_ref().is_some_and(OomProbe::fired) => {
                let limit = self.oom.and_then(|o| o.limit_bytes).map_or_else(
                    || "its memory limit".to_string(),
                    |b| format!("its memory limit of {} MiB (resources.memory)", b >> 20),
                );
                Some(Error::OutOfMemory(format!(
                    "worker {pid} was killed during the call: it used more than {limit}"
                )))
            }
            Stop::Eof => Some(Error::Crashed(format!(
                "worker {pid} stopped during the call"
            ))),
            Stop::Io(e) => Some(Error::Crashed(format!(
                "worker {pid} stopped during the call ({e})"
            ))),
            Stop::Protocol(m) => {
                tracing::warn!(pid, "worker broke the protocol and was killed: it {m}");
                Some(Error::Misbehaved(format!(
                    "worker {pid} broke the protocol: it {m}"
                )))
            }
        };
        let mut pending = pending.into_iter();
        // The worker runs calls in order: only the head had started (unless it was answered,
        // as a retiring worker's last call is); the others may run elsewhere.
        if let Some(e) = head_error {
            match pending.next() {
                Some(head) => {
                    let _ = head.reply.send(Reply::Done(Err(e), None));
                }
                None if !we_killed => tracing::warn!(pid, "idle worker exited"),
                None => {}
            }
        }
        for p in pending {
            let _ = p.reply.send(Reply::NotStarted);
        }
    }
}
