//! Control groups against the machine's real cgroupfs (v1 or v2), as root: each test works
//! under a parent group of its own (`skython-test-<pid>-<n>`), which it removes at the end.
//! Without root or cgroups they say so and check nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use skython_runner::cgroup::{Cgroups, GroupLimits, Hierarchy};
use skython_runner::{
    Caller, Error, PoolLimits, RuntimeConfig, StateAnswer, StateHandler, StateRequest, WorkerPool,
    WorkerSpec, Zygote,
};

/// A parent group for one test; removed (with whatever is left in it) when dropped.
struct Base {
    name: String,
    mounts: Vec<PathBuf>,
}

impl Base {
    /// `None` where this process may not manage cgroups.
    fn new() -> Option<(Base, Cgroups)> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "skython-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root: cgroup tests check nothing");
            return None;
        }
        let cg = match Cgroups::detect(&name) {
            Ok(cg) => cg,
            Err(e) => {
                eprintln!("no cgroups ({e}): cgroup tests check nothing");
                return None;
            }
        };
        let mounts = cg.hierarchy().dirs(Path::new(""));
        Some((Base { name, mounts }, cg))
    }

    fn dirs(&self) -> Vec<PathBuf> {
        self.mounts.iter().map(|m| m.join(&self.name)).collect()
    }

    fn detect(&self) -> Cgroups {
        Cgroups::detect(&self.name).unwrap()
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        for d in self.dirs() {
            for instance in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                remove_tree(&instance.path());
            }
            let _ = std::fs::remove_dir(&d);
        }
    }
}

fn remove_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn limits(memory: u64, pids: Option<u64>, cpu: Option<u64>) -> GroupLimits {
    GroupLimits {
        memory_bytes: Some(memory),
        pids,
        cpu_millis: cpu,
    }
}

fn function_limits() -> GroupLimits {
    limits(1 << 30, Some(64), None)
}

fn worker_limits() -> GroupLimits {
    limits(256 << 20, None, Some(500))
}

/// Polls `f` until it is true or `timeout` passes.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A process alive and not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// The processes listed in a group (its directory in one mount), descendants included.
fn procs(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(procs(&e.path()));
        }
    }
    out
}

/// A shell that waits for a line on its stdin before running `script`, so that it can be
/// placed in a group before it starts anything. Killed when dropped (a failed test leaves
/// nothing running; its output goes nowhere, so nothing it leaves holds the test's).
struct Held(Child);

fn held(script: &str) -> Held {
    Held(
        Command::new("sh")
            .args(["-c", &format!("read go; {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

impl Held {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn go(&mut self) {
        writeln!(self.0.stdin.as_mut().unwrap()).unwrap();
    }

    /// Reaps it (once it was killed).
    fn wait(&mut self) {
        let _ = self.0.wait();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `sh` whose background `setsid` daemon (a session of its own) and foreground
/// `sleep` are in `group`; returns the shell and every pid of the three.
fn daemon_in(group: &skython_runner::cgroup::Group) -> (Held, Vec<i32>) {
    let mut sh = held("setsid sleep 1000 & sleep 1000");
    group.add(sh.id() as i32).unwrap();
    sh.go();
    let dir = &group.dirs()[0];
    assert!(
        eventually(Duration::from_secs(5), || procs(dir).len() >= 3),
        "the shell and its two sleeps in {}",
        dir.display()
    );
    (sh, procs(dir))
}

/// Asserts that every one of `pids` is gone within `secs`.
fn assert_all_die(pids: &[i32], secs: u64) {
    assert!(
        eventually(Duration::from_secs(secs), || pids
            .iter()
            .all(|&p| !alive(p))),
        "left alive: {:?}",
        pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}

/// Asserts that every one of a group's directories is removed within `secs`.
fn assert_removed(dirs: &[PathBuf], secs: u64) {
    assert!(
        eventually(Duration::from_secs(secs), || dirs
            .iter()
            .all(|d| !d.exists())),
        "{dirs:?} still there"
    );
}

#[test]
fn a_workers_group_is_killed_with_its_setsid_daemon_and_removed_when_dropped() {
    let Some((_base, cg)) = Base::new() else {
        return;
    };
    let function = cg
        .group("t.f.1", function_limits(), worker_limits())
        .unwrap();
    let worker = function.worker(0).unwrap();
    let dirs = worker.dirs();
    let (mut sh, pids) = daemon_in(&worker);
    drop(worker);
    assert_all_die(&pids, 5);
    sh.wait();
    assert_removed(&dirs, 5);
    assert!(
        function.dirs().iter().all(|d| d.exists()),
        "the function's group stays"
    );
}

#[test]
fn a_worker_group_left_frozen_by_a_killed_gateway_is_thawed_killed_and_removed() {
    let Some((_base, cg)) = Base::new() else {
        return;
    };
    let function = cg
        .group("t.f.1", function_limits(), worker_limits())
        .unwrap();
    let worker = function.worker(0).unwrap();
    let Some(freezer) = worker
        .dirs()
        .into_iter()
        .find(|d| d.join("freezer.state").exists())
    else {
        return; // no v1 freezer here
    };
    let dirs = worker.dirs();
    let (mut sh, pids) = daemon_in(&worker);
    // What a gateway killed between its freeze and its thaw leaves behind; then the group
    // above it is killed (as a starting gateway kills a gone instance's).
    std::fs::write(freezer.join("freezer.state"), "FROZEN").unwrap();
    drop(function);
    let died = eventually(Duration::from_secs(10), || pids.iter().all(|&p| !alive(p)));
    if !died {
        // Thawed here so that the failure is reported rather than the shell waited for forever.
        let _ = std::fs::write(freezer.join("freezer.state"), "THAWED");
    }
    assert!(died, "left alive, frozen: {pids:?}");
    sh.wait();
    drop(worker);
    assert_removed(&dirs, 10);
}

#[test]
fn a_function_group_takes_every_workers_processes_down_when_dropped() {
    let Some((_base, cg)) = Base::new() else {
        return;
    };
    let function = cg
        .group("t.f.1", function_limits(), worker_limits())
        .unwrap();
    let (a, b) = (function.worker(0).unwrap(), function.worker(1).unwrap());
    let (mut sh_a, mut pids) = daemon_in(&a);
    let (mut sh_b, pids_b) = daemon_in(&b);
    pids.extend(pids_b);
    let dirs = function.dirs();
    // The pool goes first and its workers' slots with it, in whatever order.
    drop(function);
    assert_all_die(&pids, 5);
    sh_a.wait();
    sh_b.wait();
    drop((a, b));
    assert_removed(&dirs, 5);
}

#[test]
fn a_worker_group_holds_its_memory_limit_and_the_function_group_its_own() {
    let Some((_base, cg)) = Base::new() else {
        return;
    };
    let function = cg
        .group("t.f.1", function_limits(), worker_limits())
        .unwrap();
    let worker = function.worker(7).unwrap();
    let read = |dir: &Path, file: &str| {
        std::fs::read_to_string(dir.join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    match cg.hierarchy() {
        Hierarchy::V1 { .. } => {
            assert_eq!(
                read(&function.dirs()[0], "memory.limit_in_bytes"),
                (1u64 << 30).to_string()
            );
            assert_eq!(read(&function.dirs()[1], "pids.max"), "64");
            assert_eq!(
                read(&worker.dirs()[0], "memory.limit_in_bytes"),
                (256u64 << 20).to_string()
            );
            assert!(worker.dirs()[0].ends_with("w-7"));
        }
        Hierarchy::V2 { .. } => {
            assert_eq!(
                read(&function.dirs()[0], "memory.max"),
                (1u64 << 30).to_string()
            );
            assert_eq!(read(&function.dirs()[0], "pids.max"), "64");
            assert_eq!(
                read(&worker.dirs()[0], "memory.max"),
                (256u64 << 20).to_string()
            );
        }
    }
}

/// CPU seconds a process has used (user + system), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are the 14th and 15th fields (the 12th and 13th after the name).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// How many periods the group was throttled in, from its `cpu.stat`.
fn throttled(cpu_dir: &Path) -> u64 {
    std::fs::read_to_string(cpu_dir.join("cpu.stat"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_spinning_worker_gets_its_cpu_quota() {
    let Some((_base, cg)) = Base::new() else {
        return;
    };
    if !cg.hierarchy().has_cpu() {
        eprintln!("no cpu controller: nothing to check");
        return;
    }
    let function = cg
        .group("t.f.1", function_limits(), worker_limits())
        .unwrap();
    let worker = function
        .worker(0)
        .unwrap_or_else(|e| panic!("worker group: {e}"));
    let cpu_dir = match cg.hierarchy() {
        Hierarchy::V1 { .. } => worker.dirs()[2].clone(),
        Hierarchy::V2 { .. } => worker.dirs()[0].clone(),
    };
    let mut spin = held("while :; do :; done");
    worker.add(spin.id() as i32).unwrap();
    spin.go();
    std::thread::sleep(Duration::from_millis(300));
    let (c0, t0) = (cpu_seconds(spin.id()), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let share = (cpu_seconds(spin.id()) - c0) / t0.elapsed().as_secs_f64();
    drop(spin);
    // 500m: half a CPU at most (ticks are 10 ms: a margin), and the quota, not the
    // machine's load, is what held it.
    assert!(share < 0.6, "used {share:.2} CPU");
    assert!(share > 0.1, "used only {share:.2} CPU");
    assert!(throttled(&cpu_dir) > 0, "never throttled");
}

#[test]
fn a_live_instances_groups_are_left_alone_by_another_starting_instance() {
    let Some((base, a)) = Base::new() else {
        return;
    };
    let function = a
        .group("t.f.1", function_limits(), worker_limits())
        .unwrap();
    let worker = function.worker(0).unwrap();
    let (mut sh, pids) = daemon_in(&worker);
    let b = base.detect();
    assert_ne!(a.path(), b.path());
    assert!(worker.dirs().iter().all(|d| d.exists()));
    assert!(pids.iter().all(|&p| alive(p)), "nothing of a's was killed");
    // The lock that told b so: held by a, from anywhere that shares the cgroupfs.
    let dir = std::fs::File::open(a.hierarchy().dirs(a.path())[0].clone()).unwrap();
    assert!(dir.try_lock().is_err(), "a holds its lock");
    // And a's groups still take processes.
    let next = function.worker(1).unwrap();
    let sleeper = held("sleep 1000");
    next.add(sleeper.id() as i32).unwrap();
    drop(sleeper);
    drop(worker);
    assert!(eventually(Duration::from_secs(5), || pids
        .iter()
        .all(|&p| !alive(p))));
    sh.wait();
}

#[test]
fn a_gone_instances_groups_are_killed_and_removed_by_the_next_instance() {
    let Some((base, cg)) = Base::new() else {
        return;
    };
    drop(cg);
    // What a crashed gateway leaves: its groups, a process in one, and no lock held.
    let stale = PathBuf::from(&base.name).join("0123456789abcdef/fn-t.f.1.0/w-0");
    let mounts = base.mounts.clone();
    for m in &mounts {
        std::fs::create_dir_all(m.join(&stale)).unwrap();
    }
    let mut sleeper = held("sleep 1000");
    let pid = sleeper.id() as i32;
    for m in &mounts {
        std::fs::write(m.join(&stale).join("cgroup.procs"), pid.to_string()).unwrap();
    }
    let _b = base.detect();
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "the stale group's process was killed"
    );
    sleeper.wait();
    for m in &mounts {
        let gone = m.join(&base.name).join("0123456789abcdef");
        assert!(!gone.exists(), "{} removed", gone.display());
    }
}

#[test]
fn a_vanished_function_group_is_made_again_with_its_limits_for_the_next_worker() {
    let Some((_base, cg)) = Base::new() else {
        return;
    };
    let function = cg
        .group("t.f.1", function_limits(), worker_limits())
        .unwrap();
    drop(function.worker(0).unwrap());
    let dirs = function.dirs();
    // Someone removes it (empty groups can be removed), as the second gateway used to.
    assert!(
        eventually(Duration::from_secs(5), || dirs
            .iter()
            .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())),
        "removing {dirs:?}"
    );
    let worker = function.worker(1).unwrap();
    assert!(worker.dirs().iter().all(|d| d.exists()));
    let (file, want) = match cg.hierarchy() {
        Hierarchy::V1 { .. } => ("memory.limit_in_bytes", 1u64 << 30),
        Hierarchy::V2 { .. } => ("memory.max", 1u64 << 30),
    };
    assert_eq!(
        std::fs::read_to_string(dirs[0].join(file)).unwrap().trim(),
        want.to_string()
    );
}

#[test]
fn a_process_is_placed_in_a_worker_group_that_vanished() {
    let Some((_base, cg)) = Base::new() else {
        return;
    };
    let function = cg
        .group("t.f.1", function_limits(), worker_limits())
        .unwrap();
    let worker = function.worker(0).unwrap();
    for d in worker.dirs() {
        std::fs::remove_dir(&d).unwrap();
    }
    let sleeper = held("sleep 1000");
    worker.add(sleeper.id() as i32).unwrap();
    assert_eq!(procs(&worker.dirs()[0]), vec![sleeper.id() as i32]);
}

struct NoState;

#[async_trait]
impl StateHandler for NoState {
    async fn handle(&self, _: StateRequest) -> StateAnswer {
        StateAnswer::refused("no_state", "no state in this test")
    }
}

/// Starts a `setsid()` daemon (double fork) that sleeps, and returns its pid; with `hang`,
/// then sleeps past any timeout.
const DAEMON: &str = r#"
import os, time

def main(hang: bool = False):
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            time.sleep(1000)
        os._exit(0)
    os.wait()
    pid = int(os.read(r, 32))
    if hang:
        time.sleep(1000)
    return pid
"#;

#[tokio::test]
async fn a_timed_out_calls_daemon_dies_with_its_worker() {
    let Some((_base, cg)) = Base::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    skython_runner::install_python_files(dir.path()).unwrap();
    let zygote = Arc::new(Zygote::new(RuntimeConfig {
        python: std::env::var_os("SKYTHON_PYTHON")
            .map(Into::into)
            .unwrap_or_else(|| "python3".into()),
        python_path: dir.path().to_path_buf(),
        preload: Some(String::new()),
        workdir: std::env::temp_dir(),
        sandbox: skython_runner::Sandbox::None,
        egress_dir: None,
    }));
    let spec = WorkerSpec {
        label: "test/daemon".into(),
        source: DAEMON.into(),
        filename: "daemon.py".into(),
        entrypoint: "main".into(),
        env: Default::default(),
        memory_bytes: None,
        cpu_seconds_per_call: None,
        max_result_bytes: 1 << 20,
        max_log_bytes: 1 << 10,
        max_state_value_bytes: 1024,
        state_cache: false,
    };
    let limits = PoolLimits {
        max_workers: 1,
        min_workers: 0,
        queue_limit: 10,
        idle_timeout: Duration::from_secs(60),
        call_timeout: Duration::from_secs(2),
    };
    let group = cg
        .group("t.daemon.1", function_limits(), worker_limits())
        .unwrap();
    let function_dirs = group.dirs();
    let pool = WorkerPool::new(zygote, spec, limits, Arc::new(NoState)).in_group(Some(group));
    let first = pool.call(b"{}", &Caller::Anonymous).await.unwrap();
    let daemon: i32 = match first.result.outcome {
        skython_runner::Outcome::Returned(b) => std::str::from_utf8(&b).unwrap().parse().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(alive(daemon), "the daemon runs after its call");
    assert!(
        procs(&function_dirs[0]).contains(&daemon),
        "the daemon is in the function's group"
    );
    match pool.call(br#"{"hang": true}"#, &Caller::Anonymous).await {
        Err(Error::Timeout(_)) => {}
        Err(e) => panic!("expected a timeout, got {e}"),
        Ok(_) => panic!("expected a timeout, got an answer"),
    }
    assert!(
        eventually(Duration::from_secs(5), || !alive(daemon)),
        "the daemon outlived its worker"
    );
    drop(pool);
    assert!(
        eventually(Duration::from_secs(5), || function_dirs
            .iter()
            .all(|d| !d.exists())),
        "{function_dirs:?} still there after the pool went"
    );
}
