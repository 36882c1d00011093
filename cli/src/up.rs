//! `skython up`: the local install: gateway, zygote and SQLite store in one process.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nix::fcntl::{Flock, FlockArg};
use skython_crds::Runtime;
use skython_gateway::auth::SignupMode;
use skython_gateway::serve::{ClientTimeouts, serve};
use skython_gateway::{AdminToken, AppState, GatewayConfig, Limits, Recorder};
use skython_runner::cgroup::Cgroups;
use skython_runner::egress::{Cidr, EgressProxy};
use skython_runner::sandbox::{BwrapConfig, DropTo};
use skython_runner::{RuntimeConfig, Sandbox, Zygote};
use skython_store::{StateQuota, Store, StoreError, StoreLocation};

/// Limits that the gateway and the runner pod apply to calls.
#[derive(Args, Debug)]
pub struct LimitArgs {
    /// Largest request body in bytes.
    #[arg(long, env = "SKYTHON_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Largest JSON return value in bytes.
    #[arg(long, env = "SKYTHON_MAX_RESULT_BYTES", default_value_t = Limits::default().max_result_bytes)]
    max_result_bytes: usize,
    /// Largest value one store() may write, in bytes.
    #[arg(long, env = "SKYTHON_MAX_STATE_VALUE_BYTES", default_value_t = Limits::default().max_state_value_bytes)]
    max_state_value_bytes: usize,
    /// Calls that may wait for a busy function's worker before new ones get 429.
    #[arg(long, env = "SKYTHON_QUEUE_LIMIT", default_value_t = Limits::default().queue_limit)]
    queue_limit: usize,
    /// Seconds a client may take to send a request's head (slow clients are cut off).
    #[arg(long, env = "SKYTHON_HEADER_TIMEOUT_SECS", default_value_t = ClientTimeouts::default().head.as_secs())]
    header_timeout_secs: u64,
    /// Seconds a client may take to send a request's body (408 after).
    #[arg(long, env = "SKYTHON_BODY_TIMEOUT_SECS", default_value_t = ClientTimeouts::default().body.as_secs())]
    body_timeout_secs: u64,
}

impl LimitArgs {
    pub fn client_timeouts(&self) -> ClientTimeouts {
        ClientTimeouts {
            head: Duration::from_secs(self.header_timeout_secs),
            body: Duration::from_secs(self.body_timeout_secs),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_result_bytes: self.max_result_bytes,
            max_state_value_bytes: self.max_state_value_bytes,
            queue_limit: self.queue_limit,
            ..Limits::default()
        }
    }
}

/// How functions are confined (see `runner/src/sandbox.rs`).
#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Run functions without the sandbox. Only for code you trust: it can then read what the
    /// server can read and reach what it can reach.
    #[arg(long, env = "SKYTHON_INSECURE_NO_SANDBOX", value_parser = clap::builder::BoolishValueParser::new())]
    insecure_no_sandbox: bool,
    /// The bubblewrap binary (Debian package `bubblewrap`).
    #[arg(long, env = "SKYTHON_BWRAP", default_value = "bwrap")]
    bwrap: PathBuf,
    /// When started as root: the host uid (and gid) that functions run as.
    #[arg(long, env = "SKYTHON_SANDBOX_UID", default_value_t = 10001)]
    sandbox_uid: u32,
    /// Size of each worker's private /tmp, in MiB (counted in its worker's memory cgroup).
    #[arg(long, env = "SKYTHON_SANDBOX_TMP_MIB", default_value_t = 64)]
    sandbox_tmp_mib: u64,
    /// Size of each worker's private /dev/shm, in MiB (counted in its function's memory cgroup).
    #[arg(long, env = "SKYTHON_SANDBOX_SHM_MIB", default_value_t = 64)]
    sandbox_shm_mib: u64,
    /// Address ranges that functions with `network: internet` may reach although they are not
    /// public (e.g. an internal API), comma-separated CIDRs. Default: none.
    #[arg(long, env = "SKYTHON_EGRESS_ALLOW", value_delimiter = ',')]
    egress_allow: Vec<Cidr>,
    /// Processes and threads one function's workers may have together (with cgroups).
    #[arg(long, env = "SKYTHON_FUNCTION_MAX_PROCS", default_value_t = Limits::default().max_procs_per_function)]
    function_max_procs: u64,
    /// When started as root: processes and threads all functions may have together.
    #[arg(long, env = "SKYTHON_SANDBOX_MAX_PROCS", default_value_t = 1024)]
    sandbox_max_procs: u32,
}

impl SandboxArgs {
    fn sandbox(&self) -> anyhow::Result<Sandbox> {
        if self.insecure_no_sandbox {
            eprintln!(
                "warning: --insecure-no-sandbox: functions run unconfined, with this server's rights"
            );
            return Ok(Sandbox::None);
        }
        let bwrap = find_program(&self.bwrap).with_context(|| {
            format!(
                "functions run in a sandbox made by bubblewrap, and {} was not found: install it \
                 (`apt-get install bubblewrap`), or pass --bwrap PATH; only for trusted code, \
                 start with --insecure-no-sandbox",
                self.bwrap.display()
            )
        })?;
        let drop_to = if nix::unistd::geteuid().is_root() {
            Some(DropTo {
                uid: self.sandbox_uid,
                gid: self.sandbox_uid,
                helper: std::env::current_exe().context("locating this binary")?,
                stage_dir: PathBuf::from("/run/skython/stage"),
                max_procs: self.sandbox_max_procs,
            })
        } else {
            None
        };
        Ok(Sandbox::Bubblewrap(BwrapConfig {
            bwrap,
            drop_to,
            tmp_bytes: self.sandbox_tmp_mib << 20,
            shm_bytes: self.sandbox_shm_mib << 20,
        }))
    }
}

/// `name` as given if it has a slash, else the first match on PATH.
fn find_program(name: &std::path::Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
}

/// What `skython up` and `skython gateway` share: the HTTP server, the store of users, tokens
/// and invocations, and this machine's Python runtimes (which run functions locally, and
/// inspect sources and run drafts in both).
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "SKYTHON_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Where the embedded store (skython.db), the admin token and the runtime files live.
    #[arg(long, env = "SKYTHON_DATA_DIR", default_value = ".skython")]
    data_dir: PathBuf,
    /// Where users, functions, state and invocations live: sqlite://PATH, or a MongoDB URI
    /// (mongodb://HOST/DATABASE; in production a replica set, e.g.
    /// mongodb://db1,db2,db3/skython?replicaSet=rs0&tls=true, with credentials in the URI).
    /// Several gateways share one MongoDB. Default: sqlite://DATA_DIR/skython.db.
    #[arg(long, env = "SKYTHON_STORE", hide_env_values = true, value_parser = crate::store::location)]
    store: Option<StoreLocation>,
    /// Python of the standard runtime (a venv with numpy, pandas, scipy, requests, bs4).
    /// Default: ~/.cache/skython/venv/bin/python if present (`make venv`), else python3.
    #[arg(long, env = "SKYTHON_PYTHON")]
    python: Option<PathBuf>,
    /// Python of the full runtime (adds tensorflow and keras; `make venv-full`). Unset: no full runtime.
    #[arg(long, env = "SKYTHON_PYTHON_FULL")]
    python_full: Option<PathBuf>,
    /// Modules the zygotes import before forking workers, comma-separated.
    /// Default: numpy,pandas,scipy,requests,bs4 (the full runtime adds tensorflow,keras).
    /// Empty: none (slower cold starts).
    #[arg(long, env = "SKYTHON_PRELOAD")]
    preload: Option<String>,
    /// Base URL that clients use (for the `url` of functions). Default: http://ADDR.
    #[arg(long, env = "SKYTHON_PUBLIC_URL")]
    public_url: Option<String>,
    /// Sets the admin's token instead of generating one (for automation).
    #[arg(
        long = "admin-token",
        env = "SKYTHON_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// A token that may read /metrics (for a Prometheus scraper), besides the admin's API
    /// token. Default: none, only the admin's token may.
    #[arg(long, env = "SKYTHON_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Who may create accounts (POST /api/v1/accounts): `open` (anyone), `invite` (only the
    /// admin creates them) or `closed` (nobody but the admin). Default: open for `skython up`,
    /// closed for `skython gateway`.
    #[arg(long, env = "SKYTHON_SIGNUP", value_parser = parse_signup)]
    pub signup: Option<SignupMode>,
    /// State keys one owner may keep, all their functions together.
    #[arg(long, env = "SKYTHON_STATE_MAX_KEYS_PER_OWNER", default_value_t = StateQuota::default().max_keys)]
    state_max_keys_per_owner: u64,
    /// Bytes of state values one owner may keep, all their functions together (default 100 MiB).
    #[arg(long, env = "SKYTHON_STATE_MAX_BYTES_PER_OWNER", default_value_t = StateQuota::default().max_bytes)]
    state_max_bytes_per_owner: u64,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Seconds to serve on after SIGTERM, closing each connection after its answer, while a
    /// load balancer (a Kubernetes Service) stops sending new ones; calls in flight then get
    /// 10 s more. The Helm chart sets 5.
    #[arg(long, env = "SKYTHON_SHUTDOWN_DELAY_SECS", default_value_t = 0.0)]
    shutdown_delay_secs: f64,
    /// Log filter (tracing syntax).
    #[arg(long, env = "SKYTHON_LOG", default_value = "info")]
    pub log: String,
}

/// What the full runtime's zygote imports: TensorFlow and Keras too. Their pages are then shared
/// by every worker and charged to none of them (a worker importing TensorFlow itself would pay
/// about 600 MiB and 8 s, past the default memory of a function).
pub(crate) const FULL_RUNTIME_PRELOAD: &str = "numpy,pandas,scipy,requests,bs4,tensorflow,keras";

fn default_python() -> PathBuf {
    if let Some(home) = std::env::var_os("HOME") {
        let venv = PathBuf::from(home).join(".cache/skython/venv/bin/python");
        if venv.exists() {
            return venv;
        }
    }
    PathBuf::from("python3")
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let args = args.server;
    crate::init_logging(&args.log)?;
    let p = prepare(&args, SignupMode::Open).await?;
    let _held_until_exit = p.sqlite_lock;
    let state = AppState::new(p.config, p.store, p.zygotes)?;
    println!("Skython is running at {}", p.url);
    println!("Open it in a browser to write, test, deploy and share functions.");
    let recorder = state.recorder.clone();
    serve_app(
        &args,
        p.listener,
        p.admin,
        skython_gateway::app(state),
        recorder,
    )
    .await
}

/// The parts of a server before it knows its platform.
pub struct Prepared {
    pub store: Arc<dyn Store>,
    pub admin: AdminToken,
    pub zygotes: HashMap<Runtime, Arc<Zygote>>,
    pub config: GatewayConfig,
    pub listener: tokio::net::TcpListener,
    pub url: String,
    /// This server's hold on its SQLite file, for as long as it runs.
    pub sqlite_lock: Option<Flock<File>>,
}

/// Opens the store, waiting up to a minute for a MongoDB that cannot be reached yet (a gateway
/// and its database often start together).
async fn open_store(location: &StoreLocation) -> anyhow::Result<Arc<dyn Store>> {
    const PATIENCE: Duration = Duration::from_secs(60);
    let started = std::time::Instant::now();
    loop {
        match location.open().await {
            Err(StoreError::Unavailable(why)) if started.elapsed() < PATIENCE => {
                tracing::warn!("the store at {location} cannot be reached yet ({why}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            opened => return opened.with_context(|| format!("opening the store at {location}")),
        }
    }
}

/// Opens the store, creates the admin on first start, starts the runtimes and binds the port.
fn parse_signup(s: &str) -> Result<SignupMode, String> {
    s.parse()
}

/// `default_signup`: who may sign up when `--signup` is not given.
pub async fn prepare(args: &ServerArgs, default_signup: SignupMode) -> anyhow::Result<Prepared> {
    let data_dir = args.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let location = args
        .store
        .clone()
        .unwrap_or_else(|| StoreLocation::in_data_dir(&data_dir));
    let store = open_store(&location).await?;
    let sqlite_lock = match &location {
        StoreLocation::Sqlite(path) => Some(lock_sqlite(
            path,
            "stop that one first, or give this one its own --data-dir or --store",
        )?),
        StoreLocation::MongoDb(_) => None,
    };
    let admin =
        skython_gateway::bootstrap_admin(store.as_ref(), &data_dir, args.admin_token.as_deref())
            .await
            .context("creating the admin user")?;

    let sandbox = args.sandbox.sandbox()?;
    // Sandboxes have no network; functions with `network: internet` go out through this.
    let egress = match sandbox {
        Sandbox::None => None,
        Sandbox::Bubblewrap(_) => Some(
            EgressProxy::start(&data_dir.join("egress"), args.sandbox.egress_allow.clone())
                .context("starting the egress proxy")?,
        ),
    };
    // Memory, process and CPU limits per function, where we may create control groups (as
    // root), under a group of this instance's own (groups of instances that are gone go).
    let cgroups = match (&sandbox, nix::unistd::geteuid().is_root()) {
        (Sandbox::Bubblewrap(_), true) => match Cgroups::detect("skython") {
            Ok(cg) => {
                if !cg.hierarchy().has_cpu() {
                    eprintln!("warning: no cpu cgroup controller; resources.cpu is not enforced");
                }
                tracing::info!(group = %cg.path().display(), "functions' control groups");
                Some(Arc::new(cg))
            }
            Err(why) => {
                eprintln!("warning: no cgroups for functions ({why}); they keep their rlimits");
                None
            }
        },
        _ => None,
    };
    let python_path = data_dir.join("runtime");
    skython_runner::install_python_files(&python_path)
        .context("writing the runtime's Python files")?;
    let runtime = |python: PathBuf, default_preload: Option<&str>| {
        Arc::new(Zygote::new(RuntimeConfig {
            python,
            python_path: python_path.clone(),
            preload: args
                .preload
                .clone()
                .or_else(|| default_preload.map(String::from)),
            workdir: std::env::temp_dir(),
            sandbox: sandbox.clone(),
            egress_dir: egress.as_ref().map(|e| e.dir().to_path_buf()),
        }))
    };
    let mut zygotes = HashMap::new();
    let python = args.python.clone().unwrap_or_else(default_python);
    zygotes.insert(Runtime::Standard, runtime(python.clone(), None));
    if let Some(full) = args.python_full.clone() {
        zygotes.insert(Runtime::Full, runtime(full, Some(FULL_RUNTIME_PRELOAD)));
    }
    for (rt, z) in &zygotes {
        let hello = z.start().await.with_context(|| {
            format!(
                "the {} runtime ({}) did not start{}; run `make venv` or pass --python",
                rt.as_str(),
                python.display(),
                if matches!(sandbox, Sandbox::None) {
                    ""
                } else {
                    " in its sandbox (bubblewrap says why above; machines that forbid user \
                     namespaces cannot sandbox, see --insecure-no-sandbox)"
                }
            )
        })?;
        if !hello.missing.is_empty() {
            eprintln!(
                "warning: the {} runtime lacks: {}",
                rt.as_str(),
                hello.missing.join("; ")
            );
        }
    }

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let addr = listener.local_addr()?;
    let url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let config = GatewayConfig {
        public_url: url.clone(),
        limits: Limits {
            max_procs_per_function: args.sandbox.function_max_procs,
            state_quota: StateQuota {
                max_keys: args.state_max_keys_per_owner,
                max_bytes: args.state_max_bytes_per_owner,
            },
            ..args.limits.limits()
        },
        egress,
        cgroups,
        // An empty value (`SKYTHON_METRICS_TOKEN=`) is no token, not one everybody knows.
        metrics_token: args.metrics_token.clone().filter(|t| !t.trim().is_empty()),
        // Workers may cache state only while this server is the one writer of its store.
        state_cache: sqlite_lock.is_some(),
        signup: args.signup.unwrap_or(default_signup),
        login_limits: Default::default(),
        login_failure_delay: std::time::Duration::from_millis(500),
    };
    Ok(Prepared {
        store,
        admin,
        zygotes,
        config,
        listener,
        url,
        sqlite_lock,
    })
}

/// Holds `path` for this process alone: a server's workers cache state values, which another
/// writer of the same file would make wrong. (SQLite's own locks are separate, and still guard
/// each write.) `what_to_do` ends the error when another process holds it.
pub fn lock_sqlite(path: &Path, what_to_do: &str) -> anyhow::Result<Flock<File>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "{} is in use by another Skython server ({e}): {what_to_do}",
            path.display()
        )
    })
}

/// Tells where the admin's token is, then serves `app` until SIGTERM or Ctrl-C, and writes the
/// last calls' records before returning.
pub async fn serve_app(
    args: &ServerArgs,
    listener: tokio::net::TcpListener,
    admin: AdminToken,
    app: axum::Router,
    recorder: Recorder,
) -> anyhow::Result<()> {
    match admin {
        AdminToken::Created { token, file } => {
            println!("created user admin; its API token: {token}");
            if let Some(f) = file {
                println!(
                    "(saved in {}; `export SKYTHON_TOKEN=$(cat {})`)",
                    f.display(),
                    f.display()
                );
            }
        }
        AdminToken::FromEnv => println!("admin token: from SKYTHON_ADMIN_TOKEN"),
        AdminToken::Existing { file: Some(f) } => println!("admin token: in {}", f.display()),
        AdminToken::Existing { file: None } => {
            println!("admin token: set earlier (SKYTHON_ADMIN_TOKEN)")
        }
    }
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let lame_duck = Duration::try_from_secs_f64(args.shutdown_delay_secs).with_context(|| {
        format!(
            "--shutdown-delay-secs: {} is not a duration in seconds",
            args.shutdown_delay_secs
        )
    })?;
    let drain = Duration::from_secs(10);
    let shutdown = async move {
        crate::terminated().await;
        crate::exit_when_busy_after(lame_duck + drain);
    };
    serve(
        listener,
        app,
        args.limits.client_timeouts(),
        shutdown,
        lame_duck,
        drain,
    )
    .await?;
    recorder.flush().await;
    Ok(())
}
