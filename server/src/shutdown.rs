//! Graceful shutdown's two signals: the server tells every connection to
//! stop taking requests, and the connections tell the server when the last
//! of them is gone.
//!
//! A stop is a drain, not a cut: each connection stops reading requests,
//! writes the replies of those it accepted (their writes are committed by
//! the store's own shutdown), then closes itself with code 3. The server
//! waits for that before it closes the endpoint, because QUIC discards
//! stream data still unsent when a connection closes: a reply due but not
//! yet written would leave its client unsure whether its write happened.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The shutdown state every connection shares.
#[derive(Debug, Default)]
pub struct Shutdown {
    started: AtomicBool,
    start: Notify,
    /// Connections (sessions) alive.
    live: AtomicUsize,
    gone: Notify,
}

impl Shutdown {
    /// Starts the drain: requests are no longer read, writes are refused.
    pub fn begin(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.start.notify_waiters();
    }

    /// Whether the drain has started.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Resolves once the drain has started.
    pub async fn wait_started(&self) {
        until(&self.start, || self.started.load(Ordering::SeqCst)).await;
    }

    /// Counts a connection in; pair with [`Shutdown::leave`].
    pub fn enter(&self) {
        self.live.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a connection out.
    pub fn leave(&self) {
        if self.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.gone.notify_waiters();
        }
    }

    /// Connections alive.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Resolves once no connection is left.
    pub async fn all_gone(&self) {
        until(&self.gone, || self.live.load(Ordering::SeqCst) == 0).await;
    }
}

/// Resolves once `done` holds, re-checking whenever `notify` wakes waiters.
/// The waiter registers before each check, so a wake-up in between is not
/// lost.
async fn until(notify: &Notify, done: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn waiters_see_the_start_and_the_last_connection_leaving() {
        let s = std::sync::Arc::new(Shutdown::default());
        assert!(s.wait_started().now_or_never().is_none());
        s.enter();
        s.enter();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait_started().await }
        });
        s.begin();
        waiter.await.unwrap();
        assert!(s.started());
        let gone = tokio::spawn({
            let s = s.clone();
            async move { s.all_gone().await }
        });
        s.leave();
        tokio::task::yield_now().await;
        assert!(!gone.is_finished());
        s.leave();
        gone.await.unwrap();
        assert_eq!(s.live(), 0);
    }
}
