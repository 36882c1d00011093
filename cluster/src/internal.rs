//! The routes runner pods call (`/internal/v1/...`), authenticated by the pod's projected
//! service-account token (audience [`wire::TOKEN_AUDIENCE`]): the gateway asks the API server
//! who the token belongs to (a TokenReview names the pod and its uid), so a pod can speak only
//! for itself, and only for the function its Pod object belongs to.
//!
//! - announce: the pod says where it listens; before routing to it the gateway checks that the
//!   Pod object does not show another IP and that whoever listens at the address holds this
//!   pod's token (an identity challenge), so no pod can draw another's traffic;
//! - state: `store`/`load` of the pod's workers, scoped to the pod's function. Pods hold no
//!   database credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use skython_gateway::Limits;
use skython_gateway::deployments::ScopedState;
use skython_gateway::error::{ApiError, ApiResult, ErrorCode};
use skython_runner::{StateAnswer, StateHandler, StateRequest};
use skython_runner_pod::wire;
use skython_store::{StateScope, Store};

use crate::FunctionRef;
use crate::pods::{Announced, PodView, Pods, PoolPodView};

/// Who a token belongs to, as the API server says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// How long a reviewed token is trusted without asking again (projected tokens live an hour;
/// a deleted pod's token stops working at the API server at once, here within this).
const REVIEW_TTL: Duration = Duration::from_secs(60);
/// How long a request from a claimed pool pod waits for its claim to show on the Pod.
const CLAIM_RECORD_WAIT: Duration = Duration::from_secs(3);

/// Reads a TokenReview's answer: the pod a bound service-account token was issued to.
pub fn pod_identity(review: &TokenReview) -> Option<PodIdentity> {
    let status = review.status.as_ref()?;
    if status.authenticated != Some(true) {
        return None;
    }
    let user = status.user.as_ref()?;
    let namespace = user
        .username
        .as_deref()?
        .strip_prefix("system:serviceaccount:")?
        .split(':')
        .next()?
        .to_string();
    let extra = user.extra.as_ref()?;
    let one = |k: &str| extra.get(k)?.first().cloned();
    Some(PodIdentity {
        namespace,
        name: one("authentication.kubernetes.io/pod-name")?,
        uid: one("authentication.kubernetes.io/pod-uid")?,
    })
}

/// Looks up the (owner, endpoint) that a function object holds, if it holds one.
pub type ResolveScope = Arc<dyn Fn(&FunctionRef) -> Option<StateScope> + Send + Sync>;

pub struct Internal {
    client: kube::Client,
    pods: Arc<Pods>,
    store: Arc<dyn Store>,
    limits: Limits,
    resolve: ResolveScope,
    http: reqwest::Client,
    reviewed: Mutex<HashMap<String, (PodIdentity, Instant)>>,
}

impl Internal {
    pub fn new(
        client: kube::Client,
        pods: Arc<Pods>,
        store: Arc<dyn Store>,
        limits: Limits,
        resolve: ResolveScope,
    ) -> Result<Arc<Self>, reqwest::Error> {
        // A challenge per announcement: nothing worth keeping a connection for.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Arc::new(Internal {
            client,
            pods,
            store,
            limits,
            resolve,
            http,
            reviewed: Mutex::default(),
        }))
    }

    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route(wire::ANNOUNCE_PATH, post(announce))
            .route(wire::STATE_PATH, post(state))
            .with_state(self)
    }

    /// The pod the request's bearer token belongs to.
    async fn authenticate(&self, headers: &HeaderMap) -> ApiResult<(PodIdentity, String)> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized("send the pod's projected token as `Authorization: Bearer ...`")
            })?
            .to_string();
        let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        {
            let mut cache = self.reviewed.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, (_, at)| at.elapsed() < REVIEW_TTL);
            if let Some((id, _)) = cache.get(&key) {
                return Ok((id.clone(), token));
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.clone(),
                audiences: Some(vec![wire::TOKEN_AUDIENCE.into()]),
            },
            ..Default::default()
        };
        let answer = kube::Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::error!("a TokenReview failed: {e}");
                ApiError::new(
                    ErrorCode::PlatformUnavailable,
                    "the gateway could not check the token with the Kubernetes API (it needs to create tokenreviews); see its log",
                )
            })?;
        let id = pod_identity(&answer).ok_or_else(|| {
            unauthorized(
                "the token is not a runner pod's token for this gateway (audience skython-gateway)",
            )
        })?;
        self.reviewed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (id.clone(), Instant::now()));
        Ok((id, token))
    }

    /// The runner pod `id` names, from the watch (or this gateway's claims), or from the API
    /// when the watch has not shown it yet (a pod announces within a second of its creation).
    /// A pool pod that another replica just claimed gets its function's labels a moment after
    /// it serves: it is waited for, briefly.
    async fn pod(&self, id: &PodIdentity) -> ApiResult<PodView> {
        if let Some(p) = self.pods.pod(&id.uid) {
            return Ok(p);
        }
        let deadline = Instant::now() + CLAIM_RECORD_WAIT;
        loop {
            let pod = kube::Api::<Pod>::namespaced(self.client.clone(), &id.namespace)
                .get_opt(&id.name)
                .await
                .map_err(|e| {
                    tracing::error!("reading pod {}/{}: {e}", id.namespace, id.name);
                    ApiError::new(
                        ErrorCode::PlatformUnavailable,
                        "the gateway could not read the pod from the Kubernetes API",
                    )
                })?
                .filter(|p| p.metadata.uid.as_deref() == Some(id.uid.as_str()));
            if let Some(view) = pod.as_ref().and_then(PodView::of) {
                self.pods.apply(view.clone());
                return Ok(view);
            }
            if pod.as_ref().and_then(PoolPodView::of).is_none() || Instant::now() >= deadline {
                return Err(forbidden(
                    "the token's pod is not a runner pod of a function (or is gone)",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether whoever listens at `addr` holds `token`.
    async fn proves(&self, addr: std::net::SocketAddr, token: &str) -> bool {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let expected = wire::proof(token, &nonce);
        let res = self
            .http
            .post(format!("http://{addr}{}", wire::IDENTITY_PATH))
            .json(&wire::IdentityChallenge { nonce })
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => r
                .json::<wire::IdentityProof>()
                .await
                .is_ok_and(|p| p.proof == expected),
            _ => false,
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

async fn announce(
    State(s): State<Arc<Internal>>,
    headers: HeaderMap,
    body: Result<Json<wire::Announce>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<StatusCode> {
    let Json(a) = body.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("expected {{\"ip\", \"port\", \"draining\"}}: {e}"),
        )
    })?;
    let (id, token) = s.authenticate(&headers).await?;
    let pod = s.pod(&id).await?;
    let addr = std::net::SocketAddr::new(a.ip, a.port);
    if !a.draining {
        if pod.ip.is_some_and(|ip| ip != a.ip) {
            return Err(ApiError::new(
                ErrorCode::AddressMismatch,
                format!("the announced address {} is not the pod's IP", a.ip),
            ));
        }
        if !s.proves(addr, &token).await {
            tracing::warn!(pod = %pod.name, %addr, "an announced address did not prove the pod's identity");
            return Err(forbidden(
                "whoever listens at the announced address did not prove holding this pod's token",
            ));
        }
    }
    s.pods.announce(
        &pod.uid,
        Announced {
            addr,
            draining: a.draining,
        },
    );
    tracing::debug!(pod = %pod.name, %addr, draining = a.draining, "pod announced");
    Ok(StatusCode::NO_CONTENT)
}

async fn state(
    State(s): State<Arc<Internal>>,
    headers: HeaderMap,
    body: Result<Json<StateRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<StateAnswer>> {
    let Json(request) = body.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("expected a state request: {e}"),
        )
    })?;
    let (id, _) = s.authenticate(&headers).await?;
    let pod = s.pod(&id).await?;
    let scope = (s.resolve)(&pod.function).ok_or_else(|| {
        forbidden("the pod's function does not hold an endpoint (EndpointTaken, or deleted)")
    })?;
    let answer = ScopedState::new(s.store.clone(), scope, &s.limits)
        .handle(request)
        .await;
    Ok(Json(answer))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    use super::*;

    fn review(authenticated: bool, username: &str, pod: Option<(&str, &str)>) -> TokenReview {
        let extra = pod.map(|(name, uid)| {
            [
                (
                    "authentication.kubernetes.io/pod-name".to_string(),
                    vec![name.to_string()],
                ),
                (
                    "authentication.kubernetes.io/pod-uid".to_string(),
                    vec![uid.to_string()],
                ),
            ]
            .into()
        });
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                user: Some(UserInfo {
                    username: Some(username.into()),
                    extra,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_bound_token_names_its_pod() {
        let r = review(
            true,
            "system:serviceaccount:team-a:default",
            Some(("p", "u")),
        );
        assert_eq!(
            pod_identity(&r),
            Some(PodIdentity {
                namespace: "team-a".into(),
                name: "p".into(),
                uid: "u".into()
            })
        );
    }

    #[test]
    fn an_unauthenticated_token_names_nobody() {
        let r = review(
            false,
            "system:serviceaccount:team-a:default",
            Some(("p", "u")),
        );
        assert_eq!(pod_identity(&r), None);
    }

    #[test]
    fn a_token_not_bound_to_a_pod_names_nobody() {
        assert_eq!(
            pod_identity(&review(true, "system:serviceaccount:a:b", None)),
            None
        );
        assert_eq!(pod_identity(&review(true, "alice", Some(("p", "u")))), None);
    }
}
