//! An in-memory [`Store`]: one ordered map behind a lock, nothing on disk.
//!
//! It exists so the domain services ([`crate::service`]) can be unit-tested
//! against real transactions without a temporary directory, a writer thread
//! or an fsync per commit: tests build one with [`MemoryStore::new`] and run
//! the same closures the server runs. It is not a data directory engine
//! (quipd's `--store-engine` does not offer it): everything is lost when it
//! is dropped.
//!
//! It keeps the semantics of the trait, as the conformance suite checks
//! ([`super::conformance`]), in the simplest way: each write runs, when its
//! [`Store::enqueue`] future is polled, over an overlay of the map (so a
//! rollback or a panic leaves nothing), is applied at once under the lock,
//! and counts as durable there, so its callback runs before the next write
//! starts. One lock (`queue`) orders writes and their callbacks; readers
//! take only the map's lock, so a callback may read the store.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

use super::overlay::{Base, Reader, Scan, run_job};
use super::{BoxFuture, OnDurable, ReadTxn, Store, StoreError, StoreStats, WriteFn};

/// A [`Store`] held in memory (see the module docs).
#[derive(Default)]
pub struct MemoryStore {
    /// Held for a whole write, callback included: writes and callbacks run
    /// in the order their `enqueue` futures were polled. Also holds the
    /// counters and whether the store is shut down.
    queue: Mutex<Queue>,
    /// The committed data.
    data: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

#[derive(Default)]
struct Queue {
    closed: bool,
    stats: StoreStats,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The queue lock. A panicking callback poisons it; the state it guards
    /// is still consistent (the write was applied and counted first).
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `job` and applies what it kept; the number of keys written.
    fn commit(&self, job: &mut WriteFn) -> Result<u64, StoreError> {
        let writes = {
            let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
            run_job(&Map(&data), job)?
        };
        let Some(writes) = writes else { return Ok(0) };
        let mut data = self.data.write().unwrap_or_else(PoisonError::into_inner);
        let mut keys = 0;
        for (k, v) in writes {
            keys += 1;
            match v {
                Some(v) => data.insert(k, v),
                None => data.remove(&k),
            };
        }
        Ok(keys)
    }
}

impl Store for MemoryStore {
    fn enqueue(&self, mut job: WriteFn, on_durable: OnDurable) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut queue = self.queue();
            if queue.closed {
                return Err(StoreError::Closed);
            }
            let started = Instant::now();
            let result = self.commit(&mut job);
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let stats = &mut queue.stats;
            stats.writes += 1;
            stats.commit_micros += micros;
            stats.max_commit_micros = stats.max_commit_micros.max(micros);
            if let Ok(keys) = &result {
                stats.commits += 1;
                stats.keys_written += keys;
            }
            // Still under the queue lock: the next write's callback cannot
            // overtake this one.
            on_durable(result.map(drop));
            Ok(())
        })
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn ReadTxn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let data = self.data.read().unwrap_or_else(PoisonError::into_inner);
        f(&mut Reader(&Map(&data)))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Writes run to completion under the queue lock, so once we hold
            // it none is half done.
            self.queue().closed = true;
        })
    }

    fn stats(&self) -> StoreStats {
        self.queue().stats
    }
}

/// The committed map as a [`Base`] for overlays and readers.
struct Map<'a>(&'a BTreeMap<Vec<u8>, Vec<u8>>);

impl Base for Map<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).cloned())
    }

    fn scan<'a>(&'a self, begin: &[u8], end: &[u8], reverse: bool) -> Result<Scan<'a>, StoreError> {
        let range = self
            .0
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)))
            .map(|(k, v)| Ok((k.clone(), v.clone())));
        Ok(if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{conformance, enqueue_write, read, write};

    #[tokio::test]
    async fn conformance_suite() {
        conformance::run_all(&MemoryStore::new()).await;
        conformance::run_all_on_used_store(&MemoryStore::new()).await;
    }

    /// A panicking closure stores nothing and fails only itself; the store
    /// keeps working (the lock it held is not left poisoned for good).
    #[tokio::test]
    async fn a_panicking_write_leaves_no_trace() {
        let store = MemoryStore::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        store
            .enqueue(
                Box::new(|t| {
                    t.set(b"k", b"half");
                    panic!("closure panics on purpose");
                }),
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .await
            .unwrap();
        // A panic counts as a rollback: the write "succeeds" with nothing kept.
        rx.await.unwrap().unwrap();
        assert_eq!(read(&store, |t| t.get(b"k")).unwrap(), None);
        write(&store, |t| {
            t.set(b"k", b"v");
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        assert_eq!(read(&store, |t| t.get(b"k")).unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// After shutdown, new writes are refused and their callbacks dropped;
    /// what was written before stays readable.
    #[tokio::test]
    async fn shutdown_refuses_new_writes() {
        let store = MemoryStore::new();
        write(&store, |t| {
            t.set(b"k", b"v");
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        store.shutdown().await;
        let refused = enqueue_write(&store, |t| {
            t.set(b"k2", b"v");
            Ok::<_, StoreError>(())
        })
        .await;
        assert!(matches!(refused, Err(StoreError::Closed)));
        assert_eq!(read(&store, |t| t.get(b"k")).unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(store.stats().writes, 1);
        assert_eq!(store.stats().keys_written, 1);
    }
}
