//! Blocking: a blocked user's direct messages are stored for them but never
//! reach the blocker, and nothing tells them so.
//!
//! A message sent to someone who blocks the sender gets its seq and "sent"
//! tick like any other and stays in the sender's history and log; for the
//! blocker it is marked hidden (`hide/`): not appended to their log, left
//! out of their history and chat list, and the sender never sees a
//! delivered or read tick for it, because the blocker's cursors are shown to
//! the sender only up to before the first hidden message.

use std::collections::BTreeSet;

use super::{Actor, ServiceError, accounts};
use crate::keys;
use crate::store::{ReadTxn, Txn};

/// Blocks or unblocks `user`; returns everyone the actor blocks, sorted.
pub fn set(txn: &mut dyn Txn, actor: &Actor, user: &str, unblock: bool) -> Result<Vec<String>, ServiceError> {
    if user == actor.username {
        return Err(ServiceError::InvalidArgument("you cannot block yourself".into()));
    }
    let target =
        accounts::find_user(txn, user)?.ok_or_else(|| ServiceError::NotFound(format!("no user named {user:?}")))?;
    let key = keys::block(actor.user_id, target.id);
    if unblock {
        txn.clear(&key);
    } else {
        txn.set(&key, b"");
    }
    list(txn, actor.user_id)
}

/// Everyone `uid` blocks, by name, sorted.
pub fn list(txn: &mut dyn ReadTxn, uid: u64) -> Result<Vec<String>, ServiceError> {
    let (from, to) = keys::blocks(uid);
    let mut out = Vec::new();
    for (k, _) in txn.range(&from, &to, usize::MAX, false)? {
        if let Some(id) = keys::chat_of_user_chat(&k)
            && let Some(name) = accounts::username(txn, id)?
        {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `by` blocks `whom`.
pub fn blocks(txn: &mut dyn ReadTxn, by: u64, whom: u64) -> Result<bool, ServiceError> {
    Ok(txn.get(&keys::block(by, whom))?.is_some())
}

/// The seqs in `[from, to)` of `chat` hidden from `uid`.
pub fn hidden(txn: &mut dyn ReadTxn, chat: u64, uid: u64, from: u64, to: u64) -> Result<BTreeSet<u64>, ServiceError> {
    if from >= to {
        return Ok(BTreeSet::new());
    }
    let rows = txn.range(
        &keys::hidden(chat, uid, from),
        &keys::hidden(chat, uid, to),
        usize::MAX,
        false,
    )?;
    Ok(rows.iter().filter_map(|(k, _)| keys::chat_of_user_chat(k)).collect())
}

/// The first seq of `chat` hidden from `uid`, if any.
pub fn first_hidden(txn: &mut dyn ReadTxn, chat: u64, uid: u64) -> Result<Option<u64>, ServiceError> {
    let rows = txn.range(
        &keys::hidden(chat, uid, 0),
        &keys::hidden(chat, uid, u64::MAX),
        1,
        false,
    )?;
    Ok(rows.first().and_then(|(k, _)| keys::chat_of_user_chat(k)))
}
