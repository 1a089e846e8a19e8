//! Group commit: one writer thread folds queued writes into shared commits.
//!
//! A durable commit costs a sync to disk, so committing each message alone
//! would cap a server at a few hundred messages per second. Instead one
//! writer thread drains the queue and hands everything waiting (up to
//! 1,024) to the engine as one batch: N concurrent writes cost one
//! sync. Callbacks run in queue order once the batch is durable, so whatever
//! they publish goes out in commit order. The engines differ only in how a
//! batch is applied and made durable ([`Engine`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{BoxFuture, OnDurable, ReadTxn, Store, StoreError, StoreStats, WriteFn};

/// Most writes folded into one commit. Bounds the latency a write can add to
/// its batch-mates and the work lost to one failed commit.
const MAX_BATCH: usize = 1024;

/// A write waiting in a batch.
pub type Job = (WriteFn, OnDurable);

/// A storage engine under the group-commit writer.
pub trait Engine: Send + Sync + 'static {
    /// Runs every job's closure in order, each in its own overlay (a closure
    /// that rolls back leaves nothing), and makes the committed writes durable
    /// in one atomic commit. Returns how many key writes were applied.
    /// Readers must not see any of it before it is durable.
    fn commit(&self, jobs: &mut [Job]) -> Result<u64, StoreError>;

    /// Runs `f` in a read snapshot of durable data.
    fn read(&self, f: &mut dyn FnMut(&mut dyn ReadTxn) -> Result<(), StoreError>) -> Result<(), StoreError>;
}

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

/// A [`Store`] made of an [`Engine`] and its writer thread.
pub struct GroupCommit<E> {
    engine: Arc<E>,
    tx: mpsc::Sender<Cmd>,
    counters: Arc<Counters>,
}

impl<E: Engine> GroupCommit<E> {
    /// Starts the writer thread. `queue` bounds the writes waiting for it;
    /// beyond it, writers wait.
    pub(super) fn start(engine: E, queue: usize) -> Result<Self, StoreError> {
        let engine = Arc::new(engine);
        let (tx, rx) = mpsc::channel(queue.max(1));
        let counters = Arc::new(Counters::default());
        let (e, c) = (engine.clone(), counters.clone());
        std::thread::Builder::new()
            .name("quip-store-writer".into())
            .spawn(move || writer_loop(&*e, rx, &c))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Self { engine, tx, counters })
    }
}

impl<E: Engine> Store for GroupCommit<E> {
    fn enqueue(&self, job: WriteFn, on_durable: OnDurable) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.tx
                .send(Cmd::Write(job, on_durable))
                .await
                .map_err(|_| StoreError::Closed)
        })
    }

    fn read(&self, f: &mut dyn FnMut(&mut dyn ReadTxn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.engine.read(f)
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

fn writer_loop<E: Engine>(engine: &E, mut rx: mpsc::Receiver<Cmd>, counters: &Counters) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
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
            commit_batch(engine, &mut batch, counters);
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

fn commit_batch<E: Engine>(engine: &E, batch: &mut Vec<Job>, counters: &Counters) {
    let started = std::time::Instant::now();
    let result = engine.commit(batch);
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
