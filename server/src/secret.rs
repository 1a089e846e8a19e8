//! Private files: the data directory and the key files in it are kept from
//! other users, and the node secret that QUIC's stateless-reset and Retry
//! token keys derive from.
//!
//! The data directory holds the database, media, the dev certificate's
//! private key and the node secret, so it is created `0700` and its secret
//! files `0600` whatever the process umask. A data directory that already
//! exists is left as the operator made it (it may be a mount point, or
//! shared with a backup group on purpose); quipd warns when other users can
//! read it, and likewise for a `--key` or `--secret-file` they can read.
//!
//! # The node secret
//!
//! QUIC keys two stateless mechanisms with long-lived server keys:
//! - **stateless resets**: a server that lost a connection's state (it
//!   restarted) answers its next packet with a reset the client recognises
//!   only if the token was derived from the same key as when the connection
//!   began; with a key fresh at every start, clients of a restarted server
//!   notice nothing until their idle timeout;
//! - **Retry tokens**: a token minted before a restart, or by another node
//!   behind the same address, is accepted only if the key is the same.
//!
//! (Connection ids carry a tag keyed likewise: quinn answers with a reset
//! only packets whose connection id it recognises as one it issued.)
//! These derive (HKDF-SHA256, one label each) from one secret file: by
//! default `<data-dir>/secret`, 32 random bytes written hex-encoded on first
//! start. Nodes of a cluster behind one address point `--secret-file` at the
//! same file (any content of 32 bytes or more) so each recognises the
//! others' resets and tokens.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use ring::{hkdf, hmac};

/// The secret file's name in the data directory.
pub const DEFAULT_FILE: &str = "secret";

/// Fewest bytes a secret file must hold (after trailing whitespace).
pub const MIN_LEN: usize = 32;

/// Why the node secret could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The file could not be created, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The secret file.
        path: PathBuf,
        /// What the filesystem said.
        source: std::io::Error,
    },
    /// The file holds fewer than [`MIN_LEN`] bytes.
    #[error("{path}: a secret needs at least {MIN_LEN} bytes, the file has {len}")]
    TooShort {
        /// The secret file.
        path: PathBuf,
        /// Its length after trailing whitespace.
        len: usize,
    },
}

/// Creates `dir` (and missing parents) `0700` whatever the umask; warns if
/// it already existed and other users can read it.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) => {
            warn_if_loose(dir, &meta, "data directory");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            // The umask may have taken bits from the mode (never added).
            std::fs::set_permissions(dir, Permissions::from_mode(0o700))
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a new file at `path`, `0600` whatever the umask.
/// Fails if the file exists: a secret is never overwritten.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.set_permissions(Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Makes a file quipd generated itself owner-only if an older version left
/// it readable by others.
pub fn tighten(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "file with private key material was readable by other users; made it 0600"
        );
        std::fs::set_permissions(path, Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Warns (at startup) when users other than the owner may read `path`.
pub fn warn_if_loose(path: &Path, meta: &std::fs::Metadata, what: &str) {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        let fix = if meta.is_dir() { "700" } else { "600" };
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "{what} is accessible to other users; consider chmod {fix}"
        );
    }
}

/// The node secret: what the QUIC endpoint's long-lived keys derive from.
pub struct NodeSecret {
    prk: hkdf::Prk,
}

impl std::fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeSecret(..)")
    }
}

/// An HKDF output length (ring's way of asking for one).
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl NodeSecret {
    /// Reads the secret at `path`, creating it (`0600`, random) if there is
    /// none. Nodes that should share resets and Retry tokens read the same
    /// file.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let mut hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        hex.push('\n');
        match write_private(path, hex.as_bytes()) {
            Ok(()) => tracing::info!(path = %path.display(), "created the node secret"),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let meta = std::fs::metadata(path).map_err(io)?;
        warn_if_loose(path, &meta, "secret file");
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_bytes(&bytes).ok_or_else(|| SecretError::TooShort {
            path: path.to_owned(),
            len: bytes.trim_ascii_end().len(),
        })
    }

    /// A secret from a file's content (trailing whitespace aside, so an
    /// editor's newline changes nothing); `None` if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let ikm = bytes.trim_ascii_end();
        (ikm.len() >= MIN_LEN).then(|| Self {
            prk: hkdf::Salt::new(hkdf::HKDF_SHA256, b"quip node secret v1").extract(ikm),
        })
    }

    /// 32 bytes for one purpose; different `label`s give independent keys.
    fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.prk
            .expand(&[label], Len(out.len()))
            .and_then(|okm| okm.fill(&mut out))
            .expect("32 bytes is a valid HKDF-SHA256 length");
        out
    }

    /// The key stateless-reset tokens are computed with
    /// (`quinn::EndpointConfig::new`).
    pub fn reset_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.derive(b"quic stateless reset"))
    }

    /// The key connection ids are tagged with: quinn sends stateless resets
    /// only for packets whose connection id carries its generator's tag, so
    /// a restarted server must tag (and check) with the same key.
    pub fn cid_key(&self) -> u64 {
        let b = self.derive(b"quic connection id");
        u64::from_le_bytes(b[..8].try_into().expect("8 of 32 bytes"))
    }

    /// The key Retry tokens are sealed with (`quinn::ServerConfig::new`).
    pub fn token_key(&self) -> hkdf::Prk {
        hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &self.derive(b"quic retry token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_created_once_and_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_FILE);
        let a = NodeSecret::load_or_create(&path).unwrap();
        let content = std::fs::read(&path).unwrap();
        let b = NodeSecret::load_or_create(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), content, "the secret was rewritten");
        let tag = |s: &NodeSecret| hmac::sign(&s.reset_key(), b"cid").as_ref().to_vec();
        assert_eq!(tag(&a), tag(&b));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn keys_differ_by_purpose_and_by_secret() {
        let s = NodeSecret::from_bytes(&[7; 32]).unwrap();
        let t = NodeSecret::from_bytes(&[8; 32]).unwrap();
        assert_ne!(s.derive(b"quic stateless reset"), s.derive(b"quic retry token"));
        assert_ne!(s.cid_key(), t.cid_key());
        assert_ne!(s.derive(b"quic stateless reset"), t.derive(b"quic stateless reset"));
        let with_newline = NodeSecret::from_bytes(&[[7; 32].as_slice(), b"\n"].concat()).unwrap();
        assert_eq!(s.derive(b"x"), with_newline.derive(b"x"));
    }

    #[test]
    fn a_short_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, b"too short\n").unwrap();
        assert!(matches!(
            NodeSecret::load_or_create(&path),
            Err(SecretError::TooShort { len: 9, .. })
        ));
    }
}
