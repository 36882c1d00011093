//! The server loop's shutdown over real TCP: the lame-duck period that keeps a gateway behind a
//! Kubernetes Service from cutting calls while the Service stops sending it new ones.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use skython_gateway::serve::{ClientTimeouts, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One `GET /` on `conn`; the answer's head and body as text, up to the end of the body.
async fn get_root(conn: &mut TcpStream) -> String {
    conn.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"ok") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).to_lowercase()
}

#[tokio::test]
async fn a_stopping_server_answers_through_its_lame_duck_period_closing_each_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Router::new().route("/", get(|| async { "ok" })),
        ClientTimeouts::default(),
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
        Duration::from_secs(1),
    ));
    let mut kept = TcpStream::connect(addr).await.unwrap();
    assert!(!get_root(&mut kept).await.contains("connection: close"));

    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A keep-alive client's next call is answered, and told the connection ends with it.
    assert!(get_root(&mut kept).await.contains("connection: close"));
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "the server closed the connection after the answer"
    );
    // A client the load balancer still sends here is served too.
    let mut late = TcpStream::connect(addr).await.unwrap();
    assert!(get_root(&mut late).await.contains("connection: close"));

    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops after its lame-duck period and the drain")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}
