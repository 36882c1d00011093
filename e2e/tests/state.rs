//! State that concurrent calls share, through real workers and the real store: `incr` and
//! `store(..., expect=)` are atomic. Each behaviour is a function of the server's extra
//! arguments, so the same body runs against every store backend (`--store ...`).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use skython_e2e::mongo::fresh_database_url;
use skython_e2e::{Skython, eventually};

const CLIENTS: usize = 4;

/// Embedded SQLite in the server's data directory: no extra arguments.
const SQLITE: &[&str] = &[];

#[test]
fn concurrent_incr_counts_every_call_once_on_sqlite() {
    concurrent_incr_counts_every_call_once(SQLITE);
}

#[test]
fn compare_and_set_has_exactly_one_winner_per_round_on_sqlite() {
    compare_and_set_has_exactly_one_winner_per_round(SQLITE);
}

#[test]
fn a_compare_and_set_retry_loop_loses_no_update_on_sqlite() {
    a_compare_and_set_retry_loop_loses_no_update(SQLITE);
}

/// A fresh database on the MongoDB test server (SecantusDB, which `make test` starts).
fn on_mongodb(test: fn(&[&str])) {
    let url = fresh_database_url();
    test(&["--store", &url]);
}

#[test]
fn concurrent_incr_counts_every_call_once_on_mongodb() {
    on_mongodb(concurrent_incr_counts_every_call_once);
}

#[test]
fn compare_and_set_has_exactly_one_winner_per_round_on_mongodb() {
    on_mongodb(compare_and_set_has_exactly_one_winner_per_round);
}

#[test]
fn a_compare_and_set_retry_loop_loses_no_update_on_mongodb() {
    on_mongodb(a_compare_and_set_retry_loop_loses_no_update);
}

/// `CLIENTS` threads each make `calls` calls with the arguments `args(client, i)`; the answers
/// per client, in order. Every call must answer 200.
fn from_clients(
    s: &Skython,
    function: &str,
    calls: usize,
    args: impl Fn(usize, usize) -> Value + Sync,
) -> Vec<Vec<Value>> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let args = &args;
                scope.spawn(move || {
                    (0..calls)
                        .map(|i| {
                            let (status, body) = s.call(function, args(client, i));
                            assert_eq!(status, 200, "call {i} of client {client}: {body}");
                            body
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

/// 4 clients × 500 calls of an `incr` counter (the lost-update case): the count ends at
/// exactly 2,000, and each call got its own value.
fn concurrent_incr_counts_every_call_once(store_args: &[&str]) {
    let s = Skython::start(store_args);
    let source = "from skython import incr, load\n\n\
                  def main(peek: bool = False):\n    \
                      return load('visits') if peek else incr('visits')\n";
    s.deploy_ok("visits", source, json!({"concurrency": CLIENTS}));
    let answers = from_clients(&s, "admin/visits", 500, |_, _| json!({}));
    let mut seen: Vec<u64> = answers
        .into_iter()
        .flatten()
        .map(|v| v.as_u64().expect("incr answers a count"))
        .collect();
    seen.sort_unstable();
    let total = (CLIENTS * 500) as u64;
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "every value from 1 to {total} answered exactly once"
    );
    assert_eq!(
        s.call("admin/visits", json!({"peek": true})),
        (200, json!(total))
    );
}

/// Per round, every client claims the same fresh key with `store(key, me, expect=None)` at
/// once: exactly one is told it won, and the key holds the winner.
fn compare_and_set_has_exactly_one_winner_per_round(store_args: &[&str]) {
    let s = Skython::start(store_args);
    let source = "from skython import load, store\n\n\
                  def main(round: int, caller: int):\n    \
                      key = f'round-{round}'\n    \
                      return {'won': store(key, caller, expect=None), 'holder': load(key)}\n";
    s.deploy_ok("claim", source, json!({"concurrency": CLIENTS}));
    for round in 0..50 {
        // One thread per client and round: the claims of a round race each other.
        let answers = from_clients(
            &s,
            "admin/claim",
            1,
            |client, _| json!({"round": round, "caller": client}),
        );
        let winners: Vec<usize> = (0..CLIENTS)
            .filter(|&c| answers[c][0]["won"] == json!(true))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        for (client, answer) in answers.iter().enumerate() {
            assert_eq!(
                answer[0]["holder"],
                json!(winners[0]),
                "round {round}, client {client}: the winner's value stayed"
            );
        }
    }
}

/// A counter written as "load, then store expecting what was loaded, until it wins" counts every
/// call: a compare-and-set on a value (not only on a missing key) never lets two callers win
/// over the same value. (It expects `load`'s `None`, not a default: `expect=0` would not match
/// the missing key.) Like any such loop it backs off, with jitter, after a lost round: without,
/// the same caller can lose round after round on a busy machine (one CI run saw a call lose for
/// its whole 30 s timeout on the MongoDB test server).
fn a_compare_and_set_retry_loop_loses_no_update(store_args: &[&str]) {
    let s = Skython::start(store_args);
    let source = "import random, time\n\
                  from skython import load, store\n\n\
                  def main():\n    \
                      lost = 0\n    \
                      while True:\n        \
                          n = load('n')\n        \
                          if store('n', (n or 0) + 1, expect=n):\n            \
                              return (n or 0) + 1\n        \
                          lost += 1\n        \
                          time.sleep(random.random() * min(0.05, 0.001 * 2 ** lost))\n";
    s.deploy_ok(
        "cas-counter",
        source,
        json!({"concurrency": CLIENTS, "timeoutSeconds": 120}),
    );
    let answers = from_clients(&s, "admin/cas-counter", 100, |_, _| json!({}));
    let mut seen: Vec<u64> = answers
        .into_iter()
        .flatten()
        .map(|v| v.as_u64().expect("a count"))
        .collect();
    seen.sort_unstable();
    let total = (CLIENTS * 100) as u64;
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}

#[test]
fn a_call_that_lets_state_unavailable_escape_answers_503_and_keeps_its_traceback() {
    let s = Skython::start(&[]);
    // The library raises StateUnavailable when the gateway says the storage cannot be reached;
    // the runtime treats the one the function raises itself the same way.
    let source = "import skython\n\n\
                  def main():\n    \
                      raise skython.StateUnavailable('the storage is down')\n";
    s.deploy_ok("stateless", source, json!({}));
    let (status, body) = s.call("admin/stateless", json!({}));
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["error"],
        json!({
            "code": "state_unavailable",
            "type": "StateUnavailable",
            "message": "the call could not use its state: the storage is down; try again later",
        })
    );
    let mut recorded = Value::Null;
    let found = eventually(Duration::from_secs(10), || {
        let (_, inv) = s.api(
            Method::GET,
            "/functions/admin/stateless/invocations?limit=1",
            None,
        );
        recorded = inv["items"][0].clone();
        !recorded.is_null()
    });
    assert!(found, "the call was recorded");
    assert_eq!(recorded["status"], 503);
    assert_eq!(recorded["outcome"], "state_unavailable");
    let logs = recorded["logs"].as_str().unwrap_or_default();
    assert!(
        logs.contains("Traceback") && logs.contains("raise skython.StateUnavailable"),
        "{logs}"
    );
}
