//! Configuration: command-line flags, each with an environment variable,
//! and a TOML file of the same settings ([`file`]); [`Config::load`]
//! merges them, flags first.

pub mod file;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

/// quipd: the Quip messaging server.
///
/// With no flags it runs in dev mode: data in ./quip-data, listening on
/// 127.0.0.1:4433 (QUIC on UDP, HTTPS and WebSocket on TCP; the web client
/// is at https://localhost:4433/), with a self-signed certificate generated in the data
/// directory (clients trust it with `quip --ca <data-dir>/dev-cert.pem`).
///
/// `quipd backup --to DIR` and `quipd restore --from DIR --data-dir NEW`
/// back up a running server and restore it (see their --help).
// These doc comments are `--help` text, written for a terminal:
// `<data-dir>` and `[::]:4433` are meant literally, not as HTML or links.
#[allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]
#[derive(Debug, Clone, Parser)]
#[command(name = "quipd", version = VERSION, about, long_about, args_conflicts_with_subcommands = true)]
pub struct Config {
    /// A TOML file of settings: each key is a flag below with `_` for `-`
    /// (`max_body = 65536`). Flags and environment variables override it;
    /// `quipd config default` prints an example with every key.
    #[arg(long, env = "QUIP_CONFIG")]
    pub config: Option<PathBuf>,

    /// Something other than serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// UDP address for QUIC. Use 0.0.0.0:4433 (or [::]:4433) to accept remote clients.
    #[arg(long, env = "QUIP_LISTEN", default_value = "127.0.0.1:4433")]
    pub listen: SocketAddr,

    /// TCP address for HTTPS: the WebSocket endpoint for browsers (/v1/ws),
    /// the web client (/), /healthz and /readyz. Default: the --listen address, so
    /// one port number serves QUIC (UDP) and HTTPS (TCP), as HTTP/3 sites do.
    #[arg(long, env = "QUIP_HTTPS_LISTEN")]
    pub https_listen: Option<SocketAddr>,

    /// Serve QUIC only: no HTTPS listener, so no browsers.
    #[arg(long, env = "QUIP_NO_HTTPS")]
    pub no_https: bool,

    /// Directory holding the database (db/), media (media/), the dev
    /// certificate and the node secret. Created owner-only (0700); quipd
    /// warns at start if an existing one is open to other users.
    #[arg(long, env = "QUIP_DATA_DIR", default_value = "quip-data")]
    pub data_dir: PathBuf,

    /// Where the data lives: embedded (a database in the data directory,
    /// see --store-engine) or fdb (a FoundationDB cluster that several
    /// quipd nodes may share, see --fdb-cluster-file; needs a quipd built
    /// with --features fdb). Media, certificate and node secret stay in the
    /// data directory either way.
    #[arg(long, env = "QUIP_STORE", value_enum, default_value_t = crate::store::StoreKind::Embedded)]
    pub store: crate::store::StoreKind,

    /// Storage engine in the data directory. Default: lsm, or redb when the
    /// directory already holds a redb database (quip.redb) from an older
    /// quipd.
    #[arg(long, env = "QUIP_STORE_ENGINE", value_enum)]
    pub store_engine: Option<crate::store::EngineKind>,

    /// FoundationDB cluster file, with --store fdb. Default: FoundationDB's
    /// own (the FDB_CLUSTER_FILE variable, else /etc/foundationdb/fdb.cluster).
    #[arg(long, env = "QUIP_FDB_CLUSTER_FILE")]
    pub fdb_cluster_file: Option<PathBuf>,

    /// Name of the key prefix (a tuple-layer subspace) quipd keeps its data
    /// under, with --store fdb. Nodes of one Quip cluster use the same name;
    /// other names share the FoundationDB cluster without seeing each other.
    #[arg(long, env = "QUIP_FDB_PREFIX", default_value = "quip")]
    pub fdb_prefix: String,

    /// Milliseconds a FoundationDB transaction may take, retries included,
    /// before the request fails with UNAVAILABLE (retry after 1 s), with
    /// --store fdb: how long requests wait while the cluster is down or
    /// recovering.
    #[arg(long, env = "QUIP_FDB_TIMEOUT_MS", default_value_t = 10_000)]
    pub fdb_timeout_ms: u32,

    /// The node secret that QUIC's stateless-reset and Retry-token keys
    /// derive from (32 bytes or more; created 0600 with random content if
    /// missing). Default: <data-dir>/secret. Keeping it across restarts lets
    /// clients of a restarted server notice at their next packet instead of
    /// at their idle timeout; nodes behind one address share one file.
    #[arg(long, env = "QUIP_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// TLS certificate chain (PEM). Without --cert/--key a self-signed dev
    /// certificate for localhost is generated in the data directory.
    #[arg(long, env = "QUIP_CERT", requires = "key")]
    pub cert: Option<PathBuf>,

    /// TLS private key (PEM) matching --cert.
    #[arg(long, env = "QUIP_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Largest message body in bytes: text, payload, content type and
    /// media reference together (at most 262144, a quarter of a frame, so
    /// any stored message fits in a reply).
    #[arg(long, env = "QUIP_MAX_BODY", default_value_t = quip_protocol::DEFAULT_MAX_BODY, value_parser = parse_max_body)]
    pub max_body: usize,

    /// Most members a group may have (admins included). Every message is
    /// written to each member's log, so this bounds the cost of one send;
    /// audiences beyond it belong in a channel.
    #[arg(long, env = "QUIP_MAX_GROUP_MEMBERS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub max_group_members: u32,

    /// Seconds a user still counts as online after their last connection
    /// went silent (lost, or timed out counting from its last packet). A
    /// reconnect within it shows no offline/online flicker to contacts. A
    /// connection the client closes ends presence at once.
    #[arg(long, env = "QUIP_PRESENCE_GRACE", default_value_t = 30.0)]
    pub presence_grace_secs: f64,

    /// Typing indicators each device may send per second (bursts of 3);
    /// excess ones are dropped.
    #[arg(long, env = "QUIP_TYPING_RATE", default_value_t = 1.0)]
    pub typing_rate: f64,

    /// Connections one user may have open at once (all devices); more are
    /// refused with close code 8.
    #[arg(long, env = "QUIP_MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: usize,

    /// Connections one device may have open at once. A newer one replaces
    /// the oldest (close code 7): a phone that reconnects on a new network
    /// before its old connection timed out does not pile up connections.
    #[arg(long, env = "QUIP_MAX_CONNECTIONS_PER_DEVICE", default_value_t = 2)]
    pub max_connections_per_device: usize,

    /// Seconds a session token stays valid after the login that issued it
    /// (default 90 days); then the device must log in again.
    #[arg(long, env = "QUIP_TOKEN_TTL_SECS", default_value_t = 90 * 24 * 3600)]
    pub token_ttl_secs: u64,

    /// Failed logins allowed per account before further attempts (right or
    /// wrong) are refused; one more is allowed per minute after that.
    #[arg(long, env = "QUIP_LOGIN_FAILURES_PER_ACCOUNT", default_value_t = 5)]
    pub login_failures_per_account: u32,

    /// Failed logins allowed per client IP address (any accounts) before
    /// further attempts from it are refused; one more per 10 s after that.
    #[arg(long, env = "QUIP_LOGIN_FAILURES_PER_IP", default_value_t = 20)]
    pub login_failures_per_ip: u32,

    /// Accounts one client IP address may register in a burst; then
    /// --registrations-per-ip-per-hour more each hour (RATE_LIMITED before
    /// any password hashing). Raise both for clients behind a shared NAT.
    #[arg(long, env = "QUIP_REGISTRATIONS_PER_IP_BURST", default_value_t = 10)]
    pub registrations_per_ip_burst: u32,

    /// Accounts one client IP address may register per hour, sustained.
    #[arg(long, env = "QUIP_REGISTRATIONS_PER_IP_PER_HOUR", default_value_t = 20.0)]
    pub registrations_per_ip_per_hour: f64,

    /// Password hashes (argon2id, ~19 MiB each) run at once for logins and
    /// registrations. 0: one per core, at most 4.
    #[arg(long, env = "QUIP_PASSWORD_WORKERS", default_value_t = 0)]
    pub password_workers: usize,

    /// Logins and registrations waiting for a password worker; beyond this
    /// they are refused at once with RATE_LIMITED (retry after 1 s).
    #[arg(long, env = "QUIP_PASSWORD_QUEUE", default_value_t = 64)]
    pub password_queue: usize,

    /// Requests per second each device may make, sustained (summed over its
    /// connections; anonymous connections each get their own budget). Excess
    /// requests get RATE_LIMITED with a retry delay.
    #[arg(long, env = "QUIP_RATE_LIMIT", default_value_t = 50.0)]
    pub rate_limit: f64,

    /// Requests a device may make in a burst above the sustained rate.
    #[arg(long, env = "QUIP_RATE_BURST", default_value_t = 100.0)]
    pub rate_burst: f64,

    /// Pushed events queued per connection before it counts as a slow
    /// consumer and is closed (it resyncs on reconnect). Bounds memory per
    /// connection at roughly this many events.
    #[arg(long, env = "QUIP_PUSH_QUEUE", default_value_t = 1024)]
    pub push_queue: usize,

    /// Server-initiated streams that carry pushed events; chat C uses lane
    /// C mod N. More lanes: less head-of-line blocking between chats, more
    /// streams per connection.
    #[arg(long, env = "QUIP_PUSH_LANES", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub push_lanes: u32,

    /// Bidirectional (request) streams a client may have open at once.
    #[arg(long, env = "QUIP_MAX_STREAMS", default_value_t = 16)]
    pub max_streams: u32,

    /// Connections accepted at once from one IP address (counting those
    /// still in the handshake); more are refused, so one host cannot use up
    /// --max-connections. Raise it for clients behind a shared NAT.
    /// Handshakes from an address QUIC has not validated hold at most a
    /// quarter of these; past that the server sends a Retry, so Initials
    /// spoofed from an address cannot lock it out.
    #[arg(long, env = "QUIP_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: usize,

    /// Connections accepted at once; further handshakes are refused.
    #[arg(long, env = "QUIP_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Seconds without any packet before a connection is dropped. Clients
    /// keep alive well inside this (the CLI pings every 10 s).
    #[arg(long, env = "QUIP_IDLE_TIMEOUT", default_value_t = 30)]
    pub idle_timeout_secs: u64,

    /// Seconds a QUIC client has to complete its TLS handshake (from its
    /// first packet), and then again to send Hello (counted from the
    /// handshake's completion, so an overloaded server still greets clients
    /// whose handshake merely waited in its queue); then close code 6.
    #[arg(long, env = "QUIP_HELLO_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub hello_timeout_secs: u64,

    /// UDP socket send and receive buffer size in bytes. Bursts of
    /// handshakes overflow the kernel's default (~208 KiB) and dropped
    /// Initial packets cost a retransmission timeout each; the kernel caps
    /// the value at net.core.rmem_max / wmem_max.
    #[arg(long, env = "QUIP_SOCKET_BUFFER", default_value_t = 4 << 20)]
    pub socket_buffer: usize,

    /// Writes waiting for the store's writer before senders wait (backpressure).
    #[arg(long, env = "QUIP_WRITE_QUEUE", default_value_t = 8192)]
    pub write_queue: usize,

    /// Seconds an HTTPS request body (a media upload) may go without a byte
    /// arriving; then the request is answered 408 and its connection
    /// closed, so a stalled upload cannot hold its connection and buffered
    /// bytes for ever.
    #[arg(long, env = "QUIP_HTTP_BODY_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_body_timeout_secs: u64,

    /// Largest media upload in bytes (default 100 MiB).
    #[arg(long, env = "QUIP_MEDIA_MAX_SIZE", default_value_t = 100 << 20)]
    pub media_max_size: u64,

    /// Seconds an upload may stay unsent (in no message) before it is
    /// deleted, with its bytes unless other media shares them.
    #[arg(long, env = "QUIP_MEDIA_UNSENT_TTL", default_value_t = 24 * 3600)]
    pub media_unsent_ttl_secs: u64,

    /// Seconds between sweeps for abandoned uploads.
    #[arg(long, env = "QUIP_MEDIA_SWEEP_SECS", default_value_t = 600)]
    pub media_sweep_secs: u64,

    /// Where media bytes go: the local directory <data-dir>/media unless an
    /// S3 bucket is named. Messages only carry references to them.
    #[arg(long, env = "QUIP_MEDIA_S3_BUCKET")]
    pub media_s3_bucket: Option<String>,

    /// The local media directory, when no S3 bucket is named. Default:
    /// <data-dir>/media. Nodes of a cluster must share their media: one
    /// bucket, or one directory (a file system every node mounts).
    #[arg(long, env = "QUIP_MEDIA_DIR", conflicts_with = "media_s3_bucket")]
    pub media_dir: Option<PathBuf>,

    /// S3 endpoint URL, for S3-compatible stores (MinIO, Ceph, s3s…);
    /// default: AWS for --media-s3-region. http:// URLs are allowed.
    #[arg(long, env = "QUIP_MEDIA_S3_ENDPOINT", requires = "media_s3_bucket")]
    pub media_s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub media_s3_region: String,

    /// S3 access key id.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub media_s3_access_key_id: Option<String>,

    /// S3 secret access key.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub media_s3_secret_access_key: Option<String>,

    /// Log filter (tracing's EnvFilter syntax), e.g. "info" or "quip_server=debug".
    #[arg(long, env = "QUIP_LOG", default_value = "info")]
    pub log: String,

    /// Log lines as text (for a terminal) or JSON (one object per line,
    /// event fields as keys, for log shippers).
    #[arg(long, env = "QUIP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the admin listener: plain HTTP serving /metrics
    /// (Prometheus), /healthz and /readyz. Off unless set. It has no
    /// authentication: keep it on loopback (e.g. 127.0.0.1:9433) or a
    /// private network.
    #[arg(long, env = "QUIP_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    // ---- Retention (retention.rs, service/retention.rs) ----
    /// Days a message is kept: older ones leave history, sync and storage
    /// (with their log entries, and media no kept message carries). Seqs
    /// are never renumbered; clients are told where history now starts.
    /// 0: keep everything forever.
    #[arg(long, env = "QUIP_RETENTION_DAYS", default_value_t = 0)]
    pub retention_days: u64,

    /// Retention in seconds, overriding --retention-days: for tests.
    #[arg(long, env = "QUIP_RETENTION_SECS", hide = true)]
    pub retention_secs: Option<u64>,

    /// Messages kept per chat (group, channel or direct chat), the newest:
    /// older ones are deleted as expired ones are (with --retention-days,
    /// whichever deletes more). 0: no limit.
    #[arg(long, env = "QUIP_RETENTION_MAX_MESSAGES", default_value_t = 0)]
    pub retention_max_messages: u64,

    /// Seconds between retention sweeps (when either limit is on). Each sweep
    /// reads every chat head and every user's log floor once, and deletes
    /// in steps of at most ~500 keys.
    #[arg(long, env = "QUIP_RETENTION_SWEEP_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_sweep_secs: u64,
}

/// `quipd <command>`: things other than serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// The configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Operator commands against the running server, through its admin
    /// listener (--admin-listen) and the token in its data directory. With
    /// QUIP_CONFIG naming the server's file, its data_dir and admin_listen
    /// apply where flags and environment leave them unset.
    Admin(crate::admin::cli::AdminArgs),
}

/// `quipd config …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Prints a commented example file with every setting and its default.
    Default,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `quipd --version`: says whether this build can use FoundationDB.
const VERSION: &str = if cfg!(feature = "fdb") {
    concat!(env!("CARGO_PKG_VERSION"), " (with FoundationDB)")
} else {
    env!("CARGO_PKG_VERSION")
};

fn parse_max_body(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if (1..=quip_protocol::MAX_BODY_LIMIT).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be 1 to {} bytes", quip_protocol::MAX_BODY_LIMIT))
    }
}

/// The flags' defaults, whatever the environment holds: what `quipd` runs
/// with given no flags and no `QUIP_*` variables. The defaults stay where
/// `--help` shows them (the `#[arg]` attributes); only the environment
/// lookups are dropped before parsing an empty command line.
impl Default for Config {
    fn default() -> Self {
        let command = Self::command().mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command
            .try_get_matches_from(["quipd"])
            .expect("the flags' defaults parse");
        Self::from_arg_matches(&matches).expect("the flags' defaults are a valid Config")
    }
}

/// Why [`Config::load`] refused the command line or the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A bad flag or environment variable, or `--help`/`--version`
    /// (`clap::Error::exit` prints it and exits as clap would).
    #[error(transparent)]
    Flags(#[from] clap::Error),
    /// A bad configuration file.
    #[error(transparent)]
    File(#[from] file::FileError),
}

impl Config {
    /// Why these settings cannot run a cluster node, if they cannot: on
    /// FoundationDB every node must reach every upload, so media may not
    /// default to the node's own data directory (an upload to one node
    /// would be missing on the others). A single node on FoundationDB
    /// names its directory explicitly.
    pub fn cluster_media_problem(&self) -> Option<&'static str> {
        (self.store == crate::store::StoreKind::Fdb && self.media_s3_bucket.is_none() && self.media_dir.is_none())
            .then_some(
                "--store fdb: the nodes of a cluster must share their media; name an S3 bucket \
                 (--media-s3-bucket) or a directory every node mounts (--media-dir)",
            )
    }

    /// The settings from `args` (the command line, program name first),
    /// the `QUIP_*` environment and the `--config` file, in that order of
    /// precedence, over the defaults.
    pub fn load<I, T>(args: I) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let cmd = Self::command();
        let matches = cmd.clone().try_get_matches_from(&args)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok(Self::from_arg_matches(&matches)?);
        };
        let applied = file::args_from_file(&cmd, &matches, &path)?;
        if let Some((_, sub)) = matches.subcommand() {
            // A subcommand's arguments follow its name, so the file's
            // settings cannot be appended: they are read on their own, and
            // `quipd admin` takes the data directory and admin address
            // from them when its own flags and environment did not say.
            let mut config = Self::from_arg_matches(&matches)?;
            if let Some(Command::Admin(admin)) = &mut config.command {
                let program = args.first().cloned().unwrap_or_else(|| "quipd".into());
                let from_file = match cmd.try_get_matches_from(std::iter::once(program).chain(applied.args.clone())) {
                    Ok(m) => Self::from_arg_matches(&m)?,
                    Err(e) => return Err(applied.explain(e)?.into()),
                };
                admin.fill_in(sub, &from_file);
            }
            return Ok(config);
        }
        // The file's settings go after the command line's: none of them
        // is one the command line or the environment set (see
        // file::args_from_file), so nothing is overridden twice.
        let merged = args.into_iter().chain(applied.args.iter().cloned());
        match cmd.try_get_matches_from(merged) {
            Ok(m) => Ok(Self::from_arg_matches(&m)?),
            Err(e) => Err(applied.explain(e)?.into()),
        }
    }

    /// The commented example file `quipd config default` prints.
    pub fn example_file() -> String {
        file::example(&Self::command())
    }

    /// How long messages are kept (`None`: forever).
    pub fn retention(&self) -> Option<std::time::Duration> {
        let secs = self
            .retention_secs
            .unwrap_or(self.retention_days.saturating_mul(24 * 3600));
        (secs > 0).then(|| std::time::Duration::from_secs(secs))
    }

    /// The defaults, with the given data directory and an ephemeral port on
    /// loopback: what tests use. The environment is not read, so a `QUIP_*`
    /// variable set where tests run cannot change what they test.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: "127.0.0.1:0".parse().expect("valid address"),
            // Tests register many users from one address.
            registrations_per_ip_burst: 1_000_000,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process [`for_tests_ignores_the_environment`] starts.
    const CHILD: &str = "QUIP_CONFIG_TEST_CHILD";

    /// `for_tests` (and `Default`) keep the defaults when `QUIP_*` variables
    /// say otherwise. The workspace forbids the `unsafe` that setting a
    /// variable in this process takes, so the test runs itself again in a
    /// child process with the variables set, and the child checks.
    #[test]
    fn for_tests_ignores_the_environment() {
        if std::env::var_os(CHILD).is_some() {
            let c = Config::for_tests("d");
            assert_eq!(c.max_body, quip_protocol::DEFAULT_MAX_BODY);
            assert_eq!(c.max_group_members, 256);
            assert_eq!(c.log, "info");
            assert_eq!(c.store_engine, None);
            assert_eq!(c.store, crate::store::StoreKind::Embedded);
            assert_eq!(c.fdb_cluster_file, None);
            assert_eq!(c.fdb_prefix, "quip");
            assert_eq!(c.media_s3_bucket, None);
            assert!(!c.no_https);
            return;
        }
        let name = "config::tests::for_tests_ignores_the_environment";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("QUIP_MAX_BODY", "1234")
            .env("QUIP_MAX_GROUP_MEMBERS", "3")
            .env("QUIP_LOG", "trace")
            .env("QUIP_STORE_ENGINE", "redb")
            .env("QUIP_STORE", "fdb")
            .env("QUIP_FDB_CLUSTER_FILE", "/nonexistent/fdb.cluster")
            .env("QUIP_FDB_PREFIX", "other")
            .env("QUIP_MEDIA_S3_BUCKET", "bucket")
            .env("QUIP_NO_HTTPS", "true")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the child saw the environment:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // libtest succeeds when no test matches the filter: make sure one ran.
        assert!(stdout.contains(&format!("test {name} ... ok")), "{stdout}");
    }

    /// Flags still override the defaults (the path `quipd` takes).
    #[test]
    fn flags_override_the_defaults() {
        let c = Config::parse_from(["quipd", "--max-body", "1000", "--max-group-members", "10"]);
        assert_eq!((c.max_body, c.max_group_members), (1000, 10));
        let d = Config::default();
        assert_eq!(d.max_body, quip_protocol::DEFAULT_MAX_BODY);
        assert_eq!(d.listen, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(d.token_ttl_secs, 90 * 24 * 3600);
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    fn load(args: &[&str]) -> Result<Config, LoadError> {
        Config::load(std::iter::once("quipd").chain(args.iter().copied()))
    }

    /// The file sets what the flags leave unset; a flag wins over it.
    #[test]
    fn file_settings_apply_under_flags() {
        let f = file(
            "# a comment\nmax_body = 1000\nmax_group_members = 10\nno_https = true\n\
             log_format = \"json\"\nlisten = \"127.0.0.1:5000\"\npresence_grace_secs = 5\n",
        );
        let path = f.path().to_str().unwrap();
        let c = load(&["--config", path, "--max-group-members", "20"]).unwrap();
        assert_eq!(c.max_body, 1000, "from the file");
        assert_eq!(c.max_group_members, 20, "the flag wins");
        assert!(c.no_https);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.presence_grace_secs, 5.0, "an integer for a float setting");
        assert_eq!(c.push_queue, 1024, "the default where neither says");
    }

    /// Set in the child process of [`environment_beats_file_and_flags_beat_both`].
    const PRECEDENCE_CHILD: &str = "QUIP_CONFIG_PRECEDENCE_CHILD";

    /// flags > environment > file > defaults, for one key each way. Like
    /// [`for_tests_ignores_the_environment`], the test reruns itself in a
    /// child process with the variables set.
    #[test]
    fn environment_beats_file_and_flags_beat_both() {
        if let Some(path) = std::env::var_os(PRECEDENCE_CHILD) {
            let path = path.to_str().unwrap().to_string();
            let c = load(&["--config", &path, "--max-group-members", "40"]).unwrap();
            assert_eq!(c.max_group_members, 40, "flag > environment > file");
            assert_eq!(c.max_body, 2000, "environment > file");
            assert_eq!(c.rate_limit, 7.0, "file > default");
            assert_eq!(c.push_queue, 1024, "default");
            // The file's switch is on unless the environment says otherwise.
            assert!(!c.no_https, "QUIP_NO_HTTPS=false beats the file's true");
            return;
        }
        let f = file("max_body = 1000\nmax_group_members = 10\nrate_limit = 7\nno_https = true\n");
        let name = "config::tests::environment_beats_file_and_flags_beat_both";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(PRECEDENCE_CHILD, f.path())
            .env("QUIP_MAX_BODY", "2000")
            .env("QUIP_MAX_GROUP_MEMBERS", "30")
            .env("QUIP_NO_HTTPS", "false")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("test {name} ... ok")), "{stdout}");
    }

    /// An unknown key and a bad value are errors naming the key and its line.
    #[test]
    fn file_errors_name_the_key_and_line() {
        let f = file("max_body = 1000\n\nmax_bodyy = 3\n");
        let e = load(&["--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains(":3: unknown key `max_bodyy`"), "{e}");

        let f = file("max_body = 1000\nmax_group_members = 1\n");
        let e = load(&["--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains(":2: bad value for `max_group_members`"), "{e}");
        assert!(e.contains("2..=10000"), "says why: {e}");

        let f = file("listen = 4433\n");
        let e = load(&["--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains(":1: bad value for `listen`"), "{e}");

        let f = file("no_https = \"yes\"\n");
        let e = load(&["--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(
            e.contains(":1: bad value for `no_https`: expected true or false"),
            "{e}"
        );

        let f = file("store = \"postgres\"\n");
        let e = load(&["--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains(":1: bad value for `store`"), "{e}");

        // Not settings: the file cannot name another file.
        let f = file("config = \"/etc/other.toml\"\n");
        let e = load(&["--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(e.contains("unknown key `config`"), "{e}");

        let e = load(&["--config", "/nonexistent/quipd.toml"]).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/quipd.toml"), "{e}");
    }

    /// `quipd config default` lists every setting, and with its lines
    /// uncommented it is a valid file that changes nothing.
    #[test]
    fn the_example_file_lists_every_setting_at_its_default() {
        let example = Config::example_file();
        for arg in Config::command().get_arguments() {
            let id = arg.get_id().as_str();
            // Hidden flags (--retention-secs, for tests) are left out, as
            // from --help.
            if !["config", "help", "version"].contains(&id) && !arg.is_hide_set() {
                assert!(example.contains(&format!("\n#{id} = ")), "{id} missing");
            }
        }
        let uncommented: String = example
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.contains(" = ") && !l.ends_with("= \"\""))
            .map(|l| format!("{l}\n"))
            .collect();
        let f = file(&uncommented);
        let mut c = load(&["--config", f.path().to_str().unwrap()]).unwrap();
        c.config = None;
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
    }

    /// The deployment example (packaging/quipd.toml) is a valid file, also
    /// with its commented settings turned on.
    #[test]
    fn the_packaged_example_loads() {
        let text = include_str!("../../packaging/quipd.toml");
        let f = file(text);
        let c = load(&["--config", f.path().to_str().unwrap()]).unwrap();
        assert_eq!(c.admin_listen, Some("127.0.0.1:9433".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        let all: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(setting) if setting.contains(" = ") => setting,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let f = file(&all);
        let c = load(&["--config", f.path().to_str().unwrap()]).unwrap();
        assert_eq!(c.media_s3_bucket.as_deref(), Some("quip-media"));
        assert_eq!(
            c.cert.as_deref(),
            Some(std::path::Path::new("/etc/quip/tls/fullchain.pem"))
        );
    }

    #[test]
    fn config_default_is_a_subcommand() {
        let c = load(&["config", "default"]).unwrap();
        assert!(matches!(c.command, Some(Command::Config(ConfigCommand::Default))));
    }
}
