//! The `SkyFunction` custom resource: the one function model of Skython.
//!
//! Local mode stores this type in its embedded store, the REST API speaks its field names, and on
//! Kubernetes it is a real custom resource (`skython.io/v1alpha1`) that the operator reconciles.
//! This crate owns the type, its defaults and its validation; it does no I/O.

#![forbid(unsafe_code)]

mod holder;
mod validate;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use holder::endpoint_holder;
pub use validate::{
    FieldError, MAX_SOURCE_BYTES, is_dns_label, parse_cpu_millis, parse_memory_bytes,
};

/// A plain Python function served as an HTTP endpoint at `/fn/{owner}/{endpoint}`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "skython.io",
    version = "v1alpha1",
    kind = "SkyFunction",
    plural = "skyfunctions",
    shortname = "skyfn",
    namespaced,
    status = "SkyFunctionStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".spec.endpoint"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SkyFunctionSpec {
    /// The user that owns the function (a DNS label).
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub owner: String,
    /// The endpoint name, unique per owner (a DNS label: lowercase letters, digits and '-').
    #[schemars(length(min = 1, max = 63), pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub endpoint: String,
    /// The Python module source.
    #[schemars(length(min = 1, max = 1048576))]
    pub source: String,
    /// The function to call. Default: `main` if defined, else the only public top-level function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub visibility: Visibility,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub resources: Resources,
    /// Wall-clock limit of one call; past it the worker is killed and the call answers 504.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 900))]
    pub timeout_seconds: u32,
    /// Calls one replica serves at once. Each in-flight call runs in its own Python worker
    /// process, so this is also the largest worker pool a replica grows to.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: u32,
    #[serde(default)]
    pub scaling: Scaling,
    /// Replicas wanted now, written by the gateway's autoscaler or `kubectl scale` (the `scale`
    /// subresource); kept within `scaling.minReplicas`..`maxReplicas`. Unset:
    /// `max(minReplicas, 1)`. Not part of a deploy: changing it never rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub replicas: Option<u32>,
    /// Environment variables given to the function's workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// What the function may reach over the network.
    #[serde(default)]
    pub network: Network,
    /// Who may call the endpoint. Unset: `public` for public functions, `key` for private ones
    /// (see [`SkyFunctionSpec::effective_access`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// Web origins whose pages may call the endpoint from a browser (CORS), e.g.
    /// `https://example.com`, or `*` for any. Unset: any origin. Calls carry no cookies, so a
    /// browser page still needs a key for a gated function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub allowed_origins: Option<Vec<String>>,
}

/// Who may call a function's endpoint.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Anyone, without credentials.
    Public,
    /// Callers presenting an API key scoped to the function, or a token of its owner.
    Key,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Key => "key",
        }
    }
}

/// Network access of a function.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// No network at all.
    #[default]
    None,
    /// HTTP and HTTPS to public internet addresses (through the platform's egress proxy, which
    /// refuses loopback, private, link-local and metadata addresses).
    Internet,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only the owner sees the function; its endpoint needs a key unless `access` is `public`.
    #[default]
    Private,
    /// Listed in the skybox catalogue.
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Private => "private",
            Visibility::Public => "public",
        }
    }
}

/// The Python runtime profile: which preinstalled libraries the function can import.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// numpy, pandas, scipy, requests, beautifulsoup4.
    #[default]
    Standard,
    /// The standard libraries plus tensorflow and keras.
    Full,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Standard => "standard",
            Runtime::Full => "full",
        }
    }
}

/// Resource limits of one worker (Kubernetes quantity syntax).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU share, e.g. `500m` or `1`.
    #[serde(default = "default_cpu")]
    pub cpu: String,
    /// Memory limit, e.g. `256Mi` or `1Gi`.
    #[serde(default = "default_memory")]
    pub memory: String,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu: default_cpu(),
            memory: default_memory(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// Replicas (local mode: warm workers) kept even when idle.
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub min_replicas: u32,
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: u32,
    /// In-flight calls per replica the autoscaler aims for. Default: `concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub target_concurrency: Option<u32>,
    /// Idle time after which workers (and replicas) are stopped, down to `minReplicas`.
    #[serde(default = "default_idle_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub idle_seconds_to_zero: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            min_replicas: 0,
            max_replicas: default_max_replicas(),
            target_concurrency: None,
            idle_seconds_to_zero: default_idle_seconds(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

fn default_timeout_seconds() -> u32 {
    30
}
fn default_concurrency() -> u32 {
    4
}
fn default_max_replicas() -> u32 {
    10
}
fn default_idle_seconds() -> u32 {
    300
}
fn default_cpu() -> String {
    "1".into()
}
fn default_memory() -> String {
    "512Mi".into()
}

/// What the platform observed about a function.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkyFunctionStatus {
    /// `Ready` with a reason and message.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub ready_replicas: u32,
    /// Pods that exist (ready or not), from the Deployment: the `scale` subresource's count.
    #[serde(default)]
    pub replicas: u32,
    /// The label selector of the function's pods (`skython.io/function=<name>`), for the `scale`
    /// subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The entry function's signature, read from the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// The callable's parameters and return annotation, as written in the source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    pub entrypoint: String,
    #[serde(default)]
    pub params: Vec<Param>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Param {
    pub name: String,
    /// `positional_only`, `positional_or_keyword`, `var_positional`, `keyword_only`, `var_keyword`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation: Option<String>,
    /// The default's source text; absent when the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

impl SkyFunctionSpec {
    /// Who may call the endpoint: `access` if set, else what the visibility implies (a private
    /// function is not open to the world just because its URL is guessable).
    pub fn effective_access(&self) -> Access {
        self.access.unwrap_or(match self.visibility {
            Visibility::Public => Access::Public,
            Visibility::Private => Access::Key,
        })
    }

    /// A spec with every optional field at its default.
    pub fn new(owner: &str, endpoint: &str, source: &str) -> Self {
        SkyFunctionSpec {
            owner: owner.into(),
            endpoint: endpoint.into(),
            source: source.into(),
            entrypoint: None,
            description: String::new(),
            tags: Vec::new(),
            visibility: Visibility::default(),
            runtime: Runtime::default(),
            resources: Resources::default(),
            timeout_seconds: default_timeout_seconds(),
            concurrency: default_concurrency(),
            scaling: Scaling::default(),
            replicas: None,
            network: Network::default(),
            env: Vec::new(),
            access: None,
            allowed_origins: None,
        }
    }

    /// Every problem with the spec, each naming its field; empty when valid.
    pub fn validate(&self) -> Vec<FieldError> {
        validate::spec(self)
    }

    pub fn memory_bytes(&self) -> u64 {
        parse_memory_bytes(&self.resources.memory).unwrap_or(512 << 20)
    }

    pub fn cpu_millis(&self) -> u64 {
        parse_cpu_millis(&self.resources.cpu).unwrap_or(1000)
    }

    pub fn env_map(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    }
}

/// Reasons of the `Ready` condition that the operator writes and the gateway acts on: each
/// needs a person (a Warning event), and the function serves no new version until then.
pub mod reason {
    pub const INVALID_SOURCE: &str = "InvalidSource";
    pub const ENDPOINT_TAKEN: &str = "EndpointTaken";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
}

impl SkyFunctionStatus {
    pub fn ready_condition(&self) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == "Ready")
    }
}

impl SkyFunction {
    /// The entry function of the current source, when the operator has read it: the status
    /// describes this generation and its source was valid (an invalid one keeps the previous
    /// signature). Lets a pod skip its own reading of the source.
    pub fn checked_entrypoint(&self) -> Option<&str> {
        let status = self.status.as_ref()?;
        let current = status.observed_generation.is_some()
            && status.observed_generation == self.metadata.generation;
        let valid = status
            .ready_condition()
            .is_none_or(|c| c.reason != reason::INVALID_SOURCE);
        let signature = status.signature.as_ref().filter(|_| current && valid)?;
        Some(signature.entrypoint.as_str())
    }
}

/// The CustomResourceDefinition as YAML (`skython crdgen`; committed in `helm/skython/files/`).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(SkyFunction::crd())
        .map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    drop_empty_string_defaults(&mut crd);
    serde_yaml::to_string(&sorted(crd))
}

/// `v` with every object's keys in order: the same YAML whether or not another crate in the
/// build turned on serde_json's `preserve_order` (the MongoDB driver does, for the whole
/// workspace but not for this crate alone).
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// Removes `default: ""` from the schema: API servers before 1.21 read it as `null` and refuse
/// the CRD ("must be of type string"). Nothing is lost: a missing field deserializes to "".
fn drop_empty_string_defaults(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("default") == Some(&serde_json::Value::String(String::new())) {
                map.remove("default");
            }
            map.values_mut().for_each(drop_empty_string_defaults);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_empty_string_defaults),
        _ => {}
    }
}

#[cfg(test)]
mod crd_tests {
    /// The committed CRD must match the type (`make generate` rewrites it).
    #[test]
    fn committed_crd_is_current() {
        // Read at run time: a build reused from another checkout carries that checkout's path.
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let path = &format!("{dir}/../helm/skython/files/skyfunctions.skython.io.yaml");
        let fresh = super::crd_yaml().unwrap();
        if std::env::var_os("SKYTHON_WRITE_GENERATED").is_some() {
            std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &fresh).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == fresh,
            "{path} is stale: run `make generate` and commit it"
        );
    }

    #[test]
    fn crd_has_the_kubectl_conveniences() {
        let y = super::crd_yaml().unwrap();
        for needle in [
            "shortNames:\n    - skyfn",
            "status: {}",
            "jsonPath: .spec.endpoint",
            "name: v1alpha1",
            "specReplicasPath: .spec.replicas",
            "statusReplicasPath: .status.replicas",
            "labelSelectorPath: .status.selector",
            "jsonPath: .spec.replicas",
        ] {
            assert!(y.contains(needle), "missing {needle:?} in\n{y}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A function at generation 2 whose status says `reason` for `observed` with entry `main`.
    fn with_status(observed: Option<i64>, reason: &str) -> SkyFunction {
        let mut f = SkyFunction::new("f", SkyFunctionSpec::new("alice", "f", "def main(): pass"));
        f.metadata.generation = Some(2);
        f.status = Some(SkyFunctionStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: reason.into(),
                message: String::new(),
                observed_generation: observed,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::UNIX_EPOCH,
                ),
            }],
            observed_generation: observed,
            signature: Some(Signature {
                entrypoint: "main".into(),
                ..Signature::default()
            }),
            ..SkyFunctionStatus::default()
        });
        f
    }

    #[test]
    fn the_entrypoint_read_for_this_generation_is_known() {
        assert_eq!(
            with_status(Some(2), "Available").checked_entrypoint(),
            Some("main")
        );
    }

    #[test]
    fn an_entrypoint_read_for_an_older_generation_is_not_known() {
        assert_eq!(with_status(Some(1), "Available").checked_entrypoint(), None);
        assert_eq!(with_status(None, "Available").checked_entrypoint(), None);
    }

    #[test]
    fn an_invalid_source_has_no_known_entrypoint() {
        assert_eq!(
            with_status(Some(2), reason::INVALID_SOURCE).checked_entrypoint(),
            None
        );
    }
}
