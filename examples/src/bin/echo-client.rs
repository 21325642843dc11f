//! Drives echo servers with concurrent calls and reports throughput and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use examples::proto::{EchoClient, EchoRequest};
use mprpc::CallOptions;
use mprpc::balance::{ConsistentHash, P2c, RoundRobin, WeightedRandom};
use mprpc::zookeeper::{ZkConfig, ZooKeeper};

#[derive(Clone, Copy, ValueEnum)]
enum Balance {
    P2c,
    RoundRobin,
    WeightedRandom,
    ConsistentHash,
}

#[derive(Parser)]
#[command(about = "mprpc echo load client")]
struct Args {
    /// Server address (ignored with --registry).
    #[arg(long, default_value = "127.0.0.1:7000")]
    connect: String,
    /// Find servers in this registry instead, e.g. `zk://127.0.0.1:2181`.
    #[arg(long)]
    registry: Option<String>,
    /// How calls choose among the registry's instances.
    #[arg(long, value_enum, default_value = "p2c")]
    balance: Balance,
    /// Calls to make in total.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Per-call timeout in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Connections per server.
    #[arg(long, default_value_t = 2)]
    pool: usize,
    /// Treat calls as idempotent, so a connection lost mid-call is retried.
    #[arg(long)]
    idempotent: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let builder = mprpc::Client::builder()
        .pool_size(args.pool)
        .timeout(Some(Duration::from_millis(args.timeout_ms)));
    let builder = match args.balance {
        Balance::P2c => builder.balance(P2c),
        Balance::RoundRobin => builder.balance(RoundRobin),
        Balance::WeightedRandom => builder.balance(WeightedRandom),
        Balance::ConsistentHash => builder.balance(ConsistentHash::default()),
    };
    // Keeps the session (and its watches) alive for the whole run.
    let mut registry = None;
    let client = match &args.registry {
        None => builder.connect_lazy(args.connect.clone()),
        Some(url) => {
            let zk = ZooKeeper::connect_url(url, ZkConfig::default()).await?;
            let client = builder.discover(&zk, EchoClient::NAME).await?;
            registry = Some(zk);
            client
        }
    };
    let client = EchoClient::new(client);
    let options = CallOptions::new().idempotent(args.idempotent);
    let request = EchoRequest {
        payload: vec![b'x'; args.payload].into(),
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, request, options) = (client.clone(), request.clone(), options.clone());
        let (next, count) = (next.clone(), args.count);
        workers.spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("valid precision");
            let (mut ok, mut failed) = (0u64, 0u64);
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                match client.echo_with(&request, &options).await {
                    Ok(reply) if reply.payload == request.payload => ok += 1,
                    Ok(_) => failed += 1,
                    Err(err) => {
                        if failed == 0 {
                            eprintln!("call failed: {err}");
                        }
                        failed += 1;
                    }
                }
                let _ = hist.record(t.elapsed().as_micros() as u64);
            }
            (ok, failed, hist)
        });
    }
    let (mut ok, mut failed) = (0, 0);
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("valid precision");
    while let Some(done) = workers.join_next().await {
        let (o, f, h) = done?;
        ok += o;
        failed += f;
        hist.add(h)?;
    }
    let elapsed = started.elapsed();
    println!(
        "{} calls in {:.3} s: {:.0} calls/s; latency p50={} us p99={} us max={} us",
        ok + failed,
        elapsed.as_secs_f64(),
        (ok + failed) as f64 / elapsed.as_secs_f64(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    println!("ok={ok} failed={failed}");
    if let Some(zk) = registry {
        zk.close().await;
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
