//! `skython operator`: the SkyFunction operator (see the `skython-operator` crate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args};
use skython_operator::leader::LeaseConfig;
use skython_operator::{OperatorConfig, PoolConfig, Settings};
use skython_runner_pod::wire::PoolKey;

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
    #[command(flatten)]
    pool: PoolArgs,
}

/// The warm pool: unclaimed runner pods a gateway specialises for a function with no ready pod
/// (a cold call in tens of milliseconds instead of a pod start). Each idle standard pod
/// reserves --pool-memory and uses ≈96 MiB.
#[derive(Args, Debug)]
#[command(next_help_heading = "Warm pool")]
struct PoolArgs {
    /// The pool's shared secret (the gateway reads the same file): pool pods get the public key
    /// derived from it and accept only requests signed with it. Without it, there is no pool.
    /// Needs --namespace: pool pods live in the functions' namespace.
    #[arg(long, env = "SKYTHON_POOL_KEY_FILE")]
    pool_key_file: Option<PathBuf>,
    /// Unclaimed `runtime: standard` pods kept ready.
    #[arg(long, env = "SKYTHON_POOL_SIZE", default_value_t = 3)]
    pool_size: u32,
    /// Unclaimed `runtime: full` pods kept ready. Each holds tensorflow too: several hundred
    /// MiB (≈700 MiB) more than a standard one, so none by default.
    #[arg(long, env = "SKYTHON_POOL_SIZE_FULL", default_value_t = 0)]
    pool_size_full: u32,
    /// At most this many pool pods created per second per runtime (the refill after claims,
    /// capped so that a burst of claims does not flood the API server and the node).
    #[arg(long, env = "SKYTHON_POOL_REFILL_PER_SECOND", default_value_t = 1.0, value_parser = parse_rate)]
    pool_refill_per_second: f64,
    /// Seconds a pool short of its size waits while functions' own pods start (a call waits
    /// for each; and for a second after a claim, whose burst's misses scale their Deployments
    /// a moment later): on a small node a refilling pool pod, importing its libraries, would
    /// slow them. Past this, the pool refills at its rate until full. 0: never wait.
    #[arg(long, env = "SKYTHON_POOL_REFILL_YIELD_SECONDS", default_value_t = 5.0, value_parser = parse_seconds)]
    pool_refill_yield_seconds: f64,
    /// CPU each pool pod requests (what it reserves on its node while it idles).
    #[arg(long, env = "SKYTHON_POOL_CPU", default_value = "250m", value_parser = parse_cpu)]
    pool_cpu: String,
    /// CPU each pool pod may use (its limit): its start (importing the runtime's libraries) and
    /// a claim's specialisation, which a call waits for, run at this speed. A claimed pod keeps it
    /// for its life (it serves as one of its function's replicas).
    #[arg(long, env = "SKYTHON_POOL_CPU_LIMIT", default_value = "1", value_parser = parse_cpu)]
    pool_cpu_limit: String,
    /// Memory of each pool pod (request and limit).
    #[arg(long, env = "SKYTHON_POOL_MEMORY", default_value = "512Mi", value_parser = parse_memory)]
    pool_memory: String,
    /// Name of the pool's anchor ConfigMap (made if missing; deleting it deletes the pool) and
    /// NetworkPolicy, and the prefix of pool pods' names (`<name>-<runtime>-…`).
    #[arg(long, env = "SKYTHON_POOL_NAME", default_value = "skython-pool")]
    pool_name: String,
}

impl PoolArgs {
    /// The pool's settings; `None` without a key file (no pool).
    fn config(self) -> anyhow::Result<Option<PoolConfig>> {
        let Some(path) = self.pool_key_file else {
            tracing::info!("no --pool-key-file: the warm pool is off");
            return Ok(None);
        };
        let secret =
            std::fs::read(&path).with_context(|| format!("--pool-key-file {}", path.display()))?;
        anyhow::ensure!(
            !secret.is_empty(),
            "--pool-key-file {} is empty",
            path.display()
        );
        let key = PoolKey::from_secret(&secret)?;
        Ok(Some(PoolConfig {
            size: self.pool_size,
            size_full: self.pool_size_full,
            refill_per_second: self.pool_refill_per_second,
            refill_yield_seconds: self.pool_refill_yield_seconds,
            cpu: self.pool_cpu,
            cpu_limit: self.pool_cpu_limit,
            memory: self.pool_memory,
            name: self.pool_name,
            public_key: key.public_hex(),
        }))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.001 => Ok(r),
        _ => Err(format!(
            "expected pods per second, at least 0.001, got {s:?}"
        )),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && (0.0..=3600.0).contains(&r) => Ok(r),
        _ => Err(format!("expected seconds, 0 to 3600, got {s:?}")),
    }
}

fn parse_cpu(s: &str) -> Result<String, String> {
    match skython_crds::parse_cpu_millis(s) {
        Some(m) if m > 0 => Ok(s.to_string()),
        _ => Err(format!(
            "expected a CPU quantity such as 250m or 1, got {s:?}"
        )),
    }
}

fn parse_memory(s: &str) -> Result<String, String> {
    match skython_crds::parse_memory_bytes(s) {
        Some(b) if b > 0 => Ok(s.to_string()),
        _ => Err(format!(
            "expected a memory quantity such as 512Mi, got {s:?}"
        )),
    }
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
    let pool = args.pool.config()?;
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
        pool,
    };
    skython_operator::run(settings, crate::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_cpu, parse_gateway_url, parse_memory, parse_rate};

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

    #[test]
    fn pool_flags_refuse_what_kubernetes_or_the_rate_cannot_use() {
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "inf", "NaN", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert!(parse_cpu("250m").is_ok() && parse_cpu("2").is_ok());
        assert!(parse_cpu("0").is_err() && parse_cpu("lots").is_err());
        assert!(parse_memory("512Mi").is_ok());
        assert!(parse_memory("512 MB").is_err());
    }
}
