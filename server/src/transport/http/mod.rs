//! The HTTPS listener, for browsers: the WebSocket endpoint, the web client
//! and the health probes (`/healthz`, `/readyz`), over TCP with the same
//! certificate as QUIC.
//!
//! Each accepted TCP connection gets a TLS handshake (bounded in time), then
//! hyper's HTTP/1.1 driver with upgrades, routing through axum. HTTP/1.1
//! only: it is what every browser's WebSocket uses, and the web client is
//! three small files.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::{StreamExt, TryStreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use quip_protocol::MAX_FRAME;
use quip_protocol::v1;
use serde_json::{Value, json};
use tokio_rustls::TlsAcceptor;

use crate::service::{Actor, ServiceError};
use crate::session::Shared;
use crate::transport::quic::HANDSHAKE_TIMEOUT;
use crate::transport::tls::Certificates;
use crate::transport::{health, web, ws};

mod media_api;

/// The WebSocket endpoint's path.
pub const WS_PATH: &str = "/v1/ws";

/// Time a client gets to send a request's headers (slow-loris bound).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The web client's Content-Security-Policy: its own scripts, styles and
/// connections only, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A TLS acceptor for HTTPS (TLS 1.3, HTTP/1.1 by ALPN) presenting `certs`.
pub fn tls_acceptor(certs: Arc<Certificates>) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(Arc::new(crate::transport::tls::server_config(
        certs,
        b"http/1.1",
    )?)))
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(WS_PATH, get(websocket))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/uploads", post(media_api::start_upload))
        .route("/v1/uploads/{id}", put(media_api::put_upload))
        .route("/v1/media/{id}", get(media_api::get_media))
        .fallback(get(asset))
        .with_state(shared)
}

/// Serves one TCP connection until the client or the server ends it.
/// When the server drains, a request under way finishes and the
/// connection then closes (hyper's graceful shutdown); an upgraded
/// WebSocket lives on in its own task and drains like a QUIC connection.
pub async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    shared: Arc<Shared>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            crate::metrics::handshake("https", "ok");
            tls
        }
        Ok(Err(e)) => {
            crate::metrics::handshake("https", "failed");
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            crate::metrics::handshake("https", "timeout");
            return;
        }
    };
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = shared.shutdown.wait_started() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// `GET /v1/ws`: upgrades to a Quip WebSocket session.
async fn websocket(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    if !ws.requested_protocols().any(|p| p == ws::SUBPROTOCOL) {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "offer the WebSocket subprotocol {} (Sec-WebSocket-Protocol)\n",
                ws::SUBPROTOCOL
            ),
        )
            .into_response();
    }
    // Messages above a frame are refused by decoding with a typed error;
    // twice that is cut off by the WebSocket layer (close 1009), bounding
    // what one connection can make the server buffer. Writes are bounded
    // too: the pongs the layer answers pings with wait there when the
    // client does not read.
    ws.protocols([ws::SUBPROTOCOL])
        .max_message_size(2 * MAX_FRAME)
        .max_frame_size(2 * MAX_FRAME)
        .max_write_buffer_size(ws::MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| ws::serve_websocket(socket, shared, peer))
}

/// The web client's files.
async fn asset(uri: Uri) -> Response {
    let Some(a) = web::find(uri.path()) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mut resp = (StatusCode::OK, a.body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    // The assets change with the server binary: always revalidate.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

// ---------------------------------------------------------------- media
//
// The HTTPS face of spec/protocol.md §20 for browsers: the same
// begin/receive/download functions as the QUIC streams, with JSON around
// them and a bearer token instead of a session.

/// The HTTP status that fits an error code.
fn status_of(code: v1::ErrorCode) -> StatusCode {
    use quip_protocol::v1::ErrorCode as C;
    match code {
        C::InvalidArgument => StatusCode::BAD_REQUEST,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::NotFound => StatusCode::NOT_FOUND,
        C::UploadIncomplete => StatusCode::CONFLICT,
        C::LimitExceeded => StatusCode::PAYLOAD_TOO_LARGE,
        C::HashMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        C::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as JSON, with the HTTP status that fits its code.
fn error_response(e: &ServiceError) -> Response {
    error_json(status_of(e.code()), e.code(), &e.to_string())
}

fn error_json(status: StatusCode, code: v1::ErrorCode, message: &str) -> Response {
    json_response(status, json!({"code": code.as_str_name(), "message": message}))
}

/// Ends the connection after `resp`, an upload's error: its body may be
/// partly unread (refused before reading, over a limit, stalled), and the
/// connection is not worth keeping for whatever of it is still coming.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}
