//! A tower layer that gives the two refusals tonic makes before any handler
//! runs the code and sentence a client should get.
//!
//! tonic answers a request that does not decode (malformed protobuf, a
//! string field that is not UTF-8) with `INTERNAL`, which tells the caller
//! the node is broken when the request is; and a request above the
//! service's message limit with `OUT_OF_RANGE`, where gRPC's own guidance
//! (and every other limit of this node) says `RESOURCE_EXHAUSTED`. Both
//! answers are made inside tonic's generated code, so no handler can
//! change them; this layer rewrites exactly those two statuses on the way
//! out (they come back as trailers-only responses, with the status in the
//! headers) and leaves every other answer alone. Nothing reached a handler,
//! so nothing was half-done.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::{Code, Status};
use tower::{Layer, Service};

/// How tonic's message starts when a request does not decode (prost's
/// `DecodeError` display).
const DECODE_FAILURE: &str = "failed to decode Protobuf message: ";
/// How tonic's message starts when a request is above the message limit.
const TOO_LARGE: &str = "Error, decoded message length too large: ";

/// Adds [`RequestErrors`] around a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestErrorsLayer;

impl<S> Layer<S> for RequestErrorsLayer {
    type Service = RequestErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestErrors { inner }
    }
}

/// Rewrites tonic's refusals of undecodable and oversized requests.
#[derive(Debug, Clone)]
pub struct RequestErrors<S> {
    inner: S,
}

/// The status a client should get instead of `status`, if tonic made it
/// for a request that did not decode or was too large; `None` leaves the
/// answer as it is.
#[must_use]
pub fn clarify(status: &Status) -> Option<Status> {
    let message = status.message();
    match status.code() {
        Code::Internal => message.strip_prefix(DECODE_FAILURE).map(|detail| {
            Status::invalid_argument(format!(
                "the request is not a well-formed message for this method ({detail}); send the fields its .proto defines, with every string in UTF-8"
            ))
        }),
        Code::OutOfRange => message
            .starts_with(TOO_LARGE)
            .then(|| Status::resource_exhausted(super::limits::too_large_sentence(message))),
        _ => None,
    }
}

impl<S, B, RB> Service<http::Request<B>> for RequestErrors<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            // Only a trailers-only answer carries its status in the headers;
            // a success has none, so this costs one lookup.
            if response.headers().contains_key("grpc-status") {
                if let Some(better) =
                    Status::from_header_map(response.headers()).and_then(|s| clarify(&s))
                {
                    let headers = response.headers_mut();
                    headers.remove("grpc-status");
                    headers.remove("grpc-message");
                    headers.remove("grpc-status-details-bin");
                    if better.add_header(headers).is_err() {
                        tracing::warn!("could not rewrite the status of a refused request");
                    }
                }
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_does_not_decode_is_the_callers_mistake() {
        let tonic = Status::internal(
            "failed to decode Protobuf message: PutRequest.key: invalid string value: data is not UTF-8 encoded",
        );
        let better = clarify(&tonic).expect("rewritten");
        assert_eq!(better.code(), Code::InvalidArgument);
        assert!(
            better.message().contains("PutRequest.key"),
            "{}",
            better.message()
        );
        assert!(better.message().contains("UTF-8"), "{}", better.message());
    }

    #[test]
    fn a_request_above_the_limit_exhausts_a_resource() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 6291461 bytes, the limit is: 4194304 bytes",
        );
        let better = clarify(&tonic).expect("rewritten");
        assert_eq!(better.code(), Code::ResourceExhausted);
        assert!(
            better.message().contains("limit of 4194304 bytes"),
            "{}",
            better.message()
        );
        assert!(
            better.message().contains("send less"),
            "{}",
            better.message()
        );
    }

    #[test]
    fn every_other_answer_is_left_alone() {
        for status in [
            Status::internal("reading this node's state failed: disk I/O error"),
            Status::out_of_range("the offset is past the end"),
            Status::invalid_argument("failed to decode Protobuf message: x"),
            Status::not_found("there is no listing 7"),
        ] {
            assert!(clarify(&status).is_none(), "{status:?}");
        }
    }
}
