//! Reads through a FoundationDB transaction: point reads issued together,
//! ranges, and large values put back together.
//!
//! Everything here blocks the calling thread on FoundationDB futures with
//! `futures::executor::block_on`. That is safe from any thread, a tokio
//! worker included: the futures are completed by FoundationDB's own network
//! thread, never by the thread that waits. It costs that thread a network
//! round trip per read, which on a tokio worker holds up its other tasks
//! meanwhile (see the module docs of [`super`]).

use foundationdb::options::StreamingMode;
use foundationdb::{FdbError, KeySelector, RangeOption, Transaction};
use futures::executor::block_on;
use futures::future::try_join_all;

use super::layout::{self, Layout, Row};
use crate::store::{KeyValue, ReadTxn, StoreError};

/// Why a read failed.
#[derive(Debug)]
pub(super) enum ReadError {
    /// FoundationDB failed; the transaction may be retried (`on_error`).
    Fdb(FdbError),
    /// The data or the request is wrong; retrying will not help.
    Store(StoreError),
}

impl From<FdbError> for ReadError {
    fn from(e: FdbError) -> Self {
        Self::Fdb(e)
    }
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// A FoundationDB error as the store reports it.
pub(super) fn store_error(e: FdbError) -> StoreError {
    if unavailable(e) {
        StoreError::Unavailable(format!("FoundationDB error {}: {e}", e.code()))
    } else {
        StoreError::Backend(format!("FoundationDB error {}: {e}", e.code()))
    }
}

/// Errors that mean the cluster could not serve in time rather than that
/// the request was wrong: the transaction timed out (its retries included),
/// or a transient error outlived the retries.
pub(super) fn unavailable(e: FdbError) -> bool {
    const TIMED_OUT: i32 = 1004;
    const TRANSACTION_TIMED_OUT: i32 = 1031;
    matches!(e.code(), TIMED_OUT | TRANSACTION_TIMED_OUT) || e.is_retryable()
}

/// Reads of store keys through one transaction.
pub(super) struct Reads<'a> {
    pub(super) tr: &'a Transaction,
    pub(super) layout: &'a Layout,
    /// Snapshot reads add no read conflicts: for read-only transactions.
    pub(super) snapshot: bool,
}

/// A value read, if any, and whether it was stored in parts.
pub(super) type Found = (Option<Vec<u8>>, bool);

/// What a data row says about a key, before its parts are fetched.
enum Stored {
    Absent,
    Value(Vec<u8>),
    Parts { parts: u32, len: u64 },
}

impl Reads<'_> {
    fn check_key(&self, key: &[u8]) -> Result<(), StoreError> {
        if key.len() > layout::max_key(self.layout) {
            return Err(StoreError::Backend(format!(
                "key of {} bytes: FoundationDB keys are limited to {}",
                key.len(),
                layout::max_key(self.layout)
            )));
        }
        Ok(())
    }

    /// The values at `keys`: every data row read at once, then the parts of
    /// the large ones at once. Also says, per key, whether its row held a
    /// parts header (for the writer's parts bookkeeping).
    pub(super) fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Found>, ReadError> {
        for key in keys {
            self.check_key(key)?;
        }
        let rows = keys
            .iter()
            .map(|key| self.tr.get(&self.layout.data_key(key), self.snapshot));
        let rows = block_on(try_join_all(rows))?;
        let found = keys
            .iter()
            .zip(&rows)
            .map(|(key, row)| {
                Ok(match row {
                    None => Stored::Absent,
                    Some(v) => match layout::decode(key, v)? {
                        Row::Inline(v) => Stored::Value(v.to_vec()),
                        Row::Parts { parts, len } => Stored::Parts { parts, len },
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.assemble(keys.iter().copied(), found)
    }

    /// Fetches the parts of the large values among `found` (all at once)
    /// and returns every value, with whether it was large.
    fn assemble<'k>(&self, keys: impl Iterator<Item = &'k [u8]>, found: Vec<Stored>) -> Result<Vec<Found>, ReadError> {
        let keys: Vec<&[u8]> = keys.collect();
        let mut wanted = Vec::new();
        for (key, f) in keys.iter().zip(&found) {
            if let Stored::Parts { parts, .. } = f {
                wanted.extend((0..*parts).map(|i| self.tr.get(&self.layout.part_key(key, i), self.snapshot)));
            }
        }
        let mut fetched = if wanted.is_empty() {
            Vec::new()
        } else {
            block_on(try_join_all(wanted))?
        }
        .into_iter();
        keys.into_iter()
            .zip(found)
            .map(|(key, f)| {
                Ok(match f {
                    Stored::Absent => (None, false),
                    Stored::Value(v) => (Some(v), false),
                    Stored::Parts { parts, len } => {
                        let parts = fetched.by_ref().take(parts as usize).map(|p| p.map(|p| p.to_vec()));
                        (Some(layout::assemble(key, len, parts.collect())?), true)
                    }
                })
            })
            .collect()
    }

    /// Up to `limit` pairs with `begin <= key < end`, ascending or (when
    /// `reverse`) descending: one FoundationDB range read (more round trips
    /// only when the rows exceed a reply's byte limit), then the parts of
    /// any large values at once. Also says, per pair, whether it was large.
    pub(super) fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(KeyValue, bool)>, ReadError> {
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        self.check_key(begin)?;
        self.check_key(end)?;
        let mut option = RangeOption {
            begin: KeySelector::first_greater_or_equal(self.layout.data_key(begin)),
            end: KeySelector::first_greater_or_equal(self.layout.data_key(end)),
            // 0 (None) is "no limit" to FoundationDB; it caps at i32::MAX.
            limit: (limit < i32::MAX as usize).then_some(limit),
            mode: StreamingMode::WantAll,
            reverse,
            ..RangeOption::default()
        };
        let mut keys = Vec::new();
        let mut found = Vec::new();
        for iteration in 1.. {
            let rows = block_on(self.tr.get_range(&option, iteration, self.snapshot))?;
            for row in &rows {
                let key = self.layout.key_of(row.key()).ok_or_else(|| {
                    StoreError::Backend(format!(
                        "range read returned a foreign key {}",
                        row.key().escape_ascii()
                    ))
                })?;
                found.push(match layout::decode(key, row.value())? {
                    Row::Inline(v) => Stored::Value(v.to_vec()),
                    Row::Parts { parts, len } => Stored::Parts { parts, len },
                });
                keys.push(key.to_vec());
            }
            match option.next_range(&rows) {
                Some(next) if keys.len() < limit => option = next,
                _ => break,
            }
        }
        let values = self.assemble(keys.iter().map(Vec::as_slice), found)?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, (v, large))| ((k, v.expect("a row read has a value")), large))
            .collect())
    }
}

/// A read-only transaction for [`Store::read`](crate::store::Store::read):
/// snapshot reads, and the first FoundationDB error kept so the read can be
/// retried as a whole.
pub(super) struct Snapshot<'a> {
    pub(super) reads: Reads<'a>,
    pub(super) error: Option<FdbError>,
}

impl Snapshot<'_> {
    fn noted<T>(&mut self, r: Result<T, ReadError>) -> Result<T, StoreError> {
        noted(&mut self.error, r)
    }
}

/// `r` as a store error, keeping the first FoundationDB error in `first`:
/// it voids the transaction's attempt even if the caller swallows it.
pub(super) fn noted<T>(first: &mut Option<FdbError>, r: Result<T, ReadError>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        ReadError::Fdb(e) => {
            first.get_or_insert(e);
            store_error(e)
        }
        ReadError::Store(e) => e,
    })
}

impl ReadTxn for Snapshot<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.reads.get_many(&[key]);
        Ok(self.noted(r)?.pop().and_then(|(v, _)| v))
    }

    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let r = self.reads.get_many(keys);
        Ok(self.noted(r)?.into_iter().map(|(v, _)| v).collect())
    }

    /// Snapshot reads are cached by the transaction too.
    fn prefetch(&mut self, keys: &[&[u8]]) -> Result<(), StoreError> {
        self.get_many(keys).map(drop)
    }

    fn range(&mut self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError> {
        let r = self.reads.range(begin, end, limit, reverse);
        Ok(self.noted(r)?.into_iter().map(|(kv, _)| kv).collect())
    }
}
