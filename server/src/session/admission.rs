//! What every request passes before its handler: the 0-RTT replay guard
//! (requests that are not replay-safe wait for the handshake) and the rate
//! limit (the device's budget, or the anonymous connection's).

use super::*;

impl Session {
    /// Marks whether requests may still come from 0-RTT early data.
    pub fn set_early(&self, early: bool) {
        self.early.store(early, Ordering::Release);
        if !early {
            self.handshake_done.notify_waiters();
        }
    }

    /// Resolves once requests can no longer be replays of early data.
    async fn handshake_complete(&self) {
        loop {
            let notified = self.handshake_done.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a completion in between wakes it.
            notified.as_mut().enable();
            if !self.early.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Charges one request to the device's budget (the connection's while
    /// anonymous).
    fn take_token(&self) -> Result<(), ServiceError> {
        let now = self.shared.clock.now();
        let device = self
            .auth
            .lock()
            .expect("auth lock")
            .as_ref()
            .map(|a| ((a.actor.user_id, a.actor.device_id), a.expires_ms));
        let taken = match device {
            None => self.limiter.lock().expect("limiter lock").try_take(now),
            Some((_, expires_ms)) if self.now_ms() >= expires_ms => {
                // The sweep closes it within a second; this request is
                // refused now, so the bound is exact for requests.
                self.closer
                    .close(CloseCode::SessionExpired, "session token expired: log in again");
                return Err(ServiceError::Unauthenticated(
                    "session token expired: log in again".into(),
                ));
            }
            Some((key, _)) => {
                let config = &self.shared.config;
                let bucket = self.shared.device_limits.get_with(key, || {
                    Arc::new(Mutex::new(TokenBucket::new(config.rate_limit, config.rate_burst, now)))
                });
                bucket.lock().expect("limiter lock").try_take(now)
            }
        };
        taken.map_err(|wait| {
            crate::metrics::rate_limited("requests");
            // Once per connection: a client hammering past its budget
            // must not flood the log as well.
            if !self.limit_logged.swap(true, Ordering::Relaxed) {
                let who = self.identity();
                let user = who.as_ref().map(|(u, _)| u.as_str());
                let device = who.as_ref().map(|(_, d)| *d);
                tracing::info!(user, device, peer = %self.peer, "rate limited: requests over the per-device budget (logged once per connection)");
            }
            rate_limited(wait)
        })
    }

    /// The checks every request passes first: one not safe to replay waits
    /// for a 0-RTT handshake to complete (up to [`EARLY_WAIT`]), and each
    /// is charged against the rate limit.
    pub(super) async fn admit(&self, replay_safe: bool) -> Result<(), ServiceError> {
        if !replay_safe
            && self.early.load(Ordering::Acquire)
            && tokio::time::timeout(EARLY_WAIT, self.handshake_complete())
                .await
                .is_err()
        {
            return Err(ServiceError::TooEarly);
        }
        self.take_token()
    }

    /// Admits the request that opens a media stream: like any request it
    /// needs a login, counts against the rate limit, and waits for a 0-RTT
    /// handshake to complete (an upload creates state; a replay must not).
    pub async fn admit_media(&self) -> Result<(Actor, tokio::sync::OwnedSemaphorePermit), ServiceError> {
        let slot = self.media_slots.clone().try_acquire_owned().map_err(|_| {
            ServiceError::LimitExceeded(format!(
                "at most {MEDIA_STREAMS_PER_CONNECTION} media transfers per connection at once"
            ))
        })?;
        self.admit(false).await?;
        if self.shared.shutdown.started() {
            return Err(ServiceError::Unavailable);
        }
        Ok((self.actor()?, slot))
    }
}
