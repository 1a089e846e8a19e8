//! Retention: deleting messages older than the configured age, or beyond
//! the newest N of a chat, with what points at them (log entries, idempotency and hidden-message records,
//! media references, media nobody references any more).
//!
//! What stays true while it happens:
//! - Seqs and log positions are never renumbered. A chat keeps its oldest
//!   retained seq in `mfloor/`, a user's log its oldest position in
//!   `logfloor/`; history and sync start there and tell clients
//!   (`retained_from_seq`, `retained_from_pos`), so a gap reads as expiry,
//!   never as loss.
//! - Deletion is a prefix: a chat's messages are deleted oldest first and
//!   only up to the first one young enough to keep (send times follow seqs,
//!   give or take a clock step), so what remains of a chat is one run of
//!   seqs from the floor to the newest. A log is trimmed likewise, up to
//!   its first entry that still refers to a retained message.
//! - Every step is two halves: a plan read in a snapshot, then a write that
//!   first re-reads the floor it started from and does nothing if another
//!   sweeper (another node) moved it. Clears are idempotent, and on
//!   FoundationDB two sweepers of one chat conflict on the floor key, so
//!   running the sweep on several nodes at once is safe, only wasteful.
//! - Each write is bounded ([`CHAT_STEP`] messages, [`LOG_STEP`] entries),
//!   far inside FoundationDB's 10 MB and 5 s, and never reads `chat/` or
//!   `loghead/`, the keys every send writes, so sends do not conflict
//!   with it.
//!
//! The loop that runs the steps, and deletes media bytes, is
//! [`crate::retention`].

use std::collections::HashMap;

use quip_protocol::v1;

use super::{ServiceError, accounts, media};
use crate::keys;
use crate::records::{self, ChatRecord, LogRecord};
use crate::store::{ReadTxn, Txn};

/// Messages deleted by one chat step: each costs up to five cleared keys
/// (message, idempotency, hidden marker per member, media reference), so a
/// step writes at most ~500 keys.
pub const CHAT_STEP: usize = 100;
/// Log entries deleted by one log step (one cleared key each).
pub const LOG_STEP: usize = 500;

/// The oldest retained seq of a chat (1 when nothing was deleted).
pub fn message_floor(txn: &mut dyn ReadTxn, chat_id: u64) -> Result<u64, ServiceError> {
    Ok(records::get_u64(txn, &keys::message_floor(chat_id))?.max(1))
}

/// The oldest position still in a user's log (1 when nothing was deleted).
pub fn log_floor(txn: &mut dyn ReadTxn, uid: u64) -> Result<u64, ServiceError> {
    Ok(records::get_u64(txn, &keys::log_floor(uid))?.max(1))
}

/// What one chat step will delete: read in a snapshot by [`plan_chat`],
/// applied by [`expire_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPlan {
    /// The chat.
    pub chat_id: u64,
    /// Its floor when planned; the write does nothing if it moved since.
    pub from: u64,
    /// The floor after the step: every seq below it is deleted.
    pub to: u64,
    /// Keys to clear: messages, idempotency records, hidden markers.
    pub clear: Vec<Vec<u8>>,
    /// Media carried by the deleted messages.
    pub media: Vec<media::MediaId>,
    /// Whether the chat may hold more to delete (the step was full).
    pub more: bool,
}

/// Which messages a chat keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// Those sent at or after this wall time (ms since the Unix epoch;
    /// `i64::MIN`: of any age).
    pub sent_since_ms: i64,
    /// At most this many, the newest (0: any number).
    pub newest: u64,
}

impl Keep {
    /// Whether message `seq`, sent at `sent_at_ms`, of a chat whose newest
    /// seq is `last_seq`, is kept. Both rules only ever drop a chat's
    /// oldest messages (send times follow seqs), so what is dropped is a
    /// prefix.
    pub fn keeps(&self, seq: u64, sent_at_ms: i64, last_seq: u64) -> bool {
        sent_at_ms >= self.sent_since_ms && (self.newest == 0 || seq.saturating_add(self.newest) > last_seq)
    }
}

/// Plans the next step for `chat_id`: its oldest messages that `keep` does
/// not keep, at most [`CHAT_STEP`]. `None` when there is nothing to do.
pub fn plan_chat(txn: &mut dyn ReadTxn, chat_id: u64, keep: Keep) -> Result<Option<ChatPlan>, ServiceError> {
    let Some(chat) = records::get::<ChatRecord>(txn, &keys::chat(chat_id))? else {
        return Ok(None);
    };
    let from = message_floor(txn, chat_id)?;
    if from > chat.last_seq {
        return Ok(None);
    }
    // Most sweeps find nothing to do in most chats: decide that from the
    // oldest message alone (a point read) before reading a step's worth.
    let first_key = keys::message(chat_id, from);
    if let Some(v) = txn.get(&first_key)? {
        let first: v1::Message = records::decode(&first_key, &v)?;
        if keep.keeps(first.seq, first.sent_at_ms, chat.last_seq) {
            return Ok(None);
        }
    }
    let rows = txn.range(
        &keys::message(chat_id, from),
        &keys::message(chat_id, chat.last_seq + 1),
        CHAT_STEP,
        false,
    )?;
    let mut plan = ChatPlan {
        chat_id,
        from,
        to: from,
        clear: Vec::new(),
        media: Vec::new(),
        more: false,
    };
    let mut senders: HashMap<String, Option<u64>> = HashMap::new();
    let direct = chat.kind() == v1::ChatKind::Direct;
    let mut expired = 0;
    for (key, value) in &rows {
        let msg: v1::Message = records::decode(key, value)?;
        if keep.keeps(msg.seq, msg.sent_at_ms, chat.last_seq) {
            break;
        }
        expired += 1;
        plan.to = msg.seq + 1;
        plan.clear.push(key.clone());
        if !msg.client_msg_id.is_empty() {
            let sender = match senders.get(&msg.sender) {
                Some(id) => *id,
                None => {
                    let id = accounts::find_user(txn, &msg.sender)?.map(|u| u.id);
                    senders.insert(msg.sender.clone(), id);
                    id
                }
            };
            if let Some(sender) = sender {
                plan.clear.push(keys::idempotency(chat_id, sender, &msg.client_msg_id));
            }
        }
        if direct {
            plan.clear
                .extend(chat.members.iter().map(|&m| keys::hidden(chat_id, m, msg.seq)));
        }
        if let Some(id) = msg.content.as_ref().and_then(|c| c.media.as_ref()) {
            // An id that does not parse was never stored: nothing to free.
            if let Ok(id) = media::parse_id(&id.media_id)
                && !plan.media.contains(&id)
            {
                plan.media.push(id);
            }
        }
    }
    if plan.to == from {
        return Ok(None);
    }
    plan.more = expired == CHAT_STEP;
    Ok(Some(plan))
}

/// Applies a [`ChatPlan`]: moves the floor and deletes what it lists.
/// Returns the chunk prefixes of media whose last reference went (their
/// objects are deleted after the commit), or nothing when another sweeper
/// moved the floor first.
pub fn expire_messages(txn: &mut dyn Txn, plan: &ChatPlan) -> Result<Vec<Vec<u8>>, ServiceError> {
    if message_floor(txn, plan.chat_id)? != plan.from {
        return Ok(Vec::new());
    }
    txn.set(&keys::message_floor(plan.chat_id), &plan.to.to_be_bytes());
    for key in &plan.clear {
        txn.clear(key);
    }
    let mut chunks = Vec::new();
    for id in &plan.media {
        if let Some(prefix) = media::unreference(txn, id, plan.chat_id, plan.to)? {
            chunks.push(prefix);
        }
    }
    Ok(chunks)
}

/// What one log step will delete: positions `from..to` of `uid`'s log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPlan {
    /// Whose log.
    pub uid: u64,
    /// Its floor when planned.
    pub from: u64,
    /// The floor after the step.
    pub to: u64,
    /// Whether the log may hold more to delete (the step was full).
    pub more: bool,
}

/// Plans the next step for `uid`'s log: its oldest entries that refer to
/// deleted messages (a message below its chat's floor, or a receipt about
/// one), up to the first that does not; at most [`LOG_STEP`]. Run after the
/// chats' steps, whose floors it reads.
pub fn plan_log(txn: &mut dyn ReadTxn, uid: u64) -> Result<Option<LogPlan>, ServiceError> {
    let from = log_floor(txn, uid)?;
    // As for chats: the oldest entry alone (a point read) usually says
    // there is nothing to do. Logs are dense, so none there: empty.
    let first_key = keys::log(uid, from);
    let Some(v) = txn.get(&first_key)? else {
        return Ok(None);
    };
    let first: LogRecord = records::decode(&first_key, &v)?;
    if refers_to_kept(txn, &first)? {
        return Ok(None);
    }
    let rows = txn.range(&first_key, &keys::log(uid, u64::MAX), LOG_STEP, false)?;
    let mut floors: HashMap<u64, u64> = HashMap::new();
    let mut to = from;
    let mut expired = 0;
    for (key, value) in &rows {
        let rec: LogRecord = records::decode(key, value)?;
        let seq = rec.receipt.as_ref().map_or(rec.seq, |r| r.seq);
        let floor = match floors.get(&rec.chat_id) {
            Some(f) => *f,
            None => {
                let f = message_floor(txn, rec.chat_id)?;
                floors.insert(rec.chat_id, f);
                f
            }
        };
        if seq >= floor {
            break;
        }
        to = keys::last_u64(key).unwrap_or(to) + 1;
        expired += 1;
    }
    if to == from {
        return Ok(None);
    }
    Ok(Some(LogPlan {
        uid,
        from,
        to,
        more: expired == LOG_STEP,
    }))
}

/// Whether a log entry refers to a message its chat still keeps (a
/// message entry) or to one at or above the chat's floor (a receipt).
fn refers_to_kept(txn: &mut dyn ReadTxn, rec: &LogRecord) -> Result<bool, ServiceError> {
    let seq = rec.receipt.as_ref().map_or(rec.seq, |r| r.seq);
    Ok(seq >= message_floor(txn, rec.chat_id)?)
}

/// Applies a [`LogPlan`] unless another sweeper moved the floor first.
pub fn trim_log(txn: &mut dyn Txn, plan: &LogPlan) -> Result<(), ServiceError> {
    if log_floor(txn, plan.uid)? != plan.from {
        return Ok(());
    }
    txn.set(&keys::log_floor(plan.uid), &plan.to.to_be_bytes());
    for pos in plan.from..plan.to {
        txn.clear(&keys::log(plan.uid, pos));
    }
    Ok(())
}

/// Up to `limit` chat ids from `from` on, ascending.
pub fn chats(txn: &mut dyn ReadTxn, from: u64, limit: usize) -> Result<Vec<u64>, ServiceError> {
    let (begin, end) = keys::chats_from(from);
    Ok(txn
        .range(&begin, &end, limit, false)?
        .iter()
        .filter_map(|(k, _)| keys::last_u64(k))
        .collect())
}

/// Up to `limit` user ids from `from` on, ascending.
pub fn users(txn: &mut dyn ReadTxn, from: u64, limit: usize) -> Result<Vec<u64>, ServiceError> {
    let (begin, end) = keys::users_from(from);
    Ok(txn
        .range(&begin, &end, limit, false)?
        .iter()
        .filter_map(|(k, _)| keys::last_u64(k))
        .collect())
}
