//! Helpers for the tests against the real one-node cluster that `e2e/cluster/up.sh` starts:
//! `kubectl` as users run it, and the operator as a process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Process, eventually, free_port, skython_bin};

/// The cluster's admin kubeconfig: `$SKYTHON_KUBECONFIG`, else where `up.sh` writes it.
pub fn kubeconfig() -> PathBuf {
    crate::cached(
        "SKYTHON_KUBECONFIG",
        "cluster/admin.kubeconfig",
        "no cluster; start one with `bash e2e/cluster/up.sh` (`make test` does)",
    )
}

pub struct Kubectl {
    kubeconfig: PathBuf,
    pub namespace: String,
}

impl Kubectl {
    pub fn new(namespace: &str) -> Self {
        Kubectl {
            kubeconfig: kubeconfig(),
            namespace: namespace.into(),
        }
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs kubectl in the namespace; stdout, or stderr as the error.
    pub fn try_run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", &self.namespace])
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("running kubectl: {e}"))?;
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().ok_or("kubectl stdin")?;
            pipe.write_all(input.as_bytes())
                .map_err(|e| format!("writing to kubectl: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("kubectl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    pub fn run(&self, args: &[&str]) -> String {
        self.try_run(args, None).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn apply(&self, yaml: &str) -> String {
        self.try_run(&["apply", "-f", "-"], Some(yaml))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `kubectl get WHAT -o json` (WHAT split at spaces, e.g. `pods -l app=x`); `None` when
    /// the object does not exist.
    pub fn get(&self, what: &str) -> Option<Value> {
        let mut args = vec!["get"];
        args.extend(what.split_whitespace());
        args.extend(["-o", "json"]);
        match self.try_run(&args, None) {
            Ok(s) => Some(serde_json::from_str(&s).expect("kubectl printed JSON")),
            Err(e) if e.contains("NotFound") || e.contains("not found") => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits until `get(what)` satisfies `f`; the last object seen on timeout is in the panic.
    pub fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        let ok = eventually(timeout, || {
            last = self.get(what);
            last.as_ref().is_some_and(&f)
        });
        assert!(
            ok,
            "timed out after {timeout:?} waiting on {what}; last seen: {}",
            last.map(
                |v| serde_json::to_string_pretty(&v.get("status").cloned().unwrap_or(v))
                    .unwrap_or_default()
            )
            .unwrap_or_else(|| "nothing".into())
        );
        last.unwrap_or_default()
    }
}

impl Kubectl {
    /// Waits for the first event about `object` and checks it is a Warning with `reason`.
    pub fn expect_warning(&self, object: &str, reason: &str) {
        let events = self.wait_for(
            &format!("events --field-selector involvedObject.name={object}"),
            Duration::from_secs(30),
            |e| e["items"].as_array().is_some_and(|i| !i.is_empty()),
        );
        let event = &events["items"][0];
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some(reason)),
            "{event}"
        );
    }
}

/// Installs the generated CRD (structural schema, printer columns, subresources), or brings it
/// up to date, and waits until it is served. Every time (a helm test removes it), but one call
/// at a time: a process's tests run in parallel, and on a fresh cluster two `kubectl apply`s that
/// both find no CRD both create it, the second failing (AlreadyExists). Another process may do
/// the same meanwhile, hence the retry.
pub fn install_crd() {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let k = Kubectl::new("default");
    let crd = std::fs::read_to_string(
        crate::repo_root().join("helm/skython/files/skyfunctions.skython.io.yaml"),
    )
    .expect("the generated CRD");
    let mut attempts = 0;
    while let Err(e) = k.try_run(&["apply", "-f", "-"], Some(&crd)) {
        attempts += 1;
        assert!(
            e.contains("AlreadyExists") && attempts < 3,
            "installing the CRD: {e}"
        );
    }
    k.run(&[
        "wait",
        "--for=condition=Established",
        "crd/skyfunctions.skython.io",
        "--timeout=60s",
    ]);
}

/// The generated CRD installed ([`install_crd`]) and a fresh namespace
/// `skython-e2e-<tag>-<pid>`, deleted when the returned guard drops.
pub fn fresh_namespace(tag: &str) -> (Kubectl, Cleanup) {
    install_crd();
    let namespace = format!("skython-e2e-{tag}-{}", std::process::id());
    let k = Kubectl::new(&namespace);
    k.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"
    ));
    (k, Cleanup(namespace))
}

/// Deletes the test's namespace however the test ends.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .output();
    }
}

/// The `Ready` condition of an object's status.
pub fn ready_condition(obj: &Value) -> Option<&Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// `skython operator` as a process, watching one namespace.
pub struct Operator {
    pub process: Process,
    pub metrics_url: String,
    http: reqwest::blocking::Client,
}

impl Operator {
    pub fn start(k: &Kubectl, runtime_dir: &Path) -> Operator {
        Operator::start_with(k, runtime_dir, &[])
    }

    /// With more flags, e.g. `--gateway-url`.
    pub fn start_with(k: &Kubectl, runtime_dir: &Path, extra: &[&str]) -> Operator {
        let port = free_port();
        let mut cmd = Command::new(skython_bin());
        cmd.arg("operator")
            .arg("--kubeconfig")
            .arg(k.kubeconfig())
            .args([
                "--namespace",
                &k.namespace,
                "--lease-namespace",
                &k.namespace,
            ])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .arg("--runtime-dir")
            .arg(runtime_dir)
            .args(extra)
            .env("SKYTHON_LOG", "info,kube=warn")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        if let Some(py) = std::env::var_os("SKYTHON_PYTHON") {
            cmd.env("SKYTHON_PYTHON", py);
        }
        let op = Operator {
            process: Process(cmd.spawn().expect("start skython operator")),
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client"),
        };
        assert!(
            eventually(Duration::from_secs(60), || op
                .metric("skython_operator_leader")
                == Some(1.0)),
            "the operator did not start leading within 60 s (see its log above)"
        );
        op
    }

    /// The sum of a metric's samples (all label values).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.http.get(&self.metrics_url).send().ok()?.text().ok()?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

/// The cluster's bridge address: pods reach the host (and a gateway run on it) there.
pub const HOST_FROM_PODS: &str = "10.88.0.1";

/// `skython gateway` as a process on the host, serving the namespace of `k` (it creates the
/// functions deployed through its API there); pods reach it at [`HOST_FROM_PODS`].
pub fn start_gateway(k: &Kubectl, data_dir: &Path, port: u16, extra: &[&str]) -> crate::Skython {
    let mut cmd = Command::new(skython_bin());
    cmd.arg("gateway")
        .args(["--addr", &format!("{HOST_FROM_PODS}:{port}"), "--data-dir"])
        .arg(data_dir)
        .arg("--kubeconfig")
        .arg(k.kubeconfig())
        .args([
            "--function-namespace",
            &k.namespace,
            "--watch-namespace",
            &k.namespace,
            "--lease-namespace",
            &k.namespace,
        ])
        .args(extra)
        .env("SKYTHON_ADMIN_TOKEN", crate::TOKEN);
    if let Some(py) = std::env::var_os("SKYTHON_PYTHON") {
        cmd.env("SKYTHON_PYTHON", py);
    }
    crate::Skython::start_with(cmd, data_dir)
}

/// A namespace of its own with the CRD, `skython gateway` and `skython operator` as processes
/// (the operator pointing runner pods at the gateway).
pub struct Stack {
    pub k: Kubectl,
    pub gateway: crate::Skython,
    pub operator: Operator,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    port: u16,
    /// Last: the namespace goes after the processes.
    _cleanup: Cleanup,
}

impl Stack {
    /// A namespace with the CRD, a gateway with `flags`, and an operator pointing pods at it.
    pub fn start(test: &str, flags: &[&str]) -> Stack {
        Stack::start_with(test, flags, &[])
    }

    /// With flags for the operator too.
    pub fn start_with(test: &str, flags: &[&str], operator_flags: &[&str]) -> Stack {
        let (k, cleanup) = fresh_namespace(&format!("gw-{test}"));
        let (data, runtime) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let port = free_port();
        let gateway = start_gateway(&k, data.path(), port, flags);
        let mut extra = vec!["--gateway-url", &gateway.url];
        extra.extend_from_slice(operator_flags);
        let operator = Operator::start_with(&k, runtime.path(), &extra);
        Stack {
            k,
            gateway,
            operator,
            _cleanup: cleanup,
            _dirs: (data, runtime),
            port,
        }
    }

    /// Kills the gateway (SIGKILL: no chance to flush anything) and starts it again.
    pub fn restart_gateway(&mut self, flags: &[&str]) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.gateway.pid().to_string()])
            .status();
        self.gateway.stop();
        self.gateway = start_gateway(&self.k, Path::new(&self.gateway.data_dir), self.port, flags);
    }

    /// Applies a SkyFunction with kubectl (with small resources: the test node has 2 CPUs, and
    /// pods that do not fit stay Pending), and waits until the gateway knows it: it learns of
    /// it from its watch, a moment after kubectl returns (a call in between is a 404).
    pub fn apply(&self, name: &str, endpoint: &str, source: &str, spec: Value) {
        let mut full = json!({"owner": "admin", "endpoint": endpoint, "source": source, "resources": small(),
                "access": "public"});
        full.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        let obj = json!({
            "apiVersion": "skython.io/v1alpha1",
            "kind": "SkyFunction",
            "metadata": {"name": name},
            "spec": full,
        });
        self.k.apply(&obj.to_string());
        let path = format!("/functions/admin/{endpoint}");
        assert!(
            eventually(Duration::from_secs(30), || self
                .gateway
                .api(reqwest::Method::GET, &path, None)
                .0
                == 200),
            "the gateway never learnt of admin/{endpoint}"
        );
    }

    pub fn replicas(&self, name: &str) -> (i64, i64) {
        let f = self
            .k
            .get(&format!("skyfunction {name}"))
            .unwrap_or_default();
        (
            f["spec"]["replicas"].as_i64().unwrap_or(-1),
            f["status"]["readyReplicas"].as_i64().unwrap_or(0),
        )
    }

    pub fn wait_replicas(&self, name: &str, want: i64, timeout: Duration) {
        let mut last = (0, 0);
        assert!(
            eventually(timeout, || {
                last = self.replicas(name);
                last.0 == want
            }),
            "{name}: spec.replicas stayed {} (ready {}), wanted {want}",
            last.0,
            last.1
        );
    }

    pub fn pods(&self, function: &str) -> Vec<Value> {
        self.k
            .get(&format!("pods -l skython.io/function={function}"))
            .and_then(|p| p["items"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// What test functions get, so that a burst's pods fit on the 2-CPU test node.
pub fn small() -> Value {
    json!({"cpu": "100m", "memory": "128Mi"})
}

/// The host pid of the runner process of `pod` (the test runs as root on the node).
pub fn runner_pid(pod: &str) -> Option<u32> {
    let wanted = format!("SKYTHON_POD_NAME={pod}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let is_runner = cmdline.split(|b| *b == 0).any(|a| a == b"runner");
        let is_pod = environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes());
        (is_runner && is_pod).then_some(pid)
    })
}

/// `pid` and every process below it (a runner, its zygote, the zygote's workers).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let p: u32 = e.file_name().to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                    // After the command's closing parenthesis: state, then the parent's pid.
                    let ppid = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse()
                        .ok()?;
                    Some((p, ppid))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// Whether `needle` is anywhere in the readable memory of process `pid` (the test runs as root
/// on the node). Regions that cannot be read (the kernel's own) are skipped.
pub fn memory_holds(pid: u32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    let Ok(mut mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return false;
    };
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize + needle.len()];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let mut at = start;
        while at < end {
            // Chunks overlap by the needle's length, so no match is split between two.
            let len = ((end - at).min(CHUNK + needle.len() as u64)) as usize;
            if mem.seek(SeekFrom::Start(at)).is_err() || mem.read_exact(&mut buf[..len]).is_err() {
                break;
            }
            if buf[..len].windows(needle.len()).any(|w| w == needle) {
                return true;
            }
            at += CHUNK;
        }
    }
    false
}

/// A call in a thread of its own: its status and error code (empty when it succeeded).
pub fn spawn_call(url: &str, body: &str) -> std::thread::JoinHandle<(u16, String)> {
    let (url, body) = (url.to_string(), body.to_string());
    std::thread::spawn(move || {
        let r = reqwest::blocking::Client::new()
            .post(url)
            .body(body)
            .timeout(Duration::from_secs(60))
            .send()
            .expect("an answer");
        let status = r.status().as_u16();
        let body: Value = r.json().unwrap_or_default();
        (
            status,
            body["error"]["code"].as_str().unwrap_or("").to_string(),
        )
    })
}

/// `n` calls at once; their answers.
pub fn burst(url: &str, n: usize) -> Vec<(u16, String)> {
    let calls: Vec<_> = (0..n).map(|_| spawn_call(url, "{}")).collect();
    calls.into_iter().map(|c| c.join().unwrap()).collect()
}
