//! The B-tree engine: one redb file. Kept for data directories created
//! before the log-structured engine became the default (a `quip.redb` in the
//! data directory selects it) and as a second engine for the conformance
//! suite and benchmarks.
//!
//! redb (pure Rust, ACID, copy-on-write B-trees, one writer at a time) gives
//! ordered keys, range reads, MVCC read snapshots and an fsync per commit.
//! Its commit rewrites every page on the paths a batch touched, which is
//! what made it the latency floor (benches/README.md).

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::commit::{Engine, GroupCommit, Job};
use super::overlay::{Base, Reader, Scan, run_job};
use super::{ReadTxn, StoreError};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// A store on one redb file, with group commit.
pub type RedbStore = GroupCommit<RedbEngine>;

/// The redb engine (see [`RedbStore`]).
pub struct RedbEngine {
    db: Database,
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store in the file at `path`. `queue` bounds the
    /// writes waiting for the writer thread; beyond it, writers wait.
    pub fn open(path: &Path, queue: usize) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        // Create the table so read transactions never see it missing.
        let w = db.begin_write().map_err(backend)?;
        w.open_table(KV).map_err(backend)?;
        w.commit().map_err(backend)?;
        GroupCommit::start(RedbEngine { db }, queue)
    }
}

/// redb has one write transaction at a time, in which the closures read
/// their batch-mates' writes, so a batch is run and made durable in one
/// step on the writer thread; only its callbacks wait for the committer.
impl Engine for RedbEngine {
    type Batch = ();

    fn prepare(&self, jobs: &mut [Job], _in_flight: Option<&()>) -> Result<((), u64), StoreError> {
        self.commit(jobs).map(|keys| ((), keys))
    }

    fn apply(&self, (): &()) -> Result<(), StoreError> {
        Ok(())
    }

    fn settled(&self, (): &(), _applied: bool) {}

    fn read(&self, f: &mut dyn FnMut(&mut dyn ReadTxn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let r = self.db.begin_read().map_err(backend)?;
        let table = r.open_table(KV).map_err(backend)?;
        f(&mut Reader(&Table(&table)))
    }
}

impl RedbEngine {
    /// Runs `jobs` in one write transaction and commits it (with fsync).
    fn commit(&self, jobs: &mut [Job]) -> Result<u64, StoreError> {
        let mut w = self.db.begin_write().map_err(backend)?;
        // The default, stated: commit returns only after fsync. Replies to
        // writes ("sent" ticks) depend on it.
        w.set_durability(Durability::Immediate).map_err(backend)?;
        let mut keys = 0u64;
        {
            let mut table = w.open_table(KV).map_err(backend)?;
            for (f, _) in jobs.iter_mut() {
                let Some(writes) = run_job(&Table(&table), f)? else {
                    continue;
                };
                for (k, v) in writes {
                    keys += 1;
                    match v {
                        Some(v) => table.insert(k.as_slice(), v.as_slice()).map(drop),
                        None => table.remove(k.as_slice()).map(drop),
                    }
                    .map_err(backend)?;
                }
            }
        }
        w.commit().map_err(backend)?;
        Ok(keys)
    }
}

/// One entry of a redb range scan.
type Guarded<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

/// A redb table (the batch's write table, or a read snapshot's) as a [`Base`].
struct Table<'t, T>(&'t T);

impl<T: ReadableTable<&'static [u8], &'static [u8]>> Base for Table<'_, T> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn scan<'a>(&'a self, begin: &[u8], end: &[u8], reverse: bool) -> Result<Scan<'a>, StoreError> {
        let range = self.0.range::<&[u8]>(begin..end).map_err(backend)?;
        let owned = |r: Guarded<'_>| {
            r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .map_err(backend)
        };
        Ok(if reverse {
            Box::new(range.rev().map(owned))
        } else {
            Box::new(range.map(owned))
        })
    }
}
