//! The web client in a real headless Chromium, driven by Playwright
//! (`web/e2e/chat.mjs`), against a real quipd in this process (WebSocket
//! and the HTTPS media endpoints); a third user
//! on the real `quip` CLI over QUIC joins the conversation. Needs Node.js,
//! `web/node_modules` and Debian's chromium: `scripts/install-test-deps.sh`
//! installs them (the README's test command runs it). Without them this
//! test fails; it never skips.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quip_client::{Client, ConnectOptions};
use quip_server::{Config, Server};

const ALICE_PASSWORD: &str = "alice-password-1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_and_a_cli_user_chat_through_the_web_client() {
    let web = workspace().join("web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists() && web.join("node_modules/playwright-core").exists(),
        "the browser test needs {chromium} and web/node_modules: run scripts/install-test-deps.sh"
    );

    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(Config::for_tests(dir.path().join("data"))).unwrap();
    let quic = server.local_addr().to_string();
    let https = server.https_addr().unwrap();
    let ca = server.dev_cert().unwrap().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // Seed over QUIC: alice's account (she logs in from the browser) and
    // 60 messages from dave, more than one history page.
    let opts = ConnectOptions::new(&quic, Some(&ca)).unwrap();
    let alice = Client::connect(&opts).await.unwrap();
    alice.register("alice", ALICE_PASSWORD, "seed").await.unwrap();
    let dave = Client::connect(&opts).await.unwrap();
    dave.register("dave", "dave-password-1", "seed").await.unwrap();
    for i in 1..=60 {
        dave.send_text("alice", &format!("dave {i}")).await.unwrap();
    }
    alice.close();

    let artifacts = workspace().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("web-conversation.png");
    let _ = std::fs::remove_file(&screenshot);
    let carol_home = dir.path().join("carol");
    std::fs::create_dir_all(&carol_home).unwrap();
    let dave_home = dir.path().join("dave");
    let shots = ["group-info", "channel-subscriber", "phone-list", "phone-chat"]
        .map(|s| artifacts.join(format!("web-conversation-{s}.png")));
    for s in &shots {
        let _ = std::fs::remove_file(s);
    }
    let run = tokio::process::Command::new("node")
        .arg(web.join("e2e/chat.mjs"))
        .current_dir(&web)
        .env("QUIP_URL", format!("https://localhost:{}/", https.port()))
        .env("QUIP_SERVER", &quic)
        .env("QUIP_CA", &ca)
        .env("QUIP_BIN", env!("CARGO_BIN_EXE_quip"))
        .env("QUIP_CAROL_HOME", &carol_home)
        .env("QUIP_DAVE_HOME", &dave_home)
        .env("ALICE_PASSWORD", ALICE_PASSWORD)
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser test finished within 3 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot");
    // Kept as test artifacts: the group's info, a channel as a subscriber
    // sees it, and the phone-sized list and conversation.
    for s in &shots {
        let png = std::fs::read(s).unwrap_or_else(|e| panic!("{}: {e}", s.display()));
        assert!(png.starts_with(b"\x89PNG") && png.len() > 5_000, "{}", s.display());
    }

    // What the browsers did is in the store, as QUIC clients see it.
    let alice = Client::connect(&opts).await.unwrap();
    alice.login("alice", ALICE_PASSWORD, "check").await.unwrap();
    let history = alice.history("bob", 0, 10).await.unwrap().messages;
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m.content.as_ref().unwrap().text.as_str())
        .collect();
    assert_eq!(texts, ["a picture", "hi alice", "hello bob"], "newest first");
    // The picture the browser uploaded over HTTPS downloads over QUIC, and
    // its bytes match the hash the browser declared.
    let media = history[0]
        .content
        .as_ref()
        .unwrap()
        .media
        .clone()
        .expect("a media message");
    assert_eq!(
        (media.content_type.as_str(), media.file_name.as_str()),
        ("image/png", "sidebar.png")
    );
    let mut png = Vec::new();
    alice.download(&media.media_id, 0, 0, &mut png, |_| {}).await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let mut cursor = std::io::Cursor::new(png);
    let (size, sha) = quip_client::media::hash(&mut cursor).await.unwrap();
    assert_eq!((size, &sha[..]), (media.size, &media.sha256[..]));
    let chats = alice.chats().await.unwrap();
    let with_bob = chats.iter().find(|c| c.peer == "bob").unwrap();
    assert!(with_bob.peer_read_seq >= 1, "bob's read receipt is stored");
    assert_eq!(with_bob.unread, 0, "alice read bob's reply in the browser");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
