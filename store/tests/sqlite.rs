//! The conformance suite on the embedded SQLite backend.

#[macro_use]
mod conformance;

use std::sync::Arc;

use skython_store::SqliteStore;

async fn in_memory() -> Arc<dyn skython_store::Store> {
    Arc::new(SqliteStore::open_in_memory().unwrap())
}

conformance_suite!(in_memory());
