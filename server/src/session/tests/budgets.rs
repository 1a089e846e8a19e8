//! Rate limits and throttles refill at their stated rates, checked in
//! virtual time to the millisecond.

use super::*;

fn ping() -> Body {
    Body::Ping(v1::PingRequest {})
}

/// The retry delay a refusal carries.
async fn retry_after(c: &mut Conn, body: Body) -> u32 {
    match c.call(body).await {
        Body::Error(e) if e.code == ErrorCode::RateLimited as i32 => e.retry_after_ms,
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_devices_budget_is_shared_by_its_connections_and_refills() {
    let h = Harness::new(|c| {
        c.rate_limit = 10.0;
        c.rate_burst = 20.0;
    });
    let (mut one, token) = h.user("alice").await;
    let mut two = h.connect(&token).await.unwrap();
    // The registration was charged to the anonymous connection's budget:
    // the device's starts full.
    for i in 0..20 {
        let c = if i % 2 == 0 { &mut one } else { &mut two };
        assert!(matches!(c.call(ping()).await, Body::Pong(_)), "request {i}");
    }
    // Spent, on both connections alike; the delay is one token's worth.
    assert_eq!(retry_after(&mut one, ping()).await, 100);
    assert_eq!(retry_after(&mut two, ping()).await, 100);
    advance(Duration::from_millis(99)).await;
    assert_eq!(retry_after(&mut two, ping()).await, 1);
    advance(Duration::from_millis(1)).await;
    assert!(matches!(two.call(ping()).await, Body::Pong(_)));
    assert_eq!(one.refused(ping()).await, ErrorCode::RateLimited);
}

#[tokio::test(start_paused = true)]
async fn failed_logins_are_throttled_per_account_one_more_a_minute() {
    let h = Harness::new(|c| c.login_failures_per_account = 3);
    let (_alice, _) = h.user("alice").await;
    let login = |password: &str| {
        Body::Login(v1::LoginRequest {
            username: "alice".into(),
            password: password.into(),
            device_name: String::new(),
        })
    };
    let mut c = h.connect("").await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.refused(login("wrong guess 1")).await, ErrorCode::InvalidCredentials);
    }
    // Spent: even the right password is refused, before any hashing.
    assert_eq!(retry_after(&mut c, login(PASSWORD)).await, 60_000);
    advance(Duration::from_secs(59)).await;
    assert_eq!(retry_after(&mut c, login(PASSWORD)).await, 1_000);
    advance(Duration::from_secs(1)).await;
    // One more attempt a minute: spent on a wrong guess, refused again.
    assert_eq!(c.refused(login("wrong guess 2")).await, ErrorCode::InvalidCredentials);
    assert_eq!(c.refused(login(PASSWORD)).await, ErrorCode::RateLimited);
    advance(Duration::from_secs(60)).await;
    assert!(matches!(c.call(login(PASSWORD)).await, Body::Auth(_)));
}

#[tokio::test(start_paused = true)]
async fn typing_indicators_beyond_the_rate_are_refused() {
    let h = Harness::new(|c| c.typing_rate = 2.0);
    let (mut alice, bob, _, chat_id) = h.contacts().await;
    let typing = || Body::Typing(v1::TypingRequest { chat_id });
    // A burst of 3, then one per half second.
    for _ in 0..3 {
        assert!(matches!(alice.call(typing()).await, Body::TypingSent(_)));
    }
    assert_eq!(retry_after(&mut alice, typing()).await, 500);
    advance(Duration::from_millis(500)).await;
    assert!(matches!(alice.call(typing()).await, Body::TypingSent(_)));
    settle().await;
    let shown = bob
        .events()
        .into_iter()
        .filter(|e| matches!(e.kind, Some(v1::event::Kind::Typing(_))))
        .count();
    assert_eq!(shown, 4, "every accepted indicator reaches bob, no refused one");
}
