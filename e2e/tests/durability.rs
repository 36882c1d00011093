//! What an acknowledged `store` survives: the server killed with SIGKILL in the middle of a
//! stream of writes, then started again on the same data directory.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skython_e2e::Skython;

/// With `n`, stores it under the client's own key; without, loads that key.
const COUNTERS: &str = "from skython import store, load\n\n\
def main(client: str, n: int = 0):\n    if n:\n        store(client, n)\n        return n\n    return load(client)\n";

const CLIENTS: usize = 8;

#[test]
fn kill_9_mid_stream_loses_no_acknowledged_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = Skython::start_in(dir.path(), &[]);
    s.deploy_ok("counters", COUNTERS, json!({}));
    let url = format!("{}/fn/admin/counters", s.url);
    // The last n each client got a 200 for: stored and acknowledged.
    let acked: Vec<AtomicU64> = (0..CLIENTS).map(|_| AtomicU64::new(0)).collect();
    let refused = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (url, acked) = (&url, &acked[i]);
                scope.spawn(move || {
                    let http = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()
                        .unwrap();
                    for n in 1.. {
                        let body = json!({"client": format!("c{i}"), "n": n}).to_string();
                        // Once the server is gone, requests fail: the stream ends.
                        let Ok(resp) = http.post(url).body(body).send() else {
                            return None;
                        };
                        let status = resp.status().as_u16();
                        let Ok(answer) = resp.json::<Value>() else {
                            return None;
                        };
                        if status != 200 || answer != json!(n) {
                            return Some(format!("c{i} n={n}: {status} {answer}"));
                        }
                        acked.store(n, Ordering::SeqCst);
                    }
                    None
                })
            })
            .collect();
        // Every client well into its stream, then SIGKILL while their calls are in flight.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.iter().any(|a| a.load(Ordering::SeqCst) < 50) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let killed = Command::new("kill")
            .args(["-KILL", &s.pid().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        clients
            .into_iter()
            .filter_map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert!(
        refused.is_empty(),
        "calls failed before the kill: {refused:?}"
    );
    drop(s);

    let s = Skython::start_in(dir.path(), &[]);
    for (i, acked) in acked.iter().enumerate() {
        let acked = acked.load(Ordering::SeqCst);
        assert!(acked >= 50, "c{i} got only {acked} answers before the kill");
        let (status, loaded) = s.call("admin/counters", json!({"client": format!("c{i}")}));
        assert_eq!(status, 200, "{loaded}");
        // The write in flight at the kill may have committed without its answer getting out.
        assert!(
            loaded == json!(acked) || loaded == json!(acked + 1),
            "c{i}: the last acknowledged store was {acked}, the restarted server loads {loaded}"
        );
    }
}
