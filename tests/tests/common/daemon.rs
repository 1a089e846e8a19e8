//! quipd as a child process: for tests that kill it or measure its memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The quipd binary next to this test's executable (cargo and nextest build
/// it for workspace runs); built on demand otherwise.
pub fn quipd() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("quipd");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "quip-server", "--bin", "quipd"])
            .status()
            .unwrap()
            .success();
        assert!(ok && bin.exists(), "could not build quipd at {}", bin.display());
    }
    bin
}

/// A UDP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running quipd process; killed when dropped.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts quipd on `127.0.0.1:port` with its data in `data`, plus `args`.
    pub fn start(data: &Path, port: u16, args: &[&str]) -> Self {
        Self::launch(Command::new(quipd()), data, port, None, args, None)
    }

    /// Like [`Daemon::start`], with the process umask set to `umask`
    /// (octal, as sh's `umask` takes it) before quipd runs.
    pub fn start_with_umask(data: &Path, port: u16, args: &[&str], umask: &str) -> Self {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
            .arg(quipd());
        Self::launch(sh, data, port, None, args, None)
    }

    /// Starts quipd like [`Daemon::start`] with its log (stdout) written
    /// to `log`; `args` say its level (`--log`) and format.
    pub fn start_logged(data: &Path, port: u16, args: &[&str], log: &Path) -> Self {
        Self::launch(Command::new(quipd()), data, port, None, args, Some(log))
    }

    /// Like [`Daemon::start_logged`] with the HTTPS listener on loopback
    /// too (see [`Daemon::start_with_https`]); returns its address.
    pub fn start_logged_with_https(data: &Path, port: u16, args: &[&str], log: &Path) -> (Self, std::net::SocketAddr) {
        let https = free_tcp_addr();
        (
            Self::launch(Command::new(quipd()), data, port, Some(https), args, Some(log)),
            https,
        )
    }

    /// Starts quipd like [`Daemon::start`] but with its HTTPS listener on
    /// loopback too; returns it with that listener's address.
    pub fn start_with_https(data: &Path, port: u16, args: &[&str]) -> (Self, std::net::SocketAddr) {
        let https = free_tcp_addr();
        (
            Self::launch(Command::new(quipd()), data, port, Some(https), args, None),
            https,
        )
    }

    /// Runs `command` (quipd, or a wrapper that execs it) on `data`, QUIC
    /// on `port`, HTTPS on `https` or none, plus `args`; its log goes to
    /// `log`, or (errors only) nowhere but stderr.
    fn launch(
        mut command: Command,
        data: &Path,
        port: u16,
        https: Option<std::net::SocketAddr>,
        args: &[&str],
        log: Option<&Path>,
    ) -> Self {
        command.args([
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ]);
        match https {
            Some(addr) => command.args(["--https-listen", &addr.to_string()]),
            // QUIC only: the port was found free for UDP, not for TCP.
            None => command.arg("--no-https"),
        };
        match log {
            Some(path) => command.stdout(std::fs::File::create(path).unwrap()),
            None => command.args(["--log", "error"]).stdout(Stdio::null()),
        };
        let child = command.args(args).stderr(Stdio::inherit()).spawn().unwrap();
        Self { child }
    }

    /// Sends the process a signal by name (`HUP`, `TERM`), with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits until the dev certificate exists (written at startup); returns its path.
    pub async fn ready(data: &Path) -> PathBuf {
        let ca = data.join("dev-cert.pem");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ca.exists() {
            assert!(Instant::now() < deadline, "quipd did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ca
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM: a graceful stop; waits until the process has exited.
    pub fn terminate(&mut self) {
        self.signal("TERM");
        self.child.wait().unwrap();
    }

    /// The process's resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// The most resident memory the process ever had (high-water mark), KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP address free a moment ago (for a listener of quipd's).
fn free_tcp_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
