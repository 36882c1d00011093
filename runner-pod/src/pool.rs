//! Pool mode (`skython runner --pool <runtime>`): a runner pod started before anyone knows its
//! function. Its zygote preloads the runtime's libraries, and it waits until a gateway claims it
//! and sends it a function at [`wire::SPECIALISE_PATH`]; from then on it is that function's
//! [`RunnerPod`], for its life.
//!
//! An unclaimed pool pod can reach nothing (its NetworkPolicy has no egress), so it cannot ask
//! the gateway who is allowed to specialise it: it trusts a request only when it carries the
//! gateway's Ed25519 signature of its exact bytes ([`wire::verify`] with the pool's public key),
//! and names this pod's uid. It is specialised once: a second request (another gateway replica
//! claiming the same pod, or a replay) gets 409, and so does any request after a failed attempt,
//! since the failed function's code may have run in the pod.
//!
//! Before specialisation, `/healthz` and `/readyz` answer 200 (the pod is claimable) and every
//! other route 503 `not_specialised`; after, every route is the function's ([`RunnerPod::router`]).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use skython_crds::Runtime;
use skython_gateway::Limits;
use skython_gateway::error::{ApiError, ErrorCode};
use skython_gateway::invoke::{request_id, with_request_id};
use skython_runner::{StateHandler, Zygote};
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::Instrument;

use crate::identity::AnnouncedToken;
use crate::server::{PodError, RunnerPod, unready};
use crate::wire::{self, Specialise};

/// The largest specialise request: the largest source, escaped in JSON, and the spec around it.
const MAX_SPECIALISE_BYTES: usize = 4 * skython_crds::MAX_SOURCE_BYTES + 64 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("must be an Ed25519 public key: 64 hex characters, got {0}")]
pub struct BadPublicKey(String);

/// The pool's public key ([`wire::ENV_POOL_PUBLIC_KEY`]), checked to be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(String);

impl PublicKey {
    pub fn parse(hex: &str) -> Result<PublicKey, BadPublicKey> {
        let hex = hex.trim();
        let is_key = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if is_key {
            Ok(PublicKey(hex.to_ascii_lowercase()))
        } else {
            Err(BadPublicKey(format!("{} characters", hex.len())))
        }
    }
}

/// Who this pool pod is: what a specialise request must match.
#[derive(Debug, Clone)]
pub struct PoolIdentity {
    /// The runtime the zygote preloads; a request for a function of another is refused.
    pub runtime: Runtime,
    /// This pod's uid ([`wire::ENV_POD_UID`]).
    pub pod_uid: String,
    pub public_key: PublicKey,
}

/// Checks a specialise request before anything acts on it, signature first: an unsigned body
/// is not even parsed. Then its shape (400), that it names this pod (403), and that the
/// function is of the runtime this pod preloads (422, the pod stays claimable).
pub fn accept(
    identity: &PoolIdentity,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Specialise, ApiError> {
    let signed = signature.is_some_and(|s| wire::verify(&identity.public_key.0, body, s));
    if !signed {
        return Err(ApiError::new(
            ErrorCode::BadSignature,
            format!(
                "a specialise request must carry the pool key's Ed25519 signature of its body \
                 (hex) in {}",
                wire::SIGNATURE_HEADER
            ),
        ));
    }
    let request: Specialise = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                r#"expected {{"podUid": "<this pod's uid>", "function": "<namespace>/<name>", "spec": <the SkyFunction's spec>}}: {e}"#
            ),
        )
    })?;
    if request.pod_uid != identity.pod_uid {
        return Err(ApiError::forbidden(format!(
            "this request is for the pod {}, this is {}",
            request.pod_uid, identity.pod_uid
        )));
    }
    if request.spec.runtime != identity.runtime {
        return Err(ApiError::new(
            ErrorCode::WrongRuntime,
            format!(
                "{} needs the {} runtime; this pool pod preloads the {} runtime",
                request.function,
                request.spec.runtime.as_str(),
                identity.runtime.as_str()
            ),
        ));
    }
    Ok(request)
}

/// Where a pool pod is in its life. It moves forward only: Unclaimed → Specialising →
/// Specialised or Failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Unclaimed,
    Specialising,
    Specialised,
    /// Why specialising failed.
    Failed(String),
}

impl Claim {
    /// Takes the pod for one specialisation; false if it was taken before (whatever came of it).
    fn begin(&mut self) -> bool {
        let unclaimed = *self == Claim::Unclaimed;
        if unclaimed {
            *self = Claim::Specialising;
        }
        unclaimed
    }

    /// Records how the specialisation that [`Claim::begin`] started ended.
    fn end(&mut self, outcome: Result<(), String>) {
        if *self == Claim::Specialising {
            *self = match outcome {
                Ok(()) => Claim::Specialised,
                Err(why) => Claim::Failed(why),
            };
        }
    }

    /// `/readyz` before a function serves: 200 while claimable, 503 otherwise.
    fn readiness(&self) -> Result<(), (ErrorCode, String)> {
        match self {
            Claim::Unclaimed => Ok(()),
            Claim::Specialising | Claim::Specialised => Err((
                ErrorCode::Loading,
                "the pool pod is loading its function".into(),
            )),
            Claim::Failed(why) => Err((
                ErrorCode::LoadError,
                format!("the pool pod failed to take its function: {why}"),
            )),
        }
    }
}

/// The answer to a specialise request that succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Specialised {
    /// The SkyFunction's `namespace/name`, as the request named it.
    pub function: String,
    /// From the request's arrival to a worker having loaded the function.
    pub specialise_ms: u64,
}

/// The function a pool pod serves once specialised, with its routes.
struct Served {
    pod: Arc<RunnerPod>,
    router: Router,
}

/// A pool pod: no function until a gateway specialises it, then one for its life.
pub struct PoolPod {
    zygote: Arc<Zygote>,
    identity: PoolIdentity,
    limits: Limits,
    state: Arc<dyn StateHandler>,
    announced: Arc<AnnouncedToken>,
    /// The state machine, behind the channel's lock; watched by [`PoolPod::specialised`].
    claim: watch::Sender<Claim>,
    served: OnceLock<Served>,
}

impl PoolPod {
    /// A pool pod whose function will run on `zygote` (already started with the runtime's
    /// libraries), with `limits`, its state through `state`, proving its identity with the token
    /// in `announced`.
    pub fn new(
        zygote: Arc<Zygote>,
        identity: PoolIdentity,
        limits: Limits,
        state: Arc<dyn StateHandler>,
        announced: Arc<AnnouncedToken>,
    ) -> Arc<PoolPod> {
        Arc::new(PoolPod {
            zygote,
            identity,
            limits,
            state,
            announced,
            claim: watch::Sender::new(Claim::Unclaimed),
            served: OnceLock::new(),
        })
    }

    /// The function's pod, from the moment its source passed inspection (it may still be
    /// loading, or have failed to).
    pub fn pod(&self) -> Option<Arc<RunnerPod>> {
        self.served.get().map(|s| s.pod.clone())
    }

    /// Resolves when specialising ends: with the function's pod if it succeeded.
    pub async fn specialised(&self) -> Option<Arc<RunnerPod>> {
        let mut claim = self.claim.subscribe();
        let ended = claim
            .wait_for(|c| matches!(c, Claim::Specialised | Claim::Failed(_)))
            .await
            .ok()?
            .clone();
        (ended == Claim::Specialised).then(|| self.pod()).flatten()
    }

    pub fn router(self: Arc<Self>) -> Router {
        let specialise = post(specialise).layer(DefaultBodyLimit::max(MAX_SPECIALISE_BYTES));
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(wire::SPECIALISE_PATH, specialise)
            .fallback(dispatch)
            .with_state(self)
    }

    /// Specialises the pod for the request in `body`, once; the work goes on if the caller
    /// hangs up (the pod must not stay half-specialised).
    async fn specialise(
        self: &Arc<Self>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Specialised, ApiError> {
        let started = Instant::now();
        let request = accept(&self.identity, signature, body)?;
        if !self.claim.send_if_modified(Claim::begin) {
            return Err(ApiError::new(
                ErrorCode::AlreadySpecialised,
                "this pool pod was specialised already; it serves no other function",
            ));
        }
        let label = format!("{}/{}", request.spec.owner, request.spec.endpoint);
        let span = tracing::info_span!("pool", function = %label);
        let pool = self.clone();
        let work = async move {
            let outcome = pool
                .load(&request.spec, request.entrypoint.as_deref())
                .await;
            let why = outcome.as_ref().map(|_| ()).map_err(|e| e.message.clone());
            pool.claim.send_modify(|c| c.end(why));
            let specialise_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if outcome.is_ok() {
                tracing::info!(skyfunction = %request.function, specialise_ms, "specialised");
            }
            outcome.map(|()| Specialised {
                function: request.function,
                specialise_ms,
            })
        };
        tokio::spawn(work.instrument(span))
            .await
            .map_err(|e| ApiError::internal(format!("specialising stopped: {e}")))?
    }

    /// Becomes the function's pod and loads it in a first worker; reads the source first
    /// unless the request says what its entry function is.
    async fn load(
        &self,
        spec: &skython_crds::SkyFunctionSpec,
        entrypoint: Option<&str>,
    ) -> Result<(), ApiError> {
        let (zygote, limits) = (self.zygote.clone(), self.limits.clone());
        let (state, announced) = (self.state.clone(), self.announced.clone());
        let pod = match entrypoint {
            Some(entrypoint) => {
                RunnerPod::checked(zygote, spec, entrypoint, limits, state, announced)
            }
            None => RunnerPod::new(zygote, spec, limits, state, announced).await,
        }
        .map_err(refusal)?;
        let router = pod.clone().router();
        // Only the one request `Claim::begin` let through gets here.
        let _ = self.served.set(Served {
            pod: pod.clone(),
            router,
        });
        pod.warm().await.map_err(refusal)
    }
}

/// Why a function could not become this pod's, as the specialise request's answer.
fn refusal(e: PodError) -> ApiError {
    let unprocessable =
        |code| ApiError::new(code, e.to_string()).with_status(StatusCode::UNPROCESSABLE_ENTITY);
    match &e {
        PodError::Source(source) => {
            let err = unprocessable(ErrorCode::InvalidSource);
            match source.line {
                Some(line) => err.with("line", line),
                None => err,
            }
        }
        PodError::Load(_) => unprocessable(ErrorCode::LoadError),
        PodError::Runtime(_) => ApiError::new(ErrorCode::RuntimeUnavailable, e.to_string()),
        PodError::Read { .. } | PodError::BadSpec { .. } | PodError::Metrics(_) => {
            ApiError::internal(e.to_string())
        }
    }
}

async fn specialise(
    State(pool): State<Arc<PoolPod>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let signature = headers
        .get(wire::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let answer = match body {
        Ok(body) => pool
            .specialise(signature, &body)
            .await
            .map(|done| axum::Json(done).into_response()),
        Err(e) => Err(e.into()),
    };
    with_request_id(answer, request_id(&headers))
}

/// Every route but the pool's own: the function's once there is one.
async fn dispatch(State(pool): State<Arc<PoolPod>>, req: Request<Body>) -> Response {
    if let Some(served) = pool.served.get() {
        return match served.router.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
    }
    if req.method() == axum::http::Method::GET && req.uri().path() == "/readyz" {
        return match pool.claim.borrow().readiness() {
            Ok(()) => "claimable".into_response(),
            Err((code, message)) => unready(code, message),
        };
    }
    let e = ApiError::new(
        ErrorCode::NotSpecialised,
        format!(
            "this is a pool pod waiting for a function: a gateway must specialise it \
             (POST {}) before it serves calls",
            wire::SPECIALISE_PATH
        ),
    );
    with_request_id(Err(e), request_id(req.headers()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skython_crds::SkyFunctionSpec;
    use wire::PoolKey;

    fn key() -> PoolKey {
        PoolKey::from_secret(b"the pool secret").unwrap()
    }

    fn identity() -> PoolIdentity {
        PoolIdentity {
            runtime: Runtime::Standard,
            pod_uid: "uid-1".into(),
            public_key: PublicKey::parse(&key().public_hex()).unwrap(),
        }
    }

    fn request(pod_uid: &str) -> Vec<u8> {
        let spec: SkyFunctionSpec = serde_json::from_value(serde_json::json!({
            "owner": "alice", "endpoint": "calc", "source": "def calc():\n    return 1\n"
        }))
        .unwrap();
        serde_json::to_vec(&Specialise {
            pod_uid: pod_uid.into(),
            function: "alice/calc".into(),
            spec,
            entrypoint: None,
        })
        .unwrap()
    }

    fn refused(signature: Option<&str>, body: &[u8]) -> (StatusCode, &'static str) {
        let e = accept(&identity(), signature, body).unwrap_err();
        (e.status, e.code.as_str())
    }

    #[test]
    fn a_signed_request_for_this_pod_is_accepted() {
        let body = request("uid-1");
        let accepted = accept(&identity(), Some(&key().sign(&body)), &body).unwrap();
        assert_eq!(
            (accepted.pod_uid.as_str(), accepted.function.as_str()),
            ("uid-1", "alice/calc")
        );
    }

    #[test]
    fn an_unsigned_or_badly_signed_request_is_401_bad_signature() {
        let body = request("uid-1");
        let other = PoolKey::from_secret(b"another secret").unwrap();
        for signature in [None, Some("zz"), Some(other.sign(&body).as_str())] {
            assert_eq!(
                refused(signature, &body),
                (StatusCode::UNAUTHORIZED, "bad_signature")
            );
        }
    }

    #[test]
    fn the_signature_is_checked_before_the_body_is_parsed() {
        assert_eq!(
            refused(None, b"not json"),
            (StatusCode::UNAUTHORIZED, "bad_signature")
        );
        let signed = key().sign(b"not json");
        assert_eq!(
            refused(Some(&signed), b"not json"),
            (StatusCode::BAD_REQUEST, "invalid_body")
        );
    }

    #[test]
    fn a_signed_body_of_the_wrong_shape_is_400_naming_the_fields() {
        let body = br#"{"podUid": "uid-1"}"#;
        let e = accept(&identity(), Some(&key().sign(body)), body).unwrap_err();
        assert_eq!(e.code.as_str(), "invalid_body");
        assert!(e.message.contains("\"spec\""), "{}", e.message);
    }

    #[test]
    fn a_request_for_another_pod_is_403() {
        let body = request("uid-2");
        assert_eq!(
            refused(Some(&key().sign(&body)), &body),
            (StatusCode::FORBIDDEN, "forbidden")
        );
    }

    #[test]
    fn a_function_of_another_runtime_is_422_wrong_runtime() {
        let mut full = identity();
        full.runtime = Runtime::Full;
        let body = request("uid-1");
        let e = accept(&full, Some(&key().sign(&body)), &body).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "wrong_runtime")
        );
    }

    #[test]
    fn a_public_key_is_64_hex_characters() {
        assert!(PublicKey::parse(&key().public_hex()).is_ok());
        assert!(PublicKey::parse(&format!(" {}\n", key().public_hex())).is_ok());
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(66)] {
            assert!(PublicKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_pool_pod_is_claimed_once() {
        let mut claim = Claim::Unclaimed;
        assert!(claim.begin());
        assert_eq!(claim, Claim::Specialising);
        assert!(!claim.begin(), "while specialising");
        claim.end(Ok(()));
        assert_eq!(claim, Claim::Specialised);
        assert!(!claim.begin(), "once specialised");
    }

    #[test]
    fn a_failed_pool_pod_is_never_claimable_again() {
        let mut claim = Claim::Unclaimed;
        assert!(claim.begin());
        claim.end(Err("no module named nope".into()));
        assert_eq!(claim, Claim::Failed("no module named nope".into()));
        assert!(!claim.begin());
        let (code, message) = claim.readiness().unwrap_err();
        assert_eq!(code, ErrorCode::LoadError);
        assert!(message.contains("no module named nope"), "{message}");
    }

    #[test]
    fn only_a_specialisation_in_progress_ends() {
        let mut claim = Claim::Unclaimed;
        claim.end(Ok(()));
        assert_eq!(claim, Claim::Unclaimed);
        let mut failed = Claim::Failed("x".into());
        failed.end(Ok(()));
        assert_eq!(failed, Claim::Failed("x".into()));
    }

    #[test]
    fn only_an_unclaimed_pod_is_ready() {
        assert_eq!(Claim::Unclaimed.readiness(), Ok(()));
        assert_eq!(
            Claim::Specialising.readiness().unwrap_err().0,
            ErrorCode::Loading
        );
    }
}
