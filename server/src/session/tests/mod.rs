//! The session driven without a transport, step by step, in virtual time.
//!
//! A [`Harness`] is a server's shared state over the in-memory store with a
//! [`Clock::following_tokio`]; each test runs on a paused tokio runtime
//! (`start_paused = true`), so time moves only when the test calls
//! [`tokio::time::advance`]. A [`Conn`] is what a transport would make of a
//! connection: the session, its push queue and its closer, with requests
//! handed in and replies, pushes and close requests read back. Token
//! expiry, budgets, the 0-RTT wait and presence grace are checked to the
//! millisecond this way, with no sleeps: each test runs in milliseconds of
//! real time whatever the durations it covers.
//!
//! What the transports add (framing, QUIC and WebSocket timeouts, Retry) is
//! not here: the integration tests in `tests/` run those over real sockets.

mod budgets;
mod presence;
mod time;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use quip_protocol::v1::{self, ErrorCode};
use quip_protocol::{Body, CloseCode, Envelope};

use super::{Reply, Session, Shared};
use crate::clock::Clock;
use crate::config::Config;
use crate::hub::{Closer, PushReceiver, push_queue};
use crate::media::MediaStore;
use crate::store::memory::MemoryStore;

/// Wall time the virtual clock starts at (2026-12-01T00:00:00Z).
const EPOCH_MS: i64 = 1_796_083_200_000;
/// A password every test user has.
const PASSWORD: &str = "correct horse battery";

/// A server's shared state, with nothing listening.
struct Harness {
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A harness with the test defaults changed by `configure`. Call it on a
    /// paused runtime: the clock starts when it is built.
    fn new(configure: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests(dir.path());
        configure(&mut config);
        let media = Arc::new(MediaStore::open(&config).expect("media dir"));
        let shared = Shared::with_clock(
            Arc::new(MemoryStore::new()),
            Arc::new(config),
            media,
            Clock::following_tokio(EPOCH_MS),
        );
        Self {
            shared: Arc::new(shared),
            _dir: dir,
        }
    }

    /// A new connection from `peer`, before its Hello.
    fn connect_from(&self, peer: IpAddr) -> Conn {
        let closer = Closer::new();
        let (tx, pushes) = push_queue(1024);
        Conn {
            session: Session::new(self.shared.clone(), closer.clone(), tx, peer),
            closer,
            pushes,
            next_id: 1,
        }
    }

    /// A new connection from loopback that said Hello with `token` (empty:
    /// anonymous).
    async fn connect(&self, token: &str) -> Result<Conn, (ErrorCode, CloseCode)> {
        let mut c = self.connect_from(IpAddr::from([127, 0, 0, 1]));
        c.hello(token).await?;
        Ok(c)
    }

    /// Registers `name` on a new connection, which stays logged in; returns
    /// it and the session token.
    async fn user(&self, name: &str) -> (Conn, String) {
        let mut c = self.connect("").await.expect("anonymous hello");
        let auth = match c
            .call(Body::Register(v1::RegisterRequest {
                username: name.into(),
                password: PASSWORD.into(),
                device_name: String::new(),
            }))
            .await
        {
            Body::Auth(a) => a,
            other => panic!("register {name}: {other:?}"),
        };
        (c, auth.token)
    }
}

impl Harness {
    /// Alice and Bob, contacts (Alice wrote to Bob), both connected, Bob's
    /// pushes so far drained; Alice's token and their chat.
    async fn contacts(&self) -> (Conn, Conn, String, u64) {
        let (bob, _) = self.user("bob").await;
        let (mut alice, token) = self.user("alice").await;
        let sent = alice
            .call(Body::Send(v1::SendRequest {
                to_user: "bob".into(),
                client_msg_id: "m1".into(),
                content: Some(v1::Content {
                    text: "hi".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await;
        let Body::Sent(sent) = sent else {
            panic!("send failed: {sent:?}")
        };
        settle().await;
        bob.events();
        (alice, bob, token, sent.chat_id)
    }
}

/// One connection's session, as a transport would drive it.
struct Conn {
    session: Arc<Session>,
    closer: Arc<Closer>,
    pushes: PushReceiver,
    next_id: u64,
}

impl Conn {
    /// Sends the Hello; the error and close code on refusal.
    async fn hello(&mut self, token: &str) -> Result<v1::Welcome, (ErrorCode, CloseCode)> {
        let hello = v1::Hello {
            versions: vec![1],
            token: token.into(),
            client: "harness".into(),
            ..Default::default()
        };
        match self.session.hello(Envelope::new(0, Body::Hello(hello))).await {
            Ok(Envelope {
                body: Some(Body::Welcome(w)),
                ..
            }) => Ok(w),
            Ok(other) => panic!("hello answered {other:?}"),
            Err(e) => {
                let (env, close) = *e;
                Err((error_code(&env.body.expect("a body")), close))
            }
        }
    }

    /// Hands in one request and waits for its answer, as the request loop
    /// does (the pending write resolves once the store has it).
    async fn call(&mut self, body: Body) -> Body {
        let id = self.next_id;
        self.next_id += 1;
        let env = match self.session.handle(Envelope::new(id, body)).await {
            Reply::Ready(env) => env,
            Reply::Pending(task) => task.await.expect("reply task"),
            Reply::Waiting(fut) => fut.await,
        };
        assert_eq!(env.id, id, "the answer carries the request's id");
        env.body.expect("an answer has a body")
    }

    /// The error code of a call that must fail.
    async fn refused(&mut self, body: Body) -> ErrorCode {
        error_code(&self.call(body).await)
    }

    /// The close the server asked for so far, if any.
    fn close_requested(&self) -> Option<CloseCode> {
        self.closer.requested().now_or_never().map(|(code, _)| code)
    }

    /// The pushed events waiting in the queue, decoded.
    fn events(&self) -> Vec<v1::Event> {
        self.pushes
            .try_iter()
            .map(|push| {
                let body = quip_protocol::codec::frame_body(&push.frame);
                match quip_protocol::codec::decode_envelope(&body, quip_protocol::MAX_FRAME)
                    .expect("a pushed frame decodes")
                    .body
                {
                    Some(Body::Event(e)) => e,
                    other => panic!("pushed {other:?}"),
                }
            })
            .collect()
    }

    /// The presence events among the pushes waiting, as (user, online, last seen).
    fn presence_events(&self) -> Vec<(String, bool, i64)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e.kind {
                Some(v1::event::Kind::Presence(p)) => Some((p.user, p.online, p.last_seen_ms)),
                _ => None,
            })
            .collect()
    }
}

/// The error code in an answer (panics on success).
fn error_code(body: &Body) -> ErrorCode {
    match body {
        Body::Error(e) => ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Lets the tasks woken so far (fan-out, presence publisher) run, without
/// moving the clock.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// Moves the virtual clock and lets what it woke run.
async fn advance(by: Duration) {
    tokio::time::advance(by).await;
    settle().await;
}
