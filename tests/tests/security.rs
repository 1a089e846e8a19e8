//! Security: who may do what (an authorization matrix over every request
//! that names a chat), login throttling, token expiry and revocation, and
//! blocking. Real quipd on loopback, real store.

mod common;

use std::time::Duration;

use common::*;
use quip_client::{Client, ClientError};
use quip_protocol::Body;
use quip_protocol::v1::{self, ChatAction, ErrorCode, ReceiptKind};
use quip_server::Config;

/// Every request that names a chat, as a closure over a client and chat id.
fn requests() -> Vec<(&'static str, Body)> {
    let chat = 0; // replaced per call
    let send = v1::SendRequest {
        chat_id: chat,
        client_msg_id: "authz".into(),
        content: Some(v1::Content {
            text: "x".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        ("send", Body::Send(send)),
        (
            "history",
            Body::History(v1::HistoryRequest {
                chat_id: chat,
                ..Default::default()
            }),
        ),
        (
            "receipt",
            Body::Receipt(v1::ReceiptRequest {
                chat_id: chat,
                kind: ReceiptKind::Read as i32,
                seq: 0,
            }),
        ),
        ("chat_info", Body::ChatInfo(v1::ChatInfoRequest { chat_id: chat })),
        (
            "receipt_detail",
            Body::ReceiptDetail(v1::ReceiptDetailRequest { chat_id: chat }),
        ),
        (
            "rename",
            Body::UpdateChat(v1::UpdateChatRequest {
                chat_id: chat,
                action: ChatAction::Rename as i32,
                name: "mine now".into(),
                ..Default::default()
            }),
        ),
        ("typing", Body::Typing(v1::TypingRequest { chat_id: chat })),
    ]
}

fn with_chat(body: &Body, chat_id: u64) -> Body {
    let mut b = body.clone();
    match &mut b {
        Body::Send(r) => r.chat_id = chat_id,
        Body::History(r) => r.chat_id = chat_id,
        Body::Receipt(r) => r.chat_id = chat_id,
        Body::ChatInfo(r) => r.chat_id = chat_id,
        Body::ReceiptDetail(r) => r.chat_id = chat_id,
        Body::UpdateChat(r) => r.chat_id = chat_id,
        Body::Typing(r) => r.chat_id = chat_id,
        _ => unreachable!(),
    }
    b
}

/// What a request came to: Ok, or the error code.
async fn outcome(c: &Client, body: Body) -> Result<(), ErrorCode> {
    match c.request(body).await {
        Ok(_) => Ok(()),
        Err(ClientError::Server { code, .. }) => Err(code),
        Err(e) => panic!("transport failure: {e}"),
    }
}

#[tokio::test]
async fn authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.rate_burst = 1000.0;
    config.typing_rate = 1000.0;
    let server = TestServer::start_with(config).await;
    let (owner, _) = server.user("owner").await;
    let (member, member_token) = server.user("member").await;
    let (outsider, _) = server.user("outsider").await;
    let (removed, _) = server.user("removed").await;
    let group = owner
        .create_group("g", &["member", "removed"])
        .await
        .unwrap()
        .info
        .unwrap()
        .chat_id;
    owner
        .update_chat(group, ChatAction::RemoveMembers, &["removed"], "")
        .await
        .unwrap();
    let direct = owner.send_text("member", "hi").await.unwrap().chat_id;
    // A logged-out token: its connection is closed and it cannot reconnect.
    let (gone, gone_token) = server.device("member").await;
    gone.logout().await.unwrap();

    use ErrorCode::*;
    let ok = Ok(());
    // (role, client, chat) → expected outcome per request, in requests() order:
    // send, history, receipt, chat_info, receipt_detail, rename, typing.
    type Case<'a> = (&'a str, &'a Client, u64, [Result<(), ErrorCode>; 7]);
    let cases: Vec<Case> = vec![
        ("owner/group", &owner, group, [ok, ok, ok, ok, ok, ok, ok]),
        ("member/group", &member, group, [ok, ok, ok, ok, ok, Err(Forbidden), ok]),
        ("outsider/group", &outsider, group, [Err(Forbidden); 7]),
        ("removed/group", &removed, group, [Err(Forbidden); 7]),
        (
            "owner/direct",
            &owner,
            direct,
            [ok, ok, ok, Err(InvalidArgument), ok, Err(InvalidArgument), ok],
        ),
        ("outsider/direct", &outsider, direct, [Err(Forbidden); 7]),
        ("anyone/unknown chat", &outsider, 987_654, [Err(NotFound); 7]),
    ];
    for (role, client, chat, expected) in cases {
        for ((name, body), want) in requests().into_iter().zip(expected) {
            let got = outcome(client, with_chat(&body, chat)).await;
            assert_eq!(got, want, "{role}: {name}");
        }
    }
    // Anonymous connections: everything needs a login.
    let anon = server.connect().await;
    for (name, body) in requests() {
        assert_eq!(
            outcome(&anon, with_chat(&body, group)).await,
            Err(Unauthenticated),
            "anonymous: {name}"
        );
    }
    // The logged-out token is refused at the handshake (close code 5);
    // the same user's other device is unaffected.
    let r = Client::connect(&server.options().token(gone_token)).await;
    assert!(r.is_err(), "revoked token must not connect");
    let still = server.connect_as(&member_token).await;
    assert_eq!(still.whoami().await.unwrap().user, "member");
    // Another user's device never sees this user's log.
    assert!(
        outsider.sync(0).await.unwrap().events.iter().all(|e| match &e.kind {
            Some(v1::event::Kind::Message(m)) => m.chat_id != group && m.chat_id != direct,
            _ => true,
        }),
        "the outsider's log holds nothing of the others' chats"
    );
    server.stop().await;
}

#[tokio::test]
async fn login_guessing_is_throttled_per_account_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.login_failures_per_account = 3;
    config.login_failures_per_ip = 6;
    let server = TestServer::start_with(config).await;
    server.users_fast("victim", 1).await;
    server.users_fast("other", 3).await;
    let c = server.connect().await;
    for _ in 0..3 {
        assert_eq!(
            code(c.login("victim0", "guess guess", "x").await),
            Some(ErrorCode::InvalidCredentials)
        );
    }
    // The account is locked for a while: even the right password waits.
    let e = c.login("victim0", PASSWORD, "x").await.unwrap_err();
    let ClientError::Server {
        code: locked,
        retry_after_ms,
        ..
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!(locked, ErrorCode::RateLimited);
    assert!(retry_after_ms > 1000, "{retry_after_ms}");
    // Other accounts still work from here, until the address runs out too.
    assert!(c.login("other0", PASSWORD, "x").await.is_ok());
    let c = server.connect().await;
    for name in ["other1", "other2", "other1"] {
        assert_eq!(
            code(c.login(name, "guess guess", "x").await),
            Some(ErrorCode::InvalidCredentials)
        );
    }
    assert_eq!(
        code(c.login("other2", PASSWORD, "x").await),
        Some(ErrorCode::RateLimited),
        "address budget used up"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_blocked_user_cannot_reach_me_and_cannot_tell() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (mallory, _) = server.user("mallory").await;
    let chat = mallory.send_text("alice", "hello").await.unwrap().chat_id;
    next_message(&alice).await;
    alice.receipt(chat, ReceiptKind::Read, 0).await.unwrap();
    assert_eq!(alice.block("mallory", false).await.unwrap(), vec!["mallory"]);
    while tokio::time::timeout(Duration::from_millis(200), mallory.next_event())
        .await
        .is_ok()
    {}

    // Mallory's sends look normal to mallory...
    let sent = mallory.send_text("alice", "are you there?").await.unwrap();
    assert_eq!(sent.seq, 2);
    assert_eq!(mallory.history("alice", 0, 10).await.unwrap().messages.len(), 2);
    // ...but never reach alice: no push, no sync, no history, no chat list.
    no_event(&alice).await;
    let (alice2, _) = server.device("alice").await;
    let synced = alice2.sync_all(&mut quip_client::AckTracker::new(0)).await.unwrap();
    assert!(synced.iter().all(|e| match &e.kind {
        Some(v1::event::Kind::Message(m)) => text(m) != "are you there?",
        _ => true,
    }));
    let h = alice.history("mallory", 0, 10).await.unwrap();
    assert_eq!(h.messages.iter().map(text).collect::<Vec<_>>(), vec!["hello"]);
    let c = &alice.chats().await.unwrap()[0];
    assert_eq!((c.unread, c.last_message.as_ref().map(text)), (0, Some("hello")));
    // Alice reading everything gives mallory no tick for the hidden message.
    alice.receipt(chat, ReceiptKind::Read, 0).await.unwrap();
    let m = &mallory.chats().await.unwrap()[0];
    assert_eq!((m.peer_delivered_seq, m.peer_read_seq), (1, 1));
    // No presence or typing either.
    assert!(!mallory.presence(&["alice"]).await.unwrap()[0].visible);
    mallory.typing(chat).await.unwrap();
    no_event(&alice).await;
    // Unblocking lets new messages through (not the hidden one).
    assert!(alice.block("mallory", true).await.unwrap().is_empty());
    mallory.send_text("alice", "sorry").await.unwrap();
    let (_, m) = next_message(&alice).await;
    assert_eq!(text(&m), "sorry");
    assert_eq!(
        code(alice.block("alice", false).await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(code(alice.block("nobody", false).await), Some(ErrorCode::NotFound));
    server.stop().await;
}
