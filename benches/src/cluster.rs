//! The cluster scenario: one hot group written from several quipd nodes on
//! one FoundationDB. Every send of the group reads and writes the group's
//! head (its last seq) in its transaction, so nodes committing at once
//! conflict and one of them runs its batch again: the figure that matters
//! is conflicts and retries per 1,000 sends, next to throughput and the
//! latency of a push that crosses nodes.

use crate::*;

/// One quipd node, in this process.
struct Node {
    opts: ConnectOptions,
    store: Arc<dyn quip_server::store::Store>,
    _dir: tempfile::TempDir,
}

/// Starts `n` nodes on the FoundationDB cluster of `cluster_file`, under a
/// fresh key prefix; the first node's dev certificate serves them all.
async fn start_nodes(n: usize, cluster_file: &std::path::Path) -> anyhow::Result<Vec<Node>> {
    let prefix = format!("bench-cluster-{}-{:08x}", std::process::id(), rand_u32());
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 0..n {
        let dir = tempfile::tempdir()?;
        let mut config = Config::for_tests(dir.path());
        config.rate_limit = 1e12;
        config.rate_burst = 1e12;
        config.store = quip_server::store::StoreKind::Fdb;
        config.fdb_cluster_file = Some(cluster_file.to_path_buf());
        config.fdb_prefix = prefix.clone();
        if let Some(first) = nodes.first() {
            config.cert = Some(first._dir.path().join("dev-cert.pem"));
            config.key = Some(first._dir.path().join("dev-key.pem"));
        }
        let server = Server::bind(config).with_context(|| format!("starting node {i}"))?;
        let ca = nodes.first().map_or_else(
            || server.dev_cert().cloned().context("dev certificate"),
            |f| Ok(f._dir.path().join("dev-cert.pem")),
        )?;
        let opts = ConnectOptions::new(server.local_addr().to_string(), Some(&ca))?;
        let store = server.store();
        tokio::spawn(server.run(std::future::pending()));
        nodes.push(Node { opts, store, _dir: dir });
    }
    Ok(nodes)
}

pub(crate) fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

pub(crate) async fn hot_group(
    cluster_file: &std::path::Path,
    nodes: usize,
    members: usize,
    messages: usize,
    window: usize,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(nodes >= 1 && members >= 2, "at least one node and two members");
    let cluster = start_nodes(nodes, cluster_file).await?;
    // Member i on node i % nodes; the observer (member 0) on node 0.
    let mut clients = Vec::with_capacity(members);
    for i in 0..members {
        let c = Client::connect(&cluster[i % nodes].opts).await?;
        c.register(&format!("hot{i}"), "bench-password", "bench").await?;
        clients.push(Arc::new(c));
    }
    let names: Vec<String> = (1..members).map(|i| format!("hot{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let chat = clients[0]
        .create_group("hot", &refs)
        .await?
        .info
        .context("chat info")?
        .chat_id;
    let before: Vec<_> = cluster.iter().map(|n| n.store.stats()).collect();
    let senders = members - 1;
    let total = senders * messages;
    let start = Instant::now();
    // The observer on node 0 times pushes from senders on other nodes.
    let observer = {
        let c = clients[0].clone();
        let from_other_nodes: std::collections::HashSet<String> = (1..members)
            .filter(|i| i % nodes != 0)
            .map(|i| format!("hot{i}"))
            .collect();
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut all = Histogram::<u64>::new(3).expect("histogram");
            let mut got = 0;
            let mut last_seq = 0;
            let mut out_of_order = 0u64;
            while got < total {
                match tokio::time::timeout(Duration::from_secs(30), c.next_event()).await {
                    Ok(Some(v1::Event {
                        kind: Some(v1::event::Kind::Message(m)),
                        ..
                    })) if m.chat_id == chat && m.group_event.is_none() => {
                        got += 1;
                        out_of_order += u64::from(m.seq <= last_seq);
                        last_seq = m.seq;
                        if let Some(us) = latency_of(start, &m) {
                            let _ = all.record(us);
                            if from_other_nodes.contains(&m.sender) {
                                let _ = h.record(us);
                            }
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            (h, all, got, out_of_order)
        })
    };
    let mut tasks = Vec::new();
    for c in clients.iter().skip(1) {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            let mut inflight = futures::stream::FuturesUnordered::new();
            let mut sent = 0;
            while sent < messages || !inflight.is_empty() {
                while sent < messages && inflight.len() < window {
                    let c = c.clone();
                    inflight.push(async move {
                        let t = Instant::now();
                        c.send_text_to_chat(chat, &stamp(start)).await.map(|_| t.elapsed())
                    });
                    sent += 1;
                }
                if let Some(r) = futures::StreamExt::next(&mut inflight).await {
                    let _ = h.record(u64::try_from(r?.as_micros()).unwrap_or(u64::MAX));
                }
            }
            anyhow::Ok(h)
        }));
    }
    let mut acks = Histogram::<u64>::new(3)?;
    for t in tasks {
        acks.add(t.await??)?;
    }
    let acked_in = start.elapsed();
    let (push, push_all, pushed, out_of_order) = observer.await?;
    let mut conflicts = 0;
    let mut retries = 0;
    let mut commits = 0;
    let mut writes = 0;
    for (n, b) in cluster.iter().zip(&before) {
        let s = n.store.stats();
        conflicts += s.conflicts - b.conflicts;
        retries += s.retries - b.retries;
        commits += s.commits - b.commits;
        writes += s.writes - b.writes;
    }
    let per_1000 = |x: u64| x as f64 * 1000.0 / total.max(1) as f64;
    let rate = total as f64 / acked_in.as_secs_f64();
    let params = json!({"nodes": nodes, "members": members, "messages": messages, "window": window});
    let figures = json!({
        "sends": total,
        "seconds": acked_in.as_secs_f64(),
        "msgs_per_sec": rate,
        "ack": percentiles(&acks),
        "push": percentiles(&push_all),
        "cross_node_push": percentiles(&push),
        "pushed_to_observer": pushed,
        "pushed_out_of_order": out_of_order,
        "conflicts_per_1000_sends": per_1000(conflicts),
        "retries_per_1000_sends": per_1000(retries),
        "commits": commits,
        "writes_per_commit": writes as f64 / commits.max(1) as f64,
    });
    let summary = format!(
        "cluster: {total} sends into one group from {senders} members on {nodes} nodes in {:.2} s = {rate:.0} msg/s; \
         ack p50 {} us, p99 {} us; push p50 {} us, p99 {} us, of which cross-node p50 {} us, p99 {} us ({pushed} pushed to the observer, {out_of_order} out of order); \
         {:.1} conflicts and {:.1} retries per 1,000 sends; {:.1} writes per commit",
        acked_in.as_secs_f64(),
        acks.value_at_quantile(0.5),
        acks.value_at_quantile(0.99),
        push_all.value_at_quantile(0.5),
        push_all.value_at_quantile(0.99),
        push.value_at_quantile(0.5),
        push.value_at_quantile(0.99),
        per_1000(conflicts),
        per_1000(retries),
        writes as f64 / commits.max(1) as f64,
    );
    Ok(("cluster", params, figures, summary))
}
