//! The browser binding: the same protocol over WebSocket on the HTTPS
//! listener, the web client's files, and the health endpoint. Real quipd,
//! real TLS over loopback TCP, real QUIC for the other side.

mod common;

use std::time::Duration;

use common::ws::{self, WsClient};
use common::{PASSWORD, TestServer};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use quip_client::Client;
use quip_protocol::v1::{self, ErrorCode};
use quip_protocol::{Body, CloseCode, Envelope};
use quip_server::Config;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

/// A GET through the test HTTPS client: (status line, headers, body), as
/// the assertions below read them.
async fn get(server: &TestServer, path: &str) -> (String, String, Vec<u8>) {
    let r = common::https::get(server, path).await;
    (r.status.to_string(), r.headers, r.body)
}

#[tokio::test]
async fn health_web_client_and_schema_are_served_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;

    let (status, headers, body) = get(&server, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    assert!(String::from_utf8_lossy(&body).contains("\"status\":\"ok\""));
    assert!(headers.contains("content-type: application/json"));

    let (status, headers, body) = get(&server, "/").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("content-security-policy: default-src 'none'"),
        "{headers}"
    );
    assert!(headers.contains("x-content-type-options: nosniff"));
    assert!(
        String::from_utf8_lossy(&body).contains("<script"),
        "index.html loads the app"
    );

    let (status, _, body) = get(&server, "/app.js").await;
    assert!(status.contains("200"));
    assert!(body.len() > 1000, "the bundled app");

    // The browser parses the very schema the server was built from.
    let (_, headers, body) = get(&server, "/quip.proto").await;
    assert!(headers.contains("content-type: text/plain"));
    assert_eq!(body, quip_protocol::SCHEMA.as_bytes());

    let (status, _, _) = get(&server, "/nope").await;
    assert!(status.contains("404"), "{status}");
    server.stop().await;
}

#[tokio::test]
async fn websocket_without_the_subprotocol_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let err = ws::connect_raw(server.https, &server.ca, None).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    // Offering it works.
    ws::connect_raw(server.https, &server.ca, Some("quip.v1"))
        .await
        .unwrap();
    server.stop().await;
}

/// A raw WebSocket session of `token`'s device: Hello sent and the Welcome
/// read, so a test can then misbehave at the frame level.
async fn raw_session(server: &TestServer, token: &str) -> ws::WsStream {
    let mut raw = ws::connect_raw(server.https, &server.ca, Some("quip.v1"))
        .await
        .unwrap();
    let hello = v1::Hello {
        versions: vec![1],
        token: token.into(),
        ..Default::default()
    };
    raw.send(ws::binary(0, Body::Hello(hello))).await.unwrap();
    let Some(Ok(Message::Binary(_welcome))) = raw.next().await else {
        panic!("no Welcome")
    };
    raw
}

/// Registers `name` over WebSocket (anonymous connection, then Register on
/// it, which authenticates that connection).
async fn ws_user(server: &TestServer, name: &str) -> (WsClient, String) {
    let c = WsClient::connect(server.https, &server.ca, "").await.unwrap();
    let r = c
        .request(Body::Register(v1::RegisterRequest {
            username: name.into(),
            password: PASSWORD.into(),
            device_name: "browser".into(),
        }))
        .await
        .unwrap();
    let Body::Auth(a) = r else { panic!("{r:?}") };
    (c, a.token)
}

fn send_to(user: &str, text: &str, id: &str) -> Body {
    Body::Send(v1::SendRequest {
        to_user: user.into(),
        chat_id: 0,
        client_msg_id: id.into(),
        content: Some(v1::Content {
            text: text.into(),
            ..Default::default()
        }),
    })
}

/// The next event other than presence (asynchronous: see `common::next_event`).
async fn ws_event(c: &WsClient) -> v1::Event {
    loop {
        let e = tokio::time::timeout(T, c.next_event())
            .await
            .expect("event in time")
            .expect("open");
        if !matches!(e.kind, Some(v1::event::Kind::Presence(_))) {
            return e;
        }
    }
}

#[tokio::test]
async fn quic_and_websocket_users_talk_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await; // QUIC
    let (bob, bob_token) = ws_user(&server, "bob").await; // WebSocket
    assert_eq!(bob.welcome.version, 1);

    // QUIC -> WebSocket, live.
    let sent = alice.send_text("bob", "hi from QUIC").await.unwrap();
    let e = ws_event(&bob).await;
    let Some(v1::event::Kind::Message(m)) = e.kind else {
        panic!("{e:?}")
    };
    assert_eq!((m.sender.as_str(), m.seq, m.chat_id), ("alice", 1, sent.chat_id));
    assert_eq!(m.content.unwrap().text, "hi from QUIC");

    // Bob reads: alice's QUIC client sees the read receipt.
    let r = bob
        .request(Body::Receipt(v1::ReceiptRequest {
            chat_id: sent.chat_id,
            kind: v1::ReceiptKind::Read as i32,
            seq: 1,
        }))
        .await
        .unwrap();
    assert!(matches!(r, Body::ReceiptStored(_)));
    let e = common::next_matching(&alice, |e| matches!(e.kind, Some(v1::event::Kind::Receipt(_)))).await;
    let Some(v1::event::Kind::Receipt(rc)) = e.kind else {
        unreachable!()
    };
    assert_eq!(
        (rc.user.as_str(), rc.kind, rc.seq),
        ("bob", v1::ReceiptKind::Read as i32, 1)
    );

    // WebSocket -> QUIC, live, pipelined: replies come back in order.
    let (r1, r2) = tokio::join!(
        bob.request(send_to("alice", "hello from the browser", "b1")),
        bob.request(send_to("alice", "second", "b2"))
    );
    let (Ok(Body::Sent(s1)), Ok(Body::Sent(s2))) = (r1, r2) else {
        panic!("sends failed")
    };
    assert_eq!((s1.seq, s2.seq), (2, 3));
    let (_, m) = common::next_message(&alice).await;
    assert_eq!(common::text(&m), "hello from the browser");
    let (_, m) = common::next_message(&alice).await;
    assert_eq!(common::text(&m), "second");

    // Typing from the browser travels as an ordinary request and reaches
    // the QUIC side (as a datagram or on a lane).
    let r = bob
        .request(Body::Typing(v1::TypingRequest { chat_id: sent.chat_id }))
        .await
        .unwrap();
    assert!(matches!(r, Body::TypingSent(_)));
    let e = common::next_matching(&alice, |e| matches!(e.kind, Some(v1::event::Kind::Typing(_)))).await;
    let Some(v1::event::Kind::Typing(t)) = e.kind else {
        unreachable!()
    };
    assert_eq!(t.user, "bob");

    // And the other way: QUIC typing reaches the browser as a frame.
    alice.typing(sent.chat_id).await.unwrap();
    loop {
        let e = ws_event(&bob).await;
        if let Some(v1::event::Kind::Typing(t)) = e.kind {
            assert_eq!(t.user, "alice");
            break;
        }
    }

    // A token from the WebSocket login works on QUIC too: one account.
    let bob_quic = server.connect_as(&bob_token).await;
    assert_eq!(bob_quic.whoami().await.unwrap().user, "bob");
    server.stop().await;
}

#[tokio::test]
async fn text_and_malformed_messages_get_typed_errors_and_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;

    // A text message: MALFORMED_FRAME, then close 4001 (protocol error).
    let mut raw = ws::connect_raw(server.https, &server.ca, Some("quip.v1"))
        .await
        .unwrap();
    let hello = v1::Hello {
        versions: vec![1],
        ..Default::default()
    };
    raw.send(ws::binary(0, Body::Hello(hello))).await.unwrap();
    let Some(Ok(Message::Binary(b))) = raw.next().await else {
        panic!()
    };
    assert!(matches!(Envelope::decode(&b[..]).unwrap().body, Some(Body::Welcome(_))));
    raw.send(Message::text("{\"hello\":1}")).await.unwrap();
    let Some(Ok(Message::Binary(b))) = raw.next().await else {
        panic!()
    };
    let Some(Body::Error(e)) = Envelope::decode(&b[..]).unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::MalformedFrame as i32);
    assert!(e.message.contains("binary"), "{}", e.message);
    let Some(Ok(Message::Close(Some(f)))) = raw.next().await else {
        panic!()
    };
    assert_eq!(u16::from(f.code), 4000 + CloseCode::ProtocolError.code() as u16);

    // Garbage bytes: MALFORMED_FRAME, close.
    let mut raw = ws::connect_raw(server.https, &server.ca, Some("quip.v1"))
        .await
        .unwrap();
    raw.send(Message::Binary(vec![0xff, 0xff, 0xff].into())).await.unwrap();
    let Some(Ok(Message::Binary(b))) = raw.next().await else {
        panic!()
    };
    let Some(Body::Error(e)) = Envelope::decode(&b[..]).unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::MalformedFrame as i32);
    let Some(Ok(Message::Close(Some(f)))) = raw.next().await else {
        panic!()
    };
    assert_eq!(u16::from(f.code), 4001);

    // A request before Hello: HANDSHAKE_REQUIRED.
    let mut raw = ws::connect_raw(server.https, &server.ca, Some("quip.v1"))
        .await
        .unwrap();
    raw.send(ws::binary(1, Body::Ping(v1::PingRequest {}))).await.unwrap();
    let Some(Ok(Message::Binary(b))) = raw.next().await else {
        panic!()
    };
    let Some(Body::Error(e)) = Envelope::decode(&b[..]).unwrap().body else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::HandshakeRequired as i32);

    // Unauthenticated requests get the same typed error as on QUIC.
    let anon = WsClient::connect(server.https, &server.ca, "").await.unwrap();
    let e = anon.request(send_to("alice", "x", "x")).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated as i32);
    // A bad token is refused in the handshake.
    assert!(
        WsClient::connect(server.https, &server.ca, "not-a-token")
            .await
            .is_err()
    );

    // Everyone else is still served.
    assert_eq!(alice.whoami().await.unwrap().user, "alice");
    server.stop().await;
}

/// What an observer saw, without the parts that differ between runs
/// (timestamps, log positions).
fn normalize(e: &v1::Event) -> String {
    match &e.kind {
        Some(v1::event::Kind::Message(m)) => format!(
            "message chat={} seq={} from={} text={:?} group_event={:?}",
            m.chat_id,
            m.seq,
            m.sender,
            m.content.as_ref().map(|c| c.text.clone()).unwrap_or_default(),
            m.group_event.as_ref().map(|g| (g.kind, g.users.clone()))
        ),
        Some(v1::event::Kind::Receipt(r)) => format!(
            "receipt chat={} user={} kind={} seq={} everyone={}",
            r.chat_id, r.user, r.kind, r.seq, r.everyone
        ),
        Some(v1::event::Kind::Typing(t)) => format!("typing chat={} user={}", t.chat_id, t.user),
        Some(v1::event::Kind::Presence(p)) => format!("presence user={} online={}", p.user, p.online),
        Some(v1::event::Kind::Advanced(a)) => format!("advanced chat={} seq={}", a.chat_id, a.seq),
        None => "empty".into(),
    }
}

/// The two ways to reach a server, behind one interface for the script.
enum Conn {
    Quic(Client),
    Ws(WsClient),
}

impl Conn {
    async fn request(&self, body: Body) -> Body {
        match self {
            Conn::Quic(c) => c.request(body).await.expect("request"),
            Conn::Ws(c) => c.request(body).await.expect("request"),
        }
    }

    /// The next event other than presence (announced asynchronously, so it
    /// may or may not fall into the script: see `common::next_event`).
    async fn next_event(&self) -> v1::Event {
        loop {
            let e = match self {
                Conn::Quic(c) => tokio::time::timeout(T, c.next_event()).await,
                Conn::Ws(c) => tokio::time::timeout(T, c.next_event()).await,
            };
            let e = e.expect("event in time").expect("connection open");
            if !matches!(e.kind, Some(v1::event::Kind::Presence(_))) {
                return e;
            }
        }
    }
}

/// A scripted conversation: alice (QUIC) and carol (QUIC) talk to bob, who
/// is connected over `transport`; returns bob's event sequence and his
/// replies' kinds.
async fn script(over_ws: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (carol, _) = server.user("carol").await;
    let bob = if over_ws {
        Conn::Ws(ws_user(&server, "bob").await.0)
    } else {
        Conn::Quic(server.user("bob").await.0)
    };
    let mut seen = Vec::new();
    let a = alice.send_text("bob", "one").await.unwrap();
    seen.push(normalize(&bob.next_event().await));
    alice.send_text("bob", "two").await.unwrap();
    seen.push(normalize(&bob.next_event().await));
    let r = bob.request(send_to("alice", "reply", "r1")).await;
    seen.push(format!("{:?}", std::mem::discriminant(&r)));
    // Bob reads alice's messages; alice sees it (not an event for bob).
    bob.request(Body::Receipt(v1::ReceiptRequest {
        chat_id: a.chat_id,
        kind: v1::ReceiptKind::Read as i32,
        seq: 2,
    }))
    .await;
    // Alice reads bob's reply: bob gets the receipt.
    alice.receipt(a.chat_id, v1::ReceiptKind::Read, 3).await.unwrap();
    seen.push(normalize(&bob.next_event().await));
    // A group with all three: creation, messages from both QUIC users.
    let g = carol.create_group("trio", &["alice", "bob"]).await.unwrap();
    let gid = g.info.unwrap().chat_id;
    seen.push(normalize(&bob.next_event().await));
    carol.send_text_to_chat(gid, "group hello").await.unwrap();
    seen.push(normalize(&bob.next_event().await));
    alice.send_text_to_chat(gid, "group reply").await.unwrap();
    seen.push(normalize(&bob.next_event().await));
    // Bob leaves; his last event is his own leaving.
    bob.request(Body::UpdateChat(v1::UpdateChatRequest {
        chat_id: gid,
        action: v1::ChatAction::Leave as i32,
        ..Default::default()
    }))
    .await;
    seen.push(normalize(&bob.next_event().await));
    // History and sync read the same over both.
    let h = bob
        .request(Body::History(v1::HistoryRequest {
            with_user: "alice".into(),
            limit: 10,
            ..Default::default()
        }))
        .await;
    let Body::HistoryPage(h) = h else { panic!("{h:?}") };
    seen.extend(h.messages.iter().map(|m| format!("history {} {}", m.seq, m.sender)));
    let s = bob.request(Body::Sync(v1::SyncRequest { limit: 100 })).await;
    let Body::SyncPage(s) = s else { panic!("{s:?}") };
    seen.extend(s.events.iter().map(normalize));
    server.stop().await;
    seen
}

#[tokio::test]
async fn the_same_conversation_gives_the_same_events_over_quic_and_websocket() {
    let quic = script(false).await;
    let ws = script(true).await;
    assert!(quic.len() >= 15, "the script produced events: {quic:#?}");
    assert_eq!(quic, ws, "QUIC and WebSocket must be indistinguishable to the session");
}

#[tokio::test]
async fn a_browser_that_stops_reading_is_disconnected_and_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.push_queue = 16;
    config.rate_limit = 100_000.0;
    config.rate_burst = 100_000.0;
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    let (bob, bob_token) = ws_user(&server, "bob").await;
    drop(bob);
    // Bob's browser: says Hello, then never reads again.
    let mut stalled = raw_session(&server, &bob_token).await;

    // Alice sends far more than the socket buffers and the push queue hold
    // (300 x 48 KiB = 14 MiB); every send is acknowledged regardless.
    let body = "x".repeat(48 * 1024);
    let mut acked = 0;
    for i in 0..300 {
        alice.send_text("bob", &format!("{i}:{body}")).await.unwrap();
        acked += 1;
    }
    // The server gave up on the stalled browser: reading now yields what
    // was buffered, then the end, well short of everything.
    let mut got = 0;
    let drained = tokio::time::timeout(T, async {
        while let Some(Ok(m)) = stalled.next().await {
            if matches!(m, Message::Binary(_)) {
                got += 1;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the server closed the stalled connection");
    assert!(
        got < acked,
        "disconnected before everything was pushed: got {got} of {acked}"
    );

    // On reconnect bob resyncs and has all 300, in order, once.
    let bob = WsClient::connect(server.https, &server.ca, &bob_token).await.unwrap();
    let mut texts = Vec::new();
    loop {
        let Body::SyncPage(p) = bob.request(Body::Sync(v1::SyncRequest { limit: 100 })).await.unwrap() else {
            panic!()
        };
        for e in &p.events {
            if let Some(v1::event::Kind::Message(m)) = &e.kind {
                texts.push(m.content.as_ref().unwrap().text.split(':').next().unwrap().to_string());
            }
        }
        let last = p.events.last().map(|e| e.pos);
        if let Some(pos) = last {
            bob.request(Body::Ack(v1::AckRequest { pos })).await.unwrap();
        }
        if !p.more {
            break;
        }
    }
    let want: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    assert_eq!(texts, want);
    server.stop().await;
}

/// The next presence event saying `user` is `online` (or not) seen by a
/// QUIC client; the opposite is skipped (a user's own "online" is announced
/// asynchronously and may reach a new contact late: see `mobile.rs`).
async fn presence_of(c: &Client, user: &str, online: bool) -> v1::Presence {
    loop {
        let e = tokio::time::timeout(T, c.next_event())
            .await
            .expect("presence in time")
            .expect("open");
        if let Some(v1::event::Kind::Presence(p)) = e.kind
            && p.user == user
            && p.online == online
        {
            return p;
        }
    }
}

#[tokio::test]
async fn a_silent_browser_is_timed_out_and_goes_offline_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.idle_timeout_secs = 1;
    config.presence_grace_secs = 2.0;
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    let (bob, bob_token) = ws_user(&server, "bob").await;
    bob.request(send_to("alice", "hi", "h1")).await.unwrap(); // now contacts
    common::next_message(&alice).await;

    // A clean close (code 1000) ends presence at once.
    bob.close().await;
    assert!(!presence_of(&alice, "bob", false).await.online);

    // Bob's browser comes back, then its tab freezes: it neither sends nor
    // reads, so it never answers the server's pings.
    let mut frozen = ws::connect_raw(server.https, &server.ca, Some("quip.v1"))
        .await
        .unwrap();
    let hello = v1::Hello {
        versions: vec![1],
        token: bob_token,
        ..Default::default()
    };
    frozen.send(ws::binary(0, Body::Hello(hello))).await.unwrap();
    assert!(presence_of(&alice, "bob", true).await.online);
    let frozen_at = std::time::Instant::now();
    // Silence for the idle timeout (1 s) ends the connection; the grace
    // period (2 s, counted from the last message heard) then ends presence.
    let p = presence_of(&alice, "bob", false).await;
    let took = frozen_at.elapsed();
    assert!(!p.online);
    assert!(
        took >= Duration::from_millis(1500),
        "offline after {took:?}: idle timeout and grace not respected"
    );
    // The server closed the socket: reading it now ends (after any pings).
    let ended = tokio::time::timeout(T, async {
        while let Some(Ok(m)) = frozen.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server ended the silent connection");
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_websocket_message_is_closed_with_1009() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let raw = ws::connect_raw(server.https, &server.ca, Some("quip.v1"))
        .await
        .unwrap();
    let (mut tx, mut rx) = raw.split();
    let hello = v1::Hello {
        versions: vec![1],
        ..Default::default()
    };
    tx.send(ws::binary(0, Body::Hello(hello))).await.unwrap();
    let Some(Ok(Message::Binary(_welcome))) = rx.next().await else {
        panic!()
    };
    // Over the 2 MiB the WebSocket layer takes: the server stops reading at
    // the frame's header, so the sending runs on while the answer is read.
    let big = Message::Binary(vec![0u8; (2 << 20) + 1].into());
    let sending = tokio::spawn(async move {
        let _ = tx.send(big).await;
        tx
    });
    let close = tokio::time::timeout(T, async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => {}
                other => panic!("the connection ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame in time")
    .expect("with a code");
    assert_eq!(u16::from(close.code), 1009, "Message Too Big: {close:?}");
    let _ = sending.await;
    // Everyone else is still served.
    assert_eq!(alice.whoami().await.unwrap().user, "alice");
    server.stop().await;
}

#[tokio::test]
async fn a_ping_flood_that_never_reads_the_pongs_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, bob_token) = ws_user(&server, "bob").await;
    drop(bob);
    let mut raw = raw_session(&server, &bob_token).await;
    // Pings with the largest payload a control frame may carry, never
    // reading the pongs: each would queue in the server's write buffer.
    const PINGS: usize = 2000;
    let mut sent = 0;
    for _ in 0..PINGS {
        if raw.send(Message::Ping(vec![7u8; 125].into())).await.is_err() {
            break;
        }
        sent += 1;
    }
    // Reading now: a few pongs, then the server's close, long before the
    // last ping was answered.
    let mut pongs = 0;
    let close = tokio::time::timeout(T, async {
        loop {
            match raw.next().await {
                Some(Ok(Message::Pong(_))) => pongs += 1,
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("the server closed the flooding connection");
    let close = close.expect("with a close frame");
    assert_eq!(u16::from(close.code), 1008, "policy violation: {close:?}");
    assert!(
        pongs < PINGS,
        "closed before answering every ping: {pongs} pongs for {sent} pings"
    );
    // Everyone else is still served, bob's browser included.
    assert_eq!(alice.whoami().await.unwrap().user, "alice");
    let bob = WsClient::connect(server.https, &server.ca, &bob_token).await.unwrap();
    assert!(bob.request(Body::Ping(v1::PingRequest {})).await.is_ok());
    server.stop().await;
}

/// Spec §19.3 (issue 21): a message over the 1 MiB frame limit but within
/// the WebSocket layer's 2 MiB gets `FRAME_TOO_LARGE` with id 0, then close
/// code 4001; only a larger one gets the bare 1009 above.
#[tokio::test]
async fn a_websocket_message_over_the_frame_limit_gets_frame_too_large_and_4001() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut raw = ws::connect_raw(server.https, &server.ca, Some("quip.v1"))
        .await
        .unwrap();
    let hello = v1::Hello {
        versions: vec![1],
        ..Default::default()
    };
    raw.send(ws::binary(0, Body::Hello(hello))).await.unwrap();
    let Some(Ok(Message::Binary(_welcome))) = raw.next().await else {
        panic!("no Welcome")
    };
    raw.send(Message::Binary(vec![0u8; (1 << 20) + (1 << 19)].into()))
        .await
        .unwrap();
    let (mut error, mut close) = (None, None);
    tokio::time::timeout(T, async {
        while let Some(Ok(m)) = raw.next().await {
            match m {
                Message::Binary(b) => error = Some(Envelope::decode(&b[..]).unwrap()),
                Message::Close(f) => {
                    close = f.map(|f| u16::from(f.code));
                    return;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("closed in time");
    let error = error.expect("an Error before the close");
    assert_eq!(error.id, 0);
    assert!(
        matches!(&error.body, Some(Body::Error(e)) if e.code == ErrorCode::FrameTooLarge as i32),
        "{error:?}"
    );
    assert_eq!(close, Some(4001));
    server.stop().await;
}
