//! Checks of order: queue order, callback order, serializable increments,
//! and what queued writes read of the ones before them.

use super::*;

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
