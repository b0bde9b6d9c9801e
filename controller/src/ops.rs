//! The controller's operations endpoint (`--listen-http`): `/healthz` (the process serves, and
//! a leader still renews its Lease, as client-go's healthz adaptor checks), `/readyz` (the
//! watch caches have synced; not gated on leadership, or only the leader would be Ready) and
//! `/metrics` (the Prometheus text of [`crate::metrics`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::leader;
use crate::metrics::Metrics;

/// What the endpoint reports on.
#[derive(Clone)]
pub struct Health {
    /// Set once every watch cache has its first list.
    pub synced: tokio::sync::watch::Receiver<bool>,
    /// The leadership, when leader election is on.
    pub leader: Option<Arc<leader::State>>,
    /// How far past its lease a leader may be before `/healthz` fails (client-go's adaptor
    /// timeout; kube-controller-manager uses 20 s).
    pub leader_tolerance: Duration,
    pub metrics: Arc<Metrics>,
}

/// Serves the endpoint on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, health: Health) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    axum::serve(listener, app).await
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("--listen-http {addr}: cannot listen: {e}"),
        )
    })
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn healthz(State(h): State<Health>) -> Response {
    match h.leader.as_ref().map(|l| l.healthy(h.leader_tolerance)) {
        Some(Err(reason)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("[-]leaderElection failed: {reason}\nhealthz check failed\n"),
        ),
        _ => text(StatusCode::OK, "ok".to_string()),
    }
}

async fn readyz(State(h): State<Health>) -> Response {
    if *h.synced.borrow() {
        text(StatusCode::OK, "ok".to_string())
    } else {
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "[-]informer-sync failed: the watch caches have not synced yet\nreadyz check failed\n"
                .to_string(),
        )
    }
}

async fn metrics(State(h): State<Health>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics.encode(),
    )
        .into_response()
}
