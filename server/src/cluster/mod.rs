//! Many quipd nodes on one FoundationDB: how a commit on one node reaches
//! devices connected to another.
//!
//! The store is the only thing nodes share; they never talk to each other.
//! That makes the failure story short: a node that dies loses nothing that
//! was committed, and nothing it was about to push.
//!
//! - **Directory** ([`directory`]): `where/{user}` lists the nodes holding
//!   the user's connections. A node adds itself, durably, before it
//!   welcomes the user's first connection there, and removes itself after
//!   the last one ends. Apart from that it lists the nodes on which the
//!   user counts as online (a foreground connection, or its grace period),
//!   written by each node's presence publisher: a node whose user went
//!   offline announces nothing while another node lists them online.
//! - **Inboxes** ([`inbox`]): a write that has something to push (a
//!   message, a receipt, a group change) reads the directory entries of its
//!   recipients *in its own transaction* and appends, in that same
//!   transaction, one entry per target node to `inbox/{node}` under a
//!   versionstamped key, ringing `bell/{node}` with an atomic add. So the
//!   push is committed exactly when the write is: if the sending node dies
//!   right after its commit, the recipient's node still pushes. Because the
//!   directory read is part of the transaction, a connection registering
//!   concurrently either is seen (and gets an entry) or commits after the
//!   write (and its device's sync, which follows the registration, reads
//!   the write). Versionstamps order entries by commit, so each node pushes
//!   every chat's events in commit order, its own writes included (they go
//!   through its inbox too: a local shortcut could overtake a remote
//!   commit).
//! - **Reading**: each node watches its own doorbell, one FoundationDB watch
//!   per node (not per device: a client has 10,000 by default), reads its
//!   inbox from where it left off, hands the entries to the ordinary
//!   fan-out, and clears them.
//! - **Transient events** (typing, presence, revoked devices) are pushed to
//!   local devices at once and reach other nodes through their inboxes in a
//!   small write of their own.
//! - **Node liveness** ([`nodes`]): each node heartbeats `node/{id}`; a
//!   node silent for [`LEASE`] is dead, and any node removes its directory
//!   entries and its inbox. Node ids are random per process start, so a
//!   restarted node never inherits a dead incarnation's state.
//!
//! - **Connection limits** ([`limits`]): per user and per device, counted
//!   over every node.
//!
//! What stays per node (documented in `spec/protocol.md`, "Clusters"):
//! request rate limits (bounded across the cluster by the connection
//! limits), the session cache (a revoked token is refused by other nodes
//! within its time to live), and 0-RTT session tickets.

pub mod directory;
pub mod inbox;
pub mod limits;
pub mod nodes;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quip_protocol::v1;

use crate::clock::Clock;
use crate::fanout::Fanout;
use crate::hub::Hub;
use crate::service::{Delivery, ServiceError};
use crate::store::{self, Store, Txn};

/// A node silent for this long counts as dead.
pub const LEASE: Duration = Duration::from_secs(10);

/// How often a node renews its heartbeat and looks for dead nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// This process as a member of a cluster.
pub struct Node {
    /// Random per process start.
    pub id: u64,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    fanout: Arc<Fanout>,
    clock: Clock,
    max_frame: usize,
    /// Nodes with a fresh heartbeat, for channel posts (every node may have
    /// watchers). Refreshed with each heartbeat.
    live: Mutex<Arc<[u64]>>,
    /// Where the next sweep of throttle buckets starts (`None`: the start).
    sweep_from: Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Node {
    /// Joins the cluster on `store`: registers this node, then starts its
    /// heartbeat, the dead-node sweep and the inbox reader (inside a tokio
    /// runtime).
    pub async fn start(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        fanout: Arc<Fanout>,
        clock: Clock,
        addr: String,
        max_frame: usize,
    ) -> Result<Arc<Self>, ServiceError> {
        let node = Arc::new(Self {
            id: rand::random::<u64>() >> 1 | 1,
            store,
            hub,
            fanout,
            clock,
            max_frame,
            live: Mutex::new(Arc::from(Vec::new())),
            sweep_from: Mutex::new(None),
        });
        nodes::register(&node, &addr).await?;
        tokio::spawn(nodes::heartbeat(Arc::downgrade(&node), addr));
        tokio::spawn(inbox::read(Arc::downgrade(&node)));
        tracing::info!(node = format_args!("{:016x}", node.id), "joined the cluster");
        Ok(node)
    }

    /// Adds to `txn` the inbox entries that push `delivery` to the nodes of
    /// its recipients, and takes it (nothing is left to push locally: this
    /// node's own devices get it through its inbox, in commit order).
    pub fn route(&self, txn: &mut dyn Txn, delivery: &mut Delivery) -> Result<(), ServiceError> {
        let d = std::mem::take(delivery);
        if d.is_empty() {
            return Ok(());
        }
        let live = self.live_nodes();
        for (node, record) in inbox::split(txn, d, &live)? {
            inbox::append(txn, node, &record)?;
        }
        Ok(())
    }

    /// Pushes a transient event (typing, presence) to `users`' devices,
    /// here at once and on other nodes through their inboxes.
    pub fn push_transient(self: &Arc<Self>, users: Vec<u64>, chat_id: u64, event: v1::Event, unreliable: bool) {
        self.hub
            .push_event(&users, chat_id, event.clone(), unreliable, self.max_frame);
        let this = self.clone();
        tokio::spawn(async move {
            let record = crate::records::TransientEvent {
                users,
                chat_id,
                event: Some(event),
                unreliable,
            };
            let r = store::write(&*this.store.clone(), move |t| {
                inbox::send_transient(t, this.id, &record)
            })
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not pass a transient event to other nodes");
            }
        });
    }

    /// Closes every connection of a device, on every node (its token was
    /// revoked). Waits until the other nodes' inboxes hold the close.
    pub async fn close_device(&self, user_id: u64, device_id: u32, code: quip_protocol::CloseCode, reason: &str) {
        self.hub.close_device(user_id, device_id, code, reason);
        let close = crate::records::DeviceClose {
            user_id,
            device_id,
            code: code.code(),
            reason: reason.to_owned(),
            oldest: 0,
        };
        let me = self.id;
        let r = store::write(&*self.store, move |t| inbox::send_close(t, me, &close)).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not pass a revocation to other nodes");
        }
    }

    /// Makes the directory say whether this node holds connections of
    /// `user`, as the hub says now; durable when it returns.
    pub async fn sync_directory(&self, user: u64) -> Result<(), ServiceError> {
        directory::sync(self, user).await
    }

    /// Lists this node in the directory for a new connection of `user`'s
    /// `device` (already in the hub), within the cluster-wide connection
    /// limits (per user, per device); durable when it returns.
    pub async fn admit_connection(&self, user: u64, device: u32, limits: (usize, usize)) -> Result<(), ServiceError> {
        directory::admit(self, user, device, limits).await
    }

    /// Records that `user` came online here or went offline here; whether
    /// they count as online on another node (then that node speaks for
    /// them and this one announces nothing).
    pub async fn presence_changed(&self, user: u64, online: bool) -> Result<bool, ServiceError> {
        let me = self.id;
        let others = store::write(&*self.store, move |t| directory::set_present(t, user, me, online)).await?;
        Ok(!others.is_empty())
    }

    /// How many connections `user` has open on the cluster.
    pub fn connections_of(&self, user: u64) -> Result<usize, ServiceError> {
        store::read(&*self.store, |t| limits::total(t, user))
    }

    /// Whether `user` counts as online on any node.
    pub fn online_anywhere(&self, user: u64) -> Result<bool, ServiceError> {
        Ok(!store::read(&*self.store, |t| directory::present_on(t, user))?.is_empty())
    }

    /// The live nodes' ids, ascending, as of the last heartbeat.
    pub(crate) fn live_nodes(&self) -> Arc<[u64]> {
        self.live.lock().expect("live nodes lock").clone()
    }
}
