//! What runner pods and the gateway say to each other, besides calls (`POST /` on the pod).
//!
//! A pod proves who it is with a Kubernetes service-account token projected into it for the
//! audience [`TOKEN_AUDIENCE`]: bound to the pod, so the gateway's TokenReview names the pod
//! (and its uid), and useless against the Kubernetes API. With it the pod
//! - announces its address as soon as it listens (`POST {gateway}`[`ANNOUNCE_PATH`]), so the
//!   gateway need not wait for the API to show the pod's IP (up to a second later);
//! - answers the gateway's challenge on that address ([`IDENTITY_PATH`]), which proves that
//!   whoever listens there holds the token the announcement came with;
//! - reads and writes its function's state (`POST {gateway}`[`STATE_PATH`]), scoped by the
//!   gateway to the pod's function whatever the request says.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skython_runner::Caller;

/// The audience of the pod's projected token (what the gateway's TokenReview asks for).
pub const TOKEN_AUDIENCE: &str = "skython-gateway";
/// Where the operator projects the token into runner pods.
pub const TOKEN_DIR: &str = "/var/run/secrets/skython";
pub const TOKEN_FILE: &str = "/var/run/secrets/skython/token";

/// Gateway routes (bearer: the pod's token).
pub const ANNOUNCE_PATH: &str = "/internal/v1/pods/announce";
pub const STATE_PATH: &str = "/internal/v1/state";
/// The pod's route for the gateway's identity challenge.
pub const IDENTITY_PATH: &str = "/internal/identity";

/// The header of a call (`POST /` on the pod) that says who called it: a `Caller` as JSON
/// ([`caller_header`]). Absent for an anonymous call.
pub const CALLER_HEADER: &str = "x-skython-caller";

/// [`CALLER_HEADER`]'s value: the caller's JSON in printable ASCII (other characters of names
/// as `\u` escapes), which any header takes.
pub fn caller_header(caller: &Caller) -> String {
    // Plain strings in a tagged enum: encoding cannot fail.
    let json = serde_json::to_string(caller).unwrap_or_default();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            // Outside JSON strings there are only ASCII characters: these are inside one.
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Environment of runner pods (set by the operator: the gateway's URL from its flag, the rest
/// through the downward API).
pub const ENV_GATEWAY_URL: &str = "SKYTHON_GATEWAY_URL";
pub const ENV_POD_IP: &str = "SKYTHON_POD_IP";
pub const ENV_POD_NAME: &str = "SKYTHON_POD_NAME";
pub const ENV_POD_NAMESPACE: &str = "SKYTHON_POD_NAMESPACE";
pub const ENV_TOKEN_FILE: &str = "SKYTHON_TOKEN_FILE";

/// `POST ANNOUNCE_PATH`: "I listen here". Answered 202 (the gateway checks it before routing
/// to it), 401 for a token the cluster does not accept, 403 for a pod that is not a runner pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Announce {
    /// The pod's IP as the downward API gives it.
    pub ip: std::net::IpAddr,
    pub port: u16,
    /// The pod is stopping: send it nothing new.
    #[serde(default)]
    pub draining: bool,
}

/// `POST IDENTITY_PATH` on the announced address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityChallenge {
    /// Random, fresh per challenge (hex).
    pub nonce: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityProof {
    /// [`proof`] of the nonce with the token the pod announced with.
    pub proof: String,
}

/// HMAC-SHA256(key = token, message = nonce), hex: only a holder of the token can compute it,
/// and it reveals nothing of the token.
pub fn proof(token: &str, nonce: &str) -> String {
    const BLOCK: usize = 64;
    let mut key = [0u8; BLOCK];
    if token.len() > BLOCK {
        key[..32].copy_from_slice(&Sha256::digest(token.as_bytes()));
    } else {
        key[..token.len()].copy_from_slice(token.as_bytes());
    }
    let pad = |byte: u8| key.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(nonce.as_bytes())
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    hex::encode(outer)
}

/// Pool pods: runner pods started before anyone knows their function (`skython runner --pool`,
/// created by the operator), which a gateway claims for a function with no pod and specialises
/// by sending it the function ([`Specialise`]) at [`SPECIALISE_PATH`], signed with the pool key.
///
/// An unclaimed pool pod may reach nothing (no egress), so it cannot announce itself or learn a
/// secret from the gateway: it checks the gateway's Ed25519 signature with the public key the
/// operator gives it ([`ENV_POOL_PUBLIC_KEY`]). Both derive the key pair from one secret
/// ([`PoolKey::from_secret`]), which the pod never sees. A signed request names the pod's uid, and
/// a pod is specialised once: a copy of it is useless to any other pod, and to this one after.
pub const POOL_LABEL: &str = "skython.io/pool";
/// The pod route the gateway specialises a pool pod at (body: [`Specialise`], signed).
pub const SPECIALISE_PATH: &str = "/internal/specialise";
/// The header carrying the hex Ed25519 signature of a specialise request's exact body.
pub const SIGNATURE_HEADER: &str = "x-skython-signature";
/// A pool pod's uid (downward API `metadata.uid`), which a specialise request must name.
pub const ENV_POD_UID: &str = "SKYTHON_POD_UID";
/// The hex Ed25519 public key pool pods check specialise requests with.
pub const ENV_POOL_PUBLIC_KEY: &str = "SKYTHON_POOL_PUBLIC_KEY";
/// The runtime a pool pod preloads (`standard`, `full`); set, the runner runs as a pool pod.
pub const ENV_POOL_RUNTIME: &str = "SKYTHON_POOL";
/// Annotations a gateway writes on the pool pod it claimed (with the function's labels and an
/// owner reference to the SkyFunction): who claimed it and when (RFC 3339), and the version it
/// serves (the operator's checksum annotation, `skython.io/function-checksum`).
pub const CLAIMED_BY_ANNOTATION: &str = "skython.io/claimed-by";
pub const CLAIMED_AT_ANNOTATION: &str = "skython.io/claimed-at";
/// Set (to the error) on a claimed pool pod whose function failed to load: it serves nothing.
pub const LOAD_FAILED_ANNOTATION: &str = "skython.io/load-failed";

/// `POST SPECIALISE_PATH`: "serve this function from now on". Answered 200 once a worker has
/// loaded it (the pod is then the function's, for its life); 401 for a bad signature, 403 for
/// a request naming another pod, 409 when the pod is already specialised (another gateway
/// replica claimed it first), 422 when the function cannot load (the message says why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Specialise {
    /// The uid of the pod this request is for.
    pub pod_uid: String,
    /// The SkyFunction's `namespace/name`, for the pod's logs and metrics.
    pub function: String,
    /// The function as its Deployment's pods see it (`function.json`, source included).
    pub spec: skython_crds::SkyFunctionSpec,
    /// The entry function, when the operator has read it from this source already
    /// ([`skython_crds::SkyFunction::checked_entrypoint`]): the pod then skips its own reading
    /// of the source (a fork of the zygote, a good part of a claim's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("an Ed25519 key cannot be made from this secret: {0}")]
pub struct PoolKeyError(String);

/// The pool's Ed25519 key pair, derived from a shared secret (SHA-256 of it is the seed), so the
/// chart needs to generate nothing but random bytes.
pub struct PoolKey(ring::signature::Ed25519KeyPair);

impl PoolKey {
    pub fn from_secret(secret: &[u8]) -> Result<PoolKey, PoolKeyError> {
        let seed = Sha256::digest(secret);
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map(PoolKey)
            .map_err(|e| PoolKeyError(e.to_string()))
    }

    /// What pool pods verify with ([`ENV_POOL_PUBLIC_KEY`]).
    pub fn public_hex(&self) -> String {
        use ring::signature::KeyPair;
        hex::encode(self.0.public_key().as_ref())
    }

    /// The [`SIGNATURE_HEADER`] value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        hex::encode(self.0.sign(body).as_ref())
    }
}

impl std::fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolKey({})", self.public_hex())
    }
}

/// Whether `signature_hex` is the pool key's signature of `body`.
pub fn verify(public_hex: &str, body: &[u8], signature_hex: &str) -> bool {
    let (Ok(public), Ok(signature)) = (hex::decode(public_hex.trim()), hex::decode(signature_hex))
    else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(body, &signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_is_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            proof("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn proof_depends_on_the_token_and_the_nonce() {
        let long = "t".repeat(900); // longer than a block: hashed first
        assert_ne!(proof(&long, "n1"), proof(&long, "n2"));
        assert_ne!(proof(&long, "n1"), proof(&format!("{long}x"), "n1"));
    }

    #[test]
    fn a_caller_header_is_printable_ascii_and_reads_back_as_the_caller() {
        let caller = Caller::Key {
            id: "key_1".into(),
            owner: "bob".into(),
            name: "café ☃ 🐍\u{7f}".into(),
        };
        let header = caller_header(&caller);
        assert!(
            header.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{header}"
        );
        assert!(axum::http::HeaderValue::from_str(&header).is_ok());
        assert_eq!(serde_json::from_str::<Caller>(&header).unwrap(), caller);
        assert_eq!(
            caller_header(&Caller::User {
                name: "alice".into()
            }),
            r#"{"kind":"user","name":"alice"}"#
        );
    }

    #[test]
    fn an_announcement_reads_from_camel_case_json() {
        let a: Announce = serde_json::from_str(r#"{"ip":"10.88.1.7","port":8080}"#).unwrap();
        assert_eq!(a.port, 8080);
        assert!(!a.draining);
        assert!(serde_json::from_str::<Announce>(r#"{"ip":"nope","port":1}"#).is_err());
    }

    #[test]
    fn a_pool_signature_verifies_with_the_public_key_of_the_same_secret_only() {
        let key = PoolKey::from_secret(b"the chart's random bytes").unwrap();
        let body = br#"{"podUid":"u1"}"#;
        let sig = key.sign(body);
        assert!(verify(&key.public_hex(), body, &sig));
        assert!(
            !verify(&key.public_hex(), br#"{"podUid":"u2"}"#, &sig),
            "another body"
        );
        let other = PoolKey::from_secret(b"another secret").unwrap();
        assert!(!verify(&other.public_hex(), body, &sig), "another key");
        assert!(!verify(&key.public_hex(), body, "not hex"));
        assert!(!verify("", body, &sig));
    }

    #[test]
    fn the_pool_key_is_the_same_for_the_same_secret() {
        let a = PoolKey::from_secret(b"s").unwrap();
        let b = PoolKey::from_secret(b"s").unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        assert_eq!(a.public_hex().len(), 64);
    }
}
