//! Token expiry and the 0-RTT wait, in virtual time.

use super::*;
use crate::session::EARLY_WAIT;

fn whoami() -> Body {
    Body::Whoami(v1::WhoAmIRequest {})
}

#[tokio::test(start_paused = true)]
async fn a_token_works_until_its_lifetime_is_over_then_nowhere() {
    let h = Harness::new(|c| c.token_ttl_secs = 60);
    let (mut alice, token) = h.user("alice").await;
    let mut second = h.connect(&token).await.expect("the token connects while valid");

    advance(Duration::from_millis(59_999)).await;
    assert!(matches!(alice.call(whoami()).await, Body::Identity(_)));
    assert_eq!(alice.close_requested(), None);

    // At the lifetime, to the millisecond: the next request is refused and
    // the connection asked to close, before the sweep gets to it.
    advance(Duration::from_millis(1)).await;
    assert_eq!(alice.refused(whoami()).await, ErrorCode::Unauthenticated);
    assert_eq!(alice.close_requested(), Some(CloseCode::SessionExpired));

    // The idle connection is closed by the once-a-second sweep.
    advance(Duration::from_secs(1)).await;
    assert_eq!(second.close_requested(), Some(CloseCode::SessionExpired));
    assert_eq!(second.refused(whoami()).await, ErrorCode::Unauthenticated);

    // And a new connection with it is refused at its Hello.
    assert_eq!(
        h.connect(&token).await.err(),
        Some((ErrorCode::Unauthenticated, CloseCode::LoggedOut))
    );
}

#[tokio::test(start_paused = true)]
async fn pong_tells_the_servers_wall_time() {
    let h = Harness::new(|_| {});
    let mut c = h.connect("").await.unwrap();
    advance(Duration::from_millis(1_234)).await;
    let Body::Pong(p) = c.call(Body::Ping(v1::PingRequest {})).await else {
        panic!("no pong")
    };
    assert_eq!(p.server_time_ms, EPOCH_MS + 1_234);
}

/// A request that is not replay-safe, read from 0-RTT early data, waits for
/// the handshake: refused with TOO_EARLY after exactly [`EARLY_WAIT`] when
/// it never completes (a replay), answered as soon as it does.
#[tokio::test(start_paused = true)]
async fn early_data_writes_wait_for_the_handshake() {
    let h = Harness::new(|_| {});
    let (_bob, _) = h.user("bob").await;
    let (_alice, token) = h.user("alice").await;
    // Sends are idempotent (replay-safe); blocking is not.
    let block = || {
        Body::Block(v1::BlockRequest {
            user: "bob".into(),
            unblock: false,
        })
    };

    // A replay: the handshake never completes.
    let mut early = h.connect(&token).await.unwrap();
    early.session.set_early(true);
    let t0 = tokio::time::Instant::now();
    assert_eq!(early.refused(block()).await, ErrorCode::TooEarly);
    assert_eq!(t0.elapsed(), EARLY_WAIT);
    // A replay-safe request is answered at once meanwhile.
    let t1 = tokio::time::Instant::now();
    assert!(matches!(early.call(whoami()).await, Body::Identity(_)));
    assert_eq!(t1.elapsed(), Duration::ZERO);

    // A real client: the handshake completes 40 ms later.
    let mut real = h.connect(&token).await.unwrap();
    real.session.set_early(true);
    let session = real.session.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(40)).await;
        session.set_early(false);
    });
    let t2 = tokio::time::Instant::now();
    assert!(matches!(real.call(block()).await, Body::Blocked(_)));
    assert_eq!(t2.elapsed(), Duration::from_millis(40));
}
