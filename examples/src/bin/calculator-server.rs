//! Serves two services on one listener: echo and calculator.

use clap::Parser;
use examples::proto::{CalculatorServer, EchoServer};

#[derive(Parser)]
#[command(about = "mprpc calculator + echo server")]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7001")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::telemetry::init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let server = mprpc::Server::builder()
        .add_service(CalculatorServer::new(examples::CalculatorService))
        .add_service(EchoServer::new(examples::EchoService))
        .build();
    server
        .serve(listener, examples::telemetry::shutdown_signal())
        .await?;
    Ok(())
}
