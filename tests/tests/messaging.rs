//! 1:1 messaging end to end: real quipd on loopback QUIC, real store.

mod common;

use common::*;
use quip_client::{AckTracker, new_client_msg_id};
use quip_protocol::v1::{self, ErrorCode, ReceiptKind};

#[tokio::test]
async fn live_delivery_with_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;

    let sent = alice.send_text("bob", "hi bob").await.unwrap();
    assert_eq!(sent.seq, 1);
    assert!(!sent.duplicate);
    assert!(sent.pos > 0);

    let (_, m) = next_message(&bob).await;
    assert_eq!(
        (m.chat_id, m.seq, m.sender.as_str(), m.recipient.as_str(), text(&m)),
        (sent.chat_id, 1, "alice", "bob", "hi bob")
    );
    // Not echoed to the sending device.
    no_event(&alice).await;

    // Two ticks, then blue ticks, pushed live to the sender.
    assert_eq!(bob.receipt(m.chat_id, ReceiptKind::Delivered, m.seq).await.unwrap(), 1);
    let e = next_event(&alice).await;
    let Some(v1::event::Kind::Receipt(r)) = e.kind else {
        panic!("{e:?}")
    };
    assert_eq!(
        (r.user.as_str(), r.kind, r.seq),
        ("bob", ReceiptKind::Delivered as i32, 1)
    );
    assert_eq!(bob.receipt(m.chat_id, ReceiptKind::Read, 0).await.unwrap(), 1);
    let e = next_event(&alice).await;
    let Some(v1::event::Kind::Receipt(r)) = e.kind else {
        panic!("{e:?}")
    };
    assert_eq!((r.kind, r.seq), (ReceiptKind::Read as i32, 1));

    // Cursors never go backwards.
    assert_eq!(bob.receipt(m.chat_id, ReceiptKind::Read, 0).await.unwrap(), 1);

    let chats = alice.chats().await.unwrap();
    assert_eq!(chats.len(), 1);
    assert_eq!(
        (
            chats[0].peer.as_str(),
            chats[0].peer_delivered_seq,
            chats[0].peer_read_seq,
            chats[0].unread
        ),
        ("bob", 1, 1, 0)
    );
    server.stop().await;
}

#[tokio::test]
async fn offline_device_catches_up_in_order_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, bob_token) = server.user("bob").await;
    bob.close();
    drop(bob);

    for i in 1..=30 {
        alice.send_text("bob", &format!("m{i}")).await.unwrap();
    }
    let bob = server.connect_as(&bob_token).await;
    assert_eq!(bob.welcome().user, "bob");
    let mut tracker = AckTracker::new(0);
    let events = bob.sync_all(&mut tracker).await.unwrap();
    let texts = message_texts(&events);
    assert_eq!(texts, (1..=30).map(|i| format!("m{i}")).collect::<Vec<_>>());
    let chats = bob.chats().await.unwrap();
    assert_eq!(chats[0].unread, 30);

    // Acknowledged: the next sync is empty.
    let again = bob.sync(0).await.unwrap();
    assert!(again.events.is_empty());
    assert!(!again.more);
    assert_eq!(again.head, 30);
    server.stop().await;
}

#[tokio::test]
async fn sync_pages_when_more_is_missed_than_one_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    for i in 0..12 {
        alice.send_text("bob", &format!("{i}")).await.unwrap();
    }
    let page = bob.sync(5).await.unwrap();
    assert_eq!(page.events.len(), 5);
    assert!(page.more);
    assert_eq!(
        page.events.iter().map(|e| e.pos).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    bob.ack(5).await.unwrap();
    let page = bob.sync(100).await.unwrap();
    assert_eq!(page.events.first().map(|e| e.pos), Some(6));
    assert_eq!(page.events.len(), 7);
    assert!(!page.more);
    server.stop().await;
}

#[tokio::test]
async fn every_device_of_a_user_gets_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob1, _) = server.user("bob").await;
    let (bob2, _) = server.device("bob").await;
    assert_ne!(
        bob1.whoami().await.unwrap().device_id,
        bob2.whoami().await.unwrap().device_id
    );

    alice.send_text("bob", "to both").await.unwrap();
    assert_eq!(text(&next_message(&bob1).await.1), "to both");
    assert_eq!(text(&next_message(&bob2).await.1), "to both");

    // A device's own send reaches the user's other devices and the peer, not itself.
    let sent = bob1.send_text("alice", "from phone").await.unwrap();
    let (pos, m) = next_message(&bob2).await;
    assert_eq!((text(&m), pos), ("from phone", sent.pos));
    assert_eq!(text(&next_message(&alice).await.1), "from phone");

    // Each device has its own sync position.
    let mut t1 = AckTracker::new(0);
    let e1 = bob1.sync_all(&mut t1).await.unwrap();
    assert_eq!(e1.len(), 2);
    let e2 = bob2.sync(0).await.unwrap();
    assert_eq!(e2.events.len(), 2, "bob2 has acknowledged nothing yet");
    server.stop().await;
}

#[tokio::test]
async fn retried_send_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let req = v1::SendRequest {
        to_user: "bob".into(),
        client_msg_id: new_client_msg_id(),
        content: Some(v1::Content {
            text: "once".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let first = alice.send(req.clone()).await.unwrap();
    let retry = alice.send(req.clone()).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.chat_id, retry.seq, retry.pos, retry.sent_at_ms),
        (first.chat_id, first.seq, first.pos, first.sent_at_ms)
    );
    // Same id by chat id instead of user: still the same message.
    let by_chat = alice
        .send(v1::SendRequest {
            to_user: String::new(),
            chat_id: first.chat_id,
            ..req.clone()
        })
        .await
        .unwrap();
    assert_eq!(by_chat.seq, first.seq);

    let mut changed = req.clone();
    changed.content = Some(v1::Content {
        text: "different".into(),
        ..Default::default()
    });
    let err = alice.send(changed).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::IdempotencyConflict));

    let h = bob.history("alice", 0, 50).await.unwrap();
    assert_eq!(h.messages.len(), 1);
    assert_eq!(next_message(&bob).await.1.seq, 1);
    no_event(&bob).await;
    server.stop().await;
}

#[tokio::test]
async fn concurrent_senders_get_one_gap_free_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (_bob, _) = server.user("bob").await;
    let mut senders = vec![alice];
    for _ in 0..2 {
        senders.push(server.device("alice").await.0);
    }
    for _ in 0..3 {
        senders.push(server.device("bob").await.0);
    }
    const PER: usize = 30;
    let senders = std::sync::Arc::new(senders);
    let mut tasks = Vec::new();
    for (i, _) in senders.iter().enumerate() {
        let senders = senders.clone();
        tasks.push(tokio::spawn(async move {
            let c = &senders[i];
            let to = if i < 3 { "bob" } else { "alice" };
            // Pipelined: all of this device's sends in flight at once.
            let texts: Vec<String> = (0..PER).map(|j| format!("d{i}-{j}")).collect();
            let futs = texts.iter().map(|t| c.send_text(to, t));
            let acks = futures::future::join_all(futs).await;
            let seqs: Vec<u64> = acks.into_iter().map(|a| a.unwrap().seq).collect();
            // One stream applies a device's writes in order.
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "device {i} seqs out of order: {seqs:?}"
            );
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let total = senders.len() * PER;
    assert_eq!(
        all,
        (1..=total as u64).collect::<Vec<_>>(),
        "seqs are 1..=N with no gap or repeat"
    );

    // Every reader sees the identical order.
    let mut orders = Vec::new();
    for c in senders.iter() {
        let mut seen = Vec::new();
        let mut before = 0;
        loop {
            let page = c
                .history("alice", before, 0)
                .await
                .or(c.history("bob", before, 0).await)
                .unwrap();
            seen.extend(page.messages.iter().map(|m| (m.seq, text(m).to_owned())));
            if !page.more {
                break;
            }
            before = page.messages.last().unwrap().seq;
        }
        seen.reverse();
        orders.push(seen);
    }
    assert_eq!(orders[0].len(), total);
    assert!(orders.iter().all(|o| *o == orders[0]));
    let stats = server.store.stats();
    eprintln!("group commit: {} writes in {} commits", stats.writes, stats.commits);
    server.stop().await;
}
