//! quipd: the Quip messaging server.
//!
//! ```text
//!  QUIC (quinn) ─► quic.rs: frames per stream ─┐
//!  WebSocket ────► ws.rs: one message, one frame ┴► session.rs: handshake, auth,
//!                                                  rate limits, dispatch
//!                                                      │
//!        hub.rs: push to online devices ◄── service/: domain logic over Txn
//!                                                      │
//!                                         store/: Store trait; group commit
//!                                                 over fjall (LSM) or redb
//! ```
//!
//! # Layout
//! - [`config`]: flags and environment.
//! - [`server`]: the listener and graceful shutdown; [`admission`]:
//!   per-address limits and when to ask for a QUIC Retry.
//! - [`quic`]: the QUIC transport shell (streams, lanes, pipelining).
//! - [`http`], [`ws`], [`web`]: HTTPS for browsers: the WebSocket transport
//!   shell, the embedded web client, health.
//! - [`requests`]: the request loop both transports share.
//! - [`session`]: per-connection protocol logic, transport-independent;
//!   [`kinds`]: what each request kind is (replay-safe, writes, reads).
//! - [`hub`]: online devices and live push with bounded queues.
//! - [`service`]: accounts, messages, receipts, the per-user log.
//! - [`store`], [`keys`], [`records`]: storage trait, key layout, stored values.
//! - [`media`]: media bytes in an object store, streamed in and out.
//! - [`tls`]: certificates; [`secret`]: private files and the node secret
//!   QUIC's reset and Retry keys derive from; [`ratelimit`]: token buckets;
//!   [`passwords`]: argon2 work, bounded.

pub mod admission;
pub mod config;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod keys;
pub mod kinds;
pub mod liveness;
pub mod media;
pub mod passwords;
pub mod presence;
pub mod quic;
pub mod ratelimit;
pub mod records;
pub mod requests;
pub mod secret;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
pub mod tls;
pub mod web;
pub mod ws;

pub use config::Config;
pub use server::Server;
