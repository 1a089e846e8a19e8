//! Sending (seq assignment and idempotency) and history. The chat list is
//! in [`super::chat_list`].

use prost::Message as _;
use quip_protocol::v1::{self, ChatKind};

use super::{Actor, Delivery, ServiceError, accounts, blocking, log, receipts};
use crate::keys;
use crate::records::{self, ChatRecord, CursorRecord, IdemRecord, LogRecord};
use crate::store::{ReadTxn, Txn};

/// Largest history page.
pub const MAX_HISTORY: u32 = 200;
/// History page size when the request says 0.
pub const DEFAULT_HISTORY: u32 = 50;

/// Which chat a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The direct chat with this user (created by the first send).
    User(String),
    /// A chat by id.
    Chat(u64),
}

impl Target {
    /// From the `to_user`/`with_user` and `chat_id` fields: exactly one must be set.
    pub fn from_fields(user: &str, chat_id: u64) -> Result<Self, ServiceError> {
        match (user.is_empty(), chat_id) {
            (false, 0) => Ok(Self::User(user.to_owned())),
            (true, id) if id != 0 => Ok(Self::Chat(id)),
            (true, _) => Err(ServiceError::InvalidArgument("name a user or a chat_id".into())),
            (false, _) => Err(ServiceError::InvalidArgument(
                "set either a user or a chat_id, not both".into(),
            )),
        }
    }
}

/// Checks a send's fields before any storage work.
pub fn validate_send(client_msg_id: &str, content: Option<&v1::Content>, max_body: usize) -> Result<(), ServiceError> {
    if client_msg_id.is_empty() || client_msg_id.len() > 64 {
        return Err(ServiceError::InvalidArgument(
            "client_msg_id must be 1 to 64 bytes".into(),
        ));
    }
    let Some(c) = content else {
        return Err(ServiceError::InvalidArgument("content is required".into()));
    };
    let len = body_len(c);
    if c.text.is_empty() && c.payload.is_empty() && c.media.is_none() {
        return Err(ServiceError::InvalidArgument(
            "message has neither text, payload nor media".into(),
        ));
    }
    if len > max_body {
        return Err(ServiceError::BodyTooLarge { len, max: max_body });
    }
    Ok(())
}

/// The bytes of a message's content that count toward `max_body`: every
/// field the client chooses (text, payload, content_type, and the media
/// reference's id and file name). The server fills the rest of a media
/// reference from its own record, whose fields are bounded at upload. A
/// field left out here would let one stored message outgrow a frame and
/// break every page that holds it.
pub fn body_len(c: &v1::Content) -> usize {
    let media_len = c.media.as_ref().map_or(0, |m| m.media_id.len() + m.file_name.len());
    c.text.len() + c.payload.len() + c.content_type.len() + media_len
}

/// Makes a stored message fit in `max_bytes` of a reply: when it does not,
/// its content is left out and `content_omitted` says so. Only messages
/// stored before every client field counted toward the body limit can be
/// this large; without it one such message would fail every page that
/// holds it, for the sender and the recipients alike.
pub fn fit(mut msg: v1::Message, max_bytes: usize) -> v1::Message {
    if msg.encoded_len() > max_bytes {
        msg.content = None;
        msg.content_omitted = true;
    }
    msg
}

/// What a send produced.
pub struct Sent {
    /// The answer for the sender.
    pub response: v1::SendResponse,
    /// What to push once durable (nothing for a duplicate).
    pub delivery: Delivery,
    /// The peer of a direct chat (0 otherwise): with the chat id, the
    /// [`DirectHint`] for the sender's next send to them.
    pub direct_peer: u64,
}

/// Where an earlier send by name to the same user went (peer id, chat id),
/// remembered by the caller. Only used to fetch a send's reads together
/// ahead of time: a stale hint costs a round trip, never a wrong answer,
/// since every read is still made and checked.
pub type DirectHint = (u64, u64);

/// Stores a message: resolves (or creates) the chat, checks membership and
/// idempotency, assigns the next seq and appends to every participant's log.
pub fn send(
    txn: &mut dyn Txn,
    actor: &Actor,
    target: &Target,
    client_msg_id: &str,
    content: &v1::Content,
    now_ms: i64,
) -> Result<Sent, ServiceError> {
    send_hinted(txn, actor, target, None, client_msg_id, content, now_ms)
}

/// [`send`], with what the caller knows of where a send by name goes: on a
/// networked store all of a direct message's reads then cost one round
/// trip, instead of one for the user, one for the `dm/` entry and one for
/// the rest.
pub fn send_hinted(
    txn: &mut dyn Txn,
    actor: &Actor,
    target: &Target,
    hint: Option<DirectHint>,
    client_msg_id: &str,
    content: &v1::Content,
    now_ms: i64,
) -> Result<Sent, ServiceError> {
    prefetch_before_resolving(txn, actor, target, hint, client_msg_id)?;
    let (chat_id, mut chat, peer_name) = resolve_for_send(txn, actor, target)?;
    prefetch_for_send(txn, actor, chat_id, &chat, client_msg_id)?;
    let attached;
    let mut media_id = None;
    let content = match &content.media {
        Some(m) => {
            let mut media = m.clone();
            media_id = Some(super::media::attach(txn, actor, &mut media)?);
            attached = v1::Content {
                media: Some(media),
                ..content.clone()
            };
            &attached
        }
        None => content,
    };

    let idem_key = keys::idempotency(chat_id, actor.user_id, client_msg_id);
    if let Some(prev) = records::get::<IdemRecord>(txn, &idem_key)? {
        let key = keys::message(chat_id, prev.seq);
        let stored: v1::Message = records::get(txn, &key)?
            .ok_or_else(|| ServiceError::Internal("idempotency record points at a missing message".into()))?;
        if stored.content.as_ref() != Some(content) {
            return Err(ServiceError::IdempotencyConflict(client_msg_id.to_owned()));
        }
        return Ok(Sent {
            response: v1::SendResponse {
                chat_id,
                seq: prev.seq,
                sent_at_ms: stored.sent_at_ms,
                pos: prev.sender_pos,
                duplicate: true,
            },
            delivery: Delivery::default(),
            direct_peer: direct_peer_id(actor, &chat),
        });
    }

    let kind = chat.kind();
    if kind == ChatKind::Channel && !chat.members.contains(&actor.user_id) {
        return Err(ServiceError::Forbidden(format!(
            "only admins post in channel {chat_id}"
        )));
    }
    let msg = v1::Message {
        chat_id,
        seq: 0,
        sender: actor.username.clone(),
        sender_device: actor.device_id,
        recipient: peer_name,
        client_msg_id: client_msg_id.to_owned(),
        sent_at_ms: now_ms,
        content: Some(content.clone()),
        group_event: None,
        content_omitted: false,
    };
    let msg = store_message(txn, &mut chat, msg)?;
    let seq = msg.seq;
    if let Some(id) = &media_id {
        super::media::sent_in(txn, id, chat_id, seq)?;
    }

    // Replying implies having seen the chat: the sender's cursors move to
    // the new message, so their unread count stays "others' messages after
    // my read cursor".
    let ckey = keys::cursor(chat_id, actor.user_id);
    let old: CursorRecord = records::get(txn, &ckey)?.unwrap_or_default();
    let cur = CursorRecord {
        delivered: seq,
        read: seq,
        joined: old.joined,
        posted: true,
    };
    txn.set(&ckey, &cur.encode_to_vec());

    let mut delivery = Delivery::default();
    let mut sender_pos = 0;
    match kind {
        // Pull model: one stored message, announced to watching devices.
        ChatKind::Channel => delivery.channel_post = Some(msg),
        _ => {
            let mut recipients = Vec::with_capacity(chat.members.len());
            for &m in &chat.members {
                if kind == ChatKind::Direct && m != actor.user_id && blocking::blocks(txn, m, actor.user_id)? {
                    // Stored for the sender, never delivered to the blocker.
                    txn.set(&keys::hidden(chat_id, m, seq), b"");
                } else {
                    recipients.push(m);
                }
            }
            delivery.events = fan_out(txn, &recipients, &msg, Some((actor.user_id, actor.device_id)))?;
            sender_pos = delivery
                .events
                .iter()
                .find(|n| n.user_id == actor.user_id)
                .map_or(0, |n| n.event.pos);
        }
    }
    if kind == ChatKind::Group {
        delivery.events.extend(receipts::aggregate_change(
            txn,
            chat_id,
            &chat.members,
            Some(old),
            Some(cur),
        )?);
    } else if kind == ChatKind::Direct && old.read + 1 < seq {
        // The peers' messages before this one are now read: blue ticks for them.
        let receipt = v1::Receipt {
            chat_id,
            user: actor.username.clone(),
            kind: v1::ReceiptKind::Read as i32,
            seq: seq - 1,
            everyone: false,
        };
        for &member in chat.members.iter().filter(|&&m| m != actor.user_id) {
            let rec = LogRecord {
                chat_id,
                seq: 0,
                receipt: Some(receipt.clone()),
            };
            delivery.events.push(log::append(
                txn,
                member,
                &rec,
                v1::event::Kind::Receipt(receipt.clone()),
                None,
            )?);
        }
    }
    txn.set(&idem_key, &IdemRecord { seq, sender_pos }.encode_to_vec());
    Ok(Sent {
        response: v1::SendResponse {
            chat_id,
            seq,
            sent_at_ms: now_ms,
            pos: sender_pos,
            duplicate: false,
        },
        delivery,
        direct_peer: direct_peer_id(actor, &chat),
    })
}

/// Gives `msg` the chat's next seq, stores it and the chat record. The one
/// place a seq is assigned: messages and membership events alike.
pub fn store_message(
    txn: &mut dyn Txn,
    chat: &mut ChatRecord,
    mut msg: v1::Message,
) -> Result<v1::Message, ServiceError> {
    let seq = chat.last_seq + 1;
    msg.seq = seq;
    txn.set(&keys::message(msg.chat_id, seq), &msg.encode_to_vec());
    chat.last_seq = seq;
    chat.last_activity_ms = chat.last_activity_ms.max(msg.sent_at_ms);
    txn.set(&keys::chat(msg.chat_id), &chat.encode_to_vec());
    Ok(msg)
}

/// Appends `msg` to the log of each of `members`.
/// `skip` names the sending device, which learns its position from the
/// response instead of a push.
pub fn fan_out(
    txn: &mut dyn Txn,
    members: &[u64],
    msg: &v1::Message,
    skip: Option<(u64, u32)>,
) -> Result<Vec<super::Notification>, ServiceError> {
    let rec = LogRecord {
        chat_id: msg.chat_id,
        seq: msg.seq,
        receipt: None,
    };
    // One round trip for every member's log head on a networked store.
    let heads: Vec<Vec<u8>> = members.iter().map(|&m| keys::log_head(m)).collect();
    txn.prefetch(&heads.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    let mut out = Vec::with_capacity(members.len());
    for &member in members {
        let skip_device = skip.and_then(|(u, d)| (u == member).then_some(d));
        out.push(log::append(
            txn,
            member,
            &rec,
            v1::event::Kind::Message(msg.clone()),
            skip_device,
        )?);
    }
    Ok(out)
}

/// The other member of a direct chat, or 0.
fn direct_peer_id(actor: &Actor, chat: &ChatRecord) -> u64 {
    if chat.kind() != ChatKind::Direct {
        return 0;
    }
    chat.members.iter().copied().find(|&m| m != actor.user_id).unwrap_or(0)
}

/// Fetches together what a send reads before its chat is resolved, where
/// the chat is known: by id, or by name with a [`DirectHint`] (then the
/// peer's keys too, so that nothing is left for a second round trip).
fn prefetch_before_resolving(
    txn: &mut dyn Txn,
    actor: &Actor,
    target: &Target,
    hint: Option<DirectHint>,
    client_msg_id: &str,
) -> Result<(), ServiceError> {
    let (chat_id, mut wanted) = match (target, hint) {
        (Target::Chat(id), _) => (*id, Vec::with_capacity(5)),
        (Target::User(name), Some((peer, chat_id))) => {
            let wanted = vec![
                keys::user(name),
                keys::direct(actor.user_id, peer),
                keys::log_head(peer),
                keys::whereabouts(peer),
                keys::block(peer, actor.user_id),
            ];
            (chat_id, wanted)
        }
        (Target::User(_), None) => return Ok(()),
    };
    wanted.extend([
        keys::chat(chat_id),
        keys::idempotency(chat_id, actor.user_id, client_msg_id),
        keys::cursor(chat_id, actor.user_id),
        keys::log_head(actor.user_id),
        keys::whereabouts(actor.user_id),
    ]);
    txn.prefetch(&wanted.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    Ok(())
}

/// Fetches together what the rest of a send reads once its chat is known
/// (its idempotency record, the sender's cursor, the members' log heads,
/// block lists and, in a cluster, directory entries): on a networked store
/// one round trip instead of one per key, whatever the group's size.
fn prefetch_for_send(
    txn: &mut dyn Txn,
    actor: &Actor,
    chat_id: u64,
    chat: &ChatRecord,
    client_msg_id: &str,
) -> Result<(), ServiceError> {
    let direct = chat.kind() == ChatKind::Direct;
    let mut wanted = Vec::with_capacity(2 + 3 * chat.members.len());
    wanted.push(keys::idempotency(chat_id, actor.user_id, client_msg_id));
    wanted.push(keys::cursor(chat_id, actor.user_id));
    if chat.kind() != ChatKind::Channel {
        for &m in &chat.members {
            wanted.push(keys::log_head(m));
            wanted.push(keys::whereabouts(m));
            if direct && m != actor.user_id {
                wanted.push(keys::block(m, actor.user_id));
            }
        }
    }
    txn.prefetch(&wanted.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    Ok(())
}

/// Resolves a send's target, creating the direct chat on first contact.
/// Returns the chat id, its record and the direct peer's name.
fn resolve_for_send(
    txn: &mut dyn Txn,
    actor: &Actor,
    target: &Target,
) -> Result<(u64, ChatRecord, String), ServiceError> {
    match target {
        Target::User(name) => {
            if *name == actor.username {
                return Err(ServiceError::InvalidArgument(
                    "cannot send a message to yourself".into(),
                ));
            }
            let peer = accounts::find_user(txn, name)?.ok_or_else(|| no_user(name))?;
            let dm = keys::direct(actor.user_id, peer.id);
            let existing = txn.get(&dm)?;
            let chat_id = match existing {
                Some(b) => be_u64(&dm, &b)?,
                None => {
                    let ctr = keys::counter("chat");
                    let id = records::get_u64(txn, &ctr)? + 1;
                    txn.set(&ctr, &id.to_be_bytes());
                    txn.set(&dm, &id.to_be_bytes());
                    let mut members = vec![actor.user_id, peer.id];
                    members.sort_unstable();
                    let rec = ChatRecord {
                        kind: ChatKind::Direct as i32,
                        members,
                        ..ChatRecord::default()
                    };
                    txn.set(&keys::chat(id), &rec.encode_to_vec());
                    txn.set(&keys::user_chat(actor.user_id, id), b"");
                    txn.set(&keys::user_chat(peer.id, id), b"");
                    return Ok((id, rec, peer.username));
                }
            };
            let chat = load_chat(txn, chat_id)?;
            Ok((chat_id, chat, peer.username))
        }
        Target::Chat(id) => {
            let chat = member_chat(txn, actor, *id)?;
            let peer = direct_peer(txn, actor, &chat)?;
            Ok((*id, chat, peer))
        }
    }
}

fn no_user(name: &str) -> ServiceError {
    ServiceError::NotFound(format!("no user named {name:?}"))
}

fn be_u64(key: &[u8], b: &[u8]) -> Result<u64, ServiceError> {
    b.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| ServiceError::Internal(format!("corrupt id under {}", key.escape_ascii())))
}

/// Loads a chat by id: `NotFound` if it does not exist.
pub fn load_chat(txn: &mut dyn ReadTxn, chat_id: u64) -> Result<ChatRecord, ServiceError> {
    records::get(txn, &keys::chat(chat_id))?.ok_or_else(|| ServiceError::NotFound(format!("no chat {chat_id}")))
}

/// Loads a chat the actor belongs to: `NotFound` if it does not exist,
/// `Forbidden` if the actor is not a participant (member, subscriber).
pub fn member_chat(txn: &mut dyn ReadTxn, actor: &Actor, chat_id: u64) -> Result<ChatRecord, ServiceError> {
    let chat = load_chat(txn, chat_id)?;
    if is_member(txn, &chat, chat_id, actor.user_id)? {
        Ok(chat)
    } else {
        Err(ServiceError::Forbidden(format!(
            "you are not a participant of chat {chat_id}"
        )))
    }
}

/// Whether `uid` is a participant: a member of a direct chat or group, a
/// subscriber of a channel (a channel's record lists only its admins).
pub fn is_member(txn: &mut dyn ReadTxn, chat: &ChatRecord, chat_id: u64, uid: u64) -> Result<bool, ServiceError> {
    Ok(if chat.kind() == ChatKind::Channel {
        txn.get(&keys::user_chat(uid, chat_id))?.is_some()
    } else {
        chat.members.contains(&uid)
    })
}

/// The other participant's name in a direct chat ("" for other kinds).
pub(super) fn direct_peer(txn: &mut dyn ReadTxn, actor: &Actor, chat: &ChatRecord) -> Result<String, ServiceError> {
    if chat.kind() != ChatKind::Direct {
        return Ok(String::new());
    }
    let Some(&peer) = chat.members.iter().find(|&&m| m != actor.user_id) else {
        return Ok(String::new());
    };
    accounts::username(txn, peer)?.ok_or_else(|| ServiceError::Internal(format!("user {peer} has no name")))
}

/// Resolves a read request's target to a chat the actor is in.
pub fn resolve_for_read(
    txn: &mut dyn ReadTxn,
    actor: &Actor,
    target: &Target,
) -> Result<(u64, ChatRecord), ServiceError> {
    match target {
        Target::User(name) => {
            let peer = accounts::find_user(txn, name)?.ok_or_else(|| no_user(name))?;
            let dm = keys::direct(actor.user_id, peer.id);
            let b = txn
                .get(&dm)?
                .ok_or_else(|| ServiceError::NotFound(format!("no chat with {name:?} yet")))?;
            let id = be_u64(&dm, &b)?;
            Ok((id, member_chat(txn, actor, id)?))
        }
        Target::Chat(id) => Ok((*id, member_chat(txn, actor, *id)?)),
    }
}

/// Where a history page starts and which way it goes.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Only messages with seq below this (0: no upper bound).
    pub before: u64,
    /// When set: messages with seq above this, oldest first.
    pub after: Option<u64>,
    /// At most this many (0: the default).
    pub limit: u32,
}

/// A page of history. Backwards (the default): messages with seq < `before`
/// (0: newest), newest first. Forwards (`after` set): seq > `after`, oldest
/// first. A group member sees nothing from before they joined.
pub fn history(
    txn: &mut dyn ReadTxn,
    actor: &Actor,
    target: &Target,
    page: Page,
    max_bytes: usize,
) -> Result<v1::HistoryResponse, ServiceError> {
    let (chat_id, chat) = resolve_for_read(txn, actor, target)?;
    let limit = if page.limit == 0 {
        DEFAULT_HISTORY
    } else {
        page.limit.min(MAX_HISTORY)
    } as usize;
    // Retention deleted everything below the floor: start there, not at a
    // run of deleted keys (tombstones a log-structured store would walk).
    let floor = super::retention::message_floor(txn, chat_id)?;
    let first = if chat.kind() == ChatKind::Group {
        let mine: CursorRecord = records::get(txn, &keys::cursor(chat_id, actor.user_id))?.unwrap_or_default();
        mine.joined.max(floor)
    } else {
        floor
    };
    let end_seq = if page.before == 0 {
        chat.last_seq + 1
    } else {
        page.before.min(chat.last_seq + 1)
    };
    let forward = page.after.is_some();
    let start_seq = match page.after {
        Some(after) => first.max(after.saturating_add(1)),
        None => first,
    };
    let rows = txn.range(
        &keys::message(chat_id, start_seq),
        &keys::message(chat_id, end_seq.max(start_seq)),
        limit,
        !forward,
    )?;
    let hidden = if chat.kind() == ChatKind::Direct {
        blocking::hidden(txn, chat_id, actor.user_id, start_seq, end_seq)?
    } else {
        Default::default()
    };
    let mut messages = Vec::with_capacity(rows.len());
    let mut bytes = 0;
    for (k, v) in rows {
        let m: v1::Message = records::decode(&k, &v)?;
        if hidden.contains(&m.seq) {
            continue;
        }
        let m = fit(m, max_bytes);
        let len = m.encoded_len() + 8;
        if bytes + len > max_bytes && !messages.is_empty() {
            break;
        }
        bytes += len;
        messages.push(m);
    }
    let more = if forward {
        messages.last().is_some_and(|m: &v1::Message| m.seq + 1 < end_seq)
    } else {
        messages
            .last()
            .map_or(end_seq > start_seq, |m: &v1::Message| m.seq > start_seq)
    };
    Ok(v1::HistoryResponse {
        chat_id,
        messages,
        more,
        retained_from_seq: if floor > 1 { floor } else { 0 },
    })
}
