//! A tower layer that counts every gRPC call by method and status code and
//! records its latency, for the Prometheus endpoint, and counts it in the
//! node's [`RequestRate`] for the admin status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use crate::activity::RequestRate;

/// Adds [`RpcMetrics`] around a service.
#[derive(Debug, Clone, Default)]
pub struct RpcMetricsLayer {
    rate: RequestRate,
}

impl RpcMetricsLayer {
    /// Counts calls in `rate` too.
    #[must_use]
    pub fn new(rate: RequestRate) -> Self {
        Self { rate }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            rate: self.rate.clone(),
        }
    }
}

/// Measures the calls to the wrapped service.
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    /// The node's own request counter (the admin status reports its rate).
    rate: RequestRate,
}

/// Keeps label values to our own methods, so a stray path cannot grow the
/// metric's label set without bound.
fn method_label(path: &str) -> String {
    if path.starts_with("/agora.") || path.starts_with("/grpc.") {
        path.to_owned()
    } else {
        "other".to_owned()
    }
}

impl<S, B, RB> Service<http::Request<B>> for RpcMetrics<S>
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
        self.rate.count();
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            // Errors of unary calls come back as trailers-only responses with
            // the status in the headers; a success has no status header.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0")
                    .to_owned(),
                Err(_) => "transport".to_owned(),
            };
            metrics::histogram!("agora_rpc_duration_seconds", "method" => method.clone())
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("agora_rpc_requests_total", "method" => method, "code" => code)
                .increment(1);
            result
        })
    }
}
