//! Channel subscriptions: O(1) writes whatever the subscriber count, and
//! not events in the channel's sequence (see the module docs of `groups`).

use prost::Message as _;
use quip_protocol::v1::{ChatAction, ChatKind};

use super::super::{Actor, Delivery, ServiceError, messages};
use super::{Changed, info::info_of, update};
use crate::keys;
use crate::records::CursorRecord;
use crate::store::Txn;

/// Subscribes the actor to a channel, or unsubscribes. O(1) writes either way.
pub fn subscribe(
    txn: &mut dyn Txn,
    actor: &Actor,
    chat_id: u64,
    unsubscribe: bool,
    now_ms: i64,
) -> Result<Changed, ServiceError> {
    let mut chat = messages::load_chat(txn, chat_id)?;
    if chat.kind() != ChatKind::Channel {
        return Err(ServiceError::InvalidArgument(format!(
            "chat {chat_id} is not a channel"
        )));
    }
    if unsubscribe {
        if !messages::is_member(txn, &chat, chat_id, actor.user_id)? {
            return Ok(Changed {
                info: info_of(txn, chat_id, &chat, 0)?,
                event_seq: 0,
                delivery: Delivery::default(),
            });
        }
        return update(txn, actor, chat_id, ChatAction::Leave, &[], "", 0, now_ms);
    }
    let mut delivery = Delivery::default();
    if !messages::is_member(txn, &chat, chat_id, actor.user_id)? {
        txn.set(&keys::user_chat(actor.user_id, chat_id), b"");
        txn.set(&keys::user_channel(actor.user_id, chat_id), b"");
        // A new subscriber may read the whole history; nothing is unread yet.
        let cursor = CursorRecord {
            delivered: chat.last_seq,
            read: chat.last_seq,
            joined: 0,
            posted: false,
        };
        txn.set(&keys::cursor(chat_id, actor.user_id), &cursor.encode_to_vec());
        chat.subscribers = chat.subscribers.saturating_add(1);
        txn.set(&keys::chat(chat_id), &chat.encode_to_vec());
        delivery.watch.push((actor.user_id, chat_id, true));
    }
    Ok(Changed {
        info: info_of(txn, chat_id, &chat, 0)?,
        event_seq: 0,
        delivery,
    })
}
