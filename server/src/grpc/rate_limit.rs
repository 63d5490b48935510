//! Per-user request rate limits on the public listener: a token bucket per
//! user, so one user's runaway clients cannot take a node's capacity from
//! everyone else.
//!
//! Keyed by the user id in the bearer token once the layer has checked the
//! token's signature with the cluster's key ([`TokenKey`]), so all of a
//! user's sessions share one bucket, and nobody can drain another user's
//! bucket with a forged token. A token that does not verify (or before the
//! node knows the cluster key) is keyed by its own hash: the handler will
//! refuse it anyway, and it cannot touch a real user's bucket. Calls without
//! a token (registration, login, public reads) are not limited here.
//!
//! A refused call gets `RESOURCE_EXHAUSTED` with a sentence saying what to
//! do; nothing reaches the handler, so nothing is half-done.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agora_proto::auth::verify_token;
use ed25519_dalek::VerifyingKey;
use tower::{Layer, Service};

/// The cluster's token-verifying key, set once the node has read the
/// cluster secrets (they arrive with the bootstrap entry).
pub type TokenKey = Arc<std::sync::OnceLock<VerifyingKey>>;

/// How many seconds of calls a bucket holds (the burst a client may send
/// after being idle).
const BURST_SECONDS: f64 = 2.0;
/// Buckets are forgotten after this long without a call...
const IDLE: Duration = Duration::from_secs(30);
/// ... checked whenever the table grows past this many buckets.
const PRUNE_ABOVE: usize = 10_000;

/// One user's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The buckets, shared by every connection of the listener.
#[derive(Debug)]
struct Buckets {
    /// Calls per second per user.
    rate: f64,
    table: Mutex<HashMap<u64, Bucket>>,
}

impl Buckets {
    /// Takes one call from `key`'s bucket at `now`; false when it is empty.
    fn admit(&self, key: u64, now: Instant) -> bool {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() > PRUNE_ABOVE {
            table.retain(|_, b| now.duration_since(b.last) < IDLE);
        }
        let capacity = (self.rate * BURST_SECONDS).max(1.0);
        let bucket = table.entry(key).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Adds [`RateLimit`] around a service; `per_second` 0 turns it off.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    buckets: Option<Arc<Buckets>>,
    key: TokenKey,
}

impl RateLimitLayer {
    /// At most `per_second` calls per second per user, with a burst of two
    /// seconds' worth; 0: no limit. Tokens are checked with `key`.
    #[must_use]
    pub fn new(per_second: u32, key: TokenKey) -> Self {
        Self {
            key,
            buckets: (per_second > 0).then(|| {
                Arc::new(Buckets {
                    rate: f64::from(per_second),
                    table: Mutex::default(),
                })
            }),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            buckets: self.buckets.clone(),
            key: self.key.clone(),
        }
    }
}

/// Refuses calls of a user beyond their rate.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    buckets: Option<Arc<Buckets>>,
    key: TokenKey,
}

/// The bucket key of a request with a bearer token: its user, when the
/// token's signature checks out with `key`, else the token itself.
fn bucket_key<B>(request: &http::Request<B>, key: Option<&VerifyingKey>) -> Option<u64> {
    let header = request.headers().get("authorization")?;
    let mut hasher = DefaultHasher::new();
    let user = key.and_then(|key| {
        let token = header.to_str().ok()?.strip_prefix("Bearer ")?;
        verify_token(token, key, crate::auth::now_ms()).ok()
    });
    match user {
        Some(claims) => ("user", claims.user_id).hash(&mut hasher),
        None => ("token", header.as_bytes()).hash(&mut hasher),
    }
    Some(hasher.finish())
}

/// A trailers-only gRPC answer `RESOURCE_EXHAUSTED` (what
/// `tonic::Status::into_http` makes, for any body type).
fn too_many<RB: Default>() -> http::Response<RB> {
    let mut response = http::Response::new(RB::default());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    headers.insert(
        "grpc-message",
        http::HeaderValue::from_static(
            "too%20many%20requests%20from%20this%20user%3B%20slow%20down%20and%20retry%20in%20a%20second",
        ),
    );
    response
}

impl<S, B, RB> Service<http::Request<B>> for RateLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let bucket = self
            .buckets
            .as_ref()
            .and_then(|buckets| Some((buckets, bucket_key(&request, self.key.get())?)));
        if let Some((buckets, key)) = bucket {
            if !buckets.admit(key, Instant::now()) {
                metrics::counter!("agora_rate_limited_total").increment(1);
                return Box::pin(async { Ok(too_many()) });
            }
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let buckets = Buckets {
            rate: 5.0,
            table: Mutex::default(),
        };
        let start = Instant::now();
        let admitted = (0..20).filter(|_| buckets.admit(1, start)).count();
        assert_eq!(admitted, 10, "the burst is two seconds' worth");
        assert!(!buckets.admit(1, start));
        // Another user is not affected.
        assert!(buckets.admit(2, start));
        // A second later, five more.
        let later = start + Duration::from_secs(1);
        let admitted = (0..20).filter(|_| buckets.admit(1, later)).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn a_users_sessions_share_a_bucket_and_forged_tokens_do_not() {
        use agora_proto::auth::{sign_token, Role, SessionClaims};
        use ed25519_dalek::SigningKey;

        let cluster = SigningKey::from_bytes(&[7; 32]);
        let forger = SigningKey::from_bytes(&[8; 32]);
        let claims = |user_id, session: &str| SessionClaims {
            user_id,
            username: format!("user{user_id}"),
            role: Role::User,
            session_id: session.to_owned(),
            issued_at_ms: 0,
            expires_at_ms: u64::MAX,
        };
        let request = |token: String| {
            http::Request::builder()
                .header("authorization", format!("Bearer {token}"))
                .body(())
                .unwrap_or_default()
        };
        let key = cluster.verifying_key();
        let first = request(sign_token(&claims(5, "a"), &cluster));
        let second = request(sign_token(&claims(5, "b"), &cluster));
        let other = request(sign_token(&claims(6, "c"), &cluster));
        let forged = request(sign_token(&claims(5, "d"), &forger));
        let of = |r: &http::Request<()>| bucket_key(r, Some(&key));
        assert_eq!(of(&first), of(&second), "one user, one bucket");
        assert_ne!(of(&first), of(&other));
        assert_ne!(
            of(&first),
            of(&forged),
            "a forged token never drains a user's bucket"
        );
        // Before the node knows the key: per token.
        assert_ne!(bucket_key(&first, None), bucket_key(&second, None));
        // No token: not limited here.
        let anonymous = http::Request::builder().body(()).unwrap_or_default();
        assert_eq!(of(&anonymous), None);
    }

    #[test]
    fn the_message_is_a_valid_percent_encoded_sentence() {
        let response: http::Response<()> = too_many();
        let message = response.headers()["grpc-message"].to_str().unwrap_or("");
        assert!(message.starts_with("too%20many%20requests"));
        assert_eq!(response.headers()["grpc-status"], "8");
    }
}
