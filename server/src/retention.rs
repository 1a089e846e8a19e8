//! The retention sweep: the async shell around [`crate::service::retention`].
//!
//! Every `--retention-sweep-secs` it walks every chat, then every user's
//! log, running the service's plan (a snapshot read) and step (a bounded
//! write) until each is done, and deletes the chunk objects of media whose
//! last reference went once the step that dropped it is durable. Chats go
//! first because a log entry is trimmed only once its message's chat floor
//! has passed it.
//!
//! In a cluster only the lowest live node sweeps (as it sweeps throttle
//! buckets, `cluster/nodes.rs`); when nodes disagree for a heartbeat about
//! who that is, both sweep, which is safe: a step that finds its floor
//! moved does nothing, so concurrent sweeps cost work, not correctness. A crash
//! between a step's commit and its chunk deletions leaves those objects
//! behind (as the abandoned-upload sweep would); the records never point
//! at deleted bytes.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::clock::Clock;
use crate::cluster::Node;
use crate::media::MediaStore;
use crate::service::{ServiceError, retention};
use crate::store::{self, Store};

/// Chat and user ids read per page while walking them.
const PAGE: usize = 256;

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Messages deleted.
    pub messages: u64,
    /// Log entries deleted.
    pub log_entries: u64,
    /// Chunk sets (stored media bytes) deleted.
    pub media: u64,
}

/// Where the sweep runs and what it deletes.
pub struct Sweeper {
    /// The message store.
    pub store: Arc<dyn Store>,
    /// Where media bytes are.
    pub media: Arc<MediaStore>,
    /// This node's place in a cluster, once joined (none on one node).
    pub cluster: Arc<OnceLock<Arc<Node>>>,
    /// Wall time.
    pub clock: Clock,
    /// Messages sent longer ago than this are deleted (`None`: any age is kept).
    pub max_age: Option<Duration>,
    /// Only the newest this many messages of a chat are kept (0: all).
    pub max_messages: u64,
    /// Time between sweeps.
    pub every: Duration,
}

/// Sweeps every `every`, deleting what was sent more than `max_age` ago by
/// `clock` and what is beyond a chat's newest `max_messages`. Runs until
/// aborted.
pub async fn run(s: Sweeper) {
    let Sweeper {
        store,
        media,
        cluster,
        clock,
        max_age,
        max_messages,
        every,
    } = s;
    let max_age_ms = max_age.map(|a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX));
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(node) = cluster.get()
            && node.live_nodes().first().is_some_and(|&lowest| lowest != node.id)
        {
            continue;
        }
        let keep = retention::Keep {
            sent_since_ms: max_age_ms.map_or(i64::MIN, |age| clock.wall_ms().saturating_sub(age)),
            newest: max_messages,
        };
        match sweep(&*store, &media, keep).await {
            Ok(s) if s != Swept::default() => {
                crate::metrics::retention_deleted(s.messages, s.log_entries, s.media);
                tracing::info!(
                    messages = s.messages,
                    log_entries = s.log_entries,
                    media = s.media,
                    "retention sweep deleted expired messages"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep stopped early; the next one continues"),
        }
    }
}

/// One pass: deletes every message `keep` does not keep, the log entries
/// that referred to them, and media left without references.
pub async fn sweep(store: &dyn Store, media: &MediaStore, keep: retention::Keep) -> Result<Swept, ServiceError> {
    let mut swept = Swept::default();
    let mut next = 0;
    loop {
        let chats = store::read(store, |t| retention::chats(t, next, PAGE))?;
        let Some(&last) = chats.last() else { break };
        for chat_id in chats {
            while let Some(plan) = store::read(store, |t| retention::plan_chat(t, chat_id, keep))? {
                let more = plan.more;
                swept.messages += plan.to - plan.from;
                let chunks = store::write(store, move |t| retention::expire_messages(t, &plan)).await?;
                for upload in chunks {
                    media.delete_chunks(&upload).await;
                    swept.media += 1;
                }
                if !more {
                    break;
                }
            }
            // The plans' reads are synchronous: let other tasks run
            // between chats, however many there are.
            tokio::task::yield_now().await;
        }
        let Some(after) = last.checked_add(1) else { break };
        next = after;
    }
    let mut next = 0;
    loop {
        let users = store::read(store, |t| retention::users(t, next, PAGE))?;
        let Some(&last) = users.last() else { break };
        for uid in users {
            while let Some(plan) = store::read(store, |t| retention::plan_log(t, uid))? {
                swept.log_entries += plan.to - plan.from;
                store::write(store, move |t| retention::trim_log(t, &plan)).await?;
                if !plan.more {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        let Some(after) = last.checked_add(1) else { break };
        next = after;
    }
    Ok(swept)
}
