//! `quip listen` and `quip sync`: this device's view of the user's log.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use quip_client::{AckTracker, Client};
use quip_protocol::v1::{self, ReceiptKind};
use serde_json::json;

use super::Ctx;
use super::out::Out;

/// `quip listen`: what was missed, then events as they arrive.
pub async fn listen(ctx: &Ctx, count: Option<usize>) -> anyhow::Result<()> {
    ctx.call(async |c| {
        let mut feed = Feed::new(c, &ctx.out, count);
        // Ctrl-C may cut a batch short: whatever was not acknowledged yet
        // comes again with the next sync.
        tokio::select! {
            r = async {
                feed.catch_up().await?;
                feed.live().await
            } => r,
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
        }
    })
    .await
}

/// `quip sync`: what was missed, and exit.
pub async fn sync(ctx: &Ctx) -> anyhow::Result<()> {
    ctx.call(async |c| Feed::new(c, &ctx.out, None).catch_up().await).await
}

/// This device's view of the user's log: prints new events, confirms
/// delivery of others' messages, and acknowledges what it has handled.
struct Feed<'a> {
    client: &'a Client,
    out: &'a Out,
    /// Who this connection is (others' messages get DELIVERED receipts).
    me: String,
    tracker: AckTracker,
    /// The highest position observed; above `tracker.contiguous()` while a
    /// gap is open.
    max_seen: u64,
    printed: usize,
    count: Option<usize>,
}

impl<'a> Feed<'a> {
    fn new(client: &'a Client, out: &'a Out, count: Option<usize>) -> Self {
        Self {
            client,
            out,
            me: client.welcome().user.clone(),
            // The first sync page tells the tracker where the server has this device.
            tracker: AckTracker::new(0),
            max_seen: 0,
            printed: 0,
            count,
        }
    }

    /// Messages still to print before `--count` is reached.
    fn remaining(&self) -> Option<usize> {
        self.count.map(|c| c.saturating_sub(self.printed))
    }

    fn done(&self) -> bool {
        self.remaining() == Some(0)
    }

    /// Fetches what this device missed, page by page.
    ///
    /// Not `Client::sync_all`: that acknowledges each page as it arrives,
    /// before anything is printed, and takes whole pages, so `--count` could
    /// not stop in the middle of one without losing the rest.
    async fn catch_up(&mut self) -> anyhow::Result<()> {
        while !self.done() {
            let page = self.client.sync(0).await?;
            self.tracker.server_position(page.acked);
            let before = self.tracker.contiguous();
            self.handle(page.events).await?;
            if !page.more || self.tracker.contiguous() == before {
                break;
            }
        }
        Ok(())
    }

    /// Handles pushed events until `--count` is reached or the connection closes.
    ///
    /// Some events of the log are never pushed to this device: its own sends
    /// and READ receipts (e.g. `quip send` with the same profile while this
    /// runs). They leave a gap that blocks acknowledgement, so a gap still
    /// open after a short wait is filled from a sync.
    async fn live(&mut self) -> anyhow::Result<()> {
        const GAP_WAIT: Duration = Duration::from_millis(300);
        while !self.done() {
            let next = if self.max_seen > self.tracker.contiguous() {
                match tokio::time::timeout(GAP_WAIT, self.client.next_event()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.catch_up().await?;
                        continue;
                    }
                }
            } else {
                self.client.next_event().await
            };
            let Some(first) = next else {
                let (code, reason) = self.client.closed().await;
                match code {
                    Some(code) => bail!("connection closed by the server ({code:?}): {reason}"),
                    None => bail!("connection lost: {reason}"),
                }
            };
            // Take whatever else already arrived, to batch receipts and acks.
            let mut batch = vec![first];
            while batch.len() < 256 {
                match tokio::time::timeout(Duration::ZERO, self.client.next_event()).await {
                    Ok(Some(e)) => batch.push(e),
                    _ => break,
                }
            }
            self.handle(batch).await?;
        }
        Ok(())
    }

    /// Prints the new events among `events` (up to `--count` messages), sends
    /// one DELIVERED receipt per chat for others' messages, then acknowledges
    /// the contiguous prefix: one request each per batch, not per event, so
    /// catching up stays within the server's rate limit. Events after the
    /// count are left unobserved, so they stay unacknowledged for a later run.
    async fn handle(&mut self, events: Vec<v1::Event>) -> anyhow::Result<()> {
        let mut delivered: BTreeMap<u64, u64> = BTreeMap::new();
        for e in events {
            if self.done() {
                break;
            }
            if e.pos == 0 {
                // Transient: not in the log, never acknowledged.
                match &e.kind {
                    Some(v1::event::Kind::Presence(p)) => self.out.presence(p)?,
                    Some(v1::event::Kind::Typing(t)) => self.out.typing(t)?,
                    Some(v1::event::Kind::Advanced(a)) => match &a.message {
                        Some(m) => {
                            self.out.message(m, None)?;
                            self.printed += 1;
                        }
                        None => self.out.emit(
                            || {
                                format!(
                                    "[chat {}] new post #{} (quip channel read chat:{})",
                                    a.chat_id, a.seq, a.chat_id
                                )
                            },
                            || json!({"type": "channel_advanced", "chat": a.chat_id, "seq": a.seq}),
                        )?,
                    },
                    _ => {}
                }
                continue;
            }
            if !self.tracker.observe(e.pos) {
                continue; // seen already (pushed and synced, or pushed twice)
            }
            self.max_seen = self.max_seen.max(e.pos);
            match &e.kind {
                Some(v1::event::Kind::Message(m)) => {
                    self.out.message(m, Some(e.pos))?;
                    self.printed += 1;
                    if m.sender != self.me {
                        let d = delivered.entry(m.chat_id).or_default();
                        *d = (*d).max(m.seq);
                    }
                }
                Some(v1::event::Kind::Receipt(r)) => self.out.receipt(r, e.pos)?,
                // Transient kinds carry pos 0 and are handled above.
                Some(v1::event::Kind::Advanced(_) | v1::event::Kind::Presence(_) | v1::event::Kind::Typing(_)) => {}
                None => {} // a kind newer than this client: nothing to show
            }
        }
        for (chat, seq) in delivered {
            self.client.receipt(chat, ReceiptKind::Delivered, seq).await?;
        }
        if let Some(pos) = self.tracker.take_ack() {
            self.client.ack(pos).await?;
        }
        Ok(())
    }
}
