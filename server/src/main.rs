//! `quipd`: runs the Quip server. See `quipd --help`.

use clap::Parser;
use quip_server::{Config, Server};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: glibc's arenas kept the 19 MiB blocks of
/// every concurrent argon2id hash, so a server that had handled a few logins
/// sat at 184 MiB RSS; with mimalloc it returns to 45 MiB (measured with
/// `quip-bench connections`; per-connection memory is unchanged by this).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if quip_server::backup::requested() {
        return quip_server::backup::main().await;
    }
    let config = Config::parse();
    // Listen for signals before anything can report readiness, so a SIGTERM
    // sent as soon as the server says it is up is never missed.
    let shutdown = shutdown_signal()?;
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let server = Server::bind(config.clone())?;
    tracing::info!(addr = %server.local_addr(), data_dir = %config.data_dir.display(), store = ?config.store, "quipd listening (QUIC, ALPN quip/1)");
    if let Some(https) = server.https_addr() {
        tracing::info!(addr = %https, "HTTPS listening: web client at https://{https}/, WebSocket at /v1/ws");
    }
    if let Some(cert) = server.dev_cert() {
        tracing::info!(
            "dev mode: self-signed certificate at {}; clients trust it with --ca {}",
            cert.display(),
            cert.display()
        );
    }
    server.run(shutdown).await
}

/// Installs SIGINT and SIGTERM handlers now; the future resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
