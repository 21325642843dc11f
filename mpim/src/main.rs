//! `mpim`: all of MPIM in one process, on a SQLite file and in-process routes, streams and
//! pub/sub.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "MPIM in one process: every service and the gateway, on embedded storage")]
struct Cli {
    /// TOML configuration file (every key has a default; see config/mpim.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for the database and the token secret (overrides `data`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address for clients over TCP (overrides `server.listen`).
    #[arg(long)]
    listen: Option<String>,
    /// Address for HTTP/WebSocket clients, or `off` (overrides `ws.listen`).
    #[arg(long)]
    ws_listen: Option<String>,
    /// Address for the legacy line protocol, or `off` (overrides `legacy.listen`).
    #[arg(long)]
    legacy_listen: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), im_common::telemetry::Failure> {
    let cli = Cli::parse();
    let mut overrides = Vec::new();
    if let Some(data) = &cli.data {
        overrides.push(("data", data.display().to_string()));
    }
    if let Some(listen) = &cli.listen {
        overrides.push(("server.listen", listen.clone()));
    }
    if let Some(listen) = &cli.ws_listen {
        overrides.push(("ws.listen", listen.clone()));
    }
    if let Some(listen) = &cli.legacy_listen {
        overrides.push(("legacy.listen", listen.clone()));
    }
    let config: mpim::Config = im_common::config::load(cli.config.as_deref(), &overrides)?;
    let _guard = im_common::telemetry::init("mpim", &config.log)?;
    mpim::run(config, im_common::telemetry::shutdown_signal()).await?;
    Ok(())
}
