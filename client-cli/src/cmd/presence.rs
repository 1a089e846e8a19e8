//! `quip presence` and `typing`, and who may see or reach you: `last-seen`,
//! `group-adds`, `block`, `unblock`.

use quip_protocol::v1;
use serde_json::json;

use super::{Ctx, Target};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum VisibilityArg {
    Everyone,
    Contacts,
    Nobody,
}

impl VisibilityArg {
    /// As each of the settings that take everyone, contacts or nobody.
    fn settings(self) -> (v1::Visibility, v1::GroupAdds) {
        match self {
            Self::Everyone => (v1::Visibility::Everyone, v1::GroupAdds::Everyone),
            Self::Contacts => (v1::Visibility::Contacts, v1::GroupAdds::Contacts),
            Self::Nobody => (v1::Visibility::Nobody, v1::GroupAdds::Nobody),
        }
    }
}

pub async fn presence(ctx: &Ctx, users: Vec<String>) -> anyhow::Result<()> {
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    for p in ctx.call(async |c| Ok(c.presence(&names).await?)).await? {
        ctx.out.presence(&p)?;
    }
    Ok(())
}

pub async fn typing(ctx: &Ctx, target: Target) -> anyhow::Result<()> {
    ctx.report(
        async |c| {
            let chat = target.chat_id(c).await?;
            // A one-shot command closes at once: a datagram could be lost
            // with the connection, so it asks on the stream instead.
            let typing = v1::TypingRequest { chat_id: chat };
            c.request(quip_protocol::Body::Typing(typing)).await?;
            Ok(chat)
        },
        |chat| format!("typing in chat {chat}"),
        |chat| json!({"type": "typing_sent", "chat": chat}),
    )
    .await
}

pub async fn last_seen(ctx: &Ctx, visibility: VisibilityArg) -> anyhow::Result<()> {
    let (v, _) = visibility.settings();
    ctx.report(
        async |c| Ok(c.set_last_seen_visibility(v).await?.as_str_name().to_ascii_lowercase()),
        |now| format!("last seen visible to: {now}"),
        |now| json!({"type": "last_seen", "visibility": now}),
    )
    .await
}

pub async fn group_adds(ctx: &Ctx, who: VisibilityArg) -> anyhow::Result<()> {
    let (_, g) = who.settings();
    ctx.report(
        async |c| {
            let now = c.set_group_adds(g).await?;
            Ok(now.as_str_name().trim_start_matches("GROUP_ADDS_").to_ascii_lowercase())
        },
        |now| format!("who may add you to groups: {now}"),
        |now| json!({"type": "group_adds", "who": now}),
    )
    .await
}

pub async fn block(ctx: &Ctx, user: &str, unblock: bool) -> anyhow::Result<()> {
    ctx.report(
        async |c| Ok(c.block(user, unblock).await?),
        |blocked| {
            let verb = if unblock { "unblocked" } else { "blocked" };
            format!(
                "{verb} {user}; blocking: {}",
                if blocked.is_empty() {
                    "nobody".into()
                } else {
                    blocked.join(", ")
                }
            )
        },
        |blocked| json!({"type": "blocked", "blocked": blocked}),
    )
    .await
}
