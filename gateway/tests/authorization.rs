//! Object-level authorization of every developer-API route, in process: alice owns a private
//! and a public function and a key; bob and an anonymous client try everything on them. Each
//! refusal is the documented one: 401 without a credential, 404 where the function's existence
//! is private, 403 where it is public but not theirs.
//!
//! (Calls of gated functions need a runtime: `e2e/tests/accounts.rs`.)

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use skython_crds::{SkyFunctionSpec, SkyFunctionStatus, Visibility};
use skython_gateway::credentials::{credential, new_secret};
use skython_gateway::{AppState, GatewayConfig, app};
use skython_store::{CredentialKind, FunctionRecord, FunctionStore, SqliteStore, User, UserStore};
use tower::ServiceExt;

struct World {
    app: Router,
    alice: String,
    bob: String,
    alice_key_id: String,
    alice_token_id: String,
}

async fn user(store: &SqliteStore, name: &str) -> (String, String) {
    let secret = new_secret(CredentialKind::Token);
    let token = credential(&secret, CredentialKind::Token, name, "test", vec![], None);
    let user = User {
        name: name.into(),
        is_admin: false,
        created_at: jiff::Timestamp::now(),
    };
    store.create_user(&user, None, &[token]).await.unwrap();
    (secret.secret, secret.id)
}

async fn world() -> World {
    let store = SqliteStore::open_in_memory().unwrap();
    let (alice, alice_token_id) = user(&store, "alice").await;
    let (bob, _) = user(&store, "bob").await;
    for (endpoint, visibility) in [
        ("secret", Visibility::Private),
        ("open", Visibility::Public),
    ] {
        let mut spec = SkyFunctionSpec::new("alice", endpoint, "def main(): return 1");
        spec.visibility = visibility;
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
    }
    let key = new_secret(CredentialKind::Key);
    let c = credential(
        &key,
        CredentialKind::Key,
        "alice",
        "app",
        vec!["alice/*".into()],
        None,
    );
    store.add_credential(&c).await.unwrap();
    let config = GatewayConfig {
        login_failure_delay: std::time::Duration::ZERO,
        ..GatewayConfig::new("http://skython.test")
    };
    let state = AppState::new(config, Arc::new(store), HashMap::new()).unwrap();
    World {
        app: app(state),
        alice,
        bob,
        alice_key_id: key.id,
        alice_token_id,
    }
}

/// Who asks.
#[derive(Clone, Copy, Debug)]
enum As {
    Alice,
    Bob,
    Anonymous,
}

impl World {
    async fn send(&self, who: As, method: Method, path: &str, body: Option<Value>) -> StatusCode {
        let mut req = Request::builder().method(method).uri(path);
        let token = match who {
            As::Alice => Some(&self.alice),
            As::Bob => Some(&self.bob),
            As::Anonymous => None,
        };
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        self.app
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap()
            .status()
    }

    /// Asserts each (who, expected status) for one request.
    async fn expect(&self, method: Method, path: &str, body: Option<Value>, cases: &[(As, u16)]) {
        for (who, want) in cases {
            let got = self.send(*who, method.clone(), path, body.clone()).await;
            assert_eq!(got.as_u16(), *want, "{who:?} {method} {path}");
        }
    }
}

use As::{Alice, Anonymous, Bob};

#[tokio::test]
async fn a_private_function_is_404_for_everyone_but_its_owner() {
    let w = world().await;
    for what in ["", "/openapi.json", "/snippets"] {
        let p = format!("/api/v1/functions/alice/secret{what}");
        w.expect(
            Method::GET,
            &p,
            None,
            &[(Alice, 200), (Bob, 404), (Anonymous, 404)],
        )
        .await;
    }
}

#[tokio::test]
async fn anyone_reads_a_public_function_and_its_contract() {
    let w = world().await;
    for what in ["", "/openapi.json", "/snippets"] {
        let p = format!("/api/v1/functions/alice/open{what}");
        w.expect(Method::GET, &p, None, &[(Bob, 200), (Anonymous, 200)])
            .await;
    }
}

#[tokio::test]
async fn a_public_function_is_read_by_others_but_not_changed() {
    let w = world().await;
    let p = "/api/v1/functions/alice/open";
    let spec = json!({"source": "def main(): return 2"});
    w.expect(Method::PUT, p, Some(spec), &[(Bob, 403), (Anonymous, 401)])
        .await;
    w.expect(Method::DELETE, p, None, &[(Bob, 403), (Anonymous, 401)])
        .await;
}

#[tokio::test]
async fn a_private_function_cannot_be_replaced_or_deleted_by_others() {
    let w = world().await;
    let p = "/api/v1/functions/alice/secret";
    let spec = json!({"source": "def main(): return 2"});
    w.expect(Method::PUT, p, Some(spec), &[(Bob, 403), (Anonymous, 401)])
        .await;
    w.expect(Method::DELETE, p, None, &[(Bob, 404), (Anonymous, 401)])
        .await;
    w.expect(Method::GET, p, None, &[(Alice, 200)]).await;
}

#[tokio::test]
async fn invocations_and_logs_are_the_owners_only() {
    let w = world().await;
    for what in ["invocations", "logs"] {
        let private = format!("/api/v1/functions/alice/secret/{what}");
        w.expect(
            Method::GET,
            &private,
            None,
            &[(Alice, 200), (Bob, 404), (Anonymous, 401)],
        )
        .await;
        let public = format!("/api/v1/functions/alice/open/{what}");
        w.expect(Method::GET, &public, None, &[(Bob, 403)]).await;
    }
}

#[tokio::test]
async fn nobody_mints_keys_for_another_owners_functions() {
    let w = world().await;
    for functions in [
        json!(["alice/secret"]),
        json!(["alice/open"]),
        json!(["alice/*"]),
    ] {
        let body = json!({"name": "stolen", "functions": functions});
        w.expect(
            Method::POST,
            "/api/v1/keys",
            Some(body),
            &[(Bob, 403), (Anonymous, 401)],
        )
        .await;
    }
    let mine = json!({"name": "mine", "functions": ["alice/secret"]});
    w.expect(Method::POST, "/api/v1/keys", Some(mine), &[(Alice, 201)])
        .await;
}

#[tokio::test]
async fn another_owners_keys_and_tokens_are_404_and_stay_live() {
    let w = world().await;
    let key = format!("/api/v1/keys/{}", w.alice_key_id);
    let token = format!("/api/v1/tokens/{}", w.alice_token_id);
    w.expect(Method::GET, &key, None, &[(Bob, 404), (Anonymous, 401)])
        .await;
    w.expect(Method::DELETE, &key, None, &[(Bob, 404), (Anonymous, 401)])
        .await;
    w.expect(
        Method::DELETE,
        &token,
        None,
        &[(Bob, 404), (Anonymous, 401)],
    )
    .await;
    w.expect(Method::GET, &key, None, &[(Alice, 200)]).await;
    w.expect(Method::GET, "/api/v1/me", None, &[(Alice, 200)])
        .await;
}

#[tokio::test]
async fn listings_of_keys_and_tokens_are_ones_own() {
    let w = world().await;
    for list in ["/api/v1/keys", "/api/v1/tokens"] {
        w.expect(Method::GET, list, None, &[(Anonymous, 401)]).await;
        let resp = w
            .app
            .clone()
            .oneshot(
                Request::get(list)
                    .header(header::AUTHORIZATION, format!("Bearer {}", w.bob))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let ids: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert!(!ids.contains(&w.alice_key_id.as_str()), "{list}: {v}");
        assert!(!ids.contains(&w.alice_token_id.as_str()), "{list}: {v}");
    }
}

#[tokio::test]
async fn an_api_key_does_not_open_the_developer_api() {
    let w = world().await;
    let store_key = {
        // alice's key is only in the store: authenticate with its secret through a new one.
        let resp = w
            .app
            .clone()
            .oneshot(
                Request::post("/api/v1/keys")
                    .header(header::AUTHORIZATION, format!("Bearer {}", w.alice))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        json!({"name": "k", "functions": ["alice/open"]}).to_string(),
                    ))
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        v["secret"].as_str().unwrap().to_string()
    };
    let resp = w
        .app
        .clone()
        .oneshot(
            Request::get("/api/v1/me")
                .header(header::AUTHORIZATION, format!("Bearer {store_key}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}
