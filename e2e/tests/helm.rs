//! The Helm chart (helm/skython): lint, render and schema without a cluster; on the one-node
//! cluster, an install's whole journey, an upgrade under load, and uninstalls. Helm is
//! helm-python-sdk driven by scripts/helm.py (there is no helm binary here).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skython_e2e::cluster::Kubectl;
use skython_e2e::helm::{IMAGE_TAG, NEXT_IMAGE_TAG, RELEASE, Release, chart, helm};
use skython_e2e::{Skython, eventually, repo_root};

fn every_option() -> String {
    repo_root()
        .join("e2e/helm/every-option.yaml")
        .display()
        .to_string()
}

fn render(args: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut all = vec!["template", "sky", &chart, "-n", "sky"];
    all.extend(args);
    helm(&all)
}

/// The rendered manifests as JSON objects.
fn objects(manifests: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(manifests)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .filter(|v: &Value| v.is_object())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn args_of(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_chart_lints_clean_with_defaults_and_with_every_option_set() {
    let chart = chart();
    let every = every_option();
    for extra in [vec![], vec!["-f", &every]] {
        let mut args = vec!["lint", &chart, "--strict"];
        args.extend(extra.iter().copied());
        let out = helm(&args).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("0 failed"), "{out}");
    }
}

#[test]
fn the_defaults_render_an_operator_a_gateway_and_their_least_privilege() {
    let objs = objects(&render(&[]).unwrap_or_else(|e| panic!("{e}")));
    let kinds: BTreeSet<_> = objs
        .iter()
        .map(|o| {
            format!(
                "{} {}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "CustomResourceDefinition skyfunctions.skython.io",
        "Deployment sky-skython-operator",
        "Deployment sky-skython-gateway",
        "Service sky-skython-gateway",
        "Service sky-skython-operator-metrics",
        "PodDisruptionBudget sky-skython-gateway",
        "ServiceAccount sky-skython-operator",
        "ServiceAccount sky-skython-gateway",
        "Role sky-skython-operator",
        "Role sky-skython-gateway",
        "ClusterRole sky-skython-gateway-sky-tokenreview",
        "Lease sky-skython-operator",
        "Lease sky-skython-autoscaler",
        "Secret sky-skython-admin",
        "Secret sky-skython-pool-key",
        "ConfigMap sky-skython-pool",
        "Pod sky-skython-test",
    ] {
        assert!(kinds.contains(want), "{want} not in {kinds:#?}");
    }
    // The CRD and its SkyFunctions survive an uninstall unless asked.
    let crd = find(&objs, "CustomResourceDefinition", "skyfunctions.skython.io");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    // Only the TokenReview rule is cluster-wide.
    for o in objs.iter().filter(|o| o["kind"] == "ClusterRole") {
        assert_eq!(
            o["rules"],
            json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}])
        );
    }
    let gateway = find(&objs, "Deployment", "sky-skython-gateway");
    assert_eq!(gateway["spec"]["replicas"], 2);
    assert_eq!(
        gateway["spec"]["strategy"]["rollingUpdate"],
        json!({"maxUnavailable": 0, "maxSurge": 1})
    );
    let operator = find(&objs, "Deployment", "sky-skython-operator");
    let pod = &operator["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert!(
        args_of(operator)
            .contains(&"--gateway-url=http://$(SKY_SKYTHON_GATEWAY_SERVICE_HOST):80".to_string()),
        "{:?}",
        args_of(operator)
    );
}

#[test]
fn every_option_of_the_values_file_shows_in_the_manifests() {
    let every = every_option();
    let objs = objects(&render(&["-f", &every]).unwrap_or_else(|e| panic!("{e}")));
    let gateway = find(&objs, "Deployment", "sky-skython-gateway");
    let operator = find(&objs, "Deployment", "sky-skython-operator");
    let g = args_of(gateway);
    let o = args_of(operator);
    for want in [
        "--public-url=https://functions.example.com",
        "--function-namespace=sky-functions",
        "--signup=invite",
        "--pod-queue-limit=250",
        "--pod-queue-timeout-secs=12",
        "--stable-window-secs=90",
        "--panic-window-secs=9",
        "--shutdown-delay-secs=7",
        "--pool-key-file=/etc/skython/pool/secret",
        "--log=skython=debug",
    ] {
        assert!(g.contains(&want.to_string()), "{want} not in {g:?}");
    }
    for want in [
        "--namespace=sky-functions",
        "--runner-image=registry.example.com/platform/skython/skython-runner:9.9.9",
        "--runner-image-full=registry.example.com/platform/skython/skython-runner-full:9.9.9",
        "--gateway-url=http://10.96.77.77:8443",
        "--egress-deny=10.0.0.0/8,169.254.0.0/16,203.0.113.0/24",
        "--tmp-size=256Mi",
        "--runner-uid=20002",
        "--runtime-class=gvisor",
        "--pool-key-file=/etc/skython/pool/secret",
        "--pool-name=sky-skython-pool",
        "--pool-size=5",
        "--pool-size-full=1",
        "--pool-refill-per-second=2.5",
        "--pool-refill-yield-seconds=3",
        "--pool-cpu=500m",
        "--pool-cpu-limit=2",
        "--pool-memory=768Mi",
        "--log=debug",
    ] {
        assert!(o.contains(&want.to_string()), "{want} not in {o:?}");
    }
    let gpod = &gateway["spec"]["template"]["spec"];
    let gc = &gpod["containers"][0];
    assert_eq!(gateway["spec"]["replicas"], 3);
    assert_eq!(
        gc["image"],
        "registry.example.com/platform/skython/skython-gateway:9.9.9"
    );
    assert_eq!(gc["imagePullPolicy"], "Always");
    assert_eq!(gpod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(gpod["nodeSelector"], json!({"pool": "gateways"}));
    assert_eq!(gpod["tolerations"][0]["value"], "gateway");
    assert!(gpod["affinity"]["podAntiAffinity"].is_object());
    assert_eq!(gpod["terminationGracePeriodSeconds"], 22);
    assert_eq!(
        gc["securityContext"]["seccompProfile"],
        json!({"type": "Localhost", "localhostProfile": "profiles/skython-gateway.json"})
    );
    assert_eq!(gc["securityContext"]["procMount"], "Default");
    assert_eq!(gc["resources"]["limits"]["memory"], "3Gi");
    let env = gc["env"].to_string();
    for want in [
        "prod-mongodb",
        "connection",
        "prod-admin",
        "admin-token",
        "prod-metrics",
        "scrape-token",
    ] {
        assert!(env.contains(want), "{want} not in {env}");
    }
    let opod = &operator["spec"]["template"]["spec"];
    assert_eq!(operator["spec"]["replicas"], 2);
    assert_eq!(
        opod["containers"][0]["image"],
        "registry.example.com/platform/skython/skython-operator:9.9.9"
    );
    assert_eq!(opod["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(opod["containers"][0]["resources"]["requests"]["cpu"], "75m");
    assert!(opod["affinity"]["nodeAffinity"].is_object());
    let svc = find(&objs, "Service", "sky-skython-gateway");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.77.77");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8443);
    assert_eq!(
        svc["metadata"]["annotations"]["service.example.com/lb"],
        "internal"
    );
    let ingress = find(&objs, "Ingress", "sky-skython-gateway");
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert_eq!(ingress["spec"]["tls"][0]["secretName"], "functions-tls");
    assert_eq!(ingress["spec"]["rules"][0]["host"], "functions.example.com");
    assert_eq!(
        ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"],
        "letsencrypt"
    );
    let pdb = find(&objs, "PodDisruptionBudget", "sky-skython-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let monitor = find(&objs, "ServiceMonitor", "sky-skython");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["bearerTokenSecret"]["name"],
        "prod-metrics"
    );
    // The functions' Roles are in their namespace; the Leases' in the release's.
    assert_eq!(
        find(&objs, "Role", "sky-skython-operator")["metadata"]["namespace"],
        "sky-functions"
    );
    assert_eq!(
        find(&objs, "Role", "sky-skython-gateway")["metadata"]["namespace"],
        "sky-functions"
    );
    // The pool's anchor is where its pods are.
    assert_eq!(
        find(&objs, "ConfigMap", "sky-skython-pool")["metadata"]["namespace"],
        "sky-functions"
    );
    // Turned off: no CRD, no gateway PDB, no metrics Service, no generated secrets, no test.
    for (kind, name) in [
        ("CustomResourceDefinition", "skyfunctions.skython.io"),
        ("PodDisruptionBudget", "sky-skython-gateway"),
        ("Service", "sky-skython-operator-metrics"),
        ("Secret", "sky-skython-admin"),
        ("Secret", "sky-skython-metrics"),
        ("Pod", "sky-skython-test"),
    ] {
        assert!(
            !objs
                .iter()
                .any(|o| o["kind"] == kind && o["metadata"]["name"] == name),
            "{kind} {name} rendered though turned off"
        );
    }
}

/// Leaf paths of a YAML mapping (lists and empty maps are leaves).
fn leaves(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    match v.as_object() {
        Some(m) if !m.is_empty() && !path.ends_with("resources") => {
            for (k, v) in m {
                leaves(v, format!("{path}.{k}").trim_start_matches('.'), out);
            }
        }
        _ => {
            out.insert(path.to_string());
        }
    }
}

fn values_yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(path)).expect(path);
    serde_yaml::from_str(&text).expect("YAML")
}

#[test]
fn every_value_is_typed_and_described_in_the_schema() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("helm/skython/values.schema.json")).unwrap(),
    )
    .unwrap();
    let mut paths = BTreeSet::new();
    leaves(&values_yaml("helm/skython/values.yaml"), "", &mut paths);
    for path in &paths {
        let mut node = &schema;
        for part in path.split('.') {
            assert_eq!(
                node["additionalProperties"], false,
                "{path}: its map accepts unknown keys"
            );
            node = &node["properties"][part];
        }
        assert!(
            node["type"].is_string() || node["type"].is_array(),
            "{path} has no type"
        );
        assert!(
            node["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{path} has no description"
        );
    }
}

#[test]
fn every_value_is_set_by_the_every_option_file() {
    let (mut defaults, mut every) = (BTreeSet::new(), BTreeSet::new());
    leaves(&values_yaml("helm/skython/values.yaml"), "", &mut defaults);
    leaves(&values_yaml("e2e/helm/every-option.yaml"), "", &mut every);
    // An empty map by default (nodeSelector: {}) is set by any key under it.
    let missing: Vec<_> = defaults
        .iter()
        .filter(|d| {
            !every
                .iter()
                .any(|e| e == *d || e.starts_with(&format!("{d}.")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not set by e2e/helm/every-option.yaml: {missing:?}"
    );
}

#[test]
fn a_wrong_typed_value_is_refused_naming_it() {
    let err = render(&["--set-json", r#"gateway.replicas="two""#]).unwrap_err();
    assert!(
        err.contains("/gateway/replicas") && err.contains("want integer"),
        "{err}"
    );
    let err = render(&["--set", "gateway.signup=everyone"]).unwrap_err();
    assert!(err.contains("/gateway/signup"), "{err}");
}

/// `helm --set` passes a fractional number as a string: the chart takes it, and refuses one
/// that is no positive number.
#[test]
fn a_fractional_refill_rate_given_with_set_is_taken() {
    let objs = objects(
        &render(&[
            "--set",
            "pool.refillPerSecond=0.5",
            "--set",
            "pool.refillYieldSeconds=2.5",
        ])
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let o = args_of(find(&objs, "Deployment", "sky-skython-operator"));
    assert!(
        o.contains(&"--pool-refill-per-second=0.5".to_string()),
        "{o:?}"
    );
    assert!(
        o.contains(&"--pool-refill-yield-seconds=2.5".to_string()),
        "{o:?}"
    );
    for wrong in ["pool.refillPerSecond=0", "pool.refillPerSecond=fast"] {
        let err = render(&["--set", wrong]).unwrap_err();
        assert!(err.contains("/pool/refillPerSecond"), "{wrong}: {err}");
    }
}

#[test]
fn a_misspelt_value_is_refused_naming_it() {
    let err = render(&["--set", "gateway.replica=3"]).unwrap_err();
    assert!(err.contains("'replica' not allowed"), "{err}");
}

// ---- On the cluster. One release at a time: two cores, and the uninstall tests take the CRD.

static CLUSTER: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    CLUSTER.lock().unwrap_or_else(|e| e.into_inner())
}

const ADD: &str = "def add(a: int, b: int) -> int:\n    return a + b\n";

/// A SkyFunction as a cluster admin writes it. Test functions ask for a tenth of a CPU: the
/// default (one) would fill the two-core test node with two functions.
fn skyfunction(name: &str, owner: &str, endpoint: &str, source: &str) -> String {
    let source = source.replace('\n', "\n      ");
    format!(
        "apiVersion: skython.io/v1alpha1\nkind: SkyFunction\nmetadata:\n  name: {name}\nspec:\n  owner: {owner}\n  endpoint: {endpoint}\n  access: public\n  resources: {{cpu: 100m}}\n  source: |\n      {source}\n"
    )
}

/// Calls until one answers 200 (the first waits for a pod).
fn call_ok(r: &Release, gw: &Skython, name: &str, args: Value) -> Value {
    let mut last = (0, Value::Null);
    r.wait_until(
        &format!("a 200 from {name}"),
        Duration::from_secs(120),
        || {
            last = gw.call(name, args.clone());
            last.0 == 200
        },
    );
    last.1
}

#[test]
fn an_installed_release_serves_functions_keeps_state_in_mongodb_and_passes_helm_test() {
    let _one = one_at_a_time();
    let r = Release::install("helm", &[]);
    let k = &r.k;

    // Ready: both Deployments rolled out (helm's wait) and every pod Ready.
    for d in ["sky-skython-operator", "sky-skython-gateway"] {
        k.run(&[
            "rollout",
            "status",
            &format!("deployment/{d}"),
            "--timeout=60s",
        ]);
    }
    // Through the Service as soon as kube-proxy has the Ready pods (a moment after they are).
    let gw = r.gateway();
    r.wait_until(
        "the gateway's Service to answer /readyz",
        Duration::from_secs(30),
        || {
            gw.try_get("/readyz")
                .is_some_and(|(status, _)| status == 200)
        },
    );

    // A SkyFunction applied with kubectl, called through the gateway's Service.
    k.apply(&skyfunction("adder", "ops", "add", ADD));
    assert_eq!(
        call_ok(&r, &gw, "ops/add", json!({"a": 2, "b": 3})),
        json!(5)
    );

    // One deployed through the gateway's API: it becomes a SkyFunction, and answers.
    let (status, body) = gw.deploy(json!({"endpoint": "visits", "resources": {"cpu": "100m"}, "source":
        "from skython import store, load\n\ndef main(page: str):\n    n = (load(page) or 0) + 1\n    store(page, n)\n    return n\n"}));
    assert_eq!(status, 201, "{body}");
    assert!(
        k.get("skyfunction admin.visits").is_some(),
        "no SkyFunction admin.visits"
    );
    assert_eq!(
        call_ok(&r, &gw, "admin/visits", json!({"page": "home"})),
        json!(1)
    );
    assert_eq!(
        gw.call("admin/visits", json!({"page": "home"})),
        (200, json!(2))
    );

    // store/load went to MongoDB: the gateways keep nothing (emptyDir), so after both are
    // replaced the count goes on; and the value is in SecantusDB's collection.
    k.run(&[
        "delete",
        "pods",
        "-l",
        "app.kubernetes.io/component=gateway",
        "--wait=true",
    ]);
    k.run(&[
        "rollout",
        "status",
        "deployment/sky-skython-gateway",
        "--timeout=120s",
    ]);
    assert_eq!(
        call_ok(&r, &gw, "admin/visits", json!({"page": "home"})),
        json!(3)
    );
    let found = mongo_find(&r.mongodb_uri, "state", r#"{"owner": "admin"}"#);
    assert!(
        found.contains("home") && found.contains('3'),
        "state in MongoDB: {found}"
    );

    // helm test: a pod deploys a function through the API and calls it.
    let out = r
        .helm(&["test", RELEASE, "--logs"])
        .unwrap_or_else(|e| panic!("{e}\n{}", r.story()));
    assert!(
        out.contains("called admin/helm-test through the gateway: \"hello helm\""),
        "{out}"
    );
    assert!(
        k.get("skyfunction admin.helm-test").is_none(),
        "helm test left its function"
    );

    service_accounts_may_do_what_the_chart_grants_and_nothing_dangerous(k);
}

/// Documents of a collection as mongosh would print them (pymongo from the SecantusDB venv).
fn mongo_find(uri: &str, collection: &str, filter: &str) -> String {
    let secantusd = skython_e2e::cached(
        "SKYTHON_SECANTUSD",
        "venv-mongo/bin/secantusd-py",
        "run `make venv-mongo` (`make test` does)",
    );
    let python = secantusd.with_file_name("python");
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import json, sys, pymongo\nc = pymongo.MongoClient(sys.argv[1])\ndb = c.get_default_database()\nprint([{k: str(v) for k, v in d.items()} for d in db[sys.argv[2]].find(json.loads(sys.argv[3]))])",
            uri,
            collection,
            filter,
        ])
        .output()
        .expect("running pymongo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl auth can-i` as a service account of the release; `what` is `resource[.group]`,
/// with `/name` for one object or `#subresource`.
fn can_i(k: &Kubectl, sa: &str, verb: &str, what: &str, namespace: &str) -> bool {
    let who = format!("system:serviceaccount:{}:{sa}", k.namespace);
    let (what, subresource) = match what.split_once('#') {
        Some((w, sub)) => (w, vec![format!("--subresource={sub}")]),
        None => (what, vec![]),
    };
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(k.kubeconfig())
        .args(["auth", "can-i", verb, what, "--as", &who, "-n", namespace])
        .args(subresource)
        .output()
        .expect("kubectl auth can-i");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// A resource and the verbs granted on it.
type Grant<'a> = (&'a str, &'a [&'a str]);

/// `kubectl auth can-i` for each service account: yes for exactly the verbs its Roles grant on
/// the resources it uses, no for every other verb there, and no for the dangerous ones.
fn service_accounts_may_do_what_the_chart_grants_and_nothing_dangerous(k: &Kubectl) {
    const VERBS: [&str; 8] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];
    let ns = k.namespace.clone();
    let grants: [(&str, &[Grant]); 2] = [
        (
            "sky-skython-operator",
            &[
                ("skyfunctions.skython.io", &["get", "list", "watch"]),
                ("skyfunctions.skython.io#status", &["patch"]),
                ("configmaps", &["list", "watch", "create", "patch"]),
                ("configmaps/sky-skython-pool", &["get", "patch"]),
                ("services", &["list", "watch", "create", "patch"]),
                (
                    "networkpolicies.networking.k8s.io",
                    &["list", "watch", "create", "patch"],
                ),
                (
                    "deployments.apps",
                    &["list", "watch", "create", "patch", "delete"],
                ),
                ("events.events.k8s.io", &["create", "patch"]),
                (
                    "leases.coordination.k8s.io/sky-skython-operator",
                    &["get", "update"],
                ),
                ("leases.coordination.k8s.io/sky-skython-autoscaler", &[]),
                ("skyfunctions.skython.io#scale", &[]),
                // The warm pool's pods, in this namespace only (see below).
                ("pods", &["list", "watch", "create", "delete"]),
                ("secrets", &[]),
            ],
        ),
        (
            "sky-skython-gateway",
            &[
                (
                    "skyfunctions.skython.io",
                    &["get", "list", "watch", "create", "update", "delete"],
                ),
                ("skyfunctions.skython.io#scale", &["patch"]),
                ("skyfunctions.skython.io#status", &[]),
                ("pods", &["get", "list", "watch", "patch"]),
                (
                    "leases.coordination.k8s.io/sky-skython-autoscaler",
                    &["get", "update"],
                ),
                ("leases.coordination.k8s.io/sky-skython-operator", &[]),
                ("deployments.apps", &[]),
                ("configmaps", &[]),
                ("secrets", &[]),
            ],
        ),
    ];
    let mut wrong = Vec::new();
    for (sa, rules) in grants {
        for (what, allowed) in rules {
            for verb in VERBS {
                // Rules on one named object or a subresource: verbs on collections do not apply.
                if (what.contains('/') || what.contains('#'))
                    && matches!(verb, "list" | "watch" | "create" | "deletecollection")
                {
                    continue;
                }
                let want = allowed.contains(&verb);
                if can_i(k, sa, verb, what, &ns) != want {
                    wrong.push(format!(
                        "{sa} {verb} {what}: expected {}",
                        if want { "yes" } else { "no" }
                    ));
                }
            }
        }
        for (verb, what, namespace) in [
            ("get", "secrets", "kube-system"),
            ("list", "secrets", "default"),
            ("get", "secrets", ns.as_str()),
            ("create", "pods#exec", ns.as_str()),
            // The gateway may create no pods (its grants above); the operator pool pods in the
            // functions' namespace only.
            ("create", "pods", "default"),
            ("escalate", "roles.rbac.authorization.k8s.io", ns.as_str()),
            (
                "bind",
                "clusterroles.rbac.authorization.k8s.io",
                ns.as_str(),
            ),
            (
                "create",
                "rolebindings.rbac.authorization.k8s.io",
                ns.as_str(),
            ),
            ("list", "skyfunctions.skython.io", "default"),
            ("create", "leases.coordination.k8s.io", ns.as_str()),
            ("*", "*", ns.as_str()),
        ] {
            if can_i(k, sa, verb, what, namespace) {
                wrong.push(format!("{sa} may {verb} {what} in {namespace}"));
            }
        }
    }
    assert!(
        can_i(
            k,
            "sky-skython-gateway",
            "create",
            "tokenreviews.authentication.k8s.io",
            &ns
        ),
        "the gateway may not review runner pods' tokens"
    );
    assert!(
        !can_i(
            k,
            "sky-skython-operator",
            "create",
            "tokenreviews.authentication.k8s.io",
            &ns
        ),
        "the operator may review tokens"
    );
    assert!(
        wrong.is_empty(),
        "RBAC differs from the chart's grants:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn an_upgrade_to_a_new_image_tag_drops_no_calls() {
    let _one = one_at_a_time();
    let r = Release::install("helm-upgrade", &[]);
    let gw = r.gateway();
    let (status, body) =
        gw.deploy(json!({"endpoint": "add", "resources": {"cpu": "100m"}, "source": ADD}));
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        call_ok(&r, &gw, "admin/add", json!({"a": 1, "b": 2})),
        json!(3)
    );

    // Two clients on keep-alive connections, calling without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (stop, calls, failures) = (stop.clone(), calls.clone(), failures.clone());
            let url = format!("{}/fn/admin/add", gw.url);
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let answer = http.post(&url).json(&json!({"a": c, "b": i})).send();
                    let outcome = match answer {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let body = resp.text().unwrap_or_default();
                            (status == 200 && body.trim() == (c + i).to_string())
                                .then_some(())
                                .ok_or(format!("{status} {body}"))
                        }
                        Err(e) => Err(format!("{e:?}")),
                    };
                    calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = outcome {
                        failures.lock().unwrap().push(e);
                    }
                }
            })
        })
        .collect();

    let started = Instant::now();
    let chart = chart();
    let next = format!("image.tag={NEXT_IMAGE_TAG}");
    let upgraded = r.helm(&[
        "upgrade",
        RELEASE,
        &chart,
        "--reuse-values",
        "--set",
        &next,
        "--wait",
    ]);
    // The operator's new runner image rolls the function's pods too; wait until only pods of
    // the new tag serve, then call a little longer.
    let next_image = format!("docker.io/skython/runner:{NEXT_IMAGE_TAG}");
    let rolled = eventually(Duration::from_secs(180), || {
        let pods = r.k.get("pods -l skython.io/function").unwrap_or_default();
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        !items.is_empty()
            && items.iter().all(|p| {
                p["spec"]["containers"][0]["image"] == next_image.as_str()
                    && p["metadata"]["deletionTimestamp"].is_null()
            })
    });
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    upgraded.unwrap_or_else(|e| panic!("{e}\n{}", r.story()));
    assert!(
        rolled,
        "the function's pods never all ran {next_image}\n{}",
        r.story()
    );
    // Every pod runs the new image: the release's and the functions' at once, the warm pool's
    // as the operator replaces them (at its refill rate).
    let mut images = BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(120), || {
            images = r.k.get("pods").unwrap()["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .map(|p| {
                    p["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .filter(|i| !i.contains("secantus"))
                .collect();
            images
                .iter()
                .all(|i| i.ends_with(&format!(":{NEXT_IMAGE_TAG}")))
                && !images.iter().any(|i| i.ends_with(&format!(":{IMAGE_TAG}")))
        }),
        "not every pod runs the new image after 120 s: {images:?}\n{}",
        r.story()
    );
    let calls = calls.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap();
    println!(
        "upgrade to :{NEXT_IMAGE_TAG} under load: {calls} calls in {:.0} s, {} failed",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(calls > 100, "only {calls} calls during the upgrade");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}

/// What is in the release's namespace besides Events (the cluster's record; they expire), as
/// `Kind name`.
fn left_in(k: &Kubectl) -> BTreeSet<String> {
    let all = k
        .get("pods,services,deployments,replicasets,configmaps,secrets,serviceaccounts,roles,rolebindings,leases,networkpolicies,poddisruptionbudgets,ingresses")
        .unwrap_or_default();
    all["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|o| {
            format!(
                "{} {}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// What the test itself put there (SecantusDB and the secrets) and what Kubernetes adds to
/// every namespace.
fn not_skythons(thing: &str) -> bool {
    [
        "Pod mongodb",
        "Service mongodb",
        "Secret skython-mongodb",
        "Secret e2e-admin",
        "ConfigMap kube-root-ca.crt",
        "ServiceAccount default",
    ]
    .contains(&thing)
        || thing.starts_with("Secret default-token-")
}

/// A function from kubectl and one from the API, both called (so both have pods).
fn two_functions_with_pods(r: &Release) {
    r.k.apply(&skyfunction("adder", "ops", "add", ADD));
    let gw = r.gateway();
    let (status, body) =
        gw.deploy(json!({"endpoint": "add", "resources": {"cpu": "100m"}, "source": ADD}));
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        call_ok(r, &gw, "ops/add", json!({"a": 1, "b": 1})),
        json!(2)
    );
    assert_eq!(
        call_ok(r, &gw, "admin/add", json!({"a": 2, "b": 2})),
        json!(4)
    );
}

#[test]
fn an_uninstall_asked_to_remove_the_crd_leaves_nothing_of_skython() {
    let _one = one_at_a_time();
    let r = Release::install_owning_the_crd("helm-purge", &["crds.keep=false"]);
    two_functions_with_pods(&r);
    let clusterrole = format!(
        "clusterrole/sky-skython-gateway-{}-tokenreview",
        r.k.namespace
    );
    assert!(r.k.get(&clusterrole).is_some());
    r.helm(&["uninstall", RELEASE, "--wait"])
        .unwrap_or_else(|e| panic!("{e}\n{}", r.story()));
    // The CRD goes, its SkyFunctions with it, and the garbage collector takes their children.
    let mut left = BTreeSet::new();
    r.wait_until("nothing of Skython left", Duration::from_secs(180), || {
        left = left_in(&r.k)
            .into_iter()
            .filter(|t| !not_skythons(t))
            .collect();
        left.is_empty() && r.k.get("crd/skyfunctions.skython.io").is_none()
    });
    assert!(left.is_empty(), "left in the namespace: {left:?}");
    for what in [
        clusterrole,
        format!(
            "clusterrolebinding/sky-skython-gateway-{}-tokenreview",
            r.k.namespace
        ),
    ] {
        assert!(r.k.get(&what).is_none(), "{what} outlived the release");
    }
}

#[test]
fn an_uninstall_keeps_the_crd_and_the_skyfunctions_by_default() {
    let _one = one_at_a_time();
    let r = Release::install_owning_the_crd("helm-keep", &[]);
    two_functions_with_pods(&r);
    r.helm(&["uninstall", RELEASE, "--wait"])
        .unwrap_or_else(|e| panic!("{e}\n{}", r.story()));
    assert!(
        r.k.get("crd/skyfunctions.skython.io").is_some(),
        "the CRD was removed"
    );
    for f in ["adder", "admin.add"] {
        assert!(
            r.k.get(&format!("skyfunction {f}")).is_some(),
            "SkyFunction {f} was removed"
        );
    }
    // Of the chart's own objects, none is left. Pods take their grace period and then the
    // kubelet's volume cleanup, which a busy node stretches well past a minute.
    let mut chart_left = BTreeSet::new();
    r.wait_until("the chart's objects gone", Duration::from_secs(180), || {
        chart_left = left_in(&r.k)
            .into_iter()
            .filter(|t| t.contains("sky-skython"))
            .collect();
        chart_left.is_empty()
    });
    assert!(
        r.k.get(&format!(
            "clusterrole/sky-skython-gateway-{}-tokenreview",
            r.k.namespace
        ))
        .is_none()
    );
}

/// The install's NOTES, as a cluster admin reads them, run as written (the local port made
/// free for the test): the gateway reached, the admin's token taken, a function deployed and
/// called.
#[test]
fn the_three_commands_of_the_notes_call_a_function() {
    let _one = one_at_a_time();
    let r = Release::install("helm-notes", &[]);
    let notes = r
        .helm(&["status", RELEASE])
        .unwrap_or_else(|e| panic!("{e}"));
    let commands: Vec<&str> = notes
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("kubectl"))
        .take_while(|l| !l.starts_with("Open "))
        .filter(|l| !l.is_empty() && !l.ends_with(':'))
        .collect();
    assert!(
        commands.len() >= 5,
        "commands in the notes: {commands:?}\n{notes}"
    );
    let port = skython_e2e::free_port().to_string();
    let script = commands
        .join("\n")
        .replace(" \\\n", " ")
        .replace("8080", &port);
    let run = format!(
        "set -eu\nexport KUBECONFIG={}\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n{}\n",
        r.k.kubeconfig().display(),
        script.replacen(
            "&\n",
            &format!("&\nfor _ in $(seq 50); do curl -s -o /dev/null 127.0.0.1:{port} && break; sleep 0.2; done\n"),
            1
        )
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &run])
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with('5'),
        "the notes' commands:\n{run}\nsaid: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_install_with_a_wrong_typed_value_is_refused_before_anything_is_made() {
    let namespace = format!("skython-e2e-helm-refused-{}", std::process::id());
    let kubeconfig = skython_e2e::cluster::kubeconfig().display().to_string();
    let chart = chart();
    let err = helm(&[
        "install",
        "sky",
        &chart,
        "-n",
        &namespace,
        "--create-namespace",
        "--kubeconfig",
        &kubeconfig,
        "--set-json",
        r#"gateway.queue={"limit": "lots"}"#,
    ])
    .unwrap_err();
    assert!(
        err.contains("/gateway/queue/limit") && err.contains("want integer"),
        "{err}"
    );
    let k = Kubectl::new("default");
    assert!(
        k.get(&format!("namespace/{namespace}")).is_none(),
        "the refused install made its namespace"
    );
}
