//! `quipd admin …`: the operator's commands, run against a running quipd
//! through its admin listener, with the token from the data directory.
//! Text output by default, the API's JSON with `--json`.
//!
//! Exit status: 0 done; 1 the server refused (unknown user, bad
//! argument…); 2 the server could not be asked (no address, no token,
//! connection refused, wrong token).

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rand::RngCore;
use serde_json::{Value, json};

/// `quipd admin`: asks the running server, through its admin listener.
/// With `QUIP_CONFIG` naming the server's file, that file gives the data directory and admin address that flags and the
/// environment leave unset.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The server's data directory, which holds the admin token
    /// (admin-token, written at start when --admin-listen is set).
    #[arg(long, env = "QUIP_DATA_DIR", default_value = "quip-data", global = true)]
    pub data_dir: PathBuf,

    /// The server's --admin-listen address (HOST:PORT).
    #[arg(long, env = "QUIP_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<SocketAddr>,

    /// The admin listener as a URL (http://HOST:PORT); wins over
    /// --admin-listen.
    #[arg(long, env = "QUIP_ADMIN_URL", global = true)]
    pub admin_url: Option<String>,

    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

impl AdminArgs {
    /// Takes the data directory and the admin address from `file` (the
    /// server's `--config` file, as settings) where neither a flag nor the
    /// environment gave them; `matches` are this subcommand's.
    pub fn fill_in(&mut self, matches: &clap::ArgMatches, file: &crate::Config) {
        if matches.value_source("data_dir") == Some(clap::parser::ValueSource::DefaultValue) {
            self.data_dir = file.data_dir.clone();
        }
        if self.admin_listen.is_none() {
            self.admin_listen = file.admin_listen;
        }
    }
}

/// `quipd admin <command>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AdminCommand {
    /// Accounts.
    #[command(subcommand)]
    Users(UsersCommand),
    /// A user's devices (one per login).
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// A user's open connections.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Groups, channels and direct chats: who is in them.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Users, users online, connections, chats, messages per second.
    Stats,
}

/// `quipd admin users …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum UsersCommand {
    /// Every account.
    List,
    /// One account: status, devices, sessions, connections.
    Show {
        /// The username.
        name: String,
    },
    /// Refuses the user's logins, revokes their session tokens and closes
    /// their connections (close code 10).
    Disable {
        /// The username.
        name: String,
    },
    /// Allows a disabled user to log in again.
    Enable {
        /// The username.
        name: String,
    },
    /// Refills the user's failed-login budget, so a throttled user can log
    /// in at once.
    Unlock {
        /// The username.
        name: String,
    },
    /// Sets a new password (random and printed, or read from stdin) and
    /// signs out every device of the user.
    ResetPassword {
        /// The username.
        name: String,
        /// Read the new password from the first line of stdin instead of
        /// generating one.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// `quipd admin devices …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DevicesCommand {
    /// The user's devices, with their live tokens and connections.
    List {
        /// The username.
        name: String,
    },
    /// Signs a device out: revokes its tokens and closes its connections
    /// (close code 5).
    Revoke {
        /// The username.
        name: String,
        /// The device id (from `devices list`).
        device: u32,
    },
}

/// `quipd admin sessions …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SessionsCommand {
    /// The user's open connections on this server, by device.
    List {
        /// The username.
        name: String,
    },
    /// Closes the user's connections (of one device, or all) with close
    /// code 10; their tokens stay valid.
    Kick {
        /// The username.
        name: String,
        /// Only this device's connections.
        device: Option<u32>,
    },
}

/// `quipd admin groups …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum GroupsCommand {
    /// A chat's kind, name, members (admins marked) and last seq; never
    /// its messages.
    Show {
        /// The chat id (as clients show it: chat:ID).
        id: u64,
    },
}

/// Why a command failed, and its exit status.
struct Failure {
    status: i32,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self {
            status: 2,
            message: format!("{e:#}"),
        }
    }
}

/// Runs the command; returns the process's exit status.
pub async fn run(args: AdminArgs) -> i32 {
    match execute(&args).await {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("quipd admin: {}", f.message);
            f.status
        }
    }
}

async fn execute(args: &AdminArgs) -> Result<(), Failure> {
    let client = Client::new(args)?;
    let mut extra = None;
    let (method, path, body) = match &args.command {
        AdminCommand::Users(UsersCommand::List) => ("GET", "users".to_owned(), None),
        AdminCommand::Users(UsersCommand::Show { name }) => ("GET", format!("users/{}", seg(name)), None),
        AdminCommand::Users(UsersCommand::Disable { name }) => ("POST", format!("users/{}/disable", seg(name)), None),
        AdminCommand::Users(UsersCommand::Enable { name }) => ("POST", format!("users/{}/enable", seg(name)), None),
        AdminCommand::Users(UsersCommand::Unlock { name }) => ("POST", format!("users/{}/unlock", seg(name)), None),
        AdminCommand::Users(UsersCommand::ResetPassword { name, password_stdin }) => {
            let password = if *password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the password from stdin")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            } else {
                let p = random_password();
                extra = Some(p.clone());
                p
            };
            (
                "POST",
                format!("users/{}/password", seg(name)),
                Some(json!({ "password": password })),
            )
        }
        AdminCommand::Devices(DevicesCommand::List { name }) => ("GET", format!("users/{}/devices", seg(name)), None),
        AdminCommand::Devices(DevicesCommand::Revoke { name, device }) => {
            ("POST", format!("users/{}/devices/{device}/revoke", seg(name)), None)
        }
        AdminCommand::Sessions(SessionsCommand::List { name }) => {
            ("GET", format!("users/{}/sessions", seg(name)), None)
        }
        AdminCommand::Sessions(SessionsCommand::Kick { name, device }) => (
            "POST",
            format!("users/{}/kick", seg(name)),
            Some(json!({ "device": device })),
        ),
        AdminCommand::Groups(GroupsCommand::Show { id }) => ("GET", format!("chats/{id}"), None),
        AdminCommand::Stats => ("GET", "stats".to_owned(), None),
    };
    let mut v = client.call(method, &path, body).await?;
    if let (Some(p), Value::Object(o)) = (&extra, &mut v) {
        o.insert("password".into(), Value::String(p.clone()));
    }
    let out = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&v).expect("JSON prints"))
    } else {
        text(&args.command, &v)
    };
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    Ok(())
}

/// A username as a path segment: usernames are `[a-z0-9_.-]`; anything
/// else is percent-encoded so it stays one segment.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// 18 random bytes as 24 URL-safe characters (144 bits).
fn random_password() -> String {
    let mut raw = [0u8; 18];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The admin listener and the token.
struct Client {
    authority: String,
    token: String,
}

impl Client {
    fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let authority = match (&args.admin_url, args.admin_listen) {
            (Some(url), _) => {
                let uri: hyper::Uri = url.parse().with_context(|| format!("--admin-url {url:?}"))?;
                anyhow::ensure!(
                    uri.scheme_str() == Some("http"),
                    "--admin-url {url:?}: the admin listener speaks plain http://"
                );
                uri.authority()
                    .with_context(|| format!("--admin-url {url:?} has no host"))?
                    .to_string()
            }
            (None, Some(addr)) => addr.to_string(),
            (None, None) => anyhow::bail!(
                "where is the server's admin listener? give --admin-listen HOST:PORT (or QUIP_ADMIN_LISTEN), as quipd was started with"
            ),
        };
        let path = super::token::path(&args.data_dir);
        let token = super::token::read(&path).with_context(|| {
            format!(
                "reading the admin token {} (is --data-dir the server's, and does it run with --admin-listen?)",
                path.display()
            )
        })?;
        Ok(Self { authority, token })
    }

    /// `method /admin/v1/<path>` with a JSON body; the JSON answer, or a
    /// failure saying what the server said.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connecting to the admin listener at {}", self.authority))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .context("HTTP handshake with the admin listener")?;
        tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("/admin/v1/{path}"))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .context("building the request")?;
        let resp = send.send_request(req).await.context("asking the admin listener")?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the admin listener's answer")?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| Failure {
            status: 2,
            message: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()),
        })?;
        if status.is_success() {
            return Ok(v);
        }
        let message = v["message"].as_str().unwrap_or("").to_owned();
        let code = v["error"].as_str().unwrap_or("");
        Err(Failure {
            status: if status == hyper::StatusCode::UNAUTHORIZED {
                2
            } else {
                1
            },
            message: format!("{code}: {message}"),
        })
    }
}

/// `ms` since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC` (`-` for 0).
fn when(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn outcome(v: &Value) -> String {
    format!(
        "{} session token(s) revoked, {} device(s) disconnected",
        s(&v["revoked_sessions"]),
        s(&v["closed_devices"])
    )
}

/// The text form of an answer.
fn text(command: &AdminCommand, v: &Value) -> String {
    let rows = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    match command {
        AdminCommand::Users(UsersCommand::List) => {
            out.push_str(&format!("{:<32} {:>8} {:<23} STATUS\n", "NAME", "ID", "CREATED"));
            for u in rows(v) {
                out.push_str(&format!(
                    "{:<32} {:>8} {:<23} {}\n",
                    s(&u["name"]),
                    s(&u["id"]),
                    when(u["created_ms"].as_i64().unwrap_or(0)),
                    if u["disabled"].as_bool() == Some(true) {
                        "disabled"
                    } else {
                        "active"
                    }
                ));
            }
        }
        AdminCommand::Users(UsersCommand::Show { .. }) => {
            let status = if v["disabled"].as_bool() == Some(true) {
                "disabled"
            } else {
                "active"
            };
            out.push_str(&format!("name:        {}\n", s(&v["name"])));
            out.push_str(&format!("id:          {}\n", s(&v["id"])));
            out.push_str(&format!("status:      {status}\n"));
            out.push_str(&format!(
                "created:     {}\n",
                when(v["created_ms"].as_i64().unwrap_or(0))
            ));
            out.push_str(&format!(
                "last seen:   {}\n",
                when(v["last_seen_ms"].as_i64().unwrap_or(0))
            ));
            out.push_str(&format!("devices:     {}\n", s(&v["devices"])));
            out.push_str(&format!("sessions:    {}\n", s(&v["sessions"])));
            out.push_str(&format!("connections: {}\n", s(&v["connections"])));
            out.push_str(&format!("throttled:   {}\n", s(&v["locked"])));
        }
        AdminCommand::Users(UsersCommand::Disable { name }) => {
            out.push_str(&format!("disabled {name}: {}\n", outcome(v)));
        }
        AdminCommand::Users(UsersCommand::Enable { name }) => out.push_str(&format!("enabled {name}\n")),
        AdminCommand::Users(UsersCommand::Unlock { name }) => {
            let was = if v["was_throttled"].as_bool() == Some(true) {
                " (it was throttled)"
            } else {
                ""
            };
            out.push_str(&format!("unlocked {name}{was}\n"));
        }
        AdminCommand::Users(UsersCommand::ResetPassword { name, .. }) => {
            out.push_str(&format!("password of {name} changed: {}\n", outcome(v)));
            if let Some(p) = v["password"].as_str() {
                out.push_str(&format!("new password: {p}\n"));
            }
        }
        AdminCommand::Devices(DevicesCommand::List { .. }) => {
            out.push_str(&format!(
                "{:>6} {:<24} {:<23} {:>8} CONNECTIONS\n",
                "ID", "NAME", "CREATED", "SESSIONS"
            ));
            for d in rows(v) {
                out.push_str(&format!(
                    "{:>6} {:<24} {:<23} {:>8} {}\n",
                    s(&d["id"]),
                    s(&d["name"]),
                    when(d["created_ms"].as_i64().unwrap_or(0)),
                    s(&d["sessions"]),
                    s(&d["connections"])
                ));
            }
        }
        AdminCommand::Devices(DevicesCommand::Revoke { name, device }) => {
            out.push_str(&format!("revoked device {device} of {name}: {}\n", outcome(v)));
        }
        AdminCommand::Sessions(SessionsCommand::List { .. }) => {
            out.push_str(&format!("{:>6} {:<24} CONNECTIONS\n", "DEVICE", "NAME"));
            for c in rows(v) {
                out.push_str(&format!(
                    "{:>6} {:<24} {}\n",
                    s(&c["device"]),
                    s(&c["device_name"]),
                    s(&c["connections"])
                ));
            }
        }
        AdminCommand::Sessions(SessionsCommand::Kick { name, .. }) => {
            out.push_str(&format!(
                "kicked {name}: {} device(s) disconnected\n",
                s(&v["closed_devices"])
            ));
        }
        AdminCommand::Groups(GroupsCommand::Show { .. }) => {
            out.push_str(&format!("chat:          {}\n", s(&v["id"])));
            out.push_str(&format!("kind:          {}\n", s(&v["kind"])));
            out.push_str(&format!("name:          {}\n", s(&v["name"])));
            out.push_str(&format!("members:       {}\n", s(&v["member_count"])));
            out.push_str(&format!("last seq:      {}\n", s(&v["last_seq"])));
            out.push_str(&format!(
                "last activity: {}\n",
                when(v["last_activity_ms"].as_i64().unwrap_or(0))
            ));
            for m in rows(&v["members"]) {
                let admin = if m["admin"].as_bool() == Some(true) {
                    " (admin)"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "  {}{admin}, from seq {}\n",
                    s(&m["user"]),
                    s(&m["joined_seq"])
                ));
            }
        }
        AdminCommand::Stats => {
            out.push_str(&format!("users:            {}\n", s(&v["users"])));
            out.push_str(&format!("online:           {}\n", s(&v["online"])));
            out.push_str(&format!("connections:      {}\n", s(&v["connections"])));
            out.push_str(&format!("chats:            {}\n", s(&v["chats"])));
            out.push_str(&format!("messages:         {}\n", s(&v["messages"])));
            let rate = v["messages_per_sec"].as_f64().unwrap_or(0.0);
            out.push_str(&format!("messages/s (10s): {rate:.1}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(when(0), "-");
        assert_eq!(when(1), "1970-01-01 00:00:00 UTC");
        assert_eq!(when(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(when(1_767_225_599_000), "2025-12-31 23:59:59 UTC");
    }

    #[test]
    fn path_segments() {
        assert_eq!(seg("bob_1.x-y"), "bob_1.x-y");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
