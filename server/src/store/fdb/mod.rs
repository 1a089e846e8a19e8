//! The FoundationDB store: the [`Store`] trait over a FoundationDB cluster,
//! which several quipd nodes can share (`quipd --store fdb`).
//!
//! ```text
//!  enqueue ──► queue ──► writer thread ── one FoundationDB transaction per batch
//!                        (writer.rs)      of queued closures, retried as a whole;
//!                                         callbacks in queue order after commit
//!  read(f) ─────────────────────────────► one read-only transaction on the
//!                        (read.rs)        calling thread, retried as a whole
//! ```
//!
//! # Layout
//! - `layout.rs`: keys under a tuple-layer prefix, values over 100 kB in parts.
//! - `read.rs`: point reads issued together ([`ReadTxn::get_many`] is one
//!   round trip), ranges, large values put back together.
//! - `writer.rs`: group commit, retries, `commit_unknown_result`;
//!   `job.rs`: one closure's overlay over the batch's transaction.
//! - `network.rs`: FoundationDB's client thread, once per process.
//!
//! # Blocking
//! [`Store::read`] runs on the calling thread, as the trait requires, and
//! blocks it on FoundationDB futures (completed by FoundationDB's network
//! thread, so that is safe anywhere). On a tokio worker that is a network
//! round trip per read during which the worker's other tasks wait; cheap on
//! a local cluster, to be revisited (an async read, or reads on a blocking
//! pool) before latency to the cluster grows.
//!
//! # Clusters
//! Atomic adds, versionstamped keys and watches ([`Txn::atomic_add`],
//! [`Txn::set_versionstamped`], [`Store::watch`]) are what
//! [`crate::cluster`] builds cross-node push on. What is not done yet is in
//! spec/storage.md §6.1: versionstamped per-user logs (each user's log head
//! is a conflict point), a chat owner for hot groups, typed unavailability.

mod job;
mod layout;
mod network;
mod read;
mod writer;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use foundationdb::Database;
use foundationdb::options::DatabaseOption;
use futures::executor::block_on;
use tokio::sync::{mpsc, oneshot};

pub use writer::Fault;

use self::layout::Layout;
use self::read::{Reads, Snapshot, store_error};
use self::writer::{Cmd, Counters, Writer};
#[cfg(doc)]
use super::Txn;
use super::{BoxFuture, OnDurable, ReadTxn, Store, StoreError, StoreStats, WriteFn};

/// The default of how long one transaction may take, retries included,
/// before it fails with `transaction_timed_out` (FoundationDB's default is
/// forever: a request would hang while the cluster is unreachable);
/// `--fdb-timeout-ms` sets it.
pub const TXN_TIMEOUT_MS: u32 = 10_000;

/// Starts FoundationDB's client (its network thread) unless it runs
/// already, for code in this process that uses the `foundationdb` crate
/// directly (the benchmark's bare baseline): the client starts once per
/// process, whoever asks first.
pub fn start_client_network() -> Result<(), StoreError> {
    network::ensure_started()
}

/// Where a [`FdbStore`] keeps its data.
#[derive(Debug, Clone)]
pub struct FdbOptions {
    /// The cluster file; `None`: FoundationDB's default (`FDB_CLUSTER_FILE`,
    /// else `/etc/foundationdb/fdb.cluster`).
    pub cluster_file: Option<PathBuf>,
    /// The subspace `(prefix,)` holding every key of this store.
    pub prefix: String,
    /// Writes waiting for the writer before senders wait (backpressure).
    pub queue: usize,
    /// How long one transaction may take, retries included (ms).
    pub timeout_ms: u32,
}

/// A [`Store`] in a FoundationDB cluster (see the module docs).
pub struct FdbStore {
    db: Arc<Database>,
    layout: Layout,
    tx: mpsc::Sender<Cmd>,
    counters: Arc<Counters>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
}

impl FdbStore {
    /// Connects to the cluster (starting FoundationDB's client thread if
    /// this is the process's first store) and starts the writer. Fails if
    /// the cluster cannot be reached within [`TXN_TIMEOUT_MS`].
    pub fn open(options: &FdbOptions) -> Result<Self, StoreError> {
        network::ensure_started()?;
        let path = match &options.cluster_file {
            Some(p) => Some(
                p.to_str()
                    .ok_or_else(|| StoreError::Backend(format!("cluster file path {} is not UTF-8", p.display())))?,
            ),
            None => None,
        };
        let described = path.unwrap_or("the default cluster file");
        let db = Database::new(path)
            .map_err(|e| StoreError::Backend(format!("opening FoundationDB with {described}: {e}")))?;
        let timeout = i32::try_from(options.timeout_ms).unwrap_or(i32::MAX);
        db.set_option(DatabaseOption::TransactionTimeout(timeout))
            .map_err(store_error)?;
        let layout = Layout::new(&options.prefix);
        let stale = writer::clear_stale_markers(&db, &layout)
            .map_err(|e| StoreError::Backend(format!("FoundationDB cluster of {described} not usable: {e}")))?;
        if stale > 0 {
            tracing::info!(
                markers = stale,
                "cleared commit markers left by writers that stopped uncleanly"
            );
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let counters = Arc::new(Counters::default());
        let faults = Arc::new(Mutex::new(VecDeque::new()));
        let writer = Writer {
            db: db.clone(),
            layout: layout.clone(),
            counters: counters.clone(),
            faults: faults.clone(),
            instance: rand::random(),
            batch: 0,
        };
        std::thread::Builder::new()
            .name("quip-fdb-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Self {
            db,
            layout,
            tx,
            counters,
            faults,
        })
    }

    /// Makes the next commits meet `faults`, one each, in order: how tests
    /// reach the `commit_unknown_result` paths on a healthy cluster.
    #[doc(hidden)]
    pub fn inject_faults(&self, faults: &[Fault]) {
        self.faults.lock().unwrap_or_else(|e| e.into_inner()).extend(faults);
    }
}

impl Store for FdbStore {
    fn enqueue(&self, job: WriteFn, on_durable: OnDurable) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.tx
                .send(Cmd::Write(job, on_durable))
                .await
                .map_err(|_| StoreError::Closed)
        })
    }

    /// One read-only transaction; after a transient FoundationDB error
    /// (`transaction_too_old` past 5 s, a recovery…) `f` runs again in a
    /// fresh one, until [`TXN_TIMEOUT_MS`].
    fn read(&self, f: &mut dyn FnMut(&mut dyn ReadTxn) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut tr = self.db.create_trx().map_err(store_error)?;
        loop {
            let mut snapshot = Snapshot {
                reads: Reads {
                    tr: &tr,
                    layout: &self.layout,
                    snapshot: true,
                },
                error: None,
            };
            let result = f(&mut snapshot);
            let Some(e) = snapshot.error else { return result };
            crate::metrics::fdb_retry("read", false);
            tr = block_on(tr.on_error(e)).map_err(|e| {
                crate::metrics::fdb_error("read");
                store_error(e)
            })?;
        }
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
        self.counters.stats()
    }

    /// A watch set in a transaction that first reads the key: if the value
    /// is no longer `seen`, at once; else when FoundationDB reports a change
    /// (a watch fires on any write of the key after the transaction's read
    /// version, so nothing between the caller's read and this one is lost:
    /// a change there makes the value differ here). Large values (in parts)
    /// are never watched: they count as changed.
    fn watch(&self, key: &[u8], seen: Option<Vec<u8>>) -> BoxFuture<'_, Result<(), StoreError>> {
        let row = self.layout.data_key(key);
        let key = key.to_vec();
        Box::pin(async move {
            let tr = self.db.create_trx().map_err(store_error)?;
            let now = tr.get(&row, false).await.map_err(store_error)?;
            let same = match (now.as_deref(), seen.as_deref()) {
                (None, None) => true,
                (Some(stored), Some(seen)) => {
                    matches!(layout::decode(&key, stored)?, layout::Row::Inline(v) if v == seen)
                }
                _ => false,
            };
            if !same {
                return Ok(());
            }
            let fired = tr.watch(&row);
            tr.commit().await.map_err(|e| store_error(*e))?;
            fired.await.map_err(store_error)
        })
    }

    fn clustered(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
