//! The operator's API: `quipd admin …` on one side, routes on the admin
//! listener on the other.
//!
//! ```text
//!  quipd admin users disable bob ─► cli.rs: HTTP + bearer token read from
//!      <data-dir>/admin-token           │
//!                                       ▼
//!  admin listener (transport/admin.rs) ─► api.rs: token check, JSON,
//!                                             audit log line per action
//!                                                   │
//!                              ops.rs: over the store (service::accounts),
//!                              the hub / cluster (closing connections)
//! ```
//!
//! # Layout
//! - [`token`]: the bearer token file (`0600`) and its constant-time check.
//! - [`api`]: the `/admin/v1/…` routes and their JSON.
//! - [`ops`]: what each action does, on [`crate::session::Shared`].
//! - [`cli`]: the `quipd admin` subcommands, a small HTTP client of [`api`].
//!
//! Every action is logged on the target [`AUDIT_TARGET`] with `action`,
//! `subject`, `result` and `peer` (the admin client's address): never
//! the token or a password.

pub mod api;
pub mod cli;
pub mod ops;
pub mod token;

/// The tracing target of audit events.
pub const AUDIT_TARGET: &str = "quip::audit";
