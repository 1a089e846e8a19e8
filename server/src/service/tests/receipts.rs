//! Delivered and read cursors, and a group's aggregate of them.

use quip_protocol::v1::ReceiptKind;

use super::super::receipts;
use super::*;
use crate::records::AggRecord;

impl World {
    /// `who` marks `kind` up to `seq` in `chat`; returns the cursor after
    /// and the receipts to push.
    async fn mark(
        &self,
        who: &Actor,
        chat: u64,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<(u64, Vec<super::super::Notification>), ServiceError> {
        let who = who.clone();
        self.write(move |t| receipts::mark(t, &who, chat, kind, seq)).await
    }

    /// `who`'s (delivered, read) cursors in `chat`, as the chat's members see them.
    fn cursors(&self, who: &Actor, chat: u64) -> (u64, u64) {
        let detail = self.read(|t| receipts::detail(t, who, chat)).unwrap();
        let mine = detail.members.iter().find(|m| m.user == who.username).unwrap();
        (mine.delivered_seq, mine.read_seq)
    }

    fn aggregate(&self, chat: u64) -> AggRecord {
        self.read(|t| receipts::aggregate(t, chat)).unwrap()
    }
}

/// The receipts in `pushed` addressed to `user`.
fn receipts_for(pushed: &[super::super::Notification], user: u64) -> Vec<v1::Receipt> {
    pushed
        .iter()
        .filter(|n| n.user_id == user)
        .filter_map(|n| match &n.event.kind {
            Some(v1::event::Kind::Receipt(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// A cursor never moves back; read implies delivered; 0 means the newest
/// message and a seq beyond it is capped there. A mark that moves nothing
/// pushes nothing.
#[tokio::test]
async fn cursors_only_move_forward() {
    let w = World::new();
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    let (chat, _) = w.dm(&alice, &bob, "m1").await;
    for i in 2..=5 {
        w.post(&alice, chat, &format!("m{i}")).await;
    }
    assert_eq!(w.cursors(&bob, chat), (0, 0));
    let (after, pushed) = w.mark(&bob, chat, ReceiptKind::Delivered, 2).await.unwrap();
    assert_eq!(after, 2);
    let to_alice = receipts_for(&pushed, alice.user_id);
    assert_eq!(to_alice.len(), 1, "the peer is told");
    assert_eq!((to_alice[0].seq, to_alice[0].kind), (2, ReceiptKind::Delivered as i32));
    let (after, _) = w.mark(&bob, chat, ReceiptKind::Read, 4).await.unwrap();
    assert_eq!(after, 4);
    assert_eq!(w.cursors(&bob, chat), (4, 4), "read implies delivered");
    for (kind, seq) in [
        (ReceiptKind::Read, 3),
        (ReceiptKind::Delivered, 1),
        (ReceiptKind::Read, 4),
    ] {
        let (after, pushed) = w.mark(&bob, chat, kind, seq).await.unwrap();
        assert_eq!(after, 4, "{kind:?} {seq} moved a cursor back");
        assert!(pushed.is_empty(), "{kind:?} {seq}: an unchanged cursor was pushed");
    }
    assert_eq!(w.cursors(&bob, chat), (4, 4));
    assert_eq!(w.mark(&bob, chat, ReceiptKind::Delivered, 99).await.unwrap().0, 5);
    assert_eq!(w.cursors(&bob, chat), (5, 4));
    assert_eq!(w.mark(&bob, chat, ReceiptKind::Read, 0).await.unwrap().0, 5);
    assert_eq!(w.cursors(&bob, chat), (5, 5));
    let err = w.mark(&bob, chat, ReceiptKind::Unspecified, 1).await.err();
    assert!(matches!(err, Some(ServiceError::InvalidArgument(_))), "{err:?}");
    let eve = w.user("eve").await;
    let err = w.mark(&eve, chat, ReceiptKind::Read, 1).await.err();
    assert!(matches!(err, Some(ServiceError::Forbidden(_))), "{err:?}");
}

/// A group's aggregate is the lowest cursor of its members: it moves only
/// when the last member behind moves, and then the senders of the messages
/// it passed are told "everyone".
#[tokio::test]
async fn the_group_aggregate_is_the_minimum_over_members() {
    let w = World::new();
    let (alice, bob, carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    let g = w.group(&alice, &["bob", "carol"]).await;
    for i in 0..3 {
        w.post(&alice, g, &format!("m{i}")).await; // seqs 2, 3, 4
    }
    // The sender has read what she sent; bob and carol nothing new.
    assert_eq!((w.aggregate(g).delivered_min, w.aggregate(g).read_min), (0, 0));
    let (_, pushed) = w.mark(&bob, g, ReceiptKind::Read, 4).await.unwrap();
    assert_eq!(w.aggregate(g).read_min, 0, "carol has read nothing yet");
    assert!(receipts_for(&pushed, alice.user_id).is_empty(), "{pushed:?}");
    let (_, pushed) = w.mark(&carol, g, ReceiptKind::Read, 3).await.unwrap();
    let agg = w.aggregate(g);
    assert_eq!((agg.delivered_min, agg.read_min), (3, 3));
    let everyone: Vec<_> = receipts_for(&pushed, alice.user_id)
        .into_iter()
        .filter(|r| r.everyone && r.kind == ReceiptKind::Read as i32)
        .map(|r| r.seq)
        .collect();
    assert_eq!(everyone, vec![3], "the sender was not told everyone read up to 3");
    // Group cursors are not pushed member to member.
    assert!(receipts_for(&pushed, bob.user_id).is_empty(), "{pushed:?}");
    w.mark(&carol, g, ReceiptKind::Delivered, 4).await.unwrap();
    let agg = w.aggregate(g);
    assert_eq!((agg.delivered_min, agg.read_min), (4, 3));
    w.mark(&carol, g, ReceiptKind::Read, 4).await.unwrap();
    assert_eq!(w.aggregate(g).read_min, 4);
}

/// The member furthest behind leaving (or joining) moves the aggregate.
#[tokio::test]
async fn membership_changes_move_the_aggregate() {
    let w = World::new();
    let (alice, bob, _carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    let g = w.group(&alice, &["bob", "carol"]).await;
    w.post(&alice, g, "m1").await; // seq 2
    w.mark(&bob, g, ReceiptKind::Read, 2).await.unwrap();
    assert_eq!(w.aggregate(g).read_min, 0);
    // Carol, at 0, is removed: alice (3, her own event) and bob (2) remain.
    w.update(&alice, g, ChatAction::RemoveMembers, &["carol"])
        .await
        .unwrap();
    assert_eq!(w.aggregate(g).read_min, 2);
    // Dave joins at the ADDED event (4) with cursors just below it.
    w.user("dave").await;
    w.update(&alice, g, ChatAction::AddMembers, &["dave"]).await.unwrap();
    assert_eq!(w.aggregate(g).read_min, 2);
    w.mark(&bob, g, ReceiptKind::Read, 0).await.unwrap();
    assert_eq!(w.aggregate(g).read_min, 3, "dave's cursor sits below his ADDED event");
}
