//! Who is online: a sans-IO state machine over connection events and time.
//!
//! A user is online while they have a connection, and for a grace period
//! after the last one ended without saying goodbye: a phone in a tunnel
//! that comes back on a new connection within the grace period never looks
//! offline to anyone, so observers see no offline/online flicker. The grace
//! period counts from the last packet heard: a connection that died of the
//! QUIC idle timeout was already silent for that long. A connection the
//! client closed itself ends presence at once.
//!
//! The tracker only decides; the caller feeds it events and the clock, and
//! publishes the [`Change`]s it returns. Tests drive it with made-up times.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client closed it (said goodbye): offline now.
    Closed,
    /// Lost (reset, network gone, server-side close): offline after the
    /// grace period unless the user comes back.
    Lost,
    /// Silent since `last_heard` (the idle timeout fired): offline at
    /// `last_heard` + grace.
    Silent {
        /// When the last packet arrived.
        last_heard: Instant,
    },
}

/// A presence transition to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The user came online (was offline).
    Online(u64),
    /// The user is offline; they were last heard at `last_seen`.
    Offline {
        /// The user.
        user: u64,
        /// Their last activity.
        last_seen: Instant,
    },
}

#[derive(Debug, Clone, Copy)]
struct State {
    connections: u32,
    /// Set while the user has no connection but is still in the grace period.
    offline_at: Option<(Instant, Instant)>,
}

/// Presence of every user with a connection or in a grace period.
#[derive(Debug)]
pub struct Tracker {
    grace: Duration,
    users: HashMap<u64, State>,
}

impl Tracker {
    /// A tracker with the given grace period.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            users: HashMap::new(),
        }
    }

    /// A connection of `user` was authenticated.
    pub fn connected(&mut self, user: u64) -> Option<Change> {
        let st = self.users.entry(user).or_insert(State {
            connections: 0,
            offline_at: None,
        });
        let was_online = st.connections > 0 || st.offline_at.is_some();
        st.connections += 1;
        st.offline_at = None;
        (!was_online).then_some(Change::Online(user))
    }

    /// A connection of `user` ended at `now`.
    pub fn disconnected(&mut self, user: u64, now: Instant, how: Ended) -> Option<Change> {
        let st = self.users.get_mut(&user)?;
        st.connections = st.connections.saturating_sub(1);
        if st.connections > 0 {
            return None;
        }
        let (deadline, last_seen) = match how {
            Ended::Closed => (now, now),
            Ended::Lost => (now + self.grace, now),
            Ended::Silent { last_heard } => (last_heard + self.grace, last_heard),
        };
        // A later end never shortens an earlier pending one's deadline.
        let deadline = st.offline_at.map_or(deadline, |(d, _)| d.max(deadline));
        if deadline <= now {
            self.users.remove(&user);
            return Some(Change::Offline { user, last_seen });
        }
        st.offline_at = Some((deadline, last_seen));
        None
    }

    /// Users whose grace period is over by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        self.users.retain(|&user, st| match st.offline_at {
            Some((deadline, last_seen)) if deadline <= now && st.connections == 0 => {
                out.push(Change::Offline { user, last_seen });
                false
            }
            _ => true,
        });
        out
    }

    /// Whether the user counts as online (connected or within grace).
    pub fn is_online(&self, user: u64) -> bool {
        self.users.contains_key(&user)
    }

    /// Live connections of a user.
    pub fn connections(&self, user: u64) -> u32 {
        self.users.get(&user).map_or(0, |s| s.connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn online_once_offline_after_grace() {
        let t0 = Instant::now();
        let mut t = Tracker::new(GRACE);
        assert_eq!(t.connected(1), Some(Change::Online(1)));
        assert_eq!(t.connected(1), None, "second device: no second event");
        assert_eq!(t.disconnected(1, t0, Ended::Lost), None);
        assert_eq!(t.disconnected(1, t0, Ended::Lost), None, "grace starts");
        assert!(t.is_online(1));
        assert!(t.expire(t0 + GRACE - Duration::from_millis(1)).is_empty());
        assert_eq!(t.expire(t0 + GRACE), vec![Change::Offline { user: 1, last_seen: t0 }]);
        assert!(!t.is_online(1));
        assert!(t.expire(t0 + GRACE * 2).is_empty(), "reported once");
    }

    #[test]
    fn reconnect_within_grace_is_invisible() {
        let t0 = Instant::now();
        let mut t = Tracker::new(GRACE);
        t.connected(7);
        t.disconnected(7, t0, Ended::Lost);
        assert_eq!(t.connected(7), None, "no online event: never went offline");
        assert!(t.expire(t0 + GRACE * 2).is_empty(), "no offline event either");
        assert_eq!(t.connections(7), 1);
    }

    #[test]
    fn silent_connection_counts_from_last_packet() {
        let t0 = Instant::now();
        let mut t = Tracker::new(GRACE);
        t.connected(3);
        // The idle timeout (30 s) fired: the grace is already used up.
        let now = t0 + GRACE;
        assert_eq!(
            t.disconnected(3, now, Ended::Silent { last_heard: t0 }),
            Some(Change::Offline { user: 3, last_seen: t0 })
        );
    }

    #[test]
    fn goodbye_is_immediate_and_unknown_users_are_ignored() {
        let t0 = Instant::now();
        let mut t = Tracker::new(GRACE);
        t.connected(2);
        assert_eq!(
            t.disconnected(2, t0, Ended::Closed),
            Some(Change::Offline { user: 2, last_seen: t0 })
        );
        assert_eq!(t.disconnected(9, t0, Ended::Lost), None);
    }
}
