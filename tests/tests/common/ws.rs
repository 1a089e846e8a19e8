//! A WebSocket client for tests of the browser binding: TLS to the HTTPS
//! listener, subprotocol `quip.v1`, one bare Envelope per binary message,
//! as spec/protocol.md §19 describes (and as a browser does it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use quip_protocol::v1;
use quip_protocol::{Body, Envelope};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type WsStream = WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `/v1/ws`, offering `protocol` (None: none).
pub async fn connect_raw(https: SocketAddr, ca: &Path, protocol: Option<&str>) -> anyhow::Result<WsStream> {
    let pem = std::fs::read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(https).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await?;
    let mut req = format!("wss://localhost:{}/v1/ws", https.port()).into_client_request()?;
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse()?);
    }
    let (ws, _resp) = tokio_tungstenite::client_async(req, stream).await?;
    Ok(ws)
}

/// Encodes a request as one binary message.
pub fn binary(id: u64, body: Body) -> Message {
    Message::Binary(Envelope::new(id, body).encode_to_vec().into())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Envelope>>>>;

/// A connected, handshaken WebSocket client.
pub struct WsClient {
    out: mpsc::Sender<Message>,
    pending: Pending,
    events: tokio::sync::Mutex<mpsc::Receiver<v1::Event>>,
    next_id: AtomicU64,
    closed: watch::Receiver<Option<(u16, String)>>,
    pub welcome: v1::Welcome,
}

impl WsClient {
    /// Connects and says Hello (with `token`, or anonymously).
    pub async fn connect(https: SocketAddr, ca: &Path, token: &str) -> anyhow::Result<Self> {
        let ws = connect_raw(https, ca, Some("quip.v1")).await?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(64);
        let pending: Pending = Arc::default();
        let (ev_tx, ev_rx) = mpsc::channel(100_000);
        let (closed_tx, closed) = watch::channel(None);
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let (welcome_tx, welcome_rx) = oneshot::channel();
        let p = pending.clone();
        tokio::spawn(async move {
            let mut welcome_tx = Some(welcome_tx);
            while let Some(Ok(m)) = stream.next().await {
                match m {
                    Message::Binary(b) => {
                        let env = Envelope::decode(&b[..]).expect("server sent a valid Envelope");
                        match env.body {
                            Some(Body::Event(e)) => {
                                let _ = ev_tx.try_send(e);
                            }
                            _ if env.id == 0 && welcome_tx.is_some() => {
                                let _ = welcome_tx.take().expect("checked").send(env);
                            }
                            _ => {
                                if let Some(tx) = p.lock().unwrap().remove(&env.id) {
                                    let _ = tx.send(env);
                                } else if let Some(tx) = welcome_tx.take() {
                                    let _ = tx.send(env);
                                }
                            }
                        }
                    }
                    Message::Close(f) => {
                        let _ = closed_tx.send(Some(
                            f.map_or((1005, String::new()), |f| (f.code.into(), f.reason.to_string())),
                        ));
                        return;
                    }
                    _ => {}
                }
            }
            let _ = closed_tx.send(Some((1006, String::new())));
        });
        let hello = v1::Hello {
            versions: vec![1],
            token: token.to_string(),
            client: "quip-tests-ws".into(),
            background: false,
        };
        out.send(binary(0, Body::Hello(hello))).await?;
        let env = welcome_rx.await?;
        let welcome = match env.body {
            Some(Body::Welcome(w)) => w,
            other => anyhow::bail!("expected Welcome, got {other:?}"),
        };
        Ok(Self {
            out,
            pending,
            events: tokio::sync::Mutex::new(ev_rx),
            next_id: AtomicU64::new(1),
            closed,
            welcome,
        })
    }

    /// One request and its reply body; an Error reply is `Err`.
    pub async fn request(&self, body: Body) -> Result<Body, v1::Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let gone = || v1::Error {
            code: v1::ErrorCode::Unspecified as i32,
            message: "connection closed".into(),
            retry_after_ms: 0,
        };
        self.out.send(binary(id, body)).await.map_err(|_| gone())?;
        match rx.await.map_err(|_| gone())?.body {
            Some(Body::Error(e)) => Err(e),
            Some(b) => Ok(b),
            None => Err(gone()),
        }
    }

    /// The next pushed event; None once the connection is gone.
    pub async fn next_event(&self) -> Option<v1::Event> {
        self.events.lock().await.recv().await
    }

    /// The WebSocket close code and reason, once closed.
    pub async fn closed(&self) -> (u16, String) {
        let mut rx = self.closed.clone();
        let v = rx.wait_for(|c| c.is_some()).await.expect("reader alive");
        v.clone().expect("waited for some")
    }

    /// Sends a normal close (code 1000).
    pub async fn close(&self) {
        let _ = self.out.send(Message::Close(None)).await;
    }
}
