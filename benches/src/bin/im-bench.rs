//! `im-bench`: load for an MPIM gateway (`im-gateway` or `mpim`) over its client protocol,
//! or with `--target ejabberd|mqtt` the same `pairs` and `idle` load for ejabberd (XMPP) or
//! an MQTT broker (see `benches::im::rival`).
//!
//! ```text
//! cargo run --release -p benches --bin im-bench -- --gateway 127.0.0.1:6000 \
//!     pairs --users 2000 --rate 10000 --seconds 20
//! cargo run --release -p benches --bin im-bench -- --gateway 127.0.0.1:6000 \
//!     group --members 5000 --messages 200
//! cargo run --release -p benches --bin im-bench -- --gateway 127.0.0.1:6000 \
//!     idle --connections 19000 --gateway-pid $(pgrep -x mpim)
//! cargo run --release -p benches --bin im-bench -- --gateway 127.0.0.1:6000 \
//!     soak --pairs 50 --rate 200 --seconds 30 --record sends.csv
//! cargo run --release -p benches --bin im-bench -- --target ejabberd --prefix bench \
//!     pairs --users 2000 --rate 10000 --seconds 20
//! cargo run --release -p benches --bin im-bench -- --target mqtt --server 127.0.0.1:1883 \
//!     idle --connections 2000 --server-pid $(pgrep -x mosquitto)
//! ```
//!
//! `--ws` speaks WebSocket to `ws://<host>:6080/ws` instead, or to the URL `--ws-url` names.
//! `--gateway tls://host:port` and `--ws-url wss://host:port/ws` speak the same over TLS
//! (terminated in front of the gateway, e.g. by nginx), trusting the public roots and the
//! CA certificates of the PEM file `--ca` names. Setup (registration, login,
//! friends, the group) is timed but not measured. Progress goes to stderr each second; the
//! last line on stdout is
//! `RESULT connections=<n> sent=<n> acked=<n> delivered=<n> lost=<n> dup=<n> p50_ms=<x>
//! p99_ms=<x> msgs_per_s=<x>` and extra fields (`order=` pushes out of seq order, `echo=`
//! pushes of a device's own message, `system=` the system loaded, ack latency, failures,
//! and for idle the server's memory). The exit status is 1 when anything acknowledged was
//! lost or shown twice.

use std::net::ToSocketAddrs as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use benches::im::args::{Args, Mode};
use benches::im::idle::{self, IdleRun};
use benches::im::link::Endpoint;
use benches::im::modes::{self, GroupRun, Load};
use benches::im::rival::{self, System};
use benches::im::setup::Setup;
use benches::im::soak::SoakRun;
use benches::im::tally::Report;
use clap::Parser;

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.target != System::Mpim {
        let report = rival::run(&args, run_id()).await?;
        return Ok(finish(report, args.target));
    }
    let prefix = args.prefix.clone().unwrap_or_else(run_id);
    let connections = match args.mode {
        Mode::Pairs { users, .. } => users,
        Mode::Group { members, .. } => members,
        Mode::Idle { connections, .. } => connections,
        Mode::Soak { .. } => return soak(&args, prefix).await,
    };
    let sources = args.sources(connections);
    let address = args.address()?;
    let connect_to = address.host_port();
    let addr = connect_to
        .to_socket_addrs()
        .with_context(|| format!("resolving {connect_to}"))?
        .next()
        .context("the gateway address resolves to nothing")?;
    let setup = Setup {
        endpoint: Endpoint {
            addr,
            ws_url: args.ws_url(),
            tls: args.tls()?,
        },
        sources: sources.clone(),
        prefix: prefix.clone(),
        password: args.password.clone(),
        concurrency: args.setup_concurrency,
    };
    let load = Load {
        setup: setup.clone(),
        warmup: Duration::from_secs(args.warmup_seconds),
        drain: Duration::from_secs(args.drain_seconds),
        body_bytes: args.body_bytes,
    };
    let report = match args.mode {
        Mode::Pairs {
            users,
            rate,
            seconds,
        } => modes::pairs(&load, users, rate, seconds).await?,
        Mode::Group {
            members,
            messages,
            rate,
            senders,
            window,
        } => {
            let run = GroupRun {
                members,
                messages,
                rate,
                senders,
                window,
            };
            modes::group(&load, run).await?
        }
        Mode::Idle {
            devices_per_user,
            worker: true,
            ..
        } => {
            idle::worker(&setup, connections, devices_per_user).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Mode::Idle {
            hold_seconds,
            gateway_pid,
            processes,
            devices_per_user,
            ..
        } => {
            let run = IdleRun {
                connections,
                per_user: devices_per_user,
                hold: Duration::from_secs(hold_seconds),
                gateway_pid,
                processes: Args::processes(processes, connections),
            };
            let worker_args = |k, n| args.worker_args(&prefix, k, n, &sources);
            idle::idle(&setup, &run, worker_args).await?
        }
        Mode::Soak { .. } => unreachable!("answered above"),
    };
    Ok(finish(report, System::Mpim))
}

/// The `soak` run: SDK clients through faults.
async fn soak(args: &Args, prefix: String) -> anyhow::Result<ExitCode> {
    let Mode::Soak {
        pairs,
        rate,
        seconds,
        reconnect_max_ms,
        send_timeout_seconds,
        ref record,
    } = args.mode
    else {
        unreachable!("called for soak only");
    };
    let run = SoakRun {
        address: args.ws_url().unwrap_or_else(|| args.gateway.clone()),
        prefix,
        password: args.password.clone(),
        pairs,
        rate,
        seconds,
        reconnect_max: Duration::from_millis(reconnect_max_ms),
        send_timeout: Duration::from_secs(send_timeout_seconds),
        drain: Duration::from_secs(args.drain_seconds),
        record: record.clone(),
        ca: args.ca.clone(),
    };
    let report = benches::im::soak::soak(&run).await?;
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints the RESULT line, naming the system; the exit status: failure when anything
/// acknowledged was lost or shown twice.
fn finish(mut report: Report, system: System) -> ExitCode {
    report.extra.insert(0, ("system", system.name().into()));
    println!("{report}");
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A name for this run that no other run has: its start time and process id.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let mixed = (nanos ^ (u64::from(std::process::id()) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("b{:08x}", mixed >> 32)
}
