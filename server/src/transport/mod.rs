//! Transports: how frames reach a session, and nothing about what they mean.
//!
//! - [`quic`]: the QUIC shell (streams, push lanes, datagrams, media streams).
//! - [`http`], [`ws`], [`web`]: HTTPS for browsers: the WebSocket shell, media
//!   over HTTP, the embedded web client, health.
//! - [`requests`]: the request loop both transports share (pipelining,
//!   ordering of reads after writes, reply order).
//! - [`admission`]: which handshakes are accepted, retried or refused, per
//!   address. [`tls`]: certificates and TLS configuration.
//! - [`admin`]: the operator's listener (metrics, health); [`health`]: the
//!   liveness and readiness probes.
//! - [`lifecycle`]: a connection's open and close as log events and metrics.

pub mod admin;
pub mod admission;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod quic;
pub mod requests;
pub mod tls;
pub mod web;
pub mod ws;
