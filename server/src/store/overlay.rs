//! Buffered writes layered over a committed view, for group commit.
//!
//! Both embedded engines run every queued write closure against one batch,
//! and a closure that rolls back (or panics) leaves nothing while its
//! batch-mates commit. The B-tree engine gives each closure an [`Overlay`]
//! whose reads see the batch so far (its write transaction) and whose writes
//! stay in the overlay until the closure returns [`Outcome::Commit`]. The
//! log-structured engine keeps the batch itself in memory, so a closure
//! writes straight into it and an undo log takes a rollback back
//! ([`run_job_in`]). The engine only says how to read what lies under
//! ([`Base`]) and how to make the kept writes durable.

use std::iter::Peekable;

pub use super::writes::Writes;
use super::{KeyValue, Outcome, ReadTxn, StoreError, Txn, WriteFn};

/// A lazy scan in key order (or reverse order).
pub(super) type Scan<'a> = Box<dyn Iterator<Item = Result<KeyValue, StoreError>> + 'a>;

/// What an overlay reads through to: a committed snapshot, or a batch in
/// progress.
pub(super) trait Base {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every pair with `begin <= key < end` (callers ensure `begin < end`),
    /// ascending, or descending when `reverse`.
    fn scan<'a>(&'a self, begin: &[u8], end: &[u8], reverse: bool) -> Result<Scan<'a>, StoreError>;
}

/// Runs one write closure over `base`. `Ok(Some(writes))`: the closure
/// committed these writes; `Ok(None)`: it rolled back; `Err`: a read failed
/// in the backend, so the whole batch is suspect.
pub(super) fn run_job(base: &dyn Base, f: &mut WriteFn) -> Result<Option<Writes>, StoreError> {
    let mut overlay = Overlay {
        base,
        writes: Writes::new(),
        error: None,
    };
    let outcome = call(f, &mut overlay);
    if let Some(e) = overlay.error {
        return Err(e);
    }
    Ok((outcome == Outcome::Commit).then_some(overlay.writes))
}

/// Calls a write closure; a panic counts as a rollback, so one bad closure
/// cannot take the writer thread (and every batch-mate) down with it.
fn call(f: &mut WriteFn, txn: &mut dyn Txn) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(txn))).unwrap_or_else(|_| {
        tracing::error!("write closure panicked; its writes are discarded");
        Outcome::Rollback
    })
}

/// Runs one write closure straight on `batch`, over `under` (what the batch
/// lies on). Its writes go into the batch as they happen, each noting what it
/// replaced, and a rollback (or panic) puts those back: no per-closure map
/// whose every key is moved into the batch afterwards, and a read looks in one
/// map, not two. (perf of the throughput scenario: the per-closure maps and
/// the move were about a tenth of the writer thread's time.)
/// `Ok(Some(n))`: the closure committed `n` key writes; `Ok(None)`: it rolled
/// back and the batch is as before; `Err`: a read failed in the backend, so
/// the whole batch is suspect.
pub(super) fn run_job_in(batch: &mut Writes, under: &dyn Base, f: &mut WriteFn) -> Result<Option<u64>, StoreError> {
    let mut txn = InBatch {
        batch,
        under,
        undo: Vec::new(),
        error: None,
    };
    let outcome = call(f, &mut txn);
    if let Some(e) = txn.error {
        return Err(e);
    }
    if outcome == Outcome::Commit {
        return Ok(Some(txn.undo.len() as u64));
    }
    for (key, replaced) in txn.undo.into_iter().rev() {
        match replaced {
            Some(v) => txn.batch.insert(key, v),
            None => txn.batch.remove(&key),
        };
    }
    Ok(None)
}

/// The batch entry a write replaced: `None` when the batch had none.
type Replaced = Option<Option<Vec<u8>>>;

/// One closure's view inside a group commit whose writes go straight into
/// the batch (see [`run_job_in`]).
struct InBatch<'b> {
    batch: &'b mut Writes,
    under: &'b dyn Base,
    /// Each write's key and the batch entry it replaced, in write order.
    undo: Vec<(Vec<u8>, Replaced)>,
    /// A backend error seen by a read; fails the batch.
    error: Option<StoreError>,
}

impl InBatch<'_> {
    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        let replaced = self.batch.insert(key.to_vec(), value);
        self.undo.push((key.to_vec(), replaced));
    }
}

impl ReadTxn for InBatch<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        layered_get(self.batch, self.under, &mut self.error, key)
    }

    fn range(&mut self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError> {
        layered_range(self.batch, self.under, &mut self.error, (begin, end), limit, reverse)
    }
}

/// A read of `writes` laid over `base`. A backend error is kept in `error`
/// as well as returned: it fails the whole batch even if the closure
/// swallows it.
fn layered_get(
    writes: &Writes,
    base: &dyn Base,
    error: &mut Option<StoreError>,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    if let Some(v) = writes.get(key) {
        return Ok(v.clone());
    }
    noted(error, base.get(key))
}

/// A range read of `writes` laid over `base` (see [`layered_get`]).
fn layered_range(
    writes: &Writes,
    base: &dyn Base,
    error: &mut Option<StoreError>,
    (begin, end): (&[u8], &[u8]),
    limit: usize,
    reverse: bool,
) -> Result<Vec<KeyValue>, StoreError> {
    if begin >= end || limit == 0 {
        return Ok(Vec::new());
    }
    let r = base
        .scan(begin, end, reverse)
        .and_then(|scan| merged(scan, writes, begin, end, reverse).take(limit).collect());
    noted(error, r)
}

fn noted<T>(error: &mut Option<StoreError>, r: Result<T, StoreError>) -> Result<T, StoreError> {
    if let Err(e) = &r {
        *error = Some(e.clone());
    }
    r
}

impl Txn for InBatch<'_> {
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.write(key, Some(value.to_vec()));
    }

    fn clear(&mut self, key: &[u8]) {
        self.write(key, None);
    }
}

/// A batch's writes laid over what lies under them: how the batch being
/// prepared sees the batch still being made durable (commit.rs).
pub(super) struct Layered<'a> {
    pub(super) writes: &'a Writes,
    pub(super) under: &'a dyn Base,
}

impl Base for Layered<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.under.get(key),
        }
    }

    fn scan<'a>(&'a self, begin: &[u8], end: &[u8], reverse: bool) -> Result<Scan<'a>, StoreError> {
        Ok(merged(
            self.under.scan(begin, end, reverse)?,
            self.writes,
            begin,
            end,
            reverse,
        ))
    }
}

/// A read-only transaction over a [`Base`] (a snapshot).
pub(super) struct Reader<'a>(pub(super) &'a dyn Base);

impl ReadTxn for Reader<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key)
    }

    fn range(&mut self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        self.0.scan(begin, end, reverse)?.take(limit).collect()
    }
}

/// `ours` laid over `base` for the range `begin..end`: ours wins on equal
/// keys and its `None` hides a base key.
pub(super) fn merged<'a>(base: Scan<'a>, ours: &'a Writes, begin: &[u8], end: &[u8], reverse: bool) -> Scan<'a> {
    let ours = ours.range(begin, end);
    let ours: OursIter<'a> = if reverse { Box::new(ours.rev()) } else { Box::new(ours) };
    Box::new(Merge {
        base: base.peekable(),
        ours: ours.peekable(),
        reverse,
    })
}

type OursIter<'a> = Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a>;

struct Merge<'a> {
    base: Peekable<Scan<'a>>,
    ours: Peekable<OursIter<'a>>,
    reverse: bool,
}

impl Iterator for Merge<'_> {
    type Item = Result<KeyValue, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering::*;
        loop {
            let take_ours = match (self.base.peek(), self.ours.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(_), None) => return self.base.next(),
                (None, Some(_)) => true,
                (Some(Ok((bk, _))), Some((ok, _))) => {
                    let order = bk.as_slice().cmp(ok.as_slice());
                    match if self.reverse { order.reverse() } else { order } {
                        Less => false,
                        Greater => true,
                        Equal => {
                            self.base.next(); // shadowed by ours
                            true
                        }
                    }
                }
            };
            if !take_ours {
                return self.base.next();
            }
            let (k, v) = self.ours.next()?;
            if let Some(v) = v {
                return Some(Ok((k.clone(), v.clone())));
            }
            // A deletion: nothing to yield for this key.
        }
    }
}

/// One closure's view inside a group commit.
struct Overlay<'b> {
    base: &'b dyn Base,
    writes: Writes,
    /// A backend error seen by a read; fails the batch.
    error: Option<StoreError>,
}

impl ReadTxn for Overlay<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        layered_get(&self.writes, self.base, &mut self.error, key)
    }

    fn range(&mut self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError> {
        layered_range(&self.writes, self.base, &mut self.error, (begin, end), limit, reverse)
    }
}

impl Txn for Overlay<'_> {
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Committed data under the batch: a sorted map.
    struct Committed(Writes);

    impl Base for Committed {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(self.0.get(key).cloned().flatten())
        }

        fn scan<'a>(&'a self, begin: &[u8], end: &[u8], reverse: bool) -> Result<Scan<'a>, StoreError> {
            let rows = self
                .0
                .range(begin, end)
                .filter_map(|(k, v)| v.clone().map(|v| Ok((k.clone(), v))));
            Ok(if reverse { Box::new(rows.rev()) } else { Box::new(rows) })
        }
    }

    fn map(pairs: &[(&str, Option<&str>)]) -> Writes {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    /// The batch as earlier closures left it: `a` overwritten, `b` written,
    /// `c` deleted, over committed `a`, `c` and `d`.
    fn setup() -> (Committed, Writes) {
        let committed = Committed(map(&[("a", Some("0")), ("c", Some("0")), ("d", Some("0"))]));
        let batch = map(&[("a", Some("1")), ("b", Some("1")), ("c", None)]);
        (committed, batch)
    }

    fn job(f: impl FnMut(&mut dyn Txn) -> Outcome + Send + 'static) -> WriteFn {
        Box::new(f)
    }

    #[test]
    fn a_committed_closure_leaves_its_writes_in_the_batch() {
        let (committed, mut batch) = setup();
        let mut f = job(|t| {
            // Reads see the batch over the committed data, then its own writes.
            assert_eq!(t.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
            assert_eq!(t.get(b"c").unwrap(), None);
            assert_eq!(t.get(b"d").unwrap().as_deref(), Some(&b"0"[..]));
            t.set(b"a", b"2");
            t.clear(b"d");
            t.set(b"e", b"2");
            let keys: Vec<_> = t
                .range(b"a", b"z", 10, false)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"e".to_vec()]);
            Outcome::Commit
        });
        assert_eq!(run_job_in(&mut batch, &committed, &mut f).unwrap(), Some(3));
        let want = map(&[
            ("a", Some("2")),
            ("b", Some("1")),
            ("c", None),
            ("d", None),
            ("e", Some("2")),
        ]);
        assert_eq!(batch, want);
    }

    /// The undo log puts back what a closure replaced in the batch, whether
    /// the closure rolled back or panicked: overwritten, cleared and new keys,
    /// and a key written twice.
    #[test]
    fn a_rolled_back_or_panicking_closure_leaves_the_batch_as_it_was() {
        for panics in [false, true] {
            let (committed, mut batch) = setup();
            let before = batch.clone();
            let mut f = job(move |t| {
                t.set(b"a", b"2");
                t.set(b"a", b"3");
                t.clear(b"b");
                t.set(b"c", b"2");
                t.clear(b"d");
                t.set(b"e", b"2");
                assert!(!panics, "closure panics on purpose");
                Outcome::Rollback
            });
            assert_eq!(run_job_in(&mut batch, &committed, &mut f).unwrap(), None);
            assert_eq!(batch, before, "panics: {panics}");
        }
    }
}
