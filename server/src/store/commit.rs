//! Group commit: one writer thread folds queued writes into shared commits,
//! and a committer thread makes each batch durable while the writer runs the
//! next one.
//!
//! A durable commit costs a sync to disk, so committing each message alone
//! would cap a server at a few hundred messages per second. Instead the
//! writer thread drains the queue and runs everything waiting (up to 1,024
//! closures) as one batch: N concurrent writes cost one sync. The two
//! halves of a commit are pipelined: while the committer writes batch N to
//! disk and syncs it, the writer already runs batch N+1's closures over
//! durable data with batch N laid on top, so one thread's CPU no longer
//! caps the writes per second at the sum of both halves (perf of the
//! throughput scenario: the writer thread was busy ~80% of the time, a
//! quarter of it in fjall's memtable inserts, while the machine had CPU to
//! spare). Nothing is acknowledged or visible to readers before it is
//! durable: batch N+1 reaches the committer only after batch N is on disk,
//! and if batch N fails, batch N+1 (which read its writes) fails with it.
//!
//! Callbacks run on the committer thread in queue order once their batch is
//! durable, so whatever they publish goes out in commit order. The engines
//! differ only in how a batch is run, applied and made durable ([`Engine`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{BoxFuture, OnDurable, ReadTxn, Store, StoreError, StoreStats, WriteFn};

/// Most writes folded into one commit. Bounds the latency a write can add to
/// its batch-mates and the work lost to one failed commit.
const MAX_BATCH: usize = 1024;

/// A write waiting in a batch.
pub type Job = (WriteFn, OnDurable);

/// A storage engine under the group-commit writer.
pub trait Engine: Send + Sync + 'static {
    /// The writes of a batch whose closures have run, not yet durable.
    type Batch: Send + Sync + 'static;

    /// Runs every job's closure in order, each in its own overlay (a closure
    /// that rolls back leaves nothing), over durable data with `in_flight`
    /// (the batch being made durable meanwhile, if any) laid on top. Returns
    /// the batch and how many key writes it holds. Runs on the writer thread;
    /// nothing of it may be visible to readers yet.
    fn prepare(&self, jobs: &mut [Job], in_flight: Option<&Self::Batch>) -> Result<(Self::Batch, u64), StoreError>;

    /// Makes `batch` durable and visible to readers in one atomic commit,
    /// durable first. Runs on the committer thread, in prepare order.
    fn apply(&self, batch: &Self::Batch) -> Result<(), StoreError>;

    /// Runs on the writer thread once `batch` is durable (`applied`) or has
    /// failed, before any later batch is prepared without it on top.
    fn settled(&self, batch: &Self::Batch, applied: bool);

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
            .spawn(move || writer_loop(e, rx, c))
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
            ..StoreStats::default()
        }
    }
}

/// A batch on its way from the writer to the committer.
struct Prepared<B> {
    /// The batch and its key writes, or why running its closures failed.
    outcome: Result<(Arc<B>, u64), StoreError>,
    jobs: Vec<Job>,
    /// Its place in prepare order.
    id: u64,
    /// The batch it was prepared over (laid on top of durable data), which
    /// it must not outlive if that one fails.
    over: Option<u64>,
    prepare_time: Duration,
}

fn writer_loop<E: Engine>(engine: Arc<E>, mut rx: mpsc::Receiver<Cmd>, counters: Arc<Counters>) {
    // Rendezvous: the committer takes batch N+1 only when batch N is done,
    // so the writer is never more than one batch ahead of the disk.
    let (to_committer, from_writer) = std_mpsc::sync_channel::<Prepared<E::Batch>>(0);
    let (settle_tx, settle_rx) = std_mpsc::channel::<bool>();
    let committer = {
        let engine = engine.clone();
        std::thread::Builder::new()
            .name("quip-store-committer".into())
            .spawn(move || committer_loop(&*engine, from_writer, &settle_tx, &counters))
    };
    let committer = match committer {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "could not start the store's committer thread");
            return;
        }
    };
    // Handed to the committer, not yet known to be settled, in order; `None`
    // for a batch whose closures failed to run.
    let mut unsettled: VecDeque<Option<Arc<E::Batch>>> = VecDeque::with_capacity(2);
    // Settles the oldest unsettled batches: down to `keep` of them, waiting
    // for their reports (the committer reports each batch before taking the
    // next, so the ones before a batch it took are already reported), then
    // any others already reported.
    let settle = |unsettled: &mut VecDeque<Option<Arc<E::Batch>>>, keep: usize| {
        while let Some(front) = unsettled.front() {
            let applied = if unsettled.len() > keep {
                settle_rx.recv().unwrap_or(false)
            } else {
                match settle_rx.try_recv() {
                    Ok(applied) => applied,
                    Err(_) => break,
                }
            };
            if let Some(batch) = front {
                engine.settled(batch, applied);
            }
            unsettled.pop_front();
        }
    };
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut next_id = 0u64;
    let mut shutdown = None;
    while shutdown.is_none() {
        let Some(first) = rx.blocking_recv() else { break };
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Write(f, done) => jobs.push((f, done)),
                Cmd::Shutdown(ack) => {
                    shutdown = Some(ack);
                    break;
                }
            }
            if jobs.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        // A batch the committer has finished meanwhile is read from durable
        // data, not laid on top (and one that failed is not read at all).
        settle(&mut unsettled, usize::MAX);
        let in_flight = unsettled
            .back()
            .and_then(|b| b.as_ref().map(|b| (next_id - 1, b.clone())));
        let started = Instant::now();
        let outcome = engine
            .prepare(&mut jobs, in_flight.as_ref().map(|(_, b)| &**b))
            .map(|(batch, keys)| (Arc::new(batch), keys));
        unsettled.push_back(outcome.as_ref().ok().map(|(b, _)| b.clone()));
        let prepared = Prepared {
            outcome,
            jobs: std::mem::replace(&mut jobs, Vec::with_capacity(MAX_BATCH)),
            id: next_id,
            over: in_flight.map(|(id, _)| id),
            prepare_time: started.elapsed(),
        };
        next_id += 1;
        if to_committer.send(prepared).is_err() {
            break; // the committer panicked; its jobs' callbacks went with it
        }
        settle(&mut unsettled, 1);
    }
    drop(to_committer);
    if committer.join().is_err() {
        tracing::error!("the store's committer thread panicked");
    }
    settle(&mut unsettled, 0);
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

/// Applies batches in order and runs their callbacks; reports each batch's
/// fate to the writer before taking the next.
fn committer_loop<E: Engine>(
    engine: &E,
    rx: std_mpsc::Receiver<Prepared<E::Batch>>,
    settled: &std_mpsc::Sender<bool>,
    counters: &Counters,
) {
    // The last batch that failed, and why: a batch prepared over it read
    // writes that never happened.
    let mut failed: Option<(u64, StoreError)> = None;
    for p in rx {
        let started = Instant::now();
        let result = match &p.outcome {
            Err(e) => Err(e.clone()),
            Ok(_) if failed.as_ref().is_some_and(|(id, _)| p.over == Some(*id)) => {
                Err(failed.as_ref().map(|(_, e)| e.clone()).expect("checked above"))
            }
            Ok((batch, keys)) => engine.apply(batch).map(|()| *keys),
        };
        let took = p.prepare_time + started.elapsed();
        crate::metrics::commit(p.jobs.len(), took);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        counters.writes.fetch_add(p.jobs.len() as u64, Ordering::Relaxed);
        counters.commit_micros.fetch_add(micros, Ordering::Relaxed);
        counters.max_commit_micros.fetch_max(micros, Ordering::Relaxed);
        let _ = settled.send(result.is_ok());
        match result {
            Ok(keys) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters.keys.fetch_add(keys, Ordering::Relaxed);
                // In queue order: callers that publish from here publish in
                // commit order.
                for (_, done) in p.jobs {
                    done(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = p.jobs.len(), "group commit failed");
                for (_, done) in p.jobs {
                    done(Err(e.clone()));
                }
                failed = Some((p.id, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver, Sender, channel};

    use super::*;
    use crate::store::lsm::LsmEngine;
    use crate::store::overlay::Writes;
    use crate::store::{Store, enqueue_write, read};

    /// The real LSM engine, but each apply waits for the test to say whether
    /// it succeeds, and each prepare reports whether a batch was in flight:
    /// the test decides what is in flight when, instead of the disk.
    struct Gated {
        inner: LsmEngine,
        verdicts: Mutex<Receiver<bool>>,
        prepared: Mutex<Sender<bool>>,
        applies: AtomicU64,
    }

    impl Engine for Gated {
        type Batch = Writes;

        fn prepare(&self, jobs: &mut [Job], in_flight: Option<&Writes>) -> Result<(Writes, u64), StoreError> {
            let r = self.inner.prepare(jobs, in_flight);
            let _ = self.prepared.lock().unwrap().send(in_flight.is_some());
            r
        }

        fn apply(&self, batch: &Writes) -> Result<(), StoreError> {
            self.applies.fetch_add(1, Ordering::Relaxed);
            // Bounded, so a test that gives no verdict fails instead of hanging.
            match self.verdicts.lock().unwrap().recv_timeout(Duration::from_secs(5)) {
                Ok(true) => self.inner.apply(batch),
                _ => Err(StoreError::Backend("injected failure".into())),
            }
        }

        fn settled(&self, batch: &Writes, applied: bool) {
            self.inner.settled(batch, applied);
        }

        fn read(&self, f: &mut dyn FnMut(&mut dyn ReadTxn) -> Result<(), StoreError>) -> Result<(), StoreError> {
            self.inner.read(f)
        }
    }

    fn gated(dir: &std::path::Path) -> (GroupCommit<Gated>, Sender<bool>, Receiver<bool>) {
        let (verdict_tx, verdicts) = channel();
        let (prepared, prepared_rx) = channel();
        let engine = Gated {
            inner: LsmEngine::open(dir).unwrap(),
            verdicts: Mutex::new(verdicts),
            prepared: Mutex::new(prepared),
            applies: AtomicU64::new(0),
        };
        (GroupCommit::start(engine, 16).unwrap(), verdict_tx, prepared_rx)
    }

    fn get(store: &dyn Store, key: &'static [u8]) -> Option<Vec<u8>> {
        read(store, |t| t.get(key)).unwrap()
    }

    /// While batch A waits for its sync, batch B runs over it: B reads A's
    /// writes, and readers see neither until each is durable.
    #[tokio::test]
    async fn the_next_batch_runs_over_the_one_being_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, verdict, prepared) = gated(dir.path());
        // Puts "n is absent" in the hot-key cache, which A and B then outdate.
        let w = enqueue_write(&store, |t| t.get(b"n")).await.unwrap();
        prepared.recv().unwrap();
        verdict.send(true).unwrap();
        assert_eq!(w.wait().await.unwrap(), None);
        let a = enqueue_write(&store, |t| {
            t.set(b"n", &[1]);
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        assert!(!prepared.recv().unwrap(), "nothing was in flight under A");
        let b = enqueue_write(&store, |t| {
            let seen = t.get(b"n")?;
            t.set(b"n", &[2]);
            Ok::<_, StoreError>(seen)
        })
        .await
        .unwrap();
        assert!(prepared.recv().unwrap(), "B was prepared with A in flight");
        assert_eq!(get(&store, b"n"), None, "a reader saw a write before it was durable");
        verdict.send(true).unwrap();
        a.wait().await.unwrap();
        verdict.send(true).unwrap();
        assert_eq!(b.wait().await.unwrap(), Some(vec![1]), "B did not read A's write");
        assert_eq!(get(&store, b"n"), Some(vec![2]));
        // Once both are settled, a later write reads what B left, not the
        // cached absence from before A.
        let c = enqueue_write(&store, |t| t.get(b"n")).await.unwrap();
        prepared.recv().unwrap();
        verdict.send(true).unwrap();
        assert_eq!(c.wait().await.unwrap(), Some(vec![2]));
        store.shutdown().await;
    }

    /// A batch that read the writes of a batch that then failed to sync
    /// fails too; the next batch sees neither, and neither does a reader.
    #[tokio::test]
    async fn a_failed_sync_fails_the_batch_that_ran_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, verdict, prepared) = gated(dir.path());
        let a = enqueue_write(&store, |t| {
            t.set(b"a", b"1");
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        prepared.recv().unwrap();
        let b = enqueue_write(&store, |t| {
            let seen = t.get(b"a")?;
            t.set(b"b", b"1");
            Ok::<_, StoreError>(seen)
        })
        .await
        .unwrap();
        assert!(prepared.recv().unwrap(), "B was prepared with A in flight");
        verdict.send(false).unwrap();
        assert!(matches!(a.wait().await, Err(StoreError::Backend(_))));
        // No verdict for B: the committer must fail it without applying it.
        assert!(
            matches!(b.wait().await, Err(StoreError::Backend(_))),
            "B read A's write, which never became durable"
        );
        let c = enqueue_write(&store, |t| Ok::<_, StoreError>((t.get(b"a")?, t.get(b"b")?)))
            .await
            .unwrap();
        assert!(!prepared.recv().unwrap(), "C was laid over a failed batch");
        verdict.send(true).unwrap();
        assert_eq!(c.wait().await.unwrap(), (None, None));
        assert_eq!((get(&store, b"a"), get(&store, b"b")), (None, None));
        assert_eq!(store.engine.applies.load(Ordering::Relaxed), 2, "B was applied");
        store.shutdown().await;
    }
}
