//! The HTTP side of every service: `/metrics` for Prometheus, `/healthz` (the
//! process answers) and `/readyz` (it is connected and serving).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::ChassisError;

/// Set once a service has loaded its state and started serving; `/readyz`
/// also requires the NATS connection to be up.
#[derive(Clone, Default)]
pub struct Readiness {
    started: Arc<AtomicBool>,
    nats: Option<async_nats::Client>,
}

impl Readiness {
    pub fn new(nats: Option<async_nats::Client>) -> Self {
        Self {
            started: Arc::default(),
            nats,
        }
    }

    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        let nats_up = self
            .nats
            .as_ref()
            .is_none_or(|c| c.connection_state() == async_nats::connection::State::Connected);
        self.started.load(Ordering::Acquire) && nats_up
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// Serves until shutdown. `extra` adds service-specific routes (e.g. JSON views).
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    extra: Router,
    mut shutdown: Shutdown,
) -> Result<(), ChassisError> {
    let app = router(metrics, readiness).merge(extra);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ChassisError::Http {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(%addr, "http: /metrics /healthz /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.recv().await })
        .await
        .map_err(|source| ChassisError::Http {
            addr: addr.to_string(),
            source,
        })
}

fn router(metrics: Metrics, readiness: Readiness) -> Router {
    let state = AppState { metrics, readiness };
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state)
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
