//! Media streams over QUIC: a stream whose first frame is an upload or
//! download request carries the raw bytes after it.

use super::*;

/// A media stream (spec/protocol.md §20): one request frame, its answer,
/// then raw bytes one way, then (for uploads) the final answer.
pub(super) async fn serve_media(
    session: Arc<Session>,
    env: Envelope,
    reader: StreamReader,
    mut send: quinn::SendStream,
) {
    let id = env.id;
    let last = match media_exchange(&session, env, reader, &mut send).await {
        Ok(Some(body)) => Some(body),
        Ok(None) => None,
        Err(e) => Some(Body::Error(e.to_wire())),
    };
    if let Some(body) = last {
        let _ = write_envelope(&mut send, &Envelope::new(id, body)).await;
    }
    let _ = send.finish();
}

/// Runs one transfer; returns the frame that ends the stream (an upload's
/// result), or the error that refused it. Peer failures end it silently.
async fn media_exchange(
    session: &Session,
    env: Envelope,
    reader: StreamReader,
    send: &mut quinn::SendStream,
) -> Result<Option<Body>, ServiceError> {
    let (actor, _slot) = session.admit_media().await?;
    let shared = session.shared();
    let gone = |_| ServiceError::Unavailable; // the write failed: nobody hears the answer
    match env.body {
        Some(Body::Upload(req)) => {
            let begun = media::begin_upload(&*shared.store, &shared.media, &actor, &req).await?;
            if let Some(done) = begun.done {
                return Ok(Some(Body::UploadComplete(done)));
            }
            let ready = v1::UploadReady {
                upload_id: service::media::id_to_string(&begun.id),
                offset: begun.offset,
            };
            write_envelope(send, &Envelope::new(env.id, Body::UploadReady(ready)))
                .await
                .map_err(gone)?;
            let (leftover, recv) = reader.into_raw();
            let first = futures::stream::iter((!leftover.is_empty()).then(|| Ok(leftover.freeze())));
            let rest = futures::stream::unfold(recv, |mut recv| async move {
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(c)) => Some((Ok(c.bytes), recv)),
                    Ok(None) => None,
                    Err(e) => Some((Err(std::io::Error::other(e)), recv)),
                }
            });
            let bytes = std::pin::pin!(first.chain(rest));
            let done = media::receive_upload(
                &shared.store,
                &shared.media,
                begun.id,
                begun.offset,
                shared.instance(),
                bytes,
            )
            .await?;
            Ok(Some(Body::UploadComplete(done)))
        }
        Some(Body::Download(req)) => {
            let (ready, mut chunks) = media::open_download(&*shared.store, &shared.media, &actor, &req)?;
            if write_envelope(send, &Envelope::new(env.id, Body::DownloadReady(ready)))
                .await
                .is_err()
            {
                return Ok(None);
            }
            while let Some(chunk) = chunks.next().await {
                match chunk {
                    Ok(b) => {
                        if send.write_chunk(b).await.is_err() {
                            return Ok(None);
                        }
                    }
                    Err(e) => {
                        // The client sees a reset stream, short of the
                        // announced length: it retries with a range.
                        tracing::warn!(error = %e, "media download failed midway");
                        let _ = send.reset(quinn::VarInt::from_u32(1));
                        return Ok(None);
                    }
                }
            }
            Ok(None)
        }
        _ => unreachable!("serve_stream checked the body"),
    }
}
