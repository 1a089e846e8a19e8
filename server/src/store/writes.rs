//! The map of writes a closure or a batch buffers ([`Writes`]), tuned for
//! the writer thread's hot path: keys compared a word at a time, and a hash
//! filter in front of the tree for the reads that miss.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;
use std::ops::Bound;

use ref_cast::RefCast;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
