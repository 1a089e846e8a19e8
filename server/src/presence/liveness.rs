//! The async shell around the presence [`Tracker`]: feeds it connection
//! events and the clock, and publishes what it decides.
//!
//! Publishing a change means recording last-seen in the store and pushing a
//! transient `Presence` event to the online devices of the user's contacts
//! (see [`crate::service::presence`] for who those are). That work runs on
//! one background task fed by a bounded queue, off the connection path;
//! when the queue is full a change is dropped with a warning: presence is
//! best-effort and anyone can pull the current state.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quip_protocol::v1;
use tokio::sync::mpsc;

use super::tracker::{Change, Ended, Tracker};
use crate::clock::Clock;
use crate::cluster::Node;
use crate::hub::Hub;
use crate::service::{ServiceError, accounts, presence};
use crate::store::{self, Store};

/// Queued presence changes before new ones are dropped.
const QUEUE: usize = 4096;

/// Presence of the users connected to this server.
#[derive(Debug)]
pub struct Liveness {
    tracker: Mutex<Tracker>,
    changes: mpsc::Sender<Change>,
    clock: Clock,
}

impl Liveness {
    /// Starts the publisher and the grace-period timer (inside a tokio runtime).
    ///
    /// In a cluster (once `cluster` is set) a user counts as online while
    /// any node holds a connection of theirs: a node whose last connection
    /// of the user ended announces nothing when the directory lists the
    /// user on another node, so a reconnect that lands on another node is
    /// never seen offline, and last seen is written by the node that saw
    /// the user last.
    pub fn start(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        grace: Duration,
        max_frame: usize,
        clock: Clock,
        cluster: Arc<OnceLock<Arc<Node>>>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let this = Arc::new(Self {
            tracker: Mutex::new(Tracker::new(grace)),
            changes: tx,
            clock,
        });
        tokio::spawn(publish(rx, store, hub, max_frame, clock, cluster));
        let weak = Arc::downgrade(&this);
        // Check often enough that an offline event is late by at most a
        // quarter of the grace period (and at most half a second).
        let tick = (grace / 4).clamp(Duration::from_millis(10), Duration::from_millis(500));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let expired = this.tracker.lock().expect("presence lock").expire(this.clock.now());
                for c in expired {
                    this.emit(c);
                }
            }
        });
        this
    }

    fn emit(&self, c: Change) {
        crate::metrics::user_online(matches!(c, Change::Online(_)));
        if self.changes.try_send(c).is_err() {
            tracing::warn!(?c, "presence queue full: change not published");
        }
    }

    /// A connection of `user` was authenticated.
    pub fn connected(&self, user: u64) {
        let c = self.tracker.lock().expect("presence lock").connected(user);
        if let Some(c) = c {
            self.emit(c);
        }
    }

    /// A connection of `user` ended.
    pub fn disconnected(&self, user: u64, how: Ended) {
        let c = self
            .tracker
            .lock()
            .expect("presence lock")
            .disconnected(user, self.clock.now(), how);
        if let Some(c) = c {
            self.emit(c);
        }
    }

    /// Whether `user` counts as online.
    pub fn is_online(&self, user: u64) -> bool {
        self.tracker.lock().expect("presence lock").is_online(user)
    }
}

async fn publish(
    mut rx: mpsc::Receiver<Change>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    max_frame: usize,
    clock: Clock,
    cluster: Arc<OnceLock<Arc<Node>>>,
) {
    while let Some(change) = rx.recv().await {
        let (user, online, last_seen_ms) = match change {
            Change::Online(u) => (u, true, 0),
            Change::Offline { user, last_seen } => (user, false, clock.wall_ms_at(last_seen)),
        };
        if let Some(node) = cluster.get() {
            match node.presence_changed(user, online).await {
                // Online on another node: that node speaks for the user.
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not update presence in the cluster directory"),
            }
        }
        if !online {
            let r = store::write(&*store, move |t| presence::set_last_seen(t, user, last_seen_ms)).await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not record last seen");
            }
        }
        let found = store::read(&*store, |t| {
            let targets = presence::push_targets(t, user)?;
            let name = accounts::username(t, user)?;
            Ok::<_, ServiceError>((targets, name))
        });
        let (targets, Some(name)) = (match found {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "could not resolve presence recipients");
                continue;
            }
        }) else {
            continue;
        };
        let event = v1::Event {
            pos: 0,
            kind: Some(v1::event::Kind::Presence(v1::Presence {
                user: name,
                online,
                last_seen_ms,
                visible: true,
            })),
        };
        match cluster.get() {
            Some(node) => node.push_transient(targets, 0, event, false),
            None => hub.push_event(&targets, 0, event, false, max_frame),
        }
    }
}
