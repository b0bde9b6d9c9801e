//! The HTTP endpoints of CoreDNS's `health`, `ready` and `prometheus` plugins: `/health`
//! answers 200 `OK` while the process serves (through the lameduck period too) and is checked
//! by the process itself every second, as CoreDNS does, into `coredns_health_*`; `/ready`
//! answers 503 naming what is not ready (`kubernetes`, until the cache's first sync), 200 `OK`
//! once it is, and 503 `Shutting down` from the moment shutdown begins; `/metrics` gives the
//! Prometheus text of [`Metrics`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;

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

/// `/metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let text = metrics.encode();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

/// Asks `/health` at `addr` once a second, timing each answer into
/// `coredns_health_request_duration_seconds` and counting failures (no 200 within 3 s, or an
/// answer slower than 1 s) into `coredns_health_request_failures_total`.
pub async fn check_health(addr: SocketAddr, metrics: Arc<Metrics>) {
    let addr = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let started = Instant::now();
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(3), get_status(addr, "/health")).await,
            Ok(Ok(200))
        );
        let took = started.elapsed();
        metrics.health_duration.observe(took.as_secs_f64());
        if !ok || took > Duration::from_secs(1) {
            metrics
                .health_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The status of a plain HTTP/1.0 GET of `path` at `addr`.
async fn get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut head = vec![0u8; 32];
    let n = stream.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP status line: {line:?}")))
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
