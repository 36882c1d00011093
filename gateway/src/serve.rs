//! The HTTP server loop, with the limits `axum::serve` lacks: a client gets a bounded time to
//! send its request head (slowloris) and its body, and shutdown lets requests in flight finish,
//! after an optional lame-duck period in which it serves on but closes each connection after its
//! answer (behind a load balancer that is still removing this server, clients then reconnect to
//! another one instead of sending on a connection that is about to close).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Serves `app` until `shutdown` resolves, then for `lame_duck` more with `Connection: close`
/// on every HTTP/1 answer, then waits up to `drain` for open requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: ClientTimeouts,
    shutdown: impl std::future::Future<Output = ()>,
    lame_duck: Duration,
    drain: Duration,
) -> std::io::Result<()> {
    let closing = Arc::new(AtomicBool::new(false));
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        timeouts.body,
    ));
    // Only servers with a lame-duck period pay for the check on every answer (runner pods and
    // `skython up` have none).
    let app = if lame_duck.is_zero() {
        app
    } else {
        app.layer(axum::middleware::from_fn({
            let closing = closing.clone();
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let closing = closing.load(Ordering::Relaxed);
                // HTTP/2 has no Connection header (its connections end with GOAWAY).
                let http1 = req.version() <= axum::http::Version::HTTP_11;
                async move {
                    let mut res = next.run(req).await;
                    if closing && http1 {
                        res.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                    }
                    res
                }
            }
        }))
    };
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.head);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let accept = |accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>| {
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                return false;
            }
        };
        let _ = stream.set_nodelay(true);
        // The peer's address, for what is limited per client (login attempts).
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
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
        true
    };
    tokio::pin!(shutdown);
    let lame_duck_over = tokio::time::sleep(Duration::MAX);
    tokio::pin!(lame_duck_over);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if !accept(accepted) {
                    // Out of descriptors, for instance: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            () = &mut shutdown, if !closing.load(Ordering::Relaxed) => {
                if lame_duck.is_zero() {
                    break;
                }
                tracing::info!("serving {lame_duck:?} more, closing each connection after its answer");
                closing.store(true, Ordering::Relaxed);
                lame_duck_over.as_mut().reset(tokio::time::Instant::now() + lame_duck);
            }
            () = &mut lame_duck_over => break,
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
