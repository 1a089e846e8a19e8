//! The bare FoundationDB baseline: what a client of FoundationDB alone
//! reaches writing the keys one direct message costs Quip, one message per
//! transaction, with its reads issued at once. Quip's throughput on
//! `--fdb-cluster-file` is reported against it (benches/README.md): the gap
//! is what Quip's own machinery costs (protocol, sessions, fan-out, the
//! group-commit writer), not the database.

use crate::*;
use foundationdb::{Database, FdbBindingError};

/// The keys of one direct message between the users `2l` and `2l + 1`
/// (chat `l`), in the shapes Quip writes (spec/storage.md): the chat's head
/// (its last seq), the message, the sender's cursor, an entry in both
/// users' logs and their log heads, the idempotency record and both users'
/// chat-list entries: 10 writes after 6 reads (head, idempotency, cursor,
/// both log heads, the recipient's block list).
async fn one_message(db: &Database, prefix: &[u8], l: u64, n: u64, body: &[u8]) -> Result<(), FdbBindingError> {
    let key = |tag: &str, parts: &[u64]| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(tag.as_bytes());
        for p in parts {
            k.extend_from_slice(&p.to_be_bytes());
        }
        k
    };
    let (sender, recipient) = (2 * l, 2 * l + 1);
    db.run(|tr, _| {
        let key = &key;
        async move {
            let number = |v: Option<foundationdb::future::FdbSlice>| {
                v.and_then(|v| v.as_ref().try_into().ok()).map_or(0, u64::from_be_bytes)
            };
            let (head, idem, _cursor, sender_head, recipient_head, _blocked) = futures::try_join!(
                tr.get(&key("chat/", &[l]), false),
                tr.get(&key("idem/", &[l, sender, n]), false),
                tr.get(&key("cur/", &[l, sender]), false),
                tr.get(&key("loghead/", &[sender]), false),
                tr.get(&key("loghead/", &[recipient]), false),
                tr.get(&key("block/", &[recipient, sender]), false),
            )?;
            if idem.is_some() {
                return Ok(()); // a retry after an unknown commit result that committed
            }
            let seq = number(head) + 1;
            let (sp, rp) = (number(sender_head) + 1, number(recipient_head) + 1);
            tr.set(&key("chat/", &[l]), &seq.to_be_bytes());
            tr.set(&key("msg/", &[l, seq]), body);
            tr.set(&key("cur/", &[l, sender]), &seq.to_be_bytes());
            tr.set(&key("log/", &[sender, sp]), &seq.to_be_bytes());
            tr.set(&key("log/", &[recipient, rp]), &seq.to_be_bytes());
            tr.set(&key("loghead/", &[sender]), &sp.to_be_bytes());
            tr.set(&key("loghead/", &[recipient]), &rp.to_be_bytes());
            tr.set(&key("idem/", &[l, sender, n]), &seq.to_be_bytes());
            tr.set(&key("uchat/", &[sender, l]), &seq.to_be_bytes());
            tr.set(&key("uchat/", &[recipient, l]), &seq.to_be_bytes());
            Ok(())
        }
    })
    .await
}

/// `messages` direct messages from `loops` concurrent writers (one chat
/// each, as the throughput scenario's sender/receiver pairs).
pub(crate) async fn bare(cluster_file: &std::path::Path, messages: usize, loops: usize) -> anyhow::Result<Outcome> {
    anyhow::ensure!(loops >= 1, "at least one writer");
    quip_server::store::fdb::start_client_network()?;
    let path = cluster_file.to_str().context("cluster file path is not UTF-8")?;
    let db = Arc::new(Database::new(Some(path))?);
    let prefix = Arc::new(format!("bench-bare-{}-{:08x}/", std::process::id(), rand_u32()).into_bytes());
    // A direct message as Quip stores it is ~150 bytes.
    let body = Arc::new(vec![b'x'; 150]);
    let each = messages.div_ceil(loops);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(loops);
    for l in 0..loops {
        let (db, prefix, body) = (db.clone(), prefix.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            for n in 0..each {
                let t = Instant::now();
                one_message(&db, &prefix, l as u64, n as u64, &body)
                    .await
                    .map_err(|e| anyhow::anyhow!("FoundationDB: {e:?}"))?;
                let _ = h.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            anyhow::Ok(h)
        }));
    }
    let mut commits = Histogram::<u64>::new(3)?;
    for t in tasks {
        commits.add(t.await??)?;
    }
    let took = start.elapsed();
    let total = each * loops;
    let rate = total as f64 / took.as_secs_f64();
    // Leave nothing behind in the cluster.
    let (begin, mut end) = (prefix.to_vec(), prefix.to_vec());
    end.push(0xff);
    db.run(|tr, _| {
        let (begin, end) = (&begin, &end);
        async move {
            tr.clear_range(begin, end);
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("FoundationDB: {e:?}"))?;
    let params = json!({"messages": total, "loops": loops});
    let figures = json!({
        "seconds": took.as_secs_f64(),
        "msgs_per_sec": rate,
        "commit": percentiles(&commits),
    });
    let summary = format!(
        "bare FoundationDB: {total} direct messages (6 reads, 10 writes, one transaction each) from {loops} writers in {:.2} s = {rate:.0} msg/s; commit p50 {} us, p99 {} us",
        took.as_secs_f64(),
        commits.value_at_quantile(0.5),
        commits.value_at_quantile(0.99),
    );
    Ok(("fdb-bare", params, figures, summary))
}
