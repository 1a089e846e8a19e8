//! The behaviour every [`Store`] backend must show, as public async checks.
//!
//! Each backend's tests call [`run_all`]; each check works under its own key
//! prefix, so they can share one store, and first clears what an earlier
//! run left there, so they can run on a store that already holds data:
//! [`run_all_on_used_store`] runs them twice over keys placed right next to
//! each check's own, which must stay unseen and untouched. The FoundationDB
//! backend runs the same checks against a real cluster.

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

/// Writes enqueued one after another apply in that order.
pub async fn writes_apply_in_queue_order(store: &dyn Store) {
    reset(store, b"ord/", b"ord0").await;
    let mut pending = Vec::new();
    for i in 0..50u32 {
        pending.push(
            enqueue_write(store, move |t| {
                let mut log = t.get(b"ord/log")?.unwrap_or_default();
                log.extend_from_slice(&i.to_be_bytes());
                t.set(b"ord/log", &log);
                Ok::<_, TestError>(())
            })
            .await
            .unwrap(),
        );
    }
    for p in pending {
        p.wait().await.unwrap();
    }
    let log = read(store, |t| t.get(b"ord/log").map_err(TestError::from))
        .unwrap()
        .unwrap();
    let got: Vec<u32> = log
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

/// Completion callbacks run in queue order, each before its write's result
/// is handed out: the fan-out relies on it to push in commit order.
pub async fn durable_callbacks_run_in_queue_order(store: &dyn Store) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut pending = Vec::new();
    for i in 0..50u32 {
        let seen = seen.clone();
        pending.push(
            enqueue_write_then(
                store,
                move |t| {
                    t.set(&k("cb/", i), b"x");
                    Ok::<_, TestError>(i)
                },
                move |r: &mut u32| seen.lock().unwrap().push(*r),
            )
            .await
            .unwrap(),
        );
    }
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.wait().await.unwrap(), i as u32);
        assert!(
            seen.lock().unwrap().len() > i,
            "callback ran before the result was handed out"
        );
    }
    assert_eq!(*seen.lock().unwrap(), (0..50).collect::<Vec<_>>());
}

/// Many tasks incrementing one counter lose no update.
pub async fn concurrent_increments_are_serializable(store: &dyn Store) {
    reset(store, b"ctr/", b"ctr0").await;
    let n = 64u64;
    let futs = (0..n).map(|_| async {
        write(store, |t| {
            let v = t
                .get(b"ctr/x")?
                .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                .unwrap_or(0);
            t.set(b"ctr/x", &(v + 1).to_be_bytes());
            Ok::<_, TestError>(v + 1)
        })
        .await
        .unwrap()
    });
    let mut seen: Vec<u64> = futures::future::join_all(futs).await;
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=n).collect::<Vec<_>>(),
        "every increment saw a distinct value"
    );
}

/// Writes queued back to back read exactly what every earlier write left,
/// through point and range reads, whether it is in their own batch, in the
/// batch before it (which may still be syncing: store/commit.rs tests that
/// case step by step) or durable; deletions and rollbacks included.
pub async fn queued_writes_read_every_earlier_write(store: &dyn Store) {
    use std::collections::BTreeSet;
    reset(store, b"q/", b"q0").await;
    let n = 120u32;
    // The model: which keys exist before write i runs.
    let mut model = BTreeSet::new();
    let mut expected = Vec::new();
    for i in 0..n {
        expected.push((
            model.iter().copied().collect::<Vec<u32>>(),
            i > 0 && model.contains(&(i - 1)),
        ));
        if i % 7 == 6 {
            continue; // rolls back
        }
        model.insert(i);
        if i % 3 == 2 {
            model.remove(&(i - 1));
        }
    }
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(
            enqueue_write(store, move |t| {
                let seen: Vec<u32> = t
                    .range(&k("q/", 0), &k("q/", u32::MAX), usize::MAX, false)?
                    .iter()
                    .map(|(key, _)| u32::from_be_bytes(key[2..].try_into().unwrap()))
                    .collect();
                let prev = i > 0 && t.get(&k("q/", i - 1))?.is_some();
                t.set(&k("q/", i), b"v");
                if i % 3 == 2 {
                    t.clear(&k("q/", i - 1));
                }
                if i % 7 == 6 {
                    return Err(TestError::Abort);
                }
                Ok::<_, TestError>((seen, prev))
            })
            .await
            .unwrap(),
        );
    }
    for (i, p) in pending.into_iter().enumerate() {
        let got = p.wait().await;
        if i % 7 == 6 {
            assert_eq!(got, Err(TestError::Abort), "write {i}");
        } else {
            assert_eq!(got, Ok(expected[i].clone()), "write {i}");
        }
    }
}

/// `get_many` answers like a `get` per key, in order, duplicates and absent
/// keys included; inside a write it sees the write's own sets and clears
/// and what earlier queued writes left.
pub async fn batched_reads(store: &dyn Store) {
    reset(store, b"gm/", b"gm0").await;
    write(store, |t| {
        t.set(b"gm/a", b"1");
        t.set(b"gm/b", b"2");
        t.set(b"gm/c", b"3");
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    let (got, none) = read(store, |t| {
        Ok::<_, TestError>((
            t.get_many(&[b"gm/a", b"gm/missing", b"gm/c", b"gm/a"])?,
            t.get_many(&[])?,
        ))
    })
    .unwrap();
    let v = |s: &[u8]| Some(s.to_vec());
    assert_eq!(got, vec![v(b"1"), None, v(b"3"), v(b"1")]);
    assert!(none.is_empty());
    // Queued back to back: the second reads the first's writes, and its own.
    let first = enqueue_write(store, |t| {
        t.set(b"gm/d", b"4");
        t.clear(b"gm/b");
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    let second = enqueue_write(store, |t| {
        // Prefetched before this closure's writes, read after them: the
        // reads must still see the writes (prefetch only warms a cache).
        t.prefetch(&[b"gm/a", b"gm/b", b"gm/c", b"gm/d", b"gm/e", b"gm/f"])?;
        t.set(b"gm/e", b"5");
        t.clear(b"gm/a");
        t.set(b"gm/c", b"33");
        Ok::<_, TestError>(t.get_many(&[b"gm/a", b"gm/b", b"gm/c", b"gm/d", b"gm/e", b"gm/f"])?)
    })
    .await
    .unwrap();
    first.wait().await.unwrap();
    assert_eq!(
        second.wait().await.unwrap(),
        vec![None, None, v(b"33"), v(b"4"), v(b"5"), None]
    );
    let after = read(store, |t| Ok::<_, TestError>(t.get_many(&[b"gm/a", b"gm/c", b"gm/e"])?)).unwrap();
    assert_eq!(after, vec![None, v(b"33"), v(b"5")]);
}

/// A value of `len` bytes that differs from others of the same length.
fn big_value(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Values far larger than FoundationDB's 100 kB (a message can be 256 KiB)
/// read back whole through `get`, `get_many` and ranges, keep range order
/// and limits, and can shrink, grow and go.
pub async fn large_values(store: &dyn Store) {
    reset(store, b"big/", b"big0").await;
    let (a, c) = (big_value(300_000, 1), big_value(250_001, 2));
    let (a2, c2) = (a.clone(), c.clone());
    write(store, move |t| {
        t.set(b"big/a", &a2);
        t.set(b"big/b", b"small");
        t.set(b"big/c", &c2);
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    let keys = |rows: &[(Vec<u8>, Vec<u8>)]| rows.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    let (one, many, all, last, first_two) = read(store, |t| {
        Ok::<_, TestError>((
            t.get(b"big/a")?,
            t.get_many(&[b"big/c", b"big/b", b"big/a"])?,
            t.range(b"big/", b"big0", 100, false)?,
            t.range(b"big/", b"big0", 1, true)?,
            t.range(b"big/", b"big0", 2, false)?,
        ))
    })
    .unwrap();
    assert!(one.as_ref() == Some(&a), "get of a 300 kB value");
    assert!(many == vec![Some(c.clone()), Some(b"small".to_vec()), Some(a.clone())]);
    assert_eq!(
        keys(&all),
        vec![b"big/a".to_vec(), b"big/b".to_vec(), b"big/c".to_vec()]
    );
    assert!(all[0].1 == a && all[1].1 == b"small" && all[2].1 == c, "range values");
    assert!(
        last.len() == 1 && last[0].0 == b"big/c" && last[0].1 == c,
        "reverse range, limit 1"
    );
    assert_eq!(keys(&first_two), vec![b"big/a".to_vec(), b"big/b".to_vec()]);
    // Shrink a, grow b, shrink c while staying large, add d; a queued write
    // right behind reads them all back.
    let (b, c3, d) = (big_value(400_000, 3), big_value(120_000, 4), big_value(100_000, 5));
    let (b2, c4, d2) = (b.clone(), c3.clone(), d.clone());
    let change = enqueue_write(store, move |t| {
        t.set(b"big/a", b"tiny");
        t.set(b"big/b", &b2);
        t.set(b"big/c", &c4);
        t.set(b"big/d", &d2);
        // Its own large writes, read back before commit.
        Ok::<_, TestError>(t.get(b"big/b")?.map(|v| v.len()))
    })
    .await
    .unwrap();
    let check = enqueue_write(store, |t| {
        Ok::<_, TestError>((
            t.range(b"big/", b"big0", usize::MAX, false)?,
            t.get_many(&[b"big/a", b"big/d"])?,
        ))
    })
    .await
    .unwrap();
    assert_eq!(change.wait().await.unwrap(), Some(400_000));
    let (rows, got) = check.wait().await.unwrap();
    let want = [
        (b"big/a".to_vec(), b"tiny".to_vec()),
        (b"big/b".to_vec(), b),
        (b"big/c".to_vec(), c3),
        (b"big/d".to_vec(), d.clone()),
    ];
    assert!(rows == want, "a queued write read the large values back wrong");
    assert!(got == vec![Some(b"tiny".to_vec()), Some(d)]);
    write(store, |t| {
        t.clear(b"big/b");
        t.clear(b"big/d");
        Ok::<_, TestError>(())
    })
    .await
    .unwrap();
    let left = read(store, |t| {
        Ok::<_, TestError>(t.range(b"big/", b"big0", usize::MAX, true)?)
    })
    .unwrap();
    assert_eq!(keys(&left), vec![b"big/c".to_vec(), b"big/a".to_vec()]);
}
