//! Who may see whose presence, and the settings and records behind it.
//!
//! Entitlement follows the user's last-seen setting: EVERYONE (any logged-in
//! user), CONTACTS (the default: users sharing a direct chat or a group
//! with them; channel subscribers are not contacts of each other) or
//! NOBODY. A user not entitled gets the same answer as for a user that does
//! not exist, so presence cannot be used to probe for accounts.
//!
//! Pushing is narrower than seeing: a presence change is pushed only to
//! direct-chat peers and members of groups of at most [`PUSH_GROUP_LIMIT`]
//! members. Members of bigger groups pull it ([`lookup`]) when they look,
//! so one user connecting never costs a push to thousands of devices.

use prost::Message as _;
use quip_protocol::v1::{self, ChatKind, GroupAdds, Visibility};

use super::{Actor, ServiceError, accounts, blocking, messages};
use crate::keys;
use crate::records::{self, UserRecord};
use crate::store::{ReadTxn, Txn};

/// Groups up to this size get their members' presence pushed.
pub const PUSH_GROUP_LIMIT: usize = 32;

/// Most users one presence request may name.
pub const MAX_LOOKUP: usize = 256;

fn visibility(user: &UserRecord) -> Visibility {
    match Visibility::try_from(user.last_seen_visibility) {
        Ok(Visibility::Unspecified) | Err(_) => Visibility::Contacts,
        Ok(v) => v,
    }
}

/// The users who share a chat with `uid`: direct peers and group members
/// (only groups up to `group_limit` members), without `uid`, deduplicated.
fn contacts(txn: &mut dyn ReadTxn, uid: u64, group_limit: usize) -> Result<Vec<u64>, ServiceError> {
    let (from, to) = keys::user_chats(uid);
    let mut out = Vec::new();
    for (k, _) in txn.range(&from, &to, usize::MAX, false)? {
        let Some(chat_id) = keys::chat_of_user_chat(&k) else {
            continue;
        };
        let chat = messages::load_chat(txn, chat_id)?;
        let fits = match chat.kind() {
            ChatKind::Direct => true,
            ChatKind::Group => chat.members.len() <= group_limit,
            _ => false,
        };
        if fits {
            out.extend(chat.members.iter().copied().filter(|&m| m != uid));
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Whose devices get `uid`'s presence changes pushed (before filtering by
/// who is online).
pub fn push_targets(txn: &mut dyn ReadTxn, uid: u64) -> Result<Vec<u64>, ServiceError> {
    let Some(name) = accounts::username(txn, uid)? else {
        return Ok(Vec::new());
    };
    let Some(user) = accounts::find_user(txn, &name)? else {
        return Ok(Vec::new());
    };
    if visibility(&user) == Visibility::Nobody {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for c in contacts(txn, uid, PUSH_GROUP_LIMIT)? {
        if !blocking::blocks(txn, uid, c)? {
            out.push(c);
        }
    }
    Ok(out)
}

/// Whether `viewer` shares a direct chat or a group with `subject`.
fn shares_chat(txn: &mut dyn ReadTxn, viewer: u64, subject: u64) -> Result<bool, ServiceError> {
    if txn.get(&keys::direct(viewer, subject))?.is_some() {
        return Ok(true);
    }
    Ok(contacts(txn, viewer, usize::MAX)?.binary_search(&subject).is_ok())
}

/// Presence of `names` as `viewer` may see it; `online` says whether a user
/// id is online now.
pub fn lookup(
    txn: &mut dyn ReadTxn,
    viewer: &Actor,
    names: &[String],
    online: &dyn Fn(u64) -> bool,
) -> Result<Vec<v1::Presence>, ServiceError> {
    if names.len() > MAX_LOOKUP {
        return Err(ServiceError::InvalidArgument(format!(
            "at most {MAX_LOOKUP} users per presence request"
        )));
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let hidden = v1::Presence {
            user: name.clone(),
            ..v1::Presence::default()
        };
        let Some(user) = accounts::find_user(txn, name)? else {
            out.push(hidden);
            continue;
        };
        let entitled = user.id == viewer.user_id
            || !blocking::blocks(txn, user.id, viewer.user_id)?
                && match visibility(&user) {
                    Visibility::Everyone => true,
                    Visibility::Nobody => false,
                    _ => shares_chat(txn, viewer.user_id, user.id)?,
                };
        if !entitled {
            out.push(hidden);
            continue;
        }
        let is_online = online(user.id);
        out.push(v1::Presence {
            user: name.clone(),
            online: is_online,
            last_seen_ms: if is_online { 0 } else { user.last_seen_ms },
            visible: true,
        });
    }
    Ok(out)
}

/// Records when the user was last online (never moving it back).
pub fn set_last_seen(txn: &mut dyn Txn, uid: u64, last_seen_ms: i64) -> Result<(), ServiceError> {
    update_user(txn, uid, |u| u.last_seen_ms = u.last_seen_ms.max(last_seen_ms))
}

/// Stores the user's settings (each UNSPECIFIED: unchanged) and returns
/// them as stored.
pub fn set_settings(
    txn: &mut dyn Txn,
    uid: u64,
    last_seen: Visibility,
    group_adds: GroupAdds,
) -> Result<(Visibility, GroupAdds), ServiceError> {
    if last_seen != Visibility::Unspecified || group_adds != GroupAdds::Unspecified {
        update_user(txn, uid, |u| {
            if last_seen != Visibility::Unspecified {
                u.last_seen_visibility = last_seen as i32;
            }
            if group_adds != GroupAdds::Unspecified {
                u.group_adds = group_adds as i32;
            }
        })?;
    }
    let name = accounts::username(txn, uid)?.unwrap_or_default();
    let user = accounts::find_user(txn, &name)?
        .ok_or_else(|| ServiceError::Unauthenticated("account no longer exists".into()))?;
    Ok((visibility(&user), group_adds_of(&user)))
}

/// Who may add the user to groups, as stored (the default: everyone).
pub fn group_adds_of(user: &UserRecord) -> GroupAdds {
    match GroupAdds::try_from(user.group_adds) {
        Ok(GroupAdds::Unspecified) | Err(_) => GroupAdds::Everyone,
        Ok(g) => g,
    }
}

fn update_user(txn: &mut dyn Txn, uid: u64, f: impl FnOnce(&mut UserRecord)) -> Result<(), ServiceError> {
    let Some(name) = accounts::username(txn, uid)? else {
        return Ok(());
    };
    let key = keys::user(&name);
    let Some(mut user) = records::get::<UserRecord>(txn, &key)? else {
        return Ok(());
    };
    f(&mut user);
    txn.set(&key, &user.encode_to_vec());
    Ok(())
}
