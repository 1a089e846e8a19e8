//! The admin listener: plain HTTP for the operator's tools, apart from the
//! clients' ports, bound where `--admin-listen` says (loopback, unless the
//! operator decides otherwise). It serves:
//!
//! - `GET /metrics`: Prometheus text exposition ([`crate::metrics`]);
//! - `GET /healthz` and `GET /readyz` ([`super::health`]).
//!
//! Nothing here needs a credential, so nothing here may act or reveal
//! messages: counts and states only.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::session::Shared;
use crate::transport::health;

/// What the admin routes need.
#[derive(Clone)]
struct Admin {
    shared: Arc<Shared>,
    metrics: PrometheusHandle,
}

impl axum::extract::FromRef<Admin> for Arc<Shared> {
    fn from_ref(a: &Admin) -> Self {
        a.shared.clone()
    }
}

/// Serves the admin routes on `listener` until the task is aborted, which
/// the server does once it has drained: meanwhile `/readyz` says 503 and
/// `/metrics` shows the drain.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, metrics: PrometheusHandle) {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(Admin { shared, metrics });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "admin listener failed");
    }
}

/// `GET /metrics`: the text format, version 0.0.4.
async fn render(State(a): State<Admin>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        a.metrics.render(),
    )
        .into_response()
}
