//! `skython gateway` on the real one-node cluster: calls routed to runner pods, scaling from
//! zero and back, the bounded cold-start queue, pods' announcements and state.
//!
//! Each test has its own namespace, operator and gateway (processes of the binary under test;
//! the runner pods run the image `e2e/cluster/up.sh` built from the same binary).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skython_e2e::cluster::{
    Stack, burst, ready_condition, runner_pid, small, spawn_call, start_gateway,
};
use skython_e2e::{eventually, free_port};

/// A function that sleeps `s` seconds (by default `default_seconds`) and answers "ok".
fn nap(default_seconds: f64) -> String {
    format!(
        "import time\ndef nap(s: float = {default_seconds:?}) -> str:\n    time.sleep(s)\n    return 'ok'\n"
    )
}

const ADD: &str = "def add(a: int, b: int) -> int:\n    return a + b\n";

#[test]
fn functions_applied_with_kubectl_and_deployed_through_the_api_are_both_called_through_the_gateway()
{
    let s = Stack::start("both", &[]);
    s.apply("adder", "add", ADD, json!({}));
    let (status, body) = s.gateway.deploy(json!({
        "endpoint": "greet",
        "source": "def greet(name: str) -> str:\n    return 'hi ' + name\n",
        "resources": small(),
    }));
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["status"]["conditions"][0]["status"], "True",
        "the deploy answers once the operator reports it ready: {body}"
    );
    assert_eq!(
        body["status"]["url"],
        format!("{}/fn/admin/greet", s.gateway.url)
    );
    assert_eq!(
        s.gateway.call("admin/add", json!({"a": 2, "b": 3})),
        (200, json!(5))
    );
    assert_eq!(
        s.gateway.call("admin/greet", json!({"name": "k8s"})),
        (200, json!("hi k8s"))
    );
    let (status, body) = s.gateway.call("admin/add", json!({"a": "x"}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_arguments")),
        "{body}"
    );
    // The operator's status follows the pods (the gateway routed to them before the API
    // showed them ready).
    for name in ["adder", "admin.greet"] {
        s.k.wait_for(
            &format!("skyfunction {name}"),
            Duration::from_secs(60),
            |f| ready_condition(f).is_some_and(|c| c["status"] == "True"),
        );
    }
    let table = s.k.run(&["get", "skyfn"]);
    assert!(
        table.contains("DESIRED") && table.contains("REPLICAS"),
        "{table}"
    );
    for name in ["adder", "admin.greet"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) && l.contains("True")),
            "{name} ready in\n{table}"
        );
    }
}

#[test]
fn a_syntax_error_deployed_through_the_gateway_is_a_400_with_the_line() {
    let s = Stack::start("syntax", &[]);
    let (status, body) = s.gateway.deploy(json!({
        "endpoint": "broken",
        "source": "def f(:\n    pass\n",
    }));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("syntax_error")),
        "{body}"
    );
    assert_eq!(body["error"]["line"], 1);
    assert!(
        s.k.get("skyfunction admin.broken").is_none(),
        "nothing was created"
    );
}

#[test]
fn a_burst_from_zero_scales_up_all_succeed_and_it_returns_to_zero() {
    let s = Stack::start(
        "burst",
        &["--stable-window-secs", "4", "--panic-window-secs", "1"],
    );
    let slow = nap(0.3);
    s.apply(
        "nap",
        "nap",
        &slow,
        json!({"concurrency": 4, "scaling": {"maxReplicas": 4, "idleSecondsToZero": 3}}),
    );
    // It starts with one replica, then idles to zero.
    s.wait_replicas("nap", 0, Duration::from_secs(60));
    assert!(
        eventually(Duration::from_secs(120), || s.pods("nap").is_empty()),
        "the pods went away"
    );
    let started = Instant::now();
    let url = format!("{}/fn/admin/nap", s.gateway.url);
    let got = burst(&url, 50);
    assert!(
        got.iter().all(|(status, _)| *status == 200),
        "every call of the burst succeeds: {got:?}"
    );
    eprintln!("burst of 50 from zero: {:?}", started.elapsed());
    let (desired, _) = s.replicas("nap");
    assert!(
        desired > 1 && desired <= 4,
        "replicas rose within maxReplicas: {desired}"
    );
    s.wait_replicas("nap", 0, Duration::from_secs(60));
    // A call while it scales down (or from zero again) still completes.
    assert_eq!(
        s.gateway.call("admin/nap", json!({"s": 0})),
        (200, json!("ok"))
    );
}

#[test]
fn the_cold_queue_answers_503_when_full_and_504_past_its_deadline() {
    let s = Stack::start(
        "queue",
        &["--pod-queue-limit", "1", "--pod-queue-timeout-secs", "2"],
    );
    // Pods that can never be scheduled (64 CPUs on a 2-CPU node): the cold start never ends.
    s.apply(
        "stuck",
        "stuck",
        ADD,
        json!({"resources": {"cpu": "64", "memory": "128Mi"}}),
    );
    let url = format!("{}/fn/admin/stuck", s.gateway.url);
    let waiting = spawn_call(&url, r#"{"a": 1, "b": 2}"#);
    assert!(
        eventually(Duration::from_secs(10), || s
            .gateway
            .metric(r#"skython_function_queued{function="admin/stuck"}"#)
            == Some(1.0)),
        "the first call waits in the queue"
    );
    let (status, body) = s.gateway.call("admin/stuck", json!({"a": 1, "b": 2}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("queue_full")),
        "{body}"
    );
    assert_eq!(
        waiting.join().unwrap(),
        (504, "cold_start_timeout".to_string())
    );
}

#[test]
fn state_from_runner_pods_survives_their_restart_and_the_gateway_being_killed() {
    let mut s = Stack::start("state", &[]);
    let counter = "from skython import store, load\ndef hit() -> int:\n    n = load('n', 0) + 1\n    store('n', n)\n    return n\n";
    s.apply("counter", "hit", counter, json!({}));
    assert_eq!(s.gateway.call("admin/hit", json!({})), (200, json!(1)));
    assert_eq!(s.gateway.call("admin/hit", json!({})), (200, json!(2)));
    s.k.run(&[
        "delete",
        "pods",
        "-l",
        "skython.io/function=counter",
        "--wait=true",
    ]);
    assert_eq!(s.gateway.call("admin/hit", json!({})), (200, json!(3)));
    s.restart_gateway(&[]);
    assert_eq!(s.gateway.call("admin/hit", json!({})), (200, json!(4)));
}

#[test]
fn a_pod_announcing_an_address_that_is_not_its_own_gets_no_traffic() {
    let s = Stack::start("spoof", &[]);
    s.apply("adder", "add", ADD, json!({"scaling": {"minReplicas": 1}}));
    assert_eq!(
        s.gateway.call("admin/add", json!({"a": 1, "b": 1})),
        (200, json!(2))
    );
    // Once the API shows the pod's IP, a claim of another address is refused outright.
    let pod = s.k.wait_for(
        "pods -l skython.io/function=adder",
        Duration::from_secs(60),
        |p| p["items"][0]["status"]["podIP"].is_string(),
    )["items"][0]
        .clone();
    let name = pod["metadata"]["name"].as_str().unwrap();
    let token =
        s.k.run(&["exec", name, "--", "cat", "/var/run/secrets/skython/token"]);
    // A listener on the host that would see any connection the gateway made to it.
    let decoy = std::net::TcpListener::bind("10.88.0.1:0").unwrap();
    let decoy_addr = decoy.local_addr().unwrap();
    decoy.set_nonblocking(true).unwrap();
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/internal/v1/pods/announce", s.gateway.url))
        .bearer_auth(token.trim())
        .json(&json!({"ip": decoy_addr.ip(), "port": decoy_addr.port()}))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("address_mismatch")),
        "{body}"
    );
    for _ in 0..10 {
        assert_eq!(
            s.gateway.call("admin/add", json!({"a": 2, "b": 2})),
            (200, json!(4))
        );
    }
    assert!(
        decoy.accept().is_err(),
        "the gateway never connected to the announced address"
    );
}

#[test]
fn an_announcement_without_a_pods_token_is_refused() {
    let s = Stack::start("token", &[]);
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/internal/v1/pods/announce", s.gateway.url))
        .bearer_auth("not-a-token")
        .json(&json!({"ip": "10.88.0.1", "port": 1}))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[test]
fn a_runner_pod_killed_mid_burst_fails_only_its_calls_in_flight() {
    let s = Stack::start("kill", &[]);
    let slow = nap(2.0);
    s.apply(
        "nap",
        "nap",
        &slow,
        json!({"concurrency": 2, "scaling": {"minReplicas": 2, "maxReplicas": 2}}),
    );
    let ready = s.k.wait_for(
        "pods -l skython.io/function=nap",
        Duration::from_secs(90),
        |p| {
            p["items"].as_array().is_some_and(|items| {
                items.len() == 2
                    && items.iter().all(|i| {
                        i["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                    })
            })
        },
    );
    let victim = ready["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{}/fn/admin/nap", s.gateway.url);
    // Four calls fill both pods (two each); four more wait in the gateway.
    let calls: Vec<_> = (0..8).map(|_| spawn_call(&url, "{}")).collect();
    std::thread::sleep(Duration::from_millis(800));
    let pid = runner_pid(&victim).expect("the victim's runner process");
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let got: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let failed: Vec<_> = got.iter().filter(|(status, _)| *status != 200).collect();
    assert!(
        failed
            .iter()
            .all(|(status, code)| *status == 502 && code == "pod_failed"),
        "only 502 pod_failed: {got:?}"
    );
    assert!(
        (1..=2).contains(&failed.len()),
        "the victim's calls in flight (two) fail, no other: {got:?}"
    );
    assert_eq!(
        s.gateway.call("admin/nap", json!({"s": 0})),
        (200, json!("ok"))
    );
}

#[test]
fn with_two_gateways_the_leader_scales_on_the_calls_the_other_routes() {
    let peer = [
        "--peer-token",
        "e2e-peer-secret",
        "--stable-window-secs",
        "4",
    ];
    let s = Stack::start("peers", &peer);
    // The first gateway holds the autoscaler's Lease; a second one joins it.
    assert!(eventually(Duration::from_secs(30), || s
        .gateway
        .metric("skython_autoscaler_leader")
        == Some(1.0)));
    let data = tempfile::tempdir().unwrap();
    let follower = start_gateway(&s.k, data.path(), free_port(), &peer);
    assert!(eventually(Duration::from_secs(30), || follower
        .metric("skython_autoscaler_leader")
        == Some(0.0)));
    let slow = nap(0.5);
    s.apply(
        "nap",
        "nap",
        &slow,
        json!({"concurrency": 2, "scaling": {"maxReplicas": 4, "idleSecondsToZero": 3}}),
    );
    s.wait_replicas("nap", 0, Duration::from_secs(60));
    // Only the follower sees these calls; only the leader writes replicas.
    let url = format!("{}/fn/admin/nap", follower.url);
    let got = burst(&url, 16);
    assert!(
        got.iter().all(|(status, _)| *status == 200),
        "every call through the follower succeeds: {got:?}"
    );
    let (desired, _) = s.replicas("nap");
    assert!(
        desired > 1,
        "the leader scaled on the follower's counts: {desired}"
    );
    let writes = r#"skython_autoscaler_scale_writes_total{function="admin/nap",outcome="ok"}"#;
    assert!(s.gateway.metric(writes).is_some_and(|n| n >= 2.0));
    assert_eq!(follower.metric(writes), None, "the follower wrote nothing");
}

#[test]
fn two_gateways_on_one_mongodb_share_state_and_invocation_records() {
    let url = skython_e2e::mongo::fresh_database_url();
    let store = ["--store", url.as_str()];
    let s = Stack::start("mongo", &store);
    let data = tempfile::tempdir().unwrap();
    let other = start_gateway(&s.k, data.path(), free_port(), &store);
    let counter = "from skython import incr\ndef hit() -> int:\n    return incr('n')\n";
    s.apply("counter", "hit", counter, json!({}));
    assert_eq!(s.gateway.call("admin/hit", json!({})), (200, json!(1)));
    assert_eq!(other.call("admin/hit", json!({})), (200, json!(2)));
    // Each gateway records the calls it routed (in batches, soon after) into the one store.
    let path = "/functions/admin/hit/invocations";
    let both_recorded = || {
        let (_, calls) = s.gateway.api(reqwest::Method::GET, path, None);
        calls["items"].as_array().map(Vec::len) == Some(2)
    };
    assert!(eventually(Duration::from_secs(10), both_recorded));
}
