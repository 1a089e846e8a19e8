//! Unit tests of the domain services, over the in-memory store
//! ([`MemoryStore`]): real transactions, each service call in its own write
//! as the request layer runs it, without a disk or a server.
//!
//! A [`World`] holds the store and runs service calls for test users.

mod groups;
mod messages;
mod receipts;
mod retention;
mod throttle;

use quip_protocol::v1::{self, ChatAction, ChatKind, GroupAdds, Visibility};

use super::groups::Changed;
use super::messages::{Page, Sent, Target};
use super::{Actor, ServiceError, accounts, blocking, groups as group_svc, messages as msg_svc, presence};
use crate::store::memory::MemoryStore;
use crate::store::{self, ReadTxn, Txn};

/// Group size limit the tests run with unless they test the limit.
const MAX_MEMBERS: u32 = 256;
/// Reply size limit for history pages: far above what the tests store.
const MAX_BYTES: usize = 1 << 20;

/// A store with the helpers the tests share.
struct World {
    store: MemoryStore,
}

impl World {
    fn new() -> Self {
        Self {
            store: MemoryStore::new(),
        }
    }

    /// Runs `f` as one write and waits for it.
    async fn write<R, F>(&self, f: F) -> Result<R, ServiceError>
    where
        R: Send + 'static,
        F: FnMut(&mut dyn Txn) -> Result<R, ServiceError> + Send + 'static,
    {
        store::write(&self.store, f).await
    }

    /// Runs `f` in a read snapshot.
    fn read<R>(&self, f: impl FnMut(&mut dyn ReadTxn) -> Result<R, ServiceError>) -> Result<R, ServiceError> {
        store::read(&self.store, f)
    }

    /// Registers `name` and returns it as an actor on its first device.
    async fn user(&self, name: &str) -> Actor {
        let owned = name.to_owned();
        let (user_id, device_id) = self
            .write(move |t| accounts::register(t, &owned, "phc", "device", &accounts::token_hash(&owned), 0))
            .await
            .unwrap();
        Actor {
            user_id,
            username: name.to_owned(),
            device_id,
        }
    }

    /// Sends a text message with its own client_msg_id.
    async fn send(&self, from: &Actor, to: Target, client_msg_id: &str, text: &str) -> Result<Sent, ServiceError> {
        let (from, id, content) = (from.clone(), client_msg_id.to_owned(), content(text));
        self.write(move |t| msg_svc::send(t, &from, &to, &id, &content, 1_000))
            .await
    }

    /// Sends a direct message to `to`; returns its (chat, seq).
    async fn dm(&self, from: &Actor, to: &Actor, client_msg_id: &str) -> (u64, u64) {
        let r = self
            .send(from, Target::User(to.username.clone()), client_msg_id, client_msg_id)
            .await
            .unwrap()
            .response;
        (r.chat_id, r.seq)
    }

    /// Sends a text message to chat `chat`; returns its seq.
    async fn post(&self, from: &Actor, chat: u64, client_msg_id: &str) -> u64 {
        self.send(from, Target::Chat(chat), client_msg_id, client_msg_id)
            .await
            .unwrap()
            .response
            .seq
    }

    /// A page of `who`'s history of `chat`.
    fn history(&self, who: &Actor, chat: u64, page: Page) -> Result<v1::HistoryResponse, ServiceError> {
        self.read(|t| msg_svc::history(t, who, &Target::Chat(chat), page, MAX_BYTES))
    }

    /// The seqs of `who`'s whole history of `chat`, oldest first.
    fn seqs(&self, who: &Actor, chat: u64) -> Result<Vec<u64>, ServiceError> {
        let page = self.history(who, chat, backwards(0, 200))?;
        Ok(page.messages.iter().rev().map(|m| m.seq).collect())
    }

    /// Creates a group of `admin` and `members`, with at most `max` members.
    async fn create(&self, admin: &Actor, members: &[&str], max: u32) -> Result<Changed, ServiceError> {
        let admin = admin.clone();
        let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        self.write(move |t| group_svc::create(t, &admin, ChatKind::Group, "group", &members, "", max, 1_000))
            .await
    }

    /// Creates a group; returns its chat id.
    async fn group(&self, admin: &Actor, members: &[&str]) -> u64 {
        self.create(admin, members, MAX_MEMBERS).await.unwrap().info.chat_id
    }

    /// Applies a membership change with at most `max` members.
    async fn update_max(
        &self,
        actor: &Actor,
        chat: u64,
        action: ChatAction,
        users: &[&str],
        max: u32,
    ) -> Result<Changed, ServiceError> {
        let actor = actor.clone();
        let users: Vec<String> = users.iter().map(|u| (*u).to_owned()).collect();
        self.write(move |t| group_svc::update(t, &actor, chat, action, &users, "", max, 1_000))
            .await
    }

    /// Applies a membership change.
    async fn update(
        &self,
        actor: &Actor,
        chat: u64,
        action: ChatAction,
        users: &[&str],
    ) -> Result<Changed, ServiceError> {
        self.update_max(actor, chat, action, users, MAX_MEMBERS).await
    }

    /// The group as `who` sees it.
    fn info(&self, who: &Actor, chat: u64) -> Result<v1::ChatInfo, ServiceError> {
        self.read(|t| group_svc::info(t, who, chat, MAX_MEMBERS))
    }

    /// Sets who may add `who` to groups (what a `SettingsRequest` does).
    async fn group_adds(&self, who: &Actor, adds: GroupAdds) {
        let uid = who.user_id;
        let stored = self
            .write(move |t| presence::set_settings(t, uid, Visibility::Unspecified, adds))
            .await
            .unwrap();
        assert_eq!(stored.1, adds);
    }

    /// `who` blocks `whom`.
    async fn block(&self, who: &Actor, whom: &Actor) {
        let (who, whom) = (who.clone(), whom.username.clone());
        self.write(move |t| blocking::set(t, &who, &whom, false)).await.unwrap();
    }
}

fn content(text: &str) -> v1::Content {
    v1::Content {
        text: text.to_owned(),
        ..v1::Content::default()
    }
}

/// Messages before `before` (0: the newest), newest first.
fn backwards(before: u64, limit: u32) -> Page {
    Page {
        before,
        after: None,
        limit,
    }
}

/// Messages after `after`, oldest first.
fn forwards(after: u64, limit: u32) -> Page {
    Page {
        before: 0,
        after: Some(after),
        limit,
    }
}

fn seqs_of(page: &v1::HistoryResponse) -> Vec<u64> {
    page.messages.iter().map(|m| m.seq).collect()
}

/// The usernames of a group's members, and which of them are admins.
fn members(info: &v1::ChatInfo) -> (Vec<String>, Vec<String>) {
    let all = info.members.iter().map(|m| m.user.clone()).collect();
    let admins = info
        .members
        .iter()
        .filter(|m| m.admin)
        .map(|m| m.user.clone())
        .collect();
    (all, admins)
}
