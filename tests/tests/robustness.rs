//! Bad input, access control, durability across restarts, logout, limits.

mod common;

use std::time::Duration;

use common::raw::{close_code, exchange, frame, read_all};
use common::*;
use quip_client::{Client, ClientError};
use quip_protocol::v1::{self, ErrorCode, ReceiptKind};
use quip_protocol::{Body, CloseCode, Envelope, FrameDecoder};
use tokio::io::AsyncReadExt;

fn hello(versions: Vec<u32>) -> Envelope {
    Envelope::new(
        1,
        Body::Hello(v1::Hello {
            versions,
            token: String::new(),
            client: "raw".into(),
            background: false,
        }),
    )
}

fn error_code(env: &Envelope) -> Option<ErrorCode> {
    match &env.body {
        Some(Body::Error(e)) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

#[tokio::test]
async fn garbage_and_bad_handshakes_are_refused_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    for i in 0..5 {
        alice.send_text("bob", &format!("before {i}")).await.unwrap();
    }

    // A stream of random junk (a varint longer than five bytes).
    let (frames, code) = exchange(&server, &[0xff; 64], false).await;
    assert_eq!(
        frames.iter().map(error_code).collect::<Vec<_>>(),
        vec![Some(ErrorCode::MalformedFrame)]
    );
    assert_eq!(code, Some(CloseCode::ProtocolError));

    // A length prefix far over the limit is refused before any body arrives.
    let mut huge = Vec::new();
    prost::encode_length_delimiter(50 << 20, &mut huge).unwrap();
    let (frames, code) = exchange(&server, &huge, false).await;
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::FrameTooLarge));
    assert_eq!(code, Some(CloseCode::ProtocolError));

    // A body that is not a protobuf Envelope.
    let (frames, code) = exchange(&server, &[3, 0x0f, 0x01, 0x02], false).await;
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::MalformedFrame));
    assert_eq!(code, Some(CloseCode::ProtocolError));

    // An unsupported version.
    let (frames, code) = exchange(&server, &frame(&hello(vec![7, 9])), false).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].id, 1);
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::UnsupportedVersion));
    assert_eq!(code, Some(CloseCode::UnsupportedVersion));

    // A request before the handshake.
    let (frames, code) = exchange(
        &server,
        &frame(&Envelope::new(5, Body::Ping(v1::PingRequest {}))),
        false,
    )
    .await;
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::HandshakeRequired));
    assert_eq!(code, Some(CloseCode::ProtocolError));

    // Garbage after a good handshake: same, and queued writes stay durable.
    let mut bytes = frame(&hello(vec![1]));
    bytes.extend_from_slice(&[2, 0xff, 0xff]);
    let (frames, code) = exchange(&server, &bytes, false).await;
    assert!(matches!(frames[0].body, Some(Body::Welcome(_))));
    assert_eq!(error_code(&frames[1]), Some(ErrorCode::MalformedFrame));
    assert_eq!(code, Some(CloseCode::ProtocolError));

    // Meanwhile everyone else is served, and nothing acknowledged is lost.
    for i in 0..5 {
        alice.send_text("bob", &format!("after {i}")).await.unwrap();
    }
    let h = bob.history("alice", 0, 100).await.unwrap();
    assert_eq!(h.messages.len(), 10);
    assert_eq!(text(&h.messages[0]), "after 4");
    server.stop().await;
}

#[tokio::test]
async fn unknown_request_types_get_a_typed_error_and_the_connection_lives() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_ep, conn) = Client::connect_raw(&server.options()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Hello, then an Envelope whose body is field 999 (from a "newer client"),
    // then a server-only body, then a ping.
    let mut bytes = frame(&hello(vec![1]));
    let mut unknown = Vec::new();
    prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut unknown);
    prost::encoding::encode_varint(7, &mut unknown);
    prost::encoding::encode_key(999, prost::encoding::WireType::LengthDelimited, &mut unknown);
    prost::encoding::encode_varint(0, &mut unknown);
    prost::encode_length_delimiter(unknown.len(), &mut bytes).unwrap();
    bytes.extend_from_slice(&unknown);
    bytes.extend(frame(&Envelope::new(8, Body::Welcome(v1::Welcome::default()))));
    bytes.extend(frame(&Envelope::new(9, Body::Ping(v1::PingRequest {}))));
    bytes.extend(frame(&hello(vec![1])));
    send.write_all(&bytes).await.unwrap();
    send.finish().unwrap();
    let frames = read_all(&mut recv).await;
    assert_eq!(frames.len(), 5, "{frames:?}");
    assert_eq!(
        (frames[1].id, error_code(&frames[1])),
        (7, Some(ErrorCode::UnknownRequest))
    );
    assert_eq!(
        (frames[2].id, error_code(&frames[2])),
        (8, Some(ErrorCode::UnknownRequest))
    );
    assert!(matches!(frames[3].body, Some(Body::Pong(_))));
    assert_eq!(error_code(&frames[4]), Some(ErrorCode::HandshakeRequired));
    assert!(conn.close_reason().is_none(), "connection stays open");
    server.stop().await;
}

#[tokio::test]
async fn credentials_and_arguments_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let c = server.connect().await;
    let code = |r: Result<v1::AuthResponse, ClientError>| r.unwrap_err().code();
    assert_eq!(
        code(c.login("alice", "wrong password", "x").await),
        Some(ErrorCode::InvalidCredentials)
    );
    assert_eq!(
        code(c.login("nobody", PASSWORD, "x").await),
        Some(ErrorCode::InvalidCredentials)
    );
    assert_eq!(
        code(c.register("alice", PASSWORD, "x").await),
        Some(ErrorCode::UsernameTaken)
    );
    assert_eq!(
        code(c.register("Not Valid", PASSWORD, "x").await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(c.register("carol", "short", "x").await),
        Some(ErrorCode::InvalidArgument)
    );
    // Anonymous connections can't do anything else.
    assert_eq!(
        c.send_text("alice", "hi").await.unwrap_err().code(),
        Some(ErrorCode::Unauthenticated)
    );
    assert_eq!(c.chats().await.unwrap_err().code(), Some(ErrorCode::Unauthenticated));

    let send = |text: String, cmid: &str| v1::SendRequest {
        to_user: "bob".into(),
        client_msg_id: cmid.into(),
        content: Some(v1::Content {
            text,
            ..Default::default()
        }),
        ..Default::default()
    };
    server.user("bob").await;
    let max = alice.welcome().max_body as usize;
    assert_eq!(max, quip_protocol::DEFAULT_MAX_BODY);
    let e = alice.send(send("x".repeat(max + 1), "big")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BodyTooLarge));
    assert_eq!(alice.send(send("x".repeat(max), "max")).await.unwrap().seq, 1);
    assert_eq!(
        alice.send(send(String::new(), "empty")).await.unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        alice.send(send("a".into(), "")).await.unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        alice.send_text("alice", "me").await.unwrap_err().code(),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        alice.send_text("nobody", "hi").await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    server.stop().await;
}

#[tokio::test]
async fn only_participants_can_read_or_write_a_chat() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (_bob, _) = server.user("bob").await;
    let (carol, _) = server.user("carol").await;
    let chat = alice.send_text("bob", "private").await.unwrap().chat_id;

    let forbidden = Some(ErrorCode::Forbidden);
    assert_eq!(carol.history_of_chat(chat, 0, 10).await.unwrap_err().code(), forbidden);
    assert_eq!(
        carol.receipt(chat, ReceiptKind::Read, 0).await.unwrap_err().code(),
        forbidden
    );
    let req = v1::SendRequest {
        chat_id: chat,
        client_msg_id: "x".into(),
        content: Some(v1::Content {
            text: "intrude".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(carol.send(req).await.unwrap_err().code(), forbidden);
    // No chat between carol and alice: nothing to read.
    assert_eq!(
        carol.history("alice", 0, 10).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(
        carol.history_of_chat(9999, 0, 10).await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );
    assert!(carol.chats().await.unwrap().is_empty());
    assert!(
        carol.sync(0).await.unwrap().events.is_empty(),
        "carol's log holds nothing of alice and bob"
    );
    // The chat is untouched.
    assert_eq!(alice.history("bob", 0, 10).await.unwrap().messages.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn restart_on_the_same_data_dir_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, alice_token) = server.user("alice").await;
    let (bob, bob_token) = server.user("bob").await;
    for i in 1..=10 {
        alice.send_text("bob", &format!("m{i}")).await.unwrap();
    }
    bob.receipt(1, ReceiptKind::Read, 4).await.unwrap();
    drop((alice, bob));
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let alice = server.connect_as(&alice_token).await;
    assert_eq!(alice.welcome().user, "alice", "sessions survive restarts");
    let h = alice.history("bob", 0, 50).await.unwrap();
    assert_eq!(
        h.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=10).rev().collect::<Vec<_>>()
    );
    assert_eq!(alice.send_text("bob", "after restart").await.unwrap().seq, 11);
    let chats = alice.chats().await.unwrap();
    assert_eq!(chats[0].peer_read_seq, 4);
    let bob = server.connect_as(&bob_token).await;
    let mut t = quip_client::AckTracker::new(0);
    let events = bob.sync_all(&mut t).await.unwrap();
    let msgs = events
        .iter()
        .filter(|e| matches!(e.kind, Some(v1::event::Kind::Message(_))))
        .count();
    assert_eq!(msgs, 11);
    server.stop().await;
}

#[tokio::test]
async fn logout_revokes_one_device_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob1, token1) = server.user("bob").await;
    let (bob2, token2) = server.device("bob").await;
    bob1.logout().await.unwrap();
    assert_eq!(bob1.closed().await.0, Some(CloseCode::LoggedOut));

    let Err(e) = Client::connect(&server.options().token(&token1)).await else {
        panic!("revoked token accepted");
    };
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated));

    alice.send_text("bob", "still here?").await.unwrap();
    assert_eq!(text(&next_message(&bob2).await.1), "still here?");
    let again = server.connect_as(&token2).await;
    assert_eq!(again.whoami().await.unwrap().user, "bob");
    server.stop().await;
}

/// Sends 20 pings round-robin over `conns`; returns how many were limited
/// and the last retry delay.
async fn flood(conns: &[&Client]) -> (usize, u32) {
    let (mut limited, mut retry) = (0, 0);
    for i in 0..20 {
        match conns[i % conns.len()].request(Body::Ping(v1::PingRequest {})).await {
            Ok(_) => {}
            Err(ClientError::Server {
                code: ErrorCode::RateLimited,
                retry_after_ms,
                ..
            }) => {
                limited += 1;
                retry = retry_after_ms;
            }
            Err(e) => panic!("{e}"),
        }
    }
    (limited, retry)
}

#[tokio::test]
async fn floods_are_rate_limited_per_device_across_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quip_server::Config::for_tests(dir.path());
    config.rate_limit = 5.0;
    config.rate_burst = 5.0;
    let server = TestServer::start_with(config).await;

    let anonymous = server.connect().await;
    let (limited, retry) = flood(&[&anonymous]).await;
    assert!(limited >= 14, "only {limited} of 20 limited");
    assert!(retry > 0 && retry <= 200, "retry_after_ms {retry}");

    // One device on two connections shares one budget.
    let (bob1, token) = server.user("bob").await;
    let bob2 = server.connect_as(&token).await;
    let (limited, _) = flood(&[&bob1, &bob2]).await;
    assert!(
        limited >= 14,
        "two connections of one device: only {limited} of 20 limited"
    );

    // Another device and another connection are unaffected.
    let (alice, _) = server.user("alice").await;
    alice.request(Body::Ping(v1::PingRequest {})).await.unwrap();
    server
        .connect()
        .await
        .request(Body::Ping(v1::PingRequest {}))
        .await
        .unwrap();
    server.stop().await;
}

/// A connection that completes its handshake but never says Hello is
/// closed with code 6 once `--hello-timeout-secs` has passed since the handshake
/// (not before it), while a client that does say Hello is served.
#[tokio::test]
async fn a_connection_that_never_says_hello_is_closed_after_the_hello_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quip_server::Config::for_tests(dir.path());
    config.hello_timeout_secs = 1;
    let server = TestServer::start_with(config).await;
    let (_ep, silent) = Client::connect_raw(&server.options()).await.unwrap();
    let handshake_done = std::time::Instant::now();
    let (alice, _) = server.user("alice").await;
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.closed())
        .await
        .expect("closed in time");
    let waited = handshake_done.elapsed();
    let quinn::ConnectionError::ApplicationClosed(c) = closed else {
        panic!("expected an application close, got {closed}");
    };
    assert_eq!(
        CloseCode::from_code(c.error_code.into_inner()),
        Some(CloseCode::HandshakeTimeout)
    );
    assert_eq!(&c.reason[..], b"no Hello within 1 s");
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}");
    assert_eq!(alice.whoami().await.unwrap().user, "alice");
}

#[tokio::test]
async fn shutdown_closes_connections_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    server.user("bob").await;
    let sent = alice.send_text("bob", "last words").await.unwrap();
    server.stop().await;
    assert_eq!(alice.closed().await.0, Some(CloseCode::ServerShutdown));
    let server = TestServer::start(dir.path()).await;
    let (bob, _) = server.device("bob").await;
    assert_eq!(bob.history("alice", 0, 1).await.unwrap().messages[0].seq, sent.seq);
    server.stop().await;
}

/// A stop is a drain: every request the server took is answered before its
/// connection closes, so the client knows the outcome of each write. With
/// 400 sends in flight when the stop comes, the acknowledged ones are
/// exactly the ones stored: none stored without its ack reaching the client.
#[tokio::test]
async fn a_graceful_stop_answers_every_request_it_took() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quip_server::Config::for_tests(dir.path());
    config.rate_limit = 1e6;
    config.rate_burst = 1e6;
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    server.user("bob").await;
    let store = server.store.clone();
    let before = store.stats().writes;
    let texts: Vec<String> = (0..400).map(|i| format!("m{i}")).collect();
    let sends = futures::future::join_all(texts.iter().map(|t| alice.send_text("bob", t)));
    let stop = async {
        // Stop once the first sends are committed, with the rest in flight.
        while store.stats().writes < before + 20 {
            tokio::task::yield_now().await;
        }
        server.stop().await;
    };
    let (results, ()) = tokio::join!(sends, stop);
    drop(store); // it holds the database open
    let mut acked = std::collections::BTreeSet::new();
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(_) => {
                acked.insert(texts[i].clone());
            }
            Err(e) => assert!(
                e.code() == Some(ErrorCode::Unavailable) || matches!(e, ClientError::Closed(_)),
                "send {i} failed otherwise: {e}"
            ),
        }
    }
    assert_eq!(alice.closed().await.0, Some(CloseCode::ServerShutdown));
    assert!(!acked.is_empty());

    let server = TestServer::start(dir.path()).await;
    let (bob, _) = server.device("bob").await;
    let mut stored = std::collections::BTreeSet::new();
    let mut before_seq = 0;
    loop {
        let page = bob.history("alice", before_seq, 100).await.unwrap();
        let Some(oldest) = page.messages.iter().map(|m| m.seq).min() else {
            break;
        };
        for m in &page.messages {
            stored.insert(m.content.as_ref().unwrap().text.clone());
        }
        if oldest == 1 {
            break;
        }
        before_seq = oldest;
    }
    assert_eq!(stored, acked, "stored but never acknowledged, or acknowledged but lost");
    server.stop().await;
}

#[tokio::test]
async fn a_device_that_stops_reading_is_disconnected_and_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quip_server::Config::for_tests(dir.path());
    config.push_queue = 4;
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    let (bob, bob_token) = server.user("bob").await;
    drop(bob);

    // Bob's phone: handshakes, then never reads its push lanes.
    let (_ep, stalled) = Client::connect_raw(&server.options()).await.unwrap();
    let (mut send, mut recv) = stalled.open_bi().await.unwrap();
    let mut h = hello(vec![1]);
    if let Some(Body::Hello(x)) = &mut h.body {
        x.token = bob_token.clone();
    }
    send.write_all(&frame(&h)).await.unwrap();
    let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
    while dec.decode().unwrap().is_none() {
        dec.buffer_mut().reserve(4096);
        recv.read_buf(dec.buffer_mut()).await.unwrap();
    }

    let big = "x".repeat(60_000);
    for i in 0..60 {
        alice.send_text("bob", &format!("{i}{big}")).await.unwrap();
    }
    assert_eq!(close_code(&stalled).await, Some(CloseCode::SlowConsumer));
    // The sender was never slowed down or refused, and bob loses nothing.
    let bob = server.connect_as(&bob_token).await;
    let mut t = quip_client::AckTracker::new(0);
    let events = bob.sync_all(&mut t).await.unwrap();
    assert_eq!(events.len(), 60);
    assert!(events.windows(2).all(|w| w[0].pos + 1 == w[1].pos));
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_on_one_stream_apply_in_order_and_reads_see_earlier_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_alice, token) = server.user("alice").await;
    server.user("bob").await;
    let (_ep, conn) = Client::connect_raw(&server.options()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut h = hello(vec![1]);
    if let Some(Body::Hello(x)) = &mut h.body {
        x.token = token;
    }
    // Everything in one write, without waiting for any answer.
    let mut bytes = frame(&h);
    for (id, text) in [(2, "one"), (3, "two"), (4, "three")] {
        bytes.extend(frame(&Envelope::new(
            id,
            Body::Send(v1::SendRequest {
                to_user: "bob".into(),
                client_msg_id: format!("m{id}"),
                content: Some(v1::Content {
                    text: text.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )));
    }
    bytes.extend(frame(&Envelope::new(
        5,
        Body::History(v1::HistoryRequest {
            with_user: "bob".into(),
            ..Default::default()
        }),
    )));
    send.write_all(&bytes).await.unwrap();
    send.finish().unwrap();
    let frames = read_all(&mut recv).await;
    assert_eq!(
        frames.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "answers in request order"
    );
    let seqs: Vec<u64> = frames[1..4]
        .iter()
        .map(|f| match &f.body {
            Some(Body::Sent(s)) => s.seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3], "writes applied in stream order");
    let Some(Body::HistoryPage(page)) = &frames[4].body else {
        panic!("{:?}", frames[4])
    };
    let texts: Vec<&str> = page.messages.iter().map(text).collect();
    assert_eq!(
        texts,
        vec!["three", "two", "one"],
        "the read saw every earlier write of its stream"
    );
    server.stop().await;
}

/// The data directory holds the database, media and private keys: quipd
/// creates it owner-only, and its key files too, whatever the umask (000
/// here, where the defaults would make everything world-writable).
#[tokio::test]
async fn the_data_dir_and_its_key_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let port = common::daemon::free_port();
    let _daemon = common::daemon::Daemon::start_with_umask(&data, port, &[], "000");
    let ca = common::daemon::Daemon::ready(&data).await;
    let opts = quip_client::ConnectOptions::new(format!("127.0.0.1:{port}"), Some(&ca)).unwrap();
    let alice = Client::connect(&opts).await.unwrap();
    alice.register("alice", PASSWORD, "phone").await.unwrap();

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&data.join("dev-key.pem")), 0o600, "dev certificate's key");
    assert_eq!(mode(&data.join("secret")), 0o600, "node secret");
}

/// A client of a server that was killed and restarted learns of it at its
/// next packet: the new process derives the same stateless-reset tokens
/// from the node secret in the data directory and resets the connection it
/// has no state for. With a fresh key per start the client ignored the
/// reset and waited out its idle timeout (30 s; ~40 s to notice, measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_restarted_server_are_reset_at_their_next_packet() {
    use common::daemon::{Daemon, free_port};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = Daemon::start(dir.path(), port, &[]);
    let ca = Daemon::ready(dir.path()).await;
    let opts = quip_client::ConnectOptions::new(format!("127.0.0.1:{port}"), Some(&ca))
        .unwrap()
        .keep_alive(Duration::from_millis(500))
        .unwrap();
    let alice = Client::connect(&opts).await.unwrap();
    alice.register("alice", PASSWORD, "phone").await.unwrap();

    daemon.kill();
    let restarted = std::time::Instant::now();
    let _daemon = Daemon::start(dir.path(), port, &[]);
    // Well under the 30 s idle timeout, with room for a slow start.
    let reason = tokio::time::timeout(Duration::from_secs(10), alice.connection().closed())
        .await
        .expect("the connection to the restarted server ends before its idle timeout");
    assert!(
        matches!(reason, quinn::ConnectionError::Reset),
        "ended by a stateless reset, not {reason:?}"
    );
    println!("restart noticed after {:?}", restarted.elapsed());
}
