//! Sending (seq assignment, idempotency), history paging, blocking.

use super::*;

/// Seqs are 1, 2, 3… per chat, with no gaps, whoever sends; each chat
/// counts on its own.
#[tokio::test]
async fn seqs_are_dense_per_chat() {
    let w = World::new();
    let (alice, bob, carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    let (ab, s1) = w.dm(&alice, &bob, "a1").await;
    let (ab2, s2) = w.dm(&bob, &alice, "b1").await;
    assert_eq!(ab, ab2, "one direct chat per pair, whoever starts it");
    let s3 = w.post(&alice, ab, "a2").await;
    let (ac, c1) = w.dm(&alice, &carol, "a1").await;
    assert_ne!(ab, ac);
    assert_eq!((s1, s2, s3, c1), (1, 2, 3, 1));
    // A group's CREATED event is its seq 1; messages follow it.
    let g = w.group(&alice, &["bob"]).await;
    assert_eq!((w.post(&bob, g, "g1").await, w.post(&alice, g, "g2").await), (2, 3));
    assert_eq!(w.seqs(&alice, ab).unwrap(), vec![1, 2, 3]);
}

/// A retried send (same client_msg_id, same content) is answered with the
/// first one's seq, marked duplicate, pushes nothing and stores nothing.
#[tokio::test]
async fn a_retried_send_is_a_duplicate() {
    let w = World::new();
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let to_bob = Target::User("bob".into());
    let first = w.send(&alice, to_bob.clone(), "m1", "hi").await.unwrap();
    assert!(!first.response.duplicate);
    assert!(!first.delivery.is_empty());
    let again = w.send(&alice, to_bob.clone(), "m1", "hi").await.unwrap();
    assert!(again.response.duplicate);
    assert_eq!(
        (again.response.chat_id, again.response.seq, again.response.pos),
        (first.response.chat_id, first.response.seq, first.response.pos)
    );
    assert!(again.delivery.is_empty(), "a duplicate pushed again");
    let chat = first.response.chat_id;
    assert_eq!(w.seqs(&bob, chat).unwrap(), vec![1]);
    // The id is the sender's own: bob may use "m1" too, and alice may
    // reuse it in another chat.
    assert!(
        !w.send(&bob, Target::Chat(chat), "m1", "hi")
            .await
            .unwrap()
            .response
            .duplicate
    );
    let carol = w.user("carol").await;
    let other = w.send(&alice, Target::User("carol".into()), "m1", "hi").await.unwrap();
    assert!(!other.response.duplicate);
    assert_eq!(w.seqs(&carol, other.response.chat_id).unwrap(), vec![1]);
    assert_eq!(w.seqs(&alice, chat).unwrap(), vec![1, 2]);
}

/// Reusing a client_msg_id for different content is a conflict, and the
/// second message is not stored.
#[tokio::test]
async fn a_client_msg_id_reused_for_other_content_conflicts() {
    let w = World::new();
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let (chat, _) = w.dm(&alice, &bob, "m1").await;
    let err = w.send(&alice, Target::Chat(chat), "m1", "something else").await.err();
    assert!(
        matches!(&err, Some(ServiceError::IdempotencyConflict(id)) if id == "m1"),
        "{err:?}"
    );
    assert_eq!(w.seqs(&bob, chat).unwrap(), vec![1]);
    assert_eq!(w.post(&alice, chat, "m2").await, 2, "the conflict used up a seq");
}

/// Backwards pages run newest first below `before`; forwards pages oldest
/// first above `after`; `more` says whether the page stopped short.
#[tokio::test]
async fn history_pages_backwards_and_forwards() {
    let w = World::new();
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let (chat, _) = w.dm(&alice, &bob, "m1").await;
    for i in 2..=10 {
        w.post(&alice, chat, &format!("m{i}")).await;
    }
    let page = |p| w.history(&bob, chat, p).unwrap();
    let p = page(backwards(0, 3));
    assert_eq!((seqs_of(&p), p.more), (vec![10, 9, 8], true));
    let p = page(backwards(8, 3));
    assert_eq!((seqs_of(&p), p.more), (vec![7, 6, 5], true));
    let p = page(backwards(3, 5));
    assert_eq!((seqs_of(&p), p.more), (vec![2, 1], false));
    let p = page(backwards(1, 5));
    assert_eq!((seqs_of(&p), p.more), (vec![], false));
    let p = page(forwards(0, 4));
    assert_eq!((seqs_of(&p), p.more), (vec![1, 2, 3, 4], true));
    let p = page(forwards(4, 4));
    assert_eq!((seqs_of(&p), p.more), (vec![5, 6, 7, 8], true));
    let p = page(forwards(8, 4));
    assert_eq!((seqs_of(&p), p.more), (vec![9, 10], false));
    let p = page(forwards(10, 4));
    assert_eq!((seqs_of(&p), p.more), (vec![], false));
    // Texts come back with their messages.
    assert_eq!(page(backwards(0, 1)).messages[0].content.as_ref().unwrap().text, "m10");
    // Limit 0 means the default page; more than the maximum is capped.
    assert_eq!(page(backwards(0, 0)).messages.len(), 10);
    assert_eq!(page(forwards(0, u32::MAX)).messages.len(), 10);
}

/// A member added to a group sees history from the event that added them
/// on, in either direction; earlier members see all of it.
#[tokio::test]
async fn a_group_member_sees_no_history_from_before_joining() {
    let w = World::new();
    let (alice, _bob, carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    let g = w.group(&alice, &["bob"]).await;
    for i in 0..3 {
        w.post(&alice, g, &format!("early{i}")).await;
    }
    let added = w.update(&alice, g, ChatAction::AddMembers, &["carol"]).await.unwrap();
    assert_eq!(added.event_seq, 5);
    let late = w.post(&alice, g, "late").await;
    assert_eq!(w.seqs(&carol, g).unwrap(), vec![5, late]);
    assert_eq!(w.seqs(&alice, g).unwrap(), (1..=late).collect::<Vec<_>>());
    let p = w.history(&carol, g, forwards(0, 10)).unwrap();
    assert_eq!((seqs_of(&p), p.more), (vec![5, 6], false));
    let p = w.history(&carol, g, backwards(5, 10)).unwrap();
    assert_eq!((seqs_of(&p), p.more), (vec![], false));
    let p = w.history(&carol, g, backwards(0, 1)).unwrap();
    assert_eq!((seqs_of(&p), p.more), (vec![6], true));
}

/// Someone outside a chat can neither read nor post in it.
#[tokio::test]
async fn outsiders_neither_read_nor_post() {
    let w = World::new();
    let (alice, bob, eve) = (w.user("alice").await, w.user("bob").await, w.user("eve").await);
    let (chat, _) = w.dm(&alice, &bob, "m1").await;
    assert!(matches!(w.seqs(&eve, chat), Err(ServiceError::Forbidden(_))));
    let err = w.send(&eve, Target::Chat(chat), "x", "x").await.err();
    assert!(matches!(err, Some(ServiceError::Forbidden(_))), "{err:?}");
    assert!(matches!(w.seqs(&eve, 999), Err(ServiceError::NotFound(_))));
    let err = w.send(&alice, Target::User("alice".into()), "x", "x").await.err();
    assert!(matches!(err, Some(ServiceError::InvalidArgument(_))), "{err:?}");
    assert_eq!(w.seqs(&bob, chat).unwrap(), vec![1]);
}

/// A direct message from a blocked user gets its seq and stays in the
/// sender's history, but never reaches the blocker: no log entry, not in
/// their history; unblocking shows only later messages.
#[tokio::test]
async fn blocking_hides_direct_messages_from_the_blocker() {
    let w = World::new();
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let (chat, _) = w.dm(&alice, &bob, "m1").await;
    w.block(&bob, &alice).await;
    let sent = w.send(&alice, Target::Chat(chat), "m2", "hidden").await.unwrap();
    assert_eq!(sent.response.seq, 2);
    assert!(
        sent.delivery.events.iter().all(|n| n.user_id != bob.user_id),
        "the blocker was sent a blocked message"
    );
    assert!(sent.delivery.events.iter().any(|n| n.user_id == alice.user_id));
    assert_eq!(w.seqs(&alice, chat).unwrap(), vec![1, 2]);
    assert_eq!(w.seqs(&bob, chat).unwrap(), vec![1]);
    // The blocker still talks; the blocked user gets that.
    assert_eq!(w.post(&bob, chat, "b1").await, 3);
    assert_eq!(w.seqs(&alice, chat).unwrap(), vec![1, 2, 3]);
    let bob2 = bob.clone();
    w.write(move |t| blocking::set(t, &bob2, "alice", true)).await.unwrap();
    assert_eq!(w.post(&alice, chat, "m3").await, 4);
    assert_eq!(
        w.seqs(&bob, chat).unwrap(),
        vec![1, 3, 4],
        "unblocking revealed a hidden message"
    );
}

/// An actor for a user a test registers straight through the account service.
fn plain_actor(uid: u64, name: &str) -> Actor {
    Actor {
        user_id: uid,
        username: name.into(),
        device_id: 1,
    }
}

/// A message stored before every client field counted toward the body
/// limit can be larger than a frame. History, sync and the chat list
/// still answer, with that message's content left out and said so, for
/// the recipient and the sender alike.
#[tokio::test]
async fn an_oversized_stored_message_is_sent_without_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open_in(dir.path(), Some(store::EngineKind::Lsm), 16).unwrap();
    let (alice, bob) = (plain_actor(1, "alice"), plain_actor(2, "bob"));
    let a = alice.clone();
    let sent = store::write(&*store, move |t| {
        accounts::register(t, "alice", "phc", "d", &[1; 32], 0)?;
        accounts::register(t, "bob", "phc", "d", &[2; 32], 0)?;
        let small = v1::Content {
            text: "small".into(),
            ..Default::default()
        };
        msg_svc::send(t, &a, &Target::User("bob".into()), "m1", &small, 1)?;
        let poison = v1::Content {
            text: "hi".into(),
            content_type: "x".repeat(2 << 20),
            ..Default::default()
        };
        // Stored as an older server would have, past today's check.
        msg_svc::send(t, &a, &Target::User("bob".into()), "m2", &poison, 2)
    })
    .await
    .unwrap();
    let chat = sent.response.chat_id;
    let max = quip_protocol::MAX_FRAME - 1024;
    store::read(&*store, |t| {
        for who in [&alice, &bob] {
            let page = msg_svc::history(
                t,
                who,
                &Target::Chat(chat),
                Page {
                    before: 0,
                    after: None,
                    limit: 10,
                },
                max,
            )?;
            assert_eq!(page.messages.len(), 2);
            assert!(page.messages[0].content_omitted && page.messages[0].content.is_none());
            assert!(!page.messages[1].content_omitted);
            assert_eq!(page.messages[1].content.as_ref().unwrap().text, "small");
            let list = super::super::chat_list::chats(t, who, 0, None, max)?;
            let last = list.chats[0].last_message.as_ref().unwrap();
            assert_eq!((last.seq, last.content_omitted), (2, true));
        }
        let synced = super::super::log::sync(t, bob.user_id, 1, 0, max)?;
        assert_eq!(synced.events.len(), 2);
        let Some(v1::event::Kind::Message(m)) = &synced.events[1].kind else {
            panic!("{:?}", synced.events[1])
        };
        assert!(m.content_omitted && m.seq == 2);
        assert!(synced.events.iter().map(prost::Message::encoded_len).sum::<usize>() < max);
        Ok::<_, ServiceError>(())
    })
    .unwrap();
}
