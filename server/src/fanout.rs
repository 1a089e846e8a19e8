//! Ordered fan-out of committed writes, off the commit path.
//!
//! The store calls each write's completion in commit order on its writer
//! thread. Pushing there would make every commit wait for encoding and
//! queueing frames for hundreds of group members, and pushing from each
//! request's own task would let two sends into one chat race and reach
//! devices out of order. So the completion only hands the write's
//! [`Delivery`] to one of a few shard tasks, chosen by chat id: one chat's
//! deliveries stay in commit order (one queue, one consumer), different
//! chats spread over cores, and the sender's "sent" reply never waits for
//! the fan-out.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::service::Delivery;

/// The shard queues. Cheap to share.
#[derive(Debug)]
pub struct Fanout {
    shards: Vec<mpsc::Sender<Delivery>>,
    hub: Arc<Hub>,
}

impl Fanout {
    /// Starts `shards` delivery tasks (on the current tokio runtime), each
    /// with a queue of `depth` deliveries.
    pub fn start(hub: Arc<Hub>, shards: usize, depth: usize, max_frame: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Delivery>(depth.max(1));
                let hub = hub.clone();
                tokio::spawn(async move {
                    while let Some(d) = rx.recv().await {
                        hub.deliver(d, max_frame);
                    }
                });
                tx
            })
            .collect();
        Self { shards, hub }
    }

    /// Queues a committed write's delivery without waiting. If its shard is
    /// full (the server cannot keep up with pushing), the recipients'
    /// devices are disconnected instead: the events are in their logs and
    /// they sync on reconnect, so a push is never silently lost.
    pub fn submit(&self, d: Delivery) {
        if d.is_empty() {
            return;
        }
        let n = self.shards.len() as u64;
        let shard = usize::try_from(d.chat_id().unwrap_or(0) % n).unwrap_or(0);
        match self.shards[shard].try_send(d) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(d)) => {
                tracing::warn!("fan-out queue full: disconnecting recipients so they resync");
                self.hub.close_users(
                    d.events.iter().map(|n| n.user_id),
                    "server push backlog: reconnect and sync",
                );
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
