//! What each request kind is, in one table: whether it may run from 0-RTT
//! early data, whether it writes, whether it must see its stream's earlier
//! writes.
//!
//! These were three lists in the session that had to agree; a kind missing
//! from one of them was silently treated one way. The match below names
//! every body without a wildcard, so a new kind in the schema does not
//! compile until someone decides what it is.

use quip_protocol::Body;

/// How the session and the request loop treat one request kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// Harmless when replayed (reads; writes idempotent by design: a send
    /// with its client_msg_id, receipts and acks that only move forward,
    /// typing), so it may run from 0-RTT early data. Everything that
    /// creates or revokes state waits for the handshake.
    pub replay_safe: bool,
    /// Changes stored state: refused once shutdown starts.
    pub writes: bool,
    /// Reads state the same stream may have just written: the request loop
    /// runs it only after the stream's earlier writes are durable.
    pub reads: bool,
}

const READ: Kind = Kind {
    replay_safe: true,
    writes: false,
    reads: true,
};
/// Answered from memory or pushed on, never stored (ping, presence, typing).
const TRANSIENT: Kind = Kind {
    replay_safe: true,
    writes: false,
    reads: false,
};
const IDEMPOTENT_WRITE: Kind = Kind {
    replay_safe: true,
    writes: true,
    reads: false,
};
const WRITE: Kind = Kind {
    replay_safe: false,
    writes: true,
    reads: false,
};

/// The kind of a request body. Bodies only servers send are classed as
/// writes that are not replay-safe: they are refused the same way as any
/// request after shutdown, and answered `UNKNOWN_REQUEST` otherwise.
pub fn of(body: &Body) -> Kind {
    match body {
        Body::Whoami(_)
        | Body::History(_)
        | Body::Chats(_)
        | Body::Sync(_)
        | Body::ChatInfo(_)
        | Body::ReceiptDetail(_) => READ,
        Body::Ping(_) | Body::Presence(_) | Body::Typing(_) => TRANSIENT,
        Body::Send(_) | Body::Receipt(_) | Body::Ack(_) => IDEMPOTENT_WRITE,
        Body::Register(_)
        | Body::Login(_)
        | Body::Logout(_)
        | Body::CreateChat(_)
        | Body::UpdateChat(_)
        | Body::Subscribe(_)
        | Body::Settings(_)
        | Body::Block(_)
        | Body::Upload(_)
        | Body::Download(_) => WRITE,
        Body::Hello(_)
        | Body::Welcome(_)
        | Body::Error(_)
        | Body::Auth(_)
        | Body::LoggedOut(_)
        | Body::Identity(_)
        | Body::Sent(_)
        | Body::HistoryPage(_)
        | Body::ChatList(_)
        | Body::ReceiptStored(_)
        | Body::SyncPage(_)
        | Body::Acked(_)
        | Body::Pong(_)
        | Body::Chat(_)
        | Body::ReceiptDetails(_)
        | Body::PresenceList(_)
        | Body::SettingsSaved(_)
        | Body::TypingSent(_)
        | Body::Blocked(_)
        | Body::UploadReady(_)
        | Body::UploadComplete(_)
        | Body::DownloadReady(_)
        | Body::Event(_) => WRITE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quip_protocol::v1;

    /// A read never writes, and what creates or revokes state never runs
    /// from early data.
    #[test]
    fn the_table_is_consistent() {
        let revoking = [
            Body::Login(v1::LoginRequest::default()),
            Body::Logout(v1::LogoutRequest::default()),
            Body::Register(v1::RegisterRequest::default()),
            Body::UpdateChat(v1::UpdateChatRequest::default()),
            Body::Block(v1::BlockRequest::default()),
        ];
        for b in &revoking {
            assert!(!of(b).replay_safe, "{b:?}");
        }
        let reads = [
            Body::History(v1::HistoryRequest::default()),
            Body::Sync(v1::SyncRequest::default()),
            Body::Chats(v1::ChatsRequest::default()),
        ];
        for b in &reads {
            let k = of(b);
            assert!(k.reads && !k.writes && k.replay_safe, "{b:?}");
        }
        assert!(of(&Body::Send(v1::SendRequest::default())).writes);
    }
}
