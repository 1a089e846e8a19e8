//! Test support shared by this crate's tests and the workspace's integration
//! tests: a real, throw-away FoundationDB server. Not part of the API.
//!
//! [`FdbServer::shared`] starts one single-process `fdbserver` per test
//! process (on a free loopback port, with its cluster file and data in a
//! temporary directory, `configure new single memory`: about 3 s); tests
//! keep apart by using distinct key prefixes ([`unique_prefix`]). When
//! `QUIP_TEST_FDB_CLUSTER_FILE` names a cluster file, it uses that cluster
//! instead: `scripts/test.sh` starts one server for the whole run, since
//! nextest runs every test in a process of its own. The binaries are found
//! on `PATH`, then under `$FDB_DIST/bin`, then `/opt/foundationdb/bin`
//! (where `scripts/install-test-deps.sh` puts them).
//!
//! A static is never dropped, so besides killing its server on drop, each
//! [`FdbServer`] has a watchdog process that kills the server and removes
//! its directory once the test process is gone, however it ended.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running single-process FoundationDB cluster; stopped when dropped
/// (unless someone else started it).
pub struct FdbServer {
    /// The server and its watchdog, when this process started them.
    processes: Option<(Child, Child)>,
    dir: Option<PathBuf>,
    cluster_file: PathBuf,
    /// Its port (0 for a server this process did not start).
    port: u16,
}

/// Names a running cluster's file for [`FdbServer::shared`] to use.
pub const CLUSTER_FILE_VAR: &str = "QUIP_TEST_FDB_CLUSTER_FILE";

/// How long a server may take to start and configure itself.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl FdbServer {
    /// The test binary's shared server, started on first use.
    ///
    /// # Panics
    /// If FoundationDB is not installed or does not start: the tests that
    /// need it fail loudly rather than pass without it.
    pub fn shared() -> &'static FdbServer {
        static SHARED: OnceLock<FdbServer> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var_os(CLUSTER_FILE_VAR) {
            Some(file) => Self {
                processes: None,
                dir: None,
                cluster_file: file.into(),
                port: 0,
            },
            None => Self::start().unwrap_or_else(|e| panic!("starting a test FoundationDB server: {e}")),
        })
    }

    /// Starts a new server (a few seconds).
    pub fn start() -> Result<Self, String> {
        let fdbserver = binary("fdbserver")?;
        let mut last = String::new();
        // A port found free can be taken before fdbserver binds it: retry.
        for _ in 0..3 {
            match Self::start_once(&fdbserver) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once(fdbserver: &Path) -> Result<Self, String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "quip-fdb-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cluster_file = dir.join("fdb.cluster");
        let id: u64 = rand::random();
        std::fs::write(&cluster_file, format!("test:{id:016x}@127.0.0.1:{port}\n")).map_err(|e| e.to_string())?;
        let (server, watchdog) = spawn(fdbserver, port, &dir, &cluster_file)?;
        let mut s = Self {
            processes: Some((server, watchdog)),
            dir: Some(dir.clone()),
            cluster_file,
            port,
        };
        s.configure(&dir)?;
        Ok(s)
    }

    /// `configure new single memory`, then waits until the database is available.
    fn configure(&mut self, dir: &Path) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut configured = false;
        loop {
            if let Some((server, _)) = &mut self.processes
                && let Ok(Some(status)) = server.try_wait()
            {
                return Err(format!(
                    "fdbserver exited at start ({status}); logs in {}",
                    dir.display()
                ));
            }
            if !configured {
                let out = self.cli("configure new single memory", 10)?;
                // A retry after a timeout may find it configured already.
                configured = out.contains("Database created") || out.contains("already exists");
            } else if self.cli("status minimal", 5)?.contains("The database is available") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("fdbserver did not become available; logs in {}", dir.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs an fdbcli command against this server; its output.
    pub fn cli(&self, command: &str, timeout_secs: u32) -> Result<String, String> {
        let out = Command::new(binary("fdbcli")?)
            .arg("-C")
            .arg(&self.cluster_file)
            .arg("--exec")
            .arg(command)
            .arg("--timeout")
            .arg(timeout_secs.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("fdbcli: {e}"))?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// Kills the server (SIGKILL), keeping its data directory: to its
    /// clients the cluster is gone.
    pub fn stop(&mut self) {
        if let Some((server, watchdog)) = &mut self.processes {
            // The watchdog first: it would remove the data once the server is gone.
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            let _ = server.kill();
            let _ = server.wait();
        }
        self.processes = None;
    }

    /// Starts a stopped server again on its port and data, and waits until
    /// the database is available (it recovers what it had committed).
    pub fn restart(&mut self) -> Result<(), String> {
        let dir = self.dir.clone().ok_or("not a server this process started")?;
        if self.processes.is_none() {
            self.processes = Some(spawn(&binary("fdbserver")?, self.port, &dir, &self.cluster_file)?);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.cli("status minimal", 5)?.contains("The database is available") {
            if Instant::now() > deadline {
                return Err(format!("fdbserver did not come back; logs in {}", dir.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// The cluster file clients connect with.
    pub fn cluster_file(&self) -> &Path {
        &self.cluster_file
    }
}

impl Drop for FdbServer {
    fn drop(&mut self) {
        if let Some((server, watchdog)) = &mut self.processes {
            let _ = server.kill();
            let _ = server.wait();
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Starts `fdbserver` on `port` with its data in `dir`, and a watchdog that
/// kills it and removes `dir` once this process is gone.
fn spawn(fdbserver: &Path, port: u16, dir: &Path, cluster_file: &Path) -> Result<(Child, Child), String> {
    let server = Command::new(fdbserver)
        .arg("-p")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-C")
        .arg(cluster_file)
        .arg("-d")
        .arg(dir.join("data"))
        .arg("-L")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", fdbserver.display()))?;
    // Kills the server and removes its files once this process is gone.
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(
            "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 1; done; \
             kill -9 \"$2\" 2>/dev/null; sleep 1; rm -rf \"$3\"",
        )
        .arg("fdb-watchdog")
        .arg(std::process::id().to_string())
        .arg(server.id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("sh: {e}"))?;
    Ok((server, watchdog))
}

/// A key prefix no other test of this process (or of another run on the
/// same server) uses: `name`, the process id and a counter.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A FoundationDB binary: on `PATH`, under `$FDB_DIST/bin`, or in
/// `/opt/foundationdb/bin`.
fn binary(name: &str) -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    let dist = std::env::var_os("FDB_DIST").map(|d| PathBuf::from(d).join("bin").join(name));
    on_path
        .into_iter()
        .chain(dist)
        .chain([Path::new("/opt/foundationdb/bin").join(name)])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{name} not found on PATH, in $FDB_DIST/bin or /opt/foundationdb/bin: run scripts/install-test-deps.sh"
            )
        })
}
