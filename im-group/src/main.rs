//! `im-group`: the group service as its own process.

use clap::Parser;

#[derive(Parser)]
#[command(about = "MPIM group service")]
struct Cli {
    #[command(flatten)]
    args: im_common::config::Args,
}

#[tokio::main]
async fn main() -> Result<(), im_common::telemetry::Failure> {
    let config: im_group::Config = Cli::parse().args.load()?;
    let _guard = im_common::telemetry::init("im-group", &config.log)?;
    im_group::run(config, im_common::telemetry::shutdown_signal()).await?;
    Ok(())
}
