//! The desired children of a `SkyFunction`, as plain values: a ConfigMap with the source, a
//! Deployment of locked-down runner pods, a Service and a NetworkPolicy. Pure functions, so that
//! unit tests call them directly; the reconcile loop only applies what they return.
//!
//! ```text
//! SkyFunction ─owns─▶ ConfigMap (source.py, function.json)
//!             ├─owns─▶ Deployment ─▶ runner pods (mount the ConfigMap; checksum rolls them)
//!             ├─owns─▶ Service (port 80 → the pods' "http" port)
//!             └─owns─▶ NetworkPolicy (ingress from the gateway only; egress DNS + internet)
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};
use skython_crds::{Network, SkyFunction};

/// The runner container's HTTP port (`POST /` calls the function).
pub const RUNNER_PORT: i32 = 8080;
/// Where the ConfigMap is mounted in runner pods.
pub const FUNCTION_DIR: &str = "/etc/skython/function";
pub const CHECKSUM_ANNOTATION: &str = "skython.io/function-checksum";
pub const FUNCTION_LABEL: &str = "skython.io/function";
/// Selects every object the operator manages (children carry this label).
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=skython-operator";

/// What the operator is told by its own configuration, not by the function.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorConfig {
    pub runner_image: String,
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
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            runner_image: "skython/runner:dev".into(),
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

/// Changes whenever anything the pods see changes, so the Deployment rolls.
pub fn checksum(f: &SkyFunction) -> String {
    let spec = serde_json::to_vec(&f.spec).unwrap_or_default();
    hex::encode(Sha256::digest(&spec))
}

pub fn desired(f: &SkyFunction, cfg: &OperatorConfig) -> Result<Children, DesiredError> {
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
    let function_json = serde_json::to_string_pretty(spec).unwrap_or_default();
    let config_map = ConfigMap {
        metadata: meta.clone(),
        data: Some(
            [
                ("source.py".to_string(), spec.source.clone()),
                ("function.json".to_string(), function_json),
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
    env.push(EnvVar {
        name: "SKYTHON_FUNCTION_DIR".into(),
        value: Some(FUNCTION_DIR.into()),
        ..Default::default()
    });
    let resources: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(spec.resources.cpu.clone())),
        (
            "memory".to_string(),
            Quantity(spec.resources.memory.clone()),
        ),
    ]
    .into();
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        ..Default::default()
    };
    let container = Container {
        name: "runner".into(),
        image: Some(cfg.runner_image.clone()),
        args: Some(vec![
            "runner".into(),
            "--function-dir".into(),
            FUNCTION_DIR.into(),
            "--port".into(),
            RUNNER_PORT.to_string(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: RUNNER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            ..Default::default()
        }),
        readiness_probe: Some(probe("/readyz", 2)),
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
        volume_mounts: Some(vec![
            VolumeMount {
                name: "function".into(),
                mount_path: FUNCTION_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
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
        volumes: Some(vec![
            Volume {
                name: "function".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: child.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(cfg.tmp_size.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: meta.clone(),
        spec: DeploymentSpec {
            replicas: Some(spec.scaling.min_replicas.max(1) as i32),
            selector: LabelSelector {
                match_labels: Some(selector(f)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(f)),
                    annotations: Some([(CHECKSUM_ANNOTATION.to_string(), checksum(f))].into()),
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
    let dns = ["UDP", "TCP"]
        .map(|p| NetworkPolicyPort {
            protocol: Some(p.into()),
            port: Some(IntOrString::Int(53)),
            ..Default::default()
        })
        .to_vec();
    let network_policy = NetworkPolicy {
        metadata: meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(f)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
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
            }]),
            // With "Egress" among the policy types, no rule denies every destination: a
            // function without `network: internet` reaches nothing. (An empty list instead of
            // none would not survive the API server's round trip, and every apply would write.)
            egress: match spec.network {
                Network::None => None,
                Network::Internet => Some(vec![
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
                ]),
            },
        }),
    };
    Ok(Children {
        config_map,
        deployment,
        service,
        network_policy,
    })
}
