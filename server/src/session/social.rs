//! Presence, settings, blocking and typing indicators.

use super::*;

impl Session {
    pub(super) fn presence(self: &Arc<Self>, id: u64, r: v1::PresenceRequest) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let actor = self.actor()?;
        let live = &shared.liveness;
        // In a cluster, online here or on any node the directory lists.
        let cluster = shared.cluster.get();
        let online = |u: u64| live.is_online(u) || cluster.is_some_and(|n| n.online_anywhere(u).unwrap_or(false));
        let users = store::read(&*shared.store, |t| presence::lookup(t, &actor, &r.users, &online))?;
        Ok(Reply::Ready(Envelope::new(
            id,
            Body::PresenceList(v1::PresenceResponse { users }),
        )))
    }

    pub(super) async fn settings(self: &Arc<Self>, id: u64, r: v1::SettingsRequest) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let actor = self.actor()?;
        let v = v1::Visibility::try_from(r.last_seen).unwrap_or_default();
        let g = v1::GroupAdds::try_from(r.group_adds).unwrap_or_default();
        let pending =
            store::enqueue_write(&*shared.store, move |t| presence::set_settings(t, actor.user_id, v, g)).await?;
        Ok(answer_when_durable(id, pending, |(v, g)| {
            Body::SettingsSaved(v1::SettingsResponse {
                last_seen: v as i32,
                group_adds: g as i32,
            })
        }))
    }

    pub(super) async fn block(self: &Arc<Self>, id: u64, r: v1::BlockRequest) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let actor = self.actor()?;
        let pending =
            store::enqueue_write(&*shared.store, move |t| blocking::set(t, &actor, &r.user, r.unblock)).await?;
        Ok(answer_when_durable(id, pending, |blocked| {
            Body::Blocked(v1::BlockResponse { blocked })
        }))
    }

    /// A typing indicator: checked, rate limited per device (excess is
    /// dropped: `RATE_LIMITED` on a stream, silence for a datagram), and
    /// pushed unreliably to the chat's other participants.
    pub fn typing(&self, chat_id: u64) -> Result<(), ServiceError> {
        let actor = self.actor()?;
        let config = &self.shared.config;
        let now = self.shared.clock.now();
        let bucket = self
            .shared
            .typing_limits
            .get_with((actor.user_id, actor.device_id), || {
                Arc::new(Mutex::new(TokenBucket::new(config.typing_rate, 3.0, now)))
            });
        bucket
            .lock()
            .expect("limiter lock")
            .try_take(now)
            .map_err(rate_limited)?;
        let (chat, others) = store::read(&*self.shared.store, |t| {
            let chat = messages::member_chat(t, &actor, chat_id)?;
            let mut others = Vec::with_capacity(chat.members.len());
            for &m in chat.members.iter().filter(|&&m| m != actor.user_id) {
                // Whoever blocks me does not see me typing (and I cannot tell).
                if !blocking::blocks(t, m, actor.user_id)? {
                    others.push(m);
                }
            }
            Ok::<_, ServiceError>((chat, others))
        })?;
        if chat.kind() == ChatKind::Channel {
            return Err(ServiceError::InvalidArgument("nobody types in a channel".into()));
        }
        let event = v1::Event {
            pos: 0,
            kind: Some(v1::event::Kind::Typing(v1::Typing {
                chat_id,
                user: actor.username,
                expires_in_ms: TYPING_EXPIRES_MS,
            })),
        };
        self.shared.push_transient(others, chat_id, event, true);
        Ok(())
    }

    /// Handles an Envelope that arrived in a QUIC datagram: only typing
    /// indicators are meaningful there; anything else is ignored (a
    /// datagram has no reply path).
    pub fn datagram(&self, env: Envelope) {
        if let Some(Body::Typing(t)) = env.body
            && let Err(e) = self.typing(t.chat_id)
        {
            tracing::trace!(error = %e, "typing datagram dropped");
        }
    }
}
