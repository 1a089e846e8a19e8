//! Which log positions this device has, and what it may acknowledge.
//!
//! Events arrive from several push lanes, sync pages and send replies, so
//! positions come out of order. Acknowledging position P promises the server
//! that everything up to P is here; acknowledging past a gap would lose the
//! missing event forever. So only the contiguous prefix is acknowledged.

use std::collections::BTreeSet;

/// Tracks received positions; sans-IO.
#[derive(Debug, Default, Clone)]
pub struct AckTracker {
    /// Every position up to this one has been received.
    contiguous: u64,
    /// Received positions above a gap.
    ahead: BTreeSet<u64>,
    /// The last position handed out by `take_ack`.
    acked: u64,
}

impl AckTracker {
    /// A tracker for a device whose server-side position is `acked`.
    pub fn new(acked: u64) -> Self {
        Self {
            contiguous: acked,
            ahead: BTreeSet::new(),
            acked,
        }
    }

    /// Learns the server's position for this device (from a sync page):
    /// everything up to it is settled, so tracking continues above it.
    pub fn server_position(&mut self, acked: u64) {
        if acked > self.contiguous {
            self.contiguous = acked;
            self.acked = self.acked.max(acked);
            self.ahead = self.ahead.split_off(&(acked + 1));
            while self.ahead.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        }
    }

    /// Learns that the server's retention policy deleted every position
    /// below `retained_from` (`SyncResponse.retained_from_pos`; 0: none):
    /// those will never arrive, so they are settled as if received, and a
    /// device that was away longer than the retention period acknowledges
    /// past them instead of waiting on a gap forever.
    /// Unlike [`AckTracker::server_position`] the jump is still to be
    /// acknowledged, so the server stops reporting the gap even when no
    /// event follows it.
    pub fn retained_from(&mut self, retained_from: u64) {
        let below = retained_from.saturating_sub(1);
        if below > self.contiguous {
            self.contiguous = below;
            self.ahead = self.ahead.split_off(&(below + 1));
            while self.ahead.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        }
    }

    /// Records a received position. Returns false for a duplicate.
    pub fn observe(&mut self, pos: u64) -> bool {
        if pos <= self.contiguous || !self.ahead.insert(pos) {
            return false;
        }
        while self.ahead.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }

    /// The position to acknowledge now, if it moved since the last call.
    pub fn take_ack(&mut self) -> Option<u64> {
        (self.contiguous > self.acked).then(|| {
            self.acked = self.contiguous;
            self.acked
        })
    }

    /// Highest position with no gap below it.
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_only_the_contiguous_prefix() {
        let mut t = AckTracker::new(0);
        assert!(t.observe(2));
        assert!(t.observe(3));
        assert_eq!(t.take_ack(), None, "1 is missing");
        assert!(t.observe(1));
        assert_eq!(t.take_ack(), Some(3));
        assert_eq!(t.take_ack(), None);
        assert!(!t.observe(2), "duplicate");
        assert!(t.observe(5));
        assert!(t.observe(4));
        assert_eq!(t.take_ack(), Some(5));
    }

    #[test]
    fn learns_the_server_position_later() {
        let mut t = AckTracker::new(0);
        t.observe(12); // pushed before the first sync page arrived
        t.server_position(10);
        assert_eq!(t.take_ack(), None, "11 is still missing");
        t.observe(11);
        assert_eq!(t.take_ack(), Some(12));
    }

    #[test]
    fn jumps_over_positions_retention_deleted() {
        let mut t = AckTracker::new(3);
        t.retained_from(0);
        t.retained_from(1);
        assert_eq!(t.take_ack(), None, "nothing was deleted");
        // Positions 4..=19 expired while the device was away; 20 is the
        // oldest left and arrives in the sync page.
        t.retained_from(20);
        assert_eq!(t.take_ack(), Some(19));
        assert!(t.observe(20));
        assert_eq!(t.take_ack(), Some(20));
        t.retained_from(5);
        assert_eq!(t.contiguous(), 20, "an older floor never moves it back");
    }

    #[test]
    fn starts_from_the_server_position() {
        let mut t = AckTracker::new(10);
        assert!(!t.observe(9));
        assert!(t.observe(11));
        assert_eq!(t.take_ack(), Some(11));
    }
}
