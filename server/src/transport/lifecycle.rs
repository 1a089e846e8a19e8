//! A connection's life as the operator sees it: one structured log event
//! when it opens and one when it closes (who, from where, closed by whom,
//! with which close code and why), and the open-connections gauge.
//!
//! Both transports use it, so "why was this user disconnected" has one
//! answer format whatever the client speaks. Closes the server decides are
//! noted on the connection's [`Closer`] as they are made (the first wins);
//! a connection with none noted was closed by the client or lost.

use std::net::SocketAddr;
use std::time::Instant;

use quip_protocol::CloseCode;

use crate::hub::Closer;
use crate::metrics::OpenConnection;
use crate::session::Session;

/// How a connection ended, when the server did not close it.
#[derive(Debug)]
pub enum Ended {
    /// The client closed it with this (QUIC application, or WebSocket) code.
    ByClient(u64, String),
    /// The network lost it: a timeout, a reset, a transport error.
    Lost(String),
    /// The server ended it with a transport's own code, not a Quip close
    /// code (WebSocket 1008 for a ping flood, 1009 for a message too big).
    Refused(u64, String),
}

/// One open connection, logged and counted until [`Lifecycle::closed`].
#[derive(Debug)]
pub struct Lifecycle {
    transport: &'static str,
    peer: SocketAddr,
    opened: Instant,
    _open: OpenConnection,
}

impl Lifecycle {
    /// A connection on `transport` (`quic` or `websocket`) from `peer`
    /// opened: logged, and counted in `quip_connections_open`.
    pub fn open(transport: &'static str, peer: SocketAddr) -> Self {
        tracing::info!(transport, %peer, "connection opened");
        Self {
            transport,
            peer,
            opened: Instant::now(),
            _open: OpenConnection::new(transport),
        }
    }

    /// The connection closed: logs by whom, with which code and why, and
    /// the user and device it was logged in as (if it still was). Call
    /// before the session disconnects, which forgets the user.
    pub fn closed(self, session: &Session, closer: &Closer, otherwise: impl FnOnce() -> Ended) {
        // Fields left out (None) for a connection that never logged in.
        let who = session.identity();
        let user = who.as_ref().map(|(u, _)| u.as_str());
        let device = who.as_ref().map(|(_, d)| *d);
        let (transport, peer) = (self.transport, self.peer);
        let duration_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        match closer.noted() {
            Some((code, reason)) => {
                if code == CloseCode::SlowConsumer {
                    crate::metrics::slow_consumer();
                    tracing::warn!(transport, %peer, user, device, "slow consumer: push queue full, connection closed");
                }
                tracing::info!(
                    transport,
                    %peer,
                    user,
                    device,
                    closed_by = "server",
                    code = code.code(),
                    code_name = ?code,
                    reason = %reason,
                    duration_ms,
                    "connection closed"
                );
            }
            None => match otherwise() {
                Ended::ByClient(code, reason) => tracing::info!(
                    transport,
                    %peer,
                    user,
                    device,
                    closed_by = "client",
                    code,
                    reason = %reason,
                    duration_ms,
                    "connection closed"
                ),
                Ended::Refused(code, reason) => tracing::info!(
                    transport,
                    %peer,
                    user,
                    device,
                    closed_by = "server",
                    code,
                    reason = %reason,
                    duration_ms,
                    "connection closed"
                ),
                Ended::Lost(reason) => tracing::info!(
                    transport,
                    %peer,
                    user,
                    device,
                    closed_by = "network",
                    reason = %reason,
                    duration_ms,
                    "connection closed"
                ),
            },
        }
    }
}
