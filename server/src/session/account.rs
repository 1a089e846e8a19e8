//! Accounts on a connection: register, login, logout, whoami. Password
//! work goes through the bounded pool; throttles are charged before it.

use super::*;

impl Session {
    pub(super) async fn logout(self: &Arc<Self>, id: u64) -> Result<Reply, ServiceError> {
        let shared = &self.shared;
        let auth = self.auth.lock().expect("auth lock").clone();
        let auth = auth.ok_or_else(|| ServiceError::Unauthenticated("not logged in".into()))?;
        let hash = auth.token_hash;
        let pending = store::enqueue_write(&*shared.store, move |t| accounts::logout(t, &hash)).await?;
        let this = self.clone();
        Ok(Reply::Pending(tokio::spawn(async move {
            match pending.wait().await {
                Ok(()) => {
                    tracing::info!(
                        user = %auth.actor.username,
                        device = auth.actor.device_id,
                        peer = %this.peer,
                        "logged out: session token revoked"
                    );
                    this.shared.sessions.invalidate(&hash);
                    this.disconnect(Ended::Closed);
                    // The token is one device's: its other open
                    // connections end now, not at their next login.
                    let a = &auth.actor;
                    let why = "logged out: the session token was revoked";
                    match this.shared.cluster.get() {
                        Some(node) => {
                            node.close_device(a.user_id, a.device_id, CloseCode::LoggedOut, why)
                                .await
                        }
                        None => this
                            .shared
                            .hub
                            .close_device(a.user_id, a.device_id, CloseCode::LoggedOut, why),
                    }
                    *this.close_after_reply.lock().expect("close lock") = Some(CloseCode::LoggedOut);
                    Envelope::new(id, Body::LoggedOut(v1::LogoutResponse {}))
                }
                Err(e) => err(id, &e),
            }
        })))
    }

    pub(super) fn whoami(self: &Arc<Self>, id: u64) -> Result<Reply, ServiceError> {
        let a = self.actor()?;
        Ok(Reply::Ready(Envelope::new(
            id,
            Body::Identity(v1::WhoAmIResponse {
                user: a.username,
                device_id: a.device_id,
            }),
        )))
    }

    pub(super) fn ensure_anonymous(&self) -> Result<(), ServiceError> {
        if self.auth.lock().expect("auth lock").is_some() {
            return Err(ServiceError::InvalidArgument(
                "this connection is already logged in; open a new connection to switch accounts".into(),
            ));
        }
        Ok(())
    }

    /// Cheap checks first (fields, whether the name is free, the address's
    /// registration budget), then the argon2 hash in the bounded pool, then
    /// the write, which checks the name again.
    pub(super) async fn register(self: &Arc<Self>, id: u64, r: v1::RegisterRequest) -> Result<Reply, ServiceError> {
        self.ensure_anonymous()?;
        accounts::validate_username(&r.username)?;
        accounts::validate_password(&r.password)?;
        accounts::validate_device_name(&r.device_name)?;
        if store::read(&*self.shared.store, |t| accounts::find_user(t, &r.username))?.is_some() {
            return Err(ServiceError::UsernameTaken(r.username));
        }
        if let Err(e) = self.shared.charge_registration(self.peer).await {
            crate::metrics::rate_limited("registrations");
            tracing::info!(user = %r.username, peer = %self.peer, "registration refused: address over its registration budget");
            return Err(e);
        }
        let pw = r.password;
        let phc = self
            .shared
            .passwords
            .run(move || accounts::hash_password(&pw))
            .await
            .inspect_err(password_queue_full)??;
        let (token, hash) = accounts::new_token();
        let device_name_for_log = r.device_name.clone();
        let (name, device_name, now) = (r.username.clone(), r.device_name, self.now_ms());
        let pending = store::enqueue_write(&*self.shared.store, move |t| {
            accounts::register(t, &name, &phc, &device_name, &hash, now)
        })
        .await?;
        Ok(self.finish_auth(id, r.username, device_name_for_log, token, hash, pending, true))
    }

    pub(super) async fn login(self: &Arc<Self>, id: u64, r: v1::LoginRequest) -> Result<Reply, ServiceError> {
        self.ensure_anonymous()?;
        accounts::validate_device_name(&r.device_name)?;
        let reservation = match self.shared.reserve_login(&r.username, self.peer).await {
            Ok(r) => r,
            Err(e) => {
                crate::metrics::login("throttled");
                tracing::info!(
                    user = %r.username,
                    device_name = %r.device_name,
                    peer = %self.peer,
                    "login throttled: too many failed logins for this account or address"
                );
                return Err(e);
            }
        };
        let user = store::read(&*self.shared.store, |t| accounts::find_user(t, &r.username))?;
        let user_id = user.as_ref().map(|u| u.id);
        let disabled = user.as_ref().is_some_and(|u| u.disabled);
        let pw = r.password;
        let ok = self
            .shared
            .passwords
            .run(move || match user {
                Some(u) => accounts::verify_password(&pw, &u.password_phc),
                None => {
                    // Same work as a real check, so timing does not reveal which names exist.
                    let _ = accounts::verify_password(&pw, accounts::dummy_hash());
                    false
                }
            })
            .await;
        match ok {
            Ok(true) => reservation.refund().await,
            // A wrong password keeps the reserved cost.
            Ok(false) => {
                crate::metrics::login("failed");
                tracing::info!(
                    user = %r.username,
                    device_name = %r.device_name,
                    peer = %self.peer,
                    known_user = user_id.is_some(),
                    "login failed: wrong password or unknown user"
                );
                return Err(ServiceError::InvalidCredentials);
            }
            // Not checked (queue full, or the pool failed): not a failure.
            Err(e) => {
                password_queue_full(&e);
                reservation.refund().await;
                return Err(e);
            }
        }
        // After the password, so the refusal tells nothing to who does not
        // know it.
        if disabled {
            crate::metrics::login("disabled");
            tracing::info!(
                user = %r.username,
                device_name = %r.device_name,
                peer = %self.peer,
                "login refused: account disabled"
            );
            return Err(accounts::account_disabled());
        }
        // Refuse before creating a device that could not connect anyway.
        let per_user = self.shared.config.max_connections_per_user;
        if let Some(u) = user_id
            && self.shared.connections_of(u)? >= per_user
        {
            *self.close_after_reply.lock().expect("close lock") = Some(CloseCode::TooManyConnections);
            return Err(ServiceError::LimitExceeded(format!(
                "at most {per_user} connections per user are allowed"
            )));
        }
        let (token, hash) = accounts::new_token();
        let (name, device_name, now) = (r.username.clone(), r.device_name.clone(), self.now_ms());
        let pending = store::enqueue_write(&*self.shared.store, move |t| {
            accounts::login(t, &name, &device_name, &hash, now)
        })
        .await?;
        Ok(self.finish_auth(id, r.username, r.device_name, token, hash, pending, false))
    }

    /// Once the account or device is stored, logs it and puts the
    /// connection online as that device. `registered`: a new account
    /// (else a login).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_auth(
        self: &Arc<Self>,
        id: u64,
        username: String,
        device_name: String,
        token: String,
        hash: [u8; 32],
        pending: store::PendingWrite<Result<(u64, u32), ServiceError>>,
        registered: bool,
    ) -> Reply {
        let this = self.clone();
        Reply::Pending(tokio::spawn(async move {
            match pending.wait().await {
                Ok((user_id, device_id)) => {
                    // Never the password or the token: who, which device, from where.
                    if registered {
                        crate::metrics::registered();
                        tracing::info!(user = %username, user_id, device = device_id, %device_name, peer = %this.peer, "user registered");
                    } else {
                        crate::metrics::login("ok");
                        tracing::info!(user = %username, user_id, device = device_id, %device_name, peer = %this.peer, "login succeeded");
                    }
                    let actor = Actor {
                        user_id,
                        username: username.clone(),
                        device_id,
                    };
                    let expires_ms = this.shared.expiry(this.now_ms());
                    if let Err(e) = this.login_connection(actor, hash, expires_ms).await {
                        *this.close_after_reply.lock().expect("close lock") = Some(CloseCode::TooManyConnections);
                        return err(id, &e);
                    }
                    Envelope::new(
                        id,
                        Body::Auth(v1::AuthResponse {
                            user: username,
                            device_id,
                            token,
                        }),
                    )
                }
                Err(e) => err(id, &e),
            }
        }))
    }
}

/// Counts a refusal by the password pool's queue (full: RATE_LIMITED).
fn password_queue_full(e: &ServiceError) {
    if matches!(e, ServiceError::RateLimited { .. }) {
        crate::metrics::rate_limited("password_queue");
    }
}
