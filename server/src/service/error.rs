//! The domain error type, and the single place that maps errors to wire codes.

use quip_protocol::v1::{self, ErrorCode};

use crate::store::StoreError;

/// The retry delay a client is given while the store is unavailable.
pub const STORE_RETRY_MS: u32 = 1_000;

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A field is missing or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named user or chat does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not access the chat.
    #[error("{0}")]
    Forbidden(String),
    /// Register: the name is taken.
    #[error("username {0:?} is taken")]
    UsernameTaken(String),
    /// Login: unknown user or wrong password (deliberately indistinguishable).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The request needs a logged-in connection.
    #[error("{0}")]
    Unauthenticated(String),
    /// The message body exceeds the limit.
    #[error("message body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge {
        /// The body's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A client_msg_id was reused with different content.
    #[error("client_msg_id {0:?} was already used for a different message in this chat")]
    IdempotencyConflict(String),
    /// Too many requests.
    #[error("rate limit exceeded; retry in {retry_after_ms} ms")]
    RateLimited {
        /// When a request will be accepted again.
        retry_after_ms: u32,
    },
    /// The server is shutting down.
    #[error("server is shutting down")]
    Unavailable,
    /// Storage failed; nothing of the request was stored.
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
    /// Not safe to run from 0-RTT early data (it could be a replay).
    #[error("this request is not accepted in 0-RTT early data: send it again after the handshake")]
    TooEarly,
    /// A configured limit would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// Media: the bytes do not match the declared SHA-256.
    #[error("the {received} bytes received do not match the declared sha256; nothing was kept")]
    HashMismatch {
        /// Bytes hashed.
        received: u64,
    },
    /// Media: the upload stream ended early; it can be resumed.
    #[error("upload incomplete: {received} of {size} bytes stored; resume from byte {received}")]
    UploadIncomplete {
        /// Bytes durably stored.
        received: u64,
        /// Bytes declared.
        size: u64,
    },
    /// Anything else on the server's side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::UsernameTaken(_) => ErrorCode::UsernameTaken,
            Self::InvalidCredentials => ErrorCode::InvalidCredentials,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            Self::IdempotencyConflict(_) => ErrorCode::IdempotencyConflict,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::Unavailable => ErrorCode::Unavailable,
            Self::LimitExceeded(_) => ErrorCode::LimitExceeded,
            Self::TooEarly => ErrorCode::TooEarly,
            Self::HashMismatch { .. } => ErrorCode::HashMismatch,
            Self::UploadIncomplete { .. } => ErrorCode::UploadIncomplete,
            Self::Store(StoreError::Closed | StoreError::Unavailable(_)) => ErrorCode::Unavailable,
            Self::Store(_) | Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The wire form.
    pub fn to_wire(&self) -> v1::Error {
        let mut e = v1::Error::new(self.code(), self.to_string());
        match self {
            Self::RateLimited { retry_after_ms } => e.retry_after_ms = *retry_after_ms,
            // Worth a retry soon: the cluster recovers by itself.
            Self::Store(StoreError::Unavailable(_)) => e.retry_after_ms = STORE_RETRY_MS,
            _ => {}
        }
        e
    }
}
