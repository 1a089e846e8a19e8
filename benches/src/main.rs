//! `quip-bench`: load scenarios against a real `quipd` (started in-process
//! on loopback with its store in a temp dir, so runs are self-contained and
//! bounded). Each scenario prints a summary, or with `--json` one object with
//! every figure, the parameters, the git commit and the machine.
//!
//! Clients and server share the machine: figures are for "server and load
//! generator on one box", the setting the targets in benches/README.md use.

mod cluster;
#[cfg(feature = "fdb")]
mod fdb_baseline;
mod harness;
mod probes;
mod scenarios;
mod table;

use cluster::*;
use harness::*;
use probes::*;
use scenarios::*;
use table::*;

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
    /// Run the in-process server on FoundationDB (this cluster file, a key
    /// prefix of its own) instead of the embedded store: throughput,
    /// latency, fanout and sync. Needs `--features fdb`.
    #[arg(long, global = true)]
    fdb_cluster_file: Option<std::path::PathBuf>,
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
    /// One hot group written from several quipd nodes (in this process) on
    /// one FoundationDB cluster: msgs/s, send-to-ack latency, the latency of
    /// pushes that cross nodes, and conflicts and retries per 1,000 sends.
    /// Needs a quip-bench built with `--features quip-server/fdb`.
    Cluster {
        /// The FoundationDB cluster file (a key prefix of its own is used).
        #[arg(long)]
        fdb_cluster_file: std::path::PathBuf,
        /// quipd nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Group members; all but the first send, spread over the nodes.
        #[arg(long, default_value_t = 7)]
        members: usize,
        /// Messages each sender sends.
        #[arg(long, default_value_t = 300)]
        messages: usize,
        /// Sends each sender keeps in flight.
        #[arg(long, default_value_t = 8)]
        window: usize,
    },
    /// The bare FoundationDB baseline: the keys of one direct message
    /// written by a FoundationDB client alone, one transaction per message,
    /// from many concurrent writers. Quip on FoundationDB is measured
    /// against it. Needs `--features fdb` and `--fdb-cluster-file`.
    FdbBare {
        /// Messages in all.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Concurrent writers (one chat each).
        #[arg(long, default_value_t = 256)]
        loops: usize,
    },
    /// A device offline while K messages arrive; time from reconnect until
    /// it has them all.
    Sync {
        /// Messages missed.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
    },
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
    if let Scenario::Cluster {
        fdb_cluster_file,
        nodes,
        members,
        messages,
        window,
    } = &cli.scenario
    {
        let (name, params, figures, summary) =
            hot_group(fdb_cluster_file, *nodes, *members, *messages, *window).await?;
        report(cli.json, name, params, figures, summary);
        return Ok(());
    }
    if let Scenario::FdbBare { messages, loops } = cli.scenario {
        let file = cli
            .fdb_cluster_file
            .as_deref()
            .context("fdb-bare needs --fdb-cluster-file")?;
        #[cfg(feature = "fdb")]
        {
            let (name, params, figures, summary) = fdb_baseline::bare(file, messages, loops).await?;
            report(cli.json, name, params, figures, summary);
            return Ok(());
        }
        #[cfg(not(feature = "fdb"))]
        anyhow::bail!(
            "fdb-bare ({messages} messages, {loops} writers) on {}: this quip-bench was built without --features fdb",
            file.display()
        );
    }
    let bench = Bench::start(cli.store_engine, cli.fdb_cluster_file.as_deref()).await?;
    let (name, params, figures, summary) = match cli.scenario {
        Scenario::Throughput {
            users,
            messages,
            window,
        } => throughput(&bench, users, messages, window).await?,
        Scenario::Latency { users, rate, seconds } => latency(&bench, users, rate, seconds).await?,
        Scenario::Sync { messages } => sync(&bench, messages).await?,
        Scenario::Fanout { members, rate, seconds } => fanout(&bench, members, rate, seconds).await?,
        Scenario::Connections { .. }
        | Scenario::Table { .. }
        | Scenario::Disk { .. }
        | Scenario::Cluster { .. }
        | Scenario::FdbBare { .. } => {
            unreachable!("handled above")
        }
    };
    let mut figures = figures;
    let mut params = params;
    let engine = match &cli.fdb_cluster_file {
        Some(_) => "fdb".to_owned(),
        None => format!("{:?}", cli.store_engine).to_lowercase(),
    };
    params["store_engine"] = json!(engine);
    figures["process_rss_kib"] = json!(rss_kib(bench.server_pid));
    let st = bench.store.stats();
    figures["store"] = json!({
        "engine": engine,
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
