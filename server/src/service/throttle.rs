//! Token buckets kept in the store, for budgets that must hold across every
//! node of a cluster (failed logins, registrations per address): a node-local
//! bucket would let an attacker spread over N nodes get N budgets.
//!
//! A bucket is one key read and written in the transaction that charges it,
//! so concurrent charges on different nodes serialize (one of them retries)
//! and cannot both take the last token. Time is wall-clock milliseconds
//! from the charging node; nodes' clocks only need to agree roughly (a skew
//! of a second moves a refill by a second).
//!
//! A bucket's key exists only while the bucket is not full: a refund that
//! fills it clears it. Keys of failed attempts stay until a later charge or
//! refund finds them; their number is bounded by the attempts the
//! per-address budget lets through (a sweep of refilled ones is to come).

use prost::Message as _;

use super::ServiceError;
use crate::records::{self, BucketRecord};
use crate::store::Txn;

/// The rate and size of a bucket.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Most tokens held (a full bucket's burst).
    pub burst: f64,
}

/// Takes one token from the bucket at `key`, or says how long until one is
/// there (ms, rounded up).
pub fn take(txn: &mut dyn Txn, key: &[u8], budget: Budget, now_ms: i64) -> Result<Result<(), u32>, ServiceError> {
    let mut b = refilled(txn, key, budget, now_ms)?;
    // A hair under one after a refill of fractions still counts (as in
    // `ratelimit::TokenBucket`): the delay given must be enough.
    if b.tokens < 1.0 - 1e-9 {
        let wait = ((1.0 - b.tokens) / budget.per_sec.max(f64::MIN_POSITIVE) * 1000.0).ceil();
        return Ok(Err(if wait >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            (wait as u32).max(1)
        }));
    }
    b.tokens -= 1.0;
    txn.set(key, &b.encode_to_vec());
    Ok(Ok(()))
}

/// Gives a token back (an attempt that turned out not to count).
pub fn refund(txn: &mut dyn Txn, key: &[u8], budget: Budget, now_ms: i64) -> Result<(), ServiceError> {
    let mut b = refilled(txn, key, budget, now_ms)?;
    b.tokens = (b.tokens + 1.0).min(budget.burst);
    if b.tokens >= budget.burst.max(1.0) {
        // Full again, as if never touched: a right password leaves no key.
        txn.clear(key);
    } else {
        txn.set(key, &b.encode_to_vec());
    }
    Ok(())
}

/// The bucket at `key` refilled up to `now_ms` (a missing one is full).
fn refilled(txn: &mut dyn Txn, key: &[u8], budget: Budget, now_ms: i64) -> Result<BucketRecord, ServiceError> {
    let burst = budget.burst.max(1.0);
    let mut b = records::get::<BucketRecord>(txn, key)?.unwrap_or(BucketRecord {
        tokens: burst,
        at_ms: now_ms,
    });
    let elapsed = (now_ms - b.at_ms).max(0) as f64 / 1000.0;
    b.tokens = (b.tokens + elapsed * budget.per_sec).min(burst);
    b.at_ms = b.at_ms.max(now_ms);
    Ok(b)
}
