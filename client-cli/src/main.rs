//! `quip`: the Quip command-line client. Scriptable (`--json` prints one
//! object per line), and the quickest way to explore a server.
//!
//! Results go to stdout, one line each, flushed as they are printed (so a
//! pipe sees `quip listen` events as they arrive). A failure prints one line,
//! `quip: error: ...`, on stderr and exits with status 1 (clap's usage errors
//! exit with 2).
//!
//! # Layout
//!
//! This file holds the command line (clap) and the one dispatch; each
//! command lives in `cmd/`, where [`cmd::Ctx`] opens, runs and closes its
//! connection.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quip_client::ConnectOptions;

use cmd::account::{self, AuthArgs};
use cmd::groups::{self, ChannelCmd, GroupCmd};
use cmd::presence::{self, VisibilityArg};
use cmd::profile::{Profile, home};
use cmd::{Ctx, Target, listen, media, messages, out::Out};

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
    let profile = Profile::load(&home)?;
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
    let mut ctx = Ctx {
        home,
        profile,
        out,
        opts,
        ca,
    };
    let ctx = &mut ctx;

    match cli.command {
        Command::Register(a) => account::auth(ctx, a, true).await,
        Command::Login(a) => account::auth(ctx, a, false).await,
        Command::Logout => account::logout(ctx).await,
        Command::Whoami => account::whoami(ctx).await,
        Command::Send { target, text, id } => messages::send(ctx, target, text, id).await,
        Command::SendFile {
            target,
            path,
            caption,
            content_type,
        } => media::send_file(ctx, target, path, caption, content_type).await,
        Command::Download { media_id, output } => media::download(ctx, media_id, output).await,
        Command::Listen { count } => listen::listen(ctx, count).await,
        Command::Sync => listen::sync(ctx).await,
        Command::History { target, before, limit } => messages::history(ctx, target, before, limit).await,
        Command::Chats => messages::chats(ctx).await,
        Command::Read { target } => messages::read(ctx, target).await,
        Command::Group(cmd) => groups::group(ctx, cmd).await,
        Command::Channel(cmd) => groups::channel(ctx, cmd).await,
        Command::Presence { users } => presence::presence(ctx, users).await,
        Command::Typing { target } => presence::typing(ctx, target).await,
        Command::LastSeen { visibility } => presence::last_seen(ctx, visibility).await,
        Command::GroupAdds { who } => presence::group_adds(ctx, who).await,
        Command::Block { user } => presence::block(ctx, &user, false).await,
        Command::Unblock { user } => presence::block(ctx, &user, true).await,
    }
}
