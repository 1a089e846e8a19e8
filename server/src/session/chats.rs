//! Groups and channels: create, change, subscribe, info and receipt detail.

use super::*;

impl Session {
    pub(super) async fn create_chat(
        self: &Arc<Self>,
        id: u64,
        r: v1::CreateChatRequest,
    ) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let actor = self.actor()?;
        let kind = ChatKind::try_from(r.kind).unwrap_or_default();
        let (max, now) = (shared.config.max_group_members, self.now_ms());
        let pending = self
            .write_then_deliver(
                move |t| groups::create(t, &actor, kind, &r.name, &r.members, &r.client_request_id, max, now),
                |c| &mut c.delivery,
            )
            .await?;
        Ok(Self::chat_reply(id, pending))
    }

    pub(super) async fn update_chat(
        self: &Arc<Self>,
        id: u64,
        r: v1::UpdateChatRequest,
    ) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let actor = self.actor()?;
        let action = ChatAction::try_from(r.action).unwrap_or_default();
        let (max, now) = (shared.config.max_group_members, self.now_ms());
        let pending = self
            .write_then_deliver(
                move |t| groups::update(t, &actor, r.chat_id, action, &r.users, &r.name, max, now),
                |c| &mut c.delivery,
            )
            .await?;
        Ok(Self::chat_reply(id, pending))
    }

    pub(super) async fn subscribe(self: &Arc<Self>, id: u64, r: v1::SubscribeRequest) -> Result<Reply, ServiceError> {
        let actor = self.actor()?;
        let now = self.now_ms();
        let pending = self
            .write_then_deliver(
                move |t| groups::subscribe(t, &actor, r.chat_id, r.unsubscribe, now),
                |c| &mut c.delivery,
            )
            .await?;
        Ok(Self::chat_reply(id, pending))
    }

    pub(super) fn chat_info(self: &Arc<Self>, id: u64, r: v1::ChatInfoRequest) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let actor = self.actor()?;
        let max = shared.config.max_group_members;
        let info = store::read(&*shared.store, |t| groups::info(t, &actor, r.chat_id, max))?;
        Ok(Reply::Ready(Envelope::new(
            id,
            Body::Chat(v1::ChatInfoResponse {
                info: Some(info),
                event_seq: 0,
            }),
        )))
    }

    pub(super) fn receipt_detail(
        self: &Arc<Self>,
        id: u64,
        r: v1::ReceiptDetailRequest,
    ) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let actor = self.actor()?;
        let detail = store::read(&*shared.store, |t| receipts::detail(t, &actor, r.chat_id))?;
        Ok(Reply::Ready(Envelope::new(id, Body::ReceiptDetails(detail))))
    }

    fn chat_reply(id: u64, pending: store::PendingWrite<Result<groups::Changed, ServiceError>>) -> Reply {
        answer_when_durable(id, pending, |c| {
            Body::Chat(v1::ChatInfoResponse {
                info: Some(c.info),
                event_seq: c.event_seq,
            })
        })
    }
}
