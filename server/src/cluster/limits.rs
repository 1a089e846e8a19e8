//! Connection limits across the cluster: a user's connections on every
//! node count toward one per-user limit, and a device's toward one
//! per-device limit, so a client spreading over N nodes does not get N
//! times either.
//!
//! `conns/{user}` holds, per node and device, how many connections that
//! node holds. A node rewrites its own entries (from its hub) whenever one
//! of the user's connections opens or closes there; a new connection is
//! admitted in the same read-modify-write, so two nodes admitting one
//! user's connections at once conflict and one of them runs again with the
//! other's count. A dead node's entries go when it is buried.
//!
//! A device over its limit keeps its newest connection, as on one node:
//! connections on other nodes count as older than the one being admitted,
//! and the excess is closed there (close code 7) through their inboxes, in
//! the admitting transaction.

use prost::Message as _;

use super::inbox;
use crate::keys;
use crate::records::{self, ConnCount, ConnsRecord, DeviceClose};
use crate::service::ServiceError;
use crate::store::{ReadTxn, Txn};
use quip_protocol::CloseCode;

/// The user is at their connection limit on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyConnections;

/// Replaces `node`'s entries in `rec` with `mine` (device, count), keeping
/// the entries sorted and without zeros.
fn set_mine(rec: &mut ConnsRecord, node: u64, mine: &[(u32, u32)], now_ms: i64) {
    let since = |device: u32| {
        rec.counts
            .iter()
            .find(|c| c.node == node && c.device_id == device && c.count > 0)
            .map_or(now_ms, |c| c.since_ms)
    };
    let mine: Vec<ConnCount> = mine
        .iter()
        .filter(|m| m.1 > 0)
        .map(|&(device_id, count)| ConnCount {
            node,
            device_id,
            count,
            since_ms: since(device_id),
        })
        .collect();
    rec.counts.retain(|c| c.node != node && c.count > 0);
    rec.counts.extend(mine);
    rec.counts.sort_unstable_by_key(|c| (c.node, c.device_id));
}

/// Admits a new connection of `device` on `node`, whose hub (which already
/// holds it) has `mine` connections of the user per device. On success the
/// record lists `mine` for `node`, the device's connections elsewhere beyond
/// `per_device` are taken off, and those are returned as (node, how many)
/// to close there. Refused (and `rec` unchanged) when the user would have
/// more than `per_user` connections.
pub fn admit(
    rec: &mut ConnsRecord,
    (node, now_ms): (u64, i64),
    mine: &[(u32, u32)],
    device: u32,
    per_user: usize,
    per_device: usize,
) -> Result<Vec<(u64, u32)>, TooManyConnections> {
    let count = |f: &dyn Fn(&ConnCount) -> bool| -> usize {
        rec.counts
            .iter()
            .filter(|c| c.node != node && f(c))
            .map(|c| c.count as usize)
            .sum()
    };
    let here: usize = mine.iter().map(|m| m.1 as usize).sum();
    let here_device = mine.iter().find(|m| m.0 == device).map_or(0, |m| m.1 as usize);
    let elsewhere = count(&|_| true);
    let elsewhere_device = count(&|c| c.device_id == device);
    let mut excess = (here_device + elsewhere_device)
        .saturating_sub(per_device.max(1))
        .min(elsewhere_device);
    if here + elsewhere - excess > per_user.max(1) {
        return Err(TooManyConnections);
    }
    // Oldest first.
    let mut elsewhere: Vec<&mut ConnCount> = rec
        .counts
        .iter_mut()
        .filter(|c| c.node != node && c.device_id == device)
        .collect();
    elsewhere.sort_by_key(|c| c.since_ms);
    let mut closes = Vec::new();
    for c in elsewhere {
        if excess == 0 {
            break;
        }
        let n = excess.min(c.count as usize);
        c.count -= n as u32;
        excess -= n;
        closes.push((c.node, n as u32));
    }
    set_mine(rec, node, mine, now_ms);
    Ok(closes)
}

/// How many connections `user` has open on the cluster.
pub fn total(txn: &mut dyn ReadTxn, user: u64) -> Result<usize, ServiceError> {
    let rec: ConnsRecord = records::get(txn, &keys::conns(user))?.unwrap_or_default();
    Ok(rec.counts.iter().map(|c| c.count as usize).sum())
}

fn load(txn: &mut dyn Txn, user: u64) -> Result<ConnsRecord, ServiceError> {
    Ok(records::get(txn, &keys::conns(user))?.unwrap_or_default())
}

fn save(txn: &mut dyn Txn, user: u64, rec: &ConnsRecord) {
    if rec.counts.is_empty() {
        txn.clear(&keys::conns(user));
    } else {
        txn.set(&keys::conns(user), &rec.encode_to_vec());
    }
}

/// [`admit`] in `txn`, closing the replaced connections on their nodes.
pub fn admit_in(
    txn: &mut dyn Txn,
    user: u64,
    at: (u64, i64),
    mine: &[(u32, u32)],
    device: u32,
    (per_user, per_device): (usize, usize),
) -> Result<(), ServiceError> {
    let mut rec = load(txn, user)?;
    let closes = admit(&mut rec, at, mine, device, per_user, per_device)
        .map_err(|_| ServiceError::LimitExceeded(format!("at most {per_user} connections per user are allowed")))?;
    save(txn, user, &rec);
    for (other, n) in closes {
        let close = DeviceClose {
            user_id: user,
            device_id: device,
            code: CloseCode::Replaced.code(),
            reason: "replaced by a newer connection of this device".into(),
            oldest: n,
        };
        inbox::send_close_to(txn, other, close)?;
    }
    Ok(())
}

/// Makes `conns/{user}` list `mine` for `node` (a connection closed, or
/// the node died: `mine` empty).
pub fn set_in(
    txn: &mut dyn Txn,
    user: u64,
    (node, now_ms): (u64, i64),
    mine: &[(u32, u32)],
) -> Result<(), ServiceError> {
    let mut rec = load(txn, user)?;
    let before = rec.clone();
    set_mine(&mut rec, node, mine, now_ms);
    if rec != before {
        save(txn, user, &rec);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries (node, device, count, since).
    fn rec(entries: &[(u64, u32, u32, i64)]) -> ConnsRecord {
        let mut r = ConnsRecord {
            counts: entries
                .iter()
                .map(|&(node, device_id, count, since_ms)| ConnCount {
                    node,
                    device_id,
                    count,
                    since_ms,
                })
                .collect(),
        };
        r.counts.sort_unstable_by_key(|c| (c.node, c.device_id));
        r
    }

    #[test]
    fn the_user_limit_counts_every_node() {
        // Node 1 holds 2 connections, node 2 holds 1; limit 4.
        let mut r = rec(&[(1, 10, 1, 5), (1, 11, 1, 5), (2, 12, 1, 5)]);
        // Node 3 admits its first: 4 in all.
        assert_eq!(admit(&mut r, (3, 9), &[(13, 1)], 13, 4, 2), Ok(vec![]));
        assert_eq!(r, rec(&[(1, 10, 1, 5), (1, 11, 1, 5), (2, 12, 1, 5), (3, 13, 1, 9)]));
        // A fifth, on node 2: refused, nothing changes.
        let before = r.clone();
        assert_eq!(
            admit(&mut r, (2, 9), &[(12, 1), (14, 1)], 14, 4, 2),
            Err(TooManyConnections)
        );
        assert_eq!(r, before);
    }

    #[test]
    fn a_device_over_its_limit_replaces_its_oldest_connections_elsewhere() {
        // Device 10 has one connection on node 2 (older) and one on node 1.
        let mut r = rec(&[(1, 10, 1, 7), (2, 10, 1, 3)]);
        // A third, on node 3, limit 2: node 2's (the oldest) is closed.
        assert_eq!(admit(&mut r, (3, 9), &[(10, 1)], 10, 32, 2), Ok(vec![(2, 1)]));
        assert_eq!(r, rec(&[(1, 10, 1, 7), (3, 10, 1, 9)]));
        // With limit 1, a fourth on node 3 (whose hub replaced its own)
        // closes node 1's, and keeps node 3's age.
        assert_eq!(admit(&mut r, (3, 11), &[(10, 1)], 10, 32, 1), Ok(vec![(1, 1)]));
        assert_eq!(r, rec(&[(3, 10, 1, 9)]));
    }

    #[test]
    fn replacing_makes_room_under_the_user_limit() {
        // At the user limit (2), all of it one device on node 1: a reconnect
        // of that device on node 2 replaces instead of being refused.
        let mut r = rec(&[(1, 10, 2, 1)]);
        assert_eq!(admit(&mut r, (2, 4), &[(10, 1)], 10, 2, 2), Ok(vec![(1, 1)]));
        assert_eq!(r, rec(&[(1, 10, 1, 1), (2, 10, 1, 4)]));
    }

    #[test]
    fn a_node_rewrites_only_its_own_entries() {
        let mut r = rec(&[(1, 10, 1, 1), (2, 10, 1, 2), (2, 11, 2, 2)]);
        set_mine(&mut r, 2, &[(11, 1)], 8);
        assert_eq!(r, rec(&[(1, 10, 1, 1), (2, 11, 1, 2)]));
        set_mine(&mut r, 2, &[], 9);
        assert_eq!(r, rec(&[(1, 10, 1, 1)]));
    }
}
