//! The admin API: JSON over HTTP on the admin listener, under `/admin/v1/`,
//! every request carrying `Authorization: Bearer <token>` (the content of
//! `<data-dir>/admin-token`); without it, or with another, `401`.
//!
//! | method and path | does | answers |
//! |---|---|---|
//! | `GET users` | lists accounts | `[UserSummary]` |
//! | `GET users/{name}` | one account | `UserDetail` |
//! | `POST users/{name}/disable`, `…/enable` | refuses / allows logins | `Outcome` |
//! | `POST users/{name}/unlock` | refills the failed-login budget | `{"was_throttled": bool}` |
//! | `POST users/{name}/password` `{"password"}` | sets it, signs out every device | `Outcome` |
//! | `GET users/{name}/devices` | devices | `[DeviceInfo]` |
//! | `POST users/{name}/devices/{id}/revoke` | signs the device out | `Outcome` |
//! | `GET users/{name}/sessions` | connections here by device | `[SessionInfo]` |
//! | `POST users/{name}/kick` `{"device"?}` | closes connections (code 10) | `Outcome` |
//! | `GET chats/{id}` | a group's, channel's or direct chat's members | `ChatDetail` |
//! | `GET stats` | counts | `Stats` |
//!
//! Errors are `{"error": CODE, "message": …}` with the protocol's error
//! code names (`NOT_FOUND` 404, `INVALID_ARGUMENT` 400, …).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AUDIT_TARGET;
use super::ops::{self, MessageRate};
use super::token::AdminToken;
use crate::service::ServiceError;
use crate::session::Shared;

/// What the routes need.
#[derive(Clone)]
struct Api {
    shared: Arc<Shared>,
    token: Arc<AdminToken>,
    rate: MessageRate,
}

/// The routes, to be served under `/admin/v1`. Starts the message-rate
/// sampler, so call it inside a tokio runtime.
pub fn router(shared: Arc<Shared>, token: Arc<AdminToken>) -> Router {
    Router::new()
        .route("/users", get(list_users))
        .route("/users/{name}", get(show_user))
        .route("/users/{name}/disable", post(disable))
        .route("/users/{name}/enable", post(enable))
        .route("/users/{name}/unlock", post(unlock))
        .route("/users/{name}/password", post(reset_password))
        .route("/users/{name}/devices", get(devices))
        .route("/users/{name}/devices/{device}/revoke", post(revoke_device))
        .route("/users/{name}/sessions", get(sessions))
        .route("/users/{name}/kick", post(kick))
        .route("/chats/{id}", get(chat))
        .route("/stats", get(stats))
        .with_state(Api {
            shared,
            token,
            rate: MessageRate::start(),
        })
}

/// An authenticated operator's request, and where it came from.
struct Operator {
    peer: String,
}

fn peer_of(parts: &Parts) -> String {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.to_string())
}

impl FromRequestParts<Api> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Response> {
        let peer = peer_of(parts);
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme's name is case-insensitive (RFC 9110 §11.1).
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            });
        if presented.is_some_and(|t| api.token.verify(t.trim())) {
            return Ok(Self { peer });
        }
        tracing::warn!(
            target: AUDIT_TARGET,
            audit = true,
            action = "authenticate",
            // Nested: the path here lacks the prefix.
            subject = format!("/admin/v1{}", parts.uri.path()),
            result = "UNAUTHENTICATED",
            %peer,
            token_presented = presented.is_some(),
            "admin request refused: missing or wrong admin token"
        );
        let body = ErrorBody {
            error: "UNAUTHENTICATED",
            message: "missing or wrong admin token (see <data-dir>/admin-token)".into(),
        };
        Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(body),
        )
            .into_response())
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: String,
}

/// Logs the action on the audit target, then answers with its result.
fn answer<T: Serialize>(op: &Operator, action: &str, subject: &str, r: Result<T, ServiceError>) -> Response {
    match r {
        Ok(v) => {
            tracing::info!(target: AUDIT_TARGET, audit = true, action, subject, result = "OK", peer = %op.peer, "admin action");
            Json(v).into_response()
        }
        Err(e) => {
            let code = e.code();
            tracing::warn!(
                target: AUDIT_TARGET,
                audit = true,
                action,
                subject,
                result = code.as_str_name(),
                error = %e,
                peer = %op.peer,
                "admin action failed"
            );
            let status = match &e {
                ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
                ServiceError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
                ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
                ServiceError::RateLimited { .. } | ServiceError::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
                _ if code == quip_protocol::v1::ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let body = ErrorBody {
                error: code.as_str_name(),
                message: e.to_string(),
            };
            (status, Json(body)).into_response()
        }
    }
}

async fn list_users(op: Operator, State(api): State<Api>) -> Response {
    answer(&op, "users.list", "", ops::list_users(&api.shared))
}

async fn show_user(op: Operator, State(api): State<Api>, Path(name): Path<String>) -> Response {
    answer(&op, "users.show", &name, ops::show_user(&api.shared, &name))
}

async fn disable(op: Operator, State(api): State<Api>, Path(name): Path<String>) -> Response {
    let r = ops::set_disabled(&api.shared, &name, true).await;
    answer(&op, "users.disable", &name, r)
}

async fn enable(op: Operator, State(api): State<Api>, Path(name): Path<String>) -> Response {
    let r = ops::set_disabled(&api.shared, &name, false).await;
    answer(&op, "users.enable", &name, r)
}

#[derive(Serialize)]
struct Unlocked {
    was_throttled: bool,
}

async fn unlock(op: Operator, State(api): State<Api>, Path(name): Path<String>) -> Response {
    let r = ops::unlock(&api.shared, &name)
        .await
        .map(|was_throttled| Unlocked { was_throttled });
    answer(&op, "users.unlock", &name, r)
}

/// `POST users/{name}/password`.
#[derive(Deserialize)]
pub struct NewPassword {
    /// The new password (8–1024 bytes). Never logged.
    pub password: String,
}

async fn reset_password(
    op: Operator,
    State(api): State<Api>,
    Path(name): Path<String>,
    Json(body): Json<NewPassword>,
) -> Response {
    let r = ops::reset_password(&api.shared, &name, body.password).await;
    answer(&op, "users.reset-password", &name, r)
}

async fn devices(op: Operator, State(api): State<Api>, Path(name): Path<String>) -> Response {
    answer(&op, "devices.list", &name, ops::devices(&api.shared, &name))
}

async fn revoke_device(op: Operator, State(api): State<Api>, Path((name, device)): Path<(String, u32)>) -> Response {
    let r = ops::revoke_device(&api.shared, &name, device).await;
    answer(&op, "devices.revoke", &format!("{name}/{device}"), r)
}

async fn sessions(op: Operator, State(api): State<Api>, Path(name): Path<String>) -> Response {
    answer(&op, "sessions.list", &name, ops::sessions(&api.shared, &name))
}

/// `POST users/{name}/kick`.
#[derive(Deserialize, Default)]
pub struct Kick {
    /// Only this device's connections (else all the user's).
    #[serde(default)]
    pub device: Option<u32>,
}

async fn kick(op: Operator, State(api): State<Api>, Path(name): Path<String>, Json(body): Json<Kick>) -> Response {
    let subject = match body.device {
        Some(d) => format!("{name}/{d}"),
        None => name.clone(),
    };
    let r = ops::kick(&api.shared, &name, body.device).await;
    answer(&op, "sessions.kick", &subject, r)
}

async fn chat(op: Operator, State(api): State<Api>, Path(id): Path<u64>) -> Response {
    answer(&op, "groups.show", &id.to_string(), ops::chat(&api.shared, id))
}

async fn stats(op: Operator, State(api): State<Api>) -> Response {
    answer(&op, "stats", "", ops::stats(&api.shared, &api.rate))
}
