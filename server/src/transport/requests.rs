//! Serving requests, whatever the transport: the handshake's first frame,
//! then pipelined requests with replies in request order.
//!
//! QUIC (one call per request stream) and WebSocket (one call for the whole
//! connection) both drive [`serve_requests`], so ordering, pipelining,
//! read-after-write, error frames and closes behave the same on both; each
//! transport only says how to read an envelope, write one and close.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use quip_protocol::v1::ErrorCode;
use quip_protocol::{CloseCode, Envelope, FrameError, MAX_FRAME};

use crate::session::{Reply, Session};
use crate::store::BoxFuture;

/// Requests a stream may have in flight before the server stops reading it.
pub const MAX_INFLIGHT_PER_STREAM: usize = 64;

/// Bytes of unfinished requests (partial frames) one connection may hold
/// across all its streams. Without it a client could start a 1 MiB frame on
/// each of its 16 streams and stall, pinning 16 MiB per connection; with it
/// honest clients still have four maximum-size requests in flight at once.
pub const MAX_BUFFERED_PER_CONNECTION: usize = 4 << 20;

/// Why a transport could not read a further request; the connection is
/// closed after the matching error frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The frame was malformed or too large.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection holds too many bytes of unfinished requests.
    #[error("more than {MAX_BUFFERED_PER_CONNECTION} bytes of unfinished requests buffered")]
    OverBudget,
    /// A WebSocket text message: the protocol is binary only.
    #[error("text WebSocket messages are not part of the protocol: send each Envelope as one binary message")]
    NotBinary,
}

impl ReadError {
    /// The error frame sent before closing.
    pub fn envelope(&self) -> Envelope {
        let code = match self {
            Self::Frame(FrameError::TooLarge { .. }) => ErrorCode::FrameTooLarge,
            Self::Frame(_) | Self::NotBinary => ErrorCode::MalformedFrame,
            Self::OverBudget => ErrorCode::LimitExceeded,
        };
        Envelope::error(0, code, self.to_string())
    }
}

/// A reply as one length-prefixed frame. One that cannot fit a frame
/// becomes an INTERNAL error for the same request, so the client is never
/// left waiting.
pub fn encode_reply(env: &Envelope) -> Bytes {
    quip_protocol::frame_bytes(env, MAX_FRAME).unwrap_or_else(|e| {
        tracing::error!(error = %e, "reply does not fit in a frame");
        let small = Envelope::error(env.id, ErrorCode::Internal, "reply too large");
        quip_protocol::frame_bytes(&small, MAX_FRAME).expect("small frame")
    })
}

/// Where requests come from: a QUIC stream, or a WebSocket's messages.
pub trait RequestSource: Send {
    /// The next request: `Ok(None)` when the client finished sending.
    fn next(&mut self) -> impl Future<Output = Result<Option<Envelope>, ReadError>> + Send;
}

/// A source whose first item was already read (to see what the stream is).
pub struct Prefixed<S> {
    first: Option<Result<Option<Envelope>, ReadError>>,
    rest: S,
}

impl<S> Prefixed<S> {
    /// `first`, then the rest of `rest`.
    pub fn new(first: Result<Option<Envelope>, ReadError>, rest: S) -> Self {
        Self {
            first: Some(first),
            rest,
        }
    }
}

impl<S: RequestSource> RequestSource for Prefixed<S> {
    async fn next(&mut self) -> Result<Option<Envelope>, ReadError> {
        match self.first.take() {
            Some(first) => first,
            None => self.rest.next().await,
        }
    }
}

/// Where replies go, and how the connection is ended.
pub trait ReplySink: Send {
    /// Writes one reply; false when the peer is gone.
    fn send(&mut self, reply: &Envelope) -> impl Future<Output = bool> + Send;
    /// Says no more replies follow, lets the written ones reach the peer
    /// (within a short linger), then closes the connection with `code`.
    fn close(&mut self, code: CloseCode, reason: &str) -> impl Future<Output = ()> + Send;
    /// Says no more replies follow on this stream (the connection goes on).
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// Answers the first frame: Welcome, or an error and a close.
pub async fn handshake(
    session: &Arc<Session>,
    first: Result<Option<Envelope>, ReadError>,
    sink: &mut impl ReplySink,
) -> bool {
    let (reply, refused) = match first {
        Ok(Some(env)) => match session.hello(env).await {
            Ok(welcome) => (welcome, None),
            Err(refused) => {
                let (e, code) = *refused;
                (e, Some((code, "handshake refused".to_string())))
            }
        },
        Ok(None) => {
            sink.close(CloseCode::ProtocolError, "no Hello").await;
            return false;
        }
        Err(e) => (e.envelope(), Some((CloseCode::ProtocolError, e.to_string()))),
    };
    if !sink.send(&reply).await {
        return false;
    }
    match refused {
        None => true,
        Some((code, reason)) => {
            sink.close(code, &reason).await;
            false
        }
    }
}

/// Serves requests from `source` until it ends: keeps up to
/// [`MAX_INFLIGHT_PER_STREAM`] pending writes in flight and writes replies
/// in request order. A read waits for the earlier writes first. When the
/// server starts shutting down it stops reading, writes the replies of the
/// requests it took and finishes, as at the end of the client's stream.
///
/// Only the wait for the next frame or reply is inline; what follows runs in
/// a boxed [`step`]. A task's future is allocated at its largest state for
/// the task's whole life, and handling a request holds envelopes (400 bytes
/// each) and the writes' and close's futures: inline, every idle connection's
/// control stream carried 3.5 KB of state it only needs while a request is
/// being answered.
pub async fn serve_requests(session: Arc<Session>, mut source: impl RequestSource, mut sink: impl ReplySink) {
    let mut inflight: Inflight = FuturesOrdered::new();
    let shared = session.shared().clone();
    // Made once, so it registers with the shutdown signal once per stream,
    // not once per request (the signal is shared by every connection).
    let drain = shared.shutdown.wait_started();
    let mut drain = std::pin::pin!(drain);
    let mut reading = true;
    while reading || !inflight.is_empty() {
        let event = tokio::select! {
            biased;
            Some(reply) = inflight.next(), if !inflight.is_empty() => Event::Reply(reply),
            () = &mut drain, if reading => Event::Frame(Ok(None)),
            frame = source.next(), if reading && inflight.len() < MAX_INFLIGHT_PER_STREAM => Event::Frame(frame),
        };
        match Box::pin(step(&session, &mut sink, &mut inflight, event)).await {
            Next::Read => {}
            Next::Drain => reading = false,
            Next::Stop => return,
        }
    }
    sink.finish().await;
}

/// Replies not yet written, in request order.
type Inflight = FuturesOrdered<Counted>;

/// A reply on its way, counted in the request metrics when it is ready
/// (its kind and result code, and for sends the durable-ack latency). A
/// struct around the boxed future rather than another box: the message
/// path pays no allocation for being measured.
struct Counted {
    answer: BoxFuture<'static, Envelope>,
    kind: u8,
    started: Instant,
}

impl Future for Counted {
    type Output = Envelope;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Envelope> {
        let reply = std::task::ready!(self.answer.as_mut().poll(cx));
        crate::metrics::request_answered(self.kind, self.started, &reply);
        Poll::Ready(reply)
    }
}

/// What [`serve_requests`] waited for.
enum Event {
    Reply(Envelope),
    Frame(Result<Option<Envelope>, ReadError>),
}

/// What [`serve_requests`] does after a [`step`].
enum Next {
    /// Go on reading requests.
    Read,
    /// The client finished sending: write what is in flight, then finish.
    Drain,
    /// The connection is closed or closing.
    Stop,
}

/// Handles one reply that became ready or one frame that arrived.
async fn step(session: &Arc<Session>, sink: &mut impl ReplySink, inflight: &mut Inflight, event: Event) -> Next {
    let frame = match event {
        Event::Reply(reply) => return continue_if(send_reply(session, sink, &reply).await),
        Event::Frame(frame) => frame,
    };
    match frame {
        Ok(Some(env)) => {
            if env.body.as_ref().is_some_and(|b| crate::kinds::of(b).reads) {
                while let Some(reply) = inflight.next().await {
                    if !send_reply(session, sink, &reply).await {
                        return Next::Stop;
                    }
                }
            }
            let (kind, started) = (crate::metrics::request_kind(env.body.as_ref()), Instant::now());
            let counted = |answer| Counted { answer, kind, started };
            match session.handle(env).await {
                Reply::Ready(reply) if inflight.is_empty() => {
                    crate::metrics::request_answered(kind, started, &reply);
                    continue_if(send_reply(session, sink, &reply).await)
                }
                Reply::Ready(reply) => {
                    inflight.push_back(counted(Box::pin(async move { reply })));
                    Next::Read
                }
                Reply::Waiting(answer) => {
                    inflight.push_back(counted(answer));
                    Next::Read
                }
                Reply::Pending(handle) => {
                    inflight.push_back(counted(Box::pin(async move {
                        handle.await.unwrap_or_else(|e| {
                            Envelope::error(0, ErrorCode::Internal, format!("request task failed: {e}"))
                        })
                    })));
                    Next::Read
                }
            }
        }
        Ok(None) => Next::Drain,
        Err(e) => {
            // Framing is lost: answer, then close the connection.
            // Writes already queued still commit and stay durable.
            tracing::debug!(error = %e, "bad frame");
            while let Some(reply) = inflight.next().await {
                let _ = sink.send(&reply).await;
            }
            let _ = sink.send(&e.envelope()).await;
            sink.close(CloseCode::ProtocolError, &e.to_string()).await;
            Next::Stop
        }
    }
}

fn continue_if(sent: bool) -> Next {
    if sent { Next::Read } else { Next::Stop }
}

/// Writes a reply; handles a requested close after it. False: stop serving.
async fn send_reply(session: &Session, sink: &mut impl ReplySink, reply: &Envelope) -> bool {
    if !sink.send(reply).await {
        return false;
    }
    if let Some(code) = session.take_close_after_reply() {
        let reason = if code == CloseCode::LoggedOut {
            "logged out"
        } else {
            "too many connections"
        };
        sink.close(code, reason).await;
        return false;
    }
    true
}
