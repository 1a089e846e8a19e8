//! Messages: send, history, the chat list, receipts, sync and ack.

use super::*;

impl Session {
    pub(super) async fn send(self: &Arc<Self>, id: u64, r: v1::SendRequest) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let actor = self.actor()?;
        messages::validate_send(&r.client_msg_id, r.content.as_ref(), shared.config.max_body)?;
        let target = Target::from_fields(&r.to_user, r.chat_id)?;
        let content = r.content.unwrap_or_default();
        let now = self.now_ms();
        // Where the last direct message to this name went: only worth its
        // lookup on a networked store, where it saves round trips.
        let hint_key = match &target {
            Target::User(name) if shared.store.clustered() => Some((actor.user_id, name.clone())),
            _ => None,
        };
        let hint = hint_key.as_ref().and_then(|k| shared.direct_hints.get(k));
        let pending = self
            .write_then_deliver(
                move |t| messages::send_hinted(t, &actor, &target, hint, &r.client_msg_id, &content, now),
                |sent| &mut sent.delivery,
            )
            .await?;
        let shared = shared.clone();
        Ok(answer_when_durable(id, pending, move |sent| {
            if let Some(k) = hint_key
                && sent.direct_peer != 0
                && hint != Some((sent.direct_peer, sent.response.chat_id))
            {
                shared.direct_hints.insert(k, (sent.direct_peer, sent.response.chat_id));
            }
            Body::Sent(sent.response)
        }))
    }

    pub(super) fn history(self: &Arc<Self>, id: u64, r: v1::HistoryRequest) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let budget = shared.page_budget();
        let actor = self.actor()?;
        let target = Target::from_fields(&r.with_user, r.chat_id)?;
        self.check_member_cached(&actor, &target)?;
        let page = Page {
            before: r.before_seq,
            after: r.after_seq,
            limit: r.limit,
        };
        let page = store::read(&*shared.store, |t| messages::history(t, &actor, &target, page, budget))?;
        Ok(Reply::Ready(Envelope::new(id, Body::HistoryPage(page))))
    }

    pub(super) fn chats(self: &Arc<Self>, id: u64, r: v1::ChatsRequest) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let budget = shared.page_budget();
        let actor = self.actor()?;
        let page = store::read(&*shared.store, |t| {
            crate::service::chat_list::chats(t, &actor, r.limit, r.after.as_ref(), budget)
        })?;
        Ok(Reply::Ready(Envelope::new(id, Body::ChatList(page))))
    }

    pub(super) async fn receipt(self: &Arc<Self>, id: u64, r: v1::ReceiptRequest) -> Result<Reply, ServiceError> {
        let actor = self.actor()?;
        let kind = ReceiptKind::try_from(r.kind).unwrap_or(ReceiptKind::Unspecified);
        if r.chat_id == 0 {
            return Err(ServiceError::InvalidArgument("chat_id is required".into()));
        }
        self.check_member_cached(&actor, &Target::Chat(r.chat_id))?;
        let pending = self
            .write_then_deliver(
                move |t| {
                    let (seq, events) = receipts::mark(t, &actor, r.chat_id, kind, r.seq)?;
                    // The entry of the actor's own log that is not pushed to
                    // this device (its other devices get it): the device
                    // learns its position here, as from SendResponse.pos.
                    let pos = events
                        .iter()
                        .find(|n| n.user_id == actor.user_id && n.skip_device == Some(actor.device_id))
                        .map_or(0, |n| n.event.pos);
                    Ok(((seq, pos), events.into()))
                },
                |r: &mut ((u64, u64), crate::service::Delivery)| &mut r.1,
            )
            .await?;
        Ok(answer_when_durable(id, pending, |((seq, pos), _)| {
            Body::ReceiptStored(v1::ReceiptResponse { seq, pos })
        }))
    }

    pub(super) fn sync(self: &Arc<Self>, id: u64, r: v1::SyncRequest) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let budget = shared.page_budget();
        let actor = self.actor()?;
        let page = store::read(&*shared.store, |t| {
            log::sync(t, actor.user_id, actor.device_id, r.limit, budget)
        })?;
        Ok(Reply::Ready(Envelope::new(
            id,
            Body::SyncPage(v1::SyncResponse {
                events: page.events,
                more: page.more,
                head: page.head,
                acked: page.acked,
                retained_from_pos: page.retained_from,
            }),
        )))
    }

    pub(super) async fn ack(self: &Arc<Self>, id: u64, r: v1::AckRequest) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let actor = self.actor()?;
        let pending = store::enqueue_write(&*shared.store, move |t| {
            log::ack(t, actor.user_id, actor.device_id, r.pos)
        })
        .await?;
        Ok(answer_when_durable(id, pending, |pos| {
            Body::Acked(v1::AckResponse { pos })
        }))
    }
}
