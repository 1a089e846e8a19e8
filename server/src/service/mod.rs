//! Domain logic: accounts, chats, receipts and the per-user log, written as
//! plain functions over a [`Txn`](crate::store::Txn) or
//! [`ReadTxn`](crate::store::ReadTxn).
//!
//! Nothing here does I/O or knows about connections; the request layer
//! ([`crate::session`]) runs these inside store transactions and pushes the
//! [`Notification`]s they return once the transaction is durable.
//!
//! # Layout
//! - [`error`]: the domain error type and its one mapping to wire codes.
//! - [`accounts`]: register, login, sessions, logout.
//! - [`messages`]: send (seq assignment, idempotency), history, chat list.
//! - [`receipts`]: delivered/read cursors.
//! - [`log`]: the per-user event log, sync and acknowledgements.

pub mod accounts;
pub mod error;
pub mod log;
pub mod messages;
pub mod receipts;

pub use error::ServiceError;
use quip_protocol::v1;

/// An event appended to a user's log, to push live once committed.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Whose log.
    pub user_id: u64,
    /// The chat it belongs to (selects the push lane).
    pub chat_id: u64,
    /// The event, with its log position.
    pub event: v1::Event,
    /// A device that already has it (the sender's own device).
    pub skip_device: Option<u32>,
}

/// Who is acting: the authenticated device of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// User id.
    pub user_id: u64,
    /// Username.
    pub username: String,
    /// Device id.
    pub device_id: u32,
}
