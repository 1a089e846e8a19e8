//! The `quipd` binary itself: zero-config start, dev certificate, and a
//! graceful exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn starts_with_zero_config_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_quipd"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("QUIP_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = stdout.lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while !seen.contains("dev mode") {
        assert!(Instant::now() < deadline, "quipd did not start: {seen}");
        let line = lines.next().expect("quipd exited early").unwrap();
        seen.push_str(&line);
        seen.push('\n');
    }
    assert!(seen.contains("quipd listening"), "{seen}");
    assert!(data.join("dev-cert.pem").exists());
    assert!(
        data.join("db").is_dir(),
        "the default engine (lsm) lives in <data-dir>/db"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "quipd exited with {exit}");
    assert!(rest.iter().any(|l| l.contains("shutdown complete")), "{rest:?}");
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_quipd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--data-dir",
        "--cert",
        "--key",
        "--max-body",
        "--rate-limit",
        "--rate-burst",
        "--push-queue",
        "--push-lanes",
        "--max-streams",
        "--max-connections",
        "--idle-timeout",
        "--write-queue",
        "--socket-buffer",
        "--log",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    assert!(help.contains("QUIP_DATA_DIR"), "env vars are listed");
}
