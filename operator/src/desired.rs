//! The desired children of a `SkyFunction`, as plain values: a ConfigMap with the source, a
//! Deployment of locked-down runner pods, a Service and a NetworkPolicy. Pure functions, so that
//! unit tests call them directly; the reconcile loop only applies what they return.
//!
//! ```text
//! SkyFunction ─owns─▶ ConfigMap (source.py, function.json)
//!             ├─owns─▶ Deployment ─▶ runner pods (function.json from their own annotation, or
//!             │                       from the ConfigMap when too large; checksum rolls them)
//!             ├─owns─▶ Service (port 80 → the pods' "http" port)
//!             └─owns─▶ NetworkPolicy (ingress from the gateway only; egress to the gateway,
//!                                     and DNS + internet for `network: internet`)
//! ```
//!
//! The warm pool's objects are here too: its pods (a runner pod without a function, built by
//! the same `runner_pod` as the Deployment's, so both keep one restricted profile), their
//! NetworkPolicy, and the anchor ConfigMap that owns both:
//!
//! ```text
//! ConfigMap <pool-name> (the anchor) ─owns─▶ pool pods <pool-name>-<runtime>-xxxxx
//!                                    └owns─▶ NetworkPolicy <pool-name> (unclaimed pods: ingress
//!                                            from the gateway only, no egress)
//! ```
//!
//! The function's replica count is `spec.replicas` (the `scale` subresource, written by the
//! gateway's autoscaler) within the function's bounds. It is the one field of the spec the pods do
//! not see: scaling never changes the pod template, so it never rolls the pods. Pool pods claimed
//! for the function count toward it ([`deployment_replicas`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext, Service,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use skython_crds::{Network, Runtime, SkyFunction, SkyFunctionSpec};
use skython_runner_pod::server::{SOURCE_FILE, SPEC_FILE};
use skython_runner_pod::wire;

/// The runner container's HTTP port (`POST /` calls the function).
pub const RUNNER_PORT: i32 = 8080;
/// Where a function's files are mounted in its runner pods.
pub const FUNCTION_DIR: &str = "/etc/skython/function";
/// The pod template's annotation that holds `function.json` (the spec, source included) when
/// it is at most [`INLINE_SPEC_BYTES`]; the pods read it as a file through the downward API.
pub const SPEC_ANNOTATION: &str = "skython.io/function.json";
/// The largest `function.json` a pod reads from its own annotation (annotations may hold
/// 256 KiB in all); a larger one is mounted from the function's ConfigMap.
///
/// Why not always the ConfigMap: the kubelet reads a pod's annotations from the pod, but fetches
/// a ConfigMap, and a new pod's first fetch may be refused for a moment (the API server's node
/// authorizer has not linked the pod to the ConfigMap yet); the kubelet then retries 1.4 to
/// 1.7 s later, which one cold start in a few paid on the test node.
pub const INLINE_SPEC_BYTES: usize = 128 * 1024;
pub const CHECKSUM_ANNOTATION: &str = "skython.io/function-checksum";
pub const FUNCTION_LABEL: &str = "skython.io/function";
/// The name of the projected token's file in [`wire::TOKEN_DIR`].
const TOKEN_PATH: &str = "token";
/// The hash of the pool pod's template, so that pods made from an older one (another image,
/// key or size) are replaced.
pub const POOL_TEMPLATE_ANNOTATION: &str = "skython.io/pool-template";
/// The longest `timeoutSeconds` a SkyFunction may have (its CRD's bound): a claimed pool pod
/// may serve any function, so it is given as long to finish its calls.
pub const MAX_TIMEOUT_SECONDS: i64 = 900;
/// Lifetime of the pod's projected token; the kubelet renews it at 80%.
const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// Selects every object the operator manages (children carry this label).
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=skython-operator";
/// Selects the runner pods the operator made: the functions' and the warm pool's.
pub const RUNNER_PODS_SELECTOR: &str =
    "app.kubernetes.io/name=skython-runner,app.kubernetes.io/managed-by=skython-operator";
/// Selects the pool pods gateways claimed for a function.
pub const CLAIMED_PODS_SELECTOR: &str = "app.kubernetes.io/name=skython-runner,\
    app.kubernetes.io/managed-by=skython-operator,skython.io/pool,skython.io/function";

/// What the operator is told by its own configuration, not by the function.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorConfig {
    /// The image of `runtime: standard` functions' pods.
    pub runner_image: String,
    /// The image of `runtime: full` functions' pods (tensorflow and keras besides).
    pub runner_image_full: String,
    /// e.g. `gvisor`, for a stronger sandbox where the cluster has one.
    pub runtime_class: Option<String>,
    /// The uid and gid runner pods run as.
    pub runner_uid: i64,
    /// Labels of the gateway pods, the only ones allowed to call runner pods.
    pub gateway_labels: BTreeMap<String, String>,
    /// Destinations runner pods may never reach: the cluster's pod and service ranges, private
    /// ranges, link-local (cloud metadata at 169.254.169.254).
    pub egress_deny: Vec<String>,
    /// Size of the writable `/tmp`.
    pub tmp_size: String,
    /// The gateway's URL as runner pods reach it (they announce themselves and keep state
    /// there); also the base of a function's `status.url`. `None`: pods get no gateway.
    pub gateway_url: Option<String>,
}

impl OperatorConfig {
    /// The runner image carrying a runtime's libraries.
    pub fn image(&self, runtime: Runtime) -> &str {
        match runtime {
            Runtime::Standard => &self.runner_image,
            Runtime::Full => &self.runner_image_full,
        }
    }
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            runner_image: "skython/runner:dev".into(),
            runner_image_full: "skython/runner-full:dev".into(),
            runtime_class: None,
            runner_uid: 10001,
            gateway_labels: [(
                "app.kubernetes.io/name".to_string(),
                "skython-gateway".to_string(),
            )]
            .into(),
            egress_deny: [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "169.254.0.0/16",
            ]
            .map(String::from)
            .to_vec(),
            tmp_size: "64Mi".into(),
            gateway_url: None,
        }
    }
}

/// The warm pool: runner pods started before anyone knows their function, which a gateway
/// claims for a function with no pod (see [`crate::pool`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Unclaimed pods kept ready, per runtime.
    pub size: u32,
    pub size_full: u32,
    /// At most this many pool pods created per second per runtime.
    pub refill_per_second: f64,
    /// How long a short pool waits for functions' pods that are starting before it refills.
    pub refill_yield_seconds: f64,
    /// Each pool pod's CPU request, and the limit it may use: more than it idles at, so that
    /// its start and a claim's specialisation (the call's wait) run at speed.
    pub cpu: String,
    pub cpu_limit: String,
    /// Each pool pod's memory (request and limit alike).
    pub memory: String,
    /// The anchor ConfigMap's and the pool NetworkPolicy's name, and the prefix of the pods'.
    pub name: String,
    /// The hex Ed25519 key pool pods check specialise requests with
    /// ([`wire::PoolKey::public_hex`]).
    pub public_key: String,
}

impl PoolConfig {
    pub fn size(&self, runtime: Runtime) -> u32 {
        match runtime {
            Runtime::Standard => self.size,
            Runtime::Full => self.size_full,
        }
    }
}

/// Everything the operator keeps in the cluster for one function.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub network_policy: NetworkPolicy,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DesiredError {
    #[error("the SkyFunction has no {0}")]
    MissingMetadata(&'static str),
}

/// Kubernetes names of the children: `skyfn-<name>`, shortened with a hash suffix so that it
/// stays a valid 63-character DNS label (Services need one) for any resource name.
pub fn child_name(function_name: &str) -> String {
    let full = format!("skyfn-{function_name}").replace('.', "-");
    if full.len() <= 63 {
        return full;
    }
    let hash = hex::encode(&Sha256::digest(function_name.as_bytes())[..4]);
    format!("{}-{hash}", full[..54].trim_end_matches('-'))
}

fn labels(f: &SkyFunction) -> BTreeMap<String, String> {
    let name = f.metadata.name.clone().unwrap_or_default();
    [
        ("app.kubernetes.io/name", "skython-runner".to_string()),
        (
            "app.kubernetes.io/managed-by",
            "skython-operator".to_string(),
        ),
        (FUNCTION_LABEL, name),
        ("skython.io/owner", f.spec.owner.clone()),
        ("skython.io/endpoint", f.spec.endpoint.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn selector(f: &SkyFunction) -> BTreeMap<String, String> {
    [(
        FUNCTION_LABEL.to_string(),
        f.metadata.name.clone().unwrap_or_default(),
    )]
    .into()
}

/// The label selector of a function's pods as a string (`status.selector`).
pub fn selector_string(function_name: &str) -> String {
    format!("{FUNCTION_LABEL}={function_name}")
}

/// The Deployment's replicas: `spec.replicas` within `[minReplicas, maxReplicas]`; unset,
/// `max(minReplicas, 1)` (a new function starts one replica).
pub fn replicas(spec: &SkyFunctionSpec) -> i32 {
    let s = &spec.scaling;
    let wanted = spec.replicas.unwrap_or(s.min_replicas.max(1));
    // max before min: a spec with min > max (the schema cannot forbid it) gets max.
    let n = wanted.max(s.min_replicas).min(s.max_replicas);
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The Deployment's replicas when `claimed` pool pods serve the function: none while they are
/// as many as it wants (a pool hit or a short burst starts no pod of its own, and the pods idle
/// out together); all it wants once it wants more, so that its own pods take over and the
/// claimed ones retire when those are ready (nothing serves less meanwhile).
pub fn deployment_replicas(spec: &SkyFunctionSpec, claimed: usize) -> i32 {
    let wanted = replicas(spec);
    if usize::try_from(wanted).is_ok_and(|n| n <= claimed) {
        0
    } else {
        wanted
    }
}

/// The spec as the pods see it (`function.json`, the checksum): without `replicas`, which only
/// the Deployment needs.
fn pod_spec(f: &SkyFunction) -> SkyFunctionSpec {
    SkyFunctionSpec {
        replicas: None,
        ..f.spec.clone()
    }
}

/// Changes whenever anything the pods see changes, so the Deployment rolls; scaling does not.
pub fn checksum(f: &SkyFunction) -> String {
    let spec = serde_json::to_vec(&pod_spec(f)).unwrap_or_default();
    hex::encode(Sha256::digest(&spec))
}

/// An environment variable from the downward API (`status.podIP`, `metadata.name`, …).
fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// How long a runner pod may take to stop: its drain delay, a call's timeout, and slack.
pub fn termination_grace_seconds(spec: &skython_crds::SkyFunctionSpec) -> i64 {
    i64::from(spec.timeout_seconds) + 15
}

/// The children of `f`, whose `claimed` pool pods serve (see [`deployment_replicas`]).
pub fn desired(
    f: &SkyFunction,
    cfg: &OperatorConfig,
    claimed: usize,
) -> Result<Children, DesiredError> {
    let name = f
        .metadata
        .name
        .as_deref()
        .ok_or(DesiredError::MissingMetadata("name"))?;
    let namespace = f
        .metadata
        .namespace
        .clone()
        .ok_or(DesiredError::MissingMetadata("namespace"))?;
    let owner = f
        .controller_owner_ref(&())
        .ok_or(DesiredError::MissingMetadata("uid"))?;
    let child = child_name(name);
    let meta = ObjectMeta {
        name: Some(child.clone()),
        namespace: Some(namespace),
        labels: Some(labels(f)),
        owner_references: Some(vec![owner]),
        ..Default::default()
    };
    let spec = &f.spec;
    let function_json = serde_json::to_string_pretty(&pod_spec(f)).unwrap_or_default();
    let mut pod_annotations = BTreeMap::from([(CHECKSUM_ANNOTATION.to_string(), checksum(f))]);
    let files = if function_json.len() <= INLINE_SPEC_BYTES {
        pod_annotations.insert(SPEC_ANNOTATION.to_string(), function_json.clone());
        FunctionFiles::Annotation
    } else {
        FunctionFiles::ConfigMap(child.clone())
    };
    let config_map = ConfigMap {
        metadata: meta.clone(),
        data: Some(
            [
                (SOURCE_FILE.to_string(), spec.source.clone()),
                (SPEC_FILE.to_string(), function_json),
            ]
            .into(),
        ),
        ..Default::default()
    };

    let mut env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|e| EnvVar {
            name: e.name.clone(),
            value: Some(e.value.clone()),
            ..Default::default()
        })
        .collect();
    env.push(env_value("SKYTHON_FUNCTION_DIR", FUNCTION_DIR));
    let pod = runner_pod(
        RunnerPod {
            image: cfg.image(spec.runtime),
            args: vec![
                "runner".into(),
                "--function-dir".into(),
                FUNCTION_DIR.into(),
                "--port".into(),
                RUNNER_PORT.to_string(),
            ],
            env,
            cpu: &spec.resources.cpu,
            cpu_limit: None,
            memory: &spec.resources.memory,
            termination_grace_seconds: termination_grace_seconds(spec),
            function_files: Some(files),
        },
        cfg,
    );
    let deployment = Deployment {
        metadata: meta.clone(),
        spec: DeploymentSpec {
            replicas: Some(deployment_replicas(spec, claimed)),
            selector: LabelSelector {
                match_labels: Some(selector(f)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(f)),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        },
        ..Default::default()
    };
    let service = Service {
        metadata: meta.clone(),
        spec: Some(ServiceSpec {
            selector: Some(selector(f)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let network_policy = NetworkPolicy {
        metadata: meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(f)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            egress: Some(egress_rules(spec.network, cfg)),
            ingress: Some(vec![gateway_ingress(cfg)]),
        }),
    };
    Ok(Children {
        config_map,
        deployment,
        service,
        network_policy,
    })
}

/// Where a function's pods and pool pods differ; [`runner_pod`] wraps it in the restricted
/// profile they share.
struct RunnerPod<'a> {
    image: &'a str,
    args: Vec<String>,
    /// Before the environment every runner pod gets (its own identity, its token, the gateway).
    env: Vec<EnvVar>,
    /// Requests and limits alike, but for a CPU limit above the request where set.
    cpu: &'a str,
    cpu_limit: Option<&'a str>,
    memory: &'a str,
    termination_grace_seconds: i64,
    /// Where the pod reads its function's files from; a pool pod has none (it is sent its
    /// function when claimed).
    function_files: Option<FunctionFiles>,
}

/// Where a function's pods read its files (mounted at [`FUNCTION_DIR`]) from.
enum FunctionFiles {
    /// `function.json` from the pod's own [`SPEC_ANNOTATION`], through the downward API.
    Annotation,
    /// `source.py` and `function.json` from this ConfigMap (a spec over [`INLINE_SPEC_BYTES`]).
    ConfigMap(String),
}

impl FunctionFiles {
    fn volume(self) -> Volume {
        let mut volume = Volume {
            name: "function".into(),
            ..Default::default()
        };
        match self {
            FunctionFiles::Annotation => {
                volume.downward_api = Some(DownwardAPIVolumeSource {
                    items: Some(vec![DownwardAPIVolumeFile {
                        path: SPEC_FILE.into(),
                        // As the API server defaults it: the list is atomic, so an item that
                        // differs from the stored one makes every apply a write.
                        field_ref: Some(ObjectFieldSelector {
                            api_version: Some("v1".into()),
                            field_path: format!("metadata.annotations['{SPEC_ANNOTATION}']"),
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                });
            }
            FunctionFiles::ConfigMap(name) => {
                volume.config_map = Some(ConfigMapVolumeSource {
                    name,
                    ..Default::default()
                });
            }
        }
        volume
    }
}

/// A runner pod: no API token, non-root, RuntimeDefault seccomp, read-only root, no
/// capabilities, a small writable /tmp, and the projected token it proves itself to the
/// gateway with.
fn runner_pod(p: RunnerPod, cfg: &OperatorConfig) -> PodSpec {
    let mut env = p.env;
    env.extend([
        env_from_field(wire::ENV_POD_IP, "status.podIP"),
        env_from_field(wire::ENV_POD_NAME, "metadata.name"),
        env_from_field(wire::ENV_POD_NAMESPACE, "metadata.namespace"),
        env_value(wire::ENV_TOKEN_FILE, wire::TOKEN_FILE),
    ]);
    if let Some(url) = &cfg.gateway_url {
        env.push(env_value(wire::ENV_GATEWAY_URL, url));
    }
    let resources: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(p.cpu.to_string())),
        ("memory".to_string(), Quantity(p.memory.to_string())),
    ]
    .into();
    let mut limits = resources.clone();
    if let Some(cpu) = p.cpu_limit {
        limits.insert("cpu".to_string(), Quantity(cpu.to_string()));
    }
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    };
    let mut volume_mounts = Vec::new();
    let mut volumes = Vec::new();
    if let Some(files) = p.function_files {
        volume_mounts.push(VolumeMount {
            name: "function".into(),
            mount_path: FUNCTION_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(files.volume());
    }
    volume_mounts.extend([
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "token".into(),
            mount_path: wire::TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ]);
    volumes.extend([
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(cfg.tmp_size.clone())),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(wire::TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        path: TOKEN_PATH.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]);
    let container = Container {
        name: "runner".into(),
        image: Some(p.image.to_string()),
        args: Some(p.args),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: RUNNER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(resources),
            limits: Some(limits),
            ..Default::default()
        }),
        // Every second: the gateway hears of a new pod from its announcement; Ready (what the
        // Deployment and the status count) should not lag far behind.
        readiness_probe: Some(probe("/readyz", 1)),
        liveness_probe: Some(probe("/healthz", 10)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(volume_mounts),
        ..Default::default()
    };
    PodSpec {
        containers: vec![container],
        // A pod being removed finishes its calls: it drains (the runner's 2 s), then waits for
        // calls that may take the whole timeout.
        termination_grace_period_seconds: Some(p.termination_grace_seconds),
        // No token for the Kubernetes API; the pod's only token is the projected one, whose
        // audience is the gateway.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        runtime_class_name: cfg.runtime_class.clone(),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(cfg.runner_uid),
            run_as_group: Some(cfg.runner_uid),
            fs_group: Some(cfg.runner_uid),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volumes: Some(volumes),
        ..Default::default()
    }
}

/// What the operator creates when the pool's anchor is missing (the chart makes its own): the
/// owner of every pool pod and of the pool's NetworkPolicy, so that deleting it (an uninstall)
/// deletes the pool.
pub fn pool_anchor(namespace: &str, pool: &PoolConfig) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(pool.name.clone()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "skython-operator".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        data: Some(
            [(
                "README".to_string(),
                "Owner of Skython's warm pool: deleting it deletes the unclaimed pool pods.\n"
                    .to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

fn owned_by_anchor(anchor: &ConfigMap) -> Result<ObjectMeta, DesiredError> {
    let namespace = anchor
        .metadata
        .namespace
        .clone()
        .ok_or(DesiredError::MissingMetadata("namespace"))?;
    let owner = anchor
        .controller_owner_ref(&())
        .ok_or(DesiredError::MissingMetadata("uid"))?;
    Ok(ObjectMeta {
        namespace: Some(namespace),
        owner_references: Some(vec![owner]),
        ..Default::default()
    })
}

/// An unclaimed pool pod of `runtime`, owned by the pool's `anchor`: a function's runner pod
/// without a function (`skython runner` in pool mode waits to be specialised), with the pool
/// key to check who specialises it and its own uid, which a specialise request must name.
pub fn pool_pod(
    runtime: Runtime,
    anchor: &ConfigMap,
    cfg: &OperatorConfig,
    pool: &PoolConfig,
) -> Result<Pod, DesiredError> {
    let spec = runner_pod(
        RunnerPod {
            image: cfg.image(runtime),
            args: vec!["runner".into(), "--port".into(), RUNNER_PORT.to_string()],
            env: vec![
                env_value(wire::ENV_POOL_RUNTIME, runtime.as_str()),
                env_value(wire::ENV_POOL_PUBLIC_KEY, &pool.public_key),
                env_from_field(wire::ENV_POD_UID, "metadata.uid"),
            ],
            cpu: &pool.cpu,
            cpu_limit: Some(&pool.cpu_limit),
            memory: &pool.memory,
            // Claimed, it may serve any function: the longest timeout a function may have.
            termination_grace_seconds: MAX_TIMEOUT_SECONDS + 15,
            function_files: None,
        },
        cfg,
    );
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "skython-runner"),
        ("app.kubernetes.io/managed-by", "skython-operator"),
        (wire::POOL_LABEL, runtime.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let template = serde_json::to_vec(&(&labels, &spec)).unwrap_or_default();
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-{}-", pool.name, runtime.as_str())),
            labels: Some(labels),
            annotations: Some(
                [(
                    POOL_TEMPLATE_ANNOTATION.to_string(),
                    hex::encode(Sha256::digest(&template)),
                )]
                .into(),
            ),
            ..owned_by_anchor(anchor)?
        },
        spec: Some(spec),
        ..Default::default()
    })
}

/// The policy of unclaimed pool pods: calls from the gateway only, and no egress at all. A
/// claimed pod carries its function's label, so this one no longer selects it and its
/// function's does.
pub fn pool_network_policy(
    anchor: &ConfigMap,
    cfg: &OperatorConfig,
    pool: &PoolConfig,
) -> Result<NetworkPolicy, DesiredError> {
    let requirement = |key: &str, operator: &str| LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: None,
    };
    Ok(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(pool.name.clone()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "skython-operator".to_string(),
                )]
                .into(),
            ),
            ..owned_by_anchor(anchor)?
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_expressions: Some(vec![
                    requirement(wire::POOL_LABEL, "Exists"),
                    requirement(FUNCTION_LABEL, "DoesNotExist"),
                ]),
                ..Default::default()
            }),
            // Egress listed with no rule: nothing may leave.
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            egress: None,
            ingress: Some(vec![gateway_ingress(cfg)]),
        }),
    })
}

/// Runner pods (a function's, or the pool's) take calls from the gateway's pods only.
fn gateway_ingress(cfg: &OperatorConfig) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(cfg.gateway_labels.clone()),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![NetworkPolicyPort {
            protocol: Some("TCP".into()),
            port: Some(IntOrString::Int(RUNNER_PORT)),
            ..Default::default()
        }]),
    }
}

/// Where runner pods may connect: the gateway's pods in any namespace (to announce themselves
/// and keep state), and for `network: internet` DNS and public addresses. Nothing else, not even
/// DNS without `network: internet`: the gateway URL must then not need a name lookup (the
/// ClusterIP of its Service, or a host address).
fn egress_rules(network: Network, cfg: &OperatorConfig) -> Vec<NetworkPolicyEgressRule> {
    let gateway = NetworkPolicyEgressRule {
        ports: None,
        to: Some(vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector {
                match_labels: Some(cfg.gateway_labels.clone()),
                ..Default::default()
            }),
            // Empty: every namespace.
            namespace_selector: Some(LabelSelector::default()),
            ..Default::default()
        }]),
    };
    match network {
        Network::None => vec![gateway],
        Network::Internet => {
            let dns = ["UDP", "TCP"]
                .map(|p| NetworkPolicyPort {
                    protocol: Some(p.into()),
                    port: Some(IntOrString::Int(53)),
                    ..Default::default()
                })
                .to_vec();
            vec![
                gateway,
                NetworkPolicyEgressRule {
                    ports: Some(dns),
                    to: None,
                },
                NetworkPolicyEgressRule {
                    ports: None,
                    to: Some(vec![NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: "0.0.0.0/0".into(),
                            except: Some(cfg.egress_deny.clone()),
                        }),
                        ..Default::default()
                    }]),
                },
            ]
        }
    }
}
