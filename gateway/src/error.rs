//! One error shape for every response: `{"error": {"code": "...", "message": "...", ...}}`,
//! with the codes one enum ([`ErrorCode`]) that the responses and the OpenAPI document share.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use skython_store::StoreError;

/// Declares [`ErrorCode`] from one table: each code's meaning, wire name and usual status.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $code:literal => $status:ident,)+) => {
        /// Machine-readable and stable: clients switch on these strings.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, schemars::JsonSchema)]
        #[serde(rename_all = "snake_case")]
        #[schemars(transform = codes_as_enum)]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            /// The status the code is answered with, unless [`ApiError::with_status`] says
            /// otherwise.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)+
                }
            }
        }
    };
}

error_codes! {
    // Requests that do not fit.
    /// A request the server could not read (a malformed path segment, an unsupported media
    /// type, ...); the status is the 4xx that fits.
    BadRequest = "bad_request" => BAD_REQUEST,
    /// The body is not JSON, or nests deeper than allowed.
    BadJson = "bad_json" => BAD_REQUEST,
    /// A call's arguments do not fit the function's signature or type hints (`param` names
    /// the parameter, `expected` lists the parameters).
    BadArguments = "bad_arguments" => BAD_REQUEST,
    /// A query parameter is unknown or out of range.
    BadQuery = "bad_query" => BAD_REQUEST,
    /// The body is JSON, but not of the expected shape.
    InvalidBody = "invalid_body" => BAD_REQUEST,
    /// A function spec field is invalid (`fields` lists each).
    InvalidSpec = "invalid_spec" => BAD_REQUEST,
    /// A user name that is not a DNS label.
    InvalidName = "invalid_name" => BAD_REQUEST,
    /// A user name kept for the platform.
    NameReserved = "name_reserved" => BAD_REQUEST,
    /// A password too short.
    WeakPassword = "weak_password" => BAD_REQUEST,
    /// The source does not parse (`line`, `column`, `text` say where).
    SyntaxError = "syntax_error" => BAD_REQUEST,
    /// The source defines no function to call.
    NoEntrypoint = "no_entrypoint" => BAD_REQUEST,
    /// The source defines several functions and names none as the entrypoint.
    AmbiguousEntrypoint = "ambiguous_entrypoint" => BAD_REQUEST,
    /// The named entrypoint is not a function of the source.
    EntrypointNotFound = "entrypoint_not_found" => BAD_REQUEST,
    /// The source is too large to inspect.
    SourceTooLarge = "source_too_large" => BAD_REQUEST,
    /// The source nests too deeply to inspect.
    SourceTooDeeplyNested = "source_too_deeply_nested" => BAD_REQUEST,
    /// The source is too complex to inspect.
    SourceTooComplex = "source_too_complex" => BAD_REQUEST,
    /// The source was refused for another reason.
    InvalidSource = "invalid_source" => BAD_REQUEST,
    /// The request body is larger than the server accepts.
    BodyTooLarge = "body_too_large" => PAYLOAD_TOO_LARGE,
    /// The request body did not arrive in time.
    RequestTimeout = "request_timeout" => REQUEST_TIMEOUT,
    /// The route exists, but not for this method.
    MethodNotAllowed = "method_not_allowed" => METHOD_NOT_ALLOWED,
    /// The storage refused an operation that cannot apply to the data as it is.
    InvalidOperation = "invalid_operation" => UNPROCESSABLE_ENTITY,

    // Who asks.
    /// No credential, or not a valid one, or one of the wrong kind for this API.
    Unauthorized = "unauthorized" => UNAUTHORIZED,
    /// Wrong name or password at log-in.
    InvalidCredentials = "invalid_credentials" => UNAUTHORIZED,
    /// A call presented an API key or token that is unknown, revoked or expired.
    InvalidKey = "invalid_key" => UNAUTHORIZED,
    /// The function is called with an API key only, and none was sent.
    KeyRequired = "key_required" => UNAUTHORIZED,
    /// The credential is valid, but not its owner's to use here.
    Forbidden = "forbidden" => FORBIDDEN,
    /// A write authenticated by the session cookie came from another site.
    CsrfCheckFailed = "csrf_check_failed" => FORBIDDEN,
    /// A browser call from an origin the function does not allow.
    OriginNotAllowed = "origin_not_allowed" => FORBIDDEN,
    /// The API key is not for this function.
    KeyNotAllowed = "key_not_allowed" => FORBIDDEN,
    /// Sign-up needs an invitation (an admin's token).
    SignupByInvitation = "signup_by_invitation" => FORBIDDEN,
    /// Sign-up is closed on this server.
    SignupClosed = "signup_closed" => FORBIDDEN,
    /// An owner's quota (functions, state) is used up.
    QuotaExceeded = "quota_exceeded" => FORBIDDEN,
    /// Too many failed logins for the account or the address (`retryAfterSeconds`).
    TooManyAttempts = "too_many_attempts" => TOO_MANY_REQUESTS,

    // What is asked for.
    /// No such route, or no such thing (token, key, ...).
    NotFound = "not_found" => NOT_FOUND,
    /// No such function, or not one the caller may see.
    FunctionNotFound = "function_not_found" => NOT_FOUND,
    /// The function has no such version.
    VersionNotFound = "version_not_found" => NOT_FOUND,
    /// The write conflicts with what exists (the function exists, changed meanwhile, ...).
    Conflict = "conflict" => CONFLICT,
    /// The user name is taken.
    NameTaken = "name_taken" => CONFLICT,

    // Calls.
    /// The function raised (`type` is the Python exception type).
    FunctionError = "function_error" => INTERNAL_SERVER_ERROR,
    /// The function's module raised while loading.
    LoadError = "load_error" => INTERNAL_SERVER_ERROR,
    /// The function's module took too long to load.
    LoadTimeout = "load_timeout" => GATEWAY_TIMEOUT,
    /// The function returned a value that is not JSON.
    UnserializableResult = "unserializable_result" => INTERNAL_SERVER_ERROR,
    /// The function returned a value larger than allowed.
    ResultTooLarge = "result_too_large" => INTERNAL_SERVER_ERROR,
    /// The function's state storage cannot be reached; the same call may work later.
    StateUnavailable = "state_unavailable" => SERVICE_UNAVAILABLE,
    /// The call ran past the function's timeout.
    Timeout = "timeout" => GATEWAY_TIMEOUT,
    /// The worker died during the call; it will be replaced.
    WorkerCrashed = "worker_crashed" => BAD_GATEWAY,
    /// The worker ran out of memory during the call; it will be replaced.
    OutOfMemory = "out_of_memory" => BAD_GATEWAY,
    /// Every worker of the function is busy and its queue is full.
    TooManyRequests = "too_many_requests" => TOO_MANY_REQUESTS,
    /// The call waited too long for a free worker or pod.
    QueueTimeout = "queue_timeout" => GATEWAY_TIMEOUT,
    /// The worker was retired as the call reached it; call again.
    Retry = "retry" => SERVICE_UNAVAILABLE,
    /// The Python runtime cannot start a worker or inspect a source (400 for a runtime not
    /// installed on this server).
    RuntimeUnavailable = "runtime_unavailable" => SERVICE_UNAVAILABLE,

    // Kubernetes.
    /// Too many calls already wait for a pod of the function.
    QueueFull = "queue_full" => SERVICE_UNAVAILABLE,
    /// The call waited too long for a pod of the function to start.
    ColdStartTimeout = "cold_start_timeout" => GATEWAY_TIMEOUT,
    /// The runner pod failed during the call; the call may have run.
    PodFailed = "pod_failed" => BAD_GATEWAY,
    /// The Kubernetes API cannot be reached, or refuses the gateway.
    PlatformUnavailable = "platform_unavailable" => SERVICE_UNAVAILABLE,
    /// The function's source never passed the operator's check, so it has no pods.
    FunctionUnavailable = "function_unavailable" => SERVICE_UNAVAILABLE,
    /// Calls of a pinned version (`endpoint@n`) are not served on Kubernetes.
    PinnedVersionsUnavailable = "pinned_versions_unavailable" => NOT_IMPLEMENTED,
    /// A runner pod announced an address that is not its own.
    AddressMismatch = "address_mismatch" => FORBIDDEN,
    /// A runner pod got an identity challenge it cannot read.
    BadChallenge = "bad_challenge" => BAD_REQUEST,
    /// A runner pod was challenged before it announced itself.
    NotAnnounced = "not_announced" => SERVICE_UNAVAILABLE,
    /// A runner pod got a caller header it cannot read.
    BadCaller = "bad_caller" => BAD_REQUEST,
    /// A runner pod's function is still loading.
    Loading = "loading" => SERVICE_UNAVAILABLE,
    /// A pool pod has no function yet: a gateway must specialise it first.
    NotSpecialised = "not_specialised" => SERVICE_UNAVAILABLE,
    /// A request to specialise a pool pod is not signed with the pool key.
    BadSignature = "bad_signature" => UNAUTHORIZED,
    /// A pool pod was specialised already (or failed to be): it serves no other function.
    AlreadySpecialised = "already_specialised" => CONFLICT,
    /// A pool pod was asked to serve a function of another runtime than the one it preloads.
    WrongRuntime = "wrong_runtime" => UNPROCESSABLE_ENTITY,

    // The server.
    /// The storage backend cannot be reached or failed; try again.
    StorageUnavailable = "storage_unavailable" => SERVICE_UNAVAILABLE,
    /// The storage gave up a write that met another; try again.
    WriteAborted = "write_aborted" => SERVICE_UNAVAILABLE,
    /// A fault of the server.
    Internal = "internal" => INTERNAL_SERVER_ERROR,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<ErrorCode> for &str {
    fn eq(&self, other: &ErrorCode) -> bool {
        *self == other.as_str()
    }
}

/// schemars describes documented unit variants as `oneOf` consts; one `enum` reads better in
/// clients and generators, with each code's meaning kept in the description.
fn codes_as_enum(schema: &mut schemars::Schema) {
    let Some(Value::Array(variants)) = schema.remove("oneOf") else {
        return;
    };
    let mut description = schema
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    description.push('\n');
    let mut codes = Vec::new();
    for v in variants {
        let code = v.get("const").cloned().unwrap_or_default();
        // Doc comments wrap; a list item reads as one line.
        let meaning = v.get("description").and_then(Value::as_str).unwrap_or("");
        let meaning = meaning.replace('\n', " ");
        description.push_str(&format!("\n- `{}`: {meaning}", code.as_str().unwrap_or("")));
        codes.push(code);
    }
    schema.insert("type".into(), "string".into());
    schema.insert("enum".into(), codes.into());
    schema.insert("description".into(), description.into());
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    /// For people: says what was expected.
    pub message: String,
    /// More fields next to code and message (e.g. `line`, `expected`, `fields`).
    pub extra: Map<String, Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with the code's usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: code.status(),
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 404 for `owner/endpoint`, the same for a missing function and an invalid name.
    pub fn function_not_found(owner: &str, endpoint: &str) -> Self {
        Self::new(
            ErrorCode::FunctionNotFound,
            format!("no function {owner}/{endpoint}"),
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn body(&self) -> Value {
        let mut err = Map::new();
        err.insert("code".into(), self.code.as_str().into());
        err.insert("message".into(), self.message.clone().into());
        err.extend(self.extra.clone());
        json!({ "error": err })
    }
}

/// The body every error answers with, as a schema named `Error` whose `code` is [`ErrorCode`].
impl schemars::JsonSchema for ApiError {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Error".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let code = generator.subschema_for::<ErrorCode>();
        schemars::json_schema!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": code,
                    "message": {"type": "string", "description": "What went wrong and what was expected."},
                    "type": {"type": "string", "description": "The Python exception type (function_error)."},
                    "expected": {"type": "array", "description": "The function's parameters (bad_arguments)."},
                    "param": {"type": "string", "description": "The parameter whose argument does not fit (bad_arguments)."},
                    "line": {"type": "integer", "description": "Line of a syntax error."},
                    "column": {"type": "integer"},
                    "fields": {"type": "array", "description": "Each invalid spec field (invalid_spec)."},
                    "retryAfterSeconds": {"type": "integer", "description": "When to try again (too_many_attempts)."}
                },
                "additionalProperties": true
            }}
        })
    }
}

/// `Error` and `ErrorCode`, for the components of a self-contained OpenAPI document.
pub fn component_schemas() -> Map<String, Value> {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas/".into();
    let mut generator = settings.into_generator();
    generator.subschema_for::<ApiError>();
    generator.take_definitions(true)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} not found")),
            StoreError::Conflict(msg) => ApiError::new(ErrorCode::Conflict, msg),
            StoreError::QuotaExceeded(q) => ApiError::new(ErrorCode::QuotaExceeded, q.to_string()),
            StoreError::Invalid(msg) => ApiError::new(ErrorCode::InvalidOperation, msg),
            StoreError::Unavailable(msg) => {
                tracing::warn!("storage unavailable: {msg}");
                ApiError::new(
                    ErrorCode::StorageUnavailable,
                    "the storage backend cannot be reached; try again",
                )
            }
            StoreError::Aborted(msg) => ApiError::new(ErrorCode::WriteAborted, msg),
            StoreError::Backend(source) => {
                tracing::error!(error = %source, "storage failed");
                ApiError::new(
                    ErrorCode::StorageUnavailable,
                    "the storage backend failed; try again",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code.as_str(), status = %self.status, "{}", self.message);
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
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(ErrorCode::BodyTooLarge, text),
        s if s.is_client_error() => ApiError::new(ErrorCode::BadRequest, text).with_status(s),
        s => ApiError::new(ErrorCode::Internal, text).with_status(s),
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
                    ErrorCode::RequestTimeout,
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
        ApiError::new(ErrorCode::BadQuery, r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire name from serde (what the document says) is the one the responses carry.
    #[test]
    fn serde_names_each_code_as_its_wire_name() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn wire_names_are_unique() {
        let names: std::collections::HashSet<_> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn the_schema_lists_every_code_as_one_enum() {
        let schema = schemars::schema_for!(ErrorCode).to_value();
        let listed: Vec<&str> = schema["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, all);
        assert_eq!(schema["type"], "string");
        let description = schema["description"].as_str().unwrap();
        assert!(description.contains("- `key_required`: The function is called with"));
    }

    #[test]
    fn an_error_takes_its_codes_status_unless_told() {
        let e = ApiError::new(ErrorCode::KeyRequired, "send a key");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let e = e.with_status(StatusCode::BAD_REQUEST);
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::BAD_REQUEST, "key_required")
        );
    }

    #[test]
    fn the_body_carries_the_wire_name() {
        let e = ApiError::new(ErrorCode::BadJson, "not JSON").with("line", 1);
        assert_eq!(
            e.body(),
            json!({"error": {"code": "bad_json", "message": "not JSON", "line": 1}})
        );
    }
}
