//! How to reach a server: [`ConnectOptions`] and the TLS 1.3 and QUIC
//! transport settings built from them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quip_protocol::ALPN;

use crate::ClientError;

/// How to reach a server.
///
/// Clones share one TLS configuration and with it the cache of resumable
/// sessions, so a reconnect made with (a clone of) the same options resumes
/// the TLS session and sends its first requests in 0-RTT.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `host`, `host:port`, an IPv6 address, or `[v6]:port`; the port
    /// defaults to [`DEFAULT_PORT`].
    pub server: String,
    /// PEM certificate to trust (a dev server's self-signed one). Without it
    /// the platform's web PKI roots are used.
    pub ca_pem: Option<Vec<u8>>,
    /// The QUIC client configuration built from `ca_pem`.
    pub(crate) quic: quinn::ClientConfig,
    /// Local address to bind [`Client::endpoint`](crate::Client::endpoint)'s socket to (default:
    /// any address, any port).
    pub bind: Option<SocketAddr>,
    /// Session token to resume; `None` connects anonymously.
    pub token: Option<String>,
    /// Sent in Hello for the server's logs.
    pub client_name: String,
    /// Connect without making the user online (Hello.background): for
    /// background sync and one-shot tools.
    pub background: bool,
    /// Give up connecting (QUIC and TLS handshake, then Hello and Welcome)
    /// after this long, with [`ClientError::Connect`] saying the server did
    /// not answer. `None`: wait for QUIC's idle timeout (30 s).
    pub connect_timeout: Option<Duration>,
}

impl ConnectOptions {
    /// Options for `server`, trusting the PEM file at `ca` if given.
    pub fn new(server: impl Into<String>, ca: Option<&Path>) -> Result<Self, ClientError> {
        let ca_pem = ca
            .map(|p| std::fs::read(p).map_err(|e| ClientError::Connect(format!("reading CA {}: {e}", p.display()))))
            .transpose()?;
        let quic = quic_config(ca_pem.as_deref())?;
        Ok(Self {
            server: server.into(),
            ca_pem,
            quic,
            bind: None,
            background: false,
            connect_timeout: None,
            token: None,
            client_name: concat!("quip-client/", env!("CARGO_PKG_VERSION")).into(),
        })
    }

    /// With a session token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

/// The port a server address without one gets: QUIC on UDP 4433 (spec §2).
pub const DEFAULT_PORT: u16 = 4433;

/// A server address as `host:port`: `host` and a bare IPv6 address get
/// [`DEFAULT_PORT`]; `host:port` and `[v6]:port` stay as they are.
pub fn with_default_port(server: &str) -> String {
    let server = server.trim();
    if let Some(rest) = server.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((_, "")) => format!("{server}:{DEFAULT_PORT}"),
            _ => server.to_owned(),
        };
    }
    if server.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{server}]:{DEFAULT_PORT}");
    }
    match server.rsplit_once(':') {
        Some(_) => server.to_owned(),
        None => format!("{server}:{DEFAULT_PORT}"),
    }
}

impl ConnectOptions {
    /// With another keep-alive interval than [`KEEP_ALIVE`] (tests that
    /// shorten the server's idle timeout need a shorter one). Starts a new
    /// resumable-session cache.
    pub fn keep_alive(mut self, every: Duration) -> Result<Self, ClientError> {
        self.quic = quic_config_with(self.ca_pem.as_deref(), every)?;
        Ok(self)
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("client_name", &self.client_name)
            .finish_non_exhaustive()
    }
}

/// How often an idle connection sends a QUIC PING. Home routers and carrier
/// NATs commonly drop idle UDP bindings after 30 s or more; 10 s keeps the
/// binding and lets two PINGs in a row be lost before the server's 30 s
/// idle timeout. Only an idle connection pings, and only while connected: a
/// backgrounded app should close its connection and rely on push
/// notifications rather than wake the radio every 10 s.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

fn quic_config(ca_pem: Option<&[u8]>) -> Result<quinn::ClientConfig, ClientError> {
    quic_config_with(ca_pem, KEEP_ALIVE)
}

fn quic_config_with(ca_pem: Option<&[u8]>, keep_alive: Duration) -> Result<quinn::ClientConfig, ClientError> {
    let tls = tls_config(ca_pem)?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| ClientError::Connect(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(keep_alive))
        .max_concurrent_uni_streams(64u32.into())
        .mtu_discovery_config(Some(mtu_discovery()));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Path-MTU discovery that tries one size: 1,452 bytes (a 1,500-byte path,
/// most Wi-Fi and cellular ones), else the connection keeps QUIC's 1,200.
///
/// quinn's default binary search sends four probes (1,326 to 1,436 bytes)
/// per connection, each a packet of PADDING frames that the server's QUIC
/// stack parses one byte at a time: perf put that at a fifth of quipd's CPU
/// while accepting connections; 10,000 connections opened at 930-1,210
/// handshakes/s with four probes, 1,170-1,405 with one (alternating runs).
/// One probe keeps the larger packets for media transfers where the path
/// allows them; the sizes in between are not worth three more probes.
fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtud = quinn::MtuDiscoveryConfig::default();
    mtud.upper_bound(1452).minimum_change(1452 - 1200);
    mtud
}

fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| ClientError::Connect(format!("bad CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Connect(format!("bad CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Connect("no certificate in the CA file".into()));
        }
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    // Resumed sessions send their first flight as 0-RTT; the server runs
    // only replay-safe requests from it (others get TOO_EARLY, which
    // `request` retries once the handshake is done).
    cfg.enable_early_data = true;
    Ok(cfg)
}

/// ring's suites with TLS_AES_128_GCM_SHA256 preferred (the server takes the
/// client's order). ring lists AES-256-GCM-SHA384 first, whose key schedule
/// runs on SHA-512 blocks that no x86 instruction speeds up, where SHA-256
/// has SHA-NI: the SHA-384 HMACs of each handshake were 7% of quipd's and 9%
/// of a client's CPU while opening connections. AES-128 also encrypts every
/// packet in 10 rounds instead of 14, and is what QUIC's Initial packets and
/// browsers use anyway.
fn crypto_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

#[cfg(test)]
mod tests {
    use super::with_default_port;

    #[test]
    fn a_server_address_gets_the_default_port_unless_it_has_one() {
        for (given, want) in [
            ("localhost", "localhost:4433"),
            ("localhost:5000", "localhost:5000"),
            ("quip.example.org", "quip.example.org:4433"),
            ("127.0.0.1", "127.0.0.1:4433"),
            ("127.0.0.1:9", "127.0.0.1:9"),
            ("::1", "[::1]:4433"),
            ("[::1]", "[::1]:4433"),
            ("[::1]:5000", "[::1]:5000"),
            ("[2001:db8::7]:443", "[2001:db8::7]:443"),
            (" localhost ", "localhost:4433"),
        ] {
            assert_eq!(with_default_port(given), want, "{given:?}");
        }
    }

    #[test]
    fn the_client_offers_aes_128_gcm_sha256_first_and_keeps_the_others() {
        let suites: Vec<_> = super::crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
        assert!(suites.contains(&rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
    }
}
