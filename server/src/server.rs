//! The listener: binds the QUIC endpoint, accepts connections, shuts down.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quip_protocol::{ALPN, CloseCode};

use crate::config::Config;
use crate::media::{self, MediaStore};
use crate::secret;
use crate::session::Shared;
use crate::store::Store;
use crate::transport::admission::{Admission, Decision};
use crate::transport::{http, quic, tls};

/// A UDP socket with `buffer`-byte kernel buffers (as far as the kernel
/// allows; the effective size is logged).
fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket
        .set_recv_buffer_size(buffer)
        .and_then(|()| socket.set_send_buffer_size(buffer))
    {
        tracing::warn!(error = %e, "could not enlarge UDP socket buffers");
    }
    tracing::debug!(
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "UDP socket buffers"
    );
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The next TCP connection, or never when HTTPS is off.
async fn accept_tcp(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Resumable TLS sessions kept (a few hundred bytes each).
const TLS_SESSION_CACHE: usize = 65_536;

/// How long a shutdown waits for connections to write their last replies
/// and close. Request replies take a round trip; what can hold a connection
/// longer is a media transfer, which is cut at this point (uploads resume).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// A bound, not yet running server.
pub struct Server {
    endpoint: quinn::Endpoint,
    /// The HTTPS listener and its TLS acceptor, unless disabled.
    https: Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    shared: Arc<Shared>,
    dev_cert: Option<PathBuf>,
    /// What QUIC and HTTPS handshakes present; reloadable.
    certs: Arc<tls::Certificates>,
    /// The admin listener, the metrics it renders and the token its API
    /// takes, when configured.
    admin: Option<(
        std::net::TcpListener,
        metrics_exporter_prometheus::PrometheusHandle,
        Arc<crate::admin::token::AdminToken>,
    )>,
}

impl Server {
    /// Opens the store in the data directory and binds the QUIC endpoint.
    pub fn bind(config: Config) -> anyhow::Result<Self> {
        // Owner-only: it holds the database, media and private keys.
        crate::secret::private_dir(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let secret_path = (config.secret_file.clone()).unwrap_or_else(|| config.data_dir.join(secret::DEFAULT_FILE));
        let secret = secret::NodeSecret::load_or_create(&secret_path)?;
        let store = crate::store::open(&config).with_context(|| match config.store {
            crate::store::StoreKind::Embedded => format!("opening the store in {}", config.data_dir.display()),
            crate::store::StoreKind::Fdb => format!("opening the FoundationDB store (prefix {:?})", config.fdb_prefix),
        })?;
        let id = tls::load(config.cert.as_deref(), config.key.as_deref(), &config.data_dir)?;
        let certs = tls::Certificates::new(&id, config.cert.as_deref(), config.key.as_deref(), &config.data_dir)?;

        let mut tls = tls::server_config(certs.clone(), ALPN)?;
        // 0-RTT for returning clients (quinn requires u32::MAX to enable
        // it). Resumption is stateful: a ticket is taken from this cache on
        // use, so one ticket's early data is accepted once; what may run
        // from early data at all is limited to replay-safe requests
        // (kinds::of). The cache bounds memory: beyond it old
        // tickets are forgotten and those clients do a full handshake.
        tls.max_early_data_size = u32::MAX;
        tls.session_storage = tls::SessionCache::new(TLS_SESSION_CACHE);
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS config")?;
        // Retry tokens sealed with a key from the node secret stay valid
        // across a restart and between nodes sharing the secret.
        let mut server_config = quinn::ServerConfig::new(Arc::new(crypto), Arc::new(secret.token_key()));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(config.max_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            // Flow control bounds what a client can make the server buffer:
            // 1 MiB per stream (one maximum frame), 4 MiB per connection.
            .stream_receive_window(quinn::VarInt::from_u32(1 << 20))
            .receive_window(quinn::VarInt::from_u32(4 << 20))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_secs(config.idle_timeout_secs)).context("idle timeout")?,
            ))
            // No path-MTU probing: packets stay at QUIC's 1,200-byte minimum.
            // quinn keeps each connection's transmit buffer at its largest
            // datagram for the connection's life, and the first 1,452-byte
            // probe doubles it to 2,400 bytes: 1.1 KiB more per idle
            // connection (of ~40 KiB, measured with a counting allocator
            // over 10,000 connections). Quip's frames are mostly far smaller
            // than a packet; bulk transfers (sync pages) measured ~2% slower
            // on loopback. Probing also costs packets in every handshake.
            .mtu_discovery_config(None);
        server_config.transport_config(Arc::new(transport));
        let socket = udp_socket(config.listen, config.socket_buffer)
            .with_context(|| format!("binding UDP {}", config.listen))?;
        // Stateless-reset tokens from the node secret: after a restart the
        // server still resets the connections it lost, so their clients
        // reconnect at their next packet rather than at their idle timeout.
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(secret.reset_key()));
        let cid_key = secret.cid_key();
        endpoint_config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .with_context(|| format!("starting QUIC on {}", config.listen))?;
        let https = if config.no_https {
            None
        } else {
            let addr = config.https_listen.unwrap_or(config.listen);
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("binding TCP {addr} for HTTPS"))?;
            listener.set_nonblocking(true)?;
            Some((listener, http::tls_acceptor(certs.clone())?))
        };
        let admin = match config.admin_listen {
            Some(addr) => {
                // Before anything is counted: the message path keeps the
                // handles it looks up first (see crate::metrics).
                let metrics = crate::metrics::install()?;
                let listener = std::net::TcpListener::bind(addr)
                    .with_context(|| format!("binding TCP {addr} for the admin listener"))?;
                listener.set_nonblocking(true)?;
                if !addr.ip().is_loopback() {
                    tracing::warn!(%addr, "the admin listener is reachable beyond loopback; its metrics and health need no authentication (its API needs the admin token)");
                }
                let token_path = crate::admin::token::path(&config.data_dir);
                let token = crate::admin::token::AdminToken::load_or_create(&token_path)
                    .with_context(|| format!("creating the admin token {}", token_path.display()))?;
                Some((listener, metrics, Arc::new(token)))
            }
            None => None,
        };
        let media = Arc::new(MediaStore::open(&config)?);
        let shared = Arc::new(Shared::new(store, Arc::new(config), media));
        Ok(Self {
            endpoint,
            https,
            shared,
            dev_cert: id.dev_cert_path,
            certs,
            admin,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("bound socket has an address")
    }

    /// The HTTPS listener's address, unless it is disabled.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The certificate handshakes present, to reload (SIGHUP).
    pub fn certificates(&self) -> Arc<tls::Certificates> {
        self.certs.clone()
    }

    /// The admin listener's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _, _)| l.local_addr().ok())
    }

    /// The dev certificate's path, when running with one.
    pub fn dev_cert(&self) -> Option<&PathBuf> {
        self.dev_cert.as_ref()
    }

    /// The store (tests inspect its counters).
    pub fn store(&self) -> Arc<dyn Store> {
        self.shared.store.clone()
    }

    /// Serves until `shutdown` resolves, then drains (see [`crate::shutdown`]):
    /// stops accepting, stops reading requests and refuses new writes,
    /// finishes queued commits, lets every connection write the replies
    /// they released and close itself with code 3 (within
    /// [`DRAIN_DEADLINE`]), then releases the store.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            endpoint,
            shared,
            https,
            admin,
            ..
        } = self;
        let (tcp, acceptor) = match https {
            Some((l, a)) => (Some(tokio::net::TcpListener::from_std(l)?), Some(a)),
            None => (None, None),
        };
        // With a FoundationDB store this node joins the cluster before it
        // takes its first connection.
        let addr = endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default();
        shared.join_cluster(addr).await.context("joining the cluster")?;
        let router = http::router(shared.clone());
        let admin = match admin {
            Some((listener, metrics, token)) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let upkeep = tokio::spawn(crate::metrics::upkeep(metrics.clone()));
                let serve = tokio::spawn(crate::transport::admin::serve(listener, shared.clone(), metrics, token));
                Some((upkeep, serve))
            }
            None => None,
        };
        let sweep = tokio::spawn(media::sweep_abandoned(
            shared.store.clone(),
            shared.media.clone(),
            Duration::from_secs(shared.config.media_unsent_ttl_secs),
            Duration::from_secs(shared.config.media_sweep_secs),
        ));
        let (max_age, max_messages) = (shared.config.retention(), shared.config.retention_max_messages);
        let retention = (max_age.is_some() || max_messages > 0).then(|| {
            tokio::spawn(crate::retention::run(crate::retention::Sweeper {
                store: shared.store.clone(),
                media: shared.media.clone(),
                cluster: shared.cluster.clone(),
                clock: shared.clock,
                max_age,
                max_messages,
                every: Duration::from_secs(shared.config.retention_sweep_secs),
            }))
        });
        let backups = crate::backup::start(&shared.config, shared.store.clone());
        let max_conn = shared.config.max_connections;
        let admission = Admission::new(shared.config.max_connections_per_ip);
        let mut conns = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    if conns.len() >= max_conn {
                        incoming.refuse();
                        continue;
                    }
                    let ip = incoming.remote_address().ip();
                    match admission.quic(ip, incoming.remote_address_validated()) {
                        Decision::Accept(slot) => {
                            conns.spawn(quic::serve_connection(incoming, shared.clone(), slot));
                        }
                        // Stateless: a spoofed Initial's Retry goes to its
                        // victim, who ignores it, and nothing is held.
                        Decision::Retry => {
                            if let Err(e) = incoming.retry() {
                                e.into_incoming().refuse();
                            }
                        }
                        Decision::Refuse => incoming.refuse(),
                    }
                }
                accepted = accept_tcp(tcp.as_ref()) => {
                    let Ok((stream, peer)) = accepted else { continue };
                    if conns.len() >= max_conn {
                        continue; // dropping the stream refuses it
                    }
                    let Some(slot) = admission.tcp(peer.ip()) else { continue };
                    let (router, shared) = (router.clone(), shared.clone());
                    let acceptor = acceptor.clone().expect("listener implies acceptor");
                    conns.spawn(async move {
                        http::serve_connection(stream, peer, acceptor, router, shared).await;
                        drop(slot);
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = &mut shutdown => break,
            }
        }
        tracing::info!(
            connections = shared.shutdown.live(),
            "shutting down: draining connections"
        );
        sweep.abort();
        if let Some(r) = retention {
            r.abort();
        }
        drop(backups);
        endpoint.set_server_config(None);
        // Connections stop reading requests and new writes are refused;
        // the store commits every write already queued, which releases the
        // replies waiting for them; each connection writes its replies and
        // closes itself with code 3.
        shared.shutdown.begin();
        shared.store.shutdown().await;
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
            tokio::join!(shared.shutdown.all_gone(), async {
                while conns.join_next().await.is_some() {}
            })
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = shared.shutdown.live(),
                "connections still busy after {} s (media transfers?): closing them",
                DRAIN_DEADLINE.as_secs()
            );
        }
        shared.hub.close_all(CloseCode::ServerShutdown, "server shutting down");
        endpoint.close(
            quinn::VarInt::from_u32(CloseCode::ServerShutdown.code()),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        conns.shutdown().await;
        // Last: through the drain /readyz said 503 and /metrics counted it.
        if let Some((upkeep, serve)) = admin {
            upkeep.abort();
            serve.abort();
        }
        drop(shared);
        tracing::info!("shutdown complete");
        Ok(())
    }
}
