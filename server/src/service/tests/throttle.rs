//! Token buckets in the store: take, refund, and the sweep of refilled ones.

use super::*;
use crate::service::throttle::{self, Budget};

/// 3 tokens, one more every 10 s.
const BUDGET: Budget = Budget {
    per_sec: 0.1,
    burst: 3.0,
};

async fn take(w: &World, key: &[u8], now_ms: i64) -> Result<(), u32> {
    let key = key.to_vec();
    w.write(move |t| throttle::take(t, &key, BUDGET, now_ms)).await.unwrap()
}

#[tokio::test]
async fn a_bucket_refuses_when_spent_and_says_how_long_to_wait() {
    let w = World::new();
    for _ in 0..3 {
        take(&w, b"thr/x/a", 0).await.unwrap();
    }
    assert_eq!(take(&w, b"thr/x/a", 0).await, Err(10_000));
    assert_eq!(take(&w, b"thr/x/a", 9_000).await, Err(1_000));
    take(&w, b"thr/x/a", 10_000).await.unwrap();
    // Another subject has a budget of its own.
    take(&w, b"thr/x/b", 10_000).await.unwrap();
}

#[tokio::test]
async fn a_refund_that_fills_the_bucket_leaves_no_key() {
    let w = World::new();
    take(&w, b"thr/x/a", 0).await.unwrap();
    w.write(|t| throttle::refund(t, b"thr/x/a", BUDGET, 0)).await.unwrap();
    assert_eq!(w.read(|t| Ok(t.get(b"thr/x/a")?)).unwrap(), None);
}

#[tokio::test]
async fn the_sweep_clears_buckets_once_they_are_full_again() {
    let w = World::new();
    take(&w, b"thr/x/a", 0).await.unwrap(); // full again at 10 s
    for _ in 0..3 {
        take(&w, b"thr/x/b", 0).await.unwrap(); // full again at 30 s
    }
    let from = crate::keys::throttles().0;
    let sweep = |now: i64| {
        let from = from.clone();
        w.write(move |t| throttle::sweep(t, &from, now, 100))
    };
    assert_eq!(sweep(9_999).await.unwrap(), None, "the end was reached");
    let left = || w.read(|t| Ok(t.range(b"thr/", b"thr0", 10, false)?.len())).unwrap();
    assert_eq!(left(), 2);
    sweep(10_000).await.unwrap();
    assert_eq!(left(), 1);
    sweep(30_000).await.unwrap();
    assert_eq!(left(), 0);
    // A cleared bucket is a full one.
    for _ in 0..3 {
        take(&w, b"thr/x/b", 30_000).await.unwrap();
    }
}
