//! A connection's start and end: the Hello (version, token), putting the
//! device online in the hub and presence, and taking it offline.

use super::*;

impl Session {
    /// The Welcome for the first frame, or the error to send before closing.
    pub async fn hello(self: &Arc<Self>, env: Envelope) -> Result<Envelope, Box<(Envelope, CloseCode)>> {
        let id = env.id;
        let Some(Body::Hello(hello)) = env.body else {
            return Err(Box::new((
                Envelope::error(id, ErrorCode::HandshakeRequired, "the first frame must be a Hello"),
                CloseCode::ProtocolError,
            )));
        };
        let Some(version) = negotiate_version(&hello.versions) else {
            return Err(Box::new((
                Envelope::error(
                    id,
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "no common protocol version: server speaks 1, client offered {:?}",
                        hello.versions
                    ),
                ),
                CloseCode::UnsupportedVersion,
            )));
        };
        let mut welcome = v1::Welcome {
            version,
            user: String::new(),
            device_id: 0,
            push_lanes: self.shared.config.push_lanes,
            max_frame: u32::try_from(self.shared.max_frame()).unwrap_or(u32::MAX),
            max_body: u32::try_from(self.shared.config.max_body).unwrap_or(u32::MAX),
            server: concat!("quipd/", env!("CARGO_PKG_VERSION")).into(),
        };
        self.background.store(hello.background, Ordering::Relaxed);
        if !hello.token.is_empty() {
            match self.shared.authenticate(&hello.token) {
                Ok(Some((actor, hash, expires_ms))) => {
                    welcome.user = actor.username.clone();
                    welcome.device_id = actor.device_id;
                    if let Err(e) = self.login_connection(actor, hash, expires_ms).await {
                        let code = if matches!(e, ServiceError::LimitExceeded(_)) {
                            CloseCode::TooManyConnections
                        } else {
                            CloseCode::ServerShutdown
                        };
                        return Err(Box::new((err(id, &e), code)));
                    }
                }
                Ok(None) => {
                    return Err(Box::new((
                        Envelope::error(id, ErrorCode::Unauthenticated, "unknown or revoked token: log in again"),
                        CloseCode::LoggedOut,
                    )));
                }
                Err(e) => return Err(Box::new((err(id, &e), CloseCode::ServerShutdown))),
            }
        }
        tracing::debug!(conn = self.conn_id, client = %hello.client, user = %welcome.user, "handshake");
        Ok(Envelope::new(id, Body::Welcome(welcome)))
    }

    /// Marks this connection as the actor's device and puts it online,
    /// watching the channels the user subscribes to. Fails when the user
    /// has too many connections; replaces the device's oldest one when the
    /// device has.
    pub(super) async fn login_connection(
        &self,
        actor: Actor,
        token_hash: [u8; 32],
        expires_ms: i64,
    ) -> Result<(), ServiceError> {
        let handle = DeviceHandle {
            conn_id: self.conn_id,
            device_id: actor.device_id,
            tx: self.push_tx.clone(),
            closer: self.closer.clone(),
            expires_ms,
        };
        let config = &self.shared.config;
        let replaced = self
            .shared
            .hub
            .register(
                actor.user_id,
                handle.clone(),
                config.max_connections_per_user,
                config.max_connections_per_device,
            )
            .map_err(|_| {
                ServiceError::LimitExceeded(format!(
                    "at most {} connections per user are allowed",
                    config.max_connections_per_user
                ))
            })?;
        for old in replaced {
            old.closer
                .close(CloseCode::Replaced, "replaced by a newer connection of this device");
        }
        if !self.background.load(Ordering::Relaxed) {
            self.shared.liveness.connected(actor.user_id);
        }
        match store::read(&*self.shared.store, |t| {
            let (from, to) = crate::keys::user_channels(actor.user_id);
            let rows = t.range(&from, &to, usize::MAX, false)?;
            Ok::<_, ServiceError>(
                rows.iter()
                    .filter_map(|(k, _)| crate::keys::chat_of_user_chat(k))
                    .collect::<Vec<u64>>(),
            )
        }) {
            Ok(chats) if !chats.is_empty() => self.shared.hub.watch(actor.user_id, &handle, &chats),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not load channel subscriptions; no live channel posts"),
        }
        let (user, device) = (actor.user_id, actor.device_id);
        *self.auth.lock().expect("auth lock") = Some(Auth {
            actor,
            token_hash,
            expires_ms,
        });
        // Listed in the cluster's directory before the Welcome: every write
        // committed from then on pushes to this node, and the device's
        // sync, which follows, reads every write committed before.
        if let Some(node) = self.shared.cluster.get() {
            let limits = (config.max_connections_per_user, config.max_connections_per_device);
            node.admit_connection(user, device, limits).await?;
        }
        Ok(())
    }

    /// Takes the device offline; call when the connection ends, saying how.
    pub fn disconnect(&self, how: Ended) {
        if let Some(a) = self.auth.lock().expect("auth lock").take() {
            let user = a.actor.user_id;
            *self.was.lock().expect("was lock") = Some((a.actor.username.clone(), a.actor.device_id));
            self.shared.hub.unregister(user, self.conn_id);
            // Every close, not only the user's last here: the cluster-wide
            // connection limits count them.
            if let Some(node) = self.shared.cluster.get().cloned()
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                rt.spawn(async move {
                    if let Err(e) = node.sync_directory(user).await {
                        tracing::warn!(error = %e, "could not update the cluster directory");
                    }
                });
            }
            if !self.background.load(Ordering::Relaxed) {
                self.shared.liveness.disconnected(a.actor.user_id, how);
            }
        }
    }
}
