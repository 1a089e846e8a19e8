//! Metrics: what quipd counts, under which Prometheus names, and the one
//! recorder that renders them for `GET /metrics` on the admin listener.
//!
//! Everything goes through the `metrics` facade. Until [`install`] runs
//! (quipd does when `--admin-listen` is set) there is no recorder and every
//! call here is a no-op. Handles are atomics: the message path pays an
//! atomic add per event, never a lock. Where a metric is touched per
//! message or per request, its handle is looked up once and kept in a
//! static (the facade's registry lookup takes a shard lock and builds a
//! key): so a process must install the recorder before it serves, as
//! `Server::bind` does, or those handles stay no-ops.
//!
//! Label values are `&'static str` from fixed sets (transports, request
//! kinds, error codes, directions), so the number of series is bounded
//! whatever clients send. Names follow Prometheus conventions: units in the
//! name (`_seconds`, `_bytes`), `_total` on counters.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use quip_protocol::v1::ErrorCode;
use quip_protocol::{Body, Envelope};

/// Connections open now, by transport (`quic`, `websocket`).
pub const CONNECTIONS_OPEN: &str = "quip_connections_open";
/// TLS handshakes, by transport (`quic`, `https`) and result (`ok`,
/// `failed`, `timeout`).
pub const HANDSHAKES: &str = "quip_handshakes_total";
/// Requests answered, by kind and result code (`OK` or the error code).
pub const REQUESTS: &str = "quip_requests_total";
/// From a send request read to its durable "sent" reply.
pub const DURABLE_ACK: &str = "quip_send_durable_ack_seconds";
/// One group commit (or FoundationDB batch): running its writes and
/// making them durable.
pub const COMMIT_SECONDS: &str = "quip_store_commit_seconds";
/// Writes per group commit.
pub const COMMIT_BATCH: &str = "quip_store_commit_batch_writes";
/// A push queue's depth when an event is queued behind others.
pub const PUSH_BACKLOG: &str = "quip_push_queue_backlog_events";
/// Connections closed because their push queue was full.
pub const SLOW_CONSUMER: &str = "quip_slow_consumer_closes_total";
/// Users online on this node (connected, or within the presence grace).
pub const USERS_ONLINE: &str = "quip_users_online";
/// Media bytes stored (`in`) and served (`out`).
pub const MEDIA_BYTES: &str = "quip_media_bytes_total";
/// Requests refused by a rate limit, by which (`requests`,
/// `registrations`, `password_queue`).
pub const RATE_LIMITED: &str = "quip_rate_limited_total";
/// Logins, by result (`ok`, `failed`, `throttled`).
pub const LOGINS: &str = "quip_logins_total";
/// Accounts registered.
pub const REGISTRATIONS: &str = "quip_registrations_total";
/// FoundationDB transactions retried after an error, by operation
/// (`read`, `write`) and reason (`conflict`, `other`).
pub const FDB_RETRIES: &str = "quip_fdb_retries_total";
/// FoundationDB operations that failed for good (retries spent or not
/// retryable), by operation.
pub const FDB_ERRORS: &str = "quip_fdb_errors_total";
/// Always 1, labelled with the version: which build a node runs.
pub const BUILD_INFO: &str = "quip_build_info";
/// What retention sweeps deleted, by kind (`messages`, `log_entries`,
/// `media`: stored media whose bytes went).
pub const RETENTION_DELETED: &str = "quip_retention_deleted_total";

/// The one recorder of this process and its handle for rendering.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process; later calls return
/// the same handle). Latencies are real histograms with fixed buckets, so
/// they aggregate across nodes (summaries would not).
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    const LATENCY: &[f64] = &[
        0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    const COUNTS: &[f64] = &[
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
    ];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY)?
        .set_buckets_for_metric(Matcher::Full(COMMIT_BATCH.into()), COUNTS)?
        .set_buckets_for_metric(Matcher::Full(PUSH_BACKLOG.into()), COUNTS)?;
    let handle = match builder.install_recorder() {
        Ok(h) => h,
        // Another thread won the race: use its recorder.
        Err(_) if HANDLE.get().is_some() => return Ok(HANDLE.get().expect("checked").clone()),
        Err(e) => anyhow::bail!("installing the metrics recorder: {e}"),
    };
    let handle = HANDLE.get_or_init(|| handle).clone();
    describe();
    zeroes();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Series of the fixed label sets exist from the start at 0, so a rate
/// over the first event is right and dashboards show 0, not "no data".
fn zeroes() {
    for t in ["quic", "websocket"] {
        metrics::gauge!(CONNECTIONS_OPEN, "transport" => t).set(0.0);
    }
    for t in ["quic", "https"] {
        for r in ["ok", "failed", "timeout"] {
            metrics::counter!(HANDSHAKES, "transport" => t, "result" => r).absolute(0);
        }
    }
    for r in ["ok", "failed", "throttled", "disabled"] {
        metrics::counter!(LOGINS, "result" => r).absolute(0);
    }
    for l in ["requests", "registrations", "password_queue"] {
        metrics::counter!(RATE_LIMITED, "limit" => l).absolute(0);
    }
    for d in ["in", "out"] {
        metrics::counter!(MEDIA_BYTES, "direction" => d).absolute(0);
    }
    for w in ["messages", "log_entries", "media"] {
        metrics::counter!(RETENTION_DELETED, "what" => w).absolute(0);
    }
    metrics::counter!(REGISTRATIONS).absolute(0);
    metrics::counter!(SLOW_CONSUMER).absolute(0);
    metrics::gauge!(USERS_ONLINE).set(0.0);
}

/// HELP and TYPE lines, so `/metrics` explains itself.
fn describe() {
    use metrics::{describe_counter as c, describe_gauge as g, describe_histogram as h};
    g!(CONNECTIONS_OPEN, "Connections open now, by transport.");
    c!(HANDSHAKES, "TLS handshakes by transport and result.");
    c!(
        REQUESTS,
        "Requests answered, by kind and result code (OK or the error code)."
    );
    h!(
        DURABLE_ACK,
        Unit::Seconds,
        "From a send request read to its durable 'sent' reply."
    );
    h!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "One group commit: running its writes and making them durable."
    );
    h!(COMMIT_BATCH, Unit::Count, "Writes per group commit.");
    h!(
        PUSH_BACKLOG,
        Unit::Count,
        "Depth of a connection's push queue when an event is queued behind others."
    );
    c!(SLOW_CONSUMER, "Connections closed because their push queue was full.");
    g!(
        USERS_ONLINE,
        "Users online on this node (connected, or within the presence grace)."
    );
    c!(MEDIA_BYTES, Unit::Bytes, "Media bytes stored (in) and served (out).");
    c!(RATE_LIMITED, "Requests refused by a rate limit, by limit.");
    c!(LOGINS, "Login attempts by result (ok, failed, throttled).");
    c!(REGISTRATIONS, "Accounts registered.");
    c!(
        FDB_RETRIES,
        "FoundationDB transactions retried after an error, by operation and reason."
    );
    c!(
        FDB_ERRORS,
        "FoundationDB operations that failed for good, by operation."
    );
    c!(
        RETENTION_DELETED,
        "What retention sweeps deleted: messages, log entries, media (stored bytes)."
    );
    g!(BUILD_INFO, "Always 1; the version label says which build runs.");
}

/// Keeps histogram buckets current and bounded: call every few seconds
/// while serving.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// A handle looked up once, on first use.
macro_rules! cached {
    ($ty:ty, $make:expr) => {{
        static H: OnceLock<$ty> = OnceLock::new();
        H.get_or_init(|| $make)
    }};
}

/// Counts an open connection for as long as it lives.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl OpenConnection {
    /// One more open connection on `transport` (`quic` or `websocket`).
    pub fn new(transport: &'static str) -> Self {
        let g = metrics::gauge!(CONNECTIONS_OPEN, "transport" => transport);
        g.increment(1.0);
        Self(g)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A TLS handshake ended: `result` is `ok`, `failed` or `timeout`.
pub fn handshake(transport: &'static str, result: &'static str) {
    metrics::counter!(HANDSHAKES, "transport" => transport, "result" => result).increment(1);
}

/// The request kinds, as label values, in one table indexed by
/// [`request_kind`].
const KINDS: [&str; 23] = [
    "register",
    "login",
    "logout",
    "whoami",
    "send",
    "history",
    "chats",
    "receipt",
    "sync",
    "ack",
    "ping",
    "create_chat",
    "update_chat",
    "chat_info",
    "receipt_detail",
    "subscribe",
    "presence",
    "settings",
    "typing",
    "block",
    "upload",
    "download",
    "other",
];

/// Result codes: `OK`, then the error codes by number.
const CODES: usize = 32;

/// A request's kind, as an index into the kinds' table. Bodies only
/// servers send (and Hello, refused later) are `other`.
pub fn request_kind(body: Option<&Body>) -> u8 {
    let i = match body {
        Some(Body::Register(_)) => 0,
        Some(Body::Login(_)) => 1,
        Some(Body::Logout(_)) => 2,
        Some(Body::Whoami(_)) => 3,
        Some(Body::Send(_)) => 4,
        Some(Body::History(_)) => 5,
        Some(Body::Chats(_)) => 6,
        Some(Body::Receipt(_)) => 7,
        Some(Body::Sync(_)) => 8,
        Some(Body::Ack(_)) => 9,
        Some(Body::Ping(_)) => 10,
        Some(Body::CreateChat(_)) => 11,
        Some(Body::UpdateChat(_)) => 12,
        Some(Body::ChatInfo(_)) => 13,
        Some(Body::ReceiptDetail(_)) => 14,
        Some(Body::Subscribe(_)) => 15,
        Some(Body::Presence(_)) => 16,
        Some(Body::Settings(_)) => 17,
        Some(Body::Typing(_)) => 18,
        Some(Body::Block(_)) => 19,
        Some(Body::Upload(_)) => 20,
        Some(Body::Download(_)) => 21,
        _ => 22,
    };
    i as u8
}

/// Messages accepted since start, readable back (the facade's counters are
/// not): `quipd admin stats` derives messages per second from it.
pub static MESSAGES_SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The index of the `send` kind.
const SEND: u8 = 4;

/// A request of `kind` (from [`request_kind`]), read at `started`, was
/// answered with `reply`.
pub fn request_answered(kind: u8, started: Instant, reply: &Envelope) {
    type Row = [OnceLock<Counter>; CODES];
    static COUNTERS: [Row; KINDS.len()] = [const { [const { OnceLock::new() }; CODES] }; KINDS.len()];
    let (code, name) = match &reply.body {
        Some(Body::Error(e)) => match ErrorCode::try_from(e.code) {
            Ok(c) if (c as usize) + 1 < CODES => (c as usize + 1, c.as_str_name()),
            _ => (0, "UNKNOWN"),
        },
        _ => (0, "OK"),
    };
    let kind_i = usize::from(kind).min(KINDS.len() - 1);
    // Row 0 is OK, except for codes this build does not know, which are
    // rare enough to go through the registry each time.
    if code == 0 && name != "OK" {
        metrics::counter!(REQUESTS, "kind" => KINDS[kind_i], "code" => name).increment(1);
    } else {
        COUNTERS[kind_i][code]
            .get_or_init(|| metrics::counter!(REQUESTS, "kind" => KINDS[kind_i], "code" => name))
            .increment(1);
    }
    if kind == SEND && name == "OK" {
        MESSAGES_SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        cached!(Histogram, metrics::histogram!(DURABLE_ACK)).record(started.elapsed().as_secs_f64());
    }
}

/// A group commit of `writes` writes took `took`.
pub fn commit(writes: usize, took: Duration) {
    cached!(Histogram, metrics::histogram!(COMMIT_SECONDS)).record(took.as_secs_f64());
    cached!(Histogram, metrics::histogram!(COMMIT_BATCH)).record(writes as f64);
}

/// An event was queued behind `depth` others on a connection's push queue.
pub fn push_backlog(depth: usize) {
    cached!(Histogram, metrics::histogram!(PUSH_BACKLOG)).record(depth as f64);
}

/// A connection was closed as a slow consumer.
pub fn slow_consumer() {
    metrics::counter!(SLOW_CONSUMER).increment(1);
}

/// A user came online (`true`) or went offline on this node.
pub fn user_online(online: bool) {
    let g = cached!(Gauge, metrics::gauge!(USERS_ONLINE));
    if online {
        g.increment(1.0);
    } else {
        g.decrement(1.0);
    }
}

/// Media bytes stored (`inbound`) or served.
pub fn media_bytes(inbound: bool, n: u64) {
    if inbound {
        cached!(Counter, metrics::counter!(MEDIA_BYTES, "direction" => "in")).increment(n);
    } else {
        cached!(Counter, metrics::counter!(MEDIA_BYTES, "direction" => "out")).increment(n);
    }
}

/// A request was refused by `limit` (`requests`, `registrations`,
/// `password_queue`).
pub fn rate_limited(limit: &'static str) {
    metrics::counter!(RATE_LIMITED, "limit" => limit).increment(1);
}

/// A login ended with `result` (`ok`, `failed`, `throttled`).
pub fn login(result: &'static str) {
    metrics::counter!(LOGINS, "result" => result).increment(1);
}

/// An account was registered.
pub fn registered() {
    metrics::counter!(REGISTRATIONS).increment(1);
}

/// A FoundationDB transaction is retried after an error.
pub fn fdb_retry(op: &'static str, conflict: bool) {
    let reason = if conflict { "conflict" } else { "other" };
    metrics::counter!(FDB_RETRIES, "op" => op, "reason" => reason).increment(1);
}

/// A retention sweep deleted these (see [`RETENTION_DELETED`]).
pub fn retention_deleted(messages: u64, log_entries: u64, media: u64) {
    metrics::counter!(RETENTION_DELETED, "what" => "messages").increment(messages);
    metrics::counter!(RETENTION_DELETED, "what" => "log_entries").increment(log_entries);
    metrics::counter!(RETENTION_DELETED, "what" => "media").increment(media);
}

/// A FoundationDB operation failed for good.
pub fn fdb_error(op: &'static str) {
    metrics::counter!(FDB_ERRORS, "op" => op).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request kind has its own label, and the table and the match agree.
    #[test]
    fn request_kinds_are_distinct_and_bounded() {
        let mut seen = std::collections::HashSet::new();
        assert!(seen.insert(KINDS[request_kind(Some(&Body::Send(Default::default()))) as usize]));
        assert_eq!(
            KINDS[request_kind(Some(&Body::Send(Default::default()))) as usize],
            "send"
        );
        assert_eq!(
            KINDS[request_kind(Some(&Body::Login(Default::default()))) as usize],
            "login"
        );
        assert_eq!(
            KINDS[request_kind(Some(&Body::Download(Default::default()))) as usize],
            "download"
        );
        assert_eq!(KINDS[request_kind(None) as usize], "other");
        assert_eq!(
            KINDS[request_kind(Some(&Body::Hello(Default::default()))) as usize],
            "other"
        );
        let unique: std::collections::HashSet<_> = KINDS.iter().collect();
        assert_eq!(unique.len(), KINDS.len());
        assert!(ErrorCode::UploadIncomplete as usize + 1 < CODES, "a code has no row");
    }
}
