//! quipd internals.
pub mod store;
