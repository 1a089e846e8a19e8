//! State every connection of a server shares: the store, the hub, caches
//! in front of the store, and the budgets (throttles, rate limits) that must
//! hold across a user's or an address's connections.

use crate::config::Config;
use crate::fanout::Fanout;
use crate::hub::Hub;
use crate::media::MediaStore;
use crate::presence::Liveness;
use crate::ratelimit::TokenBucket;
use crate::service::throttle::{self, Budget};
use crate::service::{Actor, ServiceError, accounts};
use crate::store::{self, Store};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::shutdown::Shutdown;

/// How long a node trusts its cache of a session token in a cluster: a
/// token revoked on another node stops opening connections here within it
/// (connections already open are closed through the cluster at once).
pub const SESSION_CACHE_TTL_CLUSTER: std::time::Duration = std::time::Duration::from_secs(1);

/// State shared by every connection of a server.
pub struct Shared {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Media bytes.
    pub media: Arc<MediaStore>,
    /// Online devices.
    pub hub: Arc<Hub>,
    /// Pushes committed writes' events in commit order.
    pub(super) fanout: Arc<Fanout>,
    /// This node's place in a cluster, once joined (FoundationDB stores).
    pub cluster: Arc<std::sync::OnceLock<Arc<crate::cluster::Node>>>,
    /// Who is online, and presence announcements.
    pub liveness: Arc<Liveness>,
    /// Configuration.
    pub config: Arc<Config>,
    /// Token hash → actor and login time, in front of `sess/` reads on
    /// every connect.
    pub(crate) sessions: moka::sync::Cache<[u8; 32], (Actor, i64)>,
    /// Failed-login budgets per account name and per client IP address.
    pub(crate) login_failures_user: moka::sync::Cache<String, Arc<Mutex<TokenBucket>>>,
    pub(super) login_failures_ip: moka::sync::Cache<std::net::IpAddr, Arc<Mutex<TokenBucket>>>,
    /// Registration budgets per client IP address.
    pub(super) registrations_ip: moka::sync::Cache<std::net::IpAddr, Arc<Mutex<TokenBucket>>>,
    /// Argon2 runs, bounded.
    pub(crate) passwords: crate::passwords::PasswordPool,
    /// Chat id → participants of a direct chat, in front of membership
    /// checks. Direct chats never change members, so entries never go
    /// stale; groups do, and are checked in the store.
    pub(super) members: moka::sync::Cache<u64, Arc<[u64]>>,
    /// (sender, peer's name) → where their last direct message went, so a
    /// send by name on a networked store fetches all its reads at once
    /// (`messages::DirectHint`). Unused on the embedded store.
    pub(super) direct_hints: moka::sync::Cache<(u64, String), crate::service::messages::DirectHint>,
    /// (user, device) → request budget, shared by all of a device's
    /// connections so opening more connections does not multiply it.
    pub(super) device_limits: moka::sync::Cache<(u64, u32), Arc<Mutex<TokenBucket>>>,
    /// (user, device) → typing-indicator budget.
    pub(super) typing_limits: moka::sync::Cache<(u64, u32), Arc<Mutex<TokenBucket>>>,
    pub(super) next_conn: AtomicU64,
    /// The time budgets, expiry and presence read.
    pub clock: Clock,
    /// Random per process start: who holds an upload's claim when not in
    /// a cluster (see [`Shared::instance`]).
    instance: u64,
    /// Graceful shutdown: from its start writes are refused and requests
    /// no longer read; it counts the connections left.
    pub shutdown: Shutdown,
}

impl Shared {
    /// State around a store. Starts the fan-out tasks, so call it inside a
    /// tokio runtime.
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>, media: Arc<MediaStore>) -> Self {
        Self::with_clock(store, config, media, Clock::system())
    }

    /// Like [`Shared::new`], reading time from `clock` (tests pass a
    /// virtual one).
    pub fn with_clock(store: Arc<dyn Store>, config: Arc<Config>, media: Arc<MediaStore>, clock: Clock) -> Self {
        let store_clustered = store.clustered();
        let hub = Arc::new(Hub::default());
        let shards = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 16);
        let fanout = Arc::new(Fanout::start(hub.clone(), shards, 16 * 1024, quip_protocol::MAX_FRAME));
        let cluster = Arc::new(std::sync::OnceLock::new());
        let grace = std::time::Duration::from_secs_f64(config.presence_grace_secs.max(0.0));
        let liveness = Liveness::start(
            store.clone(),
            hub.clone(),
            grace,
            quip_protocol::MAX_FRAME,
            clock,
            cluster.clone(),
        );
        tokio::spawn(close_expired_sessions(Arc::downgrade(&hub), clock));
        Self {
            store,
            media,
            hub,
            fanout,
            cluster,
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
            instance: rand::random::<u64>() | 1,
            passwords: crate::passwords::PasswordPool::sized(config.password_workers, config.password_queue),
            config,
            // In a cluster another node may revoke a token: a cached entry
            // lives for at most SESSION_CACHE_TTL_CLUSTER there.
            sessions: if store_clustered {
                moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(SESSION_CACHE_TTL_CLUSTER)
                    .build()
            } else {
                moka::sync::Cache::new(100_000)
            },
            members: moka::sync::Cache::new(100_000),
            direct_hints: moka::sync::Cache::new(100_000),
            device_limits: moka::sync::Cache::new(1_000_000),
            next_conn: AtomicU64::new(1),
            shutdown: Shutdown::default(),
            clock,
        }
    }

    /// Joins the cluster when the store can hold one (FoundationDB): from
    /// then on pushes go through the nodes' inboxes. `addr` is where
    /// clients reach this node.
    pub async fn join_cluster(&self, addr: String) -> Result<(), ServiceError> {
        if !self.store.clustered() || self.cluster.get().is_some() {
            return Ok(());
        }
        let node = crate::cluster::Node::start(
            self.store.clone(),
            self.hub.clone(),
            self.fanout.clone(),
            self.clock,
            addr,
            self.max_frame(),
        )
        .await?;
        let _ = self.cluster.set(node);
        Ok(())
    }

    /// Pushes a transient event (typing, presence) to `users`' devices, on
    /// every node.
    pub fn push_transient(&self, users: Vec<u64>, chat_id: u64, event: quip_protocol::v1::Event, unreliable: bool) {
        match self.cluster.get() {
            Some(node) => node.push_transient(users, chat_id, event, unreliable),
            None => self
                .hub
                .push_event(&users, chat_id, event, unreliable, self.max_frame()),
        }
    }

    pub(super) fn max_frame(&self) -> usize {
        quip_protocol::MAX_FRAME
    }

    /// Bytes the items of a paged reply (history, sync, chat list) may
    /// take: a frame, less room for the envelope and the page's own fields.
    pub(super) fn page_budget(&self) -> usize {
        self.max_frame() - 1024
    }

    /// The actor behind an HTTP request's bearer token, charged one request
    /// against its device's budget (the one its connections share).
    pub fn actor_for_bearer(&self, token: &str) -> Result<Actor, ServiceError> {
        let (actor, _, _) = self
            .authenticate(token)?
            .ok_or_else(|| ServiceError::Unauthenticated("invalid, expired or revoked token".into()))?;
        let now = self.clock.now();
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
        if self.shutdown.started() {
            return Err(ServiceError::Unavailable);
        }
        Ok(actor)
    }

    /// Resolves a token to its actor, its hash and when it expires (ms
    /// since the Unix epoch), through the cache. Expired tokens count as
    /// unknown.
    pub(super) fn authenticate(&self, token: &str) -> Result<Option<(Actor, [u8; 32], i64)>, ServiceError> {
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
        let now = self.clock.wall_ms();
        Ok(found.and_then(|(actor, created)| {
            let expires = self.expiry(created);
            (now < expires).then_some((actor, hash, expires))
        }))
    }

    /// How many connections `user` has open: on the cluster when this
    /// node is in one, else here.
    pub fn connections_of(&self, user: u64) -> Result<usize, ServiceError> {
        match self.cluster.get() {
            Some(node) => node.connections_of(user),
            None => Ok(self.hub.devices(user)),
        }
    }

    /// This node's identity, and whether it is in a cluster: its node id
    /// there, else a random id per process start.
    pub fn instance(&self) -> (u64, bool) {
        match self.cluster.get() {
            Some(node) => (node.id, true),
            None => (self.instance, false),
        }
    }

    /// When a token issued at `created_ms` expires.
    pub(super) fn expiry(&self, created_ms: i64) -> i64 {
        let ttl_ms = i64::try_from(self.config.token_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        created_ms.saturating_add(ttl_ms)
    }

    /// Reserves a failed login's cost before the password is checked: one
    /// token from the account's budget and one from the address's, taken
    /// atomically, so parallel attempts cannot all pass a check made before
    /// any of them is charged. Refused with `RATE_LIMITED`, before any
    /// hashing, while either is empty. The reservation is given back by
    /// [`LoginReservation::refund`] when the password was right.
    ///
    /// On one node the buckets are in memory, under their locks. In a
    /// cluster they are in the store ([`throttle`]), taken in one
    /// transaction, so the budgets hold across every node: an attacker
    /// spreading guesses over N nodes does not get N budgets.
    pub(super) async fn reserve_login(
        &self,
        user: &str,
        ip: std::net::IpAddr,
    ) -> Result<LoginReservation, ServiceError> {
        if self.cluster.get().is_some() {
            let keys = [
                crate::keys::throttle("login-user", user.as_bytes()),
                crate::keys::throttle("login-ip", &ip_bytes(ip)),
            ];
            let budgets = self.login_budgets();
            take_shared(&*self.store, &keys, budgets, self.clock.wall_ms()).await?;
            return Ok(LoginReservation::Shared {
                store: self.store.clone(),
                keys,
                budgets,
                clock: self.clock,
            });
        }
        let now = self.clock.now();
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
        Ok(LoginReservation::Local([account, address]))
    }

    /// Charges a registration to the client address's budget, refusing
    /// with `RATE_LIMITED` when it is spent (in a cluster, the budget every
    /// node shares).
    pub(super) async fn charge_registration(&self, ip: std::net::IpAddr) -> Result<(), ServiceError> {
        let c = &self.config;
        let budget = Budget {
            per_sec: c.registrations_per_ip_per_hour / 3600.0,
            burst: f64::from(c.registrations_per_ip_burst),
        };
        if self.cluster.get().is_some() {
            let key = crate::keys::throttle("register-ip", &ip_bytes(ip));
            return take_shared(&*self.store, &[key], [budget], self.clock.wall_ms()).await;
        }
        let now = self.clock.now();
        let bucket = self.registrations_ip.get_with(ip, || {
            Arc::new(Mutex::new(TokenBucket::new(budget.per_sec, budget.burst, now)))
        });
        let mut bucket = bucket.lock().expect("limiter lock");
        bucket.try_take(now).map_err(rate_limited)
    }

    /// The failed-login budgets: per account, per address.
    fn login_budgets(&self) -> [Budget; 2] {
        let c = &self.config;
        [
            Budget {
                per_sec: 1.0 / 60.0,
                burst: f64::from(c.login_failures_per_account),
            },
            Budget {
                per_sec: 1.0 / 10.0,
                burst: f64::from(c.login_failures_per_ip),
            },
        ]
    }

    pub(super) fn login_buckets(&self, user: &str, ip: std::net::IpAddr) -> [Arc<Mutex<TokenBucket>>; 2] {
        let now = self.clock.now();
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
pub(super) enum LoginReservation {
    /// This node's buckets.
    Local([Arc<Mutex<TokenBucket>>; 2]),
    /// The cluster's buckets, in the store.
    Shared {
        store: Arc<dyn Store>,
        keys: [Vec<u8>; 2],
        budgets: [Budget; 2],
        clock: Clock,
    },
}

impl LoginReservation {
    /// The password was right: the attempt does not count as a failure.
    pub(super) async fn refund(self) {
        match self {
            Self::Local(buckets) => {
                for bucket in buckets {
                    bucket.lock().expect("limiter lock").refund();
                }
            }
            Self::Shared {
                store,
                keys,
                budgets,
                clock,
            } => {
                let now = clock.wall_ms();
                let r = store::write(&*store, move |t| {
                    for (key, budget) in keys.iter().zip(budgets) {
                        throttle::refund(t, key, budget, now)?;
                    }
                    Ok::<_, ServiceError>(())
                })
                .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "could not refund a login's throttle reservation");
                }
            }
        }
    }
}

/// Takes a token from each bucket at `keys` in one transaction: all or
/// none (a refusal rolls the others back).
async fn take_shared<const N: usize>(
    store: &dyn Store,
    keys: &[Vec<u8>; N],
    budgets: [Budget; N],
    now_ms: i64,
) -> Result<(), ServiceError> {
    let keys = keys.clone();
    store::write(store, move |t| {
        for (key, budget) in keys.iter().zip(budgets) {
            if let Err(wait) = throttle::take(t, key, budget, now_ms)? {
                return Err(ServiceError::RateLimited { retry_after_ms: wait });
            }
        }
        Ok(())
    })
    .await
}

/// An address as bytes, for throttle keys.
fn ip_bytes(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Closes connections whose session token expired, once a second, until
/// the hub is gone (the server stopped).
async fn close_expired_sessions(hub: std::sync::Weak<Hub>, clock: Clock) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let closed = hub.close_expired(clock.wall_ms());
        if closed > 0 {
            tracing::debug!(closed, "closed connections whose session token expired");
        }
    }
}

pub(super) fn rate_limited(wait: std::time::Duration) -> ServiceError {
    ServiceError::RateLimited {
        // Rounded up: waiting the delay given must be enough.
        retry_after_ms: u32::try_from(wait.as_nanos().div_ceil(1_000_000).max(1)).unwrap_or(u32::MAX),
    }
}
