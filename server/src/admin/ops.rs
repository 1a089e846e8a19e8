//! What each admin action does, over the shared server state: accounts in
//! the store (through [`crate::service::accounts`]), connections in the hub
//! (or, in a cluster, on every node through [`crate::cluster::Node`]).
//!
//! Decisions, as `spec/protocol.md` §12 and the README state them:
//! - **disable** sets the account's `disabled` flag, revokes every session
//!   token and closes its connections with close code 10 (`Kicked`); a
//!   login is then refused with `FORBIDDEN` "account disabled". **enable**
//!   clears the flag; the user logs in again.
//! - **reset-password** sets the new password and revokes every session
//!   (close code 5: log in again, with the new password).
//! - **devices revoke** revokes that device's tokens (close code 5).
//! - **sessions kick** closes connections (close code 10) and revokes
//!   nothing: the client may reconnect when its user asks.
//! - **unlock** refills the account's failed-login budget (this node's, and
//!   the cluster's in the store).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quip_protocol::CloseCode;
use serde::Serialize;

use crate::records::UserRecord;
use crate::service::{ServiceError, accounts};
use crate::session::Shared;
use crate::store;

/// One account in a listing.
#[derive(Debug, Serialize)]
pub struct UserSummary {
    /// The account name.
    pub name: String,
    /// Its numeric id.
    pub id: u64,
    /// Registration time, ms since the Unix epoch.
    pub created_ms: i64,
    /// Whether logins are refused.
    pub disabled: bool,
}

impl From<&UserRecord> for UserSummary {
    fn from(u: &UserRecord) -> Self {
        Self {
            name: u.username.clone(),
            id: u.id,
            created_ms: u.created_ms,
            disabled: u.disabled,
        }
    }
}

/// One account in detail.
#[derive(Debug, Serialize)]
pub struct UserDetail {
    /// What a listing says.
    #[serde(flatten)]
    pub summary: UserSummary,
    /// When last seen online, ms since the Unix epoch (0: not recorded).
    pub last_seen_ms: i64,
    /// Devices ever logged in.
    pub devices: usize,
    /// Live session tokens.
    pub sessions: usize,
    /// Open connections (on every node of a cluster).
    pub connections: usize,
    /// Whether failed logins throttle the account's logins now (this
    /// node's budget; a cluster's is in the store).
    pub locked: bool,
}

/// A device of an account.
#[derive(Debug, Serialize)]
pub struct DeviceInfo {
    /// Its id (per user).
    pub id: u32,
    /// The name the client gave at login.
    pub name: String,
    /// Login time, ms since the Unix epoch.
    pub created_ms: i64,
    /// Live session tokens of the device (0: signed out).
    pub sessions: usize,
    /// Connections open on this node.
    pub connections: u32,
}

/// The connections of one device on this node.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    /// The device.
    pub device: u32,
    /// Its name.
    pub device_name: String,
    /// Connections open on this node.
    pub connections: u32,
}

/// What an action that signs out or disconnects did.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    /// Session tokens revoked.
    pub revoked_sessions: usize,
    /// Devices whose connections were closed (on every node).
    pub closed_devices: usize,
}

/// `stats`.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Accounts ever registered.
    pub users: u64,
    /// Users with a connection to this node.
    pub online: usize,
    /// Connections open to this node.
    pub connections: usize,
    /// Chats ever created (direct and group).
    pub chats: u64,
    /// Messages accepted by this node since it started.
    pub messages: u64,
    /// Messages accepted per second by this node, over the last ten
    /// seconds.
    pub messages_per_sec: f64,
}

fn user(shared: &Shared, name: &str) -> Result<UserRecord, ServiceError> {
    store::read(&*shared.store, |t| accounts::find_user(t, name))?
        .ok_or_else(|| ServiceError::NotFound(format!("no user {name:?}")))
}

/// Every account, by name.
pub fn list_users(shared: &Shared) -> Result<Vec<UserSummary>, ServiceError> {
    let users = store::read(&*shared.store, accounts::list_users)?;
    Ok(users.iter().map(UserSummary::from).collect())
}

/// One account.
pub fn show_user(shared: &Shared, name: &str) -> Result<UserDetail, ServiceError> {
    let u = user(shared, name)?;
    let (devices, sessions) = store::read(&*shared.store, |t| {
        Ok::<_, ServiceError>((accounts::devices(t, u.id)?.len(), accounts::sessions_of(t, u.id)?.len()))
    })?;
    Ok(UserDetail {
        summary: UserSummary::from(&u),
        last_seen_ms: u.last_seen_ms,
        devices,
        sessions,
        connections: shared.connections_of(u.id)?,
        locked: shared
            .login_failures_user
            .get(name)
            .is_some_and(|b| b.lock().expect("limiter lock").check(shared.clock.now()).is_err()),
    })
}

/// An account's devices, with their live tokens and connections here.
pub fn devices(shared: &Shared, name: &str) -> Result<Vec<DeviceInfo>, ServiceError> {
    let u = user(shared, name)?;
    let (devices, sessions) = store::read(&*shared.store, |t| {
        Ok::<_, ServiceError>((accounts::devices(t, u.id)?, accounts::sessions_of(t, u.id)?))
    })?;
    let here: BTreeMap<u32, u32> = shared.hub.device_counts(u.id).into_iter().collect();
    Ok(devices
        .into_iter()
        .map(|(id, d)| DeviceInfo {
            id,
            name: d.name,
            created_ms: d.created_ms,
            sessions: sessions.iter().filter(|(_, dev)| *dev == id).count(),
            connections: here.get(&id).copied().unwrap_or(0),
        })
        .collect())
}

/// An account's connections on this node, by device.
pub fn sessions(shared: &Shared, name: &str) -> Result<Vec<SessionInfo>, ServiceError> {
    let u = user(shared, name)?;
    let counts = shared.hub.device_counts(u.id);
    let names: BTreeMap<u32, String> = store::read(&*shared.store, |t| accounts::devices(t, u.id))?
        .into_iter()
        .map(|(id, d)| (id, d.name))
        .collect();
    Ok(counts
        .into_iter()
        .map(|(device, connections)| SessionInfo {
            device,
            device_name: names.get(&device).cloned().unwrap_or_default(),
            connections,
        })
        .collect())
}

/// Disables an account (logins refused, tokens revoked, connections
/// closed with `Kicked`) or enables it again.
pub async fn set_disabled(shared: &Shared, name: &str, disabled: bool) -> Result<Outcome, ServiceError> {
    let n = name.to_owned();
    let (user, revoked) = store::write(&*shared.store, move |t| {
        let u = accounts::update_user(t, &n, |u| u.disabled = disabled)?;
        let revoked = if disabled {
            accounts::revoke_sessions(t, u.id, None)?
        } else {
            Vec::new()
        };
        Ok::<_, ServiceError>((u, revoked))
    })
    .await?;
    if !disabled {
        return Ok(Outcome::default());
    }
    Ok(sign_out(
        shared,
        user.id,
        None,
        &revoked,
        CloseCode::Kicked,
        "account disabled by the operator",
    )
    .await)
}

/// Sets a new password and revokes every session of the account.
pub async fn reset_password(shared: &Shared, name: &str, password: String) -> Result<Outcome, ServiceError> {
    accounts::validate_password(&password)?;
    user(shared, name)?;
    let phc = shared
        .passwords
        .run(move || accounts::hash_password(&password))
        .await??;
    let n = name.to_owned();
    let (user, revoked) = store::write(&*shared.store, move |t| {
        let u = accounts::update_user(t, &n, |u| u.password_phc = phc.clone())?;
        let revoked = accounts::revoke_sessions(t, u.id, None)?;
        Ok::<_, ServiceError>((u, revoked))
    })
    .await?;
    let why = "password reset by the operator: log in again";
    Ok(sign_out(shared, user.id, None, &revoked, CloseCode::LoggedOut, why).await)
}

/// Revokes one device's tokens and closes its connections.
pub async fn revoke_device(shared: &Shared, name: &str, device: u32) -> Result<Outcome, ServiceError> {
    let u = user(shared, name)?;
    let uid = u.id;
    let known = store::read(&*shared.store, |t| accounts::devices(t, uid))?
        .iter()
        .any(|(id, _)| *id == device);
    if !known {
        return Err(ServiceError::NotFound(format!("user {name:?} has no device {device}")));
    }
    let revoked = store::write(&*shared.store, move |t| accounts::revoke_sessions(t, uid, Some(device))).await?;
    let why = "device signed out by the operator: log in again";
    Ok(sign_out(shared, uid, Some(device), &revoked, CloseCode::LoggedOut, why).await)
}

/// Closes an account's connections (one device's, or all) with `Kicked`,
/// revoking nothing.
pub async fn kick(shared: &Shared, name: &str, device: Option<u32>) -> Result<Outcome, ServiceError> {
    let u = user(shared, name)?;
    let tokens = store::read(&*shared.store, |t| accounts::sessions_of(t, u.id))?;
    let why = "disconnected by the operator";
    let mut out = sign_out(shared, u.id, device, &tokens, CloseCode::Kicked, why).await;
    out.revoked_sessions = 0;
    Ok(out)
}

/// Refills the account's failed-login budget: here, and in the store
/// (the cluster's). Returns whether it throttled logins here.
pub async fn unlock(shared: &Shared, name: &str) -> Result<bool, ServiceError> {
    user(shared, name)?;
    let was = shared
        .login_failures_user
        .get(name)
        .is_some_and(|b| b.lock().expect("limiter lock").check(shared.clock.now()).is_err());
    shared.login_failures_user.invalidate(name);
    let key = crate::keys::throttle("login-user", name.as_bytes());
    store::write(&*shared.store, move |t| {
        t.clear(&key);
        Ok::<_, ServiceError>(())
    })
    .await?;
    Ok(was)
}

/// Forgets `revoked` tokens here and closes the connections of the
/// devices among `tokens` (and those connected here) with `code`, on every
/// node; only `device`'s when given.
async fn sign_out(
    shared: &Shared,
    uid: u64,
    device: Option<u32>,
    tokens: &[([u8; 32], u32)],
    code: CloseCode,
    why: &str,
) -> Outcome {
    for (hash, _) in tokens {
        shared.sessions.invalidate(hash);
    }
    // A connected device has a live token, or is connected here.
    let mut devices: BTreeSet<u32> = tokens.iter().map(|(_, d)| *d).collect();
    devices.extend(shared.hub.device_counts(uid).into_iter().map(|(d, _)| d));
    devices.retain(|d| device.is_none_or(|want| want == *d));
    for &d in &devices {
        match shared.cluster.get() {
            Some(node) => node.close_device(uid, d, code, why).await,
            None => shared.hub.close_device(uid, d, code, why),
        }
    }
    Outcome {
        revoked_sessions: tokens.len(),
        closed_devices: devices.len(),
    }
}

/// A member of a chat, as `groups show` lists it.
#[derive(Debug, Serialize)]
pub struct MemberInfo {
    /// The username.
    pub user: String,
    /// Whether they manage the chat.
    pub admin: bool,
    /// The seq from which they see the chat's history.
    pub joined_seq: u64,
}

/// A chat (group, channel or direct), as `groups show` describes it:
/// who is in it, never what was said.
#[derive(Debug, Serialize)]
pub struct ChatDetail {
    /// Its id.
    pub id: u64,
    /// `direct`, `group` or `channel`.
    pub kind: String,
    /// Its name (groups and channels).
    pub name: String,
    /// Members (a channel's: its admins).
    pub members: Vec<MemberInfo>,
    /// Members, or a channel's subscribers.
    pub member_count: u32,
    /// The last message's seq.
    pub last_seq: u64,
    /// When a message was last sent, ms since the Unix epoch.
    pub last_activity_ms: i64,
}

/// One chat's description.
pub fn chat(shared: &Shared, id: u64) -> Result<ChatDetail, ServiceError> {
    let max = shared.config.max_group_members;
    let (info, last_activity_ms) = store::read(&*shared.store, |t| {
        crate::service::groups::info_for_operator(t, id, max)
    })?
    .ok_or_else(|| ServiceError::NotFound(format!("no chat {id}")))?;
    let kind = quip_protocol::v1::ChatKind::try_from(info.kind)
        .map_or("unknown", |k| k.as_str_name())
        .trim_start_matches("CHAT_KIND_")
        .to_ascii_lowercase();
    Ok(ChatDetail {
        id,
        kind,
        name: info.name,
        members: info
            .members
            .into_iter()
            .map(|m| MemberInfo {
                user: m.user,
                admin: m.admin,
                joined_seq: m.joined_seq,
            })
            .collect(),
        member_count: info.member_count,
        last_seq: info.last_seq,
        last_activity_ms,
    })
}

/// Server-wide counts.
pub fn stats(shared: &Shared, rate: &MessageRate) -> Result<Stats, ServiceError> {
    let (users, chats) = store::read(&*shared.store, |t| {
        Ok::<_, ServiceError>((
            crate::records::get_u64(t, &crate::keys::counter("user"))?,
            crate::records::get_u64(t, &crate::keys::counter("chat"))?,
        ))
    })?;
    let (online, connections) = shared.hub.totals();
    Ok(Stats {
        users,
        online,
        connections,
        chats,
        messages: crate::metrics::MESSAGES_SENT.load(std::sync::atomic::Ordering::Relaxed),
        messages_per_sec: rate.per_sec(),
    })
}

/// Messages per second over a sliding window, from samples of
/// [`crate::metrics::MESSAGES_SENT`] taken once a second.
#[derive(Debug, Clone, Default)]
pub struct MessageRate {
    samples: Arc<Mutex<VecDeque<(Instant, u64)>>>,
}

/// Samples kept: ten seconds' worth of differences.
const WINDOW: usize = 11;

impl MessageRate {
    /// Starts sampling (in a task that ends with the runtime).
    pub fn start() -> Self {
        let rate = Self::default();
        let samples = Arc::downgrade(&rate.samples);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(s) = samples.upgrade() else { return };
                let mut s = s.lock().expect("rate lock");
                s.push_back((
                    Instant::now(),
                    crate::metrics::MESSAGES_SENT.load(std::sync::atomic::Ordering::Relaxed),
                ));
                if s.len() > WINDOW {
                    s.pop_front();
                }
            }
        });
        rate
    }

    /// Messages per second between the oldest and newest samples.
    pub fn per_sec(&self) -> f64 {
        let s = self.samples.lock().expect("rate lock");
        match (s.front(), s.back()) {
            (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => (n1 - n0) as f64 / (t1 - t0).as_secs_f64(),
            _ => 0.0,
        }
    }
}
