//! Retention (`--retention-days`, here `--retention-secs`): a real quipd
//! deletes old messages from history, sync and storage, deletes media no
//! kept message carries (its chunk files included), keeps numbering seqs
//! and log positions where they were, and tells a device that was away
//! longer than the retention period what expired.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestServer, code};
use quip_client::{AckTracker, Client, UploadSpec};
use quip_protocol::v1::{self, ErrorCode};
use quip_server::Config;
use sha2::{Digest, Sha256};

/// How long messages are kept in this test. Long enough for the checks
/// after the sweep to run before the newer messages expire too.
const RETENTION_SECS: u64 = 3;

async fn upload(c: &Client, bytes: &[u8]) -> v1::Media {
    let spec = UploadSpec {
        size: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
        content_type: "application/octet-stream".into(),
        file_name: "f".into(),
        resume: None,
    };
    c.upload(&spec, &mut std::io::Cursor::new(bytes.to_vec()), |_| {})
        .await
        .unwrap()
        .media
        .unwrap()
}

async fn send(c: &Client, to: &str, text: &str, media: Option<&v1::Media>) -> v1::SendResponse {
    c.send(v1::SendRequest {
        to_user: to.into(),
        client_msg_id: quip_client::new_client_msg_id(),
        content: Some(v1::Content {
            text: text.into(),
            media: media.map(|m| v1::Media {
                media_id: m.media_id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Whether any of the upload's chunk objects is in the local media directory.
fn has_chunks(data_dir: &Path, media_id: &str) -> bool {
    let dir = data_dir.join("media").join("chunks").join(media_id);
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Polls `check` every 50 ms until it holds; panics after 20 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of a plain HTTP GET (the admin listener).
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    raw.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn old_messages_and_their_media_expire_and_numbering_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.retention_secs = Some(RETENTION_SECS);
    config.retention_sweep_secs = 1;
    // The admin listener, on one node only (QUIP_TEST_STORE=fdb3 starts
    // three from this config, which could not share its address).
    let one_node = std::env::var("QUIP_TEST_STORE").as_deref() != Ok("fdb3");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    if one_node {
        config.admin_listen = Some(admin);
    }
    let s = TestServer::start_with(config).await;
    let (alice, _) = s.user("alice").await;
    let (_bob, _) = s.user("bob").await;
    // Bob's second device goes offline now and comes back after retention.
    let (away, away_token) = s.device("bob").await;
    drop(away);

    let old_media = upload(&alice, b"a photo nobody will keep").await;
    let first = send(&alice, "bob", "old 1", Some(&old_media)).await;
    let chat = first.chat_id;
    send(&alice, "bob", "old 2", None).await;
    send(&alice, "bob", "old 3", None).await;
    assert!(has_chunks(&s.data_dir, &old_media.media_id));

    // Once they are older than the retention period, a sweep deletes them:
    // history starts at seq 4 and says so.
    eventually("the old messages expired", || async {
        alice.history_of_chat(chat, 0, 50).await.unwrap().retained_from_seq == 4
    })
    .await;
    let page = alice.history_of_chat(chat, 0, 50).await.unwrap();
    assert!(page.messages.is_empty() && !page.more, "{page:?}");
    // The media only they carried is gone: record (its uploader gets
    // NOT_FOUND) and bytes.
    eventually("the old media's chunks were deleted", || async {
        !has_chunks(&s.data_dir, &old_media.media_id)
    })
    .await;
    let mut sink = Vec::new();
    let gone = alice.download(&old_media.media_id, 0, 0, &mut sink, |_| {}).await;
    assert_eq!(code(gone), Some(ErrorCode::NotFound));

    // New messages continue the numbering, seq and log position alike.
    let kept_media = upload(&alice, b"a photo sent just now").await;
    let new = send(&alice, "bob", "new", Some(&kept_media)).await;
    assert_eq!((new.chat_id, new.seq), (chat, 4));
    assert_eq!(new.pos, 4, "alice's log: three expired entries, then this one");
    let page = alice.history_of_chat(chat, 0, 50).await.unwrap();
    let texts: Vec<&str> = page.messages.iter().map(common::text).collect();
    assert_eq!(texts, ["new"]);
    assert_eq!(page.retained_from_seq, 4);
    assert!(has_chunks(&s.data_dir, &kept_media.media_id));

    // Bob's device that was away: its sync starts at what is left, tells
    // it positions 1..=3 expired, and it acknowledges past them.
    let back = s.connect_as(&away_token).await;
    eventually("bob's log was trimmed", || async {
        back.sync(0).await.unwrap().retained_from_pos == 4
    })
    .await;
    let page = back.sync(0).await.unwrap();
    assert_eq!((page.acked, page.retained_from_pos, page.head), (0, 4, 4));
    let mut tracker = AckTracker::new(0);
    let events = back.sync_all(&mut tracker).await.unwrap();
    let texts = common::message_texts(&events);
    assert_eq!(texts, ["new"]);
    assert_eq!(events[0].pos, 4);
    assert_eq!(tracker.contiguous(), 4, "acknowledged past the expired positions");
    let again = back.sync(0).await.unwrap();
    assert_eq!(again.acked, 4);
    assert!(again.events.is_empty() && !again.more);

    // The admin listener counts what went: 3 messages, their entries in
    // both logs, one stored media item.
    if one_node {
        let metrics = get(admin, "/metrics").await;
        for (what, n) in [("messages", 3), ("log_entries", 6), ("media", 1)] {
            let line = format!("quip_retention_deleted_total{{what=\"{what}\"}} {n}\n");
            assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
        }
    }
    s.stop().await;
}
