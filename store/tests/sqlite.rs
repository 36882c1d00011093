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

mod on_a_file {
    use super::*;

    /// A store on a file of its own, left in cargo's scratch directory for tests (the suite
    /// only hands the store on, so nothing could remove the file when the test ends).
    async fn on_a_file() -> Arc<dyn skython_store::Store> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        Arc::new(SqliteStore::open(&dir.join("skython.db")).unwrap())
    }

    conformance_suite!(on_a_file());
}
