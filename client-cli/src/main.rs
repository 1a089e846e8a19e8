//! `quip`: the Quip command-line client. Scriptable (`--json` prints one
//! object per line), and the quickest way to explore a server.
//!
//! Results go to stdout, one line each, flushed as they are printed (so a
//! pipe sees `quip listen` events as they arrive). A failure prints one line,
//! `quip: error: ...` (with `--json`, one JSON object), on stderr and exits
//! with a status that says what kind of failure it was (`cmd/fail.rs`,
//! listed in `--help`).
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
use clap::{CommandFactory, Parser, Subcommand};
use quip_client::ConnectOptions;

use cmd::account::{self, AuthArgs};
use cmd::fail::{self, Failure};
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
#[command(name = "quip", version, about, long_about, after_long_help = fail::EXIT_CODES)]
struct Cli {
    /// Server address: HOST, HOST:PORT, an IPv6 address or [V6]:PORT; the
    /// port defaults to 4433 [default: the profile's, else 127.0.0.1:4433].
    #[arg(long, env = "QUIP_SERVER", global = true, value_name = "HOST[:PORT]")]
    server: Option<String>,

    /// Give up connecting when the server has not answered within this many
    /// seconds.
    #[arg(
        long,
        env = "QUIP_CONNECT_TIMEOUT",
        global = true,
        value_name = "SECS",
        default_value_t = 5.0
    )]
    connect_timeout: f64,

    /// PEM certificate to trust, e.g. a dev server's <data-dir>/dev-cert.pem
    /// [default: the profile's, else the web PKI roots]. Saved in the profile
    /// at register/login.
    #[arg(long, env = "QUIP_CA", global = true, value_name = "PATH")]
    ca: Option<PathBuf>,

    /// Print one JSON object per line instead of text (and an error as one
    /// JSON object on stderr).
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
        /// Message text; `-` reads it from standard input (one trailing
        /// newline dropped).
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
    /// until Ctrl-C or SIGTERM, which close the connection cleanly. Confirms
    /// delivery of others' messages. When the connection is lost or the
    /// server restarts, reconnects with backoff (1 s doubling to 30 s) and
    /// catches up, saying so on stderr: nothing is missed or printed twice.
    Listen {
        /// Exit after printing this many messages.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
        /// Exit when the connection ends instead of reconnecting.
        #[arg(long)]
        once: bool,
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
    /// Print a shell completion script, e.g.
    /// `quip completions bash > ~/.local/share/bash-completion/completions/quip`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `quip man | man -l -`.
    Man,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && std::env::args().any(|a| a == "--json") => {
            // clap's first paragraph, on one line (the usage and tip follow it).
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let v = serde_json::json!({"type": "error", "exit": fail::Exit::Usage as u8, "code": "USAGE",
                "message": message.trim_start_matches("error: ")});
            eprintln!("{v}");
            return ExitCode::from(fail::Exit::Usage as u8);
        }
        // Help and version on stdout (status 0), usage errors (status 2).
        Err(e) => e.exit(),
    };
    let json = cli.json;
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`quip listen | head -1`): nothing to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::FAILURE,
        Err(e) => Failure::of(&e).report(json),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "quip", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            return Ok(());
        }
        _ => {}
    }
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
    if !(cli.connect_timeout > 0.0 && cli.connect_timeout.is_finite()) {
        return Err(fail::Usage("--connect-timeout must be a positive number of seconds".into()).into());
    }
    opts.connect_timeout = Some(std::time::Duration::from_secs_f64(cli.connect_timeout));
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
        Command::Send { target, text, id } => messages::send(ctx, target, messages::text_arg(text)?, id).await,
        Command::SendFile {
            target,
            path,
            caption,
            content_type,
        } => media::send_file(ctx, target, path, caption, content_type).await,
        Command::Download { media_id, output } => media::download(ctx, media_id, output).await,
        Command::Listen { count, once } => listen::listen(ctx, count, once).await,
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
        Command::Completions { .. } | Command::Man => unreachable!("answered above"),
    }
}
