//! A function's contract over the HTTP app in process: its OpenAPI document and snippets (who
//! may read them), calls whose arguments do not fit the type hints refused before a worker
//! sees them, drafts checked as a deploy would check them, and the calls and errors a listing
//! counts. The calls run a real Python runtime (`SKYTHON_PYTHON`, else `python3`, with numpy).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use skython_crds::{Param, Runtime, Signature, SkyFunctionSpec, SkyFunctionStatus, Visibility};
use skython_gateway::auth::create_user_with_token;
use skython_gateway::{AppState, GatewayConfig, app};
use skython_runner::{RuntimeConfig, Sandbox, Zygote};
use skython_store::{FunctionRecord, FunctionStore, SqliteStore};
use tower::ServiceExt;

const ADMIN: &str = "sky_admin";
const ALICE: &str = "sky_alice";
const BOB: &str = "sky_bob";

struct Gateway {
    app: Router,
    _runtime: Option<tempfile::TempDir>,
}

/// alice's `mean(xs: list[float]) -> float`, stored with its signature (not deployed).
fn mean_record(visibility: Visibility) -> FunctionRecord {
    let mut spec = SkyFunctionSpec::new(
        "alice",
        "mean",
        "def mean(xs: list[float]) -> float:\n    return sum(xs) / len(xs)\n",
    );
    spec.visibility = visibility;
    spec.description = "The mean of some numbers.".into();
    let now = jiff::Timestamp::now();
    FunctionRecord {
        spec,
        status: SkyFunctionStatus {
            signature: Some(Signature {
                entrypoint: "mean".into(),
                params: vec![Param {
                    name: "xs".into(),
                    kind: "positional_or_keyword".into(),
                    annotation: Some("list[float]".into()),
                    default: None,
                }],
                returns: Some("float".into()),
                doc: Some("Adds them up and divides.".into()),
            }),
            ..Default::default()
        },
        generation: 1,
        created_at: now,
        updated_at: now,
    }
}

/// A gateway with the admin, alice and bob; with a Python runtime if `runtime`.
async fn gateway(records: Vec<FunctionRecord>, runtime: bool) -> Gateway {
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
    for r in &records {
        store.create_function(r).await.unwrap();
    }
    let mut zygotes = HashMap::new();
    let dir = runtime.then(|| tempfile::tempdir().unwrap());
    if let Some(dir) = &dir {
        skython_runner::install_python_files(dir.path()).unwrap();
        zygotes.insert(
            Runtime::Standard,
            Arc::new(Zygote::new(RuntimeConfig {
                python: std::env::var_os("SKYTHON_PYTHON")
                    .map(Into::into)
                    .unwrap_or_else(|| "python3".into()),
                python_path: dir.path().to_path_buf(),
                preload: Some(String::new()),
                workdir: std::env::temp_dir(),
                sandbox: Sandbox::None,
                egress_dir: None,
            })),
        );
    }
    let config = GatewayConfig::new("http://skython.test");
    let state = AppState::new(config, store, zygotes).unwrap();
    Gateway {
        app: app(state),
        _runtime: dir,
    }
}

impl Gateway {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let resp = self
            .app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, Some(token), None).await
    }
}

const OPENAPI: &str = "/api/v1/functions/alice/mean/openapi.json";
const SNIPPETS: &str = "/api/v1/functions/alice/mean/snippets";

#[tokio::test]
async fn the_owner_reads_the_document_of_a_private_function() {
    let g = gateway(vec![mean_record(Visibility::Private)], false).await;
    for token in [ALICE, ADMIN] {
        let (status, doc) = g.get(OPENAPI, token).await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["servers"][0]["url"], "http://skython.test");
        let op = &doc["paths"]["/fn/alice/mean"]["post"];
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["properties"]["xs"],
            json!({"type": "array", "items": {"type": "number"}})
        );
        assert_eq!(
            op["security"],
            json!([{"apiKey": []}, {"bearer": []}]),
            "private functions are gated"
        );
    }
}

#[tokio::test]
async fn others_get_404_for_a_private_functions_document_and_snippets() {
    let g = gateway(vec![mean_record(Visibility::Private)], false).await;
    for path in [OPENAPI, SNIPPETS] {
        let (status, body) = g.get(path, BOB).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"]["code"], "function_not_found");
    }
    let (status, _) = g.send(Method::GET, OPENAPI, None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nor anonymous visitors");
}

#[tokio::test]
async fn anyone_signed_in_reads_a_public_functions_document_and_snippets() {
    let g = gateway(vec![mean_record(Visibility::Public)], false).await;
    let (status, doc) = g.get(OPENAPI, BOB).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert!(
        doc["paths"]["/fn/alice/mean"]["post"]
            .get("security")
            .is_none()
    );
    let (status, s) = g.get(SNIPPETS, BOB).await;
    assert_eq!(status, StatusCode::OK, "{s}");
    for lang in ["curl", "python", "javascript", "swift", "kotlin"] {
        let code = s[lang].as_str().unwrap_or_default();
        assert!(
            code.contains("http://skython.test/fn/alice/mean") && !code.contains("X-Api-Key"),
            "{lang}: {code}"
        );
    }
    assert!(
        s["curl"].as_str().unwrap().contains(r#"-d '{"xs":[1.5]}'"#),
        "{s}"
    );
}

#[tokio::test]
async fn a_missing_function_has_no_document() {
    let g = gateway(vec![], false).await;
    let (status, _) = g.get(OPENAPI, ADMIN).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

const NUMPY_MEAN: &str = "import numpy as np\n\ndef mean(xs: list[float]) -> float:\n    return float(np.mean(np.array(xs, dtype=float)))\n";

#[tokio::test]
async fn arguments_that_do_not_fit_the_hints_are_400_before_numpy_sees_them() {
    let g = gateway(vec![], true).await;
    let (status, body) = g
        .send(
            Method::POST,
            "/api/v1/functions",
            Some(ALICE),
            Some(json!({"endpoint": "mean", "source": NUMPY_MEAN, "access": "public"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = g
        .send(
            Method::POST,
            "/fn/alice/mean",
            None,
            Some(json!({"xs": "oops"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let err = &body["error"];
    assert_eq!(err["code"], "bad_arguments");
    assert_eq!(err["param"], "xs");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("xs: expected a list of numbers (list[float]), got a string"),
        "{err}"
    );
    assert_eq!(err["expected"][0]["annotation"], "list[float]");
    // What fits still runs (an int where a float is hinted too).
    let (status, body) = g
        .send(
            Method::POST,
            "/fn/alice/mean",
            None,
            Some(json!({"xs": [1, 2.5]})),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!(1.75)));
}

#[tokio::test]
async fn a_refused_call_is_recorded_with_its_outcome() {
    let g = gateway(vec![], true).await;
    let (status, _) = g
        .send(
            Method::POST,
            "/api/v1/functions",
            Some(ALICE),
            Some(json!({"endpoint": "mean", "source": NUMPY_MEAN, "access": "public"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    g.send(
        Method::POST,
        "/fn/alice/mean",
        None,
        Some(json!({"xs": "oops"})),
    )
    .await;
    let (status, list) = g
        .get("/api/v1/functions/alice/mean/invocations", ALICE)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["items"][0]["status"], 400);
    assert_eq!(list["items"][0]["outcome"], "bad_arguments");
}

#[tokio::test]
async fn a_test_run_refuses_arguments_that_do_not_fit_as_the_endpoint_would() {
    let g = gateway(vec![], true).await;
    let (status, body) = g
        .send(
            Method::POST,
            "/api/v1/test-run",
            Some(ALICE),
            Some(json!({"source": NUMPY_MEAN, "args": {"xs": [1, "2"]}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], 400);
    assert_eq!(body["error"]["code"], "bad_arguments");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("but xs[1] is a string"),
        "{body}"
    );
}

/// `POST /api/v1/check` by alice.
async fn check(g: &Gateway, body: Value) -> (StatusCode, Value) {
    g.send(Method::POST, "/api/v1/check", Some(ALICE), Some(body))
        .await
}

#[tokio::test]
async fn a_valid_draft_checks_ok_with_its_signature() {
    let g = gateway(vec![], true).await;
    let (status, body) = check(&g, json!({"source": NUMPY_MEAN})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["problems"], json!([]));
    assert_eq!(body["signature"]["entrypoint"], "mean");
    assert_eq!(body["signature"]["params"][0]["name"], "xs");
    assert_eq!(body["signature"]["params"][0]["annotation"], "list[float]");
}

#[tokio::test]
async fn a_syntax_error_is_a_problem_on_its_line() {
    let g = gateway(vec![], true).await;
    let source = "def f(x):\n    return x\n\ndef g(:\n    pass\n";
    let (status, body) = check(&g, json!({"source": source})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], false);
    assert!(body.get("signature").is_none(), "{body}");
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{body}");
    assert_eq!(problems[0]["code"], "syntax_error");
    assert_eq!(problems[0]["line"], 4, "{body}");
    assert!(problems[0]["column"].is_u64(), "{body}");
}

#[tokio::test]
async fn a_draft_without_its_entry_function_is_a_problem() {
    let g = gateway(vec![], true).await;
    let (status, body) = check(&g, json!({"source": "x = 1\n"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], false);
    assert_eq!(body["problems"][0]["code"], "no_entrypoint", "{body}");
    let (_, body) = check(&g, json!({"source": NUMPY_MEAN, "entrypoint": "median"})).await;
    assert_eq!(
        body["problems"][0]["code"], "entrypoint_not_found",
        "{body}"
    );
}

#[tokio::test]
async fn an_emptied_editor_is_a_problem_not_a_bad_request() {
    let g = gateway(vec![], true).await;
    let (status, body) = check(&g, json!({"source": "  \n"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ok"], false);
    assert_eq!(body["problems"][0]["code"], "no_entrypoint", "{body}");
}

#[tokio::test]
async fn a_check_request_of_the_wrong_shape_is_a_bad_request() {
    let g = gateway(vec![], false).await;
    for body in [
        json!({"source": NUMPY_MEAN, "args": {}}),
        json!({"source": 42}),
        json!({"source": NUMPY_MEAN, "runtime": "cobol"}),
    ] {
        let (status, answer) = check(&g, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_body", "{body}: {answer}");
    }
    let (status, answer) = check(&g, json!({"source": "x".repeat(2 << 20)})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_spec");
}

#[tokio::test]
async fn checking_needs_a_credential() {
    let g = gateway(vec![], false).await;
    let (status, body) = g
        .send(
            Method::POST,
            "/api/v1/check",
            None,
            Some(json!({"source": NUMPY_MEAN})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn the_listing_counts_each_functions_calls_and_errors() {
    let g = gateway(vec![], true).await;
    let source = "def half_of_one(n: int) -> float:\n    return 1 / n\n";
    let (status, body) = g
        .send(
            Method::POST,
            "/api/v1/functions",
            Some(ALICE),
            Some(json!({"endpoint": "half", "source": source, "access": "public"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = g
        .send(Method::POST, "/fn/alice/half", None, Some(json!({"n": 2})))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!(0.5)));
    let (status, body) = g
        .send(Method::POST, "/fn/alice/half", None, Some(json!({"n": 0})))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let (status, list) = g.get("/api/v1/functions", ALICE).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let stats = &list["items"][0]["stats"];
    assert_eq!((&stats["calls"], &stats["errors"]), (&json!(2), &json!(1)));
    assert!(stats["lastCalledAt"].is_string(), "{list}");
    // The function's page says the same.
    let (_, f) = g.get("/api/v1/functions/alice/half", ALICE).await;
    assert_eq!(f["stats"]["errors"], 1, "{f}");
}
