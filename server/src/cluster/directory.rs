//! The session directory: `where/{user}` lists the nodes holding the
//! user's connections (see the module docs of [`crate::cluster`]).

use prost::Message as _;

use super::Node;
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

/// Sets whether `node` is listed for `user`; whether that changed anything.
pub fn set_listed(txn: &mut dyn Txn, user: u64, node: u64, listed: bool) -> Result<bool, ServiceError> {
    let key = keys::whereabouts(user);
    let mut rec: WhereRecord = records::get(txn, &key)?.unwrap_or_default();
    match (listed, rec.nodes.binary_search(&node)) {
        (true, Err(i)) => {
            rec.nodes.insert(i, node);
            txn.set(&key, &rec.encode_to_vec());
            txn.set(&keys::node_user(node, user), b"");
            Ok(true)
        }
        (false, Ok(i)) => {
            rec.nodes.remove(i);
            if rec.nodes.is_empty() {
                txn.clear(&key);
            } else {
                txn.set(&key, &rec.encode_to_vec());
            }
            txn.clear(&keys::node_user(node, user));
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Brings `user`'s entry in line with this node's hub, durably. The hub is
/// read when the write runs, not when it was queued, so of several syncs
/// racing for one user the last one written reflects the latest state.
pub async fn sync(node: &Node, user: u64) -> Result<(), ServiceError> {
    let (hub, me) = (node.hub.clone(), node.id);
    store::write(&*node.store, move |t| {
        set_listed(t, user, me, hub.devices(user) > 0)?;
        Ok::<_, ServiceError>(())
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
        txn.clear(k);
    }
    Ok(rows.len())
}
