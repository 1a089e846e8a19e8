//! `quip register`, `login`, `logout` and `whoami`.

use anyhow::{Context, bail};
use quip_protocol::v1::ErrorCode;
use serde_json::json;

use super::{Ctx, code_of};

#[allow(rustdoc::invalid_html_tags)] // `--help` text, as on `Cli`
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    /// Username (3-32 of a-z, 0-9, '_', '.', '-').
    user: String,
    /// Password [default: $QUIP_PASSWORD, else asked for on the terminal].
    #[arg(long, env = "QUIP_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Name of this device, shown in device lists [default: "quip-cli on <hostname>"].
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
}

/// `quip register` / `quip login`: authenticates and saves the token.
pub async fn auth(ctx: &mut Ctx, a: AuthArgs, register: bool) -> anyhow::Result<()> {
    let profile = &ctx.profile;
    if profile.token.is_some() && profile.user.as_deref() != Some(&a.user) {
        // The old token stays valid on the server until that user logs
        // out; refuse rather than silently forget it.
        bail!(
            "this profile is logged in as {}; run 'quip logout' first or use another QUIP_HOME",
            profile.user.as_deref().unwrap_or("someone")
        );
    }
    let password = password(a.password)?;
    let device = a.device.unwrap_or_else(default_device_name);
    let auth = ctx
        .open(None)
        .await?
        .run(async |c| {
            Ok(if register {
                c.register(&a.user, &password, &device).await?
            } else {
                c.login(&a.user, &password, &device).await?
            })
        })
        .await?;
    let profile = &mut ctx.profile;
    profile.server = Some(ctx.opts.server.clone());
    profile.ca = ctx.ca.clone();
    profile.user = Some(auth.user.clone());
    profile.device_id = Some(auth.device_id);
    profile.token = Some(auth.token.clone());
    profile.save(&ctx.home)?;
    let verb = if register { "registered" } else { "logged in as" };
    ctx.out.emit(
        || format!("{verb} {} (device {})", auth.user, auth.device_id),
        || json!({"type": "auth", "user": auth.user, "device_id": auth.device_id}),
    )?;
    Ok(())
}

/// `quip logout`: revokes the token on the server, then forgets it.
pub async fn logout(ctx: &mut Ctx) -> anyhow::Result<()> {
    let user = ctx.profile.user.clone().unwrap_or_default();
    let revoked_before = match ctx.open(Some(ctx.profile.token()?)).await {
        Ok(conn) => {
            conn.run(async |c| Ok(c.logout().await?)).await?;
            false
        }
        // Revoked already (another logout, or the device was removed):
        // forgetting it is all that is left to do.
        Err(e) if code_of(&e) == Some(ErrorCode::Unauthenticated) => true,
        Err(e) => return Err(e),
    };
    ctx.profile.token = None;
    ctx.profile.device_id = None;
    ctx.profile.save(&ctx.home)?;
    let note = if revoked_before {
        " (the server had already revoked this device)"
    } else {
        ""
    };
    ctx.out.emit(
        || format!("logged out {user}{note}"),
        || json!({"type": "logout", "user": user}),
    )?;
    Ok(())
}

pub async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    let server = &ctx.opts.server;
    ctx.report(
        async |c| Ok(c.whoami().await?),
        |me| format!("{} (device {}) on {server}", me.user, me.device_id),
        |me| json!({"type": "whoami", "user": me.user, "device_id": me.device_id, "server": server}),
    )
    .await
}

fn password(given: Option<String>) -> anyhow::Result<String> {
    match given {
        Some(p) => Ok(p),
        None => rpassword::prompt_password("password: ")
            .context("reading the password from the terminal (or pass --password / QUIP_PASSWORD)"),
    }
}

/// `quip-cli on <hostname>`, or `quip-cli` where the hostname is unknown.
fn default_device_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    let mut name = match host {
        Some(h) => format!("quip-cli on {h}"),
        None => "quip-cli".into(),
    };
    // The server takes at most 64 bytes.
    while name.len() > 64 {
        name.pop();
    }
    name
}
