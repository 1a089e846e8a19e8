//! The key layout of the ordered keyspace (documented in `spec/storage.md`).
//!
//! Keys are a short ASCII tag, a `/`, then fixed-width big-endian integers or
//! raw bytes, so byte order equals the order we scan in: a chat's messages by
//! seq, a user's log by pos, a user's chats by id. Variable-length parts come
//! last so they never disturb the ordering of what precedes them.

/// `user/{username}` → `UserRecord`.
pub fn user(username: &str) -> Vec<u8> {
    cat(b"user/", &[username.as_bytes()])
}

/// The range of every [`user`] key.
pub fn users() -> (Vec<u8>, Vec<u8>) {
    (b"user/".to_vec(), b"user0".to_vec())
}

/// The range of every [`session`] key.
pub fn sessions() -> (Vec<u8>, Vec<u8>) {
    (b"sess/".to_vec(), b"sess0".to_vec())
}

/// The token hash from a [`session`] key.
pub fn token_hash_of(key: &[u8]) -> Option<[u8; 32]> {
    key.strip_prefix(b"sess/")?.try_into().ok()
}

/// The range of a user's [`device`] keys.
pub fn devices(uid: u64) -> (Vec<u8>, Vec<u8>) {
    (device(uid, 0), cat(b"dev/", &[&uid.to_be_bytes(), &[0xff; 5]]))
}

/// The device id from a [`device`] key.
pub fn device_of(key: &[u8]) -> Option<u32> {
    key.get(key.len().checked_sub(4)?..)?
        .try_into()
        .ok()
        .map(u32::from_be_bytes)
}

/// `uid/{user_id}` → username (UTF-8).
pub fn user_id(uid: u64) -> Vec<u8> {
    cat(b"uid/", &[&uid.to_be_bytes()])
}

/// `sess/{sha256(token)}` → `SessionRecord`.
pub fn session(token_hash: &[u8; 32]) -> Vec<u8> {
    cat(b"sess/", &[token_hash])
}

/// `dev/{user_id}{device_id}` → `DeviceRecord`.
pub fn device(uid: u64, device: u32) -> Vec<u8> {
    cat(b"dev/", &[&uid.to_be_bytes(), &device.to_be_bytes()])
}

/// `dm/{low user_id}{high user_id}` → chat id (u64 BE): the one direct chat of a pair.
pub fn direct(a: u64, b: u64) -> Vec<u8> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    cat(b"dm/", &[&lo.to_be_bytes(), &hi.to_be_bytes()])
}

/// `chat/{chat_id}` → `ChatRecord`.
pub fn chat(chat: u64) -> Vec<u8> {
    cat(b"chat/", &[&chat.to_be_bytes()])
}

/// `msg/{chat_id}{seq}` → `MessageRecord`.
pub fn message(chat: u64, seq: u64) -> Vec<u8> {
    cat(b"msg/", &[&chat.to_be_bytes(), &seq.to_be_bytes()])
}

/// `idem/{chat_id}{sender user_id}{client_msg_id}` → `IdemRecord`.
pub fn idempotency(chat: u64, sender: u64, client_msg_id: &str) -> Vec<u8> {
    cat(
        b"idem/",
        &[&chat.to_be_bytes(), &sender.to_be_bytes(), client_msg_id.as_bytes()],
    )
}

/// `cur/{chat_id}{user_id}` → `CursorRecord` (delivered and read seq).
pub fn cursor(chat: u64, uid: u64) -> Vec<u8> {
    cat(b"cur/", &[&chat.to_be_bytes(), &uid.to_be_bytes()])
}

/// `uchat/{user_id}{chat_id}` → empty: the chats a user is in.
pub fn user_chat(uid: u64, chat: u64) -> Vec<u8> {
    cat(b"uchat/", &[&uid.to_be_bytes(), &chat.to_be_bytes()])
}

/// The range of [`user_chat`] keys of one user.
pub fn user_chats(uid: u64) -> (Vec<u8>, Vec<u8>) {
    (user_chat(uid, 0), user_chat(uid, u64::MAX))
}

/// The user id in a [`cursor`] key.
pub fn user_of_cursor(key: &[u8]) -> Option<u64> {
    chat_of_user_chat(key)
}

/// `ragg/{chat_id}` → `AggRecord`: a group's lowest delivered/read cursors.
pub fn receipt_aggregate(chat: u64) -> Vec<u8> {
    cat(b"ragg/", &[&chat.to_be_bytes()])
}

/// `uchan/{user_id}{chat_id}` → empty: the channels a user subscribes to,
/// read when a device connects to watch them for live posts.
pub fn user_channel(uid: u64, chat: u64) -> Vec<u8> {
    cat(b"uchan/", &[&uid.to_be_bytes(), &chat.to_be_bytes()])
}

/// The range of [`user_channel`] keys of one user.
pub fn user_channels(uid: u64) -> (Vec<u8>, Vec<u8>) {
    (user_channel(uid, 0), user_channel(uid, u64::MAX))
}

/// `creq/{user_id}{client_request_id}` → chat id (u64 BE): a chat created
/// by a request with that id, so a retried create finds it.
pub fn create_request(uid: u64, request_id: &str) -> Vec<u8> {
    cat(b"creq/", &[&uid.to_be_bytes(), request_id.as_bytes()])
}

/// `block/{user_id}{blocked user_id}` → empty: whom a user blocks.
pub fn block(uid: u64, blocked: u64) -> Vec<u8> {
    cat(b"block/", &[&uid.to_be_bytes(), &blocked.to_be_bytes()])
}

/// The range of [`block`] keys of one user.
pub fn blocks(uid: u64) -> (Vec<u8>, Vec<u8>) {
    (block(uid, 0), block(uid, u64::MAX))
}

/// `hide/{chat_id}{user_id}{seq}` → empty: a message in a direct chat that
/// `user_id` never sees (its sender was blocked when it was sent).
pub fn hidden(chat: u64, uid: u64, seq: u64) -> Vec<u8> {
    cat(b"hide/", &[&chat.to_be_bytes(), &uid.to_be_bytes(), &seq.to_be_bytes()])
}

/// `log/{user_id}{pos}` → `LogRecord`.
pub fn log(uid: u64, pos: u64) -> Vec<u8> {
    cat(b"log/", &[&uid.to_be_bytes(), &pos.to_be_bytes()])
}

/// `loghead/{user_id}` → u64 BE: the newest position of the user's log.
pub fn log_head(uid: u64) -> Vec<u8> {
    cat(b"loghead/", &[&uid.to_be_bytes()])
}

/// `ctr/{name}` → u64 BE: id allocators ("user", "chat").
pub fn counter(name: &str) -> Vec<u8> {
    cat(b"ctr/", &[name.as_bytes()])
}

/// `node/{node_id}` → `NodeRecord`: a live quipd node of a cluster and its
/// heartbeat.
pub fn node(node: u64) -> Vec<u8> {
    cat(b"node/", &[&node.to_be_bytes()])
}

/// The range of every [`node`] key.
pub fn nodes() -> (Vec<u8>, Vec<u8>) {
    (node(0), cat(b"node/", &[&[0xff; 9]]))
}

/// The node id in a [`node`] key.
pub fn node_of(key: &[u8]) -> Option<u64> {
    key.strip_prefix(b"node/")?.try_into().ok().map(u64::from_be_bytes)
}

/// `where/{user_id}` → `WhereRecord`: the nodes holding the user's
/// connections (the cluster's session directory).
pub fn whereabouts(uid: u64) -> Vec<u8> {
    cat(b"where/", &[&uid.to_be_bytes()])
}

/// `nodeusr/{node_id}{user_id}` → empty: the users a node lists itself for
/// in `where/`, so the entries of a dead node can be found and removed.
pub fn node_user(node: u64, uid: u64) -> Vec<u8> {
    cat(b"nodeusr/", &[&node.to_be_bytes(), &uid.to_be_bytes()])
}

/// The range of one node's [`node_user`] keys.
pub fn node_users(node: u64) -> (Vec<u8>, Vec<u8>) {
    (node_user(node, 0), cat(b"nodeusr/", &[&node.to_be_bytes(), &[0xff; 9]]))
}

/// `conns/{user_id}` → `ConnsRecord`: how many connections each node
/// holds of each of the user's devices, for the cluster-wide connection
/// limits. Apart from `where/` so that a connection opening or closing does
/// not conflict with every write that pushes to the user.
pub fn conns(uid: u64) -> Vec<u8> {
    cat(b"conns/", &[&uid.to_be_bytes()])
}

/// `inbox/{node_id}` ‖ versionstamp (10 bytes) ‖ order (2 bytes) →
/// `InboxRecord`: what a commit asks one node to push, in commit order.
pub fn inbox(node: u64) -> Vec<u8> {
    cat(b"inbox/", &[&node.to_be_bytes()])
}

/// The range of one node's inbox entries.
pub fn inbox_range(node: u64) -> (Vec<u8>, Vec<u8>) {
    (inbox(node), cat(b"inbox/", &[&node.to_be_bytes(), &[0xff; 13]]))
}

/// `bell/{node_id}` → a counter (little-endian, atomic adds): rung with
/// every inbox entry; the node watches it.
pub fn doorbell(node: u64) -> Vec<u8> {
    cat(b"bell/", &[&node.to_be_bytes()])
}

/// `thr/{kind}/{subject}` → `BucketRecord`: a budget every node of a
/// cluster shares (kind `login-user`, `login-ip`, `register-ip`).
pub fn throttle(kind: &str, subject: &[u8]) -> Vec<u8> {
    cat(b"thr/", &[kind.as_bytes(), b"/", subject])
}

/// The range of every [`throttle`] key.
pub fn throttles() -> (Vec<u8>, Vec<u8>) {
    (b"thr/".to_vec(), b"thr0".to_vec())
}

/// The chat id from a [`user_chat`] key.
pub fn chat_of_user_chat(key: &[u8]) -> Option<u64> {
    key.get(key.len().checked_sub(8)?..)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
}

fn cat(tag: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = tag.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.extend_from_slice(tag);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// `media/{media_id}` → `MediaRecord`: an upload, then the stored media.
pub fn media(id: &[u8; 16]) -> Vec<u8> {
    cat(b"media/", &[id])
}

/// `mblob/{sha256}` → `BlobRecord`: stored bytes, shared by every media
/// record with that content (deduplication).
pub fn media_blob(sha256: &[u8]) -> Vec<u8> {
    cat(b"mblob/", &[sha256])
}

/// `mref/{media_id}{chat_id}` → u64 BE, the newest seq it was sent at: the
/// media was sent in that chat, whose participants who see that message
/// may download it (empty in data written before the seq was kept).
pub fn media_ref(id: &[u8; 16], chat: u64) -> Vec<u8> {
    cat(b"mref/", &[id, &chat.to_be_bytes()])
}

/// The range of [`media_ref`] keys of one media id.
pub fn media_refs(id: &[u8; 16]) -> (Vec<u8>, Vec<u8>) {
    (media_ref(id, 0), media_ref(id, u64::MAX))
}

/// `mnew/{created_ms}{media_id}` → empty: media not yet sent in any message,
/// by age, for the clean-up of abandoned uploads.
pub fn media_unsent(created_ms: i64, id: &[u8; 16]) -> Vec<u8> {
    cat(b"mnew/", &[&(created_ms.max(0) as u64).to_be_bytes(), id])
}

/// The range of [`media_unsent`] keys created before `before_ms`.
pub fn media_unsent_before(before_ms: i64) -> (Vec<u8>, Vec<u8>) {
    (
        cat(b"mnew/", &[&0u64.to_be_bytes()]),
        cat(b"mnew/", &[&(before_ms.max(0) as u64).to_be_bytes()]),
    )
}

/// The media id in a [`media_unsent`] key.
pub fn media_of_unsent(key: &[u8]) -> Option<[u8; 16]> {
    key.get(key.len().checked_sub(16)?..)?.try_into().ok()
}

/// `mfloor/{chat_id}` → u64 BE: the chat's oldest retained seq; messages
/// below it were deleted by retention (absent: 1, none were). History
/// starts its range here, so it never walks the deleted keys' tombstones.
pub fn message_floor(chat: u64) -> Vec<u8> {
    cat(b"mfloor/", &[&chat.to_be_bytes()])
}

/// `logfloor/{user_id}` → u64 BE: the oldest position still in the user's
/// log; entries below it were deleted by retention (absent: 1).
pub fn log_floor(uid: u64) -> Vec<u8> {
    cat(b"logfloor/", &[&uid.to_be_bytes()])
}

/// Every `chat/` key from `from` on.
pub fn chats_from(from: u64) -> (Vec<u8>, Vec<u8>) {
    (chat(from), cat(b"chat0", &[]))
}

/// Every `uid/` key from `from` on.
pub fn users_from(from: u64) -> (Vec<u8>, Vec<u8>) {
    (user_id(from), cat(b"uid0", &[]))
}

/// The trailing u64 of a key (`chat/`, `uid/`, `log/`, `msg/` …).
pub fn last_u64(key: &[u8]) -> Option<u64> {
    chat_of_user_chat(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_follows_numbers() {
        assert!(message(1, 2) < message(1, 10));
        assert!(message(1, u64::MAX) < message(2, 0));
        assert!(log(7, 255) < log(7, 256));
        assert!(user_chat(3, 9) < user_chat(4, 0));
    }

    #[test]
    fn unsent_media_keys_sort_by_age_and_give_back_the_id() {
        let (a, b) = ([1u8; 16], [2u8; 16]);
        assert!(media_unsent(5, &b) < media_unsent(6, &a));
        let (lo, hi) = media_unsent_before(6);
        assert!(lo <= media_unsent(5, &b) && media_unsent(5, &b) < hi);
        assert!(media_unsent(6, &a) >= hi);
        assert_eq!(media_of_unsent(&media_unsent(9, &a)), Some(a));
    }

    #[test]
    fn direct_key_is_symmetric() {
        assert_eq!(direct(5, 9), direct(9, 5));
        assert_ne!(direct(5, 9), direct(5, 10));
    }

    #[test]
    fn chat_id_round_trips_from_index_key() {
        assert_eq!(chat_of_user_chat(&user_chat(42, 77)), Some(77));
    }

    #[test]
    fn prefixes_do_not_collide() {
        // A username cannot make a user key look like another tag's key.
        let tags: [&[u8]; 30] = [
            b"user/",
            b"mfloor/",
            b"logfloor/",
            b"uid/",
            b"sess/",
            b"dev/",
            b"dm/",
            b"chat/",
            b"msg/",
            b"idem/",
            b"cur/",
            b"uchat/",
            b"log/",
            b"ragg/",
            b"uchan/",
            b"block/",
            b"hide/",
            b"creq/",
            b"media/",
            b"mblob/",
            b"mref/",
            b"mnew/",
            b"node/",
            b"where/",
            b"nodeusr/",
            b"inbox/",
            b"bell/",
            b"loghead/",
            b"thr/",
            b"conns/",
        ];
        for (i, a) in tags.iter().enumerate() {
            for (j, b) in tags.iter().enumerate() {
                if i != j {
                    assert!(!a.starts_with(b), "{:?} starts with {:?}", a, b);
                }
            }
        }
    }
}
