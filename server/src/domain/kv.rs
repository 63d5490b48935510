//! Rules of the replicated key/value register that exercises the core.

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Checks a put's key and value.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn validate_put(key: &str, value: &[u8]) -> Result<(), String> {
    validate_key(key)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value is {} bytes long; the limit is {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    Ok(())
}

/// Checks a key, for a put or a get: a key no put can write is a
/// mistake, not a miss.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty; give a key of 1 to 256 bytes".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key is {} bytes long; the limit is {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(validate_put("k", b"v").is_ok());
        assert!(validate_put("", b"v").is_err());
        assert!(validate_put(&"k".repeat(MAX_KEY_BYTES), b"").is_ok());
        assert!(validate_put(&"k".repeat(MAX_KEY_BYTES + 1), b"").is_err());
        assert!(validate_put("k", &vec![0; MAX_VALUE_BYTES + 1]).is_err());
        assert!(validate_key("k").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }
}
