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
//! - [`blocking`]: blocked users' messages stored but never delivered.
//! - [`messages`]: send (seq assignment, idempotency), history, chat list.
//! - [`groups`]: groups and channels: creation, membership, names.
//! - [`receipts`]: delivered/read cursors and a group's aggregate of them.
//! - [`log`]: the per-user event log, sync and acknowledgements.
//! - [`media`]: uploads, shared blobs, download access, abandoned uploads.
//! - [`presence`]: who may see whose presence; last-seen records and settings.
//! - [`retention`]: deleting messages past the retention age, and what
//!   refers to them, in bounded steps.

pub mod accounts;
pub mod blocking;
pub mod chat_list;
pub mod error;
pub mod groups;
pub mod log;
pub mod media;
pub mod messages;
pub mod presence;
pub mod receipts;
pub mod retention;
pub mod throttle;

#[cfg(test)]
mod tests;

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

/// Everything a committed write asks to be pushed, in the order to push it.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Channel subscriptions that changed: (user, channel, subscribed). The
    /// user's online devices start or stop watching the channel first, so a
    /// post committed after a subscription reaches them.
    pub watch: Vec<(u64, u64, bool)>,
    /// Log entries for users' online devices.
    pub events: Vec<Notification>,
    /// A new message in a channel, announced to the devices watching it
    /// (pull model: nothing was written per subscriber).
    pub channel_post: Option<v1::Message>,
}

impl From<Vec<Notification>> for Delivery {
    fn from(events: Vec<Notification>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }
}

impl Delivery {
    /// The chat whose order this delivery must keep, if it has one.
    pub fn chat_id(&self) -> Option<u64> {
        self.events
            .first()
            .map(|n| n.chat_id)
            .or(self.channel_post.as_ref().map(|m| m.chat_id))
            .or(self.watch.first().map(|w| w.1))
    }

    /// Whether there is nothing to push.
    pub fn is_empty(&self) -> bool {
        self.watch.is_empty() && self.events.is_empty() && self.channel_post.is_none()
    }
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
