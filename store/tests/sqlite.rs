//! The conformance suite on the embedded SQLite backend: in memory (every read through the
//! writer) and on a file (reads on their own connections, beside the writer's batches).

#[macro_use]
mod conformance;

use std::sync::Arc;

use skython_store::SqliteStore;

async fn in_memory() -> Arc<dyn skython_store::Store> {
    Arc::new(SqliteStore::open_in_memory().unwrap())
}

conformance_suite!(in_memory());

#[tokio::test]
async fn copy_between_two_sqlite_stores() {
    conformance::copy_moves_everything_and_repeating_it_adds_nothing(
        in_memory().await,
        in_memory().await,
    )
    .await;
}

mod on_a_file {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use super::*;

    /// A database file of its own. The suite only hands stores on, so nothing removes the file
    /// when a test ends: this run's files live in one scratch directory that the next run
    /// empties first.
    fn fresh_file() -> PathBuf {
        static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
        let scratch = SCRATCH.get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sqlite-conformance");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        });
        tempfile::tempdir_in(scratch)
            .unwrap()
            .keep()
            .join("skython.db")
    }

    async fn on_a_file() -> Arc<dyn skython_store::Store> {
        Arc::new(SqliteStore::open(&fresh_file()).unwrap())
    }

    conformance_suite!(on_a_file());

    /// Two stores on one file, as two processes would open it: each has its own writer, so
    /// only SQLite's locking keeps their writes apart.
    fn two_processes() -> [Arc<dyn skython_store::Store>; 2] {
        let path = fresh_file();
        [
            Arc::new(SqliteStore::open(&path).unwrap()),
            Arc::new(SqliteStore::open(&path).unwrap()),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_of_two_processes_cannot_pass_the_quota_together() {
        conformance::concurrent_writers_cannot_pass_the_quota_together(two_processes()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn increments_from_two_processes_all_count() {
        conformance::concurrent_increments_all_count(two_processes()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_if_race_between_two_processes_has_exactly_one_winner_per_round() {
        conformance::a_set_if_race_has_exactly_one_winner_per_round(two_processes()).await;
    }
}

/// The ordered writes the gateway's write-behind uses: queued writes wait for a flush, then
/// commit in queue order, each hook before its caller's answer, and a chain stops at its first
/// refused write.
mod ordered_writes {
    use std::sync::Mutex;
    use std::time::Duration;

    use skython_store::{
        QueuedWrite, StateQuota, StateScope, StateStore, StateWrite, StoreError, WriteChain,
        Written,
    };

    use super::*;

    fn scope() -> StateScope {
        StateScope {
            owner: "alice".into(),
            function: "f".into(),
        }
    }

    fn write(key: &str, value: &str, chain: Option<&WriteChain>) -> QueuedWrite {
        QueuedWrite {
            scope: scope(),
            key: key.into(),
            write: StateWrite::Set {
                value: value.into(),
            },
            quota: StateQuota {
                max_keys: 2,
                max_bytes: 1 << 20,
            },
            chain: chain.cloned(),
            on_commit: None,
        }
    }

    #[tokio::test]
    async fn queued_writes_wait_for_a_flush_then_apply_in_queue_order() {
        let store = SqliteStore::open_in_memory().unwrap();
        let ordered = store.ordered_writes().expect("SQLite orders its writes");
        let mut answers: Vec<_> = ["1", "2", "3"]
            .into_iter()
            .map(|v| ordered.queue_state_write(write("n", v, None)))
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            answers.iter_mut().all(|a| a.try_recv().is_err()),
            "nothing ran"
        );
        assert_eq!(store.state_get(&scope(), "n").await.unwrap(), None);
        ordered.flush_state_writes();
        for a in answers {
            assert!(matches!(a.await.unwrap(), Ok(Written::Stored)));
        }
        assert_eq!(
            store.state_get(&scope(), "n").await.unwrap().as_deref(),
            Some("3")
        );
    }

    #[tokio::test]
    async fn a_hook_runs_before_its_caller_hears_and_a_chain_stops_at_a_refusal() {
        let store = SqliteStore::open_in_memory().unwrap();
        let ordered = store.ordered_writes().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let chain = WriteChain::default();
        let answers: Vec<_> = ["a", "b", "c", "a"]
            .into_iter()
            .map(|k| {
                let seen = seen.clone();
                let mut w = write(k, "1", Some(&chain));
                w.on_commit = Some(Box::new(move |r: &skython_store::Result<Written>| {
                    seen.lock().unwrap().push((k, r.is_ok()));
                }));
                ordered.queue_state_write(w)
            })
            .collect();
        ordered.flush_state_writes();
        let mut results = Vec::new();
        for a in answers {
            let r = a.await.unwrap();
            results.push(r);
        }
        // Two keys at most: "c" is refused, and the chain refuses "a" after it too.
        assert!(results[0].is_ok() && results[1].is_ok());
        assert!(matches!(results[2], Err(StoreError::QuotaExceeded(_))));
        assert!(matches!(results[3], Err(StoreError::Aborted(_))));
        assert_eq!(
            *seen.lock().unwrap(),
            [("a", true), ("b", true), ("c", false), ("a", false)]
        );
    }
}
