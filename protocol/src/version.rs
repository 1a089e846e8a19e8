//! Protocol identification: ALPN, version negotiation and close codes.

/// The TLS ALPN protocol id for Quip over QUIC. A server refuses handshakes
/// that do not offer it, so a Quip endpoint never mistakes another protocol's
/// bytes for frames.
pub const ALPN: &[u8] = b"quip/1";

/// The protocol version this crate implements.
pub const PROTOCOL_VERSION: u32 = 1;

/// Versions a server built from this crate accepts, most preferred first.
pub const SUPPORTED_VERSIONS: &[u32] = &[PROTOCOL_VERSION];

/// Picks the highest version both sides speak, or `None` when there is none.
pub fn negotiate_version(offered: &[u32]) -> Option<u32> {
    SUPPORTED_VERSIONS.iter().copied().find(|v| offered.contains(v))
}

/// QUIC application close codes (`CONNECTION_CLOSE` frames of type 0x1d).
///
/// A closing peer also sends a reason phrase for people; clients decide what
/// to do (reconnect, re-login, give up) from the code alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCode {
    /// Normal close; nothing to do.
    Normal = 0,
    /// The peer broke the protocol (malformed or oversized frame, no handshake).
    ProtocolError = 1,
    /// No common protocol version.
    UnsupportedVersion = 2,
    /// The server is shutting down; reconnect later.
    ServerShutdown = 3,
    /// The client fell behind reading pushed events; reconnect and sync.
    SlowConsumer = 4,
    /// The session token was revoked (logout); log in again.
    LoggedOut = 5,
    /// The handshake did not complete in time.
    HandshakeTimeout = 6,
    /// The same device opened a newer connection (its limit of concurrent
    /// connections was reached); this, the oldest, is closed. Do not reconnect
    /// this one.
    Replaced = 7,
    /// The user has too many connections open at once.
    TooManyConnections = 8,
    /// The session token expired (it is valid for a set time after the
    /// login that issued it); log in again.
    SessionExpired = 9,
    /// The server's operator closed the connection (`quipd admin sessions
    /// kick`, or the account was disabled). Do not reconnect automatically:
    /// tell the user, and reconnect only when they ask (a disabled
    /// account's login is then refused with `FORBIDDEN`).
    Kicked = 10,
}

impl CloseCode {
    /// The code as sent on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Maps a wire code back; unknown codes are `None` (newer peers may add some).
    pub fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Normal,
            1 => Self::ProtocolError,
            2 => Self::UnsupportedVersion,
            3 => Self::ServerShutdown,
            4 => Self::SlowConsumer,
            5 => Self::LoggedOut,
            6 => Self::HandshakeTimeout,
            7 => Self::Replaced,
            8 => Self::TooManyConnections,
            9 => Self::SessionExpired,
            10 => Self::Kicked,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_the_common_version() {
        assert_eq!(negotiate_version(&[1]), Some(1));
        assert_eq!(negotiate_version(&[3, 1, 2]), Some(1));
        assert_eq!(negotiate_version(&[2, 3]), None);
        assert_eq!(negotiate_version(&[]), None);
    }

    #[test]
    fn close_codes_round_trip() {
        for c in [
            CloseCode::Normal,
            CloseCode::ProtocolError,
            CloseCode::UnsupportedVersion,
            CloseCode::ServerShutdown,
            CloseCode::SlowConsumer,
            CloseCode::LoggedOut,
            CloseCode::HandshakeTimeout,
            CloseCode::Replaced,
            CloseCode::TooManyConnections,
            CloseCode::SessionExpired,
            CloseCode::Kicked,
        ] {
            assert_eq!(CloseCode::from_code(c.code().into()), Some(c));
        }
        assert_eq!(CloseCode::from_code(99), None);
    }
}
