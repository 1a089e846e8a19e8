//! Transports: how frames reach a session, and nothing about what they mean.
//!
//! - [`quic`]: the QUIC shell (streams, push lanes, datagrams, media streams).
//! - [`http`], [`ws`], [`web`]: HTTPS for browsers: the WebSocket shell, media
//!   over HTTP, the embedded web client, health.
//! - [`requests`]: the request loop both transports share (pipelining,
//!   ordering of reads after writes, reply order).
//! - [`admission`]: which handshakes are accepted, retried or refused, per
//!   address. [`tls`]: certificates and TLS configuration.

pub mod admission;
pub mod http;
pub mod quic;
pub mod requests;
pub mod tls;
pub mod web;
pub mod ws;
