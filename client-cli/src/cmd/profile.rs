//! What `quip` remembers between runs: $QUIP_HOME/profile.json.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};

/// What `quip` remembers between runs.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Profile {
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    pub user: Option<String>,
    pub device_id: Option<u32>,
    pub token: Option<String>,
}

pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("QUIP_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    dirs::config_dir()
        .map(|d| d.join("quip"))
        .ok_or_else(|| anyhow!("no config directory: set QUIP_HOME"))
}

impl Profile {
    pub fn load(home: &Path) -> anyhow::Result<Self> {
        let path = home.join("profile.json");
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the profile (it holds a bearer token: mode 0600 on unix) to a
    /// temporary file and renames it into place, so a crash never leaves half
    /// a profile.
    pub fn save(&self, home: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        let path = home.join("profile.json");
        let tmp = home.join("profile.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            // `mode` applies only to a new file; a leftover one keeps its own.
            #[cfg(unix)]
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            f.write_all(&serde_json::to_vec_pretty(self)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().with_context(|| format!("writing {}", path.display()))
    }

    pub fn token(&self) -> anyhow::Result<&str> {
        self.token.as_deref().ok_or_else(|| super::fail::NotLoggedIn.into())
    }
}
