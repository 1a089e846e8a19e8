//! The HTTPS listener, for browsers: the WebSocket endpoint, the web client
//! and a health check, over TCP with the same certificate as QUIC.
//!
//! Each accepted TCP connection gets a TLS handshake (bounded in time), then
//! hyper's HTTP/1.1 driver with upgrades, routing through axum. HTTP/1.1
//! only: it is what every browser's WebSocket uses, and the web client is
//! three small files.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use quip_protocol::MAX_FRAME;
use tokio_rustls::TlsAcceptor;

use crate::quic::HANDSHAKE_TIMEOUT;
use crate::session::Shared;
use crate::tls::Identity;
use crate::{web, ws};

/// The WebSocket endpoint's path.
pub const WS_PATH: &str = "/v1/ws";

/// Time a client gets to send a request's headers (slow-loris bound).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The web client's Content-Security-Policy: its own scripts, styles and
/// connections only, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A TLS acceptor for HTTPS (TLS 1.3, HTTP/1.1 by ALPN).
pub fn tls_acceptor(id: &Identity) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(WS_PATH, get(websocket))
        .route("/healthz", get(health))
        .fallback(get(asset))
        .with_state(shared)
}

/// Serves one TCP connection until the client or the server ends it.
pub async fn serve_connection(tcp: tokio::net::TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, router: Router) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
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
    if let Err(e) = conn.await {
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
    // twice that is cut off by the WebSocket layer, bounding what one
    // connection can make the server buffer.
    ws.protocols([ws::SUBPROTOCOL])
        .max_message_size(2 * MAX_FRAME)
        .max_frame_size(2 * MAX_FRAME)
        .on_upgrade(move |socket| ws::serve_websocket(socket, shared, peer.ip()))
}

/// `GET /healthz`: 200 while serving, 503 once shutting down.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let version = env!("CARGO_PKG_VERSION");
    let (status, state) = if shared.shutting_down.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = format!("{{\"status\":\"{state}\",\"version\":\"{version}\"}}\n");
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
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
