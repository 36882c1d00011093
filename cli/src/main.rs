//! `skython`: one binary for the server (`up`) and the client commands.

mod client;
mod gateway;
mod operator;
mod people;
mod runner;
mod store;
mod up;

use clap::{Parser, Subcommand};

// Every call allocates a little (request, frames, response) on a few threads; mimalloc's
// thread-local pages cost less per allocation than glibc's arenas (≈ 13 % of the gateway's CPU
// went to malloc/free under load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "skython",
    version,
    about = "Plain Python functions as HTTP endpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start Skython on this machine: gateway, Python runtime and embedded store.
    Up(up::UpArgs),
    /// Run the gateway on Kubernetes: SkyFunctions are the functions, runner pods serve them.
    Gateway(Box<gateway::GatewayArgs>),
    /// Serve one function in a runner pod (what the operator's Deployments run), or wait for one
    /// as a warm pool pod (--pool).
    Runner(runner::RunnerArgs),
    /// Run the SkyFunction operator against a Kubernetes cluster.
    Operator(operator::OperatorArgs),
    /// Deploy (or update) a Python file as an endpoint.
    Deploy(client::DeployArgs),
    /// Call an endpoint with JSON arguments.
    Invoke(client::InvokeArgs),
    /// Delete a function.
    Rm(client::RmArgs),
    /// Show a function's recent logs.
    Logs(client::LogsArgs),
    /// List functions.
    Ls(client::LsArgs),
    /// Log in (with a password, or a token) and remember the server and token.
    Login(people::LoginArgs),
    /// Create an account on the server and remember its token.
    Signup(people::SignupArgs),
    /// Search the public functions (the skybox).
    Search(people::SearchArgs),
    /// Copy a function into your account.
    Clone(people::CloneArgs),
    /// API keys that call your functions: create, ls, show, revoke.
    Keys(people::KeysArgs),
    /// Your personal access tokens: create, ls, revoke.
    Tokens(people::TokensArgs),
    /// A function's versions (one per deploy), or one version's source.
    Versions(people::VersionsArgs),
    /// Run an earlier version's code again (deployed as a new version).
    Rollback(people::RollbackArgs),
    /// Copy a store into another (e.g. a one-machine SQLite file into a cluster's MongoDB).
    Store(store::StoreArgs),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// (internal) The sandbox's staging helper: see runner/src/sandbox.rs.
    #[command(hide = true)]
    SandboxExec(SandboxExecArgs),
    /// Print the SkyFunction CustomResourceDefinition (YAML).
    Crdgen,
}

/// Logs to stderr with a tracing filter such as `info` or `skython=debug`.
fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("--log {filter:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, then gives work in flight 10 s before the process exits.
pub async fn shutdown_signal() {
    terminated().await;
    exit_when_busy_after_10_s();
}

/// Resolves on SIGTERM or SIGINT received from now on: the handlers are installed at once, not
/// when the future is first polled. A container's first process has no default action for
/// SIGTERM (the kernel drops it), so one that is still starting when its pod is deleted would
/// otherwise hold the kubelet for the pod's whole grace period.
pub fn terminated() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    Box::pin(async move {
        tokio::select! { () = recv(term.as_mut()) => {}, () = recv(int.as_mut()) => {} }
    })
}

/// The next signal of `s`; never without one.
async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Gives work in flight 10 s, then exits the process.
pub fn exit_when_busy_after_10_s() {
    exit_when_busy_after(std::time::Duration::from_secs(10));
}

/// Gives work in flight `grace`, then exits the process.
pub fn exit_when_busy_after(grace: std::time::Duration) {
    tracing::info!("shutting down; waiting up to {grace:?} for work in flight");
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        tracing::warn!("still busy after {grace:?}; exiting");
        std::process::exit(0);
    });
}

#[derive(clap::Args)]
struct SandboxExecArgs {
    #[arg(long)]
    stage: std::path::PathBuf,
    #[arg(long)]
    uid: u32,
    #[arg(long)]
    gid: u32,
    /// A directory to stage, read-only, at STAGE/<its index>.
    #[arg(long = "bind")]
    binds: Vec<std::path::PathBuf>,
    /// The command (bwrap …).
    #[arg(last = true, required = true)]
    command: Vec<std::ffi::OsString>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::SandboxExec(a) = &cli.command {
        // Before any thread exists: it changes this process's mounts and ids, then execs.
        let err =
            skython_runner::sandbox::exec_staged(&a.stage, &a.binds, a.uid, a.gid, &a.command);
        eprintln!("error: {err}");
        return std::process::ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        match cli.command {
            Command::Up(a) => up::run(a).await,
            Command::Gateway(a) => gateway::run(*a).await,
            Command::Runner(a) => runner::run(a).await,
            Command::Operator(a) => operator::run(a).await,
            Command::Deploy(a) => client::deploy(a).await,
            Command::Invoke(a) => client::invoke(a).await,
            Command::Rm(a) => client::rm(a).await,
            Command::Logs(a) => client::logs(a).await,
            Command::Ls(a) => client::ls(a).await,
            Command::Login(a) => people::login(a).await,
            Command::Signup(a) => people::signup(a).await,
            Command::Search(a) => people::search(a).await,
            Command::Clone(a) => people::clone(a).await,
            Command::Keys(a) => people::keys(a).await,
            Command::Tokens(a) => people::tokens(a).await,
            Command::Versions(a) => people::versions(a).await,
            Command::Rollback(a) => people::rollback(a).await,
            Command::Store(a) => store::run(a).await,
            Command::Crdgen => {
                print!("{}", skython_crds::crd_yaml()?);
                Ok(())
            }
            Command::SandboxExec(_) => unreachable!("handled before the runtime starts"),
            Command::Openapi => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&skython_gateway::openapi::document())?
                );
                Ok(())
            }
        }
    });
    // Without waiting for blocking threads: one reads a zygote's stderr, which lasts as long
    // as the zygote, and a pod must stop once its calls are done, not at its grace period.
    rt.shutdown_background();
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
