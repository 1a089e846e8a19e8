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
//! fills it clears it, and [`sweep`] (run by one node of the cluster)
//! clears the ones that have refilled since, so failed attempts with made-up
//! names do not leave keys behind for good.

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
    b.full_at_ms = full_at(&b, budget);
    txn.set(key, &b.encode_to_vec());
    Ok(Ok(()))
}

/// When a bucket in state `b` is full again.
fn full_at(b: &BucketRecord, budget: Budget) -> i64 {
    let missing = (budget.burst.max(1.0) - b.tokens).max(0.0);
    let ms = (missing / budget.per_sec.max(f64::MIN_POSITIVE) * 1000.0).ceil();
    b.at_ms
        .saturating_add(if ms >= i64::MAX as f64 { i64::MAX } else { ms as i64 })
}

/// Clears up to `limit` buckets at or after `from` that are full again by
/// `now_ms`; returns where to go on (`None`: the end was reached).
pub fn sweep(txn: &mut dyn Txn, from: &[u8], now_ms: i64, limit: usize) -> Result<Option<Vec<u8>>, ServiceError> {
    let (_, end) = crate::keys::throttles();
    let rows = txn.range(from, &end, limit, false)?;
    for (k, v) in &rows {
        let b: BucketRecord = records::decode(k, v)?;
        if b.full_at_ms <= now_ms {
            txn.clear(k);
        }
    }
    Ok((rows.len() == limit).then(|| {
        let mut next = rows.last().map(|(k, _)| k.clone()).unwrap_or_default();
        next.push(0);
        next
    }))
}

/// Gives a token back (an attempt that turned out not to count).
pub fn refund(txn: &mut dyn Txn, key: &[u8], budget: Budget, now_ms: i64) -> Result<(), ServiceError> {
    let mut b = refilled(txn, key, budget, now_ms)?;
    b.tokens = (b.tokens + 1.0).min(budget.burst);
    if b.tokens >= budget.burst.max(1.0) {
        // Full again, as if never touched: a right password leaves no key.
        txn.clear(key);
    } else {
        b.full_at_ms = full_at(&b, budget);
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
        full_at_ms: now_ms,
    });
    let elapsed = (now_ms - b.at_ms).max(0) as f64 / 1000.0;
    b.tokens = (b.tokens + elapsed * budget.per_sec).min(burst);
    b.at_ms = b.at_ms.max(now_ms);
    Ok(b)
}
