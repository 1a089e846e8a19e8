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

    /// Every body of `Envelope` in the schema: (field name, tag).
    fn schema_bodies() -> Vec<(String, u32)> {
        let proto = include_str!("../../protocol/proto/quip/v1/quip.proto");
        let start = proto.find("oneof body {").expect("Envelope's oneof");
        let end = start + proto[start..].find("\n  }").expect("end of the oneof");
        proto[start..end]
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                if l.starts_with("//") || !l.ends_with(';') {
                    return None;
                }
                let mut words = l.trim_end_matches(';').split_whitespace();
                let (_ty, name, eq, tag) = (words.next()?, words.next()?, words.next()?, words.next()?);
                (eq == "=").then(|| (name.to_owned(), tag.parse().expect("tag")))
            })
            .collect()
    }

    /// The `code` names in the spec from the line starting with `from` up to
    /// (not including) the line starting with `to`.
    fn spec_names(from: &str, to: &str) -> Vec<String> {
        let spec = include_str!("../../spec/protocol.md");
        let start = spec
            .find(&format!("\n{from}"))
            .unwrap_or_else(|| panic!("{from:?} in the spec"));
        let end = start
            + spec[start..]
                .find(&format!("\n{to}"))
                .unwrap_or_else(|| panic!("{to:?} in the spec"));
        spec[start..end]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// A body with the given tag and all its fields at their defaults.
    fn body_of(tag: u32) -> Body {
        let mut bytes = Vec::new();
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut bytes);
        bytes.push(0);
        let env: quip_protocol::Envelope = prost::Message::decode(bytes.as_slice()).expect("decodes");
        env.body.expect("a known body")
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// Spec §4 lists every body the schema has, each on the side that sends
    /// it: `hello` and tags 10–39 are requests; the rest are the server's.
    #[test]
    fn spec_section_4_lists_every_body() {
        let (client, server): (Vec<_>, Vec<_>) = schema_bodies()
            .into_iter()
            .partition(|(_, tag)| *tag == 2 || (10..40).contains(tag));
        let names = |v: Vec<(String, u32)>| sorted(v.into_iter().map(|(n, _)| n).collect());
        assert_eq!(
            sorted(spec_names("Bodies sent by clients", "Bodies sent by servers")),
            names(client)
        );
        assert_eq!(
            sorted(spec_names("Bodies sent by servers", "A client that sends")),
            names(server)
        );
    }

    /// Spec §18.3 names every request once, as allowed from early data or
    /// held back, and the server's table agrees.
    #[test]
    fn spec_section_18_3_classifies_every_request() {
        let allowed = spec_names("- allowed:", "- held back:");
        let held = spec_names("- held back:", "\n");
        let allowed: Vec<String> = allowed.into_iter().filter(|n| n != "Hello").collect();
        for (name, tag) in schema_bodies() {
            if !(10..40).contains(&tag) {
                continue;
            }
            let safe = of(&body_of(tag)).replay_safe;
            match (allowed.contains(&name), held.contains(&name)) {
                (true, false) => assert!(safe, "{name}: the spec allows it in 0-RTT, the server holds it back"),
                (false, true) => assert!(!safe, "{name}: the spec holds it back, the server allows it in 0-RTT"),
                _ => panic!("{name} must be in exactly one of §18.3's lists"),
            }
        }
    }
}
