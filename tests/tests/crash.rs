//! Crash safety: quipd as a child process under concurrent load, killed with
//! SIGKILL at random moments and restarted on the same data directory; then
//! a checker proves that every acknowledged message survived exactly once,
//! that every chat's sequence is gap-free and the same for every reader,
//! and that receipt cursors never went backwards.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::PASSWORD;
use common::daemon::{Daemon, free_port};
use quip_client::{Client, ConnectOptions};
use quip_protocol::v1::{self, ReceiptKind};
use rand::Rng;

/// Short idle timeout (a killed server is noticed fast) and no rate limits.
const LOAD_ARGS: &[&str] = &[
    "--idle-timeout-secs",
    "1",
    "--rate-limit",
    "100000",
    "--rate-burst",
    "100000",
];

/// Connects, retrying while the server is down or restarting.
async fn connect(opts: &ConnectOptions) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), Client::connect(opts)).await {
            Ok(Ok(c)) => return c,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(25)).await,
            r => panic!("server did not come back: {:?}", r.map(|r| r.err())),
        }
    }
}

fn options(addr: &str, ca: &Path) -> ConnectOptions {
    ConnectOptions::new(addr, Some(ca))
        .unwrap()
        .keep_alive(Duration::from_millis(250))
        .unwrap()
}

/// A send the server acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    chat: u64,
    seq: u64,
    client_msg_id: String,
}

/// Sends message after message into `chat` (or to `to`), retrying each
/// with the same client_msg_id across crashes until acknowledged.
async fn sender(
    opts: ConnectOptions,
    name: String,
    to: Option<String>,
    chat: u64,
    stop: Arc<AtomicBool>,
) -> Vec<Acked> {
    let mut client = connect(&opts).await;
    let mut acked = Vec::new();
    let mut k = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let cmid = format!("{name}-{k}");
        let req = v1::SendRequest {
            to_user: to.clone().unwrap_or_default(),
            chat_id: if to.is_some() { 0 } else { chat },
            client_msg_id: cmid.clone(),
            content: Some(v1::Content {
                text: cmid.clone(),
                ..Default::default()
            }),
        };
        match tokio::time::timeout(Duration::from_secs(2), client.send(req)).await {
            Ok(Ok(r)) => {
                acked.push(Acked {
                    chat: r.chat_id,
                    seq: r.seq,
                    client_msg_id: cmid,
                });
                k += 1;
            }
            // Down, restarting or timed out: reconnect and retry the same id.
            _ => client = connect(&opts).await,
        }
    }
    acked
}

/// Marks a chat read again and again; returns every cursor the server
/// acknowledged, in order.
async fn reader(opts: ConnectOptions, chat: u64, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut client = connect(&opts).await;
    let mut seen = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match tokio::time::timeout(Duration::from_secs(2), client.receipt(chat, ReceiptKind::Read, 0)).await {
            Ok(Ok(seq)) => seen.push(seq),
            _ => client = connect(&opts).await,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

/// A chat's whole history as one reader sees it, oldest first.
async fn full_history(c: &Client, chat: u64) -> Vec<v1::Message> {
    let mut out = Vec::new();
    let mut before = 0;
    loop {
        let page = c.history_of_chat(chat, before, 200).await.unwrap();
        let more = page.more;
        before = page.messages.last().map_or(0, |m| m.seq);
        out.extend(page.messages);
        if !more {
            break;
        }
    }
    out.reverse();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut daemon = Daemon::start(dir.path(), port, LOAD_ARGS);
    let ca = Daemon::ready(dir.path()).await;
    let anon = options(&addr, &ca);

    // Six users; three direct pairs and one group of all six.
    let names: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    let mut tokens = HashMap::new();
    for n in &names {
        let c = connect(&anon).await;
        tokens.insert(n.clone(), c.register(n, PASSWORD, "crash").await.unwrap().token);
        c.close();
    }
    let opts = |n: &str| anon.clone().token(tokens[n].clone());
    let creator = connect(&opts("user0")).await;
    let others: Vec<&str> = names[1..].iter().map(String::as_str).collect();
    let group = creator
        .create_group("crash", &others)
        .await
        .unwrap()
        .info
        .unwrap()
        .chat_id;
    let dm = creator.send_text("user1", "first").await.unwrap().chat_id;
    creator.close();

    let stop = Arc::new(AtomicBool::new(false));
    let senders = vec![
        tokio::spawn(sender(
            opts("user0"),
            "user0".into(),
            Some("user1".into()),
            0,
            stop.clone(),
        )),
        tokio::spawn(sender(
            opts("user1"),
            "user1".into(),
            Some("user0".into()),
            0,
            stop.clone(),
        )),
        tokio::spawn(sender(
            opts("user2"),
            "user2".into(),
            Some("user3".into()),
            0,
            stop.clone(),
        )),
        tokio::spawn(sender(opts("user4"), "user4".into(), None, group, stop.clone())),
        tokio::spawn(sender(opts("user5"), "user5".into(), None, group, stop.clone())),
    ];
    let read_cursor = tokio::spawn(reader(opts("user1"), dm, stop.clone()));

    // Kill it at random moments, restart on the same data directory.
    let mut restarts = 0;
    for _ in 0..4 {
        let wait = rand::rng().random_range(250..700);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        daemon.kill();
        daemon = Daemon::start(dir.path(), port, LOAD_ARGS);
        restarts += 1;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked: Vec<Acked> = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    let cursors = read_cursor.await.unwrap();

    // The checker.
    let mut by_chat: BTreeMap<u64, Vec<Acked>> = BTreeMap::new();
    for a in &acked {
        by_chat.entry(a.chat).or_default().push(a.clone());
    }
    let readers: HashMap<u64, Vec<&str>> = by_chat
        .keys()
        .map(|&chat| {
            let r = if chat == group {
                names.iter().map(String::as_str).collect()
            } else if chat == dm {
                vec!["user0", "user1"]
            } else {
                vec!["user2", "user3"]
            };
            (chat, r)
        })
        .collect();
    let (mut lost, mut duplicated) = (0, 0);
    for (&chat, sent) in &by_chat {
        let mut views = Vec::new();
        for r in &readers[&chat] {
            let c = connect(&opts(r)).await;
            views.push(full_history(&c, chat).await);
            c.close();
        }
        let first = &views[0];
        for v in &views[1..] {
            assert_eq!(v, first, "chat {chat}: every reader sees the same history");
        }
        let seqs: Vec<u64> = first.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "chat {chat}: gap-free"
        );
        let by_seq: HashMap<u64, &v1::Message> = first.iter().map(|m| (m.seq, m)).collect();
        for a in sent {
            match by_seq.get(&a.seq) {
                Some(m) if m.client_msg_id == a.client_msg_id => {}
                _ => lost += 1,
            }
        }
        let mut ids: HashMap<(&str, &str), u32> = HashMap::new();
        for m in first.iter().filter(|m| !m.client_msg_id.is_empty()) {
            *ids.entry((m.sender.as_str(), m.client_msg_id.as_str())).or_default() += 1;
        }
        duplicated += ids.values().filter(|&&n| n > 1).count();
    }
    assert!(
        cursors.windows(2).all(|w| w[0] <= w[1]),
        "read cursor went backwards: {cursors:?}"
    );
    let c = connect(&opts("user1")).await;
    let summary = c.chats().await.unwrap().into_iter().find(|s| s.chat_id == dm).unwrap();
    assert!(summary.my_read_seq >= cursors.last().copied().unwrap_or(0));
    println!(
        "crash safety: acked {}, lost {lost}, duplicated {duplicated}, restarts {restarts}, receipts checked {}",
        acked.len(),
        cursors.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert!(acked.len() > 50, "the load ran: {} acked", acked.len());
}
