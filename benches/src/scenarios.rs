//! The load scenarios: disk, connections, throughput, latency, sync, fanout.

use crate::*;

/// Appends `bytes` and syncs with fdatasync (what a group commit costs the
/// disk) for `seconds`, on the file system of the temp dir.
pub(crate) fn disk(seconds: u64, bytes: usize) -> anyhow::Result<(Value, Value, String)> {
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

pub(crate) async fn connections_scenario(
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

pub(crate) type Outcome = (&'static str, Value, Value, String);

pub(crate) async fn throughput(bench: &Bench, users: usize, messages: usize, window: usize) -> anyhow::Result<Outcome> {
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

pub(crate) async fn latency(bench: &Bench, users: usize, rate: u64, seconds: u64) -> anyhow::Result<Outcome> {
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

pub(crate) async fn sync(bench: &Bench, messages: usize) -> anyhow::Result<Outcome> {
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

pub(crate) async fn fanout(bench: &Bench, members: usize, rate: u64, seconds: u64) -> anyhow::Result<Outcome> {
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
