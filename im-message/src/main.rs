//! `im-message`: the message service as its own process.

use clap::Parser;

#[derive(Parser)]
#[command(about = "MPIM message service")]
struct Cli {
    #[command(flatten)]
    args: im_common::config::Args,
}

#[tokio::main]
async fn main() -> Result<(), im_common::telemetry::Failure> {
    let config: im_message::Config = Cli::parse().args.load()?;
    let _guard = im_common::telemetry::init("im-message", &config.log)?;
    im_message::run(config, im_common::telemetry::shutdown_signal()).await?;
    Ok(())
}
