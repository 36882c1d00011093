//! Helpers for the Helm chart's tests: `scripts/helm.py` (Helm v4's SDK through
//! helm-python-sdk; there is no helm binary here) as an admin runs it, SecantusDB in a pod
//! standing in for MongoDB, and releases in fresh namespaces on the one-node cluster.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::cluster::{Cleanup, Kubectl, fresh_namespace};
use crate::{Skython, TOKEN, repo_root};

/// The tag `e2e/cluster/up.sh` gives this tree's images; `:dev-next` is the same content under
/// another tag, for upgrades.
pub const IMAGE_TAG: &str = "dev";
pub const NEXT_IMAGE_TAG: &str = "dev-next";

/// The Python with helm-python-sdk: `$SKYTHON_HELM_PYTHON`, else `make venv-helm`'s.
pub fn helm_python() -> PathBuf {
    crate::cached(
        "SKYTHON_HELM_PYTHON",
        "venv-helm/bin/python",
        "run `make venv-helm` (`make test` does)",
    )
}

pub fn chart() -> String {
    repo_root().join("helm/skython").display().to_string()
}

/// `scripts/helm.py ARGS`: its stdout, or what it said on failure.
pub fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm_python())
        .arg(repo_root().join("scripts/helm.py"))
        .args(args)
        .output()
        .map_err(|e| format!("running scripts/helm.py: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "scripts/helm.py {} failed: {}{stdout}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// SecantusDB (a MongoDB-wire server; no MongoDB image can be fetched here) as a pod and a
/// Service, and the Secret the chart reads its URI from. Returns the URI, which the host
/// reaches too (the Service's ClusterIP: the test cluster has no DNS).
pub fn mongodb_in(k: &Kubectl) -> String {
    k.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: mongodb, labels: {{app: mongodb}}}}
spec:
  automountServiceAccountToken: false
  securityContext: {{runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
    - name: secantus
      image: docker.io/skython/secantus:{IMAGE_TAG}
      imagePullPolicy: Never
      args: [--host, 0.0.0.0, --port, "27017", --storage-path, /data]
      ports: [{{name: mongodb, containerPort: 27017}}]
      readinessProbe: {{tcpSocket: {{port: mongodb}}, periodSeconds: 1}}
      securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
      volumeMounts: [{{name: data, mountPath: /data}}, {{name: tmp, mountPath: /tmp}}]
  volumes: [{{name: data, emptyDir: {{}}}}, {{name: tmp, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: mongodb}}
spec:
  selector: {{app: mongodb}}
  ports: [{{name: mongodb, port: 27017, targetPort: mongodb}}]
"#
    ));
    let svc = k.get("service mongodb").expect("the mongodb Service");
    let ip = svc["spec"]["clusterIP"].as_str().expect("a ClusterIP");
    let uri = format!("mongodb://{ip}:27017/skython?directConnection=true");
    k.run(&[
        "wait",
        "--for=condition=Ready",
        "pod/mongodb",
        "--timeout=120s",
    ]);
    k.run(&[
        "create",
        "secret",
        "generic",
        "skython-mongodb",
        &format!("--from-literal=uri={uri}"),
    ]);
    uri
}

/// The name of every test release (each has a namespace of its own).
pub const RELEASE: &str = "sky";

/// A release of the chart in a fresh namespace, with MongoDB (SecantusDB) and the tests' admin
/// token; uninstalled and its namespace deleted when dropped.
pub struct Release {
    pub k: Kubectl,
    pub mongodb_uri: String,
    _cleanup: Cleanup,
}

impl Release {
    /// `helm install --wait` with this tree's images and `sets` (`key=value`) on top. The CRD
    /// is the one every cluster test applies with kubectl (`crds.install=false`).
    pub fn install(tag: &str, sets: &[&str]) -> Release {
        Release::install_with(tag, sets, false)
    }

    /// An install that owns the CRD (`crds.install=true`): it adopts the CRD the cluster tests
    /// applied with kubectl, as the chart's README tells admins who applied it by hand.
    pub fn install_owning_the_crd(tag: &str, sets: &[&str]) -> Release {
        Release::install_with(tag, sets, true)
    }

    fn install_with(tag: &str, sets: &[&str], owns_crd: bool) -> Release {
        let (k, cleanup) = fresh_namespace(tag);
        if owns_crd {
            let crd = "crd/skyfunctions.skython.io";
            k.run(&[
                "label",
                crd,
                "app.kubernetes.io/managed-by=Helm",
                "--overwrite",
            ]);
            k.run(&[
                "annotate",
                crd,
                &format!("meta.helm.sh/release-name={RELEASE}"),
                &format!("meta.helm.sh/release-namespace={}", k.namespace),
                "--overwrite",
            ]);
        }
        let mongodb_uri = mongodb_in(&k);
        k.run(&[
            "create",
            "secret",
            "generic",
            "e2e-admin",
            &format!("--from-literal=token={TOKEN}"),
        ]);
        let release = Release {
            k,
            mongodb_uri,
            _cleanup: cleanup,
        };
        let mut args: Vec<String> = ["install", RELEASE, &chart(), "--wait"]
            .map(String::from)
            .into();
        let base = [
            format!("image.tag={IMAGE_TAG}"),
            "gateway.adminToken.existingSecret=e2e-admin".into(),
            format!("crds.install={owns_crd}"),
            // The test node has two CPUs: a small pool, reserving little.
            "pool.size=2".into(),
            "pool.resources.cpu=50m".into(),
        ];
        for s in base.into_iter().chain(sets.iter().map(|s| s.to_string())) {
            args.extend(["--set".into(), s]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = release.helm(&args) {
            panic!("{e}\n{}", release.story());
        }
        release
    }

    /// `scripts/helm.py` in this release's namespace.
    pub fn helm(&self, args: &[&str]) -> Result<String, String> {
        let kubeconfig = self.k.kubeconfig().display().to_string();
        let mut all = args.to_vec();
        all.extend(["-n", &self.k.namespace, "--kubeconfig", &kubeconfig]);
        helm(&all)
    }

    /// The gateway through its Service, as clients in the cluster reach it.
    pub fn gateway(&self) -> Skython {
        let svc = self
            .k
            .get("service sky-skython-gateway")
            .expect("the gateway Service");
        let ip = svc["spec"]["clusterIP"].as_str().expect("a ClusterIP");
        Skython::attach(&format!("http://{ip}:80"))
    }

    /// What the pods of the release say, for a failing test's message.
    pub fn story(&self) -> String {
        let pods = self
            .k
            .try_run(&["get", "pods", "-o", "wide"], None)
            .unwrap_or_else(|e| e);
        let mut logs = String::new();
        for c in ["gateway", "operator"] {
            let l = self
                .k
                .try_run(
                    &[
                        "logs",
                        "-l",
                        &format!("app.kubernetes.io/component={c}"),
                        "--tail=30",
                        "--all-containers",
                    ],
                    None,
                )
                .unwrap_or_else(|e| e);
            logs.push_str(&format!("--- {c} logs\n{l}\n"));
        }
        format!("pods:\n{pods}\n{logs}")
    }

    /// Waits until `f` holds; the pods' story is in the panic otherwise.
    pub fn wait_until(&self, what: &str, timeout: Duration, f: impl FnMut() -> bool) {
        if !crate::eventually(timeout, f) {
            panic!("timed out after {timeout:?}: {what}\n{}", self.story());
        }
    }
}

impl Drop for Release {
    /// Uninstalls (the chart's cluster-wide objects go too); the namespace goes after.
    fn drop(&mut self) {
        let _ = self.helm(&["uninstall", RELEASE, "--timeout", "60"]);
    }
}
