//! The attack suite: real malicious functions against the real `skython up`, one test per
//! attack, each named for what is attacked and asserting the outcome it must get (an errno, a
//! signal, a status code).
//!
//! Every test runs on a server of its own with two owners: `bob`, whose function `victim` is warm
//! (with a secret in its environment, and, where the attack needs them, kernel objects it
//! created), and `mallory`, who deploys the attack. After the attack, bob's function must still
//! answer from the same worker process: one tenant's hostile code neither reaches nor breaks
//! another's.
//!
//! These machines run everything as root, so a payload that "cannot read X" proves something
//! only next to the worker's real uid, capabilities, `no_new_privs` and seccomp mode: the
//! sandbox's configuration is also checked from the outside, in `/proc/<worker>/`.

use std::time::Duration;

use serde_json::{Value, json};
use skython_e2e::{Skython, eventually};

/// Bob's function. Each worker draws an id when it loads: the same id after an attack means
/// the same warm process. `plant` leaves kernel objects for an attacker to look for.
const VICTIM: &str = r#"
import ctypes, os, socket

libc = ctypes.CDLL(None, use_errno=True)
WORKER = os.urandom(8).hex()
held = []

def main(op: str = "who"):
    if op == "plant":
        for path in ("/tmp/bob-secret", "/dev/shm/bob-secret"):
            with open(path, "w") as f:
                f.write("hunter2")
        shm = libc.shmget(0x5B0B, 4096, 0o1666)  # IPC_CREAT | 0666
        msg = libc.msgget(0x5B0B, 0o1666)
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 7777))
        unix = socket.socket(socket.AF_UNIX)
        unix.bind("/dev/shm/bob.sock")
        abstract = socket.socket(socket.AF_UNIX)
        abstract.bind("\0bob")
        for s in (tcp, unix, abstract):
            s.listen()
            held.append(s)
        return {"shm": shm >= 0, "msg": msg >= 0}
    return {"worker": WORKER, "pid": os.getpid()}
"#;

/// Helpers every attack may use: `attempt(f)` is the errno of `f()` (0 when it worked).
const PROBE: &str = r#"
import ctypes, errno, os, socket

def attempt(f):
    try:
        f()
        return 0
    except OSError as e:
        return e.errno

libc = ctypes.CDLL(None, use_errno=True)

def sys_errno(ret):
    return 0 if ret == 0 else ctypes.get_errno()
"#;

struct Tenants {
    s: Skython,
    /// What bob's warm worker answered before the attack.
    victim: Value,
}

impl Tenants {
    fn start() -> Tenants {
        Tenants::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Tenants {
        let s = Skython::start(extra);
        deploy(
            &s,
            "bob",
            "victim",
            VICTIM,
            json!({"env": [{"name": "VICTIM_SECRET", "value": "hunter2"}]}),
        );
        let (status, victim) = s.call("bob/victim", json!({}));
        assert_eq!(status, 200, "{victim}");
        Tenants { s, victim }
    }

    /// Bob's function leaves shared-memory files, System V objects and sockets behind.
    fn plant(&self) {
        let (status, body) = self.s.call("bob/victim", json!({"op": "plant"}));
        assert_eq!(
            (status, &body),
            (200, &json!({"shm": true, "msg": true})),
            "planting"
        );
    }

    /// Deploys `source` as mallory/`name` and calls it with `args`.
    fn attack(&self, name: &str, source: &str, spec: Value, args: Value) -> (u16, Value) {
        deploy(&self.s, "mallory", name, source, spec);
        self.s.call(&format!("mallory/{name}"), args)
    }

    /// Bob's function still answers, from the same worker as before the attack.
    fn victim_is_unharmed(&self) {
        assert_eq!(
            self.s.call("bob/victim", json!({})),
            (200, self.victim.clone()),
            "bob's warm worker answers as before"
        );
    }
}

fn deploy(s: &Skython, owner: &str, endpoint: &str, source: &str, more: Value) {
    let mut spec = json!({"owner": owner, "endpoint": endpoint, "source": source});
    if let Value::Object(m) = more {
        spec.as_object_mut().expect("object").extend(m);
    }
    let (status, body) = s.deploy(spec);
    assert_eq!(status, 201, "deploy {owner}/{endpoint}: {body}");
    assert_eq!(body["status"]["conditions"][0]["status"], "True", "{body}");
}

fn errno_of(body: &Value) -> i64 {
    body.as_i64()
        .unwrap_or_else(|| panic!("expected an errno, got {body}"))
}

fn error_code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

#[test]
fn host_files_are_absent_or_read_only() {
    let t = Tenants::start();
    let data_db = t.s.data_dir.join("skython.db");
    assert!(data_db.exists());
    let gateway_pid = t.s.pid();
    let src = format!(
        r#"{PROBE}
def main(path: str, write: bool = False):
    if write:
        return attempt(lambda: open(path, "w").write("x"))
    return attempt(lambda: open(path).read())
"#
    );
    let cases = [
        ("/etc/shadow", false, 2), // ENOENT: not in the sandbox
        ("/etc/passwd", false, 2),
        (data_db.to_str().unwrap(), false, 2), // the data directory is not there
        ("/root/.bashrc", false, 2),
        (&format!("/proc/{gateway_pid}/environ"), false, 2), // the gateway's pid does not exist here
        (&format!("/proc/{gateway_pid}/mem"), false, 2),
        ("/usr/lib/os-release", true, 30), // EROFS: the runtime is read-only
        ("/planted", true, 30),            // the sandbox's root, which every worker shares
        ("/opt/skython/runtime/skython_runtime/worker.py", true, 30),
    ];
    deploy(&t.s, "mallory", "files", &src, json!({}));
    for (path, write, want) in cases {
        let (status, body) =
            t.s.call("mallory/files", json!({"path": path, "write": write}));
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            errno_of(&body),
            want,
            "{} {path}",
            if write { "write" } else { "read" }
        );
    }
    t.victim_is_unharmed();
}

#[test]
fn the_gateway_can_be_neither_seen_nor_signalled() {
    let t = Tenants::start();
    let src = format!(
        r#"{PROBE}
def main(gateway_pid: int):
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    environ = b"".join(open(f"/proc/{{p}}/environ", "rb").read() for p in pids if attempt(lambda: open(f"/proc/{{p}}/environ", "rb").read()) == 0)
    return {{"pids": pids, "kill": attempt(lambda: os.kill(gateway_pid, 9)),
             "token_visible": b"sky_e2e_admin_token" in environ,
             "env": sorted(os.environ)}}
"#
    );
    let (status, body) = t.attack("procs", &src, json!({}), json!({"gateway_pid": t.s.pid()}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kill"], 3, "ESRCH: no such process in the sandbox");
    assert_eq!(body["token_visible"], false);
    assert!(
        body["pids"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p.as_i64().unwrap() < 100),
        "{body}"
    );
    assert!(
        !body["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k.as_str().unwrap().contains("TOKEN")),
        "{body}"
    );
    t.victim_is_unharmed();
}

#[test]
fn the_gateways_output_can_be_neither_read_nor_forged() {
    let t = Tenants::start();
    let src = r#"
import os
def main():
    os.write(1, b'{"level":"INFO","message":"forged by mallory"}\n')
    os.write(2, b"forged by mallory\n")
    return {"links": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
            "read": open("/proc/self/fd/1").read()}
"#;
    let (status, body) = t.attack("stdio", src, json!({}), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"links": ["/dev/null", "/dev/null", "/dev/null"], "read": ""}),
        "descriptors 0-2 lead nowhere of the gateway's"
    );
    t.victim_is_unharmed();
}

#[test]
fn the_network_is_the_workers_own_loopback_only() {
    let t = Tenants::start();
    let port: u16 = t.s.url.rsplit(':').next().unwrap().parse().unwrap();
    let src = format!(
        r#"{PROBE}
def main(port: int):
    def connect(host, p):
        return attempt(lambda: socket.create_connection((host, p), timeout=2).close())
    own = socket.socket()
    own.bind(("127.0.0.1", 0))
    own.listen()
    return {{"gateway": connect("127.0.0.1", port), "metadata": connect("169.254.169.254", 80),
             "private": connect("10.0.0.1", 80), "dns": attempt(lambda: socket.getaddrinfo("example.com", 80)),
             "own": connect("127.0.0.1", own.getsockname()[1])}}
"#
    );
    let (status, body) = t.attack("network", &src, json!({}), json!({"port": port}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["gateway"], 111,
        "ECONNREFUSED: the worker's own loopback, not the host's"
    );
    assert_eq!(body["metadata"], 101, "ENETUNREACH");
    assert_eq!(body["private"], 101, "ENETUNREACH");
    assert_ne!(body["dns"], 0, "no name resolution");
    assert_eq!(body["own"], 0, "its own loopback works");
    t.victim_is_unharmed();
}

#[test]
fn egress_reaches_only_public_addresses_through_the_proxy() {
    // The registries this machine reaches may sit behind non-public addresses; the operator's
    // allow list is how such a deployment lets functions reach them.
    let allow = format!("{}/32", registry_addr());
    let t = Tenants::start_with(&["--egress-allow", &allow]);
    let port: u16 = t.s.url.rsplit(':').next().unwrap().parse().unwrap();
    let src = format!(
        r#"{PROBE}
import requests

def main(port: int):
    def get(url, **kw):
        try:
            return requests.get(url, timeout=20, **kw).status_code
        except requests.exceptions.ProxyError as e:
            return "refused: " + str(e)[-60:]
        except Exception as e:
            return type(e).__name__
    return {{
        "registry": get("https://pypi.org/simple/six/"),
        "gateway": get(f"http://127.0.0.1:{{port}}/healthz"),
        "v4_compatible": get(f"http://[::127.0.0.1]:{{port}}/healthz"),
        "6to4": get(f"http://[2002:7f00:1::1]:{{port}}/healthz"),
        "metadata": get("http://169.254.169.254/latest/meta-data/"),
        "private": get("http://10.0.0.1/"),
        "raw": attempt(lambda: socket.create_connection(("1.1.1.1", 443), timeout=2).close()),
    }}
"#
    );
    let (status, body) = t.attack(
        "egress",
        &src,
        json!({"network": "internet"}),
        json!({"port": port}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["registry"], 200,
        "HTTPS to a public (or allowed) host works: {body}"
    );
    for target in ["gateway", "v4_compatible", "6to4", "metadata", "private"] {
        assert_eq!(
            body[target], 403,
            "{target}: the proxy refuses non-public addresses ({body})"
        );
    }
    assert_eq!(body["raw"], 101, "ENETUNREACH: no route but the proxy");
    t.victim_is_unharmed();
}

#[test]
fn a_function_without_internet_has_no_relay_to_the_proxy() {
    let t = Tenants::start();
    let src = format!(
        "{PROBE}\ndef main():\n    return attempt(lambda: socket.create_connection(('127.0.0.1', 3128), timeout=2).close())\n"
    );
    assert_eq!(
        t.attack("noegress", &src, json!({}), json!({})),
        (200, json!(111)),
        "ECONNREFUSED: nothing listens on its own loopback"
    );
}

#[test]
fn another_owners_environment_memory_and_signals_are_out_of_reach() {
    let t = Tenants::start();
    let src = format!(
        r#"{PROBE}
def main():
    me = os.getpid()
    others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    seen = b""
    for p in others:
        for f in ("environ", "mem", "cmdline"):
            try:
                with open(f"/proc/{{p}}/{{f}}", "rb") as fh:
                    seen += fh.read(1 << 16)
            except OSError:
                pass
    return {{"others": len(others), "secret_seen": b"hunter2" in seen,
             "signals": sorted({{attempt(lambda p=p: os.kill(p, 0)) for p in others}})}}
"#
    );
    let (status, body) = t.attack("spy", &src, json!({}), json!({}));
    assert_eq!(status, 200, "{body}");
    assert!(
        body["others"].as_i64().unwrap() >= 2,
        "the victim's worker and the zygote are there: {body}"
    );
    assert_eq!(body["secret_seen"], false, "{body}");
    assert_eq!(
        body["signals"],
        json!([1]),
        "EPERM for every other process: {body}"
    );
    t.victim_is_unharmed();
}

#[test]
fn another_owners_tmp_files_and_the_zygote_are_out_of_reach() {
    let t = Tenants::start();
    t.plant();
    let src = format!(
        r#"{PROBE}
def main():
    zygote = os.getppid()
    return {{
        "tmp": sorted(os.listdir("/tmp")),
        "read": attempt(lambda: open("/tmp/bob-secret").read()),
        "zygote_mem": attempt(lambda: open(f"/proc/{{zygote}}/mem", "r+b")),
        "zygote_environ": attempt(lambda: open(f"/proc/{{zygote}}/environ", "rb").read()),
    }}
"#
    );
    let (status, body) = t.attack("tmpspy", &src, json!({}), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tmp"], json!([]), "a fresh /tmp: {body}");
    assert_eq!(body["read"], 2, "ENOENT: {body}");
    assert_eq!(body["zygote_mem"], 13, "EACCES: {body}");
    assert_eq!(body["zygote_environ"], 13, "EACCES: {body}");
    t.victim_is_unharmed();
}

#[test]
fn another_owners_shared_memory_files_are_out_of_reach() {
    let t = Tenants::start();
    t.plant();
    let src = format!(
        r#"{PROBE}
def main():
    before = sorted(os.listdir("/dev/shm"))
    return {{"listed": before,
             "read": attempt(lambda: open("/dev/shm/bob-secret").read()),
             "own": attempt(lambda: open("/dev/shm/mallory", "w").write("x"))}}
"#
    );
    let (status, body) = t.attack("shmspy", &src, json!({}), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"listed": [], "read": 2, "own": 0}),
        "a /dev/shm of its own"
    );
    t.victim_is_unharmed();
}

#[test]
fn another_owners_system_v_ipc_is_out_of_reach() {
    let t = Tenants::start();
    t.plant();
    let src = format!(
        r#"{PROBE}
def main():
    shm = libc.shmget(0x5B0B, 0, 0)
    shm_errno = ctypes.get_errno()
    msg = libc.msgget(0x5B0B, 0)
    msg_errno = ctypes.get_errno()
    return {{"shm": shm_errno if shm < 0 else 0, "msg": msg_errno if msg < 0 else 0}}
"#
    );
    let (status, body) = t.attack("ipcspy", &src, json!({}), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"shm": 2, "msg": 2}),
        "ENOENT: an IPC namespace of its own"
    );
    t.victim_is_unharmed();
}

#[test]
fn another_owners_loopback_listeners_are_out_of_reach() {
    let t = Tenants::start();
    t.plant();
    let src = format!(
        "{PROBE}\ndef main():\n    return attempt(lambda: socket.create_connection(('127.0.0.1', 7777), timeout=2).close())\n"
    );
    assert_eq!(
        t.attack("tcpspy", &src, json!({}), json!({})),
        (200, json!(111)),
        "ECONNREFUSED: bob listens on his own loopback"
    );
    t.victim_is_unharmed();
}

#[test]
fn another_owners_unix_sockets_are_out_of_reach() {
    let t = Tenants::start();
    t.plant();
    let src = format!(
        r#"{PROBE}
def main():
    def connect(addr):
        s = socket.socket(socket.AF_UNIX)
        return attempt(lambda: s.connect(addr))
    return {{"path": connect("/dev/shm/bob.sock"), "abstract": connect("\0bob")}}
"#
    );
    let (status, body) = t.attack("unixspy", &src, json!({}), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], 2, "ENOENT: {body}");
    assert_eq!(
        body["abstract"], 111,
        "ECONNREFUSED: abstract names are per network namespace: {body}"
    );
    t.victim_is_unharmed();
}

#[test]
fn kernel_settings_of_the_sandbox_are_read_only() {
    let t = Tenants::start();
    let src = format!(
        r#"{PROBE}
def main():
    out = {{}}
    for name in ("kernel/pid_max", "kernel/shmmni", "kernel/shmmax", "kernel/msgmax", "kernel/sem",
                 "fs/mqueue/queues_max", "net/ipv4/ip_local_port_range"):
        path = "/proc/sys/" + name
        value = open(path).read()
        out[name] = attempt(lambda: open(path, "w").write(value if name != "kernel/pid_max" else "300"))
    return out
"#
    );
    let (status, body) = t.attack("sysctl", &src, json!({}), json!({}));
    assert_eq!(status, 200, "{body}");
    for (name, errno) in body.as_object().unwrap() {
        assert_eq!(errno, 30, "EROFS for {name}: {body}");
    }
    // Bob's workers still start processes as before.
    deploy(
        &t.s,
        "bob",
        "spawner",
        "import subprocess\ndef main():\n    return subprocess.run(['/bin/echo', 'ok'], capture_output=True, text=True).stdout.strip()\n",
        json!({}),
    );
    assert_eq!(t.s.call("bob/spawner", json!({})), (200, json!("ok")));
    t.victim_is_unharmed();
}

#[test]
fn dev_is_read_only_and_dev_shm_is_capped() {
    let t = Tenants::start();
    let src = format!(
        r#"{PROBE}
def main():
    def fill():
        with open("/dev/shm/fill", "wb") as f:
            for _ in range(200):
                f.write(b"\0" * (1 << 20))
    return {{"dev": attempt(lambda: open("/dev/new-node", "w")), "null": attempt(lambda: open("/dev/null", "w").write("x")),
             "shm": attempt(fill)}}
"#
    );
    let (status, body) = t.attack("devfill", &src, json!({}), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"dev": 30, "null": 0, "shm": 28}),
        "EROFS for /dev, ENOSPC past /dev/shm's 64 MiB"
    );
    t.victim_is_unharmed();
}

#[test]
fn privileged_system_calls_are_refused() {
    let t = Tenants::start();
    let src = format!(
        r#"{PROBE}
def main():
    return {{
        "unshare": sys_errno(libc.unshare(0x10000000)),
        "unshare_mount_ns": sys_errno(libc.unshare(0x20000)),
        "unshare_net_ns": sys_errno(libc.unshare(0x40000000)),
        "mount": sys_errno(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
        "setuid0": sys_errno(libc.setuid(0)),
        "ptrace": sys_errno(libc.ptrace(16, 1, 0, 0)),
        "bpf": sys_errno(libc.syscall(321, 0, 0, 0)),
        "io_uring": sys_errno(libc.syscall(425, 1, 0)),
        "userfaultfd": sys_errno(libc.syscall(323, 0)),
    }}
"#
    );
    let (status, body) = t.attack("privileged", &src, json!({}), json!({}));
    assert_eq!(status, 200, "{body}");
    for call in [
        "unshare",
        "unshare_mount_ns",
        "unshare_net_ns",
        "mount",
        "ptrace",
        "bpf",
        "io_uring",
        "userfaultfd",
    ] {
        assert_eq!(
            body[call], 1,
            "{call}: EPERM from the seccomp filter ({body})"
        );
    }
    assert_eq!(
        body["setuid0"], 22,
        "EINVAL: uid 0 does not exist in the sandbox"
    );
    t.victim_is_unharmed();
}

#[test]
fn legitimate_threads_processes_files_and_sockets_still_work() {
    let t = Tenants::start();
    let src = r#"
import multiprocessing, os, pty, socket, subprocess, threading
def main():
    out = []
    th = threading.Thread(target=lambda: out.append("thread"))
    th.start(); th.join()
    out.append(subprocess.run(["/bin/echo", "child"], capture_output=True, text=True).stdout.strip())
    with open("/tmp/scratch", "w") as f:
        f.write("x" * 1000)
    out.append(len(open("/tmp/scratch").read()))
    with multiprocessing.Pool(2) as p:
        out.append(sum(p.map(abs, [-1, -2, 3])))
    a, b = socket.socketpair()
    a.sendall(b"pair"); out.append(b.recv(4).decode())
    master, slave = pty.openpty()
    out.append(os.ttyname(slave).startswith("/dev/pts/"))
    return out
"#;
    assert_eq!(
        t.attack("legit", src, json!({}), json!({})),
        (200, json!(["thread", "child", 1000, 6, "pair", true]))
    );
    t.victim_is_unharmed();
}

#[test]
fn a_full_tmp_is_the_fillers_own() {
    let t = Tenants::start();
    t.plant();
    let src = format!(
        r#"{PROBE}
def main():
    def fill():
        with open("/tmp/fill", "wb") as f:
            for _ in range(200):
                f.write(b"\0" * (1 << 20))
    return attempt(fill)
"#
    );
    let (status, body) = t.attack("diskfill", &src, json!({}), json!({}));
    assert_eq!((status, errno_of(&body)), (200, 28), "ENOSPC past 64 MiB");
    t.victim_is_unharmed();
}

#[test]
fn a_memory_bomb_is_stopped_by_its_functions_memory_limit() {
    let t = Tenants::start();
    // Pages touched one by one: what a memory limit must count.
    let src = "def main():\n    b = bytearray(3 << 30)\n    for i in range(0, len(b), 4096):\n        b[i] = 1\n    return len(b)\n";
    let (status, body) = t.attack(
        "membomb",
        src,
        json!({"resources": {"memory": "256Mi"}}),
        json!({}),
    );
    if nix_is_root() {
        // The worker's memory cgroup counts the pages and its OOM killer ends the worker.
        assert_eq!(
            (status, error_code(&body)),
            (502, Some("out_of_memory")),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("memory limit of 256 MiB"), "{message}");
    } else {
        // Without cgroups, the address-space limit refuses the allocation.
        assert_eq!(
            (status, body["error"]["type"].as_str()),
            (500, Some("MemoryError")),
            "{body}"
        );
    }
    t.victim_is_unharmed();
}

#[test]
fn a_cpu_spin_in_native_code_past_the_timeout_is_stopped() {
    let t = Tenants::start();
    // C code that never checks for signals.
    let src = "import numpy as np\ndef main():\n    a = np.random.rand(1500, 1500)\n    while True:\n        a = a @ a\n        a /= a.max()\n";
    let (status, body) = t.attack("numpyspin", src, json!({"timeoutSeconds": 2}), json!({}));
    assert_eq!(
        (status, error_code(&body)),
        (504, Some("timeout")),
        "{body}"
    );
    t.victim_is_unharmed();
}

#[test]
fn a_fork_bomb_is_capped_and_killed() {
    let t = Tenants::start();
    let gateway_pid = t.s.pid();
    let src = r#"
import os, signal, time
def main():
    n = 0
    try:
        while n < 100000:
            if os.fork() == 0:
                signal.pause()
                os._exit(0)
            n += 1
    except BlockingIOError:
        pass
    time.sleep(60)
"#;
    let (status, body) = t.attack("forkbomb", src, json!({"timeoutSeconds": 3}), json!({}));
    assert_eq!(
        (status, error_code(&body)),
        (504, Some("timeout")),
        "{body}"
    );
    assert!(
        eventually(Duration::from_secs(10), || sandboxed_processes(gateway_pid)
            .len()
            < 10),
        "the fork bomb's processes were not all killed: {}",
        sandboxed_processes(gateway_pid).len()
    );
    t.victim_is_unharmed();
}

#[test]
fn forged_frames_cannot_grow_the_gateway() {
    let t = Tenants::start();
    let gateway_pid = t.s.pid();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{gateway_pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    // The worker's own socket, written directly: 320 MB of log frames in one call.
    let src = r#"
import struct
import skython

def main():
    sock = skython._worker.chan.sock
    chunk = struct.pack("<IB", 1 << 20, ord("G")) + b"x" * (1 << 20)
    for _ in range(320):
        sock.sendall(chunk)
    return "done"
"#;
    let before = rss();
    let (status, body) = t.attack("flood", src, json!({}), json!({}));
    assert_eq!(
        (status, error_code(&body)),
        (502, Some("worker_crashed")),
        "{body}"
    );
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "the gateway grew by {} MiB", grown >> 20);
    t.victim_is_unharmed();
}

#[test]
fn two_owners_workers_have_their_own_ipc_and_network_namespaces() {
    let t = Tenants::start();
    t.attack("plain", "def main():\n    return 1\n", json!({}), json!({}));
    let ns = |pid: u32, kind: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .map(|l| l.display().to_string())
            .unwrap_or_default()
    };
    let procs = settled_processes(t.s.pid());
    let filters = |pid: u32| status_field(pid, "Seccomp_filters");
    let zygote = procs
        .iter()
        .copied()
        .find(|&p| filters(p) == "2")
        .expect("the zygote");
    let workers: Vec<u32> = procs.into_iter().filter(|&p| filters(p) == "3").collect();
    assert_eq!(workers.len(), 2, "bob's and mallory's workers");
    for kind in ["ipc", "net", "mnt"] {
        let seen: std::collections::BTreeSet<String> =
            workers.iter().map(|&w| ns(w, kind)).collect();
        assert_eq!(seen.len(), 2, "{kind}: {seen:?}");
        assert!(
            !seen.contains(&ns(zygote, kind)),
            "{kind}: not the zygote's"
        );
    }
}

#[test]
fn the_workers_confinement_seen_from_outside() {
    let t = Tenants::start();
    let root = nix_is_root();
    let (mut zygotes, mut workers) = (0, 0);
    for pid in settled_processes(t.s.pid()) {
        let field = |name: &str| status_field(pid, name);
        if field("Name").is_empty() {
            continue; // exited meanwhile
        }
        assert_eq!(field("NoNewPrivs"), "1", "{pid}");
        assert_eq!(field("Seccomp"), "2", "{pid}");
        if field("Name") == "bwrap" {
            // bwrap's init (PID 1 of the sandbox): no capabilities, only reaps.
            assert_eq!(field("CapEff"), "0000000000000000", "bwrap {pid}");
            continue;
        }
        if field("Seccomp_filters") == "2" {
            // The zygote: only CAP_SYS_ADMIN and CAP_NET_ADMIN, and only in the sandbox's user
            // namespace, for workers to make their own namespaces before they drop them.
            assert_eq!(field("CapEff"), "0000000000201000", "zygote {pid}");
            zygotes += 1;
            continue;
        }
        workers += 1;
        assert_eq!(
            field("Seccomp_filters"),
            "3",
            "worker {pid}: the workers' filter too"
        );
        for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(field(caps), "0000000000000000", "worker {pid}: {caps}");
        }
        if root {
            assert_eq!(
                field("Uid"),
                "10001 10001 10001 10001",
                "a root gateway's workers run as the sandbox uid"
            );
            let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default();
            assert_eq!(
                map.split_whitespace().collect::<Vec<_>>(),
                ["1000", "10001", "1"],
                "worker {pid}"
            );
        }
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        let mut writable = vec![];
        for line in mounts.lines() {
            let mut parts = line.split_whitespace();
            let target = parts.nth(4).unwrap_or("");
            let opts = parts.next().unwrap_or("");
            if !opts.split(',').any(|o| o == "ro") {
                writable.push(target.to_string());
            }
        }
        writable.sort();
        writable.dedup();
        assert_eq!(
            writable,
            [
                "/dev/full",
                "/dev/null",
                "/dev/pts",
                "/dev/random",
                "/dev/shm",
                "/dev/tty",
                "/dev/urandom",
                "/dev/zero",
                "/proc",
                "/tmp"
            ],
            "worker {pid}: only its own tmpfs, ptys, the device nodes and /proc are writable"
        );
    }
    assert_eq!(zygotes, 1, "one runtime, one zygote");
    assert_eq!(workers, 1, "bob's worker");
}

/// The sandbox's processes once no process is mid-fork: one the zygote has just forked (a worker
/// setting itself up, an inspection) has the zygote's filters and capabilities for a moment.
fn settled_processes(gateway_pid: u32) -> Vec<u32> {
    let zygote_like = |p: &u32| {
        status_field(*p, "Seccomp_filters") == "2"
            && status_field(*p, "Name") != "bwrap"
            && !status_field(*p, "State").starts_with('Z')
    };
    let mut procs = vec![];
    let settled = eventually(Duration::from_secs(20), || {
        procs = sandboxed_processes(gateway_pid);
        procs.iter().filter(|p| zygote_like(p)).count() == 1
    });
    let seen: Vec<String> = procs
        .iter()
        .map(|&p| {
            let f = |n: &str| status_field(p, n);
            format!(
                "{p} {} {} filters={}",
                f("Name"),
                f("State"),
                f("Seccomp_filters")
            )
        })
        .collect();
    assert!(settled, "one zygote and nothing mid-fork: {seen:?}");
    procs
}

fn status_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The address pypi.org resolves to from this machine.
fn registry_addr() -> std::net::IpAddr {
    use std::net::ToSocketAddrs;
    ("pypi.org", 443)
        .to_socket_addrs()
        .expect("resolving pypi.org (CI reaches the package registries)")
        .next()
        .expect("an address for pypi.org")
        .ip()
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        .unwrap_or(false)
}

/// Host pids of the gateway's descendants that run under seccomp (the zygote and workers).
fn sandboxed_processes(gateway_pid: u32) -> Vec<u32> {
    cgroups::descendants(gateway_pid)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2'))
            })
        })
        .collect()
}

#[test]
fn slow_clients_are_cut_off() {
    use std::io::{Read, Write};
    let s = Skython::start(&["--header-timeout-secs", "1", "--body-timeout-secs", "1"]);
    s.deploy_ok("echo", "def main(x=None):\n    return x\n", json!({}));
    let addr = s.url.trim_start_matches("http://").to_string();
    let read_all = |mut c: std::net::TcpStream| {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let res = c.read_to_end(&mut buf);
        (
            res.is_ok(),
            started.elapsed(),
            String::from_utf8_lossy(&buf).into_owned(),
        )
    };

    // A head that never ends: the connection is closed after the head timeout.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(b"POST /fn/admin/echo HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (closed, took, _) = read_all(c);
    assert!(
        closed && took < Duration::from_secs(5),
        "slow head: closed={closed} after {took:?}"
    );

    // A body that never arrives: 408.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(b"POST /fn/admin/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"x\": ")
        .unwrap();
    let (_, took, answer) = read_all(c);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "slow body: {answer:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(5));

    // Everyone else is served meanwhile and after.
    assert_eq!(s.call("admin/echo", json!({"x": 7})), (200, json!(7)));
}

#[test]
fn hostile_requests_and_results_get_clear_answers() {
    let s = Skython::start(&[]);
    let src = "def main(n: int = 0):\n    return 'x' * n\n";
    s.deploy_ok("big", src, json!({}));
    // A result past the 10 MiB limit: 500 result_too_large, and the function keeps serving.
    let (status, body) = s.call("admin/big", json!({"n": 11 << 20}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (500, Some("result_too_large")),
        "{body}"
    );
    assert_eq!(s.call("admin/big", json!({"n": 3})), (200, json!("xxx")));

    let code =
        |(status, body): (u16, Value)| (status, body["error"]["code"].as_str().map(String::from));
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    assert_eq!(
        code(s.call_raw("admin/big", deep)),
        (400, Some("bad_json".into()))
    );
    assert_eq!(
        code(s.call_raw("admin/big", "{\"n\": 1,}")),
        (400, Some("bad_json".into()))
    );
    assert_eq!(
        code(s.call_raw("admin/big", vec![0xff, 0xfe, b'{'])),
        (400, Some("bad_json".into()))
    );
    assert_eq!(
        code(s.call_raw("admin/big", "\"just a string\"")),
        (400, Some("bad_arguments".into()))
    );
    let huge = format!("{{\"n\": 1, \"pad\": \"{}\"}}", "a".repeat(7 << 20));
    assert_eq!(
        code(s.call_raw("admin/big", huge)),
        (413, Some("body_too_large".into()))
    );
    // Names with path tricks or unicode never reach a function, and never a 5xx.
    for name in [
        "admin/big%00",
        "admin/b%C3%AFg",
        "admin/%2e%2e",
        "..%2Fadmin/big",
        "ADMIN/BIG",
    ] {
        let (status, _) = s.call(name, json!({}));
        assert!(status == 404 || status == 405, "{name}: {status}");
    }

    // A thread bomb: the function's pids limit (or the sandbox uid's) stops it; the call answers.
    let src = "import threading, time\ndef main():\n    n = 0\n    try:\n        while n < 100000:\n            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n            n += 1\n    except RuntimeError:\n        return {'stopped_at': n}\n    return {'stopped_at': None}\n";
    s.deploy_ok("threadbomb", src, json!({"timeoutSeconds": 10}));
    let (status, body) = s.call("admin/threadbomb", json!({}));
    assert_eq!(status, 200, "{body}");
    assert!(
        body["stopped_at"].as_i64().is_some_and(|n| n < 5000),
        "threads were capped: {body}"
    );
    assert_eq!(s.call("admin/big", json!({"n": 1})), (200, json!("x")));
}

#[test]
fn state_past_an_owners_quota_is_refused_and_earlier_values_stay() {
    let s = Skython::start(&[
        "--state-max-keys-per-owner",
        "20",
        "--state-max-bytes-per-owner",
        "4096",
    ]);
    // Stores `size`-character strings under new keys until refused; then reads them all back.
    let source = r#"from skython import store, load, StateError

def main(size: int):
    n = 0
    try:
        while n < 1000:
            store(f"k{n}", "x" * size)
            n += 1
    except StateError as e:
        refused = str(e)
    else:
        refused = None
    intact = all(load(f"k{i}") == "x" * size for i in range(n))
    return {"stored": n, "refused": refused, "intact": intact}
"#;
    for owner in ["alice", "carol", "bob"] {
        s.deploy_ok("hoard", source, json!({"owner": owner}));
    }
    // alice runs into the key quota (20 keys of 3 bytes)...
    let (status, body) = s.call("alice/hoard", json!({"size": 1}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["stored"].clone(), body["intact"].clone()),
        (json!(20), json!(true)),
        "{body}"
    );
    let msg = body["refused"].as_str().unwrap();
    assert!(
        msg.contains("state quota exceeded: alice may keep at most 20 keys")
            && msg.contains("20 in use"),
        "{msg}"
    );
    // ...carol into the byte quota (four values of 1002 bytes; a fifth would make 5010).
    let (status, body) = s.call("carol/hoard", json!({"size": 1000}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["stored"].clone(), body["intact"].clone()),
        (json!(4), json!(true)),
        "{body}"
    );
    let msg = body["refused"].as_str().unwrap();
    assert!(
        msg.contains("at most 4096 bytes of values")
            && msg.contains("4008 in use")
            && msg.contains("5010"),
        "{msg}"
    );
    // Another owner's quota is their own.
    let (status, body) = s.call("bob/hoard", json!({"size": 1}));
    assert_eq!((status, body["stored"].clone()), (200, json!(20)), "{body}");
}

/// Sources that exhaust Python's parser or compiler: a long chain of binary operators (its
/// recursion limit) and of unary minus (the parser's stack, a `MemoryError`).
fn sources_too_deeply_nested() -> [(&'static str, String); 2] {
    let tail = "1\ndef main():\n    return 1\n";
    [
        ("binary", format!("x = {}{tail}", "1+".repeat(300_000))),
        ("unary", format!("x = {}{tail}", "-".repeat(300_000))),
    ]
}

#[test]
fn a_hostile_deploy_fails_alone_and_another_owners_warm_worker_keeps_serving() {
    let t = Tenants::start();
    for (what, source) in sources_too_deeply_nested() {
        let (status, body) =
            t.s.deploy(json!({"owner": "mallory", "endpoint": "hostile", "source": source}));
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["code"], "source_too_deeply_nested", "{what}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("nests too deeply"),
            "{body}"
        );
        t.victim_is_unharmed();
    }
    let (status, _) =
        t.s.api(reqwest::Method::GET, "/functions/mallory/hostile", None);
    assert_eq!(status, 404, "nothing of the hostile deploy is stored");
}

#[test]
fn a_hostile_test_run_fails_alone_and_another_owners_warm_worker_keeps_serving() {
    let t = Tenants::start();
    for (what, source) in sources_too_deeply_nested() {
        let (status, body) = t.s.api(
            reqwest::Method::POST,
            "/test-run",
            Some(json!({"source": source})),
        );
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["code"], "source_too_deeply_nested", "{what}");
        t.victim_is_unharmed();
    }
}

/// A function's processes are a unit, and cgroups belong to a gateway instance (not a pid): as
/// root, with the machine's real cgroupfs (v1 or v2). Without root they check nothing.
mod cgroups {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use serde_json::json;
    use skython_e2e::{Skython, TOKEN, eventually, skython_bin};

    fn is_root() -> bool {
        super::nix_is_root()
    }

    fn v2() -> bool {
        Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    }

    /// The directories of a group (`/skython/<id>/...`) in every mount.
    fn mounts_of(group: &str) -> Vec<PathBuf> {
        if v2() {
            return vec![PathBuf::from(format!("/sys/fs/cgroup{group}"))];
        }
        ["memory", "pids", "cpu", "freezer"]
            .iter()
            .map(|m| PathBuf::from(format!("/sys/fs/cgroup/{m}")))
            .filter(|m| m.join("cgroup.procs").exists())
            .map(|m| m.join(group.trim_start_matches('/')))
            .collect()
    }

    /// Where a group's processes and pids limit are: the root (v2) or the pids mount (v1).
    fn dir_of(group: &str) -> String {
        if v2() {
            format!("/sys/fs/cgroup{group}")
        } else {
            format!("/sys/fs/cgroup/pids{group}")
        }
    }

    /// A process's group (`/skython/<id>/fn-.../w-<n>`), from `/proc/<pid>/cgroup`.
    fn group_of(pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        text.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let wanted = if v2() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == "pids")
            };
            wanted.then(|| path.to_string())
        })
    }

    fn parent_of(pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// The gateway's descendants (its zygote, workers and what they started).
    pub fn descendants(gateway_pid: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                let mut p = pid;
                for _ in 0..32 {
                    match parent_of(p) {
                        Some(pp) if pp == gateway_pid => return true,
                        Some(pp) if pp > 1 => p = pp,
                        _ => return false,
                    }
                }
                false
            })
            .collect()
    }

    /// The worker group (`/skython/<id>/fn-admin.<endpoint>.<gen>.<n>/w-<k>`) of one of the
    /// gateway's processes that runs `endpoint`.
    fn worker_group(gateway_pid: u32, endpoint: &str) -> Option<String> {
        let marker = format!("/fn-admin.{endpoint}.");
        descendants(gateway_pid)
            .into_iter()
            .filter_map(group_of)
            .find(|g| g.contains(&marker))
    }

    /// The directory holding the function's group's processes and pids limit.
    pub fn function_group(gateway_pid: u32, endpoint: &str) -> Option<String> {
        let w = worker_group(gateway_pid, endpoint)?;
        let (function, worker) = w.rsplit_once('/')?;
        worker.starts_with("w-").then(|| dir_of(function))
    }

    /// Live processes whose name (`/proc/<pid>/comm`) is `name`.
    fn named(name: &str) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.trim() == name)
                    })
                    .filter(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                            s.rsplit_once(')')
                                .is_some_and(|(_, r)| !r.starts_with(" Z"))
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts a `setsid()` daemon (double fork, named `tag`, raising its own CPU limit) and
    /// answers once it runs; with `hang`, then sleeps past the timeout.
    const DAEMON: &str = r#"
import ctypes, os, resource, time

def main(tag: str, hang: bool = False):
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, tag.encode(), 0, 0, 0)
            _, hard = resource.getrlimit(resource.RLIMIT_CPU)
            resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
            os.write(w, b"x")
            while True:
                time.sleep(0.5)
        os._exit(0)
    os.wait()
    os.read(r, 1)
    if hang:
        time.sleep(1000)
    return "started"
"#;

    #[test]
    fn a_new_version_gets_a_new_group_and_the_old_one_goes() {
        if !is_root() {
            return;
        }
        let s = Skython::start(&[]);
        s.deploy_ok("plain", "def main(x: int):\n    return x + 1\n", json!({}));
        assert_eq!(s.call("admin/plain", json!({"x": 1})), (200, json!(2)));
        let group = function_group(s.pid(), "plain")
            .expect("the plain function's worker is in its function's group");
        assert_eq!(
            std::fs::read_to_string(format!("{group}/pids.max"))
                .unwrap()
                .trim(),
            "256"
        );
        let (status, body) = s.api(
            reqwest::Method::PUT,
            "/functions/admin/plain",
            Some(json!({"endpoint": "plain", "access": "public", "source": "def main(x: int):\n    return x + 2\n"})),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(s.call("admin/plain", json!({"x": 1})), (200, json!(3)));
        assert!(
            eventually(Duration::from_secs(10), || !Path::new(&group).exists()),
            "{group} was not removed after the redeploy"
        );
    }

    #[test]
    fn a_setsid_daemon_dies_with_its_worker_when_a_call_times_out() {
        if !is_root() {
            return;
        }
        let s = Skython::start(&[]);
        s.deploy_ok(
            "cg-timeout",
            DAEMON,
            json!({"timeoutSeconds": 2, "concurrency": 1}),
        );
        let tag = "skyd-timeout";
        assert_eq!(
            s.call("admin/cg-timeout", json!({"tag": tag})),
            (200, json!("started"))
        );
        assert_eq!(named(tag).len(), 1, "the daemon outlives its call");
        let (status, _) = s.call(
            "admin/cg-timeout",
            json!({"tag": "skyd-hang", "hang": true}),
        );
        assert_eq!(status, 504);
        assert!(
            eventually(Duration::from_secs(10), || named(tag).is_empty()
                && named("skyd-hang").is_empty()),
            "daemons left: {:?} {:?}",
            named(tag),
            named("skyd-hang")
        );
        assert_eq!(
            s.call("admin/cg-timeout", json!({"tag": "skyd-after"})).0,
            200
        );
    }

    #[test]
    fn a_test_runs_daemon_dies_when_the_run_ends() {
        if !is_root() {
            return;
        }
        let s = Skython::start(&[]);
        let tag = "skyd-testrun";
        let (status, body) = s.api(
            reqwest::Method::POST,
            "/test-run",
            Some(json!({"source": DAEMON, "args": {"tag": tag}})),
        );
        assert_eq!(
            (status, &body["result"]),
            (200, &json!("started")),
            "{body}"
        );
        assert!(
            eventually(Duration::from_secs(10), || named(tag).is_empty()),
            "the test run's daemon outlived it: {:?}",
            named(tag)
        );
    }

    #[test]
    fn after_delete_no_process_of_the_function_remains_and_its_groups_are_gone() {
        if !is_root() {
            return;
        }
        let s = Skython::start(&[]);
        s.deploy_ok("cg-delete", DAEMON, json!({}));
        let tag = "skyd-delete";
        assert_eq!(s.call("admin/cg-delete", json!({"tag": tag})).0, 200);
        let daemon = named(tag);
        assert_eq!(daemon.len(), 1);
        let worker = group_of(daemon[0]).expect("the daemon's group");
        let function = worker.rsplit_once('/').unwrap().0.to_string();
        assert!(function.contains("/fn-admin.cg-delete."), "{worker}");
        let procs: Vec<u32> = descendants(s.pid())
            .into_iter()
            .filter(|&p| group_of(p).is_some_and(|g| g.starts_with(&function)))
            .collect();
        assert!(procs.len() >= 2, "the worker and its daemon: {procs:?}");
        let (status, body) = s.api(reqwest::Method::DELETE, "/functions/admin/cg-delete", None);
        assert_eq!(status, 204, "{body}");
        assert!(
            eventually(Duration::from_secs(10), || procs.iter().all(
                |p| !Path::new(&format!("/proc/{p}")).exists() || group_of(*p).is_none()
            )),
            "left: {procs:?}"
        );
        assert!(named(tag).is_empty());
        let dirs = mounts_of(&function);
        assert!(
            eventually(Duration::from_secs(10), || dirs.iter().all(|d| !d.exists())),
            "{dirs:?} still there"
        );
    }

    #[test]
    fn a_spinning_function_is_held_to_its_cpu() {
        if !is_root() {
            return;
        }
        let s = Skython::start(&[]);
        let spin = "import time\n\ndef main():\n    t, c = time.time(), time.process_time()\n    while time.time() - t < 2:\n        pass\n    return (time.process_time() - c) / (time.time() - t)\n";
        s.deploy_ok("cg-spin", spin, json!({"resources": {"cpu": "250m"}}));
        let (status, share) = s.call("admin/cg-spin", json!({}));
        assert_eq!(status, 200, "{share}");
        let share = share.as_f64().unwrap();
        assert!(share < 0.4, "used {share:.2} CPU with 250m");
        let worker = worker_group(s.pid(), "cg-spin").expect("the worker's group");
        let cpu = if v2() {
            format!("/sys/fs/cgroup{worker}/cpu.stat")
        } else {
            format!("/sys/fs/cgroup/cpu{worker}/cpu.stat")
        };
        let throttled: u64 = std::fs::read_to_string(&cpu)
            .unwrap_or_else(|e| panic!("{cpu}: {e}"))
            .lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(throttled > 0, "the quota, not the machine's load, held it");
    }

    #[test]
    fn two_gateways_in_two_pid_namespaces_keep_their_groups_and_both_serve() {
        if !is_root() {
            return;
        }
        let a = Skython::start(&[]);
        let plain = "def main(x: int):\n    return x + 1\n";
        a.deploy_ok(
            "cg-two-a",
            plain,
            json!({"scaling": {"idleSecondsToZero": 1}}),
        );
        assert_eq!(a.call("admin/cg-two-a", json!({"x": 1})), (200, json!(2)));
        let worker = worker_group(a.pid(), "cg-two-a").expect("a's worker group");
        let function = worker.rsplit_once('/').unwrap().0.to_string();
        let instance: String = function.split('/').take(3).collect::<Vec<_>>().join("/");
        // Scaled to zero: its function's group is empty, as the old rule removed them.
        assert!(
            eventually(Duration::from_secs(10), || worker_group(
                a.pid(),
                "cg-two-a"
            )
            .is_none()),
            "a's worker stopped after idling"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(skython_bin())
            .args(["up", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("SKYTHON_ADMIN_TOKEN", TOKEN);
        let b = Skython::start_with(cmd, dir.path());
        assert!(
            mounts_of(&function).iter().all(|d| d.exists()),
            "b left a's groups alone: {instance}"
        );
        b.deploy_ok("cg-two-b", plain, json!({}));
        assert_eq!(b.call("admin/cg-two-b", json!({"x": 2})), (200, json!(3)));
        assert_eq!(a.call("admin/cg-two-a", json!({"x": 3})), (200, json!(4)));
        a.deploy_ok("cg-two-a2", plain, json!({}));
        assert_eq!(a.call("admin/cg-two-a2", json!({"x": 4})), (200, json!(5)));
        let b_worker = worker_group(b.pid(), "cg-two-b").expect("b's worker group");
        assert!(
            !b_worker.starts_with(&instance),
            "b has an instance of its own"
        );
    }

    #[test]
    fn a_group_removed_from_outside_is_made_again_on_the_next_worker_start() {
        if !is_root() {
            return;
        }
        let s = Skython::start(&[]);
        s.deploy_ok(
            "cg-vanish",
            "def main():\n    return 1\n",
            json!({"scaling": {"idleSecondsToZero": 1}}),
        );
        assert_eq!(s.call("admin/cg-vanish", json!({})).0, 200);
        let worker = worker_group(s.pid(), "cg-vanish").expect("the worker's group");
        let function = worker.rsplit_once('/').unwrap().0.to_string();
        let dirs = mounts_of(&function);
        // Once the idle worker is gone, its function's group is empty: someone removes it.
        assert!(
            eventually(Duration::from_secs(10), || dirs
                .iter()
                .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())),
            "removing {dirs:?}"
        );
        assert_eq!(s.call("admin/cg-vanish", json!({})), (200, json!(1)));
        assert!(dirs.iter().all(|d| d.exists()), "{dirs:?} made again");
        assert_eq!(
            std::fs::read_to_string(format!("{}/pids.max", dir_of(&function)))
                .unwrap()
                .trim(),
            "256",
            "with its limits"
        );
    }
}
