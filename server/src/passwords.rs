//! Password hashing, bounded: a few argon2 runs at a time, a short queue
//! behind them, and a retryable refusal beyond it.
//!
//! Each argon2id run takes ~19 MiB and tens of milliseconds of one core
//! (`service::accounts`). Run unbounded on tokio's blocking pool, 100
//! parallel logins took quipd to 1.4 GB and 107 threads; bounded, a burst
//! costs at most `workers` runs of memory, the rest wait in order, and a
//! flood beyond the queue is answered at once with `RATE_LIMITED`, so the
//! cost of a request that will not be served is a counter increment.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::service::ServiceError;

/// The argon2 work admitted at once: running plus waiting.
pub struct PasswordPool {
    /// One permit per concurrent run.
    running: Arc<tokio::sync::Semaphore>,
    /// Runs admitted and not finished (waiting or running).
    admitted: AtomicUsize,
    /// Most runs admitted at once: workers plus the queue.
    max_admitted: usize,
}

/// What a refused run is told to wait before trying again: about the time
/// the queue takes to drain on a small machine.
const RETRY_AFTER_MS: u32 = 1_000;

impl PasswordPool {
    /// A pool running `workers` hashes at once with `queue` more waiting.
    pub fn new(workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        Self {
            running: Arc::new(tokio::sync::Semaphore::new(workers)),
            admitted: AtomicUsize::new(0),
            max_admitted: workers + queue,
        }
    }

    /// A pool of `workers` (0: one per core, at most four: 76 MiB of argon2
    /// memory) with `queue` more waiting.
    pub fn sized(workers: usize, queue: usize) -> Self {
        let workers = match workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4),
            n => n,
        };
        Self::new(workers, queue)
    }

    /// Runs `work` (an argon2 hash or verification) on the blocking pool
    /// once a worker is free; refuses with `RATE_LIMITED` when the queue is
    /// full.
    pub async fn run<T, F>(&self, work: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let ticket = Admitted::take(self).ok_or(ServiceError::RateLimited {
            retry_after_ms: RETRY_AFTER_MS,
        })?;
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Unavailable)?;
        // The permit moves into the blocking task: if the request is dropped
        // while the hash runs, the worker stays busy until it really is free.
        let out = tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("password work failed: {e}")));
        drop(ticket);
        out
    }
}

/// One admitted run, counted until it ends or its request is dropped.
struct Admitted<'a>(&'a AtomicUsize);

impl<'a> Admitted<'a> {
    fn take(pool: &'a PasswordPool) -> Option<Self> {
        pool.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < pool.max_admitted).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(&pool.admitted))
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two runs at once, one waiting: a fourth is refused at once, and once
    /// the first ones finish the pool admits again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_workers_and_queue_is_refused_then_admitted_again() {
        let pool = Arc::new(PasswordPool::new(2, 1));
        let gate = Arc::new(std::sync::Barrier::new(3));
        let running = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (pool, gate, running, started) = (pool.clone(), gate.clone(), running.clone(), started.clone());
            tasks.push(tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    // The first two wait for each other and the test; the
                    // third runs only after one of them finished.
                    if started.fetch_add(1, Ordering::SeqCst) < 2 {
                        gate.wait();
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    now
                })
                .await
            }));
        }
        // Wait until all three are admitted (two running, one queued).
        while pool.admitted.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        let refused = pool.run(|| 0).await;
        assert!(
            matches!(refused, Err(ServiceError::RateLimited { retry_after_ms }) if retry_after_ms > 0),
            "{refused:?}"
        );
        // Released from a blocking thread: the runtime keeps polling the
        // tasks meanwhile.
        let release = gate.clone();
        tokio::task::spawn_blocking(move || release.wait()).await.unwrap();
        let mut most = 0;
        for t in tasks {
            most = most.max(t.await.unwrap().unwrap());
        }
        assert!(most <= 2, "{most} runs at once with two workers");
        assert_eq!(pool.admitted.load(Ordering::SeqCst), 0);
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
