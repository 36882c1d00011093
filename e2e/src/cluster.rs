//! Helpers for the tests against the real one-node cluster that `e2e/cluster/up.sh` starts:
//! `kubectl` as users run it, and the operator as a process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

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

/// The generated CRD installed (structural schema, printer columns, subresources) and a fresh
/// namespace `skython-e2e-<tag>-<pid>`, deleted when the returned guard drops.
pub fn fresh_namespace(tag: &str) -> (Kubectl, Cleanup) {
    let namespace = format!("skython-e2e-{tag}-{}", std::process::id());
    let k = Kubectl::new(&namespace);
    let crd = std::fs::read_to_string(
        crate::repo_root().join("helm/skython/files/skyfunctions.skython.io.yaml"),
    )
    .expect("the generated CRD");
    k.apply(&crd);
    k.run(&[
        "wait",
        "--for=condition=Established",
        "crd/skyfunctions.skython.io",
        "--timeout=60s",
    ]);
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
