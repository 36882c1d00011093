//! The Kubernetes side of Skython: every `SkyFunction` becomes locked-down runner pods.
//!
//! - [`desired`]: the children of a function (ConfigMap, Deployment, Service, NetworkPolicy) as
//!   plain values;
//! - [`status`]: what the function's status says, from the source check and the Deployment;
//! - [`controller`]: the kube-runtime loop that applies the children and writes the status when
//!   it changed;
//! - [`children`]: applies a function's children (server-side apply), only those whose wanted
//!   state or live object changed since;
//! - [`leader`]: Lease-based leader election, so several replicas are safe;
//! - [`inspect`]: reads sources without running them (syntax errors with their line);
//! - [`pool`] and [`pool_manager`]: the warm pool of unspecialised runner pods that gateways
//!   claim for a function with no pod (what to create and delete, and the loop that does it).
//!
//! [`run`] wires them together; `skython operator` calls it.

#![forbid(unsafe_code)]

pub mod children;
pub mod controller;
pub mod desired;
pub mod inspect;
pub mod leader;
pub mod metrics;
pub mod pool;
pub mod pool_manager;
pub mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use kube::api::ListParams;
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use skython_crds::SkyFunction;

pub use desired::{Children, DesiredError, OperatorConfig, PoolConfig, child_name, desired};

/// Everything `skython operator` is told.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A kubeconfig file; `None`: the usual places (`$KUBECONFIG`, `~/.kube/config`, in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Watch one namespace only; `None`: all namespaces.
    pub namespace: Option<String>,
    pub desired: OperatorConfig,
    /// A Python 3 for source checks (the standard library is enough).
    pub python: PathBuf,
    /// A writable directory for the runtime's Python files.
    pub runtime_dir: PathBuf,
    pub metrics_addr: SocketAddr,
    /// `None` runs without leader election (one replica only).
    pub lease: Option<leader::LeaseConfig>,
    /// The warm pool, in `namespace`; `None`: no pool.
    pub pool: Option<PoolConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no Kubernetes configuration: {0}")]
    Config(String),
    #[error(
        "the SkyFunction CRD is not served by the cluster ({0}); install it with `skython crdgen | kubectl apply -f -`"
    )]
    MissingCrd(kube::Error),
    #[error("the Python for source checks did not start: {0}")]
    Python(skython_runner::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
    #[error(
        "the warm pool needs --namespace: its pods live in the functions' namespace, where the gateway claims them"
    )]
    PoolWithoutNamespace,
}

pub async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, RunError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| RunError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| RunError::Config(e.to_string()))
}

/// Runs the operator until `shutdown` resolves: serves metrics, waits for the lease, reconciles,
/// and hands the lease over on the way out.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let pool = match (settings.pool.clone(), settings.namespace.clone()) {
        (Some(pool), Some(namespace)) => Some((pool, namespace)),
        (Some(_), None) => return Err(RunError::PoolWithoutNamespace),
        (None, _) => None,
    };
    let client = client(settings.kubeconfig.as_ref()).await?;
    // Only where it watches: its RBAC may grant no more than that namespace.
    let functions: Api<SkyFunction> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    functions
        .list(&ListParams::default().limit(1))
        .await
        .map_err(RunError::MissingCrd)?;
    let inspector = inspect::SourceInspector::new(settings.python.clone(), settings.runtime_dir)?;
    inspector.start().await.map_err(RunError::Python)?;
    let metrics = Arc::new(metrics::OperatorMetrics::new()?);
    let listener = tokio::net::TcpListener::bind(settings.metrics_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics and health endpoints");
    tokio::spawn({
        let router = metrics::router(metrics.clone());
        async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!("metrics server: {e}");
            }
        }
    });
    metrics.ready.store(true, Ordering::Relaxed);

    let shutdown = shutdown.shared();
    let elector = settings
        .lease
        .clone()
        .map(|cfg| leader::LeaderElector::new(client.clone(), cfg));
    if let Some(e) = &elector {
        tokio::select! {
            () = e.acquire() => {}
            () = shutdown.clone() => return Ok(()),
        }
    }
    metrics.leader.set(1);
    let identity = settings
        .lease
        .as_ref()
        .map(|l| l.identity.clone())
        .unwrap_or_else(default_identity);
    let cfg = settings.desired.clone();
    let context = {
        let (client, metrics) = (client.clone(), metrics.clone());
        move |watched| {
            controller::Context::new(
                client.clone(),
                watched,
                settings.desired,
                inspector,
                metrics,
                Reporter {
                    controller: controller::MANAGER.into(),
                    instance: Some(identity),
                },
            )
        }
    };
    // Stop reconciling on shutdown, and also when the lease is lost: another replica leads then.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        let _ = stop_rx.await;
    }
    .shared();
    // The pool, like the controller, only while this replica leads.
    let pool_run = {
        let (client, metrics) = (client.clone(), metrics.clone());
        let stop = stop.clone();
        async move {
            if let Some((pool, namespace)) = pool {
                pool_manager::run(client, namespace, cfg, pool, metrics, stop).await;
            }
        }
    };
    let watchdog = {
        let shutdown = shutdown.clone();
        async move {
            match &elector {
                Some(e) => {
                    tokio::select! {
                        () = e.hold() => {}
                        () = shutdown => {}
                    }
                }
                None => shutdown.await,
            }
            let _ = stop_tx.send(());
            elector
        }
    };
    let (elector, (), ()) = tokio::join!(
        watchdog,
        controller::run(client, settings.namespace.as_deref(), context, stop),
        pool_run,
    );
    metrics.leader.set(0);
    if let Some(e) = elector {
        e.release().await;
    }
    tracing::info!("operator stopped");
    Ok(())
}

/// `<hostname>-<pid>`: unique enough for a replica that has no pod name.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "skython-operator".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests;
