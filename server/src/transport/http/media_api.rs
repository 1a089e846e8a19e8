//! Media over HTTPS for browsers (spec/protocol.md §20.4): start an
//! upload, send its bytes (resumable), download with ranges. The bytes flow
//! through the same [`crate::media`] functions as QUIC media streams; this
//! module adds what HTTP needs: bearer tokens, body size and time limits,
//! JSON answers, and headers that keep user media inert in a browser.

use super::*;
use crate::media;
use crate::service::media as media_access;

/// Largest `POST /v1/uploads` body: a JSON declaration of a few hundred
/// bytes (labels are at most 255 bytes each). Larger ones are refused
/// before they are read.
pub const MAX_START_BODY: u64 = 4 << 10;

/// The Content-Security-Policy of user media: no scripts, styles or
/// connections, in a sandbox (a unique origin), in case a browser renders
/// it as a page after all.
const MEDIA_CSP: &str = "default-src 'none'; sandbox";

/// Media types served under their own name: formats browsers display and
/// play without running anything. Any other declared type (HTML, SVG, XML,
/// scripts, PDF, …) is served as `application/octet-stream`, so an upload
/// can never become a page of this origin, which also serves the web
/// client. The declared type stays in the media's metadata.
const INERT_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mpeg",
    "audio/mp4",
    "audio/aac",
    "audio/ogg",
    "audio/opus",
    "audio/webm",
    "audio/wav",
    "audio/flac",
];

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// It is longer than the endpoint takes.
    #[error("the request body exceeds the limit of {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// No bytes arrived for the body timeout.
    #[error("no request body bytes arrived for {0} s")]
    Stalled(u64),
    /// The connection failed mid-body.
    #[error("the request body was cut off: {0}")]
    Broken(String),
}

impl BodyError {
    /// The response (413, 408 or 400), after which the connection closes.
    fn response(&self) -> Response {
        let (status, code) = match self {
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, v1::ErrorCode::LimitExceeded),
            Self::Stalled(_) => (StatusCode::REQUEST_TIMEOUT, v1::ErrorCode::InvalidArgument),
            Self::Broken(_) => (StatusCode::BAD_REQUEST, v1::ErrorCode::InvalidArgument),
        };
        closing(error_json(status, code, &self.to_string()))
    }
}

/// The declared `Content-Length`, if any.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The body timeout for this server.
fn body_timeout(shared: &Shared) -> Duration {
    Duration::from_secs(shared.config.http_body_timeout_secs.max(1))
}

/// A request body as a stream of the byte chunks hyper reads, which fails
/// with [`BodyError::Stalled`] once no bytes arrived for `timeout` (hyper
/// bounds the time to send headers, not bodies).
fn body_stream(body: Body, timeout: Duration) -> impl futures::Stream<Item = Result<axum::body::Bytes, BodyError>> {
    futures::stream::unfold(Some(body.into_data_stream()), move |state| async move {
        let mut data = state?;
        match tokio::time::timeout(timeout, data.next()).await {
            Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(data))),
            Ok(Some(Err(e))) => Some((Err(BodyError::Broken(e.to_string())), None)),
            Ok(None) => None,
            Err(_) => Some((Err(BodyError::Stalled(timeout.as_secs())), None)),
        }
    })
}

/// Reads a whole small body, at most `max` bytes, each piece within the
/// body timeout.
async fn read_capped(body: Body, max: u64, timeout: Duration) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    let mut pieces = std::pin::pin!(body_stream(body, timeout));
    while let Some(piece) = pieces.next().await {
        let piece = piece?;
        if (out.len() + piece.len()) as u64 > max {
            return Err(BodyError::TooLarge { max });
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

fn media_json(m: &v1::Media) -> Value {
    json!({
        "media_id": m.media_id, "size": m.size, "content_type": m.content_type,
        "sha256": media_access::hex(&m.sha256), "file_name": m.file_name,
    })
}

fn complete_json(done: &v1::UploadComplete) -> Value {
    json!({
        "media": done.media.as_ref().map(media_json),
        "deduplicated": done.deduplicated,
    })
}

/// The caller, from `Authorization: Bearer <token>`.
fn bearer(shared: &Shared, headers: &HeaderMap) -> Result<Actor, ServiceError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ServiceError::Unauthenticated("send Authorization: Bearer <session token>".into()))?;
    shared.actor_for_bearer(token.trim())
}

/// `POST /v1/uploads`: starts (or finds, to resume) an upload. The caller
/// is authenticated before any of the body is read, and the body is a few
/// KiB at most ([`MAX_START_BODY`]), read within the body timeout.
pub(super) async fn start_upload(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let actor = match bearer(&shared, &headers) {
        Ok(a) => a,
        Err(e) => return closing(error_response(&e)),
    };
    if content_length(&headers).is_some_and(|n| n > MAX_START_BODY) {
        return BodyError::TooLarge { max: MAX_START_BODY }.response();
    }
    let body = match read_capped(body, MAX_START_BODY, body_timeout(&shared)).await {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    let r = async {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ServiceError::InvalidArgument(format!("body must be JSON: {e}")))?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let sha = field("sha256");
        let sha256 = (0..sha.len() / 2)
            .map(|i| u8::from_str_radix(sha.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| ServiceError::InvalidArgument("sha256 must be 64 hex digits".into()))?;
        let req = v1::UploadRequest {
            upload_id: field("upload_id"),
            size: v.get("size").and_then(Value::as_u64).unwrap_or(0),
            sha256: sha256.into(),
            content_type: field("content_type"),
            file_name: field("file_name"),
        };
        let begun = media::begin_upload(&*shared.store, &shared.media, &actor, &req).await?;
        Ok::<_, ServiceError>(match begun.done {
            Some(done) => complete_json(&done),
            None => json!({"upload_id": media_access::id_to_string(&begun.id), "offset": begun.offset}),
        })
    }
    .await;
    match r {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(e) => error_response(&e),
    }
}

/// `PUT /v1/uploads/{id}`: the bytes from the server's offset to the end,
/// streamed to the media store a chunk at a time (never buffered whole).
/// Authentication and the declared length are checked before any of the
/// body is read; a body that stalls for the body timeout is answered 408
/// (what was stored stays, for a resume).
pub(super) async fn put_upload(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let timeout = body_timeout(&shared);
    let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = async {
        let actor = bearer(&shared, &headers)?;
        let (media_id, rec) = crate::store::read(&*shared.store, |t| media_access::own(t, &actor, &id))?;
        if rec.complete {
            return Ok(v1::UploadComplete {
                media: Some(media_access::wire(&media_id, &rec)),
                deduplicated: false,
            });
        }
        let claimed = headers
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if claimed != Some(rec.received) {
            return Err(ServiceError::InvalidArgument(format!(
                "Upload-Offset must be the server's offset, {}",
                rec.received
            )));
        }
        let left = rec.size - rec.received;
        if let Some(n) = content_length(&headers).filter(|&n| n > left) {
            return Err(ServiceError::LimitExceeded(format!(
                "a body of {n} bytes exceeds the {left} bytes left of this upload"
            )));
        }
        let flag = stalled.clone();
        let bytes = body_stream(body, timeout)
            .map_err(move |e| {
                if matches!(e, BodyError::Stalled(_)) {
                    flag.store(true, Ordering::Relaxed);
                }
                std::io::Error::other(e)
            })
            .boxed();
        media::receive_upload(
            &shared.store,
            &shared.media,
            media_id,
            rec.received,
            shared.instance(),
            bytes,
        )
        .await
    }
    .await;
    match r {
        Ok(done) => json_response(StatusCode::OK, complete_json(&done)),
        // A stalled body ended the upload early: 408, with the service's
        // code (UPLOAD_INCOMPLETE: resume) and both reasons.
        Err(e) if stalled.load(Ordering::Relaxed) => closing(error_json(
            StatusCode::REQUEST_TIMEOUT,
            e.code(),
            &format!("{}; {e}", BodyError::Stalled(timeout.as_secs())),
        )),
        Err(e) => closing(error_response(&e)),
    }
}

/// A `Range` header's value, `bytes=A-B` or `bytes=A-`, as (offset,
/// length) for [`media::open_download`], where length 0 means to the end.
/// An end past the file is clamped there (RFC 9110 §14.1.2): `bytes=0-`
/// with any end up to `u64::MAX` is the whole file, never an overflow.
/// `None`: malformed, or a form not supported (suffix or several ranges).
fn parse_range(value: &str) -> Option<(u64, u64)> {
    let (a, b) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    match b.trim() {
        "" => Some((start, 0)),
        end => {
            let end: u64 = end.parse().ok()?;
            // Inclusive: end - start + 1 bytes; past u64::MAX is past any
            // file, so to the end.
            let length = end.checked_sub(start)?.checked_add(1).unwrap_or(0);
            Some((start, length))
        }
    }
}

/// The `Content-Type` to serve media under: the uploader's type if it is
/// one of the [`INERT_TYPES`] (parameters dropped, lowercased), else
/// `application/octet-stream`.
fn served_content_type(declared: &str) -> &'static str {
    let essence = declared.split(';').next().unwrap_or_default().trim();
    INERT_TYPES
        .iter()
        .find(|t| t.eq_ignore_ascii_case(essence))
        .copied()
        .unwrap_or("application/octet-stream")
}

/// `GET /v1/media/{id}`: the bytes, whole or a range, served as an inert
/// download whatever the uploader declared: a page or script uploaded as
/// media must never run in this origin, which also serves the web client.
pub(super) async fn get_media(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let actor = match bearer(&shared, &headers) {
        Ok(a) => a,
        Err(e) => return error_response(&e),
    };
    // Some(None): a Range header that cannot be served.
    let range = headers
        .get(header::RANGE)
        .map(|v| v.to_str().ok().and_then(parse_range));
    let (offset, length) = range.flatten().unwrap_or((0, 0));
    let req = v1::DownloadRequest {
        media_id: id,
        offset,
        length,
    };
    // Access first: whoever may not see the media gets 404 whatever the range.
    let (ready, chunks) = match media::open_download(&*shared.store, &shared.media, &actor, &req) {
        Ok(x) => x,
        Err(e) => return error_response(&e),
    };
    let m = ready.media.clone().unwrap_or_default();
    if range.is_some_and(|r| r.is_none_or(|(offset, _)| offset >= m.size)) {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{}", m.size))],
            "the Range is outside the media or not of the form bytes=A-B or bytes=A-\n",
        )
            .into_response();
    }
    let mut resp = Response::new(Body::from_stream(chunks));
    *resp.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(served_content_type(&m.content_type)),
    );
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(MEDIA_CSP));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(ready.length));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", media_access::hex(&m.sha256))) {
        h.insert(header::ETAG, etag);
    }
    if range.is_some() && ready.length > 0 {
        let last = ready.offset + ready.length - 1;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {}-{last}/{}", ready.offset, m.size)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_without_overflow() {
        assert_eq!(parse_range("bytes=0-9"), Some((0, 10)));
        assert_eq!(parse_range("bytes=5-"), Some((5, 0)));
        assert_eq!(parse_range("bytes=0-18446744073709551615"), Some((0, 0)));
        assert_eq!(parse_range("bytes=1-18446744073709551615"), Some((1, u64::MAX)));
        assert_eq!(
            parse_range("bytes=18446744073709551615-18446744073709551615"),
            Some((u64::MAX, 1))
        );
        for bad in [
            "bytes=9-3",
            "bytes=-5",
            "bytes=0-1,3-4",
            "bytes=0-18446744073709551616",
            "items=0-1",
            "bytes=x-",
        ] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_inert_types_are_served_as_declared() {
        assert_eq!(served_content_type("image/png"), "image/png");
        assert_eq!(served_content_type("Video/MP4; codecs=avc1"), "video/mp4");
        for active in [
            "text/html",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "text/javascript",
            "application/pdf",
            "",
            "image/png/../html",
        ] {
            assert_eq!(served_content_type(active), "application/octet-stream", "{active}");
        }
    }
}
