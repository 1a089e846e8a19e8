//! Bad networks between real clients and a real quipd: loss, duplication,
//! reordering and delay from the fault-injecting relay, and a partition
//! longer than the idle timeout.

mod common;

use std::time::Duration;

use common::relay::{Faults, Relay};
use common::*;
use quip_client::{AckTracker, Client};
use quip_protocol::v1;
use quip_server::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_over_a_lossy_reordering_network_arrives_complete_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.rate_burst = 1000.0;
    let server = TestServer::start_with(config).await;
    let (_a, alice_token) = server.user("alice").await;
    let (_b, bob_token) = server.user("bob").await;
    let relay = Relay::start(server.addr.parse().unwrap()).await;
    let via = |t: &str| server.options_at(&relay.addr.to_string()).token(t);
    let alice = Client::connect(&via(&alice_token)).await.unwrap();
    let bob = Client::connect(&via(&bob_token)).await.unwrap();
    relay.set_faults(Faults {
        loss: 0.10,
        duplicate: 0.05,
        reorder: 0.10,
        delay: Duration::from_millis(2),
        ..Default::default()
    });

    const N: usize = 150;
    let talk = async {
        for i in 0..N {
            // Both directions at once: alice sends, bob answers every tenth.
            alice.send_text("bob", &format!("a{i}")).await.unwrap();
        }
    };
    let reply = async {
        let mut got = Vec::new();
        while got.len() < N {
            let (_, m) = next_message_within(&bob, Duration::from_secs(20)).await;
            got.push((m.seq, text(&m).to_owned()));
            if got.len() % 10 == 0 {
                bob.send_text("alice", &format!("b{}", got.len())).await.unwrap();
            }
        }
        got
    };
    let ((), got) = tokio::join!(talk, reply);
    // Alice's messages got the odd seqs around bob's answers; what matters:
    // every one of hers, once, in order, with gap-free seqs overall.
    let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("a{i}")).collect();
    assert_eq!(texts, expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "seqs increase");
    let history = alice.history("bob", 0, 200).await.unwrap();
    let mut seqs: Vec<u64> = history.messages.iter().map(|m| m.seq).collect();
    seqs.reverse();
    assert_eq!(
        seqs,
        (1..=(N + N / 10) as u64).collect::<Vec<_>>(),
        "gap-free, nothing twice"
    );
    server.stop().await;
}

/// The next pushed message, waiting up to `within`.
async fn next_message_within(c: &Client, within: Duration) -> (u64, v1::Message) {
    tokio::time::timeout(within, async {
        loop {
            let e = c.next_event().await.expect("connection open");
            if let Some(v1::event::Kind::Message(m)) = e.kind {
                return (e.pos, m);
            }
        }
    })
    .await
    .expect("a message in time")
}

#[tokio::test]
async fn a_partition_longer_than_the_idle_timeout_ends_in_reconnect_and_exact_resync() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.idle_timeout_secs = 1;
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    let (_b, bob_token) = server.user("bob").await;
    let relay = Relay::start(server.addr.parse().unwrap()).await;
    let opts = server.options_at(&relay.addr.to_string()).token(bob_token);
    let bob = Client::connect(&opts).await.unwrap();

    // Bob receives and acknowledges the first ten live.
    let mut tracker = AckTracker::new(0);
    tracker.server_position(bob.sync(0).await.unwrap().acked);
    for i in 0..10 {
        alice.send_text("bob", &format!("before {i}")).await.unwrap();
    }
    for _ in 0..10 {
        let (pos, _) = next_message(&bob).await;
        tracker.observe(pos);
    }
    bob.ack(tracker.take_ack().unwrap()).await.unwrap();

    // The network goes away for longer than the idle timeout.
    relay.set_blackhole(true);
    for i in 0..25 {
        alice.send_text("bob", &format!("during {i}")).await.unwrap();
    }
    let (_, why) = tokio::time::timeout(Duration::from_secs(5), bob.closed())
        .await
        .expect("bob's side times out");
    assert!(!why.is_empty());
    relay.set_blackhole(false);

    // Reconnect and resync: exactly the 25 missed, in order, none of the
    // ten already acknowledged.
    let bob = Client::connect(&opts).await.unwrap();
    let events = bob.sync_all(&mut AckTracker::new(0)).await.unwrap();
    let texts = message_texts(&events);
    assert_eq!(texts, (0..25).map(|i| format!("during {i}")).collect::<Vec<_>>());
    assert!(bob.sync(0).await.unwrap().events.is_empty(), "acknowledged");
    server.stop().await;
}

/// Waits (up to 10 s) until `done` holds for the client's path statistics.
async fn path_stats_until(c: &Client, done: impl Fn(&quinn::PathStats) -> bool) -> quinn::PathStats {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let path = c.connection().stats().path;
        if done(&path) || tokio::time::Instant::now() > deadline {
            return path;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each path-MTU probe is a packet of padding the server parses byte by byte
/// (perf put it at a fifth of quipd's CPU while accepting connections), so
/// the client library tries one size: 1,452 bytes, that of a 1,500-byte
/// path. Where that does not fit, the connection keeps QUIC's 1,200 bytes.
#[tokio::test]
async fn the_client_probes_the_path_mtu_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_alice, token) = server.user("alice").await;

    let direct = Client::connect(&server.options().token(token.clone())).await.unwrap();
    direct.whoami().await.unwrap();
    let path = path_stats_until(&direct, |p| p.current_mtu == 1452).await;
    assert_eq!((path.current_mtu, path.sent_plpmtud_probes), (1452, 1), "{path:?}");

    // A path that carries at most 1,400-byte datagrams loses the probe
    // (quinn sends a lost probe three times before it gives up on a size).
    let relay = Relay::start(server.addr.parse().unwrap()).await;
    relay.set_faults(Faults {
        max_datagram: 1400,
        ..Default::default()
    });
    let narrow = Client::connect(&server.options_at(&relay.addr.to_string()).token(token))
        .await
        .unwrap();
    narrow.whoami().await.unwrap();
    let path = path_stats_until(&narrow, |p| p.lost_plpmtud_probes >= 3).await;
    assert_eq!(
        (path.current_mtu, path.sent_plpmtud_probes, path.lost_plpmtud_probes),
        (1200, 3, 3),
        "{path:?}"
    );
    // No smaller size is tried after that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(narrow.connection().stats().path.sent_plpmtud_probes, 3);
    // And the conversation goes on in 1,200-byte packets.
    assert_eq!(narrow.whoami().await.unwrap().user, "alice");
}
