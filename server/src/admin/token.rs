//! The admin bearer token: 256 random bits in `<data-dir>/admin-token`,
//! owner-only (`0600`), created at the first start with the admin listener
//! on and kept after. Whoever can read the data directory is the operator.

use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The token file's name in the data directory.
pub const FILE: &str = "admin-token";

/// The prefix of an admin token, so a leaked one is recognisable.
pub const PREFIX: &str = "qa1_";

/// The token file of a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The token the admin listener accepts.
pub struct AdminToken {
    /// SHA-256 of the token: compared, so the comparison's time does not
    /// depend on where a guess first differs.
    hash: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Reads the token at `path`, creating it (`0600`, random) if absent;
    /// makes an existing one owner-only if it was not.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let fresh = format!(
            "{PREFIX}{}\n",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        match crate::secret::write_private(path, fresh.as_bytes()) {
            Ok(()) => tracing::info!(path = %path.display(), "created the admin token"),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => crate::secret::tighten(path)?,
            Err(e) => return Err(e),
        }
        let token = read(path)?;
        if token.len() < 16 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: the admin token is shorter than 16 bytes", path.display()),
            ));
        }
        Ok(Self {
            hash: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the token, in time independent of its
    /// content (both sides are hashed, then every byte is compared).
    pub fn verify(&self, presented: &str) -> bool {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        h.iter().zip(self.hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// The token in the file at `path` (trailing whitespace aside).
pub fn read(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_owner_only_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        let t = AdminToken::load_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = read(&p).unwrap();
        assert!(text.starts_with(PREFIX));
        assert!(t.verify(&text));
        assert!(!t.verify(&format!("{text}x")));
        assert!(!t.verify(""));
        // A second start keeps the token.
        let again = AdminToken::load_or_create(&p).unwrap();
        assert!(again.verify(&text));
    }
}
