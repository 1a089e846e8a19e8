//! Health probes, on the HTTPS listener and on the admin listener:
//!
//! - `GET /healthz`, liveness: 200 while the process serves HTTP at all,
//!   even while it drains or its store is unreachable (restarting it would
//!   not help either);
//! - `GET /readyz`, readiness: 200 only while it accepts connections and
//!   can read its store, so a load balancer sends clients elsewhere when a
//!   node cannot serve them (its FoundationDB cluster down, a drain).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::session::Shared;

/// How long `/readyz` waits for its store read.
const READY_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: alive. The status says whether it is draining.
pub async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let state = if shared.shutdown.started() {
        "shutting down"
    } else {
        "ok"
    };
    json(StatusCode::OK, state)
}

/// `GET /readyz`: 200 while accepting and the store answers a read within
/// [`READY_STORE_TIMEOUT`]; else 503 saying which.
pub async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.shutdown.started() {
        return json(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let store = shared.store.clone();
    let probe =
        tokio::task::spawn_blocking(move || crate::store::read(&*store, |t| t.get(&crate::keys::counter("user"))));
    if matches!(tokio::time::timeout(READY_STORE_TIMEOUT, probe).await, Ok(Ok(Ok(_)))) {
        json(StatusCode::OK, "ok")
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
    }
}

fn json(status: StatusCode, state: &str) -> Response {
    let version = env!("CARGO_PKG_VERSION");
    let body = format!("{{\"status\":\"{state}\",\"version\":\"{version}\"}}\n");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
