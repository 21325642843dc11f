//! Unary echo round trips over loopback against an in-process mprpc server, with 1 and 64
//! calls in flight. Criterion's time per iteration is the time per call: the latency at
//! concurrency 1, the inverse of throughput at 64.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::systems::mprpc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use examples::proto::{EchoClient, EchoRequest};
use tokio::runtime::Runtime;

const CONCURRENCY: [u64; 2] = [1, 64];

fn roundtrip(c: &mut Criterion) {
    // The same runtime shape as `rpc-compare`: two workers shared by client and server.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, server) = runtime
        .block_on(mprpc::start_server())
        .expect("server starts");
    let client = mprpc::client(addr);
    let request = Arc::new(EchoRequest {
        payload: vec![0x5a; 64].into(),
    });
    runtime
        .block_on(client.echo(&request))
        .expect("server answers");

    let mut group = c.benchmark_group("roundtrip");
    group.throughput(Throughput::Elements(1));
    for concurrency in CONCURRENCY {
        group.bench_function(BenchmarkId::new("echo_64B", concurrency), |b| {
            b.iter_custom(|iters| calls(&runtime, &client, &request, concurrency, iters));
        });
    }
    group.finish();
    drop(client);
    runtime.block_on(server.stop()).expect("server stops");
}

/// Makes `iters` calls from `concurrency` tasks and returns the wall time they took.
fn calls(
    runtime: &Runtime,
    client: &EchoClient,
    request: &Arc<EchoRequest>,
    concurrency: u64,
    iters: u64,
) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..concurrency {
            // Spread the remainder so the total is exactly `iters`.
            let share = iters / concurrency + u64::from(task < iters % concurrency);
            let (client, request) = (client.clone(), request.clone());
            tasks.spawn(async move {
                for _ in 0..share {
                    client.echo(&request).await.expect("echo succeeds");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("call task does not panic");
        }
        start.elapsed()
    })
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
