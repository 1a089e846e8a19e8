//! Node inboxes: what commits ask each node to push, in commit order (see
//! the module docs of [`crate::cluster`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Weak;
use std::time::Duration;

use prost::Message as _;
use quip_protocol::CloseCode;
use quip_protocol::v1;

use super::{Node, directory};
use crate::keys;
use crate::records::{self, DeviceClose, InboxEvent, InboxRecord, TransientEvent, WatchChange};
use crate::service::{Delivery, Notification, ServiceError};
use crate::store::{self, ReadTxn, Txn};

/// Inbox entries read at a time.
const BATCH: usize = 256;

/// Messages up to this size travel inside inbox entries; larger ones are
/// read back from `msg/` by the receiving node (a stored value has a size
/// limit, and a batch of sends a byte budget).
const INLINE_CONTENT: usize = 8 << 10;

/// Largest inbox entry written, in bytes: inside FoundationDB's value
/// limit (100,000), which versionstamped values cannot be split around. A
/// delivery for more is written as several entries, in order.
const ENTRY_BYTES: usize = 64 << 10;

/// Splits a delivery by the nodes its recipients are on (read from the
/// directory in `txn`), as inbox entries in push order: several per node
/// when one would be too large. A channel post goes to every node in `live`.
pub fn split(txn: &mut dyn Txn, d: Delivery, live: &[u64]) -> Result<Vec<(u64, InboxRecord)>, ServiceError> {
    let mut per: BTreeMap<u64, Packer> = BTreeMap::new();
    // Every recipient's directory entry in one round trip.
    let mut users: Vec<u64> = d
        .events
        .iter()
        .map(|n| n.user_id)
        .chain(d.watch.iter().map(|w| w.0))
        .collect();
    users.sort_unstable();
    users.dedup();
    let keys: Vec<Vec<u8>> = users.iter().map(|&u| keys::whereabouts(u)).collect();
    txn.prefetch(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    let mut whereabouts: HashMap<u64, Vec<u64>> = HashMap::with_capacity(users.len());
    for u in users {
        whereabouts.insert(u, directory::nodes_of(txn, u)?);
    }
    for (user_id, chat_id, on) in d.watch {
        for &node in &whereabouts[&user_id] {
            per.entry(node).or_default().watch(WatchChange { user_id, chat_id, on });
        }
    }
    for n in d.events {
        let nodes = &whereabouts[&n.user_id];
        if nodes.is_empty() {
            continue;
        }
        let skip_device = n.skip_device.unwrap_or(0);
        match n.event.kind {
            Some(v1::event::Kind::Message(m)) => {
                let m = slim_message(m);
                for &node in nodes {
                    per.entry(node)
                        .or_default()
                        .message_event(n.user_id, n.chat_id, n.event.pos, skip_device, &m);
                }
            }
            kind => {
                let event = InboxEvent {
                    user_id: n.user_id,
                    chat_id: n.chat_id,
                    event: Some(v1::Event { pos: n.event.pos, kind }),
                    skip_device,
                    message: 0,
                };
                for &node in nodes {
                    per.entry(node).or_default().event(event.clone());
                }
            }
        }
    }
    if let Some(post) = d.channel_post {
        let post = slim_message(post);
        for &node in live {
            per.entry(node).or_default().post(post.clone());
        }
    }
    Ok(per
        .into_iter()
        .flat_map(|(node, p)| p.finish().into_iter().map(move |r| (node, r)))
        .collect())
}

/// Packs one node's share of a delivery into inbox entries of at most
/// [`ENTRY_BYTES`], each message stored once per entry however many
/// members' events refer to it.
#[derive(Default)]
struct Packer {
    done: Vec<InboxRecord>,
    current: InboxRecord,
    bytes: usize,
    /// (chat, seq) → 1 + index in `current.messages`.
    messages: HashMap<(u64, u64), u32>,
}

impl Packer {
    fn room(&mut self, bytes: usize) {
        if self.bytes > 0 && self.bytes + bytes > ENTRY_BYTES {
            self.done.push(std::mem::take(&mut self.current));
            self.messages.clear();
            self.bytes = 0;
        }
        self.bytes += bytes;
    }

    fn watch(&mut self, w: WatchChange) {
        self.room(32);
        self.current.watch.push(w);
    }

    fn event(&mut self, e: InboxEvent) {
        self.room(e.encoded_len() + 4);
        self.current.events.push(e);
    }

    fn message_event(&mut self, user_id: u64, chat_id: u64, pos: u64, skip_device: u32, m: &v1::Message) {
        let key = (m.chat_id, m.seq);
        let size = if self.messages.contains_key(&key) {
            0
        } else {
            m.encoded_len() + 8
        };
        self.room(size + 40);
        let index = match self.messages.get(&key) {
            Some(&i) => i,
            None => {
                self.current.messages.push(m.clone());
                let i = u32::try_from(self.current.messages.len()).unwrap_or(u32::MAX);
                self.messages.insert(key, i);
                i
            }
        };
        self.current.events.push(InboxEvent {
            user_id,
            chat_id,
            event: Some(v1::Event { pos, kind: None }),
            skip_device,
            message: index,
        });
    }

    fn post(&mut self, m: v1::Message) {
        self.room(m.encoded_len() + 8);
        self.current.channel_post = Some(m);
        // One post per entry: a later unit must not overwrite it.
        self.bytes = ENTRY_BYTES;
    }

    fn finish(mut self) -> Vec<InboxRecord> {
        if self.bytes > 0 {
            self.done.push(self.current);
        }
        self.done
    }
}

/// Appends `record` to `node`'s inbox and rings its doorbell.
pub fn append(txn: &mut dyn Txn, node: u64, record: &InboxRecord) -> Result<(), ServiceError> {
    txn.set_versionstamped(&keys::inbox(node), &record.encode_to_vec())?;
    txn.atomic_add(&keys::doorbell(node), 1)?;
    Ok(())
}

/// Passes a transient event to the other nodes holding its recipients.
pub fn send_transient(txn: &mut dyn Txn, me: u64, event: &TransientEvent) -> Result<(), ServiceError> {
    let mut per: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &u in &event.users {
        for node in directory::nodes_of(txn, u)? {
            if node != me {
                per.entry(node).or_default().push(u);
            }
        }
    }
    for (node, users) in per {
        let record = InboxRecord {
            transient: vec![TransientEvent { users, ..event.clone() }],
            ..InboxRecord::default()
        };
        append(txn, node, &record)?;
    }
    Ok(())
}

/// Passes a device close to the other nodes holding its user.
pub fn send_close(txn: &mut dyn Txn, me: u64, close: &DeviceClose) -> Result<(), ServiceError> {
    for node in directory::nodes_of(txn, close.user_id)? {
        if node != me {
            send_close_to(txn, node, close.clone())?;
        }
    }
    Ok(())
}

/// Passes a device close to one node.
pub fn send_close_to(txn: &mut dyn Txn, node: u64, close: DeviceClose) -> Result<(), ServiceError> {
    let record = InboxRecord {
        closes: vec![close],
        ..InboxRecord::default()
    };
    append(txn, node, &record)
}

/// A message without its content when the content is large (see
/// [`INLINE_CONTENT`]); the receiving node reads it back from `msg/`.
fn slim_message(mut m: v1::Message) -> v1::Message {
    if m.content.as_ref().is_some_and(|c| c.encoded_len() > INLINE_CONTENT) {
        m.content = None;
    }
    m
}

/// Puts back content that [`slim_message`] left out, from `msg/`.
fn fill_message(txn: &mut dyn ReadTxn, m: &mut v1::Message) -> Result<(), ServiceError> {
    if m.content.is_none()
        && !m.content_omitted
        && m.group_event.is_none()
        && let Some(stored) = records::get::<v1::Message>(txn, &keys::message(m.chat_id, m.seq))?
    {
        m.content = stored.content;
    }
    Ok(())
}

fn fill(txn: &mut dyn ReadTxn, record: &mut InboxRecord) -> Result<(), ServiceError> {
    for m in &mut record.messages {
        fill_message(txn, m)?;
    }
    if let Some(m) = &mut record.channel_post {
        fill_message(txn, m)?;
    }
    Ok(())
}

/// Reads this node's inbox for as long as the node lives: everything there
/// is pushed to local devices, in order, then cleared.
pub async fn read(node: Weak<Node>) {
    let Some((id, store)) = node.upgrade().map(|n| (n.id, n.store.clone())) else {
        return;
    };
    let (mut from, end) = keys::inbox_range(id);
    let bell = keys::doorbell(id);
    loop {
        let (f, e, b, s) = (from.clone(), end.clone(), bell.clone(), store.clone());
        let batch = tokio::task::spawn_blocking(move || {
            store::read(&*s, |t| {
                let rung = t.get(&b)?;
                let mut rows = Vec::new();
                for (k, v) in t.range(&f, &e, BATCH, false)? {
                    let mut record: InboxRecord = records::decode(&k, &v)?;
                    fill(t, &mut record)?;
                    rows.push((k, record));
                }
                Ok::<_, ServiceError>((rung, rows))
            })
        })
        .await;
        let (rung, rows) = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not read this node's inbox; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => return, // the runtime is shutting down
        };
        let Some(node) = node.upgrade() else { return };
        let full = rows.len() == BATCH;
        if let Some((last, _)) = rows.last() {
            from = last.clone();
            from.push(0);
        }
        let mut done = Vec::with_capacity(rows.len());
        for (k, record) in rows {
            node.deliver(record);
            done.push(k);
        }
        drop(node);
        if !done.is_empty() {
            // Cleared behind the reader, which never reads back: no need to wait.
            let r = store::enqueue_write(&*store, move |t| {
                for k in &done {
                    t.clear(k);
                }
                Ok::<_, ServiceError>(())
            })
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not clear delivered inbox entries");
            }
        }
        if !full && let Err(e) = store.watch(&bell, rung).await {
            tracing::warn!(error = %e, "watching this node's doorbell failed; polling");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Node {
    /// Pushes one inbox entry to this node's devices.
    fn deliver(&self, record: InboxRecord) {
        let delivery = Delivery {
            watch: record.watch.iter().map(|w| (w.user_id, w.chat_id, w.on)).collect(),
            events: record
                .events
                .into_iter()
                .filter_map(|e| {
                    let mut event = e.event?;
                    if e.message > 0 {
                        let m = record.messages.get(usize::try_from(e.message - 1).ok()?)?;
                        event.kind = Some(v1::event::Kind::Message(m.clone()));
                    }
                    Some(Notification {
                        user_id: e.user_id,
                        chat_id: e.chat_id,
                        event,
                        skip_device: (e.skip_device != 0).then_some(e.skip_device),
                    })
                })
                .collect(),
            channel_post: record.channel_post,
        };
        self.fanout.submit(delivery);
        for t in record.transient {
            if let Some(event) = t.event {
                self.hub
                    .push_event(&t.users, t.chat_id, event, t.unreliable, self.max_frame);
            }
        }
        for c in record.closes {
            let code = u64::from(c.code);
            let code = CloseCode::from_code(code).unwrap_or(CloseCode::LoggedOut);
            let n = if c.oldest == 0 { usize::MAX } else { c.oldest as usize };
            self.hub.close_oldest(c.user_id, c.device_id, n, code, &c.reason);
        }
    }
}
