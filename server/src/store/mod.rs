//! The storage abstraction: serializable transactions over one ordered keyspace.
//!
//! The trait is shaped after FoundationDB, the scale-out backend: keys and
//! values are byte strings, reads are point gets and range scans, writes are
//! buffered in the transaction and become visible atomically at commit. The
//! domain code in [`crate::service`] is written only against [`Txn`], so a
//! backend that offers these semantics can replace the embedded one.
//!
//! # Write path
//! A write is a closure over a [`Txn`]. [`Store::enqueue`] hands it to the
//! backend and returns once it is queued; the write's [`OnDurable`] callback
//! runs once it is durable (or failed). Splitting the two lets a connection
//! pipeline writes: it enqueues request after request in order, and awaits
//! their commits later. Backends apply queued writes in the order they were
//! enqueued and run the callbacks in that same order, so whatever a callback
//! publishes (live events) goes out in commit order, with no lock of its own.
//!
//! A closure that returns [`Outcome::Rollback`] leaves no trace, even when it
//! shares a commit with others (group commit).
//!
//! # Backends
//! - [`lsm`] and [`btree`]: the embedded engines in the data directory,
//!   under the group-commit writer of [`commit`].
//! - `fdb` (with the `fdb` cargo feature): a FoundationDB cluster, which
//!   several quipd nodes can share.
//! - [`memory`]: a map in memory, for unit tests.
//!
//! [`open`] picks one from the configuration.

pub mod btree;
pub mod commit;
pub mod conformance;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod lsm;
pub mod memory;
mod overlay;
mod writes;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The embedded engines a data directory can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// Log-structured (fjall) in `<dir>/db`: a commit is a journal append.
    Lsm,
    /// Copy-on-write B-tree (redb) in `<dir>/quip.redb`.
    Redb,
}

/// Where a quipd keeps its data (`--store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StoreKind {
    /// An embedded engine in the data directory (`--store-engine`).
    #[default]
    Embedded,
    /// A FoundationDB cluster (`--fdb-cluster-file`, `--fdb-prefix`), which
    /// several quipd nodes may share. Needs a quipd built with the `fdb`
    /// cargo feature.
    Fdb,
}

/// What a quipd built without the `fdb` feature says to `--store fdb`.
pub const NO_FDB_SUPPORT: &str = "this quipd was built without FoundationDB support: build with --features fdb";

/// File name of a redb database in a data directory.
const REDB_FILE: &str = "quip.redb";

/// Opens the store the configuration names: the embedded one in the data
/// directory ([`open_in`]), or a FoundationDB cluster.
pub fn open(config: &crate::Config) -> Result<Arc<dyn Store>, StoreError> {
    match config.store {
        StoreKind::Embedded => open_in(&config.data_dir, config.store_engine, config.write_queue),
        StoreKind::Fdb => open_fdb(config),
    }
}

#[cfg(feature = "fdb")]
fn open_fdb(config: &crate::Config) -> Result<Arc<dyn Store>, StoreError> {
    let options = fdb::FdbOptions {
        cluster_file: config.fdb_cluster_file.clone(),
        prefix: config.fdb_prefix.clone(),
        queue: config.write_queue,
        timeout_ms: config.fdb_timeout_ms,
    };
    Ok(Arc::new(fdb::FdbStore::open(&options)?))
}

#[cfg(not(feature = "fdb"))]
fn open_fdb(_: &crate::Config) -> Result<Arc<dyn Store>, StoreError> {
    Err(StoreError::Backend(NO_FDB_SUPPORT.into()))
}

/// Opens the embedded store in the data directory `dir`: `engine`, or when
/// `None` the engine the directory already holds (lsm for a new one).
pub fn open_in(dir: &std::path::Path, engine: Option<EngineKind>, queue: usize) -> Result<Arc<dyn Store>, StoreError> {
    let redb = dir.join(REDB_FILE);
    let engine = engine.unwrap_or(if redb.exists() {
        EngineKind::Redb
    } else {
        EngineKind::Lsm
    });
    Ok(match engine {
        EngineKind::Lsm => Arc::new(lsm::LsmStore::open(&dir.join("db"), queue)?),
        EngineKind::Redb => Arc::new(btree::RedbStore::open(&redb, queue)?),
    })
}

/// Storage failures. Domain errors (not a participant, …) are not store errors.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (I/O, corruption, commit failure). The write did not happen.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The store is shut down and accepts no more work.
    #[error("store is closed")]
    Closed,
    /// The store cannot be reached now (a FoundationDB cluster down or
    /// recovering past the transaction timeout). A write either did not
    /// happen or, where the message says so, may have: retrying it is safe,
    /// as every write a client can retry is idempotent.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The backend cannot do this (versionstamps and watches need
    /// FoundationDB: a cluster cannot run on an embedded store).
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
    /// A stored value could not be decoded.
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt {
        /// The key, escaped for printing.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

/// A key and its value, as range reads return them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Whether a write closure's buffered writes should be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Apply this closure's writes in the next commit.
    Commit,
    /// Discard this closure's writes.
    Rollback,
}

/// Reads inside a transaction. Reads see the transaction's own earlier writes.
pub trait ReadTxn {
    /// The value at `key`.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Up to `limit` pairs with `begin <= key < end`, ascending, or descending
    /// when `reverse` (then the `limit` highest keys of the range).
    fn range(&mut self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError>;

    /// The values at `keys`, in the same order (a key may appear twice).
    /// Like a `get` per key, but a networked backend issues them all at
    /// once: one round trip instead of one per key. The default does the
    /// gets one after another, which costs nothing extra in memory or on a
    /// local disk.
    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|key| self.get(key)).collect()
    }

    /// Says that `keys` are about to be read one by one: a networked store
    /// fetches them together now (one round trip) and answers the reads
    /// from its transaction's cache, so code that reads per member of a
    /// group costs O(1) round trips however large the group. The default,
    /// for local engines whose reads are cheap, does nothing.
    fn prefetch(&mut self, keys: &[&[u8]]) -> Result<(), StoreError> {
        let _ = keys;
        Ok(())
    }
}

/// A read-write transaction.
pub trait Txn: ReadTxn {
    /// Sets `key` to `value`.
    fn set(&mut self, key: &[u8], value: &[u8]);
    /// Removes `key` (no-op when absent).
    fn clear(&mut self, key: &[u8]);

    /// Adds `delta` to the little-endian i64 at `key` (absent counts as 0)
    /// without reading it, so concurrent adds never conflict (FoundationDB's
    /// `ADD`). The default reads and writes, which is the same for engines
    /// with one writer.
    fn atomic_add(&mut self, key: &[u8], delta: i64) -> Result<(), StoreError> {
        let old = self.get(key)?.map_or(0, |v| {
            let mut le = [0u8; 8];
            let n = v.len().min(8);
            le[..n].copy_from_slice(&v[..n]);
            i64::from_le_bytes(le)
        });
        self.set(key, &old.wrapping_add(delta).to_le_bytes());
        Ok(())
    }

    /// Sets the key `prefix ‖ versionstamp ‖ order` to `value`, where the
    /// versionstamp (10 bytes) grows with commit order across everything
    /// sharing the store, and `order` (2 bytes, big-endian) numbers this
    /// transaction's versionstamped writes. The key is unknown until commit,
    /// so it cannot be read back in the same transaction, and appending
    /// this way never conflicts. Only FoundationDB has versionstamps.
    fn set_versionstamped(&mut self, prefix: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let _ = (prefix, value);
        Err(StoreError::Unsupported("versionstamped keys"))
    }
}

/// A write closure. It may be run more than once by backends that retry on
/// conflict (FoundationDB), so it must not have effects outside the `Txn`.
pub type WriteFn = Box<dyn FnMut(&mut dyn Txn) -> Outcome + Send>;

/// Called once per write when it is durable (`Ok`) or failed (`Err`: nothing
/// of it was stored), in queue order. It runs on the backend's commit path,
/// so it must be quick and must not block: hand work off, don't do it.
pub type OnDurable = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A boxed future, for a dyn-compatible trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A transactional ordered key-value store.
pub trait Store: Send + Sync + 'static {
    /// Queues a write. Resolves when queued (waiting if the queue is full:
    /// that is the backpressure on writers); writes are applied, and their
    /// `on_durable` callbacks called, in queue order. If this returns an
    /// error, `on_durable` is dropped without being called.
    fn enqueue(&self, job: WriteFn, on_durable: OnDurable) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Runs `f` in a read-only snapshot on the calling thread. A networked
    /// backend may run `f` again from the start, in a fresh snapshot, after
    /// a transient error: `f` must keep only what its last run produced.
    fn read(&self, f: &mut dyn FnMut(&mut dyn ReadTxn) -> Result<(), StoreError>) -> Result<(), StoreError>;

    /// Finishes every queued write, then refuses new ones.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// Counters for tests and benchmarks.
    fn stats(&self) -> StoreStats;

    /// Resolves once the value at `key` is no longer `seen` (absent: `None`),
    /// or at once if it already differs. It may also resolve spuriously;
    /// callers read again. Pair it with a read of `key` in the same snapshot
    /// as the data it guards, so no change between the two is missed. Only
    /// FoundationDB has watches.
    fn watch(&self, key: &[u8], seen: Option<Vec<u8>>) -> BoxFuture<'_, Result<(), StoreError>> {
        let _ = (key, seen);
        Box::pin(async { Err(StoreError::Unsupported("watches")) })
    }

    /// Whether several quipd nodes may share this store (it has
    /// versionstamps and watches: [`crate::cluster`]).
    fn clustered(&self) -> bool {
        false
    }
}

/// How the store has been used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable commits (each one fsync).
    pub commits: u64,
    /// Write closures applied or rolled back.
    pub writes: u64,
    /// Key-value pairs set or cleared.
    pub keys_written: u64,
    /// Time spent in commits (applying the batch and fsync), microseconds.
    pub commit_micros: u64,
    /// The longest single commit, microseconds.
    pub max_commit_micros: u64,
    /// Commits the backend rejected for a conflict with another writer's
    /// commit (FoundationDB's `not_committed`); their batches were run again.
    /// Always 0 for the embedded engines, which have a single writer.
    pub conflicts: u64,
    /// Batches run again for any transient error, conflicts included.
    pub retries: u64,
}

/// A queued typed write; [`wait`](Self::wait) gives its result once durable.
#[must_use = "a pending write reports its result only when awaited"]
pub struct PendingWrite<T> {
    committed: oneshot::Receiver<Result<(), StoreError>>,
    slot: Arc<Mutex<Option<T>>>,
}

impl<R, E: From<StoreError>> PendingWrite<Result<R, E>> {
    /// Waits until the write is durable and returns what the closure returned.
    pub async fn wait(self) -> Result<R, E> {
        match self.committed.await {
            Ok(Ok(())) => self
                .slot
                .lock()
                .expect("slot lock")
                .take()
                .unwrap_or_else(|| Err(StoreError::Backend("write closure never ran".into()).into())),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StoreError::Closed.into()),
        }
    }
}

/// Queues `f` as a write: `Ok` results commit, `Err` results roll back.
pub async fn enqueue_write<R, E, F>(store: &dyn Store, f: F) -> Result<PendingWrite<Result<R, E>>, E>
where
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnMut(&mut dyn Txn) -> Result<R, E> + Send + 'static,
{
    enqueue_write_then(store, f, |_: &mut R| {}).await
}

/// Like [`enqueue_write`], and once the write is durable runs `then` on its
/// result, in commit order, before the [`PendingWrite`] resolves. Use it to
/// publish what a write produced in the order writes were committed; `then`
/// runs on the store's commit path, so it must only hand work off.
pub async fn enqueue_write_then<R, E, F, G>(
    store: &dyn Store,
    mut f: F,
    then: G,
) -> Result<PendingWrite<Result<R, E>>, E>
where
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnMut(&mut dyn Txn) -> Result<R, E> + Send + 'static,
    G: FnOnce(&mut R) + Send + 'static,
{
    let slot = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let job: WriteFn = Box::new(move |txn| {
        let r = f(txn);
        let outcome = if r.is_ok() { Outcome::Commit } else { Outcome::Rollback };
        *out.lock().expect("slot lock") = Some(r);
        outcome
    });
    let (done, committed) = oneshot::channel();
    let result = slot.clone();
    let on_durable: OnDurable = Box::new(move |r| {
        if r.is_ok()
            && let Some(Ok(value)) = result.lock().expect("slot lock").as_mut()
        {
            then(value);
        }
        let _ = done.send(r);
    });
    store.enqueue(job, on_durable).await?;
    Ok(PendingWrite { committed, slot })
}

/// Runs `f` as a write and waits for it to be durable.
pub async fn write<R, E, F>(store: &dyn Store, f: F) -> Result<R, E>
where
    R: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnMut(&mut dyn Txn) -> Result<R, E> + Send + 'static,
{
    enqueue_write(store, f).await?.wait().await
}

/// Runs `f` in a read snapshot and returns its result.
pub fn read<R, E, F>(store: &dyn Store, mut f: F) -> Result<R, E>
where
    E: From<StoreError>,
    F: FnMut(&mut dyn ReadTxn) -> Result<R, E>,
{
    let mut result = None;
    store
        .read(&mut |txn| {
            result = Some(f(txn));
            Ok(())
        })
        .map_err(E::from)?;
    result.expect("read closure ran")
}

/// The smallest key greater than every key starting with `prefix`, for range
/// ends (FoundationDB's `strinc`). `None` if the prefix is all 0xff.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENGINES: [EngineKind; 2] = [EngineKind::Lsm, EngineKind::Redb];

    #[tokio::test]
    async fn conformance_suite() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let store = open_in(dir.path(), Some(engine), 1024).unwrap();
            conformance::run_all(&*store).await;
        }
    }

    #[tokio::test]
    async fn conformance_suite_on_a_used_store() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let store = open_in(dir.path(), Some(engine), 1024).unwrap();
            conformance::run_all_on_used_store(&*store).await;
        }
    }

    /// `--store fdb` on a quipd built without the feature says how to get it.
    #[cfg(not(feature = "fdb"))]
    #[test]
    fn fdb_without_the_feature_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config {
            store: StoreKind::Fdb,
            ..crate::Config::for_tests(dir.path())
        };
        let err = open(&config).err().expect("no FoundationDB in this build");
        assert!(err.to_string().contains(NO_FDB_SUPPORT), "{err}");
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let store = open_in(dir.path(), Some(engine), 1024).unwrap();
            // Queue 200 writes without waiting: while the writer syncs one
            // batch, the rest pile up and go into the next commit together.
            let mut pending = Vec::new();
            for i in 0..200u32 {
                pending.push(
                    enqueue_write(&*store, move |t| {
                        t.set(&i.to_be_bytes(), b"v");
                        Ok::<_, StoreError>(())
                    })
                    .await
                    .unwrap(),
                );
            }
            for p in pending {
                p.wait().await.unwrap();
            }
            let stats = store.stats();
            assert_eq!(stats.writes, 200, "{engine:?}");
            assert_eq!(stats.keys_written, 200, "{engine:?}");
            assert!(
                stats.commits < 100,
                "{engine:?}: {} commits for 200 writes: no batching",
                stats.commits
            );
        }
    }

    #[tokio::test]
    async fn data_survives_reopen_and_the_engine_is_kept() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = open_in(dir.path(), Some(engine), 16).unwrap();
                write(&*store, |t| {
                    t.set(b"k", b"v");
                    Ok::<_, StoreError>(())
                })
                .await
                .unwrap();
                store.shutdown().await;
            }
            // Reopened without naming the engine: the directory's own is
            // used. The writer thread holds the database until it exits.
            let store = loop {
                match open_in(dir.path(), None, 16) {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                }
            };
            let v = read(&*store, |t| t.get(b"k")).unwrap();
            assert_eq!(v.as_deref(), Some(&b"v"[..]), "{engine:?}");
        }
    }
}
