//! One connection: the endpoint, connecting (in 0-RTT when a TLS session
//! can be resumed), the Hello/Welcome handshake, and the plumbing under
//! every request (frames written in call order, replies matched by id) and
//! every push (lane streams and datagrams into one bounded channel).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use quip_protocol::v1::{self, ErrorCode};
use quip_protocol::{Body, CloseCode, Envelope, FrameDecoder, PROTOCOL_VERSION, encode_frame};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use crate::{ClientError, ConnectOptions};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Envelope>>>>;

/// A connected client.
pub struct Client {
    pub(crate) conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    /// True once the TLS handshake is complete.
    handshake: tokio::sync::watch::Receiver<bool>,
    used_0rtt: bool,
    send: tokio::sync::Mutex<quinn::SendStream>,
    pending: Pending,
    pub(crate) next_id: AtomicU64,
    events: tokio::sync::Mutex<mpsc::Receiver<v1::Event>>,
    welcome: v1::Welcome,
}

fn resolve(server: &str) -> Result<(SocketAddr, String), ClientError> {
    let server = crate::config::with_default_port(server);
    let server = server.as_str();
    let addr = server
        .to_socket_addrs()
        .map_err(|e| ClientError::Connect(format!("resolving {server}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Connect(format!("{server} resolves to no address")))?;
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok((addr, host))
}

/// A transport error as [`ClientError::Closed`], with its causes: quinn's
/// stream errors say only "connection lost" and keep why (timed out, reset,
/// closed by the server with a code) in their source.
pub(crate) fn closed(e: impl std::error::Error) -> ClientError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    ClientError::Closed(text)
}

impl Client {
    /// A client endpoint (one UDP socket) set up to reach `opts.server`.
    /// Many connections can share one: tools that open thousands of
    /// connections use [`connect_on`](Self::connect_on) with a few of these.
    pub fn endpoint(opts: &ConnectOptions) -> Result<quinn::Endpoint, ClientError> {
        let (addr, _) = resolve(&opts.server)?;
        let bind: SocketAddr = opts.bind.unwrap_or_else(|| {
            if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
                .parse()
                .expect("valid")
        });
        let socket = udp_socket(bind).map_err(|e| ClientError::Connect(format!("UDP socket: {e}")))?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| ClientError::Connect(e.to_string()))?;
        endpoint.set_default_client_config(opts.quic.clone());
        Ok(endpoint)
    }

    /// Opens a QUIC connection (TLS 1.3, ALPN `quip/1`) without the Quip
    /// handshake: for tools and tests that speak frames themselves.
    pub async fn connect_raw(opts: &ConnectOptions) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
        let endpoint = Self::endpoint(opts)?;
        let conn = Self::quic_connect(&endpoint, opts).await?;
        Ok((endpoint, conn))
    }

    async fn quic_connect(endpoint: &quinn::Endpoint, opts: &ConnectOptions) -> Result<quinn::Connection, ClientError> {
        let (conn, mut handshake) = Self::quic_connect_0rtt(endpoint, opts).await?;
        let _ = handshake.wait_for(|done| *done).await;
        Ok(conn)
    }

    /// Connects, in 0-RTT when a resumable session exists. The watch turns
    /// true once the handshake is complete.
    async fn quic_connect_0rtt(
        endpoint: &quinn::Endpoint,
        opts: &ConnectOptions,
    ) -> Result<(quinn::Connection, tokio::sync::watch::Receiver<bool>), ClientError> {
        let (addr, host) = resolve(&opts.server)?;
        let connecting = endpoint
            .connect_with(opts.quic.clone(), addr, &host)
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        let conn = match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                tokio::spawn(async move {
                    let _ = accepted.await;
                    let _ = done_tx.send(true);
                });
                conn
            }
            Err(connecting) => {
                let conn = connecting.await.map_err(|e| ClientError::Connect(e.to_string()))?;
                let _ = done_tx.send(true);
                conn
            }
        };
        Ok((conn, done_rx))
    }

    /// Connects, performs the handshake, and starts receiving pushes.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, ClientError> {
        Self::connect_on(Self::endpoint(opts)?, opts).await
    }

    /// Like [`connect`](Self::connect), over an existing endpoint.
    ///
    /// When `opts` (or a clone) connected before, the TLS session is resumed
    /// and Hello travels in 0-RTT: the handshake costs no extra round trip.
    pub async fn connect_on(endpoint: quinn::Endpoint, opts: &ConnectOptions) -> Result<Self, ClientError> {
        let Some(limit) = opts.connect_timeout else {
            return Self::connect_now(endpoint, opts).await;
        };
        match tokio::time::timeout(limit, Self::connect_now(endpoint, opts)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Connect(format!(
                "no answer from {} over UDP within {} s: is quipd running there, is the port right, is UDP blocked on the way?",
                crate::config::with_default_port(&opts.server),
                limit.as_secs_f32()
            ))),
        }
    }

    async fn connect_now(endpoint: quinn::Endpoint, opts: &ConnectOptions) -> Result<Self, ClientError> {
        let (conn, mut handshake) = Self::quic_connect_0rtt(&endpoint, opts).await?;
        let mut early = !*handshake.borrow();
        let (send, recv, dec, welcome) = match hello(&conn, opts).await {
            // The early data never arrived: the streams opened in it are
            // void, the connection goes on in 1-RTT. Say Hello again there.
            Err(ClientError::ZeroRttRejected) if early => {
                let _ = handshake.wait_for(|done| *done).await;
                early = false;
                hello(&conn, opts).await?
            }
            r => r?,
        };

        let pending: Pending = Arc::default();
        tokio::spawn(read_replies(recv, dec, pending.clone()));
        let (ev_tx, ev_rx) = mpsc::channel(4096);
        tokio::spawn(accept_lanes(conn.clone(), ev_tx.clone()));
        tokio::spawn(read_datagrams(conn.clone(), ev_tx));
        Ok(Self {
            conn,
            endpoint,
            handshake,
            used_0rtt: early,
            send: tokio::sync::Mutex::new(send),
            pending,
            next_id: AtomicU64::new(2),
            events: tokio::sync::Mutex::new(ev_rx),
            welcome,
        })
    }

    /// What the server said in the handshake.
    pub fn welcome(&self) -> &v1::Welcome {
        &self.welcome
    }

    /// Whether this connection sent its first requests in 0-RTT early data
    /// (a resumed TLS session).
    pub fn used_0rtt(&self) -> bool {
        self.used_0rtt
    }

    /// Waits until the TLS handshake is complete (at once unless 0-RTT).
    pub async fn handshake_complete(&self) {
        let _ = self.handshake.clone().wait_for(|done| *done).await;
    }

    /// The QUIC endpoint (its UDP socket) this client uses: tests rebind it
    /// to simulate a phone moving from Wi-Fi to cellular.
    pub fn quic_endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// Sends one request and waits for its answer. Error answers become
    /// [`ClientError::Server`]. A request the server refused as too early
    /// (it came in 0-RTT data and is not replay-safe) is sent again once the
    /// handshake is complete.
    pub async fn request(&self, body: Body) -> Result<Body, ClientError> {
        let retry = (!*self.handshake.borrow()).then(|| body.clone());
        match self.request_once(body).await {
            Err(ClientError::Server {
                code: ErrorCode::TooEarly,
                ..
            }) if retry.is_some() => {
                self.handshake_complete().await;
                self.request_once(retry.expect("checked")).await
            }
            r => r,
        }
    }

    /// Sends one request and waits for its answer, without retrying.
    pub async fn request_once(&self, body: Body) -> Result<Body, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        {
            let mut send = self.send.lock().await;
            if let Err(e) = write(&mut send, &Envelope::new(id, body)).await {
                self.pending.lock().expect("pending lock").remove(&id);
                return Err(e);
            }
        }
        let reply = rx.await.map_err(|_| self.close_reason())?;
        match reply.body {
            Some(Body::Error(e)) => Err(server_error(e)),
            Some(b) => Ok(b),
            None => Err(ClientError::Protocol("empty reply".into())),
        }
    }

    fn close_reason(&self) -> ClientError {
        match self.conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => {
                let code = CloseCode::from_code(c.error_code.into_inner());
                ClientError::Closed(format!("{code:?}: {}", String::from_utf8_lossy(&c.reason)))
            }
            Some(e) => closed(e),
            None => ClientError::Closed("reply stream ended".into()),
        }
    }

    /// The next pushed event; `None` once the connection is closed.
    pub async fn next_event(&self) -> Option<v1::Event> {
        self.events.lock().await.recv().await
    }

    /// Waits until the connection closes; returns the close code and reason.
    pub async fn closed(&self) -> (Option<CloseCode>, String) {
        match self.conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => (
                CloseCode::from_code(c.error_code.into_inner()),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            e => (None, e.to_string()),
        }
    }

    /// Closes the connection normally.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }

    /// The underlying QUIC connection (tests open raw streams on it).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }
}

/// A UDP socket with 1 MiB kernel buffers where the kernel allows: an
/// endpoint may carry many connections (tools, benchmarks), and the default
/// ~208 KiB drops packets under bursts, each drop costing a retransmission
/// timeout.
fn udp_socket(bind: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(1 << 20);
    let _ = socket.set_send_buffer_size(1 << 20);
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

pub(crate) fn server_error(e: v1::Error) -> ClientError {
    ClientError::Server {
        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
        message: e.message,
        retry_after_ms: e.retry_after_ms,
    }
}

/// Opens the control stream and exchanges Hello for Welcome.
async fn hello(
    conn: &quinn::Connection,
    opts: &ConnectOptions,
) -> Result<(quinn::SendStream, quinn::RecvStream, FrameDecoder, v1::Welcome), ClientError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(closed)?;
    let hello = Envelope::new(
        1,
        Body::Hello(v1::Hello {
            versions: vec![PROTOCOL_VERSION],
            token: opts.token.clone().unwrap_or_default(),
            client: opts.client_name.clone(),
            background: opts.background,
        }),
    );
    write(&mut send, &hello).await?;
    let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
    let first = read(&mut recv, &mut dec)
        .await?
        .ok_or_else(|| ClientError::Closed("server ended the stream during handshake".into()))?;
    match first.body {
        Some(Body::Welcome(w)) => Ok((send, recv, dec, w)),
        Some(Body::Error(e)) => Err(server_error(e)),
        _ => Err(ClientError::Protocol("expected Welcome".into())),
    }
}

pub(crate) async fn write(send: &mut quinn::SendStream, env: &Envelope) -> Result<(), ClientError> {
    let mut buf = BytesMut::new();
    encode_frame(env, quip_protocol::MAX_FRAME, &mut buf).map_err(|e| ClientError::Protocol(e.to_string()))?;
    send.write_all(&buf).await.map_err(|e| match e {
        quinn::WriteError::ZeroRttRejected => ClientError::ZeroRttRejected,
        e => closed(e),
    })
}

pub(crate) async fn read(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder,
) -> Result<Option<Envelope>, ClientError> {
    loop {
        if let Some(env) = dec.decode().map_err(|e| ClientError::Protocol(e.to_string()))? {
            return Ok(Some(env));
        }
        dec.buffer_mut().reserve(8192);
        match recv.read_buf(dec.buffer_mut()).await {
            Ok(0) => {
                dec.finish().map_err(|e| ClientError::Protocol(e.to_string()))?;
                return Ok(None);
            }
            Ok(_) => {}
            Err(e)
                if e.get_ref()
                    .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
                    .is_some_and(|r| matches!(r, quinn::ReadError::ZeroRttRejected)) =>
            {
                return Err(ClientError::ZeroRttRejected);
            }
            Err(e) => return Err(closed(e)),
        }
    }
}

async fn read_replies(mut recv: quinn::RecvStream, mut dec: FrameDecoder, pending: Pending) {
    while let Ok(Some(env)) = read(&mut recv, &mut dec).await {
        let waiter = pending.lock().expect("pending lock").remove(&env.id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(env);
            }
            None => tracing::debug!(id = env.id, "reply for no request (connection-level error?)"),
        }
    }
    // Dropping the senders wakes every waiter with "closed".
    pending.lock().expect("pending lock").clear();
}

/// Events that arrive as datagrams (typing). Dropped when the event queue
/// is full: they are transient.
async fn read_datagrams(conn: quinn::Connection, events: mpsc::Sender<v1::Event>) {
    while let Ok(d) = conn.read_datagram().await {
        if let Ok(Envelope {
            body: Some(Body::Event(e)),
            ..
        }) = quip_protocol::decode_envelope(&d, quip_protocol::MAX_FRAME)
        {
            let _ = events.try_send(e);
        }
    }
}

async fn accept_lanes(conn: quinn::Connection, events: mpsc::Sender<v1::Event>) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let events = events.clone();
        tokio::spawn(async move {
            let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
            while let Ok(Some(env)) = read(&mut recv, &mut dec).await {
                if let Some(Body::Event(e)) = env.body
                    && events.send(e).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod closed_tests {
    use super::*;

    #[test]
    fn a_lost_connection_says_why() {
        let lost = quinn::WriteError::ConnectionLost(quinn::ConnectionError::TimedOut);
        match closed(lost) {
            ClientError::Closed(text) => assert_eq!(text, "connection lost: timed out"),
            other => panic!("{other:?}"),
        }
    }
}
