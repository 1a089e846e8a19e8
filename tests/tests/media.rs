//! Media: uploads and downloads on QUIC streams of their own, bytes in an
//! object store (a directory in the data dir, or S3 served by a real
//! S3-protocol server on loopback), access through chat participation.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{Daemon, free_port};
use common::{PASSWORD, TestServer, code};
use quip_client::{Client, ClientError, ConnectOptions, Progress, UploadSpec};
use quip_protocol::v1::{self, ErrorCode};
use quip_server::Config;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;

const MIB: u64 = 1 << 20;

fn random_bytes(n: u64) -> Vec<u8> {
    let mut v = vec![0u8; n as usize];
    rand::rng().fill_bytes(&mut v);
    v
}

fn spec(bytes: &[u8], name: &str) -> UploadSpec {
    UploadSpec {
        size: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
        content_type: "application/octet-stream".into(),
        file_name: name.into(),
        resume: None,
    }
}

async fn upload(c: &Client, bytes: &[u8], name: &str) -> Result<v1::UploadComplete, ClientError> {
    c.upload(&spec(bytes, name), &mut std::io::Cursor::new(bytes.to_vec()), |_| {})
        .await
}

async fn download(c: &Client, id: &str, offset: u64, length: u64) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    c.download(id, offset, length, &mut out, |_| {}).await?;
    Ok(out)
}

/// Sends `media` in a message to `to`.
async fn send_media(c: &Client, to: &str, media: &v1::Media, caption: &str) -> Result<v1::SendResponse, ClientError> {
    c.send(v1::SendRequest {
        to_user: to.into(),
        client_msg_id: quip_client::new_client_msg_id(),
        content: Some(v1::Content {
            text: caption.into(),
            media: Some(v1::Media {
                media_id: media.media_id.clone(),
                width: 640,
                height: 480,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
}

/// Chunk objects under a local media directory.
fn chunk_files(media_dir: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&media_dir.join("chunks"), &mut out);
    out
}

#[tokio::test]
async fn a_50_mib_file_round_trips_and_server_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let daemon = Daemon::start(&data, port, &[]);
    let ca = Daemon::ready(&data).await;
    let opts = ConnectOptions::new(format!("127.0.0.1:{port}"), Some(&ca)).unwrap();
    let mut tries = 0;
    let alice = loop {
        match Client::connect(&opts).await {
            Ok(c) => break c,
            Err(_) if tries < 50 => tries += 1,
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    alice.register("alice", PASSWORD, "t").await.unwrap();

    // The file is on disk and read from there in steps, as a client would.
    let bytes = random_bytes(50 * MIB);
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &bytes).unwrap();
    let before = daemon.rss_kib();
    let mut file = tokio::fs::File::open(&path).await.unwrap();
    let (size, sha) = quip_client::media::hash(&mut file).await.unwrap();
    assert_eq!((size, sha), (50 * MIB, <[u8; 32]>::from(Sha256::digest(&bytes))));
    let up_spec = UploadSpec {
        size,
        sha256: sha,
        content_type: "video/mp4".into(),
        file_name: "big.bin".into(),
        resume: None,
    };
    let done = alice.upload(&up_spec, &mut file, |_| {}).await.unwrap();
    let media = done.media.unwrap();
    assert_eq!((media.size, &media.sha256[..]), (50 * MIB, &sha[..]));

    let out_path = dir.path().join("back.bin");
    let mut out = tokio::fs::File::create(&out_path).await.unwrap();
    let ready = alice.download(&media.media_id, 0, 0, &mut out, |_| {}).await.unwrap();
    assert_eq!(ready.length, 50 * MIB);
    drop(out);
    let back = std::fs::read(&out_path).unwrap();
    assert!(back == bytes, "byte-identical round trip");

    let peak = daemon.peak_rss_kib();
    let grew_mib = peak.saturating_sub(before) as f64 / 1024.0;
    println!("quipd RSS before {before} KiB, peak {peak} KiB: grew {grew_mib:.1} MiB for a 50 MiB round trip");
    assert!(
        grew_mib < 25.0,
        "the server must stream, not hold the file: peak grew {grew_mib:.1} MiB"
    );
}

#[tokio::test]
async fn an_interrupted_upload_resumes_after_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, token) = server.user("alice").await;
    let bytes = random_bytes(5 * MIB + 12_345);

    // The first attempt dies after 2.5 MiB.
    let mut started = None;
    let mut file = common::files::Cut {
        inner: std::io::Cursor::new(bytes.clone()),
        left: (5 * MIB / 2) as usize,
        stall: false,
    };
    let e = alice
        .upload(&spec(&bytes, "f"), &mut file, |p| {
            if let Progress::Started { upload_id, offset, .. } = p {
                started = Some((upload_id, offset));
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Io(_)), "{e}");
    let (upload_id, offset) = started.unwrap();
    assert_eq!(offset, 0);
    // What was sent before the crash reaches the server (the stream ends
    // with the client's sending half); whole chunks are stored durably.
    let id = quip_server::service::media::parse_id(&upload_id).unwrap();
    let stored = || {
        quip_server::store::read(&*server.store, |t| {
            quip_server::records::get::<quip_server::records::MediaRecord>(t, &quip_server::keys::media(&id))
        })
        .unwrap()
        .map_or(0, |r| r.received)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stored() < 2 * MIB {
        assert!(std::time::Instant::now() < deadline, "server stored {} bytes", stored());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    alice.close();

    // A new connection resumes it: the server asks only for what it lacks
    // (whole chunks are kept: 2 MiB of the 2.5 sent; the rest is sent again).
    let again = server.connect_as(&token).await;
    let mut resumed_from = None;
    let mut s = spec(&bytes, "f");
    s.resume = Some(upload_id.clone());
    let done = again
        .upload(&s, &mut std::io::Cursor::new(bytes.clone()), |p| {
            if let Progress::Started { offset, .. } = p {
                resumed_from = Some(offset);
            }
        })
        .await
        .unwrap();
    assert_eq!(resumed_from, Some(2 * MIB));
    let media = done.media.unwrap();
    assert_eq!(media.media_id, upload_id, "the upload id becomes the media id");
    assert_eq!(download(&again, &media.media_id, 0, 0).await.unwrap(), bytes);

    // Resuming a finished upload just answers with the result.
    let done = again
        .upload(&s, &mut std::io::Cursor::new(bytes.clone()), |_| {})
        .await
        .unwrap();
    assert_eq!(done.media.unwrap().media_id, upload_id);

    // Someone else cannot resume (or learn of) alice's upload.
    let (bob, _) = server.user("bob").await;
    let e = bob
        .upload(&s, &mut std::io::Cursor::new(bytes.clone()), |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    server.stop().await;
}

#[tokio::test]
async fn hash_mismatch_over_size_and_bad_declarations_are_refused_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.media_max_size = 4 * MIB;
    let server = TestServer::start_with(config).await;
    let media_dir = dir.path().join("media");
    let (alice, _) = server.user("alice").await;

    let bytes = random_bytes(3 * MIB);
    let mut wrong = spec(&bytes, "x");
    wrong.sha256[0] ^= 1;
    let mut started = None;
    let e = alice
        .upload(&wrong, &mut std::io::Cursor::new(bytes.clone()), |p| {
            if let Progress::Started { upload_id, .. } = p {
                started = Some(upload_id);
            }
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::HashMismatch), "{e}");
    assert!(chunk_files(&media_dir).is_empty(), "no bytes kept");
    // Nor the upload: it cannot be resumed or downloaded.
    let id = started.unwrap();
    assert_eq!(code(download(&alice, &id, 0, 0).await), Some(ErrorCode::NotFound));
    wrong.resume = Some(id);
    assert_eq!(
        code(
            alice
                .upload(&wrong, &mut std::io::Cursor::new(bytes.clone()), |_| {})
                .await
        ),
        Some(ErrorCode::NotFound)
    );

    let big = random_bytes(4 * MIB + 1);
    assert_eq!(code(upload(&alice, &big, "big").await), Some(ErrorCode::LimitExceeded));
    let mut empty = spec(&[], "e");
    empty.size = 0;
    assert_eq!(
        code(alice.upload(&empty, &mut std::io::Cursor::new(vec![]), |_| {}).await),
        Some(ErrorCode::InvalidArgument)
    );
    // A media request on the request stream is refused with the reason.
    let e = alice
        .request(quip_protocol::Body::Download(v1::DownloadRequest {
            media_id: "00".repeat(16),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument));
    // And the connection still works.
    assert_eq!(alice.whoami().await.unwrap().user, "alice");
    server.stop().await;
}

#[tokio::test]
async fn only_participants_download_and_others_cannot_tell_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let (carol, _) = server.user("carol").await;
    let bytes = random_bytes(MIB + 10);
    let media = upload(&alice, &bytes, "photo.jpg").await.unwrap().media.unwrap();

    // Uploaded but not sent: only alice sees it.
    assert_eq!(download(&alice, &media.media_id, 0, 0).await.unwrap(), bytes);
    assert_eq!(
        code(download(&bob, &media.media_id, 0, 0).await),
        Some(ErrorCode::NotFound)
    );

    // Sent to bob: the message carries the server's facts about it.
    send_media(&alice, "bob", &media, "look").await.unwrap();
    let (_, m) = common::next_message(&bob).await;
    let content = m.content.unwrap();
    assert_eq!(content.text, "look");
    let got = content.media.unwrap();
    assert_eq!(
        (
            got.media_id.as_str(),
            got.size,
            &got.sha256[..],
            got.file_name.as_str(),
            got.width
        ),
        (
            media.media_id.as_str(),
            bytes.len() as u64,
            &Sha256::digest(&bytes)[..],
            "photo.jpg",
            640
        )
    );
    assert_eq!(download(&bob, &media.media_id, 0, 0).await.unwrap(), bytes);

    // Carol, who is in no chat with it, gets exactly what a made-up id gets.
    let real = download(&carol, &media.media_id, 0, 0).await.unwrap_err();
    let fake_id = "0123456789abcdef0123456789abcdef";
    let fake = download(&carol, fake_id, 0, 0).await.unwrap_err();
    assert_eq!(real.code(), Some(ErrorCode::NotFound));
    assert_eq!(fake.code(), real.code());
    assert_eq!(
        real.to_string().replace(&media.media_id, "ID"),
        fake.to_string().replace(fake_id, "ID")
    );
    // Nor can she send it on.
    assert_eq!(
        code(send_media(&carol, "alice", &media, "").await),
        Some(ErrorCode::NotFound)
    );
    // Bob can forward it to carol: then she may download it.
    send_media(&bob, "carol", &media, "fwd").await.unwrap();
    assert_eq!(download(&carol, &media.media_id, 0, 0).await.unwrap(), bytes);

    // Groups: members download; a removed member no longer can.
    let (dave, _) = server.user("dave").await;
    let g = alice.create_group("g", &["dave"]).await.unwrap().info.unwrap().chat_id;
    let pic = upload(&alice, &random_bytes(1000), "p").await.unwrap().media.unwrap();
    alice
        .send(v1::SendRequest {
            chat_id: g,
            client_msg_id: "g1".into(),
            content: Some(v1::Content {
                media: Some(v1::Media {
                    media_id: pic.media_id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(download(&dave, &pic.media_id, 0, 0).await.is_ok());
    alice
        .update_chat(g, v1::ChatAction::RemoveMembers, &["dave"], "")
        .await
        .unwrap();
    assert_eq!(
        code(download(&dave, &pic.media_id, 0, 0).await),
        Some(ErrorCode::NotFound)
    );
    server.stop().await;
}

/// Sends `media` into chat `chat_id`.
async fn send_media_to_chat(c: &Client, chat_id: u64, media: &v1::Media) -> v1::SendResponse {
    c.send(v1::SendRequest {
        chat_id,
        client_msg_id: quip_client::new_client_msg_id(),
        content: Some(v1::Content {
            media: Some(v1::Media {
                media_id: media.media_id.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_member_added_later_cannot_download_media_sent_before_they_joined() {
    use common::https::request;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let (carol, carol_token) = server.user("carol").await;
    let g = alice.create_group("g", &["bob"]).await.unwrap().info.unwrap().chat_id;
    let before = upload(&alice, &random_bytes(1000), "before")
        .await
        .unwrap()
        .media
        .unwrap();
    send_media_to_chat(&alice, g, &before).await;
    alice
        .update_chat(g, v1::ChatAction::AddMembers, &["carol"], "")
        .await
        .unwrap();
    let after = random_bytes(1200);
    let later = upload(&bob, &after, "after").await.unwrap().media.unwrap();
    send_media_to_chat(&bob, g, &later).await;

    // Carol's history starts at her ADDED event: the earlier media is as
    // hidden as its message, with exactly the answer a made-up id gets,
    // over QUIC and over HTTPS alike.
    let history = carol.history_of_chat(g, 0, 0).await.unwrap();
    assert!(
        history.messages.iter().all(|m| m
            .content
            .as_ref()
            .and_then(|c| c.media.as_ref())
            .map(|m| m.media_id.as_str())
            != Some(before.media_id.as_str())),
        "the earlier message is not in carol's history"
    );
    let fake_id = "0123456789abcdef0123456789abcdef";
    let real = download(&carol, &before.media_id, 0, 0).await.unwrap_err();
    let fake = download(&carol, fake_id, 0, 0).await.unwrap_err();
    assert_eq!(real.code(), Some(ErrorCode::NotFound));
    assert_eq!(
        real.to_string().replace(&before.media_id, "ID"),
        fake.to_string().replace(fake_id, "ID")
    );
    let auth = format!("Bearer {carol_token}");
    let real = request(
        &server,
        "GET",
        &format!("/v1/media/{}", before.media_id),
        &[("Authorization", &auth)],
        &[],
    )
    .await;
    let fake = request(
        &server,
        "GET",
        &format!("/v1/media/{fake_id}"),
        &[("Authorization", &auth)],
        &[],
    )
    .await;
    assert_eq!((real.status, fake.status), (404, 404));
    assert_eq!(
        String::from_utf8_lossy(&real.body).replace(&before.media_id, "ID"),
        String::from_utf8_lossy(&fake.body).replace(fake_id, "ID")
    );
    // Nor can she pass it on.
    assert_eq!(
        code(send_media(&carol, "alice", &before, "").await),
        Some(ErrorCode::NotFound)
    );

    // What was sent since she joined she may download, both ways; members
    // from before still download both.
    assert_eq!(download(&carol, &later.media_id, 0, 0).await.unwrap(), after);
    let r = request(
        &server,
        "GET",
        &format!("/v1/media/{}", later.media_id),
        &[("Authorization", &auth)],
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body == after);
    assert!(download(&bob, &before.media_id, 0, 0).await.is_ok());

    // Sent again after she joined, the earlier media becomes hers to see too.
    send_media_to_chat(&alice, g, &before).await;
    assert!(download(&carol, &before.media_id, 0, 0).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn byte_ranges_and_identical_uploads_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let media_dir = dir.path().join("media");
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let bytes = random_bytes(3 * MIB + 777);
    let a = upload(&alice, &bytes, "a").await.unwrap();
    assert!(!a.deduplicated);
    let a = a.media.unwrap();
    let chunks = chunk_files(&media_dir).len();
    assert_eq!(chunks, 4, "3 MiB + 777 bytes in 1 MiB chunks");

    // Ranges inside a chunk, across chunk boundaries, to the end, past it.
    for (off, len) in [(0, 10), (MIB - 5, 10), (MIB / 2, 2 * MIB), (3 * MIB, 0), (100, 0)] {
        let got = download(&alice, &a.media_id, off, len).await.unwrap();
        let end = if len == 0 { bytes.len() } else { (off + len) as usize };
        assert_eq!(got, &bytes[off as usize..end], "range {off}+{len}");
    }
    assert!(download(&alice, &a.media_id, 10 * MIB, 0).await.unwrap().is_empty());

    // Bob uploads the very same bytes: stored once, each has their own id.
    let b = upload(&bob, &bytes, "b").await.unwrap();
    assert!(b.deduplicated);
    let b = b.media.unwrap();
    assert_ne!(a.media_id, b.media_id);
    assert_eq!(chunk_files(&media_dir).len(), chunks, "no second copy");
    assert_eq!(download(&bob, &b.media_id, 0, 0).await.unwrap(), bytes);
    // Bob's id does not open alice's (unsent) one.
    assert_eq!(code(download(&bob, &a.media_id, 0, 0).await), Some(ErrorCode::NotFound));
    server.stop().await;
}

#[tokio::test]
async fn unsent_uploads_are_cleaned_up_and_sent_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.media_unsent_ttl_secs = 1;
    config.media_sweep_secs = 1;
    let server = TestServer::start_with(config).await;
    let media_dir = dir.path().join("media");
    let (alice, _) = server.user("alice").await;
    server.user("bob").await;
    let kept = upload(&alice, &random_bytes(1500), "kept")
        .await
        .unwrap()
        .media
        .unwrap();
    send_media(&alice, "bob", &kept, "").await.unwrap();
    let dropped = upload(&alice, &random_bytes(2500), "dropped")
        .await
        .unwrap()
        .media
        .unwrap();
    assert_eq!(chunk_files(&media_dir).len(), 2);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while download(&alice, &dropped.media_id, 0, 0).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "unsent upload never cleaned up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(chunk_files(&media_dir).len(), 1, "its bytes are gone too");
    assert_eq!(download(&alice, &kept.media_id, 0, 0).await.unwrap().len(), 1500);
    server.stop().await;
}

/// A real S3-protocol server (s3s-fs, installed by
/// scripts/install-test-deps.sh) on loopback, serving `root`.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    async fn start(root: &Path) -> Self {
        let bin = std::env::var("S3S_FS").unwrap_or_else(|_| {
            let home =
                std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
            format!("{home}/bin/s3s-fs")
        });
        assert!(
            Path::new(&bin).exists(),
            "{bin} not found: run scripts/install-test-deps.sh (cargo install s3s-fs)"
        );
        std::fs::create_dir_all(root.join("quip-media")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "quip-test", "--secret-key", "quip-test-secret"])
            .arg(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_s3_backend_round_trips_through_a_loopback_s3_server() {
    let dir = tempfile::tempdir().unwrap();
    let s3_root = dir.path().join("s3");
    let s3 = S3Server::start(&s3_root).await;
    let mut config = Config::for_tests(dir.path().join("data"));
    config.media_s3_bucket = Some("quip-media".into());
    config.media_s3_endpoint = Some(s3.endpoint.clone());
    config.media_s3_access_key_id = Some("quip-test".into());
    config.media_s3_secret_access_key = Some("quip-test-secret".into());
    let server = TestServer::start_with(config).await;
    let (alice, _) = server.user("alice").await;
    let (bob, _) = server.user("bob").await;
    let bytes = random_bytes(2 * MIB + 99);
    let media = upload(&alice, &bytes, "s3.bin").await.unwrap().media.unwrap();
    send_media(&alice, "bob", &media, "via s3").await.unwrap();
    assert_eq!(download(&bob, &media.media_id, 0, 0).await.unwrap(), bytes);
    assert_eq!(
        download(&bob, &media.media_id, MIB - 1, 2).await.unwrap(),
        &bytes[(MIB - 1) as usize..(MIB + 1) as usize]
    );
    // The bytes are in the bucket, not in the data directory.
    assert_eq!(chunk_files(&s3_root.join("quip-media")).len(), 3);
    assert!(!dir.path().join("data/media/chunks").exists());
    // Identical bytes are stored once there too.
    assert!(upload(&bob, &bytes, "again").await.unwrap().deduplicated);
    assert_eq!(chunk_files(&s3_root.join("quip-media")).len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn browsers_upload_resume_and_download_over_https_through_the_same_store() {
    use common::https::request;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice_quic, alice_token) = server.user("alice").await;
    let (bob, bob_token) = server.user("bob").await;
    let (_carol, carol_token) = server.user("carol").await;
    let auth = |t: &str| format!("Bearer {t}");
    let bytes = random_bytes(2 * MIB + 500);
    let sha: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let decl =
        serde_json::json!({"size": bytes.len(), "sha256": sha, "content_type": "image/png", "file_name": "p.png"});

    // No token, a bad token: 401 with a typed JSON error.
    let r = request(&server, "POST", "/v1/uploads", &[], decl.to_string().as_bytes()).await;
    assert_eq!((r.status, r.json()["code"].as_str()), (401, Some("UNAUTHENTICATED")));
    let r = request(
        &server,
        "POST",
        "/v1/uploads",
        &[("Authorization", "Bearer nope")],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 401);

    // Start, send the first 1.5 MiB only (the browser's tab closed), resume.
    let a = auth(&alice_token);
    let r = request(
        &server,
        "POST",
        "/v1/uploads",
        &[("Authorization", &a)],
        decl.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["upload_id"].as_str().unwrap().to_owned();
    assert_eq!(r.json()["offset"], 0);
    let path = format!("/v1/uploads/{id}");
    let r = request(
        &server,
        "PUT",
        &path,
        &[("Authorization", &a), ("Upload-Offset", "0")],
        &bytes[..3 * MIB as usize / 2],
    )
    .await;
    assert_eq!((r.status, r.json()["code"].as_str()), (409, Some("UPLOAD_INCOMPLETE")));
    let mut resume = decl.clone();
    resume["upload_id"] = id.clone().into();
    let r = request(
        &server,
        "POST",
        "/v1/uploads",
        &[("Authorization", &a)],
        resume.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.json()["offset"], MIB, "whole chunks kept");
    // A wrong offset is refused without touching the upload.
    let r = request(
        &server,
        "PUT",
        &path,
        &[("Authorization", &a), ("Upload-Offset", "5")],
        b"x",
    )
    .await;
    assert_eq!(r.status, 400);
    let r = request(
        &server,
        "PUT",
        &path,
        &[("Authorization", &a), ("Upload-Offset", &MIB.to_string())],
        &bytes[MIB as usize..],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let done = r.json();
    assert_eq!(done["media"]["media_id"].as_str(), Some(id.as_str()));
    assert_eq!(done["media"]["sha256"].as_str(), Some(sha.as_str()));

    // Sent over QUIC, downloaded by bob over HTTPS (whole and a range) and
    // over QUIC: one store behind both transports.
    let media = v1::Media {
        media_id: id.clone(),
        ..Default::default()
    };
    send_media(&alice_quic, "bob", &media, "").await.unwrap();
    let b = auth(&bob_token);
    let r = request(
        &server,
        "GET",
        &format!("/v1/media/{id}"),
        &[("Authorization", &b)],
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(r.header("etag"), Some(format!("\"{sha}\"").as_str()));
    assert!(r.body == bytes, "whole body");
    let r = request(
        &server,
        "GET",
        &format!("/v1/media/{id}"),
        &[("Authorization", &b), ("Range", "bytes=1048570-1048589")],
        &[],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 1048570-1048589/{}", bytes.len()).as_str())
    );
    assert_eq!(r.body, &bytes[1_048_570..1_048_590]);
    let r = request(
        &server,
        "GET",
        &format!("/v1/media/{id}"),
        &[("Authorization", &b), ("Range", "bytes=99999999-")],
        &[],
    )
    .await;
    assert_eq!(r.status, 416);
    assert_eq!(download(&bob, &id, 0, 0).await.unwrap(), bytes);

    // Carol: the same 404 as for an id that does not exist.
    let c = auth(&carol_token);
    let real = request(
        &server,
        "GET",
        &format!("/v1/media/{id}"),
        &[("Authorization", &c)],
        &[],
    )
    .await;
    let fake_id = "0123456789abcdef0123456789abcdef";
    let fake = request(
        &server,
        "GET",
        &format!("/v1/media/{fake_id}"),
        &[("Authorization", &c)],
        &[],
    )
    .await;
    assert_eq!((real.status, fake.status), (404, 404));
    assert_eq!(
        String::from_utf8_lossy(&real.body).replace(&id, "ID"),
        String::from_utf8_lossy(&fake.body).replace(fake_id, "ID")
    );

    // A hash mismatch over HTTPS: 422, nothing kept.
    let mut bad = decl.clone();
    bad["sha256"] = "00".repeat(32).into();
    let r = request(
        &server,
        "POST",
        "/v1/uploads",
        &[("Authorization", &a)],
        bad.to_string().as_bytes(),
    )
    .await;
    let bad_id = r.json()["upload_id"].as_str().unwrap().to_owned();
    let r = request(
        &server,
        "PUT",
        &format!("/v1/uploads/{bad_id}"),
        &[("Authorization", &a), ("Upload-Offset", "0")],
        &bytes,
    )
    .await;
    assert_eq!((r.status, r.json()["code"].as_str()), (422, Some("HASH_MISMATCH")));
    server.stop().await;
}

/// A file that never yields a byte: an upload stalled mid-way.
struct Stalled;

impl AsyncRead for Stalled {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

impl tokio::io::AsyncSeek for Stalled {
    fn start_seek(self: std::pin::Pin<&mut Self>, _: std::io::SeekFrom) -> std::io::Result<()> {
        Ok(())
    }
    fn poll_complete(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<u64>> {
        std::task::Poll::Ready(Ok(0))
    }
}

#[tokio::test]
async fn media_transfers_per_connection_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (alice, _) = server.user("alice").await;
    let alice = std::sync::Arc::new(alice);
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let mut stalled = Vec::new();
    for i in 0..quip_server::session::MEDIA_STREAMS_PER_CONNECTION {
        let (alice, tx) = (alice.clone(), tx.clone());
        stalled.push(tokio::spawn(async move {
            let s = spec(&random_bytes(100), &format!("s{i}"));
            let _ = alice
                .upload(&s, &mut Stalled, |p| {
                    if matches!(p, Progress::Started { .. }) {
                        let _ = tx.try_send(());
                    }
                })
                .await;
        }));
    }
    for _ in 0..quip_server::session::MEDIA_STREAMS_PER_CONNECTION {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap();
    }
    let e = upload(&alice, b"one too many", "x").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::LimitExceeded), "{e}");
    // Messages still flow on the connection.
    server.user("bob").await;
    alice.send_text("bob", "still here").await.unwrap();
    // When a transfer ends, its slot is free again.
    stalled.pop().unwrap().abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match upload(&alice, b"now it fits", "y").await {
            Ok(_) => break,
            Err(e) if e.code() == Some(ErrorCode::LimitExceeded) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    server.stop().await;
}

/// Starts an upload over HTTPS for `bytes`; returns its id.
async fn start_https_upload(server: &TestServer, auth: &str, bytes: &[u8], content_type: &str) -> String {
    let sha: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let decl = serde_json::json!({"size": bytes.len(), "sha256": sha, "content_type": content_type, "file_name": "f"});
    let r = common::https::request(
        server,
        "POST",
        "/v1/uploads",
        &[("Authorization", auth)],
        decl.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["upload_id"].as_str().unwrap().to_owned()
}

/// Sends a request head declaring `declared` body bytes and only `sent` of
/// them, then waits (at most `within`) for the server to answer and close.
async fn partial_request(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    declared: usize,
    sent: usize,
    within: Duration,
) -> Option<common::https::Response> {
    use tokio::io::AsyncWriteExt;
    let mut s = common::https::connect(server.https, &server.ca).await;
    s.write_all(common::https::head(method, path, headers, declared).as_bytes())
        .await
        .unwrap();
    let _ = s.write_all(&vec![b'x'; sent]).await;
    let _ = s.flush().await;
    common::https::read_until_closed(&mut s, within).await
}

#[tokio::test]
async fn upload_bodies_are_not_read_before_authentication_and_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_alice, token) = server.user("alice").await;
    let auth = format!("Bearer {token}");
    let soon = Duration::from_secs(5);

    // 2 MiB declared, 64 KiB sent, no token (or a bad one): 401 at once and
    // the connection closed, the rest of the body never waited for.
    for headers in [vec![], vec![("Authorization", "Bearer nope")]] {
        for (method, path) in [
            ("POST", "/v1/uploads"),
            ("PUT", "/v1/uploads/0123456789abcdef0123456789abcdef"),
        ] {
            let r = partial_request(&server, method, path, &headers, 2 << 20, 64 << 10, soon)
                .await
                .unwrap_or_else(|| panic!("{method} {path} without a valid token: answered and closed at once"));
            assert_eq!(
                (r.status, r.json()["code"].as_str()),
                (401, Some("UNAUTHENTICATED")),
                "{method} {path}"
            );
        }
    }

    // The start request is a few hundred bytes of JSON: a declared 1 MiB is
    // refused before it is read, as is a chunked body that grows past the cap.
    let r = partial_request(
        &server,
        "POST",
        "/v1/uploads",
        &[("Authorization", &auth)],
        1 << 20,
        0,
        soon,
    )
    .await
    .expect("an oversized start request is answered and closed at once");
    assert_eq!((r.status, r.json()["code"].as_str()), (413, Some("LIMIT_EXCEEDED")));
    let r = {
        use tokio::io::AsyncWriteExt;
        let mut s = common::https::connect(server.https, &server.ca).await;
        let head = format!(
            "POST /v1/uploads HTTP/1.1\r\nHost: localhost\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "{".repeat(64 << 10));
        let _ = s.write_all(chunk.as_bytes()).await;
        common::https::read_until_closed(&mut s, soon)
            .await
            .expect("a chunked start request over the cap is answered and closed")
    };
    assert_eq!((r.status, r.json()["code"].as_str()), (413, Some("LIMIT_EXCEEDED")));

    // A PUT declaring more than the upload has left is refused unread.
    let id = start_https_upload(&server, &auth, &[7u8; 1000], "application/octet-stream").await;
    let r = partial_request(
        &server,
        "PUT",
        &format!("/v1/uploads/{id}"),
        &[("Authorization", &auth), ("Upload-Offset", "0")],
        2 << 20,
        0,
        soon,
    )
    .await
    .expect("a PUT over the declared size is answered and closed at once");
    assert_eq!((r.status, r.json()["code"].as_str()), (413, Some("LIMIT_EXCEEDED")));
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_upload_body_times_out_and_its_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path());
    config.http_body_timeout_secs = 1;
    let server = TestServer::start_with(config).await;
    let (_alice, token) = server.user("alice").await;
    let auth = format!("Bearer {token}");
    let bytes = random_bytes(3 * MIB);
    let id = start_https_upload(&server, &auth, &bytes, "application/octet-stream").await;

    // Half the bytes, then nothing: after the 1 s body timeout the server
    // answers 408 and closes; what was stored is kept for a resume.
    let r = partial_request(
        &server,
        "PUT",
        &format!("/v1/uploads/{id}"),
        &[("Authorization", &auth), ("Upload-Offset", "0")],
        bytes.len(),
        bytes.len() / 2,
        Duration::from_secs(10),
    )
    .await
    .expect("a stalled PUT is answered and closed after the body timeout");
    assert_eq!((r.status, r.json()["code"].as_str()), (408, Some("UPLOAD_INCOMPLETE")));

    // The same for a start request whose JSON stops halfway.
    let r = partial_request(
        &server,
        "POST",
        "/v1/uploads",
        &[("Authorization", &auth)],
        100,
        10,
        Duration::from_secs(10),
    )
    .await
    .expect("a stalled POST is answered and closed after the body timeout");
    assert_eq!(r.status, 408);
    server.stop().await;
}

#[tokio::test]
async fn stalled_unauthenticated_uploads_hold_no_server_memory() {
    use tokio::io::AsyncWriteExt;
    const CONNECTIONS: usize = 200;
    const BODY: usize = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (daemon, https) = Daemon::start_with_https(&data, free_port(), &[]);
    let ca = Daemon::ready(&data).await;
    let mut tries = 0;
    while tokio::net::TcpStream::connect(https).await.is_err() {
        tries += 1;
        assert!(tries < 200, "quipd's HTTPS listener did not come up");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let before = daemon.rss_kib();

    // Each connection declares one byte more than it sends, so its upload
    // never completes, and then stops: a slow-body attack.
    let head = common::https::head("POST", "/v1/uploads", &[], BODY + 1);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (ca, head) = (ca.clone(), head.clone());
            tokio::spawn(async move {
                let mut s = common::https::connect(https, &ca).await;
                s.write_all(head.as_bytes()).await.unwrap();
                let _ = s.write_all(&vec![b'{'; BODY]).await;
                let _ = s.flush().await;
                let r = common::https::read_until_closed(&mut s, Duration::from_secs(5)).await;
                (r.map(|r| r.status), s)
            })
        })
        .collect();
    let mut answered = 0;
    let mut held = Vec::new();
    for t in tasks {
        let (status, s) = t.await.unwrap();
        answered += usize::from(status == Some(401));
        held.push(s);
    }
    let after = daemon.rss_kib();
    let grew_mib = after.saturating_sub(before) as f64 / 1024.0;
    println!(
        "quipd RSS before {before} KiB, after {CONNECTIONS} stalled {BODY}-byte uploads {after} KiB: grew {grew_mib:.1} MiB"
    );
    assert_eq!(
        answered, CONNECTIONS,
        "every unauthenticated upload gets 401 and a close"
    );
    assert!(
        grew_mib < 100.0,
        "bodies must not be buffered: RSS grew {grew_mib:.1} MiB"
    );
    drop(held);
}

/// Uploads `bytes` over HTTPS as `content_type`; returns the media id.
async fn https_upload(server: &TestServer, auth: &str, bytes: &[u8], content_type: &str) -> serde_json::Value {
    let id = start_https_upload(server, auth, bytes, content_type).await;
    let r = common::https::request(
        server,
        "PUT",
        &format!("/v1/uploads/{id}"),
        &[("Authorization", auth), ("Upload-Offset", "0")],
        bytes,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["media"].clone()
}

/// GET /v1/media/{id}, with a Range header if given.
async fn https_get_media(server: &TestServer, auth: &str, id: &str, range: Option<&str>) -> common::https::Response {
    let mut h = vec![("Authorization", auth)];
    if let Some(r) = range {
        h.push(("Range", r));
    }
    common::https::request(server, "GET", &format!("/v1/media/{id}"), &h, &[]).await
}

#[tokio::test]
async fn uploaded_media_is_served_as_an_inert_download_never_as_a_page_of_this_origin() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_alice, token) = server.user("alice").await;
    let auth = format!("Bearer {token}");
    let page = b"<html><script>alert(localStorage.token)</script></html>";
    let svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>";
    let png = b"\x89PNG\r\n\x1a\n not really";
    for (bytes, declared, served) in [
        (&page[..], "text/html", "application/octet-stream"),
        (&svg[..], "image/svg+xml", "application/octet-stream"),
        (&page[..], "application/xhtml+xml", "application/octet-stream"),
        (&svg[..], "text/javascript", "application/octet-stream"),
        (&png[..], "IMAGE/PNG; charset=x", "image/png"),
        (&png[..], "video/mp4", "video/mp4"),
    ] {
        let media = https_upload(&server, &auth, bytes, declared).await;
        // The declared type stays in the metadata for clients...
        assert_eq!(media["content_type"].as_str(), Some(declared));
        // ...but what is served cannot run script in the server's origin.
        let r = https_get_media(&server, &auth, media["media_id"].as_str().unwrap(), None).await;
        assert_eq!(r.status, 200);
        assert!(r.body == bytes);
        assert_eq!(r.header("content-type"), Some(served), "{declared}");
        assert_eq!(r.header("content-disposition"), Some("attachment"), "{declared}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("content-security-policy"), Some("default-src 'none'; sandbox"));
    }
    server.stop().await;
}

#[tokio::test]
async fn media_ranges_past_the_end_are_clamped_without_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_alice, token) = server.user("alice").await;
    let auth = format!("Bearer {token}");
    let bytes = random_bytes(1000);
    let media = https_upload(&server, &auth, &bytes, "application/octet-stream").await;
    let id = media["media_id"].as_str().unwrap();
    let size = bytes.len();

    // An end past the file (u64::MAX included) means "to the end" (RFC 9110).
    for (range, first) in [
        ("bytes=0-18446744073709551615", 0),
        ("bytes=5-18446744073709551614", 5),
        ("bytes=3-99999", 3),
        ("bytes=999-", 999),
    ] {
        let r = https_get_media(&server, &auth, id, Some(range)).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {first}-{}/{size}", size - 1).as_str()),
            "{range}"
        );
        assert!(r.body == bytes[first..], "{range}");
    }
    // Unsatisfiable or malformed: 416, and nothing overflows.
    for range in [
        "bytes=18446744073709551615-18446744073709551615",
        "bytes=18446744073709551615-",
        "bytes=1000-",
        "bytes=9-3",
        "bytes=0-18446744073709551616",
        "bytes=x-1",
    ] {
        let r = https_get_media(&server, &auth, id, Some(range)).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str()),
            "{range}"
        );
    }
    // Still serving.
    assert!(https_get_media(&server, &auth, id, None).await.body == bytes);
    server.stop().await;
}
