//! The WebSocket transport, for browsers: the thin async shell around
//! [`Session`], carrying exactly the protocol QUIC carries.
//!
//! Each binary WebSocket message is one bare `Envelope` (WebSocket already
//! delimits messages, so there is no length prefix). Requests, replies and
//! pushed events share the one connection: requests are served by the same
//! [`requests::serve_requests`] loop as a QUIC stream, and one writer task
//! owns the socket's sending half, so a browser that stops reading stalls
//! that writer, its push queue fills, and the hub closes it as a slow
//! consumer; it resyncs when it reconnects. See `spec/protocol.md`, §19.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use quip_protocol::{CloseCode, Envelope, FrameError, MAX_FRAME};
use tokio::sync::mpsc;

use crate::hub::{Closer, PushReceiver};
use crate::presence::Ended;
use crate::ratelimit::TokenBucket;
use crate::session::{Session, Shared};
use crate::transport::lifecycle::{self, Lifecycle};
use crate::transport::quic::HANDSHAKE_TIMEOUT;
use crate::transport::requests::{self, MAX_INFLIGHT_PER_STREAM, ReadError, ReplySink, RequestSource};

/// The WebSocket subprotocol a client must offer (`Sec-WebSocket-Protocol`).
/// A token cannot contain `/`, so it is not the ALPN string `quip/1`.
pub const SUBPROTOCOL: &str = "quip.v1";

/// WebSocket close codes are Quip's [`CloseCode`] plus this (the range
/// 4000–4999 is reserved for applications).
pub const CLOSE_CODE_BASE: u16 = 4000;

/// How long queued frames (a final error, the close) get to reach the
/// browser before the connection is dropped.
const LINGER: Duration = Duration::from_secs(1);

/// Pings a client may send per second, sustained. The WebSocket layer
/// answers each with a pong that waits in the write buffer until the client
/// reads it, so a client pinging faster than it reads could grow that
/// buffer without end; liveness needs a ping every few seconds at most
/// (browsers send none), so one faster than this is flooding and is closed
/// with [`CLOSE_POLICY_VIOLATION`].
pub const PING_RATE: f64 = 1.0;

/// Pings a client may send in a burst above [`PING_RATE`].
pub const PING_BURST: f64 = 10.0;

/// Bytes the WebSocket layer may hold for writing (replies, pushes and the
/// pongs it answers pings with) beyond what the socket took: one largest
/// message plus the usual batching. A client that lets more pile up is not
/// reading; its connection fails and is dropped.
pub const MAX_WRITE_BUFFER: usize = 2 * MAX_FRAME;

/// RFC 6455 close code 1008: a message broke the server's policy (here: a
/// ping flood).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;

/// RFC 6455 close code 1009: a message too big to process (over the
/// WebSocket layer's limit, see `spec/protocol.md` §19.3).
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// What the writer task sends, besides pushed events.
enum Out {
    Frame(Bytes),
    /// A close frame with this WebSocket close code and reason.
    Close(u16, String),
}

/// Drives one upgraded WebSocket to its end.
pub async fn serve_websocket(socket: WebSocket, shared: Arc<Shared>, peer: std::net::SocketAddr) {
    let life = Lifecycle::open("websocket", peer);
    let closer = Closer::new();
    let (push_tx, push_rx) = crate::hub::push_queue(shared.config.push_queue);
    let session = Session::new(shared.clone(), closer.clone(), push_tx, peer.ip());
    let idle = Duration::from_secs(shared.config.idle_timeout_secs.max(1));
    let (sink, stream) = socket.split();
    // Replies wait here for the writer; when it is full the request loop
    // stops reading, as a QUIC stream's flow control would.
    let (out_tx, out_rx) = mpsc::channel(MAX_INFLIGHT_PER_STREAM);
    let ended = Arc::new(Mutex::new((Ended::Lost, None)));
    let mut source = WsRequests {
        stream,
        idle,
        last_heard: Instant::now(),
        ended: ended.clone(),
        pings: TokenBucket::new(PING_RATE, PING_BURST, Instant::now()),
        out: out_tx.clone(),
    };
    let mut replies = WsReplies {
        out: out_tx.clone(),
        closer: closer.clone(),
    };

    let serve = async {
        let first = tokio::select! {
            first = tokio::time::timeout(HANDSHAKE_TIMEOUT, source.next()) => match first {
                Ok(first) => first,
                Err(_) => {
                    replies.close(CloseCode::HandshakeTimeout, "no Hello within 10 s").await;
                    return;
                }
            },
            () = shared.shutdown.wait_started() => {
                replies.close(CloseCode::ServerShutdown, "server shutting down").await;
                return;
            }
        };
        if requests::handshake(&session, first, &mut replies).await {
            let mut closing = WsReplies {
                out: out_tx.clone(),
                closer: closer.clone(),
            };
            requests::serve_requests(session.clone(), source, replies).await;
            // A drain ends the request loop with every reply written: the
            // close goes after them.
            if shared.shutdown.started() {
                closing.close(CloseCode::ServerShutdown, "server shutting down").await;
            }
        }
    };
    let mut writer = std::pin::pin!(write_loop(sink, out_rx, push_rx, idle / 3));
    tokio::select! {
        _ = serve => {}
        _ = &mut writer => {}
        (code, reason) = closer.requested() => {
            tracing::debug!(%peer, ?code, %reason, "closing WebSocket");
            // Dropped if the writer is stuck behind a browser that stopped
            // reading: then the linger below ends the connection.
            let _ = out_tx.try_send(Out::Close(CLOSE_CODE_BASE + code.code() as u16, reason));
        }
    }
    drop(out_tx);
    let _ = tokio::time::timeout(LINGER, writer).await;
    let (how, why) = std::mem::replace(&mut *ended.lock().expect("ended lock"), (Ended::Lost, None));
    life.closed(&session, &closer, || {
        why.unwrap_or_else(|| lifecycle::Ended::Lost("connection lost".into()))
    });
    session.disconnect(how);
}

/// Owns the socket's sending half: replies, pushed events and keep-alive
/// pings, until a close is sent or the replies' senders are gone.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut out: mpsc::Receiver<Out>,
    pushes: PushReceiver,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        let msg = tokio::select! {
            biased;
            o = out.recv() => match o {
                Some(Out::Frame(b)) => Message::Binary(b),
                Some(Out::Close(code, reason)) => {
                    let frame = CloseFrame { code, reason: reason.into() };
                    let _ = sink.send(Message::Close(Some(frame))).await;
                    return;
                }
                None => return,
            },
            Ok(p) = pushes.recv_async() => Message::Binary(quip_protocol::frame_body(&p.frame)),
            _ = ping.tick() => Message::Ping(Bytes::new()),
        };
        if sink.send(msg).await.is_err() {
            return;
        }
    }
}

/// Requests from the browser: each binary message is one Envelope.
struct WsRequests {
    stream: SplitStream<WebSocket>,
    idle: Duration,
    last_heard: Instant,
    /// How the connection ended, for presence, and for the log when the
    /// browser or this reader ended it.
    ended: Arc<Mutex<(Ended, Option<lifecycle::Ended>)>>,
    /// The client's ping budget ([`PING_RATE`], [`PING_BURST`]).
    pings: TokenBucket,
    /// To the writer, for closes the reading side decides on.
    out: mpsc::Sender<Out>,
}

impl WsRequests {
    fn end(&self, how: Ended, why: lifecycle::Ended) {
        *self.ended.lock().expect("ended lock") = (how, Some(why));
    }

    /// Ends the connection with a WebSocket close code of its own (not a
    /// Quip one): the writer sends it unless it is stuck behind a client
    /// that does not read, and then the linger ends the connection anyway.
    fn refuse(&self, code: u16, reason: String) -> Result<Option<Envelope>, ReadError> {
        tracing::debug!(code, %reason, "closing WebSocket");
        let _ = self.out.try_send(Out::Close(code, reason.clone()));
        self.end(Ended::Lost, lifecycle::Ended::Refused(u64::from(code), reason));
        Ok(None)
    }
}

/// Whether a read failed because a message or frame was over the limits
/// set on the upgrade (`max_message_size`, `max_frame_size`).
fn too_big(e: &axum::Error) -> bool {
    let inner: &(dyn std::error::Error + 'static) = e;
    std::iter::successors(Some(inner), |e| e.source())
        .any(|e| matches!(e.downcast_ref(), Some(tungstenite::Error::Capacity(_))))
}

impl RequestSource for WsRequests {
    async fn next(&mut self) -> Result<Option<Envelope>, ReadError> {
        loop {
            let msg = match tokio::time::timeout(self.idle, self.stream.next()).await {
                Err(_) => {
                    // Nothing, not even a pong to our pings, for the idle
                    // timeout: the browser is gone without a goodbye.
                    self.end(
                        Ended::Silent {
                            last_heard: self.last_heard,
                        },
                        lifecycle::Ended::Lost("idle timeout".into()),
                    );
                    return Ok(None);
                }
                Ok(Some(Err(e))) if too_big(&e) => {
                    return self.refuse(
                        CLOSE_MESSAGE_TOO_BIG,
                        format!("messages are limited to {} bytes", 2 * MAX_FRAME),
                    );
                }
                Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                Ok(Some(Ok(m))) => m,
            };
            self.last_heard = Instant::now();
            match msg {
                Message::Binary(b) => {
                    return quip_protocol::decode_envelope(&b, MAX_FRAME)
                        .map(Some)
                        .map_err(|e: FrameError| e.into());
                }
                Message::Text(_) => return Err(ReadError::NotBinary),
                Message::Close(frame) => {
                    let normal = frame
                        .as_ref()
                        .is_none_or(|f| f.code == 1000 || f.code == CLOSE_CODE_BASE);
                    // 1005: "no status code", as RFC 6455 names a close without one.
                    let (code, reason) = frame.map_or((1005, String::new()), |f| (f.code, f.reason.to_string()));
                    let why = lifecycle::Ended::ByClient(u64::from(code), reason);
                    self.end(if normal { Ended::Closed } else { Ended::Lost }, why);
                    return Ok(None);
                }
                Message::Ping(_) => {
                    if self.pings.try_take(Instant::now()).is_err() {
                        return self.refuse(
                            CLOSE_POLICY_VIOLATION,
                            format!("more than {PING_RATE} pings per second"),
                        );
                    }
                }
                Message::Pong(_) => {}
            }
        }
    }
}

/// Replies to the browser, through the writer task.
struct WsReplies {
    out: mpsc::Sender<Out>,
    /// Where a close is noted for the log.
    closer: Arc<Closer>,
}

impl ReplySink for WsReplies {
    async fn send(&mut self, reply: &Envelope) -> bool {
        let body = quip_protocol::frame_body(&requests::encode_reply(reply));
        self.out.send(Out::Frame(body)).await.is_ok()
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        self.closer.note(code, reason);
        let code = CLOSE_CODE_BASE + code.code() as u16;
        let _ = self.out.send(Out::Close(code, reason.to_string())).await;
    }

    async fn finish(&mut self) {}
}
