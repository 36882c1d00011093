//! Table tests of the desired children over specs.

use k8s_openapi::api::core::v1::{ConfigMap, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use skython_crds::{EnvVar, Runtime, SkyFunction, SkyFunctionSpec};
use skython_runner_pod::wire;

use crate::desired::{
    CHECKSUM_ANNOTATION, INLINE_SPEC_BYTES, POOL_TEMPLATE_ANNOTATION, RUNNER_PODS_SELECTOR,
    RUNNER_PORT, SPEC_ANNOTATION, checksum, deployment_replicas, pool_anchor, pool_network_policy,
    pool_pod, replicas,
};
use crate::{DesiredError, OperatorConfig, PoolConfig, child_name, desired};

fn function(name: &str, spec: SkyFunctionSpec) -> SkyFunction {
    let mut f = SkyFunction::new(name, spec);
    f.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("fns".into()),
        uid: Some("uid-1".into()),
        ..Default::default()
    };
    f
}

fn add() -> SkyFunctionSpec {
    SkyFunctionSpec::new("alice", "add", "def add(a, b):\n    return a + b\n")
}

#[test]
fn runner_pods_meet_the_restricted_profile() {
    let c = desired(&function("alice-add", add()), &OperatorConfig::default(), 0).unwrap();
    let pod = c.deployment.spec.template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let psc = pod.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.run_as_user, Some(10001));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let ctr = &pod.containers[0];
    let sc = ctr.security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    let mounts: Vec<_> = ctr
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| (m.mount_path, m.read_only))
        .collect();
    assert_eq!(
        mounts,
        [
            ("/etc/skython/function".to_string(), Some(true)),
            ("/tmp".to_string(), None),
            ("/var/run/secrets/skython".to_string(), Some(true)),
        ]
    );
    assert!(ctr.readiness_probe.is_some() && ctr.liveness_probe.is_some());
    assert_eq!(ctr.ports.clone().unwrap()[0].container_port, RUNNER_PORT);
    assert_eq!(pod.runtime_class_name, None);
}

#[test]
fn resources_env_replicas_and_runtime_class_follow_the_spec() {
    let mut spec = add();
    spec.resources.cpu = "250m".into();
    spec.resources.memory = "256Mi".into();
    spec.scaling.min_replicas = 3;
    spec.env = vec![EnvVar {
        name: "MODE".into(),
        value: "fast".into(),
    }];
    let cfg = OperatorConfig {
        runtime_class: Some("gvisor".into()),
        ..Default::default()
    };
    let c = desired(&function("alice-add", spec), &cfg, 0).unwrap();
    let d = c.deployment.spec;
    assert_eq!(d.replicas, Some(3));
    let pod = d.template.spec.unwrap();
    assert_eq!(pod.runtime_class_name.as_deref(), Some("gvisor"));
    let r = pod.containers[0].resources.clone().unwrap();
    assert_eq!(r.limits.unwrap()["memory"].0, "256Mi");
    assert_eq!(r.requests.unwrap()["cpu"].0, "250m");
    let env = pod.containers[0].env.clone().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "MODE" && e.value.as_deref() == Some("fast"))
    );
    // Zero minimum replicas still runs one until scale-to-zero lands.
    let c = desired(&function("alice-add", add()), &OperatorConfig::default(), 0).unwrap();
    assert_eq!(c.deployment.spec.replicas, Some(1));
}

#[test]
fn each_runtime_runs_in_the_image_that_carries_its_libraries() {
    let cfg = OperatorConfig {
        runner_image: "registry.example/skython/runner:1.2".into(),
        runner_image_full: "registry.example/skython/runner-full:1.2".into(),
        ..Default::default()
    };
    let image = |runtime| {
        let mut spec = add();
        spec.runtime = runtime;
        let c = desired(&function("alice-add", spec), &cfg, 0).unwrap();
        c.deployment.spec.template.spec.unwrap().containers[0]
            .image
            .clone()
    };
    assert_eq!(
        image(Runtime::Standard).as_deref(),
        Some("registry.example/skython/runner:1.2")
    );
    assert_eq!(
        image(Runtime::Full).as_deref(),
        Some("registry.example/skython/runner-full:1.2")
    );
}

#[test]
fn every_child_is_owned_and_selects_only_its_pods() {
    let c = desired(&function("alice-add", add()), &OperatorConfig::default(), 0).unwrap();
    for meta in [
        &c.config_map.metadata,
        &c.deployment.metadata,
        &c.service.metadata,
        &c.network_policy.metadata,
    ] {
        assert_eq!(meta.name.as_deref(), Some("skyfn-alice-add"));
        assert_eq!(meta.namespace.as_deref(), Some("fns"));
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("SkyFunction", "uid-1", Some(true))
        );
    }
    let sel = c.service.spec.unwrap().selector.unwrap();
    assert_eq!(sel["skython.io/function"], "alice-add");
    assert_eq!(c.config_map.data.unwrap()["source.py"], add().source);
}

/// The Deployment's pod template: its annotations and its `function` volume.
fn function_files(
    spec: SkyFunctionSpec,
) -> (
    std::collections::BTreeMap<String, String>,
    k8s_openapi::api::core::v1::Volume,
) {
    let template = desired(&function("alice-add", spec), &OperatorConfig::default(), 0)
        .unwrap()
        .deployment
        .spec
        .template;
    let volume = template.spec.unwrap().volumes.unwrap().remove(0);
    assert_eq!(volume.name, "function");
    (template.metadata.unwrap().annotations.unwrap(), volume)
}

#[test]
fn a_functions_pods_read_its_spec_from_their_own_annotation_not_a_config_map() {
    let (annotations, volume) = function_files(add());
    let spec: SkyFunctionSpec = serde_json::from_str(&annotations[SPEC_ANNOTATION]).unwrap();
    assert_eq!(spec, add(), "the whole spec, source included");
    assert!(
        volume.config_map.is_none(),
        "the kubelet fetches no ConfigMap"
    );
    let files = volume.downward_api.unwrap().items.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "function.json");
    assert_eq!(
        files[0].field_ref.as_ref().unwrap().field_path,
        "metadata.annotations['skython.io/function.json']"
    );
}

#[test]
fn a_spec_too_large_for_an_annotation_is_mounted_from_the_config_map() {
    let mut spec = add();
    spec.source
        .push_str(&"# padding\n".repeat(INLINE_SPEC_BYTES / 10));
    let c = desired(
        &function("alice-add", spec.clone()),
        &OperatorConfig::default(),
        0,
    )
    .unwrap();
    assert_eq!(c.config_map.data.unwrap()["source.py"], spec.source);
    let (annotations, volume) = function_files(spec);
    assert!(!annotations.contains_key(SPEC_ANNOTATION));
    assert!(annotations.contains_key(CHECKSUM_ANNOTATION));
    assert!(volume.downward_api.is_none());
    assert_eq!(volume.config_map.unwrap().name, "skyfn-alice-add");
}

#[test]
fn network_policy_admits_the_gateway_and_denies_internal_egress() {
    let closed = desired(&function("alice-add", add()), &OperatorConfig::default(), 0).unwrap();
    let np = closed.network_policy.spec.unwrap();
    assert_eq!(np.policy_types.unwrap(), ["Ingress", "Egress"]);
    let egress = np.egress.unwrap();
    assert_eq!(
        egress.len(),
        1,
        "no network: only the gateway, not even DNS"
    );
    let to = &egress[0].to.clone().unwrap()[0];
    assert_eq!(
        to.pod_selector.clone().unwrap().match_labels.unwrap()["app.kubernetes.io/name"],
        "skython-gateway"
    );
    assert_eq!(
        to.namespace_selector,
        Some(Default::default()),
        "the gateway's pods in any namespace"
    );
    assert_eq!((to.ip_block.clone(), egress[0].ports.clone()), (None, None));

    let mut spec = add();
    spec.network = skython_crds::Network::Internet;
    let c = desired(&function("alice-add", spec), &OperatorConfig::default(), 0).unwrap();
    let np = c.network_policy.spec.unwrap();
    assert_eq!(np.policy_types.unwrap(), ["Ingress", "Egress"]);
    let from = &np.ingress.unwrap()[0].from.clone().unwrap()[0];
    assert_eq!(
        from.pod_selector.clone().unwrap().match_labels.unwrap()["app.kubernetes.io/name"],
        "skython-gateway"
    );
    let egress = np.egress.unwrap();
    assert_eq!(
        egress[0],
        closed_gateway_rule(),
        "the gateway stays reachable"
    );
    let egress = &egress[1..];
    let block = egress[1].to.clone().unwrap()[0].ip_block.clone().unwrap();
    assert_eq!(block.cidr, "0.0.0.0/0");
    let except = block.except.unwrap();
    assert!(
        except.contains(&"169.254.0.0/16".to_string())
            && except.contains(&"10.0.0.0/8".to_string())
    );
    assert_eq!(
        egress[0].ports.clone().unwrap()[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(53))
    );
}

fn closed_gateway_rule() -> k8s_openapi::api::networking::v1::NetworkPolicyEgressRule {
    let c = desired(&function("alice-add", add()), &OperatorConfig::default(), 0).unwrap();
    c.network_policy.spec.unwrap().egress.unwrap().remove(0)
}

fn pod(cfg: &OperatorConfig) -> PodSpec {
    desired(&function("alice-add", add()), cfg, 0)
        .unwrap()
        .deployment
        .spec
        .template
        .spec
        .unwrap()
}

#[test]
fn runner_pods_carry_a_token_for_the_gateway_only() {
    let pod = pod(&OperatorConfig::default());
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "no token for the Kubernetes API"
    );
    let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == "token");
    let sources = volume.unwrap().projected.unwrap().sources.unwrap();
    let token = sources[0].service_account_token.clone().unwrap();
    assert_eq!(token.audience.as_deref(), Some(wire::TOKEN_AUDIENCE));
    assert_eq!(token.expiration_seconds, Some(3600));
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "token")
        .unwrap();
    assert_eq!(
        format!("{}/{}", mount.mount_path, token.path),
        wire::TOKEN_FILE,
        "the token is where the runner reads it"
    );
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn runner_pods_learn_who_they_are_from_the_downward_api() {
    let pod = pod(&OperatorConfig::default());
    let env = pod.containers[0].env.clone().unwrap();
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.clone()?.field_ref)
            .map(|f| f.field_path)
    };
    assert_eq!(field(wire::ENV_POD_IP).as_deref(), Some("status.podIP"));
    assert_eq!(field(wire::ENV_POD_NAME).as_deref(), Some("metadata.name"));
    assert_eq!(
        field(wire::ENV_POD_NAMESPACE).as_deref(),
        Some("metadata.namespace")
    );
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        value(wire::ENV_TOKEN_FILE).as_deref(),
        Some(wire::TOKEN_FILE)
    );
    assert_eq!(value(wire::ENV_GATEWAY_URL), None, "no gateway configured");
    assert_eq!(
        pod.containers[0]
            .readiness_probe
            .clone()
            .unwrap()
            .period_seconds,
        Some(1)
    );
}

#[test]
fn runner_pods_get_the_gateway_url_when_the_operator_has_one() {
    let cfg = OperatorConfig {
        gateway_url: Some("http://10.88.0.1:8080".into()),
        ..Default::default()
    };
    let env = pod(&cfg).containers[0].env.clone().unwrap();
    assert!(
        env.iter().any(|e| e.name == wire::ENV_GATEWAY_URL
            && e.value.as_deref() == Some("http://10.88.0.1:8080")),
        "{env:?}"
    );
}

#[test]
fn the_deployment_runs_the_wanted_replicas_within_the_bounds() {
    let mut spec = add();
    spec.scaling.min_replicas = 2;
    spec.scaling.max_replicas = 5;
    for (wanted, runs) in [(None, 2), (Some(0), 2), (Some(3), 3), (Some(9), 5)] {
        spec.replicas = wanted;
        assert_eq!(replicas(&spec), runs, "{wanted:?}");
    }
    spec.scaling.min_replicas = 0;
    for (wanted, runs) in [(None, 1), (Some(0), 0), (Some(4), 4)] {
        spec.replicas = wanted;
        assert_eq!(replicas(&spec), runs, "{wanted:?}");
    }
    // A minimum above the maximum (the schema cannot forbid it) runs the maximum.
    spec.scaling.min_replicas = 7;
    spec.replicas = None;
    assert_eq!(replicas(&spec), 5);
    spec.replicas = Some(3);
    let c = desired(&function("alice-add", spec), &OperatorConfig::default(), 0).unwrap();
    assert_eq!(c.deployment.spec.replicas, Some(5));
}

#[test]
fn claimed_pool_pods_as_many_as_wanted_leave_the_deployment_at_zero() {
    let mut spec = add();
    spec.replicas = Some(2);
    assert_eq!(deployment_replicas(&spec, 2), 0);
    assert_eq!(deployment_replicas(&spec, 3), 0);
    let c = desired(&function("alice-add", spec), &OperatorConfig::default(), 2).unwrap();
    assert_eq!(c.deployment.spec.replicas, Some(0));
}

#[test]
fn wanting_more_than_the_claimed_pods_asks_the_deployment_for_all_of_it() {
    let mut spec = add();
    spec.replicas = Some(3);
    // All three, not the one missing: the Deployment's pods take over from the claimed ones.
    assert_eq!(deployment_replicas(&spec, 2), 3);
    assert_eq!(deployment_replicas(&spec, 0), 3);
    spec.replicas = Some(0);
    spec.scaling.min_replicas = 0;
    assert_eq!(deployment_replicas(&spec, 0), 0);
}

#[test]
fn scaling_never_rolls_the_pods() {
    let a = function("alice-add", add());
    let mut spec = add();
    spec.replicas = Some(7);
    let b = function("alice-add", spec);
    let cfg = OperatorConfig::default();
    let (ca, cb) = (desired(&a, &cfg, 0).unwrap(), desired(&b, &cfg, 0).unwrap());
    assert_eq!(checksum(&a), checksum(&b));
    assert_eq!(
        ca.deployment.spec.template, cb.deployment.spec.template,
        "the pod template is the same"
    );
    assert_eq!(ca.config_map, cb.config_map, "function.json is the same");
    assert!(
        !ca.config_map.data.unwrap()["function.json"].contains("replicas"),
        "the pods do not see the count"
    );
    assert_eq!(cb.deployment.spec.replicas, Some(7));
}

#[test]
fn a_source_change_rolls_the_pods_and_nothing_else_does() {
    let a = function("alice-add", add());
    let mut spec = add();
    spec.source.push_str("# v2\n");
    let b = function("alice-add", spec);
    assert_ne!(checksum(&a), checksum(&b));
    let ann = |f: &SkyFunction| {
        desired(f, &OperatorConfig::default(), 0)
            .unwrap()
            .deployment
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[CHECKSUM_ANNOTATION]
            .clone()
    };
    assert_ne!(ann(&a), ann(&b));
    assert_eq!(
        ann(&a),
        ann(&function("alice-add", add())),
        "deterministic: a restart changes nothing"
    );
}

#[test]
fn names_stay_valid_dns_labels() {
    assert_eq!(child_name("alice-add"), "skyfn-alice-add");
    let long = "a".repeat(200);
    let n = child_name(&long);
    assert!(n.len() <= 63 && skython_crds::is_dns_label(&n), "{n}");
    assert_ne!(
        child_name(&"a".repeat(201)),
        n,
        "distinct names stay distinct"
    );
    assert!(skython_crds::is_dns_label(&child_name("x.y")));
}

#[test]
fn missing_metadata_is_an_error_not_a_panic() {
    let mut f = function("alice-add", add());
    f.metadata.uid = None;
    assert_eq!(
        desired(&f, &OperatorConfig::default(), 0),
        Err(DesiredError::MissingMetadata("uid"))
    );
    f.metadata.namespace = None;
    assert_eq!(
        desired(&f, &OperatorConfig::default(), 0),
        Err(DesiredError::MissingMetadata("namespace"))
    );
}

#[test]
fn a_pod_being_removed_has_time_to_finish_a_call_of_the_whole_timeout() {
    let mut spec = add();
    spec.timeout_seconds = 600;
    let c = desired(&function("alice-add", spec), &OperatorConfig::default(), 0).unwrap();
    let grace = c
        .deployment
        .spec
        .template
        .spec
        .and_then(|p| p.termination_grace_period_seconds);
    assert_eq!(grace, Some(615), "the timeout, the drain and slack");
}

// ---- The warm pool's pods and policy.

fn pool() -> PoolConfig {
    PoolConfig {
        size: 3,
        size_full: 0,
        refill_per_second: 1.0,
        refill_yield_seconds: 5.0,
        cpu: "250m".into(),
        cpu_limit: "1".into(),
        memory: "512Mi".into(),
        name: "skython-pool".into(),
        public_key: "ab".repeat(32),
    }
}

fn anchor() -> ConfigMap {
    let mut a = pool_anchor("fns", &pool());
    a.metadata.uid = Some("anchor-uid".into());
    a
}

fn env_of(pod: &PodSpec) -> Vec<(String, String)> {
    pod.containers[0]
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| {
            let value = e
                .value
                .unwrap_or_else(|| e.value_from.unwrap().field_ref.unwrap().field_path.clone());
            (e.name, value)
        })
        .collect()
}

/// A standard pool pod with the default settings.
fn standard_pool_pod() -> k8s_openapi::api::core::v1::Pod {
    pool_pod(
        Runtime::Standard,
        &anchor(),
        &OperatorConfig::default(),
        &pool(),
    )
    .unwrap()
}

#[test]
fn a_pool_pod_has_the_function_pods_profile_without_a_function() {
    let cfg = OperatorConfig {
        runtime_class: Some("gvisor".into()),
        gateway_url: Some("http://10.96.0.20:80".into()),
        ..Default::default()
    };
    let function_pod = pod(&cfg);
    let p = pool_pod(Runtime::Standard, &anchor(), &cfg, &pool()).unwrap();
    let spec = p.spec.unwrap();
    assert_eq!(spec.security_context, function_pod.security_context);
    assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let (c, fc) = (&spec.containers[0], &function_pod.containers[0]);
    assert_eq!(c.security_context, fc.security_context);
    assert_eq!(c.readiness_probe, fc.readiness_probe);
    assert_eq!(c.liveness_probe, fc.liveness_probe);
    assert_eq!(c.args.clone().unwrap(), ["runner", "--port", "8080"]);
    let mounts: Vec<_> = c
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| m.mount_path)
        .collect();
    assert_eq!(mounts, ["/tmp", wire::TOKEN_DIR], "no function mounted");
    let r = c.resources.clone().unwrap();
    let (requests, limits) = (r.requests.unwrap(), r.limits.unwrap());
    assert_eq!(
        (&requests["memory"].0, &limits["memory"].0),
        (&"512Mi".into(), &"512Mi".into())
    );
    assert_eq!(spec.termination_grace_period_seconds, Some(915));
}

#[test]
fn a_pool_pod_requests_its_cpu_and_may_burst_to_its_limit() {
    let p = standard_pool_pod();
    let r = p.spec.unwrap().containers[0].resources.clone().unwrap();
    assert_eq!(r.requests.unwrap()["cpu"].0, "250m");
    assert_eq!(r.limits.unwrap()["cpu"].0, "1");
}

#[test]
fn a_pool_pod_knows_its_runtime_the_pool_key_and_its_own_uid() {
    let cfg = OperatorConfig {
        gateway_url: Some("http://10.96.0.20:80".into()),
        ..Default::default()
    };
    let p = pool_pod(Runtime::Full, &anchor(), &cfg, &pool()).unwrap();
    let env = env_of(p.spec.as_ref().unwrap());
    for want in [
        (wire::ENV_POOL_RUNTIME, "full"),
        (wire::ENV_POOL_PUBLIC_KEY, pool().public_key.as_str()),
        (wire::ENV_POD_UID, "metadata.uid"),
        (wire::ENV_POD_IP, "status.podIP"),
        (wire::ENV_TOKEN_FILE, wire::TOKEN_FILE),
        (wire::ENV_GATEWAY_URL, "http://10.96.0.20:80"),
    ] {
        assert!(
            env.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} not in {env:?}"
        );
    }
    assert!(!env.iter().any(|(k, _)| k == "SKYTHON_FUNCTION_DIR"));
    assert_eq!(
        p.spec.unwrap().containers[0].image.as_deref(),
        Some(cfg.runner_image_full.as_str())
    );
}

#[test]
fn a_pool_pod_is_labelled_by_runtime_named_by_the_pool_and_owned_by_the_anchor() {
    let p = standard_pool_pod();
    let m = p.metadata;
    assert_eq!(m.generate_name.as_deref(), Some("skython-pool-standard-"));
    assert_eq!(m.name, None);
    assert_eq!(m.namespace.as_deref(), Some("fns"));
    let labels = m.labels.unwrap();
    assert_eq!(labels[wire::POOL_LABEL], "standard");
    assert_eq!(labels["app.kubernetes.io/name"], "skython-runner");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "skython-operator");
    assert!(!labels.contains_key("skython.io/function"));
    let owner = &m.owner_references.unwrap()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            owner.uid.as_str(),
            owner.controller
        ),
        ("ConfigMap", "skython-pool", "anchor-uid", Some(true))
    );
}

#[test]
fn the_pool_template_hash_changes_with_the_pod_and_only_then() {
    let hash = |cfg: &OperatorConfig, pool: &PoolConfig, runtime| {
        pool_pod(runtime, &anchor(), cfg, pool)
            .unwrap()
            .metadata
            .annotations
            .unwrap()[POOL_TEMPLATE_ANNOTATION]
            .clone()
    };
    let (cfg, p) = (OperatorConfig::default(), pool());
    let base = hash(&cfg, &p, Runtime::Standard);
    assert_eq!(base, hash(&cfg, &p, Runtime::Standard));
    assert_ne!(base, hash(&cfg, &p, Runtime::Full));
    let image = OperatorConfig {
        runner_image: "skython/runner:next".into(),
        ..Default::default()
    };
    assert_ne!(base, hash(&image, &p, Runtime::Standard));
    let key = PoolConfig {
        public_key: "cd".repeat(32),
        ..pool()
    };
    assert_ne!(base, hash(&cfg, &key, Runtime::Standard));
    let bigger = PoolConfig {
        size: 10,
        refill_per_second: 5.0,
        refill_yield_seconds: 0.0,
        ..pool()
    };
    assert_eq!(
        base,
        hash(&cfg, &bigger, Runtime::Standard),
        "sizes are not in the pod"
    );
}

#[test]
fn the_pool_policy_admits_the_gateway_and_lets_unclaimed_pods_reach_nothing() {
    let np = pool_network_policy(&anchor(), &OperatorConfig::default(), &pool()).unwrap();
    assert_eq!(np.metadata.name.as_deref(), Some("skython-pool"));
    assert_eq!(np.metadata.owner_references.unwrap()[0].uid, "anchor-uid");
    let spec = np.spec.unwrap();
    let selector: Vec<_> = spec
        .pod_selector
        .unwrap()
        .match_expressions
        .unwrap()
        .into_iter()
        .map(|r| (r.key, r.operator))
        .collect();
    assert_eq!(
        selector,
        [
            (wire::POOL_LABEL.to_string(), "Exists".to_string()),
            (
                "skython.io/function".to_string(),
                "DoesNotExist".to_string()
            ),
        ]
    );
    assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
    assert!(spec.egress.unwrap_or_default().is_empty(), "no egress rule");
    let ingress = &spec.ingress.unwrap()[0];
    assert_eq!(
        ingress.from.clone().unwrap()[0]
            .pod_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap()["app.kubernetes.io/name"],
        "skython-gateway"
    );
    assert_eq!(
        ingress.ports.clone().unwrap()[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(RUNNER_PORT))
    );
}

#[test]
fn pool_objects_need_an_anchor_with_a_uid() {
    let unsaved = pool_anchor("fns", &pool());
    assert_eq!(
        pool_pod(
            Runtime::Standard,
            &unsaved,
            &OperatorConfig::default(),
            &pool()
        )
        .unwrap_err(),
        DesiredError::MissingMetadata("uid")
    );
}

#[test]
fn the_runner_pods_selector_selects_a_functions_pods_and_the_pool_pods() {
    let c = desired(&function("alice-add", add()), &OperatorConfig::default(), 0).unwrap();
    let function_pod = c.deployment.spec.template.metadata.unwrap();
    let pool = standard_pool_pod().metadata;
    for labels in [function_pod.labels.unwrap(), pool.labels.unwrap()] {
        for pair in RUNNER_PODS_SELECTOR.split(',') {
            let (key, value) = pair.split_once('=').unwrap();
            assert_eq!(
                labels.get(key).map(String::as_str),
                Some(value),
                "{labels:?}"
            );
        }
    }
}
