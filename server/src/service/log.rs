//! The per-user log: the one ordered list of everything a user's devices must
//! learn (messages in their chats, receipts), shared by all their devices.
//!
//! Each device keeps only a position in it, so a device that was offline
//! catches up with one range read from its position: work proportional to
//! what it missed, not to the size of its chats' histories.

use prost::Message as _;
use quip_protocol::v1;

use super::{Notification, ServiceError};
use crate::keys;
use crate::records::{self, DeviceRecord, LogRecord};
use crate::store::{ReadTxn, Txn};

/// Largest sync page.
pub const MAX_SYNC: u32 = 500;

/// Appends `record` to `uid`'s log and returns the notification to push.
pub fn append(
    txn: &mut dyn Txn,
    uid: u64,
    record: &LogRecord,
    event: v1::event::Kind,
    skip_device: Option<u32>,
) -> Result<Notification, ServiceError> {
    let pos = head(txn, uid)? + 1;
    txn.set(&keys::log(uid, pos), &record.encode_to_vec());
    txn.set(&keys::log_head(uid), &pos.to_be_bytes());
    Ok(Notification {
        user_id: uid,
        chat_id: record.chat_id,
        event: v1::Event { pos, kind: Some(event) },
        skip_device,
    })
}

/// The newest position of `uid`'s log (0 when empty). A point read of the
/// head key: in a log-structured store a one-key reverse range read builds
/// an iterator over every level and cost a third of the writer's time per
/// message. Logs written before the head key existed have none; their last
/// key is the head.
pub fn head(txn: &mut dyn ReadTxn, uid: u64) -> Result<u64, ServiceError> {
    if let Some(v) = txn.get(&keys::log_head(uid))? {
        let bytes: [u8; 8] = v
            .as_slice()
            .try_into()
            .map_err(|_| ServiceError::Internal(format!("log head of user {uid} is {} bytes", v.len())))?;
        return Ok(u64::from_be_bytes(bytes));
    }
    let last = txn.range(&keys::log(uid, 0), &keys::log(uid, u64::MAX), 1, true)?;
    Ok(last.first().map_or(0, |(k, _)| pos_of(k)))
}

/// The position in a `log/` key.
fn pos_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8-byte suffix"))
}

/// One page of events after the device's acknowledged position.
pub struct SyncPage {
    /// Events, oldest first.
    pub events: Vec<v1::Event>,
    /// Whether more events follow.
    pub more: bool,
    /// The newest position in the log.
    pub head: u64,
    /// The device's acknowledged position.
    pub acked: u64,
    /// The oldest position retention left in the log (0: it never deleted
    /// any). Above `acked + 1`, the device missed events that expired.
    pub retained_from: u64,
}

/// Reads events after `device`'s position: at most `limit`, and at most
/// `max_bytes` of encoded events (so the response fits in one frame).
pub fn sync(
    txn: &mut dyn ReadTxn,
    uid: u64,
    device: u32,
    limit: u32,
    max_bytes: usize,
) -> Result<SyncPage, ServiceError> {
    let limit = if limit == 0 { MAX_SYNC } else { limit.min(MAX_SYNC) } as usize;
    let dev: DeviceRecord = records::get(txn, &keys::device(uid, device))?
        .ok_or_else(|| ServiceError::Unauthenticated("device no longer exists".into()))?;
    let head = head(txn, uid)?;
    // Below the floor retention deleted the entries: start at it, not at a
    // long run of deleted keys (tombstones a log-structured store walks).
    let floor = super::retention::log_floor(txn, uid)?;
    let settled = dev.acked_pos.max(floor - 1);
    let from = keys::log(uid, settled + 1);
    let to = keys::log(uid, u64::MAX);
    let rows = txn.range(&from, &to, limit, false)?;
    let records = rows
        .iter()
        .map(|(key, value)| Ok((pos_of(key), records::decode::<LogRecord>(key, value)?)))
        .collect::<Result<Vec<_>, ServiceError>>()?;
    // The messages the page points at, fetched together: one round trip on
    // a networked store instead of one per event.
    let wanted: Vec<Vec<u8>> = records
        .iter()
        .filter(|(_, r)| r.receipt.is_none())
        .map(|(_, r)| keys::message(r.chat_id, r.seq))
        .collect();
    txn.prefetch(&wanted.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    let mut events = Vec::with_capacity(records.len());
    let mut bytes = 0usize;
    let mut more = false;
    for (pos, rec) in records {
        let event = resolve(txn, pos, rec, max_bytes)?;
        let len = event.encoded_len() + 8;
        if bytes + len > max_bytes && !events.is_empty() {
            more = true;
            break;
        }
        bytes += len;
        events.push(event);
    }
    let last = events.last().map_or(settled, |e| e.pos);
    more |= last < head;
    Ok(SyncPage {
        events,
        more,
        head,
        acked: dev.acked_pos,
        retained_from: if floor > 1 { floor } else { 0 },
    })
}

/// Turns a log record into the event a client sees. An entry whose message
/// retention already deleted (the log is trimmed after the chats, and only
/// as a prefix) becomes an event without a kind: the device acknowledges
/// it and shows nothing, and its positions stay gap-free.
fn resolve(txn: &mut dyn ReadTxn, pos: u64, rec: LogRecord, max_bytes: usize) -> Result<v1::Event, ServiceError> {
    let kind = match rec.receipt {
        Some(r) => Some(v1::event::Kind::Receipt(r)),
        None => {
            let key = keys::message(rec.chat_id, rec.seq);
            match records::get::<v1::Message>(txn, &key)? {
                Some(msg) => Some(v1::event::Kind::Message(super::messages::fit(msg, max_bytes))),
                None if rec.seq < super::retention::message_floor(txn, rec.chat_id)? => None,
                None => return Err(ServiceError::Internal(format!("log {pos} points at missing message"))),
            }
        }
    };
    Ok(v1::Event { pos, kind })
}

/// Moves the device's position forward to `pos` (capped at the log head).
/// Returns the position after.
pub fn ack(txn: &mut dyn Txn, uid: u64, device: u32, pos: u64) -> Result<u64, ServiceError> {
    let key = keys::device(uid, device);
    let mut dev: DeviceRecord =
        records::get(txn, &key)?.ok_or_else(|| ServiceError::Unauthenticated("device no longer exists".into()))?;
    let head = head(txn, uid)?;
    let target = pos.min(head);
    if target > dev.acked_pos {
        dev.acked_pos = target;
        txn.set(&key, &dev.encode_to_vec());
    }
    Ok(dev.acked_pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{self, EngineKind, StoreError};

    fn record(seq: u64) -> LogRecord {
        LogRecord {
            chat_id: 1,
            seq,
            receipt: None,
        }
    }

    /// Data directories from before the `loghead/` key hold logs without
    /// one: their last entry is the head, and the first append after the
    /// upgrade continues from it and starts keeping the key.
    #[tokio::test]
    async fn a_log_without_a_head_key_continues_after_its_last_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::open_in(dir.path(), Some(EngineKind::Redb), 16).unwrap();
        store::write(&*store, |t| {
            for pos in 1..=3 {
                t.set(&keys::log(7, pos), &record(pos).encode_to_vec());
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        assert_eq!(store::read(&*store, |t| head(t, 7)).unwrap(), 3);

        let event = v1::event::Kind::Message(v1::Message::default());
        let n = store::write(&*store, move |t| append(t, 7, &record(4), event.clone(), None))
            .await
            .unwrap();
        assert_eq!(n.event.pos, 4);
        let (head_key, last) = store::read(&*store, |t| {
            Ok::<_, ServiceError>((t.get(&keys::log_head(7))?, head(t, 7)?))
        })
        .unwrap();
        assert_eq!(head_key.as_deref(), Some(&4u64.to_be_bytes()[..]));
        assert_eq!(last, 4);
        // Another user's log is untouched and still empty.
        assert_eq!(store::read(&*store, |t| head(t, 8)).unwrap(), 0);
    }
}
