//! One write closure's run inside a batch: its own overlay over the batch's
//! FoundationDB transaction, and how its writes go into that transaction.
//!
//! The closure's reads see its own writes first, then the transaction (the
//! writes of the batch-mates before it, through FoundationDB's
//! read-your-writes, then the database); its writes stay in the overlay
//! until it returns, so a rollback or a panic leaves nothing. It also notes
//! which keys it saw stored without parts, whose writes then need no
//! clearing of a parts range ([`super::layout`]).

use std::collections::{HashMap, HashSet};

use foundationdb::options::MutationType;
use foundationdb::{FdbError, Transaction};

use super::layout::{self, Layout};
use super::read::{ReadError, Reads};
use crate::store::overlay::{Writes, merged};
use crate::store::{KeyValue, Outcome, ReadTxn, StoreError, Txn, WriteFn};

/// Writes that are mutations rather than values: applied after the
/// closure's plain writes, and never read back by it.
#[derive(Default)]
pub(super) struct Mutations {
    /// `ADD`s: (key, delta).
    pub(super) adds: Vec<(Vec<u8>, i64)>,
    /// Versionstamped keys: (prefix, value).
    pub(super) stamped: Vec<(Vec<u8>, Vec<u8>)>,
}

/// How one closure's run ended.
pub(super) enum Run {
    /// It committed these writes; it saw these keys stored without parts.
    Commit(Writes, HashSet<Vec<u8>>, Mutations),
    Rollback,
    /// It wrote something the store cannot take (a key too long).
    Refused(StoreError),
    /// A read failed in FoundationDB: the attempt is void.
    Failed(FdbError),
}

pub(super) fn run_job(reads: &Reads<'_>, f: &mut WriteFn) -> Run {
    let mut txn = JobTxn {
        reads,
        writes: Writes::new(),
        fetched: HashMap::new(),
        no_parts: HashSet::new(),
        mutations: Mutations::default(),
        error: None,
        refused: None,
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut txn))).unwrap_or_else(|_| {
        tracing::error!("write closure panicked; its writes are discarded");
        Outcome::Rollback
    });
    if let Some(e) = txn.error {
        return Run::Failed(e);
    }
    match (outcome, txn.refused) {
        (Outcome::Rollback, _) => Run::Rollback,
        (Outcome::Commit, Some(e)) => Run::Refused(e),
        (Outcome::Commit, None) => Run::Commit(txn.writes, txn.no_parts, txn.mutations),
    }
}

/// One closure's view of its batch: its own writes over the transaction.
struct JobTxn<'a> {
    reads: &'a Reads<'a>,
    writes: Writes,
    /// What this closure read from the transaction, by key. Exact for the
    /// closure's run: nothing else writes to the transaction meanwhile
    /// (batch-mates' writes went in before it ran; its own stay in
    /// `writes`, which reads see first). A hit costs no trip to
    /// FoundationDB's client thread, which a read of a key the transaction
    /// cached still makes.
    fetched: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys whose stored row this closure read and found without parts:
    /// writing them needs no clearing of a parts range.
    no_parts: HashSet<Vec<u8>>,
    mutations: Mutations,
    /// The first FoundationDB error a read met; it voids the attempt even
    /// if the closure swallows it.
    error: Option<FdbError>,
    /// Why the store cannot take this closure's writes.
    refused: Option<StoreError>,
}

impl JobTxn<'_> {
    fn noted<T>(&mut self, r: Result<T, ReadError>) -> Result<T, StoreError> {
        super::read::noted(&mut self.error, r)
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        if key.len() > layout::max_key(self.reads.layout) {
            self.refused.get_or_insert(StoreError::Backend(format!(
                "key of {} bytes: FoundationDB keys are limited to {}",
                key.len(),
                layout::max_key(self.reads.layout)
            )));
            return;
        }
        self.writes.insert(key.to_vec(), value);
    }
}

impl ReadTxn for JobTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_many(&[key])?.pop().flatten())
    }

    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut values = Vec::with_capacity(keys.len());
        let mut missed = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.writes.get(key).or_else(|| self.fetched.get(*key)) {
                Some(v) => values.push(v.clone()),
                None => {
                    values.push(None);
                    missed.push((i, *key));
                }
            }
        }
        if missed.is_empty() {
            return Ok(values);
        }
        let wanted: Vec<&[u8]> = missed.iter().map(|(_, k)| *k).collect();
        let r = self.reads.get_many(&wanted);
        for ((i, key), (value, large)) in missed.into_iter().zip(self.noted(r)?) {
            if !large {
                self.no_parts.insert(key.to_vec());
            }
            self.fetched.insert(key.to_vec(), value.clone());
            values[i] = value;
        }
        Ok(values)
    }

    /// The reads that follow are answered from `fetched`.
    fn prefetch(&mut self, keys: &[&[u8]]) -> Result<(), StoreError> {
        self.get_many(keys).map(drop)
    }

    fn range(&mut self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        // Enough stored rows that, after this closure's own writes shadow
        // or delete some, `limit` are left (or the range is exhausted).
        let shadowed = self.writes.range(begin, end).count();
        let r = self.reads.range(begin, end, limit.saturating_add(shadowed), reverse);
        let rows = self.noted(r)?;
        let mut stored = Vec::with_capacity(rows.len());
        for (kv, large) in rows {
            if !large {
                self.no_parts.insert(kv.0.clone());
            }
            stored.push(Ok(kv));
        }
        merged(Box::new(stored.into_iter()), &self.writes, begin, end, reverse)
            .take(limit)
            .collect()
    }
}

impl Txn for JobTxn<'_> {
    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.write(key, Some(value.to_vec()));
    }

    fn clear(&mut self, key: &[u8]) {
        self.write(key, None);
    }

    /// FoundationDB's `ADD` on the data row. The row holds the inline
    /// header byte (0x00) then the value, and `ADD` adds little-endian, so
    /// the parameter is the delta shifted one byte up: the header stays 0x00
    /// and the eight value bytes take the sum (an absent row counts as 0).
    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), StoreError> {
        if self.writes.get(key).is_some() {
            return Err(StoreError::Backend(
                "atomic_add on a key this write also sets: not supported".into(),
            ));
        }
        self.mutations.adds.push((key.to_vec(), delta));
        Ok(())
    }

    fn set_versionstamped(&mut self, prefix: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if value.len() >= layout::VALUE_LIMIT {
            return Err(StoreError::Backend(format!(
                "a versionstamped value of {} bytes: FoundationDB values are limited to {} and these cannot be split",
                value.len(),
                layout::VALUE_LIMIT
            )));
        }
        self.mutations.stamped.push((prefix.to_vec(), value.to_vec()));
        Ok(())
    }
}

/// About how many bytes `writes` add to a transaction: keys (twice, for the
/// write conflict ranges), values, and the parts' keys and clears.
pub(super) fn size(layout: &Layout, writes: &Writes, mutations: &Mutations) -> usize {
    let plain: usize = writes
        .iter()
        .map(|(k, v)| {
            let key = layout.data_key(k).len();
            let value = v.as_ref().map_or(0, Vec::len);
            4 * key + 16 + value + value.div_ceil(layout::PART) * (2 * key + 16)
        })
        .sum();
    let adds: usize = mutations
        .adds
        .iter()
        .map(|(k, _)| 2 * layout.data_key(k).len() + 25)
        .sum();
    let stamped: usize = mutations
        .stamped
        .iter()
        .map(|(p, v)| 2 * (layout.data_key(p).len() + 16) + v.len() + 1)
        .sum();
    plain + adds + stamped
}

/// Puts one closure's mutations into the transaction. `order` numbers the
/// versionstamped keys of the whole transaction (their last two bytes), so
/// two of them never get the same key.
pub(super) fn apply_mutations(tr: &Transaction, layout: &Layout, mutations: Mutations, order: &mut u16) -> u64 {
    let mut keys = 0;
    for (key, delta) in mutations.adds {
        let mut param = [0u8; 9];
        param[1..].copy_from_slice(&delta.to_le_bytes());
        tr.atomic_op(&layout.data_key(&key), &param, MutationType::Add);
        keys += 1;
    }
    for (prefix, value) in mutations.stamped {
        let mut key = layout.data_key(&prefix);
        let offset = u32::try_from(key.len()).expect("key length fits u32");
        key.extend_from_slice(&[0u8; 10]);
        key.extend_from_slice(&order.to_be_bytes());
        key.extend_from_slice(&offset.to_le_bytes());
        *order = order.wrapping_add(1);
        let mut row = Vec::with_capacity(value.len() + 1);
        row.push(0x00); // inline (see layout.rs)
        row.extend_from_slice(&value);
        tr.atomic_op(&key, &row, MutationType::SetVersionstampedKey);
        keys += 1;
    }
    keys
}

/// Puts one closure's writes into the transaction; returns how many keys.
pub(super) fn apply(tr: &Transaction, layout: &Layout, writes: Writes, no_parts: &HashSet<Vec<u8>>) -> u64 {
    let mut keys = 0;
    for (key, value) in writes {
        keys += 1;
        if !no_parts.contains(&key) {
            let (begin, end) = layout.parts_range(&key);
            tr.clear_range(&begin, &end);
        }
        let row = layout.data_key(&key);
        match value {
            None => tr.clear(&row),
            Some(value) => {
                let (head, parts) = layout::encode(&value);
                tr.set(&row, &head);
                for (i, part) in parts.enumerate() {
                    tr.set(&layout.part_key(&key, i as u32), part);
                }
            }
        }
    }
    keys
}
