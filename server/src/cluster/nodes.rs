//! Node liveness: heartbeats, the list of live nodes, and burying dead
//! ones (see the module docs of [`crate::cluster`]).

use std::sync::{Arc, Weak};

use prost::Message as _;
use quip_protocol::CloseCode;

use super::{HEARTBEAT, LEASE, Node, directory};
use crate::keys;
use crate::records::{self, NodeRecord};
use crate::service::ServiceError;
use crate::store;

/// Keys a burial clears per transaction (well inside a transaction's size
/// and time limits).
const BURY_STEP: usize = 500;

/// Writes this node's record.
pub async fn register(node: &Node, addr: &str) -> Result<(), ServiceError> {
    let now = node.clock.wall_ms();
    let record = NodeRecord {
        started_ms: now,
        heartbeat_ms: now,
        addr: addr.to_owned(),
    };
    let key = keys::node(node.id);
    store::write(&*node.store, move |t| {
        t.set(&key, &record.encode_to_vec());
        Ok::<_, ServiceError>(())
    })
    .await?;
    refresh(node).await
}

/// Renews the heartbeat every [`HEARTBEAT`] and buries dead nodes, for as
/// long as the node lives.
pub async fn heartbeat(node: Weak<Node>, addr: String) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if let Err(e) = beat(&node, &addr).await {
            tracing::warn!(error = %e, "cluster heartbeat failed");
            continue;
        }
        if let Err(e) = refresh(&node).await {
            tracing::warn!(error = %e, "could not read the cluster's nodes");
        }
    }
}

/// Renews this node's heartbeat. A node whose record is gone was taken for
/// dead (its heartbeats stopped for longer than the lease): its directory
/// entries and inbox went with it, so its devices would miss pushes. It
/// closes every connection (the clients reconnect and sync), then registers
/// again.
async fn beat(node: &Arc<Node>, addr: &str) -> Result<(), ServiceError> {
    let key = keys::node(node.id);
    let now = node.clock.wall_ms();
    let alive = store::write(&*node.store, move |t| {
        let Some(mut record) = records::get::<NodeRecord>(t, &key)? else {
            return Ok::<_, ServiceError>(false);
        };
        record.heartbeat_ms = now;
        t.set(&key, &record.encode_to_vec());
        Ok(true)
    })
    .await?;
    if !alive {
        tracing::error!("this node was taken for dead by the cluster: closing its connections");
        node.hub
            .close_all(CloseCode::ServerShutdown, "node lost its cluster membership: reconnect");
        register(node, addr).await?;
    }
    Ok(())
}

/// Reads the nodes: keeps the live ones for channel posts, buries the dead.
async fn refresh(node: &Node) -> Result<(), ServiceError> {
    let (from, to) = keys::nodes();
    let rows = store::read(&*node.store, |t| {
        t.range(&from, &to, usize::MAX, false).map_err(ServiceError::from)
    })?;
    let now = node.clock.wall_ms();
    let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
    let mut live = Vec::new();
    for (k, v) in rows {
        let Some(id) = keys::node_of(&k) else { continue };
        let record: NodeRecord = records::decode(&k, &v)?;
        if now - record.heartbeat_ms <= lease || id == node.id {
            live.push(id);
        } else {
            bury(node, id).await?;
        }
    }
    // The lowest live node sweeps refilled throttle buckets, a step a beat.
    if live.first() == Some(&node.id) {
        sweep_throttles(node).await?;
    }
    *node.live.lock().expect("live nodes lock") = Arc::from(live);
    Ok(())
}

/// Clears up to [`BURY_STEP`] refilled throttle buckets, going on from where
/// the last sweep stopped.
async fn sweep_throttles(node: &Node) -> Result<(), ServiceError> {
    let from = node
        .sweep_from
        .lock()
        .expect("sweep cursor lock")
        .clone()
        .unwrap_or_else(|| keys::throttles().0);
    let now = node.clock.wall_ms();
    let next = store::write(&*node.store, move |t| {
        crate::service::throttle::sweep(t, &from, now, BURY_STEP)
    })
    .await?;
    *node.sweep_from.lock().expect("sweep cursor lock") = next;
    Ok(())
}

/// Removes a dead node's directory entries, inbox and record, a step at a
/// time. Several nodes may do it at once; they conflict and retry.
async fn bury(node: &Node, dead: u64) -> Result<(), ServiceError> {
    tracing::info!(node = format_args!("{dead:016x}"), "burying a dead cluster node");
    loop {
        // The inbox is read apart from the write: the write shares its
        // transaction with other writes of the batch, and one of them may
        // have appended to the dead node's inbox (under a versionstamped
        // key, which FoundationDB refuses to read back in the transaction
        // that wrote it: error 1036 would fail the whole batch). What is
        // appended after this read is cleared by a later step; appends stop
        // once the directory no longer lists the node.
        let (from, to) = keys::inbox_range(dead);
        let inbox: Vec<Vec<u8>> = store::read(&*node.store, |t| {
            Ok::<_, ServiceError>(
                t.range(&from, &to, BURY_STEP, false)?
                    .into_iter()
                    .map(|kv| kv.0)
                    .collect(),
            )
        })?;
        let left = store::write(&*node.store, move |t| {
            let forgot = directory::forget_node(t, dead, BURY_STEP)?;
            for k in &inbox {
                t.clear(k);
            }
            let left = forgot + inbox.len();
            if left == 0 {
                t.clear(&keys::doorbell(dead));
                t.clear(&keys::node(dead));
            }
            Ok::<_, ServiceError>(left)
        })
        .await?;
        if left == 0 {
            return Ok(());
        }
    }
}
