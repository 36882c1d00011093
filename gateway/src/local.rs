//! `LocalPlatform` (`skython up`): the embedded store is the registry, and calls run on this
//! machine's worker pools ([`Deployments`]).

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use skython_store::{FunctionFilter, FunctionRecord, Store};

use crate::access::CallPolicy;
use crate::deployments::{Deployed, Deployments};
use crate::error::{ApiError, ApiResult};
use crate::invoke::run_call;
use crate::metrics::Metrics;
use crate::platform::{Call, Called, Platform};

pub struct LocalPlatform {
    store: Arc<dyn Store>,
    deployments: Arc<Deployments>,
    metrics: Arc<Metrics>,
    /// The base URL clients use, for the `url` of functions.
    public_url: String,
}

impl LocalPlatform {
    pub fn new(
        store: Arc<dyn Store>,
        deployments: Arc<Deployments>,
        metrics: Arc<Metrics>,
        public_url: &str,
    ) -> Self {
        LocalPlatform {
            store,
            deployments,
            metrics,
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }

    /// The pool serving the current version, or a pinned one.
    async fn deployed(
        &self,
        owner: &str,
        endpoint: &str,
        version: Option<i64>,
    ) -> skython_store::Result<Option<Arc<Deployed>>> {
        match version {
            None => self.deployments.get(owner, endpoint).await,
            Some(v) => self.deployments.get_pinned(owner, endpoint, v).await,
        }
    }

    /// Installs a stored version: new pool, one warm worker, status written back.
    async fn activate(&self, mut record: FunctionRecord) -> ApiResult<FunctionRecord> {
        let (owner, endpoint) = (record.spec.owner.clone(), record.spec.endpoint.clone());
        let cond = match self.deployments.replace(&record) {
            None => condition(
                false,
                "RuntimeUnavailable",
                format!(
                    "runtime {:?} is not installed",
                    record.spec.runtime.as_str()
                ),
                record.generation,
            ),
            Some(deployed) => {
                let warm = deployed.pool.limits().min_workers.max(1);
                match deployed.pool.warm(warm).await {
                    Ok(()) => condition(
                        true,
                        "WorkerReady",
                        "a worker loaded the function".into(),
                        record.generation,
                    ),
                    Err(skython_runner::Error::Load(e)) => {
                        condition(false, "LoadFailed", e.message, record.generation)
                    }
                    Err(e) => condition(
                        false,
                        "RuntimeUnavailable",
                        e.to_string(),
                        record.generation,
                    ),
                }
            }
        };
        let ready = cond.status == "True";
        record.status.conditions = vec![cond];
        record.status.ready_replicas = u32::from(ready);
        record.status.replicas = record.status.ready_replicas;
        record.status.observed_generation = Some(record.generation);
        record.status.url = Some(format!("{}/fn/{owner}/{endpoint}", self.public_url));
        self.store
            .set_function_status(&owner, &endpoint, &record.status)
            .await?;
        Ok(record)
    }
}

fn condition(ready: bool, reason: &str, message: String, generation: i64) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(jiff::Timestamp::now()),
        observed_generation: Some(generation),
    }
}

#[async_trait]
impl Platform for LocalPlatform {
    async fn get_function(&self, owner: &str, endpoint: &str) -> ApiResult<Option<FunctionRecord>> {
        Ok(self.store.get_function(owner, endpoint).await?)
    }

    async fn list_functions(&self, filter: &FunctionFilter) -> ApiResult<Vec<FunctionRecord>> {
        Ok(self.store.list_functions(filter).await?)
    }

    async fn call_policy(
        &self,
        owner: &str,
        endpoint: &str,
        version: Option<i64>,
    ) -> ApiResult<Option<Arc<CallPolicy>>> {
        Ok(self
            .deployed(owner, endpoint, version)
            .await?
            .map(|d| d.policy.clone()))
    }

    async fn create_function(&self, record: FunctionRecord) -> ApiResult<FunctionRecord> {
        self.store.create_function(&record).await?;
        self.activate(record).await
    }

    async fn replace_function(
        &self,
        record: FunctionRecord,
        current_generation: i64,
    ) -> ApiResult<FunctionRecord> {
        self.store
            .replace_function(&record, current_generation)
            .await?;
        self.activate(record).await
    }

    async fn delete_function(&self, owner: &str, endpoint: &str) -> ApiResult<bool> {
        // The store first: a call that loads the function after this finds it gone, and one
        // that loaded it before cannot install its pool after `remove` (see `Deployments::get`).
        if !self.store.delete_function(owner, endpoint).await? {
            return Ok(false);
        }
        self.deployments.remove(owner, endpoint);
        self.metrics.forget(&format!("{owner}/{endpoint}"));
        Ok(true)
    }

    async fn call(&self, call: Call) -> ApiResult<Called> {
        let deployed = self
            .deployed(&call.owner, &call.endpoint, call.version)
            .await?
            .ok_or_else(|| ApiError::function_not_found(&call.owner, &call.endpoint))?;
        let span =
            tracing::info_span!("call", function = %deployed.label, request_id = %call.request_id);
        let (output, cold_start) = run_call(
            deployed.clone(),
            call.args,
            &call.caller,
            &self.metrics,
            &deployed.label,
            span,
        )
        .await;
        Ok(Called { output, cold_start })
    }
}
