//! The Quip wire protocol, version 1: the protobuf schema and a sans-IO codec.
//!
//! Nothing here touches a socket, a clock or a runtime. The server, the client
//! library, the benchmarks and the fuzzers all share these pure functions, so
//! the bytes on the wire are produced and checked in exactly one place.
//!
//! ```text
//!  bytes from a QUIC stream ──► FrameDecoder::decode ──► Envelope ──► (server/client logic)
//!  Envelope ──► encode_frame ──► bytes to a QUIC stream
//! ```
//!
//! # Layout
//! - [`v1`]: the generated protobuf types (`quip.v1` package).
//! - [`codec`]: length-prefixed framing with a size limit checked before any
//!   body is buffered or decoded.
//! - [`version`]: ALPN, version negotiation and the connection close codes.
//!
//! `spec/protocol.md` is the normative description of how these are used.

pub mod codec;
pub mod version;

/// Generated types of the `quip.v1` protobuf package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/quip.v1.rs"));
}

pub use codec::{FrameDecoder, FrameError, decode_envelope, encode_frame, frame_body, frame_bytes};
pub use v1::{Envelope, envelope::Body};
pub use version::{ALPN, CloseCode, PROTOCOL_VERSION, negotiate_version};

/// Default and upper bound of a frame's encoded Envelope length (1 MiB).
///
/// Servers advertise their limit in `Welcome.max_frame`; both sides reject a
/// larger frame before buffering it.
pub const MAX_FRAME: usize = 1 << 20;

/// The schema these types were generated from, as text: served to browsers
/// (which parse it at run time), so the web client and the server can never
/// disagree about a field.
pub const SCHEMA: &str = include_str!("../proto/quip/v1/quip.proto");

/// Default limit on a message body (every field of `Content` the client
/// chooses: text, payload, content_type, media id and file name): 64 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// The largest body limit a server may advertise: a quarter of a frame, so
/// a message at the limit, with its envelope, a sync event's or a chat-list
/// entry's wrapping, still fits in one frame with room to spare.
pub const MAX_BODY_LIMIT: usize = MAX_FRAME / 4;

/// A short name of the Envelope's body, for logs and errors.
pub fn body_name(env: &Envelope) -> &'static str {
    match &env.body {
        None => "unknown",
        Some(b) => match b {
            Body::Hello(_) => "hello",
            Body::Welcome(_) => "welcome",
            Body::Error(_) => "error",
            Body::Register(_) => "register",
            Body::Login(_) => "login",
            Body::Logout(_) => "logout",
            Body::Whoami(_) => "whoami",
            Body::Send(_) => "send",
            Body::History(_) => "history",
            Body::Chats(_) => "chats",
            Body::Receipt(_) => "receipt",
            Body::Sync(_) => "sync",
            Body::Ack(_) => "ack",
            Body::Ping(_) => "ping",
            Body::CreateChat(_) => "create_chat",
            Body::UpdateChat(_) => "update_chat",
            Body::ChatInfo(_) => "chat_info",
            Body::ReceiptDetail(_) => "receipt_detail",
            Body::Subscribe(_) => "subscribe",
            Body::Presence(_) => "presence",
            Body::Settings(_) => "settings",
            Body::Typing(_) => "typing",
            Body::Block(_) => "block",
            Body::Upload(_) => "upload",
            Body::Download(_) => "download",
            Body::Auth(_) => "auth",
            Body::LoggedOut(_) => "logged_out",
            Body::Identity(_) => "identity",
            Body::Sent(_) => "sent",
            Body::HistoryPage(_) => "history_page",
            Body::ChatList(_) => "chat_list",
            Body::ReceiptStored(_) => "receipt_stored",
            Body::SyncPage(_) => "sync_page",
            Body::Acked(_) => "acked",
            Body::Pong(_) => "pong",
            Body::Chat(_) => "chat",
            Body::ReceiptDetails(_) => "receipt_details",
            Body::PresenceList(_) => "presence_list",
            Body::SettingsSaved(_) => "settings_saved",
            Body::TypingSent(_) => "typing_sent",
            Body::Blocked(_) => "blocked",
            Body::UploadReady(_) => "upload_ready",
            Body::UploadComplete(_) => "upload_complete",
            Body::DownloadReady(_) => "download_ready",
            Body::Event(_) => "event",
        },
    }
}

impl v1::Error {
    /// An error with a code and a human-readable message.
    pub fn new(code: v1::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code as i32,
            message: message.into(),
            retry_after_ms: 0,
        }
    }
}

impl Envelope {
    /// An envelope with the given correlation id and body.
    pub fn new(id: u64, body: Body) -> Self {
        Self { id, body: Some(body) }
    }

    /// An error answer to request `id` (0 for a connection-level error).
    pub fn error(id: u64, code: v1::ErrorCode, message: impl Into<String>) -> Self {
        Self::new(id, Body::Error(v1::Error::new(code, message)))
    }
}
