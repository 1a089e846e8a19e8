//! The `quip` binary end to end against a real quipd on loopback.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use quip_server::{Config, Server};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

struct Env {
    addr: String,
    ca: std::path::PathBuf,
}

impl Env {
    fn quip(&self, home: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_quip"));
        c.env("QUIP_HOME", home)
            .env("QUIP_SERVER", &self.addr)
            .env("QUIP_CA", &self.ca)
            .env_remove("QUIP_PASSWORD")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs quip; returns (success, stdout, stderr).
    async fn run(&self, home: &Path, args: &[&str]) -> (bool, String, String) {
        let out = self.quip(home).args(args).output().await.unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    async fn ok(&self, home: &Path, args: &[&str]) -> String {
        let (ok, out, err) = self.run(home, args).await;
        assert!(ok, "quip {args:?} failed: {err}");
        out
    }
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::bind(Config::for_tests(dir.path().join("data"))).unwrap();
    let env = Env {
        addr: server.local_addr().to_string(),
        ca: server.dev_cert().unwrap().clone(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    let pw = ["--password", "alice-secret-1"];

    let out = env.ok(&alice, &["register", "alice", pw[0], pw[1]]).await;
    assert_eq!(out.trim(), "registered alice (device 1)");
    let out = env
        .ok(&bob, &["--json", "register", "bob", "--password", "bob-secret-12"])
        .await;
    assert_eq!(json_lines(&out)[0]["user"], "bob");

    // Bob listens for two messages; alice sends them.
    let mut listen = env
        .quip(&bob)
        .args(["--json", "listen", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = env.ok(&alice, &["send", "bob", "hello bob"]).await;
    assert_eq!(out.trim(), "sent seq 1 in chat 1");
    let out = env
        .ok(&alice, &["--json", "send", "bob", "second", "--id", "m-2"])
        .await;
    let sent = &json_lines(&out)[0];
    assert_eq!(
        (sent["type"].as_str(), sent["seq"].as_u64(), sent["duplicate"].as_bool()),
        (Some("sent"), Some(2), Some(false))
    );
    // A retry with the same id is stored once.
    let out = env
        .ok(&alice, &["--json", "send", "bob", "second", "--id", "m-2"])
        .await;
    assert_eq!(json_lines(&out)[0]["duplicate"], true);

    let stdout = listen.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut got = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        got.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let status = tokio::time::timeout(Duration::from_secs(10), listen.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let msgs: Vec<_> = got.iter().filter(|v| v["type"] == "message").collect();
    assert_eq!(msgs.len(), 2, "{got:?}");
    for (m, (seq, text)) in msgs.iter().zip([(1, "hello bob"), (2, "second")]) {
        assert_eq!(
            (
                m["from"].as_str(),
                m["chat"].as_u64(),
                m["seq"].as_u64(),
                m["text"].as_str()
            ),
            (Some("alice"), Some(1), Some(seq), Some(text))
        );
    }

    let hist = json_lines(&env.ok(&bob, &["--json", "history", "alice"]).await);
    assert_eq!(
        hist.iter().map(|m| m["text"].as_str().unwrap()).collect::<Vec<_>>(),
        vec!["hello bob", "second"]
    );

    // Bob's listen sent "delivered"; alice sees two ticks.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let chats = json_lines(&env.ok(&alice, &["--json", "chats"]).await);
        assert_eq!(chats[0]["peer"], "bob");
        if chats[0]["peer_delivered_seq"] == 2 {
            assert_eq!(chats[0]["peer_read_seq"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "delivered receipt never landed: {chats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chats = json_lines(&env.ok(&bob, &["--json", "chats"]).await);
    assert_eq!(chats[0]["unread"], 2);
    assert_eq!(
        env.ok(&bob, &["read", "alice"]).await.trim(),
        "read up to #2 with alice"
    );
    let chats = json_lines(&env.ok(&alice, &["--json", "chats"]).await);
    assert_eq!(chats[0]["peer_read_seq"], 2);
    let chats = json_lines(&env.ok(&bob, &["--json", "chats"]).await);
    assert_eq!(chats[0]["unread"], 0);

    // Sync: alice's own device has the read receipt to fetch; a second sync is empty.
    let synced = json_lines(&env.ok(&alice, &["--json", "sync"]).await);
    assert!(
        synced
            .iter()
            .any(|e| e["type"] == "receipt" && e["kind"] == "read" && e["seq"] == 2),
        "{synced:?}"
    );
    assert!(env.ok(&alice, &["--json", "sync"]).await.is_empty());

    // Errors: one line on stderr, non-zero exit.
    let (ok, _, err) = env
        .run(
            &dir.path().join("eve"),
            &["login", "alice", "--password", "wrong-password"],
        )
        .await;
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("invalid username or password"), "{err}");
    let (ok, _, err) = env.run(&dir.path().join("nobody"), &["send", "bob", "hi"]).await;
    assert!(!ok);
    assert!(err.contains("not logged in"), "{err}");
    let (ok, _, err) = env.run(&alice, &["send", "nosuchuser", "hi"]).await;
    assert!(!ok);
    assert!(err.contains("NotFound"), "{err}");

    assert!(env.ok(&alice, &["whoami"]).await.starts_with("alice (device 1)"));
    env.ok(&alice, &["logout"]).await;
    let (ok, _, err) = env.run(&alice, &["whoami"]).await;
    assert!(!ok);
    assert!(err.contains("not logged in"), "{err}");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
