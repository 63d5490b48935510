//! Account rules: what a registration must carry to be stored.

use agora_proto::auth::{canonical_username, AgoraOpaque};
use opaque_ke::{ServerRegistration, ServerSetup};

/// Largest sealed identity key accepted (nonce + 32-byte key + tag is 60).
const MAX_SEALED_KEY_BYTES: usize = 256;

/// Checks a registration's fields.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn validate_registration(
    username: &str,
    password_file: &[u8],
    identity_public_key: &[u8],
    encrypted_identity_key: &[u8],
) -> Result<(), String> {
    let canonical = canonical_username(username).map_err(|e| e.to_string())?;
    if canonical != username {
        return Err("the username must be given in its canonical (lower-case) form".into());
    }
    ServerRegistration::<AgoraOpaque>::deserialize(password_file)
        .map_err(|_| "the registration upload is not a valid OPAQUE message".to_owned())?;
    let key: [u8; 32] = identity_public_key
        .try_into()
        .map_err(|_| "the identity public key must be 32 bytes (ed25519)".to_owned())?;
    ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|_| "the identity public key is not a valid ed25519 key".to_owned())?;
    if encrypted_identity_key.is_empty() || encrypted_identity_key.len() > MAX_SEALED_KEY_BYTES {
        return Err(format!(
            "the encrypted identity key must be 1 to {MAX_SEALED_KEY_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Checks that bytes are a serialized OPAQUE `ServerSetup`.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn validate_server_setup(bytes: &[u8]) -> Result<(), String> {
    ServerSetup::<AgoraOpaque>::deserialize(bytes)
        .map(|_| ())
        .map_err(|_| "the bootstrap secrets are not a valid OPAQUE server setup".to_owned())
}
