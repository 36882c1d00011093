//! The HTTP app in process (`app(state).oneshot(...)`): who sees what of a function, and who
//! may read `/metrics`. No runtime is installed: these paths never start a worker.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::Value;
use skython_crds::{EnvVar, SkyFunctionSpec, SkyFunctionStatus, Visibility};
use skython_gateway::auth::create_user_with_token;
use skython_gateway::{AppState, GatewayConfig, app};
use skython_store::{FunctionRecord, FunctionStore, SqliteStore};
use tower::ServiceExt;

const ADMIN: &str = "sky_admin";
const ALICE: &str = "sky_alice";
const BOB: &str = "sky_bob";
const SCRAPER: &str = "sky_metrics";
const SECRET: &str = "s3cr3t-value";

struct Gateway {
    app: Router,
    state: AppState,
}

/// A gateway whose store has the admin, alice and bob, and alice's public function `weather`
/// with two environment variables.
async fn gateway(metrics_token: Option<&str>) -> Gateway {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    for (name, token, admin) in [
        ("admin", ADMIN, true),
        ("alice", ALICE, false),
        ("bob", BOB, false),
    ] {
        create_user_with_token(&*store, name, admin, token)
            .await
            .unwrap();
    }
    let mut spec = SkyFunctionSpec::new("alice", "weather", "def main(): return 1");
    spec.visibility = Visibility::Public;
    spec.env = vec![
        EnvVar {
            name: "API_KEY".into(),
            value: SECRET.into(),
        },
        EnvVar {
            name: "REGION".into(),
            value: "eu-west".into(),
        },
    ];
    let now = jiff::Timestamp::now();
    store
        .create_function(&FunctionRecord {
            spec,
            status: SkyFunctionStatus::default(),
            generation: 1,
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    let config = GatewayConfig {
        metrics_token: metrics_token.map(String::from),
        state_cache: true,
        ..GatewayConfig::new("http://skython.test")
    };
    let state = AppState::new(config, store, HashMap::new()).unwrap();
    Gateway {
        app: app(state.clone()),
        state,
    }
}

impl Gateway {
    /// The status and body text of one request.
    async fn send(&self, method: Method, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = self
            .app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        self.send(Method::GET, path, token).await
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn the_owner_and_the_admin_see_env_names_without_values() {
    let g = gateway(None).await;
    for token in [ALICE, ADMIN] {
        let (status, text) = g.get("/api/v1/functions/alice/weather", Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let body = json(&text);
        assert_eq!(body["envNames"], serde_json::json!(["API_KEY", "REGION"]));
        assert!(body.get("env").is_none(), "{text}");
        assert!(
            !text.contains(SECRET) && !text.contains("eu-west"),
            "{text}"
        );
        // The rest of the spec is there.
        assert_eq!(body["source"], "def main(): return 1");
    }
}

#[tokio::test]
async fn others_see_no_env_at_all() {
    let g = gateway(None).await;
    let (status, text) = g.get("/api/v1/functions/alice/weather", Some(BOB)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body = json(&text);
    assert!(
        body.get("env").is_none() && body.get("envNames").is_none(),
        "{text}"
    );
    assert!(
        !text.contains(SECRET) && !text.contains("API_KEY"),
        "{text}"
    );

    let (status, text) = g.get("/api/v1/functions/alice/weather", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "anyone reads a public function: {text}"
    );
    assert!(
        !text.contains(SECRET) && !text.contains("API_KEY"),
        "{text}"
    );
}

#[tokio::test]
async fn listings_carry_no_env() {
    let g = gateway(None).await;
    for token in [ALICE, BOB, ADMIN] {
        let (status, text) = g.get("/api/v1/functions", Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(json(&text)["items"][0]["endpoint"], "weather", "{text}");
        assert!(
            !text.contains(SECRET) && !text.contains("API_KEY"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn metrics_without_a_token_are_refused() {
    let g = gateway(Some(SCRAPER)).await;
    g.state
        .metrics
        .calls
        .with_label_values(&["alice/weather", "ok"])
        .inc();
    for token in [None, Some("sky_wrong")] {
        let (status, text) = g.get("/metrics", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        let body = json(&text);
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--metrics-token"),
            "{text}"
        );
        assert!(!text.contains("weather"), "{text}");
    }
}

#[tokio::test]
async fn metrics_answer_the_admin_token_and_the_metrics_token() {
    let g = gateway(Some(SCRAPER)).await;
    for token in [ADMIN, SCRAPER] {
        let (status, text) = g.get("/metrics", Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(
            text.contains("skython_invocation_records_dropped_total"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn metrics_refuse_a_users_token() {
    let g = gateway(Some(SCRAPER)).await;
    let (status, text) = g.get("/metrics", Some(ALICE)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert_eq!(json(&text)["error"]["code"], "forbidden");
}

#[tokio::test]
async fn without_a_metrics_token_only_the_admin_reads_metrics() {
    let g = gateway(None).await;
    assert_eq!(g.get("/metrics", Some(ADMIN)).await.0, StatusCode::OK);
    assert_eq!(
        g.get("/metrics", Some(SCRAPER)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_deleted_functions_series_are_gone() {
    let g = gateway(None).await;
    let m = &g.state.metrics;
    m.calls.with_label_values(&["alice/weather", "ok"]).inc();
    m.calls
        .with_label_values(&["alice/weather", "timeout"])
        .inc();
    m.call_duration
        .with_label_values(&["alice/weather"])
        .observe(0.01);
    m.cold_starts.with_label_values(&["alice/weather"]).inc();
    let series = [
        "skython_calls_total{function=\"alice/weather\",outcome=\"ok\"}",
        "skython_calls_total{function=\"alice/weather\",outcome=\"timeout\"}",
        "skython_call_duration_seconds_count{function=\"alice/weather\"}",
        "skython_cold_starts_total{function=\"alice/weather\"}",
    ];
    // Rendered as if its pool were live, the series are there...
    let live = m.render([("alice/weather", 1, 0)]);
    for s in series {
        assert!(live.contains(s), "{s} in {live}");
    }

    let (status, text) = g
        .send(
            Method::DELETE,
            "/api/v1/functions/alice/weather",
            Some(ALICE),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    // ...and after the delete they are not, whatever the pools say.
    let after = m.render([("alice/weather", 0, 0)]);
    for s in series {
        assert!(!after.contains(s), "{s} in {after}");
    }
    let (status, scraped) = g.get("/metrics", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!scraped.contains("weather"), "{scraped}");
}

#[tokio::test]
async fn a_browser_opening_an_app_path_gets_a_page() {
    let g = gateway(None).await;
    let req = Request::get("/f/alice/hello")
        .header(header::ACCEPT, "text/html,application/xhtml+xml")
        .body(Body::empty())
        .unwrap();
    let resp = g.app.clone().oneshot(req).await.unwrap();
    // The app's page when `make web` built it into this binary; else the page saying how to.
    assert!(
        [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(&resp.status()),
        "{}",
        resp.status()
    );
    let kind = resp.headers()[header::CONTENT_TYPE].to_str().unwrap();
    assert!(kind.starts_with("text/html"), "{kind}");
}

#[tokio::test]
async fn an_api_client_on_a_missing_route_still_gets_a_json_error() {
    let g = gateway(None).await;
    let (status, body) = g.get("/f/alice/hello", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"]["code"], "not_found");
    let (status, body) = g.send(Method::POST, "/skybox", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_view_says_who_may_call_a_function_whose_access_is_unset() {
    let g = gateway(None).await;
    let (status, text) = g.get("/api/v1/functions/alice/weather", Some(BOB)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let body = json(&text);
    // Public without an `access` of its own: anyone may call it.
    assert!(body["access"].is_null(), "{text}");
    assert_eq!(body["effectiveAccess"], "public");
}

#[tokio::test]
async fn a_functions_page_counts_every_call_finished_before_it_was_asked() {
    let g = gateway(None).await;
    for i in 0..3 {
        g.state.recorder.record(skython_store::Invocation {
            request_id: format!("r{i}"),
            owner: "alice".into(),
            endpoint: "weather".into(),
            started_at: jiff::Timestamp::now(),
            duration_ms: 1.0,
            status: 200,
            outcome: "ok".into(),
            error: None,
            logs: String::new(),
            cold_start: false,
        });
    }
    let (status, page) = g.get("/api/v1/functions/alice/weather", Some(ALICE)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(json(&page)["stats"]["calls"], 3, "{page}");
}
