//! `skython operator`: the SkyFunction operator (see the `skython-operator` crate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args};
use skython_operator::leader::LeaseConfig;
use skython_operator::{OperatorConfig, Settings};

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// Kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, or the pod's service account.
    #[arg(long, env = "SKYTHON_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace. Default: all namespaces.
    #[arg(long, env = "SKYTHON_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Image of the runner pods (`e2e/cluster/up.sh` loads skython/runner:dev).
    #[arg(long, env = "SKYTHON_RUNNER_IMAGE", default_value_t = OperatorConfig::default().runner_image)]
    runner_image: String,
    /// Image of the runner pods of `runtime: full` functions (tensorflow and keras besides).
    #[arg(long, env = "SKYTHON_RUNNER_IMAGE_FULL", default_value_t = OperatorConfig::default().runner_image_full)]
    runner_image_full: String,
    /// RuntimeClass of runner pods, e.g. `gvisor`. Default: the cluster's default runtime.
    #[arg(long, env = "SKYTHON_RUNTIME_CLASS")]
    runtime_class: Option<String>,
    /// The uid and gid runner pods run as.
    #[arg(long, env = "SKYTHON_RUNNER_UID", default_value_t = OperatorConfig::default().runner_uid)]
    runner_uid: i64,
    /// Labels (k=v,…) of the gateway pods, the only pods allowed to call runner pods.
    #[arg(
        long,
        env = "SKYTHON_GATEWAY_LABELS",
        default_value = "app.kubernetes.io/name=skython-gateway"
    )]
    gateway_labels: String,
    /// Address ranges runner pods may never reach (the cluster's pod and service ranges,
    /// private, link-local and metadata addresses), comma-separated.
    #[arg(
        long,
        env = "SKYTHON_EGRESS_DENY",
        value_delimiter = ',',
        default_values_t = OperatorConfig::default().egress_deny
    )]
    egress_deny: Vec<String>,
    /// Size of the runner pods' writable /tmp.
    #[arg(long, env = "SKYTHON_TMP_SIZE", default_value_t = OperatorConfig::default().tmp_size)]
    tmp_size: String,
    /// The gateway's URL as runner pods reach it (they announce themselves and keep state
    /// there), e.g. http://10.96.0.20:8080; also the base of each function's status.url.
    /// Without a cluster DNS lookup for `network: none` functions (their NetworkPolicy allows
    /// no DNS): use an address. Default: pods get no gateway.
    #[arg(long, env = "SKYTHON_GATEWAY_URL", value_parser = parse_gateway_url)]
    gateway_url: Option<String>,
    /// A Python 3 for checking sources (the standard library is enough).
    #[arg(long, env = "SKYTHON_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Writable directory for the runtime's Python files. Default: $TMPDIR/skython-operator.
    #[arg(long, env = "SKYTHON_RUNTIME_DIR")]
    runtime_dir: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SKYTHON_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Elect a leader through a Lease, so that several replicas are safe (`--leader-elect false`
    /// for exactly one replica).
    #[arg(long, env = "SKYTHON_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, env = "SKYTHON_LEASE_NAME", default_value = "skython-operator")]
    lease_name: String,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "SKYTHON_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// This replica's name in the Lease. Default: the pod name, else <hostname>-<pid>.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log filter (tracing syntax).
    #[arg(long, env = "SKYTHON_LOG", default_value = "info")]
    log: String,
}

fn parse_gateway_url(s: &str) -> Result<String, String> {
    let url = s.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some(("http" | "https", host)) if !host.is_empty() => Ok(url.to_string()),
        _ => Err(format!(
            "expected an http:// or https:// URL such as http://10.96.0.20:8080, got {s:?}"
        )),
    }
}

fn parse_labels(s: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--gateway-labels: {pair:?} is not key=value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    crate::init_logging(&args.log)?;
    let settings = Settings {
        kubeconfig: args.kubeconfig,
        namespace: args.namespace,
        desired: OperatorConfig {
            runner_image: args.runner_image,
            runner_image_full: args.runner_image_full,
            runtime_class: args.runtime_class,
            runner_uid: args.runner_uid,
            gateway_labels: parse_labels(&args.gateway_labels)?,
            egress_deny: args.egress_deny,
            tmp_size: args.tmp_size,
            gateway_url: args.gateway_url,
        },
        python: args.python,
        runtime_dir: args
            .runtime_dir
            .unwrap_or_else(|| std::env::temp_dir().join("skython-operator")),
        metrics_addr: args.metrics_addr,
        lease: args.leader_elect.then(|| LeaseConfig {
            namespace: args.lease_namespace,
            name: args.lease_name,
            identity: args
                .identity
                .unwrap_or_else(skython_operator::default_identity),
            duration: Duration::from_secs(args.lease_seconds.max(2)),
        }),
    };
    skython_operator::run(settings, crate::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_gateway_url;

    #[test]
    fn a_gateway_url_is_http_without_a_trailing_slash() {
        assert_eq!(
            parse_gateway_url("http://10.88.0.1:8080/").as_deref(),
            Ok("http://10.88.0.1:8080")
        );
        for bad in ["10.88.0.1:8080", "ftp://x", "http://", ""] {
            assert!(parse_gateway_url(bad).is_err(), "{bad}");
        }
    }
}
