//! `quipd`: runs the Quip server. See `quipd --help`.

use clap::Parser;
use quip_server::{Config, Server};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let server = Server::bind(config.clone())?;
    tracing::info!(addr = %server.local_addr(), data_dir = %config.data_dir.display(), "quipd listening (QUIC, ALPN quip/1)");
    if let Some(cert) = server.dev_cert() {
        tracing::info!(
            "dev mode: self-signed certificate at {}; clients trust it with --ca {}",
            cert.display(),
            cert.display()
        );
    }
    server.run(shutdown_signal()).await
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
