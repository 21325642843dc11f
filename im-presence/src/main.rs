//! `im-presence`: the presence service as its own process.

use clap::Parser;

#[derive(Parser)]
#[command(about = "MPIM presence service")]
struct Cli {
    #[command(flatten)]
    args: im_common::config::Args,
}

#[tokio::main]
async fn main() -> Result<(), im_common::telemetry::Failure> {
    let config: im_presence::Config = Cli::parse().args.load()?;
    let _guard = im_common::telemetry::init("im-presence", &config.log)?;
    im_presence::run(config, im_common::telemetry::shutdown_signal()).await?;
    Ok(())
}
