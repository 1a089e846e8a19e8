//! `quipd backup` and `quipd restore` on the command line: their flags,
//! and what they print.

use std::path::PathBuf;

use super::{backup, restore};
use crate::config::Config;

/// `quipd backup` and `quipd restore` (run instead of the server).
#[derive(Debug, clap::Parser)]
#[command(name = "quipd", version, about = "Back up or restore a quipd data directory")]
pub enum Command {
    /// Copies a consistent snapshot of the store, the local media and the
    /// node secret and dev certificate into DIR. With quipd running on
    /// that data directory it takes the snapshot through the server
    /// (writes go on meanwhile); with none, from the store itself. Every
    /// message acknowledged before it starts is in it. FoundationDB stores:
    /// use fdbbackup. Media in S3 is not copied (use the bucket's
    /// versioning or `aws s3 sync`).
    Backup(BackupArgs),
    /// Brings a backup back into a new data directory, verified first.
    Restore(RestoreArgs),
}

/// `quipd backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// A new or empty directory for the backup (created owner-only).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The server's data directory.
    #[arg(long, env = "QUIP_DATA_DIR", default_value = "quip-data")]
    pub data_dir: PathBuf,
    /// The server's local media directory, if not <data-dir>/media.
    #[arg(long, env = "QUIP_MEDIA_DIR")]
    pub media_dir: Option<PathBuf>,
    /// The server's S3 media bucket, if it uses one: media is then not copied.
    #[arg(long, env = "QUIP_MEDIA_S3_BUCKET")]
    pub media_s3_bucket: Option<String>,
}

/// `quipd restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The backup directory (`quipd backup --to`).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The new data directory: must not hold a store yet.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where local media goes, if not <data-dir>/media.
    #[arg(long)]
    pub media_dir: Option<PathBuf>,
    /// Storage engine of the new store (default: lsm).
    #[arg(long, value_enum)]
    pub store_engine: Option<crate::store::EngineKind>,
}

/// Whether the command line asks for `backup` or `restore` rather than the
/// server.
pub fn requested() -> bool {
    matches!(std::env::args().nth(1).as_deref(), Some("backup" | "restore"))
}

/// Runs `quipd backup` or `quipd restore` from the command line.
pub async fn main() -> anyhow::Result<()> {
    use clap::Parser;
    let mut config = Config::default();
    match Command::parse() {
        Command::Backup(a) => {
            config.data_dir = a.data_dir;
            config.media_dir = a.media_dir;
            config.media_s3_bucket = a.media_s3_bucket;
            let m = backup(&config, &a.to).await?;
            println!(
                "backed up {} keys and {} media files ({} bytes, media: {}) to {}",
                m.keys,
                m.media_files,
                m.media_bytes,
                m.media,
                a.to.display()
            );
            if m.media_missing > 0 {
                eprintln!(
                    "warning: {} media chunk objects were deleted (by a sweep) between the snapshot and the copy; \
                     their media will not download after a restore",
                    m.media_missing
                );
            }
        }
        Command::Restore(a) => {
            config.data_dir = a.data_dir;
            config.media_dir = a.media_dir;
            config.store_engine = a.store_engine;
            let m = restore(&a.from, &config).await?;
            println!(
                "restored {} keys and {} media files into {}",
                m.keys,
                m.media_files,
                config.data_dir.display()
            );
        }
    }
    Ok(())
}
