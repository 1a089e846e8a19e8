//! The online-device registry and live push.
//!
//! A sharded map (dashmap) from user id to that user's connected devices, so
//! publishing to different users never contends on one lock. Each connection
//! has a bounded queue of encoded frames; publishing never waits on it. A
//! full queue means the client is not reading: the connection is closed as a
//! slow consumer (its events are in the log; it resyncs on reconnect), so one
//! stalled phone cannot grow the server's memory or slow anyone else.
//!
//! Channels are pull-model: their posts are in no user's log. The hub keeps,
//! per channel, the online devices of its subscribers ("watchers") and
//! announces each post to them once; nothing is kept for offline ones.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use quip_protocol::{Body, CloseCode, Envelope, frame_bytes};

use crate::service::{Delivery, Notification};

/// One frame to push: which chat (selects the lane) and its encoded bytes.
#[derive(Debug, Clone)]
pub struct Push {
    /// Chat id; the lane is `chat_id % push_lanes`.
    pub chat_id: u64,
    /// A complete frame.
    pub frame: Bytes,
    /// Worthless when late (typing): the transport may send it unreliably
    /// (a QUIC datagram), and it is dropped rather than queued when the
    /// connection is behind.
    pub unreliable: bool,
}

/// Asks a connection's driver to close it.
///
/// A lock and a `Notify` inside the connection's `Arc<Closer>` rather than a
/// watch channel: tokio's watch allocates a shared block with eight wakers
/// (~370 bytes) per channel, for one waiter that is woken at most once.
#[derive(Debug, Default)]
pub struct Closer {
    requested: std::sync::Mutex<Option<(CloseCode, String)>>,
    /// One waiter, the connection's driver; `notify_one` keeps the wake-up
    /// if the driver is not waiting yet.
    notify: tokio::sync::Notify,
}

impl Closer {
    /// A closer for a new connection, whose driver awaits [`Closer::requested`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Requests a close; the first request wins.
    pub fn close(&self, code: CloseCode, reason: impl Into<String>) {
        let mut requested = self.requested.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if requested.is_none() {
            *requested = Some((code, reason.into()));
            drop(requested);
            self.notify.notify_one();
        }
    }

    /// Notes a close the connection's driver makes itself (a protocol
    /// error, a handshake timeout, the drain) without waking it, so the
    /// log says why the connection ended; the first close noted or
    /// requested wins.
    pub fn note(&self, code: CloseCode, reason: &str) {
        let mut requested = self.requested.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if requested.is_none() {
            *requested = Some((code, reason.to_owned()));
        }
    }

    /// The first close requested or noted, if any.
    pub fn noted(&self) -> Option<(CloseCode, String)> {
        self.requested
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Resolves with the first close requested.
    pub async fn requested(&self) -> (CloseCode, String) {
        loop {
            if let Some(r) = self
                .requested
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
            {
                return r;
            }
            self.notify.notified().await;
        }
    }
}

/// The sending side of a connection's push queue.
pub type PushSender = flume::Sender<Push>;
/// The receiving side, drained by the connection's writer.
pub type PushReceiver = flume::Receiver<Push>;

/// A connection's push queue, holding at most `capacity` frames.
pub fn push_queue(capacity: usize) -> (PushSender, PushReceiver) {
    flume::bounded(capacity.max(1))
}

/// A connected, authenticated device.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    /// Unique per connection, to unregister exactly this one.
    pub conn_id: u64,
    /// The device.
    pub device_id: u32,
    /// Its push queue.
    pub tx: PushSender,
    /// Closes it.
    pub closer: Arc<Closer>,
    /// When its session token expires (ms since the Unix epoch): the
    /// connection is closed then, as a new one would be refused.
    pub expires_ms: i64,
}

/// Queues a frame for one device; a full queue closes it as a slow consumer
/// (an unreliable frame is just dropped).
fn push_to(d: &DeviceHandle, chat_id: u64, frame: Bytes, unreliable: bool) {
    match d.tx.try_send(Push {
        chat_id,
        frame,
        unreliable,
    }) {
        Ok(()) => {
            // Behind others: the client is reading slower than events come.
            // (An empty queue, the usual case, is not recorded.)
            let depth = d.tx.len();
            if depth > 1 {
                crate::metrics::push_backlog(depth - 1);
            }
        }
        Err(flume::TrySendError::Full(_)) if unreliable => {}
        Err(flume::TrySendError::Full(_)) => {
            d.closer
                .close(CloseCode::SlowConsumer, "push queue full: reconnect and sync");
        }
        Err(flume::TrySendError::Disconnected(_)) => {}
    }
}

/// A user already has as many connections as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyConnections;

/// Online devices by user, and the channels they watch.
#[derive(Debug, Default)]
pub struct Hub {
    users: DashMap<u64, Vec<DeviceHandle>>,
    /// Channel → online devices of its subscribers.
    channels: DashMap<u64, Vec<(u64, DeviceHandle)>>,
    /// Connection → the channels it watches, to unwatch them when it ends.
    watching: DashMap<u64, Vec<u64>>,
}

impl Hub {
    /// Marks a device online, within limits: a user may have at most
    /// `per_user` connections (else `Err`, and nothing changes); a device
    /// at most `per_device`: its oldest connections beyond that are
    /// returned, to be closed as replaced (a phone that reconnected before
    /// its old connection timed out replaces it).
    pub fn register(
        &self,
        user_id: u64,
        handle: DeviceHandle,
        per_user: usize,
        per_device: usize,
    ) -> Result<Vec<DeviceHandle>, TooManyConnections> {
        let mut devices = self.users.entry(user_id).or_default();
        let same: Vec<usize> = devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.device_id == handle.device_id)
            .map(|(i, _)| i)
            .collect();
        let excess = (same.len() + 1).saturating_sub(per_device.max(1));
        if devices.len() - excess >= per_user.max(1) {
            return Err(TooManyConnections);
        }
        // Oldest first: connections are appended in registration order.
        let replaced: Vec<DeviceHandle> = same[..excess].iter().rev().map(|&i| devices.remove(i)).collect();
        devices.push(handle);
        Ok(replaced)
    }

    /// Pushes one transient event (not in any log: presence, typing) to
    /// every online device of `users`, encoded once.
    pub fn push_event(
        &self,
        users: &[u64],
        chat_id: u64,
        event: quip_protocol::v1::Event,
        unreliable: bool,
        max_frame: usize,
    ) {
        let frame = match frame_bytes(&Envelope::new(0, Body::Event(event)), max_frame) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "transient event does not fit in a frame");
                return;
            }
        };
        for u in users {
            if let Some(devices) = self.users.get(u) {
                for d in devices.iter() {
                    push_to(d, chat_id, frame.clone(), unreliable);
                }
            }
        }
    }

    /// Marks a connection offline.
    pub fn unregister(&self, user_id: u64, conn_id: u64) {
        if let dashmap::Entry::Occupied(mut e) = self.users.entry(user_id) {
            e.get_mut().retain(|d| d.conn_id != conn_id);
            if e.get().is_empty() {
                e.remove();
            }
        }
        if let Some((_, chats)) = self.watching.remove(&conn_id) {
            for chat in chats {
                self.drop_watchers(chat, |(_, d)| d.conn_id == conn_id);
            }
        }
    }

    /// Lets a connected device watch channels for live posts.
    pub fn watch(&self, user_id: u64, handle: &DeviceHandle, chats: &[u64]) {
        for &chat in chats {
            let mut w = self.channels.entry(chat).or_default();
            if w.iter().any(|(_, d)| d.conn_id == handle.conn_id) {
                continue;
            }
            w.push((user_id, handle.clone()));
            drop(w);
            self.watching.entry(handle.conn_id).or_default().push(chat);
        }
    }

    fn drop_watchers(&self, chat: u64, mut gone: impl FnMut(&(u64, DeviceHandle)) -> bool) {
        if let dashmap::Entry::Occupied(mut e) = self.channels.entry(chat) {
            e.get_mut().retain(|w| !gone(w));
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// A user (un)subscribed: all their online devices start or stop watching.
    fn set_watch(&self, user_id: u64, chat: u64, on: bool) {
        if on {
            let devices: Vec<DeviceHandle> = self.users.get(&user_id).map(|d| d.clone()).unwrap_or_default();
            for d in &devices {
                self.watch(user_id, d, &[chat]);
            }
        } else {
            let mut conns = Vec::new();
            self.drop_watchers(chat, |(u, d)| {
                let hit = *u == user_id;
                if hit {
                    conns.push(d.conn_id);
                }
                hit
            });
            for c in conns {
                if let Some(mut w) = self.watching.get_mut(&c) {
                    w.retain(|&x| x != chat);
                }
            }
        }
    }

    /// Devices watching a channel (for tests and stats).
    pub fn watchers(&self, chat: u64) -> usize {
        self.channels.get(&chat).map_or(0, |w| w.len())
    }

    /// Pushes what one committed write produced: subscription changes
    /// first, then log events, then a channel announcement.
    pub fn deliver(&self, d: Delivery, max_frame: usize) {
        for (user, chat, on) in d.watch {
            self.set_watch(user, chat, on);
        }
        self.publish(d.events, max_frame);
        if let Some(msg) = d.channel_post {
            self.announce(msg, max_frame);
        }
    }

    /// Tells every device watching the message's channel that it advanced,
    /// with the message itself: encoded once, shared by all.
    fn announce(&self, msg: quip_protocol::v1::Message, max_frame: usize) {
        let chat_id = msg.chat_id;
        let Some(watchers) = self.channels.get(&chat_id) else {
            return;
        };
        let advanced = quip_protocol::v1::ChatAdvanced {
            chat_id,
            seq: msg.seq,
            message: Some(msg),
        };
        let event = quip_protocol::v1::Event {
            pos: 0,
            kind: Some(quip_protocol::v1::event::Kind::Advanced(advanced)),
        };
        let frame = match frame_bytes(&Envelope::new(0, Body::Event(event)), max_frame) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "channel post does not fit in a frame; watchers will pull it");
                return;
            }
        };
        for (_, d) in watchers.iter() {
            push_to(d, chat_id, frame.clone(), false);
        }
    }

    /// Closes every online device of these users: used when their pushes
    /// could not be queued, so they reconnect and sync what they missed.
    pub fn close_users(&self, users: impl IntoIterator<Item = u64>, reason: &str) {
        for u in users {
            if let Some(devices) = self.users.get(&u) {
                for d in devices.iter() {
                    d.closer.close(CloseCode::SlowConsumer, reason);
                }
            }
        }
    }

    /// Online devices of a user.
    pub fn devices(&self, user_id: u64) -> usize {
        self.users.get(&user_id).map_or(0, |d| d.len())
    }

    /// Users with a connection here, and connections here.
    pub fn totals(&self) -> (usize, usize) {
        self.users
            .iter()
            .filter(|e| !e.value().is_empty())
            .fold((0, 0), |(u, c), e| (u + 1, c + e.value().len()))
    }

    /// Pushes committed notifications to their users' online devices.
    pub fn publish(&self, notifications: Vec<Notification>, max_frame: usize) {
        for n in notifications {
            let Some(devices) = self.users.get(&n.user_id) else {
                continue;
            };
            let targets: Vec<&DeviceHandle> = devices.iter().filter(|d| Some(d.device_id) != n.skip_device).collect();
            if targets.is_empty() {
                continue;
            }
            // Encode once per user; every device shares the bytes.
            let env = Envelope::new(0, Body::Event(n.event));
            let frame = match frame_bytes(&env, max_frame) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "event does not fit in a frame; devices will get it by sync");
                    continue;
                }
            };
            for d in targets {
                push_to(d, n.chat_id, frame.clone(), false);
            }
        }
    }

    /// Closes every connection of one device: its token was revoked.
    pub fn close_device(&self, user_id: u64, device_id: u32, code: CloseCode, reason: &str) {
        self.close_oldest(user_id, device_id, usize::MAX, code, reason);
    }

    /// Closes up to `n` of a device's connections, oldest first (newer ones
    /// replaced them on other nodes).
    pub fn close_oldest(&self, user_id: u64, device_id: u32, n: usize, code: CloseCode, reason: &str) {
        if let Some(devices) = self.users.get(&user_id) {
            // Registration order is age order.
            for d in devices.iter().filter(|d| d.device_id == device_id).take(n) {
                d.closer.close(code, reason);
            }
        }
    }

    /// The user's connections here per device, sorted by device.
    pub fn device_counts(&self, user_id: u64) -> Vec<(u32, u32)> {
        let mut counts: Vec<(u32, u32)> = Vec::new();
        if let Some(devices) = self.users.get(&user_id) {
            for d in devices.iter() {
                match counts.binary_search_by_key(&d.device_id, |c| c.0) {
                    Ok(i) => counts[i].1 += 1,
                    Err(i) => counts.insert(i, (d.device_id, 1)),
                }
            }
        }
        counts
    }

    /// Closes every connection whose token has expired by `now_ms`; returns
    /// how many. Visits every online device: called about once a second,
    /// it costs a few milliseconds at 100,000 connections.
    pub fn close_expired(&self, now_ms: i64) -> usize {
        let mut closed = 0;
        for entry in self.users.iter() {
            for d in entry.value().iter().filter(|d| d.expires_ms <= now_ms) {
                d.closer
                    .close(CloseCode::SessionExpired, "session token expired: log in again");
                closed += 1;
            }
        }
        closed
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, code: CloseCode, reason: &str) {
        for entry in self.users.iter() {
            for d in entry.value() {
                d.closer.close(code, reason);
            }
        }
    }
}
