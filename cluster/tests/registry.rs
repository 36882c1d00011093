//! `Registry` against a real API server: each test in a namespace of its own, with the
//! SkyFunction CRD installed. Needs the test cluster (`make test` starts it).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use skython_cluster::registry::Registry;
use skython_crds::{SkyFunction, SkyFunctionSpec};
use skython_store::{FunctionFilter, FunctionRecord};

/// A namespace of this test's own, deleted when the test ends (pass or fail).
struct Cluster {
    client: Client,
    kubeconfig: PathBuf,
    namespace: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.kubectl(
            &["delete", "namespace", &self.namespace, "--wait=false"],
            None,
        );
    }
}

impl Cluster {
    /// The test cluster with a fresh namespace.
    async fn new(test: &str) -> Cluster {
        let kubeconfig = skython_e2e::cluster::kubeconfig();
        let kc = Kubeconfig::read_from(&kubeconfig).expect("reading the kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("a client config from the kubeconfig");
        let client = Client::try_from(config).expect("a Kubernetes client");
        skython_e2e::cluster::install_crd();
        let cluster = Cluster {
            client,
            kubeconfig,
            namespace: format!("skython-seam-{}-{test}", std::process::id()),
        };
        cluster.kubectl(&["create", "namespace", &cluster.namespace], None);
        cluster
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("kubectl's stdin");
            pipe.write_all(input.as_bytes())
                .expect("writing to kubectl");
        }
        let out = child.wait_with_output().expect("kubectl's output");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A SkyFunction applied as a person would, under a name of their choosing; returns once
    /// `registry` sees it holding its endpoint.
    async fn apply_by_hand(&self, registry: &Registry, name: &str, owner: &str, endpoint: &str) {
        let manifest = serde_json::json!({
            "apiVersion": "skython.io/v1alpha1",
            "kind": "SkyFunction",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"owner": owner, "endpoint": endpoint, "source": "def main():\n    return 'by hand'\n"},
        });
        self.kubectl(&["apply", "-f", "-"], Some(&manifest.to_string()));
        until(
            || registry.holder(owner, endpoint).is_some(),
            "the watch to show the applied function",
        )
        .await;
    }

    /// A registry over this test's namespace, once it has listed it.
    async fn registry(&self) -> Registry {
        let registry = Registry::start(self.client.clone(), Some(&self.namespace), &self.namespace);
        until(
            || registry.ready().is_ok(),
            "the registry to list SkyFunctions",
        )
        .await;
        registry
    }
}

async fn until(mut done: impl FnMut() -> bool, what: &str) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("waited 30 s for {what}");
}

fn function(owner: &str, endpoint: &str, source: &str) -> FunctionRecord {
    let now = jiff::Timestamp::now();
    let mut spec = SkyFunctionSpec::new(owner, endpoint, source);
    // The test cluster's API server reads an empty string in a custom resource as null and
    // refuses it (a quirk of its build, not of Kubernetes): no empty description here.
    spec.description = format!("{owner}'s {endpoint}");
    FunctionRecord {
        spec,
        status: Default::default(),
        generation: 1,
        created_at: now,
        updated_at: now,
    }
}

#[tokio::test]
async fn a_created_function_is_read_at_once() {
    let c = Cluster::new("create").await;
    let registry = c.registry().await;
    let created = registry
        .create(&function("alice", "weather", "def main(): return 1"))
        .await
        .unwrap();
    assert_eq!(created.generation, 1);

    let got = registry
        .get("alice", "weather")
        .unwrap()
        .expect("seen at once");
    assert_eq!(got.spec.source, "def main(): return 1");
    let listed = registry.list(&FunctionFilter::default()).unwrap();
    assert_eq!(listed.len(), 1);
    let object = Api::<SkyFunction>::namespaced(c.client.clone(), &c.namespace)
        .get("alice.weather")
        .await
        .unwrap();
    assert_eq!(object.spec.endpoint, "weather");
}

#[tokio::test]
async fn a_second_create_of_an_endpoint_conflicts() {
    let c = Cluster::new("twice").await;
    let registry = c.registry().await;
    let record = function("alice", "weather", "def main(): return 1");
    registry.create(&record).await.unwrap();
    let e = registry.create(&record).await.unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    assert!(
        e.message
            .contains(&format!("{}/alice.weather", c.namespace)),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn a_create_conflicts_with_a_function_applied_by_hand() {
    let c = Cluster::new("taken").await;
    let registry = c.registry().await;
    c.apply_by_hand(&registry, "hand-made", "alice", "tool")
        .await;
    let e = registry
        .create(&function("alice", "tool", "def main(): return 2"))
        .await
        .unwrap_err();
    assert_eq!(e.status, StatusCode::CONFLICT);
    assert!(
        e.message.contains(&format!("{}/hand-made", c.namespace)),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn a_function_applied_by_hand_is_replaced_where_it_lives() {
    let c = Cluster::new("replace").await;
    let registry = c.registry().await;
    c.apply_by_hand(&registry, "hand-made", "alice", "tool")
        .await;
    let holder = registry.holder("alice", "tool").unwrap();
    assert_eq!(holder.name_any(), "hand-made");

    let new_source = "def main():\n    return 'through the API'\n";
    let current = registry.get("alice", "tool").unwrap().unwrap();
    let replaced = registry
        .replace(&function("alice", "tool", new_source), current.generation)
        .await
        .unwrap();
    assert_eq!(replaced.generation, current.generation + 1);
    assert_eq!(
        registry.get("alice", "tool").unwrap().unwrap().spec.source,
        new_source,
        "the replace is read at once"
    );
    let source = c.kubectl(
        &[
            "get",
            "skyfunction",
            "hand-made",
            "-n",
            &c.namespace,
            "-o",
            "jsonpath={.spec.source}",
        ],
        None,
    );
    assert_eq!(source, new_source);
}

#[tokio::test]
async fn a_replace_from_a_stale_generation_conflicts() {
    let c = Cluster::new("stale").await;
    let registry = c.registry().await;
    let record = function("alice", "weather", "def main(): return 1");
    registry.create(&record).await.unwrap();
    let e = registry
        .replace(&function("alice", "weather", "def main(): return 2"), 7)
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    assert_eq!(
        registry
            .get("alice", "weather")
            .unwrap()
            .unwrap()
            .spec
            .source,
        "def main(): return 1",
        "nothing was written"
    );
}

#[tokio::test]
async fn a_deleted_function_is_gone_at_once() {
    let c = Cluster::new("delete").await;
    let registry = c.registry().await;
    registry
        .create(&function("alice", "weather", "def main(): return 1"))
        .await
        .unwrap();
    assert!(registry.delete("alice", "weather").await.unwrap());
    assert!(registry.get("alice", "weather").unwrap().is_none());
    assert!(
        !registry.delete("alice", "weather").await.unwrap(),
        "nothing left to delete"
    );
}
