//! `quip group ...` and `quip channel ...`.

use anyhow::anyhow;
use clap::Subcommand;
use quip_protocol::v1::{self, ReceiptKind};
use serde_json::json;

use super::{Ctx, Target, parse_chat, send_text};

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create a group with you as admin; prints its chat:ID.
    Create {
        /// The group's name (1-64 bytes).
        name: String,
        /// The other members' usernames.
        users: Vec<String>,
    },
    /// Add members (admins only).
    Add {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members (admins only).
    Remove {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Make members admins (admins only).
    Promote {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Make admins plain members again (admins only).
    Demote {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// Usernames.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Rename the group (admins only).
    Rename {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
        /// The new name.
        name: String,
    },
    /// Leave the group.
    Leave {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
    },
    /// Show the name, members (admins marked) and limits.
    Info {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
    },
    /// Show how far each member has received and read.
    Receipts {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        group: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChannelCmd {
    /// Create a channel with you as admin; prints its chat:ID.
    Create {
        /// The channel's name (1-64 bytes).
        name: String,
    },
    /// Subscribe to a channel by id.
    Subscribe {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        channel: u64,
    },
    /// Unsubscribe.
    Unsubscribe {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        channel: u64,
    },
    /// Post (admins only); the same as `quip send chat:ID TEXT`.
    Post {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        channel: u64,
        /// Post text.
        text: String,
    },
    /// Print posts after your read position (or --after SEQ), oldest first,
    /// and mark them read.
    Read {
        /// chat:ID or ID.
        #[arg(value_parser = parse_chat)]
        channel: u64,
        /// Start after this seq [default: where you last read].
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// At most this many posts (the server caps at 200).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: u32,
    },
}

pub async fn group(ctx: &Ctx, cmd: GroupCmd) -> anyhow::Result<()> {
    let out = &ctx.out;
    ctx.call(async |client| {
        use v1::ChatAction as A;
        let (chat, action, users, name) = match cmd {
            GroupCmd::Create { name, users } => {
                let names: Vec<&str> = users.iter().map(String::as_str).collect();
                let r = client.create_group(&name, &names).await?;
                return out
                    .chat_info(&r.info.unwrap_or_default(), r.event_seq)
                    .map_err(Into::into);
            }
            GroupCmd::Info { group } => {
                let info = client.chat_info(group).await?;
                return out.chat_info(&info, 0).map_err(Into::into);
            }
            GroupCmd::Receipts { group } => {
                let d = client.receipt_detail(group).await?;
                for m in d.members {
                    out.emit(
                        || format!("{}: delivered #{}, read #{}", m.user, m.delivered_seq, m.read_seq),
                        || {
                            json!({"type": "member_receipt", "chat": group, "user": m.user,
                            "delivered_seq": m.delivered_seq, "read_seq": m.read_seq})
                        },
                    )?;
                }
                return Ok(());
            }
            GroupCmd::Add { group, users } => (group, A::AddMembers, users, String::new()),
            GroupCmd::Remove { group, users } => (group, A::RemoveMembers, users, String::new()),
            GroupCmd::Promote { group, users } => (group, A::Promote, users, String::new()),
            GroupCmd::Demote { group, users } => (group, A::Demote, users, String::new()),
            GroupCmd::Rename { group, name } => (group, A::Rename, Vec::new(), name),
            GroupCmd::Leave { group } => (group, A::Leave, Vec::new(), String::new()),
        };
        let names: Vec<&str> = users.iter().map(String::as_str).collect();
        let r = client.update_chat(chat, action, &names, &name).await?;
        if action == A::Leave {
            return out
                .emit(|| format!("left chat:{chat}"), || json!({"type": "left", "chat": chat}))
                .map_err(Into::into);
        }
        out.chat_info(&r.info.unwrap_or_default(), r.event_seq)?;
        Ok(())
    })
    .await
}

pub async fn channel(ctx: &Ctx, cmd: ChannelCmd) -> anyhow::Result<()> {
    let out = &ctx.out;
    ctx.call(async |client| {
        match cmd {
            ChannelCmd::Create { name } => {
                let r = client.create_channel(&name).await?;
                out.chat_info(&r.info.unwrap_or_default(), r.event_seq)?;
            }
            ChannelCmd::Subscribe { channel } => {
                let r = client.subscribe(channel, false).await?;
                out.chat_info(&r.info.unwrap_or_default(), 0)?;
            }
            ChannelCmd::Unsubscribe { channel } => {
                client.subscribe(channel, true).await?;
                out.emit(
                    || format!("unsubscribed from chat:{channel}"),
                    || json!({"type": "unsubscribed", "chat": channel}),
                )?;
            }
            ChannelCmd::Post { channel, text } => {
                let sent = send_text(client, Target::Chat(channel), text, None).await?;
                out.emit(
                    || format!("posted seq {} in chat {}", sent.seq, sent.chat_id),
                    || json!({"type": "sent", "chat": sent.chat_id, "seq": sent.seq, "duplicate": sent.duplicate}),
                )?;
            }
            ChannelCmd::Read { channel, after, limit } => {
                let after = match after {
                    Some(a) => a,
                    None => client
                        .chats()
                        .await?
                        .iter()
                        .find(|c| c.chat_id == channel)
                        .map(|c| c.my_read_seq)
                        .ok_or_else(|| anyhow!("not subscribed to chat:{channel}"))?,
                };
                let page = client.history_after(channel, after, limit).await?;
                for m in &page.messages {
                    out.history_message(m)?;
                }
                if let Some(last) = page.messages.last() {
                    client.receipt(channel, ReceiptKind::Read, last.seq).await?;
                }
                if page.more && !out.json {
                    let newest = page.messages.last().map_or(after, |m| m.seq);
                    eprintln!("(more: quip channel read chat:{channel} --after {newest})");
                }
            }
        }
        Ok(())
    })
    .await
}
