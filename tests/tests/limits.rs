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
