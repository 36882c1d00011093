//! Who may call a function, and from which web pages: the decisions of the call path, pure, so
//! unit tests call them directly.
//!
//! A function's `access` is `public` (anyone) or `key`: a call then presents an API key scoped
//! to it (`X-Api-Key: <key>` or `Authorization: Bearer <key>`), or a token of the function's
//! owner (or the admin). Whatever the credential, the call runs as the function's owner (its
//! state, limits and secrets); the function learns who called from `skython.caller()`.
//!
//! Browsers: endpoints answer CORS preflights and carry `Access-Control-Allow-Origin` for the
//! origins the function allows (`allowedOrigins`, any by default). Calls never read cookies, so
//! allowing any origin exposes nothing a page could not get with a plain request.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use skython_crds::{Access, Signature, SkyFunctionSpec};
use skython_runner::Caller;
use skython_store::CredentialKind;

use crate::contract::ArgSchema;
use crate::credentials::Authenticated;
use crate::error::{ApiError, ErrorCode};

/// What the gateway checks before a call, from the function's current spec.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    pub owner: String,
    pub endpoint: String,
    pub access: Access,
    /// `None`: any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// What a call may carry, from the entry function's type hints.
    pub args: ArgSchema,
}

impl CallPolicy {
    /// The policy of a version: computed once per deployed version (the arguments' schema is
    /// parsed from the hints), then one lookup per call.
    pub fn of(spec: &SkyFunctionSpec, signature: Option<&Signature>) -> Self {
        CallPolicy {
            owner: spec.owner.clone(),
            endpoint: spec.endpoint.clone(),
            access: spec.effective_access(),
            allowed_origins: spec.allowed_origins.clone(),
            args: signature.map(ArgSchema::from_signature).unwrap_or_default(),
        }
    }

    /// Whether a key scoped to `functions` may call this function.
    fn in_scope(&self, functions: &[String]) -> bool {
        functions.iter().any(|f| {
            f.split_once('/')
                .is_some_and(|(o, e)| o == self.owner && (e == "*" || e == self.endpoint))
        })
    }
}

/// The secret a call presents, if any: `X-Api-Key`, else a bearer `Authorization`.
pub fn presented(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    if let Some(k) = headers.get("x-api-key") {
        return k
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Some)
            .ok_or_else(|| invalid_key("the X-Api-Key header is empty or not text"));
    }
    crate::auth::bearer(headers, "send an API key as `X-Api-Key: <key>`")
}

fn invalid_key(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidKey, message)
}

/// Who a call comes from, if it may run: `who` is the presented secret's owner (`None`: none
/// presented). A presented secret that is not valid is refused even for a public function, so
/// a client with a revoked key finds out.
pub fn authorize(
    policy: &CallPolicy,
    presented: bool,
    who: Option<&Authenticated>,
) -> Result<Caller, ApiError> {
    let label = || format!("{}/{}", policy.owner, policy.endpoint);
    let Some(who) = who else {
        if presented {
            return Err(invalid_key(
                "the API key or token is not valid (unknown, revoked or expired)",
            ));
        }
        return match policy.access {
            Access::Public => Ok(Caller::Anonymous),
            Access::Key => Err(ApiError::new(
                ErrorCode::KeyRequired,
                format!(
                    "{} needs an API key: send `X-Api-Key: <key>` (or `Authorization: \
                     Bearer <key>`); its owner creates keys with POST /api/v1/keys",
                    label()
                ),
            )),
        };
    };
    let c = &who.credential;
    let caller = match c.kind {
        CredentialKind::Key => Caller::Key {
            id: c.id.clone(),
            owner: c.owner.clone(),
            name: c.name.clone(),
        },
        CredentialKind::Token | CredentialKind::Session => Caller::User {
            name: who.user.name.clone(),
        },
    };
    let allowed = match (policy.access, c.kind) {
        (Access::Public, _) => true,
        (Access::Key, CredentialKind::Key) => policy.in_scope(&c.functions),
        (Access::Key, _) => who.user.is_admin || who.user.name == policy.owner,
    };
    if !allowed {
        let what = match c.kind {
            CredentialKind::Key => format!("the key {} is not scoped to {}", c.id, label()),
            _ => format!(
                "{}'s token does not call {}: ask {} for an API key",
                who.user.name,
                label(),
                policy.owner
            ),
        };
        return Err(ApiError::new(ErrorCode::KeyNotAllowed, what));
    }
    Ok(caller)
}

/// Headers a call's answer carries for a browser page of `origin` (none when the page's origin
/// is not allowed, so the browser keeps the answer from it).
pub fn cors_headers(
    policy: Option<&CallPolicy>,
    origin: Option<&HeaderValue>,
) -> Vec<(HeaderName, HeaderValue)> {
    let Some(origin) = origin else {
        return Vec::new();
    };
    let any = HeaderValue::from_static("*");
    let allowed = match policy.map(|p| p.allowed_origins.as_deref()) {
        // An unknown function (its 404 is no secret), or one that allows any origin.
        None | Some(None) => Some(any),
        Some(Some(list)) if list.iter().any(|o| o == "*") => Some(any),
        Some(Some(list)) if origin.to_str().is_ok_and(|o| list.iter().any(|l| l == o)) => {
            Some(origin.clone())
        }
        Some(Some(_)) => None,
    };
    let Some(allowed) = allowed else {
        return Vec::new();
    };
    let mut h = vec![
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed.clone()),
        (
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, x-skython-cold-start"),
        ),
    ];
    if allowed != "*" {
        h.push((header::VARY, HeaderValue::from_static("origin")));
    }
    h
}

/// The answer to a preflight (`OPTIONS`) from a page of `origin`.
pub fn preflight(
    policy: &CallPolicy,
    origin: Option<&HeaderValue>,
) -> Result<Vec<(HeaderName, HeaderValue)>, ApiError> {
    let mut h = cors_headers(Some(policy), origin);
    if h.is_empty() {
        return Err(ApiError::new(
            ErrorCode::OriginNotAllowed,
            format!(
                "{}/{} may not be called from pages of {}; its owner lists the origins allowed \
                 in allowedOrigins",
                policy.owner,
                policy.endpoint,
                origin
                    .and_then(|o| o.to_str().ok())
                    .unwrap_or("this origin (none was sent)")
            ),
        ));
    }
    h.extend([
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, OPTIONS"),
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type, x-api-key, authorization, x-request-id"),
        ),
        (
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        ),
    ]);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use jiff::Timestamp;
    use skython_store::{Credential, User};

    fn policy(access: Access) -> CallPolicy {
        CallPolicy {
            owner: "bob".into(),
            endpoint: "f".into(),
            access,
            allowed_origins: None,
            args: ArgSchema::default(),
        }
    }

    fn who(name: &str, kind: CredentialKind, functions: &[&str]) -> Authenticated {
        Authenticated {
            user: User {
                name: name.into(),
                is_admin: name == "admin",
                created_at: Timestamp::now(),
            },
            credential: Credential {
                id: "key_1".into(),
                kind,
                owner: name.into(),
                name: "app".into(),
                hash: "h".into(),
                prefix: "sky_key_1234".into(),
                functions: functions.iter().map(|f| f.to_string()).collect(),
                created_at: Timestamp::now(),
                expires_at: None,
                revoked_at: None,
                usage: Default::default(),
            },
        }
    }

    #[test]
    fn a_public_function_runs_for_anonymous_callers() {
        assert_eq!(
            authorize(&policy(Access::Public), false, None).map_err(|e| e.code.as_str()),
            Ok(Caller::Anonymous)
        );
    }

    #[test]
    fn a_gated_function_without_a_key_is_401_key_required() {
        let e = authorize(&policy(Access::Key), false, None).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::UNAUTHORIZED, "key_required")
        );
        assert!(e.message.contains("X-Api-Key"), "{}", e.message);
    }

    #[test]
    fn an_invalid_key_is_401_even_for_a_public_function() {
        let e = authorize(&policy(Access::Public), true, None).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::UNAUTHORIZED, "invalid_key")
        );
    }

    #[test]
    fn a_key_scoped_to_the_function_or_its_owner_calls_it_as_the_key() {
        for scope in ["bob/f", "bob/*"] {
            let k = who("bob", CredentialKind::Key, &["bob/other", scope]);
            assert_eq!(
                authorize(&policy(Access::Key), true, Some(&k)).map_err(|e| e.code.as_str()),
                Ok(Caller::Key {
                    id: "key_1".into(),
                    owner: "bob".into(),
                    name: "app".into()
                })
            );
        }
    }

    #[test]
    fn a_key_scoped_elsewhere_is_403() {
        let k = who("bob", CredentialKind::Key, &["bob/g", "bobby/*"]);
        let e = authorize(&policy(Access::Key), true, Some(&k)).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::FORBIDDEN, "key_not_allowed")
        );
    }

    #[test]
    fn the_owner_and_the_admin_call_a_gated_function_with_their_tokens() {
        for name in ["bob", "admin"] {
            let t = who(name, CredentialKind::Token, &[]);
            assert_eq!(
                authorize(&policy(Access::Key), true, Some(&t)).map_err(|e| e.code.as_str()),
                Ok(Caller::User { name: name.into() })
            );
        }
        let alice = who("alice", CredentialKind::Session, &[]);
        assert_eq!(
            authorize(&policy(Access::Key), true, Some(&alice))
                .unwrap_err()
                .code,
            "key_not_allowed"
        );
    }

    #[test]
    fn a_signed_in_caller_of_a_public_function_is_named() {
        let t = who("alice", CredentialKind::Token, &[]);
        assert_eq!(
            authorize(&policy(Access::Public), true, Some(&t)).map_err(|e| e.code.as_str()),
            Ok(Caller::User {
                name: "alice".into()
            })
        );
    }

    fn origin(o: &'static str) -> HeaderValue {
        HeaderValue::from_static(o)
    }

    #[test]
    fn any_origin_by_default_without_credentials() {
        let h = cors_headers(
            Some(&policy(Access::Public)),
            Some(&origin("https://a.example")),
        );
        assert!(h.contains(&(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin("*"))));
        assert!(
            !h.iter()
                .any(|(n, _)| n == header::ACCESS_CONTROL_ALLOW_CREDENTIALS)
        );
        assert!(
            cors_headers(Some(&policy(Access::Public)), None).is_empty(),
            "not a browser"
        );
    }

    #[test]
    fn a_listed_origin_is_echoed_and_others_get_nothing() {
        let mut p = policy(Access::Key);
        p.allowed_origins = Some(vec!["https://a.example".into()]);
        let h = cors_headers(Some(&p), Some(&origin("https://a.example")));
        assert!(h.contains(&(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            origin("https://a.example")
        )));
        assert!(h.contains(&(header::VARY, origin("origin"))));
        assert!(cors_headers(Some(&p), Some(&origin("https://b.example"))).is_empty());
    }

    #[test]
    fn a_preflight_allows_the_key_and_content_type_headers() {
        let h = preflight(&policy(Access::Key), Some(&origin("https://a.example"))).unwrap();
        let allowed = h
            .iter()
            .find(|(n, _)| n == header::ACCESS_CONTROL_ALLOW_HEADERS)
            .map(|(_, v)| v.to_str().unwrap())
            .unwrap();
        assert!(allowed.contains("x-api-key") && allowed.contains("content-type"));
    }

    #[test]
    fn a_preflight_from_an_origin_not_listed_is_403() {
        let mut p = policy(Access::Public);
        p.allowed_origins = Some(vec![]);
        let e = preflight(&p, Some(&origin("https://b.example"))).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_str()),
            (StatusCode::FORBIDDEN, "origin_not_allowed")
        );
    }
}
