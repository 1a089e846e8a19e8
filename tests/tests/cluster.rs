//! Several quipd processes on one real FoundationDB: what a client may rely
//! on when its devices sit on different nodes (spec/protocol.md §21).
#![cfg(feature = "fdb")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::PASSWORD;
use common::daemon::{Daemon, free_port};
use quip_client::{Client, ClientError, ConnectOptions};
use quip_protocol::CloseCode;
use quip_protocol::v1::{self, ErrorCode};
use quip_server::testing::{FdbServer, unique_prefix};

/// quipd nodes sharing one FoundationDB key prefix.
struct Cluster {
    nodes: Vec<Option<Daemon>>,
    ports: Vec<u16>,
    dirs: Vec<PathBuf>,
    prefix: String,
    /// More quipd flags, for every node.
    extra: Vec<String>,
    ca: PathBuf,
    key: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes. The first generates the dev certificate; the others
    /// serve the same one, so a client's TLS session is valid by name on
    /// every node (as behind one DNS name).
    async fn start(n: usize) -> Self {
        Self::start_with(n, &[]).await
    }

    /// Like [`Cluster::start`], with more quipd flags.
    async fn start_with(n: usize, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = unique_prefix("cluster");
        let dirs: Vec<PathBuf> = (0..n).map(|i| tmp.path().join(format!("node{i}"))).collect();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut c = Self {
            nodes: (0..n).map(|_| None).collect(),
            ports,
            ca: dirs[0].join("dev-cert.pem"),
            key: dirs[0].join("dev-key.pem"),
            dirs,
            prefix,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            _tmp: tmp,
        };
        c.nodes[0] = Some(c.spawn(0));
        Daemon::ready(&c.dirs[0]).await;
        for i in 1..n {
            c.nodes[i] = Some(c.spawn(i));
        }
        for i in 0..n {
            c.wait_serving(i).await;
        }
        c
    }

    fn spawn(&self, i: usize) -> Daemon {
        let fdb = FdbServer::shared();
        let cluster_file = fdb.cluster_file().to_str().unwrap().to_owned();
        let mut args = vec![
            "--store".to_owned(),
            "fdb".to_owned(),
            "--fdb-cluster-file".to_owned(),
            cluster_file,
            "--fdb-prefix".to_owned(),
            self.prefix.clone(),
        ];
        if i > 0 {
            args.extend([
                "--cert".to_owned(),
                self.ca.to_str().unwrap().to_owned(),
                "--key".to_owned(),
                self.key.to_str().unwrap().to_owned(),
            ]);
        }
        if !self.extra.iter().any(|a| a == "--media-dir") {
            // The nodes share their media (quipd refuses --store fdb
            // without shared media).
            args.extend([
                "--media-dir".to_owned(),
                self._tmp.path().join("media").to_str().unwrap().to_owned(),
            ]);
        }
        args.extend(self.extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(&self.dirs[i], self.ports[i], &args)
    }

    /// Connect options for node `i` (a fresh TLS session cache).
    fn opts(&self, i: usize) -> ConnectOptions {
        ConnectOptions::new(format!("127.0.0.1:{}", self.ports[i]), Some(&self.ca)).unwrap()
    }

    async fn wait_serving(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&self.opts(i)).await {
                Ok(c) => return c.close(),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("node {i} did not start: {e}"),
            }
        }
    }

    /// Registers `name` through node `i`; the connection stays logged in.
    async fn user(&self, i: usize, name: &str) -> (Client, String) {
        let c = Client::connect(&self.opts(i)).await.unwrap();
        let token = c.register(name, PASSWORD, "phone").await.unwrap().token;
        (c, token)
    }

    /// A new connection to node `i` with `token`.
    async fn device(&self, i: usize, token: &str) -> Client {
        Client::connect(&self.opts(i).token(token)).await.unwrap()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut d) = self.nodes[i].take() {
            d.kill();
        }
    }

    async fn restart(&mut self, i: usize) {
        self.nodes[i] = Some(self.spawn(i));
        self.wait_serving(i).await;
    }

    /// Restarts node `i` (killed first if running) with more flags of its
    /// own.
    async fn restart_with(&mut self, i: usize, flags: &[&str]) {
        self.kill(i);
        let all = std::mem::take(&mut self.extra);
        self.extra = all
            .iter()
            .cloned()
            .chain(flags.iter().map(|f| (*f).to_owned()))
            .collect();
        self.nodes[i] = Some(self.spawn(i));
        self.extra = all;
        self.wait_serving(i).await;
    }

    /// Stops node `i` gracefully (SIGTERM).
    fn terminate(&mut self, i: usize) {
        if let Some(mut d) = self.nodes[i].take() {
            d.terminate();
        }
    }
}

/// quipd refuses to run on FoundationDB with media in its own data
/// directory: an upload to one node would be missing on the others.
#[test]
fn a_node_without_shared_media_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::daemon::quipd())
        .args(["--data-dir", dir.path().to_str().unwrap(), "--store", "fdb"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--media-s3-bucket") && err.contains("--media-dir"),
        "{err}"
    );
}

/// Messages of `chat` in `events` (not group events), as (seq, text).
fn messages_in(events: &[v1::Event], chat: u64) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::event::Kind::Message(m)) if m.chat_id == chat && m.group_event.is_none() => {
                Some((m.seq, m.content.as_ref().map(|c| c.text.clone()).unwrap_or_default()))
            }
            _ => None,
        })
        .collect()
}

/// Collects pushed events until `done` says it has enough, or panics after 10 s.
async fn collect_until(c: &Client, done: impl Fn(&[v1::Event]) -> bool) -> Vec<v1::Event> {
    let mut events = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        while !done(&events) {
            events.push(c.next_event().await.expect("connection open"));
        }
    })
    .await;
    assert!(r.is_ok(), "not all events arrived; got {:?}", events.len());
    events
}

/// Members of one group on three nodes write at once; a member on a third
/// node gets every message live, exactly once, in seq order.
#[tokio::test]
async fn pushes_cross_nodes_once_each_in_commit_order() {
    let cluster = Cluster::start(3).await;
    let (alice, _) = cluster.user(0, "alice").await;
    let (bob, _) = cluster.user(1, "bob").await;
    let (carol, _) = cluster.user(2, "carol").await;
    let chat = alice
        .create_group("trio", &["bob", "carol"])
        .await
        .unwrap()
        .info
        .unwrap()
        .chat_id;
    const EACH: usize = 40;
    let texts = |who: &str| (0..EACH).map(|i| format!("{who}-{i}")).collect::<Vec<_>>();
    let (a_texts, c_texts) = (texts("a"), texts("c"));
    let sends = async {
        let a = futures::future::join_all(a_texts.iter().map(|t| alice.send_text_to_chat(chat, t)));
        let c = futures::future::join_all(c_texts.iter().map(|t| carol.send_text_to_chat(chat, t)));
        let (a, c) = tokio::join!(a, c);
        a.into_iter().chain(c).map(|r| r.unwrap().seq).collect::<Vec<_>>()
    };
    let receive = collect_until(&bob, |e| messages_in(e, chat).len() >= 2 * EACH);
    let (acked, events) = tokio::join!(sends, receive);
    let got = messages_in(&events, chat);
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "pushed out of order or twice: {seqs:?}"
    );
    let acked: BTreeSet<u64> = acked.into_iter().collect();
    assert_eq!(
        seqs.iter().copied().collect::<BTreeSet<_>>(),
        acked,
        "pushed = acknowledged"
    );
    // Dense: the sends took every seq after the group's creation event.
    assert_eq!(acked.len(), 2 * EACH);
    assert_eq!(
        *acked.iter().max().unwrap() - *acked.iter().min().unwrap() + 1,
        2 * EACH as u64
    );
    // Each sender's messages in the order it sent them.
    for who in ["a", "c"] {
        let mine: Vec<usize> = got
            .iter()
            .filter_map(|(_, t)| t.strip_prefix(&format!("{who}-")).map(|n| n.parse().unwrap()))
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "{who}'s order");
    }
}

/// A 50-member group with members on all three nodes: every member gets
/// every message once, in the same order everywhere; delivery receipts from
/// members on every node reach the senders as the group's "delivered to
/// everyone" tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_member_group_spread_over_three_nodes_agrees_on_everything() {
    let cluster = Cluster::start_with(3, &["--registrations-per-ip-burst", "1000"]).await;
    const MEMBERS: usize = 50;
    let mut members = Vec::with_capacity(MEMBERS);
    for i in 0..MEMBERS {
        members.push(cluster.user(i % 3, &format!("member{i:02}")).await.0);
    }
    let names: Vec<String> = (1..MEMBERS).map(|i| format!("member{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let chat = members[0]
        .create_group("fifty", &refs)
        .await
        .unwrap()
        .info
        .unwrap()
        .chat_id;
    // Ten messages from a member on each node, at once.
    const EACH: usize = 10;
    let senders = [0usize, 1, 2];
    let texts: Vec<Vec<String>> = senders
        .iter()
        .map(|s| (0..EACH).map(|i| format!("from{s}-{i}")).collect())
        .collect();
    let sends = futures::future::join_all(senders.iter().zip(&texts).map(|(&s, t)| {
        let c = &members[s];
        async move {
            let mut last = 0;
            for text in t {
                last = c.send_text_to_chat(chat, text).await.unwrap().seq;
            }
            last
        }
    }));
    let total = senders.len() * EACH;
    // A sender's own device is not pushed its own messages (it has the
    // acknowledgement): senders expect the others'.
    let receivers = futures::future::join_all(members.iter().enumerate().map(|(i, c)| {
        let expected = if senders.contains(&i) { total - EACH } else { total };
        collect_until(c, move |e| messages_in(e, chat).len() >= expected)
    }));
    let (lasts, received) = tokio::join!(sends, receivers);
    let order: Vec<(u64, String)> = messages_in(&received[MEMBERS - 1], chat);
    assert_eq!(order.len(), total);
    assert!(
        order.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "dense and in order: {order:?}"
    );
    for (i, events) in received.iter().enumerate() {
        let mine = format!("from{i}-");
        let expected: Vec<&(u64, String)> = order.iter().filter(|(_, t)| !t.starts_with(&mine)).collect();
        let got = messages_in(events, chat);
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            expected,
            "member {i} (node {}) saw another order",
            i % 3
        );
    }
    // Everyone confirms delivery of the last message; the receipts of all
    // three nodes' members add up to "delivered to everyone" for the sender
    // on node 0.
    let last = *lasts.iter().max().unwrap();
    futures::future::join_all(
        members
            .iter()
            .map(|c| async move { c.receipt(chat, v1::ReceiptKind::Delivered, last).await.unwrap() }),
    )
    .await;
    let ticks = collect_until(&members[0], |e| {
        e.iter().any(|e| {
            matches!(&e.kind, Some(v1::event::Kind::Receipt(r))
                if r.everyone && r.kind == v1::ReceiptKind::Delivered as i32 && r.seq >= lasts[0])
        })
    })
    .await;
    assert!(!ticks.is_empty());
}

/// An acknowledged write is visible at once from every node: a send, then
/// a read receipt and an ack, each read back through another node.
#[tokio::test]
async fn an_acknowledged_write_is_read_back_on_every_node() {
    let cluster = Cluster::start(3).await;
    let (alice, _) = cluster.user(0, "alice").await;
    let (bob, bob_token) = cluster.user(1, "bob").await;
    for i in 0..20 {
        let sent = alice.send_text("bob", &format!("m{i}")).await.unwrap();
        let elsewhere = cluster.device(2, &bob_token).await;
        let page = elsewhere.history("alice", 0, 1).await.unwrap();
        assert_eq!(page.messages[0].seq, sent.seq, "send {i} not visible on node 2");
        elsewhere.close();
    }
    let chat = alice.send_text("bob", "last").await.unwrap();
    let pos = bob
        .receipt(chat.chat_id, v1::ReceiptKind::Read, chat.seq)
        .await
        .unwrap();
    assert!(pos > 0);
    let acked = bob.ack(pos).await.unwrap();
    let on_node0 = cluster.device(0, &bob_token).await;
    let rest = on_node0.sync(100).await.unwrap();
    assert!(
        rest.events.iter().all(|e| e.pos > acked),
        "sync on node 0 starts after the ack on node 1"
    );
    let chats = alice.chats().await.unwrap();
    let bob_chat = chats.iter().find(|c| c.chat_id == chat.chat_id).unwrap();
    assert_eq!(
        bob_chat.peer_read_seq, chat.seq,
        "the receipt made on node 1, read on node 0"
    );
}

/// A logout on one node closes the device's connections on the others at
/// once, and its token stops opening connections anywhere within 1 s.
#[tokio::test]
async fn a_revoked_token_stops_working_on_every_node() {
    // One device on three nodes: within its connection limit.
    let cluster = Cluster::start_with(3, &["--max-connections-per-device", "3"]).await;
    let (alice, token) = cluster.user(0, "alice").await;
    let on_node1 = cluster.device(1, &token).await;
    assert_eq!(cluster.device(2, &token).await.whoami().await.unwrap().user, "alice");
    let started = Instant::now();
    alice.logout().await.unwrap();
    let (code, _) = tokio::time::timeout(Duration::from_secs(2), on_node1.closed())
        .await
        .expect("the connection on node 1 was not closed");
    assert_eq!(code, Some(CloseCode::LoggedOut));
    let closed_after = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1_100).saturating_sub(started.elapsed())).await;
    for i in 0..3 {
        let r = Client::connect(&cluster.opts(i).token(&token)).await;
        let Err(e) = r else {
            panic!("a revoked token connected to node {i}")
        };
        assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "node {i}: {e}");
    }
    eprintln!("revocation closed node 1's connection after {closed_after:?}");
}

/// What else crosses nodes: two users on two nodes writing to each other
/// for the first time at once get one direct chat; a typing indicator and a
/// channel post reach a device on another node.
#[tokio::test]
async fn direct_chats_typing_and_channel_posts_cross_nodes() {
    let cluster = Cluster::start(2).await;
    let (alice, _) = cluster.user(0, "alice").await;
    let (bob, _) = cluster.user(1, "bob").await;
    let (a, b) = tokio::join!(alice.send_text("bob", "hi bob"), bob.send_text("alice", "hi alice"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.chat_id, b.chat_id, "two nodes racing made two direct chats");
    assert_eq!(a.seq.max(b.seq), 2);

    alice.typing(a.chat_id).await.unwrap();
    let events = collect_until(&bob, |e| {
        e.iter()
            .any(|e| matches!(&e.kind, Some(v1::event::Kind::Typing(t)) if t.user == "alice"))
    })
    .await;
    assert!(!events.is_empty());

    let channel = alice.create_channel("news").await.unwrap().info.unwrap().chat_id;
    bob.subscribe(channel, false).await.unwrap();
    let post = alice.send_text_to_chat(channel, "extra, extra").await.unwrap();
    collect_until(&bob, |e| {
        e.iter().any(|e| {
            matches!(&e.kind, Some(v1::event::Kind::Advanced(adv)) if adv.chat_id == channel && adv.seq == post.seq)
        })
    })
    .await;
}

/// Failed logins spread over three nodes share one budget: with 3 allowed
/// per account, the fourth attempt is refused on whichever node it lands,
/// even with the right password (per node it would take nine).
#[tokio::test]
async fn failed_logins_are_throttled_across_the_cluster() {
    let cluster = Cluster::start_with(3, &["--login-failures-per-account", "3"]).await;
    cluster.user(0, "alice").await;
    for i in 0..3 {
        let c = Client::connect(&cluster.opts(i)).await.unwrap();
        let e = c.login("alice", "wrong guess here", "x").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "attempt {i}: {e}");
    }
    for i in 0..3 {
        let c = Client::connect(&cluster.opts(i)).await.unwrap();
        let e = c.login("alice", PASSWORD, "x").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::RateLimited), "node {i}: {e}");
    }
}

/// The per-device and per-user connection limits count every node's
/// connections: a newer connection of a device replaces its oldest on
/// another node (close 7), a user at the limit is refused on every node
/// (close 8), and a closed connection frees its slot on every node.
#[tokio::test]
async fn connection_limits_hold_across_the_cluster() {
    let cluster = Cluster::start_with(
        3,
        &["--max-connections-per-user", "3", "--max-connections-per-device", "1"],
    )
    .await;
    let (first, token) = cluster.user(0, "alice").await;
    let again = cluster.device(1, &token).await;
    let (closed, _) = tokio::time::timeout(Duration::from_secs(5), first.closed())
        .await
        .expect("the older connection of the device, on node 0, is replaced");
    assert_eq!(closed, Some(CloseCode::Replaced));
    assert_eq!(again.whoami().await.unwrap().user, "alice");

    let login = |i: usize, device: &'static str| {
        let opts = cluster.opts(i);
        async move {
            let c = Client::connect(&opts).await.unwrap();
            let r = c.login("alice", PASSWORD, device).await.map(|_| ());
            (c, r)
        }
    };
    let (laptop, r) = login(2, "laptop").await;
    r.unwrap();
    let (tablet, r) = login(0, "tablet").await;
    r.unwrap();
    // Three connections, one per node: a fourth is refused on any node.
    for i in 0..3 {
        let (c, r) = login(i, "watch").await;
        assert_eq!(r.unwrap_err().code(), Some(ErrorCode::LimitExceeded), "node {i}");
        let (closed, _) = tokio::time::timeout(Duration::from_secs(5), c.closed()).await.unwrap();
        assert_eq!(closed, Some(CloseCode::TooManyConnections), "node {i}");
    }
    // The user's connections are untouched.
    for c in [&again, &laptop, &tablet] {
        assert_eq!(c.whoami().await.unwrap().user, "alice");
    }
    // Closing one on node 0 frees a slot on node 1 (once node 0 has
    // recorded the close: a few milliseconds).
    tablet.close();
    let deadline = Instant::now() + Duration::from_secs(5);
    let watch = loop {
        match login(1, "watch").await {
            (c, Ok(())) => break c,
            (_, Err(e)) if Instant::now() < deadline && e.code() == Some(ErrorCode::LimitExceeded) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (_, Err(e)) => panic!("the freed slot was not given: {e}"),
        }
    };
    assert_eq!(watch.whoami().await.unwrap().user, "alice");
}

/// A file that yields `left` bytes, then stalls forever (`stall`) or fails.
struct Cut {
    inner: std::io::Cursor<Vec<u8>>,
    left: usize,
    stall: bool,
}

impl tokio::io::AsyncRead for Cut {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            return if self.stall {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(Err(std::io::Error::other("the file went away")))
            };
        }
        let want = buf.remaining().min(self.left);
        let mut limited = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(want));
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        buf.advance(n);
        self.left -= n;
        r
    }
}

impl tokio::io::AsyncSeek for Cut {
    fn start_seek(mut self: std::pin::Pin<&mut Self>, pos: std::io::SeekFrom) -> std::io::Result<()> {
        std::pin::Pin::new(&mut self.inner).start_seek(pos)
    }
    fn poll_complete(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<u64>> {
        std::pin::Pin::new(&mut self.inner).poll_complete(cx)
    }
}

/// An upload interrupted on one node is resumed on another (the nodes
/// share the media directory, as they would one S3 bucket), and only one
/// stream receives an upload at a time, whichever nodes the streams are on.
#[tokio::test]
async fn an_upload_resumed_on_another_node_continues_one_stream_at_a_time() {
    use quip_client::{Progress, UploadSpec};
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    const MIB: usize = 1 << 20;
    let media = tempfile::tempdir().unwrap();
    let cluster = Cluster::start_with(2, &["--media-dir", media.path().to_str().unwrap()]).await;
    let (alice, token) = cluster.user(0, "alice").await;
    let mut bytes = vec![0u8; 3 * MIB + 777];
    rand::rng().fill_bytes(&mut bytes);
    let mut spec = UploadSpec {
        size: bytes.len() as u64,
        sha256: Sha256::digest(&bytes).into(),
        content_type: "application/octet-stream".into(),
        file_name: "f".into(),
        resume: None,
    };
    let file = |left: usize, stall: bool| Cut {
        inner: std::io::Cursor::new(bytes.clone()),
        left,
        stall,
    };

    // On node 0, 1.5 MiB go out and the sender stalls, its stream open.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut first = file(3 * MIB / 2, true);
    let first_spec = spec.clone();
    let stalled = tokio::spawn(async move {
        let mut started_tx = Some(started_tx);
        let _ = alice
            .upload(&first_spec, &mut first, |p| {
                if let Progress::Started { upload_id, .. } = p
                    && let Some(tx) = started_tx.take()
                {
                    let _ = tx.send(upload_id);
                }
            })
            .await;
    });
    let upload_id = started_rx.await.unwrap();
    spec.resume = Some(upload_id.clone());

    // Node 1 sees the first MiB stored (the offset a resume starts from).
    let phone = cluster.device(1, &token).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut offset = None;
        let _ = phone
            .upload(&spec, &mut file(0, false), |p| {
                if let Progress::Started { offset: o, .. } = p {
                    offset = Some(o);
                }
            })
            .await;
        if offset == Some(MIB as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 never saw the first chunk: {offset:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While node 0's stream is open, node 1 does not receive the upload.
    let e = phone
        .upload(&spec, &mut file(bytes.len(), false), |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("another stream"), "{e}");

    // Node 0's stream ends (the phone gave up): node 1 resumes from 1 MiB.
    stalled.abort();
    let _ = stalled.await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let mut from = None;
        match phone
            .upload(&spec, &mut file(bytes.len(), false), |p| {
                if let Progress::Started { offset, .. } = p {
                    from = Some(offset);
                }
            })
            .await
        {
            Ok(done) => {
                assert_eq!(from, Some(MIB as u64), "resumed where node 0 left off");
                break done;
            }
            Err(e) if Instant::now() < deadline && e.to_string().contains("another stream") => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("resuming on node 1: {e}"),
        }
    };
    let media = done.media.unwrap();
    assert_eq!(media.media_id, upload_id);
    // Node 0 serves the bytes that went through both nodes.
    let reader = cluster.device(0, &token).await;
    let mut out = Vec::new();
    reader.download(&media.media_id, 0, 0, &mut out, |_| {}).await.unwrap();
    assert!(out == bytes, "the downloaded bytes differ");
}

/// A node killed right after it acknowledged a write does not take the
/// write's push with it: the push was committed with the write into the
/// recipient's node's inbox, and that node delivers it.
#[tokio::test]
async fn a_push_outlives_the_node_that_committed_it() {
    let mut cluster = Cluster::start(2).await;
    let (bob, _) = cluster.user(1, "bob").await;
    for i in 0..3 {
        let (alice, _) = match i {
            0 => cluster.user(0, "alice").await,
            _ => {
                cluster.restart(0).await;
                let c = Client::connect(&cluster.opts(0)).await.unwrap();
                c.login("alice", PASSWORD, "phone").await.unwrap();
                (c, String::new())
            }
        };
        let text = format!("last words {i}");
        let sent = alice.send_text("bob", &text).await.unwrap();
        cluster.kill(0); // at once after the acknowledgement
        let events = collect_until(&bob, |e| {
            e.iter()
                .any(|e| matches!(&e.kind, Some(v1::event::Kind::Message(m)) if m.seq == sent.seq))
        })
        .await;
        let got = messages_in(&events, sent.chat_id);
        assert_eq!(got.last(), Some(&(sent.seq, text)));
    }
}

/// A TLS session ticket from one node is refused by another without an
/// error: the handshake completes as a full one and the client says Hello
/// again; the next reconnect to that node resumes in 0-RTT.
#[tokio::test]
async fn a_ticket_from_another_node_falls_back_to_a_full_handshake() {
    let cluster = Cluster::start(2).await;
    let (_alice, token) = cluster.user(0, "alice").await;
    let mut opts = cluster.opts(0).token(&token);
    let first = Client::connect(&opts).await.unwrap();
    first.whoami().await.unwrap();
    first.close();
    opts.server = format!("127.0.0.1:{}", cluster.ports[1]);
    let other = Client::connect(&opts).await.unwrap();
    assert!(!other.used_0rtt(), "node 1 cannot know node 0's ticket");
    assert_eq!(other.whoami().await.unwrap().user, "alice");
    other.close();
    let again = Client::connect(&opts).await.unwrap();
    assert!(again.used_0rtt(), "node 1's own ticket resumes in 0-RTT");
    assert_eq!(again.whoami().await.unwrap().user, "alice");
}

/// A user who reconnects to another node within the grace period is never
/// seen offline (the node that lost her stays silent, as the directory lists
/// her elsewhere); gone for good, she is announced offline once.
#[tokio::test]
async fn a_reconnect_to_another_node_within_the_grace_period_is_never_seen_offline() {
    let cluster = Cluster::start_with(2, &["--presence-grace-secs", "1"]).await;
    let (bob, _) = cluster.user(0, "bob").await;
    let (alice, token) = cluster.user(0, "alice").await;
    let chat = alice.send_text("bob", "hi").await.unwrap().chat_id;
    collect_until(&bob, |e| !messages_in(e, chat).is_empty()).await;
    // Alice's phone loses node 0 without a goodbye and comes back on node 1.
    alice
        .connection()
        .close(CloseCode::ServerShutdown.code().into(), b"network gone");
    let alice = cluster.device(1, &token).await;
    let offline = |within: Duration| {
        let bob = &bob;
        async move {
            tokio::time::timeout(within, async {
                loop {
                    let e = bob.next_event().await.expect("open");
                    if let Some(v1::event::Kind::Presence(p)) = e.kind
                        && p.user == "alice"
                        && !p.online
                    {
                        return p;
                    }
                }
            })
            .await
        }
    };
    // Three grace periods: node 0 would have announced her offline by now.
    let r = offline(Duration::from_secs(3)).await;
    assert!(r.is_err(), "alice was seen offline: {:?}", r.unwrap());
    let seen = bob.presence(&["alice"]).await.unwrap();
    assert!(seen[0].online, "online on node 1, asked on node 0");
    // Gone for good: node 1 announces it after the grace period.
    alice
        .connection()
        .close(CloseCode::ServerShutdown.code().into(), b"network gone");
    let p = offline(Duration::from_secs(5)).await.expect("offline announced");
    assert!(p.last_seen_ms > 0);
}

/// Senders on three nodes write into one group while nodes are killed with
/// SIGKILL and restarted: every acknowledged message is stored exactly once,
/// the group's seqs are dense, and each sender's messages keep its order.
/// (A sender whose node dies resends the same client_msg_id through
/// another node until it is acknowledged.)
#[tokio::test]
async fn node_kills_lose_and_duplicate_nothing() {
    let mut cluster = Cluster::start(3).await;
    let names = ["snd0", "snd1", "snd2", "snd3", "snd4", "snd5"];
    let mut tokens = Vec::new();
    for (i, n) in names.iter().enumerate() {
        tokens.push(cluster.user(i % 3, n).await.1);
    }
    let (owner, _) = cluster.user(0, "owner").await;
    let chat = owner.create_group("hot", &names).await.unwrap().info.unwrap().chat_id;
    owner.close();

    const EACH: usize = 150;
    let ports = cluster.ports.clone();
    let ca = cluster.ca.clone();
    let retries = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for (s, token) in tokens.iter().enumerate() {
        let (token, ports, ca, retries) = (token.clone(), ports.clone(), ca.clone(), retries.clone());
        senders.push(tokio::spawn(async move {
            let mut node = s % 3;
            let mut client: Option<Client> = None;
            let mut acked = Vec::new();
            for i in 0..EACH {
                let req = v1::SendRequest {
                    chat_id: chat,
                    client_msg_id: format!("s{s}-{i}"),
                    content: Some(v1::Content {
                        text: format!("s{s}-{i}"),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    assert!(Instant::now() < deadline, "s{s}-{i} never acknowledged");
                    if client.is_none() {
                        let opts = ConnectOptions::new(format!("127.0.0.1:{}", ports[node]), Some(&ca))
                            .unwrap()
                            .token(&token);
                        match tokio::time::timeout(Duration::from_secs(3), Client::connect(&opts)).await {
                            Ok(Ok(c)) => client = Some(c),
                            _ => {
                                node = (node + 1) % 3;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    let c = client.as_ref().unwrap();
                    match tokio::time::timeout(Duration::from_secs(5), c.send(req.clone())).await {
                        Ok(Ok(r)) => {
                            acked.push((i, r.seq));
                            break;
                        }
                        Ok(Err(ClientError::Server { code, message, .. })) if code != ErrorCode::Unavailable => {
                            panic!("s{s}-{i} refused: {code:?}: {message}")
                        }
                        _ => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            client = None;
                            node = (node + 1) % 3;
                        }
                    }
                }
            }
            acked
        }));
    }
    // Kill a node every 500 ms (round robin), restarting the previous one.
    let mut kills = 0;
    let mut down: Option<usize> = None;
    while !senders.iter().all(|h| h.is_finished()) && kills < 9 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(d) = down.take() {
            cluster.restart(d).await;
        }
        let victim = kills % 3;
        cluster.kill(victim);
        down = Some(victim);
        kills += 1;
    }
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    for (s, h) in senders.into_iter().enumerate() {
        for (i, seq) in h.await.unwrap() {
            acked.insert(format!("s{s}-{i}"), seq);
        }
    }
    if let Some(d) = down {
        cluster.restart(d).await;
    }
    assert_eq!(acked.len(), names.len() * EACH);
    assert!(
        kills >= 3,
        "the senders finished before the nodes were killed ({kills} kills)"
    );

    // Read the whole group back through one node.
    let reader = cluster.device(1, &tokens[0]).await;
    let mut stored: Vec<(u64, String)> = Vec::new();
    let mut after = 0;
    loop {
        let page = reader.history_after(chat, after, 200).await.unwrap();
        let Some(last) = page.messages.last().map(|m| m.seq) else {
            break;
        };
        for m in &page.messages {
            if let Some(c) = &m.content {
                stored.push((m.seq, c.text.clone()));
            }
        }
        after = last;
    }
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, t) in &stored {
        *count.entry(t.as_str()).or_default() += 1;
    }
    for (text, seq) in &acked {
        assert_eq!(
            count.get(text.as_str()),
            Some(&1),
            "{text} (acked at seq {seq}) stored {:?} times",
            count.get(text.as_str())
        );
        assert!(
            stored.contains(&(*seq, text.clone())),
            "{text} not at its acknowledged seq {seq}"
        );
    }
    assert_eq!(stored.len(), acked.len(), "nothing stored that was never sent");
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seqs not dense");
    for s in 0..names.len() {
        let order: Vec<u64> = (0..EACH).map(|i| acked[&format!("s{s}-{i}")]).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "s{s}'s messages out of order");
    }
    // Every sender's log, read from scratch by a new device (on another
    // node than most of its sends): dense positions 1..=head, each of the
    // group's messages exactly once, in seq order.
    for (s, name) in names.iter().enumerate() {
        let fresh = Client::connect(&cluster.opts((s + 1) % 3)).await.unwrap();
        fresh.login(name, PASSWORD, "audit").await.unwrap();
        let mut tracker = quip_client::AckTracker::default();
        let events = fresh.sync_all(&mut tracker).await.unwrap();
        let positions: Vec<u64> = events.iter().map(|e| e.pos).collect();
        assert_eq!(
            positions,
            (1..=positions.len() as u64).collect::<Vec<_>>(),
            "{name}'s log positions are not dense"
        );
        let seqs: Vec<u64> = messages_in(&events, chat).iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, stored.iter().map(|(s, _)| *s).collect::<Vec<_>>(), "{name}'s log");
    }
    eprintln!(
        "{} messages acknowledged across {kills} node kills; {} sends retried",
        acked.len(),
        retries.load(Ordering::Relaxed)
    );
}

/// §21.9: nodes may run different settings (a rolling upgrade); a client
/// takes `push_lanes` and `max_body` from each `Welcome`, and each node
/// holds requests to the limit it announced.
#[tokio::test]
async fn per_node_settings_are_taken_from_each_welcome() {
    let mut cluster = Cluster::start(2).await;
    cluster
        .restart_with(1, &["--push-lanes", "2", "--max-body", "4096"])
        .await;
    let (alice, token) = cluster.user(0, "alice").await;
    cluster.user(1, "bob").await;
    let on_node1 = cluster.device(1, &token).await;
    let (w0, w1) = (alice.welcome().clone(), on_node1.welcome().clone());
    assert_eq!(
        (w1.push_lanes, w1.max_body),
        (2, 4096),
        "node 1 announces its own settings"
    );
    assert_ne!((w0.push_lanes, w0.max_body), (w1.push_lanes, w1.max_body));
    let text = "x".repeat(6000);
    alice.send_text("bob", &text).await.expect("node 0 takes 6,000 bytes");
    let e = on_node1.send_text("bob", &text).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BodyTooLarge), "node 1 holds its 4,096: {e}");
}

/// §21.10: a node that stops closes its connections with code 3; a client
/// moves to another address and syncs, missing nothing sent meanwhile.
#[tokio::test]
async fn close_code_3_sends_a_client_to_another_node() {
    let mut cluster = Cluster::start(2).await;
    let (alice, token) = cluster.user(0, "alice").await;
    let (bob, _) = cluster.user(1, "bob").await;
    let first = bob.send_text("alice", "before").await.unwrap();
    collect_until(&alice, |e| !messages_in(e, first.chat_id).is_empty()).await;
    let mut tracker = quip_client::AckTracker::default();
    alice.sync_all(&mut tracker).await.unwrap();
    cluster.terminate(0);
    let (code, _) = tokio::time::timeout(Duration::from_secs(10), alice.closed())
        .await
        .expect("node 0 closed its connections as it stopped");
    assert_eq!(code, Some(CloseCode::ServerShutdown));
    bob.send_text("alice", "while away").await.unwrap();
    // The next address.
    let again = cluster.device(1, &token).await;
    let events = again.sync_all(&mut tracker).await.unwrap();
    assert_eq!(
        messages_in(&events, first.chat_id),
        vec![(first.seq + 1, "while away".to_owned())],
        "exactly what was missed"
    );
}

/// What one chaos sender did.
#[derive(Default)]
struct ChaosLog {
    /// client_msg_id (also the text) → (chat, seq), as acknowledged.
    acked: BTreeMap<String, (u64, u64)>,
    /// Sends tried again (same client_msg_id) after a failure.
    resent: usize,
    /// Connections opened after the first.
    reconnects: usize,
}

/// Messages pushed live to one user: per connection, (chat, seq, text) in
/// arrival order.
type LiveLog = Arc<std::sync::Mutex<Vec<Vec<(u64, u64, String)>>>>;

/// Drains a connection's pushes into `live` (a new list per connection),
/// so that the connection never counts as a slow consumer.
fn record_live(client: Arc<Client>, live: LiveLog) {
    let slot = {
        let mut l = live.lock().unwrap();
        l.push(Vec::new());
        l.len() - 1
    };
    tokio::spawn(async move {
        while let Some(e) = client.next_event().await {
            if let Some(v1::event::Kind::Message(m)) = e.kind
                && let Some(c) = m.content
            {
                live.lock().unwrap()[slot].push((m.chat_id, m.seq, c.text));
            }
        }
    });
}

/// Issue 23's chaos test: 20 users spread over three nodes send direct and
/// group messages for a minute (`QUIP_CHAOS_SECS` to change it) while the
/// nodes are SIGKILLed and restarted in turn; a client whose node died or
/// did not answer within 3 s reconnects to the next node and resends its
/// unacknowledged message with the same client_msg_id. Then: every chat's
/// history holds each acknowledged message exactly once at its
/// acknowledged seq and nothing else, seqs dense from 1; every user's log,
/// synced from scratch by a new device, has dense positions and each of
/// their chats' messages once, in seq order; every message pushed live
/// came in seq order per chat and is the one history has at that seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_twenty_users_on_three_nodes_through_a_minute_of_node_kills() {
    const USERS: usize = 20;
    let secs: u64 = std::env::var("QUIP_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // Twenty registrations from one address: past its default burst.
    let mut cluster = Cluster::start_with(3, &["--registrations-per-ip-burst", "100"]).await;
    let names: Vec<String> = (0..USERS).map(|i| format!("u{i:02}")).collect();
    let mut tokens = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let (c, token) = cluster.user(i % 3, n).await;
        c.close();
        tokens.push(token);
    }
    // Two groups of 11 (u00 is in both).
    let owner = cluster.device(0, &tokens[0]).await;
    let first: Vec<&str> = names[1..=10].iter().map(String::as_str).collect();
    let group_a = owner.create_group("a", &first).await.unwrap().info.unwrap().chat_id;
    let owner_b = cluster.device(1, &tokens[10]).await;
    let mut second: Vec<&str> = names[11..].iter().map(String::as_str).collect();
    second.push(&names[0]);
    let group_b = owner_b.create_group("b", &second).await.unwrap().info.unwrap().chat_id;
    owner.close();
    owner_b.close();

    let ports = cluster.ports.clone();
    let ca = cluster.ca.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // When each user last had a send acknowledged: for recovery times.
    let last_ack = Arc::new(std::sync::Mutex::new(vec![Instant::now(); USERS]));
    let lives: Vec<LiveLog> = (0..USERS).map(|_| LiveLog::default()).collect();
    let mut senders = Vec::new();
    for u in 0..USERS {
        let (token, ports, ca, stop, last_ack, live) = (
            tokens[u].clone(),
            ports.clone(),
            ca.clone(),
            stop.clone(),
            last_ack.clone(),
            lives[u].clone(),
        );
        let names = names.clone();
        senders.push(tokio::spawn(async move {
            let mut log = ChaosLog::default();
            let mut node = u % 3;
            let mut client: Option<Arc<Client>> = None;
            let group = if u < 11 { group_a } else { group_b };
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("u{u:02}-{n}");
                let mut req = v1::SendRequest {
                    client_msg_id: id.clone(),
                    content: Some(v1::Content {
                        text: id.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                match n % 3 {
                    0 => req.to_user = names[(u + 1) % USERS].clone(),
                    1 => req.to_user = names[(u + 7) % USERS].clone(),
                    _ => req.chat_id = group,
                }
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut tries = 0;
                loop {
                    assert!(Instant::now() < deadline, "{id} never acknowledged");
                    if client.is_none() {
                        let opts = ConnectOptions::new(format!("127.0.0.1:{}", ports[node]), Some(&ca))
                            .unwrap()
                            .token(&token);
                        match tokio::time::timeout(Duration::from_secs(3), Client::connect(&opts)).await {
                            Ok(Ok(c)) => {
                                let c = Arc::new(c);
                                record_live(c.clone(), live.clone());
                                if log.acked.len() + tries > 0 {
                                    log.reconnects += 1;
                                }
                                client = Some(c);
                            }
                            _ => {
                                node = (node + 1) % 3;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    let c = client.as_ref().unwrap();
                    if tries > 0 {
                        log.resent += 1;
                    }
                    tries += 1;
                    match tokio::time::timeout(Duration::from_secs(3), c.send(req.clone())).await {
                        Ok(Ok(r)) => {
                            log.acked.insert(id.clone(), (r.chat_id, r.seq));
                            last_ack.lock().unwrap()[u] = Instant::now();
                            break;
                        }
                        Ok(Err(ClientError::Server { code, message, .. }))
                            if !matches!(code, ErrorCode::Unavailable | ErrorCode::RateLimited) =>
                        {
                            panic!("{id} refused: {code:?}: {message}")
                        }
                        _ => {
                            if let Some(c) = client.take() {
                                c.close();
                            }
                            node = (node + 1) % 3;
                        }
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Some(c) = client.take() {
                c.close();
            }
            log
        }));
    }

    // Kill a node every 8 s (in turn), restart it 3 s later; measure how
    // long until every user has had a send acknowledged after the kill.
    let started = Instant::now();
    let mut recoveries = Vec::new();
    let mut victim = 0;
    tokio::time::sleep(Duration::from_secs(4)).await;
    while started.elapsed() + Duration::from_secs(8) < Duration::from_secs(secs) {
        let killed_at = Instant::now();
        cluster.kill(victim);
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.restart(victim).await;
        let deadline = killed_at + Duration::from_secs(30);
        loop {
            let acks = last_ack.lock().unwrap().clone();
            if acks.iter().all(|&t| t > killed_at) {
                let last = acks.into_iter().max().unwrap();
                recoveries.push(last - killed_at);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not every user sent again within 30 s of kill {}",
                recoveries.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        victim = (victim + 1) % 3;
        tokio::time::sleep(Duration::from_secs(8).saturating_sub(killed_at.elapsed())).await;
    }
    tokio::time::sleep(Duration::from_secs(secs).saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut resent, mut reconnects) = (0, 0);
    for h in senders {
        let log = h.await.unwrap();
        resent += log.resent;
        reconnects += log.reconnects;
        acked.extend(log.acked);
    }
    assert!(recoveries.len() >= 3 || secs < 60, "only {} kills", recoveries.len());

    // Every chat's history, read through node 2: each acknowledged message
    // once at its seq, nothing else, seqs (group events included) dense.
    let mut by_chat: BTreeMap<u64, BTreeMap<u64, String>> = BTreeMap::new();
    for (text, &(chat, seq)) in &acked {
        assert!(
            by_chat.entry(chat).or_default().insert(seq, text.clone()).is_none(),
            "two messages acked at {chat}/{seq}"
        );
    }
    let mut history: BTreeMap<u64, BTreeMap<u64, String>> = BTreeMap::new();
    for (&chat, msgs) in &by_chat {
        // A participant: the sender of any of its messages.
        let sender: usize = msgs.values().next().unwrap()[1..3].parse().unwrap();
        let reader = cluster.device(2, &tokens[sender]).await;
        let (mut after, mut seqs, mut texts) = (0, Vec::new(), BTreeMap::new());
        loop {
            let page = reader.history_after(chat, after, 200).await.unwrap();
            let Some(last) = page.messages.last().map(|m| m.seq) else {
                break;
            };
            for m in &page.messages {
                seqs.push(m.seq);
                if let Some(c) = &m.content {
                    texts.insert(m.seq, c.text.clone());
                }
            }
            after = last;
        }
        reader.close();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "chat {chat}: seqs not dense from 1"
        );
        assert_eq!(&texts, msgs, "chat {chat}: history differs from what was acknowledged");
        history.insert(chat, texts);
    }
    // Every user's log from scratch, on a new device.
    for (u, name) in names.iter().enumerate() {
        let fresh = Client::connect(&cluster.opts((u + 1) % 3)).await.unwrap();
        fresh.login(name, PASSWORD, "audit").await.unwrap();
        let mut tracker = quip_client::AckTracker::default();
        let events = fresh.sync_all(&mut tracker).await.unwrap();
        fresh.close();
        let positions: Vec<u64> = events.iter().map(|e| e.pos).collect();
        assert_eq!(
            positions,
            (1..=positions.len() as u64).collect::<Vec<_>>(),
            "{name}'s positions"
        );
        let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for e in &events {
            if let Some(v1::event::Kind::Message(m)) = &e.kind
                && let Some(c) = &m.content
            {
                assert_eq!(
                    history[&m.chat_id].get(&m.seq),
                    Some(&c.text),
                    "{name}'s log at {}/{}",
                    m.chat_id,
                    m.seq
                );
                seen.entry(m.chat_id).or_default().push(m.seq);
            }
        }
        for (chat, seqs) in seen {
            let all: Vec<u64> = history[&chat].keys().copied().collect();
            assert_eq!(seqs, all, "{name}'s log of chat {chat}: each message once, in order");
        }
        // Live pushes: in seq order per chat on each connection, and what
        // history holds.
        for conn in lives[u].lock().unwrap().iter() {
            let mut last: BTreeMap<u64, u64> = BTreeMap::new();
            for (chat, seq, text) in conn {
                assert_eq!(
                    history[chat].get(seq),
                    Some(text),
                    "{name} was pushed {chat}/{seq} = {text}"
                );
                let prev = last.insert(*chat, *seq).unwrap_or(0);
                assert!(*seq > prev, "{name} was pushed {chat}/{seq} after {chat}/{prev}");
            }
        }
    }
    let pushed: usize = lives
        .iter()
        .map(|l| l.lock().unwrap().iter().map(Vec::len).sum::<usize>())
        .sum();
    eprintln!(
        "chaos: {} messages acknowledged in {secs} s ({} chats), {resent} resent, {reconnects} reconnects, {pushed} live pushes; {} kills, time until every user sent again after each: {:?}",
        acked.len(),
        by_chat.len(),
        recoveries.len(),
        recoveries
    );
}
