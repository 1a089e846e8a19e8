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

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;
use std::iter::Peekable;
use std::ops::Bound;

use ref_cast::RefCast;

use super::{KeyValue, Outcome, ReadTxn, StoreError, Txn, WriteFn};

/// Writes buffered by one closure or one batch, in key order (range reads
/// merge them with what lies under): `None` deletes the key.
///
/// Most point reads of a write closure miss the batch (a send reads the
/// chat head, cursors and log heads of its own chat and users), and with
/// the commit pipelined each miss searched two batches' B-trees, each
/// comparison a `memcmp` call: in perf of the throughput scenario, B-tree
/// searches were a quarter of the writer thread. So the batch also keeps the
/// hashes of the keys it has held, and a read whose key's hash is not among
/// them skips the tree. A removed key keeps its hash (a rollback only makes
/// a later miss search the tree).
#[derive(Clone, Debug, Default)]
pub struct Writes {
    map: BTreeMap<Key, Option<Vec<u8>>>,
    hashes: HashSet<u64, foldhash::fast::RandomState>,
}

/// Hashes keys for [`Writes`]' filter. Fixed, not random: a collision
/// costs one tree search, never a wrong answer.
const KEY_HASH: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5155_4950);

/// A key in a batch map, ordered bytewise like `[u8]` but compared inline,
/// eight bytes at a time: `[u8]`'s `Ord` calls libc's `memcmp` for every
/// comparison, and those calls were a fifth of the writer thread's time in
/// the throughput scenario (keys are ~20-byte prefixes and big-endian ids,
/// so two or three word compares decide).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key(Vec<u8>);

/// A borrowed [`Key`], for looking keys up by slice.
#[derive(RefCast, PartialEq, Eq)]
#[repr(transparent)]
struct KeyRef([u8]);

impl KeyRef {
    fn of(key: &[u8]) -> &Self {
        Self::ref_cast(key)
    }
}

impl Ord for KeyRef {
    fn cmp(&self, other: &Self) -> Ordering {
        bytewise(&self.0, &other.0)
    }
}

impl PartialOrd for KeyRef {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Borrow<KeyRef> for Key {
    fn borrow(&self) -> &KeyRef {
        KeyRef::of(&self.0)
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        bytewise(&self.0, &other.0)
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `a.cmp(b)` for byte strings, without a call: big-endian words compare
/// like their bytes, then the tail byte by byte, then the lengths.
fn bytewise(a: &[u8], b: &[u8]) -> Ordering {
    let (mut a_words, mut b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in a_words.by_ref().zip(b_words.by_ref()) {
        let (x, y) = (word(x), word(y));
        if x != y {
            return x.cmp(&y);
        }
    }
    let n = a.len().min(b.len()) / 8 * 8;
    for (x, y) in a[n..].iter().zip(&b[n..]) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

fn word(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("chunks_exact(8)"))
}

impl Writes {
    pub(super) fn new() -> Self {
        Self::default()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The write buffered for `key`: `Some(None)` is a deletion.
    pub(super) fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        if !self.hashes.contains(&KEY_HASH.hash_one(key)) {
            return None;
        }
        self.map.get(KeyRef::of(key))
    }

    /// Buffers a write; returns the one it replaced.
    pub(super) fn insert(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Option<Option<Vec<u8>>> {
        self.hashes.insert(KEY_HASH.hash_one(key.as_slice()));
        self.map.insert(Key(key), value)
    }

    /// Forgets the write buffered for `key` (a rollback).
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.map.remove(KeyRef::of(key))
    }

    /// The writes with `begin <= key < end`, in key order.
    pub(super) fn range<'a>(
        &'a self,
        begin: &[u8],
        end: &[u8],
    ) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
        let bounds = (Bound::Included(KeyRef::of(begin)), Bound::Excluded(KeyRef::of(end)));
        self.map.range::<KeyRef, _>(bounds).map(|(k, v)| (&k.0, v))
    }

    /// Every write, in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Option<Vec<u8>>)> {
        self.map.iter().map(|(k, v)| (&k.0, v))
    }
}

/// Equal when they hold the same writes (whatever hashes rollbacks left).
impl PartialEq for Writes {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl IntoIterator for Writes {
    type Item = (Vec<u8>, Option<Vec<u8>>);
    type IntoIter = std::iter::Map<
        std::collections::btree_map::IntoIter<Key, Option<Vec<u8>>>,
        fn((Key, Option<Vec<u8>>)) -> (Vec<u8>, Option<Vec<u8>>),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.map.into_iter().map(|(k, v)| (k.0, v))
    }
}

impl FromIterator<(Vec<u8>, Option<Vec<u8>>)> for Writes {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>>(pairs: I) -> Self {
        let mut w = Self::new();
        for (k, v) in pairs {
            w.insert(k, v);
        }
        w
    }
}

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

    /// The batch map's order must be `[u8]`'s exactly: range reads merge
    /// it with the engine's scans by slice comparison.
    #[test]
    fn keys_compare_like_byte_slices() {
        // Keys as the store makes them: shared prefixes, zero-padded ids,
        // one key a prefix of another, lengths around the 8-byte words.
        let mut keys: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![255], b"log/".to_vec()];
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        for len in 0..40 {
            for _ in 0..12 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut k = b"msg/".to_vec();
                k.extend((0..len).map(|i| if (x >> (i % 60)) & 3 == 0 { (x >> 8) as u8 } else { 0 }));
                keys.push(k);
            }
        }
        for i in 0..keys.len() {
            let mut shorter = keys[i].clone();
            shorter.pop();
            keys.push(shorter);
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(bytewise(a, b), a.as_slice().cmp(b.as_slice()), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn the_key_filter_never_hides_a_write() {
        let key = |i: u32| i.to_be_bytes().to_vec();
        let mut w = Writes::new();
        for i in 0..1_000 {
            w.insert(key(i), (i % 2 == 0).then(|| vec![1]));
        }
        for i in 0..1_000 {
            assert_eq!(w.get(&key(i)), Some(&(i % 2 == 0).then(|| vec![1])), "key {i}");
        }
        assert!((1_000..3_000).all(|i| w.get(&key(i)).is_none()));
        // A rolled-back key keeps its hash but reads as absent.
        w.remove(&key(4));
        assert_eq!(w.get(&key(4)), None);
        w.insert(key(4), None);
        assert_eq!(w.get(&key(4)), Some(&None));
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
