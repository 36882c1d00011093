//! `skython gateway`: the gateway on Kubernetes. The same API as `skython up`, but functions are
//! `SkyFunction` resources and calls go to their runner pods, which the gateway scales (see the
//! `skython-cluster` crate). Users, tokens and invocation records stay in the server's store;
//! sources are inspected and drafts run by this process's own runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args};
use skython_cluster::autoscaler::AutoscalerConfig;
use skython_cluster::platform::{ClusterConfig, ClusterPlatform, PeerConfig, PoolConfig};
use skython_cluster::router::RouterConfig;
use skython_gateway::{AppState, Metrics};
use skython_operator::leader::LeaseConfig;

use crate::up::{ServerArgs, prepare, serve_app};
use skython_gateway::auth::SignupMode;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Kubeconfig file. Default: $KUBECONFIG, ~/.kube/config, or the pod's service account.
    #[arg(long, env = "SKYTHON_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the SkyFunctions deployed through the API.
    #[arg(long, env = "SKYTHON_FUNCTION_NAMESPACE", default_value = "default")]
    function_namespace: String,
    /// Serve only the SkyFunctions (and runner pods) of this namespace. Default: all namespaces.
    #[arg(long, env = "SKYTHON_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Calls that may wait for a pod, per function (503 `queue_full` above).
    #[arg(long, env = "SKYTHON_POD_QUEUE_LIMIT", default_value_t = RouterConfig::default().queue_limit)]
    pod_queue_limit: u32,
    /// Seconds a call may wait for a pod, a cold start included (504 `cold_start_timeout`).
    #[arg(long, env = "SKYTHON_POD_QUEUE_TIMEOUT_SECS", default_value_t = RouterConfig::default().queue_timeout.as_secs_f64())]
    pod_queue_timeout_secs: f64,
    /// The autoscaler's stable window, in seconds (scale-downs wait this long).
    #[arg(long, env = "SKYTHON_STABLE_WINDOW_SECS", default_value_t = AutoscalerConfig::default().stable_window.as_secs_f64())]
    stable_window_secs: f64,
    /// The autoscaler's panic window, in seconds (bursts are seen within it).
    #[arg(long, env = "SKYTHON_PANIC_WINDOW_SECS", default_value_t = AutoscalerConfig::default().panic_window.as_secs_f64())]
    panic_window_secs: f64,
    /// Elect one autoscaler among gateway replicas through a Lease (`false` for exactly one
    /// replica).
    #[arg(long, env = "SKYTHON_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the autoscaler's Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, env = "SKYTHON_LEASE_NAME", default_value = "skython-autoscaler")]
    lease_name: String,
    /// This replica's name in the Lease. Default: the pod name, else <hostname>-<pid>; with
    /// --peer-token, the --advertise-url.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// A secret shared by all gateway replicas: with it, each replica reports its counts to the
    /// one whose autoscaler decides, which then scales on the sum. Unset: one replica.
    #[arg(long, env = "SKYTHON_PEER_TOKEN", hide_env_values = true)]
    peer_token: Option<String>,
    /// The URL other replicas reach this one at (with --peer-token). Default: the public URL.
    #[arg(long, env = "SKYTHON_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// The warm pool's secret (the file the operator's --pool-key-file reads too). With it, a
    /// call for a function with no pod claims an idle pool pod and is served in tens of
    /// milliseconds; without it, every cold start waits for a new pod (about half a second
    /// at best).
    ///
    /// Sizing the pool (`skython operator --pool-size`, the chart's `pool.size`), from this
    /// gateway's /metrics:
    /// - skython_pool_claims_total{outcome="miss"} grows: calls found the pool empty and waited
    ///   for a Deployment's pod. Raise the size to the number of functions that start from zero
    ///   within one refill (a pool pod takes about a second to start, `--pool-refill-per-second`
    ///   caps how many start at once) times the pods each needs (its waiting calls over its
    ///   `concurrency`).
    /// - skython_pool_pods stays at the size and misses stay at zero: the pool may be smaller;
    ///   each idle standard pod holds about 100 MiB (the full runtime's several hundred).
    /// - outcome="refused": another gateway replica claimed the same pod first (harmless; many
    ///   mean a small pool under several replicas). outcome="failed": see the log.
    /// - skython_pool_specialise_seconds: the claim's cost on the call (the function's own
    ///   imports run here); skython_pool_claim_seconds: recording the claim through the API,
    ///   off the call's path.
    #[arg(long, env = "SKYTHON_POOL_KEY_FILE", verbatim_doc_comment)]
    pool_key_file: Option<PathBuf>,
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{flag}: {s} is not a duration in seconds"))
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    crate::init_logging(&args.server.log)?;
    let client = skython_operator::client(args.kubeconfig.as_ref())
        .await
        .context("connecting to Kubernetes")?;
    let p = prepare(&args.server, SignupMode::Closed).await?;
    let _held_until_exit = p.sqlite_lock;
    let peers = args
        .peer_token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .map(|token| PeerConfig {
            advertise_url: args
                .advertise_url
                .clone()
                .unwrap_or_else(|| p.url.clone())
                .trim_end_matches('/')
                .to_string(),
            token,
        });
    let pool = match &args.pool_key_file {
        None => None,
        Some(path) => {
            let secret = std::fs::read(path)
                .with_context(|| format!("--pool-key-file {}", path.display()))?;
            let key = skython_runner_pod::wire::PoolKey::from_secret(&secret)
                .with_context(|| format!("--pool-key-file {}", path.display()))?;
            Some(PoolConfig {
                key: Arc::new(key),
                claimed_by: args
                    .identity
                    .clone()
                    .unwrap_or_else(skython_operator::default_identity),
            })
        }
    };
    let config = ClusterConfig {
        deploy_namespace: args.function_namespace.clone(),
        watch_namespace: args.watch_namespace.clone(),
        router: RouterConfig {
            queue_limit: args.pod_queue_limit,
            queue_timeout: seconds("pod-queue-timeout-secs", args.pod_queue_timeout_secs)?,
        },
        autoscaler: AutoscalerConfig {
            stable_window: seconds("stable-window-secs", args.stable_window_secs)?,
            panic_window: seconds("panic-window-secs", args.panic_window_secs)?,
            ..AutoscalerConfig::default()
        },
        lease: args.leader_elect.then(|| LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            // With peers, the Lease names the leader by its URL: the others report there.
            identity: match &peers {
                Some(p) => p.advertise_url.clone(),
                None => args
                    .identity
                    .clone()
                    .unwrap_or_else(skython_operator::default_identity),
            },
            duration: Duration::from_secs(15),
        }),
        limits: p.config.limits.clone(),
        peers,
        pool,
    };
    let metrics = Arc::new(Metrics::new()?);
    let (platform, internal) =
        ClusterPlatform::start(client, config, p.store.clone(), metrics.clone())
            .await
            .context("starting the cluster platform")?;
    let state = AppState::with_platform(p.config, p.store, p.zygotes, metrics, platform);
    let recorder = state.recorder.clone();
    let app = skython_gateway::app(state).merge(internal);
    println!("Skython is running at {}", p.url);
    println!(
        "on Kubernetes: functions deployed through the API go to namespace {}; serving {}",
        args.function_namespace,
        args.watch_namespace
            .as_deref()
            .map(|n| format!("namespace {n}"))
            .unwrap_or_else(|| "all namespaces".into())
    );
    serve_app(&args.server, p.listener, p.admin, app, recorder).await
}
