//! The `plaza` binary: command line → configuration → logging → server, until SIGINT/SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use plaza::config::Config;

/// Plaza: a selective forwarding unit for group video calls.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML). Defaults: config/default.toml's values, built in.
    #[arg(long, short, env = "PLAZA_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address (http.listen).
    #[arg(long)]
    listen: Option<String>,
    /// The shared media UDP port (rtc.udp_port); 0 picks a free one.
    #[arg(long)]
    udp_port: Option<u16>,
    /// Address to advertise in ICE candidates (rtc.advertise_ips); repeat for several.
    #[arg(long = "advertise-ip")]
    advertise_ips: Vec<String>,
    /// Log filter (log.level), e.g. info or plaza=debug.
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Exit 0 if the server configured like this one answers /healthz on loopback
    /// (for container health checks).
    Healthcheck,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(listen) = cli.listen {
        config.http.listen = listen;
    }
    if let Some(port) = cli.udp_port {
        config.rtc.udp_port = port;
    }
    if !cli.advertise_ips.is_empty() {
        config.rtc.advertise_ips = cli.advertise_ips;
    }
    if let Some(level) = cli.log_level {
        config.log.level = level;
    }
    config.validate()?;
    if let Some(Command::Healthcheck) = cli.command {
        return healthcheck(config.listen_addr().port()).await;
    }
    init_logging(&config);

    // The drain inside the server is bounded by timeouts.shutdown_ms; this is the backstop
    // that makes the process exit even if something refuses to finish.
    let hard_stop = std::time::Duration::from_millis(config.timeouts.shutdown_ms)
        + std::time::Duration::from_secs(2);
    let (signalled_tx, mut signalled) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown_signal().await;
        let _ = signalled_tx.send(true);
    };
    let mut running = plaza::server::start(config, shutdown)
        .await
        .context("starting plaza")?;
    tokio::select! {
        done = &mut running.done => done??,
        _ = async {
            let _ = signalled.wait_for(|s| *s).await;
            tokio::time::sleep(hard_stop).await;
        } => tracing::warn!("shutdown did not finish in time; exiting anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn healthcheck(port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let check = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        s.read_to_end(&mut response).await?;
        anyhow::Ok(response.starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => anyhow::bail!("/healthz did not answer 200"),
        Ok(Err(e)) => Err(e.context("cannot reach /healthz")),
        Err(_) => anyhow::bail!("/healthz did not answer within 3 s"),
    }
}

fn init_logging(config: &Config) {
    plaza::logs::init(&config.log.level, config.log.format == "json");
    tokio::spawn(plaza::logs::report_suppressed());
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
