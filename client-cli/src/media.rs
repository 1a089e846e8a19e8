//! Media transfers: each upload or download on a QUIC stream of its own
//! (spec/protocol.md §20), streamed from and to files so no file is held in
//! memory whole, resumable from where the server's bytes end.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use quip_protocol::v1::{self, ErrorCode};
use quip_protocol::{Body, Envelope, FrameDecoder};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::connection::{closed, read, server_error, write};
use crate::{Client, ClientError};

/// How much of a file is read per write to the stream.
const STEP: usize = 64 * 1024;

/// What to upload.
#[derive(Debug, Clone)]
pub struct UploadSpec {
    /// Bytes in the file.
    pub size: u64,
    /// Their SHA-256.
    pub sha256: [u8; 32],
    /// MIME type, e.g. "image/jpeg".
    pub content_type: String,
    /// The file's name, for recipients.
    pub file_name: String,
    /// An earlier upload of the same bytes to continue.
    pub resume: Option<String>,
}

/// Progress of a transfer, for progress bars and resume bookkeeping.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The server answered: the upload id (keep it to resume) and the
    /// offset the bytes start from.
    Started {
        /// Upload id (the media id once complete).
        upload_id: String,
        /// Where the transfer starts.
        offset: u64,
        /// Where it ends.
        total: u64,
    },
    /// Bytes transferred so far, counting from 0 (not from the offset).
    At(u64),
}

/// The size and SHA-256 of everything `file` yields (read in steps).
pub async fn hash(file: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; STEP];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok((size, hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

fn unexpected(body: Option<Body>) -> ClientError {
    match body {
        Some(Body::Error(e)) => server_error(e),
        other => ClientError::Protocol(format!("unexpected answer on a media stream: {other:?}")),
    }
}

/// Why the server stopped reading an upload: its answer, which it writes
/// before it stops the stream (an upload refused midway: another stream
/// has it, a hash mismatch, too many bytes); `otherwise` if none comes.
async fn refusal(recv: &mut quinn::RecvStream, dec: &mut FrameDecoder, otherwise: ClientError) -> ClientError {
    match tokio::time::timeout(std::time::Duration::from_secs(5), read(recv, dec)).await {
        Ok(Ok(Some(env))) if matches!(env.body, Some(Body::Error(_))) => unexpected(env.body),
        _ => otherwise,
    }
}

impl Client {
    async fn media_stream(&self, body: Body) -> Result<(quinn::SendStream, quinn::RecvStream, u64), ClientError> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(closed)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        write(&mut send, &Envelope::new(id, body)).await?;
        Ok((send, recv, id))
    }

    /// Uploads `file` (positioned anywhere; it is sought to the offset the
    /// server asks for). Resumes `spec.resume` if set.
    pub async fn upload(
        &self,
        spec: &UploadSpec,
        file: &mut (impl AsyncRead + AsyncSeek + Unpin),
        mut progress: impl FnMut(Progress),
    ) -> Result<v1::UploadComplete, ClientError> {
        let req = v1::UploadRequest {
            upload_id: spec.resume.clone().unwrap_or_default(),
            size: spec.size,
            sha256: spec.sha256.to_vec().into(),
            content_type: spec.content_type.clone(),
            file_name: spec.file_name.clone(),
        };
        let (mut send, mut recv, _) = self.media_stream(Body::Upload(req)).await?;
        let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
        let ready = match read(&mut recv, &mut dec).await?.and_then(|e| e.body) {
            Some(Body::UploadReady(r)) => r,
            Some(Body::UploadComplete(done)) => {
                progress(Progress::At(spec.size));
                return Ok(done);
            }
            other => return Err(unexpected(other)),
        };
        progress(Progress::Started {
            upload_id: ready.upload_id.clone(),
            offset: ready.offset,
            total: spec.size,
        });
        file.seek(std::io::SeekFrom::Start(ready.offset))
            .await
            .map_err(|e| ClientError::Io(e.to_string()))?;
        let mut sent = ready.offset;
        let mut buf = BytesMut::with_capacity(STEP);
        while sent < spec.size {
            buf.clear();
            let want = STEP.min((spec.size - sent) as usize);
            buf.resize(want, 0);
            let n = file
                .read(&mut buf[..])
                .await
                .map_err(|e| ClientError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ClientError::Io("the file is shorter than its declared size".into()));
            }
            buf.truncate(n);
            if let Err(e) = send.write_chunk(buf.split().freeze()).await {
                return Err(refusal(&mut recv, &mut dec, closed(e)).await);
            }
            sent += n as u64;
            progress(Progress::At(sent));
        }
        send.finish().map_err(closed)?;
        match read(&mut recv, &mut dec).await?.and_then(|e| e.body) {
            Some(Body::UploadComplete(done)) => Ok(done),
            other => Err(unexpected(other)),
        }
    }

    /// Downloads `length` bytes (0: to the end) of media `media_id` from
    /// byte `offset` into `out`; returns what the server announced. Fails if
    /// the stream ends short.
    pub async fn download(
        &self,
        media_id: &str,
        offset: u64,
        length: u64,
        out: &mut (impl AsyncWrite + Unpin),
        mut progress: impl FnMut(Progress),
    ) -> Result<v1::DownloadReady, ClientError> {
        let req = v1::DownloadRequest {
            media_id: media_id.to_owned(),
            offset,
            length,
        };
        let (mut send, mut recv, _) = self.media_stream(Body::Download(req)).await?;
        send.finish().map_err(closed)?;
        let mut dec = FrameDecoder::new(quip_protocol::MAX_FRAME);
        let ready = match read(&mut recv, &mut dec).await?.and_then(|e| e.body) {
            Some(Body::DownloadReady(r)) => r,
            other => return Err(unexpected(other)),
        };
        let total = ready.offset + ready.length;
        progress(Progress::Started {
            upload_id: media_id.to_owned(),
            offset: ready.offset,
            total,
        });
        let io = |e: std::io::Error| ClientError::Io(e.to_string());
        // Bytes the frame decoder read past the answer are the first ones.
        let leftover = std::mem::take(dec.buffer_mut());
        out.write_all(&leftover).await.map_err(io)?;
        let mut got = ready.offset + leftover.len() as u64;
        while let Some(chunk) = recv.read_chunk(STEP, true).await.map_err(closed)? {
            out.write_all(&chunk.bytes).await.map_err(io)?;
            got += chunk.bytes.len() as u64;
            progress(Progress::At(got));
        }
        out.flush().await.map_err(io)?;
        if got != total {
            return Err(ClientError::Server {
                code: ErrorCode::Unspecified,
                message: format!("download ended at byte {got} of {total}; retry to resume"),
                retry_after_ms: 0,
            });
        }
        Ok(ready)
    }
}
