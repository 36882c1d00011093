//! Talking to the gateway: its URL, the HTTP client, the pod's token, and the gateway's errors
//! turned into sentences.

use std::path::PathBuf;
use std::time::Duration;

/// Longest wait for one request to the gateway (a state request holds a worker meanwhile).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the pod's token {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pod's token {path} is empty")]
    Empty { path: PathBuf },
}

/// The projected service-account token. Read on every use: the kubelet rotates it in place.
#[derive(Debug, Clone)]
pub struct TokenFile(PathBuf);

impl TokenFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TokenFile(path.into())
    }

    pub async fn read(&self) -> Result<String, TokenError> {
        let text = tokio::fs::read_to_string(&self.0)
            .await
            .map_err(|source| TokenError::Read {
                path: self.0.clone(),
                source,
            })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: self.0.clone(),
            });
        }
        Ok(token.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the gateway URL {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("building the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The gateway this pod belongs to: one keep-alive client for announcements and state.
#[derive(Debug, Clone)]
pub struct Gateway {
    url: String,
    client: reqwest::Client,
    token: TokenFile,
}

impl Gateway {
    /// `url` is the gateway's base URL (`SKYTHON_GATEWAY_URL`), with or without a final `/`.
    pub fn new(url: &str, token: TokenFile) -> Result<Self, GatewayError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| GatewayError::BadUrl(url.into()))?;
        if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
            return Err(GatewayError::BadUrl(url.into()));
        }
        let client = reqwest::Client::builder()
            .pool_idle_timeout(skython_gateway::serve::CLIENT_POOL_IDLE)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Gateway {
            url: url.trim_end_matches('/').to_string(),
            client,
            token,
        })
    }

    /// The full URL of one of the gateway's routes (`wire::*_PATH`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn token(&self) -> &TokenFile {
        &self.token
    }

    /// A POST of `body` as JSON with the pod's bearer `token`.
    pub fn post(
        &self,
        path: &str,
        token: &str,
        body: &impl serde::Serialize,
    ) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
    }
}

/// What a gateway's error answer says: the `message` of its `{"error": {...}}` body, else the
/// start of the body as text.
pub fn refusal_message(body: &[u8]) -> String {
    const SHOWN: usize = 200;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if let Some(message) = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message"))
        .and_then(|m| m.as_str())
    {
        return message.to_string();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None if text.is_empty() => "(no message)".to_string(),
        None => text.to_string(),
    }
}

/// An error with its causes: reqwest's own message ("error sending request") omits why.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_the_gateways_error_message() {
        let body = br#"{"error":{"code":"unauthorized","message":"the token is expired"}}"#;
        assert_eq!(refusal_message(body), "the token is expired");
    }

    #[test]
    fn a_refusal_without_a_json_error_shows_the_start_of_the_body() {
        assert_eq!(refusal_message(b"  bad gateway\n"), "bad gateway");
        assert_eq!(refusal_message(b""), "(no message)");
        let long = "é".repeat(300);
        let shown = refusal_message(long.as_bytes());
        assert_eq!(shown.chars().count(), 201, "200 characters and an ellipsis");
    }

    #[test]
    fn routes_join_the_base_url_with_or_without_a_final_slash() {
        let token = TokenFile::new("/nonexistent");
        for base in ["http://gw:8080", "http://gw:8080/"] {
            let gw = Gateway::new(base, token.clone()).unwrap();
            assert_eq!(
                gw.url(crate::wire::STATE_PATH),
                "http://gw:8080/internal/v1/state"
            );
        }
    }

    #[test]
    fn a_gateway_url_must_be_http_or_https() {
        for bad in ["", "gateway:8080", "ftp://gw", "http://"] {
            let e = Gateway::new(bad, TokenFile::new("/t")).unwrap_err();
            assert!(matches!(e, GatewayError::BadUrl(_)), "{bad}: {e}");
        }
        assert!(Gateway::new("https://gw.example", TokenFile::new("/t")).is_ok());
    }

    #[tokio::test]
    async fn the_token_is_read_trimmed_and_an_empty_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc.def\n").unwrap();
        let file = TokenFile::new(&path);
        assert_eq!(file.read().await.unwrap(), "abc.def");
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(
            file.read().await.unwrap(),
            "rotated",
            "read again on every use"
        );
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(file.read().await, Err(TokenError::Empty { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(file.read().await, Err(TokenError::Read { .. })));
    }
}
