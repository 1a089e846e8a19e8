//! `quip listen` and `quip sync`: this device's view of the user's log.
//!
//! `listen` keeps one [`Feed`] across connections: when a connection ends
//! for a reason a reconnect can fix (the server restarted, the network
//! dropped), it connects again with backoff and syncs from the position the
//! server holds for this device. The feed's tracker remembers every position
//! it printed, so what comes again (printed but not yet acknowledged when
//! the connection died) is not printed twice, and what was missed meanwhile
//! comes with the sync.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use quip_client::{AckTracker, Client, ClientError};
use quip_protocol::CloseCode;
use quip_protocol::v1::{self, ReceiptKind};
use serde_json::json;

use super::Ctx;
use super::fail::{Exit, Failure, SessionEnded};
use super::out::Out;

/// The first wait before reconnecting; it doubles after each failed try.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between tries.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// `quip listen`: what was missed, then events as they arrive, across
/// reconnects (unless `once`), until `--count` messages, Ctrl-C or SIGTERM.
pub async fn listen(ctx: &Ctx, count: Option<usize>, once: bool) -> anyhow::Result<()> {
    let token = ctx.profile.token()?.to_owned();
    let mut feed = Feed::new(&ctx.out, count);
    // Ctrl-C or SIGTERM ends the command; the connection is closed with a
    // goodbye either way, so contacts see this user go offline at once.
    let stop = stop_requested();
    tokio::pin!(stop);
    let mut retry = FIRST_RETRY;
    let mut lost: Option<String> = None;
    loop {
        let opened = tokio::select! {
            r = ctx.open(Some(&token)) => r,
            r = &mut stop => return r,
        };
        let outcome = match opened {
            Ok(conn) => {
                conn.run(async |c| {
                    if let Some(why) = lost.take() {
                        status(
                            &ctx.out,
                            "reconnected",
                            &format!("reconnected after {why}; catching up"),
                        );
                    }
                    feed.me = c.welcome().user.clone();
                    tokio::select! {
                        r = feed.follow(c) => r,
                        r = &mut stop => r.map(|()| Ended::Done),
                    }
                })
                .await
            }
            Err(e) => Err(e),
        };
        let why = match outcome {
            Ok(Ended::Done) => return Ok(()),
            Ok(Ended::Closed(code, reason)) => match code {
                Some(CloseCode::LoggedOut | CloseCode::SessionExpired) => {
                    return Err(SessionEnded(format!("{code:?}: {reason}")).into());
                }
                Some(CloseCode::Replaced) => {
                    anyhow::bail!("a newer connection of this device replaced this one (another 'quip listen'?)")
                }
                // The operator closed it: not reconnected by itself (spec §12).
                Some(
                    CloseCode::TooManyConnections
                    | CloseCode::ProtocolError
                    | CloseCode::UnsupportedVersion
                    | CloseCode::Kicked,
                ) => {
                    return Err(ClientError::Closed(format!("{code:?}: {reason}")).into());
                }
                _ if once => {
                    let what = code.map_or_else(|| "lost".to_owned(), |c| format!("closed by the server ({c:?})"));
                    return Err(ClientError::Closed(format!("{what}: {reason}")).into());
                }
                Some(code) => format!("the server closed the connection ({code:?}: {reason})"),
                None => format!("the connection was lost ({reason})"),
            },
            // Connecting failed, or a request died with the connection.
            Err(e) if !once && Failure::of(&e).exit == Exit::Unavailable => format!("{e:#}"),
            Err(e) => return Err(e),
        };
        // A connection that got as far as the live feed resets the backoff.
        if feed.connected {
            retry = FIRST_RETRY;
            feed.connected = false;
        }
        let wait = jitter(retry);
        status(
            &ctx.out,
            "reconnecting",
            &format!("{why}; reconnecting in {:.1} s", wait.as_secs_f32()),
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            r = &mut stop => return r,
        }
        retry = (retry * 2).min(MAX_RETRY);
        lost = Some(why);
    }
}

/// Resolves when the user asks `quip listen` to stop: Ctrl-C or SIGTERM.
async fn stop_requested() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

/// `d` give or take a fifth, so listeners cut off together do not all
/// come back in the same instant.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

/// Says on stderr what the listener is doing about its connection (stdout
/// carries only the feed): a line of text, or a JSON object with `--json`.
fn status(out: &Out, kind: &str, text: &str) {
    if out.json {
        eprintln!("{}", json!({"type": kind, "message": text}));
    } else {
        eprintln!("quip: {text}");
    }
}

/// `quip sync`: what was missed, and exit.
pub async fn sync(ctx: &Ctx) -> anyhow::Result<()> {
    ctx.call(async |c| {
        let mut feed = Feed::new(&ctx.out, None);
        feed.me = c.welcome().user.clone();
        feed.catch_up(c).await
    })
    .await
}

/// How a connection's feed ended.
enum Ended {
    /// `--count` reached, or the user asked to stop.
    Done,
    /// The connection closed: the server's close code, if it sent one.
    Closed(Option<CloseCode>, String),
}

/// This device's view of the user's log: prints new events, confirms
/// delivery of others' messages, and acknowledges what it has handled.
struct Feed<'a> {
    out: &'a Out,
    /// Who this connection is (others' messages get DELIVERED receipts).
    me: String,
    tracker: AckTracker,
    /// The highest position observed; above `tracker.contiguous()` while a
    /// gap is open.
    max_seen: u64,
    printed: usize,
    count: Option<usize>,
    /// Whether the current connection caught up and went live.
    connected: bool,
}

impl<'a> Feed<'a> {
    fn new(out: &'a Out, count: Option<usize>) -> Self {
        Self {
            out,
            me: String::new(),
            // The first sync page tells the tracker where the server has this device.
            tracker: AckTracker::new(0),
            max_seen: 0,
            printed: 0,
            count,
            connected: false,
        }
    }

    /// Catches up, then follows pushed events until `--count` is reached or
    /// the connection ends.
    async fn follow(&mut self, client: &Client) -> anyhow::Result<Ended> {
        self.catch_up(client).await?;
        self.connected = true;
        self.live(client).await
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
    async fn catch_up(&mut self, client: &Client) -> anyhow::Result<()> {
        while !self.done() {
            let page = client.sync(0).await?;
            self.tracker.server_position(page.acked);
            if page.retained_from_pos > page.acked + 1 && self.tracker.contiguous() < page.retained_from_pos - 1 {
                let text = format!(
                    "events {} to {} expired under the server's retention policy before this device synced",
                    page.acked + 1,
                    page.retained_from_pos - 1
                );
                status(self.out, "expired", &text);
            }
            self.tracker.retained_from(page.retained_from_pos);
            let before = self.tracker.contiguous();
            self.handle(client, page.events).await?;
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
    async fn live(&mut self, client: &Client) -> anyhow::Result<Ended> {
        const GAP_WAIT: Duration = Duration::from_millis(300);
        while !self.done() {
            let next = if self.max_seen > self.tracker.contiguous() {
                match tokio::time::timeout(GAP_WAIT, client.next_event()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.catch_up(client).await?;
                        continue;
                    }
                }
            } else {
                client.next_event().await
            };
            let Some(first) = next else {
                let (code, reason) = client.closed().await;
                return Ok(Ended::Closed(code, reason));
            };
            // Take whatever else already arrived, to batch receipts and acks.
            let mut batch = vec![first];
            while batch.len() < 256 {
                match tokio::time::timeout(Duration::ZERO, client.next_event()).await {
                    Ok(Some(e)) => batch.push(e),
                    _ => break,
                }
            }
            self.handle(client, batch).await?;
        }
        Ok(Ended::Done)
    }

    /// Prints the new events among `events` (up to `--count` messages), sends
    /// one DELIVERED receipt per chat for others' messages, then acknowledges
    /// the contiguous prefix: one request each per batch, not per event, so
    /// catching up stays within the server's rate limit. Events after the
    /// count are left unobserved, so they stay unacknowledged for a later run.
    async fn handle(&mut self, client: &Client, events: Vec<v1::Event>) -> anyhow::Result<()> {
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
                // A kind newer than this client, or a message retention
                // deleted: nothing to show, acknowledged all the same.
                None => {}
            }
        }
        for (chat, seq) in delivered {
            client.receipt(chat, ReceiptKind::Delivered, seq).await?;
        }
        if let Some(pos) = self.tracker.take_ack() {
            client.ack(pos).await?;
        }
        Ok(())
    }
}
