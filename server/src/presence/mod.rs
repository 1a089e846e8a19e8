//! Presence: who is online, with a grace period for reconnects, and last
//! seen.
//!
//! - `tracker`: the sans-IO state machine over connection events and time;
//!   it decides, and tests drive it with made-up times.
//! - `liveness`: its async shell, which feeds it and publishes changes (last
//!   seen in the store, `Presence` events to contacts).
//!
//! Who may see a user's presence is domain logic over the store:
//! [`crate::service::presence`].

mod liveness;
mod tracker;

pub use liveness::Liveness;
pub use tracker::{Change, Ended, Tracker};
