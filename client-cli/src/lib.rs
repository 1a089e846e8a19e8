//! The Quip client library: one QUIC connection to `quipd`, with pipelined
//! requests and a stream of pushed events.
//!
//! ```text
//!  request() ─► control stream ─► quipd ─► control stream ─► reader task ─► the caller's oneshot (by id)
//!  quipd push lanes (uni streams) ─► lane reader tasks ─► bounded event channel ─► next_event()
//! ```
//!
//! Any number of tasks may call [`Client::request`] at once; frames are
//! written in call order and answers matched by correlation id. Events must
//! be consumed: the channel is bounded, so a client that stops reading
//! eventually stops the server's pushes (and is disconnected as a slow
//! consumer, to resync later) rather than growing without bound.
//!
//! [`AckTracker`] implements the acknowledgement rule of the spec: only a
//! contiguous prefix of the user's log is acknowledged.

pub mod media;
pub mod tracker;
pub mod typing;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use quip_protocol::v1::{self, ErrorCode};
use quip_protocol::{ALPN, Body, CloseCode, Envelope, FrameDecoder, PROTOCOL_VERSION, encode_frame};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

pub use media::{Progress, UploadSpec};
pub use tracker::AckTracker;
pub use typing::TypingState;

/// Unwraps the expected reply variant or reports what came instead.
macro_rules! reply_as {
    ($body:expr, $variant:ident) => {
        match $body {
            Body::$variant(x) => Ok(x),
            other => Err(ClientError::Protocol(format!(
                "unexpected reply {}",
                quip_protocol::body_name(&Envelope::new(0, other))
            ))),
        }
    };
}

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not reach or handshake with the server.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server answered with an error.
    #[error("{message} ({code:?})")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// For RATE_LIMITED: when to retry.
        retry_after_ms: u32,
    },
    /// The connection is gone.
    #[error("connection closed: {0}")]
    Closed(String),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local file could not be read or written.
    #[error("file: {0}")]
    Io(String),
    /// The server refused this connection's 0-RTT early data (its resumption
    /// ticket was used up or expired): what was sent in it never arrived.
    /// [`Client::connect_on`] handles it by saying Hello again in 1-RTT.
    #[error("0-RTT early data rejected by the server")]
    ZeroRttRejected,
}

impl ClientError {
    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How to reach a server.
///
/// Clones share one TLS configuration and with it the cache of resumable
/// sessions, so a reconnect made with (a clone of) the same options resumes
/// the TLS session and sends its first requests in 0-RTT.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `host:port`.
    pub server: String,
    /// PEM certificate to trust (a dev server's self-signed one). Without it
    /// the platform's web PKI roots are used.
    pub ca_pem: Option<Vec<u8>>,
    /// The QUIC client configuration built from `ca_pem`.
    quic: quinn::ClientConfig,
    /// Local address to bind [`Client::endpoint`]'s socket to (default:
    /// any address, any port).
    pub bind: Option<SocketAddr>,
    /// Session token to resume; `None` connects anonymously.
    pub token: Option<String>,
    /// Sent in Hello for the server's logs.
    pub client_name: String,
    /// Connect without making the user online (Hello.background): for
    /// background sync and one-shot tools.
    pub background: bool,
}

impl ConnectOptions {
    /// Options for `server`, trusting the PEM file at `ca` if given.
    pub fn new(server: impl Into<String>, ca: Option<&Path>) -> Result<Self, ClientError> {
        let ca_pem = ca
            .map(|p| std::fs::read(p).map_err(|e| ClientError::Connect(format!("reading CA {}: {e}", p.display()))))
            .transpose()?;
        let quic = quic_config(ca_pem.as_deref())?;
        Ok(Self {
            server: server.into(),
            ca_pem,
            quic,
            bind: None,
            background: false,
            token: None,
            client_name: concat!("quip-client/", env!("CARGO_PKG_VERSION")).into(),
        })
    }

    /// With a session token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

impl ConnectOptions {
    /// With another keep-alive interval than [`KEEP_ALIVE`] (tests that
    /// shorten the server's idle timeout need a shorter one). Starts a new
    /// resumable-session cache.
    pub fn keep_alive(mut self, every: Duration) -> Result<Self, ClientError> {
        self.quic = quic_config_with(self.ca_pem.as_deref(), every)?;
        Ok(self)
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("client_name", &self.client_name)
            .finish_non_exhaustive()
    }
}

/// How often an idle connection sends a QUIC PING. Home routers and carrier
/// NATs commonly drop idle UDP bindings after 30 s or more; 10 s keeps the
/// binding and lets two PINGs in a row be lost before the server's 30 s
/// idle timeout. Only an idle connection pings, and only while connected: a
/// backgrounded app should close its connection and rely on push
/// notifications rather than wake the radio every 10 s.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

fn quic_config(ca_pem: Option<&[u8]>) -> Result<quinn::ClientConfig, ClientError> {
    quic_config_with(ca_pem, KEEP_ALIVE)
}

fn quic_config_with(ca_pem: Option<&[u8]>, keep_alive: Duration) -> Result<quinn::ClientConfig, ClientError> {
    let tls = tls_config(ca_pem)?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| ClientError::Connect(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(keep_alive))
        .max_concurrent_uni_streams(64u32.into())
        .mtu_discovery_config(Some(mtu_discovery()));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Path-MTU discovery that tries one size: 1,452 bytes (a 1,500-byte path,
/// most Wi-Fi and cellular ones), else the connection keeps QUIC's 1,200.
///
/// quinn's default binary search sends four probes (1,326 to 1,436 bytes)
/// per connection, each a packet of PADDING frames that the server's QUIC
/// stack parses one byte at a time: perf put that at a fifth of quipd's CPU
/// while accepting connections; 10,000 connections opened at 930-1,210
/// handshakes/s with four probes, 1,170-1,405 with one (alternating runs).
/// One probe keeps the larger packets for media transfers where the path
/// allows them; the sizes in between are not worth three more probes.
fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(1452).minimum_change(1452 - 1200);
    mtud
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Envelope>>>>;

/// A connected client.
pub struct Client {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    /// True once the TLS handshake is complete.
    handshake: tokio::sync::watch::Receiver<bool>,
    used_0rtt: bool,
    send: tokio::sync::Mutex<quinn::SendStream>,
    pending: Pending,
    next_id: AtomicU64,
    events: tokio::sync::Mutex<mpsc::Receiver<v1::Event>>,
    welcome: v1::Welcome,
}

fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| ClientError::Connect(format!("bad CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Connect(format!("bad CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Connect("no certificate in the CA file".into()));
        }
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    // Resumed sessions send their first flight as 0-RTT; the server runs
    // only replay-safe requests from it (others get TOO_EARLY, which
    // `request` retries once the handshake is done).
    cfg.enable_early_data = true;
    Ok(cfg)
}

/// ring's suites with TLS_AES_128_GCM_SHA256 preferred (the server takes the
/// client's order). ring lists AES-256-GCM-SHA384 first, whose key schedule
/// runs on SHA-512 blocks that no x86 instruction speeds up, where SHA-256
/// has SHA-NI: the SHA-384 HMACs of each handshake were 7% of quipd's and 9%
/// of a client's CPU while opening connections. AES-128 also encrypts every
/// packet in 10 rounds instead of 14, and is what QUIC's Initial packets and
/// browsers use anyway.
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

fn resolve(server: &str) -> Result<(SocketAddr, String), ClientError> {
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
fn closed(e: impl std::error::Error) -> ClientError {
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

    // ------------------------------------------------------------ typed calls

    /// Creates an account; the connection is then logged in.
    pub async fn register(&self, user: &str, password: &str, device: &str) -> Result<v1::AuthResponse, ClientError> {
        let body = Body::Register(v1::RegisterRequest {
            username: user.into(),
            password: password.into(),
            device_name: device.into(),
        });
        reply_as!(self.request(body).await?, Auth)
    }

    /// Logs in as a new device of an existing account.
    pub async fn login(&self, user: &str, password: &str, device: &str) -> Result<v1::AuthResponse, ClientError> {
        let body = Body::Login(v1::LoginRequest {
            username: user.into(),
            password: password.into(),
            device_name: device.into(),
        });
        reply_as!(self.request(body).await?, Auth)
    }

    /// Revokes this connection's token.
    pub async fn logout(&self) -> Result<(), ClientError> {
        reply_as!(self.request(Body::Logout(v1::LogoutRequest {})).await?, LoggedOut).map(|_| ())
    }

    /// Who this connection is logged in as.
    pub async fn whoami(&self) -> Result<v1::WhoAmIResponse, ClientError> {
        reply_as!(self.request(Body::Whoami(v1::WhoAmIRequest {})).await?, Identity)
    }

    /// Sends a text message to a user with a fresh client_msg_id.
    pub async fn send_text(&self, to_user: &str, text: &str) -> Result<v1::SendResponse, ClientError> {
        self.send(v1::SendRequest {
            to_user: to_user.into(),
            client_msg_id: new_client_msg_id(),
            content: Some(v1::Content {
                text: text.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }

    /// Sends a message as given (retry with the same client_msg_id is safe).
    pub async fn send(&self, req: v1::SendRequest) -> Result<v1::SendResponse, ClientError> {
        reply_as!(self.request(Body::Send(req)).await?, Sent)
    }

    /// A page of history with a user (newest first).
    pub async fn history(
        &self,
        with_user: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<v1::HistoryResponse, ClientError> {
        self.history_page(v1::HistoryRequest {
            with_user: with_user.into(),
            before_seq,
            limit,
            ..Default::default()
        })
        .await
    }

    /// A page of history of a chat by id (newest first).
    pub async fn history_of_chat(
        &self,
        chat_id: u64,
        before_seq: u64,
        limit: u32,
    ) -> Result<v1::HistoryResponse, ClientError> {
        self.history_page(v1::HistoryRequest {
            chat_id,
            before_seq,
            limit,
            ..Default::default()
        })
        .await
    }

    /// A page of a chat's messages after `after_seq`, oldest first: how a
    /// channel subscriber (or any client filling a gap) reads forwards.
    pub async fn history_after(
        &self,
        chat_id: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<v1::HistoryResponse, ClientError> {
        self.history_page(v1::HistoryRequest {
            chat_id,
            after_seq: Some(after_seq),
            limit,
            ..Default::default()
        })
        .await
    }

    /// Any history request, as given.
    pub async fn history_page(&self, req: v1::HistoryRequest) -> Result<v1::HistoryResponse, ClientError> {
        reply_as!(self.request(Body::History(req)).await?, HistoryPage)
    }

    /// Creates a group with these members (besides me) and I as admin.
    pub async fn create_group(&self, name: &str, members: &[&str]) -> Result<v1::ChatInfoResponse, ClientError> {
        self.create_chat(v1::ChatKind::Group, name, members).await
    }

    /// Creates a channel with me as admin and first subscriber.
    pub async fn create_channel(&self, name: &str) -> Result<v1::ChatInfoResponse, ClientError> {
        self.create_chat(v1::ChatKind::Channel, name, &[]).await
    }

    async fn create_chat(
        &self,
        kind: v1::ChatKind,
        name: &str,
        members: &[&str],
    ) -> Result<v1::ChatInfoResponse, ClientError> {
        let body = Body::CreateChat(v1::CreateChatRequest {
            kind: kind as i32,
            name: name.into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            // The library retries requests refused as too early: a fresh id
            // per call makes such a retry (or any other) create one chat.
            client_request_id: new_client_msg_id(),
        });
        reply_as!(self.request(body).await?, Chat)
    }

    /// Changes a group's or channel's membership, admins or name.
    pub async fn update_chat(
        &self,
        chat_id: u64,
        action: v1::ChatAction,
        users: &[&str],
        name: &str,
    ) -> Result<v1::ChatInfoResponse, ClientError> {
        let body = Body::UpdateChat(v1::UpdateChatRequest {
            chat_id,
            action: action as i32,
            users: users.iter().map(|m| (*m).to_owned()).collect(),
            name: name.into(),
        });
        reply_as!(self.request(body).await?, Chat)
    }

    /// A group's or channel's name, members and admins.
    pub async fn chat_info(&self, chat_id: u64) -> Result<v1::ChatInfo, ClientError> {
        let body = Body::ChatInfo(v1::ChatInfoRequest { chat_id });
        reply_as!(self.request(body).await?, Chat).map(|c| c.info.unwrap_or_default())
    }

    /// Every member's delivered/read cursors in a group ("message info").
    pub async fn receipt_detail(&self, chat_id: u64) -> Result<v1::ReceiptDetailResponse, ClientError> {
        let body = Body::ReceiptDetail(v1::ReceiptDetailRequest { chat_id });
        reply_as!(self.request(body).await?, ReceiptDetails)
    }

    /// Presence of users, as far as their privacy settings let me see it.
    pub async fn presence(&self, users: &[&str]) -> Result<Vec<v1::Presence>, ClientError> {
        let body = Body::Presence(v1::PresenceRequest {
            users: users.iter().map(|u| (*u).to_owned()).collect(),
        });
        reply_as!(self.request(body).await?, PresenceList).map(|p| p.users)
    }

    /// Sets who may see my online status and last seen.
    pub async fn set_last_seen_visibility(&self, v: v1::Visibility) -> Result<v1::Visibility, ClientError> {
        let body = Body::Settings(v1::SettingsRequest {
            last_seen: v as i32,
            ..Default::default()
        });
        reply_as!(self.request(body).await?, SettingsSaved)
            .map(|s| v1::Visibility::try_from(s.last_seen).unwrap_or_default())
    }

    /// Sets who may add this user to groups; returns the stored setting.
    pub async fn set_group_adds(&self, g: v1::GroupAdds) -> Result<v1::GroupAdds, ClientError> {
        let body = Body::Settings(v1::SettingsRequest {
            group_adds: g as i32,
            ..Default::default()
        });
        reply_as!(self.request(body).await?, SettingsSaved)
            .map(|s| v1::GroupAdds::try_from(s.group_adds).unwrap_or_default())
    }

    /// Says "I am typing" in a chat: as a QUIC datagram when the connection
    /// supports them (no reply, no retransmission: stale typing is
    /// worthless), else as a request on the stream.
    pub async fn typing(&self, chat_id: u64) -> Result<(), ClientError> {
        let env = Envelope::new(0, Body::Typing(v1::TypingRequest { chat_id }));
        let frame = quip_protocol::frame_bytes(&env, quip_protocol::MAX_FRAME)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let body = quip_protocol::frame_body(&frame);
        if self.conn.max_datagram_size().is_some_and(|max| body.len() <= max) {
            return self.conn.send_datagram(body).map_err(closed);
        }
        reply_as!(self.request(env.body.expect("set above")).await?, TypingSent).map(|_| ())
    }

    /// Blocks (or unblocks) a user; returns everyone I block.
    pub async fn block(&self, user: &str, unblock: bool) -> Result<Vec<String>, ClientError> {
        let body = Body::Block(v1::BlockRequest {
            user: user.into(),
            unblock,
        });
        reply_as!(self.request(body).await?, Blocked).map(|b| b.blocked)
    }

    /// Subscribes to a channel (or unsubscribes).
    pub async fn subscribe(&self, chat_id: u64, unsubscribe: bool) -> Result<v1::ChatInfoResponse, ClientError> {
        let body = Body::Subscribe(v1::SubscribeRequest { chat_id, unsubscribe });
        reply_as!(self.request(body).await?, Chat)
    }

    /// Sends a text message into a chat by id (group, channel or direct).
    pub async fn send_text_to_chat(&self, chat_id: u64, text: &str) -> Result<v1::SendResponse, ClientError> {
        self.send(v1::SendRequest {
            chat_id,
            client_msg_id: new_client_msg_id(),
            content: Some(v1::Content {
                text: text.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }

    /// The whole chat list, most recently active first, page by page. A
    /// chat that becomes active while the pages are read may be listed
    /// twice; the later entry is dropped.
    pub async fn chats(&self) -> Result<Vec<v1::ChatSummary>, ClientError> {
        let mut all: Vec<v1::ChatSummary> = Vec::new();
        let mut after = None;
        loop {
            let page = self.chats_page(0, after).await?;
            for c in page.chats {
                if !all.iter().any(|a| a.chat_id == c.chat_id) {
                    all.push(c);
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// One page of the chat list: at most `limit` chats (0: the server's
    /// default) after `after`, the previous page's `next`.
    pub async fn chats_page(
        &self,
        limit: u32,
        after: Option<v1::ChatsCursor>,
    ) -> Result<v1::ChatsResponse, ClientError> {
        reply_as!(
            self.request(Body::Chats(v1::ChatsRequest { limit, after })).await?,
            ChatList
        )
    }

    /// Moves this user's receipt cursor in a chat (seq 0: newest).
    pub async fn receipt(&self, chat_id: u64, kind: v1::ReceiptKind, seq: u64) -> Result<u64, ClientError> {
        let body = Body::Receipt(v1::ReceiptRequest {
            chat_id,
            kind: kind as i32,
            seq,
        });
        reply_as!(self.request(body).await?, ReceiptStored).map(|r| r.seq)
    }

    /// One sync page after this device's acknowledged position.
    pub async fn sync(&self, limit: u32) -> Result<v1::SyncResponse, ClientError> {
        reply_as!(self.request(Body::Sync(v1::SyncRequest { limit })).await?, SyncPage)
    }

    /// Acknowledges the log up to `pos`.
    pub async fn ack(&self, pos: u64) -> Result<u64, ClientError> {
        reply_as!(self.request(Body::Ack(v1::AckRequest { pos })).await?, Acked).map(|a| a.pos)
    }

    /// Fetches and acknowledges everything this device missed, in order.
    /// The tracker learns the server's position from the first page, so a
    /// fresh `AckTracker::new(0)` is fine.
    pub async fn sync_all(&self, tracker: &mut AckTracker) -> Result<Vec<v1::Event>, ClientError> {
        let mut out = Vec::new();
        loop {
            let page = self.sync(0).await?;
            tracker.server_position(page.acked);
            for e in &page.events {
                tracker.observe(e.pos);
            }
            let n = page.events.len();
            out.extend(page.events);
            if let Some(pos) = tracker.take_ack() {
                self.ack(pos).await?;
            }
            if !page.more || n == 0 {
                return Ok(out);
            }
        }
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

/// A random client_msg_id (128 bits, hex).
pub fn new_client_msg_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn server_error(e: v1::Error) -> ClientError {
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

async fn write(send: &mut quinn::SendStream, env: &Envelope) -> Result<(), ClientError> {
    let mut buf = BytesMut::new();
    encode_frame(env, quip_protocol::MAX_FRAME, &mut buf).map_err(|e| ClientError::Protocol(e.to_string()))?;
    send.write_all(&buf).await.map_err(|e| match e {
        quinn::WriteError::ZeroRttRejected => ClientError::ZeroRttRejected,
        e => closed(e),
    })
}

async fn read(recv: &mut quinn::RecvStream, dec: &mut FrameDecoder) -> Result<Option<Envelope>, ClientError> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_client_offers_aes_128_gcm_sha256_first_and_keeps_the_others() {
        let suites: Vec<_> = super::crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
        assert!(suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    }
}
