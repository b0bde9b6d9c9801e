//! The HTTP endpoints of CoreDNS's `health` and `ready` plugins: `/health` answers 200 `OK`
//! while the process serves (through the lameduck period too); `/ready` answers 503 naming what
//! is not ready (`kubernetes`, until the cache's first sync), 200 `OK` once it is, and 503
//! `Shutting down` from the moment shutdown begins.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where the server is in its life, as `/ready` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Waiting for the cache's first sync.
    Starting,
    Ready,
    /// A SIGTERM arrived: DNS answers through the lameduck period, `/ready` says no.
    ShuttingDown,
}

/// `/health` on `listener` until the task is dropped.
pub async fn serve_health(listener: TcpListener) {
    let app = Router::new().route("/health", get(|| async { "OK" }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the health endpoint stopped");
    }
}

/// `/ready` on `listener`, answering from `state`, until the task is dropped.
pub async fn serve_ready(listener: TcpListener, state: watch::Receiver<Readiness>) {
    let app = Router::new().route(
        "/ready",
        get(move || {
            let now = *state.borrow();
            async move { answer(now) }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the ready endpoint stopped");
    }
}

/// The status and body `/ready` gives in `state`.
pub fn answer(state: Readiness) -> (StatusCode, &'static str) {
    match state {
        Readiness::Starting => (StatusCode::SERVICE_UNAVAILABLE, "kubernetes"),
        Readiness::Ready => (StatusCode::OK, "OK"),
        Readiness::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "Shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_names_what_is_not_ready_and_says_when_it_shuts_down() {
        assert_eq!(
            answer(Readiness::Starting),
            (StatusCode::SERVICE_UNAVAILABLE, "kubernetes")
        );
        assert_eq!(answer(Readiness::Ready), (StatusCode::OK, "OK"));
        assert_eq!(
            answer(Readiness::ShuttingDown),
            (StatusCode::SERVICE_UNAVAILABLE, "Shutting down")
        );
    }
}
