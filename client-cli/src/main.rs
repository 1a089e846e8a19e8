//! `quip`: the Quip command-line client. Scriptable (`--json` prints one
//! object per line), and the quickest way to explore a server.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use quip_client::{AckTracker, Client, ClientError, ConnectOptions, new_client_msg_id};
use quip_protocol::v1::{self, ReceiptKind};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// quip: talk to a Quip server.
///
/// The profile (server, trusted certificate, login token) lives in
/// $QUIP_HOME/profile.json, by default in the user's config directory.
#[derive(Debug, Parser)]
#[command(name = "quip", version, about, long_about)]
struct Cli {
    /// Server address HOST:PORT [default: the profile's, else 127.0.0.1:4433].
    #[arg(long, env = "QUIP_SERVER", global = true)]
    server: Option<String>,

    /// PEM certificate to trust, e.g. a dev server's <data-dir>/dev-cert.pem.
    /// Saved in the profile at register/login.
    #[arg(long, env = "QUIP_CA", global = true)]
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
    /// Revoke this device's token and forget it.
    Logout,
    /// Show who this profile is logged in as (asks the server).
    Whoami,
    /// Send a text message; prints its seq once the server has stored it durably.
    Send {
        /// Recipient username.
        user: String,
        /// Message text.
        text: String,
        /// client_msg_id: repeat a send with the same id and it is stored once.
        #[arg(long)]
        id: Option<String>,
    },
    /// Stay connected and print events as they arrive (after what was missed).
    Listen {
        /// Exit after printing this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
    /// Fetch what this device missed, print it, and exit.
    Sync,
    /// Show a page of history with a user, oldest first.
    History {
        /// The other user.
        user: String,
        /// Only messages before this seq.
        #[arg(long)]
        before: Option<u64>,
        /// At most this many messages (server caps at 200).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// List chats with unread counts and receipt state.
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
    /// Password; else $QUIP_PASSWORD; else asked for on the terminal.
    #[arg(long, env = "QUIP_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Name of this device, shown in device lists.
    #[arg(long, default_value = "quip-cli")]
    device: String,
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
    if let Some(h) = std::env::var_os("QUIP_HOME") {
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

    fn save(&self, home: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        let path = home.join("profile.json");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// Prints results as text or JSON lines, flushing each line (for pipes).
struct Out {
    json: bool,
}

impl Out {
    fn emit(&self, text: impl FnOnce() -> String, value: impl FnOnce() -> serde_json::Value) {
        let line = if self.json { value().to_string() } else { text() };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }

    fn message(&self, m: &v1::Message, pos: Option<u64>) {
        let text = m.content.as_ref().map_or("", |c| c.text.as_str());
        let payload = m.content.as_ref().map_or(0, |c| c.payload.len());
        self.emit(
            || {
                let body = if payload > 0 && text.is_empty() {
                    format!("<{payload} bytes of payload>")
                } else {
                    text.to_owned()
                };
                format!("[chat {} #{}] {}: {}", m.chat_id, m.seq, m.sender, body)
            },
            || {
                let mut v = json!({
                    "type": "message", "chat": m.chat_id, "seq": m.seq, "from": m.sender,
                    "to": m.recipient, "text": text, "sent_at_ms": m.sent_at_ms,
                    "client_msg_id": m.client_msg_id,
                });
                if let Some(pos) = pos {
                    v["pos"] = json!(pos);
                }
                v
            },
        );
    }

    fn receipt(&self, r: &v1::Receipt, pos: u64) {
        let kind = if r.kind == ReceiptKind::Read as i32 {
            "read"
        } else {
            "delivered"
        };
        self.emit(
            || format!("[chat {}] {} {kind} up to #{}", r.chat_id, r.user, r.seq),
            || json!({"type": "receipt", "chat": r.chat_id, "user": r.user, "kind": kind, "seq": r.seq, "pos": pos}),
        );
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
        Err(e) => {
            eprintln!("quip: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
    let ca = match &cli.ca {
        Some(p) => Some(std::fs::canonicalize(p).with_context(|| format!("CA file {}", p.display()))?),
        None => profile.ca.clone(),
    };
    let opts = ConnectOptions::new(server.clone(), ca.as_deref())?;

    let register = matches!(cli.command, Command::Register(_));
    match cli.command {
        Command::Register(a) | Command::Login(a) => {
            if profile.token.is_some() && profile.user.as_deref() != Some(&a.user) {
                // The old token stays valid on the server until that user
                // logs out; refuse rather than silently forget it.
                bail!(
                    "this profile is logged in as {}; run 'quip logout' first or use another QUIP_HOME",
                    profile.user.unwrap_or_default()
                );
            }
            let password = password(a.password)?;
            let client = Client::connect(&opts).await?;
            let auth = if register {
                client.register(&a.user, &password, &a.device).await?
            } else {
                client.login(&a.user, &password, &a.device).await?
            };
            save_login(&home, &mut profile, server, ca, &auth)?;
            let verb = if register { "registered" } else { "logged in as" };
            out.emit(
                || format!("{verb} {} (device {})", auth.user, auth.device_id),
                || json!({"type": "auth", "user": auth.user, "device_id": auth.device_id}),
            );
            client.close();
        }
        Command::Logout => {
            let client = connect(&opts, &profile).await?;
            client.logout().await?;
            let user = profile.user.take().unwrap_or_default();
            profile.token = None;
            profile.device_id = None;
            profile.save(&home)?;
            out.emit(
                || format!("logged out {user}"),
                || json!({"type": "logout", "user": user}),
            );
        }
        Command::Whoami => {
            let client = connect(&opts, &profile).await?;
            let me = client.whoami().await?;
            out.emit(
                || format!("{} (device {}) on {}", me.user, me.device_id, opts.server),
                || json!({"type": "whoami", "user": me.user, "device_id": me.device_id, "server": opts.server}),
            );
            client.close();
        }
        Command::Send { user, text, id } => {
            let client = connect(&opts, &profile).await?;
            let sent = client
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
                || json!({"type": "sent", "chat": sent.chat_id, "seq": sent.seq, "duplicate": sent.duplicate, "sent_at_ms": sent.sent_at_ms}),
            );
            client.close();
        }
        Command::Listen { count } => {
            let client = connect(&opts, &profile).await?;
            listen(&client, &out, count).await?;
            client.close();
        }
        Command::Sync => {
            let client = connect(&opts, &profile).await?;
            let mut tracker = AckTracker::new(0);
            let events = client.sync_all(&mut tracker).await?;
            let mut printed = 0;
            handle_events(&client, &out, &profile, events, &mut printed).await?;
            client.close();
        }
        Command::History { user, before, limit } => {
            let client = connect(&opts, &profile).await?;
            let page = client.history(&user, before.unwrap_or(0), limit).await?;
            for m in page.messages.iter().rev() {
                out.message(m, None);
            }
            if page.more && !out.json {
                let oldest = page.messages.last().map_or(0, |m| m.seq);
                eprintln!("(older messages: quip history {user} --before {oldest})");
            }
            client.close();
        }
        Command::Chats => {
            let client = connect(&opts, &profile).await?;
            for c in client.chats().await? {
                let last = c.last_message.as_ref();
                let last_text = last.and_then(|m| m.content.as_ref()).map_or("", |c| c.text.as_str());
                let last_seq = last.map_or(0, |m| m.seq);
                let last_from = last.map_or("", |m| m.sender.as_str());
                out.emit(
                    || {
                        format!(
                            "{}  (chat {})  unread {}  last #{} {}: {}  (your messages: delivered #{}, read #{})",
                            c.peer,
                            c.chat_id,
                            c.unread,
                            last_seq,
                            last_from,
                            last_text,
                            c.peer_delivered_seq,
                            c.peer_read_seq
                        )
                    },
                    || {
                        json!({"type": "chat", "chat": c.chat_id, "peer": c.peer, "unread": c.unread,
                            "last_seq": last_seq, "last_from": last_from, "last_text": last_text,
                            "my_read_seq": c.my_read_seq, "my_delivered_seq": c.my_delivered_seq,
                            "peer_delivered_seq": c.peer_delivered_seq, "peer_read_seq": c.peer_read_seq})
                    },
                );
            }
            client.close();
        }
        Command::Read { user } => {
            let client = connect(&opts, &profile).await?;
            let page = client.history(&user, 0, 1).await?;
            let seq = client.receipt(page.chat_id, ReceiptKind::Read, 0).await?;
            out.emit(
                || format!("read up to #{seq} with {user}"),
                || json!({"type": "read", "chat": page.chat_id, "seq": seq}),
            );
            client.close();
        }
    }
    Ok(())
}

fn password(given: Option<String>) -> anyhow::Result<String> {
    match given {
        Some(p) => Ok(p),
        None => {
            rpassword::prompt_password("password: ").context("reading password (or pass --password / QUIP_PASSWORD)")
        }
    }
}

fn save_login(
    home: &Path,
    profile: &mut Profile,
    server: String,
    ca: Option<PathBuf>,
    auth: &v1::AuthResponse,
) -> anyhow::Result<()> {
    profile.server = Some(server);
    profile.ca = ca;
    profile.user = Some(auth.user.clone());
    profile.device_id = Some(auth.device_id);
    profile.token = Some(auth.token.clone());
    profile.save(home)
}

async fn connect(opts: &ConnectOptions, profile: &Profile) -> anyhow::Result<Client> {
    let token = profile
        .token
        .clone()
        .ok_or_else(|| anyhow!("not logged in: run 'quip login USER' first"))?;
    Ok(Client::connect(&opts.clone().token(token)).await?)
}

/// Prints events, sends one DELIVERED receipt per chat for others' messages,
/// and acknowledges the contiguous prefix — one request each per batch, not
/// per event, so catching up stays within the server's rate limit.
async fn handle_events(
    client: &Client,
    out: &Out,
    profile: &Profile,
    events: Vec<v1::Event>,
    printed: &mut usize,
) -> Result<(), ClientError> {
    let me = profile.user.as_deref().unwrap_or("");
    let mut delivered: std::collections::BTreeMap<u64, u64> = Default::default();
    for e in events {
        match &e.kind {
            Some(v1::event::Kind::Message(m)) => {
                out.message(m, Some(e.pos));
                *printed += 1;
                if m.sender != me {
                    let d = delivered.entry(m.chat_id).or_default();
                    *d = (*d).max(m.seq);
                }
            }
            Some(v1::event::Kind::Receipt(r)) => out.receipt(r, e.pos),
            None => {}
        }
    }
    for (chat, seq) in delivered {
        client.receipt(chat, ReceiptKind::Delivered, seq).await?;
    }
    Ok(())
}

async fn listen(client: &Client, out: &Out, count: Option<usize>) -> anyhow::Result<()> {
    let profile = Profile::load(&home()?)?;
    let mut tracker = AckTracker::new(0);
    let mut printed = 0;
    let missed = client.sync_all(&mut tracker).await?;
    handle_events(client, out, &profile, missed, &mut printed).await?;
    while count.is_none_or(|c| printed < c) {
        let Some(first) = client.next_event().await else {
            let (code, reason) = client.closed().await;
            bail!("connection closed ({code:?}): {reason}");
        };
        // Take whatever else already arrived, to batch receipts and acks.
        let mut batch = vec![first];
        while batch.len() < 256 {
            match tokio::time::timeout(std::time::Duration::ZERO, client.next_event()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        batch.retain(|e| tracker.observe(e.pos));
        if let Some(limit) = count {
            let room = limit - printed;
            let messages_seen = batch
                .iter()
                .scan(0, |n, e| {
                    if matches!(e.kind, Some(v1::event::Kind::Message(_))) {
                        *n += 1;
                    }
                    Some(*n)
                })
                .position(|n| n >= room);
            if let Some(i) = messages_seen {
                batch.truncate(i + 1);
            }
        }
        handle_events(client, out, &profile, batch, &mut printed).await?;
        if let Some(pos) = tracker.take_ack() {
            client.ack(pos).await?;
        }
    }
    Ok(())
}
