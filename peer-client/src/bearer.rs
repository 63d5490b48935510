//! Session tokens on the wire: `authorization: Bearer <token>` metadata.
//!
//! Every call that acts for an account (logout, who-am-I, admin calls with
//! an admin session) carries the token this way; each node checks the
//! cluster's signature on it locally. The token is a credential, so nothing
//! here prints it.

use std::fmt;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::ClientError;

/// The metadata key a session token travels under.
pub const AUTHORIZATION: &str = "authorization";

/// A session token, checked once to be usable as gRPC metadata.
#[derive(Clone)]
pub struct BearerToken {
    /// `Bearer <token>`, ready to insert.
    header: MetadataValue<Ascii>,
}

impl BearerToken {
    /// Wraps a session token as the cluster issued it.
    ///
    /// # Errors
    /// [`ClientError::InvalidToken`] when the token is empty or has
    /// characters a header cannot carry (a damaged session file).
    pub fn new(token: &str) -> Result<Self, ClientError> {
        let token = token.trim();
        // Tokens are base64url and dots; anything else means damage.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::InvalidToken);
        }
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::InvalidToken)?;
        Ok(Self { header })
    }

    /// Puts the token on `request`, replacing any token already there.
    pub fn attach<T>(&self, request: &mut Request<T>) {
        request
            .metadata_mut()
            .insert(AUTHORIZATION, self.header.clone());
    }

    /// `message` as a request carrying the token.
    #[must_use]
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        self.attach(&mut request);
        request
    }
}

impl fmt::Debug for BearerToken {
    // The token is a credential: never in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// A tonic interceptor that puts a session token (if any) on every call
/// that does not already carry one.
#[derive(Debug, Clone, Default)]
pub struct SessionAuth {
    /// `None`: calls go out without a token (the operator certificate, if
    /// the client presents one, is then what authorizes admin calls).
    token: Option<BearerToken>,
}

impl SessionAuth {
    /// Attaches `token` to every call.
    #[must_use]
    pub fn new(token: Option<BearerToken>) -> Self {
        Self { token }
    }

    /// The token attached, if any.
    #[must_use]
    pub fn token(&self) -> Option<&BearerToken> {
        self.token.as_ref()
    }
}

impl Interceptor for SessionAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.token {
            if !request.metadata().contains_key(AUTHORIZATION) {
                token.attach(&mut request);
            }
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attaches_a_bearer_header() {
        let token = BearerToken::new("abc.def").expect("valid token");
        let request = token.request(());
        assert_eq!(
            request
                .metadata()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer abc.def")
        );
        assert!(!format!("{token:?}").contains("abc"));
    }

    #[test]
    fn refuses_unusable_tokens() {
        assert!(BearerToken::new("").is_err());
        assert!(BearerToken::new("a b").is_err());
        assert!(BearerToken::new("caf\u{e9}").is_err());
    }

    #[test]
    fn the_interceptor_keeps_an_explicit_token() {
        let mut auth = SessionAuth::new(BearerToken::new("stored").ok());
        let explicit = BearerToken::new("explicit").expect("valid token");
        let request = auth
            .call(explicit.request(()))
            .expect("the interceptor never fails");
        assert_eq!(
            request
                .metadata()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer explicit")
        );
        let request = auth.call(Request::new(())).expect("never fails");
        assert_eq!(
            request
                .metadata()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            Some("Bearer stored")
        );
        let mut none = SessionAuth::default();
        let request = none.call(Request::new(())).expect("never fails");
        assert!(request.metadata().get(AUTHORIZATION).is_none());
    }
}
