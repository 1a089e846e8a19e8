//! `quipd backup` while quipd runs under load, then `quipd restore` into a
//! new data directory: everything acknowledged before the backup began is
//! back, in order, with its media, and the restored server accepts the old
//! sessions and certificate.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::PASSWORD;
use common::daemon::{Daemon, free_port, quipd};
use quip_client::{Client, ConnectOptions, UploadSpec};
use quip_protocol::v1;
use sha2::{Digest, Sha256};

async fn connect(addr: &str, ca: &Path, token: Option<&str>) -> Client {
    let mut options = ConnectOptions::new(addr, Some(ca)).unwrap();
    if let Some(t) = token {
        options = options.token(t);
    }
    Client::connect(&options).await.unwrap()
}

/// Runs `quipd <args>` to completion off the async runtime; returns stdout.
async fn quipd_command(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || Command::new(quipd()).args(&args).output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "quipd {}: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// No rate limits: the load sends as fast as the server stores.
const LOAD_ARGS: &[&str] = &["--rate-limit", "100000", "--rate-burst", "100000"];

fn arg(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_backup_under_load_restores_everything_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, backup, restored) = (
        dir.path().join("data"),
        dir.path().join("backup"),
        dir.path().join("new"),
    );
    let port = free_port();
    let daemon = Daemon::start(&data, port, LOAD_ARGS);
    let ca = Daemon::ready(&data).await;
    let addr = format!("127.0.0.1:{port}");

    let alice = connect(&addr, &ca, None).await;
    let token = alice.register("alice", PASSWORD, "test").await.unwrap().token;
    connect(&addr, &ca, None)
        .await
        .register("bob", PASSWORD, "test")
        .await
        .unwrap();
    let photo: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let spec = UploadSpec {
        size: photo.len() as u64,
        sha256: Sha256::digest(&photo).into(),
        content_type: "image/png".into(),
        file_name: "p.png".into(),
        resume: None,
    };
    let media = alice
        .upload(&spec, &mut std::io::Cursor::new(photo.clone()), |_| {})
        .await
        .unwrap()
        .media
        .unwrap();

    // Load: alice sends to bob without pause; each acknowledged send is
    // recorded as (seq, text).
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let media_id = media.media_id.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = format!("m{i}");
                let r = alice
                    .send(v1::SendRequest {
                        to_user: "bob".into(),
                        client_msg_id: quip_client::new_client_msg_id(),
                        content: Some(v1::Content {
                            text: text.clone(),
                            // The first message carries the photo.
                            media: (i == 0).then(|| v1::Media {
                                media_id: media_id.clone(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                acked.lock().unwrap().push((r.seq, text));
                i += 1;
            }
            alice
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The backup, while sends go on.
    let before = acked.lock().unwrap().clone();
    let said = quipd_command(vec![
        "backup".into(),
        "--to".into(),
        arg(&backup),
        "--data-dir".into(),
        arg(&data),
    ])
    .await;
    assert!(said.contains("backed up"), "{said}");
    let during = acked.lock().unwrap().len();
    // Sends go on after it too.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < during + 20 {
        assert!(Instant::now() < deadline, "sends stalled after the backup");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(load.await.unwrap());
    drop(daemon);
    assert!(backup.join("store.qbk").exists() && backup.join("manifest.json").exists());
    #[cfg(unix)]
    {
        // As private as the data directory it copies.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&backup), 0o700);
        assert_eq!(mode(&backup.join("store.qbk")), 0o600);
        assert_eq!(mode(&backup.join("secret")), 0o600);
        assert_eq!(mode(&data.join("backup.sock")), 0o600);
    }
    eprintln!(
        "{} sends acknowledged before the backup, {} when it returned: {said}",
        before.len(),
        during
    );

    // With no server running (killed: its socket file is left behind),
    // quipd backup reads the store itself, and gets every send.
    let offline = dir.path().join("offline");
    let said = quipd_command(vec![
        "backup".into(),
        "--to".into(),
        arg(&offline),
        "--data-dir".into(),
        arg(&data),
    ])
    .await;
    assert!(said.contains("backed up"), "{said}");
    let keys = |d: &Path| -> u64 {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
        m["keys"].as_u64().unwrap()
    };
    assert!(
        keys(&offline) > keys(&backup),
        "the offline backup has the later sends too"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["media_missing"], 0, "{manifest}");
    assert_eq!(manifest["media_files"], 1, "one chunk object: {manifest}");

    // Restore into a new data directory and start a server on it.
    let said = quipd_command(vec![
        "restore".into(),
        "--from".into(),
        arg(&backup),
        "--data-dir".into(),
        arg(&restored),
    ])
    .await;
    assert!(said.contains("restored"), "{said}");
    // A second restore into the same directory is refused.
    let again = Command::new(quipd())
        .args(["restore", "--from", &arg(&backup), "--data-dir", &arg(&restored)])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a store"));

    let port = free_port();
    let _restored_daemon = Daemon::start(&restored, port, &[]);
    // The dev certificate came back with the data: the old CA still works,
    // and so does alice's session token.
    let ca2 = Daemon::ready(&restored).await;
    assert_eq!(std::fs::read(&ca).unwrap(), std::fs::read(&ca2).unwrap());
    let addr = format!("127.0.0.1:{port}");
    let alice = connect(&addr, &ca, Some(&token)).await;
    let mut history = Vec::new();
    let mut after = 0;
    let chat = alice.history("bob", 0, 1).await.unwrap().chat_id;
    loop {
        let page = alice.history_after(chat, after, 200).await.unwrap();
        history.extend(page.messages.iter().map(|m| (m.seq, common::text(m).to_owned())));
        after = page.messages.last().map_or(after, |m| m.seq);
        if !page.more {
            break;
        }
    }
    // Dense seqs from 1, in order, and every message acknowledged before
    // the backup began is there with its text.
    assert!(history.iter().enumerate().all(|(i, (seq, _))| *seq == i as u64 + 1));
    assert!(history.len() >= before.len(), "{} < {}", history.len(), before.len());
    assert_eq!(&history[..before.len()], &before[..]);
    // The photo too.
    let mut got = Vec::new();
    alice.download(&media.media_id, 0, 0, &mut got, |_| {}).await.unwrap();
    assert_eq!(got, photo);
}
