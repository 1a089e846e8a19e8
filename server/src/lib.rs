//! quipd: the Quip messaging server.
//!
//! ```text
//!  QUIC (quinn) ─► transport/quic.rs: frames per stream ─┐
//!  WebSocket ────► transport/ws.rs: one message, one frame ┴► session/: handshake,
//!                                                    auth, rate limits, dispatch
//!                                                        │
//!        hub.rs: push to online devices ◄── service/: domain logic over Txn
//!                                                        │
//!                                          store/: Store trait; group commit
//!                                                  over fjall (LSM) or redb,
//!                                                  or FoundationDB (feature fdb)
//! ```
//!
//! # Layout
//! - [`admin`]: the operator's API (`quipd admin …` and its routes on the
//!   admin listener), with its token and audit log.
//! - [`config`]: flags and environment; [`clock`]: time, virtual in tests.
//! - [`server`]: the listeners; [`shutdown`]: the graceful drain's signals.
//! - [`transport`]: QUIC and HTTPS/WebSocket shells, the request loop they
//!   share, admission (per-address limits, QUIC Retry) and TLS.
//! - [`session`]: per-connection protocol logic, transport-independent;
//!   [`kinds`]: what each request kind is (replay-safe, writes, reads).
//! - [`hub`]: online devices and live push with bounded queues; [`fanout`]:
//!   committed writes' events in commit order; [`cluster`]: several nodes
//!   on one FoundationDB (directory, inboxes, node liveness).
//! - [`service`]: accounts, messages, receipts, the per-user log.
//! - [`store`], [`keys`], [`records`]: storage trait, key layout, stored values.
//!   `testing` (feature `fdb`, hidden): a throw-away FoundationDB server for tests.
//! - [`media`]: media bytes in an object store, streamed in and out.
//! - [`retention`]: the background sweep deleting messages past their age.
//! - [`backup`]: `quipd backup` / `quipd restore`: a snapshot of the store
//!   (served by a running server on a socket in its data directory) and media.
//! - [`metrics`]: what is counted, under which Prometheus names; the
//!   admin listener ([`transport::admin`]) serves it with health checks.
//! - [`presence`]: who is online (a sans-IO tracker and its async shell),
//!   grace periods, last seen.
//! - [`secret`]: private files and the node secret QUIC's reset and Retry
//!   keys derive from; [`ratelimit`]: token buckets; [`passwords`]: argon2
//!   work, bounded.

pub mod admin;
pub mod backup;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod fanout;
pub mod hub;
pub mod keys;
pub mod kinds;
pub mod media;
pub mod metrics;
pub mod passwords;
pub mod presence;
pub mod ratelimit;
pub mod records;
pub mod retention;
pub mod secret;
pub mod server;
pub mod service;
pub mod session;
pub mod shutdown;
pub mod store;
#[cfg(feature = "fdb")]
#[doc(hidden)]
pub mod testing;
pub mod transport;

pub use config::Config;
pub use server::Server;
