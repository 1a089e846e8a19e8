//! What every scenario runs on: the in-process server and its clients
//! (`Bench`), a quipd child process (`Quipd`), timestamps and percentiles.

use crate::*;

/// Messages carry the sender's send instant (ns since the run started), so a
/// receiver in the same process computes send-to-receive latency.
pub(crate) fn stamp(start: Instant) -> String {
    stamp_at(start, Instant::now())
}

/// A stamp for a send that was due at `due`: open-loop scenarios stamp the
/// schedule, not the moment the generator got round to sending, so a
/// generator that falls behind shows up in the latency instead of hiding it
/// (coordinated omission).
pub(crate) fn stamp_at(start: Instant, due: Instant) -> String {
    format!("t{}", due.saturating_duration_since(start).as_nanos())
}

pub(crate) fn latency_of(start: Instant, m: &v1::Message) -> Option<u64> {
    let text = m.content.as_ref()?.text.strip_prefix('t')?;
    let sent: u128 = text.parse().ok()?;
    let now = start.elapsed().as_nanos();
    u64::try_from(now.saturating_sub(sent) / 1000).ok()
}

pub(crate) struct Bench {
    pub(crate) opts: ConnectOptions,
    pub(crate) store: Arc<dyn quip_server::store::Store>,
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) server_pid: u32,
}

impl Bench {
    /// The server on the embedded store's `engine`, or on FoundationDB
    /// when a cluster file is given (under a key prefix of its own).
    pub(crate) async fn start(
        engine: quip_server::store::EngineKind,
        fdb_cluster_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = Config::for_tests(dir.path());
        // The generator is one trusted client with many devices: no throttling.
        config.rate_limit = 1e12;
        config.rate_burst = 1e12;
        config.store_engine = Some(engine);
        if let Some(file) = fdb_cluster_file {
            config.store = quip_server::store::StoreKind::Fdb;
            config.fdb_cluster_file = Some(file.to_path_buf());
            config.fdb_prefix = format!("bench-{}-{:08x}", std::process::id(), crate::cluster::rand_u32());
        }
        let server = Server::bind(config)?;
        let opts = ConnectOptions::new(server.local_addr().to_string(), server.dev_cert().map(|p| p.as_path()))?;
        let store = server.store();
        tokio::spawn(server.run(std::future::pending()));
        Ok(Self {
            opts,
            store,
            _dir: dir,
            server_pid: std::process::id(),
        })
    }

    pub(crate) async fn users(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<(Arc<Client>, String)>> {
        // Registration hashes passwords (argon2id, deliberately slow): do it
        // with bounded concurrency, outside the measured part.
        let mut out = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
            let futs = chunk.iter().map(|i| async move {
                let c = Client::connect(&self.opts).await?;
                let auth = c.register(&format!("{prefix}{i}"), "bench-password", "bench").await?;
                anyhow::Ok((Arc::new(c), auth.token))
            });
            for r in futures::future::join_all(futs).await {
                out.push(r?);
            }
        }
        Ok(out)
    }
}

pub(crate) fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

/// A quipd child process on loopback with its own temp data dir.
pub(crate) struct Quipd {
    pub(crate) child: std::process::Child,
    pub(crate) addr: String,
    pub(crate) ca: std::path::PathBuf,
    pub(crate) _dir: tempfile::TempDir,
}

impl Quipd {
    /// Starts the `quipd` built next to this binary.
    pub(crate) fn spawn(max_connections: usize) -> anyhow::Result<Self> {
        use std::io::BufRead;
        let exe = std::env::current_exe()?.with_file_name("quipd");
        anyhow::ensure!(
            exe.exists(),
            "{} not found: build it (cargo build -p quip-server)",
            exe.display()
        );
        let dir = tempfile::tempdir()?;
        let mut child = std::process::Command::new(&exe)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--rate-limit",
                "1e12",
                "--rate-burst",
                "1e12",
            ])
            .arg("--max-connections")
            .arg(max_connections.to_string())
            // The generator is one host whose few accounts share tokens
            // across thousands of connections: lift the per-address,
            // per-user and per-device limits, which are not under test.
            .args(["--max-connections-per-ip", &max_connections.to_string()])
            .args(["--max-connections-per-user", &max_connections.to_string()])
            .args(["--max-connections-per-device", &max_connections.to_string()])
            // The load generator registers its users from one address.
            .args(["--registrations-per-ip-burst", "1000000"])
            .arg("--data-dir")
            .arg(dir.path())
            .env("QUIP_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("quipd stdout")?;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().context("quipd exited before listening")??;
            if let Some(rest) = line.split("addr=").nth(1) {
                break rest.split_whitespace().next().unwrap_or_default().to_owned();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self {
            child,
            addr,
            ca: dir.path().join("dev-cert.pem"),
            _dir: dir,
        })
    }

    pub(crate) fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }

    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id())
    }
}

impl Drop for Quipd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
