//! Who is typing where, as a receiver shows it: each indicator lasts for
//! the time the server attached to it unless refreshed. Sans-IO: the caller
//! passes the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use quip_protocol::v1;

/// Typing indicators currently shown.
#[derive(Debug, Default, Clone)]
pub struct TypingState {
    until: HashMap<(u64, String), Instant>,
}

impl TypingState {
    /// Records a received indicator at `now`.
    pub fn observe(&mut self, t: &v1::Typing, now: Instant) {
        let until = now + Duration::from_millis(u64::from(t.expires_in_ms));
        self.until.insert((t.chat_id, t.user.clone()), until);
    }

    /// A message from `user` in `chat` ends their indicator at once.
    pub fn message_from(&mut self, chat: u64, user: &str) {
        self.until.remove(&(chat, user.to_owned()));
    }

    /// Who is typing in `chat` at `now`, sorted.
    pub fn typing_in(&mut self, chat: u64, now: Instant) -> Vec<String> {
        self.until.retain(|_, until| *until > now);
        let mut users: Vec<String> = self
            .until
            .keys()
            .filter(|(c, _)| *c == chat)
            .map(|(_, u)| u.clone())
            .collect();
        users.sort();
        users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typing(user: &str) -> v1::Typing {
        v1::Typing {
            chat_id: 1,
            user: user.into(),
            expires_in_ms: 5_000,
        }
    }

    #[test]
    fn indicators_expire_unless_refreshed() {
        let t0 = Instant::now();
        let mut s = TypingState::default();
        s.observe(&typing("bob"), t0);
        s.observe(&typing("carol"), t0 + Duration::from_secs(3));
        assert_eq!(s.typing_in(1, t0 + Duration::from_secs(4)), vec!["bob", "carol"]);
        assert_eq!(s.typing_in(1, t0 + Duration::from_secs(5)), vec!["carol"]);
        assert!(s.typing_in(2, t0).is_empty());
        s.observe(&typing("carol"), t0 + Duration::from_secs(7));
        assert_eq!(s.typing_in(1, t0 + Duration::from_secs(10)), vec!["carol"], "refreshed");
        s.message_from(1, "carol");
        assert!(s.typing_in(1, t0 + Duration::from_secs(10)).is_empty());
    }
}
