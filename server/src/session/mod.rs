//! One connection's protocol session, independent of the transport.
//!
//! The transport (QUIC today, WebSocket later) decodes frames and hands each
//! Envelope here; this module checks the handshake, authentication and rate
//! limits, runs the request against the store and says what to answer. It
//! never touches a socket, so every transport gets identical behaviour.
//!
//! Writes are answered with [`Reply::Waiting`] (or [`Reply::Pending`] when
//! effects follow the commit): the write is already queued
//! in order when `handle` returns, and the pending reply resolves once it is
//! durable and its events are pushed. A transport keeps several pending
//! replies per stream in flight (pipelining) and sends them in order.
//!
//! # Layout
//! - this file: the connection's state, the handshake, admission (0-RTT,
//!   rate limits, shutdown) and the one dispatch over request kinds
//!   ([`crate::kinds`] says what each kind is);
//! - `account`, `messaging`, `chats`, `social`: the handlers, by family;
//! - `shared`: what every connection shares (caches, budgets, the hub).

mod account;
mod chats;
mod messaging;
mod shared;
mod social;
#[cfg(test)]
mod tests;

pub use shared::Shared;
use shared::rate_limited;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use quip_protocol::v1::{self, ChatAction, ChatKind, ErrorCode, ReceiptKind};
use quip_protocol::{Body, CloseCode, Envelope, negotiate_version};

use crate::hub::{Closer, DeviceHandle, PushSender};
use crate::presence::Ended;
use crate::ratelimit::TokenBucket;
use crate::service::messages::{self, Page, Target};
use crate::service::{Actor, ServiceError, accounts, blocking, groups, log, presence, receipts};
use crate::store;

/// What to answer a request with.
// One per request, moved once into the stream's reply queue: boxing the
// Envelope would cost an allocation per request to save a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    /// The answer, now.
    Ready(Envelope),
    /// A queued write's answer, once it is durable, from a task of its own:
    /// for writes with effects after they are durable (a login registers
    /// the connection, a logout drops the session), which must happen even
    /// if nobody waits for the answer any more.
    Pending(tokio::task::JoinHandle<Envelope>),
    /// A queued write's answer, once it is durable, where producing the
    /// answer is all there is left to do (sends, receipts, acks): the
    /// transport's request loop polls it itself. A task per request would
    /// cost a spawn and one more wake-up on the message path; nothing is
    /// lost if the connection goes first, as the write is queued already.
    Waiting(futures::future::BoxFuture<'static, Envelope>),
}

#[derive(Clone)]
struct Auth {
    actor: Actor,
    token_hash: [u8; 32],
    /// When the token expires (ms since the Unix epoch).
    expires_ms: i64,
}

/// One connection's session.
pub struct Session {
    shared: Arc<Shared>,
    conn_id: u64,
    auth: Mutex<Option<Auth>>,
    /// Budget while anonymous; a logged-in connection uses its device's.
    limiter: Mutex<TokenBucket>,
    closer: Arc<Closer>,
    push_tx: PushSender,
    /// Set by logout: close the connection once the reply is sent.
    close_after_reply: Mutex<Option<CloseCode>>,
    /// The client's IP address (login throttling).
    peer: std::net::IpAddr,
    /// Set from Hello.background: presence ignores this connection.
    background: AtomicBool,
    /// True until the TLS handshake is complete on a connection accepted
    /// with 0-RTT: requests read meanwhile may be replays.
    early: AtomicBool,
    /// Wakes requests waiting for the handshake to complete (`admit`).
    handshake_done: tokio::sync::Notify,
    /// Media transfers this connection may run at once.
    media_slots: Arc<tokio::sync::Semaphore>,
}

/// Media transfers one connection may run at once: each may buffer a 1 MiB
/// chunk plus a stream's flow-control window, so this bounds a connection's
/// media memory at about 8 MiB.
pub const MEDIA_STREAMS_PER_CONNECTION: usize = 4;

/// How long a request that is not replay-safe, read before the handshake
/// completed, waits for it before being refused with `TOO_EARLY`. A real
/// client's handshake completes within a round trip; replayed early data
/// never completes one.
pub const EARLY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a receiver shows "typing" after an indicator, unless refreshed.
pub const TYPING_EXPIRES_MS: u32 = 6_000;

fn err(id: u64, e: &ServiceError) -> Envelope {
    Envelope::new(id, Body::Error(e.to_wire()))
}

/// The answer to a queued write, once it is durable: `body` of its result,
/// or its error. Polled by the transport's request loop (no task of its own).
fn answer_when_durable<R: Send + 'static>(
    id: u64,
    pending: store::PendingWrite<Result<R, ServiceError>>,
    body: impl FnOnce(R) -> Body + Send + 'static,
) -> Reply {
    Reply::Waiting(Box::pin(async move {
        match pending.wait().await {
            Ok(r) => Envelope::new(id, body(r)),
            Err(e) => err(id, &e),
        }
    }))
}

impl Session {
    /// A session for a new connection; pushed frames go to `push_tx`.
    pub fn new(shared: Arc<Shared>, closer: Arc<Closer>, push_tx: PushSender, peer: std::net::IpAddr) -> Arc<Self> {
        let conn_id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        shared.shutdown.enter();
        let limiter = TokenBucket::new(shared.config.rate_limit, shared.config.rate_burst, shared.clock.now());
        Arc::new(Self {
            shared,
            conn_id,
            auth: Mutex::new(None),
            limiter: Mutex::new(limiter),
            closer,
            push_tx,
            close_after_reply: Mutex::new(None),
            early: AtomicBool::new(false),
            handshake_done: tokio::sync::Notify::new(),
            peer,
            background: AtomicBool::new(false),
            media_slots: Arc::new(tokio::sync::Semaphore::new(MEDIA_STREAMS_PER_CONNECTION)),
        })
    }

    /// Marks whether requests may still come from 0-RTT early data.
    pub fn set_early(&self, early: bool) {
        self.early.store(early, Ordering::Release);
        if !early {
            self.handshake_done.notify_waiters();
        }
    }

    /// Resolves once requests can no longer be replays of early data.
    async fn handshake_complete(&self) {
        loop {
            let notified = self.handshake_done.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a completion in between wakes it.
            notified.as_mut().enable();
            if !self.early.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The Welcome for the first frame, or the error to send before closing.
    pub fn hello(self: &Arc<Self>, env: Envelope) -> Result<Envelope, Box<(Envelope, CloseCode)>> {
        let id = env.id;
        let Some(Body::Hello(hello)) = env.body else {
            return Err(Box::new((
                Envelope::error(id, ErrorCode::HandshakeRequired, "the first frame must be a Hello"),
                CloseCode::ProtocolError,
            )));
        };
        let Some(version) = negotiate_version(&hello.versions) else {
            return Err(Box::new((
                Envelope::error(
                    id,
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "no common protocol version: server speaks 1, client offered {:?}",
                        hello.versions
                    ),
                ),
                CloseCode::UnsupportedVersion,
            )));
        };
        let mut welcome = v1::Welcome {
            version,
            user: String::new(),
            device_id: 0,
            push_lanes: self.shared.config.push_lanes,
            max_frame: u32::try_from(self.shared.max_frame()).unwrap_or(u32::MAX),
            max_body: u32::try_from(self.shared.config.max_body).unwrap_or(u32::MAX),
            server: concat!("quipd/", env!("CARGO_PKG_VERSION")).into(),
        };
        self.background.store(hello.background, Ordering::Relaxed);
        if !hello.token.is_empty() {
            match self.shared.authenticate(&hello.token) {
                Ok(Some((actor, hash, expires_ms))) => {
                    welcome.user = actor.username.clone();
                    welcome.device_id = actor.device_id;
                    if let Err(e) = self.login_connection(actor, hash, expires_ms) {
                        return Err(Box::new((err(id, &e), CloseCode::TooManyConnections)));
                    }
                }
                Ok(None) => {
                    return Err(Box::new((
                        Envelope::error(id, ErrorCode::Unauthenticated, "unknown or revoked token: log in again"),
                        CloseCode::LoggedOut,
                    )));
                }
                Err(e) => return Err(Box::new((err(id, &e), CloseCode::ServerShutdown))),
            }
        }
        tracing::debug!(conn = self.conn_id, client = %hello.client, user = %welcome.user, "handshake");
        Ok(Envelope::new(id, Body::Welcome(welcome)))
    }

    /// Marks this connection as the actor's device and puts it online,
    /// watching the channels the user subscribes to. Fails when the user
    /// has too many connections; replaces the device's oldest one when the
    /// device has.
    fn login_connection(&self, actor: Actor, token_hash: [u8; 32], expires_ms: i64) -> Result<(), ServiceError> {
        let handle = DeviceHandle {
            conn_id: self.conn_id,
            device_id: actor.device_id,
            tx: self.push_tx.clone(),
            closer: self.closer.clone(),
            expires_ms,
        };
        let config = &self.shared.config;
        let replaced = self
            .shared
            .hub
            .register(
                actor.user_id,
                handle.clone(),
                config.max_connections_per_user,
                config.max_connections_per_device,
            )
            .map_err(|_| {
                ServiceError::LimitExceeded(format!(
                    "at most {} connections per user are allowed",
                    config.max_connections_per_user
                ))
            })?;
        for old in replaced {
            old.closer
                .close(CloseCode::Replaced, "replaced by a newer connection of this device");
        }
        if !self.background.load(Ordering::Relaxed) {
            self.shared.liveness.connected(actor.user_id);
        }
        match store::read(&*self.shared.store, |t| {
            let (from, to) = crate::keys::user_channels(actor.user_id);
            let rows = t.range(&from, &to, usize::MAX, false)?;
            Ok::<_, ServiceError>(
                rows.iter()
                    .filter_map(|(k, _)| crate::keys::chat_of_user_chat(k))
                    .collect::<Vec<u64>>(),
            )
        }) {
            Ok(chats) if !chats.is_empty() => self.shared.hub.watch(actor.user_id, &handle, &chats),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not load channel subscriptions; no live channel posts"),
        }
        *self.auth.lock().expect("auth lock") = Some(Auth {
            actor,
            token_hash,
            expires_ms,
        });
        Ok(())
    }

    /// Charges one request to the device's budget (the connection's while
    /// anonymous).
    fn take_token(&self) -> Result<(), ServiceError> {
        let now = self.shared.clock.now();
        let device = self
            .auth
            .lock()
            .expect("auth lock")
            .as_ref()
            .map(|a| ((a.actor.user_id, a.actor.device_id), a.expires_ms));
        let taken = match device {
            None => self.limiter.lock().expect("limiter lock").try_take(now),
            Some((_, expires_ms)) if self.now_ms() >= expires_ms => {
                // The sweep closes it within a second; this request is
                // refused now, so the bound is exact for requests.
                self.closer
                    .close(CloseCode::SessionExpired, "session token expired: log in again");
                return Err(ServiceError::Unauthenticated(
                    "session token expired: log in again".into(),
                ));
            }
            Some((key, _)) => {
                let config = &self.shared.config;
                let bucket = self.shared.device_limits.get_with(key, || {
                    Arc::new(Mutex::new(TokenBucket::new(config.rate_limit, config.rate_burst, now)))
                });
                bucket.lock().expect("limiter lock").try_take(now)
            }
        };
        taken.map_err(rate_limited)
    }

    /// Takes the device offline; call when the connection ends, saying how.
    pub fn disconnect(&self, how: Ended) {
        if let Some(a) = self.auth.lock().expect("auth lock").take() {
            self.shared.hub.unregister(a.actor.user_id, self.conn_id);
            if !self.background.load(Ordering::Relaxed) {
                self.shared.liveness.disconnected(a.actor.user_id, how);
            }
        }
    }

    /// The checks every request passes first: one not safe to replay waits
    /// for a 0-RTT handshake to complete (up to [`EARLY_WAIT`]), and each
    /// is charged against the rate limit.
    async fn admit(&self, replay_safe: bool) -> Result<(), ServiceError> {
        if !replay_safe
            && self.early.load(Ordering::Acquire)
            && tokio::time::timeout(EARLY_WAIT, self.handshake_complete())
                .await
                .is_err()
        {
            return Err(ServiceError::TooEarly);
        }
        self.take_token()
    }

    /// Admits the request that opens a media stream: like any request it
    /// needs a login, counts against the rate limit, and waits for a 0-RTT
    /// handshake to complete (an upload creates state; a replay must not).
    pub async fn admit_media(&self) -> Result<(Actor, tokio::sync::OwnedSemaphorePermit), ServiceError> {
        let slot = self.media_slots.clone().try_acquire_owned().map_err(|_| {
            ServiceError::LimitExceeded(format!(
                "at most {MEDIA_STREAMS_PER_CONNECTION} media transfers per connection at once"
            ))
        })?;
        self.admit(false).await?;
        if self.shared.shutdown.started() {
            return Err(ServiceError::Unavailable);
        }
        Ok((self.actor()?, slot))
    }

    /// The server's shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether the connection must be closed after the reply just sent.
    pub fn take_close_after_reply(&self) -> Option<CloseCode> {
        self.close_after_reply.lock().expect("close lock").take()
    }

    /// Wall time now, from the server's clock.
    fn now_ms(&self) -> i64 {
        self.shared.clock.wall_ms()
    }

    fn actor(&self) -> Result<Actor, ServiceError> {
        self.auth
            .lock()
            .expect("auth lock")
            .as_ref()
            .map(|a| a.actor.clone())
            .ok_or_else(|| ServiceError::Unauthenticated("log in first (register or login)".into()))
    }

    /// Handles one request. Writes are queued before this returns, so calling
    /// it in stream order applies writes in stream order.
    pub async fn handle(self: &Arc<Self>, env: Envelope) -> Reply {
        let id = env.id;
        match self.dispatch(env).await {
            Ok(r) => r,
            Err(e) => Reply::Ready(err(id, &e)),
        }
    }

    async fn dispatch(self: &Arc<Self>, env: Envelope) -> Result<Reply, ServiceError> {
        let id = env.id;
        let Some(body) = env.body else {
            return Ok(Reply::Ready(Envelope::error(
                id,
                ErrorCode::UnknownRequest,
                "unknown request type (newer client?)",
            )));
        };
        if let Body::Hello(_) = body {
            return Ok(Reply::Ready(Envelope::error(
                id,
                ErrorCode::HandshakeRequired,
                "Hello is only valid as the first frame of the connection",
            )));
        }
        let kind = crate::kinds::of(&body);
        self.admit(kind.replay_safe).await?;
        if kind.writes && self.shared.shutdown.started() {
            return Err(ServiceError::Unavailable);
        }
        match body {
            Body::Ping(_) => Ok(Reply::Ready(Envelope::new(
                id,
                Body::Pong(v1::PongResponse {
                    server_time_ms: self.now_ms(),
                }),
            ))),
            Body::Register(r) => self.register(id, r).await,
            Body::Login(r) => self.login(id, r).await,
            Body::Logout(_) => self.logout(id).await,
            Body::Whoami(_) => self.whoami(id),
            Body::Send(r) => self.send(id, r).await,
            Body::CreateChat(r) => self.create_chat(id, r).await,
            Body::UpdateChat(r) => self.update_chat(id, r).await,
            Body::Subscribe(r) => self.subscribe(id, r).await,
            Body::ChatInfo(r) => self.chat_info(id, r),
            Body::Presence(r) => self.presence(id, r),
            Body::Settings(r) => self.settings(id, r).await,
            Body::Block(r) => self.block(id, r).await,
            Body::Typing(r) => {
                self.typing(r.chat_id)?;
                Ok(Reply::Ready(Envelope::new(id, Body::TypingSent(v1::TypingResponse {}))))
            }
            Body::ReceiptDetail(r) => self.receipt_detail(id, r),
            Body::History(r) => self.history(id, r),
            Body::Chats(r) => self.chats(id, r),
            Body::Receipt(r) => self.receipt(id, r).await,
            Body::Sync(r) => self.sync(id, r),
            Body::Ack(r) => self.ack(id, r).await,
            Body::Upload(_) | Body::Download(_) => Err(ServiceError::InvalidArgument(
                "media travels on a stream of its own: open a new stream whose first frame is the upload or download request"
                    .into(),
            )),
            // Hello (answered above) and the bodies only servers send,
            // which `kinds::of` names one by one.
            _ => Ok(Reply::Ready(Envelope::error(
                id,
                ErrorCode::UnknownRequest,
                "that message type is sent by servers, not clients",
            ))),
        }
    }

    /// Queues a write whose result carries a [`Delivery`](crate::service::Delivery):
    /// once durable, and in commit order, the delivery goes to the fan-out,
    /// before the reply is released.
    async fn write_then_deliver<R, F, D>(
        &self,
        f: F,
        delivery: D,
    ) -> Result<store::PendingWrite<Result<R, ServiceError>>, ServiceError>
    where
        R: Send + 'static,
        F: FnMut(&mut dyn store::Txn) -> Result<R, ServiceError> + Send + 'static,
        D: FnOnce(&mut R) -> &mut crate::service::Delivery + Send + 'static,
    {
        let shared = self.shared.clone();
        store::enqueue_write_then(&*self.shared.store, f, move |r: &mut R| {
            shared.fanout.submit(std::mem::take(delivery(r)));
        })
        .await
    }

    /// Refuses a request for a direct chat early from the membership cache;
    /// fills the cache from the store on a miss. Groups, channels and
    /// name-addressed requests are checked in their transaction.
    fn check_member_cached(&self, actor: &Actor, target: &Target) -> Result<(), ServiceError> {
        let Target::Chat(chat_id) = *target else { return Ok(()) };
        let members = match self.shared.members.get(&chat_id) {
            Some(m) => m,
            None => {
                let chat = store::read(&*self.shared.store, |t| {
                    crate::records::get::<crate::records::ChatRecord>(t, &crate::keys::chat(chat_id))
                        .map_err(ServiceError::from)
                })?
                .ok_or_else(|| ServiceError::NotFound(format!("no chat {chat_id}")))?;
                if chat.kind() != ChatKind::Direct {
                    return Ok(());
                }
                let m: Arc<[u64]> = chat.members.into();
                self.shared.members.insert(chat_id, m.clone());
                m
            }
        };
        if members.contains(&actor.user_id) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "you are not a participant of chat {chat_id}"
            )))
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.disconnect(Ended::Lost);
        self.shared.shutdown.leave();
    }
}
