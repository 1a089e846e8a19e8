//! Buffered writes layered over a committed view, for group commit.
//!
//! Both embedded engines run every queued write closure against one batch:
//! each closure gets an [`Overlay`] whose reads see the batch so far and
//! whose writes stay in the overlay until the closure returns
//! [`Outcome::Commit`]. A closure that rolls back (or panics) leaves nothing,
//! while its batch-mates commit. The engine only says how to read what lies
//! under the overlay ([`Base`]) and how to make the kept writes durable.

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::ops::Bound;

use super::{KeyValue, Outcome, ReadTxn, StoreError, Txn, WriteFn};

/// Writes buffered by one closure or one batch: `None` deletes the key.
pub(super) type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

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
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut overlay))).unwrap_or_else(|_| {
        tracing::error!("write closure panicked; its writes are discarded");
        Outcome::Rollback
    });
    if let Some(e) = overlay.error {
        return Err(e);
    }
    Ok((outcome == Outcome::Commit).then_some(overlay.writes))
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
    let ours = ours.range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
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

impl Overlay<'_> {
    fn note<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            self.error = Some(e.clone());
        }
        r
    }
}

impl ReadTxn for Overlay<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        let r = self.base.get(key);
        self.note(r)
    }

    fn range(&mut self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let r = self
            .base
            .scan(begin, end, reverse)
            .and_then(|base| merged(base, &self.writes, begin, end, reverse).take(limit).collect());
        self.note(r)
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
