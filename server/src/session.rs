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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use quip_protocol::v1::{self, ChatAction, ChatKind, ErrorCode, ReceiptKind};
use quip_protocol::{Body, CloseCode, Envelope, negotiate_version};

use crate::config::Config;
use crate::fanout::Fanout;
use crate::hub::{Closer, DeviceHandle, Hub, PushSender};
use crate::liveness::Liveness;
use crate::media::MediaStore;
use crate::presence::Ended;
use crate::ratelimit::TokenBucket;
use crate::service::messages::{self, Page, Target};
use crate::service::{Actor, ServiceError, accounts, blocking, groups, log, presence, receipts};
use crate::store::{self, Store};

/// State shared by every connection of a server.
pub struct Shared {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Media bytes.
    pub media: Arc<MediaStore>,
    /// Online devices.
    pub hub: Arc<Hub>,
    /// Pushes committed writes' events in commit order.
    fanout: Fanout,
    /// Who is online, and presence announcements.
    pub liveness: Arc<Liveness>,
    /// Configuration.
    pub config: Arc<Config>,
    /// Token hash → actor and login time, in front of `sess/` reads on
    /// every connect.
    sessions: moka::sync::Cache<[u8; 32], (Actor, i64)>,
    /// Failed-login budgets per account name and per client IP address.
    login_failures_user: moka::sync::Cache<String, Arc<Mutex<TokenBucket>>>,
    login_failures_ip: moka::sync::Cache<std::net::IpAddr, Arc<Mutex<TokenBucket>>>,
    /// Registration budgets per client IP address.
    registrations_ip: moka::sync::Cache<std::net::IpAddr, Arc<Mutex<TokenBucket>>>,
    /// Argon2 runs, bounded.
    passwords: crate::passwords::PasswordPool,
    /// Chat id → participants of a direct chat, in front of membership
    /// checks. Direct chats never change members, so entries never go
    /// stale; groups do, and are checked in the store.
    members: moka::sync::Cache<u64, Arc<[u64]>>,
    /// (user, device) → request budget, shared by all of a device's
    /// connections so opening more connections does not multiply it.
    device_limits: moka::sync::Cache<(u64, u32), Arc<Mutex<TokenBucket>>>,
    /// (user, device) → typing-indicator budget.
    typing_limits: moka::sync::Cache<(u64, u32), Arc<Mutex<TokenBucket>>>,
    next_conn: AtomicU64,
    /// Set when shutdown starts: writes are refused from then on.
    pub shutting_down: AtomicBool,
}

impl Shared {
    /// State around a store. Starts the fan-out tasks, so call it inside a
    /// tokio runtime.
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>, media: Arc<MediaStore>) -> Self {
        let hub = Arc::new(Hub::default());
        let shards = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 16);
        let fanout = Fanout::start(hub.clone(), shards, 16 * 1024, quip_protocol::MAX_FRAME);
        let grace = std::time::Duration::from_secs_f64(config.presence_grace_secs.max(0.0));
        let liveness = Liveness::start(store.clone(), hub.clone(), grace, quip_protocol::MAX_FRAME);
        tokio::spawn(close_expired_sessions(Arc::downgrade(&hub)));
        Self {
            store,
            media,
            hub,
            fanout,
            liveness,
            typing_limits: moka::sync::Cache::new(1_000_000),
            login_failures_user: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
            login_failures_ip: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
            registrations_ip: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
            passwords: crate::passwords::PasswordPool::sized(config.password_workers, config.password_queue),
            config,
            sessions: moka::sync::Cache::new(100_000),
            members: moka::sync::Cache::new(100_000),
            device_limits: moka::sync::Cache::new(1_000_000),
            next_conn: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
        }
    }

    fn max_frame(&self) -> usize {
        quip_protocol::MAX_FRAME
    }

    /// The actor behind an HTTP request's bearer token, charged one request
    /// against its device's budget (the one its connections share).
    pub fn actor_for_bearer(&self, token: &str) -> Result<Actor, ServiceError> {
        let (actor, _, _) = self
            .authenticate(token)?
            .ok_or_else(|| ServiceError::Unauthenticated("invalid, expired or revoked token".into()))?;
        let now = Instant::now();
        let bucket = self.device_limits.get_with((actor.user_id, actor.device_id), || {
            Arc::new(Mutex::new(TokenBucket::new(
                self.config.rate_limit,
                self.config.rate_burst,
                now,
            )))
        });
        bucket
            .lock()
            .expect("limiter lock")
            .try_take(now)
            .map_err(rate_limited)?;
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ServiceError::Unavailable);
        }
        Ok(actor)
    }

    /// Resolves a token to its actor, its hash and when it expires (ms
    /// since the Unix epoch), through the cache. Expired tokens count as
    /// unknown.
    fn authenticate(&self, token: &str) -> Result<Option<(Actor, [u8; 32], i64)>, ServiceError> {
        let hash = accounts::token_hash(token);
        let found = match self.sessions.get(&hash) {
            Some(hit) => Some(hit),
            None => {
                let found = store::read(&*self.store, |t| {
                    let Some(s) = accounts::session(t, &hash)? else {
                        return Ok(None);
                    };
                    let name = accounts::username(t, s.user_id)?.unwrap_or_default();
                    let actor = Actor {
                        user_id: s.user_id,
                        username: name,
                        device_id: s.device_id,
                    };
                    Ok::<_, ServiceError>(Some((actor, s.created_ms)))
                })?;
                if let Some(f) = &found {
                    self.sessions.insert(hash, f.clone());
                }
                found
            }
        };
        let now = now_ms();
        Ok(found.and_then(|(actor, created)| {
            let expires = self.expiry(created);
            (now < expires).then_some((actor, hash, expires))
        }))
    }

    /// When a token issued at `created_ms` expires.
    fn expiry(&self, created_ms: i64) -> i64 {
        let ttl_ms = i64::try_from(self.config.token_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        created_ms.saturating_add(ttl_ms)
    }

    /// Reserves a failed login's cost before the password is checked: one
    /// token from the account's budget and one from the address's, taken
    /// atomically (under each bucket's lock), so parallel attempts cannot all
    /// pass a check made before any of them is charged. Refused with
    /// `RATE_LIMITED`, before any hashing, while either is empty. The
    /// reservation is given back by [`LoginReservation::refund`] when the
    /// password was right.
    fn reserve_login(&self, user: &str, ip: std::net::IpAddr) -> Result<LoginReservation, ServiceError> {
        let now = Instant::now();
        let [account, address] = self.login_buckets(user, ip);
        account
            .lock()
            .expect("limiter lock")
            .try_take(now)
            .map_err(rate_limited)?;
        if let Err(wait) = address.lock().expect("limiter lock").try_take(now) {
            account.lock().expect("limiter lock").refund();
            return Err(rate_limited(wait));
        }
        Ok(LoginReservation([account, address]))
    }

    /// Charges a registration to the client address's budget, refusing
    /// with `RATE_LIMITED` when it is spent.
    fn charge_registration(&self, ip: std::net::IpAddr) -> Result<(), ServiceError> {
        let now = Instant::now();
        let c = &self.config;
        let bucket = self.registrations_ip.get_with(ip, || {
            Arc::new(Mutex::new(TokenBucket::new(
                c.registrations_per_ip_per_hour / 3600.0,
                f64::from(c.registrations_per_ip_burst),
                now,
            )))
        });
        let mut bucket = bucket.lock().expect("limiter lock");
        bucket.try_take(now).map_err(rate_limited)
    }

    fn login_buckets(&self, user: &str, ip: std::net::IpAddr) -> [Arc<Mutex<TokenBucket>>; 2] {
        let now = Instant::now();
        let c = &self.config;
        [
            self.login_failures_user.get_with(user.to_owned(), || {
                Arc::new(Mutex::new(TokenBucket::new(
                    1.0 / 60.0,
                    f64::from(c.login_failures_per_account),
                    now,
                )))
            }),
            self.login_failures_ip.get_with(ip, || {
                Arc::new(Mutex::new(TokenBucket::new(
                    1.0 / 10.0,
                    f64::from(c.login_failures_per_ip),
                    now,
                )))
            }),
        ]
    }
}

/// A login attempt's reserved cost, charged unless refunded.
struct LoginReservation([Arc<Mutex<TokenBucket>>; 2]);

impl LoginReservation {
    /// The password was right: the attempt does not count as a failure.
    fn refund(self) {
        for bucket in self.0 {
            bucket.lock().expect("limiter lock").refund();
        }
    }
}

/// Closes connections whose session token expired, once a second, until
/// the hub is gone (the server stopped).
async fn close_expired_sessions(hub: std::sync::Weak<Hub>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let closed = hub.close_expired(now_ms());
        if closed > 0 {
            tracing::debug!(closed, "closed connections whose session token expired");
        }
    }
}

fn rate_limited(wait: std::time::Duration) -> ServiceError {
    ServiceError::RateLimited {
        retry_after_ms: u32::try_from(wait.as_millis().max(1)).unwrap_or(u32::MAX),
    }
}

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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

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
        let limiter = TokenBucket::new(shared.config.rate_limit, shared.config.rate_burst, Instant::now());
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
        let now = Instant::now();
        let device = self
            .auth
            .lock()
            .expect("auth lock")
            .as_ref()
            .map(|a| ((a.actor.user_id, a.actor.device_id), a.expires_ms));
        let taken = match device {
            None => self.limiter.lock().expect("limiter lock").try_take(now),
            Some((_, expires_ms)) if now_ms() >= expires_ms => {
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
        if self.shared.shutting_down.load(Ordering::Relaxed) {
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
        if kind.writes && self.shared.shutting_down.load(Ordering::Relaxed) {
            return Err(ServiceError::Unavailable);
        }
        let shared = &self.shared;
        let max_frame = shared.max_frame();
        match body {
            Body::Ping(_) => Ok(Reply::Ready(Envelope::new(
                id,
                Body::Pong(v1::PongResponse {
                    server_time_ms: now_ms(),
                }),
            ))),
            Body::Register(r) => self.register(id, r).await,
            Body::Login(r) => self.login(id, r).await,
            Body::Logout(_) => {
                let auth = self.auth.lock().expect("auth lock").clone();
                let auth = auth.ok_or_else(|| ServiceError::Unauthenticated("not logged in".into()))?;
                let hash = auth.token_hash;
                let pending = store::enqueue_write(&*shared.store, move |t| accounts::logout(t, &hash)).await?;
                let this = self.clone();
                Ok(Reply::Pending(tokio::spawn(async move {
                    match pending.wait().await {
                        Ok(()) => {
                            this.shared.sessions.invalidate(&hash);
                            this.disconnect(Ended::Closed);
                            // The token is one device's: its other open
                            // connections end now, not at their next login.
                            let a = &auth.actor;
                            this.shared.hub.close_device(
                                a.user_id,
                                a.device_id,
                                CloseCode::LoggedOut,
                                "logged out: the session token was revoked",
                            );
                            *this.close_after_reply.lock().expect("close lock") = Some(CloseCode::LoggedOut);
                            Envelope::new(id, Body::LoggedOut(v1::LogoutResponse {}))
                        }
                        Err(e) => err(id, &e),
                    }
                })))
            }
            Body::Whoami(_) => {
                let a = self.actor()?;
                Ok(Reply::Ready(Envelope::new(
                    id,
                    Body::Identity(v1::WhoAmIResponse {
                        user: a.username,
                        device_id: a.device_id,
                    }),
                )))
            }
            Body::Send(r) => {
                let actor = self.actor()?;
                messages::validate_send(&r.client_msg_id, r.content.as_ref(), shared.config.max_body)?;
                let target = Target::from_fields(&r.to_user, r.chat_id)?;
                let content = r.content.unwrap_or_default();
                let now = now_ms();
                let pending = self
                    .write_then_deliver(
                        move |t| messages::send(t, &actor, &target, &r.client_msg_id, &content, now),
                        |sent| &mut sent.delivery,
                    )
                    .await?;
                Ok(answer_when_durable(id, pending, |sent| Body::Sent(sent.response)))
            }
            Body::CreateChat(r) => {
                let actor = self.actor()?;
                let kind = ChatKind::try_from(r.kind).unwrap_or_default();
                let (max, now) = (shared.config.max_group_members, now_ms());
                let pending = self
                    .write_then_deliver(
                        move |t| groups::create(t, &actor, kind, &r.name, &r.members, &r.client_request_id, max, now),
                        |c| &mut c.delivery,
                    )
                    .await?;
                Ok(Self::chat_reply(id, pending))
            }
            Body::UpdateChat(r) => {
                let actor = self.actor()?;
                let action = ChatAction::try_from(r.action).unwrap_or_default();
                let (max, now) = (shared.config.max_group_members, now_ms());
                let pending = self
                    .write_then_deliver(
                        move |t| groups::update(t, &actor, r.chat_id, action, &r.users, &r.name, max, now),
                        |c| &mut c.delivery,
                    )
                    .await?;
                Ok(Self::chat_reply(id, pending))
            }
            Body::Subscribe(r) => {
                let actor = self.actor()?;
                let now = now_ms();
                let pending = self
                    .write_then_deliver(
                        move |t| groups::subscribe(t, &actor, r.chat_id, r.unsubscribe, now),
                        |c| &mut c.delivery,
                    )
                    .await?;
                Ok(Self::chat_reply(id, pending))
            }
            Body::ChatInfo(r) => {
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
            Body::Presence(r) => {
                let actor = self.actor()?;
                let live = &shared.liveness;
                let users = store::read(&*shared.store, |t| {
                    presence::lookup(t, &actor, &r.users, &|u| live.is_online(u))
                })?;
                Ok(Reply::Ready(Envelope::new(
                    id,
                    Body::PresenceList(v1::PresenceResponse { users }),
                )))
            }
            Body::Settings(r) => {
                let actor = self.actor()?;
                let v = v1::Visibility::try_from(r.last_seen).unwrap_or_default();
                let g = v1::GroupAdds::try_from(r.group_adds).unwrap_or_default();
                let pending =
                    store::enqueue_write(&*shared.store, move |t| presence::set_settings(t, actor.user_id, v, g))
                        .await?;
                Ok(answer_when_durable(id, pending, |(v, g)| {
                    Body::SettingsSaved(v1::SettingsResponse {
                        last_seen: v as i32,
                        group_adds: g as i32,
                    })
                }))
            }
            Body::Block(r) => {
                let actor = self.actor()?;
                let pending =
                    store::enqueue_write(&*shared.store, move |t| blocking::set(t, &actor, &r.user, r.unblock)).await?;
                Ok(answer_when_durable(id, pending, |blocked| Body::Blocked(v1::BlockResponse { blocked })))
            }
            Body::Typing(r) => {
                self.typing(r.chat_id)?;
                Ok(Reply::Ready(Envelope::new(id, Body::TypingSent(v1::TypingResponse {}))))
            }
            Body::ReceiptDetail(r) => {
                let actor = self.actor()?;
                let detail = store::read(&*shared.store, |t| receipts::detail(t, &actor, r.chat_id))?;
                Ok(Reply::Ready(Envelope::new(id, Body::ReceiptDetails(detail))))
            }
            Body::History(r) => {
                let actor = self.actor()?;
                let target = Target::from_fields(&r.with_user, r.chat_id)?;
                self.check_member_cached(&actor, &target)?;
                let page = Page {
                    before: r.before_seq,
                    after: r.after_seq,
                    limit: r.limit,
                };
                let page = store::read(&*shared.store, |t| {
                    messages::history(t, &actor, &target, page, max_frame - 1024)
                })?;
                Ok(Reply::Ready(Envelope::new(id, Body::HistoryPage(page))))
            }
            Body::Chats(r) => {
                let actor = self.actor()?;
                let page = store::read(&*shared.store, |t| {
                    messages::chats(t, &actor, r.limit, r.after.as_ref(), max_frame - 1024)
                })?;
                Ok(Reply::Ready(Envelope::new(id, Body::ChatList(page))))
            }
            Body::Receipt(r) => {
                let actor = self.actor()?;
                let kind = ReceiptKind::try_from(r.kind).unwrap_or(ReceiptKind::Unspecified);
                if r.chat_id == 0 {
                    return Err(ServiceError::InvalidArgument("chat_id is required".into()));
                }
                self.check_member_cached(&actor, &Target::Chat(r.chat_id))?;
                let pending = self
                    .write_then_deliver(
                        move |t| receipts::mark(t, &actor, r.chat_id, kind, r.seq).map(|(seq, n)| (seq, n.into())),
                        |r: &mut (u64, crate::service::Delivery)| &mut r.1,
                    )
                    .await?;
                Ok(answer_when_durable(id, pending, |(seq, _)| Body::ReceiptStored(v1::ReceiptResponse { seq })))
            }
            Body::Sync(r) => {
                let actor = self.actor()?;
                let page = store::read(&*shared.store, |t| {
                    log::sync(t, actor.user_id, actor.device_id, r.limit, max_frame - 1024)
                })?;
                Ok(Reply::Ready(Envelope::new(
                    id,
                    Body::SyncPage(v1::SyncResponse {
                        events: page.events,
                        more: page.more,
                        head: page.head,
                        acked: page.acked,
                    }),
                )))
            }
            Body::Ack(r) => {
                let actor = self.actor()?;
                let pending = store::enqueue_write(&*shared.store, move |t| {
                    log::ack(t, actor.user_id, actor.device_id, r.pos)
                })
                .await?;
                Ok(answer_when_durable(id, pending, |pos| Body::Acked(v1::AckResponse { pos })))
            }
            Body::Upload(_) | Body::Download(_) => Err(ServiceError::InvalidArgument(
                "media travels on a stream of its own: open a new stream whose first frame is the upload or download request"
                    .into(),
            )),
            Body::Hello(_)
            | Body::Welcome(_)
            | Body::Error(_)
            | Body::Auth(_)
            | Body::LoggedOut(_)
            | Body::Identity(_)
            | Body::Sent(_)
            | Body::HistoryPage(_)
            | Body::ChatList(_)
            | Body::ReceiptStored(_)
            | Body::SyncPage(_)
            | Body::Acked(_)
            | Body::Pong(_)
            | Body::Chat(_)
            | Body::ReceiptDetails(_)
            | Body::PresenceList(_)
            | Body::SettingsSaved(_)
            | Body::TypingSent(_)
            | Body::Blocked(_)
            | Body::UploadReady(_)
            | Body::UploadComplete(_)
            | Body::DownloadReady(_)
            | Body::Event(_) => Ok(Reply::Ready(Envelope::error(
                id,
                ErrorCode::UnknownRequest,
                "that message type is sent by servers, not clients",
            ))),
        }
    }

    /// A typing indicator: checked, rate limited per device (excess is
    /// dropped: `RATE_LIMITED` on a stream, silence for a datagram), and
    /// pushed unreliably to the chat's other participants.
    pub fn typing(&self, chat_id: u64) -> Result<(), ServiceError> {
        let actor = self.actor()?;
        let config = &self.shared.config;
        let now = Instant::now();
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
        self.shared
            .hub
            .push_event(&others, chat_id, event, true, self.shared.max_frame());
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

    fn chat_reply(id: u64, pending: store::PendingWrite<Result<groups::Changed, ServiceError>>) -> Reply {
        answer_when_durable(id, pending, |c| {
            Body::Chat(v1::ChatInfoResponse {
                info: Some(c.info),
                event_seq: c.event_seq,
            })
        })
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

    fn ensure_anonymous(&self) -> Result<(), ServiceError> {
        if self.auth.lock().expect("auth lock").is_some() {
            return Err(ServiceError::InvalidArgument(
                "this connection is already logged in; open a new connection to switch accounts".into(),
            ));
        }
        Ok(())
    }

    /// Cheap checks first (fields, whether the name is free, the address's
    /// registration budget), then the argon2 hash in the bounded pool, then
    /// the write, which checks the name again.
    async fn register(self: &Arc<Self>, id: u64, r: v1::RegisterRequest) -> Result<Reply, ServiceError> {
        self.ensure_anonymous()?;
        accounts::validate_username(&r.username)?;
        accounts::validate_password(&r.password)?;
        accounts::validate_device_name(&r.device_name)?;
        if store::read(&*self.shared.store, |t| accounts::find_user(t, &r.username))?.is_some() {
            return Err(ServiceError::UsernameTaken(r.username));
        }
        self.shared.charge_registration(self.peer)?;
        let pw = r.password;
        let phc = self
            .shared
            .passwords
            .run(move || accounts::hash_password(&pw))
            .await??;
        let (token, hash) = accounts::new_token();
        let (name, device_name, now) = (r.username.clone(), r.device_name, now_ms());
        let pending = store::enqueue_write(&*self.shared.store, move |t| {
            accounts::register(t, &name, &phc, &device_name, &hash, now)
        })
        .await?;
        Ok(self.finish_auth(id, r.username, token, hash, pending))
    }

    async fn login(self: &Arc<Self>, id: u64, r: v1::LoginRequest) -> Result<Reply, ServiceError> {
        self.ensure_anonymous()?;
        accounts::validate_device_name(&r.device_name)?;
        let reservation = self.shared.reserve_login(&r.username, self.peer)?;
        let user = store::read(&*self.shared.store, |t| accounts::find_user(t, &r.username))?;
        let user_id = user.as_ref().map(|u| u.id);
        let pw = r.password;
        let ok = self
            .shared
            .passwords
            .run(move || match user {
                Some(u) => accounts::verify_password(&pw, &u.password_phc),
                None => {
                    // Same work as a real check, so timing does not reveal which names exist.
                    let _ = accounts::verify_password(&pw, accounts::dummy_hash());
                    false
                }
            })
            .await;
        match ok {
            Ok(true) => reservation.refund(),
            // A wrong password keeps the reserved cost.
            Ok(false) => return Err(ServiceError::InvalidCredentials),
            // Not checked (queue full, or the pool failed): not a failure.
            Err(e) => {
                reservation.refund();
                return Err(e);
            }
        }
        // Refuse before creating a device that could not connect anyway.
        let per_user = self.shared.config.max_connections_per_user;
        if user_id.is_some_and(|u| self.shared.hub.devices(u) >= per_user) {
            *self.close_after_reply.lock().expect("close lock") = Some(CloseCode::TooManyConnections);
            return Err(ServiceError::LimitExceeded(format!(
                "at most {per_user} connections per user are allowed"
            )));
        }
        let (token, hash) = accounts::new_token();
        let (name, device_name, now) = (r.username.clone(), r.device_name, now_ms());
        let pending = store::enqueue_write(&*self.shared.store, move |t| {
            accounts::login(t, &name, &device_name, &hash, now)
        })
        .await?;
        Ok(self.finish_auth(id, r.username, token, hash, pending))
    }

    fn finish_auth(
        self: &Arc<Self>,
        id: u64,
        username: String,
        token: String,
        hash: [u8; 32],
        pending: store::PendingWrite<Result<(u64, u32), ServiceError>>,
    ) -> Reply {
        let this = self.clone();
        Reply::Pending(tokio::spawn(async move {
            match pending.wait().await {
                Ok((user_id, device_id)) => {
                    let actor = Actor {
                        user_id,
                        username: username.clone(),
                        device_id,
                    };
                    let expires_ms = this.shared.expiry(now_ms());
                    if let Err(e) = this.login_connection(actor, hash, expires_ms) {
                        *this.close_after_reply.lock().expect("close lock") = Some(CloseCode::TooManyConnections);
                        return err(id, &e);
                    }
                    Envelope::new(
                        id,
                        Body::Auth(v1::AuthResponse {
                            user: username,
                            device_id,
                            token,
                        }),
                    )
                }
                Err(e) => err(id, &e),
            }
        }))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.disconnect(Ended::Lost);
    }
}
