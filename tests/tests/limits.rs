//! Resource limits under abuse, against quipd as a separate process so its
//! memory can be read from /proc: thousands of handshakes that never finish,
//! junk datagrams, and streams stalled in the middle of a frame. The
//! server's memory stays bounded and normal clients keep being served.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::daemon::{Daemon, free_port};
use common::{PASSWORD, next_message};
use quip_client::{Client, ConnectOptions};
use quip_protocol::v1::ErrorCode;
use rand::Rng;

const PER_IP: usize = 300;

fn options(addr: &str, ca: &std::path::Path, from: &str) -> ConnectOptions {
    let mut o = ConnectOptions::new(addr, Some(ca))
        .unwrap()
        .keep_alive(Duration::from_millis(500))
        .unwrap();
    o.bind = Some(format!("{from}:0").parse().unwrap());
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_junk_and_stalled_streams_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let per_ip = PER_IP.to_string();
    let daemon = Daemon::start(dir.path(), port, &["--max-connections-per-ip", &per_ip]);
    let ca = Daemon::ready(dir.path()).await;

    // Normal users come from 127.0.0.2; the attacker from 127.0.0.1.
    let normal = options(&addr, &ca, "127.0.0.2");
    let alice = Client::connect(&normal).await.unwrap();
    alice.register("alice", PASSWORD, "phone").await.unwrap();
    let bob = Client::connect(&normal).await.unwrap();
    bob.register("bob", PASSWORD, "phone").await.unwrap();
    alice.send_text("bob", "before").await.unwrap();
    next_message(&bob).await;
    let before = daemon.rss_kib();

    // 1. A thousand QUIC connections that never send Hello.
    let attacker = options(&addr, &ca, "127.0.0.1");
    let server: SocketAddr = addr.parse().unwrap();
    let endpoints: Vec<quinn::Endpoint> = (0..4).map(|_| Client::endpoint(&attacker).unwrap()).collect();
    let attempts = (0..1000).map(|i| {
        let ep = endpoints[i % endpoints.len()].clone();
        async move {
            let c = ep.connect(server, "127.0.0.1").unwrap();
            tokio::time::timeout(Duration::from_secs(5), c)
                .await
                .ok()
                .and_then(Result::ok)
        }
    });
    let half_open: Vec<quinn::Connection> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        half_open.len() <= PER_IP,
        "{} connections from one address accepted",
        half_open.len()
    );

    // 2. Junk datagrams.
    let junk = tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let mut buf = vec![0u8; 1200];
    for _ in 0..5000 {
        rand::rng().fill(&mut buf[..]);
        let _ = junk.send_to(&buf, server).await;
    }

    // 3. Streams stalled halfway through a large frame: each of 16 streams
    // on 8 authenticated connections declares ~1 MiB and sends 300 KiB.
    let staller_opts = options(&addr, &ca, "127.0.0.4");
    let mut stallers = Vec::new();
    for i in 0..8 {
        let c = Client::connect(&staller_opts).await.unwrap();
        c.register(&format!("staller{i}"), PASSWORD, "x").await.unwrap();
        let mut streams = Vec::new();
        let mut refused = false;
        for _ in 0..16 {
            let Ok((mut send, recv)) = c.connection().open_bi().await else {
                refused = true;
                break;
            };
            // A length prefix of 1,000,000 then 300 KiB of the body.
            let mut prefix = Vec::new();
            prost::encoding::encode_varint(1_000_000, &mut prefix);
            if send.write_all(&prefix).await.is_err() || send.write_all(&vec![0x0a; 300 * 1024]).await.is_err() {
                refused = true;
                break;
            }
            streams.push((send, recv));
        }
        stallers.push((c, streams, refused));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Past 4 MiB of unfinished requests a connection is closed.
    let closed = stallers
        .iter()
        .filter(|(c, _, _)| c.connection().close_reason().is_some())
        .count();
    assert_eq!(closed, stallers.len(), "every staller hit the per-connection budget");
    let during = daemon.rss_kib();

    // Normal clients are served meanwhile.
    alice.send_text("bob", "during").await.unwrap();
    let (_, m) = tokio::time::timeout(Duration::from_secs(3), next_message(&bob))
        .await
        .unwrap();
    assert_eq!(common::text(&m), "during");
    let carol = Client::connect(&normal).await.unwrap();
    carol.register("carol", PASSWORD, "phone").await.unwrap();
    assert_eq!(
        alice.send_text("nobody", "x").await.unwrap_err().code(),
        Some(ErrorCode::NotFound)
    );

    let grown = during.saturating_sub(before);
    println!(
        "abuse: {} half-open connections accepted of 1000, 5000 junk datagrams, {} stalled connections closed; \
         quipd RSS {before} KiB -> {during} KiB (+{grown} KiB, {} KiB per half-open connection)",
        half_open.len(),
        closed,
        grown / half_open.len().max(1) as u64
    );
    // Bounded: well under 256 KiB per accepted connection, stalled frames included.
    assert!(
        grown < 256 * half_open.len() as u64 + 64 * 1024,
        "RSS grew by {grown} KiB"
    );
    drop(half_open);
}

/// Polls `cond` every 10 ms until it holds; panics after `within`.
async fn until(within: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A thousand QUIC Initials "from" 127.0.0.1 whose sender never hears the
/// answers (a relay drops everything the server sends back: as if they were
/// spoofed with the victim's address), against a per-address limit of 100.
/// Before Retry they filled the address's slots and the victim's real
/// client, from the same address, was refused; now handshakes from an
/// unvalidated address hold at most 25 slots, the rest are answered with a
/// stateless Retry, and the real client, which returns the Retry's token,
/// gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initials_spoofed_from_an_address_do_not_lock_it_out() {
    use common::relay::{Faults, Relay};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let mut config = quip_server::Config::for_tests(dir.path());
    config.max_connections_per_ip = 100;
    let server = common::TestServer::start_with(config).await;
    let relay = Relay::start(server.addr.parse().unwrap()).await;
    *relay.ctl.down.lock().unwrap() = Faults {
        loss: 1.0,
        ..Faults::default()
    };

    let spoofer = Client::endpoint(&server.options_at(&relay.addr.to_string())).unwrap();
    let flood: Vec<quinn::Connecting> = (0..1000)
        .map(|_| spoofer.connect(relay.addr, "localhost").unwrap())
        .collect();
    // Every Initial has reached the server's socket before the real client's.
    until(Duration::from_secs(20), "the flood to reach the server", || {
        relay.ctl.sent_up.load(Ordering::SeqCst) >= flood.len()
    })
    .await;

    let victim = tokio::time::timeout(Duration::from_secs(10), Client::connect(&server.options()))
        .await
        .expect("connected in time")
        .expect("a real client from the flooded address connects");
    victim.register("victim", PASSWORD, "phone").await.unwrap();
    drop((flood, spoofer));
    server.stop().await;
}

/// A handshake that never completes (the client's TLS Finished is lost,
/// every time) frees its slot at the hello timeout, as spec/security.md
/// says: with one connection allowed per address, another client from the
/// address is refused while it is held and gets in once the 3 s timeout has
/// passed. It used to hold its slot for three times the timeout (30 s by
/// default; ~28 s was measured), which the 6 s bound here tells apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_handshake_frees_its_slot_at_the_hello_timeout() {
    use common::relay::Relay;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let mut config = quip_server::Config::for_tests(dir.path());
    config.max_connections_per_ip = 1;
    config.hello_timeout_secs = 3;
    let server = common::TestServer::start_with(config).await;
    let relay = Relay::start(server.addr.parse().unwrap()).await;
    relay.ctl.drop_client_handshakes.store(true, Ordering::SeqCst);

    let stuck = Client::endpoint(&server.options_at(&relay.addr.to_string())).unwrap();
    let _half_open = stuck.connect(relay.addr, "localhost").unwrap();
    until(Duration::from_secs(10), "the server's handshake flight", || {
        relay.ctl.server_handshakes.load(Ordering::SeqCst) > 0
    })
    .await;
    let held = std::time::Instant::now();
    assert!(
        Client::connect(&server.options()).await.is_err(),
        "the half-open handshake holds the address's one slot"
    );

    // Twice the hello timeout (the slot was taken before `held`).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let client = loop {
        match Client::connect(&server.options()).await {
            Ok(c) => break c,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "still refused 6 s after the handshake began: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("the half-open handshake's slot was free after {:?}", held.elapsed());
    client.register("alice", PASSWORD, "phone").await.unwrap();
    server.stop().await;
}
