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
