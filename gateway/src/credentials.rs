//! Secrets and who they belong to: personal access tokens, API keys and browser sessions.
//!
//! A secret is random, shown once, and stored only as its SHA-256 hash (a secret has 192 bits,
//! so a fast hash is enough; passwords, which people choose, get argon2id instead). Secrets
//! carry a prefix that says what they are (`sky_pat_`, `sky_key_`, `sky_ses_`), so a leaked one
//! is recognised by secret scanners and by its owner in the listings, which show the first
//! characters.
//!
//! [`Credentials`] answers "whose secret is this" from the store, with a short cache: calls of a
//! gated function present a key each time. A revocation through this gateway applies at once;
//! one through another gateway sharing the store within [`CACHE_FOR`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jiff::Timestamp;
use rand::RngCore;
use sha2::{Digest, Sha256};
use skython_store::{Credential, CredentialKind, Store, User};

use crate::error::ApiResult;

/// A new secret of `kind`, its public id and the prefix listings show.
pub struct NewSecret {
    pub secret: String,
    pub id: String,
    pub prefix: String,
}

fn tag(kind: CredentialKind) -> (&'static str, &'static str) {
    match kind {
        CredentialKind::Token => ("sky_pat_", "tok_"),
        CredentialKind::Key => ("sky_key_", "key_"),
        CredentialKind::Session => ("sky_ses_", "ses_"),
    }
}

/// Characters of a secret shown in listings: the kind's tag and four of the random part.
const SHOWN: usize = 4;

pub fn new_secret(kind: CredentialKind) -> NewSecret {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    NewSecret::given(kind, format!("{}{}", tag(kind).0, hex::encode(bytes)))
}

impl NewSecret {
    /// A secret chosen elsewhere (`SKYTHON_ADMIN_TOKEN`), with a new id.
    pub fn given(kind: CredentialKind, secret: String) -> NewSecret {
        let mut id = [0u8; 6];
        rand::rng().fill_bytes(&mut id);
        let shown = (tag(kind).0.len() + SHOWN).min(secret.len());
        NewSecret {
            prefix: secret.chars().take(shown).collect(),
            id: format!("{}{}", tag(kind).1, hex::encode(id)),
            secret,
        }
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The record of a new secret, as the store keeps it.
pub fn credential(
    new: &NewSecret,
    kind: CredentialKind,
    owner: &str,
    name: &str,
    functions: Vec<String>,
    expires_at: Option<Timestamp>,
) -> Credential {
    Credential {
        id: new.id.clone(),
        kind,
        owner: owner.to_string(),
        name: name.to_string(),
        hash: hash_secret(&new.secret),
        prefix: new.prefix.clone(),
        functions,
        created_at: Timestamp::now(),
        expires_at,
        revoked_at: None,
        usage: Default::default(),
    }
}

/// The argon2id PHC string of `password` (OWASP's parameters: 19 MiB, 2 passes). Slow on
/// purpose: run it off the async threads.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches `phc`. With no `phc` (no such user) a dummy hash is checked, so
/// an unknown name takes as long as a wrong password and names cannot be probed by timing.
pub fn verify_password(password: &str, phc: Option<&str>) -> bool {
    static DUMMY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hash_password("not a password").unwrap_or_default());
    let (phc, real) = match phc {
        Some(p) => (p, true),
        None => (DUMMY.as_str(), false),
    };
    let ok = PasswordHash::new(phc).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    });
    ok && real
}

/// Whose a secret is.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    pub credential: Credential,
    pub user: User,
}

/// How long a looked-up secret is trusted without asking the store again.
pub const CACHE_FOR: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 10_000;

/// Looks secrets up in the store, remembering recent answers for [`CACHE_FOR`].
pub struct Credentials {
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, (Arc<Authenticated>, Instant)>>,
}

impl Credentials {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Credentials {
            store,
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<Authenticated>, Instant)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live credential `secret` is, with its user; None if unknown, revoked or expired.
    pub async fn authenticate(&self, secret: &str) -> ApiResult<Option<Arc<Authenticated>>> {
        let hash = hash_secret(secret);
        let now = Timestamp::now();
        if let Some((a, at)) = self.cache().get(&hash)
            && at.elapsed() < CACHE_FOR
        {
            let live = a.credential.expires_at.is_none_or(|e| e > now);
            return Ok(live.then(|| a.clone()));
        }
        let found = self.store.authenticate(&hash, now).await?;
        let mut cache = self.cache();
        match found {
            Some((credential, user)) => {
                let a = Arc::new(Authenticated { credential, user });
                if cache.len() >= CACHE_MAX {
                    cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(hash, (a.clone(), Instant::now()));
                Ok(Some(a))
            }
            None => {
                cache.remove(&hash);
                Ok(None)
            }
        }
    }

    /// Forgets `owner`'s credential `id` (revoked): its next use asks the store.
    pub fn forget(&self, owner: &str, id: &str) {
        self.cache()
            .retain(|_, (a, _)| !(a.credential.owner == owner && a.credential.id == id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_say_what_they_are_and_listings_show_their_start() {
        for (kind, tag, id) in [
            (CredentialKind::Token, "sky_pat_", "tok_"),
            (CredentialKind::Key, "sky_key_", "key_"),
            (CredentialKind::Session, "sky_ses_", "ses_"),
        ] {
            let s = new_secret(kind);
            assert!(s.secret.starts_with(tag) && s.secret.len() == tag.len() + 48);
            assert!(s.id.starts_with(id) && s.id.len() == id.len() + 12);
            assert_eq!(s.prefix, s.secret[..tag.len() + 4]);
        }
    }

    #[test]
    fn secrets_are_unique_and_their_hashes_stable() {
        let (a, b) = (
            new_secret(CredentialKind::Key),
            new_secret(CredentialKind::Key),
        );
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.id, b.id);
        assert_eq!(hash_secret(&a.secret), hash_secret(&a.secret));
        assert_ne!(hash_secret(&a.secret), hash_secret(&b.secret));
    }

    #[test]
    fn passwords_are_argon2id_and_verify() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("correct horse", Some(&phc)));
        assert!(!verify_password("wrong horse", Some(&phc)));
        assert_ne!(phc, hash_password("correct horse").unwrap(), "salted");
    }

    #[test]
    fn no_password_matches_an_unknown_user() {
        assert!(!verify_password("not a password", None));
        assert!(!verify_password("", Some("garbage")));
    }
}
