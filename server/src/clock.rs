//! The time the session, its budgets and presence read: the machine's in
//! production, a virtual one that tests move by hand.
//!
//! Token expiry, throttles, rate limits, the 0-RTT wait and the presence
//! grace period all depend on time. Read through a [`Clock`], they can be
//! tested without sleeping: under a paused tokio runtime
//! (`#[tokio::test(start_paused = true)]`) a [`Clock::following_tokio`]
//! moves, wall time included, exactly when the test calls
//! `tokio::time::advance`, and timers (`tokio::time::timeout`, intervals)
//! fire in step with it. The session harness (`session/tests`) drives
//! connections this way.
//!
//! Monotonic instants come from tokio's clock, which is the system's
//! `Instant` unless a test pauses it, so production pays nothing for this.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where wall time comes from (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    /// For a virtual clock: the wall time (ms since the Unix epoch) at a
    /// tokio instant; wall time then advances with tokio's clock.
    origin: Option<(i64, tokio::time::Instant)>,
}

impl Clock {
    /// The machine's clocks.
    pub const fn system() -> Self {
        Self { origin: None }
    }

    /// A clock whose wall time is `wall_ms` now and then advances with
    /// tokio's clock (paused in tests, so it moves only when they say).
    pub fn following_tokio(wall_ms: i64) -> Self {
        Self {
            origin: Some((wall_ms, tokio::time::Instant::now())),
        }
    }

    /// Now, for durations and deadlines.
    pub fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Now as wall time: milliseconds since the Unix epoch.
    pub fn wall_ms(&self) -> i64 {
        match self.origin {
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Some((wall, at)) => wall.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX)),
        }
    }

    /// The wall time of an earlier instant of [`Clock::now`].
    pub fn wall_ms_at(&self, at: Instant) -> i64 {
        let ago = self.now().saturating_duration_since(at);
        self.wall_ms() - i64::try_from(ago.as_millis()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_virtual_clock_moves_only_with_tokio() {
        let clock = Clock::following_tokio(1_000_000);
        let t0 = clock.now();
        assert_eq!(clock.wall_ms(), 1_000_000);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.wall_ms(), 1_001_500);
        assert_eq!(clock.now() - t0, Duration::from_millis(1_500));
        assert_eq!(clock.wall_ms_at(t0), 1_000_000);
    }

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        let ms = u128::try_from(Clock::system().wall_ms()).unwrap();
        assert!(ms >= before && ms < before + 60_000);
    }
}
