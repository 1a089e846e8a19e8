//! Retention: messages sent before the cutoff leave history, sync and the
//! store, seqs and log positions are never renumbered, and steps are
//! bounded and safe to repeat.

use quip_protocol::v1;

use super::*;
use crate::keys;
use crate::records::{BlobRecord, MediaRecord};
use crate::service::log;
use crate::service::media::{self as media_svc, MediaId};
use crate::service::retention::{self, CHAT_STEP, ChatPlan, Keep};

impl World {
    /// Sends `text` to `to` at wall time `at_ms`; returns the response.
    async fn send_at(&self, from: &Actor, to: Target, id: &str, content: v1::Content, at_ms: i64) -> v1::SendResponse {
        let (from, id) = (from.clone(), id.to_owned());
        self.write(move |t| msg_svc::send(t, &from, &to, &id, &content, at_ms))
            .await
            .unwrap()
            .response
    }

    /// Runs retention to completion for `cutoff_ms`, as the sweep does:
    /// every chat, then every log. Returns the chunk prefixes to delete.
    async fn expire(&self, cutoff_ms: i64) -> Vec<Vec<u8>> {
        self.apply(Keep {
            sent_since_ms: cutoff_ms,
            newest: 0,
        })
        .await
    }

    /// Runs retention to completion with `keep`.
    async fn apply(&self, keep: Keep) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        for chat in self.read(|t| retention::chats(t, 0, 1000)).unwrap() {
            while let Some(plan) = self.read(|t| retention::plan_chat(t, chat, keep)).unwrap() {
                assert!(plan.to - plan.from <= CHAT_STEP as u64);
                assert!(
                    plan.clear.len() <= 500,
                    "a step stays far inside a transaction's limits"
                );
                let more = plan.more;
                chunks.extend(self.write(move |t| retention::expire_messages(t, &plan)).await.unwrap());
                if !more {
                    break;
                }
            }
        }
        for uid in self.read(|t| retention::users(t, 0, 1000)).unwrap() {
            while let Some(plan) = self.read(|t| retention::plan_log(t, uid)).unwrap() {
                self.write(move |t| retention::trim_log(t, &plan)).await.unwrap();
                if !plan.more {
                    break;
                }
            }
        }
        chunks
    }

    /// Whether `key` is stored.
    fn has(&self, key: &[u8]) -> bool {
        let key = key.to_vec();
        self.read(move |t| Ok(t.get(&key)?.is_some())).unwrap()
    }

    /// `who`'s sync page (first device), from its acknowledged position.
    fn sync(&self, who: &Actor) -> log::SyncPage {
        let uid = who.user_id;
        self.read(|t| log::sync(t, uid, 1, 0, MAX_BYTES)).unwrap()
    }
}

/// Keeps what was sent at or after `ms`, however many.
fn before(ms: i64) -> Keep {
    Keep {
        sent_since_ms: ms,
        newest: 0,
    }
}

/// Messages at 1 s, 2 s … 5 s; the cutoff at 3.5 s expires the first three.
#[tokio::test]
async fn expired_messages_leave_history_sync_and_storage_and_seqs_go_on() {
    let w = World::new();
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let mut chat = 0;
    for i in 1..=5 {
        let to = Target::User("bob".into());
        chat = w
            .send_at(&alice, to, &format!("m{i}"), content("hi"), i * 1_000)
            .await
            .chat_id;
    }
    // Bob's reply: seq 6, and a READ receipt (up to 5) in Alice's log.
    let r = w.send_at(&bob, Target::Chat(chat), "reply", content("yo"), 5_500).await;
    assert_eq!(r.seq, 6);

    assert!(w.expire(3_500).await.is_empty(), "no media");

    // History: seqs 4..=6, and it says where it starts.
    let page = w.history(&bob, chat, backwards(0, 50)).unwrap();
    assert_eq!(seqs_of(&page), [6, 5, 4]);
    assert_eq!(page.retained_from_seq, 4);
    assert!(!page.more, "nothing older is left to page to");
    let fwd = w.history(&alice, chat, forwards(0, 50)).unwrap();
    assert_eq!(seqs_of(&fwd), [4, 5, 6]);
    // Storage: the messages, their idempotency records and the log
    // entries pointing at them are gone.
    let alice_id = alice.user_id;
    for seq in 1..=3 {
        assert!(!w.has(&keys::message(chat, seq)));
        assert!(!w.has(&keys::idempotency(chat, alice_id, &format!("m{seq}"))));
    }
    assert!(w.has(&keys::idempotency(chat, alice_id, "m4")));
    for pos in 1..=3 {
        assert!(!w.has(&keys::log(bob.user_id, pos)), "bob's log pos {pos}");
    }

    // Bob's device acknowledged nothing: sync starts at what is left and
    // says what expired, instead of failing or leaving a gap.
    let page = w.sync(&bob);
    assert_eq!(page.acked, 0);
    assert_eq!(page.retained_from, 4);
    let pos: Vec<u64> = page.events.iter().map(|e| e.pos).collect();
    assert_eq!(pos[0], 4);
    assert!(pos.windows(2).all(|p| p[1] == p[0] + 1), "{pos:?}");
    assert!(!page.more);
    let Some(v1::event::Kind::Message(m)) = &page.events[0].kind else {
        panic!("{:?}", page.events[0])
    };
    assert_eq!(m.seq, 4);

    // New messages continue the numbering: seq and log positions.
    let next = w
        .send_at(&alice, Target::Chat(chat), "m7", content("again"), 6_000)
        .await;
    assert_eq!(next.seq, 7);
    assert_eq!(next.pos, 8, "alice's log: 5 messages, the reply, the receipt, this");
    // A chat list does not count expired messages as unread.
    let list = w
        .read(|t| crate::service::chat_list::chats(t, &bob, 0, None, MAX_BYTES))
        .unwrap();
    assert_eq!(list.chats[0].unread, 1, "only m7 is unread for bob");

    // A later sweep with everything expired: history empty, floor past the end.
    w.expire(10_000).await;
    let page = w.history(&bob, chat, backwards(0, 50)).unwrap();
    assert!(page.messages.is_empty() && !page.more);
    assert_eq!(page.retained_from_seq, 8);
    let list = w
        .read(|t| crate::service::chat_list::chats(t, &bob, 0, None, MAX_BYTES))
        .unwrap();
    assert!(list.chats[0].last_message.is_none());
    assert_eq!(list.chats[0].unread, 0);
    let sync = w.sync(&bob);
    assert!(sync.events.is_empty() && !sync.more);
    assert_eq!(sync.retained_from, sync.head + 1);
    // And the next message is seq 8.
    let next = w.send_at(&bob, Target::Chat(chat), "n", content("new"), 11_000).await;
    assert_eq!(next.seq, 8);
}

/// Nothing expired: no floors are written and the fields stay 0, as from a
/// server without retention.
#[tokio::test]
async fn without_expired_messages_nothing_changes() {
    let w = World::new();
    let (alice, _bob) = (w.user("alice").await, w.user("bob").await);
    let chat = w
        .send_at(&alice, Target::User("bob".into()), "a", content("x"), 5_000)
        .await
        .chat_id;
    assert!(w.expire(1_000).await.is_empty());
    assert!(!w.has(&keys::message_floor(chat)));
    assert!(!w.has(&keys::log_floor(alice.user_id)));
    assert_eq!(w.history(&alice, chat, backwards(0, 10)).unwrap().retained_from_seq, 0);
    assert_eq!(w.sync(&alice).retained_from, 0);
}

/// A chat of 250 expired messages takes three bounded steps; a plan applied
/// again after its floor moved (another node's sweep got there first) does
/// nothing.
#[tokio::test]
async fn steps_are_bounded_and_a_stale_plan_does_nothing() {
    let w = World::new();
    let (alice, _bob) = (w.user("alice").await, w.user("bob").await);
    let mut chat = 0;
    for i in 0..250 {
        chat = w
            .send_at(
                &alice,
                Target::User("bob".into()),
                &format!("m{i}"),
                content("x"),
                1_000 + i,
            )
            .await
            .chat_id;
    }
    let plan: ChatPlan = w
        .read(|t| retention::plan_chat(t, chat, before(10_000)))
        .unwrap()
        .unwrap();
    assert_eq!((plan.from, plan.to, plan.more), (1, 101, true));
    let again = plan.clone();
    w.write(move |t| retention::expire_messages(t, &plan)).await.unwrap();
    assert_eq!(w.read(|t| retention::message_floor(t, chat)).unwrap(), 101);
    // The same plan again (as a second sweeper would run it): a no-op,
    // even though message 100 would be cleared by it.
    w.write(move |t| {
        t.set(&keys::message(chat, 100), b"");
        Ok(())
    })
    .await
    .unwrap();
    w.write(move |t| retention::expire_messages(t, &again)).await.unwrap();
    assert!(w.has(&keys::message(chat, 100)), "the stale plan cleared nothing");
    assert_eq!(w.read(|t| retention::message_floor(t, chat)).unwrap(), 101);
    w.write(move |t| {
        t.clear(&keys::message(chat, 100));
        Ok(())
    })
    .await
    .unwrap();

    let second = w
        .read(|t| retention::plan_chat(t, chat, before(10_000)))
        .unwrap()
        .unwrap();
    assert_eq!((second.from, second.to, second.more), (101, 201, true));
    w.expire(10_000).await;
    assert_eq!(w.read(|t| retention::message_floor(t, chat)).unwrap(), 251);
    // The log: 250 entries, trimmed in one step (at most 500).
    let uid = alice.user_id;
    assert_eq!(w.read(|t| retention::log_floor(t, uid)).unwrap(), 251);
    assert!(w.read(|t| retention::plan_log(t, uid)).unwrap().is_none());
}

/// A log entry whose message is already gone but which the log sweep has
/// not reached (it runs after the chats, and only trims a prefix) syncs as
/// an event without a kind: positions stay gap-free.
#[tokio::test]
async fn a_log_entry_of_an_expired_message_syncs_as_an_empty_event() {
    let w = World::new();
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let chat = w
        .send_at(&alice, Target::User("bob".into()), "a", content("x"), 1_000)
        .await
        .chat_id;
    w.send_at(&alice, Target::Chat(chat), "b", content("y"), 2_000).await;
    let plan = w
        .read(|t| retention::plan_chat(t, chat, before(1_500)))
        .unwrap()
        .unwrap();
    w.write(move |t| retention::expire_messages(t, &plan)).await.unwrap();
    let page = w.sync(&bob);
    assert_eq!(page.retained_from, 0, "the log itself was not trimmed yet");
    assert_eq!(page.events.len(), 2);
    assert_eq!((page.events[0].pos, page.events[0].kind.is_none()), (1, true));
    assert!(matches!(page.events[1].kind, Some(v1::event::Kind::Message(_))));
}

/// A group member's history starts at the later of their join and the
/// floor.
#[tokio::test]
async fn group_history_starts_at_the_floor() {
    let w = World::new();
    let (alice, _bob) = (w.user("alice").await, w.user("bob").await);
    let chat = w.group(&alice, &["bob"]).await; // seq 1: the creation event, at 1 s
    for i in 0..3 {
        w.send_at(
            &alice,
            Target::Chat(chat),
            &format!("g{i}"),
            content("x"),
            2_000 + i * 1_000,
        )
        .await;
    }
    w.expire(3_500).await; // seqs 1..=3 (at 1 s, 2 s, 3 s) go
    let page = w.history(&alice, chat, backwards(0, 50)).unwrap();
    assert_eq!(seqs_of(&page), [4]);
    assert_eq!(page.retained_from_seq, 4);
}

/// Stores a complete upload of `bytes` by `who`; returns its id.
async fn upload(w: &World, who: &Actor, id: MediaId, sha: u8) -> MediaId {
    let who = who.clone();
    w.write(move |t| {
        let req = v1::UploadRequest {
            size: 10,
            sha256: vec![sha; 32].into(),
            ..Default::default()
        };
        media_svc::create(t, &who, &req, &id, 1_000);
        media_svc::complete(t, &id, 0)?;
        Ok(())
    })
    .await
    .unwrap();
    id
}

fn with_media(id: &MediaId) -> v1::Content {
    v1::Content {
        media: Some(v1::Media {
            media_id: media_svc::id_to_string(id),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Media carried only by expired messages is deleted, records and blob
/// (its chunks are returned for deletion); media a retained message still
/// carries, in this chat or another, stays; shared bytes stay while any
/// media record holds them.
#[tokio::test]
async fn media_without_a_retained_message_is_deleted() {
    let w = World::new();
    let (alice, bob, carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    let gone = upload(&w, &alice, [1; 16], 1).await;
    let kept_elsewhere = upload(&w, &alice, [2; 16], 2).await;
    let resent = upload(&w, &alice, [3; 16], 3).await;
    // Same bytes as `gone`, uploaded by bob: deduplicated into gone's chunks.
    let twin = upload(&w, &bob, [4; 16], 1).await;

    let to_bob = || Target::User("bob".into());
    let chat = w.send_at(&alice, to_bob(), "1", with_media(&gone), 1_000).await.chat_id;
    w.send_at(&alice, to_bob(), "2", with_media(&kept_elsewhere), 1_000)
        .await;
    w.send_at(
        &alice,
        Target::User("carol".into()),
        "3",
        with_media(&kept_elsewhere),
        5_000,
    )
    .await;
    w.send_at(&alice, to_bob(), "4", with_media(&resent), 1_000).await;
    w.send_at(&alice, to_bob(), "5", with_media(&resent), 5_000).await;
    w.send_at(&bob, Target::User("carol".into()), "6", with_media(&twin), 5_000)
        .await;

    let chunks = w.expire(2_000).await;
    assert!(chunks.is_empty(), "gone's bytes are shared with twin: {chunks:?}");
    assert!(!w.has(&keys::media(&gone)));
    assert!(!w.has(&keys::media_ref(&gone, chat)));
    let blob: BlobRecord = w
        .read(|t| Ok(crate::records::get(t, &keys::media_blob(&[1; 32]))?))
        .unwrap()
        .unwrap();
    assert_eq!((blob.refs, blob.chunks_of.as_slice()), (1, &gone[..]));
    assert!(w.has(&keys::media(&kept_elsewhere)));
    assert!(!w.has(&keys::media_ref(&kept_elsewhere, chat)));
    assert!(w.has(&keys::media(&resent)), "message 5 still carries it");
    assert!(w.has(&keys::media_ref(&resent, chat)));
    // Download access follows: bob lost `kept_elsewhere` with its message,
    // carol still has it.
    assert!(
        w.read(|t| media_svc::visible(t, &bob, &media_svc::id_to_string(&kept_elsewhere)))
            .is_err()
    );
    assert!(
        w.read(|t| media_svc::visible(t, &carol, &media_svc::id_to_string(&kept_elsewhere)))
            .is_ok()
    );

    // Everything expires: the twin's record goes, and with it the last
    // hold on the shared bytes, whose chunks (gone's upload) are returned.
    let chunks = w.expire(10_000).await;
    for id in [gone, kept_elsewhere, resent, twin] {
        let rec: Option<MediaRecord> = w.read(|t| Ok(crate::records::get(t, &keys::media(&id))?)).unwrap();
        assert!(rec.is_none());
    }
    for sha in 1..=3u8 {
        assert!(!w.has(&keys::media_blob(&[sha; 32])));
    }
    let mut chunks = chunks;
    chunks.sort();
    assert_eq!(chunks, vec![gone.to_vec(), kept_elsewhere.to_vec(), resent.to_vec()]);
}

/// A server-wide limit of messages per chat: a busy chat keeps its newest
/// N, whatever their age. Its older messages' log entries behind a quiet
/// chat's retained entry stay in the log (it is trimmed only as a prefix)
/// and sync as events without a kind, so positions have no gaps.
#[tokio::test]
async fn a_chat_keeps_only_its_newest_messages_under_a_count_limit() {
    let w = World::new();
    let (alice, bob, carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    // Bob's log: pos 1 a quiet chat with carol, pos 2..=11 a busy one.
    let quiet = w
        .send_at(&carol, Target::User("bob".into()), "q", content("hi"), 1_000)
        .await
        .chat_id;
    let mut busy = 0;
    for i in 0..10 {
        busy = w
            .send_at(
                &alice,
                Target::User("bob".into()),
                &format!("b{i}"),
                content("x"),
                2_000 + i,
            )
            .await
            .chat_id;
    }
    let keep = Keep {
        sent_since_ms: i64::MIN,
        newest: 3,
    };
    w.apply(keep).await;
    let page = w.history(&bob, busy, backwards(0, 50)).unwrap();
    assert_eq!(seqs_of(&page), [10, 9, 8]);
    assert_eq!(page.retained_from_seq, 8);
    assert_eq!(w.history(&bob, quiet, backwards(0, 50)).unwrap().retained_from_seq, 0);
    // Bob's log keeps its head: nothing before pos 1 expired.
    let page = w.sync(&bob);
    assert_eq!(page.retained_from, 0);
    let kinds: Vec<(u64, bool)> = page.events.iter().map(|e| (e.pos, e.kind.is_some())).collect();
    let mut want = vec![(1, true)];
    want.extend((2..=8).map(|p| (p, false)));
    want.extend((9..=11).map(|p| (p, true)));
    assert_eq!(kinds, want);
    // Alice's log held only the busy chat: trimmed to its kept messages.
    assert_eq!(w.sync(&alice).retained_from, 8);
    // The next message is seq 11, and then the chat keeps 9..=11.
    let next = w.send_at(&alice, Target::Chat(busy), "b10", content("x"), 3_000).await;
    assert_eq!(next.seq, 11);
    w.apply(keep).await;
    let page = w.history(&alice, busy, backwards(0, 50)).unwrap();
    assert_eq!((seqs_of(&page), page.retained_from_seq), (vec![11, 10, 9], 9));
}
