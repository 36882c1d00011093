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
}
