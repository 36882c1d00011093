//! The autoscaler's loop against the real API server of the test cluster (no operator): a fake
//! demand source, a SkyFunction in a namespace of its own, and `spec.replicas` read back through
//! the scale subresource. Needs the test cluster (`make test` starts it).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus::{Encoder, Registry, TextEncoder};
use skython_cluster::autoscaler::{Autoscaler, AutoscalerConfig, DemandSource};
use skython_cluster::{FunctionRef, Load};
use skython_crds::{SkyFunction, SkyFunctionSpec};
use skython_operator::leader::LeaseConfig;

/// A namespace of the test's own, deleted when the test ends (passed or not).
struct Namespaced {
    client: kube::Client,
    kubeconfig: PathBuf,
    ns: String,
}

impl Namespaced {
    async fn new(kubeconfig: PathBuf, test: &str) -> Namespaced {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("kube config");
        let client = kube::Client::try_from(config).expect("kube client");
        let ns = format!("skython-scale-{test}-{}", std::process::id());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the namespace");
        Namespaced {
            client,
            kubeconfig,
            ns,
        }
    }
}

impl Drop for Namespaced {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", &self.ns, "--wait=false"])
            .output();
    }
}

/// Creates the SkyFunction (the generated CRD installed first); the API to read it back.
async fn function(client: &kube::Client, ns: &str, name: &str) -> Api<SkyFunction> {
    skython_e2e::cluster::install_crd();
    let api = Api::<SkyFunction>::namespaced(client.clone(), ns);
    let mut spec = SkyFunctionSpec::new("scale", name, "def main():\n    return 1\n");
    // This cluster's API server reads an empty string as null (and refuses it): say something.
    spec.description = "the autoscaler's test function".into();
    spec.concurrency = 2;
    spec.scaling.max_replicas = 5;
    spec.scaling.idle_seconds_to_zero = 2;
    api.create(&PostParams::default(), &SkyFunction::new(name, spec))
        .await
        .expect("create the SkyFunction");
    api
}

/// The gateway's reflector of SkyFunctions, here of one namespace.
async fn store(client: &kube::Client, ns: &str) -> Store<SkyFunction> {
    let (reader, writer) = reflector::store();
    let watch = reflector::reflector(
        writer,
        watcher(
            Api::<SkyFunction>::namespaced(client.clone(), ns),
            watcher::Config::default(),
        ),
    )
    .applied_objects()
    .for_each(|_| std::future::ready(()));
    tokio::spawn(watch);
    reader.wait_until_ready().await.expect("store ready");
    reader
}

#[derive(Clone, Default)]
struct FakeDemand(Arc<Mutex<HashMap<FunctionRef, Load>>>);

impl FakeDemand {
    fn set(&self, f: &FunctionRef, queued: u32) {
        self.0.lock().unwrap().insert(
            f.clone(),
            Load {
                queued,
                ..Load::default()
            },
        );
    }

    fn source(&self) -> DemandSource {
        let map = self.0.clone();
        Arc::new(move || map.lock().unwrap().clone())
    }
}

fn lease(ns: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        namespace: ns.into(),
        name: "skython-gateway-autoscaler".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
    }
}

/// `spec.replicas` (the scale subresource cannot say "unset": Kubernetes 1.20 answers 500).
async fn replicas(api: &Api<SkyFunction>, name: &str) -> Option<u32> {
    let obj = api.get(name).await.expect("read the SkyFunction");
    obj.spec.replicas
}

/// Polls `spec.replicas` until it is `want`; how long that took.
async fn wait_for(api: &Api<SkyFunction>, name: &str, want: u32, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let now = replicas(api, name).await;
        if now == Some(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "spec.replicas is {now:?}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("metrics as text");
    String::from_utf8(out).expect("utf-8")
}

#[tokio::test]
async fn the_leader_writes_demand_as_replicas_and_returns_to_zero_after_idle() {
    let t = Namespaced::new(skython_e2e::cluster::kubeconfig(), "leader").await;
    let api = function(&t.client, &t.ns, "burst").await;
    let f = FunctionRef {
        namespace: t.ns.clone(),
        name: "burst".into(),
    };
    let demand = FakeDemand::default();
    let registry = Registry::new_custom(Some("skython".into()), None).unwrap();
    let written: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let scaler = Autoscaler::spawn(
        t.client.clone(),
        store(&t.client, &t.ns).await,
        demand.source(),
        {
            let written = written.clone();
            Arc::new(move |_: &FunctionRef, from: u32, to: u32| {
                written.lock().unwrap().push((from, to))
            })
        },
        AutoscalerConfig::default(),
        Some(lease(&t.ns, "gateway-a")),
        &registry,
    )
    .expect("start the autoscaler");

    // Never called: down to zero once idle for idleSecondsToZero (from the operator's default of 1).
    wait_for(&api, "burst", 0, Duration::from_secs(10)).await;

    // Six calls waiting at concurrency 2: three replicas, at once.
    demand.set(&f, 6);
    scaler.poke(&f);
    let took = wait_for(&api, "burst", 3, Duration::from_secs(5)).await;
    eprintln!("0 -> 3 written and read back in {took:?}");
    assert!(took < Duration::from_secs(1), "from zero took {took:?}");

    // Demand gone: still up before idleSecondsToZero (2 s), zero after it.
    demand.set(&f, 0);
    let gone = Instant::now();
    let took = wait_for(&api, "burst", 0, Duration::from_secs(10)).await;
    assert!(
        gone.elapsed() >= Duration::from_millis(1900),
        "down after {took:?}, before idleSecondsToZero"
    );

    // The scaler counts a write once the API server answered it, which may be just after
    // this test read the new count back.
    let label = r#"function="scale/burst""#;
    let counted = format!(r#"skython_autoscaler_scale_writes_total{{{label},outcome="ok"}} 3"#);
    let until = Instant::now() + Duration::from_secs(2);
    while !render(&registry).contains(&counted) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = render(&registry);
    assert!(text.contains(&format!("skython_autoscaler_desired_replicas{{{label}}} 0")));
    assert!(
        text.contains(&format!(
            r#"skython_autoscaler_scale_writes_total{{{label},outcome="ok"}} 3"#
        )),
        "writes told: {:?}\n{text}",
        written.lock().unwrap()
    );
    assert!(text.contains("skython_autoscaler_scale_write_seconds_count 3"));
    assert!(text.contains("skython_autoscaler_leader 1"));
    assert_eq!(
        *written.lock().unwrap(),
        [(1, 0), (0, 3), (3, 0)],
        "every write was told"
    );

    scaler.shutdown().await;
    let held = Api::<Lease>::namespaced(t.client.clone(), &t.ns)
        .get("skython-gateway-autoscaler")
        .await
        .expect("the Lease");
    assert_eq!(
        held.spec.and_then(|s| s.holder_identity),
        None,
        "released at shutdown"
    );
}

#[tokio::test]
async fn a_follower_decides_but_does_not_write() {
    let t = Namespaced::new(skython_e2e::cluster::kubeconfig(), "follower").await;
    let api = function(&t.client, &t.ns, "busy").await;
    // Another gateway holds the Lease for the whole test.
    let held = Lease {
        metadata: ObjectMeta {
            name: Some("skython-gateway-autoscaler".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("gateway-other".into()),
            lease_duration_seconds: Some(3600),
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(t.client.clone(), &t.ns)
        .create(&PostParams::default(), &held)
        .await
        .expect("create the Lease");
    let f = FunctionRef {
        namespace: t.ns.clone(),
        name: "busy".into(),
    };
    let demand = FakeDemand::default();
    demand.set(&f, 6);
    let registry = Registry::new_custom(Some("skython".into()), None).unwrap();
    let scaler = Autoscaler::spawn(
        t.client.clone(),
        store(&t.client, &t.ns).await,
        demand.source(),
        Arc::new(|_: &FunctionRef, _, _| panic!("a follower wrote")),
        AutoscalerConfig::default(),
        Some(lease(&t.ns, "gateway-b")),
        &registry,
    )
    .expect("start the autoscaler");
    scaler.poke(&f);

    let label = r#"function="scale/busy""#;
    let decided = format!("skython_autoscaler_desired_replicas{{{label}}} 3");
    let start = Instant::now();
    while !render(&registry).contains(&decided) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no decision:\n{}",
            render(&registry)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(replicas(&api, "busy").await, None, "a follower wrote");
    let text = render(&registry);
    assert!(text.contains("skython_autoscaler_leader 0"));
    assert!(!text.contains("skython_autoscaler_scale_writes_total{"));
    scaler.shutdown().await;
}
