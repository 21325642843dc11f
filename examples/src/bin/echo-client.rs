//! Drives an echo server with concurrent calls and reports throughput and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use examples::proto::{EchoClient, EchoRequest};

#[derive(Parser)]
#[command(about = "mprpc echo load client")]
struct Args {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    connect: String,
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
    /// Connections in the pool.
    #[arg(long, default_value_t = 2)]
    pool: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = mprpc::Client::builder()
        .pool_size(args.pool)
        .timeout(Some(Duration::from_millis(args.timeout_ms)))
        .connect_lazy(args.connect.clone());
    let client = EchoClient::new(client);
    let request = EchoRequest {
        payload: vec![b'x'; args.payload].into(),
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, request, next, count) =
            (client.clone(), request.clone(), next.clone(), args.count);
        workers.spawn(async move {
            let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("valid precision");
            let (mut ok, mut failed) = (0u64, 0u64);
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let t = Instant::now();
                match client.echo(&request).await {
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
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
