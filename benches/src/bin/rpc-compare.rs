//! Unary echo over loopback with mprpc, tonic and tarpc under the same load, one after the
//! other, each with its server in the same process and runtime as its client; plus mprpc
//! over mutual TLS, and mprpc's in-process transport, which skips the socket altogether.
//!
//! ```text
//! cargo run --release -p benches --bin rpc-compare -- --seconds 5 --concurrency 256
//! ```
//!
//! Every row gets a fresh multi-thread runtime with two workers shared by client and server,
//! `--concurrency` tasks that each loop call → await, a warm-up that is not counted, and a
//! measured window. The output is a table and a final `RESULT` line for scripts.
//!
//! A row is a [`Transport`] variant whose `run` calls one `benches::systems` module.

use std::time::Duration;

use benches::load::{Load, Stats};
use benches::systems;
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(about = "Unary echo throughput and latency: mprpc vs tonic vs tarpc")]
struct Args {
    /// Measured seconds per row.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Calls in flight at once (one task each).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds of load per row before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Payload bytes echoed per call.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Run only this row.
    #[arg(long)]
    only: Option<Transport>,
    /// ZooKeeper for the `mprpc-zk` row (`host:port`).
    #[arg(long, default_value = "127.0.0.1:2181")]
    zk: String,
    /// Channels the `tonic-pool` row spreads its tasks over.
    #[arg(long, default_value_t = 4)]
    tonic_channels: usize,
}

/// One row of the table: a system and how its client is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// mprpc, pool of 2 connections.
    Mprpc,
    /// mprpc over mutual TLS, pool of 2 connections.
    MprpcMtls,
    /// mprpc, the server registered in ZooKeeper, the client discovering it and balancing
    /// with power-of-two-choices.
    MprpcZk,
    /// mprpc, the server in the same process called without TCP.
    MprpcInProcess,
    /// tonic, one `Channel` (one HTTP/2 connection) cloned into every task.
    Tonic,
    /// tonic, tasks spread over `--tonic-channels` channels.
    TonicPool,
    /// tarpc, one connection shared by every task.
    Tarpc,
}

impl Transport {
    const ALL: [Transport; 7] = [
        Transport::Mprpc,
        Transport::MprpcMtls,
        Transport::MprpcZk,
        Transport::MprpcInProcess,
        Transport::Tonic,
        Transport::TonicPool,
        Transport::Tarpc,
    ];

    fn label(self, args: &Args) -> String {
        match self {
            Transport::Mprpc => "mprpc (2 conns)".into(),
            Transport::MprpcMtls => "mprpc (mTLS)".into(),
            Transport::MprpcZk => "mprpc (zk + p2c)".into(),
            Transport::MprpcInProcess => "mprpc (in process)".into(),
            Transport::Tonic => "tonic (1 channel)".into(),
            Transport::TonicPool => format!("tonic ({} channels)", args.tonic_channels),
            Transport::Tarpc => "tarpc (1 conn)".into(),
        }
    }

    /// The key of this row in the `RESULT` line; rows without one are informative only.
    fn result_key(self) -> Option<&'static str> {
        match self {
            Transport::Mprpc => Some("mprpc"),
            Transport::MprpcMtls => Some("mprpc_mtls"),
            Transport::MprpcZk => Some("mprpc_zk"),
            Transport::MprpcInProcess => Some("mprpc_inproc"),
            Transport::Tonic => Some("tonic"),
            Transport::TonicPool => None,
            Transport::Tarpc => Some("tarpc"),
        }
    }

    async fn run(self, load: &Load, args: &Args) -> anyhow::Result<Stats> {
        match self {
            Transport::Mprpc => systems::mprpc::run(load).await,
            Transport::MprpcMtls => systems::mprpc::run_mtls(load).await,
            Transport::MprpcZk => systems::mprpc::run_discovered(load, &args.zk).await,
            Transport::MprpcInProcess => systems::mprpc::run_in_process(load).await,
            Transport::Tonic => systems::tonic::run(load, 1).await,
            Transport::TonicPool => systems::tonic::run(load, args.tonic_channels).await,
            Transport::Tarpc => systems::tarpc::run(load).await,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load = Load {
        concurrency: args.concurrency.max(1),
        warmup: Duration::from_secs_f64(args.warmup_seconds),
        measure: Duration::from_secs_f64(args.seconds),
        payload_len: args.payload,
    };
    let rows = args.only.map_or(Transport::ALL.to_vec(), |only| vec![only]);
    println!(
        "unary echo, {} B payload, concurrency {}, {:.1} s warm-up + {:.1} s measured, 2 runtime workers",
        load.payload_len,
        load.concurrency,
        load.warmup.as_secs_f64(),
        load.measure.as_secs_f64()
    );
    println!(
        "{:<20} {:>12} {:>9} {:>9} {:>9} {:>8}",
        "system", "calls/s", "p50 µs", "p99 µs", "max µs", "errors"
    );
    let mut results = Vec::new();
    for transport in rows {
        // A fresh runtime per row: nothing a previous row left behind competes with it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let stats = match runtime.block_on(transport.run(&load, &args)) {
            Ok(stats) => stats,
            // Without ZooKeeper the other rows still mean something.
            Err(err) if transport == Transport::MprpcZk => {
                eprintln!("{}: skipped: {err:#}", transport.label(&args));
                continue;
            }
            Err(err) => return Err(err),
        };
        drop(runtime);
        if let Some(err) = &stats.first_error {
            eprintln!(
                "{}: {} calls failed; the first: {err:#}",
                transport.label(&args),
                stats.errors
            );
        }
        println!(
            "{:<20} {:>12.0} {:>9} {:>9} {:>9} {:>8}",
            transport.label(&args),
            stats.calls_per_sec(),
            stats.p50_us(),
            stats.p99_us(),
            stats.max_us(),
            stats.errors
        );
        results.push((transport, stats));
    }
    println!("{}", result_line(&results));
    Ok(())
}

fn result_line(results: &[(Transport, Stats)]) -> String {
    let mut keyed: Vec<_> = results
        .iter()
        .filter_map(|(t, stats)| Some((*t, t.result_key()?, stats)))
        .collect();
    // The discovered, in-process and mTLS rows come last, in that order, so the first
    // fields keep their fixed order.
    keyed.sort_by_key(|(t, _, _)| match t {
        Transport::MprpcZk => 1,
        Transport::MprpcInProcess => 2,
        Transport::MprpcMtls => 3,
        _ => 0,
    });
    let keyed: Vec<_> = keyed
        .into_iter()
        .map(|(_, key, stats)| (key, stats))
        .collect();
    let mut line = String::from("RESULT");
    for (key, stats) in &keyed {
        line += &format!(" {key}_qps={:.0}", stats.calls_per_sec());
    }
    for (key, stats) in &keyed {
        line += &format!(" {key}_p99_us={}", stats.p99_us());
    }
    line
}
