//! The app over a given `Platform` (as `skython gateway` builds it): function reads and calls go
//! to the platform, and `/readyz` and `/metrics` include what it says. The platform here is a
//! small in-memory one; no runtime is installed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use serde_json::Value;
use skython_crds::{SkyFunctionSpec, SkyFunctionStatus};
use skython_gateway::access::CallPolicy;
use skython_gateway::auth::create_user_with_token;
use skython_gateway::error::{ApiError, ApiResult};
use skython_gateway::invoke::CallOutput;
use skython_gateway::platform::{Call, Called};
use skython_gateway::{AppState, GatewayConfig, Metrics, Platform, app};
use skython_store::{FunctionFilter, FunctionRecord, FunctionStore, SqliteStore};
use tower::ServiceExt;

const ADMIN: &str = "sky_admin";

/// Functions in a map; a call answers with its arguments and the request id it was given.
#[derive(Default)]
struct Memory {
    functions: Mutex<HashMap<(String, String), FunctionRecord>>,
    unready: Option<String>,
}

#[async_trait]
impl Platform for Memory {
    async fn get_function(&self, owner: &str, endpoint: &str) -> ApiResult<Option<FunctionRecord>> {
        let key = (owner.to_string(), endpoint.to_string());
        Ok(self.functions.lock().unwrap().get(&key).cloned())
    }

    async fn list_functions(&self, _: &FunctionFilter) -> ApiResult<Vec<FunctionRecord>> {
        Ok(self.functions.lock().unwrap().values().cloned().collect())
    }

    async fn create_function(&self, record: FunctionRecord) -> ApiResult<FunctionRecord> {
        let key = (record.spec.owner.clone(), record.spec.endpoint.clone());
        self.functions.lock().unwrap().insert(key, record.clone());
        Ok(record)
    }

    async fn replace_function(&self, record: FunctionRecord, _: i64) -> ApiResult<FunctionRecord> {
        self.create_function(record).await
    }

    async fn delete_function(&self, owner: &str, endpoint: &str) -> ApiResult<bool> {
        let key = (owner.to_string(), endpoint.to_string());
        Ok(self.functions.lock().unwrap().remove(&key).is_some())
    }

    async fn call_policy(
        &self,
        owner: &str,
        endpoint: &str,
        _version: Option<i64>,
    ) -> ApiResult<Option<Arc<CallPolicy>>> {
        let record = self.get_function(owner, endpoint).await?;
        Ok(record.map(|r| Arc::new(CallPolicy::of(&r.spec, r.status.signature.as_ref()))))
    }

    async fn call(&self, call: Call) -> ApiResult<Called> {
        if self
            .get_function(&call.owner, &call.endpoint)
            .await?
            .is_none()
        {
            return Err(ApiError::function_not_found(&call.owner, &call.endpoint));
        }
        let args: Value = serde_json::from_slice(&call.args).unwrap();
        let body = serde_json::json!({"args": args, "requestId": call.request_id});
        Ok(Called {
            output: CallOutput {
                status: StatusCode::OK,
                body: Bytes::from(body.to_string()),
                outcome: "ok".into(),
                error: None,
                logs: "hello from memory\n".into(),
            },
            cold_start: true,
        })
    }

    fn render_metrics(&self) -> String {
        "# TYPE skython_memory_functions gauge\nskython_memory_functions 1\n".into()
    }

    async fn ready(&self) -> Result<(), String> {
        self.unready.clone().map_or(Ok(()), Err)
    }
}

async fn gateway(platform: Memory) -> (Router, Arc<SqliteStore>) {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    create_user_with_token(&*store, "admin", true, ADMIN)
        .await
        .unwrap();
    let now = jiff::Timestamp::now();
    platform.functions.lock().unwrap().insert(
        ("admin".into(), "echo".into()),
        FunctionRecord {
            spec: SkyFunctionSpec::new("admin", "echo", "def main(**kw): return kw"),
            status: SkyFunctionStatus::default(),
            generation: 3,
            created_at: now,
            updated_at: now,
        },
    );
    let config = GatewayConfig {
        state_cache: true,
        ..GatewayConfig::new("http://skython.test")
    };
    let metrics = Arc::new(Metrics::new().unwrap());
    let state = AppState::with_platform(
        config,
        store.clone(),
        HashMap::new(),
        metrics,
        Arc::new(platform),
    );
    (app(state), store)
}

async fn send(app: &Router, method: Method, path: &str, body: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .header("x-request-id", "rid-1")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn function_reads_come_from_the_platform_not_the_store() {
    let (app, store) = gateway(Memory::default()).await;
    assert!(store.get_function("admin", "echo").await.unwrap().is_none());
    let (status, text) = send(&app, Method::GET, "/api/v1/functions/admin/echo", "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["generation"], 3);
    let (status, text) = send(&app, Method::GET, "/api/v1/functions", "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.contains("\"endpoint\":\"echo\""), "{text}");
}

#[tokio::test]
async fn deleting_goes_to_the_platform() {
    let (app, _) = gateway(Memory::default()).await;
    let path = "/api/v1/functions/admin/echo";
    assert_eq!(
        send(&app, Method::DELETE, path, "").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(&app, Method::GET, path, "").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn calls_go_to_the_platform_with_their_request_id_and_are_recorded() {
    let (app, _) = gateway(Memory::default()).await;
    let (status, text) = send(&app, Method::POST, "/fn/admin/echo", r#"{"x": 1}"#).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"args": {"x": 1}, "requestId": "rid-1"})
    );
    let (status, text) = send(&app, Method::GET, "/api/v1/functions/admin/echo/logs", "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["items"][0]["requestId"], "rid-1", "{text}");
    assert_eq!(body["items"][0]["logs"], "hello from memory\n");
    assert_eq!(body["items"][0]["coldStart"], true);
}

#[tokio::test]
async fn a_call_the_platform_cannot_place_gets_its_error() {
    let (app, _) = gateway(Memory::default()).await;
    let (status, text) = send(&app, Method::POST, "/fn/admin/nothing", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains("function_not_found"), "{text}");
}

#[tokio::test]
async fn readyz_says_why_the_platform_is_not_ready() {
    let (app, _) = gateway(Memory {
        unready: Some("SkyFunctions not synced yet".into()),
        ..Default::default()
    })
    .await;
    let (status, text) = send(&app, Method::GET, "/readyz", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text, "platform: SkyFunctions not synced yet");

    let (app, _) = gateway(Memory::default()).await;
    assert_eq!(
        send(&app, Method::GET, "/readyz", "").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn metrics_end_with_the_platforms_series() {
    let (app, _) = gateway(Memory::default()).await;
    let (status, text) = send(&app, Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(text.ends_with("skython_memory_functions 1\n"), "{text}");
}
