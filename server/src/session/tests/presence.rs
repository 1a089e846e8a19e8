//! The presence grace period, end to end through sessions, in virtual time.

use super::*;
use crate::presence::Ended;

#[tokio::test(start_paused = true)]
async fn a_reconnect_within_the_grace_period_is_never_seen_offline() {
    let h = Harness::new(|c| c.presence_grace_secs = 2.0);
    let (alice, bob, token, _) = h.contacts().await;

    // Alice's connection is lost; she is back 1.9 s later.
    drop(alice);
    advance(Duration::from_millis(1_900)).await;
    let alice = h.connect(&token).await.unwrap();
    advance(Duration::from_secs(10)).await;
    assert_eq!(bob.presence_events(), vec![], "no offline/online flicker");

    // Lost again, for good: offline once the grace period is over, and
    // last seen when the connection was lost.
    let lost_at = h.shared.clock.wall_ms();
    alice.session.disconnect(Ended::Lost);
    advance(Duration::from_millis(1_400)).await;
    assert_eq!(bob.presence_events(), vec![]);
    // The tracker is checked every grace/4 (500 ms here): the event is late
    // by at most that.
    advance(Duration::from_millis(1_100)).await;
    assert_eq!(bob.presence_events(), vec![("alice".to_owned(), false, lost_at)]);
}

#[tokio::test(start_paused = true)]
async fn a_goodbye_ends_presence_at_once_and_a_return_is_announced() {
    let h = Harness::new(|c| c.presence_grace_secs = 30.0);
    let (alice, bob, token, _) = h.contacts().await;
    advance(Duration::from_millis(250)).await;
    let closed_at = h.shared.clock.wall_ms();
    alice.session.disconnect(Ended::Closed);
    settle().await;
    assert_eq!(bob.presence_events(), vec![("alice".to_owned(), false, closed_at)]);

    let _alice = h.connect(&token).await.unwrap();
    settle().await;
    assert_eq!(bob.presence_events(), vec![("alice".to_owned(), true, 0)]);
}
