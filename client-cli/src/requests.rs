//! The typed calls: each builds one request and unwraps its reply.

use quip_protocol::v1;
use quip_protocol::{Body, Envelope};

use crate::connection::closed;
use crate::{AckTracker, Client, ClientError, new_client_msg_id};

impl Client {
    /// Creates an account; the connection is then logged in.
    pub async fn register(&self, user: &str, password: &str, device: &str) -> Result<v1::AuthResponse, ClientError> {
        let body = Body::Register(v1::RegisterRequest {
            username: user.into(),
            password: password.into(),
            device_name: device.into(),
        });
        reply_as!(self.request(body).await?, Auth)
    }

    /// Logs in as a new device of an existing account.
    pub async fn login(&self, user: &str, password: &str, device: &str) -> Result<v1::AuthResponse, ClientError> {
        let body = Body::Login(v1::LoginRequest {
            username: user.into(),
            password: password.into(),
            device_name: device.into(),
        });
        reply_as!(self.request(body).await?, Auth)
    }

    /// Revokes this connection's token.
    pub async fn logout(&self) -> Result<(), ClientError> {
        reply_as!(self.request(Body::Logout(v1::LogoutRequest {})).await?, LoggedOut).map(|_| ())
    }

    /// Who this connection is logged in as.
    pub async fn whoami(&self) -> Result<v1::WhoAmIResponse, ClientError> {
        reply_as!(self.request(Body::Whoami(v1::WhoAmIRequest {})).await?, Identity)
    }

    /// Sends a text message to a user with a fresh client_msg_id.
    pub async fn send_text(&self, to_user: &str, text: &str) -> Result<v1::SendResponse, ClientError> {
        self.send(v1::SendRequest {
            to_user: to_user.into(),
            client_msg_id: new_client_msg_id(),
            content: Some(v1::Content {
                text: text.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }

    /// Sends a message as given (retry with the same client_msg_id is safe).
    pub async fn send(&self, req: v1::SendRequest) -> Result<v1::SendResponse, ClientError> {
        reply_as!(self.request(Body::Send(req)).await?, Sent)
    }

    /// A page of history with a user (newest first).
    pub async fn history(
        &self,
        with_user: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<v1::HistoryResponse, ClientError> {
        self.history_page(v1::HistoryRequest {
            with_user: with_user.into(),
            before_seq,
            limit,
            ..Default::default()
        })
        .await
    }

    /// A page of history of a chat by id (newest first).
    pub async fn history_of_chat(
        &self,
        chat_id: u64,
        before_seq: u64,
        limit: u32,
    ) -> Result<v1::HistoryResponse, ClientError> {
        self.history_page(v1::HistoryRequest {
            chat_id,
            before_seq,
            limit,
            ..Default::default()
        })
        .await
    }

    /// A page of a chat's messages after `after_seq`, oldest first: how a
    /// channel subscriber (or any client filling a gap) reads forwards.
    pub async fn history_after(
        &self,
        chat_id: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<v1::HistoryResponse, ClientError> {
        self.history_page(v1::HistoryRequest {
            chat_id,
            after_seq: Some(after_seq),
            limit,
            ..Default::default()
        })
        .await
    }

    /// Any history request, as given.
    pub async fn history_page(&self, req: v1::HistoryRequest) -> Result<v1::HistoryResponse, ClientError> {
        reply_as!(self.request(Body::History(req)).await?, HistoryPage)
    }

    /// Creates a group with these members (besides me) and I as admin.
    pub async fn create_group(&self, name: &str, members: &[&str]) -> Result<v1::ChatInfoResponse, ClientError> {
        self.create_chat(v1::ChatKind::Group, name, members).await
    }

    /// Creates a channel with me as admin and first subscriber.
    pub async fn create_channel(&self, name: &str) -> Result<v1::ChatInfoResponse, ClientError> {
        self.create_chat(v1::ChatKind::Channel, name, &[]).await
    }

    async fn create_chat(
        &self,
        kind: v1::ChatKind,
        name: &str,
        members: &[&str],
    ) -> Result<v1::ChatInfoResponse, ClientError> {
        let body = Body::CreateChat(v1::CreateChatRequest {
            kind: kind as i32,
            name: name.into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            // The library retries requests refused as too early: a fresh id
            // per call makes such a retry (or any other) create one chat.
            client_request_id: new_client_msg_id(),
        });
        reply_as!(self.request(body).await?, Chat)
    }

    /// Changes a group's or channel's membership, admins or name.
    pub async fn update_chat(
        &self,
        chat_id: u64,
        action: v1::ChatAction,
        users: &[&str],
        name: &str,
    ) -> Result<v1::ChatInfoResponse, ClientError> {
        let body = Body::UpdateChat(v1::UpdateChatRequest {
            chat_id,
            action: action as i32,
            users: users.iter().map(|m| (*m).to_owned()).collect(),
            name: name.into(),
        });
        reply_as!(self.request(body).await?, Chat)
    }

    /// A group's or channel's name, members and admins.
    pub async fn chat_info(&self, chat_id: u64) -> Result<v1::ChatInfo, ClientError> {
        let body = Body::ChatInfo(v1::ChatInfoRequest { chat_id });
        reply_as!(self.request(body).await?, Chat).map(|c| c.info.unwrap_or_default())
    }

    /// Every member's delivered/read cursors in a group ("message info").
    pub async fn receipt_detail(&self, chat_id: u64) -> Result<v1::ReceiptDetailResponse, ClientError> {
        let body = Body::ReceiptDetail(v1::ReceiptDetailRequest { chat_id });
        reply_as!(self.request(body).await?, ReceiptDetails)
    }

    /// Presence of users, as far as their privacy settings let me see it.
    pub async fn presence(&self, users: &[&str]) -> Result<Vec<v1::Presence>, ClientError> {
        let body = Body::Presence(v1::PresenceRequest {
            users: users.iter().map(|u| (*u).to_owned()).collect(),
        });
        reply_as!(self.request(body).await?, PresenceList).map(|p| p.users)
    }

    /// Sets who may see my online status and last seen.
    pub async fn set_last_seen_visibility(&self, v: v1::Visibility) -> Result<v1::Visibility, ClientError> {
        let body = Body::Settings(v1::SettingsRequest {
            last_seen: v as i32,
            ..Default::default()
        });
        reply_as!(self.request(body).await?, SettingsSaved)
            .map(|s| v1::Visibility::try_from(s.last_seen).unwrap_or_default())
    }

    /// Sets who may add this user to groups; returns the stored setting.
    pub async fn set_group_adds(&self, g: v1::GroupAdds) -> Result<v1::GroupAdds, ClientError> {
        let body = Body::Settings(v1::SettingsRequest {
            group_adds: g as i32,
            ..Default::default()
        });
        reply_as!(self.request(body).await?, SettingsSaved)
            .map(|s| v1::GroupAdds::try_from(s.group_adds).unwrap_or_default())
    }

    /// Says "I am typing" in a chat: as a QUIC datagram when the connection
    /// supports them (no reply, no retransmission: stale typing is
    /// worthless), else as a request on the stream.
    pub async fn typing(&self, chat_id: u64) -> Result<(), ClientError> {
        let env = Envelope::new(0, Body::Typing(v1::TypingRequest { chat_id }));
        let frame = quip_protocol::frame_bytes(&env, quip_protocol::MAX_FRAME)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let body = quip_protocol::frame_body(&frame);
        if self.conn.max_datagram_size().is_some_and(|max| body.len() <= max) {
            return self.conn.send_datagram(body).map_err(closed);
        }
        reply_as!(self.request(env.body.expect("set above")).await?, TypingSent).map(|_| ())
    }

    /// Blocks (or unblocks) a user; returns everyone I block.
    pub async fn block(&self, user: &str, unblock: bool) -> Result<Vec<String>, ClientError> {
        let body = Body::Block(v1::BlockRequest {
            user: user.into(),
            unblock,
        });
        reply_as!(self.request(body).await?, Blocked).map(|b| b.blocked)
    }

    /// Subscribes to a channel (or unsubscribes).
    pub async fn subscribe(&self, chat_id: u64, unsubscribe: bool) -> Result<v1::ChatInfoResponse, ClientError> {
        let body = Body::Subscribe(v1::SubscribeRequest { chat_id, unsubscribe });
        reply_as!(self.request(body).await?, Chat)
    }

    /// Sends a text message into a chat by id (group, channel or direct).
    pub async fn send_text_to_chat(&self, chat_id: u64, text: &str) -> Result<v1::SendResponse, ClientError> {
        self.send(v1::SendRequest {
            chat_id,
            client_msg_id: new_client_msg_id(),
            content: Some(v1::Content {
                text: text.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    }

    /// The whole chat list, most recently active first, page by page. A
    /// chat that becomes active while the pages are read may be listed
    /// twice; the later entry is dropped.
    pub async fn chats(&self) -> Result<Vec<v1::ChatSummary>, ClientError> {
        let mut all: Vec<v1::ChatSummary> = Vec::new();
        let mut after = None;
        loop {
            let page = self.chats_page(0, after).await?;
            for c in page.chats {
                if !all.iter().any(|a| a.chat_id == c.chat_id) {
                    all.push(c);
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// One page of the chat list: at most `limit` chats (0: the server's
    /// default) after `after`, the previous page's `next`.
    pub async fn chats_page(
        &self,
        limit: u32,
        after: Option<v1::ChatsCursor>,
    ) -> Result<v1::ChatsResponse, ClientError> {
        reply_as!(
            self.request(Body::Chats(v1::ChatsRequest { limit, after })).await?,
            ChatList
        )
    }

    /// Moves this user's receipt cursor in a chat (seq 0: newest); returns
    /// the cursor after.
    pub async fn receipt(&self, chat_id: u64, kind: v1::ReceiptKind, seq: u64) -> Result<u64, ClientError> {
        self.receipt_stored(chat_id, kind, seq).await.map(|r| r.seq)
    }

    /// As [`Client::receipt`], with the whole response: `pos` is the
    /// position of the READ receipt the request put in this user's own log
    /// (0: none), which is not pushed to this device; feed it to the
    /// [`AckTracker`] as received.
    pub async fn receipt_stored(
        &self,
        chat_id: u64,
        kind: v1::ReceiptKind,
        seq: u64,
    ) -> Result<v1::ReceiptResponse, ClientError> {
        let body = Body::Receipt(v1::ReceiptRequest {
            chat_id,
            kind: kind as i32,
            seq,
        });
        reply_as!(self.request(body).await?, ReceiptStored)
    }

    /// One sync page after this device's acknowledged position.
    pub async fn sync(&self, limit: u32) -> Result<v1::SyncResponse, ClientError> {
        reply_as!(self.request(Body::Sync(v1::SyncRequest { limit })).await?, SyncPage)
    }

    /// Acknowledges the log up to `pos`.
    pub async fn ack(&self, pos: u64) -> Result<u64, ClientError> {
        reply_as!(self.request(Body::Ack(v1::AckRequest { pos })).await?, Acked).map(|a| a.pos)
    }

    /// Fetches and acknowledges everything this device missed, in order.
    /// The tracker learns the server's position from the first page, so a
    /// fresh `AckTracker::new(0)` is fine.
    pub async fn sync_all(&self, tracker: &mut AckTracker) -> Result<Vec<v1::Event>, ClientError> {
        let mut out = Vec::new();
        loop {
            let page = self.sync(0).await?;
            tracker.server_position(page.acked);
            tracker.retained_from(page.retained_from_pos);
            for e in &page.events {
                tracker.observe(e.pos);
            }
            let n = page.events.len();
            out.extend(page.events);
            if let Some(pos) = tracker.take_ack() {
                self.ack(pos).await?;
            }
            if !page.more || n == 0 {
                return Ok(out);
            }
        }
    }
}
