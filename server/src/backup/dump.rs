//! The server's half: a dump of one read snapshot of the whole keyspace,
//! served on `<data-dir>/backup.sock` to `quipd backup`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::SOCKET;
use super::format::Encoder;
use crate::config::Config;
use crate::store::{Store, StoreError, StoreKind};

/// Keys read per range call while dumping.
const PAGE: usize = 1_000;

/// Writes the whole keyspace, from one snapshot, to `out` in chunks.
/// Returns the number of keys. Blocks: run it off the async runtime.
pub(super) fn dump(store: &dyn Store, out: &mut dyn FnMut(Bytes) -> Result<(), StoreError>) -> Result<u64, StoreError> {
    let mut runs = 0;
    let mut count = 0;
    store.read(&mut |t| {
        runs += 1;
        if runs > 1 {
            // Its first run's chunks are already out: a second would repeat them.
            return Err(StoreError::Backend(
                "the store retried the backup's snapshot; back up FoundationDB with fdbbackup".into(),
            ));
        }
        let mut enc = Encoder::new();
        let mut begin = Vec::new();
        loop {
            let rows = t.range(&begin, &[0xFF], PAGE, false)?;
            for (k, v) in &rows {
                enc.record(k, v);
                if let Some(chunk) = enc.take_full() {
                    out(chunk)?;
                }
            }
            match rows.last() {
                Some((k, _)) if rows.len() == PAGE => {
                    begin.clone_from(k);
                    begin.push(0);
                }
                _ => break,
            }
        }
        count = enc.count();
        out(enc.finish())
    })?;
    Ok(count)
}

/// The backup socket of a running server: served until dropped, when the
/// socket file goes too.
pub struct Serving {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts serving backups for a server with an embedded store (nothing for
/// FoundationDB, which has its own backup tools). A socket that cannot be
/// created is logged, not fatal: the server runs, without online backups.
pub fn start(config: &Config, store: Arc<dyn Store>) -> Option<Serving> {
    if config.store != StoreKind::Embedded || !cfg!(unix) {
        return None;
    }
    #[cfg(unix)]
    match serve(&config.data_dir, store) {
        Ok(task) => {
            return Some(Serving {
                task,
                path: config.data_dir.join(SOCKET),
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot serve backups on {}", config.data_dir.join(SOCKET).display()),
    }
    #[cfg(not(unix))]
    drop(store);
    None
}

/// Serves dumps on `<data_dir>/backup.sock` until aborted, one at a time.
#[cfg(unix)]
fn serve(data_dir: &Path, store: Arc<dyn Store>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(SOCKET);
    // A socket file left by a server that was killed.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tracing::info!("backup: dumping a snapshot of the store");
            match stream_dump(store.clone(), stream).await {
                Ok(keys) => tracing::info!(keys, "backup: snapshot sent"),
                Err(e) => tracing::warn!(error = %e, "backup: dump failed"),
            }
        }
    }))
}

/// Dumps on a blocking thread, writing its chunks to `w` as they come
/// (a bounded channel: memory stays at a few chunks).
pub(super) async fn stream_dump(
    store: Arc<dyn Store>,
    mut w: impl tokio::io::AsyncWrite + Unpin,
) -> anyhow::Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let job = tokio::task::spawn_blocking(move || {
        dump(&*store, &mut |chunk| {
            tx.blocking_send(chunk)
                .map_err(|_| StoreError::Backend("the backup's reader went away".into()))
        })
    });
    let mut written = Ok(());
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = w.write_all(&chunk).await {
            written = Err(e);
            break;
        }
    }
    drop(rx);
    let keys = job.await.context("the dump thread failed")??;
    written.context("writing the dump")?;
    w.shutdown().await.context("finishing the dump")?;
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::format::tests::decode;
    use crate::store::{self, memory::MemoryStore};

    /// A dump holds every key of one snapshot, in order, across pages.
    #[tokio::test]
    async fn a_dump_is_the_whole_keyspace() {
        let store = MemoryStore::new();
        let recs: Vec<(Vec<u8>, Vec<u8>)> = (0..2_500u32)
            .map(|i| (format!("msg/{i:06}").into_bytes(), i.to_be_bytes().to_vec()))
            .collect();
        let batch = recs.clone();
        store::write(&store, move |t| {
            for (k, v) in &batch {
                t.set(k, v);
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
        let mut bytes = Vec::new();
        let n = dump(&store, &mut |c| {
            bytes.extend_from_slice(&c);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2_500);
        let (got, end) = decode(&bytes, 65536).unwrap();
        assert_eq!((got, end), (recs, Some(2_500)));
    }
}
