//! Test support: a real quipd on loopback QUIC with its store in a temp dir.
#![allow(dead_code)]

pub mod daemon;
pub mod files;
pub mod https;
pub mod plain_http;
pub mod raw;
pub mod relay;
pub mod ws;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quip_client::{Client, ConnectOptions};
use quip_protocol::v1;
use quip_server::store::Store;
use quip_server::{Config, Server};
use tokio::sync::oneshot;

pub const PASSWORD: &str = "correct horse battery";

/// A running server.
pub struct TestServer {
    pub addr: String,
    /// The HTTPS (WebSocket) listener.
    pub https: std::net::SocketAddr,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
    pub store: Arc<dyn Store>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Every node's address: `addr` alone, or with `QUIP_TEST_STORE=fdb3`
    /// three nodes of one cluster, which [`TestServer::options`] takes in
    /// turn.
    nodes: Vec<String>,
    next_node: std::sync::atomic::AtomicUsize,
    /// The other nodes' stop signals and tasks.
    others: Vec<(oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl TestServer {
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(Config::for_tests(dir)).await
    }

    /// With `QUIP_TEST_STORE=fdb` (and a build with the `fdb` feature) the
    /// server keeps its data in FoundationDB instead of the data directory,
    /// under a key prefix derived from the data directory's path, so a test
    /// that restarts a server on the same directory finds its data again:
    /// the whole suite runs on either store.
    ///
    /// With `QUIP_TEST_STORE=fdb3` it starts three nodes of one cluster on
    /// that prefix (the first's certificate serves all three), and every new
    /// connection goes to the next node, round robin: the same assertions
    /// must hold with a test's clients spread over a cluster.
    pub async fn start_with(mut config: Config) -> Self {
        let mode = std::env::var("QUIP_TEST_STORE").unwrap_or_default();
        let embedded = config.store == quip_server::store::StoreKind::Embedded;
        if embedded && (mode == "fdb" || mode == "fdb3") {
            on_foundationdb(&mut config);
        }
        let mut node = Self::start_one(config.clone()).await;
        if embedded && mode == "fdb3" {
            for i in 1..3 {
                let mut c = config.clone();
                c.data_dir = config.data_dir.join(format!("node{i}"));
                c.cert = Some(node.ca.clone());
                c.key = Some(config.data_dir.join("dev-key.pem"));
                // A cluster's nodes share their media (spec §21).
                c.media_dir = Some(config.data_dir.join("media"));
                let other = Self::start_one(c).await;
                node.nodes.push(other.addr.clone());
                let Self { stop, task, .. } = other;
                node.others.push((stop.expect("running"), task.expect("running")));
            }
        }
        node
    }

    async fn start_one(config: Config) -> Self {
        let data_dir = config.data_dir.clone();
        // A restarted server must wait for the old one to release the store file.
        let server = {
            let mut tries = 0;
            loop {
                match Server::bind(config.clone()) {
                    Ok(s) => break s,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("server did not start: {e:#}"),
                }
            }
        };
        let addr = server.local_addr().to_string();
        let https = server.https_addr().expect("tests run with HTTPS");
        let ca = server
            .dev_cert()
            .cloned()
            .or_else(|| config.cert.clone())
            .expect("dev cert");
        let store = server.store();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            nodes: vec![addr.clone()],
            next_node: std::sync::atomic::AtomicUsize::new(0),
            others: Vec::new(),
            addr,
            https,
            ca,
            data_dir,
            store,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// How many nodes serve this test (3 with `QUIP_TEST_STORE=fdb3`).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Options to reach this server. Keep-alives every 250 ms, so tests may
    /// shorten the server's idle timeout to a second.
    pub fn options(&self) -> ConnectOptions {
        let i = self.next_node.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.options_at(&self.nodes[i % self.nodes.len()])
    }

    /// Options to reach this server at another address (a relay in front).
    pub fn options_at(&self, addr: &str) -> ConnectOptions {
        ConnectOptions::new(addr, Some(&self.ca))
            .unwrap()
            .keep_alive(Duration::from_millis(250))
            .unwrap()
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.options()).await.expect("connect")
    }

    pub async fn connect_as(&self, token: &str) -> Client {
        Client::connect(&self.options().token(token))
            .await
            .expect("connect with token")
    }

    /// Registers `name` on a fresh connection; returns it and the token.
    pub async fn user(&self, name: &str) -> (Client, String) {
        let c = self.connect().await;
        let auth = c.register(name, PASSWORD, "test").await.expect("register");
        (c, auth.token)
    }

    /// Logs `name` in as another device.
    pub async fn device(&self, name: &str) -> (Client, String) {
        let c = self.connect().await;
        let auth = c.login(name, PASSWORD, "another").await.expect("login");
        (c, auth.token)
    }

    /// Creates `n` accounts named `{prefix}{i}` straight through the
    /// account service in one store transaction (one shared password hash
    /// instead of n argon2 runs), each with a device token to connect with.
    pub async fn users_fast(&self, prefix: &str, n: usize) -> Vec<(String, String)> {
        use quip_server::service::{ServiceError, accounts};
        let phc = accounts::hash_password(PASSWORD).unwrap();
        let users: Vec<(String, String, [u8; 32])> = (0..n)
            .map(|i| {
                let (token, hash) = accounts::new_token();
                (format!("{prefix}{i}"), token, hash)
            })
            .collect();
        let batch = users.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        quip_server::store::write(&*self.store, move |t| {
            for (name, _, hash) in &batch {
                accounts::register(t, name, &phc, "test", hash, now)?;
            }
            Ok::<_, ServiceError>(())
        })
        .await
        .unwrap();
        users.into_iter().map(|(n, t, _)| (n, t)).collect()
    }

    pub async fn stop(mut self) {
        self.stop.take().map(|s| s.send(()));
        let others = std::mem::take(&mut self.others);
        let mut tasks = Vec::new();
        for (stop, task) in others {
            let _ = stop.send(());
            tasks.push(task);
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    }
}

/// The next pushed event other than presence, or panic after a few
/// seconds. Presence is announced asynchronously (on FoundationDB after a
/// write of its own), so a contact's "online" may land between any two
/// events a test waits for; the presence tests read every event themselves.
pub async fn next_event(c: &Client) -> v1::Event {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = c.next_event().await.expect("connection open");
            if !matches!(e.kind, Some(v1::event::Kind::Presence(_))) {
                return e;
            }
        }
    })
    .await
    .expect("an event within 5 s")
}

/// The next pushed message event (skipping receipts).
pub async fn next_message(c: &Client) -> (u64, v1::Message) {
    loop {
        let e = next_event(c).await;
        if let Some(v1::event::Kind::Message(m)) = e.kind {
            return (e.pos, m);
        }
    }
}

/// Asserts no event arrives for a short while.
pub async fn no_event(c: &Client) {
    let r = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            let e = c.next_event().await;
            if !matches!(
                &e,
                Some(v1::Event {
                    kind: Some(v1::event::Kind::Presence(_)),
                    ..
                })
            ) {
                return e;
            }
        }
    })
    .await;
    assert!(r.is_err(), "unexpected event (presence aside): {:?}", r.unwrap());
}

pub fn text(m: &v1::Message) -> &str {
    m.content.as_ref().map_or("", |c| c.text.as_str())
}

/// The next pushed event that satisfies `f`, skipping others.
pub async fn next_matching(c: &Client, f: impl Fn(&v1::Event) -> bool) -> v1::Event {
    loop {
        let e = next_event(c).await;
        if f(&e) {
            return e;
        }
    }
}

/// The group event kind of a message, if it is one.
pub fn group_event(m: &v1::Message) -> Option<v1::GroupEventKind> {
    m.group_event
        .as_ref()
        .map(|g| v1::GroupEventKind::try_from(g.kind).unwrap_or_default())
}

/// The error code of a failed request.
pub fn code<T: std::fmt::Debug>(r: Result<T, quip_client::ClientError>) -> Option<v1::ErrorCode> {
    r.expect_err("the request should fail").code()
}

/// The texts of the message events among `events`, in order.
pub fn message_texts(events: &[v1::Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(v1::event::Kind::Message(m)) => Some(text(m).to_owned()),
            _ => None,
        })
        .collect()
}

/// Puts `config`'s data in the shared test FoundationDB (see
/// [`TestServer::start_with`]).
#[cfg(feature = "fdb")]
fn on_foundationdb(config: &mut Config) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.data_dir.hash(&mut h);
    config.store = quip_server::store::StoreKind::Fdb;
    config.fdb_cluster_file = Some(quip_server::testing::FdbServer::shared().cluster_file().to_path_buf());
    config.fdb_prefix = format!("suite-{}-{:016x}", std::process::id(), h.finish());
}

#[cfg(not(feature = "fdb"))]
fn on_foundationdb(_: &mut Config) {
    panic!("QUIP_TEST_STORE=fdb needs the tests built with --features quip-tests/fdb");
}
