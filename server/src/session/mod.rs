//! One connection's protocol session, independent of the transport.
//!
//! The transport (QUIC or WebSocket) decodes frames and hands each
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
//! - this file: the connection's state and the one dispatch over request
//!   kinds ([`crate::kinds`] says what each kind is);
//! - `handshake`: Hello, going online and offline; `admission`: the 0-RTT
//!   replay guard and the rate limit every request passes first;
//! - `account`, `messaging`, `chats`, `social`: the handlers, by family;
//! - `shared`: what every connection shares (caches, budgets, the hub,
//!   the clock, the shutdown signal);
//! - `tests`: a deterministic harness driving sessions in virtual time.

mod account;
mod admission;
mod chats;
mod handshake;
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
    /// Who the connection was logged in as once it went offline (a
    /// logout goes offline before the connection closes), for the log
    /// line that says why it closed.
    was: Mutex<Option<(String, u32)>>,
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
    /// Set once a rate-limit refusal of this connection was logged.
    limit_logged: AtomicBool,
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
            was: Mutex::new(None),
            limiter: Mutex::new(limiter),
            closer,
            push_tx,
            close_after_reply: Mutex::new(None),
            early: AtomicBool::new(false),
            handshake_done: tokio::sync::Notify::new(),
            peer,
            background: AtomicBool::new(false),
            limit_logged: AtomicBool::new(false),
            media_slots: Arc::new(tokio::sync::Semaphore::new(MEDIA_STREAMS_PER_CONNECTION)),
        })
    }

    /// The server's shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The user name and device this connection is (or, once offline,
    /// was last) logged in as.
    pub fn identity(&self) -> Option<(String, u32)> {
        let auth = self.auth.lock().expect("auth lock");
        match auth.as_ref() {
            Some(a) => Some((a.actor.username.clone(), a.actor.device_id)),
            None => self.was.lock().expect("was lock").clone(),
        }
    }

    /// The client's address.
    pub fn peer(&self) -> std::net::IpAddr {
        self.peer
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
    /// before the reply is released. In a cluster the write itself puts the
    /// delivery in the inboxes of its recipients' nodes instead
    /// ([`crate::cluster`]), so the push commits with it.
    async fn write_then_deliver<R, F, D>(
        &self,
        mut f: F,
        delivery: D,
    ) -> Result<store::PendingWrite<Result<R, ServiceError>>, ServiceError>
    where
        R: Send + 'static,
        F: FnMut(&mut dyn store::Txn) -> Result<R, ServiceError> + Send + 'static,
        D: Fn(&mut R) -> &mut crate::service::Delivery + Send + Sync + 'static,
    {
        if let Some(node) = self.shared.cluster.get().cloned() {
            let delivery = Arc::new(delivery);
            let route = delivery.clone();
            return store::enqueue_write(&*self.shared.store, move |t| {
                let mut r = f(t)?;
                node.route(t, route(&mut r))?;
                Ok(r)
            })
            .await;
        }
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
