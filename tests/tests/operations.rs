//! Operating quipd: the admin listener's metrics and health probes, and
//! the structured (JSON) log, checked against a real quipd process after
//! a scripted conversation over real QUIC.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, free_port};
use common::{PASSWORD, TestServer};
use quip_client::{Client, ConnectOptions, UploadSpec};
use quip_protocol::Body;
use quip_protocol::v1::{self, ErrorCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

/// A TCP port that was free a moment ago, for the admin listener.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over plain HTTP/1.1: the status and the body; an error when
/// the connection is refused or closed without a response.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let (status, head, body) = common::plain_http::request(addr, "GET", path, None).await?;
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "bodies here have a length"
    );
    Ok((status, body))
}

/// Waits until the admin listener answers `/readyz` with 200.
async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = http_get(admin, "/readyz").await {
            return;
        }
        assert!(Instant::now() < deadline, "quipd's admin listener never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One scrape: series (name and sorted labels) to value.
type Scrape = BTreeMap<String, f64>;

/// Parses the text exposition format, checking each line as it goes:
/// comments are `# HELP name …` or `# TYPE name kind`, samples are
/// `name{label="value",…} number`, every sample's metric has a TYPE, and
/// names and labels are valid Prometheus identifiers. (promtool, when
/// installed, checks the same text again with Prometheus's own parser.)
fn parse(text: &str) -> Scrape {
    fn ident(s: &str) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut typed = std::collections::HashMap::new();
    let mut out = Scrape::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (what, name, tail) = (parts.next().unwrap(), parts.next().unwrap(), parts.next());
            assert!(ident(name), "bad metric name in {line:?}");
            match what {
                "HELP" => assert!(tail.is_some_and(|t| !t.is_empty()), "empty HELP: {line:?}"),
                "TYPE" => {
                    let kind = tail.unwrap();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line:?}"
                    );
                    typed.insert(name.to_string(), kind.to_string());
                }
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}")),
            ),
            None => (series, ""),
        };
        assert!(ident(name), "bad metric name in {line:?}");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| typed.get(*b).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(typed.contains_key(base), "sample without a TYPE: {line:?}");
        let mut pairs: Vec<(String, String)> = Vec::new();
        if !labels.is_empty() {
            for pair in labels.split("\",").map(|p| p.trim_end_matches('"')) {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(ident(k), "bad label name in {line:?}");
                pairs.push((k.to_string(), v.to_string()));
            }
        }
        pairs.sort();
        out.insert(
            key(
                name,
                &pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(),
            ),
            value,
        );
    }
    out
}

/// The series key for `name` with `labels` (any order).
fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels = labels.to_vec();
    labels.sort();
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", l.join(","))
}

/// A series' value, 0 when absent.
fn get(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape.get(&key(name, labels)).copied().unwrap_or(0.0)
}

async fn scrape(admin: SocketAddr) -> (String, Scrape) {
    let (status, body) = http_get(admin, "/metrics").await.expect("scrape");
    assert_eq!(status, 200, "{body}");
    let parsed = parse(&body);
    (body, parsed)
}

/// `promtool check metrics` on the scraped text, when promtool is
/// installed (scripts/install-test-deps.sh installs Debian's prometheus
/// package for it). Without it the format was still checked by [`parse`].
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not installed: the format was checked by this test's own parser only");
        return;
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scraped:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn connect(port: u16, ca: &Path) -> Client {
    let opts = ConnectOptions::new(format!("127.0.0.1:{port}"), Some(ca))
        .unwrap()
        .keep_alive(Duration::from_millis(250))
        .unwrap();
    Client::connect(&opts).await.expect("connect")
}

/// Polls the metrics until `ok` holds for a scrape (within 10 s).
async fn scrape_until(admin: SocketAddr, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, s) = scrape(admin).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s; last scrape {s:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scripted conversation moves the counters it should, by exactly what
/// it did, and `/metrics` passes promtool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_tcp_port());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let admin_arg = admin.to_string();
    let _daemon = Daemon::start(
        dir.path(),
        port,
        &[
            "--admin-listen",
            &admin_arg,
            // Small budgets, so the script can run into them.
            "--rate-limit",
            "1",
            "--rate-burst",
            "10",
            "--login-failures-per-account",
            "1",
        ],
    );
    let ca = Daemon::ready(dir.path()).await;
    wait_ready(admin).await;
    let (status, body) = http_get(admin, "/healthz").await.unwrap();
    assert_eq!((status, body.contains("\"ok\"")), (200, true), "{body}");

    let (_, before) = scrape(admin).await;
    assert_eq!(get(&before, "quip_registrations_total", &[]), 0.0);
    assert_eq!(
        get(&before, "quip_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );

    let alice = connect(port, &ca).await;
    alice.register("alice", PASSWORD, "phone").await.unwrap();
    let bob = connect(port, &ca).await;
    bob.register("bob", PASSWORD, "phone").await.unwrap();
    for i in 0..3 {
        alice.send_text("bob", &format!("hello {i}")).await.unwrap();
    }
    bob.history("alice", 0, 10).await.unwrap();

    // Media: 5,000 bytes in, and the same out.
    let bytes = vec![7u8; 5000];
    let spec = UploadSpec {
        size: bytes.len() as u64,
        sha256: Sha256::digest(&bytes).into(),
        content_type: "application/octet-stream".into(),
        file_name: "f.bin".into(),
        resume: None,
    };
    let done = alice
        .upload(&spec, &mut std::io::Cursor::new(bytes.clone()), |_| {})
        .await
        .unwrap();
    let mut back = Vec::new();
    alice
        .download(&done.media.unwrap().media_id, 0, 0, &mut back, |_| {})
        .await
        .unwrap();
    assert_eq!(back, bytes);

    // A wrong password, then (the account's one failure spent) a refusal.
    let eve = connect(port, &ca).await;
    let e = eve.login("bob", "not the password", "laptop").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials));
    let e = eve.login("bob", "not the password", "laptop").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RateLimited));

    // An anonymous connection past its request budget (burst 10, 1/s).
    let pinger = connect(port, &ca).await;
    let mut limited = 0;
    for _ in 0..30 {
        match pinger.request(Body::Ping(v1::PingRequest {})).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::RateLimited) => limited += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(limited >= 15, "only {limited} of 30 pings were refused");

    let (text, m) = scrape(admin).await;
    let requests = |kind: &str, code: &str| get(&m, "quip_requests_total", &[("kind", kind), ("code", code)]);
    assert_eq!(get(&m, "quip_registrations_total", &[]), 2.0);
    assert_eq!(requests("register", "OK"), 2.0);
    assert_eq!(requests("send", "OK"), 3.0);
    assert_eq!(requests("history", "OK"), 1.0);
    assert_eq!(requests("login", "INVALID_CREDENTIALS"), 1.0);
    assert_eq!(requests("login", "RATE_LIMITED"), 1.0);
    assert_eq!(requests("ping", "RATE_LIMITED"), f64::from(limited));
    assert_eq!(requests("ping", "OK"), f64::from(30 - limited));
    assert_eq!(get(&m, "quip_logins_total", &[("result", "failed")]), 1.0);
    assert_eq!(get(&m, "quip_logins_total", &[("result", "throttled")]), 1.0);
    assert_eq!(get(&m, "quip_logins_total", &[("result", "ok")]), 0.0);
    assert_eq!(
        get(&m, "quip_rate_limited_total", &[("limit", "requests")]),
        f64::from(limited)
    );
    // Every send is acknowledged once durable, and its latency recorded.
    assert_eq!(get(&m, "quip_send_durable_ack_seconds_count", &[]), 3.0);
    assert!(get(&m, "quip_send_durable_ack_seconds_sum", &[]) > 0.0);
    assert_eq!(get(&m, "quip_send_durable_ack_seconds_bucket", &[("le", "+Inf")]), 3.0);
    // Group commits: at least one per durable write the script waited for.
    assert!(get(&m, "quip_store_commit_seconds_count", &[]) >= 5.0, "{text}");
    assert!(get(&m, "quip_store_commit_batch_writes_sum", &[]) >= 5.0, "{text}");
    assert_eq!(get(&m, "quip_media_bytes_total", &[("direction", "in")]), 5000.0);
    assert_eq!(get(&m, "quip_media_bytes_total", &[("direction", "out")]), 5000.0);
    assert_eq!(get(&m, "quip_connections_open", &[("transport", "quic")]), 4.0);
    assert!(get(&m, "quip_handshakes_total", &[("transport", "quic"), ("result", "ok")]) >= 4.0);
    assert_eq!(get(&m, "quip_users_online", &[]), 2.0);
    assert_eq!(get(&m, "quip_slow_consumer_closes_total", &[]), 0.0);
    promtool_check(&text);

    // Connections that end leave the gauge.
    eve.close();
    pinger.close();
    scrape_until(admin, "two connections closed", |s| {
        get(s, "quip_connections_open", &[("transport", "quic")]) == 2.0
    })
    .await;
    drop((alice, bob));

    // The admin listener is bounded too: 64 idle connections hold every
    // slot, so a 65th is closed unanswered; once they go it answers again.
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(tokio::net::TcpStream::connect(admin).await.unwrap());
    }
    // An accepted connection is only counted once the server took it:
    // poll until a scrape is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(admin, "/healthz").await.is_ok() {
        assert!(Instant::now() < deadline, "the admin listener took a 65th connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(idle);
    wait_ready(admin).await;
}

/// `/readyz` and `/healthz` on the HTTPS listener (the admin listener's
/// are checked above): both 200 with a store that answers.
#[tokio::test]
async fn https_serves_liveness_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    for path in ["/healthz", "/readyz"] {
        let r = common::https::get(&server, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.json()["status"], "ok", "{path}");
    }
    server.stop().await;
}

/// With `--log-format json` every line is a JSON object; the account
/// events carry who, which device and from where as fields, and no line
/// carries a password or a session token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_fields_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("quipd.log");
    let data = dir.path().join("data");
    let port = free_port();
    let _daemon = Daemon::start_logged(&data, port, &["--log-format", "json", "--log", "info"], &log);
    let ca = Daemon::ready(&data).await;

    const WRONG: &str = "a wrong password 31337";
    let carol = connect(port, &ca).await;
    let registered = carol.register("carol", PASSWORD, "carol's phone").await.unwrap();
    let other = connect(port, &ca).await;
    let e = other.login("carol", WRONG, "carol's laptop").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials));
    let laptop = other.login("carol", PASSWORD, "carol's laptop").await.unwrap();
    other.logout().await.unwrap();
    assert!(matches!(
        other.closed().await.0,
        Some(quip_protocol::CloseCode::LoggedOut)
    ));

    // The close is logged after the client sees it: wait for its line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let closed = lines
            .iter()
            .any(|l| l["message"] == "connection closed" && l["code_name"] == "LoggedOut");
        if closed {
            for secret in [PASSWORD, WRONG, &registered.token, &laptop.token] {
                assert!(!text.contains(secret), "the log holds a secret: {secret}");
            }
            break lines;
        }
        assert!(Instant::now() < deadline, "no close logged:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
    };
    let reg = find("user registered");
    assert_eq!((reg["user"].as_str(), reg["device"].as_u64()), (Some("carol"), Some(1)));
    assert_eq!(reg["peer"], "127.0.0.1");
    let failed = find("login failed: wrong password or unknown user");
    assert_eq!(failed["level"], "INFO");
    assert_eq!(failed["user"], "carol");
    assert_eq!(failed["peer"], "127.0.0.1");
    assert_eq!(failed["device_name"], "carol's laptop");
    let keys: Vec<&String> = failed.as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|k| !k.contains("password") && !k.contains("token")),
        "{keys:?}"
    );
    let ok = find("login succeeded");
    assert_eq!((ok["user"].as_str(), ok["device"].as_u64()), (Some("carol"), Some(2)));
    let out = find("logged out: session token revoked");
    assert_eq!((out["user"].as_str(), out["device"].as_u64()), (Some("carol"), Some(2)));
    let opened = find("connection opened");
    assert_eq!(opened["transport"], "quic");
    assert!(opened["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let closed = lines
        .iter()
        .find(|l| l["message"] == "connection closed" && l["code_name"] == "LoggedOut")
        .unwrap();
    assert_eq!(closed["closed_by"], "server");
    assert_eq!(
        (closed["user"].as_str(), closed["device"].as_u64()),
        (Some("carol"), Some(2))
    );
    assert_eq!(closed["code"], 5);
    assert_eq!(closed["reason"], "logged out");
    drop(carol);
}

/// Waits until `log` has a line containing `needle` `n` times.
async fn wait_log(log: &Path, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().filter(|l| l.contains(needle)).count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A self-signed certificate for localhost and 127.0.0.1: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// SIGHUP reloads `--cert`/`--key`: a connected client stays connected and
/// keeps being served, a new client sees the new certificate (one trusting
/// only the old one is refused), and a pair that does not load is refused
/// with a log line while the certificate in use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("quipd.log"));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (ca_a, ca_b) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
    let install = |(c, k): &(String, String), ca: &Path| {
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
        std::fs::write(ca, c).unwrap();
    };
    let a = self_signed();
    install(&a, &ca_a);
    let port = free_port();
    let (cert_arg, key_arg) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let daemon = Daemon::start_logged(
        &data,
        port,
        &["--cert", cert_arg, "--key", key_arg, "--log", "info"],
        &log,
    );
    wait_log(&log, "quipd listening", 1).await;

    let old = connect(port, &ca_a).await;
    old.register("dave", PASSWORD, "phone").await.unwrap();

    let b = self_signed();
    install(&b, &ca_b);
    daemon.signal("HUP");
    wait_log(&log, "TLS certificate reloaded", 1).await;
    assert_eq!(
        old.whoami().await.unwrap().user,
        "dave",
        "the open connection is served"
    );
    let new = connect(port, &ca_b).await;
    new.login("dave", PASSWORD, "laptop").await.unwrap();
    let opts = ConnectOptions::new(format!("127.0.0.1:{port}"), Some(&ca_a)).unwrap();
    let stale = tokio::time::timeout(Duration::from_secs(10), Client::connect(&opts))
        .await
        .expect("a refused handshake ends quickly");
    assert!(stale.is_err(), "a client trusting only the old certificate connected");

    // A renewed certificate with the wrong key: refused, B stays.
    let c = self_signed();
    std::fs::write(&cert, &c.0).unwrap();
    std::fs::write(&key, &b.1).unwrap();
    daemon.signal("HUP");
    wait_log(&log, "TLS certificate reload refused", 1).await;
    let again = connect(port, &ca_b).await;
    again
        .request(Body::Ping(v1::PingRequest {}))
        .await
        .expect("served with the kept certificate");
    assert_eq!(old.whoami().await.unwrap().user, "dave");
    assert_eq!(new.whoami().await.unwrap().device_id, 2);
}

/// The systemd unit (packaging/quipd.service) passes `systemd-analyze
/// verify` (with ExecStart pointed at the quipd under test: verify checks
/// the binary exists), and its sandbox's exposure stays "OK" or better
/// by `systemd-analyze security`. Needs systemd-analyze (Debian's systemd
/// package); without it this test says so and checks nothing.
#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/quipd.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/quipd\n"),
        "the unit's ExecStart moved"
    );
    let quipd = common::daemon::quipd();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("quipd.service");
    std::fs::write(
        &path,
        unit.replace(
            "ExecStart=/usr/local/bin/quipd",
            &format!("ExecStart={}", quipd.display()),
        ),
    )
    .unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output();
    let Ok(verify) = verify else {
        eprintln!("systemd-analyze not installed: the unit was not verified");
        return;
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "exposure above 2.0:\n{report}");
    assert!(report.contains("Overall exposure level for quipd.service"), "{report}");
}

/// A device that stops reading its pushes is closed as a slow consumer:
/// counted in `quip_slow_consumer_closes_total`, its queue's backlog in
/// the histogram, and logged with who it was and close code 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_close_is_counted_and_logged() {
    use quip_protocol::{CloseCode, Envelope, FrameDecoder, encode_frame};
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("quipd.log"));
    let (port, admin_port) = (free_port(), free_tcp_port());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let admin_arg = admin.to_string();
    let _daemon = Daemon::start_logged(
        &data,
        port,
        &[
            "--admin-listen",
            &admin_arg,
            "--push-queue",
            "4",
            "--log-format",
            "json",
            "--log",
            "info",
        ],
        &log,
    );
    let ca = Daemon::ready(&data).await;
    wait_ready(admin).await;
    let alice = connect(port, &ca).await;
    alice.register("alice", PASSWORD, "phone").await.unwrap();
    let bob = connect(port, &ca).await;
    let token = bob.register("bob", PASSWORD, "phone").await.unwrap().token;
    drop(bob);

    // Bob's phone: says Hello with its token, then never reads a push.
    let opts = ConnectOptions::new(format!("127.0.0.1:{port}"), Some(&ca)).unwrap();
    let (_ep, stalled) = Client::connect_raw(&opts).await.unwrap();
    let (mut send, mut recv) = stalled.open_bi().await.unwrap();
    let hello = Envelope::new(
        1,
        Body::Hello(v1::Hello {
            versions: vec![1],
            token,
            client: "raw".into(),
            background: false,
        }),
    );
    let mut frame = bytes::BytesMut::new();
    encode_frame(&hello, quip_protocol::MAX_FRAME, &mut frame).unwrap();
    send.write_all(&frame).await.unwrap();
    let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
    while dec.decode().unwrap().is_none() {
        dec.buffer_mut().reserve(4096);
        recv.read_buf(dec.buffer_mut()).await.unwrap();
    }
    let big = "x".repeat(60_000);
    for i in 0..60 {
        alice.send_text("bob", &format!("{i}{big}")).await.unwrap();
    }
    let closed = tokio::time::timeout(Duration::from_secs(10), stalled.closed())
        .await
        .expect("closed in time");
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if CloseCode::from_code(c.error_code.into_inner()) == Some(CloseCode::SlowConsumer)),
        "{closed:?}"
    );

    let m = scrape_until(admin, "the slow consumer counted", |s| {
        get(s, "quip_slow_consumer_closes_total", &[]) == 1.0
    })
    .await;
    assert!(get(&m, "quip_push_queue_backlog_events_count", &[]) >= 1.0, "{m:#?}");
    wait_log(&log, "slow consumer: push queue full", 1).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let warn = lines
        .iter()
        .find(|l| l["message"] == "slow consumer: push queue full, connection closed")
        .unwrap();
    assert_eq!(
        (warn["level"].as_str(), warn["user"].as_str()),
        (Some("WARN"), Some("bob"))
    );
    let close = lines
        .iter()
        .find(|l| l["message"] == "connection closed" && l["code_name"] == "SlowConsumer")
        .unwrap_or_else(|| panic!("no close line:\n{text}"));
    assert_eq!(
        (close["closed_by"].as_str(), close["code"].as_u64()),
        (Some("server"), Some(4))
    );
    assert_eq!(close["user"], "bob");
}

/// A browser's WebSocket connection is counted (open connections, HTTPS
/// handshakes, its requests) and its close is logged with the browser's
/// close code and the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_counted_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let (data, log) = (dir.path().join("data"), dir.path().join("quipd.log"));
    let (port, admin_port) = (free_port(), free_tcp_port());
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let admin_arg = admin.to_string();
    let (_daemon, https) = Daemon::start_logged_with_https(
        &data,
        port,
        &["--admin-listen", &admin_arg, "--log-format", "json", "--log", "info"],
        &log,
    );
    let ca = Daemon::ready(&data).await;
    wait_ready(admin).await;
    let quic = connect(port, &ca).await;
    let token = quic.register("erin", PASSWORD, "phone").await.unwrap().token;

    let ws = common::ws::WsClient::connect(https, &ca, &token).await.unwrap();
    assert_eq!(ws.welcome.user, "erin");
    ws.request(Body::Whoami(v1::WhoAmIRequest {})).await.unwrap();
    let m = scrape(admin).await.1;
    assert_eq!(get(&m, "quip_connections_open", &[("transport", "websocket")]), 1.0);
    assert_eq!(get(&m, "quip_connections_open", &[("transport", "quic")]), 1.0);
    assert!(get(&m, "quip_handshakes_total", &[("transport", "https"), ("result", "ok")]) >= 1.0);
    assert_eq!(
        get(&m, "quip_requests_total", &[("kind", "whoami"), ("code", "OK")]),
        1.0
    );

    ws.close().await;
    scrape_until(admin, "the WebSocket closed", |s| {
        get(s, "quip_connections_open", &[("transport", "websocket")]) == 0.0
    })
    .await;
    wait_log(&log, "\"transport\":\"websocket\"", 2).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let closed: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["message"] == "connection closed" && l["transport"] == "websocket")
        .unwrap_or_else(|| panic!("no close line:\n{text}"));
    assert_eq!(closed["closed_by"], "client");
    assert_eq!(closed["code"], 1005, "a close frame without a code");
    assert_eq!(
        (closed["user"].as_str(), closed["device"].as_u64()),
        (Some("erin"), Some(1))
    );
    drop(quic);
}
