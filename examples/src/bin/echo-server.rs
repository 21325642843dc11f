//! Serves the echo service until Ctrl-C or SIGTERM, optionally registered in ZooKeeper.

use clap::Parser;
use examples::proto::EchoServer;
use mprpc::discovery::{Instance, advertise_addr};
use mprpc::zookeeper::{ZkConfig, ZooKeeper};

#[derive(Parser)]
#[command(about = "mprpc echo server")]
struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Register in this registry, e.g. `zk://127.0.0.1:2181` (root `/mprpc` unless the URL
    /// names one), at the address from `--advertise`.
    #[arg(long)]
    registry: Option<String>,
    /// Address callers dial, registered in the registry. Defaults to the bound address, or
    /// for a wildcard listener (`0.0.0.0`, `[::]`) to this host's address on its default
    /// route with the bound port.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Instance id in the registry; defaults to a new `<hostname>-<pid>-<hex>` per start.
    /// Set one for an identity that survives restarts.
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
            let advertised = args
                .advertise
                .unwrap_or_else(|| advertise_addr(addr).to_string());
            let mut instance = Instance::new(advertised).weight(args.weight);
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
