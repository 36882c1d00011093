//! The HTTP server loop, with the limits `axum::serve` lacks: a client gets a bounded time to
//! send its request head (slowloris) and its body, and shutdown lets requests in flight finish.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long clients may take.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// From connecting (or the previous response) to the end of the request head.
    pub head: Duration,
    /// To send the whole body (408 after it).
    pub body: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            head: Duration::from_secs(10),
            body: Duration::from_secs(30),
        }
    }
}

/// How long our HTTP clients (gateway → pods, pods → gateway) keep an idle connection: well
/// below the servers' default `head` timeout (10 s), after which a server closes an idle
/// keep-alive connection. A client that reused a connection the server had just closed would
/// see the request fail, and a call that may have reached the function is never sent twice.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(4);

/// Serves `app` until `shutdown` resolves, then waits up to `drain` for open requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: ClientTimeouts,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) -> std::io::Result<()> {
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        timeouts.body,
    ));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.head);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, for instance: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // The peer's address, for what is limited per client (login attempts).
                let service = TowerToHyperService::new(app.clone().map_request(
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                        req
                    },
                ));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after {drain:?}; closing them");
    }
    Ok(())
}
