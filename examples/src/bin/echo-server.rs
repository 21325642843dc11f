//! Serves the echo service until Ctrl-C or SIGTERM, optionally registered in ZooKeeper.

use clap::Parser;
use examples::proto::EchoServer;
use mprpc::discovery::Instance;
use mprpc::zookeeper::{ZkConfig, ZooKeeper};

#[derive(Parser)]
#[command(about = "mprpc echo server")]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Register in this registry, e.g. `zk://127.0.0.1:2181` (root `/mprpc` unless the URL
    /// names one). The bound address is what gets registered.
    #[arg(long)]
    registry: Option<String>,
    /// Instance id in the registry; defaults to one derived from the bound address.
    #[arg(long)]
    id: Option<String>,
    /// Relative share of traffic for weighted balancing.
    #[arg(long, default_value_t = 100)]
    weight: u32,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    #[arg(long)]
    metrics: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    examples::telemetry::init();
    let args = Args::parse();
    let _metrics = examples::telemetry::serve_metrics(args.metrics.as_deref()).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    let server = mprpc::Server::builder()
        .add_service(EchoServer::new(examples::EchoService))
        .build();
    let shutdown = examples::telemetry::shutdown_signal();
    match args.registry {
        None => {
            println!("listening on {addr}");
            server.serve(listener, shutdown).await?;
        }
        Some(url) => {
            let zk = ZooKeeper::connect_url(&url, ZkConfig::default()).await?;
            let mut instance = Instance::new(addr.to_string()).weight(args.weight);
            if let Some(id) = args.id {
                instance = instance.id(id);
            }
            println!("listening on {addr}");
            server
                .serve_registered(listener, &zk, instance, shutdown)
                .await?;
            zk.close().await;
        }
    }
    Ok(())
}
