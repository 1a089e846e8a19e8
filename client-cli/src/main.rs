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
// Doc comments on the argument types are `--help` text, written for a
// terminal: `<data-dir>` and `<hostname>` are meant literally, not as HTML.
#[allow(rustdoc::invalid_html_tags)]
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
        /// Who or where: a username (the direct chat with them), or chat:ID
        /// for a group or channel (usernames never contain ':').
        target: Target,
        /// Message text.
        text: String,
        /// client_msg_id: a send repeated with the same id is stored once
        /// [default: a fresh random id].
        #[arg(long, value_name = "CLIENT_MSG_ID")]
        id: Option<String>,
    },
    /// Upload a file and send it as a media message. Interrupted? Run the same
    /// command again: the upload resumes where the server's bytes end.
    SendFile {
        /// A username (the direct chat with them) or chat:ID.
        target: Target,
        /// The file.
        path: PathBuf,
        /// Text shown with the file.
        #[arg(long)]
        caption: Option<String>,
        /// MIME type [default: guessed from the file name].
        #[arg(long = "type", value_name = "MIME")]
        content_type: Option<String>,
    },
    /// Download media by id (from a message). Interrupted? Run it again: it
    /// continues the partial download.
    Download {
        /// The media id.
        media_id: String,
        /// Where to write it [default: the sender's file name, in the
        /// current directory].
        #[arg(short, long)]
        output: Option<PathBuf>,
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
    /// Show a page of a chat's history, oldest first.
    History {
        /// A username (the direct chat with them) or chat:ID.
        target: Target,
        /// Only messages before this seq [default: up to the newest].
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
        /// At most this many messages (the server caps at 200).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
    },
    /// List chats with unread counts and the ticks of your messages.
    Chats,
    /// Mark a chat as read up to the newest message.
    Read {
        /// A username (the direct chat with them) or chat:ID.
        target: Target,
    },
    /// Groups: create, manage members and admins, rename, leave, inspect.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Broadcast channels: create, subscribe, post, read.
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Show users' presence (online, or last seen), as far as their privacy
    /// settings let you see it.
    Presence {
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Say "I am typing" once in a chat (an indicator lasts a few seconds;
    /// `quip listen` shows others').
    Typing {
        /// A username (the direct chat with them) or chat:ID.
        target: Target,
    },
    /// Set who may see whether you are online and when you were last seen.
    LastSeen {
        /// everyone, contacts (people you share a chat with) or nobody.
        visibility: VisibilityArg,
    },
    /// Set who may add you to groups.
    GroupAdds {
        /// everyone, contacts (people you have sent a direct message to) or nobody.
        who: VisibilityArg,
    },
    /// Block a user: their direct messages never reach you (they are not told).
    Block {
        /// Username.
        user: String,
    },
    /// Unblock a user (what they sent meanwhile stays undelivered).
    Unblock {
        /// Username.
        user: String,
    },
}

/// A chat as named on the command line: a username, or `chat:ID`.
#[derive(Debug, Clone)]
enum Target {
    User(String),
    Chat(u64),
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("chat:") {
            Some(id) => parse_chat(s).map(Self::Chat).map_err(|_| format!("bad chat id {id:?}")),
            None if s.contains(':') => Err(format!("{s:?} is neither a username nor chat:ID")),
            None => Ok(Self::User(s.to_owned())),
        }
    }
}

/// A group or channel: `chat:ID` or just the number.
fn parse_chat(s: &str) -> Result<u64, String> {
    let id = s.strip_prefix("chat:").unwrap_or(s);
    match id.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a chat (chat:ID or a number)")),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum VisibilityArg {
    Everyone,
    Contacts,
    Nobody,
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Create a group with you as admin; prints its chat:ID.
    Create {
        /// The group's name (1-64 bytes).
        name: String,
        /// The other members' usernames.
        users: Vec<String>,
    },
    /// Add members (admins only).
    Add {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members (admins only).
    Remove {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Make members admins (admins only).
    Promote {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Make admins plain members again (admins only).
    Demote {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Rename the group (admins only).
    Rename {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// The new name.
        name: String,
    },
    /// Leave the group.
    Leave {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
    },
    /// Show the name, members (admins marked) and limits.
    Info {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
    },
    /// Show how far each member has received and read.
    Receipts {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ChannelCmd {
    /// Create a channel with you as admin; prints its chat:ID.
    Create {
        /// The channel's name (1-64 bytes).
        name: String,
    },
    /// Subscribe to a channel by id.
    Subscribe {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        channel: u64,
    },
    /// Unsubscribe.
    Unsubscribe {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        channel: u64,
    },
    /// Post (admins only); the same as `quip send chat:ID TEXT`.
    Post {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        channel: u64,
        /// Post text.
        text: String,
    },
    /// Print posts after your read position (or --after SEQ), oldest first,
    /// and mark them read.
    Read {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        channel: u64,
        /// Start after this seq [default: where you last read].
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// At most this many posts (the server caps at 200).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
    },
}

#[allow(rustdoc::invalid_html_tags)] // `--help` text, as on `Cli`
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
            || format!("[chat {} #{}] {}", m.chat_id, m.seq, line(m)),
            || message_json(m, pos),
        )
    }

    /// A message of a history page: the chat is known.
    fn history_message(&self, m: &v1::Message) -> std::io::Result<()> {
        self.emit(|| format!("#{} {}", m.seq, line(m)), || message_json(m, None))
    }

    fn receipt(&self, r: &v1::Receipt, pos: u64) -> std::io::Result<()> {
        let kind = receipt_kind(r.kind);
        let who = if r.everyone { "everyone" } else { r.user.as_str() };
        self.emit(
            || format!("[chat {}] {who} {kind} up to #{}", r.chat_id, r.seq),
            || {
                json!({"type": "receipt", "chat": r.chat_id, "user": r.user, "everyone": r.everyone,
                    "kind": kind, "seq": r.seq, "pos": pos})
            },
        )
    }

    fn presence(&self, p: &v1::Presence) -> std::io::Result<()> {
        self.emit(
            || {
                let state = if !p.visible {
                    "hidden".to_owned()
                } else if p.online {
                    "online".to_owned()
                } else if p.last_seen_ms > 0 {
                    format!("last seen {}", when(p.last_seen_ms))
                } else {
                    "offline".to_owned()
                };
                format!("{} is {state}", p.user)
            },
            || {
                json!({"type": "presence", "user": p.user, "visible": p.visible, "online": p.online,
                    "last_seen_ms": p.last_seen_ms})
            },
        )
    }

    fn typing(&self, t: &v1::Typing) -> std::io::Result<()> {
        self.emit(
            || format!("[chat {}] {} is typing", t.chat_id, t.user),
            || json!({"type": "typing", "chat": t.chat_id, "user": t.user, "expires_in_ms": t.expires_in_ms}),
        )
    }

    fn chat_info(&self, i: &v1::ChatInfo, event_seq: u64) -> std::io::Result<()> {
        self.emit(
            || {
                let members: Vec<String> = i
                    .members
                    .iter()
                    .map(|m| {
                        if m.admin {
                            format!("{} (admin)", m.user)
                        } else {
                            m.user.clone()
                        }
                    })
                    .collect();
                let limit = if i.max_members > 0 {
                    format!(" of at most {}", i.max_members)
                } else {
                    String::new()
                };
                format!(
                    "chat:{} {} \"{}\": {} members{limit}: {}",
                    i.chat_id,
                    kind_name(i.kind),
                    i.name,
                    i.member_count,
                    members.join(", ")
                )
            },
            || {
                let members: Vec<serde_json::Value> = i
                    .members
                    .iter()
                    .map(|m| json!({"user": m.user, "admin": m.admin, "joined_seq": m.joined_seq}))
                    .collect();
                json!({"type": "chat_info", "chat": i.chat_id, "kind": kind_name(i.kind), "name": i.name,
                    "member_count": i.member_count, "max_members": i.max_members, "last_seq": i.last_seq,
                    "members": members, "event_seq": event_seq})
            },
        )
    }
}

/// A wall-clock time in ms since the epoch, as "N s/min/h/d ago".
fn when(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let s = (now - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

fn kind_name(kind: i32) -> &'static str {
    match v1::ChatKind::try_from(kind) {
        Ok(v1::ChatKind::Direct) => "direct",
        Ok(v1::ChatKind::Group) => "group",
        Ok(v1::ChatKind::Channel) => "channel",
        _ => "chat",
    }
}

fn text(m: &v1::Message) -> &str {
    m.content.as_ref().map_or("", |c| c.text.as_str())
}

/// The text, a membership change in words, or a note for a message that
/// carries only an opaque payload.
fn body(m: &v1::Message) -> String {
    if let Some(g) = &m.group_event {
        return group_event(m, g);
    }
    if let Some(media) = m.content.as_ref().and_then(|c| c.media.as_ref()) {
        let caption = match text(m) {
            "" => String::new(),
            t => format!(" {t}"),
        };
        return format!(
            "[{} {}, {} bytes, media {}]{caption}",
            media.content_type, media.file_name, media.size, media.media_id
        );
    }
    let payload = m.content.as_ref().map_or(0, |c| c.payload.len());
    match text(m) {
        "" if payload > 0 => format!("<{payload} bytes of payload>"),
        t => t.to_owned(),
    }
}

/// "sender: text", or for a membership change "* sender did what".
fn line(m: &v1::Message) -> String {
    if m.group_event.is_some() {
        body(m)
    } else {
        format!("{}: {}", m.sender, body(m))
    }
}

/// "alice added bob, carol", "bob left", ...
fn group_event(m: &v1::Message, g: &v1::GroupEvent) -> String {
    let users = g.users.join(", ");
    let what = match v1::GroupEventKind::try_from(g.kind).unwrap_or_default() {
        v1::GroupEventKind::Created if users.is_empty() => format!("created \"{}\"", g.name),
        v1::GroupEventKind::Created => format!("created \"{}\" with {users}", g.name),
        v1::GroupEventKind::Added => format!("added {users}"),
        v1::GroupEventKind::Removed => format!("removed {users}"),
        v1::GroupEventKind::Left => "left".into(),
        v1::GroupEventKind::Promoted => format!("made {users} admin"),
        v1::GroupEventKind::Demoted => format!("made {users} no longer admin"),
        v1::GroupEventKind::Renamed => format!("renamed the chat to \"{}\"", g.name),
        v1::GroupEventKind::Unspecified => "changed the chat".into(),
    };
    format!("* {} {what}", m.sender)
}

fn message_json(m: &v1::Message, pos: Option<u64>) -> serde_json::Value {
    if let Some(g) = &m.group_event {
        let kind = v1::GroupEventKind::try_from(g.kind)
            .unwrap_or_default()
            .as_str_name()
            .to_ascii_lowercase();
        let mut v = json!({
            "type": "group_event", "chat": m.chat_id, "seq": m.seq, "by": m.sender,
            "event": kind, "users": g.users, "name": g.name, "sent_at_ms": m.sent_at_ms,
        });
        if let Some(pos) = pos {
            v["pos"] = json!(pos);
        }
        return v;
    }
    let mut v = json!({
        "type": "message", "chat": m.chat_id, "seq": m.seq, "from": m.sender,
        "to": m.recipient, "text": text(m), "sent_at_ms": m.sent_at_ms,
        "client_msg_id": m.client_msg_id,
    });
    if let Some(media) = m.content.as_ref().and_then(|c| c.media.as_ref()) {
        v["media"] = json!({
            "id": media.media_id, "size": media.size, "type": media.content_type,
            "file_name": media.file_name, "sha256": hex(&media.sha256),
        });
    }
    if let Some(pos) = pos {
        v["pos"] = json!(pos);
    }
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
    let mut opts = ConnectOptions::new(server.clone(), ca.as_deref())?;
    // One-shot commands do not make the user look online to their contacts;
    // `listen` (a session the user sits in) does.
    opts.background = !matches!(cli.command, Command::Listen { .. });

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
        Command::Send { target, text, id } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let sent = send(&conn.client, target, text, id).await;
            conn.finish().await;
            let sent = sent?;
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
            Ok(())
        }
        Command::SendFile {
            target,
            path,
            caption,
            content_type,
        } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let sent = send_file(&conn.client, &home, &out, target, &path, caption, content_type).await;
            conn.finish().await;
            let (sent, media) = sent?;
            out.emit(
                || {
                    format!(
                        "sent {} as seq {} in chat {} (media {})",
                        path.display(),
                        sent.seq,
                        sent.chat_id,
                        media.media_id
                    )
                },
                || {
                    json!({"type": "sent", "chat": sent.chat_id, "seq": sent.seq, "media": media.media_id,
                        "size": media.size, "sha256": hex(&media.sha256)})
                },
            )?;
            Ok(())
        }
        Command::Download { media_id, output } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let got = download(&conn.client, &out, &media_id, output).await;
            conn.finish().await;
            let (path, media) = got?;
            out.emit(
                || format!("saved {} ({} bytes, sha256 verified)", path.display(), media.size),
                || json!({"type": "downloaded", "media": media.media_id, "path": path, "size": media.size}),
            )?;
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
        Command::History { target, before, limit } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let before = before.unwrap_or(0);
            let page = match &target {
                Target::User(user) => conn.client.history(user, before, limit).await,
                Target::Chat(id) => conn.client.history_of_chat(*id, before, limit).await,
            };
            conn.finish().await;
            let page = page?;
            for m in page.messages.iter().rev() {
                out.history_message(m)?;
            }
            if page.more && !out.json {
                let oldest = page.messages.last().map_or(0, |m| m.seq);
                let name = match &target {
                    Target::User(u) => u.clone(),
                    Target::Chat(id) => format!("chat:{id}"),
                };
                eprintln!("(older messages: quip history {name} --before {oldest})");
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
                        let last =
                            last.map_or_else(|| "no messages".into(), |m| format!("last #{} {}", m.seq, line(m)));
                        let who = match v1::ChatKind::try_from(c.kind) {
                            Ok(v1::ChatKind::Group) => {
                                format!("chat:{} group \"{}\" ({} members)", c.chat_id, c.name, c.member_count)
                            }
                            Ok(v1::ChatKind::Channel) => format!(
                                "chat:{} channel \"{}\" ({} subscribers)",
                                c.chat_id, c.name, c.member_count
                            ),
                            _ => c.peer.clone(),
                        };
                        let ticks = if c.kind == v1::ChatKind::Group as i32 {
                            "delivered to all"
                        } else {
                            "delivered"
                        };
                        let read = if c.kind == v1::ChatKind::Group as i32 {
                            "read by all"
                        } else {
                            "read"
                        };
                        if c.kind == v1::ChatKind::Channel as i32 {
                            // Channels keep no shared receipts: no ticks to show.
                            return format!("{who}  unread {}  {last}", c.unread);
                        }
                        format!(
                            "{who}  unread {}  {last}  (sent ticks: {ticks} #{}, {read} #{})",
                            c.unread, c.peer_delivered_seq, c.peer_read_seq
                        )
                    },
                    || {
                        json!({"type": "chat", "chat": c.chat_id, "kind": kind_name(c.kind), "name": c.name,
                            "member_count": c.member_count, "admin": c.admin, "peer": c.peer, "unread": c.unread,
                            "last_seq": last_seq, "last_from": last_from, "last_text": last.map_or("", text),
                            "peer_delivered_seq": c.peer_delivered_seq, "peer_read_seq": c.peer_read_seq,
                            "my_read_seq": c.my_read_seq, "my_delivered_seq": c.my_delivered_seq})
                    },
                )?;
            }
            Ok(())
        }
        Command::Read { target } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let r = async {
                let chat = chat_id(&conn.client, &target).await?;
                let seq = conn.client.receipt(chat, ReceiptKind::Read, 0).await?;
                anyhow::Ok((chat, seq))
            }
            .await;
            conn.finish().await;
            let (chat, seq) = r?;
            out.emit(
                || format!("read up to #{seq}"),
                || json!({"type": "read", "chat": chat, "seq": seq}),
            )?;
            Ok(())
        }
        Command::Group(cmd) => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let r = group(&conn.client, &out, cmd).await;
            conn.finish().await;
            r
        }
        Command::Channel(cmd) => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let r = channel(&conn.client, &out, cmd).await;
            conn.finish().await;
            r
        }
        Command::Presence { users } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let names: Vec<&str> = users.iter().map(String::as_str).collect();
            let r = conn.client.presence(&names).await;
            conn.finish().await;
            for p in r? {
                out.presence(&p)?;
            }
            Ok(())
        }
        Command::Typing { target } => {
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let r = async {
                let chat = chat_id(&conn.client, &target).await?;
                // A one-shot command closes at once: a datagram could be lost
                // with the connection, so it asks on the stream instead.
                let typing = v1::TypingRequest { chat_id: chat };
                conn.client.request(quip_protocol::Body::Typing(typing)).await?;
                anyhow::Ok(chat)
            }
            .await;
            conn.finish().await;
            let chat = r?;
            out.emit(
                || format!("typing in chat {chat}"),
                || json!({"type": "typing_sent", "chat": chat}),
            )?;
            Ok(())
        }
        Command::LastSeen { visibility } => {
            let v = match visibility {
                VisibilityArg::Everyone => v1::Visibility::Everyone,
                VisibilityArg::Contacts => v1::Visibility::Contacts,
                VisibilityArg::Nobody => v1::Visibility::Nobody,
            };
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let r = conn.client.set_last_seen_visibility(v).await;
            conn.finish().await;
            let now = r?.as_str_name().to_ascii_lowercase();
            out.emit(
                || format!("last seen visible to: {now}"),
                || json!({"type": "last_seen", "visibility": now}),
            )?;
            Ok(())
        }
        Command::GroupAdds { who } => {
            let g = match who {
                VisibilityArg::Everyone => v1::GroupAdds::Everyone,
                VisibilityArg::Contacts => v1::GroupAdds::Contacts,
                VisibilityArg::Nobody => v1::GroupAdds::Nobody,
            };
            let conn = Conn::open(&opts, Some(profile.token()?)).await?;
            let r = conn.client.set_group_adds(g).await;
            conn.finish().await;
            let now = r?.as_str_name().trim_start_matches("GROUP_ADDS_").to_ascii_lowercase();
            out.emit(
                || format!("who may add you to groups: {now}"),
                || json!({"type": "group_adds", "who": now}),
            )?;
            Ok(())
        }
        Command::Block { user } => block(&opts, &profile, &out, &user, false).await,
        Command::Unblock { user } => block(&opts, &profile, &out, &user, true).await,
    }
}

async fn block(opts: &ConnectOptions, profile: &Profile, out: &Out, user: &str, unblock: bool) -> anyhow::Result<()> {
    let conn = Conn::open(opts, Some(profile.token()?)).await?;
    let r = conn.client.block(user, unblock).await;
    conn.finish().await;
    let blocked = r?;
    out.emit(
        || {
            let verb = if unblock { "unblocked" } else { "blocked" };
            format!(
                "{verb} {user}; blocking: {}",
                if blocked.is_empty() {
                    "nobody".into()
                } else {
                    blocked.join(", ")
                }
            )
        },
        || json!({"type": "blocked", "blocked": blocked}),
    )?;
    Ok(())
}

/// Sends a text to a user or into a chat.
async fn send(client: &Client, target: Target, text: String, id: Option<String>) -> anyhow::Result<v1::SendResponse> {
    let (to_user, chat_id) = match target {
        Target::User(u) => (u, 0),
        Target::Chat(c) => (String::new(), c),
    };
    Ok(client
        .send(v1::SendRequest {
            to_user,
            chat_id,
            client_msg_id: id.unwrap_or_else(new_client_msg_id),
            content: Some(v1::Content {
                text,
                ..Default::default()
            }),
        })
        .await?)
}

/// A byte progress bar on a terminal; hidden for --json or when stderr is
/// not a terminal.
fn progress_bar(out: &Out, what: &str) -> indicatif::ProgressBar {
    if out.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

fn on_progress(bar: &indicatif::ProgressBar) -> impl FnMut(quip_client::Progress) + '_ {
    move |p| match p {
        quip_client::Progress::Started { offset, total, .. } => {
            bar.set_length(total);
            bar.set_position(offset);
        }
        quip_client::Progress::At(n) => bar.set_position(n),
    }
}

/// Uploads a file (resuming an interrupted upload of the same bytes, whose
/// id is kept in $QUIP_HOME/uploads/) and sends it.
async fn send_file(
    client: &Client,
    home: &Path,
    out: &Out,
    target: Target,
    path: &Path,
    caption: Option<String>,
    content_type: Option<String>,
) -> anyhow::Result<(v1::SendResponse, v1::Media)> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let (size, sha256) = quip_client::media::hash(&mut file)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let pending = home.join("uploads").join(hex(&sha256));
    let content_type = content_type.unwrap_or_else(|| mime_guess::from_path(path).first_or_octet_stream().to_string());
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut spec = quip_client::UploadSpec {
        size,
        sha256,
        content_type,
        file_name,
        resume: std::fs::read_to_string(&pending).ok().map(|s| s.trim().to_owned()),
    };
    let bar = progress_bar(out, "uploading");
    let remember = |p: &quip_client::Progress| {
        if let quip_client::Progress::Started { upload_id, .. } = p {
            let _ = std::fs::create_dir_all(home.join("uploads"));
            let _ = std::fs::write(&pending, upload_id);
        }
    };
    let mut track = on_progress(&bar);
    let mut r = client
        .upload(&spec, &mut file, |p| {
            remember(&p);
            track(p);
        })
        .await;
    if spec.resume.is_some()
        && matches!(
            r.as_ref().map_err(|e| e.code()),
            Err(Some(ErrorCode::NotFound | ErrorCode::InvalidArgument))
        )
    {
        // The earlier upload is gone (cleaned up): start over.
        spec.resume = None;
        r = client
            .upload(&spec, &mut file, |p| {
                remember(&p);
                track(p);
            })
            .await;
    }
    bar.finish_and_clear();
    let done = r?;
    let _ = std::fs::remove_file(&pending);
    let media = done.media.ok_or_else(|| anyhow!("server sent no media"))?;
    let (to_user, chat_id) = match target {
        Target::User(u) => (u, 0),
        Target::Chat(c) => (String::new(), c),
    };
    let sent = client
        .send(v1::SendRequest {
            to_user,
            chat_id,
            client_msg_id: new_client_msg_id(),
            content: Some(v1::Content {
                text: caption.unwrap_or_default(),
                media: Some(v1::Media {
                    media_id: media.media_id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await?;
    Ok((sent, media))
}

/// Downloads into a hidden partial file next to the destination, continuing
/// one left by an earlier attempt, verifies the SHA-256, then renames it.
async fn download(
    client: &Client,
    out: &Out,
    media_id: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, v1::Media)> {
    use tokio::io::AsyncSeekExt;
    let dir = match &output {
        Some(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
        None => PathBuf::new(),
    };
    let part = dir.join(format!(".{media_id}.part"));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&part)
        .await
        .with_context(|| format!("opening {}", part.display()))?;
    let have = file.seek(std::io::SeekFrom::End(0)).await?;
    let bar = progress_bar(out, "downloading");
    let r = client.download(media_id, have, 0, &mut file, on_progress(&bar)).await;
    bar.finish_and_clear();
    let ready = match r {
        Ok(r) => r,
        Err(e) => {
            if e.code().is_some() {
                drop(file);
                let _ = std::fs::remove_file(&part); // refused: nothing to resume
            }
            return Err(e.into());
        }
    };
    let media = ready.media.ok_or_else(|| anyhow!("server sent no media"))?;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let (size, sha256) = quip_client::media::hash(&mut file).await?;
    drop(file);
    if size != media.size || sha256[..] != media.sha256[..] {
        let _ = std::fs::remove_file(&part);
        bail!("the downloaded bytes do not match the media's size and SHA-256; removed, run again");
    }
    let name = Path::new(&media.file_name)
        .file_name()
        .map(|n| n.to_owned())
        .unwrap_or_else(|| media_id.into());
    let dest = output.unwrap_or_else(|| PathBuf::from(name));
    std::fs::rename(&part, &dest).with_context(|| format!("writing {}", dest.display()))?;
    Ok((dest, media))
}

/// The chat id of a target (the direct chat with a user must exist).
async fn chat_id(client: &Client, target: &Target) -> anyhow::Result<u64> {
    Ok(match target {
        Target::Chat(id) => *id,
        Target::User(user) => client.history(user, 0, 1).await?.chat_id,
    })
}

async fn group(client: &Client, out: &Out, cmd: GroupCmd) -> anyhow::Result<()> {
    use v1::ChatAction as A;
    let (chat, action, users, name) = match cmd {
        GroupCmd::Create { name, users } => {
            let names: Vec<&str> = users.iter().map(String::as_str).collect();
            let r = client.create_group(&name, &names).await?;
            return out
                .chat_info(&r.info.unwrap_or_default(), r.event_seq)
                .map_err(Into::into);
        }
        GroupCmd::Info { group } => {
            let info = client.chat_info(group).await?;
            return out.chat_info(&info, 0).map_err(Into::into);
        }
        GroupCmd::Receipts { group } => {
            let d = client.receipt_detail(group).await?;
            for m in d.members {
                out.emit(
                    || format!("{}: delivered #{}, read #{}", m.user, m.delivered_seq, m.read_seq),
                    || {
                        json!({"type": "member_receipt", "chat": group, "user": m.user,
                            "delivered_seq": m.delivered_seq, "read_seq": m.read_seq})
                    },
                )?;
            }
            return Ok(());
        }
        GroupCmd::Add { group, users } => (group, A::AddMembers, users, String::new()),
        GroupCmd::Remove { group, users } => (group, A::RemoveMembers, users, String::new()),
        GroupCmd::Promote { group, users } => (group, A::Promote, users, String::new()),
        GroupCmd::Demote { group, users } => (group, A::Demote, users, String::new()),
        GroupCmd::Rename { group, name } => (group, A::Rename, Vec::new(), name),
        GroupCmd::Leave { group } => (group, A::Leave, Vec::new(), String::new()),
    };
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let r = client.update_chat(chat, action, &names, &name).await?;
    if action == A::Leave {
        return out
            .emit(|| format!("left chat:{chat}"), || json!({"type": "left", "chat": chat}))
            .map_err(Into::into);
    }
    out.chat_info(&r.info.unwrap_or_default(), r.event_seq)?;
    Ok(())
}

async fn channel(client: &Client, out: &Out, cmd: ChannelCmd) -> anyhow::Result<()> {
    match cmd {
        ChannelCmd::Create { name } => {
            let r = client.create_channel(&name).await?;
            out.chat_info(&r.info.unwrap_or_default(), r.event_seq)?;
        }
        ChannelCmd::Subscribe { channel } => {
            let r = client.subscribe(channel, false).await?;
            out.chat_info(&r.info.unwrap_or_default(), 0)?;
        }
        ChannelCmd::Unsubscribe { channel } => {
            client.subscribe(channel, true).await?;
            out.emit(
                || format!("unsubscribed from chat:{channel}"),
                || json!({"type": "unsubscribed", "chat": channel}),
            )?;
        }
        ChannelCmd::Post { channel, text } => {
            let sent = send(client, Target::Chat(channel), text, None).await?;
            out.emit(
                || format!("posted seq {} in chat {}", sent.seq, sent.chat_id),
                || json!({"type": "sent", "chat": sent.chat_id, "seq": sent.seq, "duplicate": sent.duplicate}),
            )?;
        }
        ChannelCmd::Read { channel, after, limit } => {
            let after = match after {
                Some(a) => a,
                None => client
                    .chats()
                    .await?
                    .iter()
                    .find(|c| c.chat_id == channel)
                    .map(|c| c.my_read_seq)
                    .ok_or_else(|| anyhow!("not subscribed to chat:{channel}"))?,
            };
            let page = client.history_after(channel, after, limit).await?;
            for m in &page.messages {
                out.history_message(m)?;
            }
            if let Some(last) = page.messages.last() {
                client.receipt(channel, ReceiptKind::Read, last.seq).await?;
            }
            if page.more && !out.json {
                let newest = page.messages.last().map_or(after, |m| m.seq);
                eprintln!("(more: quip channel read chat:{channel} --after {newest})");
            }
        }
    }
    Ok(())
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

/// `quip-cli on <hostname>`, or `quip-cli` where the hostname is unknown.
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
