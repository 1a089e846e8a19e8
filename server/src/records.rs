//! Values stored under the keys of [`crate::keys`], as protobuf messages.
//!
//! Protobuf (through prost's derive, no .proto needed) gives forward-compatible
//! records: a later version can add fields and still read old data. Messages
//! are stored as the wire type `quip.v1.Message` itself, so history and sync
//! hand out stored bytes without translating them.

use prost::Message;

use crate::store::StoreError;

/// `user/{username}`.
#[derive(Clone, PartialEq, Message)]
pub struct UserRecord {
    /// Stable numeric id; keys use it, not the name.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The account name.
    #[prost(string, tag = "2")]
    pub username: String,
    /// argon2id PHC string.
    #[prost(string, tag = "3")]
    pub password_phc: String,
    /// Registration time, ms since the epoch.
    #[prost(int64, tag = "4")]
    pub created_ms: i64,
    /// The last device id handed out.
    #[prost(uint32, tag = "5")]
    pub last_device: u32,
    /// `quip.v1.Visibility` of online status and last seen (0: the default,
    /// contacts).
    #[prost(int32, tag = "6")]
    pub last_seen_visibility: i32,
    /// When the user was last online, ms since the epoch (0: never recorded).
    #[prost(int64, tag = "7")]
    pub last_seen_ms: i64,
    /// `quip.v1.GroupAdds`: who may add the user to groups (0: everyone).
    #[prost(int32, tag = "8")]
    pub group_adds: i32,
    /// Disabled by the operator (`quipd admin users disable`): logins are
    /// refused until it is enabled again.
    #[prost(bool, tag = "9")]
    pub disabled: bool,
}

/// `sess/{sha256(token)}`.
#[derive(Clone, PartialEq, Message)]
pub struct SessionRecord {
    /// Whose session.
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    /// Which of the user's devices.
    #[prost(uint32, tag = "2")]
    pub device_id: u32,
    /// Login time, ms since the epoch.
    #[prost(int64, tag = "3")]
    pub created_ms: i64,
}

/// `dev/{user_id}{device_id}`.
#[derive(Clone, PartialEq, Message)]
pub struct DeviceRecord {
    /// Name the client gave at login.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Highest log position this device acknowledged.
    #[prost(uint64, tag = "2")]
    pub acked_pos: u64,
    /// Login time, ms since the epoch.
    #[prost(int64, tag = "3")]
    pub created_ms: i64,
}

/// `chat/{chat_id}`.
#[derive(Clone, PartialEq, Message)]
pub struct ChatRecord {
    /// `quip.v1.ChatKind`.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// Participants' user ids (two for a direct chat, ascending).
    #[prost(uint64, repeated, tag = "2")]
    pub members: Vec<u64>,
    /// The newest message's seq (0: none yet).
    #[prost(uint64, tag = "3")]
    pub last_seq: u64,
    /// Time of the newest message, ms since the epoch.
    #[prost(int64, tag = "4")]
    pub last_activity_ms: i64,
    /// Group or channel name.
    #[prost(string, tag = "5")]
    pub name: String,
    /// Admins' user ids (groups and channels), ascending.
    #[prost(uint64, repeated, tag = "6")]
    pub admins: Vec<u64>,
    /// Channels: the number of subscribers (their ids are not listed here;
    /// `members` holds a channel's admins, who may post).
    #[prost(uint32, tag = "7")]
    pub subscribers: u32,
}

impl ChatRecord {
    /// The chat's kind; unknown values read as unspecified.
    pub fn kind(&self) -> quip_protocol::v1::ChatKind {
        quip_protocol::v1::ChatKind::try_from(self.kind).unwrap_or_default()
    }
}

/// `idem/{chat}{sender}{client_msg_id}`: what the first send with this id got.
#[derive(Clone, PartialEq, Message)]
pub struct IdemRecord {
    /// The message's seq.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The sender's log position of the message.
    #[prost(uint64, tag = "2")]
    pub sender_pos: u64,
}

/// `cur/{chat}{user}`: a participant's receipt cursors.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct CursorRecord {
    /// Delivered up to this seq.
    #[prost(uint64, tag = "1")]
    pub delivered: u64,
    /// Read up to this seq.
    #[prost(uint64, tag = "2")]
    pub read: u64,
    /// Groups: the seq of the event that added the member; their history
    /// starts there (0 for direct chats and channels: all history).
    #[prost(uint64, tag = "3")]
    pub joined: u64,
    /// Whether the user has sent a message in the chat (since this field
    /// exists): in a direct chat, it makes the peer one of the user's
    /// contacts for `GroupAdds::Contacts`. Written with the cursor every
    /// send rewrites anyway, so it costs the send nothing.
    #[prost(bool, tag = "4")]
    pub posted: bool,
}

/// `ragg/{chat}`: the lowest delivered and read cursors among a group's
/// members, and how many members sit at each. The counts let a receipt
/// update the minimum in O(1): only when the last member at the minimum
/// moves is the chat's cursor range scanned again.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct AggRecord {
    /// Lowest delivered cursor.
    #[prost(uint64, tag = "1")]
    pub delivered_min: u64,
    /// Members whose delivered cursor equals `delivered_min`.
    #[prost(uint32, tag = "2")]
    pub delivered_at_min: u32,
    /// Lowest read cursor.
    #[prost(uint64, tag = "3")]
    pub read_min: u64,
    /// Members whose read cursor equals `read_min`.
    #[prost(uint32, tag = "4")]
    pub read_at_min: u32,
}

/// `log/{user}{pos}`: one entry of a user's log. Messages are referenced, not
/// copied: a message sits once in `msg/` however many logs point at it.
#[derive(Clone, PartialEq, Message)]
pub struct LogRecord {
    /// The chat the event belongs to.
    #[prost(uint64, tag = "1")]
    pub chat_id: u64,
    /// For a message event: its seq.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// For a receipt event: the receipt.
    #[prost(message, optional, tag = "3")]
    pub receipt: Option<quip_protocol::v1::Receipt>,
}

/// `media/{media_id}`: an upload in progress, then stored media.
#[derive(Clone, PartialEq, Message)]
pub struct MediaRecord {
    /// The uploader.
    #[prost(uint64, tag = "1")]
    pub owner: u64,
    /// Declared (and, once complete, verified) size in bytes.
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// Declared (once complete, verified) SHA-256 of the bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub sha256: Vec<u8>,
    /// As the uploader declared it.
    #[prost(string, tag = "4")]
    pub content_type: String,
    /// As the uploader declared it.
    #[prost(string, tag = "5")]
    pub file_name: String,
    /// Bytes durably stored so far (whole chunks, until the last).
    #[prost(uint64, tag = "6")]
    pub received: u64,
    /// Verified and stored: it can be sent and downloaded.
    #[prost(bool, tag = "7")]
    pub complete: bool,
    /// Upload time, ms since the epoch.
    #[prost(int64, tag = "8")]
    pub created_ms: i64,
    /// Sent in at least one message (then it is kept).
    #[prost(bool, tag = "9")]
    pub sent: bool,
    /// The stream receiving the upload (random per stream; 0: none), so
    /// that two streams never write one upload, on any node.
    #[prost(uint64, tag = "10")]
    pub holder: u64,
    /// Until when `holder`'s claim holds (ms since the epoch) unless it
    /// renews it; another stream may take over after that.
    #[prost(int64, tag = "11")]
    pub claimed_until_ms: i64,
    /// The node (process) of `holder`: a claim of a process that is gone
    /// lapses at once (see `service::media::claim`).
    #[prost(uint64, tag = "12")]
    pub holder_node: u64,
}

/// `mblob/{sha256}`: bytes in the object store, shared by media records.
#[derive(Clone, PartialEq, Message)]
pub struct BlobRecord {
    /// The upload whose chunk objects hold the bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub chunks_of: Vec<u8>,
    /// Media records pointing here; the chunks go when it reaches 0.
    #[prost(uint64, tag = "2")]
    pub refs: u64,
    /// Size in bytes.
    #[prost(uint64, tag = "3")]
    pub size: u64,
}

/// `node/{node_id}`: a cluster node.
#[derive(Clone, PartialEq, Message)]
pub struct NodeRecord {
    /// When it started, ms since the epoch.
    #[prost(int64, tag = "1")]
    pub started_ms: i64,
    /// Its last heartbeat, ms since the epoch: a node silent for longer
    /// than the cluster's lease counts as dead.
    #[prost(int64, tag = "2")]
    pub heartbeat_ms: i64,
    /// Where clients reach it (for operators and logs).
    #[prost(string, tag = "3")]
    pub addr: String,
}

/// `where/{user_id}`: the nodes holding the user's connections, and those
/// on which the user counts as online; both sorted.
#[derive(Clone, PartialEq, Message)]
pub struct WhereRecord {
    /// Nodes holding a connection of the user (background ones included):
    /// where pushes go.
    #[prost(uint64, repeated, tag = "1")]
    pub nodes: Vec<u64>,
    /// Nodes on which the user is online (a foreground connection, or the
    /// grace period after one was lost): presence.
    #[prost(uint64, repeated, tag = "2")]
    pub present: Vec<u64>,
}

/// `inbox/{node}{versionstamp}`: what one commit (or one transient event)
/// asks a node to push to the devices connected to it.
#[derive(Clone, PartialEq, Message)]
pub struct InboxRecord {
    /// Log events for users on the node.
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<InboxEvent>,
    /// Channel subscriptions that changed, for users on the node.
    #[prost(message, repeated, tag = "2")]
    pub watch: Vec<WatchChange>,
    /// A channel post to announce to the node's watchers.
    #[prost(message, optional, tag = "3")]
    pub channel_post: Option<quip_protocol::v1::Message>,
    /// Transient events (typing, presence), not in any log.
    #[prost(message, repeated, tag = "4")]
    pub transient: Vec<TransientEvent>,
    /// Devices whose connections must close (revoked tokens).
    #[prost(message, repeated, tag = "5")]
    pub closes: Vec<DeviceClose>,
    /// Messages the events refer to ([`InboxEvent::message`]): a group
    /// send's message once, not once per member.
    #[prost(message, repeated, tag = "6")]
    pub messages: Vec<quip_protocol::v1::Message>,
}

/// A log event in an [`InboxRecord`].
#[derive(Clone, PartialEq, Message)]
pub struct InboxEvent {
    /// Whose log.
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    /// Its chat (the push lane).
    #[prost(uint64, tag = "2")]
    pub chat_id: u64,
    /// The event.
    #[prost(message, optional, tag = "3")]
    pub event: Option<quip_protocol::v1::Event>,
    /// A device that already has it (0: none).
    #[prost(uint32, tag = "4")]
    pub skip_device: u32,
    /// For a message event: 1 + its index in [`InboxRecord::messages`]
    /// (then `event` carries only the position); 0: `event` is whole.
    #[prost(uint32, tag = "5")]
    pub message: u32,
}

/// A channel subscription change in an [`InboxRecord`].
#[derive(Clone, Copy, PartialEq, Message)]
pub struct WatchChange {
    /// The user.
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    /// The channel.
    #[prost(uint64, tag = "2")]
    pub chat_id: u64,
    /// Subscribed (true) or not.
    #[prost(bool, tag = "3")]
    pub on: bool,
}

/// A transient event in an [`InboxRecord`].
#[derive(Clone, PartialEq, Message)]
pub struct TransientEvent {
    /// Its recipients.
    #[prost(uint64, repeated, tag = "1")]
    pub users: Vec<u64>,
    /// Its chat (0: none).
    #[prost(uint64, tag = "2")]
    pub chat_id: u64,
    /// The event.
    #[prost(message, optional, tag = "3")]
    pub event: Option<quip_protocol::v1::Event>,
    /// Worthless when late (typing): may go unreliably.
    #[prost(bool, tag = "4")]
    pub unreliable: bool,
}

/// A device whose connections close, in an [`InboxRecord`].
#[derive(Clone, PartialEq, Message)]
pub struct DeviceClose {
    /// The user.
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    /// The device.
    #[prost(uint32, tag = "2")]
    pub device_id: u32,
    /// The close code.
    #[prost(uint32, tag = "3")]
    pub code: u32,
    /// Why.
    #[prost(string, tag = "4")]
    pub reason: String,
    /// How many of the device's oldest connections on the node close
    /// (replaced by newer ones elsewhere); 0: all of them.
    #[prost(uint32, tag = "5")]
    pub oldest: u32,
}

/// `conns/{user}`: the user's open connections, per node and device.
#[derive(Clone, PartialEq, Message)]
pub struct ConnsRecord {
    /// One entry per (node, device) with connections, sorted.
    #[prost(message, repeated, tag = "1")]
    pub counts: Vec<ConnCount>,
}

/// How many connections one node holds of one device, in a [`ConnsRecord`].
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct ConnCount {
    /// The node.
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// The device.
    #[prost(uint32, tag = "2")]
    pub device_id: u32,
    /// Its connections there.
    #[prost(uint32, tag = "3")]
    pub count: u32,
    /// When the node's entry for the device appeared (ms since the epoch):
    /// the age of its oldest connection there, near enough to replace the
    /// oldest connections first.
    #[prost(int64, tag = "4")]
    pub since_ms: i64,
}

/// `thr/{kind}/{subject}`: a token bucket shared by every node
/// (`service::throttle`).
#[derive(Clone, Copy, PartialEq, Message)]
pub struct BucketRecord {
    /// Tokens left at `at_ms`.
    #[prost(double, tag = "1")]
    pub tokens: f64,
    /// When `tokens` was computed, ms since the epoch.
    #[prost(int64, tag = "2")]
    pub at_ms: i64,
    /// When the bucket will be full again (then the record can go).
    #[prost(int64, tag = "3")]
    pub full_at_ms: i64,
}

/// Decodes a stored record, naming the key on failure.
pub fn decode<M: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        key: key.escape_ascii().to_string(),
        reason: e.to_string(),
    })
}

/// Reads and decodes the record at `key`.
pub fn get<M: Message + Default>(txn: &mut dyn crate::store::ReadTxn, key: &[u8]) -> Result<Option<M>, StoreError> {
    txn.get(key)?.map(|b| decode(key, &b)).transpose()
}

/// Reads a big-endian u64 (counters, log heads, chat ids); absent is 0.
pub fn get_u64(txn: &mut dyn crate::store::ReadTxn, key: &[u8]) -> Result<u64, StoreError> {
    match txn.get(key)? {
        None => Ok(0),
        Some(b) => b
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                key: key.escape_ascii().to_string(),
                reason: format!("expected 8 bytes, found {}", b.len()),
            }),
    }
}
