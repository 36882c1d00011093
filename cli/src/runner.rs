//! `skython runner`: the runner pod's process. Serves the one function mounted at
//! `--function-dir` (the operator's ConfigMap) at `POST /` on `--port`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use skython_gateway::pod::{RunnerPod, read_function};
use skython_runner::{RuntimeConfig, Sandbox, Zygote};

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
    /// Default: numpy,pandas,scipy,requests,bs4.
    #[arg(long, env = "SKYTHON_PRELOAD")]
    preload: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Log filter (tracing syntax).
    #[arg(long, env = "SKYTHON_LOG", default_value = "info")]
    log: String,
}

pub async fn run(args: RunnerArgs) -> anyhow::Result<()> {
    crate::init_logging(&args.log)?;
    let spec = read_function(&args.function_dir)?;
    skython_runner::install_python_files(&args.runtime_dir).with_context(|| {
        format!(
            "writing the runtime's Python files to {}",
            args.runtime_dir.display()
        )
    })?;
    let zygote = Arc::new(Zygote::new(RuntimeConfig {
        python: args.python.clone(),
        python_path: args.runtime_dir.clone(),
        preload: args.preload.clone(),
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
    let pod = RunnerPod::new(zygote, &spec, args.limits.limits()).await?;

    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(%addr, function = %format!("{}/{}", spec.owner, spec.endpoint), "serving");
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
        crate::shutdown_signal(),
        Duration::from_secs(10),
    )
    .await?;
    Ok(())
}
