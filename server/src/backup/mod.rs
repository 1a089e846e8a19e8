//! `quipd backup` and `quipd restore`: a consistent copy of a running
//! server's embedded store and local media, and bringing it back into a
//! new data directory.
//!
//! ```text
//!  quipd backup ──connect──► <data-dir>/backup.sock ─► serve(): one read
//!      │                    (0600, in the 0700 data dir)  snapshot of the
//!      │ ◄──────────── dump stream (format below) ───────  whole keyspace
//!      ├─► DIR/store.qbk  (verified as it arrives: count and SHA-256)
//!      ├─► DIR/media/…    (the local media directory, copied afterwards)
//!      └─► DIR/manifest.json, and the node secret and dev certificate
//!  quipd restore --from DIR --data-dir NEW: verify store.qbk, write it into
//!      a fresh store in batches, copy media and keys.
//! ```
//!
//! **Consistency.** The dump is one snapshot (`Store::read`), so it holds
//! exactly the writes committed before it was taken: every message whose
//! sender was told "sent" before the backup began is in it, with the seqs,
//! logs and cursors of that moment, while writes go on undisturbed (both
//! embedded engines read snapshots without blocking the writer). Media is
//! copied after the snapshot: chunk objects are written before the records
//! that count them, so every byte a snapshot record relies on is already
//! there; an object deleted between the snapshot and the copy (the
//! abandoned-upload or retention sweep) is missing from the copy, and its
//! record then downloads as an error after a restore. The backup checks
//! every stored blob of the dump against the copy and reports how many
//! chunk objects it missed (`media_missing` in the manifest).
//!
//! **Reach.** Only the operator reaches the socket (0600, in the
//! owner-only data directory); whoever can read the data
//! directory can read everything in it anyway. With no server running,
//! `quipd backup` opens the store itself (the engines' locks keep it from
//! doing so under a running server that has no socket).
//!
//! **FoundationDB** is out of scope: its own `fdbbackup`/`fdbrestore` take
//! consistent, continuous backups of a cluster, and a snapshot of a large
//! database cannot be read within its 5-second transaction limit. **S3
//! media** is not copied: use the bucket's versioning or replication, or
//! `aws s3 sync` after the backup (chunks are immutable once written).
//!
//! # Layout
//! - [`format`]: the dump format, sans-IO.
//! - `dump`: the server's half: a snapshot dump, served on the socket.
//! - this module: taking a backup, restoring one.
//! - [`cli`]: the subcommands.

pub mod cli;
mod dump;
pub mod format;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use cli::{Command, main, requested};
use dump::stream_dump;
pub use dump::{Serving, start};
use format::{CHUNK, Decoder, Item};

use crate::config::Config;
use crate::store::{self, Store, StoreError, StoreKind};

/// The socket a running server serves dumps on, in its data directory.
pub const SOCKET: &str = "backup.sock";
/// The dump's file name in a backup directory.
pub const DUMP: &str = "store.qbk";
/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// Files of the data directory copied besides the store and media: the
/// node secret and the dev certificate, so clients and QUIC resets keep
/// working against a restored server.
const KEY_FILES: [&str; 3] = [crate::secret::DEFAULT_FILE, "dev-cert.pem", "dev-key.pem"];
/// A restore's write: at most this many keys or bytes (inside
/// FoundationDB's limits too).
const RESTORE_KEYS: usize = 1_000;
const RESTORE_BYTES: usize = 4 << 20;

// ---------------------------------------------------------------- backup

/// What a backup holds (`manifest.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The dump format (1).
    pub format: u32,
    /// When the backup finished, ms since the Unix epoch.
    pub created_ms: i64,
    /// Keys in the dump.
    pub keys: u64,
    /// SHA-256 of the dump's records (as in its trailer), hex.
    pub sha256: String,
    /// Media chunk objects copied (0 when media is in S3).
    pub media_files: u64,
    /// Their bytes.
    pub media_bytes: u64,
    /// Where the media is: "local" (copied under media/) or "s3 (not copied)".
    pub media: String,
    /// Chunk objects of stored media in the dump but not in the copy
    /// (deleted by a sweep between the snapshot and the copy): 0 normally.
    #[serde(default)]
    pub media_missing: u64,
}

/// Takes a backup of the server configured by `config` into `to` (a new or
/// empty directory): from the running server through its socket, or, with
/// none running, from the store directly.
pub async fn backup(config: &Config, to: &Path) -> anyhow::Result<Manifest> {
    if config.store != StoreKind::Embedded {
        bail!("quipd backup covers the embedded store; back up FoundationDB with fdbbackup");
    }
    prepare_empty(to)?;
    let partial = to.join(format!("{DUMP}.partial"));
    // Owner-only, like the directory: it holds every record of the store.
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options
        .open(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let socket = config.data_dir.join(SOCKET);
    let (keys, sha256) = match connect(&socket).await? {
        Some(mut stream) => receive(&mut stream, &mut file).await?,
        None => {
            // No server: read the store itself.
            let store = store::open(config).with_context(|| {
                format!(
                    "no server answers on {} and the store cannot be opened",
                    socket.display()
                )
            })?;
            let (a, mut b) = tokio::io::duplex(CHUNK);
            let dumping = tokio::spawn(stream_dump(store.clone(), a));
            let got = receive(&mut b, &mut file).await;
            dumping.await.context("the dump task failed")??;
            store.shutdown().await;
            got?
        }
    };
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&partial, to.join(DUMP)).await?;

    let (media_files, media_bytes, media, media_missing) = match &config.media_s3_bucket {
        Some(_) => (0, 0, "s3 (not copied)".to_owned(), 0),
        None => {
            let src = media_dir(config);
            let (n, bytes) = copy_tree(&src, &to.join("media")).await?;
            let missing = missing_chunks(&to.join(DUMP), &to.join("media")).await?;
            (n, bytes, "local".to_owned(), missing)
        }
    };
    copy_key_files(&config.data_dir, to).await?;
    let manifest = Manifest {
        format: 1,
        created_ms: crate::clock::Clock::system().wall_ms(),
        keys,
        sha256: crate::service::media::hex(&sha256),
        media_files,
        media_bytes,
        media,
        media_missing,
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    crate::secret::write_private(&to.join(MANIFEST), &json)?;
    Ok(manifest)
}

/// Connects to a running server's backup socket; `None` when none runs.
#[cfg(unix)]
async fn connect(socket: &Path) -> anyhow::Result<Option<tokio::net::UnixStream>> {
    match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => Ok(Some(s)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("connecting to {}", socket.display())),
    }
}

#[cfg(not(unix))]
async fn connect(_: &Path) -> anyhow::Result<Option<tokio::io::DuplexStream>> {
    Ok(None)
}

/// Copies a dump from `r` to `file`, checking it as it passes. Returns its
/// key count and checksum; an incomplete or damaged dump is an error.
async fn receive(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    file: &mut tokio::fs::File,
) -> anyhow::Result<(u64, [u8; 32])> {
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut end = None;
    loop {
        let n = r.read(&mut buf).await.context("reading the dump")?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).await?;
        dec.feed(&buf[..n]);
        while let Some(item) = dec.next()? {
            if let Item::End { count, sha256 } = item {
                end = Some((count, sha256));
            }
        }
    }
    end.filter(|_| dec.complete())
        .context("the dump ended early: the server stopped or failed during the backup")
}

/// How many chunk objects of the blobs in the dump (`mblob/`) are not in
/// the media copy at `media`.
async fn missing_chunks(dump: &Path, media: &Path) -> anyhow::Result<u64> {
    use prost::Message as _;
    let mut reader = DumpReader::open(dump).await?;
    let mut missing = 0;
    while let Some((key, value)) = reader.next().await? {
        if !key.starts_with(b"mblob/") {
            continue;
        }
        let blob = crate::records::BlobRecord::decode(value.as_slice()).context("a blob record in the dump")?;
        let dir = media.join("chunks").join(crate::service::media::hex(&blob.chunks_of));
        for index in 0..blob.size.div_ceil(crate::media::CHUNK) {
            if !tokio::fs::try_exists(dir.join(format!("{index:010}"))).await? {
                missing += 1;
            }
        }
    }
    Ok(missing)
}

fn media_dir(config: &Config) -> PathBuf {
    config
        .media_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("media"))
}

/// Creates `dir` owner-only, refusing one that holds anything.
fn prepare_empty(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty", dir.display());
    }
    crate::secret::private_dir(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Copies the files under `from` to `to` (missing `from`: nothing).
/// Skips the local object store's files in progress (`name#n`), which are
/// renamed into place only once whole. Returns files and bytes copied.
async fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut dirs = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = dirs.pop() {
        let mut entries = match tokio::fs::read_dir(&src).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", src.display())),
        };
        tokio::fs::create_dir_all(&dst).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let kind = entry.file_type().await?;
            if kind.is_dir() {
                dirs.push((entry.path(), dst.join(&name)));
            } else if kind.is_file() && !name.to_string_lossy().contains('#') {
                match tokio::fs::copy(entry.path(), dst.join(&name)).await {
                    Ok(n) => {
                        files += 1;
                        bytes += n;
                    }
                    // Deleted since it was listed (a sweep): not part of the copy.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).with_context(|| format!("copying {}", entry.path().display())),
                }
            }
        }
    }
    Ok((files, bytes))
}

/// Copies the node secret and dev certificate, where present, owner-only.
async fn copy_key_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    for name in KEY_FILES {
        match tokio::fs::read(from.join(name)).await {
            Ok(bytes) if !to.join(name).exists() => crate::secret::write_private(&to.join(name), &bytes)?,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", from.join(name).display())),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- restore

/// Restores the backup in `from` into the store `config` names (a data
/// directory holding no store yet), its media and key files. The dump is
/// verified whole before anything is written.
pub async fn restore(from: &Path, config: &Config) -> anyhow::Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(
        &tokio::fs::read(from.join(MANIFEST))
            .await
            .with_context(|| format!("reading {}", from.join(MANIFEST).display()))?,
    )
    .context("reading the manifest")?;
    let dump_path = from.join(DUMP);
    let (count, sha) = verify(&dump_path).await?;
    if count != manifest.keys || crate::service::media::hex(&sha) != manifest.sha256 {
        bail!("{} does not match the manifest", dump_path.display());
    }
    if config.store == StoreKind::Embedded {
        for existing in ["db", "quip.redb"] {
            if config.data_dir.join(existing).exists() {
                bail!(
                    "{} already holds a store: restore into a new data directory",
                    config.data_dir.display()
                );
            }
        }
    }
    crate::secret::private_dir(&config.data_dir)?;
    let store = store::open(config).context("opening the new store")?;
    let written = write_all(&*store, &dump_path).await;
    store.shutdown().await;
    written?;
    if manifest.media == "local" {
        copy_tree(&from.join("media"), &media_dir(config)).await?;
    }
    copy_key_files(from, &config.data_dir).await?;
    Ok(manifest)
}

/// Writes every record of the dump into `store`, in bounded batches.
async fn write_all(store: &dyn Store, dump: &Path) -> anyhow::Result<()> {
    let mut reader = DumpReader::open(dump).await?;
    let mut batch = Vec::new();
    let mut bytes = 0;
    loop {
        let record = reader.next().await?;
        let last = record.is_none();
        if let Some((k, v)) = record {
            bytes += k.len() + v.len();
            batch.push((k, v));
        }
        if (last && !batch.is_empty()) || batch.len() >= RESTORE_KEYS || bytes >= RESTORE_BYTES {
            let b = std::mem::take(&mut batch);
            bytes = 0;
            store::write(store, move |t| {
                for (k, v) in &b {
                    t.set(k, v);
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        }
        if last {
            return Ok(());
        }
    }
}

/// Reads every record of the dump at `path` and verifies its trailer.
/// Returns the key count and checksum.
async fn verify(path: &Path) -> anyhow::Result<(u64, [u8; 32])> {
    let mut reader = DumpReader::open(path).await?;
    while reader.next().await?.is_some() {}
    reader.end.context("verified dump without an end")
}

/// A dump file read in pieces, one record at a time.
struct DumpReader {
    file: tokio::fs::File,
    path: PathBuf,
    dec: Decoder,
    buf: Vec<u8>,
    /// The trailer's count and checksum, once read.
    end: Option<(u64, [u8; 32])>,
}

impl DumpReader {
    async fn open(path: &Path) -> anyhow::Result<Self> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            dec: Decoder::new(),
            buf: vec![0u8; 256 * 1024],
            end: None,
        })
    }

    /// The next record; `None` after the last, once the trailer checked out.
    async fn next(&mut self) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
        loop {
            match self.dec.next()? {
                Some(Item::Record(k, v)) => return Ok(Some((k, v))),
                Some(Item::End { count, sha256 }) => self.end = Some((count, sha256)),
                None => {
                    let n = self.file.read(&mut self.buf).await?;
                    if n == 0 {
                        if self.dec.complete() {
                            return Ok(None);
                        }
                        bail!("{} is incomplete", self.path.display());
                    }
                    self.dec.feed(&self.buf[..n]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EngineKind;

    /// Every record of a store, in order.
    fn records(store: &dyn Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut bytes = Vec::new();
        dump::dump(store, &mut |c| {
            bytes.extend_from_slice(&c);
            Ok(())
        })
        .unwrap();
        let (records, end) = format::tests::decode(&bytes, 1 << 16).unwrap();
        assert!(end.is_some());
        records
    }

    /// Offline backup of an lsm store (no server: `backup` reads the store
    /// itself), restored into redb: the same keyspace, byte for byte, and
    /// the local media and key files come along. A damaged dump is refused
    /// before anything is written.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_backup_restores_the_same_keyspace_into_either_engine() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = Config::for_tests(dir.path().join("data"));
        source.store_engine = Some(EngineKind::Lsm);
        crate::secret::private_dir(&source.data_dir).unwrap();
        let store = store::open(&source).unwrap();
        store::write(&*store, |t| {
            for i in 0..3_000u32 {
                t.set(
                    format!("msg/{i:08}").as_bytes(),
                    &vec![(i % 256) as u8; (i % 700) as usize],
                );
            }
            t.set(b"user/alice", b"a record");
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let want = records(&*store);
        store.shutdown().await;
        drop(store);
        let chunk = source.data_dir.join("media/chunks/00ff/0000000000");
        std::fs::create_dir_all(chunk.parent().unwrap()).unwrap();
        std::fs::write(&chunk, b"bytes").unwrap();
        std::fs::write(source.data_dir.join("media/chunks/00ff/0000000001#3"), b"in progress").unwrap();
        crate::secret::write_private(&source.data_dir.join("secret"), b"s3cret").unwrap();

        let to = dir.path().join("backup");
        let manifest = backup(&source, &to).await.unwrap();
        assert_eq!(
            (manifest.keys, manifest.media_files, manifest.media_missing),
            (3_001, 1, 0)
        );
        assert!(
            prepare_empty(&to).is_err(),
            "a second backup into the same directory is refused"
        );

        let mut target = Config::for_tests(dir.path().join("new"));
        target.store_engine = Some(EngineKind::Redb);
        assert_eq!(restore(&to, &target).await.unwrap(), manifest);
        assert!(target.data_dir.join("quip.redb").exists());
        let restored = store::open(&target).unwrap();
        assert_eq!(records(&*restored), want);
        restored.shutdown().await;
        assert_eq!(
            std::fs::read(target.data_dir.join("media/chunks/00ff/0000000000")).unwrap(),
            b"bytes"
        );
        assert!(!target.data_dir.join("media/chunks/00ff/0000000001#3").exists());
        assert_eq!(std::fs::read(target.data_dir.join("secret")).unwrap(), b"s3cret");

        // One flipped byte in the dump: refused, and nothing written.
        let dump_path = to.join(DUMP);
        let mut bytes = std::fs::read(&dump_path).unwrap();
        bytes[1_000] ^= 0x40;
        std::fs::write(&dump_path, &bytes).unwrap();
        let other = Config::for_tests(dir.path().join("other"));
        assert!(restore(&to, &other).await.is_err());
        assert!(!other.data_dir.join("db").exists());
    }
}
