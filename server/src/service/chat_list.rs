//! The chat list: a user's chats, most recently active first, a page at a
//! time, each with its last message, unread count and receipt cursors.

use prost::Message as _;
use quip_protocol::v1::{self, ChatKind};

use super::messages::{direct_peer, fit, load_chat};
use super::{Actor, ServiceError, blocking, receipts};
use crate::keys;
use crate::records::{self, ChatRecord, CursorRecord};
use crate::store::ReadTxn;

/// Largest chat-list page.
pub const MAX_CHATS: u32 = 200;
/// Chat-list page size when the request says 0.
pub const DEFAULT_CHATS: u32 = 100;

/// One page of the actor's chats, most recently active first: those after
/// `after` in that order, at most `limit` (0: the default) and at most
/// `max_bytes` encoded. A page always holds at least one chat when any
/// follows, so paging makes progress whatever the chats hold.
///
/// Ordering reads every chat record of the user (one point read each) and
/// sorts; only the page's summaries are built. An index by activity would
/// make this proportional to the page, at the cost of rewriting one index
/// key per member on every send.
pub fn chats(
    txn: &mut dyn ReadTxn,
    actor: &Actor,
    limit: u32,
    after: Option<&v1::ChatsCursor>,
    max_bytes: usize,
) -> Result<v1::ChatsResponse, ServiceError> {
    let limit = if limit == 0 {
        DEFAULT_CHATS
    } else {
        limit.min(MAX_CHATS)
    } as usize;
    let (from, to) = keys::user_chats(actor.user_id);
    let rows = txn.range(&from, &to, usize::MAX, false)?;
    let mut order = Vec::with_capacity(rows.len());
    for (k, _) in rows {
        let chat_id = keys::chat_of_user_chat(&k).ok_or_else(|| ServiceError::Internal("bad chat index key".into()))?;
        let chat = load_chat(txn, chat_id)?;
        let place = (chat.last_activity_ms, chat_id);
        // Descending order: a chat comes after the cursor when it sorts below it.
        if after.is_none_or(|c| place < (c.last_activity_ms, c.chat_id)) {
            order.push((place, chat));
        }
    }
    order.sort_unstable_by_key(|(place, _)| std::cmp::Reverse(*place));
    let mut chats = Vec::with_capacity(order.len().min(limit));
    let mut bytes = 0;
    let mut last = None;
    let total = order.len();
    for ((activity, chat_id), chat) in order.into_iter().take(limit) {
        let mut s = summary(txn, actor, chat_id, &chat)?;
        s.last_message = s.last_message.map(|m| fit(m, max_bytes / 2));
        let len = s.encoded_len() + 8;
        if bytes + len > max_bytes && !chats.is_empty() {
            break;
        }
        bytes += len;
        chats.push(s);
        last = Some((activity, chat_id));
    }
    let next = match last {
        Some((last_activity_ms, chat_id)) if chats.len() < total => Some(v1::ChatsCursor {
            last_activity_ms,
            chat_id,
        }),
        _ => None,
    };
    Ok(v1::ChatsResponse { chats, next })
}

/// One chat's line in the chat list.
fn summary(
    txn: &mut dyn ReadTxn,
    actor: &Actor,
    chat_id: u64,
    chat: &ChatRecord,
) -> Result<v1::ChatSummary, ServiceError> {
    let kind = chat.kind();
    let peer = direct_peer(txn, actor, chat)?;
    let mine: CursorRecord = records::get(txn, &keys::cursor(chat_id, actor.user_id))?.unwrap_or_default();
    let (peer_delivered_seq, peer_read_seq) = match kind {
        ChatKind::Group => {
            let agg = receipts::aggregate(txn, chat_id)?;
            (agg.delivered_min, agg.read_min)
        }
        ChatKind::Channel => (0, 0),
        _ => {
            let peer_id = chat.members.iter().copied().find(|&m| m != actor.user_id).unwrap_or(0);
            let theirs: CursorRecord = records::get(txn, &keys::cursor(chat_id, peer_id))?.unwrap_or_default();
            // A peer who blocks me never shows ticks for what they did not get.
            let cap = blocking::first_hidden(txn, chat_id, peer_id)?.map_or(u64::MAX, |s| s - 1);
            (theirs.delivered.min(cap), theirs.read.min(cap))
        }
    };
    let mut newest = chat.last_seq;
    // Messages retention deleted are not unread: nobody can read them.
    let floor = super::retention::message_floor(txn, chat_id)?;
    let mut unread = chat.last_seq.saturating_sub(mine.read.max(floor - 1));
    if kind == ChatKind::Direct {
        let hidden = blocking::hidden(txn, chat_id, actor.user_id, mine.read + 1, chat.last_seq + 1)?;
        unread = unread.saturating_sub(hidden.len() as u64);
        let all_hidden = blocking::hidden(txn, chat_id, actor.user_id, 1, chat.last_seq + 1)?;
        while newest > 0 && all_hidden.contains(&newest) {
            newest -= 1;
        }
    }
    let last_message = if newest >= floor {
        records::get::<v1::Message>(txn, &keys::message(chat_id, newest))?
    } else {
        None
    };
    let member_count = match kind {
        ChatKind::Channel => chat.subscribers,
        _ => u32::try_from(chat.members.len()).unwrap_or(u32::MAX),
    };
    Ok(v1::ChatSummary {
        chat_id,
        kind: chat.kind,
        peer,
        last_message,
        unread,
        my_delivered_seq: mine.delivered,
        my_read_seq: mine.read,
        peer_delivered_seq,
        peer_read_seq,
        name: chat.name.clone(),
        member_count,
        admin: chat.admins.contains(&actor.user_id),
    })
}
