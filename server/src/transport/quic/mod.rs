//! The QUIC transport: the thin async shell around [`Session`].
//!
//! Per connection: the first bidirectional stream carries the handshake and
//! then requests; further bidirectional streams carry requests; the server
//! opens up to `push_lanes` unidirectional streams for pushed events, chat C
//! on lane C mod N. See `spec/protocol.md`, "Streams", for why.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use quip_protocol::v1;
use quip_protocol::{Body, CloseCode, Envelope, FrameDecoder};
use tokio::io::AsyncReadExt;

use crate::hub::{Closer, PushReceiver};
use crate::media;
use crate::presence::Ended;
use crate::service::{self, ServiceError};
use crate::session::{Session, Shared};
use crate::transport::admission::Slot;
use crate::transport::lifecycle;
use crate::transport::requests::{self, MAX_BUFFERED_PER_CONNECTION, ReadError, ReplySink, RequestSource};

/// How long an HTTPS or WebSocket client has for its TLS handshake and
/// first frame. (QUIC clients: `Config::hello_timeout_secs`.)
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest read buffer grown ahead of data. A frame's declared length
/// is never allocated up front: memory follows the bytes that arrived.
const READ_STEP: usize = 8 * 1024;

/// How long to wait for a final frame to reach the peer before closing.
mod media_stream;
mod reader;

use media_stream::serve_media;
use reader::{Budget, StreamReader};

const LINGER: Duration = Duration::from_secs(1);

/// Closes `conn`, noting the close on its `closer` for the log.
fn close(conn: &quinn::Connection, closer: &Closer, code: CloseCode, reason: &str) {
    closer.note(code, reason);
    conn.close(quinn::VarInt::from_u32(code.code()), reason.as_bytes());
}

/// How a connection the server did not close ended, for the log.
fn ended_how(conn: &quinn::Connection) -> lifecycle::Ended {
    use lifecycle::Ended;
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => Ended::ByClient(
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        Some(quinn::ConnectionError::TimedOut) => Ended::Lost("idle timeout".into()),
        Some(e) => Ended::Lost(e.to_string()),
        None => Ended::Lost("ended".into()),
    }
}

/// Drives one connection to its end, holding its admission `slot`.
///
/// Connections are accepted with 0-RTT: a returning client's first requests
/// arrive with its first packet. Until the handshake completes, the session
/// is marked early and refuses requests that are unsafe to replay.
///
/// The TLS handshake must complete within the hello timeout of accepting
/// it, else the connection is closed and its slot freed (see
/// [`hello_deadline`]): quinn itself gives up on a handshake only at the
/// idle timeout.
pub async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>, slot: Slot) {
    let hello_timeout = Duration::from_secs(shared.config.hello_timeout_secs);
    let slot = Arc::new(slot);
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            crate::metrics::handshake("quic", "failed");
            tracing::debug!(error = %e, "could not accept connection");
            return;
        }
    };
    let (conn, accepted) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, Some(accepted)),
        // quinn always gives a server 0.5-RTT, so this is a fallback; it
        // bounds the handshake the same way (dropping an unfinished
        // `Connecting` abandons it).
        Err(connecting) => match tokio::time::timeout(hello_timeout, connecting).await {
            Ok(Ok(c)) => {
                crate::metrics::handshake("quic", "ok");
                slot.validated();
                (c, None)
            }
            Ok(Err(e)) => {
                crate::metrics::handshake("quic", "failed");
                tracing::debug!(error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                crate::metrics::handshake("quic", "timeout");
                tracing::debug!("handshake not complete within the hello timeout");
                return;
            }
        },
    };
    let closer = Closer::new();
    let (push_tx, push_rx) = crate::hub::push_queue(shared.config.push_queue);
    let session = Session::new(shared.clone(), closer.clone(), push_tx, conn.remote_address().ip());
    let (handshake_done, handshake_done_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(accepted) = accepted {
        session.set_early(true);
        let (s, c, slot) = (session.clone(), conn.clone(), slot.clone());
        tokio::spawn(async move {
            // Resolves when the handshake completes (whether or not the
            // client sent early data); if it never does, the connection
            // fails and nothing unsafe ran from its early data.
            let _ = accepted.await;
            if c.close_reason().is_none() {
                crate::metrics::handshake("quic", "ok");
                slot.validated();
            } else {
                crate::metrics::handshake("quic", "failed");
            }
            s.set_early(false);
            let _ = handshake_done.send(());
        });
    } else {
        let _ = handshake_done.send(());
    }
    let remote = conn.remote_address();
    let life = lifecycle::Lifecycle::open("quic", remote);

    let budget = Arc::new(Budget::default());
    // Boxed: the handshake's state (its envelopes, reads and writes) would
    // otherwise be part of this task's future, which is allocated at its
    // largest state for the connection's whole life.
    let Some((sink, reader)) = Box::pin(accept_hello(
        &conn,
        &session,
        &closer,
        &budget,
        handshake_done_rx,
        hello_timeout,
    ))
    .await
    else {
        life.closed(&session, &closer, || ended_how(&conn));
        return;
    };
    tracing::debug!(%remote, "connection ready");

    let lanes = shared.config.push_lanes;
    let streams = async {
        let drain = shared.shutdown.wait_started();
        let mut drain = std::pin::pin!(drain);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(requests::serve_requests(session.clone(), reader, sink));
        loop {
            tokio::select! {
                s = conn.accept_bi() => match s {
                    Ok((send, recv)) => {
                        let reader = StreamReader::new(recv, budget.clone(), quip_protocol::MAX_FRAME);
                        tasks.spawn(serve_stream(session.clone(), reader, send, conn.clone(), closer.clone()));
                    }
                    Err(_) => return,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut drain => break,
            }
        }
        // Draining: the request loops write what is due and finish their
        // streams, waiting until the client has it; then the close.
        while tasks.join_next().await.is_some() {}
        close(&conn, &closer, CloseCode::ServerShutdown, "server shutting down");
    };
    tokio::select! {
        _ = streams => {}
        _ = push_loop(conn.clone(), push_rx, lanes) => {}
        _ = datagrams(conn.clone(), session.clone()) => {}
        (code, reason) = closer.requested() => {
            tracing::debug!(%remote, ?code, %reason, "closing connection");
            close(&conn, &closer, code, &reason);
        }
        _ = conn.closed() => {}
    }
    life.closed(&session, &closer, || ended_how(&conn));
    session.disconnect(ended(&conn, Duration::from_secs(shared.config.idle_timeout_secs)));
}

/// Reads the client's Hello from the first stream it opens and answers it.
/// `None`: refused, timed out (the connection is closed) or gone.
async fn accept_hello(
    conn: &quinn::Connection,
    session: &Arc<Session>,
    closer: &Arc<Closer>,
    budget: &Arc<Budget>,
    handshake_done: tokio::sync::oneshot::Receiver<()>,
    hello_timeout: Duration,
) -> Option<(QuicReplies, StreamReader)> {
    let handshake = async {
        let (send, recv) = conn.accept_bi().await.ok()?;
        let mut reader = StreamReader::new(recv, budget.clone(), quip_protocol::MAX_FRAME);
        let mut sink = QuicReplies {
            send,
            conn: conn.clone(),
            closer: closer.clone(),
        };
        let first = reader.next().await;
        Some((requests::handshake(session, first, &mut sink).await, sink, reader))
    };
    tokio::select! {
        r = handshake => match r {
            Some((true, sink, reader)) => Some((sink, reader)),
            _ => None,
        },
        () = hello_deadline(handshake_done, hello_timeout) => {
            let reason = format!("no Hello within {} s", hello_timeout.as_secs());
            close(conn, closer, CloseCode::HandshakeTimeout, &reason);
            None
        }
        () = session.shared().shutdown.wait_started() => {
            close(conn, closer, CloseCode::ServerShutdown, "server shutting down");
            None
        }
    }
}

/// Resolves when a connection has had its time to say Hello: `timeout`
/// after the TLS handshake completes, which must itself complete within
/// `timeout` of accepting the connection (at once if it does not). The
/// Hello clock starts at completion rather than at accept because on a
/// loaded server handshakes queue: counting the queue against the client
/// closed connections whose handshake the server had just paid for (93 of
/// 100,000 in `quip-bench connections` on a 2-core machine). The bound on
/// the handshake keeps a peer that drags it out (0-RTT data, then nothing)
/// from holding its slot for longer than the handshake timeout.
async fn hello_deadline(handshake_done: tokio::sync::oneshot::Receiver<()>, timeout: Duration) {
    // Otherwise it timed out, or failed (and the connection with it).
    if let Ok(Ok(())) = tokio::time::timeout(timeout, handshake_done).await {
        tokio::time::sleep(timeout).await;
    }
}

/// How a connection ended, for presence: a client's own close is a
/// goodbye; an idle timeout means nothing was heard for `idle`.
fn ended(conn: &quinn::Connection, idle: Duration) -> Ended {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code.into_inner() == u64::from(CloseCode::Normal.code()) =>
        {
            Ended::Closed
        }
        Some(quinn::ConnectionError::TimedOut) => Ended::Silent {
            last_heard: std::time::Instant::now()
                .checked_sub(idle)
                .unwrap_or_else(std::time::Instant::now),
        },
        _ => Ended::Lost,
    }
}

/// Reads QUIC datagrams: each carries one bare Envelope (a typing
/// indicator). Undecodable ones are dropped: datagrams are best-effort.
async fn datagrams(conn: quinn::Connection, session: Arc<Session>) {
    while let Ok(d) = conn.read_datagram().await {
        match quip_protocol::decode_envelope(&d, quip_protocol::MAX_FRAME) {
            Ok(env) => session.datagram(env),
            Err(e) => tracing::trace!(error = %e, "undecodable datagram dropped"),
        }
    }
    // No datagrams (the peer did not enable them) or connection gone: the
    // other tasks decide when the connection ends.
    std::future::pending::<()>().await;
}

async fn write_envelope(send: &mut quinn::SendStream, env: &Envelope) -> Result<(), quinn::WriteError> {
    send.write_chunk(requests::encode_reply(env)).await
}

/// Serves a stream the client opened after the control stream: media if
/// its first frame says so, else requests.
async fn serve_stream(
    session: Arc<Session>,
    mut reader: StreamReader,
    send: quinn::SendStream,
    conn: quinn::Connection,
    closer: Arc<Closer>,
) {
    let first = reader.next().await;
    if let Ok(Some(env)) = &first
        && matches!(env.body, Some(Body::Upload(_) | Body::Download(_)))
    {
        let Ok(Some(env)) = first else {
            unreachable!("matched above")
        };
        serve_media(session, env, reader, send).await;
        return;
    }
    let sink = QuicReplies { send, conn, closer };
    requests::serve_requests(session, requests::Prefixed::new(first, reader), sink).await;
}

/// A request stream's sending half: replies, then finish or close.
struct QuicReplies {
    send: quinn::SendStream,
    conn: quinn::Connection,
    /// Where a close is noted for the log.
    closer: Arc<Closer>,
}

impl ReplySink for QuicReplies {
    async fn send(&mut self, reply: &Envelope) -> bool {
        write_envelope(&mut self.send, reply).await.is_ok()
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(LINGER, self.send.stopped()).await;
        close(&self.conn, &self.closer, code, reason);
    }

    async fn finish(&mut self) {
        let _ = self.send.finish();
        if self.conn.close_reason().is_none() {
            // Until the client has every reply: a close meanwhile (the
            // server's drain) would discard what is still unsent.
            let _ = tokio::time::timeout(LINGER, self.send.stopped()).await;
        }
    }
}

/// Writes pushed events to their lanes, opening lanes on first use.
/// Unreliable events go as datagrams where the client accepts them and they
/// fit; otherwise on the lane like any event.
async fn push_loop(conn: quinn::Connection, rx: PushReceiver, lanes: u32) {
    let mut streams: Vec<Option<quinn::SendStream>> = (0..lanes).map(|_| None).collect();
    while let Ok(push) = rx.recv_async().await {
        if push.unreliable {
            let body = quip_protocol::frame_body(&push.frame);
            if conn.max_datagram_size().is_some_and(|max| body.len() <= max) {
                // Dropped if the send buffer is full: stale typing is worthless.
                let _ = conn.send_datagram(body);
                continue;
            }
        }
        let lane = (push.chat_id % u64::from(lanes)) as usize;
        if streams[lane].is_none() {
            match conn.open_uni().await {
                Ok(s) => streams[lane] = Some(s),
                Err(_) => return,
            }
        }
        let stream = streams[lane].as_mut().expect("opened above");
        if stream.write_all(&push.frame).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size_3<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A task's future is allocated at its largest state for the task's
    /// whole life, so what an idle connection costs is the size of these
    /// two futures (a connection's task and its control stream's). Handling
    /// a request or the handshake inline made them 2.5 and 3.5 KB (an
    /// envelope alone is 400 bytes); those states are boxed, and this keeps
    /// them out.
    #[test]
    fn an_idle_connections_tasks_stay_small() {
        let connection: fn(quinn::Incoming, Arc<Shared>, Slot) -> _ = serve_connection;
        let control_stream: fn(Arc<Session>, StreamReader, QuicReplies) -> _ = requests::serve_requests;
        let (connection, control_stream) = (future_size_3(connection), future_size_3(control_stream));
        assert!(connection <= 2048, "serve_connection's future is {connection} bytes");
        assert!(
            control_stream <= 1024,
            "serve_requests' future is {control_stream} bytes"
        );
    }
}
