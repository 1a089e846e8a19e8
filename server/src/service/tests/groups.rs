//! Group creation, membership rules, the member limit and consent to adds.

use super::*;

/// The creator is the one admin; every member joined at the CREATED event.
#[tokio::test]
async fn create_makes_the_creator_the_admin() {
    let w = World::new();
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    w.user("carol").await;
    let created = w
        .create(&alice, &["carol", "bob", "bob", "alice"], MAX_MEMBERS)
        .await
        .unwrap();
    assert_eq!(created.event_seq, 1);
    let info = w.info(&bob, created.info.chat_id).unwrap();
    assert_eq!(
        members(&info),
        (vec!["alice".into(), "bob".into(), "carol".into()], vec!["alice".into()])
    );
    assert!(info.members.iter().all(|m| m.joined_seq == 1));
    assert_eq!((info.member_count, info.last_seq), (3, 1));
    let err = w.create(&alice, &["nobody"], MAX_MEMBERS).await.err();
    assert!(matches!(err, Some(ServiceError::NotFound(_))), "{err:?}");
}

/// Only admins add, remove and promote; a member may leave; a promoted
/// member may then add; changes that change nothing store no event.
#[tokio::test]
async fn only_admins_change_membership() {
    let w = World::new();
    let (alice, bob, carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    let g = w.group(&alice, &["bob"]).await;
    for action in [ChatAction::AddMembers, ChatAction::RemoveMembers, ChatAction::Promote] {
        let err = w.update(&bob, g, action, &["carol"]).await.err();
        assert!(matches!(err, Some(ServiceError::Forbidden(_))), "{action:?}: {err:?}");
    }
    let err = w.update(&carol, g, ChatAction::AddMembers, &["carol"]).await.err();
    assert!(
        matches!(err, Some(ServiceError::Forbidden(_))),
        "an outsider added: {err:?}"
    );
    assert_eq!(
        w.update(&alice, g, ChatAction::Promote, &["bob"])
            .await
            .unwrap()
            .event_seq,
        2
    );
    assert_eq!(
        w.update(&alice, g, ChatAction::Promote, &["bob"])
            .await
            .unwrap()
            .event_seq,
        0
    );
    assert_eq!(
        w.update(&bob, g, ChatAction::AddMembers, &["carol"])
            .await
            .unwrap()
            .event_seq,
        3
    );
    assert_eq!(
        w.update(&bob, g, ChatAction::AddMembers, &["carol"])
            .await
            .unwrap()
            .event_seq,
        0
    );
    let info = w.info(&carol, g).unwrap();
    assert_eq!(
        members(&info),
        (
            vec!["alice".into(), "bob".into(), "carol".into()],
            vec!["alice".into(), "bob".into()]
        )
    );
    assert_eq!(info.last_seq, 3);
    // Promoting someone outside the group is refused.
    w.user("dave").await;
    let err = w.update(&alice, g, ChatAction::Promote, &["dave"]).await.err();
    assert!(matches!(err, Some(ServiceError::InvalidArgument(_))), "{err:?}");
}

/// A removed member, and one who left, can no longer read or post.
#[tokio::test]
async fn removed_and_departed_members_lose_access() {
    let w = World::new();
    let (alice, bob, carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    let g = w.group(&alice, &["bob", "carol"]).await;
    let removed = w.update(&alice, g, ChatAction::RemoveMembers, &["bob"]).await.unwrap();
    assert_eq!(removed.event_seq, 2);
    // The removed member is told, with everyone else.
    assert!(removed.delivery.events.iter().any(|n| n.user_id == bob.user_id));
    assert!(matches!(w.seqs(&bob, g), Err(ServiceError::Forbidden(_))));
    let err = w.send(&bob, Target::Chat(g), "x", "x").await.err();
    assert!(matches!(err, Some(ServiceError::Forbidden(_))), "{err:?}");
    assert_eq!(w.update(&carol, g, ChatAction::Leave, &[]).await.unwrap().event_seq, 3);
    assert!(matches!(w.info(&carol, g), Err(ServiceError::Forbidden(_))));
    let (all, _) = members(&w.info(&alice, g).unwrap());
    assert_eq!(all, vec!["alice".to_owned()]);
    // Removing someone no longer in it changes nothing.
    assert_eq!(
        w.update(&alice, g, ChatAction::RemoveMembers, &["bob"])
            .await
            .unwrap()
            .event_seq,
        0
    );
}

/// A group keeps an admin: demoting the last one is refused, and when the
/// last one leaves, the longest-standing member is promoted.
#[tokio::test]
async fn a_group_keeps_an_admin() {
    let w = World::new();
    let (alice, _bob, _carol, dave) = (
        w.user("alice").await,
        w.user("bob").await,
        w.user("carol").await,
        w.user("dave").await,
    );
    let g = w.group(&alice, &["dave"]).await;
    w.update(&alice, g, ChatAction::AddMembers, &["bob", "carol"])
        .await
        .unwrap();
    let err = w.update(&alice, g, ChatAction::Demote, &["alice"]).await.err();
    assert!(matches!(err, Some(ServiceError::InvalidArgument(_))), "{err:?}");
    w.update(&alice, g, ChatAction::Leave, &[]).await.unwrap();
    let (all, admins) = members(&w.info(&dave, g).unwrap());
    assert_eq!(all, vec!["bob".to_owned(), "carol".into(), "dave".into()]);
    // Dave joined at the CREATED event, before bob and carol (lower ids).
    assert_eq!(admins, vec!["dave".to_owned()]);
}

/// The member limit counts the admin, on create and on add; a refused add
/// stores nothing.
#[tokio::test]
async fn the_member_limit_holds_on_create_and_add() {
    let w = World::new();
    let alice = w.user("alice").await;
    for name in ["bob", "carol", "dave"] {
        w.user(name).await;
    }
    let err = w.create(&alice, &["bob", "carol", "dave"], 3).await.err();
    assert!(matches!(err, Some(ServiceError::LimitExceeded(_))), "{err:?}");
    let g = w.create(&alice, &["bob", "carol"], 3).await.unwrap().info.chat_id;
    let err = w
        .update_max(&alice, g, ChatAction::AddMembers, &["dave"], 3)
        .await
        .err();
    assert!(matches!(err, Some(ServiceError::LimitExceeded(_))), "{err:?}");
    let info = w.info(&alice, g).unwrap();
    assert_eq!((info.member_count, info.last_seq), (3, 1));
    // Naming members already in does not count them twice.
    assert_eq!(
        w.update_max(&alice, g, ChatAction::AddMembers, &["bob", "carol"], 3)
            .await
            .unwrap()
            .event_seq,
        0
    );
}

/// GROUP_ADDS_NOBODY: nobody adds the user, on create or later; the
/// refusal stores nothing. They still create groups of their own.
#[tokio::test]
async fn nobody_adds_a_user_who_refuses_adds() {
    let w = World::new();
    let (alice, bob, carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    w.group_adds(&carol, GroupAdds::Nobody).await;
    // Even someone carol has written to.
    w.dm(&carol, &alice, "hi").await;
    let err = w.create(&alice, &["bob", "carol"], MAX_MEMBERS).await.err();
    assert!(matches!(err, Some(ServiceError::Forbidden(_))), "{err:?}");
    assert!(
        matches!(w.seqs(&bob, 2), Err(ServiceError::NotFound(_))),
        "the refused create stored a chat"
    );
    let g = w.group(&alice, &["bob"]).await;
    let err = w.update(&alice, g, ChatAction::AddMembers, &["carol"]).await.err();
    assert!(matches!(err, Some(ServiceError::Forbidden(_))), "{err:?}");
    assert_eq!(w.info(&alice, g).unwrap().member_count, 2);
    w.group(&carol, &["alice"]).await;
    // Back to EVERYONE: adds work again.
    w.group_adds(&carol, GroupAdds::Everyone).await;
    assert_eq!(
        w.update(&alice, g, ChatAction::AddMembers, &["carol"])
            .await
            .unwrap()
            .event_seq,
        2
    );
}

/// GROUP_ADDS_CONTACTS: only users the target has sent a direct message to
/// may add them; a message the other way does not count.
#[tokio::test]
async fn contacts_only_adds_need_a_message_from_the_target() {
    let w = World::new();
    let (alice, bob, carol) = (w.user("alice").await, w.user("bob").await, w.user("carol").await);
    w.group_adds(&carol, GroupAdds::Contacts).await;
    let g = w.group(&alice, &["bob"]).await;
    let refused = |r: Result<Changed, ServiceError>| matches!(r, Err(ServiceError::Forbidden(_)));
    assert!(refused(w.update(&alice, g, ChatAction::AddMembers, &["carol"]).await));
    w.dm(&alice, &carol, "hello carol").await;
    assert!(
        refused(w.update(&alice, g, ChatAction::AddMembers, &["carol"]).await),
        "alice writing to carol made her carol's contact"
    );
    w.dm(&carol, &bob, "hello bob").await;
    assert!(refused(w.update(&alice, g, ChatAction::AddMembers, &["carol"]).await));
    // Bob is an admin now, and carol wrote to him.
    w.update(&alice, g, ChatAction::Promote, &["bob"]).await.unwrap();
    assert!(w.update(&bob, g, ChatAction::AddMembers, &["carol"]).await.is_ok());
    assert!(w.create(&bob, &["carol"], MAX_MEMBERS).await.is_ok());
    // Once carol writes to alice, alice may add her too.
    w.dm(&carol, &alice, "hi alice").await;
    assert!(w.create(&alice, &["carol"], MAX_MEMBERS).await.is_ok());
}

/// Someone who blocks the adder refuses like NOBODY, whatever the setting.
#[tokio::test]
async fn a_blocker_refuses_adds_from_the_blocked() {
    let w = World::new();
    let (alice, bob) = (w.user("alice").await, w.user("bob").await);
    w.block(&bob, &alice).await;
    let err = w.create(&alice, &["bob"], MAX_MEMBERS).await.err();
    assert!(matches!(err, Some(ServiceError::Forbidden(_))), "{err:?}");
}
