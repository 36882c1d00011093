//! The conformance suite on the embedded SQLite backend.

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
