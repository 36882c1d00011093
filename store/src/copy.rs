//! `skython store copy`: moves what one store holds into another (e.g. a one-machine install's
//! SQLite file into the cluster's MongoDB). Copying again is safe: users (with their password
//! hashes and credentials), functions and state values are replaced by the source's, and
//! invocations are copied only into functions that have none at the destination, so a repeated
//! copy adds no duplicates. Versions and clone origins come along; call counts only as far as
//! the copied invocations go.

use crate::{FunctionFilter, Result, StateEntry, Store, StoreError};

/// State entries read and written per round trip.
const STATE_PAGE: usize = 500;

/// What is being copied, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Users,
    Functions,
    State,
    Invocations,
}

/// Where a copy is: `done` items of `stage`, out of `total` when known in advance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub done: u64,
    pub total: Option<u64>,
}

/// How many of each were copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    pub users: u64,
    /// Tokens, keys and sessions of the users.
    pub credentials: u64,
    pub functions: u64,
    pub state_entries: u64,
    pub invocations: u64,
}

/// A function's versions (those the destination lacks) and where it was cloned from (once: the
/// origin's clone count grows only the first time). Search entries are not copied: the gateway
/// indexes every function when it starts.
async fn copy_history(from: &dyn Store, to: &dyn Store, owner: &str, endpoint: &str) -> Result<()> {
    for v in from.list_versions(owner, endpoint).await? {
        match to.record_version(owner, endpoint, &v).await {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let origin = from.function_stats(owner, endpoint).await?.cloned_from;
    if let Some((o, e)) = origin.as_deref().and_then(|o| o.split_once('/'))
        && to
            .function_stats(owner, endpoint)
            .await?
            .cloned_from
            .is_none()
    {
        to.record_clone(owner, endpoint, o, e).await?;
    }
    Ok(())
}

/// Copies users (with their password hashes, tokens, keys and sessions), functions, every state entry and the newest
/// `invocations_per_function` invocations of each function from `from` into `to`.
pub async fn copy(
    from: &dyn Store,
    to: &dyn Store,
    invocations_per_function: usize,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Copied> {
    let mut copied = Copied::default();

    let users = from.export_users().await?;
    let total = Some(users.len() as u64);
    for user in &users {
        to.import_user(user).await?;
        copied.users += 1;
        copied.credentials += user.credentials.len() as u64;
        progress(Progress {
            stage: Stage::Users,
            done: copied.users,
            total,
        });
    }

    let functions = from.list_functions(&FunctionFilter::default()).await?;
    let total = Some(functions.len() as u64);
    for f in &functions {
        match to.get_function(f.owner(), f.endpoint()).await? {
            None => to.create_function(f).await?,
            Some(there) => to.replace_function(f, there.generation).await?,
        }
        copy_history(from, to, f.owner(), f.endpoint()).await?;
        copied.functions += 1;
        progress(Progress {
            stage: Stage::Functions,
            done: copied.functions,
            total,
        });
    }

    let mut after: Option<StateEntry> = None;
    loop {
        let page = from.export_state(after.as_ref(), STATE_PAGE).await?;
        let Some(last) = page.last().cloned() else {
            break;
        };
        to.import_state(&page).await?;
        copied.state_entries += page.len() as u64;
        progress(Progress {
            stage: Stage::State,
            done: copied.state_entries,
            total: None,
        });
        after = Some(last);
    }

    for (n, f) in functions.iter().enumerate() {
        let (owner, endpoint) = (f.owner(), f.endpoint());
        if to.recent_invocations(owner, endpoint, 1).await?.is_empty() {
            let mut recent = from
                .recent_invocations(owner, endpoint, invocations_per_function)
                .await?;
            recent.reverse(); // oldest first, so the newest stay newest
            to.record_invocations(&recent, invocations_per_function)
                .await?;
            copied.invocations += recent.len() as u64;
        }
        progress(Progress {
            stage: Stage::Invocations,
            done: n as u64 + 1,
            total,
        });
    }
    Ok(copied)
}
