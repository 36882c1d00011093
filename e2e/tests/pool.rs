//! The warm pool on the real one-node cluster: the operator keeps unspecialised runner pods,
//! a call for a function at zero claims one through the gateway, and the pod serves that
//! function only, for its life.
//!
//! Each test has its own namespace, operator and gateway; one test at a time (the node has two
//! CPUs, and pool pods hold their requests whether used or not).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skython_e2e::cluster::{
    Stack, burst, memory_holds, process_tree, runner_pid, small, spawn_call,
};
use skython_e2e::eventually;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers with the name of the pod that ran it.
const WHO: &str = "import socket\n\ndef who() -> str:\n    return socket.gethostname()\n";
/// Pool pods' names: the operator's default pool name, then the runtime.
const POOL_POD_PREFIX: &str = "skython-pool-standard-";

/// A stack whose operator keeps `size` pool pods, refilled at `rate` per second, and whose
/// gateway claims them (both read one pool secret).
fn pool_stack(test: &str, size: u32, rate: f64) -> (Stack, tempfile::NamedTempFile) {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), rand_hex()).unwrap();
    let key = secret.path().to_str().unwrap().to_string();
    let (size, rate) = (size.to_string(), rate.to_string());
    let s = Stack::start_with(
        test,
        &["--pool-key-file", &key],
        &[
            "--pool-key-file",
            &key,
            "--pool-size",
            &size,
            "--pool-refill-per-second",
            &rate,
            "--pool-cpu",
            "100m",
            "--pool-memory",
            "256Mi",
        ],
    );
    (s, secret)
}

fn rand_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A function with no replica: its first call is a cold start. `cpu` "8" never fits the node,
/// so its Deployment cannot take over and the claimed pod keeps serving it.
fn at_zero(s: &Stack, name: &str, source: &str, resources: Value, scaling: Value) {
    s.apply(
        name,
        name,
        source,
        json!({"replicas": 0, "resources": resources, "scaling": scaling}),
    );
}

fn never_fits() -> Value {
    json!({"cpu": "8", "memory": "128Mi"})
}

/// The pool's pods as the API shows them: (unclaimed and Ready, claimed).
fn pool_pods(s: &Stack) -> (Vec<Value>, Vec<Value>) {
    let all =
        s.k.get("pods -l skython.io/pool")
            .and_then(|p| p["items"].as_array().cloned())
            .unwrap_or_default();
    let live = all
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null());
    let (claimed, unclaimed): (Vec<Value>, Vec<Value>) =
        live.partition(|p| !p["metadata"]["labels"]["skython.io/function"].is_null());
    let ready = |p: &Value| {
        p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    };
    (unclaimed.into_iter().filter(ready).collect(), claimed)
}

/// Waits until the gateway can claim `n` pool pods.
fn wait_pool(s: &Stack, n: usize, timeout: Duration) {
    let mut seen = 0.0;
    assert!(
        eventually(timeout, || {
            seen = s
                .gateway
                .metric("skython_pool_pods{runtime=\"standard\"}")
                .unwrap_or(0.0);
            seen >= n as f64
        }),
        "the gateway sees {seen} claimable pool pods, wanted {n}\n{}",
        s.k.run(&["get", "pods", "-o", "wide"])
    );
}

fn claims(s: &Stack, outcome: &str) -> f64 {
    s.gateway
        .metric(&format!(
            "skython_pool_claims_total{{outcome=\"{outcome}\",runtime=\"standard\"}}"
        ))
        .unwrap_or(0.0)
}

fn name(p: &Value) -> String {
    p["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn five_cold_calls_with_a_warm_pool_all_succeed_on_claimed_pods() {
    let _one = one_at_a_time();
    let (s, _secret) = pool_stack("pool-cold", 2, 1.0);
    for i in 0..5 {
        at_zero(&s, &format!("who{i}"), WHO, small(), json!({}));
    }
    let mut times = Vec::new();
    for i in 0..5 {
        wait_pool(&s, 1, Duration::from_secs(120));
        let started = Instant::now();
        let (status, body) = s.gateway.call(&format!("admin/who{i}"), json!({}));
        times.push(started.elapsed());
        assert_eq!(status, 200, "cold call {i}: {body}");
        let pod = body.as_str().unwrap_or_default();
        assert!(
            pod.starts_with(POOL_POD_PREFIX),
            "cold call {i} was served by a claimed pool pod, not {pod}"
        );
    }
    times.sort();
    // Written to stderr itself, not through eprintln!, which the test harness captures.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "5 cold calls on a warm pool (request in, answer out, through the gateway): median {:?}, max {:?}",
        times[2],
        times[4]
    );
    assert_eq!(claims(&s, "hit"), 5.0);
}

#[test]
fn a_claimed_pod_serves_one_function_for_its_life_and_never_returns_to_the_pool() {
    let _one = one_at_a_time();
    let (s, _secret) = pool_stack("pool-dedicated", 2, 1.0);
    let idle = json!({"idleSecondsToZero": 3});
    at_zero(&s, "first", WHO, never_fits(), idle.clone());
    at_zero(&s, "second", WHO, small(), idle);
    wait_pool(&s, 2, Duration::from_secs(120));
    let (status, first) = s.gateway.call("admin/first", json!({}));
    assert_eq!(status, 200, "{first}");
    let claimed = first.as_str().unwrap().to_string();
    let pod = s.k.get(&format!("pod {claimed}")).expect("the claimed pod");
    assert_eq!(pod["metadata"]["labels"]["skython.io/function"], "first");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "SkyFunction");
    // Idle past idleSecondsToZero, the claimed pod is deleted, not handed back.
    assert!(
        eventually(Duration::from_secs(120), || {
            let (unclaimed, _) = pool_pods(&s);
            assert!(
                !unclaimed.iter().any(|p| name(p) == claimed),
                "{claimed} went back to the pool"
            );
            s.k.get(&format!("pod {claimed}")).is_none()
        }),
        "the idle claimed pod {claimed} was not deleted"
    );
    let (status, second) = s.gateway.call("admin/second", json!({}));
    assert_eq!(status, 200, "{second}");
    assert_ne!(second.as_str().unwrap(), claimed, "a new pod answers");
}

#[test]
fn an_unclaimed_pool_pod_holds_no_function_code() {
    let _one = one_at_a_time();
    let (s, _secret) = pool_stack("pool-clean", 2, 1.0);
    let marker = format!("skython-marker-{}", rand_hex());
    let source = format!("MARKER = {marker:?}\n\n{WHO}");
    at_zero(
        &s,
        "marked",
        &source,
        never_fits(),
        json!({"idleSecondsToZero": 300}),
    );
    wait_pool(&s, 2, Duration::from_secs(120));
    let (status, body) = s.gateway.call("admin/marked", json!({}));
    assert_eq!(status, 200, "{body}");
    let claimed = body.as_str().unwrap().to_string();
    wait_pool(&s, 2, Duration::from_secs(120));
    let holds = |pod: &str| {
        let runner = runner_pid(pod).unwrap_or_else(|| panic!("no runner process of {pod}"));
        process_tree(runner)
            .into_iter()
            .any(|pid| memory_holds(pid, marker.as_bytes()))
    };
    // The scan finds the code where it is: in the pod that runs it.
    assert!(
        holds(&claimed),
        "the claimed pod {claimed} runs the function"
    );
    let (unclaimed, _) = pool_pods(&s);
    assert_eq!(unclaimed.len(), 2);
    for p in unclaimed {
        let pod = name(&p);
        assert!(
            !holds(&pod),
            "the unclaimed pool pod {pod} holds the function's code"
        );
    }
}

#[test]
fn a_burst_of_three_times_the_pool_succeeds_with_pool_hits_and_the_deployment_scaling() {
    let _one = one_at_a_time();
    let (s, _secret) = pool_stack("pool-burst", 2, 1.0);
    let nap = "import time\n\ndef nap() -> str:\n    time.sleep(0.3)\n    return 'ok'\n";
    // One call per pod: six calls want six pods, the pool has two.
    s.apply(
        "nap",
        "nap",
        nap,
        json!({"replicas": 0, "concurrency": 1,
               "scaling": {"maxReplicas": 3, "idleSecondsToZero": 5}}),
    );
    wait_pool(&s, 2, Duration::from_secs(120));
    let got = burst(&format!("{}/fn/admin/nap", s.gateway.url), 6);
    assert!(
        got.iter().all(|(status, _)| *status == 200),
        "every call of the burst succeeds: {got:?}"
    );
    assert_eq!(claims(&s, "hit"), 2.0, "the pool's two pods were claimed");
    assert!(claims(&s, "miss") >= 1.0, "the rest found the pool empty");
    let (replicas, _) = s.replicas("nap");
    assert!(replicas >= 1, "the Deployment scaled up too: {replicas}");
}

/// The function's Deployment, as the API shows it.
fn deployment_replicas(s: &Stack, function: &str) -> i64 {
    s.k.get(&format!("deployment skyfn-{function}"))
        .and_then(|d| d["spec"]["replicas"].as_i64())
        .unwrap_or(-1)
}

/// A claimed pod counts toward its function's replicas: after a pool hit the function wants one
/// replica and has it ready (the claimed pod), and its Deployment starts no pod of its own.
#[test]
fn a_pool_hit_is_a_replica_of_its_function_and_starts_no_pod_of_its_own() {
    let _one = one_at_a_time();
    let (s, _secret) = pool_stack("pool-counted", 1, 1.0);
    at_zero(
        &s,
        "counted",
        WHO,
        small(),
        json!({"idleSecondsToZero": 30}),
    );
    wait_pool(&s, 1, Duration::from_secs(120));
    let (status, body) = s.gateway.call("admin/counted", json!({}));
    assert_eq!(status, 200, "{body}");
    let claimed = body.as_str().unwrap_or_default().to_string();
    assert!(claimed.starts_with(POOL_POD_PREFIX), "{claimed}");
    let mut seen = (0, 0);
    assert!(
        eventually(Duration::from_secs(30), || {
            seen = s.replicas("counted");
            seen == (1, 1)
        }),
        "the function wants one replica and has it ready (wanted, ready): {seen:?}"
    );
    // Long enough for the operator to have acted on the scale and the autoscaler to resample.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            deployment_replicas(&s, "counted"),
            0,
            "the Deployment stays at zero"
        );
        let pods: Vec<String> = s.pods("counted").iter().map(name).collect();
        assert_eq!(
            pods,
            std::slice::from_ref(&claimed),
            "only the claimed pod runs the function"
        );
    }
}

/// Load beyond what the claimed pod serves scales the function's own Deployment to all it
/// needs; once its pods are ready the claimed pod is retired, and no call fails meanwhile.
#[test]
fn under_sustained_load_the_deployment_takes_over_and_the_claimed_pod_retires() {
    let _one = one_at_a_time();
    let (s, _secret) = pool_stack("pool-takeover", 1, 1.0);
    let nap = "import socket, time\n\ndef nap() -> str:\n    time.sleep(0.2)\n    return socket.gethostname()\n";
    s.apply(
        "nap",
        "nap",
        nap,
        json!({"replicas": 0, "concurrency": 1,
               "scaling": {"maxReplicas": 3, "idleSecondsToZero": 30}}),
    );
    wait_pool(&s, 1, Duration::from_secs(120));
    let url = format!("{}/fn/admin/nap", s.gateway.url);
    let (status, first) = s.gateway.call("admin/nap", json!({}));
    assert_eq!(status, 200, "{first}");
    let claimed = first.as_str().unwrap_or_default().to_string();
    assert!(claimed.starts_with(POOL_POD_PREFIX), "{claimed}");
    let started = Instant::now();
    let mut answers = Vec::new();
    while s.k.get(&format!("pod {claimed}")).is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the claimed pod {claimed} was never retired; Deployment replicas {}",
            deployment_replicas(&s, "nap")
        );
        answers.extend(burst(&url, 3));
    }
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "every call under load succeeds: {answers:?}"
    );
    let ready =
        s.k.get("deployment skyfn-nap")
            .and_then(|d| d["status"]["readyReplicas"].as_i64())
            .unwrap_or(0);
    assert!(ready >= 1, "the Deployment's pods serve: {ready} ready");
}

/// A function whose module fails to import burns the one pool pod it was claimed onto; its
/// later cold calls are not claimed for (a broken function called in a loop would drain the
/// pool) and take the Deployment path.
#[test]
fn a_function_that_fails_to_load_in_a_pool_pod_burns_that_pod_only() {
    let _one = one_at_a_time();
    let (s, _secret) = pool_stack("pool-broken", 2, 1.0);
    let broken = "import no_such_module_here\n\ndef broken():\n    return 1\n";
    at_zero(&s, "broken", broken, small(), json!({}));
    wait_pool(&s, 2, Duration::from_secs(120));
    let url = format!("{}/fn/admin/broken", s.gateway.url);
    // Left waiting for a pod that never loads the function either; not joined.
    let _first = spawn_call(&url, "{}");
    assert!(
        eventually(Duration::from_secs(30), || claims(&s, "failed") == 1.0),
        "the first call's claim failed: {} failed claims",
        claims(&s, "failed")
    );
    wait_pool(&s, 1, Duration::from_secs(120));
    let _second = spawn_call(&url, "{}");
    std::thread::sleep(Duration::from_secs(3));
    let tried: f64 = ["hit", "miss", "refused", "failed"]
        .iter()
        .map(|o| claims(&s, o))
        .sum();
    assert_eq!(tried, 1.0, "the second call claimed nothing");
}

/// Claims three pods at once; the operator replaces them one at a time, no faster than the
/// refill rate (0.5 per second: creation times, in whole seconds, at least a second apart).
#[test]
fn the_pool_refills_after_claims_at_the_capped_rate() {
    let _one = one_at_a_time();
    let (s, _secret) = pool_stack("pool-refill", 3, 0.5);
    for i in 0..3 {
        at_zero(&s, &format!("who{i}"), WHO, never_fits(), json!({}));
    }
    wait_pool(&s, 3, Duration::from_secs(120));
    let before: Vec<String> = pool_pods(&s).0.iter().map(name).collect();
    let calls: Vec<_> = (0..3)
        .map(|i| spawn_call(&format!("{}/fn/admin/who{i}", s.gateway.url), "{}"))
        .collect();
    for c in calls {
        assert_eq!(c.join().unwrap(), (200, String::new()));
    }
    assert_eq!(claims(&s, "hit"), 3.0);
    let mut fresh = Vec::new();
    assert!(
        eventually(Duration::from_secs(120), || {
            fresh = pool_pods(&s)
                .0
                .into_iter()
                .filter(|p| !before.contains(&name(p)))
                .collect();
            fresh.len() == 3
        }),
        "the pool did not refill to 3: {} new",
        fresh.len()
    );
    let mut created: Vec<jiff::Timestamp> = fresh
        .iter()
        .map(|p| {
            p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    created.sort();
    for pair in created.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= jiff::SignedDuration::from_secs(1),
            "replacements created {gap:?} apart, faster than 0.5 per second: {created:?}"
        );
    }
}
