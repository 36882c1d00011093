//! The seam between the HTTP API and where functions live and run.
//!
//! - [`LocalPlatform`](crate::local::LocalPlatform) (`skython up`): the embedded store is the
//!   registry, and calls run on this machine's worker pools;
//! - `skython_cluster::ClusterPlatform` (`skython gateway`): `SkyFunction` resources are the
//!   registry, and calls go to runner pods that the gateway scales.
//!
//! The API checks everything it can without knowing which (spec validation, the source's
//! syntax and entry function, permissions), then asks the platform.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use skython_runner::Caller;
use skython_store::{FunctionFilter, FunctionRecord};

use crate::access::CallPolicy;
use crate::error::ApiResult;
use crate::invoke::CallOutput;

/// One call of a deployed function, its arguments already checked (`invoke::check_args`).
#[derive(Debug, Clone)]
pub struct Call {
    pub owner: String,
    pub endpoint: String,
    pub args: Bytes,
    pub request_id: String,
    /// Who called, for `skython.caller()`: an identity only, never a scope. The call runs as
    /// the function's owner (state, limits, secrets) whoever this is.
    pub caller: Caller,
    /// A pinned version (`POST /fn/{owner}/{endpoint}@{n}`); `None`: the current one.
    pub version: Option<i64>,
}

/// What a call gave.
pub struct Called {
    pub output: CallOutput,
    /// The call had to start a worker (or a pod) first.
    pub cold_start: bool,
}

#[async_trait]
pub trait Platform: Send + Sync + 'static {
    async fn get_function(&self, owner: &str, endpoint: &str) -> ApiResult<Option<FunctionRecord>>;

    async fn list_functions(&self, filter: &FunctionFilter) -> ApiResult<Vec<FunctionRecord>>;

    /// What the gateway checks before calling the function (who may call, from which pages,
    /// with which arguments), from its current version or the pinned `version`; `None` when
    /// there is no such function or version. On the call path:
    /// cheap, from what the platform keeps in memory where it can.
    async fn call_policy(
        &self,
        owner: &str,
        endpoint: &str,
        version: Option<i64>,
    ) -> ApiResult<Option<Arc<CallPolicy>>>;

    /// Stores a new, checked function (409 `conflict` when its endpoint is taken) and starts
    /// serving it; returns it with the status the platform knows so far.
    async fn create_function(&self, record: FunctionRecord) -> ApiResult<FunctionRecord>;

    /// Stores a new version of a function whose current version has `current_generation`
    /// (409 `conflict` if someone changed it meanwhile) and serves it from now on.
    async fn replace_function(
        &self,
        record: FunctionRecord,
        current_generation: i64,
    ) -> ApiResult<FunctionRecord>;

    /// Forgets a function and stops serving it; false when there was none.
    async fn delete_function(&self, owner: &str, endpoint: &str) -> ApiResult<bool>;

    /// Runs one call. `Err` only when the call could not be placed (no such function: 404;
    /// the platform is full or starting: 503/504); the function's own failures are answers.
    async fn call(&self, call: Call) -> ApiResult<Called>;

    /// Prometheus text of the platform's own series (appended to the gateway's `/metrics`).
    fn render_metrics(&self) -> String {
        String::new()
    }

    /// `Err(why)` while the platform cannot serve (`/readyz` answers 503 with it).
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}
