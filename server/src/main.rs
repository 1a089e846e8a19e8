//! `quipd`: runs the Quip server. See `quipd --help`.

use quip_server::config::{Command, ConfigCommand, LoadError, LogFormat};
use quip_server::transport::tls::Certificates;
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
    let config = match Config::load(std::env::args_os()) {
        Ok(c) => c,
        Err(LoadError::Flags(e)) => e.exit(),
        Err(e @ LoadError::File(_)) => {
            eprintln!("quipd: {e}");
            std::process::exit(2);
        }
    };
    match config.command {
        Some(Command::Config(ConfigCommand::Default)) => {
            print!("{}", Config::example_file());
            return Ok(());
        }
        Some(Command::Admin(args)) => std::process::exit(quip_server::admin::cli::run(args).await),
        None => {}
    }
    if let Some(problem) = config.cluster_media_problem() {
        eprintln!("quipd: {problem}");
        std::process::exit(2);
    }
    // Listen for signals before anything can report readiness, so a SIGTERM
    // sent as soon as the server says it is up is never missed.
    let shutdown = shutdown_signal()?;
    // SIGHUP's default action ends the process: take it over now too.
    let reload = reload_signal()?;
    init_logging(&config);
    let server = Server::bind(config.clone())?;
    tokio::spawn(reload_certificates(reload, server.certificates()));
    tracing::info!(addr = %server.local_addr(), data_dir = %config.data_dir.display(), store = ?config.store, "quipd listening (QUIC, ALPN quip/1)");
    if let Some(admin) = server.admin_addr() {
        tracing::info!(addr = %admin, "admin listening: http://{admin}/metrics, /healthz, /readyz");
    }
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

/// Log lines to stdout, as text or as JSON objects (`--log-format`). In
/// JSON each event's fields are top-level keys next to `timestamp`,
/// `level`, `target` and `message`, so a shipper can index `user` or
/// `peer` without parsing the message.
fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// SIGHUP, as a stream of reload requests.
#[cfg(unix)]
fn reload_signal() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Reloads the TLS certificate and key on each SIGHUP: new handshakes get
/// the new certificate; connections already open are untouched. One that
/// does not load is refused, and the certificate in use stays.
#[cfg(unix)]
async fn reload_certificates(mut hup: tokio::signal::unix::Signal, certs: std::sync::Arc<Certificates>) {
    while hup.recv().await.is_some() {
        let c = certs.clone();
        match tokio::task::spawn_blocking(move || c.reload()).await {
            Ok(Ok(fingerprint)) => tracing::info!(
                cert = %certs.cert_path().display(),
                sha256 = %fingerprint,
                "TLS certificate reloaded: new handshakes present it"
            ),
            Ok(Err(e)) => tracing::error!(
                cert = %certs.cert_path().display(),
                error = format!("{e:#}"),
                sha256 = %certs.fingerprint(),
                "TLS certificate reload refused: keeping the certificate in use"
            ),
            Err(e) => tracing::error!(error = %e, "TLS certificate reload failed"),
        }
    }
}

#[cfg(not(unix))]
fn reload_signal() -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(unix))]
async fn reload_certificates(_: (), _: std::sync::Arc<Certificates>) {}

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
