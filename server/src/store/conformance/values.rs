//! Checks of reads and values: batched reads (and prefetch), values far
//! over FoundationDB's 100 kB limit.

use super::*;

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
pub(super) fn big_value(len: usize, seed: u8) -> Vec<u8> {
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
