//! Attacks by registered users and anonymous clients that once worked:
//! poison messages, chat-list floods, group adds without consent, racing
//! the login throttle, password-hashing floods, registration floods, and
//! tokens that kept working on open connections after logout or expiry.
//! Each test reproduces the attack against a real quipd on loopback.

mod common;

use std::time::Duration;

use common::*;
use quip_client::{Client, ClientError};
use quip_protocol::CloseCode;
use quip_protocol::v1::{self, ChatAction, ErrorCode};
use quip_server::Config;

fn content(text: String, content_type: String) -> v1::Content {
    v1::Content {
        text,
        content_type,
        ..Default::default()
    }
}

async fn send_content(
    c: &Client,
    to: &str,
    chat_id: u64,
    content: v1::Content,
) -> Result<v1::SendResponse, ClientError> {
    c.send(v1::SendRequest {
        to_user: to.into(),
        chat_id,
        client_msg_id: format!("{:x}", rand_id()),
        content: Some(content),
    })
    .await
}

fn rand_id() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    u128::from(N.fetch_add(1, Ordering::Relaxed))
}

/// `content_type` once did not count toward the body limit, so one message
/// of ~1 MiB made every page that held it too large to send: the
/// recipient's sync, history and chat list failed for good.
#[tokio::test]
async fn every_client_field_counts_toward_the_body_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mallory, _) = server.user("mallory").await;
    let (alice, _) = server.user("alice").await;
    let max = mallory.welcome().max_body as usize;

    let poison = content("hi".into(), "x".repeat(900 * 1024));
    let e = send_content(&mallory, "alice", 0, poison).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BodyTooLarge), "{e}");
    // Split across the fields, the sum is what counts.
    let split = content("t".repeat(max / 2), "c".repeat(max / 2 + 1));
    let e = send_content(&mallory, "alice", 0, split).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BodyTooLarge), "{e}");
    let at_limit = content("t".repeat(max / 2), "c".repeat(max - max / 2));
    send_content(&mallory, "alice", 0, at_limit).await.unwrap();

    // Twenty messages at the limit: pages are cut by bytes, not only by
    // count, and paging makes progress to the end.
    for _ in 0..20 {
        send_content(&mallory, "alice", 0, content("m".repeat(max), String::new()))
            .await
            .unwrap();
    }
    let mut before = 0;
    let mut seen = 0;
    loop {
        let page = alice.history("mallory", before, 200).await.unwrap();
        assert!(!page.messages.is_empty());
        seen += page.messages.len();
        before = page.messages.last().unwrap().seq;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, 21);
    let synced = alice.sync_all(&mut quip_client::AckTracker::new(0)).await.unwrap();
    assert_eq!(message_texts(&synced).len(), 21);
    assert_eq!(alice.chats().await.unwrap().len(), 1);
    assert_eq!(mallory.chats().await.unwrap().len(), 1);
    server.stop().await;
}

/// Sixteen groups each ending in a message at the body limit once made the
/// chat list larger than a frame: anyone could add anyone, so anyone could
/// break anyone's chat list.
#[tokio::test]
async fn the_chat_list_is_paged_and_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.max_body = 200 * 1024;
    let server = TestServer::start_with(config).await;
    let (mallory, _) = server.user("mallory").await;
    let (victim, _) = server.user("victim").await;
    let max = mallory.welcome().max_body as usize;
    for i in 0..16 {
        let chat = mallory
            .create_group(&format!("g{i}"), &["victim"])
            .await
            .unwrap()
            .info
            .unwrap()
            .chat_id;
        send_content(&mallory, "", chat, content("x".repeat(max), String::new()))
            .await
            .unwrap();
    }
    // One page cannot hold them all; pages follow each other to the end,
    // most recently active first, each chat once.
    let first = victim.chats_page(0, None).await.unwrap();
    assert!(
        !first.chats.is_empty() && first.chats.len() < 16,
        "{}",
        first.chats.len()
    );
    assert!(first.next.is_some());
    let all = victim.chats().await.unwrap();
    assert_eq!(all.len(), 16);
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    let expected: Vec<String> = (0..16).rev().map(|i| format!("g{i}")).collect();
    assert_eq!(names, expected);
    // A limit cuts pages by count too.
    let small = victim.chats_page(3, None).await.unwrap();
    assert_eq!(small.chats.len(), 3);
    let next = victim.chats_page(3, small.next).await.unwrap();
    assert_eq!(next.chats[0].name, "g12");
    server.stop().await;
}

/// Who may add me to groups: everyone (the default), contacts (users I
/// have messaged) or nobody; someone I block gets the NOBODY answer.
#[tokio::test]
async fn group_adds_need_the_members_consent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let (_carol, _) = server.user("carol").await;
    let refused = |r: Result<v1::ChatInfoResponse, ClientError>| match r {
        Err(ClientError::Server { code, message, .. }) => (code, message),
        Ok(_) => panic!("the add went through"),
        Err(e) => panic!("{e}"),
    };

    assert_eq!(
        bob.set_group_adds(v1::GroupAdds::Nobody).await.unwrap(),
        v1::GroupAdds::Nobody
    );
    let nobody = refused(alice.create_group("g", &["bob", "carol"]).await);
    assert_eq!(nobody.0, ErrorCode::Forbidden);
    assert!(nobody.1.contains("bob"), "{}", nobody.1);
    // Nothing was created for anyone.
    assert!(alice.chats().await.unwrap().is_empty());

    // Contacts: only after bob has messaged alice. Alice messaging bob
    // does not make her one.
    bob.set_group_adds(v1::GroupAdds::Contacts).await.unwrap();
    alice.send_text("bob", "add you?").await.unwrap();
    assert_eq!(refused(alice.create_group("g", &["bob"]).await).0, ErrorCode::Forbidden);
    let group = alice.create_group("g", &["carol"]).await.unwrap().info.unwrap().chat_id;
    let add = alice.update_chat(group, ChatAction::AddMembers, &["bob"], "").await;
    assert_eq!(code(add), Some(ErrorCode::Forbidden));
    bob.send_text("alice", "sure").await.unwrap();
    alice
        .update_chat(group, ChatAction::AddMembers, &["bob"], "")
        .await
        .unwrap();

    // Carol allows everyone but blocks alice: the same answer as NOBODY.
    carol_blocks_alice(&server).await;
    let blocked = refused(alice.create_group("h", &["carol"]).await);
    assert_eq!(blocked.0, ErrorCode::Forbidden);
    assert_eq!(blocked.1, "carol does not accept being added to groups by you");
    // Settings answer with every setting; an UNSPECIFIED field is unchanged.
    assert_eq!(
        bob.set_last_seen_visibility(v1::Visibility::Nobody).await.unwrap(),
        v1::Visibility::Nobody
    );
    assert_eq!(
        bob.set_group_adds(v1::GroupAdds::Unspecified).await.unwrap(),
        v1::GroupAdds::Contacts
    );
    server.stop().await;
}

async fn carol_blocks_alice(server: &TestServer) {
    let (carol, _) = server.device("carol").await;
    carol.block("alice", false).await.unwrap();
}

/// The login budget was checked before and charged after the password
/// check, so parallel guesses all got checked. Now each attempt reserves
/// its cost first: of 40 parallel wrong guesses at most the budget (5) are
/// checked, and the right password, sent last, is refused too.
#[tokio::test]
async fn parallel_guesses_cannot_outrun_the_login_throttle() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.login_failures_per_account = 5;
    config.login_failures_per_ip = 1000;
    let server = TestServer::start_with(config).await;
    server.users_fast("victim", 1).await;
    let mut conns = Vec::new();
    for _ in 0..41 {
        conns.push(server.connect().await);
    }
    let right = conns.pop().unwrap();
    let guesses = futures::future::join_all(conns.iter().map(|c| c.login("victim0", "wrong guess", "x"))).await;
    let checked = guesses
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(ErrorCode::InvalidCredentials)))
        .count();
    let throttled = guesses
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(ErrorCode::RateLimited)))
        .count();
    assert!(checked <= 5, "{checked} passwords were checked against a budget of 5");
    assert_eq!(checked + throttled, 40);
    assert_eq!(
        code(right.login("victim0", PASSWORD, "x").await),
        Some(ErrorCode::RateLimited)
    );
    server.stop().await;
}

/// Argon2 runs are bounded: beyond the workers and their queue a login is
/// refused at once with a retry delay, instead of every request getting a
/// hashing thread and ~19 MiB.
#[tokio::test]
async fn password_hashing_is_bounded_and_refusals_are_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.login_failures_per_account = 1000;
    config.login_failures_per_ip = 1000;
    config.password_workers = 1;
    config.password_queue = 1;
    let server = TestServer::start_with(config).await;
    let mut conns = Vec::new();
    for _ in 0..12 {
        conns.push(server.connect().await);
    }
    // Unknown users cost the same argon2 run as known ones.
    let names: Vec<String> = (0..conns.len()).map(|i| format!("nobody{i}")).collect();
    let tries = futures::future::join_all(conns.iter().zip(&names).map(|(c, n)| c.login(n, "guess guess", "x"))).await;
    let mut refused = 0;
    for r in &tries {
        match r {
            Err(ClientError::Server {
                code: ErrorCode::RateLimited,
                retry_after_ms,
                ..
            }) => {
                assert!(*retry_after_ms > 0);
                refused += 1;
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}"),
            Ok(_) => panic!("an unknown user logged in"),
        }
    }
    assert!(
        refused >= 1,
        "12 parallel logins against one worker and a queue of one: none refused"
    );
    // Refused attempts were not charged as failures, and the pool admits
    // again once it drains.
    let c = server.connect().await;
    c.register("late", PASSWORD, "x").await.unwrap();
    server.stop().await;
}

/// Registration is throttled per address, after the cheap checks: a taken
/// name is answered without hashing and without using the budget.
#[tokio::test]
async fn registrations_are_throttled_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.registrations_per_ip_burst = 3;
    config.registrations_per_ip_per_hour = 1.0;
    let server = TestServer::start_with(config).await;
    for i in 0..3 {
        server
            .connect()
            .await
            .register(&format!("user{i}"), PASSWORD, "x")
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let taken = server.connect().await.register("user0", PASSWORD, "x").await;
        assert_eq!(code(taken), Some(ErrorCode::UsernameTaken));
    }
    let e = server
        .connect()
        .await
        .register("user3", PASSWORD, "x")
        .await
        .unwrap_err();
    let ClientError::Server {
        code, retry_after_ms, ..
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(retry_after_ms > 60_000, "{retry_after_ms}");
    server.stop().await;
}

/// Logout once revoked the token for new connections only: another
/// connection of the same device kept sending.
#[tokio::test]
async fn logout_closes_every_connection_of_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, token) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let second = server.connect_as(&token).await;
    let (other_device, _) = server.device("alice").await;
    alice.logout().await.unwrap();
    let (why, _) = tokio::time::timeout(Duration::from_secs(5), second.closed())
        .await
        .expect("the other connection of the device stays open");
    assert_eq!(why, Some(CloseCode::LoggedOut));
    assert!(second.send_text("bob", "still here").await.is_err());
    // The user's other device is not affected.
    other_device.send_text("bob", "hi").await.unwrap();
    next_message(&bob).await;
    server.stop().await;
}

/// 100 parallel logins once took quipd to 1.44 GB (and 100 registrations to
/// 1.61 GB): an argon2 run (~19 MiB) and a thread each. With the budgets
/// opened wide so every attempt reaches the hashing pool, peak memory now
/// grows by the pool's workers, not by the attempts.
#[tokio::test]
async fn parallel_logins_and_registrations_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::daemon::free_port();
    let wide = [
        "--login-failures-per-account",
        "100000",
        "--login-failures-per-ip",
        "100000",
        "--registrations-per-ip-burst",
        "100000",
    ];
    let daemon = common::daemon::Daemon::start(&data, port, &wide);
    let ca = common::daemon::Daemon::ready(&data).await;
    let opts = quip_client::ConnectOptions::new(format!("127.0.0.1:{port}"), Some(&ca)).unwrap();
    let mut conns = Vec::new();
    while conns.len() < 200 {
        match Client::connect(&opts).await {
            Ok(c) => conns.push(c),
            Err(e) if conns.is_empty() => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let before = daemon.peak_rss_kib();
    let names: Vec<String> = (0..200).map(|i| format!("flood{i}")).collect();
    let logins = futures::future::join_all(
        conns[..100]
            .iter()
            .zip(&names)
            .map(|(c, n)| c.login(n, "guess guess", "x")),
    )
    .await;
    let after_logins = daemon.peak_rss_kib();
    let registrations = futures::future::join_all(
        conns[100..]
            .iter()
            .zip(&names[100..])
            .map(|(c, n)| c.register(n, PASSWORD, "x")),
    )
    .await;
    let after_registrations = daemon.peak_rss_kib();
    let refused = |rs: &[Result<v1::AuthResponse, ClientError>]| {
        rs.iter()
            .filter(|r| matches!(r, Err(e) if e.code() == Some(ErrorCode::RateLimited)))
            .count()
    };
    eprintln!(
        "peak RSS: {} MiB at start; {} MiB after 100 parallel logins ({} refused as busy); \
         {} MiB after 100 parallel registrations ({} refused as busy)",
        before / 1024,
        after_logins / 1024,
        refused(&logins),
        after_registrations / 1024,
        refused(&registrations),
    );
    assert!(logins.iter().all(|r| r.is_err()));
    assert!(registrations.iter().any(|r| r.is_ok()));
    let growth = after_registrations.saturating_sub(before) / 1024;
    assert!(
        growth < 300,
        "peak RSS grew {growth} MiB under 200 parallel password checks"
    );
}
