//! Delivered and read cursors: per chat, per user, only ever moving forward.

use prost::Message as _;
use quip_protocol::v1::{self, ReceiptKind};

use super::{Actor, Notification, ServiceError, log, messages};
use crate::keys;
use crate::records::{self, CursorRecord, LogRecord};
use crate::store::Txn;

/// Moves the actor's `kind` cursor in `chat_id` to `seq` (0: the newest).
/// Returns the cursor after, and the receipts to push: a moved delivered
/// cursor goes to the other participants; a moved read cursor also to the
/// actor's other devices, so their unread counts clear.
pub fn mark(
    txn: &mut dyn Txn,
    actor: &Actor,
    chat_id: u64,
    kind: ReceiptKind,
    seq: u64,
) -> Result<(u64, Vec<Notification>), ServiceError> {
    if kind == ReceiptKind::Unspecified {
        return Err(ServiceError::InvalidArgument(
            "receipt kind must be DELIVERED or READ".into(),
        ));
    }
    let chat = messages::member_chat(txn, actor, chat_id)?;
    let target = if seq == 0 {
        chat.last_seq
    } else {
        seq.min(chat.last_seq)
    };
    let key = keys::cursor(chat_id, actor.user_id);
    let mut cur: CursorRecord = records::get(txn, &key)?.unwrap_or_default();
    let moved = match kind {
        ReceiptKind::Delivered => {
            let moved = target > cur.delivered;
            cur.delivered = cur.delivered.max(target);
            moved
        }
        _ => {
            let moved = target > cur.read;
            cur.read = cur.read.max(target);
            cur.delivered = cur.delivered.max(target);
            moved
        }
    };
    let after = if kind == ReceiptKind::Delivered {
        cur.delivered
    } else {
        cur.read
    };
    let mut out = Vec::new();
    if moved {
        txn.set(&key, &cur.encode_to_vec());
        let receipt = v1::Receipt {
            chat_id,
            user: actor.username.clone(),
            kind: kind as i32,
            seq: after,
        };
        let rec = LogRecord {
            chat_id,
            seq: 0,
            receipt: Some(receipt.clone()),
        };
        for &member in &chat.members {
            let own = member == actor.user_id;
            if own && kind != ReceiptKind::Read {
                continue;
            }
            let skip = own.then_some(actor.device_id);
            out.push(log::append(
                txn,
                member,
                &rec,
                v1::event::Kind::Receipt(receipt.clone()),
                skip,
            )?);
        }
    }
    Ok((after, out))
}
