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
//!
//! # Layout
//!
//! - `config`: [`ConnectOptions`], the TLS and QUIC transport settings.
//! - `connection`: the endpoint, connecting (0-RTT when it can), Hello, and
//!   the request/reply and push plumbing: [`Client::request`],
//!   [`Client::next_event`].
//! - `requests`: the typed calls ([`Client::send`], [`Client::sync`], ...),
//!   one request and its reply each.
//! - [`media`]: uploads and downloads, each on a stream of its own.
//! - [`tracker`], [`typing`]: client-side state with no I/O.

use quip_protocol::v1::ErrorCode;

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

mod config;
mod connection;
pub mod media;
mod requests;
pub mod tracker;
pub mod typing;

pub use config::{ConnectOptions, DEFAULT_PORT, KEEP_ALIVE, with_default_port};
pub use connection::Client;
pub use media::{Progress, UploadSpec};
pub use tracker::AckTracker;
pub use typing::TypingState;

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

/// A random client_msg_id (128 bits, hex).
pub fn new_client_msg_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
