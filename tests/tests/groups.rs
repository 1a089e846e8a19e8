//! Groups and channels end to end: real quipd on loopback QUIC, real store.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use quip_client::{AckTracker, Client};
use quip_protocol::v1::{self, ChatAction, ChatKind, ErrorCode, GroupEventKind, ReceiptKind};
use quip_server::Config;

fn seqs(events: &[v1::Event], chat: u64) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::event::Kind::Message(m)) if m.chat_id == chat => Some(m.seq),
            _ => None,
        })
        .collect()
}

/// Collects pushed messages of `chat` until one with `last` arrives.
async fn messages_until(c: &Client, chat: u64, last: u64) -> Vec<v1::Message> {
    let mut out = Vec::new();
    loop {
        let e = next_event(c).await;
        if let Some(v1::event::Kind::Message(m)) = e.kind
            && m.chat_id == chat
        {
            let done = m.seq == last;
            out.push(m);
            if done {
                return out;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_of_256_one_order_for_online_and_offline_members() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let users = server.users_fast("m", 256).await;
    let names: Vec<&str> = users.iter().map(|(n, _)| n.as_str()).collect();

    // 200 members online, 56 offline.
    let mut online = Vec::new();
    for (_, token) in &users[..200] {
        online.push(server.connect_as(token).await);
    }
    let created = online[0].create_group("everyone", &names[1..]).await.unwrap();
    let info = created.info.unwrap();
    assert_eq!(info.member_count, 256);
    assert_eq!(info.kind, ChatKind::Group as i32);
    let chat = info.chat_id;
    assert_eq!(created.event_seq, 1);

    // Eight members send five messages each, concurrently.
    let senders: Vec<&Client> = online.iter().step_by(25).collect();
    assert_eq!(senders.len(), 8);
    let sends = senders.iter().enumerate().map(|(i, c)| async move {
        let mut seqs = Vec::new();
        for k in 0..5 {
            seqs.push(c.send_text_to_chat(chat, &format!("{i}:{k}")).await.unwrap().seq);
        }
        seqs
    });
    let mut all: Vec<u64> = futures::future::join_all(sends).await.into_iter().flatten().collect();
    all.sort_unstable();
    // Seqs: 1 is the CREATED event, then 40 messages with no gap.
    assert_eq!(all, (2..=41).collect::<Vec<_>>());

    // Every online member that did not send sees every message live, in seq
    // order (pushes keep commit order); senders see all but their own.
    let expected: Vec<u64> = (1..=41).collect();
    let checks = online.iter().enumerate().map(|(i, c)| {
        let expected = &expected;
        async move {
            let mut got = Vec::new();
            let own: usize = if i % 25 == 0 && i / 25 < 8 { 5 } else { 0 };
            while got.len() + own < expected.len() {
                let e = next_event(c).await;
                if let Some(v1::event::Kind::Message(m)) = e.kind {
                    got.push(m.seq);
                }
            }
            assert!(got.windows(2).all(|w| w[0] < w[1]), "member {i} saw {got:?}");
            if own == 0 {
                assert_eq!(&got, expected, "member {i}");
            }
        }
    });
    futures::future::join_all(checks).await;

    // Offline members catch up by sync: the same order, nothing missing.
    for (_, token) in &users[200..] {
        let c = server.connect_as(token).await;
        let events = c.sync_all(&mut AckTracker::new(0)).await.unwrap();
        assert_eq!(seqs(&events, chat), expected);
        let first = events.iter().find_map(|e| match &e.kind {
            Some(v1::event::Kind::Message(m)) => Some(m.clone()),
            _ => None,
        });
        assert_eq!(first.as_ref().and_then(group_event), Some(GroupEventKind::Created));
    }
    server.stop().await;
}

#[tokio::test]
async fn membership_changes_are_ordered_events_with_their_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let (carol, _) = server.user("carol").await;
    let (dave, _) = server.user("dave").await;

    let chat = alice
        .create_group("team", &["bob"])
        .await
        .unwrap()
        .info
        .unwrap()
        .chat_id;
    alice.send_text_to_chat(chat, "before carol").await.unwrap();
    messages_until(&bob, chat, 2).await;

    // Only admins manage members.
    assert_eq!(
        code(bob.update_chat(chat, ChatAction::AddMembers, &["carol"], "").await),
        Some(ErrorCode::Forbidden)
    );
    let added = alice
        .update_chat(chat, ChatAction::AddMembers, &["carol"], "")
        .await
        .unwrap();
    assert_eq!(added.event_seq, 3);
    let m = messages_until(&bob, chat, 3).await.pop().unwrap();
    assert_eq!(group_event(&m), Some(GroupEventKind::Added));
    assert_eq!(m.group_event.unwrap().users, vec!["carol"]);
    // Adding again changes nothing and stores no event.
    assert_eq!(
        alice
            .update_chat(chat, ChatAction::AddMembers, &["carol"], "")
            .await
            .unwrap()
            .event_seq,
        0
    );

    // A late joiner sees history from the event that added them.
    let (_, m) = next_message(&carol).await;
    assert_eq!((m.seq, group_event(&m)), (3, Some(GroupEventKind::Added)));
    let page = carol.history_of_chat(chat, 0, 50).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3]);
    assert!(!page.more);
    let page = carol.history_after(chat, 0, 50).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3]);
    let chats = carol.chats().await.unwrap();
    assert_eq!(
        (chats[0].name.as_str(), chats[0].member_count, chats[0].unread),
        ("team", 3, 1)
    );

    // Removal: the removed member gets the event, then nothing more, and is
    // refused everywhere.
    alice
        .update_chat(chat, ChatAction::RemoveMembers, &["bob"], "")
        .await
        .unwrap();
    let m = messages_until(&bob, chat, 4).await.pop().unwrap();
    assert_eq!(group_event(&m), Some(GroupEventKind::Removed));
    alice.send_text_to_chat(chat, "after bob").await.unwrap();
    messages_until(&carol, chat, 5).await;
    no_event(&bob).await;
    assert_eq!(
        code(bob.send_text_to_chat(chat, "let me in").await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(code(bob.history_of_chat(chat, 0, 10).await), Some(ErrorCode::Forbidden));
    assert_eq!(
        code(bob.receipt(chat, ReceiptKind::Read, 0).await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(code(bob.chat_info(chat).await), Some(ErrorCode::Forbidden));
    assert!(bob.chats().await.unwrap().iter().all(|c| c.chat_id != chat));
    // Non-members are refused the same way.
    assert_eq!(
        code(dave.history_of_chat(chat, 0, 10).await),
        Some(ErrorCode::Forbidden)
    );

    // Promote, rename, and the last admin leaving hands over to the
    // longest-standing member.
    alice
        .update_chat(chat, ChatAction::Promote, &["carol"], "")
        .await
        .unwrap();
    carol
        .update_chat(chat, ChatAction::Rename, &[], "the team")
        .await
        .unwrap();
    carol
        .update_chat(chat, ChatAction::Demote, &["carol"], "")
        .await
        .unwrap();
    alice.update_chat(chat, ChatAction::Leave, &[], "").await.unwrap();
    let info = carol.chat_info(chat).await.unwrap();
    assert_eq!(info.name, "the team");
    assert_eq!(
        info.members
            .iter()
            .map(|m| (m.user.as_str(), m.admin, m.joined_seq))
            .collect::<Vec<_>>(),
        vec![("carol", true, 3)]
    );
    let kinds: Vec<_> = messages_until(&carol, chat, 10)
        .await
        .iter()
        .map(|m| (m.sender.clone(), group_event(m)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("alice".to_string(), Some(GroupEventKind::Promoted)),
            ("carol".to_string(), Some(GroupEventKind::Renamed)),
            ("carol".to_string(), Some(GroupEventKind::Demoted)),
            ("alice".to_string(), Some(GroupEventKind::Left)),
            ("alice".to_string(), Some(GroupEventKind::Promoted)),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn group_receipts_aggregate_for_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let (carol, _) = server.user("carol").await;
    let chat = alice
        .create_group("trio", &["bob", "carol"])
        .await
        .unwrap()
        .info
        .unwrap()
        .chat_id;
    // Membership events reach every member's devices, the acting one too.
    messages_until(&alice, chat, 1).await;
    let seq = alice.send_text_to_chat(chat, "hello both").await.unwrap().seq;
    assert_eq!(seq, 2);
    messages_until(&bob, chat, 2).await;
    messages_until(&carol, chat, 2).await;

    // Bob alone is not "everyone": alice hears nothing, carol hears nothing
    // of bob's receipt either (no member-to-member receipt storm).
    bob.receipt(chat, ReceiptKind::Delivered, seq).await.unwrap();
    no_event(&alice).await;
    no_event(&carol).await;
    let c = &alice.chats().await.unwrap()[0];
    assert_eq!((c.peer_delivered_seq, c.peer_read_seq), (0, 0), "carol has nothing yet");

    carol.receipt(chat, ReceiptKind::Delivered, seq).await.unwrap();
    let e = next_event(&alice).await;
    let Some(v1::event::Kind::Receipt(r)) = e.kind else {
        panic!("{e:?}")
    };
    assert!(r.everyone && r.user.is_empty());
    assert_eq!((r.kind, r.seq), (ReceiptKind::Delivered as i32, 2));

    carol.receipt(chat, ReceiptKind::Read, 0).await.unwrap();
    bob.receipt(chat, ReceiptKind::Read, 0).await.unwrap();
    let e = next_matching(&alice, |e| matches!(&e.kind, Some(v1::event::Kind::Receipt(_)))).await;
    let Some(v1::event::Kind::Receipt(r)) = e.kind else {
        panic!("{e:?}")
    };
    assert!(r.everyone);
    assert_eq!((r.kind, r.seq), (ReceiptKind::Read as i32, 2));
    let c = &alice.chats().await.unwrap()[0];
    assert_eq!((c.peer_delivered_seq, c.peer_read_seq), (2, 2));

    // Per-member detail on request.
    let detail = alice.receipt_detail(chat).await.unwrap();
    let by_user: BTreeMap<_, _> = detail
        .members
        .iter()
        .map(|m| (m.user.as_str(), (m.delivered_seq, m.read_seq)))
        .collect();
    assert_eq!(
        by_user,
        BTreeMap::from([("alice", (2, 2)), ("bob", (2, 2)), ("carol", (2, 2))])
    );

    // A member who leaves no longer holds the aggregate back.
    let seq = bob.send_text_to_chat(chat, "from bob").await.unwrap().seq;
    alice.receipt(chat, ReceiptKind::Read, seq).await.unwrap();
    carol.update_chat(chat, ChatAction::Leave, &[], "").await.unwrap();
    let e = next_matching(
        &bob,
        |e| matches!(&e.kind, Some(v1::event::Kind::Receipt(r)) if r.everyone && r.kind == ReceiptKind::Read as i32),
    )
    .await;
    let Some(v1::event::Kind::Receipt(r)) = e.kind else {
        unreachable!()
    };
    assert!(r.seq >= seq);
    server.stop().await;
}

#[tokio::test]
async fn bad_group_requests_get_typed_errors_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.max_group_members = 3;
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    server.users_fast("x", 3).await;

    assert_eq!(
        code(alice.create_group("big", &["bob", "x0", "x1"]).await),
        Some(ErrorCode::LimitExceeded)
    );
    assert_eq!(
        code(alice.create_group("", &["bob"]).await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(alice.create_group("g", &["nobody"]).await),
        Some(ErrorCode::NotFound)
    );
    let chat = alice.create_group("g", &["bob"]).await.unwrap().info.unwrap().chat_id;
    let sent = alice.send_text_to_chat(chat, "kept").await.unwrap();
    alice
        .update_chat(chat, ChatAction::AddMembers, &["x0"], "")
        .await
        .unwrap();
    assert_eq!(
        code(alice.update_chat(chat, ChatAction::AddMembers, &["x1"], "").await),
        Some(ErrorCode::LimitExceeded)
    );
    assert_eq!(code(alice.chat_info(999).await), Some(ErrorCode::NotFound));
    assert_eq!(code(alice.send_text_to_chat(999, "x").await), Some(ErrorCode::NotFound));
    assert_eq!(
        code(alice.update_chat(chat, ChatAction::Unspecified, &[], "").await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(alice.update_chat(chat, ChatAction::Demote, &["alice"], "").await),
        Some(ErrorCode::InvalidArgument),
        "a group keeps an admin"
    );
    assert_eq!(
        code(bob.update_chat(chat, ChatAction::Rename, &[], "mine").await),
        Some(ErrorCode::Forbidden)
    );
    let dm = alice.send_text("bob", "direct").await.unwrap().chat_id;
    assert_eq!(
        code(alice.update_chat(dm, ChatAction::AddMembers, &["x0"], "").await),
        Some(ErrorCode::InvalidArgument)
    );
    assert_eq!(
        code(alice.subscribe(chat, false).await),
        Some(ErrorCode::InvalidArgument)
    );

    // The connection still works and the acknowledged message is intact.
    let page = bob.history_of_chat(chat, 0, 10).await.unwrap();
    assert!(page.messages.iter().any(|m| m.seq == sent.seq && text(m) == "kept"));
    assert_eq!(alice.chat_info(chat).await.unwrap().member_count, 3);
    server.stop().await;
}

/// Keys the store wrote for one post (nothing else runs meanwhile).
/// The fewest keys one of three posts wrote: on a FoundationDB store the
/// node's own writes (its heartbeat every second) may fall in a window.
async fn writes_per_post(server: &TestServer, admin: &Client, chat: u64, text: &str) -> u64 {
    let mut fewest = u64::MAX;
    for i in 0..3 {
        let before = settled_keys_written(server).await;
        admin.send_text_to_chat(chat, &format!("{text} {i}")).await.unwrap();
        fewest = fewest.min(settled_keys_written(server).await - before);
    }
    fewest
}

/// Keys written so far, once nothing has been written for 150 ms: on a
/// FoundationDB store the node clears what it pushed from its inbox in a
/// write of its own, after the post's.
async fn settled_keys_written(server: &TestServer) -> u64 {
    let mut last = server.store.stats().keys_written;
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let now = server.store.stats().keys_written;
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn channel_post_costs_the_same_writes_for_thousands_of_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (admin, _) = server.user("admin").await;
    let (reader, _) = server.user("reader").await;
    let created = admin.create_channel("news").await.unwrap();
    let chat = created.info.unwrap().chat_id;
    assert_eq!(
        reader.subscribe(chat, false).await.unwrap().info.unwrap().member_count,
        2
    );

    // Live: a watching subscriber gets the post itself, not a log entry.
    let post = admin.send_text_to_chat(chat, "first").await.unwrap();
    assert_eq!(post.pos, 0, "a post is in nobody's log");
    let e = next_event(&reader).await;
    assert_eq!(e.pos, 0);
    let Some(v1::event::Kind::Advanced(a)) = e.kind else {
        panic!("{e:?}")
    };
    assert_eq!((a.chat_id, a.seq), (chat, post.seq));
    assert_eq!(a.message.as_ref().map(text), Some("first"));

    let with_two = writes_per_post(&server, &admin, chat, "two").await;

    // 3,000 more subscribers (through the real subscribe path, one store
    // transaction each, without a connection each).
    let users = server.users_fast("s", 3000).await;
    for chunk in users.chunks(500) {
        let names: Vec<String> = chunk.iter().map(|(n, _)| n.clone()).collect();
        quip_server::store::write(&*server.store, move |t| {
            for n in &names {
                let u = quip_server::service::accounts::find_user(t, n)?.unwrap();
                let actor = quip_server::service::Actor {
                    user_id: u.id,
                    username: n.clone(),
                    device_id: 1,
                };
                quip_server::service::groups::subscribe(t, &actor, chat, false, 0)?;
            }
            Ok::<_, quip_server::service::ServiceError>(())
        })
        .await
        .unwrap();
    }
    assert_eq!(admin.chat_info(chat).await.unwrap().member_count, 3002);
    let with_many = writes_per_post(&server, &admin, chat, "many").await;
    assert_eq!(with_two, with_many, "a post's writes do not grow with subscribers");
    // msg/, chat/, cur/, idem/; in a cluster (FoundationDB) also the inbox
    // entry and doorbell of each live node, and this node clearing its own.
    let bound = if server.store.clustered() {
        4 + 2 * server.node_count() as u64 + 1
    } else {
        4
    };
    assert!(with_many <= bound, "{with_many} keys for one post");

    // An offline subscriber pulls: forwards from its read cursor.
    let late = server.connect_as(&users[42].1).await;
    let mine = late.chats().await.unwrap();
    let c = mine.iter().find(|c| c.chat_id == chat).unwrap();
    assert_eq!(
        (c.kind, c.name.as_str(), c.member_count),
        (ChatKind::Channel as i32, "news", 3002)
    );
    let page = late.history_after(chat, c.my_read_seq, 100).await.unwrap();
    assert_eq!(
        page.messages.iter().map(text).collect::<Vec<_>>(),
        vec!["many 0", "many 1", "many 2"]
    );
    let all = late.history_after(chat, 0, 100).await.unwrap();
    assert_eq!(all.messages.len(), 8, "created event and seven posts");

    // Subscribers cannot post; an unsubscribed reader stops hearing posts.
    assert_eq!(
        code(late.send_text_to_chat(chat, "hi").await),
        Some(ErrorCode::Forbidden)
    );
    reader.subscribe(chat, true).await.unwrap();
    // Drain the posts pushed before unsubscribing.
    while tokio::time::timeout(Duration::from_millis(200), reader.next_event())
        .await
        .is_ok()
    {}
    admin.send_text_to_chat(chat, "after").await.unwrap();
    no_event(&reader).await;
    assert_eq!(
        code(reader.history_after(chat, 0, 10).await),
        Some(ErrorCode::Forbidden)
    );
    server.stop().await;
}
