//! `quipd admin …` end to end: a real quipd process with its admin
//! listener, the real `quipd admin` binary reading the token from the data
//! directory, and real QUIC clients that see the effects (spec §12 close
//! code 10, README "Administering").

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::PASSWORD;
use common::daemon::{Daemon, free_port, quipd};
use quip_client::{Client, ConnectOptions};
use quip_protocol::CloseCode;
use quip_protocol::v1::ErrorCode;
use serde_json::Value;

/// A quipd with its admin listener on loopback, and what its tests need.
struct Admin {
    _daemon: Daemon,
    data: PathBuf,
    port: u16,
    ca: PathBuf,
    admin: SocketAddr,
}

impl Admin {
    async fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_logged(dir, args, None).await
    }

    /// With `log`: quipd's JSON log at info goes there.
    async fn start_logged(dir: &Path, args: &[&str], log: Option<&Path>) -> Self {
        let data = dir.join("data");
        let port = free_port();
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let admin_arg = admin.to_string();
        let mut all = vec!["--admin-listen", &admin_arg];
        all.extend_from_slice(args);
        let daemon = match log {
            Some(log) => {
                all.extend_from_slice(&["--log-format", "json", "--log", "info"]);
                Daemon::start_logged(&data, port, &all, log)
            }
            None => Daemon::start(&data, port, &all),
        };
        let ca = Daemon::ready(&data).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http(admin, "GET", "/readyz", None).await, Ok((200, _))) {
            assert!(Instant::now() < deadline, "the admin listener never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            _daemon: daemon,
            data,
            port,
            ca,
            admin,
        }
    }

    /// Runs `quipd admin <args>` against this server.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(quipd());
        cmd.arg("admin")
            .args(["--data-dir", self.data.to_str().unwrap()])
            .args(["--admin-listen", &self.admin.to_string()])
            .args(args)
            .env_remove("QUIP_ADMIN_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let input = stdin.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().unwrap();
            let mut pipe = child.stdin.take().unwrap();
            if let Some(input) = input {
                std::io::Write::write_all(&mut pipe, input.as_bytes()).unwrap();
            }
            drop(pipe);
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }

    /// `quipd admin <args> --json`, which must succeed: its output parsed.
    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all, None).await;
        assert!(
            out.status.success(),
            "quipd admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    async fn connect(&self) -> Client {
        Client::connect(&self.options()).await.expect("connect")
    }

    fn options(&self) -> ConnectOptions {
        ConnectOptions::new(format!("127.0.0.1:{}", self.port), Some(&self.ca))
            .unwrap()
            .keep_alive(Duration::from_millis(250))
            .unwrap()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// One HTTP/1.1 request (plain, `Connection: close`): status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> std::io::Result<(u16, String)> {
    let (status, _, body) = common::plain_http::request(addr, method, path, auth).await?;
    Ok((status, body))
}

/// Waits for the connection's close, within 10 s.
async fn closed(c: &Client) -> (Option<CloseCode>, String) {
    tokio::time::timeout(Duration::from_secs(10), c.closed())
        .await
        .expect("the connection was not closed")
}

#[tokio::test]
async fn the_admin_api_needs_the_token_from_an_owner_only_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = Admin::start(dir.path(), &[]).await;
    let mode = std::fs::metadata(s.data.join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin-token is not 0600");
    let token = s.token();
    assert!(token.len() >= 40, "a short token: {} bytes", token.len());

    for auth in [
        None,
        Some("Bearer qa1_wrong"),
        Some("Basic Zm9vOmJhcg=="),
        Some("Bearer "),
    ] {
        for (method, path) in [
            ("GET", "/admin/v1/stats"),
            ("GET", "/admin/v1/users"),
            ("POST", "/admin/v1/users/bob/disable"),
        ] {
            let (status, body) = http(s.admin, method, path, auth).await.unwrap();
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "UNAUTHENTICATED");
        }
    }
    let (status, body) = http(s.admin, "GET", "/admin/v1/stats", Some(&format!("Bearer {token}")))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // The probes stay open to scrapers.
    assert_eq!(http(s.admin, "GET", "/healthz", None).await.unwrap().0, 200);

    // `quipd admin` with another data directory's token is refused too.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("admin-token"), "qa1_not-the-servers-token\n").unwrap();
    let out = Command::new(quipd())
        .args(["admin", "--data-dir", other.to_str().unwrap()])
        .args(["--admin-listen", &s.admin.to_string(), "stats"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));

    // The token survives a restart.
    drop(s);
    let again = Admin::start(dir.path(), &[]).await;
    assert_eq!(again.token(), token);
}

#[tokio::test]
async fn unlock_lets_a_throttled_user_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let s = Admin::start(dir.path(), &["--login-failures-per-account", "2"]).await;
    let bob = s.connect().await;
    bob.register("bob", PASSWORD, "phone").await.unwrap();

    let c = s.connect().await;
    for _ in 0..2 {
        let e = c.login("bob", "a wrong password", "laptop").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials));
    }
    let e = c.login("bob", PASSWORD, "laptop").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
    assert_eq!(s.json(&["users", "show", "bob"]).await["locked"], true);

    let v = s.json(&["users", "unlock", "bob"]).await;
    assert_eq!(v["was_throttled"], true);
    c.login("bob", PASSWORD, "laptop").await.unwrap();
    assert_eq!(s.json(&["users", "show", "bob"]).await["locked"], false);

    // Text output, and an unknown user.
    let out = s.run(&["users", "unlock", "bob"], None).await;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "unlocked bob\n");
    let out = s.run(&["users", "unlock", "nobody"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
}

#[tokio::test]
async fn kick_closes_the_session_with_code_10() {
    let dir = tempfile::tempdir().unwrap();
    let s = Admin::start(dir.path(), &[]).await;
    let phone = s.connect().await;
    let auth = phone.register("carol", PASSWORD, "phone").await.unwrap();
    let laptop = s.connect().await;
    let laptop_auth = laptop.login("carol", PASSWORD, "laptop").await.unwrap();

    let sessions = s.json(&["sessions", "list", "carol"]).await;
    let rows = sessions.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{sessions}");
    assert_eq!(rows[0]["device"], auth.device_id);
    assert_eq!(rows[0]["device_name"], "phone");
    assert_eq!(rows[0]["connections"], 1);

    // One device.
    let v = s
        .json(&["sessions", "kick", "carol", &laptop_auth.device_id.to_string()])
        .await;
    assert_eq!(v["closed_devices"], 1);
    let (code, reason) = closed(&laptop).await;
    assert_eq!(code, Some(CloseCode::Kicked), "{reason}");
    assert!(reason.contains("operator"), "{reason}");
    assert!(phone.whoami().await.is_ok(), "the other device stayed");

    // All of them; the token still works afterwards.
    let out = s.run(&["sessions", "kick", "carol"], None).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("kicked carol"));
    assert_eq!(closed(&phone).await.0, Some(CloseCode::Kicked));
    let back = Client::connect(&s.options().token(&auth.token)).await.unwrap();
    assert_eq!(back.whoami().await.unwrap().user, "carol");
}

#[tokio::test]
async fn disable_refuses_login_and_enable_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Admin::start(dir.path(), &[]).await;
    let dave = s.connect().await;
    let auth = dave.register("dave", PASSWORD, "phone").await.unwrap();

    let v = s.json(&["users", "disable", "dave"]).await;
    assert_eq!(v["revoked_sessions"], 1);
    assert_eq!(closed(&dave).await.0, Some(CloseCode::Kicked));

    let c = s.connect().await;
    let e = c.login("dave", PASSWORD, "laptop").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");
    assert!(e.to_string().contains("account disabled"), "{e}");
    // A wrong password still says only that.
    let e = c.login("dave", "not the password", "laptop").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials));
    // The token was revoked.
    let e = Client::connect(&s.options().token(&auth.token))
        .await
        .err()
        .expect("a revoked token is refused");
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated), "{e}");

    let users = s.json(&["users", "list"]).await;
    assert_eq!(users[0]["name"], "dave");
    assert_eq!(users[0]["disabled"], true);
    let out = s.run(&["users", "list"], None).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("disabled"));

    s.json(&["users", "enable", "dave"]).await;
    c.login("dave", PASSWORD, "laptop").await.unwrap();
    assert_eq!(s.json(&["users", "show", "dave"]).await["disabled"], false);
}

#[tokio::test]
async fn reset_password_refuses_the_old_and_accepts_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("quipd.log");
    let s = Admin::start_logged(dir.path(), &[], Some(&log)).await;
    let erin = s.connect().await;
    erin.register("erin", PASSWORD, "phone").await.unwrap();

    // A generated password, printed.
    let v = s.json(&["users", "reset-password", "erin"]).await;
    let new = v["password"].as_str().unwrap().to_owned();
    assert!(new.len() >= 16, "{v}");
    assert_eq!(v["revoked_sessions"], 1);
    assert_eq!(closed(&erin).await.0, Some(CloseCode::LoggedOut));
    let c = s.connect().await;
    let e = c.login("erin", PASSWORD, "laptop").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials));
    c.login("erin", &new, "laptop").await.unwrap();

    // One from stdin; too short is refused.
    const CHOSEN: &str = "a password from stdin 42";
    let out = s
        .run(
            &["users", "reset-password", "erin", "--password-stdin"],
            Some("short\n"),
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_ARGUMENT"));
    let out = s
        .run(
            &["users", "reset-password", "erin", "--password-stdin"],
            Some(&format!("{CHOSEN}\n")),
        )
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("password of erin changed"), "{text}");
    assert!(!text.contains(CHOSEN), "a chosen password is not echoed: {text}");
    let c = s.connect().await;
    assert!(c.login("erin", &new, "tablet").await.is_err());
    c.login("erin", CHOSEN, "tablet").await.unwrap();

    // Every action is in the audit log, with who asked and no secret.
    let token = s.token();
    let deadline = Instant::now() + Duration::from_secs(10);
    let audit: Vec<Value> = loop {
        let lines: Vec<Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let audit: Vec<Value> = lines.into_iter().filter(|l| l["target"] == "quip::audit").collect();
        if audit.len() >= 3 {
            break audit;
        }
        assert!(Instant::now() < deadline, "no audit lines: {audit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let results: Vec<(&str, &str)> = audit
        .iter()
        .map(|l| (l["action"].as_str().unwrap(), l["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        [
            ("users.reset-password", "OK"),
            ("users.reset-password", "INVALID_ARGUMENT"),
            ("users.reset-password", "OK")
        ]
    );
    for l in &audit {
        assert_eq!(l["subject"], "erin");
        assert_eq!(l["audit"], true);
        assert!(l["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{l}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [new.as_str(), CHOSEN, token.as_str()] {
        assert!(!text.contains(secret), "the log carries a secret");
    }
}

#[tokio::test]
async fn devices_list_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let s = Admin::start(dir.path(), &[]).await;
    let phone = s.connect().await;
    phone.register("frank", PASSWORD, "phone").await.unwrap();
    let laptop = s.connect().await;
    let l = laptop.login("frank", PASSWORD, "laptop").await.unwrap();

    let devices = s.json(&["devices", "list", "frank"]).await;
    let names: Vec<&str> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["phone", "laptop"]);
    assert_eq!(devices[1]["sessions"], 1);
    assert_eq!(devices[1]["connections"], 1);

    let v = s.json(&["devices", "revoke", "frank", &l.device_id.to_string()]).await;
    assert_eq!(v["revoked_sessions"], 1);
    assert_eq!(closed(&laptop).await.0, Some(CloseCode::LoggedOut));
    let e = Client::connect(&s.options().token(&l.token))
        .await
        .err()
        .expect("a revoked token is refused");
    assert_eq!(e.code(), Some(ErrorCode::Unauthenticated));
    assert!(phone.whoami().await.is_ok());
    let devices = s.json(&["devices", "list", "frank"]).await;
    assert_eq!(devices[1]["sessions"], 0);

    let out = s.run(&["devices", "revoke", "frank", "99"], None).await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn stats_count_users_connections_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = Admin::start(dir.path(), &[]).await;
    let a = s.connect().await;
    a.register("gina", PASSWORD, "phone").await.unwrap();
    let b = s.connect().await;
    b.register("hank", PASSWORD, "phone").await.unwrap();
    for i in 0..5 {
        a.send_text("hank", &format!("hello {i}")).await.unwrap();
    }
    // A send is counted once answered: maybe a moment after its reply.
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let v = s.json(&["stats"]).await;
        if v["messages"] == 5 || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(v["users"], 2, "{v}");
    assert_eq!(v["online"], 2, "{v}");
    assert_eq!(v["connections"], 2, "{v}");
    assert_eq!(v["chats"], 1, "{v}");
    assert_eq!(v["messages"], 5, "{v}");
    assert!(v["messages_per_sec"].as_f64().is_some(), "{v}");
    // The rate is sampled once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.json(&["stats"]).await["messages_per_sec"].as_f64().unwrap() <= 0.0 {
        assert!(Instant::now() < deadline, "messages per second stayed 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = s.run(&["stats"], None).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("users:            2"), "{text}");
}

#[tokio::test]
async fn quipd_admin_reads_the_servers_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = dir.path().join("quipd.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = {:?}\nadmin_listen = \"127.0.0.1:{admin_port}\"\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let _daemon = Daemon::start(&data, free_port(), &["--config", file.to_str().unwrap()]);
    Daemon::ready(&data).await;
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(http(admin, "GET", "/readyz", None).await, Ok((200, _))) {
        assert!(Instant::now() < deadline, "the admin listener never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Neither --data-dir nor --admin-listen: both come from the file.
    let out = Command::new(quipd())
        .args(["admin", "stats", "--json"])
        .env("QUIP_CONFIG", &file)
        .env_remove("QUIP_DATA_DIR")
        .env_remove("QUIP_ADMIN_LISTEN")
        .env_remove("QUIP_ADMIN_URL")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["users"], 0, "{v}");
}

#[tokio::test]
async fn groups_show_lists_members_not_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = Admin::start(dir.path(), &[]).await;
    let ivy = s.connect().await;
    ivy.register("ivy", PASSWORD, "phone").await.unwrap();
    let jack = s.connect().await;
    jack.register("jack", PASSWORD, "phone").await.unwrap();
    let created = ivy.create_group("book club", &["jack"]).await.unwrap();
    let id = created.info.unwrap().chat_id;

    let v = s.json(&["groups", "show", &id.to_string()]).await;
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["kind"], "group", "{v}");
    assert_eq!(v["name"], "book club", "{v}");
    assert_eq!(v["member_count"], 2, "{v}");
    let members: Vec<(&str, bool)> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"].as_str().unwrap(), m["admin"].as_bool().unwrap()))
        .collect();
    assert!(members.contains(&("ivy", true)), "{v}");
    assert!(members.contains(&("jack", false)), "{v}");

    let out = s.run(&["groups", "show", &id.to_string()], None).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name:          book club"), "{text}");
    assert!(text.contains("ivy (admin)"), "{text}");
    let out = s.run(&["groups", "show", "999999"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
}
