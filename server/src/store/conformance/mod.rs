//! The behaviour every [`Store`] backend must show, as public async checks.
//!
//! Each backend's tests call [`run_all`]; each check works under its own key
//! prefix, so they can share one store, and first clears what an earlier
//! run left there, so they can run on a store that already holds data:
//! [`run_all_on_used_store`] runs them twice over keys placed right next to
//! each check's own, which must stay unseen and untouched. The FoundationDB
//! backend runs the same checks against a real cluster.

mod order;
mod values;

pub use order::*;
pub use values::*;

use super::{Store, StoreError, Txn, enqueue_write, enqueue_write_then, read, write};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum TestError {
    #[error("store: {0}")]
    Store(String),
    #[error("rolled back on purpose")]
    Abort,
}

impl From<StoreError> for TestError {
    fn from(e: StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

fn k(prefix: &str, i: u32) -> Vec<u8> {
    let mut key = prefix.as_bytes().to_vec();
    key.extend_from_slice(&i.to_be_bytes());
    key
}

/// Clears every key in `[begin, end)`: a check's fixtures from an earlier run.
async fn reset(store: &dyn Store, begin: &'static [u8], end: &'static [u8]) {
    write(store, move |t| {
        for (key, _) in t.range(begin, end, usize::MAX, false)? {
            t.clear(&key);
        }
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
}

/// Runs every check.
pub async fn run_all(store: &dyn Store) {
    point_reads_and_writes(store).await;
    range_reads(store).await;
    read_your_writes(store).await;
    rollback_leaves_no_trace(store).await;
    later_writes_read_what_earlier_commits_left(store).await;
    writes_apply_in_queue_order(store).await;
    durable_callbacks_run_in_queue_order(store).await;
    concurrent_increments_are_serializable(store).await;
    queued_writes_read_every_earlier_write(store).await;
    batched_reads(store).await;
    large_values(store).await;
}

/// Keys just outside the ranges the checks use (each check's prefix with
/// its last byte one lower or higher, and the prefix without its slash),
/// with values small and large.
fn neighbours() -> Vec<(Vec<u8>, Vec<u8>)> {
    let tags: [&[u8]; 11] = [
        b"pt/", b"rg/", b"ryw/", b"rb/", b"lat/", b"ord/", b"cb/", b"ctr/", b"q/", b"gm/", b"big/",
    ];
    let mut keys = Vec::new();
    for (i, tag) in tags.iter().enumerate() {
        let stem = &tag[..tag.len() - 1];
        let mut below = tag.to_vec();
        *below.last_mut().unwrap() -= 1; // "rg."
        let mut above = tag.to_vec();
        *above.last_mut().unwrap() += 1; // "rg0"
        above.extend_from_slice(b"\x00neighbour");
        for key in [stem.to_vec(), below, above] {
            let value = if i % 3 == 0 {
                big_value(150_001, i as u8)
            } else {
                vec![i as u8; 3]
            };
            keys.push((key, value));
        }
    }
    keys
}

/// Runs every check twice on a store that already holds data next to the
/// checks' own keys, then checks that data is still as it was.
pub async fn run_all_on_used_store(store: &dyn Store) {
    let around = neighbours();
    let kept = around.clone();
    write(store, move |t| {
        for (k, v) in &kept {
            t.set(k, v);
        }
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    run_all(store).await;
    run_all(store).await;
    let keys: Vec<Vec<u8>> = around.iter().map(|(k, _)| k.clone()).collect();
    let found = read(store, |t| {
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        Ok::<_, TestError>(t.get_many(&keys)?)
    })
    .unwrap();
    for ((key, value), found) in around.iter().zip(found) {
        assert_eq!(found.as_ref(), Some(value), "neighbour {} changed", key.escape_ascii());
    }
}

/// Set, get, overwrite, clear.
pub async fn point_reads_and_writes(store: &dyn Store) {
    write(store, |t| {
        t.set(b"pt/a", b"1");
        t.set(b"pt/b", b"2");
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    write(store, |t| {
        t.set(b"pt/a", b"3");
        t.clear(b"pt/b");
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    let (a, b) = read(store, |t| Ok::<_, TestError>((t.get(b"pt/a")?, t.get(b"pt/b")?))).unwrap();
    assert_eq!(a.as_deref(), Some(&b"3"[..]));
    assert_eq!(b, None);
}

/// Ranges are half-open, ordered, limited, and reversible.
pub async fn range_reads(store: &dyn Store) {
    reset(store, b"rg/", b"rg0").await;
    write(store, |t| {
        for i in 0..10 {
            t.set(&k("rg/", i), &i.to_be_bytes());
        }
        t.set(b"rg0", b"outside");
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    let (fwd, rev, mid, empty) = read(store, |t| {
        Ok::<_, TestError>((
            t.range(b"rg/", b"rg0", 100, false)?,
            t.range(b"rg/", b"rg0", 3, true)?,
            t.range(&k("rg/", 2), &k("rg/", 5), 100, false)?,
            t.range(&k("rg/", 5), &k("rg/", 5), 100, false)?,
        ))
    })
    .unwrap();
    assert_eq!(fwd.len(), 10);
    assert!(fwd.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        rev.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![k("rg/", 9), k("rg/", 8), k("rg/", 7)]
    );
    assert_eq!(
        mid.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![k("rg/", 2), k("rg/", 3), k("rg/", 4)]
    );
    assert!(empty.is_empty());
}

/// Inside a write, reads see the write's own sets and clears, in ranges too.
pub async fn read_your_writes(store: &dyn Store) {
    reset(store, b"ryw/", b"ryw0").await;
    write(store, |t| {
        for i in 0..4 {
            t.set(&k("ryw/", i), b"old");
        }
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    let seen = write(store, |t: &mut dyn Txn| {
        t.set(&k("ryw/", 1), b"new");
        t.clear(&k("ryw/", 2));
        t.set(&k("ryw/", 9), b"added");
        let one = t.get(&k("ryw/", 1))?;
        let fwd = t.range(b"ryw/", b"ryw0", 10, false)?;
        let rev = t.range(b"ryw/", b"ryw0", 2, true)?;
        Ok::<_, TestError>((one, fwd, rev))
    })
    .await
    .unwrap();
    assert_eq!(seen.0.as_deref(), Some(&b"new"[..]));
    let keys: Vec<_> = seen.1.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![k("ryw/", 0), k("ryw/", 1), k("ryw/", 3), k("ryw/", 9)]);
    assert_eq!(seen.1[1].1, b"new");
    let rkeys: Vec<_> = seen.2.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(rkeys, vec![k("ryw/", 9), k("ryw/", 3)]);
}

/// A write that fails stores nothing, even when it shares a commit with
/// writes that succeed.
pub async fn rollback_leaves_no_trace(store: &dyn Store) {
    reset(store, b"rb/", b"rb0").await;
    let ok1 = enqueue_write(store, |t| {
        t.set(b"rb/ok1", b"1");
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    let bad = enqueue_write(store, |t| {
        t.set(b"rb/bad", b"x");
        t.set(b"rb/ok1", b"clobbered");
        Err::<(), _>(TestError::Abort)
    })
    .await
    .unwrap();
    let ok2 = enqueue_write(store, |t| {
        let before = t.get(b"rb/ok1")?;
        t.set(b"rb/ok2", b"2");
        Ok::<_, TestError>(before)
    })
    .await
    .unwrap();
    ok1.wait().await.unwrap();
    assert_eq!(bad.wait().await, Err(TestError::Abort));
    // The write after the failed one saw the state before it.
    assert_eq!(ok2.wait().await.unwrap().as_deref(), Some(&b"1"[..]));
    let (b, o1, o2) = read(store, |t| {
        Ok::<_, TestError>((t.get(b"rb/bad")?, t.get(b"rb/ok1")?, t.get(b"rb/ok2")?))
    })
    .unwrap();
    assert_eq!(b, None);
    assert_eq!(o1.as_deref(), Some(&b"1"[..]));
    assert_eq!(o2.as_deref(), Some(&b"2"[..]));
}

/// A write closure reads what the commits before it left, in separate
/// commits: overwritten, deleted, once-absent and rolled-back keys alike.
/// (An engine that caches what closures read must keep up with each
/// commit.)
pub async fn later_writes_read_what_earlier_commits_left(store: &dyn Store) {
    async fn get(store: &dyn Store, key: &'static [u8]) -> Option<Vec<u8>> {
        write(store, move |t| Ok::<_, TestError>(t.get(key)?)).await.unwrap()
    }
    async fn set(store: &dyn Store, key: &'static [u8], value: Option<&'static [u8]>) {
        write(store, move |t| {
            match value {
                Some(v) => t.set(key, v),
                None => t.clear(key),
            }
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
    }
    reset(store, b"lat/", b"lat0").await;
    set(store, b"lat/k", Some(b"a")).await;
    assert_eq!(get(store, b"lat/k").await.as_deref(), Some(&b"a"[..]));
    set(store, b"lat/k", Some(b"b")).await;
    assert_eq!(get(store, b"lat/k").await.as_deref(), Some(&b"b"[..]));
    set(store, b"lat/k", None).await;
    assert_eq!(get(store, b"lat/k").await, None);
    assert_eq!(get(store, b"lat/new").await, None);
    set(store, b"lat/new", Some(b"c")).await;
    assert_eq!(get(store, b"lat/new").await.as_deref(), Some(&b"c"[..]));
    let rolled_back = write(store, |t| {
        t.set(b"lat/new", b"never");
        Err::<(), _>(TestError::Abort)
    })
    .await;
    assert_eq!(rolled_back, Err(TestError::Abort));
    assert_eq!(get(store, b"lat/new").await.as_deref(), Some(&b"c"[..]));
    let snapshot = read(store, |t| Ok::<_, TestError>((t.get(b"lat/k")?, t.get(b"lat/new")?))).unwrap();
    assert_eq!(snapshot, (None, Some(b"c".to_vec())));
}
