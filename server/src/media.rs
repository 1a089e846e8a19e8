//! Media bytes: received and sent as streams, stored as fixed-size chunk
//! objects in an object store (a local directory by default, an S3 bucket
//! by configuration). Never through the message store, which only holds the
//! records (`service::media`).
//!
//! One storage path for every transport: a transport calls [`begin_upload`]
//! to learn where the client should start, hands the bytes to
//! [`receive_upload`] as a stream of chunks of whatever size it reads, and
//! for downloads gets a stream of byte chunks from [`open_download`]. No
//! file is ever held whole: an upload buffers at most one chunk
//! ([`CHUNK`]); a download reads one chunk range at a time.
//!
//! Layout in the object store: `chunks/{upload id}/{index}`, 1 MiB each but
//! the last. Chunks are written under the upload that brought them; when a
//! later upload has the same SHA-256, its chunks are deleted and its record
//! points at the first one's (`mblob/`, spec/storage.md).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, Stream, StreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use quip_protocol::v1;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::service::media::{self, MediaId, hex};
use crate::service::{Actor, ServiceError};
use crate::store::{self, Store};

/// Bytes per chunk object: the most an upload buffers, and what a resumed
/// upload may have to send again.
pub const CHUNK: u64 = 1 << 20;

/// The object store.
pub struct MediaStore {
    objects: Arc<dyn ObjectStore>,
    max_size: u64,
}

fn object_error(e: object_store::Error) -> ServiceError {
    ServiceError::Internal(format!("media storage: {e}"))
}

fn chunk_path(upload: &[u8], index: u64) -> Path {
    Path::from(format!("chunks/{}/{index:010}", hex(upload)))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A stream's claim on an upload (`service::media::claim`): one stream at
/// a time receives an upload, on any node. Released when the stream ends,
/// in the background; a claim that could not be released lapses.
struct Claim {
    store: Arc<dyn Store>,
    id: MediaId,
    me: media::Holder,
    /// When the claim was last renewed, by this node's monotonic clock.
    renewed: std::time::Instant,
}

/// A claim this old is renewed before a chunk is written (see
/// [`media::CLAIM_MS`]).
const RENEW_AFTER: Duration = Duration::from_millis(media::CLAIM_MS as u64 / 4);

/// The longest a chunk write may take (see [`media::CLAIM_MS`]).
const CHUNK_WRITE_TIMEOUT: Duration = Duration::from_millis(media::CLAIM_MS as u64 / 2);

impl Claim {
    async fn take(
        store: &Arc<dyn Store>,
        id: MediaId,
        node: (u64, bool),
    ) -> Result<(Self, crate::records::MediaRecord), ServiceError> {
        let me = media::Holder {
            stream: rand::random::<u64>() | 1,
            node: node.0,
            clustered: node.1,
        };
        let renewed = std::time::Instant::now();
        let rec = store::write(&**store, move |t| media::claim(t, &id, &me, now_ms())).await?;
        let claim = Self {
            store: store.clone(),
            id,
            me,
            renewed,
        };
        Ok((claim, rec))
    }

    /// Renews the claim if a quarter of it has gone by.
    async fn keep(&mut self) -> Result<(), ServiceError> {
        if self.renewed.elapsed() < RENEW_AFTER {
            return Ok(());
        }
        let (id, me) = (self.id, self.me);
        let renewed = std::time::Instant::now();
        store::write(&*self.store, move |t| {
            let rec = media::claim(t, &id, &me, now_ms())?;
            Ok::<_, ServiceError>(rec.received)
        })
        .await?;
        self.renewed = renewed;
        Ok(())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let (store, id, holder) = (self.store.clone(), self.id, self.me.stream);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store::write(&*store, move |t| media::release(t, &id, holder)).await {
                    tracing::debug!(error = %e, "could not release an upload's claim; it lapses");
                }
            });
        }
    }
}

impl MediaStore {
    /// The configured object store: S3 when a bucket is named, else
    /// `<data-dir>/media`.
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let objects: Arc<dyn ObjectStore> = match &config.media_s3_bucket {
            Some(bucket) => {
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(&config.media_s3_region);
                if let Some(e) = &config.media_s3_endpoint {
                    b = b
                        .with_endpoint(e)
                        .with_allow_http(e.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                if let (Some(k), Some(s)) = (&config.media_s3_access_key_id, &config.media_s3_secret_access_key) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                Arc::new(b.build().context("configuring the S3 media bucket")?)
            }
            None => {
                let dir = config
                    .media_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("media"));
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&dir)
                        .context("opening the media directory")?
                        .with_automatic_cleanup(true),
                )
            }
        };
        Ok(Self {
            objects,
            max_size: config.media_max_size,
        })
    }

    /// Deletes the chunk objects of `upload` (an upload id, as
    /// `mblob/`'s `chunks_of` names it).
    pub async fn delete_chunks(&self, upload: &[u8]) {
        let prefix = Path::from(format!("chunks/{}", hex(upload)));
        let locations = self.objects.list(Some(&prefix)).map(|m| m.map(|m| m.location)).boxed();
        let mut deleted = self.objects.delete_stream(locations);
        while let Some(r) = deleted.next().await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not delete a media chunk");
            }
        }
    }
}

/// Where an upload stands when a stream attaches to it.
pub struct Begun {
    /// The upload (media) id.
    pub id: MediaId,
    /// The bytes the client should send, from here to the end.
    pub offset: u64,
    /// Already complete (a resume after the final answer was lost).
    pub done: Option<v1::UploadComplete>,
}

/// Starts a new upload or finds the one to resume.
pub async fn begin_upload(
    store: &dyn Store,
    media: &MediaStore,
    actor: &Actor,
    req: &v1::UploadRequest,
) -> Result<Begun, ServiceError> {
    media::validate(req, media.max_size)?;
    if req.upload_id.is_empty() {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let (actor, req) = (actor.clone(), req.clone());
        let now = now_ms();
        store::write(store, move |t| {
            Ok::<_, ServiceError>(media::create(t, &actor, &req, &id, now))
        })
        .await?;
        return Ok(Begun {
            id,
            offset: 0,
            done: None,
        });
    }
    let (id, rec) = store::read(store, |t| media::resume(t, actor, req))?;
    let done = rec.complete.then(|| v1::UploadComplete {
        media: Some(media::wire(&id, &rec)),
        deduplicated: false,
    });
    Ok(Begun {
        id,
        offset: rec.received,
        done,
    })
}

/// Receives an upload's bytes from `offset` (see [`begin_upload`]): stores
/// each whole chunk and records the progress durably, then verifies the
/// SHA-256 and completes it. A stream that ends early leaves what was
/// stored, for a resume; a hash mismatch leaves nothing.
pub async fn receive_upload<S>(
    store: &Arc<dyn Store>,
    media: &MediaStore,
    id: MediaId,
    offset: u64,
    node: (u64, bool),
    mut bytes: S,
) -> Result<v1::UploadComplete, ServiceError>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin,
{
    let (mut claim, rec) = Claim::take(store, id, node).await?;
    if rec.received != offset {
        // Another stream stored more since this one began: start again.
        return Err(ServiceError::InvalidArgument(
            "the upload moved on since this stream began: resume it again".into(),
        ));
    }
    let size = rec.size;
    // Hash what is already stored (a resume), one chunk at a time.
    let mut hasher = Sha256::new();
    for index in 0..offset / CHUNK {
        let chunk = media
            .objects
            .get_range(&chunk_path(&id, index), 0..CHUNK)
            .await
            .map_err(object_error)?;
        hasher.update(&chunk);
    }
    let mut received = offset;
    let mut buf = BytesMut::new();
    while let Some(piece) = bytes.next().await {
        let Ok(piece) = piece else {
            break; // the connection went: what is stored stays, for a resume
        };
        if received + (buf.len() + piece.len()) as u64 > size {
            return Err(ServiceError::InvalidArgument(format!(
                "more bytes than the declared size of {size}"
            )));
        }
        hasher.update(&piece);
        buf.extend_from_slice(&piece);
        while buf.len() as u64 >= CHUNK {
            let chunk = buf.split_to(CHUNK as usize).freeze();
            received = store_chunk(media, &mut claim, received, chunk).await?;
        }
    }
    if !buf.is_empty() && received + buf.len() as u64 == size {
        received = store_chunk(media, &mut claim, received, buf.freeze()).await?;
    }
    if received < size {
        return Err(ServiceError::UploadIncomplete { received, size });
    }
    if hasher.finalize()[..] != rec.sha256[..] {
        let holder = claim.me.stream;
        let drop = store::write(&**store, move |t| {
            media::progress(t, &id, received, holder, now_ms())?;
            media::forget(t, &id)
        })
        .await?;
        if let Some(upload) = drop {
            media.delete_chunks(&upload).await;
        }
        return Err(ServiceError::HashMismatch { received });
    }
    let holder = claim.me.stream;
    let done = store::write(&**store, move |t| media::complete(t, &id, holder)).await?;
    if done.deduplicated {
        media.delete_chunks(&id).await;
    }
    Ok(v1::UploadComplete {
        media: Some(done.media),
        deduplicated: done.deduplicated,
    })
}

/// Writes chunk `received / CHUNK` under `claim`, then records the new
/// total durably (which renews the claim, or fails if it was lost).
async fn store_chunk(media: &MediaStore, claim: &mut Claim, received: u64, chunk: Bytes) -> Result<u64, ServiceError> {
    claim.keep().await?;
    let len = chunk.len() as u64;
    let path = chunk_path(&claim.id, received / CHUNK);
    tokio::time::timeout(CHUNK_WRITE_TIMEOUT, media.objects.put(&path, chunk.into()))
        .await
        .map_err(|_| ServiceError::Unavailable)?
        .map_err(object_error)?;
    crate::metrics::media_bytes(true, len);
    let (id, total, holder) = (claim.id, received + len, claim.me.stream);
    let renewed = std::time::Instant::now();
    store::write(&*claim.store, move |t| media::progress(t, &id, total, holder, now_ms())).await?;
    claim.renewed = renewed;
    Ok(total)
}

/// Checks access and clamps the range; the bytes follow as a stream of
/// chunk ranges, read one at a time.
pub fn open_download(
    store: &dyn Store,
    media: &MediaStore,
    actor: &Actor,
    req: &v1::DownloadRequest,
) -> Result<(v1::DownloadReady, BoxStream<'static, Result<Bytes, ServiceError>>), ServiceError> {
    let (id, rec, chunks_of) = store::read(store, |t| {
        let (id, rec) = media::visible(t, actor, &req.media_id)?;
        let chunks_of = media::chunks_of(t, &rec)?;
        Ok::<_, ServiceError>((id, rec, chunks_of))
    })?;
    let offset = req.offset.min(rec.size);
    let length = if req.length == 0 {
        rec.size - offset
    } else {
        req.length.min(rec.size - offset)
    };
    let ready = v1::DownloadReady {
        media: Some(media::wire(&id, &rec)),
        offset,
        length,
    };
    let objects = media.objects.clone();
    let end = offset + length;
    let ranges = futures::stream::unfold(offset, move |pos| {
        let (objects, chunks_of) = (objects.clone(), chunks_of.clone());
        async move {
            if pos >= end {
                return None;
            }
            let index = pos / CHUNK;
            let within = pos - index * CHUNK;
            let upto = (end - index * CHUNK).min(CHUNK);
            let r = objects
                .get_range(&chunk_path(&chunks_of, index), within..upto)
                .await
                .map_err(object_error);
            if let Ok(b) = &r {
                crate::metrics::media_bytes(false, b.len() as u64);
            }
            Some((r, index * CHUNK + upto))
        }
    });
    Ok((ready, ranges.boxed()))
}

/// Deletes uploads never sent in a message within the configured time, and
/// their bytes unless other media shares them. Runs until the process ends.
pub async fn sweep_abandoned(store: Arc<dyn Store>, media: Arc<MediaStore>, ttl: Duration, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        let before = now_ms() - i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let ids = match store::read(&*store, |t| media::abandoned(t, before, 1000)) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "media sweep could not read");
                continue;
            }
        };
        for id in ids {
            match store::write(&*store, move |t| media::forget_unclaimed(t, &id, now_ms())).await {
                Ok(Some(upload)) => media.delete_chunks(&upload).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "media sweep could not forget an upload"),
            }
        }
    }
}
