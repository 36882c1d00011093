//! The operator against a real Kubernetes (API server, scheduler, kubelet, containerd) started by
//! `e2e/cluster/up.sh`: `kubectl apply` of a SkyFunction gives locked-down runner pods that
//! answer on their pod IP; edits roll them; broken sources are refused with their line;
//! deletion removes everything; an operator restart writes nothing.
//!
//! One test walks the whole life of a function in a fresh namespace, because its steps build on
//! each other and share one operator; the others (scaling, a contested endpoint) have their own
//! namespace and operator.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use skython_e2e::cluster::{Kubectl, Operator, fresh_namespace, ready_condition, small};
use skython_e2e::eventually;

const POD_START: Duration = Duration::from_secs(240);
const CHILDREN: [&str; 4] = ["configmap", "deployment", "service", "networkpolicy"];

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(skython_e2e::repo_root().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn is_ready(f: &Value) -> bool {
    ready_condition(f).is_some_and(|c| c["status"] == "True")
        && f["status"]["observedGeneration"] == f["metadata"]["generation"]
}

/// The IPs of the function's running, ready pods that carry `checksum` (the version).
fn ready_pod_ips(k: &Kubectl, function: &str, checksum: &str) -> Vec<String> {
    let pods = k
        .get(&format!("pods -l skython.io/function={function}"))
        .unwrap_or_default();
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["metadata"]["annotations"]["skython.io/function-checksum"] == checksum
                && p["metadata"]["deletionTimestamp"].is_null()
                && p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| p["status"]["podIP"].as_str().map(String::from))
        .collect()
}

fn call(ip: &str, args: Value) -> (u16, Value) {
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .post(format!("http://{ip}:8080/"))
        .json(&args)
        .send()
        .unwrap_or_else(|e| panic!("POST http://{ip}:8080/: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

/// Waits for the function's current version to be Ready and returns a pod IP serving it.
fn serving_pod(k: &Kubectl, function: &str) -> String {
    k.wait_for(&format!("skyfunction {function}"), POD_START, is_ready);
    let checksum = pod_template_checksum(k, function);
    let mut ips = Vec::new();
    assert!(
        eventually(POD_START, || {
            ips = ready_pod_ips(k, function, &checksum);
            !ips.is_empty()
        }),
        "no ready pod of {function} at checksum {checksum}"
    );
    ips.remove(0)
}

fn resource_versions(k: &Kubectl, objects: &[String]) -> BTreeMap<String, String> {
    objects
        .iter()
        .map(|o| {
            let v = k.get(o).unwrap_or_else(|| panic!("{o} exists"));
            (
                o.clone(),
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

fn pod_template_checksum(k: &Kubectl, function: &str) -> String {
    let deploy = k
        .get(&format!("deployment skyfn-{function}"))
        .expect("the Deployment exists");
    deploy["spec"]["template"]["metadata"]["annotations"]["skython.io/function-checksum"]
        .as_str()
        .expect("the pod template has a checksum")
        .to_string()
}

#[test]
fn a_skyfunction_lives_its_whole_life_on_a_real_cluster() {
    let (k, cleanup) = fresh_namespace("life");
    let namespace = cleanup.0.clone();

    // The API server itself refuses what the schema forbids.
    let bad =
        repo_file("examples/hello.yaml").replace("visibility: public", "visibility: everyone");
    let err = k
        .try_run(&["apply", "-f", "-"], Some(&bad))
        .expect_err("invalid visibility is refused");
    assert!(err.contains("visibility"), "{err}");

    let runtime = tempfile::tempdir().unwrap();
    let mut operator = Operator::start(&k, runtime.path());

    // kubectl apply → ConfigMap, Deployment, Service, NetworkPolicy, all owned by the function.
    k.apply(&repo_file("examples/hello.yaml"));
    for kind in CHILDREN {
        let child = k.wait_for(
            &format!("{kind} skyfn-hello"),
            Duration::from_secs(60),
            |_| true,
        );
        let owner = &child["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["name"].as_str()),
            (Some("SkyFunction"), Some("hello"))
        );
        assert_eq!(owner["controller"], true);
    }
    let deploy = k.get("deployment skyfn-hello").unwrap();
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &pod["containers"][0]["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        pod["containers"][0]["resources"]["limits"],
        json!({"cpu": "250m", "memory": "512Mi"})
    );
    let np = k.get("networkpolicy skyfn-hello").unwrap();
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    // The pods read the function from their own annotation: the kubelet fetches no ConfigMap.
    assert_eq!(
        pod["volumes"][0]["downwardAPI"]["items"][0]["path"], "function.json",
        "{pod}"
    );

    // The pod becomes Ready and POST / on its IP returns the function's result.
    let ip = serving_pod(&k, "hello");
    assert_eq!(
        call(&ip, json!({"name": "Kubernetes"})),
        (
            200,
            json!({"greeting": "Hello, Kubernetes!", "letters": 10})
        )
    );
    let (status, body) = call(&ip, json!({"nope": 1}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_arguments"))
    );
    let f = k.get("skyfunction hello").unwrap();
    assert_eq!(f["status"]["signature"]["entrypoint"], "hello");
    assert_eq!(f["status"]["readyReplicas"], 1);
    assert_eq!(
        f["status"]["url"],
        format!("http://skyfn-hello.{namespace}.svc")
    );
    let table = k.run(&["get", "skyfn"]);
    assert!(
        table.contains("ENDPOINT") && table.contains("True"),
        "printer columns:\n{table}"
    );

    // Editing the source rolls the pods, and the new version is served.
    let new_source = "def hello(name: str = 'world') -> str:\n    return f'Hi {name}, v2'\n";
    k.run(&[
        "patch",
        "skyfunction",
        "hello",
        "--type=merge",
        "-p",
        &json!({"spec": {"source": new_source}}).to_string(),
    ]);
    let ip = serving_pod(&k, "hello");
    assert_eq!(
        call(&ip, json!({"name": "you"})),
        (200, json!("Hi you, v2"))
    );

    // A syntax error: Ready=False naming the line, a Warning event, and no pods.
    k.apply(&repo_file("examples/broken.yaml"));
    let broken = k.wait_for("skyfunction broken", Duration::from_secs(60), |f| {
        ready_condition(f).is_some_and(|c| c["reason"] == "InvalidSource")
    });
    let cond = ready_condition(&broken).unwrap();
    assert_eq!(cond["status"], "False");
    assert!(
        cond["message"].as_str().unwrap().contains("line 2"),
        "{cond}"
    );
    for kind in CHILDREN {
        assert!(
            k.get(&format!("{kind} skyfn-broken")).is_none(),
            "no {kind} for a broken source"
        );
    }
    k.expect_warning("broken", "InvalidSource");

    // In a runner pod, hostile code meets the restricted profile: a non-root uid, no
    // capabilities, no_new_privs, the runtime's seccomp profile, a read-only root; and the
    // runner's own limits: a memory bomb fails cleanly, a spin is cut off at the timeout, and
    // the pod serves on.
    let hostile = r#"apiVersion: skython.io/v1alpha1
kind: SkyFunction
metadata:
  name: hostile
spec:
  owner: mallory
  endpoint: hostile
  timeoutSeconds: 3
  resources: {memory: 256Mi}
  source: |
    import os
    def attempt(f):
        try:
            f()
            return 0
        except OSError as e:
            return e.errno
    def main(attack: str = "inspect"):
        if attack == "membomb":
            return len(bytearray(3 << 30))
        if attack == "spin":
            while True:
                pass
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        return {
            "uid": os.getuid(),
            "nnp": status["NoNewPrivs"].strip(),
            "seccomp": status["Seccomp"].strip(),
            "caps": status["CapEff"].strip(),
            "shadow": attempt(lambda: open("/etc/shadow").read()),
            "write_root": attempt(lambda: open("/evil", "w")),
            "token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        }
"#;
    k.apply(hostile);
    let ip = serving_pod(&k, "hostile");
    let (status, body) = call(&ip, json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uid"], 10001);
    assert_eq!(
        (body["nnp"].as_str(), body["seccomp"].as_str()),
        (Some("1"), Some("2")),
        "{body}"
    );
    assert_eq!(body["caps"], "0000000000000000");
    assert_eq!(body["shadow"], 13, "EACCES");
    assert_eq!(body["write_root"], 30, "EROFS");
    assert_eq!(body["token"], false, "no service-account token");
    let (status, body) = call(&ip, json!({"attack": "membomb"}));
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (500, Some("MemoryError")),
        "{body}"
    );
    let (status, body) = call(&ip, json!({"attack": "spin"}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("timeout")),
        "{body}"
    );
    assert_eq!(call(&ip, json!({})).0, 200, "the pod still serves");
    k.run(&["delete", "skyfunction", "hostile", "--wait=false"]);

    // Restarting the operator writes nothing: every object keeps its resourceVersion.
    let mut watched: Vec<String> = CHILDREN
        .iter()
        .map(|kind| format!("{kind} skyfn-hello"))
        .collect();
    watched.extend(["skyfunction hello".into(), "skyfunction broken".into()]);
    let before = resource_versions(&k, &watched);
    assert_eq!(
        operator.process.terminate(),
        Some(0),
        "the operator stops cleanly on SIGTERM"
    );
    let operator = Operator::start(&k, runtime.path());
    assert!(
        eventually(Duration::from_secs(60), || operator
            .metric("skython_operator_reconciles_total")
            .is_some_and(|n| n >= 2.0)),
        "the restarted operator reconciled both functions"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        resource_versions(&k, &watched),
        before,
        "a restart changed objects"
    );
    assert_eq!(
        operator
            .metric("skython_operator_reconcile_errors_total")
            .unwrap_or(0.0),
        0.0
    );

    // Deleting the function removes every child (garbage collection through owner references).
    k.run(&[
        "delete",
        "skyfunction",
        "hello",
        "--wait=true",
        "--timeout=60s",
    ]);
    for kind in CHILDREN {
        assert!(
            eventually(Duration::from_secs(90), || k
                .get(&format!("{kind} skyfn-hello"))
                .is_none()),
            "{kind} skyfn-hello was not removed"
        );
    }
    assert!(
        eventually(Duration::from_secs(90), || k
            .get("pods -l skython.io/function=hello")
            .is_some_and(|p| p["items"].as_array().is_some_and(Vec::is_empty))),
        "the pods were not removed"
    );
    drop(cleanup);
}

#[test]
fn kubectl_scale_sets_the_replicas_without_rolling_the_pods() {
    let (k, cleanup) = fresh_namespace("scale");
    let runtime = tempfile::tempdir().unwrap();
    let _operator = Operator::start(&k, runtime.path());
    k.apply(&repo_file("examples/hello.yaml"));
    serving_pod(&k, "hello");
    let checksum = pod_template_checksum(&k, "hello");
    let deployment_replicas = |d: &Value| d["spec"]["replicas"].clone();
    assert_eq!(
        deployment_replicas(&k.get("deployment skyfn-hello").unwrap()),
        1,
        "unset replicas: max(minReplicas, 1)"
    );

    k.run(&["scale", "skyfn", "hello", "--replicas=2"]);
    k.wait_for("deployment skyfn-hello", Duration::from_secs(60), |d| {
        deployment_replicas(d) == 2
    });
    assert_eq!(
        pod_template_checksum(&k, "hello"),
        checksum,
        "scaling changed the pod template"
    );
    let f = k.wait_for("skyfunction hello", POD_START, |f| {
        f["status"]["replicas"] == 2 && f["status"]["readyReplicas"] == 2 && is_ready(f)
    });
    assert_eq!(f["status"]["selector"], "skython.io/function=hello");
    let scale = k.run(&["get", "skyfn", "hello", "--subresource=scale", "-o", "json"]);
    let scale: Value = serde_json::from_str(&scale).expect("kubectl printed JSON");
    assert_eq!(
        (&scale["spec"]["replicas"], &scale["status"]["replicas"]),
        (&json!(2), &json!(2)),
        "{scale}"
    );
    let table = k.run(&["get", "skyfn", "hello"]);
    let (head, row) = table.split_once('\n').unwrap_or_default();
    let columns: Vec<&str> = head.split_whitespace().collect();
    let cells: Vec<&str> = row.split_whitespace().collect();
    let cell = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .and_then(|i| cells.get(i).copied())
    };
    assert_eq!(
        (cell("DESIRED"), cell("REPLICAS")),
        (Some("2"), Some("2")),
        "kubectl get skyfn:\n{table}"
    );
    assert_eq!(
        ready_pod_ips(&k, "hello", &checksum).len(),
        2,
        "both pods run the same version"
    );

    // Scaled to zero: no pods, and still Ready (a call starts one).
    k.run(&["scale", "skyfn", "hello", "--replicas=0"]);
    let f = k.wait_for("skyfunction hello", Duration::from_secs(90), |f| {
        f["status"]["replicas"] == 0 && is_ready(f)
    });
    let cond = ready_condition(&f).unwrap();
    assert_eq!(cond["reason"], "Available");
    assert!(
        cond["message"].as_str().unwrap().contains("scaled to zero"),
        "{cond}"
    );
    assert_eq!(pod_template_checksum(&k, "hello"), checksum);
    drop(cleanup);
}

#[test]
fn a_second_claim_of_an_endpoint_gets_endpoint_taken_and_no_pods() {
    let (k, cleanup) = fresh_namespace("taken");
    let runtime = tempfile::tempdir().unwrap();
    let _operator = Operator::start(&k, runtime.path());
    k.apply(&repo_file("examples/hello.yaml"));
    k.wait_for("deployment skyfn-hello", Duration::from_secs(60), |_| true);
    // Older, or of the same second and first by name: hello holds the endpoint.
    let copy = repo_file("examples/hello.yaml").replace("name: hello\n", "name: hello-copy\n");
    k.apply(&copy);

    let f = k.wait_for("skyfunction hello-copy", Duration::from_secs(60), |f| {
        ready_condition(f).is_some_and(|c| c["reason"] == "EndpointTaken")
    });
    let cond = ready_condition(&f).unwrap();
    assert_eq!(cond["status"], "False");
    let holder = format!("{}/hello", cleanup.0);
    assert!(
        cond["message"].as_str().unwrap().contains(&holder),
        "the message names the holder {holder}: {cond}"
    );
    assert!(
        k.get("deployment skyfn-hello-copy").is_none(),
        "no Deployment for the second claim"
    );
    k.expect_warning("hello-copy", "EndpointTaken");
    let first = k.get("skyfunction hello").unwrap();
    assert_ne!(
        ready_condition(&first).map(|c| c["reason"].clone()),
        Some(json!("EndpointTaken")),
        "the first claim keeps its endpoint"
    );

    // The holder deleted, the second claim takes the endpoint over.
    k.run(&[
        "delete",
        "skyfunction",
        "hello",
        "--wait=true",
        "--timeout=60s",
    ]);
    k.wait_for(
        "deployment skyfn-hello-copy",
        Duration::from_secs(60),
        |_| true,
    );
    drop(cleanup);
}

#[test]
fn a_function_too_large_for_an_annotation_is_served_from_its_config_map() {
    let (k, cleanup) = fresh_namespace("large");
    let runtime = tempfile::tempdir().unwrap();
    let _operator = Operator::start(&k, runtime.path());
    // 150 kB: over the 128 KiB a pod's annotation holds, well under the 1 MiB a source may be.
    let padding = format!("# {}\n", "x".repeat(98)).repeat(1500);
    let source = format!("{padding}def double(n: int) -> int:\n    return n * 2\n");
    let function = json!({
        "apiVersion": "skython.io/v1alpha1",
        "kind": "SkyFunction",
        "metadata": {"name": "large"},
        "spec": {"owner": "alice", "endpoint": "large", "source": source,
                 "resources": small()},
    });
    k.apply(&function.to_string());

    let ip = serving_pod(&k, "large");
    assert_eq!(call(&ip, json!({"n": 21})), (200, json!(42)));
    let template = &k.get("deployment skyfn-large").unwrap()["spec"]["template"];
    assert!(
        template["metadata"]["annotations"]["skython.io/function.json"].is_null(),
        "the spec is not in the pod's annotations"
    );
    assert_eq!(
        template["spec"]["volumes"][0]["configMap"]["name"],
        "skyfn-large"
    );
    drop(cleanup);
}
