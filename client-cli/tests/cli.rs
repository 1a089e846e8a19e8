//! The `quip` binary end to end against a real quipd on loopback: the server
//! runs in this process, the CLI as subprocesses with one profile directory
//! (QUIP_HOME) per user.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use quip_server::{Config, Server};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

struct Env {
    addr: String,
    ca: PathBuf,
}

impl Env {
    /// Registers alice and bob, each with a profile directory under `dir`;
    /// returns those directories.
    async fn alice_and_bob(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (alice, bob) = (dir.join("alice"), dir.join("bob"));
        self.ok(&alice, &["register", "alice", "--password", "alice-secret-1"])
            .await;
        self.ok(&bob, &["register", "bob", "--password", "bob-secret-12"]).await;
        (alice, bob)
    }

    fn quip(&self, home: &Path) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_quip"));
        c.env("QUIP_HOME", home)
            .env("QUIP_SERVER", &self.addr)
            .env("QUIP_CA", &self.ca)
            .env_remove("QUIP_PASSWORD")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
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

    /// Runs quip; returns (exit status, stdout, stderr).
    async fn status(&self, home: &Path, args: &[&str]) -> (i32, String, String) {
        let out = self.quip(home).args(args).output().await.unwrap();
        (
            out.status.code().expect("exited"),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// Runs quip with `--json`, which must fail with exit status `exit` and
    /// one JSON object on stderr; returns it.
    async fn json_error(&self, home: &Path, args: &[&str], exit: i32) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (status, out, err) = self.status(home, &all).await;
        assert_eq!(status, exit, "quip {all:?}: {err}");
        assert_eq!(out, "", "nothing on stdout");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let v: Value = serde_json::from_str(&err).unwrap_or_else(|e| panic!("{e}: {err}"));
        assert_eq!(
            (v["type"].as_str(), v["exit"].as_i64()),
            (Some("error"), Some(exit.into())),
            "{v}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }

    /// Runs quip, which must succeed; returns its stdout.
    async fn ok(&self, home: &Path, args: &[&str]) -> String {
        let (ok, out, err) = self.run(home, args).await;
        assert!(ok, "quip {args:?} failed: {err}");
        out
    }

    /// Starts `quip listen` with these arguments, stdout piped.
    fn listen(&self, home: &Path, args: &[&str]) -> Child {
        self.quip(home)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs quip, which must fail with one line on stderr; returns that line.
    async fn fails(&self, home: &Path, args: &[&str]) -> String {
        let (ok, out, err) = self.run(home, args).await;
        assert!(!ok, "quip {args:?} succeeded: {out}");
        assert_eq!(err.lines().count(), 1, "quip {args:?}: {err}");
        assert!(err.starts_with("quip: error: "), "{err}");
        err
    }
}

type ServerTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// A quipd in this process with its data under `dir`; send on the channel to stop it.
fn start(dir: &Path) -> (Env, tokio::sync::oneshot::Sender<()>, ServerTask) {
    start_with(Config::for_tests(dir.join("data")))
}

fn start_with(config: Config) -> (Env, tokio::sync::oneshot::Sender<()>, ServerTask) {
    let server = Server::bind(config).unwrap();
    let env = Env {
        addr: server.local_addr().to_string(),
        ca: server.dev_cert().unwrap().clone(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (env, stop, task)
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn messages(events: &[Value]) -> Vec<(u64, &str)> {
    events
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|m| (m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (env, stop, task) = start(dir.path());
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");

    let out = env
        .ok(&alice, &["register", "alice", "--password", "alice-secret-1"])
        .await;
    assert_eq!(out.trim(), "registered alice (device 1)");
    let out = env
        .ok(&bob, &["--json", "register", "bob", "--password", "bob-secret-12"])
        .await;
    let auth = &json_lines(&out)[0];
    assert_eq!(
        (auth["type"].as_str(), auth["user"].as_str()),
        (Some("auth"), Some("bob"))
    );
    assert_eq!(auth["device_id"], 1);
    // The profile holds the token, readable by its owner only.
    let profile: Value = serde_json::from_slice(&std::fs::read(bob.join("profile.json")).unwrap()).unwrap();
    assert_eq!(profile["user"], "bob");
    assert!(profile["token"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(Path::new(profile["ca"].as_str().unwrap()).is_absolute());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bob.join("profile.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Bob listens for two messages; alice sends them. Whatever arrives before
    // the listener is connected comes with its first sync, so no waiting.
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
        (
            sent["type"].as_str(),
            sent["chat"].as_u64(),
            sent["seq"].as_u64(),
            sent["duplicate"].as_bool()
        ),
        (Some("sent"), Some(1), Some(2), Some(false))
    );
    // A retry with the same id is stored once.
    let out = env
        .ok(&alice, &["--json", "send", "bob", "second", "--id", "m-2"])
        .await;
    assert_eq!(json_lines(&out)[0]["seq"], 2);
    assert_eq!(json_lines(&out)[0]["duplicate"], true);

    let mut lines = BufReader::new(listen.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("listen printed nothing for 10 s")
        .unwrap()
    {
        got.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let status = tokio::time::timeout(Duration::from_secs(10), listen.wait())
        .await
        .expect("listen --count 2 did not exit")
        .unwrap();
    let mut err = String::new();
    listen.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    assert!(status.success(), "listen failed: {err}");
    assert_eq!(messages(&got), [(1, "hello bob"), (2, "second")], "{got:?}");
    for m in got.iter().filter(|v| v["type"] == "message") {
        assert_eq!(
            (m["from"].as_str(), m["to"].as_str(), m["chat"].as_u64()),
            (Some("alice"), Some("bob"), Some(1))
        );
        assert!(m["pos"].as_u64().is_some_and(|p| p > 0), "{m}");
        assert!(m["sent_at_ms"].as_i64().is_some_and(|t| t > 0), "{m}");
    }
    // Listen acknowledged what it printed: nothing left to sync.
    assert_eq!(env.ok(&bob, &["--json", "sync"]).await, "");

    let hist = json_lines(&env.ok(&bob, &["--json", "history", "alice"]).await);
    assert_eq!(messages(&hist), [(1, "hello bob"), (2, "second")]);
    assert!(hist.iter().all(|m| m["from"] == "alice" && m.get("pos").is_none()));
    let out = env
        .ok(&bob, &["history", "alice", "--before", "2", "--limit", "1"])
        .await;
    assert_eq!(out, "#1 alice: hello bob\n");

    // Bob's listen sent DELIVERED receipts: alice sees two ticks.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let chats = json_lines(&env.ok(&alice, &["--json", "chats"]).await);
        assert_eq!((chats.len(), chats[0]["peer"].as_str()), (1, Some("bob")));
        if chats[0]["peer_delivered_seq"] == 2 {
            assert_eq!(chats[0]["peer_read_seq"], 0);
            assert_eq!(chats[0]["last_seq"], 2);
            assert_eq!(chats[0]["last_text"], "second");
            break;
        }
        assert!(Instant::now() < deadline, "delivered receipt never landed: {chats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let chats = json_lines(&env.ok(&bob, &["--json", "chats"]).await);
    assert_eq!(
        (chats[0]["peer"].as_str(), chats[0]["unread"].as_u64()),
        (Some("alice"), Some(2))
    );
    assert_eq!(env.ok(&bob, &["read", "alice"]).await, "read up to #2\n");
    let chats = json_lines(&env.ok(&alice, &["--json", "chats"]).await);
    assert_eq!(chats[0]["peer_read_seq"], 2);
    assert_eq!(
        env.ok(&alice, &["chats"]).await,
        "bob  unread 0  last #2 alice: second  (sent ticks: delivered #2, read #2)\n"
    );
    let chats = json_lines(&env.ok(&bob, &["--json", "chats"]).await);
    assert_eq!(
        (chats[0]["unread"].as_u64(), chats[0]["my_read_seq"].as_u64()),
        (Some(0), Some(2))
    );

    // Sync: alice's device fetches the receipts; a second sync is empty.
    let synced = json_lines(&env.ok(&alice, &["--json", "sync"]).await);
    assert!(
        synced
            .iter()
            .any(|e| e["type"] == "receipt" && e["user"] == "bob" && e["kind"] == "read" && e["seq"] == 2),
        "{synced:?}"
    );
    assert_eq!(env.ok(&alice, &["--json", "sync"]).await, "");

    // `listen --count 1` with two messages waiting prints one and leaves the
    // other unacknowledged for the next sync.
    env.ok(&alice, &["send", "bob", "third"]).await;
    env.ok(&alice, &["send", "bob", "fourth"]).await;
    // (Bob's own READ receipt from `quip read` comes first: it is in his log.)
    let out = env.ok(&bob, &["listen", "--count", "1"]).await;
    assert_eq!(out, "[chat 1] bob read up to #2\n[chat 1 #3] alice: third\n");
    let out = json_lines(&env.ok(&bob, &["--json", "sync"]).await);
    assert_eq!(messages(&out), [(4, "fourth")]);
    assert_eq!(env.ok(&bob, &["sync"]).await, "");

    // Errors: one line on stderr, non-zero exit.
    let eve = dir.path().join("eve");
    let err = env
        .fails(&eve, &["login", "alice", "--password", "wrong-password"])
        .await;
    assert!(err.contains("invalid username or password"), "{err}");
    assert!(!eve.join("profile.json").exists());
    let err = env.fails(&dir.path().join("nobody"), &["send", "bob", "hi"]).await;
    assert!(err.contains("not logged in"), "{err}");
    let err = env.fails(&alice, &["send", "nosuchuser", "hi"]).await;
    assert!(err.contains("NotFound") && err.contains("no user"), "{err}");

    // A second device of alice's; logging out revokes only this one.
    let alice2 = dir.path().join("alice2");
    let out = env
        .ok(
            &alice2,
            &["login", "alice", "--password", "alice-secret-1", "--device", "laptop"],
        )
        .await;
    assert_eq!(out, "logged in as alice (device 2)\n");
    assert_eq!(
        env.ok(&alice, &["whoami"]).await,
        format!("alice (device 1) on {}\n", env.addr)
    );
    assert_eq!(env.ok(&alice, &["logout"]).await, "logged out alice\n");
    let err = env.fails(&alice, &["whoami"]).await;
    assert!(err.contains("not logged in"), "{err}");
    assert!(env.ok(&alice2, &["whoami"]).await.starts_with("alice (device 2)"));

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_groups_channels_presence_and_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let (env, stop, task) = start(dir.path());
    let home = |n: &str| dir.path().join(n);
    for n in ["ann", "ben", "cat"] {
        env.ok(&home(n), &["register", n, "--password", "secret-password"])
            .await;
    }

    // A group: created with members, a message into it, membership changes.
    let out = env
        .ok(&home("ann"), &["--json", "group", "create", "team", "ben"])
        .await;
    let info = &json_lines(&out)[0];
    assert_eq!(
        (info["type"].as_str(), info["kind"].as_str()),
        (Some("chat_info"), Some("group"))
    );
    let chat = format!("chat:{}", info["chat"].as_u64().unwrap());
    let out = env.ok(&home("ann"), &["send", &chat, "hello team"]).await;
    assert!(out.starts_with("sent seq 2 in chat"), "{out}");
    let out = env.ok(&home("ann"), &["group", "add", &chat, "cat"]).await;
    assert!(out.contains("3 members") && out.contains("ann (admin)"), "{out}");
    assert!(
        env.fails(&home("ben"), &["group", "rename", &chat, "mine"])
            .await
            .contains("only admins")
    );
    // Ben syncs: the creation, the message and the addition, in words.
    let out = env.ok(&home("ben"), &["sync"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].ends_with("* ann created \"team\" with ben"), "{out}");
    assert!(lines[1].ends_with("ann: hello team"), "{out}");
    assert!(lines[2].ends_with("* ann added cat"), "{out}");
    // Cat joined later: history starts at the addition.
    let out = env.ok(&home("cat"), &["history", &chat]).await;
    assert_eq!(out.trim(), "#3 * ann added cat");
    let out = env.ok(&home("ann"), &["chats"]).await;
    assert!(out.contains("group \"team\" (3 members)"), "{out}");
    let out = env.ok(&home("ann"), &["group", "receipts", &chat]).await;
    assert!(out.contains("ann: delivered #3, read #3"), "{out}");
    assert!(
        out.contains("ben: delivered #3"),
        "ben's sync confirmed delivery: {out}"
    );
    env.ok(&home("cat"), &["group", "leave", &chat]).await;
    assert!(
        env.fails(&home("cat"), &["history", &chat])
            .await
            .contains("not a participant")
    );

    // A channel: create, subscribe, post, read from the read position.
    let out = env.ok(&home("ann"), &["--json", "channel", "create", "news"]).await;
    let news = format!("chat:{}", json_lines(&out)[0]["chat"].as_u64().unwrap());
    let out = env.ok(&home("ben"), &["channel", "subscribe", &news]).await;
    // A channel's info lists its admins, and counts every subscriber.
    assert!(out.contains("\"news\": 2 subscribers; admins: ann"), "{out}");
    env.ok(&home("ann"), &["channel", "post", &news, "first post"]).await;
    env.ok(&home("ann"), &["send", &news, "second post"]).await;
    assert!(
        env.fails(&home("ben"), &["channel", "post", &news, "me too"])
            .await
            .contains("only admins")
    );
    let out = env.ok(&home("ben"), &["channel", "read", &news]).await;
    let posts: Vec<&str> = out.lines().collect();
    assert_eq!(posts.len(), 2, "{out}");
    assert!(
        posts[0].ends_with("ann: first post") && posts[1].ends_with("ann: second post"),
        "{out}"
    );
    assert_eq!(env.ok(&home("ben"), &["channel", "read", &news]).await, "", "all read");

    // Presence, privacy and blocking.
    let out = env.ok(&home("ben"), &["presence", "ann", "nobody-at-all"]).await;
    assert!(out.contains("ann is "), "{out}");
    assert!(out.contains("nobody-at-all is hidden"), "{out}");
    env.ok(&home("ann"), &["last-seen", "nobody"]).await;
    assert_eq!(env.ok(&home("ben"), &["presence", "ann"]).await.trim(), "ann is hidden");
    let out = env.ok(&home("ann"), &["block", "ben"]).await;
    assert_eq!(out.trim(), "blocked ben; blocking: ben");
    env.ok(&home("ben"), &["send", "ann", "let me in"]).await;
    let out = env.ok(&home("ann"), &["sync"]).await;
    assert!(!out.contains("let me in"), "{out}");
    env.ok(&home("ann"), &["unblock", "ben"]).await;
    let (ok, _, err) = env.run(&home("ann"), &["send", "chat:x", "hi"]).await;
    assert!(!ok && err.contains("bad chat id"), "{err}");
    let (ok, _, err) = env.run(&home("ann"), &["send", "a:b", "hi"]).await;
    assert!(!ok && err.contains("neither a username nor chat:ID"), "{err}");

    // `quip listen` shows typing (a transient event, never acknowledged).
    let mut listen = env
        .quip(&home("ben"))
        .args(["--json", "listen"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listen.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_typing = false;
    while !saw_typing && Instant::now() < deadline {
        // Typing is best-effort: repeat until the listener, once connected, sees one.
        env.ok(&home("ann"), &["typing", "ben"]).await;
        while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await {
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["type"] == "typing" && v["user"] == "ann" {
                saw_typing = true;
                break;
            }
        }
    }
    assert!(saw_typing, "listen showed no typing event");
    listen.kill().await.unwrap();

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

// Groups and channels as `sync` and `listen` see them: membership events in
// words, "everyone" receipts, and channel posts, which arrive as pos-0
// announcements that are printed but never acknowledged and never confirmed
// as delivered.

/// Waits for a listener started with `--count` to exit; returns what is
/// left of its stdout.
async fn finish(mut child: Child) -> String {
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("listen --count did not exit")
        .unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out).await.unwrap();
    }
    child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    assert!(status.success(), "listen failed: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_channels_in_sync_and_listen() {
    let dir = tempfile::tempdir().unwrap();
    let (env, stop, task) = start(dir.path());
    let home = |n: &str| dir.path().join(n);
    let (ann, ben, cat) = (home("ann"), home("ben"), home("cat"));
    for (h, n) in [(&ann, "ann"), (&ben, "ben"), (&cat, "cat")] {
        env.ok(h, &["register", n, "--password", "secret-password"]).await;
    }

    // Ann creates a group with ben and cat and writes into it by chat:ID.
    let info = json_lines(&env.ok(&ann, &["--json", "group", "create", "team", "ben", "cat"]).await);
    let id = info[0]["chat"].as_u64().unwrap();
    let g = format!("chat:{id}");
    assert_eq!(info[0]["member_count"], 3, "{info:?}");
    let out = env.ok(&ann, &["send", &g, "hello all"]).await;
    assert_eq!(out, format!("sent seq 2 in chat {id}\n"));

    // Ben's sync: the creation as an event in words, then the message.
    let events = json_lines(&env.ok(&ben, &["--json", "sync"]).await);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (
            events[0]["type"].as_str(),
            events[0]["event"].as_str(),
            events[0]["by"].as_str()
        ),
        (Some("group_event"), Some("created"), Some("ann")),
        "{events:?}"
    );
    assert_eq!(
        (events[0]["chat"].as_u64(), events[0]["seq"].as_u64()),
        (Some(id), Some(1))
    );
    assert_eq!(
        (
            events[1]["type"].as_str(),
            events[1]["text"].as_str(),
            events[1]["seq"].as_u64()
        ),
        (Some("message"), Some("hello all"), Some(2)),
        "{events:?}"
    );
    // Cat's, as text.
    let out = env.ok(&cat, &["sync"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with(&format!("[chat {id} #1] ")), "{out}");
    assert!(lines[0].contains("ann created \"team\" with ben, cat"), "{out}");
    assert_eq!(lines[1], format!("[chat {id} #2] ann: hello all"), "{out}");

    // Both syncs confirmed delivery: ann gets one aggregated receipt.
    let out = json_lines(&env.ok(&ann, &["--json", "sync"]).await);
    let everyone: Vec<&Value> = out
        .iter()
        .filter(|e| e["type"] == "receipt" && e["everyone"] == true)
        .collect();
    assert_eq!(everyone.len(), 1, "{out:?}");
    assert_eq!(
        (
            everyone[0]["kind"].as_str(),
            everyone[0]["seq"].as_u64(),
            everyone[0]["chat"].as_u64()
        ),
        (Some("delivered"), Some(2), Some(id))
    );
    // Reading by both gives "read by everyone", printed as such.
    env.ok(&ben, &["read", &g]).await;
    env.ok(&cat, &["read", &g]).await;
    let out = env.ok(&ann, &["sync"]).await;
    assert!(out.contains(&format!("[chat {id}] everyone read up to #2")), "{out}");
    let chats = json_lines(&env.ok(&ann, &["--json", "chats"]).await);
    let team = chats.iter().find(|c| c["chat"] == id).expect("group listed");
    assert_eq!(
        (
            team["kind"].as_str(),
            team["name"].as_str(),
            team["member_count"].as_u64()
        ),
        (Some("group"), Some("team"), Some(3))
    );
    assert_eq!(
        (team["peer_delivered_seq"].as_u64(), team["peer_read_seq"].as_u64()),
        (Some(2), Some(2))
    );

    // Membership changes reach a listening member live, in words.
    let listen = env.listen(&ben, &["listen", "--count", "2"]);
    env.ok(&ann, &["group", "rename", &g, "crew"]).await;
    env.ok(&ann, &["group", "remove", &g, "cat"]).await;
    let out = finish(listen).await;
    let prefix = format!("[chat {id} #");
    let msgs: Vec<&str> = out.lines().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(msgs.len(), 2, "{out}");
    assert!(msgs[0].contains("ann renamed the chat to \"crew\""), "{out}");
    assert!(msgs[1].contains("ann removed cat"), "{out}");
    let info = json_lines(&env.ok(&ben, &["--json", "group", "info", &g]).await);
    assert_eq!(
        (info[0]["name"].as_str(), info[0]["member_count"].as_u64()),
        (Some("crew"), Some(2))
    );

    // A channel: ben subscribes and listens. The group message proves his
    // listener is connected (so watching the channel) before ann posts.
    let out = json_lines(&env.ok(&ann, &["--json", "channel", "create", "news"]).await);
    let ch = out[0]["chat"].as_u64().unwrap();
    let c = format!("chat:{ch}");
    env.ok(&ben, &["channel", "subscribe", &c]).await;
    let mut listen = env.listen(&ben, &["--json", "listen", "--count", "2"]);
    let mut lines = BufReader::new(listen.stdout.take().unwrap()).lines();
    env.ok(&ann, &["send", &g, "ping"]).await;
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("listen printed nothing for 10 s")
            .unwrap()
            .expect("listen ended early");
        if serde_json::from_str::<Value>(&line).unwrap()["text"] == "ping" {
            break;
        }
    }
    let out = env.ok(&ann, &["channel", "post", &c, "breaking"]).await;
    assert!(out.contains(&format!("in chat {ch}")), "{out}");
    let mut rest = Vec::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the channel post was not printed within 10 s")
        .unwrap()
    {
        rest.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    finish(listen).await;
    let post = rest.iter().find(|e| e["type"] == "message").expect("post printed");
    assert_eq!(
        (post["chat"].as_u64(), post["from"].as_str(), post["text"].as_str()),
        (Some(ch), Some("ann"), Some("breaking")),
        "{rest:?}"
    );
    assert!(post.get("pos").is_none(), "an announcement is not a log entry: {post}");

    // Not in the log, so nothing to sync; and no DELIVERED sent for it.
    assert_eq!(env.ok(&ben, &["--json", "sync"]).await, "");
    let chats = json_lines(&env.ok(&ben, &["--json", "chats"]).await);
    let news = chats.iter().find(|c| c["chat"] == ch).expect("channel listed");
    assert_eq!(news["kind"], "channel");
    assert_eq!(
        (news["unread"].as_u64(), news["my_delivered_seq"].as_u64()),
        (Some(1), Some(1)),
        "{news}"
    );
    // Printing it live did not mark it read: `channel read` shows it, then
    // nothing.
    assert_eq!(env.ok(&ben, &["channel", "read", &c]).await, "#2 ann: breaking\n");
    assert_eq!(env.ok(&ben, &["channel", "read", &c]).await, "");
    let out = env.ok(&ben, &["channel", "read", &c, "--after", "0"]).await;
    assert!(out.ends_with("#2 ann: breaking\n"), "{out}");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_file_and_download_resume_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (env, stop, task) = start(dir.path());
    let (alice, bob, carol) = (
        dir.path().join("alice"),
        dir.path().join("bob"),
        dir.path().join("carol"),
    );
    for (home, name) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        env.ok(home, &["register", name, "--password", "password-1234"]).await;
    }
    // 3 MiB of varied bytes, with a name the content type is guessed from.
    let bytes: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let photo = dir.path().join("holiday.png");
    std::fs::write(&photo, &bytes).unwrap();
    // A stale resume record (an upload the server no longer has) is
    // discarded and the upload starts over.
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    std::fs::create_dir_all(alice.join("uploads")).unwrap();
    std::fs::write(alice.join("uploads").join(&sha), "0123456789abcdef0123456789abcdef").unwrap();

    let out = env
        .ok(
            &alice,
            &[
                "--json",
                "send-file",
                "bob",
                photo.to_str().unwrap(),
                "--caption",
                "the beach",
            ],
        )
        .await;
    let sent = &json_lines(&out)[0];
    assert_eq!(sent["sha256"].as_str(), Some(sha.as_str()));
    let id = sent["media"].as_str().unwrap().to_owned();
    assert!(
        !alice.join("uploads").join(&sha).exists(),
        "resume record removed once done"
    );

    // Bob sees a media message in his history, with the guessed type.
    let hist = json_lines(&env.ok(&bob, &["--json", "history", "alice"]).await);
    let m = &hist[0]["media"];
    assert_eq!(
        (
            m["id"].as_str(),
            m["type"].as_str(),
            m["file_name"].as_str(),
            m["size"].as_u64()
        ),
        (Some(id.as_str()), Some("image/png"), Some("holiday.png"), Some(3 << 20))
    );
    assert_eq!(hist[0]["text"], "the beach");
    let human = env.ok(&bob, &["history", "alice"]).await;
    assert!(
        human.contains(&format!("[image/png holiday.png, 3145728 bytes, media {id}] the beach")),
        "{human}"
    );

    // Bob downloads it; a partial file from an interrupted attempt is
    // continued, and the result is verified against the SHA-256.
    let dest = dir.path().join("got.png");
    std::fs::write(dir.path().join(format!(".{id}.part")), &bytes[..1 << 20]).unwrap();
    let out = env.ok(&bob, &["download", &id, "-o", dest.to_str().unwrap()]).await;
    assert!(out.contains("sha256 verified"), "{out}");
    assert!(std::fs::read(&dest).unwrap() == bytes);
    // A corrupt partial file is caught by the hash check, not kept.
    let dest2 = dir.path().join("got2.png");
    let mut wrong = bytes[..1 << 20].to_vec();
    wrong[7] ^= 0xff;
    std::fs::write(dir.path().join(format!(".{id}.part")), &wrong).unwrap();
    let err = env.fails(&bob, &["download", &id, "-o", dest2.to_str().unwrap()]).await;
    assert!(err.contains("do not match"), "{err}");
    assert!(!dest2.exists());
    env.ok(&bob, &["download", &id, "-o", dest2.to_str().unwrap()]).await;
    assert!(std::fs::read(&dest2).unwrap() == bytes);

    // Carol is in no chat with it: refused, exactly like an unknown id.
    let err = env
        .fails(&carol, &["download", &id, "-o", dir.path().join("c").to_str().unwrap()])
        .await;
    assert!(err.contains("NotFound"), "{err}");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// Stops a server started with [`start`] gracefully.
async fn stop_server(stop: tokio::sync::oneshot::Sender<()>, task: ServerTask) {
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// The next message a `--json` listener printed (presence and receipts
/// skipped), within 10 s.
async fn next_json(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("listen printed nothing for 10 s")
            .unwrap()
            .expect("listen still running");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "message" {
            return v;
        }
    }
}

/// Issue 21: a server that does not answer fails the command within a few
/// seconds with a hint; an untrusted certificate says how to trust it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_quick_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (env, stop, task) = start(dir.path());
    let home = dir.path().join("zed");

    // Nobody answers on this UDP port (the socket is bound and never read).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let nowhere = Env {
        addr: addr.clone(),
        ca: env.ca.clone(),
    };
    let started = Instant::now();
    let err = nowhere
        .fails(&home, &["register", "zed", "--password", "zed-secret-1"])
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!("no answer from {addr} over UDP")) && err.contains("is quipd running"),
        "{err}"
    );
    let v = nowhere
        .json_error(
            &home,
            &[
                "--connect-timeout",
                "1",
                "register",
                "zed",
                "--password",
                "zed-secret-1",
            ],
            6,
        )
        .await;
    assert_eq!(v["code"], "CANNOT_CONNECT");

    // Without the dev certificate: what to do about it.
    let mut c = env.quip(&home);
    c.env_remove("QUIP_CA")
        .args(["register", "zed", "--password", "zed-secret-1"]);
    let out = c.output().await.unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("UnknownIssuer") && err.contains("--ca <data-dir>/dev-cert.pem") && err.contains("QUIP_CA"),
        "{err}"
    );
    stop_server(stop, task).await;
}

/// Issue 21: distinct exit statuses, and with `--json` one JSON object on
/// stderr carrying the error code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_documented_exit_codes_and_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (env, stop, task) = start(dir.path());
    let alice = dir.path().join("alice");
    env.ok(&alice, &["register", "alice", "--password", "alice-secret-1"])
        .await;
    let nobody = dir.path().join("nobody");

    let v = env.json_error(&alice, &["send"], 2).await;
    assert_eq!(v["code"], "USAGE");
    assert!(v["message"].as_str().unwrap().contains("<TARGET> <TEXT>"), "{v}");
    let (status, _, err) = env.status(&alice, &["send"]).await;
    assert_eq!(status, 2, "{err}");
    let v = env.json_error(&alice, &["group", "create", ""], 2).await;
    assert_eq!(v["code"], "INVALID_ARGUMENT");
    let v = env.json_error(&nobody, &["whoami"], 3).await;
    assert_eq!(v["code"], "NOT_LOGGED_IN");
    let v = env
        .json_error(&nobody, &["login", "alice", "--password", "wrong-password"], 3)
        .await;
    assert_eq!(v["code"], "INVALID_CREDENTIALS");
    let v = env.json_error(&alice, &["send", "nosuchuser", "hi"], 4).await;
    assert_eq!(v["code"], "NOT_FOUND");
    let v = env.json_error(&alice, &["history", "chat:999"], 4).await;
    assert_eq!(v["code"], "NOT_FOUND");
    let v = env
        .json_error(&nobody, &["register", "alice", "--password", "another-secret"], 5)
        .await;
    assert_eq!(v["code"], "USERNAME_TAKEN");
    // Text mode: one line, the same status.
    let (status, _, err) = env.status(&alice, &["send", "nosuchuser", "hi"]).await;
    assert_eq!((status, err.lines().count()), (4, 1), "{err}");
    // The table is in --help.
    let help = env.ok(&alice, &["--help"]).await;
    assert!(
        help.contains("Exit status:") && help.contains("7  rate limited"),
        "{help}"
    );
    stop_server(stop, task).await;
}

/// Issue 21: `quip send bob -` sends standard input; completions and a
/// manual page; `1 member`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_from_stdin_completions_man_page_and_wording() {
    let dir = tempfile::tempdir().unwrap();
    let (env, stop, task) = start(dir.path());
    let (alice, bob) = env.alice_and_bob(dir.path()).await;

    let mut send = env
        .quip(&alice)
        .args(["send", "bob", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = send.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"two lines\nfrom stdin\n")
        .await
        .unwrap();
    drop(stdin);
    assert!(send.wait().await.unwrap().success());
    let hist = json_lines(&env.ok(&bob, &["--json", "history", "alice"]).await);
    assert_eq!(messages(&hist), [(1, "two lines\nfrom stdin")]);

    let out = env.ok(&alice, &["group", "create", "solo"]).await;
    assert!(out.contains("\"solo\": 1 member of at most"), "{out}");
    assert!(env.ok(&alice, &["chats"]).await.contains("(1 member)"));

    for (shell, marker) in [
        ("bash", "_quip()"),
        ("zsh", "#compdef quip"),
        ("fish", "complete -c quip"),
    ] {
        let out = env.ok(&alice, &["completions", shell]).await;
        assert!(out.contains(marker) && out.contains("listen"), "{shell}: {out}");
    }
    let man = env.ok(&alice, &["man"]).await;
    assert!(man.contains(".TH quip") && man.contains("listen"), "{man}");
    stop_server(stop, task).await;
}

/// Issue 21: `quip listen` outlives a server restart: it says it lost the
/// connection, reconnects and catches up, printing every message once;
/// `--once` exits instead (status 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_reconnects_after_a_server_restart_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (env, stop, task) = start(dir.path());
    let (alice, bob) = env.alice_and_bob(dir.path()).await;

    let mut listen = env.listen(&bob, &["--json", "listen", "--count", "4"]);
    let mut once = env.listen(&alice, &["listen", "--once"]);
    let mut lines = BufReader::new(listen.stdout.take().unwrap()).lines();
    env.ok(&alice, &["send", "bob", "one"]).await;
    assert_eq!(next_json(&mut lines).await["text"], "one");

    stop_server(stop, task).await;
    let status = tokio::time::timeout(Duration::from_secs(10), once.wait())
        .await
        .expect("listen --once exits when the server goes")
        .unwrap();
    let mut err = String::new();
    once.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    assert_eq!(status.code(), Some(6), "{err}");
    assert!(err.contains("ServerShutdown"), "{err}");

    // The same address and data; messages sent before bob's listener is
    // back come with its sync, later ones by push.
    let mut config = Config::for_tests(dir.path().join("data"));
    config.listen = env.addr.parse().unwrap();
    config.no_https = true;
    let (env, stop, task) = start_with(config);
    env.ok(&alice, &["send", "bob", "two"]).await;
    env.ok(&alice, &["send", "bob", "three"]).await;
    assert_eq!(next_json(&mut lines).await["text"], "two");
    assert_eq!(next_json(&mut lines).await["text"], "three");
    env.ok(&alice, &["send", "bob", "four"]).await;
    assert_eq!(next_json(&mut lines).await["text"], "four");
    let status = tokio::time::timeout(Duration::from_secs(10), listen.wait())
        .await
        .expect("listen --count 4 exits")
        .unwrap();
    let mut err = String::new();
    listen.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    assert!(status.success(), "{err}");
    let said: Vec<Value> = err.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        said.first().map(|v| v["type"].clone()),
        Some("reconnecting".into()),
        "{err}"
    );
    assert_eq!(
        said.last().map(|v| v["type"].clone()),
        Some("reconnected".into()),
        "{err}"
    );
    assert!(said[0]["message"].as_str().unwrap().contains("ServerShutdown"), "{err}");
    // Nothing left over, nothing twice: the log is acknowledged to its end.
    assert_eq!(env.ok(&bob, &["sync"]).await, "");
    stop_server(stop, task).await;
}

/// Retention: `quip history` says where a chat's history now starts, and
/// `quip sync` on a device that was away longer than the retention period
/// says which events expired and acknowledges past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_sync_say_what_retention_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("data"));
    config.retention_secs = Some(1);
    config.retention_sweep_secs = 1;
    let server = Server::bind(config).unwrap();
    let store = server.store();
    let env = Env {
        addr: server.local_addr().to_string(),
        ca: server.dev_cert().unwrap().clone(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let (alice, bob) = env.alice_and_bob(dir.path()).await;
    env.ok(&alice, &["send", "bob", "soon gone"]).await;
    env.ok(&alice, &["send", "bob", "gone too"]).await;

    // Until the sweep has trimmed bob's log (user 2) past both messages.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let floor = quip_server::store::read(&*store, |t| quip_server::service::retention::log_floor(t, 2)).unwrap();
        if floor == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "bob's log was not trimmed (floor {floor})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, out, err) = env.run(&alice, &["history", "bob"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "", "nothing is left to show");
    assert!(
        err.contains("messages before seq 3 expired under the server's retention policy"),
        "{err}"
    );
    let (ok, out, err) = env.run(&bob, &["--json", "sync"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "");
    let said = json_lines(&err);
    assert_eq!(said.len(), 1, "{err}");
    assert_eq!(said[0]["type"], "expired", "{err}");
    assert!(
        said[0]["message"].as_str().unwrap().contains("events 1 to 2 expired"),
        "{err}"
    );
    // Acknowledged past them: the next sync has nothing to say.
    let (ok, out, err) = env.run(&bob, &["sync"]).await;
    assert!(ok && out.is_empty() && err.is_empty(), "{out}{err}");
    stop_server(stop, task).await;
}

/// Issue 21: SIGTERM ends `quip listen` as Ctrl-C does, closing the
/// connection with a goodbye: contacts see the user offline at once, not
/// after the 30 s grace period.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_listen_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (env, stop, task) = start(dir.path());
    let (alice, bob) = env.alice_and_bob(dir.path()).await;
    env.ok(&alice, &["send", "bob", "hi"]).await;

    let mut listen = env.listen(&bob, &["--json", "listen"]);
    let mut lines = BufReader::new(listen.stdout.take().unwrap()).lines();
    assert_eq!(next_json(&mut lines).await["text"], "hi");
    let presence = async || json_lines(&env.ok(&alice, &["--json", "presence", "bob"]).await).remove(0);
    assert_eq!(presence().await["online"], true);

    let pid = listen.id().unwrap().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(5), listen.wait())
        .await
        .expect("listen exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The goodbye reached the server: offline well within the grace period.
    let deadline = Instant::now() + Duration::from_secs(5);
    while presence().await["online"] == true {
        assert!(Instant::now() < deadline, "bob still online after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_server(stop, task).await;
}

/// Issue 21: `[v6]:port` reaches a server on IPv6 loopback, the host part
/// naming the certificate (the dev certificate covers `::1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bracketed_ipv6_server_address_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("data"));
    config.listen = "[::1]:0".parse().unwrap();
    config.no_https = true;
    let (env, stop, task) = start_with(config);
    assert!(env.addr.starts_with("[::1]:"), "{}", env.addr);
    let out = env
        .ok(
            &dir.path().join("ann"),
            &["register", "ann", "--password", "ann-secret-12"],
        )
        .await;
    assert_eq!(out.trim(), "registered ann (device 1)");
    stop_server(stop, task).await;
}
