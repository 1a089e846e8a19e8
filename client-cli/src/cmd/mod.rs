//! The commands, grouped by what they act on. Each takes the [`Ctx`] and its
//! own arguments; [`Ctx::call`] opens the connection, runs the requests and
//! closes it again, so a command is its requests and its output.
//!
//! # Layout
//!
//! - `account`: register, login, logout, whoami.
//! - `messages`: send, history, chats, read.
//! - `media`: send-file, download.
//! - `groups`: `group ...`, `channel ...`.
//! - `presence`: presence, typing, last-seen, group-adds, block, unblock.
//! - `listen`: listen, sync.
//! - `out`: how results are printed; `profile`: what is remembered.
//! - `fail`: exit statuses and how errors are printed.

pub mod account;
pub mod fail;
pub mod groups;
pub mod listen;
pub mod media;
pub mod messages;
pub mod out;
pub mod presence;
pub mod profile;

use std::path::PathBuf;
use std::time::Duration;

use quip_client::{Client, ClientError, ConnectOptions, new_client_msg_id};
use quip_protocol::v1::{self, ErrorCode};

use out::Out;
use profile::Profile;

/// What every command runs with: where the profile lives, the profile, how
/// to reach the server, and how to print.
pub struct Ctx {
    pub home: PathBuf,
    pub profile: Profile,
    pub out: Out,
    pub opts: ConnectOptions,
    /// The CA file to trust (`--ca`, made absolute, else the profile's):
    /// saved in the profile at register/login.
    pub ca: Option<PathBuf>,
}

impl Ctx {
    /// Connects with `token` (`None`: anonymously, to log in).
    pub async fn open(&self, token: Option<&str>) -> anyhow::Result<Conn> {
        Conn::open(&self.opts, token).await
    }

    /// Connects as the profile's device, runs `call`, and closes the
    /// connection whatever `call` returned.
    pub async fn call<T>(&self, call: impl AsyncFnOnce(&Client) -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.open(Some(self.profile.token()?)).await?.run(call).await
    }

    /// [`call`](Self::call), then prints its result as one line: `text`, or
    /// `json` with `--json`.
    pub async fn report<T>(
        &self,
        call: impl AsyncFnOnce(&Client) -> anyhow::Result<T>,
        text: impl FnOnce(&T) -> String,
        json: impl FnOnce(&T) -> serde_json::Value,
    ) -> anyhow::Result<()> {
        let r = self.call(call).await?;
        Ok(self.out.emit(|| text(&r), || json(&r))?)
    }
}

/// A connection that is closed cleanly at the end of the command.
pub struct Conn {
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

    /// Runs `call`, then closes the connection whatever it returned.
    pub async fn run<T>(self, call: impl AsyncFnOnce(&Client) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let r = call(&self.client).await;
        self.finish().await;
        r
    }

    /// Closes the connection and gives the close a moment to reach the
    /// server, which would otherwise hold the session until its idle timeout.
    async fn finish(self) {
        self.client.close();
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
}

/// A chat as named on the command line: a username, or `chat:ID`.
#[derive(Debug, Clone)]
pub enum Target {
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

impl Target {
    /// The chat id (the direct chat with a user must exist).
    pub async fn chat_id(&self, client: &Client) -> anyhow::Result<u64> {
        Ok(match self {
            Self::Chat(id) => *id,
            Self::User(user) => client.history(user, 0, 1).await?.chat_id,
        })
    }
}

/// A group or channel: `chat:ID` or just the number.
pub fn parse_chat(s: &str) -> Result<u64, String> {
    let id = s.strip_prefix("chat:").unwrap_or(s);
    match id.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a chat (chat:ID or a number)")),
    }
}

/// Sends `content` to a user or into a chat.
pub async fn send_to(
    client: &Client,
    target: Target,
    content: v1::Content,
    id: Option<String>,
) -> anyhow::Result<v1::SendResponse> {
    let (to_user, chat_id) = match target {
        Target::User(u) => (u, 0),
        Target::Chat(c) => (String::new(), c),
    };
    Ok(client
        .send(v1::SendRequest {
            to_user,
            chat_id,
            client_msg_id: id.unwrap_or_else(new_client_msg_id),
            content: Some(content),
        })
        .await?)
}

/// Sends a text to a user or into a chat.
pub async fn send_text(
    client: &Client,
    target: Target,
    text: String,
    id: Option<String>,
) -> anyhow::Result<v1::SendResponse> {
    let content = v1::Content {
        text,
        ..Default::default()
    };
    send_to(client, target, content, id).await
}

pub fn code_of(e: &anyhow::Error) -> Option<ErrorCode> {
    e.downcast_ref::<ClientError>().and_then(ClientError::code)
}
