//! Request ids: what makes a retried write exactly-once.
//!
//! The cluster remembers `(client, id) -> result`; a retry that reuses the
//! id gets the first answer back instead of being applied again. So an id is
//! made once per logical write, never per attempt.

use agora_proto::market::RequestId;

/// A fresh, unique request id (a random UUID v4, as text).
#[must_use]
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A fresh [`RequestId`] for one logical write by `client`.
#[must_use]
pub fn request_id(client: impl Into<String>) -> RequestId {
    RequestId {
        client: client.into(),
        id: new_request_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_uuids() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
        assert_eq!(request_id("alice").client, "alice");
    }
}
