//! `quip send`, `history`, `chats` and `read`.

use anyhow::Context;
use quip_protocol::v1::{self, ReceiptKind};
use serde_json::json;

use super::out::{kind_name, line, plural, text};
use super::{Ctx, Target, send_text};

/// The text of `quip send`: `-` means standard input, read to its end, less
/// one trailing line break (what `echo` and most editors add).
pub fn text_arg(text: String) -> anyhow::Result<String> {
    if text != "-" {
        return Ok(text);
    }
    let mut s = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading the text from standard input")?;
    let trimmed = s
        .strip_suffix('\n')
        .map_or(s.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    Ok(trimmed.to_owned())
}

pub async fn send(ctx: &Ctx, target: Target, text: String, id: Option<String>) -> anyhow::Result<()> {
    ctx.report(
        async |c| send_text(c, target, text, id).await,
        |sent| {
            let dup = if sent.duplicate { " (already sent before)" } else { "" };
            format!("sent seq {} in chat {}{dup}", sent.seq, sent.chat_id)
        },
        |sent| {
            json!({"type": "sent", "chat": sent.chat_id, "seq": sent.seq,
                "duplicate": sent.duplicate, "sent_at_ms": sent.sent_at_ms})
        },
    )
    .await
}

pub async fn history(ctx: &Ctx, target: Target, before: Option<u64>, limit: u32) -> anyhow::Result<()> {
    let before = before.unwrap_or(0);
    let page = ctx
        .call(async |c| {
            Ok(match &target {
                Target::User(user) => c.history(user, before, limit).await?,
                Target::Chat(id) => c.history_of_chat(*id, before, limit).await?,
            })
        })
        .await?;
    for m in page.messages.iter().rev() {
        ctx.out.history_message(m)?;
    }
    if page.more && !ctx.out.json {
        let oldest = page.messages.last().map_or(0, |m| m.seq);
        let name = match &target {
            Target::User(u) => u.clone(),
            Target::Chat(id) => format!("chat:{id}"),
        };
        eprintln!("(older messages: quip history {name} --before {oldest})");
    }
    if !page.more && page.retained_from_seq > 1 && !ctx.out.json {
        eprintln!(
            "(messages before seq {} expired under the server's retention policy)",
            page.retained_from_seq
        );
    }
    Ok(())
}

pub async fn chats(ctx: &Ctx) -> anyhow::Result<()> {
    let chats = ctx.call(async |c| Ok(c.chats().await?)).await?;
    for c in chats {
        let last = c.last_message.as_ref();
        let last_seq = last.map_or(0, |m| m.seq);
        let last_from = last.map_or("", |m| m.sender.as_str());
        ctx.out.emit(
            || chat_line(&c),
            || {
                json!({"type": "chat", "chat": c.chat_id, "kind": kind_name(c.kind), "name": c.name,
                    "member_count": c.member_count, "admin": c.admin, "peer": c.peer, "unread": c.unread,
                    "last_seq": last_seq, "last_from": last_from, "last_text": last.map_or("", text),
                    "peer_delivered_seq": c.peer_delivered_seq, "peer_read_seq": c.peer_read_seq,
                    "my_read_seq": c.my_read_seq, "my_delivered_seq": c.my_delivered_seq})
            },
        )?;
    }
    Ok(())
}

/// A chat of the list as text: who, unread, the last message, the ticks.
fn chat_line(c: &v1::ChatSummary) -> String {
    let last = c
        .last_message
        .as_ref()
        .map_or_else(|| "no messages".into(), |m| format!("last #{} {}", m.seq, line(m)));
    let who = match v1::ChatKind::try_from(c.kind) {
        Ok(v1::ChatKind::Group) => format!(
            "chat:{} group \"{}\" ({})",
            c.chat_id,
            c.name,
            plural(c.member_count.into(), "member")
        ),
        Ok(v1::ChatKind::Channel) => format!(
            "chat:{} channel \"{}\" ({})",
            c.chat_id,
            c.name,
            plural(c.member_count.into(), "subscriber")
        ),
        _ => c.peer.clone(),
    };
    let ticks = if c.kind == v1::ChatKind::Group as i32 {
        "delivered to all"
    } else {
        "delivered"
    };
    let read = if c.kind == v1::ChatKind::Group as i32 {
        "read by all"
    } else {
        "read"
    };
    if c.kind == v1::ChatKind::Channel as i32 {
        // Channels keep no shared receipts: no ticks to show.
        return format!("{who}  unread {}  {last}", c.unread);
    }
    format!(
        "{who}  unread {}  {last}  (sent ticks: {ticks} #{}, {read} #{})",
        c.unread, c.peer_delivered_seq, c.peer_read_seq
    )
}

pub async fn read(ctx: &Ctx, target: Target) -> anyhow::Result<()> {
    ctx.report(
        async |c| {
            let chat = target.chat_id(c).await?;
            let seq = c.receipt(chat, ReceiptKind::Read, 0).await?;
            Ok((chat, seq))
        },
        |(_, seq)| format!("read up to #{seq}"),
        |(chat, seq)| json!({"type": "read", "chat": chat, "seq": seq}),
    )
    .await
}
