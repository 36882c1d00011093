//! The workers' `store`/`load` in a runner pod: sent to the gateway's state service
//! (`POST wire::STATE_PATH` with the pod's token), which scopes them to the pod's function.
//! Whatever goes wrong on the way becomes a `StateError` in the function that says why.

use async_trait::async_trait;
use skython_runner::{StateAnswer, StateHandler, StateRequest};

use crate::gateway::{Gateway, TokenError, refusal_message, with_causes};
use crate::wire;

const UNAVAILABLE: &str = "state_unavailable";

#[derive(Debug, thiserror::Error)]
enum StateServiceError {
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("the gateway's state service at {url} is unreachable: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("the gateway's state service refused this pod's request ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the gateway's state service failed ({status}): {message}")]
    Failed { status: u16, message: String },
    #[error("the gateway's state service answered something that is not a state answer: {0}")]
    BadAnswer(serde_json::Error),
}

/// State through the gateway.
pub struct GatewayState {
    gateway: Gateway,
}

impl GatewayState {
    pub fn new(gateway: Gateway) -> Self {
        GatewayState { gateway }
    }

    async fn ask(&self, request: &StateRequest) -> Result<StateAnswer, StateServiceError> {
        let token = self.gateway.token().read().await?;
        let unreachable = |e: reqwest::Error| StateServiceError::Unreachable {
            url: self.gateway.url(wire::STATE_PATH),
            cause: with_causes(&e),
        };
        let resp = self
            .gateway
            .post(wire::STATE_PATH, &token, request)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(unreachable)?;
        answer_from(status, &body)
    }
}

#[async_trait]
impl StateHandler for GatewayState {
    async fn handle(&self, request: StateRequest) -> StateAnswer {
        self.ask(&request).await.unwrap_or_else(|e| {
            tracing::warn!("a state request failed: {e}");
            StateAnswer::refused(UNAVAILABLE, format!("state is unavailable: {e}"))
        })
    }
}

/// The gateway's answer: a `StateAnswer` on 2xx (a refusal such as a full quota is one, with
/// `ok: false`); any other status is the state service failing this pod.
fn answer_from(status: u16, body: &[u8]) -> Result<StateAnswer, StateServiceError> {
    match status {
        200..=299 => serde_json::from_slice(body).map_err(StateServiceError::BadAnswer),
        400..=499 => Err(StateServiceError::Refused {
            status,
            message: refusal_message(body),
        }),
        _ => Err(StateServiceError::Failed {
            status,
            message: refusal_message(body),
        }),
    }
}

/// Without a gateway (`SKYTHON_GATEWAY_URL` unset) there is no state service: `store`/`load`
/// raise a `StateError` that says so instead of keeping values in a pod that may vanish.
pub struct NoStateService;

#[async_trait]
impl StateHandler for NoStateService {
    async fn handle(&self, _request: StateRequest) -> StateAnswer {
        StateAnswer::refused(
            UNAVAILABLE,
            "store() and load() are not available in this runner pod: it is not connected to a state service",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2xx_answer_is_the_gateways_state_answer_refusals_included() {
        let found = answer_from(200, br#"{"ok":true,"found":true,"value":"1"}"#).unwrap();
        assert_eq!(found.value.as_deref(), Some("1"));
        let full = answer_from(
            200,
            br#"{"ok":false,"error":{"code":"quota_exceeded","message":"full"}}"#,
        )
        .unwrap();
        assert_eq!(full, StateAnswer::refused("quota_exceeded", "full"));
    }

    #[test]
    fn a_rejected_token_is_a_refusal_naming_the_status_and_the_gateways_message() {
        let body = br#"{"error":{"code":"unauthorized","message":"the token is not valid"}}"#;
        let e = answer_from(401, body).unwrap_err();
        assert!(matches!(e, StateServiceError::Refused { status: 401, .. }));
        assert!(
            e.to_string().contains("(401): the token is not valid"),
            "{e}"
        );
    }

    #[test]
    fn a_5xx_is_the_state_service_failing() {
        let e = answer_from(503, b"overloaded").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the gateway's state service failed (503): overloaded"
        );
    }

    #[test]
    fn a_2xx_that_is_not_a_state_answer_is_an_error() {
        let e = answer_from(200, b"<html>").unwrap_err();
        assert!(matches!(e, StateServiceError::BadAnswer(_)), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_gateway_becomes_a_state_unavailable_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "tok").unwrap();
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gateway = Gateway::new(
            &format!("http://127.0.0.1:{port}"),
            crate::gateway::TokenFile::new(&token),
        )
        .unwrap();
        let answer = GatewayState::new(gateway)
            .handle(StateRequest::Load { key: "k".into() })
            .await;
        let error = answer.error.unwrap();
        assert!(!answer.ok);
        assert_eq!(error.code, UNAVAILABLE);
        assert!(error.message.contains("unreachable"), "{}", error.message);
    }

    #[tokio::test]
    async fn a_missing_token_becomes_a_state_unavailable_refusal_naming_the_file() {
        let gateway = Gateway::new(
            "http://127.0.0.1:9",
            crate::gateway::TokenFile::new("/nonexistent/token"),
        )
        .unwrap();
        let answer = GatewayState::new(gateway)
            .handle(StateRequest::Keys {
                prefix: String::new(),
            })
            .await;
        let error = answer.error.unwrap();
        assert_eq!(error.code, UNAVAILABLE);
        assert!(
            error.message.contains("/nonexistent/token"),
            "{}",
            error.message
        );
    }
}
