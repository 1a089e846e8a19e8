//! Criterion micro-benchmarks of the store's hot paths through the domain
//! functions that use them: appending messages (a batch of sends in one
//! group commit, with fsync), reading a history page and a sync page, on
//! each embedded engine.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use quip_protocol::v1;
use quip_server::service::messages::{self, Page, Target};
use quip_server::service::{Actor, accounts, log};
use quip_server::store::{self, EngineKind, Store};

struct Fixture {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    alice: Actor,
    bob: Actor,
    _dir: tempfile::TempDir,
}

fn fixture(engine: EngineKind) -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store::open_in(dir.path(), Some(engine), 8192).unwrap();
    let phc = accounts::hash_password("bench password").unwrap();
    let (alice, bob) = rt.block_on(async {
        let mut actors = Vec::new();
        for name in ["alice", "bob"] {
            let (_, hash) = accounts::new_token();
            let phc = phc.clone();
            let (id, device) = store::write(&*store, move |t| accounts::register(t, name, &phc, "bench", &hash, 1))
                .await
                .unwrap();
            actors.push(Actor {
                user_id: id,
                username: name.into(),
                device_id: device,
            });
        }
        let bob = actors.pop().unwrap();
        (actors.pop().unwrap(), bob)
    });
    Fixture {
        rt,
        store,
        alice,
        bob,
        _dir: dir,
    }
}

fn content(i: usize) -> v1::Content {
    v1::Content {
        text: format!("message {i} {}", "x".repeat(80)),
        ..Default::default()
    }
}

/// `n` concurrent sends from alice to bob: they share group commits.
async fn sends(f: &Fixture, from: usize, n: usize) {
    let mut pending = Vec::with_capacity(n);
    for i in from..from + n {
        let (actor, c) = (f.alice.clone(), content(i));
        let target = Target::User("bob".into());
        pending.push(
            store::enqueue_write(&*f.store, move |t| {
                messages::send(t, &actor, &target, &format!("m{i}"), &c, 1).map(|s| s.response.seq)
            })
            .await
            .unwrap(),
        );
    }
    for p in pending {
        let _: u64 = p.wait().await.unwrap();
    }
}

fn store_benches(c: &mut Criterion) {
    for engine in [EngineKind::Lsm, EngineKind::Redb] {
        engine_benches(c, engine);
    }
}

/// The same benchmarks on each embedded engine, as group `store/<engine>`.
fn engine_benches(c: &mut Criterion, engine: EngineKind) {
    let f = fixture(engine);
    let mut g = c.benchmark_group(format!("store/{engine:?}").to_lowercase());
    g.sample_size(20).measurement_time(std::time::Duration::from_secs(4));

    let mut next = 0;
    g.throughput(Throughput::Elements(64));
    g.bench_function("append_64_sends_group_commit_fsync", |b| {
        b.iter_batched(
            || {
                next += 64;
                next
            },
            |from| f.rt.block_on(sends(&f, from, 64)),
            BatchSize::SmallInput,
        );
    });

    // Reads over a chat with at least 2,000 messages.
    f.rt.block_on(sends(&f, 1_000_000, 2_000));
    let (alice, bob) = (f.alice.clone(), f.bob.clone());
    g.throughput(Throughput::Elements(50));
    g.bench_function("history_page_50", |b| {
        b.iter(|| {
            let page = store::read(&*f.store, |t| {
                let target = Target::User("bob".into());
                let page = Page {
                    before: 0,
                    after: None,
                    limit: 50,
                };
                messages::history(t, &alice, &target, page, 1 << 20)
            })
            .unwrap();
            assert_eq!(page.messages.len(), 50);
        });
    });
    g.throughput(Throughput::Elements(500));
    g.bench_function("sync_page_500", |b| {
        b.iter(|| {
            let page = store::read(&*f.store, |t| log::sync(t, bob.user_id, bob.device_id, 500, 1 << 20)).unwrap();
            assert_eq!(page.events.len(), 500);
        });
    });
    g.finish();
}

criterion_group!(benches, store_benches);
criterion_main!(benches);
