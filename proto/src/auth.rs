//! Accounts and sessions, the parts both sides need: the OPAQUE cipher
//! suite, Argon2id parameters, username rules, session tokens signed by the
//! cluster key, and the sealing of a user's identity key under OPAQUE's
//! `export_key`. Pure functions; randomness comes from the caller.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Agora's OPAQUE configuration: ristretto255, triple Diffie-Hellman, and
/// Argon2id as the key-stretching function (run by the client only).
#[derive(Debug, Clone, Copy)]
pub struct AgoraOpaque;

impl opaque_ke::CipherSuite for AgoraOpaque {
    type OprfCs = opaque_ke::Ristretto255;
    type KeGroup = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::key_exchange::tripledh::TripleDh;
    type Ksf = argon2::Argon2<'static>;
}

/// Argon2id parameters, a replicated cluster setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KsfParams {
    /// OWASP's recommended Argon2id setting (19 MiB, 2 iterations, 1 lane).
    pub const OWASP: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// A deliberately cheap setting for load-test clusters only.
    pub const LOAD_TEST: Self = Self {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    /// The Argon2id instance for these parameters.
    ///
    /// # Errors
    /// When argon2 refuses the values (too small or too large).
    pub fn argon2(&self) -> Result<argon2::Argon2<'static>, AuthError> {
        // argon2 0.5 computes `parallelism * 8` in a u32 before it checks
        // the lane limit, which overflows (a panic in debug builds) from
        // 2^29 lanes: refuse those first. The values come from the
        // replicated log and from the cluster's answers to clients.
        if self.parallelism > argon2::Params::MAX_P_COST {
            return Err(AuthError::Ksf(format!(
                "at most {} lanes (got {})",
                argon2::Params::MAX_P_COST,
                self.parallelism
            )));
        }
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| AuthError::Ksf(e.to_string()))?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }
}

/// A session's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A peer: buys, sells, reads its own data.
    User,
    /// An operator: every admin RPC.
    Admin,
}

impl Role {
    /// `"user"` or `"admin"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

/// Shortest username, in characters.
pub const USERNAME_MIN: usize = 3;
/// Longest username, in characters.
pub const USERNAME_MAX: usize = 32;

/// Checks a username and returns its canonical (lower-case) form.
///
/// Rules: 3 to 32 characters; ASCII letters, digits, `_`, `-` and `.`;
/// starting with a letter or digit. Names are compared case-insensitively.
///
/// # Errors
/// [`AuthError::Username`] saying which rule is broken.
pub fn canonical_username(name: &str) -> Result<String, AuthError> {
    let len = name.chars().count();
    if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
        return Err(AuthError::Username(format!(
            "a username has {USERNAME_MIN} to {USERNAME_MAX} characters; {name:?} has {len}"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(AuthError::Username(format!(
            "a username may contain only letters, digits, '_', '-' and '.'; {bad:?} is not allowed"
        )));
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err(AuthError::Username(
            "a username starts with a letter or a digit".into(),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// What a session token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// Account id.
    pub user_id: u64,
    /// Canonical username.
    pub username: String,
    /// Role at login time.
    pub role: Role,
    /// Unique id of this session (hex), the handle for revocation.
    pub session_id: String,
    /// When it was issued (Unix ms).
    pub issued_at_ms: u64,
    /// When it expires (Unix ms).
    pub expires_at_ms: u64,
}

/// Signs claims into a bearer token: `base64url(claims) . base64url(sig)`.
#[must_use]
pub fn sign_token(claims: &SessionClaims, key: &SigningKey) -> String {
    let body = bincode::serialize(claims).unwrap_or_default();
    let signature = key.sign(&body);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&body),
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// Checks a bearer token's signature and expiry.
///
/// # Errors
/// [`AuthError::Token`] when it is malformed or not signed by `key`, and
/// [`AuthError::Expired`] when it has expired.
pub fn verify_token(
    token: &str,
    key: &VerifyingKey,
    now_ms: u64,
) -> Result<SessionClaims, AuthError> {
    let bad = || AuthError::Token("the session token is not valid; log in again".into());
    let (body, sig) = token.split_once('.').ok_or_else(bad)?;
    let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| bad())?;
    let sig = Signature::from_slice(&sig).map_err(|_| bad())?;
    key.verify(&body, &sig).map_err(|_| bad())?;
    let claims: SessionClaims = bincode::deserialize(&body).map_err(|_| bad())?;
    if claims.expires_at_ms <= now_ms {
        return Err(AuthError::Expired);
    }
    Ok(claims)
}

/// Length of the nonce in front of a sealed identity key.
const SEAL_NONCE: usize = 12;

fn sealing_key(export_key: &[u8]) -> Aes256Gcm {
    let key = blake3::derive_key("agora 2026-11 identity key sealing v1", export_key);
    Aes256Gcm::new(&key.into())
}

/// Encrypts an ed25519 identity secret key under OPAQUE's `export_key`
/// (AES-256-GCM, key derived with BLAKE3): `nonce || ciphertext`.
///
/// # Errors
/// Only if encryption fails (it does not for these sizes).
pub fn seal_identity_key(
    export_key: &[u8],
    secret: &[u8; 32],
    nonce: [u8; SEAL_NONCE],
) -> Result<Vec<u8>, AuthError> {
    let ct = sealing_key(export_key)
        .encrypt(Nonce::from_slice(&nonce), secret.as_slice())
        .map_err(|_| AuthError::Seal)?;
    Ok([nonce.as_slice(), &ct].concat())
}

/// Decrypts what [`seal_identity_key`] made.
///
/// # Errors
/// [`AuthError::Seal`] when the key does not open it (wrong password or
/// tampered data).
pub fn open_identity_key(export_key: &[u8], sealed: &[u8]) -> Result<[u8; 32], AuthError> {
    if sealed.len() <= SEAL_NONCE {
        return Err(AuthError::Seal);
    }
    let (nonce, ct) = sealed.split_at(SEAL_NONCE);
    let plain = sealing_key(export_key)
        .decrypt(Nonce::from_slice(nonce), ct)
        .map_err(|_| AuthError::Seal)?;
    plain.try_into().map_err(|_| AuthError::Seal)
}

/// Errors of the account helpers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A username breaks a rule.
    #[error("{0}")]
    Username(String),
    /// A token is malformed or not the cluster's.
    #[error("{0}")]
    Token(String),
    /// A token has expired.
    #[error("your session has expired; log in again")]
    Expired,
    /// Bad Argon2 parameters.
    #[error("the password-hashing parameters are not valid: {0}")]
    Ksf(String),
    /// The identity key could not be opened.
    #[error("the stored identity key cannot be opened with this login")]
    Seal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(canonical_username("Alice_1").as_deref(), Ok("alice_1"));
        assert!(canonical_username("ab").is_err());
        assert!(canonical_username(&"a".repeat(33)).is_err());
        assert!(canonical_username("a".repeat(32).as_str()).is_ok());
        assert!(canonical_username("al ice").is_err());
        assert!(canonical_username("_alice").is_err());
        assert!(canonical_username("älice").is_err());
    }

    #[test]
    fn tokens_verify_and_expire() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let claims = SessionClaims {
            user_id: 1,
            username: "alice".into(),
            role: Role::User,
            session_id: "s1".into(),
            issued_at_ms: 1,
            expires_at_ms: 1000,
        };
        let token = sign_token(&claims, &key);
        assert_eq!(verify_token(&token, &key.verifying_key(), 500), Ok(claims));
        assert_eq!(
            verify_token(&token, &key.verifying_key(), 1000),
            Err(AuthError::Expired)
        );
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(matches!(
            verify_token(&token, &other.verifying_key(), 500),
            Err(AuthError::Token(_))
        ));
        let tampered = token.replacen('A', "B", 1);
        assert!(verify_token(&tampered, &key.verifying_key(), 500).is_err() || tampered == token);
    }

    #[test]
    fn identity_key_seals_and_opens() {
        let sealed = seal_identity_key(b"export", &[3; 32], [1; 12]).expect("seal");
        assert_eq!(open_identity_key(b"export", &sealed), Ok([3; 32]));
        assert_eq!(open_identity_key(b"other", &sealed), Err(AuthError::Seal));
    }

    #[test]
    fn ksf_params_build() {
        assert!(KsfParams::OWASP.argon2().is_ok());
        assert!(KsfParams::LOAD_TEST.argon2().is_ok());
        // Found by the command_decode fuzz target: a forged InitCluster
        // with 2^29 lanes or more made argon2's parameter check overflow.
        for parallelism in [1 << 24, 1 << 29, u32::MAX] {
            let huge = KsfParams {
                memory_kib: u32::MAX,
                iterations: 1,
                parallelism,
            };
            assert!(huge.argon2().is_err(), "{parallelism} lanes");
        }
    }
}
