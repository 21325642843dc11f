//! `im-gateway`: the gateway as its own process.

use clap::Parser;

#[derive(Parser)]
#[command(about = "MPIM gateway: client connections over TCP and WebSocket")]
struct Cli {
    #[command(flatten)]
    args: im_common::config::Args,
}

#[tokio::main]
async fn main() -> Result<(), im_common::telemetry::Failure> {
    let config: im_gateway::Config = Cli::parse().args.load()?;
    let _guard = im_common::telemetry::init("im-gateway", &config.log)?;
    im_gateway::run(config, im_common::telemetry::shutdown_signal()).await?;
    Ok(())
}
