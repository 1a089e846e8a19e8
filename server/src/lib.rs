//! quipd internals.
pub mod keys;
pub mod records;
pub mod service;
pub mod store;
