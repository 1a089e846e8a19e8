//! The embedded default store: one redb file in the data directory, with
//! group commit.
//!
//! redb (pure Rust, ACID, copy-on-write B-trees, one writer at a time) gives
//! ordered keys, range reads, MVCC read snapshots and an fsync per commit. An
//! fsync costs milliseconds, so committing each message alone would cap a
//! server at a few hundred messages per second. Instead one writer thread
//! drains the queue: it runs every queued closure against one redb write
//! transaction and commits once, so N concurrent writes cost one fsync. Each
//! closure buffers its writes in an overlay and only a closure that returns
//! [`Outcome::Commit`] has them applied, so a failed request inside a batch
//! leaves no trace while its neighbours commit.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{BoxFuture, KeyValue, OnDurable, Outcome, ReadTxn, Store, StoreError, StoreStats, Txn, WriteFn};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// Most writes folded into one commit. Bounds the latency a write can add to
/// its batch-mates and the work lost to one failed commit.
const MAX_BATCH: usize = 1024;

enum Cmd {
    Write(WriteFn, OnDurable),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    keys: AtomicU64,
    commit_micros: AtomicU64,
    max_commit_micros: AtomicU64,
}

/// The embedded store. Cheap to share behind an `Arc`.
pub struct EmbeddedStore {
    db: Arc<Database>,
    tx: mpsc::Sender<Cmd>,
    counters: Arc<Counters>,
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`. `queue` bounds the writes
    /// waiting for the writer thread; beyond it, writers wait.
    pub fn open(path: &Path, queue: usize) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        // Create the table so read transactions never see it missing.
        let w = db.begin_write().map_err(backend)?;
        w.open_table(KV).map_err(backend)?;
        w.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(queue.max(1));
        let counters = Arc::new(Counters::default());
        let (d, c) = (db.clone(), counters.clone());
        std::thread::Builder::new()
            .name("quip-store-writer".into())
            .spawn(move || writer_loop(&d, rx, &c))
            .map_err(backend)?;
        Ok(Self { db, tx, counters })
    }
}

impl Store for EmbeddedStore {
    fn enqueue(&self, job: WriteFn, on_durable: OnDurable) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.tx
                .send(Cmd::Write(job, on_durable))
                .await
                .map_err(|_| StoreError::Closed)
        })
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn ReadTxn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let r = self.db.begin_read().map_err(backend)?;
        let table = r.open_table(KV).map_err(backend)?;
        f(&mut Snapshot { table: &table })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.tx.send(Cmd::Shutdown(tx)).await.is_ok() {
                let _ = rx.await;
            }
        })
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            keys_written: self.counters.keys.load(Ordering::Relaxed),
            commit_micros: self.counters.commit_micros.load(Ordering::Relaxed),
            max_commit_micros: self.counters.max_commit_micros.load(Ordering::Relaxed),
        }
    }
}

fn writer_loop(db: &Database, mut rx: mpsc::Receiver<Cmd>, counters: &Counters) {
    let mut batch: Vec<(WriteFn, OnDurable)> = Vec::with_capacity(MAX_BATCH);
    let mut shutdown = None;
    while shutdown.is_none() {
        let Some(first) = rx.blocking_recv() else { break };
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Write(f, done) => batch.push((f, done)),
                Cmd::Shutdown(ack) => {
                    shutdown = Some(ack);
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            commit_batch(db, &mut batch, counters);
        }
    }
    // Refuse what arrives after shutdown: dropping the receiver fails senders.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        if let Cmd::Write(_, done) = cmd {
            done(Err(StoreError::Closed));
        }
    }
    if let Some(ack) = shutdown {
        let _ = ack.send(());
    }
}

fn commit_batch(db: &Database, batch: &mut Vec<(WriteFn, OnDurable)>, counters: &Counters) {
    let started = std::time::Instant::now();
    let result = (|| -> Result<u64, StoreError> {
        let mut w = db.begin_write().map_err(backend)?;
        // The default, stated: commit returns only after fsync. Replies to
        // writes ("sent" ticks) depend on it.
        w.set_durability(Durability::Immediate).map_err(backend)?;
        let mut keys = 0u64;
        {
            let mut table = w.open_table(KV).map_err(backend)?;
            for (f, _) in batch.iter_mut() {
                let mut overlay = Overlay {
                    base: &table,
                    writes: BTreeMap::new(),
                    error: None,
                };
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut overlay)))
                    .unwrap_or_else(|_| {
                        tracing::error!("write closure panicked; its writes are discarded");
                        Outcome::Rollback
                    });
                let Overlay { writes, error, .. } = overlay;
                if let Some(e) = error {
                    // The closure saw a backend failure; the whole commit is suspect.
                    return Err(e);
                }
                if outcome == Outcome::Commit {
                    for (k, v) in writes {
                        keys += 1;
                        match v {
                            Some(v) => {
                                table.insert(k.as_slice(), v.as_slice()).map_err(backend)?;
                            }
                            None => {
                                table.remove(k.as_slice()).map_err(backend)?;
                            }
                        }
                    }
                }
            }
        }
        w.commit().map_err(backend)?;
        Ok(keys)
    })();
    counters.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    counters.commit_micros.fetch_add(micros, Ordering::Relaxed);
    counters.max_commit_micros.fetch_max(micros, Ordering::Relaxed);
    match result {
        Ok(keys) => {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            counters.keys.fetch_add(keys, Ordering::Relaxed);
            // In queue order: callers that publish from here publish in
            // commit order.
            for (_, done) in batch.drain(..) {
                done(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, jobs = batch.len(), "group commit failed");
            for (_, done) in batch.drain(..) {
                done(Err(e.clone()));
            }
        }
    }
}

/// A read snapshot.
struct Snapshot<'a> {
    table: &'a redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl ReadTxn for Snapshot<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.table.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn range(&mut self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        let iter = self.table.range::<&[u8]>(begin..end).map_err(backend)?;
        collect(iter, limit, reverse)
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

fn collect<'a, I>(iter: I, limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError>
where
    I: DoubleEndedIterator<Item = Guarded<'a>>,
{
    let conv = |r: Guarded<'a>| {
        r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
            .map_err(backend)
    };
    if reverse {
        iter.rev().take(limit).map(conv).collect()
    } else {
        iter.take(limit).map(conv).collect()
    }
}

/// One closure's view inside a group commit: reads fall through to the
/// batch's table (which holds earlier closures' applied writes); writes stay
/// here until the closure decides to commit.
struct Overlay<'a, 't> {
    base: &'a redb::Table<'t, &'static [u8], &'static [u8]>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// A backend error seen by a read; fails the batch.
    error: Option<StoreError>,
}

impl ReadTxn for Overlay<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        match self.base.get(key) {
            Ok(v) => Ok(v.map(|v| v.value().to_vec())),
            Err(e) => {
                let e = backend(e);
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn range(&mut self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Result<Vec<KeyValue>, StoreError> {
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let base = match self.base.range::<&[u8]>(begin..end) {
            Ok(r) => r,
            Err(e) => {
                let e = backend(e);
                self.error = Some(e.clone());
                return Err(e);
            }
        };
        let ours = self
            .writes
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
        let base = base.map(|r| r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())));
        let merged = if reverse {
            merge(base.rev(), ours.rev(), limit, |a, b| b.cmp(a))
        } else {
            merge(base, ours, limit, |a, b| a.cmp(b))
        };
        merged
            .inspect_err(|e| {
                self.error = Some(backend(e));
            })
            .map_err(backend)
    }
}

/// Merges the base scan with the overlay's writes in scan order; the overlay
/// wins on equal keys and its `None` hides a base key.
fn merge<'o, B, O>(
    base: B,
    ours: O,
    limit: usize,
    order: impl Fn(&[u8], &[u8]) -> std::cmp::Ordering,
) -> Result<Vec<KeyValue>, redb::StorageError>
where
    B: Iterator<Item = Result<KeyValue, redb::StorageError>>,
    O: Iterator<Item = (&'o Vec<u8>, &'o Option<Vec<u8>>)>,
{
    use std::cmp::Ordering::*;
    let mut base = base.peekable();
    let mut ours = ours.peekable();
    let mut out = Vec::new();
    while out.len() < limit {
        let pick_ours = match (base.peek(), ours.peek()) {
            (None, None) => break,
            (Some(Err(_)), _) => return Err(base.next().expect("peeked").expect_err("peeked error")),
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (Some(Ok((bk, _))), Some((ok, _))) => match order(bk, ok) {
                Less => false,
                Greater => true,
                Equal => {
                    base.next(); // shadowed by ours
                    true
                }
            },
        };
        if pick_ours {
            let (k, v) = ours.next().expect("peeked");
            if let Some(v) = v {
                out.push((k.clone(), v.clone()));
            }
        } else {
            out.push(base.next().expect("peeked")?);
        }
    }
    Ok(out)
}

impl Txn for Overlay<'_, '_> {
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
    use crate::store::conformance;

    fn open() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("quip.redb"), 1024).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn conformance_suite() {
        let (_dir, store) = open();
        conformance::run_all(&store).await;
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits() {
        let (_dir, store) = open();
        // Queue 200 writes without waiting: while the writer fsyncs one
        // batch, the rest pile up and go into the next commit together.
        let mut pending = Vec::new();
        for i in 0..200u32 {
            pending.push(
                crate::store::enqueue_write(&store, move |t| {
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
        assert_eq!(stats.writes, 200);
        assert_eq!(stats.keys_written, 200);
        assert!(
            stats.commits < 100,
            "{} commits for 200 writes: no batching",
            stats.commits
        );
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quip.redb");
        {
            let store = EmbeddedStore::open(&path, 16).unwrap();
            crate::store::write(&store, |t| {
                t.set(b"k", b"v");
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
            store.shutdown().await;
        }
        // The writer thread holds the database until it exits.
        let store = loop {
            match EmbeddedStore::open(&path, 16) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        };
        let v = crate::store::read(&store, |t| t.get(b"k")).unwrap();
        assert_eq!(v.as_deref(), Some(&b"v"[..]));
    }
}
