//! quipd on FoundationDB (`--store fdb`): in process, and as two `quipd`
//! processes sharing one cluster. A throw-away `fdbserver` per test binary
//! (quip_server::testing); each test has key prefixes of its own. Built
//! only with this crate's `fdb` feature (scripts/test.sh turns it on).
#![cfg(feature = "fdb")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, free_port, quipd};
use common::*;
use quip_client::{Client, ConnectOptions};
use quip_protocol::v1;
use quip_server::Config;
use quip_server::store::StoreKind;
use quip_server::testing::{FdbServer, unique_prefix};

fn cluster_file() -> PathBuf {
    FdbServer::shared().cluster_file().to_path_buf()
}

/// Register, send, live delivery, history and chat list, with every byte
/// of state in FoundationDB.
#[tokio::test]
async fn messages_round_trip_through_foundationdb() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        store: StoreKind::Fdb,
        fdb_cluster_file: Some(cluster_file()),
        fdb_prefix: unique_prefix("messages"),
        max_body: quip_protocol::MAX_BODY_LIMIT,
        ..Config::for_tests(dir.path())
    };
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let sent = alice.send_text("bob", "hi bob").await.unwrap();
    assert_eq!(sent.seq, 1);
    let (_, m) = next_message(&bob).await;
    assert_eq!((m.seq, text(&m)), (1, "hi bob"));
    // A message body near the largest allowed (256 KiB), far over
    // FoundationDB's 100 kB value limit, stored and read back whole.
    let long = "x".repeat(200_000);
    assert_eq!(bob.send_text("alice", &long).await.unwrap().seq, 2);
    let history = alice.history("bob", 0, 10).await.unwrap();
    let texts: Vec<&str> = history.messages.iter().map(text).collect();
    assert_eq!(texts, vec![long.as_str(), "hi bob"]);
    let chats = bob.chats().await.unwrap();
    assert_eq!((chats.len(), chats[0].peer.as_str()), (1, "alice"));
    let stats = server.store.stats();
    assert!(stats.commits > 0 && stats.keys_written > 0, "{stats:?}");
    server.stop().await;
}

/// The quipd binary: `--version` says whether it can use FoundationDB;
/// one without it is rebuilt with it (when these tests run alone).
fn quipd_with_fdb() -> PathBuf {
    let bin = quipd();
    let says = |bin: &Path| {
        let out = Command::new(bin).arg("--version").output().unwrap();
        String::from_utf8_lossy(&out.stdout).contains("FoundationDB")
    };
    if !says(&bin) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "quip-server", "--features", "fdb", "--bin", "quipd"])
            .status()
            .unwrap()
            .success();
        assert!(
            ok && says(&bin),
            "could not build quipd with FoundationDB at {}",
            bin.display()
        );
    }
    bin
}

async fn connect(opts: &ConnectOptions) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), Client::connect(opts)).await {
            Ok(Ok(c)) => return c,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(25)).await,
            r => panic!("quipd did not come up: {:?}", r.map(|r| r.err())),
        }
    }
}

fn options(port: u16, ca: &Path) -> ConnectOptions {
    ConnectOptions::new(format!("127.0.0.1:{port}"), Some(ca))
        .unwrap()
        .keep_alive(Duration::from_millis(250))
        .unwrap()
}

/// Two `quipd --store fdb` processes, each with a data directory of its
/// own, on one prefix: what one writes, the other reads; one send retried
/// through both nodes at once is stored once; and a node killed with
/// SIGKILL and started again lost nothing acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_quipd_processes_share_one_cluster() {
    quipd_with_fdb();
    let cluster = cluster_file();
    let prefix = unique_prefix("daemons");
    let media = tempfile::tempdir().unwrap();
    let args = [
        "--store",
        "fdb",
        "--fdb-cluster-file",
        cluster.to_str().unwrap(),
        "--fdb-prefix",
        &prefix,
        "--media-dir",
        media.path().to_str().unwrap(),
    ];
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port1, port2) = (free_port(), free_port());
    let mut node1 = Daemon::start(dir1.path(), port1, &args);
    let node2 = Daemon::start(dir2.path(), port2, &args);
    let (ca1, ca2) = (Daemon::ready(dir1.path()).await, Daemon::ready(dir2.path()).await);

    let alice = connect(&options(port1, &ca1)).await;
    let token = alice.register("alice", PASSWORD, "one").await.unwrap().token;
    let bob = connect(&options(port2, &ca2)).await;
    bob.register("bob", PASSWORD, "two").await.unwrap();
    // Registered on node 1, known on node 2 (and the name is taken there).
    let sent = alice.send_text("bob", "through node one").await.unwrap();
    let seen = bob.history("alice", 0, 10).await.unwrap();
    assert_eq!(seen.messages.len(), 1);
    assert_eq!(
        (seen.messages[0].seq, text(&seen.messages[0])),
        (sent.seq, "through node one")
    );
    let reply = bob.send_text("alice", "through node two").await.unwrap();
    assert_eq!((reply.chat_id, reply.seq), (sent.chat_id, 2), "one chat, one sequence");
    let taken = connect(&options(port2, &ca2)).await;
    assert!(taken.register("alice", PASSWORD, "x").await.is_err());

    // The same send (one client_msg_id) through both nodes at once, as a
    // client that reconnected elsewhere and retried would: one message.
    let alice2 = connect(&options(port2, &ca2).token(token.clone())).await;
    let retried = v1::SendRequest {
        to_user: "bob".into(),
        client_msg_id: quip_client::new_client_msg_id(),
        content: Some(v1::Content {
            text: "sent twice".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (a, b) = tokio::join!(alice.send(retried.clone()), alice2.send(retried));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.seq, b.seq), (3, 3), "one seq for one client_msg_id");
    assert!(a.duplicate != b.duplicate, "exactly one of them stored it");

    // SIGKILL node 1, start it again: alice's token and both messages are there.
    node1.kill();
    let node1 = Daemon::start(dir1.path(), port1, &args);
    let alice = connect(&options(port1, &ca1).token(token)).await;
    let history = alice.history("bob", 0, 10).await.unwrap();
    let texts: Vec<&str> = history.messages.iter().map(text).collect();
    assert_eq!(texts, vec!["sent twice", "through node two", "through node one"]);
    drop((node1, node2));
}

/// FoundationDB stopped under load and started again: while it is gone,
/// sends fail with UNAVAILABLE (typed, with a retry delay; never INTERNAL),
/// `/readyz` says 503 "store unavailable"; once it is back, quipd serves
/// again without a restart, and every acknowledged message is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foundationdb_outage_is_unavailable_then_service_resumes() {
    let mut fdb = tokio::task::spawn_blocking(|| FdbServer::start().expect("a private fdbserver"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        store: StoreKind::Fdb,
        fdb_cluster_file: Some(fdb.cluster_file().to_path_buf()),
        fdb_prefix: unique_prefix("outage"),
        fdb_timeout_ms: 1_500,
        ..Config::for_tests(dir.path())
    };
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let send = |i: usize| {
        alice.send(v1::SendRequest {
            to_user: "bob".into(),
            client_msg_id: format!("m{i}"),
            content: Some(v1::Content {
                text: format!("m{i}"),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let mut acked = Vec::new();
    for i in 0..20 {
        send(i).await.unwrap();
        acked.push(i);
    }
    let fdb = tokio::task::spawn_blocking(move || {
        fdb.stop();
        fdb
    })
    .await
    .unwrap();
    let health = common::https::get(&server, "/readyz").await;
    assert_eq!(health.status, 503);
    assert!(String::from_utf8_lossy(&health.body).contains("store unavailable"));
    // Message 20 while the cluster is gone: typed, with a retry delay.
    match send(20).await {
        Err(quip_client::ClientError::Server {
            code, retry_after_ms, ..
        }) => {
            assert_eq!(code, v1::ErrorCode::Unavailable);
            assert!(retry_after_ms > 0);
        }
        other => panic!("a send during the outage answered {other:?}"),
    }
    let mut fdb = fdb;
    let fdb = tokio::task::spawn_blocking(move || {
        fdb.restart().expect("fdbserver restarts");
        fdb
    })
    .await
    .unwrap();
    // Back: the unacknowledged send retried with its client_msg_id, then more.
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 20..40 {
        loop {
            match send(i).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.code(), Some(v1::ErrorCode::Unavailable), "{e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("quipd did not recover: {e}"),
            }
        }
        acked.push(i);
    }
    assert_eq!(common::https::get(&server, "/readyz").await.status, 200);
    let history = bob.history("alice", 0, 100).await.unwrap();
    let mut texts: Vec<String> = history.messages.iter().map(|m| text(m).to_owned()).collect();
    texts.reverse();
    let expected: Vec<String> = acked.iter().map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected, "every acknowledged message once, in order");
    server.stop().await;
    drop(fdb);
}
