//! The log-structured engine, the default: a fjall database (an LSM tree)
//! in `<data-dir>/db`.
//!
//! A commit is one append to fjall's journal and an fdatasync, then inserts
//! into the in-memory table; sorting into files and compaction happen later
//! on fjall's worker threads. That is what a message's latency waits for:
//! a batch of messages costs one sequential append, where a B-tree rewrites
//! a page path per key touched.
//!
//! Each batch is one fjall write batch (one sequence number, applied
//! atomically). The batch persists the journal before its writes reach the
//! memtable and before its sequence number is published to snapshots, so
//! readers never see a write that a crash could still take back.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};

use super::group::{Engine, GroupCommit, Job};
use super::overlay::{Base, Reader, Scan, Writes, merged, run_job};
use super::{KeyValue, ReadTxn, StoreError};

/// A store on a fjall database, with group commit.
pub type LsmStore = GroupCommit<LsmEngine>;

/// The fjall engine (see [`LsmStore`]).
pub struct LsmEngine {
    db: Database,
    kv: Keyspace,
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn owned(g: fjall::Guard) -> Result<KeyValue, StoreError> {
    let (k, v) = g.into_inner().map_err(backend)?;
    Ok((k.to_vec(), v.to_vec()))
}

impl LsmStore {
    /// Opens (or creates) the store in the directory `path`. `queue` bounds
    /// the writes waiting for the writer thread; beyond it, writers wait.
    pub fn open(path: &Path, queue: usize) -> Result<Self, StoreError> {
        let db = Database::builder(path).open().map_err(backend)?;
        let kv = db.keyspace("kv", KeyspaceCreateOptions::default).map_err(backend)?;
        GroupCommit::start(LsmEngine { db, kv }, queue)
    }
}

impl Engine for LsmEngine {
    fn commit(&self, jobs: &mut [Job]) -> Result<u64, StoreError> {
        let mut batch = Writes::new();
        let mut keys = 0u64;
        for (f, _) in jobs.iter_mut() {
            let view = Pending {
                kv: &self.kv,
                batch: &batch,
            };
            let Some(writes) = run_job(&view, f)? else { continue };
            keys += writes.len() as u64;
            batch.extend(writes);
        }
        if batch.is_empty() {
            return Ok(0);
        }
        // fdatasync before the memtable sees it: "sent" means on disk.
        let mut w = self.db.batch().durability(Some(PersistMode::SyncData));
        for (k, v) in batch {
            match v {
                Some(v) => w.insert(&self.kv, k, v),
                None => w.remove(&self.kv, k),
            }
        }
        w.commit().map_err(backend)?;
        Ok(keys)
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn ReadTxn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let snapshot = self.db.snapshot();
        f(&mut Reader(&Snap {
            snapshot: &snapshot,
            kv: &self.kv,
        }))
    }
}

/// A read snapshot.
struct Snap<'a> {
    snapshot: &'a Snapshot,
    kv: &'a Keyspace,
}

impl Base for Snap<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snapshot.get(self.kv, key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn scan<'a>(&'a self, begin: &[u8], end: &[u8], reverse: bool) -> Result<Scan<'a>, StoreError> {
        let iter = self.snapshot.range(self.kv, begin..end);
        Ok(if reverse {
            Box::new(iter.rev().map(owned))
        } else {
            Box::new(iter.map(owned))
        })
    }
}

/// The committed keyspace with the batch so far laid over it: what a write
/// closure reads through its own overlay. Only the writer thread writes, so
/// the keyspace's latest state is the last durable commit.
struct Pending<'a> {
    kv: &'a Keyspace,
    batch: &'a Writes,
}

impl Base for Pending<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.batch.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.kv.get(key).map_err(backend)?.map(|v| v.to_vec())),
        }
    }

    fn scan<'a>(&'a self, begin: &[u8], end: &[u8], reverse: bool) -> Result<Scan<'a>, StoreError> {
        let iter = self.kv.range(begin..end);
        let base: Scan<'a> = if reverse {
            Box::new(iter.rev().map(owned))
        } else {
            Box::new(iter.map(owned))
        };
        Ok(merged(base, self.batch, begin, end, reverse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Servers (and tests, and the fuzzer) open and drop stores many times
    /// in one process: fjall's worker threads must go with the database.
    #[test]
    fn dropping_the_store_stops_its_threads() {
        fn threads() -> usize {
            std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0)
        }
        let before = threads();
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let store = LsmStore::open(dir.path(), 4).unwrap();
            drop(store);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(threads() <= before + 4, "{before} threads before, {} after", threads());
    }
}
