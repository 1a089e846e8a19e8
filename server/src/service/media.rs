//! Media records: uploads, content-addressed blobs, who may download what,
//! and which uploads were abandoned. Pure transaction logic; the bytes move
//! in [`crate::media`].
//!
//! Access follows messages: media may be downloaded by its uploader and by
//! every participant of a chat it was sent in who may see a message that
//! carries it (group members: one sent since they joined), and by nobody
//! else. Everyone
//! else gets the error a nonexistent id gets, so ids cannot be probed.

use prost::Message as _;
use quip_protocol::v1;

use super::{Actor, ServiceError, messages};
use crate::keys;
use crate::records::{self, BlobRecord, CursorRecord, MediaRecord};
use crate::store::{ReadTxn, Txn};

/// Longest content type or file name accepted.
const MAX_LABEL: usize = 255;

/// A media id: 16 random bytes, 32 lowercase hex digits on the wire.
pub type MediaId = [u8; 16];

/// The wire form of an id.
pub fn id_to_string(id: &MediaId) -> String {
    hex(id)
}

/// Lowercase hex: ids, hashes and chunk paths.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a wire id; anything malformed is simply not found.
pub fn parse_id(s: &str) -> Result<MediaId, ServiceError> {
    let bad = || not_found(s);
    if s.len() != 32 {
        return Err(bad());
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(id)
}

/// The one error for "does not exist" and "not yours to see".
fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound(format!("no media {id:?}"))
}

/// Checks an upload's declaration.
pub fn validate(req: &v1::UploadRequest, max_size: u64) -> Result<(), ServiceError> {
    if req.size == 0 {
        return Err(ServiceError::InvalidArgument(
            "media size must be at least 1 byte".into(),
        ));
    }
    if req.size > max_size {
        return Err(ServiceError::LimitExceeded(format!(
            "media of {} bytes exceeds the limit of {max_size} bytes",
            req.size
        )));
    }
    if req.sha256.len() != 32 {
        return Err(ServiceError::InvalidArgument(format!(
            "sha256 must be 32 bytes, got {}",
            req.sha256.len()
        )));
    }
    if req.content_type.len() > MAX_LABEL || req.file_name.len() > MAX_LABEL {
        return Err(ServiceError::InvalidArgument(format!(
            "content_type and file_name are limited to {MAX_LABEL} bytes"
        )));
    }
    Ok(())
}

/// Starts a new upload with a fresh `id`.
pub fn create(txn: &mut dyn Txn, actor: &Actor, req: &v1::UploadRequest, id: &MediaId, now_ms: i64) -> MediaRecord {
    let rec = MediaRecord {
        owner: actor.user_id,
        size: req.size,
        sha256: req.sha256.to_vec(),
        content_type: req.content_type.clone(),
        file_name: req.file_name.clone(),
        received: 0,
        complete: false,
        created_ms: now_ms,
        sent: false,
        holder: 0,
        claimed_until_ms: 0,
        holder_node: 0,
    };
    txn.set(&keys::media(id), &rec.encode_to_vec());
    txn.set(&keys::media_unsent(now_ms, id), &[]);
    rec
}

/// One of the caller's own uploads (complete or not).
pub fn own(txn: &mut dyn ReadTxn, actor: &Actor, wire_id: &str) -> Result<(MediaId, MediaRecord), ServiceError> {
    let id = parse_id(wire_id)?;
    let rec: MediaRecord = records::get(txn, &keys::media(&id))?.ok_or_else(|| not_found(wire_id))?;
    if rec.owner != actor.user_id {
        return Err(not_found(wire_id));
    }
    Ok((id, rec))
}

/// An upload to resume: the caller's own, with the same declaration.
pub fn resume(
    txn: &mut dyn ReadTxn,
    actor: &Actor,
    req: &v1::UploadRequest,
) -> Result<(MediaId, MediaRecord), ServiceError> {
    let (id, rec) = own(txn, actor, &req.upload_id)?;
    if rec.size != req.size || rec.sha256[..] != req.sha256[..] {
        return Err(ServiceError::InvalidArgument(
            "a resumed upload must declare the same size and sha256 as when it started".into(),
        ));
    }
    Ok((id, rec))
}

/// How long a stream's claim on an upload lasts unless renewed. A stream
/// renews it with each chunk it stores (and before storing one when a
/// quarter of it has gone by), so a claim lapses only when its stream
/// stalled or its node died; another stream, on any node, may then take
/// the upload over. A chunk write is given at most half of it, so a stale
/// stream's last write ends a quarter of it before anyone may take over:
/// room for the nodes' clocks to disagree.
pub const CLAIM_MS: i64 = 60_000;

/// Who is receiving an upload: a stream, and the node (process) it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// Random per stream.
    pub stream: u64,
    /// The node's id in the cluster, or random per process on one node.
    pub node: u64,
    /// Whether other nodes share the store (else a claim from another
    /// process is one from before a restart).
    pub clustered: bool,
}

/// Whether the claim in `rec` still holds against `me`: it has not run
/// out, and the node that holds it is alive (on one node: is this very
/// process; in a cluster: heartbeats, `node/`), so an upload whose node
/// died can be resumed elsewhere once the cluster notices, not a minute on.
fn claimed_by_another(txn: &mut dyn Txn, rec: &MediaRecord, me: &Holder, now_ms: i64) -> Result<bool, ServiceError> {
    if rec.holder == 0 || rec.holder == me.stream || rec.claimed_until_ms <= now_ms {
        return Ok(false);
    }
    if rec.holder_node == me.node {
        return Ok(true);
    }
    if !me.clustered {
        return Ok(false);
    }
    let node: Option<records::NodeRecord> = records::get(txn, &keys::node(rec.holder_node))?;
    let lease = i64::try_from(crate::cluster::LEASE.as_millis()).unwrap_or(i64::MAX);
    Ok(node.is_some_and(|n| n.heartbeat_ms.saturating_add(lease) > now_ms))
}

/// Claims upload `id` for the stream `me`, or renews its claim. Refused
/// while another stream's claim holds.
pub fn claim(txn: &mut dyn Txn, id: &MediaId, me: &Holder, now_ms: i64) -> Result<MediaRecord, ServiceError> {
    let key = keys::media(id);
    let mut rec: MediaRecord = records::get(txn, &key)?.ok_or_else(|| not_found(&id_to_string(id)))?;
    if claimed_by_another(txn, &rec, me, now_ms)? {
        return Err(ServiceError::InvalidArgument(
            "this upload is already being received on another stream".into(),
        ));
    }
    rec.holder = me.stream;
    rec.holder_node = me.node;
    rec.claimed_until_ms = now_ms.saturating_add(CLAIM_MS);
    txn.set(&key, &rec.encode_to_vec());
    Ok(rec)
}

/// Ends `holder`'s claim on `id` (its stream ended), if it still has it.
pub fn release(txn: &mut dyn Txn, id: &MediaId, holder: u64) -> Result<(), ServiceError> {
    let key = keys::media(id);
    if let Some(mut rec) = records::get::<MediaRecord>(txn, &key)?
        && rec.holder == holder
    {
        rec.holder = 0;
        rec.claimed_until_ms = 0;
        txn.set(&key, &rec.encode_to_vec());
    }
    Ok(())
}

/// The upload, if `holder` still has it (else another stream took over).
fn held(txn: &mut dyn Txn, id: &MediaId, holder: u64) -> Result<MediaRecord, ServiceError> {
    let rec: MediaRecord = records::get(txn, &keys::media(id))?.ok_or_else(|| not_found(&id_to_string(id)))?;
    if rec.holder != holder {
        return Err(ServiceError::InvalidArgument(
            "another stream took this upload over: resume it again".into(),
        ));
    }
    Ok(rec)
}

/// Records that the bytes up to `received` are durably stored, renewing
/// `holder`'s claim; refused if the claim was lost.
pub fn progress(txn: &mut dyn Txn, id: &MediaId, received: u64, holder: u64, now_ms: i64) -> Result<(), ServiceError> {
    let mut rec = held(txn, id, holder)?;
    rec.received = received;
    rec.claimed_until_ms = now_ms.saturating_add(CLAIM_MS);
    txn.set(&keys::media(id), &rec.encode_to_vec());
    Ok(())
}

/// What completing an upload decided.
pub struct Completed {
    /// The media, for the client.
    pub media: v1::Media,
    /// The bytes were already stored: this upload's chunks are redundant.
    pub deduplicated: bool,
}

/// Marks a verified upload complete, sharing an existing blob with the same
/// content if there is one.
pub fn complete(txn: &mut dyn Txn, id: &MediaId, holder: u64) -> Result<Completed, ServiceError> {
    let key = keys::media(id);
    let mut rec = held(txn, id, holder)?;
    let bkey = keys::media_blob(&rec.sha256);
    let existing: Option<BlobRecord> = records::get(txn, &bkey)?;
    let deduplicated = existing.as_ref().is_some_and(|b| b.chunks_of != id);
    if !rec.complete {
        let blob = match existing {
            Some(mut b) => {
                b.refs += 1;
                b
            }
            None => BlobRecord {
                chunks_of: id.to_vec(),
                refs: 1,
                size: rec.size,
            },
        };
        txn.set(&bkey, &blob.encode_to_vec());
        rec.complete = true;
        rec.received = rec.size;
        rec.holder = 0;
        rec.claimed_until_ms = 0;
        txn.set(&key, &rec.encode_to_vec());
    }
    Ok(Completed {
        media: wire(id, &rec),
        deduplicated,
    })
}

/// The media as carried in messages.
pub fn wire(id: &MediaId, rec: &MediaRecord) -> v1::Media {
    v1::Media {
        media_id: id_to_string(id),
        size: rec.size,
        content_type: rec.content_type.clone(),
        sha256: rec.sha256.clone().into(),
        file_name: rec.file_name.clone(),
        ..Default::default()
    }
}

/// The upload whose chunk objects hold this media's bytes.
pub fn chunks_of(txn: &mut dyn ReadTxn, rec: &MediaRecord) -> Result<Vec<u8>, ServiceError> {
    let blob: BlobRecord = records::get(txn, &keys::media_blob(&rec.sha256))?
        .ok_or_else(|| ServiceError::Internal("complete media without its blob record".into()))?;
    Ok(blob.chunks_of)
}

/// Whether `actor` may see media `id`: the uploader, or a participant of a
/// chat it was sent in who may see a message that carries it (a group
/// member sees messages from the one that added them on, so media sent
/// before they joined stays as hidden as those messages). Otherwise (or if
/// it does not exist, or is not yet complete) NOT_FOUND, the same answer
/// either way.
pub fn visible(txn: &mut dyn ReadTxn, actor: &Actor, wire_id: &str) -> Result<(MediaId, MediaRecord), ServiceError> {
    let id = parse_id(wire_id)?;
    let rec: MediaRecord = records::get(txn, &keys::media(&id))?.ok_or_else(|| not_found(wire_id))?;
    if !rec.complete {
        return Err(not_found(wire_id));
    }
    if rec.owner == actor.user_id {
        return Ok((id, rec));
    }
    let (begin, end) = keys::media_refs(&id);
    for (key, value) in txn.range(&begin, &end, usize::MAX, false)? {
        let chat_id = key
            .get(key.len() - 8..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let Ok(chat) = messages::member_chat(txn, actor, chat_id) else {
            continue;
        };
        if chat.kind() != v1::ChatKind::Group {
            return Ok((id, rec));
        }
        let joined = records::get::<CursorRecord>(txn, &keys::cursor(chat_id, actor.user_id))?
            .unwrap_or_default()
            .joined;
        if last_sent_seq(&value) >= joined {
            return Ok((id, rec));
        }
    }
    Err(not_found(wire_id))
}

/// The newest seq a media was sent at in one chat, from its `mref/` value.
/// References written before the seq was recorded are empty: they count as
/// visible to every participant, as all references were then.
fn last_sent_seq(value: &[u8]) -> u64 {
    value.try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX)
}

/// Checks the media a message refers to and fills in what the server knows
/// (size, type, hash). Called inside the send's transaction, before its
/// idempotency check, so a retry compares equal content; once the message
/// has its seq, [`sent_in`] records where it went.
pub fn attach(txn: &mut dyn Txn, actor: &Actor, media: &mut v1::Media) -> Result<MediaId, ServiceError> {
    let (id, mut rec) = visible(txn, actor, &media.media_id)?;
    media.size = rec.size;
    media.content_type.clone_from(&rec.content_type);
    media.sha256 = rec.sha256.clone().into();
    if media.file_name.is_empty() {
        media.file_name.clone_from(&rec.file_name);
    }
    if !rec.sent {
        txn.clear(&keys::media_unsent(rec.created_ms, &id));
        rec.sent = true;
        txn.set(&keys::media(&id), &rec.encode_to_vec());
    }
    Ok(id)
}

/// Records that media `id` was sent in `chat_id` as message `seq`: the
/// chat's participants who can see that message may now download it. Keeps
/// the newest seq, since whoever sees an older message carrying it also
/// sees the newer one.
pub fn sent_in(txn: &mut dyn Txn, id: &MediaId, chat_id: u64, seq: u64) -> Result<(), ServiceError> {
    let key = keys::media_ref(id, chat_id);
    let newest = match txn.get(&key)? {
        Some(old) => last_sent_seq(&old).max(seq),
        None => seq,
    };
    txn.set(&key, &newest.to_be_bytes());
    Ok(())
}

/// Uploads never sent in a message and older than `before_ms` (at most `limit`).
pub fn abandoned(txn: &mut dyn ReadTxn, before_ms: i64, limit: usize) -> Result<Vec<MediaId>, ServiceError> {
    let (begin, end) = keys::media_unsent_before(before_ms);
    Ok(txn
        .range(&begin, &end, limit, false)?
        .iter()
        .filter_map(|kv| keys::media_of_unsent(&kv.0))
        .collect())
}

/// [`forget`], unless a stream is receiving the upload (its claim holds).
pub fn forget_unclaimed(txn: &mut dyn Txn, id: &MediaId, now_ms: i64) -> Result<Option<Vec<u8>>, ServiceError> {
    match records::get::<MediaRecord>(txn, &keys::media(id))? {
        Some(rec) if rec.holder != 0 && rec.claimed_until_ms > now_ms => Ok(None),
        _ => forget(txn, id),
    }
}

/// Forgets an unsent upload; returns the chunk prefix (upload id) whose
/// objects must now be deleted, if no other media shares them. A record
/// sent in the meantime is kept.
pub fn forget(txn: &mut dyn Txn, id: &MediaId) -> Result<Option<Vec<u8>>, ServiceError> {
    let key = keys::media(id);
    let Some(rec) = records::get::<MediaRecord>(txn, &key)? else {
        return Ok(None);
    };
    if rec.sent {
        return Ok(None);
    }
    txn.clear(&keys::media_unsent(rec.created_ms, id));
    drop_record(txn, id, &rec)
}

/// After retention deleted the messages of `chat_id` below `floor`: forgets
/// that media `id` was sent there if every message carrying it is gone,
/// and when no chat references it any more deletes the media itself.
/// Returns the chunk prefix whose objects must then be deleted, as
/// [`forget`] does. References without a seq (data from before it was kept)
/// are never dropped: which messages carry them is unknown.
pub fn unreference(txn: &mut dyn Txn, id: &MediaId, chat_id: u64, floor: u64) -> Result<Option<Vec<u8>>, ServiceError> {
    let rkey = keys::media_ref(id, chat_id);
    match txn.get(&rkey)? {
        Some(v) if last_sent_seq(&v) < floor => txn.clear(&rkey),
        _ => return Ok(None),
    }
    let (begin, end) = keys::media_refs(id);
    if !txn.range(&begin, &end, 1, false)?.is_empty() {
        return Ok(None);
    }
    let Some(rec) = records::get::<MediaRecord>(txn, &keys::media(id))? else {
        return Ok(None);
    };
    drop_record(txn, id, &rec)
}

/// Deletes media record `id` and its share of the blob; returns the chunk
/// prefix to delete when nothing else holds those bytes.
fn drop_record(txn: &mut dyn Txn, id: &MediaId, rec: &MediaRecord) -> Result<Option<Vec<u8>>, ServiceError> {
    txn.clear(&keys::media(id));
    if !rec.complete {
        return Ok(Some(id.to_vec()));
    }
    let bkey = keys::media_blob(&rec.sha256);
    let Some(mut blob) = records::get::<BlobRecord>(txn, &bkey)? else {
        return Ok(None);
    };
    blob.refs = blob.refs.saturating_sub(1);
    if blob.refs == 0 {
        txn.clear(&bkey);
        Ok(Some(blob.chunks_of))
    } else {
        txn.set(&bkey, &blob.encode_to_vec());
        Ok(None)
    }
}
