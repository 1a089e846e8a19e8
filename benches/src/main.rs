//! `quip-bench`: load scenarios against a real `quipd` (started in-process
//! on loopback with its store in a temp dir, so runs are self-contained and
//! bounded). Each scenario prints a summary, or with `--json` one object with
//! every figure, the parameters, the git commit and the machine.
//!
//! Clients and server share the machine: figures are for "server and load
//! generator on one box", the setting the targets in benches/README.md use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use quip_client::{AckTracker, Client, ConnectOptions};
use quip_protocol::v1;
use quip_server::{Config, Server};
use serde_json::{Value, json};

/// Load scenarios for quipd.
#[derive(Debug, Parser)]
#[command(name = "quip-bench", version, about)]
struct Cli {
    /// Print one JSON object with every figure instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    /// Storage engine of the in-process server (quipd's --store-engine).
    #[arg(long, global = true, value_enum, default_value = "lsm")]
    store_engine: quip_server::store::EngineKind,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Closed loop: N users in sender/receiver pairs, each sender keeping a
    /// window of sends in flight. Messages durably stored and delivered per
    /// second, and send-to-receive latency.
    Throughput {
        /// Users (half send, half receive).
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Messages each sender sends.
        #[arg(long, default_value_t = 100)]
        messages: usize,
        /// Sends each sender keeps in flight.
        #[arg(long, default_value_t = 20)]
        window: usize,
    },
    /// Open loop at a fixed total rate: send-to-receive latency percentiles.
    Latency {
        /// Users (half send, half receive).
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Total messages per second.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        /// Seconds to run. A few disk stalls a minute decide p99, so a short
        /// run's p99 is luck (10-449 ms across 10 s runs of one build); 30 s
        /// also shows costs that grow with the store's unflushed history.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Open N idle authenticated connections to a separate quipd process:
    /// handshakes per second and the server's RSS per connection.
    Connections {
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Accounts the connections log in as (tokens are reused; each
        /// account's devices share them).
        #[arg(long, default_value_t = 10)]
        users: usize,
        /// Seconds to measure the server's CPU with every connection open
        /// and idle (default: one keep-alive period of the client library).
        #[arg(long, default_value_t = quip_client::KEEP_ALIVE.as_secs())]
        idle_seconds: u64,
    },
    /// A group with every member online; one member posts at a fixed rate.
    /// Latency from send to the last member having the message, and to the
    /// sender's "delivered to everyone" tick (members confirm delivery as
    /// clients do).
    Fanout {
        /// Group members, the poster included.
        #[arg(long, default_value_t = 256)]
        members: usize,
        /// Posts per second.
        #[arg(long, default_value_t = 20)]
        rate: u64,
        /// Seconds to run. Long enough for costs that grow with the store's
        /// unflushed history to show: a 5 s run once hid receipts slowing
        /// down from post to post.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// The disk under the store: appends, each followed by fdatasync, to a
    /// file in a temp dir (where the in-process server keeps its store).
    /// Every durable ack waits for one such sync, so its tail is the floor
    /// under the other scenarios' latency tails.
    Disk {
        /// Seconds to keep appending (stalls come a few times a minute on
        /// some disks, so this matches the other scenarios' length).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Bytes per append (one group commit's journal entry is of this order).
        #[arg(long, default_value_t = 4096)]
        bytes: usize,
    },
    /// Reads `--json` results (one object per line) on stdin and rewrites
    /// the results table between the markers in a README (used by
    /// scripts/bench-table.sh; with --stdout, prints the table instead).
    Table {
        /// The file holding the table markers.
        #[arg(long, default_value = "benches/README.md")]
        readme: std::path::PathBuf,
        /// Print the table instead of editing the file.
        #[arg(long)]
        stdout: bool,
    },
    /// A device offline while K messages arrive; time from reconnect until
    /// it has them all.
    Sync {
        /// Messages missed.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
    },
}

/// Messages carry the sender's send instant (ns since the run started), so a
/// receiver in the same process computes send-to-receive latency.
fn stamp(start: Instant) -> String {
    stamp_at(start, Instant::now())
}

/// A stamp for a send that was due at `due`: open-loop scenarios stamp the
/// schedule, not the moment the generator got round to sending, so a
/// generator that falls behind shows up in the latency instead of hiding it
/// (coordinated omission).
fn stamp_at(start: Instant, due: Instant) -> String {
    format!("t{}", due.saturating_duration_since(start).as_nanos())
}

fn latency_of(start: Instant, m: &v1::Message) -> Option<u64> {
    let text = m.content.as_ref()?.text.strip_prefix('t')?;
    let sent: u128 = text.parse().ok()?;
    let now = start.elapsed().as_nanos();
    u64::try_from(now.saturating_sub(sent) / 1000).ok()
}

struct Bench {
    opts: ConnectOptions,
    store: Arc<dyn quip_server::store::Store>,
    _dir: tempfile::TempDir,
    server_pid: u32,
}

impl Bench {
    async fn start(engine: quip_server::store::EngineKind) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = Config::for_tests(dir.path());
        // The generator is one trusted client with many devices: no throttling.
        config.rate_limit = 1e12;
        config.rate_burst = 1e12;
        config.store_engine = Some(engine);
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

    async fn users(&self, prefix: &str, n: usize) -> anyhow::Result<Vec<(Arc<Client>, String)>> {
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

fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()));
    json!({"cores": cores, "memory_kib": mem_kib})
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// CPU time the process has used, user and system, in seconds (from
/// /proc: USER_HZ is 100 on every Linux ABI).
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU time of this process's threads named `comm` (as the kernel shortens
/// it: 15 bytes), e.g. the store's writer thread: every write runs on it, so
/// its CPU per write is the ceiling on writes per second whatever the cores.
fn thread_cpu_seconds(comm: &str) -> Option<f64> {
    let mut total = None;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.trim_end() == comm {
            let s = stat_cpu_seconds(&task.path().join("stat").to_string_lossy())?;
            total = Some(total.unwrap_or(0.0) + s);
        }
    }
    total
}

fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Datagrams the kernel dropped because the UDP socket bound to `addr`
/// (an IPv4 address) had a full receive buffer: the 13th column of
/// /proc/net/udp. A server that falls behind reading its socket loses
/// packets here, and its peers wait out retransmission timers.
fn udp_drops(addr: &str) -> Option<u64> {
    let addr: std::net::SocketAddrV4 = addr.parse().ok()?;
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(addr.ip().octets()), addr.port());
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let line = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))?;
    line.split_whitespace().nth(12)?.parse().ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The allocator `quipd` ships with, so the in-process server is measured
/// as deployed: under glibc malloc, allocator calls were ~10% of all samples
/// (perf of the latency scenario).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Connections {
        connections,
        concurrency,
        users,
        idle_seconds,
    } = cli.scenario
    {
        let idle = Duration::from_secs(idle_seconds);
        let (params, figures, summary) = connections_scenario(connections, concurrency, users, idle).await?;
        report(cli.json, "connections", params, figures, summary);
        return Ok(());
    }
    if let Scenario::Table { readme, stdout } = &cli.scenario {
        return table(readme, *stdout);
    }
    if let Scenario::Disk { seconds, bytes } = cli.scenario {
        let (params, figures, summary) = tokio::task::spawn_blocking(move || disk(seconds, bytes)).await??;
        report(cli.json, "disk", params, figures, summary);
        return Ok(());
    }
    let bench = Bench::start(cli.store_engine).await?;
    let (name, params, figures, summary) = match cli.scenario {
        Scenario::Throughput {
            users,
            messages,
            window,
        } => throughput(&bench, users, messages, window).await?,
        Scenario::Latency { users, rate, seconds } => latency(&bench, users, rate, seconds).await?,
        Scenario::Sync { messages } => sync(&bench, messages).await?,
        Scenario::Fanout { members, rate, seconds } => fanout(&bench, members, rate, seconds).await?,
        Scenario::Connections { .. } | Scenario::Table { .. } | Scenario::Disk { .. } => {
            unreachable!("handled above")
        }
    };
    let mut figures = figures;
    let mut params = params;
    params["store_engine"] = json!(format!("{:?}", cli.store_engine).to_lowercase());
    figures["process_rss_kib"] = json!(rss_kib(bench.server_pid));
    let st = bench.store.stats();
    figures["store"] = json!({
        "engine": format!("{:?}", cli.store_engine).to_lowercase(),
        "commits": st.commits, "writes": st.writes, "keys_written": st.keys_written,
        "writes_per_commit": st.writes as f64 / st.commits.max(1) as f64,
        "mean_commit_us": st.commit_micros as f64 / st.commits.max(1) as f64,
        "max_commit_us": st.max_commit_micros,
        "writer_cpu_us_per_write": thread_cpu_seconds("quip-store-writ").map(|s| s * 1e6 / st.writes.max(1) as f64),
        "committer_cpu_us_per_write": thread_cpu_seconds("quip-store-comm").map(|s| s * 1e6 / st.writes.max(1) as f64),
    });
    let summary = format!("{summary}\n  store: {}", figures["store"]);
    report(cli.json, name, params, figures, summary);
    Ok(())
}

/// Appends `bytes` and syncs with fdatasync (what a group commit costs the
/// disk) for `seconds`, on the file system of the temp dir.
fn disk(seconds: u64, bytes: usize) -> anyhow::Result<(Value, Value, String)> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let mut file = std::fs::File::create(dir.path().join("journal"))?;
    let block = vec![0x5a_u8; bytes];
    let mut hist = Histogram::<u64>::new(3)?;
    let mut stalls = 0_u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        file.write_all(&block)?;
        let t = Instant::now();
        file.sync_data()?;
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        stalls += u64::from(us > 10_000);
        hist.record(us)?;
    }
    let figures = json!({"syncs": hist.len(), "sync": percentiles(&hist), "stalls_over_10ms": stalls});
    let summary = format!(
        "disk: {} appends of {bytes} B, each + fdatasync, in {seconds} s; p50 {} us, p99 {} us, p99.9 {} us, max {} us; {stalls} over 10 ms",
        hist.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
    Ok((json!({"seconds": seconds, "bytes": bytes}), figures, summary))
}

fn report(json_out: bool, name: &str, params: Value, figures: Value, summary: String) {
    if json_out {
        println!(
            "{}",
            json!({
                "scenario": name, "params": params, "figures": figures,
                "commit": git_commit(), "machine": machine(),
                "note": "server and load generator on one machine",
            })
        );
    } else {
        println!("{summary}");
    }
}

/// A quipd child process on loopback with its own temp data dir.
struct Quipd {
    child: std::process::Child,
    addr: String,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Quipd {
    /// Starts the `quipd` built next to this binary.
    fn spawn(max_connections: usize) -> anyhow::Result<Self> {
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

    fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }

    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.child.id())
    }
}

impl Drop for Quipd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connections_scenario(
    n: usize,
    concurrency: usize,
    users: usize,
    idle: Duration,
) -> anyhow::Result<(Value, Value, String)> {
    use futures::StreamExt;
    let quipd = Quipd::spawn(n + 100)?;
    let opts = ConnectOptions::new(quipd.addr.clone(), Some(&quipd.ca))?;
    let mut tokens = Vec::new();
    for i in 0..users.max(1) {
        let c = Client::connect(&opts).await?;
        tokens.push(c.register(&format!("conn{i}"), "bench-password", "bench").await?.token);
        c.close();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = quipd.rss_kib().unwrap_or(0);
    let drops_before = udp_drops(&quipd.addr);
    // A few client sockets, each carrying many connections.
    let endpoints: Vec<quinn::Endpoint> = (0..4).map(|_| Client::endpoint(&opts)).collect::<Result<_, _>>()?;
    // Opens connections `range` (their handshakes `concurrency` at a time).
    let open_batch = |range: std::ops::Range<usize>| {
        let (opts, tokens, endpoints) = (&opts, &tokens, &endpoints);
        async move {
            let mut clients = Vec::with_capacity(range.len());
            // Failures by what went wrong, so a run that loses connections
            // says why.
            let mut failed = std::collections::BTreeMap::<String, usize>::new();
            let mut attempts = futures::stream::iter(range)
                .map(|i| {
                    let o = opts.clone().token(tokens[i % tokens.len()].clone());
                    let ep = endpoints[i % endpoints.len()].clone();
                    async move { Client::connect_on(ep, &o).await }
                })
                .buffer_unordered(concurrency.max(1));
            while let Some(r) = attempts.next().await {
                match r {
                    Ok(c) => clients.push(c),
                    Err(e) => *failed.entry(e.to_string()).or_default() += 1,
                }
            }
            (clients, failed)
        }
    };
    // In two halves, with the server's RSS read after each: the second
    // half's growth is the marginal cost of a connection, free of one-time
    // costs (allocator arenas, caches, the registrations' password hashes).
    let start = Instant::now();
    let (mut clients, mut failed) = open_batch(0..n / 2).await;
    let mut elapsed = start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_mid, open_mid) = (quipd.rss_kib().unwrap_or(0), clients.len());
    let start = Instant::now();
    let (more, more_failed) = open_batch(n / 2..n).await;
    elapsed += start.elapsed();
    clients.extend(more);
    for (why, count) in more_failed {
        *failed.entry(why).or_default() += count;
    }
    let failures = failed;
    let failed: usize = failures.values().sum();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = quipd.rss_kib().unwrap_or(0);
    let open = clients.len();
    let per_conn = (rss_after.saturating_sub(rss_before) as f64 * 1024.0) / open.max(1) as f64;
    let marginal = (rss_after.saturating_sub(rss_mid) as f64 * 1024.0) / (open - open_mid).max(1) as f64;
    let rate = open as f64 / elapsed.as_secs_f64();
    let server_udp_drops = drops_before
        .zip(udp_drops(&quipd.addr))
        .map(|(a, b)| b.saturating_sub(a));
    // Round-trip times as the clients' QUIC stacks estimate them: on a
    // saturated machine handshakes queue and these grow, and with them
    // every retransmission timeout.
    let mut rtts = Histogram::<u64>::new(3)?;
    // Resumed handshakes (0-RTT) skip the certificate's signature and its
    // verification: the share says which kind of handshake was measured.
    let resumed = clients.iter().filter(|c| c.used_0rtt()).count();
    for c in &clients {
        let _ = rtts.record(u64::try_from(c.connection().rtt().as_micros()).unwrap_or(u64::MAX));
    }
    // What the open connections cost the server while idle: keep-alive
    // PINGs (one per connection every KEEP_ALIVE) and their ACKs.
    let cpu_before = quipd.cpu_seconds();
    tokio::time::sleep(idle).await;
    let idle_cpu_percent = cpu_before
        .zip(quipd.cpu_seconds())
        .map(|(a, b)| (b - a) / idle.as_secs_f64().max(0.001) * 100.0);
    for c in &clients {
        c.close();
    }
    let figures = json!({
        "open": open, "failed": failed, "failures": failures, "seconds": elapsed.as_secs_f64(),
        "handshakes_per_sec": rate, "server_rss_kib_before": rss_before,
        "server_rss_kib_after": rss_after, "server_rss_bytes_per_connection": per_conn,
        "server_rss_kib_half": rss_mid, "server_rss_bytes_per_connection_second_half": marginal,
        "server_idle_cpu_percent": idle_cpu_percent, "client_rtt": percentiles(&rtts),
        "server_udp_drops": server_udp_drops, "resumed_0rtt": resumed,
    });
    let summary = format!(
        "connections: {open} idle authenticated connections ({failed} failed, {resumed} resumed in 0-RTT) in {:.2} s = {rate:.0} handshakes/s; quipd RSS {rss_before} -> {rss_mid} (half) -> {rss_after} KiB = {:.1} KiB per connection ({:.1} KiB each in the second half); idle, quipd used {:.0}% of a core (keep-alives); {} datagrams dropped at its socket; client RTT p99 {} us{}",
        elapsed.as_secs_f64(),
        per_conn / 1024.0,
        marginal / 1024.0,
        idle_cpu_percent.unwrap_or(f64::NAN),
        server_udp_drops.map_or_else(|| "?".into(), |d| d.to_string()),
        rtts.value_at_quantile(0.99),
        if failures.is_empty() {
            String::new()
        } else {
            format!("; failures: {failures:?}")
        }
    );
    Ok((
        json!({"connections": n, "concurrency": concurrency, "users": users}),
        figures,
        summary,
    ))
}

type Outcome = (&'static str, Value, Value, String);

async fn throughput(bench: &Bench, users: usize, messages: usize, window: usize) -> anyhow::Result<Outcome> {
    let pairs = (users / 2).max(1);
    let senders = bench.users("snd", pairs).await?;
    let receivers = bench.users("rcv", pairs).await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, ((s, _), (r, _))) in senders.into_iter().zip(receivers).enumerate() {
        tasks.push(tokio::spawn(async move {
            let to = format!("rcv{i}");
            let recv = tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let mut got = 0;
                while got < messages {
                    match r.next_event().await {
                        Some(v1::Event {
                            kind: Some(v1::event::Kind::Message(m)),
                            ..
                        }) => {
                            got += 1;
                            if let Some(us) = latency_of(start, &m) {
                                let _ = h.record(us);
                            }
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                h
            });
            let mut sent = 0;
            while sent < messages {
                let n = window.min(messages - sent);
                let stamps: Vec<String> = (0..n).map(|_| stamp(start)).collect();
                let futs = stamps.iter().map(|t| s.send_text(&to, t));
                for r in futures::future::join_all(futs).await {
                    r.context("send")?;
                }
                sent += n;
            }
            let acked_at = start.elapsed();
            let h = recv.await?;
            anyhow::Ok((acked_at, h))
        }));
    }
    let mut hist = Histogram::<u64>::new(3)?;
    let mut last_ack = Duration::ZERO;
    for t in tasks {
        let (acked, h) = t.await??;
        last_ack = last_ack.max(acked);
        hist.add(h)?;
    }
    let elapsed = start.elapsed();
    let total = pairs * messages;
    let rate = total as f64 / elapsed.as_secs_f64();
    let figures = json!({
        "messages": total,
        "seconds": elapsed.as_secs_f64(),
        "delivered_per_sec": rate,
        "acked_per_sec": total as f64 / last_ack.as_secs_f64(),
        "latency": percentiles(&hist),
    });
    let summary = format!(
        "throughput: {total} messages ({pairs} pairs x {messages}, window {window}) stored and delivered in {:.2} s = {rate:.0} msg/s; send->receive p50 {} us, p99 {} us",
        elapsed.as_secs_f64(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99)
    );
    Ok((
        "throughput",
        json!({"users": users, "messages": messages, "window": window}),
        figures,
        summary,
    ))
}

async fn latency(bench: &Bench, users: usize, rate: u64, seconds: u64) -> anyhow::Result<Outcome> {
    let pairs = (users / 2).max(1);
    let senders = bench.users("snd", pairs).await?;
    let receivers = bench.users("rcv", pairs).await?;
    let per_pair = (rate as f64 / pairs as f64).max(0.001);
    let each = (per_pair * seconds as f64).round() as usize;
    let start = Instant::now();
    let mut recvs = Vec::new();
    let mut sends = Vec::new();
    for (i, ((s, _), (r, _))) in senders.into_iter().zip(receivers).enumerate() {
        recvs.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut got = 0;
            while got < each {
                match tokio::time::timeout(Duration::from_secs(30), r.next_event()).await {
                    Ok(Some(v1::Event {
                        kind: Some(v1::event::Kind::Message(m)),
                        ..
                    })) => {
                        got += 1;
                        if let Some(us) = latency_of(start, &m) {
                            let _ = h.record(us);
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            h
        }));
        sends.push(tokio::spawn(async move {
            let to = format!("rcv{i}");
            // Open loop: each send starts on schedule, whatever the replies do.
            // Pair i's schedule is shifted by i/pairs of a period, so the
            // total rate is even: one send every 1/rate s, not every pair at
            // once in a burst each period.
            let period = Duration::from_secs_f64(1.0 / per_pair);
            let first = tokio::time::Instant::from_std(start) + period.mul_f64(i as f64 / pairs as f64);
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = futures::stream::FuturesUnordered::new();
            for _ in 0..each {
                let due = tick.tick().await.into_std();
                let s = s.clone();
                let to = to.clone();
                inflight.push(tokio::spawn(async move {
                    s.send_text(&to, &stamp_at(start, due)).await.map(|_| due.elapsed())
                }));
            }
            use futures::StreamExt;
            let mut acks = Histogram::<u64>::new(3).expect("histogram");
            while let Some(r) = inflight.next().await {
                let _ = acks.record(u64::try_from(r??.as_micros()).unwrap_or(u64::MAX));
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acks = Histogram::<u64>::new(3)?;
    for s in sends {
        acks.add(s.await??)?;
    }
    let mut hist = Histogram::<u64>::new(3)?;
    for r in recvs {
        hist.add(r.await?)?;
    }
    let elapsed = start.elapsed();
    let figures = json!({
        "messages": hist.len(),
        "expected": each * pairs,
        "seconds": elapsed.as_secs_f64(),
        "latency": percentiles(&hist),
        "ack_latency": percentiles(&acks),
    });
    let summary = format!(
        "latency at {rate} msg/s for {seconds} s ({pairs} pairs): {} delivered; send->receive p50 {} us, p99 {} us, p99.9 {} us; send->durable ack p50 {} us, p99 {} us",
        hist.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        acks.value_at_quantile(0.5),
        acks.value_at_quantile(0.99)
    );
    Ok((
        "latency",
        json!({"users": users, "rate": rate, "seconds": seconds}),
        figures,
        summary,
    ))
}

async fn sync(bench: &Bench, messages: usize) -> anyhow::Result<Outcome> {
    let mut users = bench.users("usr", 2).await?;
    let (receiver, token) = users.pop().expect("two users");
    let (sender, _) = users.pop().expect("two users");
    receiver.close();
    drop(receiver);
    let start = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = 50.min(messages - sent);
        let stamps: Vec<String> = (0..n).map(|_| stamp(start)).collect();
        for r in futures::future::join_all(stamps.iter().map(|t| sender.send_text("usr1", t))).await {
            r?;
        }
        sent += n;
    }
    let t0 = Instant::now();
    let device = Client::connect(&bench.opts.clone().token(token)).await?;
    let mut tracker = AckTracker::new(0);
    let events = device.sync_all(&mut tracker).await?;
    let elapsed = t0.elapsed();
    anyhow::ensure!(events.len() == messages, "synced {} of {messages}", events.len());
    let figures = json!({"messages": messages, "reconnect_and_sync_ms": elapsed.as_secs_f64() * 1000.0});
    let summary = format!(
        "sync: reconnect and fetch {messages} missed messages in {:.1} ms",
        elapsed.as_secs_f64() * 1000.0
    );
    Ok(("sync", json!({"messages": messages}), figures, summary))
}

async fn fanout(bench: &Bench, members: usize, rate: u64, seconds: u64) -> anyhow::Result<Outcome> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    anyhow::ensure!(members >= 2, "a group needs at least two members");
    let users = bench.users("fan", members).await?;
    let names: Vec<String> = (1..members).map(|i| format!("fan{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let poster = users[0].0.clone();
    let chat = poster
        .create_group("bench", &refs)
        .await?
        .info
        .context("chat info")?
        .chat_id;
    let posts = usize::try_from(rate * seconds).unwrap_or(usize::MAX).max(1);
    let start = Instant::now();
    // Each member: record arrival latency, confirm delivery like a client.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let mut member_tasks = Vec::new();
    for (c, _) in users.iter().skip(1) {
        let (c, tx) = (c.clone(), tx.clone());
        member_tasks.push(tokio::spawn(async move {
            let mut got = 0;
            while got < posts {
                match tokio::time::timeout(Duration::from_secs(30), c.next_event()).await {
                    Ok(Some(v1::Event {
                        kind: Some(v1::event::Kind::Message(m)),
                        ..
                    })) if m.chat_id == chat && m.group_event.is_none() => {
                        got += 1;
                        if let Some(us) = latency_of(start, &m) {
                            let _ = tx.send((m.seq, us));
                        }
                        let _ = c.receipt(chat, v1::ReceiptKind::Delivered, m.seq).await;
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }));
    }
    drop(tx);
    // The poster: open loop at `rate`; remember when each seq was sent.
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let ticks = {
        let (poster, sent_at) = (poster.clone(), sent_at.clone());
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut ticked = 0u64;
            while h.len() < posts as u64 {
                match tokio::time::timeout(Duration::from_secs(30), poster.next_event()).await {
                    Ok(Some(v1::Event {
                        kind: Some(v1::event::Kind::Receipt(r)),
                        ..
                    })) if r.everyone && r.kind == v1::ReceiptKind::Delivered as i32 => {
                        let now = Instant::now();
                        let sent = sent_at.lock().expect("lock");
                        for seq in (ticked + 1)..=r.seq {
                            if let Some(t) = sent.get(&seq) {
                                let _ = h.record(u64::try_from((now - *t).as_micros()).unwrap_or(u64::MAX));
                            }
                        }
                        ticked = ticked.max(r.seq);
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            h
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = futures::stream::FuturesUnordered::new();
    for _ in 0..posts {
        let due = tick.tick().await.into_std();
        let (poster, sent_at) = (poster.clone(), sent_at.clone());
        inflight.push(tokio::spawn(async move {
            let r = poster.send_text_to_chat(chat, &stamp_at(start, due)).await?;
            sent_at.lock().expect("lock").insert(r.seq, due);
            anyhow::Ok(due.elapsed())
        }));
    }
    use futures::StreamExt;
    let mut acks = Histogram::<u64>::new(3)?;
    while let Some(r) = inflight.next().await {
        let _ = acks.record(u64::try_from(r??.as_micros()).unwrap_or(u64::MAX));
    }
    for t in member_tasks {
        t.await?;
    }
    // Latency to the last member, per post.
    let mut last: HashMap<u64, (usize, u64)> = HashMap::new();
    let mut each = Histogram::<u64>::new(3)?;
    while let Some((seq, us)) = rx.recv().await {
        let _ = each.record(us);
        let e = last.entry(seq).or_default();
        e.0 += 1;
        e.1 = e.1.max(us);
    }
    let mut to_last = Histogram::<u64>::new(3)?;
    for (n, max) in last.values() {
        if *n == members - 1 {
            let _ = to_last.record(*max);
        }
    }
    let ticks = match tokio::time::timeout(Duration::from_secs(10), ticks).await {
        Ok(h) => h?,
        Err(_) => Histogram::<u64>::new(3)?,
    };
    let figures = json!({
        "posts": posts,
        "posts_reaching_every_member": to_last.len(),
        "to_last_member": percentiles(&to_last),
        "to_each_member": percentiles(&each),
        "to_delivered_to_everyone_tick": percentiles(&ticks),
        "send_to_durable_ack": percentiles(&acks),
        "seconds": start.elapsed().as_secs_f64(),
    });
    let summary = format!(
        "fanout: {members} members, {rate} posts/s for {seconds} s: {} of {posts} posts reached all {} other members; \
         send->last member p50 {} us, p99 {} us; send->\"delivered to everyone\" tick p50 {} us, p99 {} us",
        to_last.len(),
        members - 1,
        to_last.value_at_quantile(0.5),
        to_last.value_at_quantile(0.99),
        ticks.value_at_quantile(0.5),
        ticks.value_at_quantile(0.99),
    );
    Ok((
        "fanout",
        json!({"members": members, "rate": rate, "seconds": seconds}),
        figures,
        summary,
    ))
}

const TABLE_BEGIN: &str = "<!-- results:begin (generated by scripts/bench-table.sh; do not edit) -->";
const TABLE_END: &str = "<!-- results:end -->";

/// Microseconds as milliseconds with two decimals.
fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "–".into(), |us| format!("{:.2}", us / 1000.0))
}

/// The key figures of one result, in words.
fn key_figures(r: &Value) -> String {
    let f = &r["figures"];
    match r["scenario"].as_str().unwrap_or("") {
        "throughput" => format!(
            "{:.0} msg/s durably stored and delivered; latency p50 {} ms, p99 {} ms; store writer {:.1} µs, committer {:.1} µs CPU per write",
            f["delivered_per_sec"].as_f64().unwrap_or(0.0),
            ms(&f["latency"]["p50_us"]),
            ms(&f["latency"]["p99_us"]),
            f["store"]["writer_cpu_us_per_write"].as_f64().unwrap_or(f64::NAN),
            f["store"]["committer_cpu_us_per_write"].as_f64().unwrap_or(f64::NAN)
        ),
        "latency" => format!(
            "send→receive p50 {} ms, p99 {} ms, p99.9 {} ms; slowest group commit {} ms",
            ms(&f["latency"]["p50_us"]),
            ms(&f["latency"]["p99_us"]),
            ms(&f["latency"]["p999_us"]),
            ms(&f["store"]["max_commit_us"])
        ),
        "fanout" => format!(
            "send→last member p50 {} ms, p99 {} ms; →\"delivered to everyone\" p99 {} ms; slowest group commit {} ms",
            ms(&f["to_last_member"]["p50_us"]),
            ms(&f["to_last_member"]["p99_us"]),
            ms(&f["to_delivered_to_everyone_tick"]["p99_us"]),
            ms(&f["store"]["max_commit_us"])
        ),
        "sync" => format!(
            "{} missed messages in {:.1} ms",
            f["messages"],
            f["reconnect_and_sync_ms"].as_f64().unwrap_or(0.0)
        ),
        "connections" => format!(
            "{} open ({} failed, {} resumed in 0-RTT) at {:.0} handshakes/s ({} datagrams dropped at the server's socket); {:.1} KiB server RSS per connection ({:.1} KiB in the second half); idle: {:.0}% of a core",
            f["open"],
            f["failed"],
            f["resumed_0rtt"],
            f["handshakes_per_sec"].as_f64().unwrap_or(0.0),
            f["server_udp_drops"],
            f["server_rss_bytes_per_connection"].as_f64().unwrap_or(0.0) / 1024.0,
            f["server_rss_bytes_per_connection_second_half"].as_f64().unwrap_or(0.0) / 1024.0,
            f["server_idle_cpu_percent"].as_f64().unwrap_or(f64::NAN)
        ),
        "disk" => format!(
            "fdatasync p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms; {} of {} over 10 ms",
            ms(&f["sync"]["p50_us"]),
            ms(&f["sync"]["p99_us"]),
            ms(&f["sync"]["p999_us"]),
            ms(&f["sync"]["max_us"]),
            f["stalls_over_10ms"],
            f["syncs"]
        ),
        _ => f.to_string(),
    }
}

fn table(readme: &std::path::Path, to_stdout: bool) -> anyhow::Result<()> {
    use std::io::BufRead;
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut rows = vec![
        "| scenario | parameters | key figures | date | commit | machine |".to_owned(),
        "|---|---|---|---|---|---|".to_owned(),
    ];
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Some(start) = line.find('{') else { continue };
        let r: Value = serde_json::from_str(&line[start..]).context("a --json result line")?;
        let m = &r["machine"];
        let machine = format!(
            "{} cores, {:.0} GiB",
            m["cores"],
            m["memory_kib"].as_f64().unwrap_or(0.0) / 1024.0 / 1024.0
        );
        rows.push(format!(
            "| {} | `{}` | {} | {date} | {} | {machine} |",
            r["scenario"].as_str().unwrap_or("?"),
            r["params"],
            key_figures(&r),
            r["commit"].as_str().unwrap_or("?"),
        ));
    }
    let table = rows.join("\n");
    if to_stdout {
        println!("{table}");
        return Ok(());
    }
    let text = std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let (Some(a), Some(b)) = (text.find(TABLE_BEGIN), text.find(TABLE_END)) else {
        anyhow::bail!("{} has no results markers", readme.display());
    };
    let new = format!("{}{TABLE_BEGIN}\n{table}\n{}", &text[..a], &text[b..]);
    std::fs::write(readme, new).with_context(|| format!("writing {}", readme.display()))?;
    Ok(())
}
