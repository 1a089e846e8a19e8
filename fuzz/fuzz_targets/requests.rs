//! Drives the real request handlers (the transport-independent `Session`
//! over the real embedded store) with structure-aware sequences of requests
//! from three logged-in users, plus raw envelopes.
//!
//! Invariants, beyond "no panic" (a panic in a handler would take a
//! connection task down; in the store writer, every write):
//! - every request gets exactly one reply, with the request's id;
//! - an error reply carries a known error code (never UNSPECIFIED);
//! - every chat's history, read by a participant, has seqs without gaps or
//!   duplicates, newest first;
//! - a device's sync returns strictly increasing positions above its
//!   acknowledged one.
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use quip_protocol::v1::{self, ChatAction, ChatKind, ErrorCode, ReceiptKind, Visibility};
use quip_protocol::{Body, Envelope, MAX_FRAME, decode_envelope};
use quip_server::Config;
use quip_server::hub::Closer;
use quip_server::service::accounts;
use quip_server::session::{Reply, Session, Shared};
use quip_server::store::Store;

const USERS: [&str; 3] = ["ann", "ben", "cat"];

#[derive(Debug, Arbitrary)]
enum Op {
    Send {
        to: u8,
        chat: u8,
        cmid: u8,
        text: String,
    },
    History {
        chat: u8,
        before: u8,
        after: Option<u8>,
        limit: u8,
    },
    Receipt {
        chat: u8,
        read: bool,
        seq: u8,
    },
    Chats,
    Sync {
        limit: u16,
    },
    Ack {
        pos: u16,
    },
    CreateChat {
        channel: bool,
        name: String,
        members: Vec<u8>,
        request: Option<u8>,
    },
    Update {
        chat: u8,
        action: u8,
        users: Vec<u8>,
        name: String,
    },
    Info {
        chat: u8,
    },
    Detail {
        chat: u8,
    },
    Subscribe {
        chat: u8,
        unsubscribe: bool,
    },
    Presence {
        users: Vec<u8>,
    },
    Settings {
        visibility: u8,
    },
    Block {
        user: u8,
        unblock: bool,
    },
    Typing {
        chat: u8,
    },
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    steps: Vec<(u8, Op)>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn phc() -> &'static str {
    static PHC: OnceLock<String> = OnceLock::new();
    PHC.get_or_init(|| accounts::hash_password("fuzz password 1").unwrap())
}

fn name(i: u8) -> String {
    USERS
        .get(usize::from(i) % 4)
        .map_or("nobody".into(), |s| (*s).to_owned())
}

fn body(op: Op) -> Option<Body> {
    let chat = |c: u8| u64::from(c % 8);
    Some(match op {
        Op::Send {
            to,
            chat: c,
            cmid,
            text,
        } => Body::Send(v1::SendRequest {
            to_user: if c == 0 { name(to) } else { String::new() },
            chat_id: chat(c),
            client_msg_id: format!("m{cmid}"),
            content: Some(v1::Content {
                text: text.chars().take(64).collect(),
                ..Default::default()
            }),
        }),
        Op::History {
            chat: c,
            before,
            after,
            limit,
        } => Body::History(v1::HistoryRequest {
            chat_id: chat(c),
            with_user: if c == 0 { name(before) } else { String::new() },
            before_seq: u64::from(before % 16),
            after_seq: after.map(|a| u64::from(a % 16)),
            limit: u32::from(limit),
        }),
        Op::Receipt { chat: c, read, seq } => Body::Receipt(v1::ReceiptRequest {
            chat_id: chat(c),
            kind: if read {
                ReceiptKind::Read
            } else {
                ReceiptKind::Delivered
            } as i32,
            seq: u64::from(seq % 32),
        }),
        Op::Chats => Body::Chats(v1::ChatsRequest::default()),
        Op::Sync { limit } => Body::Sync(v1::SyncRequest {
            limit: u32::from(limit),
        }),
        Op::Ack { pos } => Body::Ack(v1::AckRequest { pos: u64::from(pos) }),
        Op::CreateChat {
            channel,
            name: n,
            members,
            request,
        } => Body::CreateChat(v1::CreateChatRequest {
            kind: if channel { ChatKind::Channel } else { ChatKind::Group } as i32,
            name: n.chars().take(70).collect(),
            members: members.into_iter().take(4).map(name).collect(),
            client_request_id: request.map(|r| format!("r{r}")).unwrap_or_default(),
        }),
        Op::Update {
            chat: c,
            action,
            users,
            name: n,
        } => Body::UpdateChat(v1::UpdateChatRequest {
            chat_id: chat(c),
            action: ChatAction::try_from(i32::from(action % 8)).map_or(99, |a| a as i32),
            users: users.into_iter().take(4).map(name).collect(),
            name: n.chars().take(70).collect(),
        }),
        Op::Info { chat: c } => Body::ChatInfo(v1::ChatInfoRequest { chat_id: chat(c) }),
        Op::Detail { chat: c } => Body::ReceiptDetail(v1::ReceiptDetailRequest { chat_id: chat(c) }),
        Op::Subscribe { chat: c, unsubscribe } => Body::Subscribe(v1::SubscribeRequest {
            chat_id: chat(c),
            unsubscribe,
        }),
        Op::Presence { users } => Body::Presence(v1::PresenceRequest {
            users: users.into_iter().take(8).map(name).collect(),
        }),
        Op::Settings { visibility } => Body::Settings(v1::SettingsRequest {
            last_seen: Visibility::try_from(i32::from(visibility % 5)).map_or(7, |v| v as i32),
            group_adds: i32::from(visibility / 5 % 5),
        }),
        Op::Block { user, unblock } => Body::Block(v1::BlockRequest {
            user: name(user),
            unblock,
        }),
        Op::Typing { chat: c } => Body::Typing(v1::TypingRequest { chat_id: chat(c) }),
        Op::Raw(bytes) => return decode_envelope(&bytes, MAX_FRAME).ok().and_then(|e| e.body),
    })
}

async fn reply(session: &Arc<Session>, env: Envelope) -> Envelope {
    match session.handle(env).await {
        Reply::Ready(e) => e,
        Reply::Pending(h) => h.await.expect("request task"),
        Reply::Waiting(answer) => answer.await,
    }
}

async fn run(input: Input) {
    // tmpfs where there is one: fsync is free there, and the fuzzer is
    // after logic bugs, not durability (tests/tests/crash.rs covers that).
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let mut config = Config::for_tests(dir.path());
    config.rate_limit = 1e9;
    config.rate_burst = 1e9;
    config.typing_rate = 1e9;
    let store: Arc<dyn Store> = quip_server::store::open_in(dir.path(), None, 1024).unwrap();
    let media = Arc::new(quip_server::media::MediaStore::open(&config).unwrap());
    let shared = Arc::new(Shared::new(store.clone(), Arc::new(config), media));
    let mut tokens = Vec::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for u in USERS {
        let (token, hash) = accounts::new_token();
        quip_server::store::write(&*store, move |t| {
            accounts::register(t, u, phc(), "fuzz", &hash, now).map(|_| ())
        })
        .await
        .unwrap();
        tokens.push(token);
    }
    let mut sessions = Vec::new();
    let mut queues = Vec::new(); // pushes are not under test; keep the queues open
    for t in &tokens {
        let closer = Closer::new();
        let (tx, rx) = quip_server::hub::push_queue(1 << 16);
        queues.push(rx);
        let s = Session::new(shared.clone(), closer, tx, "127.0.0.1".parse().unwrap());
        let hello = Envelope::new(
            1,
            Body::Hello(v1::Hello {
                versions: vec![1],
                token: t.clone(),
                client: "fuzz".into(),
                background: false,
            }),
        );
        assert!(matches!(s.hello(hello).await, Ok(ref w) if matches!(w.body, Some(Body::Welcome(_)))));
        sessions.push(s);
    }
    for (n, (who, op)) in input.steps.into_iter().take(64).enumerate() {
        let Some(b) = body(op) else { continue };
        let id = n as u64 + 10;
        let s = &sessions[usize::from(who) % sessions.len()];
        let r = reply(s, Envelope::new(id, b)).await;
        assert_eq!(r.id, id, "reply to the wrong request: {r:?}");
        if let Some(Body::Error(e)) = &r.body {
            assert_ne!(e.code, ErrorCode::Unspecified as i32, "{e:?}");
            assert_ne!(e.code, ErrorCode::Internal as i32, "internal error: {e:?}");
        }
    }
    // Invariants over the final state, as each user sees it.
    for s in &sessions {
        let Some(Body::ChatList(list)) = reply(s, Envelope::new(1000, Body::Chats(v1::ChatsRequest::default())))
            .await
            .body
        else {
            panic!("chat list failed")
        };
        for c in list.chats {
            let h = Body::History(v1::HistoryRequest {
                chat_id: c.chat_id,
                limit: 200,
                ..Default::default()
            });
            let Some(Body::HistoryPage(page)) = reply(s, Envelope::new(1001, h)).await.body else {
                panic!("history of a listed chat failed")
            };
            let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] > w[1]), "history order {seqs:?}");
            if c.kind != ChatKind::Direct as i32 {
                assert!(seqs.windows(2).all(|w| w[0] == w[1] + 1), "gap in {seqs:?}");
            }
        }
        let Some(Body::SyncPage(page)) = reply(s, Envelope::new(1002, Body::Sync(v1::SyncRequest { limit: 0 })))
            .await
            .body
        else {
            panic!("sync failed")
        };
        let pos: Vec<u64> = page.events.iter().map(|e| e.pos).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]) && pos.first().is_none_or(|&p| p > page.acked));
    }
    drop(sessions);
    drop(queues);
    store.shutdown().await;
}

fuzz_target!(|input: Input| {
    runtime().block_on(run(input));
});
