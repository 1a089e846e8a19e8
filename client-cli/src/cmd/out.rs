//! How results look: one line of text each, or one JSON object per line
//! with `--json`.

use std::io::Write;

use quip_protocol::v1::{self, ReceiptKind};
use serde_json::json;

/// Prints results as text or JSON lines, flushing each line (for pipes).
pub struct Out {
    pub json: bool,
}

impl Out {
    pub fn emit(
        &self,
        text: impl FnOnce() -> String,
        value: impl FnOnce() -> serde_json::Value,
    ) -> std::io::Result<()> {
        let line = if self.json { value().to_string() } else { text() };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()
    }

    /// A message; `pos` (its place in the user's log) for events.
    pub fn message(&self, m: &v1::Message, pos: Option<u64>) -> std::io::Result<()> {
        self.emit(
            || format!("[chat {} #{}] {}", m.chat_id, m.seq, line(m)),
            || message_json(m, pos),
        )
    }

    /// A message of a history page: the chat is known.
    pub fn history_message(&self, m: &v1::Message) -> std::io::Result<()> {
        self.emit(|| format!("#{} {}", m.seq, line(m)), || message_json(m, None))
    }

    pub fn receipt(&self, r: &v1::Receipt, pos: u64) -> std::io::Result<()> {
        let kind = receipt_kind(r.kind);
        let who = if r.everyone { "everyone" } else { r.user.as_str() };
        self.emit(
            || format!("[chat {}] {who} {kind} up to #{}", r.chat_id, r.seq),
            || {
                json!({"type": "receipt", "chat": r.chat_id, "user": r.user, "everyone": r.everyone,
                    "kind": kind, "seq": r.seq, "pos": pos})
            },
        )
    }

    pub fn presence(&self, p: &v1::Presence) -> std::io::Result<()> {
        self.emit(
            || {
                let state = if !p.visible {
                    "hidden".to_owned()
                } else if p.online {
                    "online".to_owned()
                } else if p.last_seen_ms > 0 {
                    format!("last seen {}", when(p.last_seen_ms))
                } else {
                    "offline".to_owned()
                };
                format!("{} is {state}", p.user)
            },
            || {
                json!({"type": "presence", "user": p.user, "visible": p.visible, "online": p.online,
                    "last_seen_ms": p.last_seen_ms})
            },
        )
    }

    pub fn typing(&self, t: &v1::Typing) -> std::io::Result<()> {
        self.emit(
            || format!("[chat {}] {} is typing", t.chat_id, t.user),
            || json!({"type": "typing", "chat": t.chat_id, "user": t.user, "expires_in_ms": t.expires_in_ms}),
        )
    }

    pub fn chat_info(&self, i: &v1::ChatInfo, event_seq: u64) -> std::io::Result<()> {
        self.emit(
            || {
                let members: Vec<String> = i
                    .members
                    .iter()
                    .map(|m| {
                        if m.admin {
                            format!("{} (admin)", m.user)
                        } else {
                            m.user.clone()
                        }
                    })
                    .collect();
                let limit = if i.max_members > 0 {
                    format!(" of at most {}", i.max_members)
                } else {
                    String::new()
                };
                // A channel's info lists its admins only; a group's, everyone.
                let who = if i.kind == v1::ChatKind::Channel as i32 {
                    let admins: Vec<&str> = i.members.iter().map(|m| m.user.as_str()).collect();
                    format!(
                        "{}; admins: {}",
                        plural(i.member_count.into(), "subscriber"),
                        admins.join(", ")
                    )
                } else {
                    format!(
                        "{}{limit}: {}",
                        plural(i.member_count.into(), "member"),
                        members.join(", ")
                    )
                };
                format!("chat:{} {} \"{}\": {who}", i.chat_id, kind_name(i.kind), i.name)
            },
            || {
                let members: Vec<serde_json::Value> = i
                    .members
                    .iter()
                    .map(|m| json!({"user": m.user, "admin": m.admin, "joined_seq": m.joined_seq}))
                    .collect();
                json!({"type": "chat_info", "chat": i.chat_id, "kind": kind_name(i.kind), "name": i.name,
                    "member_count": i.member_count, "max_members": i.max_members, "last_seq": i.last_seq,
                    "members": members, "event_seq": event_seq})
            },
        )
    }
}

/// "1 member", "2 members".
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A wall-clock time in ms since the epoch, as "N s/min/h/d ago".
fn when(ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let s = (now - ms).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

pub fn kind_name(kind: i32) -> &'static str {
    match v1::ChatKind::try_from(kind) {
        Ok(v1::ChatKind::Direct) => "direct",
        Ok(v1::ChatKind::Group) => "group",
        Ok(v1::ChatKind::Channel) => "channel",
        _ => "chat",
    }
}

pub fn text(m: &v1::Message) -> &str {
    m.content.as_ref().map_or("", |c| c.text.as_str())
}

/// The text, a membership change in words, or a note for a message that
/// carries only an opaque payload.
fn body(m: &v1::Message) -> String {
    if let Some(g) = &m.group_event {
        return group_event(m, g);
    }
    if let Some(media) = m.content.as_ref().and_then(|c| c.media.as_ref()) {
        let caption = match text(m) {
            "" => String::new(),
            t => format!(" {t}"),
        };
        return format!(
            "[{} {}, {} bytes, media {}]{caption}",
            media.content_type, media.file_name, media.size, media.media_id
        );
    }
    let payload = m.content.as_ref().map_or(0, |c| c.payload.len());
    match text(m) {
        "" if payload > 0 => format!("<{payload} bytes of payload>"),
        t => t.to_owned(),
    }
}

/// "sender: text", or for a membership change "* sender did what".
pub fn line(m: &v1::Message) -> String {
    if m.group_event.is_some() {
        body(m)
    } else {
        format!("{}: {}", m.sender, body(m))
    }
}

/// "alice added bob, carol", "bob left", ...
fn group_event(m: &v1::Message, g: &v1::GroupEvent) -> String {
    let users = g.users.join(", ");
    let what = match v1::GroupEventKind::try_from(g.kind).unwrap_or_default() {
        v1::GroupEventKind::Created if users.is_empty() => format!("created \"{}\"", g.name),
        v1::GroupEventKind::Created => format!("created \"{}\" with {users}", g.name),
        v1::GroupEventKind::Added => format!("added {users}"),
        v1::GroupEventKind::Removed => format!("removed {users}"),
        v1::GroupEventKind::Left => "left".into(),
        v1::GroupEventKind::Promoted => format!("made {users} admin"),
        v1::GroupEventKind::Demoted => format!("made {users} no longer admin"),
        v1::GroupEventKind::Renamed => format!("renamed the chat to \"{}\"", g.name),
        v1::GroupEventKind::Unspecified => "changed the chat".into(),
    };
    format!("* {} {what}", m.sender)
}

fn message_json(m: &v1::Message, pos: Option<u64>) -> serde_json::Value {
    if let Some(g) = &m.group_event {
        let kind = v1::GroupEventKind::try_from(g.kind)
            .unwrap_or_default()
            .as_str_name()
            .to_ascii_lowercase();
        let mut v = json!({
            "type": "group_event", "chat": m.chat_id, "seq": m.seq, "by": m.sender,
            "event": kind, "users": g.users, "name": g.name, "sent_at_ms": m.sent_at_ms,
        });
        if let Some(pos) = pos {
            v["pos"] = json!(pos);
        }
        return v;
    }
    let mut v = json!({
        "type": "message", "chat": m.chat_id, "seq": m.seq, "from": m.sender,
        "to": m.recipient, "text": text(m), "sent_at_ms": m.sent_at_ms,
        "client_msg_id": m.client_msg_id,
    });
    if let Some(media) = m.content.as_ref().and_then(|c| c.media.as_ref()) {
        v["media"] = json!({
            "id": media.media_id, "size": media.size, "type": media.content_type,
            "file_name": media.file_name, "sha256": hex(&media.sha256),
        });
    }
    if let Some(pos) = pos {
        v["pos"] = json!(pos);
    }
    v
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn receipt_kind(kind: i32) -> &'static str {
    match ReceiptKind::try_from(kind) {
        Ok(ReceiptKind::Read) => "read",
        Ok(ReceiptKind::Delivered) => "delivered",
        _ => "unknown",
    }
}
