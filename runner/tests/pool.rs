//! The runner against a real Python: zygote, workers, limits and the pool's life cycle.
//! Python is `$SKYTHON_PYTHON` (the runtime venv under `make test`), else `python3`; the zygote
//! preloads nothing here so these tests do not need the scientific libraries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use skython_runner::{
    CallResult, Caller, Error, Inspection, Outcome, PoolLimits, RuntimeConfig, StateAnswer,
    StateCache, StateHandler, StatePeer, StateRequest, StateTicket, WorkerPool, WorkerSpec, Zygote,
};

struct NoState;

/// Held by the tests that measure or burn CPU, so they do not skew each other (pipelining
/// depends on how long calls run).
static CPU_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A state store in memory, as the gateway's would be for one function.
#[derive(Default)]
struct MemoryState(std::sync::Mutex<std::collections::HashMap<String, String>>);

#[async_trait]
impl StateHandler for MemoryState {
    async fn handle(&self, request: StateRequest) -> StateAnswer {
        let mut map = self.0.lock().unwrap();
        match request {
            StateRequest::Store {
                key,
                value,
                expect: None,
            } => {
                map.insert(key, value);
                StateAnswer {
                    ok: true,
                    ..Default::default()
                }
            }
            StateRequest::Load { key } => StateAnswer {
                ok: true,
                found: Some(map.contains_key(&key)),
                value: map.get(&key).cloned(),
                ..Default::default()
            },
            _ => StateAnswer::refused("unsupported", "not in this test"),
        }
    }
}

/// State whose workers cache (the pool turns `stateCache` on), where every key holds a long
/// value and every write-behind store ends as `ticket` says.
struct CacheWhere {
    ticket: fn() -> StateTicket,
}

/// Every write-behind store refused, as one past the quota would be.
fn refused() -> StateTicket {
    Box::pin(async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        StateAnswer::refused("quota_exceeded", "state quota exceeded (test)")
    })
}

#[async_trait]
impl StateHandler for CacheWhere {
    async fn handle(&self, _: StateRequest) -> StateAnswer {
        StateAnswer {
            ok: true,
            found: Some(true),
            value: Some(r#""a long value""#.into()),
            ..Default::default()
        }
    }

    fn cache(&self) -> Option<&dyn StateCache> {
        Some(self)
    }
}

impl StateCache for CacheWhere {
    fn attach(&self, _: StatePeer) {}

    fn write_behind(&self, _: &StatePeer, _: String, _: String) -> StateTicket {
        (self.ticket)()
    }

    fn flush(&self) {}
}

#[async_trait]
impl StateHandler for NoState {
    async fn handle(&self, _: StateRequest) -> StateAnswer {
        StateAnswer::refused("no_state", "no state in this test")
    }
}

fn zygote(dir: &std::path::Path) -> Arc<Zygote> {
    skython_runner::install_python_files(dir).unwrap();
    Arc::new(Zygote::new(RuntimeConfig {
        python: std::env::var_os("SKYTHON_PYTHON")
            .map(Into::into)
            .unwrap_or_else(|| "python3".into()),
        python_path: dir.to_path_buf(),
        preload: Some(String::new()),
        workdir: std::env::temp_dir(),
        sandbox: skython_runner::Sandbox::None,
        egress_dir: None,
    }))
}

fn spec(source: &str, entrypoint: &str) -> WorkerSpec {
    WorkerSpec {
        label: "test/f".into(),
        source: source.into(),
        filename: "f.py".into(),
        entrypoint: entrypoint.into(),
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        memory_bytes: Some(256 << 20),
        cpu_seconds_per_call: Some(5),
        max_result_bytes: 1 << 20,
        max_log_bytes: 100,
        max_state_value_bytes: 1024,
        state_cache: false,
    }
}

fn limits(max: usize) -> PoolLimits {
    PoolLimits {
        max_workers: max,
        min_workers: 0,
        queue_limit: 100,
        idle_timeout: Duration::from_millis(300),
        call_timeout: Duration::from_secs(2),
    }
}

/// A few calls, so the pool has measured how long they hold a worker (the second one is
/// sampled) and will queue calls on busy workers.
async fn learn_calls_are_short(pool: &WorkerPool, args: &[u8]) {
    for _ in 0..5 {
        pool.call(args, &Caller::Anonymous).await.unwrap();
    }
}

fn returned(r: &CallResult) -> String {
    match &r.outcome {
        Outcome::Returned(b) => String::from_utf8_lossy(b).into_owned(),
        Outcome::Failed(e) => panic!("failed: {e:?}"),
    }
}

#[tokio::test]
async fn inspect_reports_syntax_errors_and_entry_points() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    match z.inspect("def f(:\n", "f.py", None).await.unwrap() {
        Inspection::Invalid { error } => {
            assert_eq!((error.code.as_str(), error.line), ("syntax_error", Some(1)))
        }
        other => panic!("{other:?}"),
    }
    // `return` outside a function is caught by the compiler, not the parser.
    match z.inspect("return 1\n", "f.py", None).await.unwrap() {
        Inspection::Invalid { error } => assert_eq!(error.code, "syntax_error"),
        other => panic!("{other:?}"),
    }
    match z
        .inspect(
            "def f(a, /, b: int = 2, *c, d, **e) -> str:\n  'Doc.'\n",
            "f.py",
            None,
        )
        .await
        .unwrap()
    {
        Inspection::Ok { signature } => {
            let kinds: Vec<_> = signature.params.iter().map(|p| p.kind.as_str()).collect();
            assert_eq!(
                kinds,
                [
                    "positional_only",
                    "positional_or_keyword",
                    "var_positional",
                    "keyword_only",
                    "var_keyword"
                ]
            );
            assert_eq!(signature.params[1].default.as_deref(), Some("2"));
            assert_eq!(signature.returns.as_deref(), Some("str"));
            assert_eq!(signature.doc.as_deref(), Some("Doc."));
        }
        other => panic!("{other:?}"),
    }
    match z.inspect("x = 1\n", "f.py", Some("nope")).await.unwrap() {
        Inspection::Invalid { error } => assert_eq!(error.code, "entrypoint_not_found"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn workers_are_warm_isolated_and_limited() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = r#"
import os, random
calls = 0

def f(kind: str = "count"):
    global calls
    calls += 1
    if kind == "count":
        return calls
    if kind == "env":
        return [os.environ.get("GREETING"), os.environ.get("SKYTHON_ADMIN_TOKEN"), os.environ.get("HOME")]
    if kind == "random":
        return random.random()
    if kind == "memory":
        return len(bytearray(1 << 30))
    if kind == "chatty":
        print("x" * 500)
        return "done"
"#;
    let pool = WorkerPool::new(z.clone(), spec(source, "f"), limits(1), Arc::new(NoState));
    let call = |args: &'static str| {
        let pool = &pool;
        async move { pool.call(args.as_bytes(), &Caller::Anonymous).await }
    };
    // One warm worker keeps its module state between calls.
    let first = call("{}").await.unwrap();
    assert!(first.cold_start);
    assert_eq!(returned(&first.result), "1");
    let second = call("{}").await.unwrap();
    assert!(!second.cold_start);
    assert_eq!(returned(&second.result), "2");
    // The function's env is set; nothing of the gateway's leaks in.
    assert_eq!(
        returned(&call(r#"{"kind":"env"}"#).await.unwrap().result),
        r#"["hi",null,null]"#
    );
    // Memory beyond the limit is a MemoryError in the call, and the worker lives on.
    let r = call(r#"{"kind":"memory"}"#).await.unwrap();
    match r.result.outcome {
        Outcome::Failed(e) => assert_eq!(e.type_.as_deref(), Some("MemoryError")),
        other => panic!("{other:?}"),
    }
    assert_eq!(returned(&call("{}").await.unwrap().result), "5");
    // Output past the limit is cut with a note, never silently.
    let r = call(r#"{"kind":"chatty"}"#).await.unwrap();
    assert!(r.result.logs.starts_with("xxx"), "{}", r.result.logs);
    assert!(
        r.result
            .logs
            .contains("output truncated, 401 more characters"),
        "{}",
        r.result.logs
    );

    // Two workers forked from one zygote do not share a random stream.
    let pool2 = WorkerPool::new(z.clone(), spec(source, "f"), limits(2), Arc::new(NoState));
    let (a, b) = tokio::join!(
        pool2.call(br#"{"kind":"random"}"#, &Caller::Anonymous),
        pool2.call(br#"{"kind":"random"}"#, &Caller::Anonymous)
    );
    assert_ne!(returned(&a.unwrap().result), returned(&b.unwrap().result));
}

#[tokio::test]
async fn timeouts_and_crashes_replace_the_worker_and_idle_workers_stop() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = "import os, time\n\ndef f(mode=''):\n    if mode == 'spin':\n        while True: pass\n    if mode == 'exit':\n        os._exit(3)\n    return os.getpid()\n";
    let pool = WorkerPool::new(z, spec(source, "f"), limits(2), Arc::new(NoState));
    let pid = returned(&pool.call(b"{}", &Caller::Anonymous).await.unwrap().result);
    let t = Instant::now();
    assert!(matches!(
        pool.call(br#"{"mode":"spin"}"#, &Caller::Anonymous).await,
        Err(Error::Timeout(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        pool.call(br#"{"mode":"exit"}"#, &Caller::Anonymous).await,
        Err(Error::Crashed(_))
    ));
    assert_eq!(pool.live(), 0, "the two broken workers are gone");
    let pid2 = returned(&pool.call(b"{}", &Caller::Anonymous).await.unwrap().result);
    assert_ne!(pid, pid2, "a fresh worker answers");
    let proc_path = format!("/proc/{pid2}");
    assert!(std::path::Path::new(&proc_path).exists());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(pool.reap(Instant::now()), 1);
    assert_eq!(pool.live(), 0);
    // The stopped worker's process is gone too.
    let gone = async {
        while std::path::Path::new(&proc_path).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("worker exited");
}

#[tokio::test]
async fn load_errors_are_reported_with_their_traceback() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let pool = WorkerPool::new(
        z,
        spec(
            "print('loading')\nraise RuntimeError('bad config')\n\ndef f(): pass\n",
            "f",
        ),
        limits(1),
        Arc::new(NoState),
    );
    match pool.call(b"{}", &Caller::Anonymous).await {
        Err(Error::Load(e)) => {
            assert_eq!(e.type_.as_deref(), Some("RuntimeError"));
            assert!(e.message.contains("bad config"));
            let traceback = e.traceback.unwrap();
            assert!(traceback.contains("f.py\", line 2"));
            assert!(
                !traceback.contains("skython_runtime"),
                "the runtime's own frames are left out: {traceback}"
            );
            assert_eq!(e.logs.as_deref(), Some("loading\n"));
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("loading should fail"),
    }
    assert_eq!(pool.live(), 0);
}

/// A source that exhausts the parser or the compiler (a long chain of operators: recursion; of
/// unary minus: the parser's stack) fails its own inspection with a clear code; the zygote and
/// the warm workers it forked before keep serving.
#[tokio::test]
async fn hostile_sources_fail_their_inspection_and_the_zygote_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let zygote_pid = z.start().await.unwrap().pid;
    let pool = WorkerPool::new(
        z.clone(),
        spec("import os\ndef f(): return os.getpid()\n", "f"),
        limits(1),
        Arc::new(NoState),
    );
    let worker_pid = returned(&pool.call(b"{}", &Caller::Anonymous).await.unwrap().result);
    let hostile = [
        format!("x = {}1\ndef main(): return 1\n", "1+".repeat(300_000)),
        format!("x = {}1\ndef main(): return 1\n", "-".repeat(300_000)),
    ];
    for source in &hostile {
        match z.inspect(source, "f.py", None).await.unwrap() {
            Inspection::Invalid { error } => {
                assert_eq!(error.code, "source_too_deeply_nested", "{}", error.message)
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(z.start().await.unwrap().pid, zygote_pid, "the same zygote");
    assert_eq!(
        returned(&pool.call(b"{}", &Caller::Anonymous).await.unwrap().result),
        worker_pid,
        "the same warm worker"
    );
}

/// An inspection holds the zygote's control channel no longer than a fork: while a slow source
/// (seconds of parsing and compiling, within the limits) is inspected, another function's
/// worker starts, and the inspection still gets its verdict.
#[tokio::test]
async fn a_slow_inspection_does_not_delay_worker_starts() {
    let _cpu = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    z.start().await.unwrap();
    let slow = format!("{}def main(): return 1\n", "a\n".repeat(300_000));
    let inspecting = tokio::spawn({
        let z = z.clone();
        async move {
            let started = Instant::now();
            let verdict = z.inspect(&slow, "f.py", None).await;
            (verdict, started.elapsed())
        }
    });
    // The inspection's request is sent and the child at work.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pool = WorkerPool::new(
        z.clone(),
        spec("def f(): return 2\n", "f"),
        limits(1),
        Arc::new(NoState),
    );
    let started = Instant::now();
    assert_eq!(
        returned(&pool.call(b"{}", &Caller::Anonymous).await.unwrap().result),
        "2"
    );
    let cold_start = started.elapsed();
    assert!(
        !inspecting.is_finished(),
        "the worker started only after the inspection ended ({cold_start:?})"
    );
    let (verdict, inspected) = inspecting.await.unwrap();
    assert!(
        matches!(verdict.unwrap(), Inspection::Ok { .. }),
        "the slow source is valid"
    );
    assert!(
        cold_start < inspected / 4,
        "cold start {cold_start:?}, inspection {inspected:?}"
    );
}

/// A caller that leaves in the middle of a control request (a client that disconnects during
/// its deploy) does not leave the zygote's control channel out of step: later requests get their
/// own answers, from the same zygote.
#[tokio::test]
async fn a_caller_that_leaves_mid_request_leaves_the_control_channel_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let zygote_pid = z.start().await.unwrap().pid;
    // Large enough that sending it and answering take a while; cut off at several points.
    let source = format!("{}def main(): return 1\n", "# padding\n".repeat(90_000));
    for micros in [0, 100, 300, 1_000, 3_000, 10_000] {
        let cut = Duration::from_micros(micros);
        let _ = tokio::time::timeout(cut, z.inspect(&source, "f.py", None)).await;
        // Out of step, a request would get another's answer, or wait for one forever.
        let bounded = Duration::from_secs(10);
        let other = spec("def f(): return 3\n", "f");
        match tokio::time::timeout(bounded, z.spawn(&other, bounded, None)).await {
            Ok(Ok(_worker)) => {}
            other => panic!("cut after {cut:?}: {:?}", other.map(|r| r.err())),
        }
        match tokio::time::timeout(bounded, z.inspect("def g(): pass\n", "f.py", None)).await {
            Ok(Ok(Inspection::Ok { signature })) => assert_eq!(signature.entrypoint, "g"),
            other => panic!("cut after {cut:?}: {other:?}"),
        }
    }
    assert_eq!(z.start().await.unwrap().pid, zygote_pid, "the same zygote");
}

/// The zygote runs the runtime package's `__main__`, and a function's `store`/`load` go through
/// `skython`, which imports from the runtime: every module is one copy, its classes and globals
/// the ones the zygote set up (the worker object is an instance of the one `Worker` class).
#[tokio::test]
async fn the_runtime_is_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = r#"
import sys
import skython
from skython import store, load

def f():
    store("k", {"v": 1})
    assert load("k") == {"v": 1}
    files = [getattr(m, "__file__", None) or "" for m in list(sys.modules.values())]
    files = [f for f in files if "skython" in f]
    return {
        "duplicates": sorted({f for f in files if files.count(f) > 1}),
        "one_worker_class": type(skython._worker) is sys.modules["skython_runtime.worker"].Worker,
    }
"#;
    let pool = WorkerPool::new(
        z,
        spec(source, "f"),
        limits(1),
        Arc::new(MemoryState::default()),
    );
    let r = pool.call(b"{}", &Caller::Anonymous).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&returned(&r.result)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"duplicates": [], "one_worker_class": true})
    );
}

/// CPU time is limited per call, also when threads burn it faster than the wall clock runs:
/// threads hashing large buffers (which releases the GIL) use more CPU seconds than the call's
/// limit long before its wall-clock timeout, and the call fails naming the limit. The worker,
/// whose threads may still be burning, is replaced: the next call gets a fresh one.
#[tokio::test]
async fn cpu_time_is_limited_per_call() {
    let _serial = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = r#"
import hashlib, os, threading, time

def f(burn: bool):
    if not burn:
        return os.getpid()
    data = b"x" * (64 << 20)
    def work():
        while True:
            hashlib.sha256(data).digest()
    for _ in range(4):
        threading.Thread(target=work, daemon=True).start()
    while True:
        time.sleep(0.05)
"#;
    let mut s = spec(source, "f");
    s.cpu_seconds_per_call = Some(1);
    let mut l = limits(1);
    l.call_timeout = Duration::from_secs(60);
    let pool = WorkerPool::new(z, s, l, Arc::new(NoState));
    let first = returned(
        &pool
            .call(br#"{"burn": false}"#, &Caller::Anonymous)
            .await
            .unwrap()
            .result,
    );
    let t = Instant::now();
    match pool
        .call(br#"{"burn": true}"#, &Caller::Anonymous)
        .await
        .map(|r| r.result)
    {
        Ok(CallResult {
            outcome: Outcome::Failed(e),
            ..
        }) => {
            assert_eq!(e.type_.as_deref(), Some("CpuLimitExceeded"), "{e:?}");
            assert!(e.message.contains("CPU time"), "{e:?}");
        }
        other => panic!("expected the CPU limit, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the CPU limit, not the 60 s timeout, ended the call: {:?}",
        t.elapsed()
    );
    let next = returned(
        &pool
            .call(br#"{"burn": false}"#, &Caller::Anonymous)
            .await
            .unwrap()
            .result,
    );
    assert_ne!(first, next, "a fresh worker answers");
}

const WHO_CALLED: &str =
    "import os\nfrom skython import caller\n\ndef f():\n    return [caller(), os.getpid()]\n";

fn alice() -> Caller {
    Caller::User {
        name: "alice".into(),
    }
}

fn bobs_key() -> Caller {
    Caller::Key {
        id: "key_1".into(),
        owner: "bob".into(),
        name: "my-app".into(),
    }
}

/// What `skython.caller()` said in the call, and the worker's pid.
fn caller_seen(r: &CallResult) -> (serde_json::Value, i64) {
    serde_json::from_str(&returned(r)).unwrap()
}

/// One worker, calls one after another: each sees its own caller, and an anonymous call after a
/// user's sees anonymous (the worker does not keep the previous identity).
#[tokio::test]
async fn each_call_on_a_worker_sees_its_own_caller() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let pool = WorkerPool::new(z, spec(WHO_CALLED, "f"), limits(1), Arc::new(NoState));
    let mut pids = std::collections::BTreeSet::new();
    for caller in [alice(), bobs_key(), Caller::Anonymous, alice(), alice()] {
        let r = pool.call(b"{}", &caller).await.unwrap();
        let (seen, pid) = caller_seen(&r.result);
        assert_eq!(seen, serde_json::to_value(&caller).unwrap());
        pids.insert(pid);
    }
    assert_eq!(pids.len(), 1, "one worker ran them all");
}

/// Calls of different callers queued together on one busy worker each see their own.
#[tokio::test]
async fn pipelined_calls_of_different_callers_each_see_their_own() {
    let _serial = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let pool = WorkerPool::new(z, spec(WHO_CALLED, "f"), limits(1), Arc::new(NoState));
    learn_calls_are_short(&pool, b"{}").await;
    let before = pool.pipelined();
    let callers = [alice(), alice(), Caller::Anonymous, bobs_key(), alice()];
    let calls = (0..20).map(|i| {
        let (pool, caller) = (&pool, callers[i % callers.len()].clone());
        async move {
            let r = pool.call(b"{}", &caller).await.unwrap();
            (caller, caller_seen(&r.result).0)
        }
    });
    for (caller, seen) in futures::future::join_all(calls).await {
        assert_eq!(seen, serde_json::to_value(&caller).unwrap());
    }
    assert!(
        pool.pipelined() > before,
        "calls were queued on the busy worker"
    );
}

/// Calls that arrive together while every worker is busy queue on a worker rather than wait
/// for the pool: with one worker and room for 15 waiting callers, 20 concurrent calls all
/// succeed, each with its own answer and output, and one worker runs them. Calls that store
/// and load state in the middle of a batch get their own values.
#[tokio::test]
async fn short_calls_are_pipelined_on_busy_workers() {
    let _serial = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = "import os\nfrom skython import store, load\n\ndef f(i, keep=False):\n    if keep:\n        store(f'k{i}', {'i': i})\n        return [load(f'k{i}')['i'], os.getpid()]\n    print(i)\n    return [i, os.getpid()]\n";
    let mut l = limits(1);
    l.queue_limit = 15;
    let pool = WorkerPool::new(z, spec(source, "f"), l, Arc::new(MemoryState::default()));
    learn_calls_are_short(&pool, br#"{"i": 0}"#).await;
    for keep in [false, true] {
        let before = pool.pipelined();
        let calls = (0..20).map(|i| {
            let pool = &pool;
            async move {
                let args = format!(r#"{{"i": {i}, "keep": {keep}}}"#);
                let r = pool.call(args.as_bytes(), &Caller::Anonymous).await;
                let r = r.unwrap_or_else(|e| panic!("keep={keep}: call {i}: {e}"));
                let v: (i64, i64) = serde_json::from_str(&returned(&r.result)).unwrap();
                if !keep {
                    assert_eq!(r.result.logs, format!("{i}\n"), "each call's own output");
                }
                (i, v)
            }
        });
        let answers = futures::future::join_all(calls).await;
        let pids: std::collections::BTreeSet<_> =
            answers.iter().map(|(_, (_, pid))| *pid).collect();
        assert_eq!(pids.len(), 1, "one worker ran them all");
        for (i, (got, _)) in answers {
            assert_eq!(got, i, "keep={keep}");
        }
        assert!(
            pool.pipelined() > before,
            "keep={keep}: calls were queued on the busy worker"
        );
    }
    assert_eq!(pool.live(), 1);
    assert_eq!(pool.waiting(), 0);
}

/// When a worker dies or overruns, the call it was running fails, and the calls queued behind
/// it, which it never started, run on a fresh worker.
#[tokio::test]
async fn calls_queued_behind_a_broken_call_run_elsewhere() {
    let _serial = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = "import os\n\ndef f(mode=''):\n    if mode == 'spin':\n        while True: pass\n    if mode == 'exit':\n        os._exit(3)\n    return os.getpid()\n";
    let pool = WorkerPool::new(z, spec(source, "f"), limits(1), Arc::new(NoState));
    learn_calls_are_short(&pool, b"{}").await;
    for (mode, broken) in [("exit", "Crashed"), ("spin", "Timeout")] {
        let first = returned(&pool.call(b"{}", &Caller::Anonymous).await.unwrap().result);
        let before = pool.pipelined();
        let bad = format!(r#"{{"mode": "{mode}"}}"#);
        // Polled in order: the bad call is submitted first, the others queue behind it.
        let (head, rest) = tokio::join!(
            pool.call(bad.as_bytes(), &Caller::Anonymous),
            futures::future::join_all((0..6).map(|_| pool.call(b"{}", &Caller::Anonymous)))
        );
        match (broken, head) {
            ("Crashed", Err(Error::Crashed(_))) | ("Timeout", Err(Error::Timeout(_))) => {}
            (_, other) => panic!(
                "{mode}: expected {broken}, got {:?}",
                other.map(|r| r.result)
            ),
        }
        for r in rest {
            let pid = returned(&r.expect("a queued call runs on another worker").result);
            assert_ne!(pid, first, "{mode}: not the broken worker");
        }
        assert!(
            pool.pipelined() >= before + 6,
            "{mode}: the calls were queued behind the broken one"
        );
        assert_eq!(pool.live(), 1);
    }
}

/// Arguments larger than a socket buffer are written in parts, in order with the calls queued
/// behind them; large results come back whole.
#[tokio::test]
async fn large_arguments_and_results_cross_whole() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = "def f(s='', n=0):\n    return [len(s), 'y' * n]\n";
    let pool = WorkerPool::new(z, spec(source, "f"), limits(1), Arc::new(NoState));
    learn_calls_are_short(&pool, b"{}").await;
    let big = format!(r#"{{"s": "{}"}}"#, "x".repeat(3 << 20));
    let (a, b, c) = tokio::join!(
        pool.call(big.as_bytes(), &Caller::Anonymous),
        pool.call(br#"{"n": 900000}"#, &Caller::Anonymous),
        pool.call(br#"{"s": "abc"}"#, &Caller::Anonymous)
    );
    let v = |r: Result<skython_runner::CallReport, Error>| -> (usize, usize) {
        let (len, ys): (usize, String) =
            serde_json::from_str(&returned(&r.unwrap().result)).unwrap();
        (len, ys.len())
    };
    assert_eq!(v(a), (3 << 20, 0));
    assert_eq!(v(b), (0, 900_000));
    assert_eq!(v(c), (3, 0));
}

#[tokio::test]
async fn arguments_and_results_keep_their_json_edge_cases() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = "def f(a=None, kind=''):\n    if kind == 'cycle':\n        x = []\n        x.append(x)\n        return x\n    if kind == 'nan':\n        return [float('nan'), float('inf')]\n    if kind == 'str':\n        return 'q\"é'\n    return a\n";
    let pool = WorkerPool::new(z, spec(source, "f"), limits(1), Arc::new(NoState));
    let call = |args: &'static [u8]| {
        let pool = &pool;
        async move { pool.call(args, &Caller::Anonymous).await.unwrap().result }
    };
    // Whitespace around the arguments (the worker's fast scan needs the slow path for it).
    assert_eq!(returned(&call(b" \n{\"a\": [1, 2.5]} \t").await), "[1,2.5]");
    assert_eq!(returned(&call(b"  ").await), "null");
    assert_eq!(returned(&call(br#"{"kind": "nan"}"#).await), "[null,null]");
    assert_eq!(returned(&call(br#"{"kind": "str"}"#).await), r#""q\"é""#);
    let code = |r: CallResult| match r.outcome {
        Outcome::Failed(e) => e.code,
        Outcome::Returned(b) => panic!("returned {b:?}"),
    };
    assert_eq!(code(call(br#"{"a": 1} x"#).await), "bad_json");
    assert_eq!(code(call(b"{\"a\": ").await), "bad_json");
    assert_eq!(
        code(call(br#"{"kind": "cycle"}"#).await),
        "unserializable_result"
    );
}

/// User code can reach its worker's socket; what it writes there is untrusted input.
const FORGE: &str = r#"
import os, struct, threading, time
import skython

def frame(kind, payload):
    skython._worker.chan.sock.sendall(struct.pack("<IB", len(payload), ord(kind)) + payload)

def f(mode=""):
    if mode == "later":
        threading.Thread(target=lambda: (time.sleep(0.2), frame("G", b"x" * 1000))).start()
    if mode == "flood":
        for _ in range(64):
            frame("G", b"x" * 65536)
    if mode == "hello":
        frame("H", b"{}")
    return os.getpid()
"#;

fn forging_pool(dir: &std::path::Path) -> WorkerPool {
    WorkerPool::new(zygote(dir), spec(FORGE, "f"), limits(1), Arc::new(NoState))
}

#[tokio::test]
async fn a_worker_that_sends_frames_while_idle_is_killed_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let pool = forging_pool(dir.path());
    let first = returned(
        &pool
            .call(br#"{"mode":"later"}"#, &Caller::Anonymous)
            .await
            .unwrap()
            .result,
    );
    let gone = async {
        while pool.live() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("the worker that wrote while idle is stopped");
    let next = returned(&pool.call(b"{}", &Caller::Anonymous).await.unwrap().result);
    assert_ne!(first, next, "a fresh worker serves the next call");
}

#[tokio::test]
async fn output_past_the_call_cap_fails_the_call_and_kills_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let pool = forging_pool(dir.path());
    let first = returned(&pool.call(b"{}", &Caller::Anonymous).await.unwrap().result);
    match pool.call(br#"{"mode":"flood"}"#, &Caller::Anonymous).await {
        Err(Error::Misbehaved(m)) => assert!(m.contains("bytes of output"), "{m}"),
        other => panic!(
            "expected the worker to be stopped, got {:?}",
            other.map(|r| r.result)
        ),
    }
    let next = returned(&pool.call(b"{}", &Caller::Anonymous).await.unwrap().result);
    assert_ne!(first, next);
}

#[tokio::test]
async fn a_frame_of_an_unexpected_kind_fails_the_call_as_the_workers_fault() {
    let dir = tempfile::tempdir().unwrap();
    let pool = forging_pool(dir.path());
    match pool.call(br#"{"mode":"hello"}"#, &Caller::Anonymous).await {
        Err(Error::Misbehaved(m)) => assert!(m.contains("unexpected frame 'H'"), "{m}"),
        other => panic!(
            "expected the worker to be stopped, got {:?}",
            other.map(|r| r.result)
        ),
    }
}

/// Without a memory cgroup (a non-root gateway, a runner pod) the worker's limit is its address
/// space: sized so that the full runtime's TensorFlow, which reserves much more than it uses,
/// still runs with a function's default memory. Needs `$SKYTHON_PYTHON_FULL` (`make venv-full`).
#[tokio::test]
async fn keras_runs_under_the_address_space_limit_of_a_function_without_a_cgroup() {
    let python = std::env::var_os("SKYTHON_PYTHON_FULL").expect(
        "SKYTHON_PYTHON_FULL is not set: `make venv-full` builds it, `make test` passes it",
    );
    let dir = tempfile::tempdir().unwrap();
    skython_runner::install_python_files(dir.path()).unwrap();
    let z = Arc::new(Zygote::new(RuntimeConfig {
        python: python.into(),
        python_path: dir.path().to_path_buf(),
        preload: Some("numpy,tensorflow,keras".into()),
        workdir: std::env::temp_dir(),
        sandbox: skython_runner::Sandbox::None,
        egress_dir: None,
    }));
    let source = "import numpy as np, keras\n\ndef f():\n    m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])\n    m.compile(optimizer='sgd', loss='mse')\n    x = np.array([[1, 2], [3, 4]], dtype='float32')\n    m.fit(x, x.sum(1), epochs=2, verbose=0)\n    return m.predict(x, verbose=0).shape\n";
    let mut s = spec(source, "f");
    s.memory_bytes = Some(512 << 20);
    s.cpu_seconds_per_call = Some(60);
    let mut l = limits(1);
    l.call_timeout = Duration::from_secs(60);
    let pool = WorkerPool::new(z, s, l, Arc::new(NoState));
    let report = pool.call(b"{}", &Caller::Anonymous).await.unwrap();
    assert_eq!(returned(&report.result), "[2,1]");
}

/// A write-behind store refused after the function returned: the call fails with the refusal,
/// and the worker, whose cache holds the refused value, is replaced.
#[tokio::test]
async fn a_refused_write_behind_fails_its_call_and_replaces_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = "import os\nfrom skython import load, store\n\n\
                  def f(write=False):\n    load('k')\n    if write:\n        store('k', 1)\n    \
                  return os.getpid()\n";
    let state = Arc::new(CacheWhere { ticket: refused });
    let pool = WorkerPool::new(z, spec(source, "f"), limits(1), state);
    let pid = |r: &CallResult| returned(r).parse::<i64>().unwrap();
    let first = pool.call(b"{}", &Caller::Anonymous).await.unwrap();
    let refused = pool
        .call(br#"{"write": true}"#, &Caller::Anonymous)
        .await
        .unwrap();
    match &refused.result.outcome {
        Outcome::Failed(e) => {
            assert_eq!(
                (e.code.as_str(), e.type_.as_deref()),
                ("function_error", Some("StateError"))
            );
            assert!(
                e.message.contains("state quota exceeded (test)"),
                "{}",
                e.message
            );
        }
        other => panic!("the refused store's call answered {other:?}"),
    }
    let after = pool.call(b"{}", &Caller::Anonymous).await.unwrap();
    assert_ne!(
        pid(&first.result),
        pid(&after.result),
        "a new worker answers"
    );
}

/// A write-behind store that never commits (a stuck disk) holds its call's answer no longer
/// than the call's timeout: the call then fails as unavailable state.
#[tokio::test]
async fn a_write_behind_that_never_commits_fails_its_call_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let z = zygote(dir.path());
    let source = "from skython import load, store\n\ndef f():\n    load('k')\n    store('k', 1)\n    return 1\n";
    let state = Arc::new(CacheWhere {
        ticket: || Box::pin(std::future::pending()),
    });
    let l = limits(1);
    let timeout = l.call_timeout;
    let pool = WorkerPool::new(z, spec(source, "f"), l, state);
    let started = Instant::now();
    let r = pool.call(b"{}", &Caller::Anonymous).await.unwrap();
    match &r.result.outcome {
        Outcome::Failed(e) => assert_eq!(e.code, "state_unavailable", "{e:?}"),
        other => panic!("answered {other:?}"),
    }
    assert!(started.elapsed() >= timeout, "held until the timeout");
}
