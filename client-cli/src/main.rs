//! `quip`: the Quip command-line client. Scriptable (`--json` prints one
//! object per line), and the quickest way to explore a server.
//!
//! Results go to stdout, one line each, flushed as they are printed (so a
//! pipe sees `quip listen` events as they arrive). A failure prints one line,
//! `quip: error: ...`, on stderr and exits with status 1 (clap's usage errors
//! exit with 2).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use quip_client::{AckTracker, Client, ClientError, ConnectOptions, new_client_msg_id};
use quip_protocol::v1::{self, ErrorCode, ReceiptKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// quip: talk to a Quip server.
///
/// The profile (server, trusted certificate, login token) lives in
/// $QUIP_HOME/profile.json, by default in the user's config directory
/// (e.g. ~/.config/quip). `quip register` or `quip login` fills it in.
#[derive(Debug, Parser)]
#[command(name = "quip", version, about, long_about)]
struct Cli {
    /// Server address HOST:PORT [default: the profile's, else 127.0.0.1:4433].
    #[arg(long, env = "QUIP_SERVER", global = true, value_name = "HOST:PORT")]
    server: Option<String>,

    /// PEM certificate to trust, e.g. a dev server's <data-dir>/dev-cert.pem
    /// [default: the profile's, else the web PKI roots]. Saved in the profile
    /// at register/login.
    #[arg(long, env = "QUIP_CA", global = true, value_name = "PATH")]
    ca: Option<PathBuf>,

    /// Print one JSON object per line instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account and log this profile in as its first device.
    Register(AuthArgs),
    /// Log in as a new device of an existing account.
    Login(AuthArgs),
    /// Revoke this device's token on the server and forget it.
    Logout,
    /// Show who this profile is logged in as (asks the server).
    Whoami,
    /// Send a text message; prints its seq once the server has stored it durably.
    Send {
        /// Recipient username.
        user: String,
        /// Message text.
        text: String,
        /// client_msg_id: a send repeated with the same id is stored once
        /// [default: a fresh random id].
        #[arg(long, value_name = "CLIENT_MSG_ID")]
        id: Option<String>,
    },
    /// Stay connected and print events as they arrive (after what was missed)
    /// until the connection closes or Ctrl-C. Confirms delivery of others'
    /// messages.
    Listen {
        /// Exit after printing this many messages.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
    },
    /// Fetch what this device missed, print it, confirm delivery, and exit.
    Sync,
    /// Show a page of history with a user, oldest first.
    History {
        /// The other user.
        user: String,
        /// Only messages before this seq [default: up to the newest].
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
        /// At most this many messages (the server caps at 200).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
    },
    /// List chats with unread counts and the ticks of your messages.
    Chats,
    /// Mark the chat with a user as read up to the newest message.
    Read {
        /// The other user.
        user: String,
    },
}

#[derive(Debug, clap::Args)]
struct AuthArgs {
    /// Username (3-32 of a-z, 0-9, '_', '.', '-').
    user: String,
    /// Password [default: $QUIP_PASSWORD, else asked for on the terminal].
    #[arg(long, env = "QUIP_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Name of this device, shown in device lists [default: "quip-cli on <hostname>"].
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
}

/// What `quip` remembers between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Profile {
    server: Option<String>,
    ca: Option<PathBuf>,
    user: Option<String>,
    device_id: Option<u32>,
    token: Option<String>,
}

fn home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("QUIP_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    dirs::config_dir()
        .map(|d| d.join("quip"))
        .ok_or_else(|| anyhow!("no config directory: set QUIP_HOME"))
}

impl Profile {
    fn load(home: &Path) -> anyhow::Result<Self> {
        let path = home.join("profile.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the profile (it holds a bearer token: mode 0600 on unix) to a
    /// temporary file and renames it into place, so a crash never leaves half
    /// a profile.
    fn save(&self, home: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        let path = home.join("profile.json");
        let tmp = home.join("profile.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            // `mode` applies only to a new file; a leftover one keeps its own.
            #[cfg(unix)]
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(&serde_json::to_vec_pretty(self)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().with_context(|| format!("writing {}", path.display()))
    }

    fn token(&self) -> anyhow::Result<&str> {
        self.token
            .as_deref()
            .ok_or_else(|| anyhow!("not logged in: run 'quip login USER' first"))
    }
}

/// Prints results as text or JSON lines, flushing each line (for pipes).
struct Out {
    json: bool,
}

impl Out {
    fn emit(&self, text: impl FnOnce() -> String, value: impl FnOnce() -> serde_json::Value) -> std::io::Result<()> {
        let line = if self.json { value().to_string() } else { text() };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()
    }

    /// A message; `pos` (its place in the user's log) for events.
    fn message(&self, m: &v1::Message, pos: Option<u64>) -> std::io::Result<()> {
        self.emit(
            || format!("[chat {} #{}] {}: {}", m.chat_id, m.seq, m.sender, body(m)),
            || message_json(m, pos),
        )
    }

    /// A message of a history page: the chat is known.
    fn history_message(&self, m: &v1::Message) -> std::io::Result<()> {
        self.emit(
            || format!("#{} {}: {}", m.seq, m.sender, body(m)),
            || message_json(m, None),
        )
    }

    fn receipt(&self, r: &v1::Receipt, pos: u64) -> std::io::Result<()> {
        let kind = receipt_kind(r.kind);
        self.emit(
            || format!("[chat {}] {} {kind} up to #{}", r.chat_id, r.user, r.seq),
            || json!({"type": "receipt", "chat": r.chat_id, "user": r.user, "kind": kind, "seq": r.seq, "pos": pos}),
        )
    }
}

fn text(m: &v1::Message) -> &str {
    m.content.as_ref().map_or("", |c| c.text.as_str())
}

/// The text, or a note for a message that carries only an opaque payload.
fn body(m: &v1::Message) -> String {
    let payload = m.content.as_ref().map_or(0, |c| c.payload.len());
    match text(m) {
        "" if payload > 0 => format!("<{payload} bytes of payload>"),
        t => t.to_owned(),
    }
}

fn message_json(m: &v1::Message, pos: Option<u64>) -> serde_json::Value {
    let mut v = json!({
        "type": "message", "chat": m.chat_id, "seq": m.seq, "from": m.sender,
        "to": m.recipient, "text": text(m), "sent_at_ms": m.sent_at_ms,
        "client_msg_id": m.client_msg_id,
    });
    if let Some(pos) = pos {
        v["pos"] = json!(pos);
    }
    v
}

fn receipt_kind(kind: i32) -> &'static str {
    match ReceiptKind::try_from(kind) {
        Ok(ReceiptKind::Read) => "read",
        Ok(ReceiptKind::Delivered) => "delivered",
        _ => "unknown",
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`quip listen | head -1`): nothing to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::FAILURE,
        Err(e) => {
            // One line, whatever the causes' messages contain.
            let msg = format!("{e:#}").replace(['\r', '\n'], " ");
            eprintln!("quip: error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = home()?;
    let mut profile = Profile::load(&home)?;
    let out = Out { json: cli.json };
    let server = cli
        .server
        .clone()
        .or_else(|| profile.server.clone())
        .unwrap_or_else(|| "127.0.0.1:4433".into());
    // Stored absolute, so later commands work from any directory.
    let ca = match &cli.ca {
        Some(p) => Some(std::fs::canonicalize(p).with_context(|| format!("CA file {}", p.display()))?),
        None => profile.ca.clone(),
    };
    let opts = ConnectOptions::new(server.clone(), ca.as_deref())?;

    match cli.command {
        Command::Register(a) => auth(&home, &mut profile, &out, opts, ca, a, true).await,
        Command::Login(a) => auth(&home, &mut profile, &out, opts, ca, a, false).await,
        Command::Logout => {
            let user = profile.user.clone().unwrap_or_default();
            let revoked_before = match Conn::open(&opts, Some(profile.token()?)).await {
                Ok(conn) => {
                    let r = conn.client.logout().await;
                    conn.finish().await;
                    r?;
                    false
                }
                // Revoked already (another logout, or the device was removed):
                // forgetting it is all that is left to do.
                Err(e) if code_of(&e) == Some(ErrorCode::Unauthenticated) => true,
                Err(e) => return Err(e),
            };
            profile.token = None;
            profile.device_id = None;
            profile.save(&home)?;
            let note = if revoked_before {
                " (the server had already revoked this device)"
            } else {
                ""
            };
            out.emit(
                || format!("logged out {user}{note}"),
                || json!({"type": "logout", "user": user}),
            )?;
            Ok(())
        }
        Command::Whoami => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let me = conn.client.whoami().await?;
            out.emit(
                || format!("{} (device {}) on {}", me.user, me.device_id, opts.server),
                || json!({"type": "whoami", "user": me.user, "device_id": me.device_id, "server": opts.server}),
            )?;
            conn.finish().await;
            Ok(())
        }
        Command::Send { user, text, id } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let sent = conn
                .client
                .send(v1::SendRequest {
                    to_user: user,
                    client_msg_id: id.unwrap_or_else(new_client_msg_id),
                    content: Some(v1::Content {
                        text,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?;
            out.emit(
                || {
                    let dup = if sent.duplicate { " (already sent before)" } else { "" };
                    format!("sent seq {} in chat {}{dup}", sent.seq, sent.chat_id)
                },
                || {
                    json!({"type": "sent", "chat": sent.chat_id, "seq": sent.seq,
                        "duplicate": sent.duplicate, "sent_at_ms": sent.sent_at_ms})
                },
            )?;
            conn.finish().await;
            Ok(())
        }
        Command::Listen { count } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let mut feed = Feed::new(&conn.client, &out, count);
            // Ctrl-C may cut a batch short: whatever was not acknowledged yet
            // comes again with the next sync.
            let r = tokio::select! {
                r = async {
                    feed.catch_up().await?;
                    feed.live().await
                } => r,
                r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
            };
            conn.finish().await;
            r
        }
        Command::Sync => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let r = Feed::new(&conn.client, &out, None).catch_up().await;
            conn.finish().await;
            r
        }
        Command::History { user, before, limit } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let page = conn.client.history(&user, before.unwrap_or(0), limit).await?;
            conn.finish().await;
            for m in page.messages.iter().rev() {
                out.history_message(m)?;
            }
            if page.more && !out.json {
                let oldest = page.messages.last().map_or(0, |m| m.seq);
                eprintln!("(older messages: quip history {user} --before {oldest})");
            }
            Ok(())
        }
        Command::Chats => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let chats = conn.client.chats().await?;
            conn.finish().await;
            for c in chats {
                let last = c.last_message.as_ref();
                let last_seq = last.map_or(0, |m| m.seq);
                let last_from = last.map_or("", |m| m.sender.as_str());
                out.emit(
                    || {
                        let last = last.map_or_else(
                            || "no messages".into(),
                            |m| format!("last #{} {}: {}", m.seq, m.sender, body(m)),
                        );
                        format!(
                            "{}  unread {}  {last}  (sent ticks: delivered #{}, read #{})",
                            c.peer, c.unread, c.peer_delivered_seq, c.peer_read_seq
                        )
                    },
                    || {
                        json!({"type": "chat", "chat": c.chat_id, "peer": c.peer, "unread": c.unread,
                            "last_seq": last_seq, "last_from": last_from, "last_text": last.map_or("", text),
                            "peer_delivered_seq": c.peer_delivered_seq, "peer_read_seq": c.peer_read_seq,
                            "my_read_seq": c.my_read_seq, "my_delivered_seq": c.my_delivered_seq})
                    },
                )?;
            }
            Ok(())
        }
        Command::Read { user } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let page = conn.client.history(&user, 0, 1).await?;
            let seq = conn.client.receipt(page.chat_id, ReceiptKind::Read, 0).await?;
            conn.finish().await;
            out.emit(
                || format!("read up to #{seq}"),
                || json!({"type": "read", "chat": page.chat_id, "peer": user, "seq": seq}),
            )?;
            Ok(())
        }
    }
}

/// `quip register` / `quip login`: authenticates and saves the token.
async fn auth(
    home: &Path,
    profile: &mut Profile,
    out: &Out,
    opts: ConnectOptions,
    ca: Option<PathBuf>,
    a: AuthArgs,
    register: bool,
) -> anyhow::Result<()> {
    if profile.token.is_some() && profile.user.as_deref() != Some(&a.user) {
        // The old token stays valid on the server until that user logs
        // out; refuse rather than silently forget it.
        bail!(
            "this profile is logged in as {}; run 'quip logout' first or use another QUIP_HOME",
            profile.user.as_deref().unwrap_or("someone")
        );
    }
    let password = password(a.password)?;
    let device = a.device.unwrap_or_else(default_device_name);
    let conn = Conn::open(&opts, None).await?;
    let auth = if register {
        conn.client.register(&a.user, &password, &device).await
    } else {
        conn.client.login(&a.user, &password, &device).await
    };
    conn.finish().await;
    let auth = auth?;
    profile.server = Some(opts.server);
    profile.ca = ca;
    profile.user = Some(auth.user.clone());
    profile.device_id = Some(auth.device_id);
    profile.token = Some(auth.token.clone());
    profile.save(home)?;
    let verb = if register { "registered" } else { "logged in as" };
    out.emit(
        || format!("{verb} {} (device {})", auth.user, auth.device_id),
        || json!({"type": "auth", "user": auth.user, "device_id": auth.device_id}),
    )?;
    Ok(())
}

fn password(given: Option<String>) -> anyhow::Result<String> {
    match given {
        Some(p) => Ok(p),
        None => rpassword::prompt_password("password: ")
            .context("reading the password from the terminal (or pass --password / QUIP_PASSWORD)"),
    }
}

/// "quip-cli on <hostname>", or "quip-cli" where the hostname is unknown.
fn default_device_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    let mut name = match host {
        Some(h) => format!("quip-cli on {h}"),
        None => "quip-cli".into(),
    };
    // The server takes at most 64 bytes.
    while name.len() > 64 {
        name.pop();
    }
    name
}

fn code_of(e: &anyhow::Error) -> Option<ErrorCode> {
    e.downcast_ref::<ClientError>().and_then(ClientError::code)
}

/// A connection that is closed cleanly at the end of the command.
struct Conn {
    client: Client,
    endpoint: quinn::Endpoint,
}

impl Conn {
    async fn open(opts: &ConnectOptions, token: Option<&str>) -> anyhow::Result<Self> {
        let opts = match token {
            Some(t) => opts.clone().token(t),
            None => opts.clone(),
        };
        let endpoint = Client::endpoint(&opts)?;
        let client = Client::connect_on(endpoint.clone(), &opts).await?;
        Ok(Self { client, endpoint })
    }

    /// Closes the connection and gives the close a moment to reach the
    /// server, which would otherwise hold the session until its idle timeout.
    async fn finish(self) {
        self.client.close();
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
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
                // Never reached: transient events carry pos 0, which observe() skips.
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
