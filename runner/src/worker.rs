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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use futures::future::Shared;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tracing::Instrument;

use crate::cgroup::OomProbe;
use crate::protocol::{
    self, CACHE_VALUE_MAX, Caller, FunctionError, Ready, StateAnswer, StatePush, StateRequest,
    StateWriteFrame, kind,
};
use crate::{Error, Result};

/// Answers a worker's `store`/`load` requests. The implementation knows which (owner, function)
/// the worker serves; the worker cannot choose.
#[async_trait]
pub trait StateHandler: Send + Sync {
    async fn handle(&self, request: StateRequest) -> StateAnswer;
    /// `Some` if the workers may cache values and send plain stores without waiting.
    fn cache(&self) -> Option<&dyn StateCache> {
        None
    }
}

/// The gateway's side of the workers' state cache (`PROTOCOL.md`, "State cache"): offered by a
/// handler that is the only writer of its state and applies writes in the order it takes them.
pub trait StateCache: Send + Sync {
    /// A caching worker started: from now on it hears of the writes the others commit.
    fn attach(&self, peer: StatePeer);
    /// Queues `from`'s plain `store` before returning (a worker's writes apply in the order it
    /// sent them); answers once the write committed, or was refused.
    fn write_behind(&self, from: &StatePeer, key: String, value: String) -> StateTicket;
    /// Starts the writes taken so far: called once the worker's frames at hand are handled, so
    /// that the stores of a batch of calls commit together.
    fn flush(&self);
}

/// The answer to a write-behind store, once it committed or was refused.
pub type StateTicket = futures::future::BoxFuture<'static, StateAnswer>;

/// A caching worker, as its function's state handler sees it: told about the writes of the
/// function's other workers.
#[derive(Clone)]
pub struct StatePeer(Arc<PeerInner>);

struct PeerInner {
    id: u64,
    line: Weak<Line>,
    /// Its own write-behind stores committed or refused so far (counted in commit order).
    committed: AtomicU64,
}

impl StatePeer {
    fn new(line: &Arc<Line>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        StatePeer(Arc::new(PeerInner {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            line: Arc::downgrade(line),
            committed: AtomicU64::new(0),
        }))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The worker has stopped: nothing more to tell it.
    pub fn is_gone(&self) -> bool {
        self.0.line.upgrade().is_none_or(|l| l.queue().closed)
    }

    /// One of its own write-behind stores committed or was refused. Called in commit order,
    /// like the pushes, so each push says which of its own writes came before it.
    pub fn count_own_write(&self) {
        self.0.committed.fetch_add(1, Ordering::SeqCst);
    }

    /// Another worker's write of `key` committed with `value` (JSON text). Called in commit
    /// order.
    pub fn push_value(&self, key: &str, value: &str) {
        if value.len() > CACHE_VALUE_MAX {
            return self.forget(key);
        }
        let acked = self.0.committed.load(Ordering::SeqCst);
        self.push(&StatePush::Value { key, value, acked });
    }

    /// `key` changed in a way the worker cannot cache (a delete, a count): it asks next time.
    /// Safe in any order.
    pub fn forget(&self, key: &str) {
        self.push(&StatePush::Forget { key });
    }

    fn push(&self, push: &StatePush<'_>) {
        if let (Some(line), Ok(payload)) = (self.0.line.upgrade(), serde_json::to_vec(push)) {
            line.push(push, &payload);
        }
    }
}

/// State pushes not yet written to a worker, oldest first. Between two writes to the socket,
/// the pushes of one key's values become the last one (it carries the latest `acked` too), so
/// a busy key costs a worker one push per write, not one per commit.
#[derive(Default)]
struct Pushes {
    items: Vec<Pushed>,
    /// What `items`' frames take, kept as they change.
    bytes: usize,
}

struct Pushed {
    /// `None`: a reset.
    key: Option<String>,
    forget: bool,
    /// The whole frame.
    frame: Vec<u8>,
}

impl Pushes {
    fn add(&mut self, push: &StatePush<'_>, payload: &[u8]) {
        let (key, forget) = match push {
            StatePush::Value { key, .. } => (*key, false),
            StatePush::Forget { key } => (*key, true),
            StatePush::Reset { .. } => return self.reset(),
        };
        if self.items.first().is_some_and(|p| p.key.is_none()) {
            return; // after a reset, the worker's cache is empty: these would change nothing
        }
        let frame = push_frame(payload);
        let same_key = |p: &Pushed| p.key.as_deref() == Some(key);
        if forget {
            let bytes = &mut self.bytes;
            self.items.retain(|p| {
                let keep = !same_key(p);
                if !keep {
                    *bytes -= p.frame.len();
                }
                keep
            });
        } else if let Some(last) = self.items.iter_mut().rev().find(|p| same_key(p))
            && !last.forget
        {
            // A value only replaces a value: a forget before it may stand for a later commit.
            self.bytes = self.bytes - last.frame.len() + frame.len();
            last.frame = frame;
            return;
        }
        self.bytes += frame.len();
        self.items.push(Pushed {
            key: Some(key.to_string()),
            forget,
            frame,
        });
        if self.bytes > PUSHES_MAX {
            self.reset();
        }
    }

    fn reset(&mut self) {
        let reset = serde_json::to_vec(&StatePush::Reset { reset: true }).unwrap_or_default();
        let frame = push_frame(&reset);
        self.bytes = frame.len();
        self.items = vec![Pushed {
            key: None,
            forget: true,
            frame,
        }];
    }

    /// The frames, in order, leaving none.
    fn take(&mut self) -> Vec<u8> {
        let frames = self.items.drain(..).flat_map(|p| p.frame).collect();
        self.bytes = 0;
        frames
    }
}

/// How much pushes not yet written may take before they become one `reset`.
const PUSHES_MAX: usize = 64 * 1024;

/// A whole `I` frame: `caller` as JSON.
fn caller_frame(caller: &Caller) -> Vec<u8> {
    // Plain strings in a tagged enum: encoding cannot fail.
    let payload = serde_json::to_vec(caller).unwrap_or_default();
    let mut frame = protocol::header(kind::CALLER, payload.len()).to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// A whole `N` frame.
fn push_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = protocol::header(kind::STATE_PUSH, payload.len()).to_vec();
    frame.extend_from_slice(payload);
    frame
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

/// Holds a call's answer until the worker's write-behind stores sent before it have committed.
pub(crate) struct Gate {
    writes: Shared<StateTicket>,
    line: Arc<Line>,
    /// A store that has not committed by then fails the call, as a call past its timeout would.
    deadline: Instant,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("worker", &self.line.group.pid)
            .finish()
    }
}

impl Gate {
    /// `result`, once the writes before it are committed; if one was refused, the call fails
    /// with that refusal and the worker is stopped (its cache may hold the refused value, and
    /// its later answers may rest on it).
    pub(crate) async fn settle(self, result: CallResult) -> CallResult {
        let answer = tokio::time::timeout_at(self.deadline.into(), self.writes)
            .await
            .unwrap_or_else(|_| {
                StateAnswer::refused("state_unavailable", "the storage did not save it in time")
            });
        if answer.ok {
            return result;
        }
        let error = answer.error.unwrap_or_else(|| protocol::StateAnswerError {
            code: "state_unavailable".into(),
            message: "the state write failed".into(),
        });
        let message = format!("a store() of this worker was refused: {}", error.message);
        self.line.retire(&message);
        let unavailable = error.code == "state_unavailable";
        CallResult {
            outcome: Outcome::Failed(FunctionError {
                code: if unavailable {
                    "state_unavailable"
                } else {
                    "function_error"
                }
                .into(),
                type_: Some(
                    if unavailable {
                        "StateUnavailable"
                    } else {
                        "StateError"
                    }
                    .into(),
                ),
                message,
                traceback: None,
                expected: None,
                logs: None,
                retire: false,
            }),
            logs: result.logs,
        }
    }
}

/// The end of one submitted call.
// Built once per call and moved once through its oneshot: boxing the large variant would only
// add an allocation per call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Reply {
    /// The call ran (or broke the worker); with how long it held the worker, when measured,
    /// and what its answer waits for.
    Done(Result<CallResult>, Option<Duration>, Option<Gate>),
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
        let peer = state.cache().map(|cache| {
            let peer = StatePeer::new(&line);
            cache.attach(peer.clone());
            peer
        });
        let reader = Reader {
            line: line.clone(),
            rd,
            buf: read_ahead,
            logs: String::new(),
            ran: None,
            state,
            peer,
            last_write: None,
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

    /// Queues a call for `caller`; `None` if the worker has stopped.
    pub(crate) fn submit(&self, args: &[u8], caller: &Caller) -> Option<oneshot::Receiver<Reply>> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.line.queue();
        if q.closed {
            return None;
        }
        let head = q.pending.is_empty();
        // The worker applies an identity to the calls after it, in order: only a change is
        // sent, so a stream of one caller's calls (anonymous ones, say) costs nothing more.
        let identity = if q.caller == *caller {
            Vec::new()
        } else {
            q.caller = caller.clone();
            caller_frame(caller)
        };
        self.line.send(&mut q, &identity, kind::CALL, args, head);
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
    pub(crate) async fn call(&self, args: &[u8], caller: &Caller) -> Result<CallResult> {
        let stopped = || Error::Crashed(format!("worker {} stopped", self.pid()));
        let rx = self.submit(args, caller).ok_or_else(stopped)?;
        match rx.await {
            Ok(Reply::Done(Ok(result), _, Some(gate))) => Ok(gate.settle(result).await),
            Ok(Reply::Done(result, _, _)) => result,
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
    /// State pushes not yet written go first (the frames after them may rest on them), then
    /// `before` (whole frames that go with this one, in the same write).
    fn send(&self, q: &mut Queue, before: &[u8], k: u8, payload: &[u8], now: bool) {
        let pushes = q.pushes.take();
        let header = protocol::header(k, payload.len());
        let parts = [&pushes[..], before, &header[..], payload];
        let mut written = 0;
        if now && q.outbox.is_empty() && !q.writing {
            let slices = parts.map(IoSlice::new);
            // An error other than a full socket means the worker is gone: the reader sees it.
            written = self.wr.try_write_vectored(&slices).unwrap_or(0);
        }
        if written == parts.iter().map(|p| p.len()).sum::<usize>() {
            return;
        }
        for part in parts {
            let skip = written.min(part.len());
            written -= skip;
            q.outbox.extend_from_slice(&part[skip..]);
        }
        self.wake_writer.notify_one();
    }

    /// A state push: a busy worker gets it from the writer task, with whatever else is
    /// written by then; an idle one is not woken, it gets what it missed before its next call.
    fn push(&self, push: &StatePush<'_>, payload: &[u8]) {
        let mut q = self.queue();
        if q.closed {
            return;
        }
        q.pushes.add(push, payload);
        if !q.pending.is_empty() {
            self.wake_writer.notify_one();
        }
    }

    /// Stops the worker for `reason`: it takes no more calls, and the running one fails with it.
    fn retire(&self, reason: &str) {
        {
            let mut q = self.queue();
            q.closed = true;
            q.retired_for.get_or_insert_with(|| reason.to_string());
        }
        self.group.kill();
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
    /// State pushes not yet written (they go before the next frame written).
    pushes: Pushes,
    /// Why the worker was stopped from outside its reader (a refused write-behind store).
    retired_for: Option<String>,
    /// The caller of the last call sent: the worker's current identity (anonymous at first).
    caller: Caller,
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
                // Pushes came after whatever is in the outbox.
                let pushes = q.pushes.take();
                out.extend_from_slice(&pushes);
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
    /// This worker, if it caches state.
    peer: Option<StatePeer>,
    /// Its latest write-behind store, until known committed.
    last_write: Option<Shared<StateTicket>>,
    limits: FrameLimits,
    oom: Option<OomProbe>,
    call_timeout: Duration,
}

impl Reader {
    async fn run(mut self) {
        let stop = self.serve().await;
        // The answers already given wait for these.
        self.flush_writes();
        self.close(stop);
    }

    fn flush_writes(&self) {
        if self.last_write.is_some()
            && let Some(cache) = self.state.cache()
        {
            cache.flush();
        }
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
            self.flush_writes();
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
            kind::STATE_WRITE => self.write_behind(&payload),
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
        // Its earlier stores first: what it asks may depend on them.
        self.flush_writes();
        if let Some(writes) = self.last_write.clone() {
            match tokio::time::timeout_at(deadline.into(), writes).await {
                Err(_) => return Some(Stop::Timeout),
                Ok(done) if done.ok => self.last_write = None,
                // The gate fails the call and stops the worker; this request is refused.
                Ok(_) => {
                    let refused = StateAnswer::refused(
                        "state_unavailable",
                        "an earlier store() of this worker was refused",
                    );
                    return self.send_state_answer(&refused);
                }
            }
        }
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
        self.send_state_answer(&answer)
    }

    fn send_state_answer(&self, answer: &StateAnswer) -> Option<Stop> {
        let body = match serde_json::to_vec(answer) {
            Ok(b) => b,
            Err(e) => return Some(Stop::Protocol(format!("encoding a state answer: {e}"))),
        };
        let mut q = self.line.queue();
        self.line.send(&mut q, &[], kind::STATE_ANS, &body, true);
        None
    }

    /// A plain `store` the worker does not wait for: queued at once, in the order sent; the
    /// answers after it wait for its commit (`finish`).
    fn write_behind(&mut self, payload: &[u8]) -> Option<Stop> {
        let (Some(cache), Some(peer)) = (self.state.cache(), &self.peer) else {
            return Some(Stop::Protocol(
                "sent a write-behind store to a function whose state takes none".into(),
            ));
        };
        if self.line.queue().pending.is_empty() {
            return Some(Stop::Protocol(
                "sent a state write with no call running".into(),
            ));
        }
        let frame = match serde_json::from_slice::<StateWriteFrame>(payload) {
            Ok(f) => f,
            Err(e) => return Some(Stop::Protocol(format!("sent a bad state write: {e}"))),
        };
        self.last_write = Some(cache.write_behind(peer, frame.key, frame.value).shared());
        None
    }

    /// What the head call's answer waits for: the worker's write-behind stores not yet known
    /// to be committed.
    fn gate(&mut self) -> Option<Gate> {
        let writes = self.last_write.as_ref()?;
        if writes.peek().is_some_and(|done| done.ok) {
            self.last_write = None;
            return None;
        }
        Some(Gate {
            writes: writes.clone(),
            line: self.line.clone(),
            deadline: Instant::now() + self.call_timeout,
        })
    }

    /// The head call answered: hand it its result; the next one starts now.
    fn finish(&mut self, result: CallResult, retire: bool) -> Option<Stop> {
        let gate = self.gate();
        let mut q = self.line.queue();
        let Some(head) = q.pending.pop_front() else {
            return Some(Stop::Protocol("sent an answer with no call running".into()));
        };
        let held = self.ran.take();
        q.head_started = (!q.pending.is_empty()).then(Instant::now);
        // A retiring worker takes nothing more; closed before the caller hears of it.
        q.closed |= retire;
        drop(q);
        let _ = head.reply.send(Reply::Done(Ok(result), held, gate));
        retire.then_some(Stop::Retired)
    }

    /// The worker is done: kill what is left of it and answer every queued call.
    fn close(self, stop: Stop) {
        let (pending, retired_for) = {
            let mut q = self.line.queue();
            q.closed = true;
            q.outbox.clear();
            q.pushes.take();
            q.head_started = None;
            (std::mem::take(&mut q.pending), q.retired_for.take())
        };
        let we_killed = self.line.group.killed.load(Ordering::SeqCst);
        self.line.group.kill();
        self.line.wake_writer.notify_one();
        let pid = self.line.group.pid;
        let head_error = match stop {
            Stop::Retired => None,
            Stop::Eof | Stop::Io(_) if retired_for.is_some() => Some(Error::Crashed(format!(
                "worker {pid} was stopped during the call: {}",
                retired_for.unwrap_or_default()
            ))),
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
                    let _ = head.reply.send(Reply::Done(Err(e), None, None));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn value(pushes: &mut Pushes, key: &str, value: &str, acked: u64) {
        let push = StatePush::Value { key, value, acked };
        pushes.add(&push, &serde_json::to_vec(&push).unwrap());
    }

    fn forget(pushes: &mut Pushes, key: &str) {
        let push = StatePush::Forget { key };
        pushes.add(&push, &serde_json::to_vec(&push).unwrap());
    }

    /// The payloads of the frames `take` gives, as text.
    fn taken(pushes: &mut Pushes) -> Vec<String> {
        let bytes = pushes.take();
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            assert_eq!(rest[4], kind::STATE_PUSH);
            out.push(String::from_utf8(rest[5..5 + len].to_vec()).unwrap());
            rest = &rest[5 + len..];
        }
        out
    }

    #[test]
    fn pushes_of_one_keys_values_become_the_last_one_in_place() {
        let mut p = Pushes::default();
        value(&mut p, "a", "1", 0);
        value(&mut p, "b", "1", 0);
        value(&mut p, "a", "2", 3);
        assert_eq!(
            taken(&mut p),
            [
                r#"{"key":"a","value":"2","acked":3}"#,
                r#"{"key":"b","value":"1","acked":0}"#
            ]
        );
        assert!(taken(&mut p).is_empty());
    }

    #[test]
    fn a_forget_drops_the_keys_earlier_pushes_and_a_value_after_it_does_not_replace_it() {
        let mut p = Pushes::default();
        value(&mut p, "a", "1", 0);
        forget(&mut p, "a");
        value(&mut p, "a", "2", 0);
        value(&mut p, "a", "3", 0);
        assert_eq!(
            taken(&mut p),
            [r#"{"key":"a"}"#, r#"{"key":"a","value":"3","acked":0}"#]
        );
    }

    #[test]
    fn the_byte_count_follows_replacements_and_forgets() {
        let mut p = Pushes::default();
        value(&mut p, "a", "1", 0);
        value(&mut p, "b", "1", 0);
        value(&mut p, "a", "22222", 0);
        forget(&mut p, "b");
        let frames: usize = p.items.iter().map(|i| i.frame.len()).sum();
        assert_eq!(p.bytes, frames);
        assert_eq!(p.take().len(), frames);
        assert_eq!(p.bytes, 0);
    }

    #[test]
    fn pushes_past_the_limit_become_one_reset_and_nothing_follows_it() {
        let mut p = Pushes::default();
        let big = "x".repeat(1024);
        for i in 0..100 {
            value(&mut p, &format!("k{i}"), &big, 0);
        }
        value(&mut p, "after", "1", 0);
        forget(&mut p, "after");
        assert_eq!(taken(&mut p), [r#"{"reset":true}"#]);
    }
}
