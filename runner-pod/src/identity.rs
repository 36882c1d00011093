//! The answer to the gateway's identity challenge (`POST wire::IDENTITY_PATH`): proof that
//! whoever listens on the announced address holds the token the announcement came with.
//!
//! The pod proves with the token of its latest announcement. The gateway challenges right after
//! an announcement, and the token is recorded before the announcement is sent, so the two
//! agree; if the kubelet rotated the token between an announcement and its challenge, the proof
//! fails once and the next announcement (10 s later at most) carries the new token.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use skython_gateway::error::{ApiError, ErrorCode};
use skython_gateway::invoke::{request_id, with_request_id};

use crate::wire::{self, IdentityChallenge, IdentityProof};

/// The token of the pod's latest announcement; none before the first.
#[derive(Debug, Default)]
pub struct AnnouncedToken(RwLock<Option<String>>);

impl AnnouncedToken {
    pub fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, token: String) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
    }
}

/// The identity route, to merge into the pod's router.
pub fn routes(announced: Arc<AnnouncedToken>) -> Router {
    Router::new()
        .route(wire::IDENTITY_PATH, post(challenge))
        .with_state(announced)
}

async fn challenge(
    State(announced): State<Arc<AnnouncedToken>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let answer = body
        .map_err(ApiError::from)
        .and_then(|body| prove(announced.get().as_deref(), &body))
        .map(|proof| axum::Json(proof).into_response());
    with_request_id(answer, request_id(&headers))
}

/// The proof for a challenge `body` with the announced `token`.
fn prove(token: Option<&str>, body: &[u8]) -> Result<IdentityProof, ApiError> {
    let expected = r#"expected {"nonce": "<random hex>"}"#;
    let challenge: IdentityChallenge = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::BadChallenge, format!("{expected}: {e}")))?;
    if challenge.nonce.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadChallenge,
            format!("the nonce is empty; {expected}"),
        ));
    }
    let token = token.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotAnnounced,
            "this pod has not announced itself to a gateway yet",
        )
    })?;
    Ok(IdentityProof {
        proof: wire::proof(token, &challenge.nonce),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    async fn ask(announced: &Arc<AnnouncedToken>, body: &str) -> (StatusCode, Value) {
        let req = Request::post(wire::IDENTITY_PATH)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = routes(announced.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn the_challenge_is_answered_with_the_proof_of_the_announced_token() {
        let announced = Arc::new(AnnouncedToken::default());
        announced.set("tok-1".into());
        let (status, body) = ask(&announced, r#"{"nonce":"00ff"}"#).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"proof": wire::proof("tok-1", "00ff")}));
    }

    #[tokio::test]
    async fn the_proof_follows_the_latest_announcement() {
        let announced = Arc::new(AnnouncedToken::default());
        announced.set("tok-1".into());
        announced.set("tok-2".into());
        let (_, body) = ask(&announced, r#"{"nonce":"n"}"#).await;
        assert_eq!(body["proof"], wire::proof("tok-2", "n"));
    }

    #[tokio::test]
    async fn before_any_announcement_the_challenge_gets_503_not_announced() {
        let (status, body) = ask(&Arc::default(), r#"{"nonce":"00ff"}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "not_announced");
    }

    #[tokio::test]
    async fn a_bad_challenge_gets_400_saying_what_was_expected() {
        let announced = Arc::new(AnnouncedToken::default());
        announced.set("tok".into());
        for body in [
            "",
            "{",
            r#"{"nonce":7}"#,
            r#"{"nonce":""}"#,
            r#"{"nonce":"a","x":1}"#,
        ] {
            let (status, answer) = ask(&announced, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(answer["error"]["code"], "bad_challenge", "{body}");
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains("nonce"), "{body}: {message}");
        }
    }
}
