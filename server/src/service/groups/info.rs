//! A group's or channel's description: members, admins, their join
//! points, and the counts a client shows.

use quip_protocol::v1::{self, ChatKind};

use super::super::{Actor, ServiceError, accounts};
use super::managed_chat;
use crate::keys;
use crate::records::{self, ChatRecord, CursorRecord};
use crate::store::ReadTxn;

/// A group's or channel's description, for a participant.
pub fn info(
    txn: &mut dyn ReadTxn,
    actor: &Actor,
    chat_id: u64,
    max_members: u32,
) -> Result<v1::ChatInfo, ServiceError> {
    let chat = managed_chat(txn, actor, chat_id)?;
    info_of(txn, chat_id, &chat, max_members)
}

pub(super) fn info_of(
    txn: &mut dyn ReadTxn,
    chat_id: u64,
    chat: &ChatRecord,
    max_members: u32,
) -> Result<v1::ChatInfo, ServiceError> {
    let kind = chat.kind();
    let mut members = Vec::with_capacity(chat.members.len());
    for &uid in &chat.members {
        let c: CursorRecord = records::get(txn, &keys::cursor(chat_id, uid))?.unwrap_or_default();
        members.push(v1::ChatMember {
            user: accounts::username(txn, uid)?.unwrap_or_default(),
            admin: chat.admins.contains(&uid),
            joined_seq: c.joined,
        });
    }
    let (member_count, max_members) = if kind == ChatKind::Channel {
        (chat.subscribers, 0)
    } else {
        (u32::try_from(chat.members.len()).unwrap_or(u32::MAX), max_members)
    };
    Ok(v1::ChatInfo {
        chat_id,
        kind: chat.kind,
        name: chat.name.clone(),
        members,
        member_count,
        last_seq: chat.last_seq,
        max_members,
    })
}
