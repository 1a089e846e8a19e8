//! The admin listener: plain HTTP for the operator's tools, apart from the
//! clients' ports, bound where `--admin-listen` says (loopback, unless the
//! operator decides otherwise). It serves:
//!
//! - `GET /metrics`: Prometheus text exposition ([`crate::metrics`]);
//! - `GET /healthz` and `GET /readyz` ([`super::health`]);
//! - `/admin/v1/…`: the operator's API ([`crate::admin::api`]), behind the
//!   bearer token in `<data-dir>/admin-token`.
//!
//! The first three need no credential, so they may not act or reveal
//! messages: counts and states only. It is bounded like the public
//! listeners, in case it is exposed: [`MAX_CONNECTIONS`] at once (more are
//! dropped), request headers within [`HEADER_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

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

/// Connections the admin listener serves at once (scrapers and probes
/// need a few); further ones are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;

/// Time a client of the admin listener gets to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin routes on `listener` until the task is aborted, which
/// the server does once it has drained: meanwhile `/readyz` says 503 and
/// `/metrics` shows the drain.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    metrics: PrometheusHandle,
    token: Arc<crate::admin::token::AdminToken>,
) {
    let api = crate::admin::api::router(shared.clone(), token);
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(Admin { shared, metrics })
        .nest("/admin/v1", api);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                // Dropping the stream refuses it.
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let app = app.clone();
                conns.spawn(async move {
                    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        // Who asked, for the audit log.
                        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                        let mut app = app.clone();
                        async move { tower_service::Service::call(&mut app, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                    drop(slot);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
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
