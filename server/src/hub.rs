//! The online-device registry and live push.
//!
//! A sharded map (dashmap) from user id to that user's connected devices, so
//! publishing to different users never contends on one lock. Each connection
//! has a bounded queue of encoded frames; publishing never waits on it. A
//! full queue means the client is not reading: the connection is closed as a
//! slow consumer (its events are in the log; it resyncs on reconnect), so one
//! stalled phone cannot grow the server's memory or slow anyone else.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use quip_protocol::{Body, CloseCode, Envelope, frame_bytes};
use tokio::sync::{mpsc, watch};

use crate::service::Notification;

/// One frame to push: which chat (selects the lane) and its encoded bytes.
#[derive(Debug, Clone)]
pub struct Push {
    /// Chat id; the lane is `chat_id % push_lanes`.
    pub chat_id: u64,
    /// A complete frame.
    pub frame: Bytes,
}

/// Asks a connection's driver to close it.
#[derive(Debug)]
pub struct Closer(watch::Sender<Option<(CloseCode, String)>>);

impl Closer {
    /// A closer and the receiver the connection driver watches.
    pub fn new() -> (Arc<Self>, watch::Receiver<Option<(CloseCode, String)>>) {
        let (tx, rx) = watch::channel(None);
        (Arc::new(Self(tx)), rx)
    }

    /// Requests a close; the first request wins.
    pub fn close(&self, code: CloseCode, reason: impl Into<String>) {
        let reason = reason.into();
        self.0.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some((code, reason));
                true
            } else {
                false
            }
        });
    }
}

/// A connected, authenticated device.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    /// Unique per connection, to unregister exactly this one.
    pub conn_id: u64,
    /// The device.
    pub device_id: u32,
    /// Its push queue.
    pub tx: mpsc::Sender<Push>,
    /// Closes it.
    pub closer: Arc<Closer>,
}

/// Online devices by user.
#[derive(Debug, Default)]
pub struct Hub {
    users: DashMap<u64, Vec<DeviceHandle>>,
}

impl Hub {
    /// Marks a device online.
    pub fn register(&self, user_id: u64, handle: DeviceHandle) {
        self.users.entry(user_id).or_default().push(handle);
    }

    /// Marks a connection offline.
    pub fn unregister(&self, user_id: u64, conn_id: u64) {
        if let dashmap::Entry::Occupied(mut e) = self.users.entry(user_id) {
            e.get_mut().retain(|d| d.conn_id != conn_id);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// Online devices of a user.
    pub fn devices(&self, user_id: u64) -> usize {
        self.users.get(&user_id).map_or(0, |d| d.len())
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
                let push = Push {
                    chat_id: n.chat_id,
                    frame: frame.clone(),
                };
                match d.tx.try_send(push) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        d.closer
                            .close(CloseCode::SlowConsumer, "push queue full: reconnect and sync");
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
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
