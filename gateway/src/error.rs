//! One error shape for every response: `{"error": {"code": "...", "message": "...", ...}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use skython_store::StoreError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Machine-readable, stable: clients switch on it.
    pub code: &'static str,
    /// For people: says what was expected.
    pub message: String,
    /// More fields next to code and message (e.g. `line`, `expected`, `fields`).
    pub extra: Map<String, Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 404 for `owner/endpoint`, the same for a missing function and an invalid name.
    pub fn function_not_found(owner: &str, endpoint: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "function_not_found",
            format!("no function {owner}/{endpoint}"),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::forbidden_code("forbidden", message)
    }

    pub fn forbidden_code(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn body(&self) -> Value {
        let mut err = Map::new();
        err.insert("code".into(), self.code.into());
        err.insert("message".into(), self.message.clone().into());
        err.extend(self.extra.clone());
        json!({ "error": err })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(msg) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            StoreError::QuotaExceeded(q) => {
                ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", q.to_string())
            }
            StoreError::Invalid(msg) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_operation", msg)
            }
            StoreError::Unavailable(msg) => {
                tracing::warn!("storage unavailable: {msg}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the storage backend cannot be reached; try again",
                )
            }
            StoreError::Aborted(msg) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "write_aborted", msg)
            }
            StoreError::Backend(source) => {
                tracing::error!(error = %source, "storage failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the storage backend failed; try again",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, status = %self.status, "{}", self.message);
        }
        // A trailing newline keeps terminal output readable; JSON parsers ignore it.
        let mut resp = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            format!("{}\n", self.body()),
        )
            .into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let seconds = self.extra.get("retryAfterSeconds").and_then(Value::as_u64);
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    seconds.map_or(HeaderValue::from_static("1"), HeaderValue::from),
                );
            }
            // The rest of the body was not read, so the connection cannot carry another
            // request: say so, or a client reusing it meets a reset.
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

/// Turns axum's own rejections (body too large, unreadable body, bad path) into
/// the common shape.
pub fn from_rejection(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(status, "body_too_large", text),
        s if s.is_client_error() => ApiError::new(s, "bad_request", text),
        s => ApiError::new(s, "internal", text),
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        // A body that did not arrive in time (the server's body timeout) is the client's
        // slowness: 408, not a malformed request.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&r);
        while let Some(e) = source {
            if e.is::<tower_http::timeout::TimeoutError>() {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request body did not arrive in time",
                );
            }
            source = e.source();
        }
        from_rejection(r.status(), r.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        from_rejection(r.status(), r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request("bad_query", r.body_text())
    }
}
