//! `skython runner`: the runner pod's process. Serves the one function mounted at
//! `--function-dir` (the operator's ConfigMap) at `POST /` on `--port`; with a gateway URL,
//! announces itself there and keeps its state through it.
//!
//! With `--pool <runtime>` it is a pool pod instead: it reads no function, its zygote preloads
//! the runtime's libraries, and it waits for a gateway to specialise it with a function
//! (`skython_runner_pod::pool`). The request must carry the gateway's signature: an unclaimed
//! pod has no network egress, so it can ask no one whether to trust it. Once specialised it
//! serves, announces and drains like any runner pod.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use skython_crds::Runtime;
use skython_runner::{RuntimeConfig, Sandbox, StateHandler, Zygote};
use skython_runner_pod::announce::Announcer;
use skython_runner_pod::gateway::{Gateway, TokenFile};
use skython_runner_pod::identity::AnnouncedToken;
use skython_runner_pod::pool::{PoolIdentity, PoolPod, PublicKey};
use skython_runner_pod::server::{RunnerPod, read_function};
use skython_runner_pod::state::{GatewayState, NoStateService};
use skython_runner_pod::wire;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::up::LimitArgs;

#[derive(Args, Debug)]
pub struct RunnerArgs {
    /// Directory holding `function.json` (the SkyFunction spec) and `source.py`. Not read by a
    /// pool pod.
    #[arg(
        long,
        env = "SKYTHON_FUNCTION_DIR",
        default_value = "/etc/skython/function"
    )]
    function_dir: PathBuf,
    /// Port to serve on (all interfaces).
    #[arg(long, env = "SKYTHON_PORT", default_value_t = 8080)]
    port: u16,
    /// The runtime's Python (the image sets SKYTHON_PYTHON to its virtualenv).
    #[arg(long, env = "SKYTHON_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Writable directory for the runtime's Python files (the pod's root is read-only).
    #[arg(
        long,
        env = "SKYTHON_RUNTIME_DIR",
        default_value = "/tmp/skython-runtime"
    )]
    runtime_dir: PathBuf,
    /// Modules the zygote imports before forking workers, comma-separated.
    /// Default: the modules the function's source imports (a pod serves one function); for a
    /// pool pod, the runtime's libraries (as `skython up` preloads them).
    #[arg(long, env = "SKYTHON_PRELOAD")]
    preload: Option<String>,
    /// Run as a pool pod of this runtime (`standard` or `full`): no function until a gateway
    /// specialises the pod with one (`POST /internal/specialise`, signed with the pool key), then
    /// that function for the pod's life. Until then `/readyz` says the pod is claimable, calls
    /// get 503 `not_specialised`, and nothing is announced (an unclaimed pod has no egress).
    #[arg(long, env = wire::ENV_POOL_RUNTIME, value_parser = parse_runtime)]
    pool: Option<Runtime>,
    /// A pool pod's key for specialise requests: the hex Ed25519 public key of the gateways'
    /// pool key. An unclaimed pod can reach no one to ask, so it trusts only what this key
    /// signed. Required with --pool.
    #[arg(long, env = wire::ENV_POOL_PUBLIC_KEY)]
    pool_public_key: Option<String>,
    /// A pool pod's uid (the downward API's `metadata.uid`): a specialise request must name it.
    /// Required with --pool.
    #[arg(long, env = wire::ENV_POD_UID)]
    pod_uid: Option<String>,
    /// The gateway's base URL: the pod announces its address there and keeps its state through
    /// it. Unset: nothing is announced, and store()/load() raise a StateError.
    #[arg(long, env = wire::ENV_GATEWAY_URL)]
    gateway_url: Option<String>,
    /// The address announced to the gateway (the downward API's `status.podIP`).
    #[arg(long, env = wire::ENV_POD_IP)]
    pod_ip: Option<IpAddr>,
    /// The pod's projected service-account token for the gateway, read on every use.
    #[arg(long, env = wire::ENV_TOKEN_FILE, default_value = wire::TOKEN_FILE)]
    token_file: PathBuf,
    /// Seconds the pod keeps serving after SIGTERM, having told the gateway it drains (calls
    /// already on their way still arrive), before it stops accepting connections.
    #[arg(long, env = "SKYTHON_DRAIN_DELAY_SECS", default_value_t = 2)]
    drain_delay_secs: u64,
    #[command(flatten)]
    limits: LimitArgs,
    /// Log filter (tracing syntax).
    #[arg(long, env = "SKYTHON_LOG", default_value = "info")]
    log: String,
}

fn parse_runtime(s: &str) -> Result<Runtime, String> {
    match s {
        "standard" => Ok(Runtime::Standard),
        "full" => Ok(Runtime::Full),
        _ => Err("the runtime is `standard` or `full`".into()),
    }
}

pub async fn run(args: RunnerArgs) -> anyhow::Result<()> {
    crate::init_logging(&args.log)?;
    match args.pool {
        None => run_function(args).await,
        Some(runtime) => run_pool(args, runtime).await,
    }
}

/// Serves the function in `--function-dir`.
async fn run_function(args: RunnerArgs) -> anyhow::Result<()> {
    let spec = read_function(&args.function_dir)?;
    let gateway = gateway(&args)?;
    let preload = args
        .preload
        .clone()
        .unwrap_or_else(|| skython_runner_pod::preload::imported_modules(&spec.source).join(","));
    let mut terminated = crate::terminated();
    let Some(zygote) = start_zygote(&args, Some(preload), &mut terminated).await? else {
        return Ok(());
    };
    let announced = Arc::new(AnnouncedToken::default());
    let limits = args.limits.limits();
    let pod = RunnerPod::new(zygote, &spec, limits, state(&gateway), announced.clone()).await?;
    let listener = listen(args.port).await?;
    tracing::info!(addr = %listener.local_addr()?, function = pod.label(), "serving");
    let (stopping, stopped) = watch::channel(false);
    serve_function(
        &pod,
        gateway,
        listener.local_addr()?.port(),
        announced,
        stopped,
    );
    tokio::spawn({
        let pod = pod.clone();
        // A load failure is the pod's readiness, and in its log.
        async move { pod.warm().await.ok() }
    });
    let drain_delay = Duration::from_secs(args.drain_delay_secs);
    let calls_end_within = calls_end_within(&pod);
    let shutdown = {
        let pod = pod.clone();
        async move {
            terminated.await;
            drain(&pod, &stopping, drain_delay).await;
        }
    };
    serve(listener, pod.router(), &args, shutdown, calls_end_within).await
}

/// Serves as a pool pod of `runtime`: claimable until a gateway specialises it, then its
/// function's.
async fn run_pool(args: RunnerArgs, runtime: Runtime) -> anyhow::Result<()> {
    let identity = pool_identity(&args, runtime)?;
    let gateway = gateway(&args)?;
    let preload = match runtime {
        // The zygote's default list: what `skython up` preloads.
        Runtime::Standard => None,
        Runtime::Full => Some(crate::up::FULL_RUNTIME_PRELOAD.to_string()),
    };
    let mut terminated = crate::terminated();
    let preload = args.preload.clone().or(preload);
    let Some(zygote) = start_zygote(&args, preload, &mut terminated).await? else {
        return Ok(());
    };
    let announced = Arc::new(AnnouncedToken::default());
    let limits = args.limits.limits();
    let pool = PoolPod::new(zygote, identity, limits, state(&gateway), announced.clone());
    let listener = listen(args.port).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, runtime = runtime.as_str(), "serving as a pool pod, waiting for a function");
    let (stopping, stopped) = watch::channel(false);
    tokio::spawn({
        let pool = pool.clone();
        async move {
            // Announced only once specialised: the gateway then lets the pod reach it.
            if let Some(pod) = pool.specialised().await
                && !*stopped.borrow()
            {
                serve_function(&pod, gateway, addr.port(), announced, stopped);
            }
        }
    });
    let drain_delay = Duration::from_secs(args.drain_delay_secs);
    let shutdown = {
        let pool = pool.clone();
        async move {
            terminated.await;
            match pool.pod() {
                Some(pod) => drain(&pod, &stopping, drain_delay).await,
                None => {
                    tracing::info!("stopping: an unclaimed pool pod has nothing to drain");
                    crate::exit_when_busy_after(Duration::from_secs(1));
                }
            }
        }
    };
    // The function's timeout is not known yet: the shutdown above bounds the wait.
    serve(listener, pool.router(), &args, shutdown, Duration::MAX).await
}

fn pool_identity(args: &RunnerArgs, runtime: Runtime) -> anyhow::Result<PoolIdentity> {
    let required =
        |what: &str, var: &str| format!("--pool is set, so {var} (--{what}) must be too");
    let key = args.pool_public_key.as_deref().with_context(|| {
        format!(
            "{}: the public key specialise requests are checked with",
            required("pool-public-key", wire::ENV_POOL_PUBLIC_KEY)
        )
    })?;
    let public_key = PublicKey::parse(key)
        .with_context(|| format!("{} (--pool-public-key)", wire::ENV_POOL_PUBLIC_KEY))?;
    let pod_uid = args
        .pod_uid
        .clone()
        .filter(|uid| !uid.trim().is_empty())
        .with_context(|| {
            format!(
                "{}: the uid specialise requests must name",
                required("pod-uid", wire::ENV_POD_UID)
            )
        })?;
    Ok(PoolIdentity {
        runtime,
        pod_uid,
        public_key,
    })
}

/// The gateway to announce to and keep state through, with the address to announce; none
/// without a gateway URL.
fn gateway(args: &RunnerArgs) -> anyhow::Result<Option<(Gateway, IpAddr)>> {
    let Some(url) = &args.gateway_url else {
        return Ok(None);
    };
    let ip = args.pod_ip.with_context(|| {
        format!(
            "{} is set, so {} must be too: the address to announce",
            wire::ENV_GATEWAY_URL,
            wire::ENV_POD_IP
        )
    })?;
    let gateway = Gateway::new(url, TokenFile::new(&args.token_file))
        .with_context(|| format!("--gateway-url {url}"))?;
    Ok(Some((gateway, ip)))
}

/// The workers' `store`/`load`: through the gateway, or refused without one.
fn state(gateway: &Option<(Gateway, IpAddr)>) -> Arc<dyn StateHandler> {
    match gateway {
        Some((gateway, _)) => Arc::new(GatewayState::new(gateway.clone())),
        None => Arc::new(NoStateService),
    }
}

/// Starts the zygote, importing `preload` (`None`: the runtime's default list); `None` when the
/// process is told to stop meanwhile (importing the scientific stack takes seconds on a small
/// CPU limit, and a pod deleted as it starts should go at once).
async fn start_zygote(
    args: &RunnerArgs,
    preload: Option<String>,
    terminated: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> anyhow::Result<Option<Arc<Zygote>>> {
    skython_runner::install_python_files(&args.runtime_dir).with_context(|| {
        format!(
            "writing the runtime's Python files to {}",
            args.runtime_dir.display()
        )
    })?;
    let zygote = Arc::new(Zygote::new(RuntimeConfig {
        python: args.python.clone(),
        python_path: args.runtime_dir.clone(),
        preload,
        workdir: std::env::temp_dir(),
        // The pod is the sandbox: restricted profile, its own uid, RuntimeDefault seccomp
        // (which also forbids the namespaces bubblewrap would need).
        sandbox: Sandbox::None,
        egress_dir: None,
    }));
    let hello = tokio::select! {
        hello = zygote.start() => hello,
        () = terminated => {
            tracing::info!("stopping before the runtime started");
            return Ok(None);
        }
    };
    let hello =
        hello.with_context(|| format!("starting the Python runtime {}", args.python.display()))?;
    if !hello.missing.is_empty() {
        tracing::warn!("the runtime lacks: {}", hello.missing.join("; "));
    }
    Ok(Some(zygote))
}

async fn listen(port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

/// The span of what a pod does for its function, outside calls (which have their own).
fn function_span(pod: &RunnerPod) -> tracing::Span {
    tracing::info_span!("runner", function = pod.label())
}

/// What a pod serving `pod` runs besides its routes: the announcer (with a gateway), until
/// `stopping`, and the reaper of idle workers.
fn serve_function(
    pod: &Arc<RunnerPod>,
    gateway: Option<(Gateway, IpAddr)>,
    port: u16,
    announced: Arc<AnnouncedToken>,
    mut stopping: watch::Receiver<bool>,
) {
    if let Some((gateway, ip)) = gateway {
        let announcer = Announcer::new(gateway, ip, port, announced);
        let stop = async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        tokio::spawn(announcer.run(stop).instrument(function_span(pod)));
    }
    let pod = Arc::downgrade(pod);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(p) = pod.upgrade() else { return };
            p.reap();
        }
    });
}

/// A pod stops when it is scaled down: the calls it runs may take the function's whole timeout,
/// and are not cut (the operator's termination grace period covers this).
fn calls_end_within(pod: &RunnerPod) -> Duration {
    pod.timeout() + Duration::from_secs(1)
}

/// After SIGTERM: tells the gateway the pod drains, serves `drain_delay` more (calls already on
/// their way still arrive), then gives the calls in flight until they must have ended.
async fn drain(pod: &RunnerPod, stopping: &watch::Sender<bool>, drain_delay: Duration) {
    let calls_end_within = calls_end_within(pod);
    async move {
        stopping.send_replace(true);
        tracing::info!("stopping: serving {drain_delay:?} more, the gateway may still be sending");
        tokio::time::sleep(drain_delay).await;
        crate::exit_when_busy_after(calls_end_within);
    }
    .instrument(function_span(pod))
    .await
}

async fn serve(
    listener: TcpListener,
    router: axum::Router,
    args: &RunnerArgs,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> anyhow::Result<()> {
    let timeouts = args.limits.client_timeouts();
    skython_gateway::serve::serve(listener, router, timeouts, shutdown, Duration::ZERO, drain)
        .await?;
    Ok(())
}
