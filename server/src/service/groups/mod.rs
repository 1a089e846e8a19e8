//! Groups and channels: creation, membership, admins and names.
//!
//! Every change to a group is a message in the group's own sequence (a
//! `GroupEvent` instead of content), stored and fanned out like any message,
//! so all members see the same history of who joined when, in the same
//! order as the conversation. A member's history starts at the event that
//! added them ([`CursorRecord::joined`]); removal clears their cursor and
//! index entry, which is what makes every later read or write refuse them.
//!
//! Channels differ in one respect that decides their cost: subscribers are
//! not listed in the chat record and nothing is written per subscriber when
//! an admin posts. Subscribing and unsubscribing are O(1) and are not events
//! in the channel's sequence (at 100,000 subscribers they would drown the
//! posts); admin changes and renames are.

use std::collections::BTreeMap;

use prost::Message as _;
use quip_protocol::v1::{self, ChatAction, ChatKind, GroupEventKind};

use super::{Actor, Delivery, ServiceError, accounts, messages, receipts};
use crate::keys;
use crate::records::{self, ChatRecord, CursorRecord};
use crate::store::{ReadTxn, Txn};

mod channels;
mod consent;
mod info;

pub use channels::subscribe;
use consent::{check_may_add, resolve_users};
pub use info::info;
use info::info_of;

/// Any chat's description and its last activity (ms since the epoch),
/// for the operator: no participation check; `None` when there is no such
/// chat.
pub fn info_for_operator(
    txn: &mut dyn ReadTxn,
    chat_id: u64,
    max_members: u32,
) -> Result<Option<(v1::ChatInfo, i64)>, ServiceError> {
    let Some(chat) = records::get::<ChatRecord>(txn, &keys::chat(chat_id))? else {
        return Ok(None);
    };
    Ok(Some((
        info_of(txn, chat_id, &chat, max_members)?,
        chat.last_activity_ms,
    )))
}

/// Longest group or channel name, in bytes.
pub const MAX_NAME: usize = 64;

/// What a create or update did.
#[derive(Debug)]
pub struct Changed {
    /// The chat after the change.
    pub info: v1::ChatInfo,
    /// The seq of the `GroupEvent` message it stored (0: none).
    pub event_seq: u64,
    /// What to push once durable.
    pub delivery: Delivery,
}

/// Checks a group or channel name: printable text, without control
/// characters, bidirectional overrides and isolates, or line separators.
/// A right-to-left override in a name shown beside others' text can make
/// "gnp.exe" read as "exe.png" or reorder the words around it (the
/// Trojan Source attack, CVE-2021-42574). Zero-width joiners stay allowed:
/// emoji sequences need them.
pub fn validate_name(name: &str) -> Result<(), ServiceError> {
    let reorders = |c: char| {
        matches!(c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
            | '\u{2028}' | '\u{2029}' | '\u{FEFF}')
    };
    if name.trim().is_empty() || name.len() > MAX_NAME || name.chars().any(|c| c.is_control() || reorders(c)) {
        return Err(ServiceError::InvalidArgument(format!(
            "a name is 1 to {MAX_NAME} bytes of printable text (no control or bidirectional formatting characters)"
        )));
    }
    Ok(())
}

/// Creates a group (the actor as admin plus `members`) or a channel (the
/// actor as admin and first subscriber). The first message of the chat is
/// its CREATED event.
#[allow(clippy::too_many_arguments)]
pub fn create(
    txn: &mut dyn Txn,
    actor: &Actor,
    kind: ChatKind,
    name: &str,
    members: &[String],
    request_id: &str,
    max_members: u32,
    now_ms: i64,
) -> Result<Changed, ServiceError> {
    if request_id.len() > 64 {
        return Err(ServiceError::InvalidArgument(
            "client_request_id is at most 64 bytes".into(),
        ));
    }
    let req_key = (!request_id.is_empty()).then(|| keys::create_request(actor.user_id, request_id));
    if let Some(key) = &req_key
        && let Some(b) = txn.get(key)?
    {
        // A retry: the chat exists already (the actor may have left it since).
        let chat_id = b
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| ServiceError::Internal("corrupt create request record".into()))?;
        let chat = messages::load_chat(txn, chat_id)?;
        return Ok(Changed {
            info: info_of(txn, chat_id, &chat, max_members)?,
            event_seq: 1,
            delivery: Delivery::default(),
        });
    }
    if !matches!(kind, ChatKind::Group | ChatKind::Channel) {
        return Err(ServiceError::InvalidArgument(
            "create_chat makes a GROUP or a CHANNEL (direct chats start with a send)".into(),
        ));
    }
    validate_name(name)?;
    if kind == ChatKind::Channel && !members.is_empty() {
        return Err(ServiceError::InvalidArgument(
            "a channel starts with no members: others subscribe".into(),
        ));
    }
    let others = resolve_users(txn, actor, members, false)?;
    if others.len() + 1 > max_members as usize {
        return Err(ServiceError::LimitExceeded(format!(
            "a group has at most {max_members} members; {} requested",
            others.len() + 1
        )));
    }
    check_may_add(txn, actor, &others)?;
    let ctr = keys::counter("chat");
    let chat_id = records::get_u64(txn, &ctr)? + 1;
    txn.set(&ctr, &chat_id.to_be_bytes());
    if let Some(key) = &req_key {
        txn.set(key, &chat_id.to_be_bytes());
    }
    let mut ids: Vec<u64> = others.values().copied().chain([actor.user_id]).collect();
    ids.sort_unstable();
    let mut chat = ChatRecord {
        kind: kind as i32,
        members: ids.clone(),
        name: name.to_owned(),
        admins: vec![actor.user_id],
        subscribers: u32::from(kind == ChatKind::Channel),
        ..ChatRecord::default()
    };
    let event = v1::GroupEvent {
        kind: GroupEventKind::Created as i32,
        users: others.keys().cloned().collect(),
        name: name.to_owned(),
    };
    let msg = messages::store_message(txn, &mut chat, event_message(chat_id, actor, event, now_ms))?;
    let seq = msg.seq;
    for &uid in &ids {
        txn.set(&keys::user_chat(uid, chat_id), b"");
        let own = uid == actor.user_id;
        let cursor = CursorRecord {
            delivered: if own { seq } else { seq - 1 },
            read: if own { seq } else { seq - 1 },
            joined: if kind == ChatKind::Group { seq } else { 0 },
            posted: own,
        };
        txn.set(&keys::cursor(chat_id, uid), &cursor.encode_to_vec());
    }
    let mut delivery = Delivery::default();
    if kind == ChatKind::Group {
        receipts::aggregate_change(txn, chat_id, &chat.members, None, None)?;
        delivery.events = messages::fan_out(txn, &chat.members, &msg, None)?;
    } else {
        txn.set(&keys::user_channel(actor.user_id, chat_id), b"");
        delivery.watch.push((actor.user_id, chat_id, true));
        delivery.channel_post = Some(msg);
    }
    Ok(Changed {
        info: info_of(txn, chat_id, &chat, max_members)?,
        event_seq: seq,
        delivery,
    })
}

fn event_message(chat_id: u64, actor: &Actor, event: v1::GroupEvent, now_ms: i64) -> v1::Message {
    v1::Message {
        chat_id,
        seq: 0,
        sender: actor.username.clone(),
        sender_device: actor.device_id,
        recipient: String::new(),
        client_msg_id: String::new(),
        sent_at_ms: now_ms,
        content: None,
        group_event: Some(event),
        content_omitted: false,
    }
}

/// A group or channel the actor participates in.
fn managed_chat(txn: &mut dyn ReadTxn, actor: &Actor, chat_id: u64) -> Result<ChatRecord, ServiceError> {
    let chat = messages::member_chat(txn, actor, chat_id)?;
    if !matches!(chat.kind(), ChatKind::Group | ChatKind::Channel) {
        return Err(ServiceError::InvalidArgument(format!(
            "chat {chat_id} is a direct chat, not a group or channel"
        )));
    }
    Ok(chat)
}

/// Applies one membership or name change. Adding members who are already
/// in, removing users who are not, promoting admins and the like change
/// nothing and store no event (so a retried request is harmless).
#[allow(clippy::too_many_arguments)]
pub fn update(
    txn: &mut dyn Txn,
    actor: &Actor,
    chat_id: u64,
    action: ChatAction,
    users: &[String],
    name: &str,
    max_members: u32,
    now_ms: i64,
) -> Result<Changed, ServiceError> {
    let mut chat = managed_chat(txn, actor, chat_id)?;
    let kind = chat.kind();
    let is_admin = chat.admins.contains(&actor.user_id);
    if !matches!(action, ChatAction::Leave | ChatAction::Unspecified) && !is_admin {
        return Err(ServiceError::Forbidden(format!(
            "only admins of chat {chat_id} can do that"
        )));
    }
    // Admins may demote or promote themselves; removing oneself is LEAVE.
    let with_self = matches!(action, ChatAction::Promote | ChatAction::Demote);
    let named = |txn: &mut dyn Txn| -> Result<BTreeMap<String, u64>, ServiceError> {
        if users.is_empty() {
            return Err(ServiceError::InvalidArgument("name at least one user".into()));
        }
        resolve_users(txn, actor, users, with_self)
    };
    let mut delivery = Delivery::default();
    let mut event: Option<v1::GroupEvent> = None;
    let mut joined: Vec<u64> = Vec::new();
    let mut gone: Vec<u64> = Vec::new();
    match action {
        ChatAction::Unspecified => {
            return Err(ServiceError::InvalidArgument("action is required".into()));
        }
        ChatAction::AddMembers => {
            if kind == ChatKind::Channel {
                return Err(ServiceError::InvalidArgument(
                    "nobody is added to a channel: users subscribe".into(),
                ));
            }
            let new: BTreeMap<String, u64> = named(txn)?
                .into_iter()
                .filter(|(_, id)| !chat.members.contains(id))
                .collect();
            if chat.members.len() + new.len() > max_members as usize {
                return Err(ServiceError::LimitExceeded(format!(
                    "a group has at most {max_members} members; it has {} and {} would join",
                    chat.members.len(),
                    new.len()
                )));
            }
            check_may_add(txn, actor, &new)?;
            if !new.is_empty() {
                joined = new.values().copied().collect();
                event = Some(group_event(GroupEventKind::Added, new.into_keys().collect(), ""));
            }
        }
        ChatAction::RemoveMembers => {
            let mut out = BTreeMap::new();
            for (name, id) in named(txn)? {
                if messages::is_member(txn, &chat, chat_id, id)? {
                    out.insert(name, id);
                }
            }
            gone = out.values().copied().collect();
            if kind == ChatKind::Group && !out.is_empty() {
                event = Some(group_event(GroupEventKind::Removed, out.into_keys().collect(), ""));
            }
        }
        ChatAction::Leave => {
            if is_admin && chat.admins.len() == 1 && kind == ChatKind::Channel && chat.subscribers > 1 {
                return Err(ServiceError::InvalidArgument(
                    "the last admin cannot leave a channel with subscribers: promote someone first".into(),
                ));
            }
            gone.push(actor.user_id);
            if kind == ChatKind::Group {
                event = Some(group_event(GroupEventKind::Left, Vec::new(), ""));
            }
        }
        ChatAction::Promote | ChatAction::Demote => {
            let promote = action == ChatAction::Promote;
            let mut changed = BTreeMap::new();
            for (name, id) in named(txn)? {
                if !messages::is_member(txn, &chat, chat_id, id)? {
                    return Err(ServiceError::InvalidArgument(format!(
                        "{name:?} is not a member of chat {chat_id}"
                    )));
                }
                if chat.admins.contains(&id) != promote {
                    changed.insert(name, id);
                }
            }
            if promote {
                chat.admins.extend(changed.values());
                chat.admins.sort_unstable();
                if kind == ChatKind::Channel {
                    // A channel's record lists who may post: its admins.
                    chat.members.extend(changed.values());
                    chat.members.sort_unstable();
                }
            } else {
                chat.admins.retain(|a| !changed.values().any(|c| c == a));
                if chat.admins.is_empty() {
                    return Err(ServiceError::InvalidArgument(
                        "a group or channel keeps at least one admin".into(),
                    ));
                }
                if kind == ChatKind::Channel {
                    chat.members.retain(|a| !changed.values().any(|c| c == a));
                }
            }
            if !changed.is_empty() {
                let k = if promote {
                    GroupEventKind::Promoted
                } else {
                    GroupEventKind::Demoted
                };
                event = Some(group_event(k, changed.into_keys().collect(), ""));
            }
        }
        ChatAction::Rename => {
            validate_name(name)?;
            if chat.name != name {
                chat.name = name.to_owned();
                event = Some(group_event(GroupEventKind::Renamed, Vec::new(), name));
            }
        }
    }

    // New members are in before the event is stored and fanned out, removed
    // ones still are: both see the event that concerns them.
    let before_seq = chat.last_seq;
    chat.members.extend(&joined);
    chat.members.sort_unstable();
    let mut event_seq = 0;
    if let Some(ev) = event {
        let msg = messages::store_message(txn, &mut chat, event_message(chat_id, actor, ev, now_ms))?;
        event_seq = msg.seq;
        if kind == ChatKind::Group {
            delivery.events = messages::fan_out(txn, &chat.members, &msg, None)?;
        } else {
            delivery.channel_post = Some(msg);
        }
        // One's own change is not unread news: like a send, it moves the
        // actor's cursors (a leaving actor's cursor goes away below).
        let key = keys::cursor(chat_id, actor.user_id);
        if let Some(old) = records::get::<CursorRecord>(txn, &key)? {
            let cur = CursorRecord {
                delivered: event_seq,
                read: event_seq,
                joined: old.joined,
                posted: true,
            };
            txn.set(&key, &cur.encode_to_vec());
            if kind == ChatKind::Group {
                delivery.events.extend(receipts::aggregate_change(
                    txn,
                    chat_id,
                    &chat.members,
                    Some(old),
                    Some(cur),
                )?);
            }
        }
    }
    for &uid in &joined {
        txn.set(&keys::user_chat(uid, chat_id), b"");
        let cursor = CursorRecord {
            delivered: before_seq,
            read: before_seq,
            joined: event_seq,
            posted: false,
        };
        txn.set(&keys::cursor(chat_id, uid), &cursor.encode_to_vec());
        delivery.events.extend(receipts::aggregate_change(
            txn,
            chat_id,
            &chat.members,
            None,
            Some(cursor),
        )?);
    }
    for &uid in &gone {
        let ckey = keys::cursor(chat_id, uid);
        let old: Option<CursorRecord> = records::get(txn, &ckey)?;
        txn.clear(&ckey);
        txn.clear(&keys::user_chat(uid, chat_id));
        chat.admins.retain(|&a| a != uid);
        if kind == ChatKind::Channel {
            txn.clear(&keys::user_channel(uid, chat_id));
            chat.subscribers = chat.subscribers.saturating_sub(1);
            chat.members.retain(|&m| m != uid);
            delivery.watch.push((uid, chat_id, false));
        } else {
            chat.members.retain(|&m| m != uid);
            delivery
                .events
                .extend(receipts::aggregate_change(txn, chat_id, &chat.members, old, None)?);
        }
    }
    if kind == ChatKind::Group && chat.admins.is_empty() && !chat.members.is_empty() {
        // The last admin left: the longest-standing member takes over, as an
        // event in the sequence like any promotion.
        let mut eldest = (u64::MAX, 0);
        for &uid in &chat.members {
            let c: CursorRecord = records::get(txn, &keys::cursor(chat_id, uid))?.unwrap_or_default();
            eldest = eldest.min((c.joined, uid));
        }
        chat.admins.push(eldest.1);
        let heir = accounts::username(txn, eldest.1)?.unwrap_or_default();
        let ev = group_event(GroupEventKind::Promoted, vec![heir], "");
        let msg = messages::store_message(txn, &mut chat, event_message(chat_id, actor, ev, now_ms))?;
        delivery
            .events
            .extend(messages::fan_out(txn, &chat.members, &msg, None)?);
    }
    txn.set(&keys::chat(chat_id), &chat.encode_to_vec());
    Ok(Changed {
        info: info_of(txn, chat_id, &chat, max_members)?,
        event_seq,
        delivery,
    })
}

fn group_event(kind: GroupEventKind, users: Vec<String>, name: &str) -> v1::GroupEvent {
    v1::GroupEvent {
        kind: kind as i32,
        users,
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_controls_and_bidirectional_overrides() {
        for ok in [
            "family",
            "Équipe 🇫🇷",
            "👨\u{200D}👩\u{200D}👧 home",
            "שלום עולם",
            "مرحبا",
        ] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok:?} refused: {e}"));
        }
        for bad in [
            "",
            "   ",
            "tab\there",
            "new\nline",
            "photo\u{202E}gnp.exe",
            "\u{2067}isolate\u{2069}",
            "mark\u{200F}",
            "line\u{2028}separator",
            "\u{FEFF}bom",
            &"x".repeat(MAX_NAME + 1),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
