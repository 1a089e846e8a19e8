//! Certificates: load the operator's, or make a self-signed one for dev mode.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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
        (Some(c), Some(k)) => Ok(Identity {
            certs: read_certs(c)?,
            key: read_key(k)?,
            dev_cert_path: None,
        }),
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
/// the data directory so clients can trust it once.
fn dev_identity(data_dir: &Path) -> anyhow::Result<Identity> {
    let cert_path = data_dir.join("dev-cert.pem");
    let key_path = data_dir.join("dev-key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).context("generating dev certificate")?;
        std::fs::write(&key_path, ck.signing_key.serialize_pem())
            .with_context(|| format!("writing {}", key_path.display()))?;
        std::fs::write(&cert_path, ck.cert.pem()).with_context(|| format!("writing {}", cert_path.display()))?;
        let der = ck.signing_key.serialize_der();
        return Ok(Identity {
            certs: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            dev_cert_path: Some(cert_path),
        });
    }
    Ok(Identity {
        certs: read_certs(&cert_path)?,
        key: read_key(&key_path)?,
        dev_cert_path: Some(cert_path),
    })
}

/// A TLS 1.3-only server configuration for `id`, offering `alpn`.
pub fn server_config(id: &Identity, alpn: &[u8]) -> anyhow::Result<rustls::ServerConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 unavailable")?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .context("certificate and key do not match")?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}
