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
//!
//! The write closures' point reads go through a cache of hot keys first
//! (`HotCache`): a send reads the same few records (chat head, log heads,
//! cursors) that the previous send to that chat just wrote, and a memtable
//! lookup is a skip-list walk of cache misses on the one thread every write
//! waits for.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Mutex;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Snapshot};

use super::commit::{Engine, GroupCommit, Job};
use super::overlay::{Base, Layered, Reader, Scan, Writes, run_job_in};
use super::{KeyValue, ReadTxn, StoreError};

/// A store on a fjall database, with group commit.
pub type LsmStore = GroupCommit<LsmEngine>;

/// The fjall engine (see [`LsmStore`]).
pub struct LsmEngine {
    db: Database,
    kv: Keyspace,
    /// Only the writer thread takes it (once to prepare a batch, once to
    /// settle one; the committer never does): a Mutex only because the
    /// engine is shared with the committer's and readers' threads.
    hot: Mutex<HotCache>,
}

/// Committed values of keys the write closures read, `None` for absent
/// keys, kept equal to the keyspace: filled from it on a miss, and after each
/// durable commit every written key already cached takes its new value.
/// Nothing else writes the keyspace, and a batch's values enter only once
/// fjall has them, so a hit is always what the keyspace would say.
/// Written-but-unread keys (message bodies, log entries) never enter.
type HotCache = quick_cache::unsync::Cache<Vec<u8>, Option<Vec<u8>>, EntryBytes, foldhash::fast::RandomState>;

/// Bytes a hot-cache budget is counted in.
const HOT_CACHE_BYTES: u64 = 16 << 20;

/// An entry's weight: its key and value plus the map's own overhead.
#[derive(Clone)]
struct EntryBytes;

impl quick_cache::Weighter<Vec<u8>, Option<Vec<u8>>> for EntryBytes {
    fn weight(&self, key: &Vec<u8>, value: &Option<Vec<u8>>) -> u64 {
        (key.len() + value.as_ref().map_or(0, Vec::len) + 64) as u64
    }
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
        GroupCommit::start(LsmEngine::open(path)?, queue)
    }
}

impl LsmEngine {
    /// Opens (or creates) the fjall database in the directory `path`.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder(path).open().map_err(backend)?;
        let kv = db.keyspace("kv", KeyspaceCreateOptions::default).map_err(backend)?;
        let hot = HotCache::with(
            HOT_CACHE_BYTES as usize / 256,
            HOT_CACHE_BYTES,
            EntryBytes,
            foldhash::fast::RandomState::default(),
            Default::default(),
        );
        Ok(Self {
            db,
            kv,
            hot: Mutex::new(hot),
        })
    }
}

impl Engine for LsmEngine {
    type Batch = Writes;

    fn prepare(&self, jobs: &mut [Job], in_flight: Option<&Writes>) -> Result<(Writes, u64), StoreError> {
        let mut hot = self.hot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let hot_cell = RefCell::new(&mut *hot);
        let committed = Committed {
            kv: &self.kv,
            hot: &hot_cell,
        };
        let pending;
        let under: &dyn Base = match in_flight {
            Some(writes) => {
                pending = Layered {
                    writes,
                    under: &committed,
                };
                &pending
            }
            None => &committed,
        };
        let mut batch = Writes::new();
        let mut keys = 0u64;
        for (f, _) in jobs.iter_mut() {
            match run_job_in(&mut batch, under, f) {
                Ok(n) => keys += n.unwrap_or(0),
                Err(e) => {
                    // Whether the failed read left the cache behind the
                    // keyspace is unknown: forget it rather than risk a
                    // stale hit.
                    hot_cell.borrow_mut().clear();
                    return Err(e);
                }
            }
        }
        Ok((batch, keys))
    }

    fn apply(&self, batch: &Writes) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        // fdatasync before the memtable sees it: "sent" means on disk.
        let mut w = self.db.batch().durability(Some(PersistMode::SyncData));
        for (k, v) in batch.iter() {
            match v {
                Some(v) => w.insert(&self.kv, k.as_slice(), v.as_slice()),
                None => w.remove(&self.kv, k.as_slice()),
            }
        }
        w.commit().map_err(backend)
    }

    fn settled(&self, batch: &Writes, applied: bool) {
        let mut hot = self.hot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !applied {
            // Whether fjall kept any of a failed batch is unknown: forget
            // everything rather than risk a stale hit.
            hot.clear();
            return;
        }
        for (k, v) in batch.iter() {
            // In place: one lookup per written key, and most written keys
            // (message bodies, log entries) are not cached at all. The
            // entry's weight is recounted when the slot is dropped.
            if let Some(mut slot) = hot.peek_mut(k.as_slice()) {
                slot.clone_from(v);
            }
        }
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

/// The committed keyspace, through the hot-key cache: what the batch in
/// progress lies on. Only the committer thread writes it, one batch at a
/// time and durable first, and while it does, that batch is laid on top
/// ([`Layered`]): a key it writes is never read from here until it is
/// settled, so no read depends on how far its apply has got.
struct Committed<'a, 'h> {
    kv: &'a Keyspace,
    hot: &'a RefCell<&'h mut HotCache>,
}

impl Base for Committed<'_, '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.hot.borrow().get(key) {
            return Ok(v.clone());
        }
        let v = self.kv.get(key).map_err(backend)?.map(|v| v.to_vec());
        self.hot.borrow_mut().insert(key.to_vec(), v.clone());
        Ok(v)
    }

    fn scan<'a>(&'a self, begin: &[u8], end: &[u8], reverse: bool) -> Result<Scan<'a>, StoreError> {
        let iter = self.kv.range(begin..end);
        Ok(if reverse {
            Box::new(iter.rev().map(owned))
        } else {
            Box::new(iter.map(owned))
        })
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
