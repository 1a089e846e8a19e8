//! The write path: group commit, one FoundationDB transaction per batch.
//!
//! One writer thread takes the first queued write and everything queued
//! behind it (up to [`MAX_BATCH`]) and runs their closures one after another
//! over a single FoundationDB transaction. Each closure runs in its own
//! overlay (`job.rs`): its reads see its own writes, then the transaction
//! (so the writes of its batch-mates before it, through FoundationDB's
//! read-your-writes), then the database; its writes stay in the overlay
//! until it returns `Outcome::Commit`, and only then go into the
//! transaction. A closure that rolls back or panics leaves nothing. Then
//! one commit, and the callbacks in queue order.
//!
//! # Staying inside FoundationDB's limits
//! A transaction may write at most 10 MB and must commit within 5 s of its
//! first read. A batch stops taking closures once its writes pass
//! [`BATCH_BYTES`] or its closures have run for [`BATCH_TIME`]; the rest wait
//! for the next batch. One closure writing more than [`MAX_JOB_BYTES`] fails
//! alone (its callback gets an error) instead of failing its batch. Values
//! over 100 kB are split ([`super::layout`]).
//!
//! # Retries
//! A transient error (a conflict with another node's commit,
//! `transaction_too_old`, a recovery…) voids the attempt: after
//! `on_error`'s backoff, every closure of the batch runs again from scratch
//! in a fresh attempt. Closures are side-effect free by contract, and what
//! they return is overwritten by their last run, the one that commits. A
//! batch gives up when its transaction's timeout ([`super::TXN_TIMEOUT_MS`],
//! counted from its first attempt) passes: its callbacks get the error.
//!
//! # Unknown commit results
//! `commit_unknown_result` (and a commit cut short by the timeout) leaves the
//! batch maybe committed. Running it again blindly could apply it twice: a
//! send would get two seqs. So every attempt that commits also writes a
//! marker key of its own, `(instance, batch, generation)`, and declares a
//! read conflict on it. After an unknown result the writer settles the
//! question before anything else, in a separate small transaction (the
//! *fence*): it reads the marker; found with `c`, the attempt committed,
//! and the batch is done (its closures' results are those of that attempt,
//! which was their last run); absent, it writes the marker itself with `f`.
//! Once the fence has committed, the attempt can never commit any more: it
//! read the marker at an older version, so it conflicts with the fence's
//! write. Only then does the batch run again, under the next generation's
//! marker. If the fence cannot finish either (FoundationDB unreachable until
//! the timeout), the callbacks get an error that says the result is
//! unknown; the server's idempotency keys make a client's retry of a send
//! safe then.
//!
//! Markers cost one key per commit: each commit clears the markers of this
//! writer's earlier batches, shutdown clears the last, and opening a store
//! clears those an unclean exit left, once they are an hour old.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foundationdb::options::ConflictRangeType;
use foundationdb::{Database, FdbError, RangeOption, Transaction, TransactionCommitError};
use futures::executor::block_on;
use tokio::sync::{mpsc, oneshot};

use super::job::{Run, apply, apply_mutations, run_job, size};
use super::layout::Layout;
use super::read::{Reads, store_error};
use crate::store::{OnDurable, StoreError, StoreStats, WriteFn};

/// Most closures in one batch (as for the embedded engines, commit.rs).
pub(super) const MAX_BATCH: usize = 1024;

/// A batch takes no more closures once its writes pass this many bytes
/// (FoundationDB's limit is 10 MB a transaction, and it recommends staying
/// well under 1 MB for throughput).
pub(super) const BATCH_BYTES: usize = 1 << 20;

/// A closure writing more than this fails on its own.
pub(super) const MAX_JOB_BYTES: usize = 8 << 20;

/// A batch takes no more closures once they have run this long: the
/// transaction must commit within 5 s of its read version.
pub(super) const BATCH_TIME: Duration = Duration::from_secs(1);

/// Markers older than this that no live writer cleared are removed when a
/// store opens.
const STALE_MARKER: Duration = Duration::from_secs(3600);

/// Marker values: the attempt committed, or a fence stopped it.
const COMMITTED: u8 = b'c';
const FENCED: u8 = b'f';

/// FoundationDB error codes the writer treats specially.
const NOT_COMMITTED: i32 = 1020;
const COMMIT_UNKNOWN_RESULT: i32 = 1021;
const TRANSACTION_CANCELLED: i32 = 1025;
const TRANSACTION_TIMED_OUT: i32 = 1031;

pub(super) enum Cmd {
    Write(WriteFn, OnDurable),
    Shutdown(oneshot::Sender<()>),
}

/// Faults a test makes the next commits meet (see [`super::FdbStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The commit lands, but the writer is told `commit_unknown_result`.
    UnknownAfterCommit,
    /// The commit is never sent, and the writer is told `commit_unknown_result`.
    UnknownWithoutCommit,
}

#[derive(Default)]
pub(super) struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    keys: AtomicU64,
    commit_micros: AtomicU64,
    max_commit_micros: AtomicU64,
    conflicts: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    pub(super) fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            keys_written: self.keys.load(Ordering::Relaxed),
            commit_micros: self.commit_micros.load(Ordering::Relaxed),
            max_commit_micros: self.max_commit_micros.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// A queued write and, once its closure has run, its own result (a closure
/// refused alone fails while its batch commits).
struct Job {
    f: WriteFn,
    done: OnDurable,
    result: Result<(), StoreError>,
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) db: Arc<Database>,
    pub(super) layout: Layout,
    pub(super) counters: Arc<Counters>,
    pub(super) faults: Arc<Mutex<VecDeque<Fault>>>,
    /// This writer's markers are under this random id.
    pub(super) instance: [u8; 16],
    /// The next batch's number.
    pub(super) batch: u64,
}

impl Writer {
    /// Runs until shutdown or until every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut pending: VecDeque<Job> = VecDeque::new();
        let mut shutdown = None;
        loop {
            if pending.is_empty() && shutdown.is_none() {
                match rx.blocking_recv() {
                    Some(cmd) => take(cmd, &mut pending, &mut shutdown),
                    None => break,
                }
            }
            while shutdown.is_none() && pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => take(cmd, &mut pending, &mut shutdown),
                    Err(_) => break,
                }
            }
            if pending.is_empty() {
                break; // shut down with nothing left
            }
            self.run_batch(&mut pending);
        }
        self.clear_markers();
        // Refuse what arrives after shutdown: closing fails new senders.
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

    /// Runs jobs from the front of `pending` as one batch, retrying it as a
    /// whole, and calls their callbacks.
    fn run_batch(&mut self, pending: &mut VecDeque<Job>) {
        let started = Instant::now();
        let mut batch: Vec<Job> = Vec::new();
        let outcome = self.commit_batch(pending, &mut batch);
        self.batch += 1;
        crate::metrics::commit(batch.len(), started.elapsed());
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let c = &self.counters;
        c.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        c.commit_micros.fetch_add(micros, Ordering::Relaxed);
        c.max_commit_micros.fetch_max(micros, Ordering::Relaxed);
        match outcome {
            Ok(keys) => {
                c.commits.fetch_add(u64::from(keys > 0), Ordering::Relaxed);
                c.keys.fetch_add(keys, Ordering::Relaxed);
                for job in batch {
                    (job.done)(job.result);
                }
            }
            Err(e) => {
                crate::metrics::fdb_error("write");
                tracing::error!(error = %e, jobs = batch.len(), "FoundationDB batch failed");
                for job in batch {
                    (job.done)(Err(e.clone()));
                }
            }
        }
    }

    /// The attempts of one batch until it commits or fails. On return
    /// `batch` holds its jobs, in queue order. `Ok`: the keys written.
    fn commit_batch(&self, pending: &mut VecDeque<Job>, batch: &mut Vec<Job>) -> Result<u64, StoreError> {
        let mut tr = match self.db.create_trx() {
            Ok(tr) => tr,
            Err(e) => {
                // Fail one job, so that the writer makes progress.
                batch.extend(pending.pop_front());
                return Err(store_error(e));
            }
        };
        let mut generation = 0u32;
        loop {
            // A void attempt's jobs run again, first and in order.
            while let Some(job) = batch.pop() {
                pending.push_front(job);
            }
            let failed = match self.attempt(&tr, pending, batch) {
                Err(e) => Failed::Plain(tr, e),
                Ok(0) => return Ok(0), // nothing to write: no commit needed
                Ok(keys) => {
                    let marker = self.layout.marker(&self.instance, self.batch, generation);
                    let (begin, end) = self.layout.markers_before(&self.instance, self.batch);
                    tr.clear_range(&begin, &end);
                    tr.set(&marker, &marker_value(COMMITTED));
                    let mut after = marker.clone();
                    after.push(0);
                    if let Err(e) = tr.add_conflict_range(&marker, &after, ConflictRangeType::Read) {
                        return Err(store_error(e));
                    }
                    match self.commit(tr) {
                        Ok(()) => return Ok(keys),
                        Err(failed) if maybe_committed(failed.error()) => {
                            match self.fence(&marker) {
                                Ok(true) => return Ok(keys),
                                Ok(false) => generation += 1,
                                Err(e) => {
                                    return Err(StoreError::Unavailable(format!(
                                        "FoundationDB commit result unknown ({}), and checking it failed ({}): \
                                         the writes may or may not be stored",
                                        failed.error(),
                                        e
                                    )));
                                }
                            }
                            failed
                        }
                        Err(failed) => failed,
                    }
                }
            };
            let e = failed.error();
            if e.code() == NOT_COMMITTED {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            crate::metrics::fdb_retry("write", e.code() == NOT_COMMITTED);
            tr = failed.retry().map_err(store_error)?;
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs jobs from the front of `pending` into `batch` over `tr` until a
    /// cap is reached, putting the writes of those that commit into `tr`.
    /// `Ok`: the keys written; `Err`: a read failed, the attempt is void.
    fn attempt(&self, tr: &Transaction, pending: &mut VecDeque<Job>, batch: &mut Vec<Job>) -> Result<u64, FdbError> {
        let reads = Reads {
            tr,
            layout: &self.layout,
            snapshot: false,
        };
        let started = Instant::now();
        let (mut bytes, mut keys) = (0usize, 0u64);
        let mut order = 0u16;
        while batch.len() < MAX_BATCH && started.elapsed() < BATCH_TIME {
            let Some(mut job) = pending.pop_front() else { break };
            match run_job(&reads, &mut job.f) {
                Run::Failed(e) => {
                    batch.push(job);
                    return Err(e);
                }
                Run::Rollback => job.result = Ok(()),
                Run::Refused(e) => job.result = Err(e),
                Run::Commit(writes, no_parts, mutations) => {
                    let size = size(&self.layout, &writes, &mutations);
                    if size > MAX_JOB_BYTES {
                        job.result = Err(StoreError::Backend(format!(
                            "one write of {size} bytes: more than FoundationDB transactions can hold \
                             (at most {MAX_JOB_BYTES} bytes here)"
                        )));
                    } else if !batch.is_empty() && bytes + size > BATCH_BYTES {
                        pending.push_front(job); // the next batch's
                        break;
                    } else {
                        keys += apply(tr, &self.layout, writes, &no_parts);
                        keys += apply_mutations(tr, &self.layout, mutations, &mut order);
                        bytes += size;
                        job.result = Ok(());
                    }
                }
            }
            batch.push(job);
        }
        Ok(keys)
    }

    fn commit(&self, tr: Transaction) -> Result<(), Failed> {
        let fault = self.faults.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
        let unknown = FdbError::from_code(COMMIT_UNKNOWN_RESULT);
        match fault {
            None => block_on(tr.commit()).map(drop).map_err(Failed::Commit),
            Some(Fault::UnknownWithoutCommit) => Err(Failed::Plain(tr, unknown)),
            Some(Fault::UnknownAfterCommit) => match block_on(tr.commit()) {
                Ok(committed) => Err(Failed::Plain(committed.reset(), unknown)),
                Err(e) => Err(Failed::Commit(e)),
            },
        }
    }

    /// Settles whether the attempt that wrote `marker` committed (`true`),
    /// and if not makes sure it never will (`false`). See the module docs.
    fn fence(&self, marker: &[u8]) -> Result<bool, FdbError> {
        let mut tr = self.db.create_trx()?;
        loop {
            let e = match block_on(tr.get(marker, false)) {
                Ok(Some(value)) => return Ok(value.first() == Some(&COMMITTED)),
                Ok(None) => {
                    tr.set(marker, &marker_value(FENCED));
                    match block_on(tr.commit()) {
                        Ok(_) => return Ok(false),
                        // Unknown again: the next round reads what is there.
                        Err(e) => {
                            tr = block_on(e.on_error())?;
                            continue;
                        }
                    }
                }
                Err(e) => e,
            };
            tr = block_on(tr.on_error(e))?;
        }
    }

    /// Clears this writer's markers (at shutdown). Best effort: markers an
    /// hour old are cleared by the next store opened on the prefix anyway.
    fn clear_markers(&self) {
        let (begin, end) = self.layout.markers_before(&self.instance, u64::MAX);
        let cleared = block_on(self.db.run(|tr, _| {
            let (begin, end) = (begin.clone(), end.clone());
            async move {
                tr.clear_range(&begin, &end);
                Ok(())
            }
        }));
        if let Err(e) = cleared {
            tracing::warn!(error = %e, "could not clear the FoundationDB store's commit markers");
        }
    }
}

fn take(cmd: Cmd, pending: &mut VecDeque<Job>, shutdown: &mut Option<oneshot::Sender<()>>) {
    match cmd {
        Cmd::Write(f, done) => pending.push_back(Job {
            f,
            done,
            result: Ok(()),
        }),
        Cmd::Shutdown(ack) => *shutdown = Some(ack),
    }
}

/// Whether a failed commit may have landed all the same.
fn maybe_committed(e: FdbError) -> bool {
    e.is_maybe_committed() || matches!(e.code(), TRANSACTION_CANCELLED | TRANSACTION_TIMED_OUT)
}

/// A marker's value: its kind and the wall-clock time it was written.
pub(super) fn marker_value(kind: u8) -> [u8; 9] {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut v = [kind; 9];
    v[1..].copy_from_slice(&ms.to_be_bytes());
    v
}

/// Clears the markers older than [`STALE_MARKER`] that writers which did not
/// shut down cleanly left under this prefix. Also shows that the cluster
/// can be reached.
pub(super) fn clear_stale_markers(db: &Database, layout: &Layout) -> Result<usize, FdbError> {
    let (begin, end) = layout.all_markers();
    let cutoff = u64::from_be_bytes(marker_value(0)[1..].try_into().expect("8 bytes"))
        .saturating_sub(STALE_MARKER.as_millis() as u64);
    let cleared = block_on(db.run(|tr, _| {
        let range = RangeOption {
            limit: Some(10_000),
            ..RangeOption::from((begin.clone(), end.clone()))
        };
        async move {
            let rows = tr.get_range(&range, 1, true).await?;
            let mut cleared = 0;
            for row in &rows {
                let written = row
                    .value()
                    .get(1..9)
                    .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
                if written.is_none_or(|ms| ms < cutoff) {
                    tr.clear(row.key());
                    cleared += 1;
                }
            }
            Ok(cleared)
        }
    }));
    cleared.map_err(|e| e.get_fdb_error().unwrap_or(FdbError::from_code(TRANSACTION_TIMED_OUT)))
}

/// A failed commit, or a void attempt, with the transaction to retry on.
enum Failed {
    Commit(TransactionCommitError),
    Plain(Transaction, FdbError),
}

impl Failed {
    fn error(&self) -> FdbError {
        match self {
            Self::Commit(e) => **e,
            Self::Plain(_, e) => *e,
        }
    }

    /// `on_error`: backs off and resets the transaction if the error is
    /// transient; the error itself otherwise.
    fn retry(self) -> Result<Transaction, FdbError> {
        match self {
            Self::Commit(e) => block_on(e.on_error()),
            Self::Plain(tr, e) => block_on(tr.on_error(e)),
        }
    }
}
