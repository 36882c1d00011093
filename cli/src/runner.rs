//! `skython runner`: the runner pod's process. Serves the one function mounted at
//! `--function-dir` (the operator's ConfigMap) at `POST /` on `--port`; with a gateway URL,
//! announces itself there and keeps its state through it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use skython_runner::{RuntimeConfig, Sandbox, StateHandler, Zygote};
use skython_runner_pod::announce::Announcer;
use skython_runner_pod::gateway::{Gateway, TokenFile};
use skython_runner_pod::identity::AnnouncedToken;
use skython_runner_pod::server::{RunnerPod, read_function};
use skython_runner_pod::state::{GatewayState, NoStateService};
use skython_runner_pod::wire;

use crate::up::LimitArgs;

#[derive(Args, Debug)]
pub struct RunnerArgs {
    /// Directory holding `function.json` (the SkyFunction spec) and `source.py`.
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
    /// Default: the modules the function's source imports (a pod serves one function).
    #[arg(long, env = "SKYTHON_PRELOAD")]
    preload: Option<String>,
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

pub async fn run(args: RunnerArgs) -> anyhow::Result<()> {
    crate::init_logging(&args.log)?;
    let spec = read_function(&args.function_dir)?;
    let gateway = match &args.gateway_url {
        None => None,
        Some(url) => {
            let ip = args.pod_ip.with_context(|| {
                format!(
                    "{} is set, so {} must be too: the address to announce",
                    wire::ENV_GATEWAY_URL,
                    wire::ENV_POD_IP
                )
            })?;
            let gateway = Gateway::new(url, TokenFile::new(&args.token_file))
                .with_context(|| format!("--gateway-url {url}"))?;
            Some((gateway, ip))
        }
    };
    skython_runner::install_python_files(&args.runtime_dir).with_context(|| {
        format!(
            "writing the runtime's Python files to {}",
            args.runtime_dir.display()
        )
    })?;
    let zygote = Arc::new(Zygote::new(RuntimeConfig {
        python: args.python.clone(),
        python_path: args.runtime_dir.clone(),
        preload: Some(args.preload.clone().unwrap_or_else(|| {
            skython_runner_pod::preload::imported_modules(&spec.source).join(",")
        })),
        workdir: std::env::temp_dir(),
        // The pod is the sandbox: restricted profile, its own uid, RuntimeDefault seccomp
        // (which also forbids the namespaces bubblewrap would need).
        sandbox: Sandbox::None,
        egress_dir: None,
    }));
    let hello = zygote
        .start()
        .await
        .with_context(|| format!("starting the Python runtime {}", args.python.display()))?;
    if !hello.missing.is_empty() {
        tracing::warn!("the runtime lacks: {}", hello.missing.join("; "));
    }
    let state: Arc<dyn StateHandler> = match &gateway {
        Some((gateway, _)) => Arc::new(GatewayState::new(gateway.clone())),
        None => Arc::new(NoStateService),
    };
    let announced = Arc::new(AnnouncedToken::default());
    let pod = RunnerPod::new(
        zygote,
        &spec,
        args.limits.limits(),
        state,
        announced.clone(),
    )
    .await?;

    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(%addr, function = %format!("{}/{}", spec.owner, spec.endpoint), "serving");
    let (stop_announcing, stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some((gateway, ip)) = gateway {
        let port = listener.local_addr()?.port();
        let announcer = Announcer::new(gateway, ip, port, announced);
        tokio::spawn(announcer.run(async {
            let _ = stopped.await;
        }));
    }
    let drain_delay = Duration::from_secs(args.drain_delay_secs);
    // A pod stops when it is scaled down: the calls it runs may take the function's whole
    // timeout, and are not cut (the operator's termination grace period covers this).
    let calls_end_within = Duration::from_secs(u64::from(spec.timeout_seconds) + 1);
    let shutdown = async move {
        crate::termination_signal().await;
        let _ = stop_announcing.send(());
        tracing::info!("stopping: serving {drain_delay:?} more, the gateway may still be sending");
        tokio::time::sleep(drain_delay).await;
        crate::exit_when_busy_after(calls_end_within);
    };
    tokio::spawn({
        let pod = pod.clone();
        async move { pod.warm().await }
    });
    tokio::spawn({
        let pod = Arc::downgrade(&pod);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(p) = pod.upgrade() else { return };
                p.reap();
            }
        }
    });
    skython_gateway::serve::serve(
        listener,
        pod.router(),
        args.limits.client_timeouts(),
        shutdown,
        Duration::ZERO,
        calls_end_within,
    )
    .await?;
    Ok(())
}
