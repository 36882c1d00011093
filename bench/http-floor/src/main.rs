//! The benchmarks' transport floor: an HTTP/1.1 server that answers every request with the same
//! tiny JSON body and does nothing else (no routing, no JSON, no function). What it costs at
//! concurrency 1 is what any server pays on this machine for loopback TCP and the wake-ups of
//! the load generator and of itself, so `make bench` can show how much of each contender's
//! latency is the machine's and how much is the contender's own.
//!
//! A blocking thread per connection: at concurrency 1 that is one `read` and one `write` per
//! request, the fewest system calls a server can make.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about = "An HTTP/1.1 responder that answers every request with `5` (a benchmark floor)")]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "HTTP_FLOOR_ADDR", default_value = "127.0.0.1:8099")]
    addr: String,
}

const ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1\r\n\r\n5";
/// The most of one request (head and body) it buffers; the benchmarks send a few hundred bytes.
const MAX_REQUEST: usize = 64 * 1024;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let listener =
        TcpListener::bind(&config.addr).with_context(|| format!("binding {}", config.addr))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || serve(conn));
    }
    Ok(())
}

/// Answers the requests of one connection until the client closes it or sends something that is
/// not an HTTP/1.1 request with a `content-length` body (or none) of at most `MAX_REQUEST` bytes.
fn serve(mut conn: TcpStream) {
    if conn.set_nodelay(true).is_err() {
        return;
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Answer every whole request buffered (a client may pipeline), then read more.
        while let Some(len) = request_len(&buf) {
            match len {
                Ok(len) => {
                    buf.drain(..len);
                    if conn.write_all(ANSWER).is_err() {
                        return;
                    }
                }
                Err(()) => return refuse(&mut conn, "400 Bad Request"),
            }
        }
        if buf.len() > MAX_REQUEST {
            return refuse(&mut conn, "413 Content Too Large");
        }
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Answers a request it will not take with `status` and closes the connection.
fn refuse(conn: &mut TcpStream, status: &str) {
    let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    // The connection closes either way; a client that left cannot be told.
    let _ = conn.write_all(head.as_bytes());
}

/// The length of the first request in `buf` (head and body) once it is all there; `Err` for a
/// head this server does not take (chunked bodies, a bad `content-length`).
fn request_len(buf: &[u8]) -> Option<Result<usize, ()>> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut body = 0;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Some(Err(()));
        }
        if name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse() {
                Ok(n) => body = n,
                Err(_) => return Some(Err(())),
            }
        }
    }
    let total = head_end + body;
    (buf.len() >= total).then_some(Ok(total))
}

#[cfg(test)]
mod tests {
    use super::request_len;

    #[test]
    fn a_request_is_whole_once_its_body_is_there() {
        let req = b"POST /add HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"a\":2,\"b\":3}";
        assert_eq!(request_len(req), Some(Ok(req.len())));
        assert_eq!(request_len(&req[..req.len() - 1]), None);
        assert_eq!(request_len(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(request_len(b"GET / HTTP/1.1\r\n\r\nGET"), Some(Ok(18)));
    }

    #[test]
    fn heads_it_does_not_take_are_refused() {
        assert_eq!(
            request_len(b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n"),
            Some(Err(()))
        );
        assert_eq!(
            request_len(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some(Err(()))
        );
    }
}
