//! TLS: certificates (the operator's, or a self-signed one for dev mode),
//! the server configuration, and the cache of resumable sessions.
//!
//! Every handshake, QUIC and HTTPS alike, takes its certificate from one
//! [`Certificates`], which [`Certificates::reload`] (quipd calls it on
//! SIGHUP) swaps for the files' new contents: connections already open keep
//! the session they negotiated, new handshakes present the new
//! certificate, and a certificate that does not load (unreadable, not PEM,
//! a key that does not match) is refused while the old one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// A certificate chain and its key.
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Where the dev certificate was written, when one was generated or reused.
    pub dev_cert_path: Option<PathBuf>,
}

/// Loads `cert`/`key` PEM files, or, when absent, the dev certificate in
/// `data_dir` (generating it on first run).
pub fn load(cert: Option<&Path>, key: Option<&Path>, data_dir: &Path) -> anyhow::Result<Identity> {
    match (cert, key) {
        (Some(c), Some(k)) => {
            if let Ok(meta) = std::fs::metadata(k) {
                crate::secret::warn_if_loose(k, &meta, "TLS private key (--key)");
            }
            Ok(Identity {
                certs: read_certs(c)?,
                key: read_key(k)?,
                dev_cert_path: None,
            })
        }
        _ => dev_identity(data_dir),
    }
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading certificate {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificate {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate found in {}", path.display());
    Ok(certs)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading key {}", path.display()))?;
    rustls_pemfile::private_key(&mut &pem[..])
        .with_context(|| format!("parsing key {}", path.display()))?
        .with_context(|| format!("no private key found in {}", path.display()))
}

/// The dev certificate: self-signed for localhost, 127.0.0.1 and ::1, kept in
/// the data directory so clients can trust it once. Its key is written
/// owner-only (`0600`): anyone who reads it can impersonate this server.
fn dev_identity(data_dir: &Path) -> anyhow::Result<Identity> {
    let cert_path = data_dir.join("dev-cert.pem");
    let key_path = data_dir.join("dev-key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).context("generating dev certificate")?;
        // A key without its certificate (a start interrupted in between) is
        // replaced: a secret file is never overwritten in place.
        let _ = std::fs::remove_file(&key_path);
        crate::secret::write_private(&key_path, ck.signing_key.serialize_pem().as_bytes())
            .with_context(|| format!("writing {}", key_path.display()))?;
        std::fs::write(&cert_path, ck.cert.pem()).with_context(|| format!("writing {}", cert_path.display()))?;
        let der = ck.signing_key.serialize_der();
        return Ok(Identity {
            certs: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            dev_cert_path: Some(cert_path),
        });
    }
    // Earlier versions wrote it with the umask's mode (often 0644).
    crate::secret::tighten(&key_path).with_context(|| format!("restricting {}", key_path.display()))?;
    Ok(Identity {
        certs: read_certs(&cert_path)?,
        key: read_key(&key_path)?,
        dev_cert_path: Some(cert_path),
    })
}

/// The certificate handshakes present now, and the files it came from.
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    /// The chain's file and the key's: the operator's, or the dev pair in
    /// the data directory.
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Certificates {
    /// Serves `id`, loaded from `cert`/`key` (or the dev pair in
    /// `data_dir` when they are absent), which [`Certificates::reload`]
    /// reads again.
    pub fn new(id: &Identity, cert: Option<&Path>, key: Option<&Path>, data_dir: &Path) -> anyhow::Result<Arc<Self>> {
        let (cert_path, key_path) = match (cert, key) {
            (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
            _ => (data_dir.join("dev-cert.pem"), data_dir.join("dev-key.pem")),
        };
        let loaded = certified(id.certs.clone(), id.key.clone_key())?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(loaded),
            cert_path,
            key_path,
        }))
    }

    /// Reads the certificate and key files again and serves them from the
    /// next handshake on. On any error the certificate in use stays.
    /// Returns the new leaf certificate's SHA-256 fingerprint (hex), for
    /// the log. Blocking file reads: call off the async threads.
    pub fn reload(&self) -> anyhow::Result<String> {
        let certs = read_certs(&self.cert_path)?;
        let key = read_key(&self.key_path)?;
        let loaded = certified(certs, key)
            .with_context(|| format!("{} with {}", self.cert_path.display(), self.key_path.display()))?;
        let fingerprint = fingerprint(&loaded);
        self.current.store(Arc::new(loaded));
        Ok(fingerprint)
    }

    /// The certificate file reloads read.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The leaf certificate in use: its SHA-256 fingerprint (hex).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current.load())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A chain and key, checked to belong together.
fn certified(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> anyhow::Result<CertifiedKey> {
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .context("the certificate and the key do not match, or the key is not supported")
}

fn fingerprint(k: &CertifiedKey) -> String {
    let leaf = k.cert.first().map(|c| Sha256::digest(c.as_ref())).unwrap_or_default();
    leaf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A TLS 1.3-only server configuration presenting `certs`, offering `alpn`.
pub fn server_config(certs: Arc<Certificates>, alpn: &[u8]) -> anyhow::Result<rustls::ServerConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// Resumable TLS 1.3 sessions, taken (single use) when a client resumes.
///
/// rustls's own `ServerSessionMemoryCache` finds the entry to take by a
/// linear scan of its insertion-order queue under one global lock: with
/// tens of thousands of sessions cached, every resumed handshake compared
/// that many keys while every other handshake waited (3% of quipd's
/// samples at 10,000 connections; at 100,000, 363 handshakes/s with 104
/// failed against 1,002/s and none failed with this cache). quick_cache
/// takes in O(1) on sharded locks, and its eviction keeps recently issued
/// tickets over old ones just as well.
pub struct SessionCache(quick_cache::sync::Cache<Vec<u8>, Vec<u8>>);

impl SessionCache {
    /// A cache of at most `sessions` entries (a few hundred bytes each).
    pub fn new(sessions: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self(quick_cache::sync::Cache::new(sessions.max(1))))
    }
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache").field("len", &self.0.len()).finish()
    }
}

impl rustls::server::StoresServerSessions for SessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.insert(key, value);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.remove(key).map(|(_, v)| v)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::StoresServerSessions;

    use super::SessionCache;

    #[test]
    fn a_session_is_taken_once() {
        let cache = SessionCache::new(16);
        assert!(cache.put(b"ticket".to_vec(), b"state".to_vec()));
        assert_eq!(cache.get(b"ticket").as_deref(), Some(&b"state"[..]));
        assert_eq!(cache.take(b"ticket").as_deref(), Some(&b"state"[..]));
        assert_eq!(
            cache.take(b"ticket"),
            None,
            "a ticket's early data must be accepted at most once"
        );
        assert_eq!(cache.get(b"ticket"), None);
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let cache = SessionCache::new(1_000);
        for i in 0..10_000u32 {
            cache.put(i.to_be_bytes().to_vec(), vec![0; 100]);
        }
        let kept = (0..10_000u32).filter(|i| cache.get(&i.to_be_bytes()).is_some()).count();
        assert!((1..=1_100).contains(&kept), "kept {kept} of 10,000 in a cache of 1,000");
        assert!(
            cache.get(&9_999u32.to_be_bytes()).is_some(),
            "the newest session was evicted"
        );
    }
}
