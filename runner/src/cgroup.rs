//! Control groups: a function version's processes are a unit. Each version has a group with
//! the function-wide limits (memory of all its workers together, processes and threads), and
//! each worker a group of its own inside it (its memory and its CPU share), joined before any
//! user code runs; whatever the worker starts (a `setsid()` daemon included) stays in it. When a
//! worker stops for any reason, or a version is retired or deleted, everything left in its group
//! is killed and the group removed.
//!
//! ```text
//! <hierarchy>/skython/<instance id>/fn-<owner>.<endpoint>.<generation>.<n>/w-<worker>
//! ```
//!
//! Works on cgroup v2 (one unified hierarchy with the `memory`, `pids` and, if offered, `cpu`
//! controllers) and v1 (a hierarchy per controller, as on machines whose kubelet uses cgroupfs:
//! `memory`, `pids`, and `cpu` and `freezer` when mounted). The gateway needs write access to
//! the hierarchy (root, or a delegated subtree); without it, functions keep their rlimits only
//! and `skython up` says so.
//!
//! Several gateways may share one cgroupfs (containers on one host, each in its own PID
//! namespace), so groups are owned by a random instance id, not a pid: an instance holds
//! `flock(LOCK_EX)` on its own directories for its life, and a starting instance removes only
//! the instances' directories whose lock it can take (their owner is gone).

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub enum Hierarchy {
    /// One mount per controller; `freezer` stops a group's processes while they are killed.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
        freezer: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
        cpu: bool,
    },
}

impl Hierarchy {
    /// The directory of the group at `path` in each mount.
    pub fn dirs(&self, path: &Path) -> Vec<PathBuf> {
        match self {
            Hierarchy::V1 {
                memory,
                pids,
                cpu,
                freezer,
            } => [Some(memory), Some(pids), cpu.as_ref(), freezer.as_ref()]
                .into_iter()
                .flatten()
                .map(|m| m.join(path))
                .collect(),
            Hierarchy::V2 { root, .. } => vec![root.join(path)],
        }
    }

    /// The file that counts the group's processes killed by the OOM killer.
    pub fn oom_events(&self, path: &Path) -> PathBuf {
        match self {
            Hierarchy::V1 { memory, .. } => memory.join(path).join("memory.oom_control"),
            Hierarchy::V2 { root, .. } => root.join(path).join("memory.events"),
        }
    }

    /// Whether groups can have a CPU limit here.
    pub fn has_cpu(&self) -> bool {
        match self {
            Hierarchy::V1 { cpu, .. } => cpu.is_some(),
            Hierarchy::V2 { cpu, .. } => *cpu,
        }
    }
}

/// Which hierarchy to use, from what `/sys/fs/cgroup` (`base`) shows: the controllers of a
/// unified (v2) root if it is one, else which v1 hierarchies are mounted.
pub fn choose_hierarchy(
    base: &Path,
    unified_controllers: Option<&str>,
    v1_mounted: impl Fn(&str) -> bool,
) -> Result<Hierarchy, String> {
    if let Some(controllers) = unified_controllers {
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if !(has("memory") && has("pids")) {
            return Err("cgroup v2 without the memory and pids controllers".into());
        }
        return Ok(Hierarchy::V2 {
            root: base.into(),
            cpu: has("cpu"),
        });
    }
    if !(v1_mounted("memory") && v1_mounted("pids")) {
        return Err("no memory and pids cgroup hierarchies under /sys/fs/cgroup".into());
    }
    let optional = |c: &str| v1_mounted(c).then(|| base.join(c));
    Ok(Hierarchy::V1 {
        memory: base.join("memory"),
        pids: base.join("pids"),
        cpu: optional("cpu"),
        freezer: optional("freezer"),
    })
}

/// What one group allows; `None` leaves a resource unlimited there (its parent's limit holds).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GroupLimits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// CPU time per wall-clock second, in thousandths of a CPU (`resources.cpu`).
    pub cpu_millis: Option<u64>,
}

/// How many processes of a group the OOM killer ended, from its `memory.oom_control` (v1) or
/// `memory.events` (v2): both have an `oom_kill N` line.
pub fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Tells whether the kernel killed a process of a worker's group for memory: a worker that
/// vanished then ran out of its limit rather than crashed.
#[derive(Debug, Clone)]
pub struct OomProbe {
    events: PathBuf,
    /// The group's memory limit, for the message.
    pub limit_bytes: Option<u64>,
}

impl OomProbe {
    pub fn fired(&self) -> bool {
        std::fs::read_to_string(&self.events).is_ok_and(|t| oom_kills(&t) > 0)
    }
}

/// The CFS period: a CPU limit is enforced in slices of this length.
pub const CPU_PERIOD_MICROS: u64 = 100_000;
/// The smallest quota the kernel accepts per period.
const MIN_CPU_QUOTA_MICROS: u64 = 1_000;

/// CPU time allowed per period for `millis` thousandths of a CPU.
pub fn cpu_quota_micros(millis: u64) -> u64 {
    (millis.saturating_mul(CPU_PERIOD_MICROS) / 1000).max(MIN_CPU_QUOTA_MICROS)
}

/// A group's directories and the files to write in each, in order: pure, unit-tested. A group
/// with `children` lets them use the controllers (v2 only: v1 controllers are per mount).
pub fn layout(
    h: &Hierarchy,
    path: &Path,
    limits: &GroupLimits,
    children: bool,
) -> Vec<(PathBuf, Vec<(&'static str, String)>)> {
    let mem = limits.memory_bytes.map(|b| b.to_string());
    let pids = limits.pids.map(|p| p.to_string());
    let quota = limits.cpu_millis.map(cpu_quota_micros);
    match h {
        // No swap on the machines this targets; where there is, memsw may be absent: the
        // memory limit alone still bounds resident pages.
        Hierarchy::V1 {
            memory,
            pids: p,
            cpu,
            freezer,
        } => {
            let mut dirs = vec![
                (
                    memory.join(path),
                    mem.map(|m| vec![("memory.limit_in_bytes", m)])
                        .unwrap_or_default(),
                ),
                (
                    p.join(path),
                    pids.map(|n| vec![("pids.max", n)]).unwrap_or_default(),
                ),
            ];
            if let Some(cpu) = cpu {
                let files = match quota {
                    // The period first: the quota is checked against it.
                    Some(q) => vec![
                        ("cpu.cfs_period_us", CPU_PERIOD_MICROS.to_string()),
                        ("cpu.cfs_quota_us", q.to_string()),
                    ],
                    None => vec![],
                };
                dirs.push((cpu.join(path), files));
            }
            if let Some(f) = freezer {
                dirs.push((f.join(path), vec![]));
            }
            dirs
        }
        Hierarchy::V2 { root, cpu } => {
            let mut files = Vec::new();
            if children {
                files.push(("cgroup.subtree_control", subtree_control(*cpu).into()));
            }
            if let Some(m) = mem {
                files.push(("memory.max", m));
                files.push(("memory.swap.max", "0".into()));
            }
            if let Some(n) = pids {
                files.push(("pids.max", n));
            }
            if let (Some(q), true) = (quota, cpu) {
                files.push(("cpu.max", format!("{q} {CPU_PERIOD_MICROS}")));
            }
            vec![(root.join(path), files)]
        }
    }
}

/// What a v2 group with children enables for them.
fn subtree_control(cpu: bool) -> &'static str {
    if cpu {
        "+memory +pids +cpu"
    } else {
        "+memory +pids"
    }
}

/// A single path component, whatever the name: `fn-` and only `[A-Za-z0-9.-]` (others become `_`).
fn sanitize(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("fn-{safe}")
}

/// How to stop every process of a group and its descendants: pure, unit-tested.
#[derive(Debug, PartialEq)]
struct KillPlan {
    /// v2's `cgroup.kill` (Linux 5.14+): the kernel kills the whole subtree at once.
    kill: Option<PathBuf>,
    /// Otherwise freeze the group while signalling its processes, so none forks meanwhile:
    /// (file, frozen, thawed).
    freeze: Option<(PathBuf, &'static str, &'static str)>,
    /// The directory whose subtree lists the group's processes.
    procs: PathBuf,
}

fn kill_plan(h: &Hierarchy, path: &Path) -> KillPlan {
    match h {
        Hierarchy::V2 { root, .. } => {
            let dir = root.join(path);
            KillPlan {
                kill: Some(dir.join("cgroup.kill")),
                freeze: Some((dir.join("cgroup.freeze"), "1", "0")),
                procs: dir,
            }
        }
        Hierarchy::V1 { pids, freezer, .. } => KillPlan {
            kill: None,
            freeze: freezer
                .as_ref()
                .map(|f| (f.join(path).join("freezer.state"), "FROZEN", "THAWED")),
            // Every process of ours is in every mount; pids lists them as well as any.
            procs: pids.join(path),
        },
    }
}

/// The pids in a `cgroup.procs` file that may be signalled: never 0 or negative (which would
/// mean a process group or every process) and never ourselves.
fn parse_procs(text: &str, own: i32) -> Vec<i32> {
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p > 0 && p != own)
        .collect()
}

/// The processes in the group at `dir` and in its descendants.
fn procs_in(dir: &Path) -> Vec<i32> {
    let own = std::process::id() as i32;
    let mut out = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| parse_procs(&t, own))
        .unwrap_or_default();
    for sub in subgroups(dir) {
        out.extend(procs_in(&sub));
    }
    out
}

fn subgroups(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Thaws a group and every group below it. A group frozen on its own (by a gateway killed
/// between its freeze and its thaw) stays frozen when only its parent thaws, and its processes
/// would never receive their SIGKILL.
fn thaw_tree(file: &Path, thawed: &str) {
    let _ = std::fs::write(file, thawed);
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return;
    };
    for sub in subgroups(dir) {
        thaw_tree(&sub.join(name), thawed);
    }
}

/// How long killing one group may take before it is left for a later try.
const KILL_FOR: Duration = Duration::from_secs(2);

/// Kills everything in `plan`'s group (and its descendants); true once none is left.
fn kill_all(plan: &KillPlan) -> bool {
    let end = Instant::now() + KILL_FOR;
    if plan
        .kill
        .as_ref()
        .is_some_and(|k| std::fs::write(k, "1").is_ok())
    {
        return wait_until(end, || procs_in(&plan.procs).is_empty());
    }
    loop {
        if let Some((file, frozen, _)) = &plan.freeze
            && std::fs::write(file, frozen).is_ok()
        {
            // A process in uninterruptible sleep may keep the group freezing: go on anyway,
            // the next round catches what forked meanwhile.
            wait_until(Instant::now() + Duration::from_millis(100), || {
                is_frozen(file).unwrap_or(true)
            });
        }
        let pids = procs_in(&plan.procs);
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Frozen processes die once thawed.
        if let Some((file, _, thawed)) = &plan.freeze {
            thaw_tree(file, thawed);
        }
        if pids.is_empty() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a freezer file (v1 `freezer.state`, v2 `cgroup.freeze`) says the group is frozen.
fn is_frozen(file: &Path) -> Option<bool> {
    if file.ends_with("freezer.state") {
        return Some(std::fs::read_to_string(file).ok()?.trim() == "FROZEN");
    }
    let events = std::fs::read_to_string(file.with_file_name("cgroup.events")).ok()?;
    Some(events.lines().any(|l| l.trim() == "frozen 1"))
}

fn wait_until(end: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills every process in the group at `path` (relative to the mounts) and its descendants,
/// then removes their directories in every mount; false if some remain (try again later).
fn kill_and_remove(h: &Hierarchy, path: &Path) -> bool {
    if !is_instance_path(path) {
        tracing::error!(group = %path.display(), "refusing to kill a group outside an instance's");
        return true;
    }
    let dirs = h.dirs(path);
    if !dirs.iter().any(|d| d.exists()) {
        return true;
    }
    let emptied = kill_all(&kill_plan(h, path));
    let removed = dirs.iter().all(|d| remove_tree(d));
    emptied && removed
}

/// Whether `path` (relative to the mounts) is an instance's group or inside one: never a
/// mount's root, the shared parent, or anything outside them.
fn is_instance_path(path: &Path) -> bool {
    path.components().count() >= 2
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// Removes a group's directory after its descendants'; true if it is gone.
fn remove_tree(dir: &Path) -> bool {
    for sub in subgroups(dir) {
        remove_tree(&sub);
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == ErrorKind::NotFound,
    }
}

/// Tries to kill and remove one group this often before leaving it (a process stuck in the
/// kernel); the next gateway to start after this one removes it.
const KILL_TRIES: u32 = 20;

/// Kills and removes the groups sent to it, in a thread of its own (processes take a moment to
/// die); tries again later those still busy.
fn reaper(h: Hierarchy, rx: mpsc::Receiver<PathBuf>) {
    let mut pending: Vec<(PathBuf, u32)> = Vec::new();
    loop {
        let next = if pending.is_empty() {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(Duration::from_millis(500))
        };
        let closed = match next {
            Ok(p) => {
                pending.push((p, 0));
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        pending.extend(rx.try_iter().map(|p| (p, 0)));
        pending.retain_mut(|(p, tries)| {
            if kill_and_remove(&h, p) {
                return false;
            }
            *tries += 1;
            if *tries >= KILL_TRIES {
                tracing::warn!(group = %p.display(), "cgroup still busy; left behind");
                return false;
            }
            true
        });
        if closed {
            return;
        }
    }
}

/// Where a group is, what it allows, and its parent: enough to create it again.
#[derive(Debug)]
struct Node {
    path: PathBuf,
    limits: GroupLimits,
    /// The limits of each child group (workers), for a function version's group.
    children: Option<GroupLimits>,
    /// `None` for the instance's own group.
    parent: Option<Arc<Node>>,
}

/// This gateway instance's place in the hierarchy.
#[derive(Debug)]
struct Instance {
    hierarchy: Hierarchy,
    node: Arc<Node>,
    /// Held for the instance's life: one per directory of `node`, with the directory.
    locks: Mutex<Vec<(PathBuf, File)>>,
    /// Groups to kill and remove.
    reaper: mpsc::Sender<PathBuf>,
    next_group: AtomicU64,
}

impl Instance {
    /// Creates this instance's directories (again, if they vanished) and locks them. A lock on
    /// a directory that was removed and made again is taken anew.
    fn claim(&self) -> std::io::Result<()> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // A starting instance may take the lock of a directory we just made (before we lock
        // it), find it stale and remove it: then we try again.
        'attempt: for _ in 0..5 {
            for dir in self.hierarchy.dirs(&self.node.path) {
                let held = locks.iter().any(|(d, f)| d == &dir && same_dir(f, &dir));
                if held {
                    continue;
                }
                std::fs::create_dir_all(&dir).map_err(|e| at(&dir, e))?;
                let f = match File::open(&dir) {
                    Ok(f) => f,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue 'attempt,
                    Err(e) => return Err(at(&dir, e)),
                };
                // Blocks only while another instance holds it to look at it.
                f.lock().map_err(|e| at(&dir, e))?;
                locks.retain(|(d, _)| d != &dir);
                locks.push((dir, f));
            }
            if locks.iter().all(|(d, f)| same_dir(f, d)) {
                if let Hierarchy::V2 { root, cpu } = &self.hierarchy {
                    enable_controllers(root, &self.node.path, *cpu)?;
                }
                return Ok(());
            }
        }
        Err(std::io::Error::other(format!(
            "{}: removed as fast as it was made",
            self.node.path.display()
        )))
    }

    /// Creates a group with its limits, and its ancestors if they vanished.
    fn create(&self, node: &Node) -> std::io::Result<()> {
        let Some(parent) = &node.parent else {
            return self.claim();
        };
        for (dir, files) in layout(
            &self.hierarchy,
            &node.path,
            &node.limits,
            node.children.is_some(),
        ) {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    tracing::warn!(group = %parent.path.display(), "cgroup vanished; making it again");
                    self.create(parent)?;
                    match std::fs::create_dir(&dir) {
                        Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                            return Err(at(&dir, e));
                        }
                        _ => {}
                    }
                }
                Err(e) => return Err(at(&dir, e)),
            }
            for (file, value) in files {
                // memory.swap.max is absent without swap accounting: the memory limit holds anyway.
                if let Err(e) = std::fs::write(dir.join(file), &value)
                    && !(file == "memory.swap.max" && e.kind() == ErrorKind::NotFound)
                {
                    return Err(at(&dir.join(file), e));
                }
            }
        }
        Ok(())
    }

    fn remove_later(&self, path: PathBuf) {
        if let Err(mpsc::SendError(path)) = self.reaper.send(path) {
            kill_and_remove(&self.hierarchy, &path);
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // The last group is gone (or the gateway stops): nothing of ours may outlive us.
        kill_and_remove(&self.hierarchy, &self.node.path);
    }
}

/// The open directory `f` is still the one at `path` (not removed, nor made again).
fn same_dir(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn at(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// v2: lets the groups down to `path`'s children use the controllers. The hierarchy's root may
/// refuse (in a container whose root group holds processes): then it must have delegated them.
fn enable_controllers(root: &Path, path: &Path, cpu: bool) -> std::io::Result<()> {
    let wanted = subtree_control(cpu);
    let _ = std::fs::write(root.join("cgroup.subtree_control"), wanted);
    let mut dir = root.to_path_buf();
    for c in path.components() {
        dir.push(c);
        let file = dir.join("cgroup.subtree_control");
        std::fs::write(&file, wanted).map_err(|e| at(&file, e))?;
    }
    Ok(())
}

/// Removes the groups of instances that are gone: those under `shared` whose lock we can take
/// (a live instance, in any container sharing this cgroupfs, holds its own). Whatever is left in
/// them is killed first.
fn remove_stale(h: &Hierarchy, shared: &Path, ours: &Path) {
    // An instance has a directory in every mount (v1): each is judged and removed once.
    let mut seen = std::collections::HashSet::new();
    for root in h.dirs(shared) {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let path = shared.join(e.file_name());
            if path == ours || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if !seen.insert(e.file_name()) {
                continue;
            }
            if let Some(pid) = e.file_name().to_str().and_then(legacy_pid) {
                // A gateway from before instance ids: it holds no lock, so only its empty
                // groups go, once its pid is not running here (its old rule).
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    remove_tree(&e.path());
                }
                continue;
            }
            let Ok(dir) = File::open(e.path()) else {
                continue;
            };
            if dir.try_lock().is_err() {
                continue;
            }
            tracing::info!(group = %path.display(), "removing the cgroups of a gateway that is gone");
            kill_and_remove(h, &path);
        }
    }
}

/// The pid that named an instance's group before instance ids (16 hex digits) named them.
fn legacy_pid(name: &str) -> Option<u32> {
    (name.len() < INSTANCE_ID_CHARS)
        .then(|| name.parse().ok())
        .flatten()
}

const INSTANCE_ID_CHARS: usize = 16;

/// The machine's cgroups, under a parent group of this gateway instance's own.
#[derive(Debug)]
pub struct Cgroups {
    instance: Arc<Instance>,
}

impl Cgroups {
    /// Finds a writable hierarchy with memory and pids control, claims a group for this
    /// instance under `base` (e.g. `skython`), and removes those of instances that are gone;
    /// `Err` says why there are no cgroups.
    pub fn detect(base: &str) -> Result<Self, String> {
        let mounts = Path::new("/sys/fs/cgroup");
        let unified = std::fs::read_to_string(mounts.join("cgroup.controllers")).ok();
        let hierarchy = choose_hierarchy(mounts, unified.as_deref(), |c| {
            mounts.join(c).join("cgroup.procs").exists()
        })?;
        let shared = PathBuf::from(base);
        let id = format!(
            "{:0width$x}",
            rand::random::<u64>(),
            width = INSTANCE_ID_CHARS
        );
        let path = shared.join(id);
        let (tx, rx) = mpsc::channel();
        let h = hierarchy.clone();
        std::thread::Builder::new()
            .name("cgroup-reaper".into())
            .spawn(move || reaper(h, rx))
            .map_err(|e| format!("cannot start the cgroup reaper: {e}"))?;
        let instance = Instance {
            hierarchy,
            node: Arc::new(Node {
                path,
                limits: GroupLimits::default(),
                children: Some(GroupLimits::default()),
                parent: None,
            }),
            locks: Mutex::default(),
            reaper: tx,
            next_group: AtomicU64::new(0),
        };
        // Ours first, locked, so that no other starting instance takes it for stale.
        instance.claim().map_err(|e| format!("cannot create {e}"))?;
        remove_stale(&instance.hierarchy, &shared, &instance.node.path);
        Ok(Cgroups {
            instance: Arc::new(instance),
        })
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.instance.hierarchy
    }

    /// This instance's group, relative to the mounts (e.g. `skython/3f…`).
    pub fn path(&self) -> &Path {
        &self.instance.node.path
    }

    /// A group for one function version, with `limits` for all of it and `worker` for each of
    /// its workers' groups.
    pub fn group(
        &self,
        name: &str,
        limits: GroupLimits,
        worker: GroupLimits,
    ) -> std::io::Result<Group> {
        // Numbered: a version whose pool is built twice (two first callers racing, or a
        // function deleted and made again) never shares a directory with one being removed.
        let n = self.instance.next_group.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Node {
            path: self
                .instance
                .node
                .path
                .join(format!("{}.{n}", sanitize(name))),
            limits,
            children: Some(worker),
            parent: Some(self.instance.node.clone()),
        });
        self.instance.create(&node)?;
        Ok(Group {
            instance: self.instance.clone(),
            node,
        })
    }
}

/// A group; everything left in it is killed and the group removed when it is dropped.
#[derive(Debug)]
pub struct Group {
    instance: Arc<Instance>,
    node: Arc<Node>,
}

impl Group {
    /// A group for one worker inside this function version's group (`id` unique in it).
    pub fn worker(&self, id: u64) -> std::io::Result<Group> {
        let Some(limits) = self.node.children else {
            return Err(std::io::Error::new(
                ErrorKind::InvalidInput,
                "a worker's group has no worker groups",
            ));
        };
        let node = Arc::new(Node {
            path: self.node.path.join(format!("w-{id}")),
            limits,
            children: None,
            parent: Some(self.node.clone()),
        });
        self.instance.create(&node)?;
        Ok(Group {
            instance: self.instance.clone(),
            node,
        })
    }

    /// Moves a process (by host pid) into the group, in every hierarchy. A group that vanished
    /// (removed from outside) is made again, with its limits.
    pub fn add(&self, pid: i32) -> std::io::Result<()> {
        match self.place(pid) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::warn!(group = %self.node.path.display(), "cgroup vanished; making it again");
                self.instance.create(&self.node)?;
                self.place(pid)
            }
            res => res,
        }
    }

    fn place(&self, pid: i32) -> std::io::Result<()> {
        for d in self.dirs() {
            let procs = d.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|e| at(&procs, e))?;
        }
        Ok(())
    }

    /// How to learn later whether the OOM killer ended one of the group's processes.
    pub fn oom_probe(&self) -> OomProbe {
        OomProbe {
            events: self.instance.hierarchy.oom_events(&self.node.path),
            limit_bytes: self.node.limits.memory_bytes,
        }
    }

    /// The group's directories, one per mount.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.instance.hierarchy.dirs(&self.node.path)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.instance.remove_later(self.node.path.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kills_are_read_from_v1_and_v2_event_files() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!((oom_kills(v1), oom_kills(v2)), (2, 1));
        assert_eq!(
            oom_kills("oom_kill_disable 0\nunder_oom 0\n"),
            0,
            "no counter, no kill"
        );
    }

    fn v1(cpu: bool, freezer: bool) -> Hierarchy {
        Hierarchy::V1 {
            memory: "/cg/memory".into(),
            pids: "/cg/pids".into(),
            cpu: cpu.then(|| "/cg/cpu".into()),
            freezer: freezer.then(|| "/cg/freezer".into()),
        }
    }

    fn files<'a>(l: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        l.iter().map(|(f, v)| (*f, v.as_str())).collect()
    }

    #[test]
    fn v2_is_chosen_when_the_root_is_unified() {
        let base = Path::new("/cg");
        assert_eq!(
            choose_hierarchy(base, Some("cpuset cpu io memory pids"), |_| true),
            Ok(Hierarchy::V2 {
                root: "/cg".into(),
                cpu: true
            })
        );
        assert_eq!(
            choose_hierarchy(base, Some("memory pids"), |_| true),
            Ok(Hierarchy::V2 {
                root: "/cg".into(),
                cpu: false
            })
        );
        assert!(choose_hierarchy(base, Some("cpu pids"), |_| true).is_err());
    }

    #[test]
    fn v1_needs_memory_and_pids_and_takes_cpu_and_freezer_when_mounted() {
        let base = Path::new("/cg");
        assert_eq!(
            choose_hierarchy(base, None, |c| c != "freezer"),
            Ok(v1(true, false))
        );
        assert_eq!(choose_hierarchy(base, None, |_| true), Ok(v1(true, true)));
        assert!(choose_hierarchy(base, None, |c| c != "pids").is_err());
    }

    #[test]
    fn v1_function_group_has_the_function_wide_limits_in_each_mount() {
        let limits = GroupLimits {
            memory_bytes: Some(512 << 20),
            pids: Some(256),
            cpu_millis: None,
        };
        let l = layout(&v1(true, true), Path::new("s/i/fn-a.f.1.0"), &limits, true);
        let dirs: Vec<_> = l.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(
            dirs,
            [
                "/cg/memory/s/i/fn-a.f.1.0",
                "/cg/pids/s/i/fn-a.f.1.0",
                "/cg/cpu/s/i/fn-a.f.1.0",
                "/cg/freezer/s/i/fn-a.f.1.0"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(files(&l[0].1), [("memory.limit_in_bytes", "536870912")]);
        assert_eq!(files(&l[1].1), [("pids.max", "256")]);
        assert!(l[2].1.is_empty(), "no CPU limit on the function's group");
    }

    #[test]
    fn v1_worker_group_has_its_memory_and_a_cfs_quota() {
        let limits = GroupLimits {
            memory_bytes: Some(256 << 20),
            pids: None,
            cpu_millis: Some(250),
        };
        let l = layout(&v1(true, false), Path::new("w-3"), &limits, false);
        assert_eq!(l.len(), 3, "memory, pids and cpu; no freezer mounted");
        assert_eq!(files(&l[0].1), [("memory.limit_in_bytes", "268435456")]);
        assert!(l[1].1.is_empty(), "processes are capped for the function");
        assert_eq!(
            files(&l[2].1),
            [
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "25000")
            ],
            "the period before the quota"
        );
        let without_cpu = layout(&v1(false, false), Path::new("w-3"), &limits, false);
        assert_eq!(without_cpu.len(), 2);
    }

    #[test]
    fn v2_groups_enable_controllers_for_their_children_only() {
        let h = Hierarchy::V2 {
            root: "/cg".into(),
            cpu: true,
        };
        let function = GroupLimits {
            memory_bytes: Some(1 << 30),
            pids: Some(64),
            cpu_millis: None,
        };
        let l = layout(&h, Path::new("p/fn-a.f.1.0"), &function, true);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].0, PathBuf::from("/cg/p/fn-a.f.1.0"));
        assert_eq!(
            files(&l[0].1),
            [
                ("cgroup.subtree_control", "+memory +pids +cpu"),
                ("memory.max", "1073741824"),
                ("memory.swap.max", "0"),
                ("pids.max", "64"),
            ]
        );
        let worker = GroupLimits {
            memory_bytes: Some(1 << 20),
            pids: None,
            cpu_millis: Some(1500),
        };
        let l = layout(&h, Path::new("p/fn-a.f.1.0/w-0"), &worker, false);
        assert_eq!(
            files(&l[0].1),
            [
                ("memory.max", "1048576"),
                ("memory.swap.max", "0"),
                ("cpu.max", "150000 100000"),
            ]
        );
        let no_cpu = Hierarchy::V2 {
            root: "/cg".into(),
            cpu: false,
        };
        let l = layout(&no_cpu, Path::new("w"), &worker, true);
        assert!(!l[0].1.iter().any(|(f, _)| *f == "cpu.max"));
        assert!(
            l[0].1
                .contains(&("cgroup.subtree_control", "+memory +pids".into()))
        );
    }

    #[test]
    fn cpu_quotas_scale_with_millis_above_the_kernels_minimum() {
        assert_eq!(cpu_quota_micros(1000), 100_000);
        assert_eq!(cpu_quota_micros(500), 50_000);
        assert_eq!(cpu_quota_micros(2000), 200_000, "more than one CPU");
        assert_eq!(cpu_quota_micros(1), 1_000);
        assert_eq!(cpu_quota_micros(u64::MAX), u64::MAX / 1000);
    }

    #[test]
    fn v2_kills_with_cgroup_kill_and_v1_freezes_when_it_can() {
        let h = Hierarchy::V2 {
            root: "/cg".into(),
            cpu: false,
        };
        let p = kill_plan(&h, Path::new("s/i/g"));
        assert_eq!(p.kill, Some(PathBuf::from("/cg/s/i/g/cgroup.kill")));
        assert_eq!(
            p.freeze,
            Some((PathBuf::from("/cg/s/i/g/cgroup.freeze"), "1", "0"))
        );
        assert_eq!(p.procs, PathBuf::from("/cg/s/i/g"));
        let p = kill_plan(&v1(true, true), Path::new("s/i/g"));
        assert_eq!(p.kill, None);
        assert_eq!(
            p.freeze,
            Some((
                PathBuf::from("/cg/freezer/s/i/g/freezer.state"),
                "FROZEN",
                "THAWED"
            ))
        );
        assert_eq!(p.procs, PathBuf::from("/cg/pids/s/i/g"));
        assert_eq!(kill_plan(&v1(true, false), Path::new("g")).freeze, None);
    }

    #[test]
    fn only_real_other_processes_are_signalled() {
        assert_eq!(parse_procs("12\n0\n7\n-1\nx\n42\n", 7), vec![12, 42]);
        assert!(parse_procs("", 1).is_empty());
    }

    #[test]
    fn nothing_outside_an_instances_groups_is_killed() {
        assert!(is_instance_path(Path::new("skython/3f00")));
        assert!(is_instance_path(Path::new("skython/3f00/fn-a.f.1.0/w-2")));
        assert!(!is_instance_path(Path::new("")), "a mount's root");
        assert!(!is_instance_path(Path::new("skython")), "the shared parent");
        assert!(!is_instance_path(Path::new("skython/../..")));
        assert!(!is_instance_path(Path::new("./skython")));
        assert!(!is_instance_path(Path::new("/skython/x")));
    }

    #[test]
    fn groups_named_by_a_pid_are_an_older_gateways_and_instance_ids_never_are() {
        assert_eq!(legacy_pid("4242"), Some(4242));
        assert_eq!(
            legacy_pid("0123456789012345"),
            None,
            "an instance id of digits"
        );
        assert_eq!(legacy_pid("3fa0c2e1d4b59687"), None);
        assert_eq!(legacy_pid("fn-a.f.1.0"), None);
    }

    #[test]
    fn names_cannot_escape_the_parent() {
        assert_eq!(sanitize(".."), "fn-..");
        assert_eq!(sanitize("alice/add.7"), "fn-alice_add.7");
        assert!(!sanitize("a/b/../c").contains('/'));
    }

    #[test]
    fn a_directory_is_the_same_only_while_it_is_not_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("g");
        std::fs::create_dir(&d).unwrap();
        let f = File::open(&d).unwrap();
        assert!(same_dir(&f, &d));
        std::fs::remove_dir(&d).unwrap();
        assert!(!same_dir(&f, &d), "removed");
        std::fs::create_dir(&d).unwrap();
        assert!(!same_dir(&f, &d), "made again");
    }
}
