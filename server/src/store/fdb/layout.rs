//! How the store's keys and values are laid out in FoundationDB.
//!
//! Everything lives in the subspace `("<prefix>",)` (tuple layer), in three
//! parts:
//!
//! | FoundationDB key | value |
//! |---|---|
//! | `("<prefix>", "d")` + key | `0x00` + value, or `0x01` + parts (u32 BE) + length (u64 BE) for a large value |
//! | `("<prefix>", "p", key, i)` | part `i` of a large value: its bytes `i * PART .. (i + 1) * PART` |
//! | `("<prefix>", "m", instance, batch, generation)` | a commit marker ([`super::writer`]): `'c'` or `'f'` + wall-clock ms (u64 BE) |
//!
//! Store keys follow the data prefix as they are, not tuple-encoded: they
//! are already built to sort bytewise (spec/storage.md §3), so a store range
//! is one FoundationDB range, `limit` and `reverse` included, and a key costs
//! only its own bytes plus the prefix. Parts live apart from the data rows:
//! a range scan reads headers only, and the parts of every large value it
//! met are fetched afterwards with point reads all issued at once (one round
//! trip more, however many large values), where parts lying between the rows
//! would come ~80 kB per reply. In the parts subspace the key *is*
//! tuple-encoded, so one key's parts are one range, cleared in one go.
//!
//! Invariant: a key has parts only while its data row holds a parts header
//! with that count; every write of the key clears its parts range unless
//! the writer saw that the row held none ([`super::writer`]).

use foundationdb::tuple::Subspace;

use crate::store::StoreError;

/// FoundationDB's largest value, in bytes.
pub(super) const VALUE_LIMIT: usize = 100_000;

/// Bytes per part of a large value.
pub(super) const PART: usize = VALUE_LIMIT;

/// FoundationDB's largest key, in bytes (a larger one fails the whole
/// transaction, so the store refuses it first).
pub(super) const KEY_LIMIT: usize = 10_000;

/// Longest store key: what is left of [`KEY_LIMIT`] after the prefix and a
/// part key's encoding (which can double every zero byte of the key).
pub(super) fn max_key(layout: &Layout) -> usize {
    (KEY_LIMIT - layout.parts_overhead()) / 2
}

const INLINE: u8 = 0x00;
const PARTS: u8 = 0x01;

/// The subspaces of one prefix.
#[derive(Clone, Debug)]
pub(super) struct Layout {
    data: Vec<u8>,
    parts: Subspace,
    markers: Subspace,
}

impl Layout {
    /// The layout under the subspace `(prefix,)`.
    pub(super) fn new(prefix: &str) -> Self {
        let root = Subspace::all().subspace(&prefix);
        Self {
            data: root.subspace(&"d").into_bytes(),
            parts: root.subspace(&"p"),
            markers: root.subspace(&"m"),
        }
    }

    /// The data row of `key`.
    pub(super) fn data_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.data.len() + key.len());
        k.extend_from_slice(&self.data);
        k.extend_from_slice(key);
        k
    }

    /// The store key of a data row, or `None` if `row` lies outside the data subspace.
    pub(super) fn key_of<'a>(&self, row: &'a [u8]) -> Option<&'a [u8]> {
        row.strip_prefix(self.data.as_slice())
    }

    /// Part `i` of `key`'s value.
    pub(super) fn part_key(&self, key: &[u8], i: u32) -> Vec<u8> {
        self.parts.pack(&(key, i))
    }

    /// The range holding every part of `key`'s value.
    pub(super) fn parts_range(&self, key: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.parts.subspace(&(key,)).range()
    }

    /// Bytes a part key adds to the store key, at most (escaping aside).
    fn parts_overhead(&self) -> usize {
        self.parts.bytes().len() + 2 + 5
    }

    /// The marker of one commit attempt (see [`super::writer`]).
    pub(super) fn marker(&self, instance: &[u8; 16], batch: u64, generation: u32) -> Vec<u8> {
        self.markers.pack(&(&instance[..], batch, generation))
    }

    /// The markers of `instance` for batches before `batch`.
    pub(super) fn markers_before(&self, instance: &[u8; 16], batch: u64) -> (Vec<u8>, Vec<u8>) {
        let all = self.markers.subspace(&(&instance[..],));
        (all.range().0, self.markers.pack(&(&instance[..], batch)))
    }

    /// Every marker of every instance.
    pub(super) fn all_markers(&self) -> (Vec<u8>, Vec<u8>) {
        self.markers.range()
    }
}

/// A data row's value, decoded.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Row<'a> {
    /// The value itself.
    Inline(&'a [u8]),
    /// A large value in `parts` parts, `len` bytes in all.
    Parts { parts: u32, len: u64 },
}

/// Decodes a data row's value.
pub(super) fn decode<'a>(key: &[u8], value: &'a [u8]) -> Result<Row<'a>, StoreError> {
    match value.split_first() {
        Some((&INLINE, v)) => Ok(Row::Inline(v)),
        Some((&PARTS, h)) if h.len() == 12 => {
            let parts = u32::from_be_bytes(h[..4].try_into().expect("4 bytes"));
            let len = u64::from_be_bytes(h[4..].try_into().expect("8 bytes"));
            if u64::from(parts) != len.div_ceil(PART as u64) || parts == 0 {
                return Err(corrupt(key, format!("{parts} parts cannot hold {len} bytes")));
            }
            Ok(Row::Parts { parts, len })
        }
        _ => Err(corrupt(key, "unknown value encoding".into())),
    }
}

/// The data row for `value`, and the parts it needs beyond it (empty for a
/// value that fits in the row).
pub(super) fn encode(value: &[u8]) -> (Vec<u8>, std::slice::Chunks<'_, u8>) {
    if value.len() < VALUE_LIMIT {
        let mut row = Vec::with_capacity(1 + value.len());
        row.push(INLINE);
        row.extend_from_slice(value);
        return (row, [].chunks(PART));
    }
    let parts = u32::try_from(value.len().div_ceil(PART)).expect("a value under 400 GB");
    let mut row = Vec::with_capacity(13);
    row.push(PARTS);
    row.extend_from_slice(&parts.to_be_bytes());
    row.extend_from_slice(&(value.len() as u64).to_be_bytes());
    (row, value.chunks(PART))
}

/// Puts a large value back together from its parts (`None`: missing).
pub(super) fn assemble(key: &[u8], len: u64, parts: Vec<Option<Vec<u8>>>) -> Result<Vec<u8>, StoreError> {
    let n = parts.len();
    let mut value = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    for (i, part) in parts.into_iter().enumerate() {
        let Some(part) = part else {
            return Err(corrupt(key, format!("part {i} of {n} is missing")));
        };
        if part.len() != PART && i + 1 < n {
            return Err(corrupt(key, format!("part {i} of {n} holds {} bytes", part.len())));
        }
        value.extend_from_slice(&part);
    }
    if value.len() as u64 != len {
        return Err(corrupt(key, format!("parts hold {} bytes, not {len}", value.len())));
    }
    Ok(value)
}

fn corrupt(key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        key: key.escape_ascii().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_inline_or_in_parts() {
        for len in [
            0,
            1,
            VALUE_LIMIT - 1,
            VALUE_LIMIT,
            VALUE_LIMIT + 1,
            3 * PART,
            300_000,
            262_144 + 50,
        ] {
            let value: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let (row, parts) = encode(&value);
            assert!(row.len() <= VALUE_LIMIT, "{len}: a row over the limit");
            let parts: Vec<Option<Vec<u8>>> = parts.map(|p| Some(p.to_vec())).collect();
            assert!(parts.iter().all(|p| p.as_ref().unwrap().len() <= VALUE_LIMIT));
            let back = match decode(b"k", &row).unwrap() {
                Row::Inline(v) => {
                    assert!(parts.is_empty());
                    v.to_vec()
                }
                Row::Parts { parts: n, len: total } => {
                    assert_eq!(n as usize, parts.len());
                    assemble(b"k", total, parts).unwrap()
                }
            };
            assert_eq!(back, value, "{len}");
        }
    }

    #[test]
    fn damaged_values_are_reported_not_guessed() {
        let value = vec![9u8; 250_000];
        let (row, parts) = encode(&value);
        let mut parts: Vec<Option<Vec<u8>>> = parts.map(|p| Some(p.to_vec())).collect();
        let Row::Parts { len, .. } = decode(b"k", &row).unwrap() else {
            panic!("not in parts")
        };
        parts[1] = None;
        assert!(matches!(assemble(b"k", len, parts), Err(StoreError::Corrupt { .. })));
        assert!(matches!(decode(b"k", &[7, 1, 2]), Err(StoreError::Corrupt { .. })));
        assert!(matches!(decode(b"k", &[]), Err(StoreError::Corrupt { .. })));
        // A header whose count does not match its length.
        let mut bad = vec![PARTS];
        bad.extend_from_slice(&5u32.to_be_bytes());
        bad.extend_from_slice(&10u64.to_be_bytes());
        assert!(matches!(decode(b"k", &bad), Err(StoreError::Corrupt { .. })));
    }

    /// Data rows sort like the store keys they hold, and one key's parts
    /// range holds its parts and nobody else's, whatever bytes keys contain.
    #[test]
    fn keys_keep_their_order_and_parts_stay_apart() {
        let layout = Layout::new("quip");
        let keys: [&[u8]; 7] = [b"", b"\x00", b"\x00\x00", b"a", b"a\x00", b"a\x00\x01", b"a\xff"];
        for a in keys {
            for b in keys {
                assert_eq!(a.cmp(b), layout.data_key(a).cmp(&layout.data_key(b)));
                let (begin, end) = layout.parts_range(a);
                for i in [0, 1, u32::MAX] {
                    let part = layout.part_key(b, i);
                    assert_eq!(begin <= part && part < end, a == b, "{a:?} {b:?} {i}");
                }
            }
            assert_eq!(layout.key_of(&layout.data_key(a)), Some(a));
        }
        let other = Layout::new("quip2");
        assert!(!other.data_key(b"").starts_with(&layout.data_key(b"")));
        assert_eq!(layout.key_of(&other.data_key(b"x")), None);
    }

    #[test]
    fn markers_before_a_batch_are_one_range() {
        let layout = Layout::new("quip");
        let (me, other) = ([1u8; 16], [2u8; 16]);
        let (begin, end) = layout.markers_before(&me, 10);
        let inside = |k: Vec<u8>| begin <= k && k < end;
        assert!(inside(layout.marker(&me, 0, 0)));
        assert!(inside(layout.marker(&me, 9, u32::MAX)));
        assert!(!inside(layout.marker(&me, 10, 0)));
        assert!(!inside(layout.marker(&other, 1, 0)));
        let (all_begin, all_end) = layout.all_markers();
        assert!(all_begin <= layout.marker(&other, 1, 0) && layout.marker(&other, 1, 0) < all_end);
    }
}
