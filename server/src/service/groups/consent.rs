//! Who may be added to a group by whom: names resolved to users, and each
//! user's `GroupAdds` setting (everyone, contacts, nobody) and blocks.

use std::collections::BTreeMap;

use quip_protocol::v1::GroupAdds;

use super::super::{Actor, ServiceError, accounts, blocking, presence};
use crate::keys;
use crate::records::{self, CursorRecord};
use crate::store::ReadTxn;

/// Resolves usernames to ids (deduplicated, and without the actor unless
/// `with_self`), in name order. An unknown name fails the whole request.
pub(super) fn resolve_users(
    txn: &mut dyn ReadTxn,
    actor: &Actor,
    names: &[String],
    with_self: bool,
) -> Result<BTreeMap<String, u64>, ServiceError> {
    let mut out = BTreeMap::new();
    for name in names {
        if (*name == actor.username && !with_self) || out.contains_key(name) {
            continue;
        }
        let user =
            accounts::find_user(txn, name)?.ok_or_else(|| ServiceError::NotFound(format!("no user named {name:?}")))?;
        out.insert(name.clone(), user.id);
    }
    Ok(out)
}

/// Refuses adding users to a group unless each accepts adds from the actor
/// (`GroupAdds`): everyone, contacts (users they sent a direct message
/// to) or nobody. Someone who blocks the actor refuses like NOBODY, with the
/// same answer, so the actor cannot tell a block from a setting.
pub(super) fn check_may_add(
    txn: &mut dyn ReadTxn,
    actor: &Actor,
    users: &BTreeMap<String, u64>,
) -> Result<(), ServiceError> {
    for (name, &uid) in users {
        let Some(user) = accounts::find_user(txn, name)? else {
            continue;
        };
        let allowed = !blocking::blocks(txn, uid, actor.user_id)?
            && match presence::group_adds_of(&user) {
                GroupAdds::Nobody => false,
                GroupAdds::Contacts => has_messaged(txn, uid, actor.user_id)?,
                _ => true,
            };
        if !allowed {
            return Err(ServiceError::Forbidden(format!(
                "{name} does not accept being added to groups by you"
            )));
        }
    }
    Ok(())
}

/// Whether `from` has sent a direct message to `to`.
fn has_messaged(txn: &mut dyn ReadTxn, from: u64, to: u64) -> Result<bool, ServiceError> {
    let Some(b) = txn.get(&keys::direct(from, to))? else {
        return Ok(false);
    };
    let chat_id = b
        .as_slice()
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| ServiceError::Internal("corrupt direct chat record".into()))?;
    let cursor: CursorRecord = records::get(txn, &keys::cursor(chat_id, from))?.unwrap_or_default();
    Ok(cursor.posted)
}
