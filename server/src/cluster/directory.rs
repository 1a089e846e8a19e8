//! The session directory: `where/{user}` lists the nodes holding the
//! user's connections, and those on which the user counts as online (see
//! the module docs of [`crate::cluster`]).

use prost::Message as _;

use super::{Node, limits};
use crate::keys;
use crate::records::{self, WhereRecord};
use crate::service::ServiceError;
use crate::store::{self, ReadTxn, Txn};

/// The nodes holding connections of `user`, as of `txn`. Read inside a
/// write, it makes the write conflict with a concurrent registration, which
/// is what lets no push fall between a registration and a commit.
pub fn nodes_of(txn: &mut dyn ReadTxn, user: u64) -> Result<Vec<u64>, ServiceError> {
    Ok(records::get::<WhereRecord>(txn, &keys::whereabouts(user))?.map_or_else(Vec::new, |r| r.nodes))
}

/// The nodes on which `user` counts as online.
pub fn present_on(txn: &mut dyn ReadTxn, user: u64) -> Result<Vec<u64>, ServiceError> {
    Ok(records::get::<WhereRecord>(txn, &keys::whereabouts(user))?.map_or_else(Vec::new, |r| r.present))
}

/// Sets whether `node` is listed for `user` (it holds a connection);
/// whether that changed anything.
pub fn set_listed(txn: &mut dyn Txn, user: u64, node: u64, listed: bool) -> Result<bool, ServiceError> {
    update(txn, user, node, |rec| set_in(&mut rec.nodes, node, listed))
}

/// Sets whether `user` counts as online on `node`; the other nodes on which
/// they do.
pub fn set_present(txn: &mut dyn Txn, user: u64, node: u64, present: bool) -> Result<Vec<u64>, ServiceError> {
    let mut others = Vec::new();
    update(txn, user, node, |rec| {
        let changed = set_in(&mut rec.present, node, present);
        others = rec.present.iter().copied().filter(|&n| n != node).collect();
        changed
    })?;
    Ok(others)
}

/// Adds `node` to or removes it from a sorted list; whether it changed.
fn set_in(list: &mut Vec<u64>, node: u64, on: bool) -> bool {
    match (on, list.binary_search(&node)) {
        (true, Err(i)) => list.insert(i, node),
        (false, Ok(i)) => {
            list.remove(i);
        }
        _ => return false,
    }
    true
}

/// Reads `user`'s record, lets `change` edit it, writes it back if it
/// changed (clearing it once empty), keeping `nodeusr/` in step.
fn update(
    txn: &mut dyn Txn,
    user: u64,
    node: u64,
    change: impl FnOnce(&mut WhereRecord) -> bool,
) -> Result<bool, ServiceError> {
    let key = keys::whereabouts(user);
    let mut rec: WhereRecord = records::get(txn, &key)?.unwrap_or_default();
    if !change(&mut rec) {
        return Ok(false);
    }
    if rec.nodes.is_empty() && rec.present.is_empty() {
        txn.clear(&key);
    } else {
        txn.set(&key, &rec.encode_to_vec());
    }
    if rec.nodes.contains(&node) || rec.present.contains(&node) {
        txn.set(&keys::node_user(node, user), b"");
    } else {
        txn.clear(&keys::node_user(node, user));
    }
    Ok(true)
}

/// Brings `user`'s entry in line with this node's hub, durably. The hub is
/// read when the write runs, not when it was queued, so of several syncs
/// racing for one user the last one written reflects the latest state.
pub async fn sync(node: &Node, user: u64) -> Result<(), ServiceError> {
    let (hub, me, now) = (node.hub.clone(), node.id, node.clock.wall_ms());
    store::write(&*node.store, move |t| {
        let mine = hub.device_counts(user);
        set_listed(t, user, me, !mine.is_empty())?;
        limits::set_in(t, user, (me, now), &mine)
    })
    .await
}

/// Like [`sync`], for a connection of `device` being admitted: refused
/// when the user has `limits.0` connections on the cluster; replaces the
/// device's connections on other nodes beyond `limits.1`.
pub async fn admit(node: &Node, user: u64, device: u32, limits: (usize, usize)) -> Result<(), ServiceError> {
    let (hub, me, now) = (node.hub.clone(), node.id, node.clock.wall_ms());
    store::write(&*node.store, move |t| {
        let mine = hub.device_counts(user);
        limits::admit_in(t, user, (me, now), &mine, device, limits)?;
        set_listed(t, user, me, !mine.is_empty())?;
        Ok(())
    })
    .await
}

/// Removes a dead node from up to `limit` of its users' entries; how many
/// it removed (0: none left).
pub fn forget_node(txn: &mut dyn Txn, dead: u64, limit: usize) -> Result<usize, ServiceError> {
    let (from, to) = keys::node_users(dead);
    let rows = txn.range(&from, &to, limit, false)?;
    for (k, _) in &rows {
        let Some(user) = k
            .get(k.len() - 8..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            continue;
        };
        set_listed(txn, user, dead, false)?;
        set_present(txn, user, dead, false)?;
        limits::set_in(txn, user, (dead, 0), &[])?;
        txn.clear(k);
    }
    Ok(rows.len())
}
