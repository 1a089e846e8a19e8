//! The FoundationDB store on a real FoundationDB server (one per test
//! binary, [`crate::testing::FdbServer::shared`]); each test has a prefix
//! of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use foundationdb::RangeOption;
use futures::executor::block_on;

use super::*;
use crate::store::{Txn, conformance, enqueue_write, read, write};
use crate::testing::{FdbServer, unique_prefix};

fn open(prefix: &str) -> FdbStore {
    FdbStore::open(&FdbOptions {
        cluster_file: Some(FdbServer::shared().cluster_file().to_path_buf()),
        prefix: prefix.to_string(),
        queue: 1024,
        timeout_ms: TXN_TIMEOUT_MS,
    })
    .unwrap()
}

fn store(name: &str) -> FdbStore {
    open(&unique_prefix(name))
}

/// Every FoundationDB key under `begin..end`, raw.
fn raw_keys(store: &FdbStore, (begin, end): (Vec<u8>, Vec<u8>)) -> Vec<Vec<u8>> {
    let tr = store.db.create_trx().unwrap();
    let mut range = Some(RangeOption::from((begin, end)));
    let mut keys = Vec::new();
    while let Some(r) = range {
        let rows = block_on(tr.get_range(&r, 1, true)).unwrap();
        keys.extend(rows.iter().map(|kv| kv.key().to_vec()));
        range = r.next_range(&rows);
    }
    keys
}

fn counter(t: &mut dyn Txn) -> Result<u64, StoreError> {
    let v = t
        .get(b"n")?
        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
        .unwrap_or(0);
    t.set(b"n", &(v + 1).to_be_bytes());
    Ok(v + 1)
}

#[tokio::test]
async fn conformance_on_an_empty_prefix() {
    let started = Instant::now();
    conformance::run_all(&store("conformance")).await;
    eprintln!("conformance on FoundationDB: {:?}", started.elapsed());
}

#[tokio::test]
async fn conformance_on_a_prefix_that_holds_data() {
    let prefix = unique_prefix("used");
    conformance::run_all_on_used_store(&open(&prefix)).await;
    // And the same prefix through a second store, as a restarted node sees it.
    conformance::run_all(&open(&prefix)).await;
}

/// Two stores on one prefix (two nodes) bump one counter at once: every
/// increment lands once, and the conflicts between them were retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_lose_no_increments() {
    let prefix = unique_prefix("two-nodes");
    let nodes = [Arc::new(open(&prefix)), Arc::new(open(&prefix))];
    let (tasks_per_node, each) = (8, 25);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..tasks_per_node {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..each {
                    seen.push(write(&*node, counter).await.unwrap());
                }
                seen
            }));
        }
    }
    let mut seen: Vec<u64> = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let total = (2 * tasks_per_node * each) as u64;
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "an increment was lost or doubled"
    );
    let stored = read(&*nodes[0], |t| t.get(b"n")).unwrap();
    assert_eq!(stored, Some(total.to_be_bytes().to_vec()));
    let stats: Vec<StoreStats> = nodes.iter().map(|n| n.stats()).collect();
    let conflicts: u64 = stats.iter().map(|s| s.conflicts).sum();
    let retries: u64 = stats.iter().map(|s| s.retries).sum();
    let commits: u64 = stats.iter().map(|s| s.commits).sum();
    eprintln!(
        "two nodes, one counter: {total} increments in {elapsed:?} ({:.0}/s), {commits} commits, \
         {conflicts} conflicts, {retries} retries",
        total as f64 / elapsed.as_secs_f64()
    );
    assert!(
        conflicts > 0,
        "no conflict between two nodes writing one key: {stats:?}"
    );
    assert!(retries >= conflicts);
}

/// `commit_unknown_result` after a commit that landed: the batch is not run
/// again. After one that did not land: it runs again, once. Either way each
/// write applies exactly once, and no marker is left behind.
#[tokio::test]
async fn unknown_commit_results_apply_each_batch_once() {
    let store = store("unknown");
    let runs = Arc::new(AtomicU32::new(0));
    let bump = |runs: &Arc<AtomicU32>| {
        let runs = runs.clone();
        move |t: &mut dyn Txn| {
            runs.fetch_add(1, Ordering::Relaxed);
            counter(t)
        }
    };
    store.inject_faults(&[Fault::UnknownAfterCommit]);
    assert_eq!(write(&store, bump(&runs)).await.unwrap(), 1);
    assert_eq!(runs.swap(0, Ordering::Relaxed), 1, "a batch that landed ran again");
    store.inject_faults(&[Fault::UnknownWithoutCommit]);
    assert_eq!(write(&store, bump(&runs)).await.unwrap(), 2);
    assert_eq!(
        runs.swap(0, Ordering::Relaxed),
        2,
        "a batch that did not land was not run again"
    );
    // Twice in a row, and with batch-mates.
    store.inject_faults(&[Fault::UnknownWithoutCommit, Fault::UnknownAfterCommit]);
    let mut pending = Vec::new();
    for _ in 0..5 {
        pending.push(enqueue_write(&store, bump(&runs)).await.unwrap());
    }
    let mut got = Vec::new();
    for p in pending {
        got.push(p.wait().await.unwrap());
    }
    assert_eq!(got, vec![3, 4, 5, 6, 7]);
    assert_eq!(
        read(&store, |t| t.get(b"n")).unwrap(),
        Some(7u64.to_be_bytes().to_vec())
    );
    assert_eq!(store.stats().retries, 2, "{:?}", store.stats());
    store.shutdown().await;
    assert_eq!(raw_keys(&store, store.layout.all_markers()), Vec::<Vec<u8>>::new());
}

/// Markers an unclean exit left are cleared by the next store on the prefix
/// once they are old; recent ones (a live writer's) are kept.
#[tokio::test]
async fn stale_markers_are_cleared_at_open() {
    let prefix = unique_prefix("markers");
    let first = open(&prefix);
    let (old, recent) = (first.layout.marker(&[1; 16], 0, 0), first.layout.marker(&[2; 16], 0, 0));
    let tr = first.db.create_trx().unwrap();
    let mut old_value = vec![b'c'];
    old_value.extend_from_slice(&1_000u64.to_be_bytes());
    tr.set(&old, &old_value);
    tr.set(&recent, &writer::marker_value(b'c'));
    block_on(tr.commit()).unwrap();
    let second = open(&prefix);
    assert_eq!(raw_keys(&second, second.layout.all_markers()), vec![recent]);
}

/// Overwriting or clearing a large value leaves none of its parts behind.
#[tokio::test]
async fn large_values_leave_no_parts_behind() {
    let store = store("parts");
    let big = vec![7u8; 350_000];
    let parts = |store: &FdbStore, key: &[u8]| raw_keys(store, store.layout.parts_range(key)).len();
    let b = big.clone();
    write(&store, move |t| {
        t.set(b"a", &b);
        t.set(b"b", &b);
        t.set(b"c", &b);
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    assert_eq!(parts(&store, b"a"), 4);
    // Blind overwrites (the writer does not know what was there) and one
    // after a read (it knows), smaller, then a clear.
    let b = big.clone();
    write(&store, move |t| {
        t.set(b"a", b"small");
        t.set(b"b", &b[..150_000]);
        let _ = t.get(b"c")?;
        t.set(b"c", &b[..10]);
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    assert_eq!(
        (parts(&store, b"a"), parts(&store, b"b"), parts(&store, b"c")),
        (0, 2, 0)
    );
    write(&store, |t| {
        t.clear(b"b");
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    assert_eq!(parts(&store, b"b"), 0);
    let (begin, end) = (store.layout.data_key(b""), store.layout.data_key(b"\xff"));
    assert_eq!(raw_keys(&store, (begin, end)).len(), 2);
}

/// One closure writing more than a transaction may hold fails alone; its
/// batch-mates commit.
#[tokio::test]
async fn a_write_too_large_for_a_transaction_fails_alone() {
    let store = store("too-large");
    let ok1 = enqueue_write(&store, |t| {
        t.set(b"ok1", b"1");
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let huge = enqueue_write(&store, |t| {
        t.set(b"huge", &vec![0u8; writer::MAX_JOB_BYTES + 1]);
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let long_key = enqueue_write(&store, |t| {
        t.set(&[b'k'; 6000], b"v");
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let ok2 = enqueue_write(&store, |t| {
        t.set(b"ok2", b"2");
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    ok1.wait().await.unwrap();
    assert!(matches!(huge.wait().await, Err(StoreError::Backend(_))));
    assert!(matches!(long_key.wait().await, Err(StoreError::Backend(_))));
    ok2.wait().await.unwrap();
    let got = read(&store, |t| t.get_many(&[b"ok1", b"huge", b"ok2"])).unwrap();
    assert_eq!(got, vec![Some(b"1".to_vec()), None, Some(b"2".to_vec())]);
}

/// Many writes queued at once share commits; one past the byte cap goes to
/// the next batch instead of overflowing the transaction.
#[tokio::test]
async fn queued_writes_share_transactions_within_the_caps() {
    let store = store("batching");
    let mut pending = Vec::new();
    for i in 0..200u32 {
        pending.push(
            enqueue_write(&store, move |t| {
                t.set(&i.to_be_bytes(), b"v");
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap(),
        );
    }
    // 3 writes of 400 kB: 1.2 MB, over the 1 MiB a batch takes.
    for i in 0..3u8 {
        pending.push(
            enqueue_write(&store, move |t| {
                t.set(&[b'L', i], &vec![i; 400_000]);
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap(),
        );
    }
    for p in pending {
        p.wait().await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.writes, 203);
    assert_eq!(stats.keys_written, 203);
    assert!(
        stats.commits < 100,
        "{} commits for 203 writes: no batching",
        stats.commits
    );
    assert!(stats.commits >= 2, "1.2 MB went into one transaction");
}

/// A panicking closure stores nothing and fails only itself.
#[tokio::test]
async fn a_panicking_write_leaves_no_trace() {
    let store = store("panic");
    let bad = enqueue_write(&store, |t| {
        t.set(b"k", b"half");
        if t.get(b"k")?.is_some() {
            panic!("closure panics on purpose");
        }
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let good = enqueue_write(&store, |t| {
        t.set(b"j", b"v");
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    // A panic counts as a rollback: nothing kept, and no result either.
    assert!(bad.wait().await.is_err());
    good.wait().await.unwrap();
    let got = read(&store, |t| t.get_many(&[b"k", b"j"])).unwrap();
    assert_eq!(got, vec![None, Some(b"v".to_vec())]);
}

/// After shutdown, new writes are refused; what was written stays readable.
#[tokio::test]
async fn shutdown_refuses_new_writes() {
    let store = store("shutdown");
    let queued: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..20u8 {
            v.push(
                enqueue_write(&store, move |t| {
                    t.set(&[i], b"v");
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap(),
            );
        }
        v
    };
    store.shutdown().await;
    // Queued before the shutdown: written.
    for p in queued {
        p.wait().await.unwrap();
    }
    let refused = enqueue_write(&store, |t| {
        t.set(b"late", b"v");
        Ok::<_, StoreError>(())
    })
    .await;
    assert!(matches!(refused, Err(StoreError::Closed)));
    assert_eq!(read(&store, |t| t.get(&[19])).unwrap(), Some(b"v".to_vec()));
    assert_eq!(read(&store, |t| t.get(b"late")).unwrap(), None);
}

/// `get_many` issues its reads together: 200 keys take about one round
/// trip, not 200.
#[tokio::test]
async fn get_many_is_one_round_trip() {
    let store = store("get-many");
    let keys: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let k = keys.clone();
    write(&store, move |t| {
        for key in &k {
            t.set(key, key);
        }
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let (mut one_by_one, mut together) = (std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..3 {
        let started = Instant::now();
        let got = read(&store, |t| refs.iter().map(|k| t.get(k)).collect::<Result<Vec<_>, _>>()).unwrap();
        one_by_one = one_by_one.min(started.elapsed());
        assert!(got.iter().all(Option::is_some));
        let started = Instant::now();
        let got = read(&store, |t| t.get_many(&refs)).unwrap();
        together = together.min(started.elapsed());
        assert_eq!(got, keys.iter().map(|k| Some(k.clone())).collect::<Vec<_>>());
    }
    eprintln!("200 reads: one by one {one_by_one:?}, get_many {together:?}");
    assert!(together < one_by_one, "get_many {together:?} vs gets {one_by_one:?}");
}

/// Adds from two stores (two nodes) on one key never conflict and all land;
/// the store reads the sum back as a little-endian i64.
#[tokio::test]
async fn atomic_adds_from_two_nodes_all_land_without_conflicts() {
    let prefix = unique_prefix("adds");
    let (a, b) = (Arc::new(open(&prefix)), Arc::new(open(&prefix)));
    let mut pending = Vec::new();
    for i in 0..200 {
        let s = if i % 2 == 0 { &a } else { &b };
        pending.push(
            enqueue_write(&**s, |t| {
                t.atomic_add(b"bell", 1)?;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap(),
        );
    }
    for p in pending {
        p.wait().await.unwrap();
    }
    let v = read(&*a, |t| t.get(b"bell")).unwrap().unwrap();
    assert_eq!(i64::from_le_bytes(v.try_into().unwrap()), 200);
    assert_eq!(a.stats().conflicts + b.stats().conflicts, 0, "ADD never conflicts");
}

/// Versionstamped keys from two nodes come out in commit order, each write's
/// own in the order it made them, and never collide.
#[tokio::test]
async fn versionstamped_keys_follow_commit_order_across_nodes() {
    let prefix = unique_prefix("stamps");
    let (a, b) = (open(&prefix), open(&prefix));
    for i in 0..20u8 {
        let s = if i % 2 == 0 { &a } else { &b };
        write(s, move |t| {
            t.set_versionstamped(b"q/", &[i, 0])?;
            t.set_versionstamped(b"q/", &[i, 1])?;
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    }
    let rows = read(&a, |t| t.range(b"q/", b"q0", usize::MAX, false)).unwrap();
    let values: Vec<[u8; 2]> = rows.iter().map(|(_, v)| [v[0], v[1]]).collect();
    let expected: Vec<[u8; 2]> = (0..20u8).flat_map(|i| [[i, 0], [i, 1]]).collect();
    assert_eq!(values, expected);
    assert!(
        rows.iter().all(|(k, _)| k.len() == 2 + 12),
        "prefix, 10-byte stamp, 2-byte order"
    );
}

/// A watch resolves at once when the value already moved on, and otherwise
/// when another node changes it.
#[tokio::test]
async fn a_watch_fires_on_a_change_made_by_another_node() {
    let prefix = unique_prefix("watch");
    let (a, b) = (open(&prefix), Arc::new(open(&prefix)));
    let seen = read(&a, |t| t.get(b"bell")).unwrap();
    assert_eq!(seen, None);
    let changer = {
        let b = b.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            write(&*b, |t| {
                t.atomic_add(b"bell", 1)?;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        })
    };
    let started = Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(5), a.watch(b"bell", seen))
        .await
        .expect("the watch fired")
        .unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(90),
        "fired before the change"
    );
    changer.await.unwrap();
    // Stale `seen`: at once.
    tokio::time::timeout(std::time::Duration::from_millis(500), a.watch(b"bell", None))
        .await
        .expect("a stale watch resolves at once")
        .unwrap();
}
