//! Points where `spec/protocol.md` once was silent or contradicted the server
//! (issue 21): each test pins what the spec now says, against a real quipd.

mod common;

use std::time::Duration;

use common::raw::{close_code, exchange, frame, read_all};
use common::*;
use quip_client::{AckTracker, Client};
use quip_protocol::v1::{self, ErrorCode, ReceiptKind};
use quip_protocol::{Body, CloseCode, Envelope, FrameDecoder};
use tokio::io::AsyncReadExt;

fn hello(id: u64, token: &str) -> Envelope {
    Envelope::new(
        id,
        Body::Hello(v1::Hello {
            versions: vec![1],
            token: token.into(),
            client: "spec".into(),
            background: true,
        }),
    )
}

/// (id, error code) of an error frame.
fn error_of(env: &Envelope) -> Option<(u64, ErrorCode)> {
    match &env.body {
        Some(Body::Error(e)) => Some((env.id, ErrorCode::try_from(e.code).ok()?)),
        _ => None,
    }
}

fn receipts(events: &[v1::Event]) -> Vec<(ReceiptKind, u64)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::event::Kind::Receipt(r)) => Some((r.kind(), r.seq)),
            _ => None,
        })
        .collect()
}

/// Gap 1 (§8, §9): a READ lands in the reader's own log for their other
/// devices; the acting device is told the position in `ReceiptResponse.pos`
/// and so can acknowledge past it without a sync.
#[tokio::test]
async fn receipt_response_tells_the_acting_device_its_log_position() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (bob, _) = server.user("bob").await;
    let (alice, _) = server.user("alice").await;
    let (alice2, _) = server.device("alice").await;
    let sent = bob.send_text("alice", "hi").await.unwrap();
    let (p1, _) = next_message(&alice).await;
    let (p2, _) = next_message(&alice2).await;
    assert_eq!(p1, p2, "one log, shared by the devices");

    // DELIVERED appends nothing to alice's own log.
    let delivered = alice
        .receipt_stored(sent.chat_id, ReceiptKind::Delivered, 0)
        .await
        .unwrap();
    assert_eq!((delivered.seq, delivered.pos), (sent.seq, 0));

    let read = alice.receipt_stored(sent.chat_id, ReceiptKind::Read, 0).await.unwrap();
    assert_eq!(read.seq, sent.seq);
    assert_eq!(read.pos, p1 + 1, "the READ is the next entry of alice's log");
    // The other device is pushed the same entry at that position...
    let e = next_event(&alice2).await;
    assert_eq!(e.pos, read.pos);
    assert!(matches!(e.kind, Some(v1::event::Kind::Receipt(ref r)) if r.kind() == ReceiptKind::Read));
    // ...the acting device is not, and with `pos` acknowledges the whole log.
    let mut tracker = AckTracker::new(0);
    let page = alice.sync(0).await.unwrap();
    tracker.server_position(page.acked);
    assert!(tracker.observe(p1));
    assert!(tracker.observe(read.pos));
    assert_eq!(tracker.take_ack(), Some(page.head));
    assert_eq!(alice.ack(page.head).await.unwrap(), read.pos);

    // A cursor that does not move appends nothing.
    let again = alice.receipt_stored(sent.chat_id, ReceiptKind::Read, 0).await.unwrap();
    assert_eq!((again.seq, again.pos), (sent.seq, 0));
    server.stop().await;
}

/// Gap 6 (§8): READ moves the delivered cursor too, but only a READ receipt
/// is appended, which also means delivered.
#[tokio::test]
async fn a_read_appends_only_a_read_receipt_and_implies_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (bob, _) = server.user("bob").await;
    let (alice, _) = server.user("alice").await;
    let sent = bob.send_text("alice", "one").await.unwrap();
    bob.send_text("alice", "two").await.unwrap();
    alice.receipt(sent.chat_id, ReceiptKind::Read, 0).await.unwrap();

    // A new device of bob's reads his whole log: his two messages, one READ.
    let (bob2, _) = server.device("bob").await;
    let log = bob2.sync_all(&mut AckTracker::new(0)).await.unwrap();
    assert_eq!(receipts(&log), vec![(ReceiptKind::Read, 2)]);
    let chat = bob2.chats().await.unwrap().remove(0);
    assert_eq!((chat.peer_delivered_seq, chat.peer_read_seq), (2, 2));
    server.stop().await;
}

/// Gap 7 (§7.5): a reply reads the peer's messages; the pushed READ says the
/// seq before the reply, the chat list the reply's own seq.
#[tokio::test]
async fn a_reply_pushes_read_up_to_the_seq_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (bob, _) = server.user("bob").await;
    let (alice, _) = server.user("alice").await;
    bob.send_text("alice", "one").await.unwrap();
    bob.send_text("alice", "two").await.unwrap();
    let reply = alice.send_text("bob", "hello both").await.unwrap();
    assert_eq!(reply.seq, 3);

    let mut read = None;
    while read.is_none() {
        if let Some(v1::event::Kind::Receipt(r)) = next_event(&bob).await.kind {
            read = Some((r.kind(), r.seq));
        }
    }
    assert_eq!(read, Some((ReceiptKind::Read, 2)));
    let chat = bob.chats().await.unwrap().remove(0);
    assert_eq!(chat.peer_read_seq, 3);

    // Nothing of bob's unread: a second reply pushes no receipt.
    alice.send_text("bob", "and again").await.unwrap();
    let (bob2, _) = server.device("bob").await;
    let log = bob2.sync_all(&mut AckTracker::new(0)).await.unwrap();
    assert_eq!(receipts(&log), vec![(ReceiptKind::Read, 2)]);
    server.stop().await;
}

/// Gap 3 (§9): presence and typing events, like `advanced`, have pos 0.
#[tokio::test]
async fn presence_and_typing_events_have_position_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (bob, _) = server.user("bob").await;
    // Registered on a background connection: not online yet.
    let mut background = server.options();
    background.background = true;
    let alice_token = Client::connect(&background)
        .await
        .unwrap()
        .register("alice", PASSWORD, "test")
        .await
        .unwrap()
        .token;
    let sent = bob.send_text("alice", "hi").await.unwrap();
    // A foreground connection of alice's makes her online to bob.
    let alice = Client::connect(&server.options().token(&alice_token)).await.unwrap();
    let presence = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = bob.next_event().await.expect("open");
            if matches!(e.kind, Some(v1::event::Kind::Presence(ref p)) if p.user == "alice" && p.online) {
                return e;
            }
        }
    })
    .await
    .expect("alice's presence");
    assert_eq!(presence.pos, 0);
    alice.typing(sent.chat_id).await.unwrap();
    let typing = next_matching(&bob, |e| matches!(e.kind, Some(v1::event::Kind::Typing(_)))).await;
    assert_eq!(typing.pos, 0);
    server.stop().await;
}

/// Gap 8 (§4, §10): an error answering a decoded frame carries its id, also
/// before a close; one about undecodable bytes carries 0; both on the stream
/// whose bytes caused them.
#[tokio::test]
async fn errors_carry_the_id_of_the_frame_they_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;

    let (frames, code) = exchange(&server, &frame(&Envelope::new(5, Body::Ping(v1::PingRequest {}))), true).await;
    assert_eq!(
        frames.iter().map(error_of).collect::<Vec<_>>(),
        vec![Some((5, ErrorCode::HandshakeRequired))]
    );
    assert_eq!(code, Some(CloseCode::ProtocolError));

    let (frames, code) = exchange(&server, &[0xff; 16], true).await;
    assert_eq!(
        frames.iter().map(error_of).collect::<Vec<_>>(),
        vec![Some((0, ErrorCode::MalformedFrame))]
    );
    assert_eq!(code, Some(CloseCode::ProtocolError));

    // On a request stream other than the control stream.
    let (_ep, conn) = Client::connect_raw(&server.options()).await.unwrap();
    let (mut ctl_send, mut ctl_recv) = conn.open_bi().await.unwrap();
    ctl_send.write_all(&frame(&hello(1, ""))).await.unwrap();
    let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
    while dec.decode().unwrap().is_none() {
        ctl_recv.read_buf(dec.buffer_mut()).await.unwrap();
    }
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut bytes = frame(&Envelope::new(7, Body::Ping(v1::PingRequest {})));
    bytes.extend_from_slice(&[0xff; 16]);
    send.write_all(&bytes).await.unwrap();
    let frames = read_all(&mut recv).await;
    assert!(matches!(frames[0].body, Some(Body::Pong(_))) && frames[0].id == 7);
    assert_eq!(error_of(&frames[1]), Some((0, ErrorCode::MalformedFrame)));
    assert_eq!(close_code(&conn).await, Some(CloseCode::ProtocolError));
    server.stop().await;
}

/// Gap 9 (§3, §4): a stream that ends mid-frame is MALFORMED_FRAME (id 0)
/// after the earlier requests' answers, then close code 1; a request with
/// id 0 is answered with id 0.
#[tokio::test]
async fn a_stream_ending_mid_frame_and_a_request_with_id_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut bytes = frame(&hello(1, ""));
    bytes.extend(frame(&Envelope::new(0, Body::Ping(v1::PingRequest {}))));
    let partial = frame(&Envelope::new(3, Body::Ping(v1::PingRequest {})));
    bytes.extend_from_slice(&partial[..partial.len() - 1]);
    let (frames, code) = exchange(&server, &bytes, true).await;
    assert!(matches!(frames[0].body, Some(Body::Welcome(_))));
    assert!(matches!(frames[1].body, Some(Body::Pong(_))) && frames[1].id == 0);
    assert_eq!(error_of(&frames[2]), Some((0, ErrorCode::MalformedFrame)));
    assert_eq!(frames.len(), 3);
    assert_eq!(code, Some(CloseCode::ProtocolError));
    server.stop().await;
}

/// Gap 9: outcomes the spec now states — login on a logged-in connection,
/// history naming both or neither target, typing in a channel (§7.2, §7.6,
/// §18.2).
#[tokio::test]
async fn stated_outcomes_for_odd_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (_bob, _) = server.user("bob").await;
    let sent = alice.send_text("bob", "hi").await.unwrap();
    assert_eq!(
        code(alice.login("bob", PASSWORD, "x").await),
        Some(ErrorCode::InvalidArgument)
    );
    for (with_user, chat_id) in [("bob", sent.chat_id), ("", 0)] {
        let r = alice
            .history_page(v1::HistoryRequest {
                with_user: with_user.into(),
                chat_id,
                ..Default::default()
            })
            .await;
        assert_eq!(code(r), Some(ErrorCode::InvalidArgument), "{with_user:?} {chat_id}");
    }
    let channel = alice.create_channel("news").await.unwrap().info.unwrap().chat_id;
    let r = alice
        .request(Body::Typing(v1::TypingRequest { chat_id: channel }))
        .await;
    assert_eq!(code(r), Some(ErrorCode::InvalidArgument));
    server.stop().await;
}

/// Gap 2 (§7.1, `security.md` §4): tokens expire `--token-ttl-secs` after
/// their login: a Hello with one is refused, open connections close with 9.
#[tokio::test]
async fn tokens_expire_after_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quip_server::Config::for_tests(dir.path());
    config.token_ttl_secs = 1;
    let server = TestServer::start_with(config).await;
    let (alice, token) = server.user("alice").await;
    let (code, _) = tokio::time::timeout(Duration::from_secs(5), alice.closed())
        .await
        .expect("closed when the token expires");
    assert_eq!(code, Some(CloseCode::SessionExpired));
    let Err(err) = Client::connect(&server.options().token(&token)).await else {
        panic!("an expired token opened a connection");
    };
    assert!(err.to_string().contains("log in again"), "{err}");
    server.stop().await;
}

/// Gap 9 (§18.1): presence belongs to no chat and travels on push lane 0,
/// the lane of chats whose id is a multiple of `push_lanes`.
#[tokio::test]
async fn presence_travels_on_push_lane_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut background = server.options();
    background.background = true;
    let alice = Client::connect(&background).await.unwrap();
    let alice_token = alice.register("alice", PASSWORD, "test").await.unwrap().token;
    let bob_token = Client::connect(&background)
        .await
        .unwrap()
        .register("bob", PASSWORD, "test")
        .await
        .unwrap()
        .token;

    // Bob on a raw connection: every pushed frame with the stream it came on.
    let (_ep, conn) = Client::connect_raw(&background).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(&hello(1, &bob_token))).await.unwrap();
    let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
    let welcome = loop {
        if let Some(env) = dec.decode().unwrap() {
            break env;
        }
        recv.read_buf(dec.buffer_mut()).await.unwrap();
    };
    let Some(Body::Welcome(welcome)) = welcome.body else {
        panic!("expected Welcome: {welcome:?}")
    };
    let lanes = u64::from(welcome.push_lanes);
    let (tx, mut pushed) = tokio::sync::mpsc::unbounded_channel::<(u64, v1::Event)>();
    tokio::spawn(async move {
        while let Ok(mut lane) = conn.accept_uni().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = lane.id().index();
                let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
                loop {
                    while let Ok(Some(env)) = dec.decode() {
                        if let Some(Body::Event(e)) = env.body {
                            let _ = tx.send((stream, e));
                        }
                    }
                    dec.buffer_mut().reserve(4096);
                    if !matches!(lane.read_buf(dec.buffer_mut()).await, Ok(n) if n > 0) {
                        return;
                    }
                }
            });
        }
    });
    // The stream of the first push each predicate accepts, in any order.
    let mut streams = async |want: &[&dyn Fn(&v1::Event) -> bool]| {
        let mut found: Vec<Option<u64>> = vec![None; want.len()];
        while found.iter().any(Option::is_none) {
            let (stream, e) = tokio::time::timeout(Duration::from_secs(5), pushed.recv())
                .await
                .expect("a push within 5 s")
                .expect("pushes");
            for (slot, w) in found.iter_mut().zip(want) {
                if slot.is_none() && w(&e) {
                    *slot = Some(stream);
                }
            }
        }
        found.into_iter().map(Option::unwrap).collect::<Vec<u64>>()
    };
    let is_message_in =
        |chat: u64| move |e: &v1::Event| matches!(&e.kind, Some(v1::event::Kind::Message(m)) if m.chat_id == chat);
    // Contacts through a direct chat; then groups until one lands on lane 0.
    let direct = alice.send_text("bob", "hi").await.unwrap().chat_id;
    let mut lane_zero = 0;
    while lane_zero == 0 {
        let id = alice.create_group("g", &["bob"]).await.unwrap().info.unwrap().chat_id;
        if id % lanes == 0 {
            lane_zero = id;
        }
    }
    assert_ne!(direct % lanes, 0, "the direct chat is on another lane");
    let found = streams(&[&is_message_in(direct), &is_message_in(lane_zero)]).await;
    let (direct_stream, zero_stream) = (found[0], found[1]);
    assert_ne!(direct_stream, zero_stream);

    // Alice comes online: bob is told on lane 0.
    let _alice_online = Client::connect(&server.options().token(&alice_token)).await.unwrap();
    let presence = streams(&[&|e: &v1::Event| matches!(e.kind, Some(v1::event::Kind::Presence(_)))]).await;
    assert_eq!(presence[0], zero_stream);
    server.stop().await;
}
