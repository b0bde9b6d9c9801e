//! Every API request a kube-rs client makes, reported as it completes (method, status code or
//! none for a failure, and how long until the response began): the tower layer behind the
//! `coredns_kubernetes_rest_client_*` metrics, which client-go keeps for CoreDNS.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Receives each request's outcome.
pub trait RestObserver: Send + Sync {
    /// `code` is `None` when no response came (a connection error).
    fn request(&self, method: &str, code: Option<u16>, took: Duration);
}

/// The layer to add to a client's stack.
#[derive(Clone)]
pub struct ObserveLayer(pub Arc<dyn RestObserver>);

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            observer: self.0.clone(),
        }
    }
}

/// A service reporting each request to its observer.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    observer: Arc<dyn RestObserver>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.method().to_string();
        let (observer, started) = (self.observer.clone(), Instant::now());
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            let code = result.as_ref().ok().map(|r| r.status().as_u16());
            observer.request(&method, code, started.elapsed());
            result
        })
    }
}
