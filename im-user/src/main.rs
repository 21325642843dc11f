//! `im-user`: the user service as its own process.

use clap::Parser;

#[derive(Parser)]
#[command(about = "MPIM user service")]
struct Cli {
    #[command(flatten)]
    args: im_common::config::Args,
}

#[tokio::main]
async fn main() -> Result<(), im_common::telemetry::Failure> {
    let config: im_user::Config = Cli::parse().args.load()?;
    let _guard = im_common::telemetry::init("im-user", &config.log)?;
    im_user::run(config, im_common::telemetry::shutdown_signal()).await?;
    Ok(())
}
