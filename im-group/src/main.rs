//! `im-group`: the group service as its own process.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "MPIM group service")]
struct Args {
    /// TOML configuration file (every key has a default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides server.listen).
    #[arg(long)]
    listen: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let overrides: Vec<(&str, String)> = args
        .listen
        .map(|l| ("server.listen", l))
        .into_iter()
        .collect();
    let config: im_group::Config = im_common::config::load(args.config.as_deref(), &overrides)?;
    let _guard = im_common::telemetry::init("im-group", &config.log)?;
    im_group::run(config, im_common::telemetry::shutdown_signal()).await
}
