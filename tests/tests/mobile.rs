//! Presence, typing and mobile-grade QUIC: real quipd on loopback, real
//! QUIC, and a misbehaving UDP relay where a network has to fail.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::relay::Relay;
use common::*;
use quip_client::{Client, ConnectOptions, TypingState};
use quip_protocol::v1::{self, ErrorCode, Visibility};
use quip_protocol::{Body, CloseCode, Envelope, FrameDecoder, encode_frame};
use quip_server::Config;
use tokio::io::AsyncReadExt;

fn presence_of(e: &v1::Event) -> Option<&v1::Presence> {
    match &e.kind {
        Some(v1::event::Kind::Presence(p)) => Some(p),
        _ => None,
    }
}

/// The next presence event saying `user` is `online` (or not), within
/// `within`. Events saying the opposite are skipped: a user's own "online"
/// is announced asynchronously (on FoundationDB after a write of its own),
/// so it may reach a new contact after the message that made them contacts.
/// Flicker is checked with [`no_presence`].
async fn presence_event(c: &Client, user: &str, online: bool, within: Duration) -> v1::Presence {
    tokio::time::timeout(within, async {
        loop {
            let e = c.next_event().await.expect("connection open");
            if let Some(p) = presence_of(&e)
                && p.user == user
                && p.online == online
            {
                return p.clone();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no presence event saying {user} online={online} within {within:?}"))
}

/// Asserts no presence event about `user` arrives within `within`.
async fn no_presence(c: &Client, user: &str, within: Duration) {
    let r = tokio::time::timeout(within, async {
        loop {
            let e = c.next_event().await.expect("connection open");
            if presence_of(&e).is_some_and(|p| p.user == user) {
                return e;
            }
        }
    })
    .await;
    assert!(r.is_err(), "unexpected presence event: {:?}", r.unwrap());
}

fn options_via(server: &TestServer, addr: std::net::SocketAddr, token: &str) -> ConnectOptions {
    server.options_at(&addr.to_string()).token(token)
}

#[tokio::test]
async fn vanished_device_goes_offline_after_grace_and_a_quick_return_shows_no_flicker() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.idle_timeout_secs = 1;
    config.presence_grace_secs = 2.0;
    let server = TestServer::start_with(config).await;
    let (bob, _) = server.user("bob").await;
    let (alice, alice_token) = server.user("alice").await;
    alice.send_text("bob", "hi").await.unwrap(); // now contacts
    next_message(&bob).await;
    alice.close();
    // Alice's clean close ends her presence at once.
    let p = presence_event(&bob, "alice", false, Duration::from_secs(2)).await;
    assert!(!p.online && p.last_seen_ms > 0);

    // Alice comes back through a network that is about to fail.
    let relay = Relay::start(server.addr.parse().unwrap()).await;
    let alice = Client::connect(&options_via(&server, relay.addr, &alice_token))
        .await
        .unwrap();
    assert!(presence_event(&bob, "alice", true, Duration::from_secs(2)).await.online);

    // A tunnel: nothing gets through. The server times the connection out
    // after 1 s of silence; the grace (2 s from the last packet) is not over.
    relay.set_blackhole(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Back within the grace period on a new connection: no flicker.
    relay.set_blackhole(false);
    let alice2 = Client::connect(&options_via(&server, relay.addr, &alice_token))
        .await
        .unwrap();
    no_presence(&bob, "alice", Duration::from_millis(1500)).await;
    let seen = bob.presence(&["alice"]).await.unwrap();
    assert!(seen[0].online && seen[0].visible);
    drop(alice); // timed out already

    // Gone for good: offline once the grace period after the last packet is over.
    relay.set_blackhole(true);
    let started = Instant::now();
    let p = presence_event(&bob, "alice", false, Duration::from_secs(5)).await;
    assert!(!p.online);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "offline after {took:?}: grace not respected"
    );
    drop(alice2);
    server.stop().await;
}

#[tokio::test]
async fn presence_follows_privacy_settings() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let (carol, _) = server.user("carol").await;
    alice.send_text("bob", "hi").await.unwrap();

    // Default: contacts only. Carol shares no chat with alice.
    let p = &bob.presence(&["alice"]).await.unwrap()[0];
    assert!(p.visible && p.online);
    let p = &carol.presence(&["alice", "nobody-here"]).await.unwrap();
    assert_eq!(
        p[0],
        v1::Presence {
            user: "alice".into(),
            ..Default::default()
        }
    );
    assert_eq!(p[0].visible, p[1].visible, "hidden looks like nonexistent");

    // Nobody: even contacts see nothing, and nothing is pushed.
    assert_eq!(
        alice.set_last_seen_visibility(Visibility::Nobody).await.unwrap(),
        Visibility::Nobody
    );
    assert!(!bob.presence(&["alice"]).await.unwrap()[0].visible);
    alice.close();
    no_presence(&bob, "alice", Duration::from_millis(500)).await;
    let (alice, _) = server.device("alice").await;
    no_presence(&bob, "alice", Duration::from_millis(300)).await;

    // Everyone: strangers may look.
    alice.set_last_seen_visibility(Visibility::Everyone).await.unwrap();

    // A background connection (sync, tools) never makes its user online.
    let (dan, _) = server.user("dan").await;
    dan.send_text("bob", "hi").await.unwrap();
    dan.close();
    let p = presence_event(&bob, "dan", false, Duration::from_secs(2)).await;
    assert!(!p.online);
    let mut quiet = server.options();
    quiet.background = true;
    let bg = Client::connect(&quiet).await.unwrap();
    bg.login("dan", PASSWORD, "background sync").await.unwrap();
    bg.whoami().await.unwrap();
    no_presence(&bob, "dan", Duration::from_millis(400)).await;
    assert!(!bob.presence(&["dan"]).await.unwrap()[0].online);
    bg.close();
    no_presence(&bob, "dan", Duration::from_millis(300)).await;
    let p = &carol.presence(&["alice"]).await.unwrap()[0];
    assert!(p.visible && p.online);
    server.stop().await;
}

#[tokio::test]
async fn typing_goes_by_datagram_is_rate_limited_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let (carol, _) = server.user("carol").await;
    let chat = alice.send_text("bob", "hi").await.unwrap().chat_id;
    next_message(&bob).await;
    assert!(alice.connection().max_datagram_size().is_some(), "datagrams negotiated");

    // Ten indicators in a burst: the per-device budget lets three through.
    for _ in 0..10 {
        alice.typing(chat).await.unwrap();
    }
    let mut state = TypingState::default();
    let mut got = 0;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), bob.next_event()).await {
        if presence_of(&e).is_some() {
            continue; // asynchronous, may come late
        }
        let Some(v1::event::Kind::Typing(t)) = &e.kind else {
            panic!("{e:?}")
        };
        assert_eq!((e.pos, t.chat_id, t.user.as_str()), (0, chat, "alice"));
        state.observe(t, Instant::now());
        got += 1;
    }
    assert!((1..=3).contains(&got), "{got} typing events");
    assert_eq!(state.typing_in(chat, Instant::now()), vec!["alice"]);
    assert!(
        state
            .typing_in(chat, Instant::now() + Duration::from_secs(7))
            .is_empty(),
        "expired"
    );

    // Not the sender's own devices, and not outsiders: carol's typing into
    // a chat she is not in goes nowhere (on a stream she is told why).
    no_event(&alice).await;
    let r = carol.request(Body::Typing(v1::TypingRequest { chat_id: chat })).await;
    assert_eq!(code(r), Some(ErrorCode::Forbidden));
    no_event(&bob).await;
    server.stop().await;
}

#[tokio::test]
async fn migration_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.rate_burst = 1000.0;
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let before = bob.connection().stable_id();

    let sender = async {
        for i in 0..200u32 {
            alice.send_text("bob", &format!("m{i}")).await.unwrap();
            if i == 60 {
                // Alice's phone moves networks while sending.
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                alice.quic_endpoint().rebind(s).unwrap();
            }
        }
    };
    let receiver = async {
        let mut seqs = Vec::new();
        while seqs.len() < 200 {
            let (_, m) = next_message(&bob).await;
            seqs.push(m.seq);
            if seqs.len() == 100 {
                // And bob's.
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                bob.quic_endpoint().rebind(s).unwrap();
            }
        }
        seqs
    };
    let ((), seqs) = tokio::join!(sender, receiver);
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>(), "every message once, in order");
    // Same connection and session: no re-login.
    assert_eq!(bob.connection().stable_id(), before);
    assert_eq!(bob.whoami().await.unwrap().user, "bob");
    assert_eq!(alice.whoami().await.unwrap().user, "alice");
    no_event(&bob).await;
    server.stop().await;
}

/// Writes frames on a raw stream.
async fn write_frames(send: &mut quinn::SendStream, envs: &[Envelope]) {
    let mut buf = BytesMut::new();
    for e in envs {
        encode_frame(e, quip_protocol::MAX_FRAME, &mut buf).unwrap();
    }
    send.write_all(&buf).await.unwrap();
}

async fn read_frame(recv: &mut quinn::RecvStream, dec: &mut FrameDecoder) -> Envelope {
    loop {
        if let Some(e) = dec.decode().unwrap() {
            return e;
        }
        dec.buffer_mut().reserve(4096);
        assert!(recv.read_buf(dec.buffer_mut()).await.unwrap() > 0, "stream ended");
    }
}

#[tokio::test]
async fn zero_rtt_reconnect_is_fast_and_refuses_replayable_requests_in_early_data() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_alice, token) = server.user("alice").await;
    server.user("bob").await;
    let opts = server.options().token(token.clone());

    // Full handshake first; it leaves a resumable session in `opts`.
    let t = Instant::now();
    let first = Client::connect(&opts).await.unwrap();
    let full = t.elapsed();
    assert!(!first.used_0rtt());
    first.whoami().await.unwrap(); // the session ticket has arrived by now
    first.close();
    // The client library reconnects in 0-RTT: Hello rides the first flight.
    let t = Instant::now();
    let again = Client::connect(&opts).await.unwrap();
    let resumed = t.elapsed();
    assert!(again.used_0rtt(), "resumed session with early data");
    assert_eq!(again.whoami().await.unwrap().user, "alice");
    // A replay-unsafe request sent while early waits for the handshake and
    // then runs: the library's retry is not even needed here.
    let created = again.create_group("g", &["bob"]).await.unwrap();
    assert!(created.info.is_some());
    println!("reconnect on loopback: full handshake {full:?}, 0-RTT {resumed:?}");
    // The same over a path with a 40 ms round trip, where it matters.
    let slow = Relay::start(server.addr.parse().unwrap()).await;
    slow.set_faults(common::relay::Faults {
        delay: Duration::from_millis(20),
        ..Default::default()
    });
    let slow_opts = server
        .options_at(&slow.addr.to_string())
        .token(opts.token.clone().unwrap());
    let t = Instant::now();
    let c = Client::connect(&slow_opts).await.unwrap();
    c.whoami().await.unwrap();
    let full = t.elapsed();
    c.close();
    let t = Instant::now();
    let c = Client::connect(&slow_opts).await.unwrap();
    c.whoami().await.unwrap();
    let resumed = t.elapsed();
    assert!(c.used_0rtt());
    println!("connect + first request at 40 ms RTT: full handshake {full:?}, 0-RTT {resumed:?}");

    // Now a client whose handshake cannot complete (the relay holds its
    // packets once the server has answered, as if its early data were
    // replayed by someone without the keys): replay-safe requests in its
    // early data run, others are refused with TOO_EARLY.
    let relay = Relay::start(server.addr.parse().unwrap()).await;
    let via = server.options_at(&relay.addr.to_string()).token(token);
    let warm = Client::connect(&via).await.unwrap();
    warm.whoami().await.unwrap();
    warm.close();
    *relay.ctl.hold_after_reply.lock().unwrap() = Some(Duration::from_secs(2));
    let endpoint = Client::endpoint(&via).unwrap();
    let connecting = endpoint.connect(relay.addr, "127.0.0.1").unwrap();
    let (conn, _accepted) = connecting.into_0rtt().map_err(|_| "no 0-RTT").unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let hello = Envelope::new(
        1,
        Body::Hello(v1::Hello {
            versions: vec![1],
            token: via.token.clone().unwrap(),
            client: "test".into(),
            background: false,
        }),
    );
    let ping = Envelope::new(2, Body::Ping(v1::PingRequest {}));
    let logout = Envelope::new(3, Body::Logout(v1::LogoutRequest {}));
    write_frames(&mut send, &[hello, ping, logout]).await;
    let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
    let welcome = read_frame(&mut recv, &mut dec).await;
    assert!(matches!(welcome.body, Some(Body::Welcome(_))), "{welcome:?}");
    let pong = read_frame(&mut recv, &mut dec).await;
    assert!(matches!(pong.body, Some(Body::Pong(_))), "{pong:?}");
    let refused = read_frame(&mut recv, &mut dec).await;
    let Some(Body::Error(e)) = refused.body else {
        panic!("{refused:?}")
    };
    assert_eq!((refused.id, e.code), (3, ErrorCode::TooEarly as i32));
    // The logout did not happen: the token still works.
    assert_eq!(
        server
            .connect_as(via.token.as_deref().unwrap())
            .await
            .whoami()
            .await
            .unwrap()
            .user,
        "alice"
    );
    server.stop().await;
}

#[tokio::test]
async fn connection_limits_per_device_and_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.max_connections_per_device = 1;
    config.max_connections_per_user = 2;
    let server = TestServer::start_with(config).await;
    let (first, token) = server.user("alice").await;
    // The same device again: the newer connection replaces the older.
    let second = server.connect_as(&token).await;
    let (closed, _) = tokio::time::timeout(Duration::from_secs(2), first.closed())
        .await
        .unwrap();
    assert_eq!(closed, Some(CloseCode::Replaced));
    assert_eq!(second.whoami().await.unwrap().user, "alice");
    // A second device is fine; a third connection of the user is refused.
    let (_other, _) = server.device("alice").await;
    let third = server.connect().await;
    let r = third.login("alice", PASSWORD, "third").await;
    assert_eq!(code(r), Some(ErrorCode::LimitExceeded));
    let (closed, _) = tokio::time::timeout(Duration::from_secs(2), third.closed())
        .await
        .unwrap();
    assert_eq!(closed, Some(CloseCode::TooManyConnections));
    // The user's existing connections are untouched.
    assert_eq!(second.whoami().await.unwrap().user, "alice");
    server.stop().await;
}

/// A server that never issued the client's ticket (here: restarted) refuses
/// its 0-RTT early data, Hello included. The library says Hello again once
/// the handshake completes instead of failing the connect: at scale this
/// happened to a few connections in 100,000 (tickets used up or evicted).
#[tokio::test]
async fn a_rejected_zero_rtt_hello_is_said_again_in_one_rtt() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_alice, token) = server.user("alice").await;
    let mut opts = server.options().token(token);
    let first = Client::connect(&opts).await.unwrap();
    first.whoami().await.unwrap(); // the session ticket has arrived by now
    first.close();
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    opts.server = server.addr.clone();
    let again = Client::connect(&opts).await.unwrap();
    assert!(!again.used_0rtt(), "the new server cannot have accepted the early data");
    assert_eq!(again.whoami().await.unwrap().user, "alice");
}

/// A server under a flood of unvalidated handshakes answers with a Retry
/// (always, here: a per-address limit of 3 leaves unvalidated handshakes no
/// slot). The Retry costs a round trip but not 0-RTT: quinn sends the early
/// data again after it, and the server accepts it.
#[tokio::test]
async fn zero_rtt_survives_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quip_server::Config::for_tests(dir.path());
    config.max_connections_per_ip = 3;
    let server = TestServer::start_with(config).await;
    let (alice, token) = server.user("alice").await;
    drop(alice);
    let opts = server.options().token(token);
    let first = Client::connect(&opts).await.unwrap();
    first.whoami().await.unwrap(); // the session ticket has arrived by now
    first.close();
    let again = Client::connect(&opts).await.unwrap();
    assert!(again.used_0rtt(), "resumed with early data after a Retry");
    assert_eq!(again.whoami().await.unwrap().user, "alice");
    server.stop().await;
}
