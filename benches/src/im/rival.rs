//! `--target ejabberd` and `--target mqtt`: the `pairs` and `idle` runs against another
//! system, with the workload, the accounting and the RESULT line of the MPIM runs.
//!
//! `pairs`: users `<prefix>-0` … in pairs (`2p`, `2p + 1`), each sending to its partner at
//! an even total rate; a send is acknowledged by the protocol's own ack (XMPP stream
//! management's `<a/>`, MQTT's PUBACK) and delivered when the partner reads it. `idle`:
//! authenticated connections that only keep alive, and the server's resident memory.
//!
//! The ejabberd accounts must exist (with `--password`); the MQTT broker needs none.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, stream};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::args::{Args, Mode};
use super::drive::Shared;
use super::idle::{idle_report, rss_kib};
use super::modes::pairs_report;
use super::peer::{self, Peer, Plan};
use super::tally::{Report, Seen};
use super::{mqtt, xmpp};

/// How long one connection's login may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The system `im-bench` loads.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum System {
    /// An MPIM gateway (`--gateway`), over its client protocol.
    #[default]
    Mpim,
    /// ejabberd over XMPP client-to-server (`--server`, default 127.0.0.1:5222).
    Ejabberd,
    /// An MQTT 3.1.1 broker such as mosquitto (`--server`, default 127.0.0.1:1883).
    Mqtt,
}

impl System {
    /// Its name in the RESULT line.
    pub fn name(self) -> &'static str {
        match self {
            System::Mpim => "mpim",
            System::Ejabberd => "ejabberd",
            System::Mqtt => "mqtt",
        }
    }
}

/// Options of the other systems.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// ejabberd's or the MQTT broker's address (default: 127.0.0.1:5222 for ejabberd,
    /// 127.0.0.1:1883 for MQTT).
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// The XMPP domain of the ejabberd accounts.
    #[arg(long, global = true, default_value = "localhost")]
    pub xmpp_domain: String,
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
struct Target {
    system: System,
    addr: SocketAddr,
    domain: String,
    /// Start of every account name (`<prefix>-<n>`).
    prefix: String,
    password: String,
    /// Unique per run: every body carries it.
    run: String,
    concurrency: usize,
}

/// Runs `args.mode` against `args.target`; `run` is unique to this run.
///
/// # Errors
/// When the mode is not one these systems run, or setup fails.
pub async fn run(args: &Args, run: String) -> anyhow::Result<Report> {
    let server = args.rival.server.clone().unwrap_or_else(|| {
        let port = if args.target == System::Ejabberd {
            5222
        } else {
            1883
        };
        format!("127.0.0.1:{port}")
    });
    let addr = server
        .to_socket_addrs()
        .with_context(|| format!("resolving {server}"))?
        .next()
        .context("the server address resolves to nothing")?;
    let target = Target {
        system: args.target,
        addr,
        domain: args.rival.xmpp_domain.clone(),
        prefix: args.prefix.clone().unwrap_or_else(|| "bench".into()),
        password: args.password.clone(),
        run,
        concurrency: args.setup_concurrency.max(1),
    };
    match args.mode {
        Mode::Pairs {
            users,
            rate,
            seconds,
        } => {
            let timing = Timing {
                warmup: Duration::from_secs(args.warmup_seconds),
                seconds,
                drain: Duration::from_secs(args.drain_seconds),
                body_bytes: args.body_bytes,
            };
            pairs(&target, users, rate, timing).await
        }
        Mode::Idle {
            connections,
            hold_seconds,
            gateway_pid,
            ..
        } => {
            idle(
                &target,
                connections,
                Duration::from_secs(hold_seconds),
                gateway_pid,
            )
            .await
        }
        _ => bail!(
            "--target {} runs only the pairs and idle modes",
            args.target.name()
        ),
    }
}

impl Target {
    /// Connects and logs in connection `index`.
    async fn open(&self, index: usize) -> anyhow::Result<Peer> {
        let opened = async {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connecting to {}", self.addr))?;
            stream.set_nodelay(true)?;
            match self.system {
                System::Ejabberd => {
                    let account = xmpp::Account {
                        domain: &self.domain,
                        prefix: &self.prefix,
                        password: &self.password,
                    };
                    xmpp::open(stream, account, index).await
                }
                System::Mqtt => mqtt::open(stream, &self.prefix, index).await,
                System::Mpim => bail!("mpim runs through the gateway's modes"),
            }
        };
        tokio::time::timeout(SETUP_TIMEOUT, opened)
            .await
            .with_context(|| format!("connection {index}: login took over {SETUP_TIMEOUT:?}"))?
            .with_context(|| format!("connection {index}"))
    }

    /// Opens connections `0..n`, `concurrency` at a time; each one's outcome, in order.
    async fn open_all(&self, n: usize) -> Vec<anyhow::Result<Peer>> {
        let mut opened: Vec<_> = (0..n).map(|_| None).collect();
        let mut logins = std::pin::pin!(
            stream::iter(0..n)
                .map(|index| async move { (index, self.open(index).await) })
                .buffer_unordered(self.concurrency)
        );
        let mut done = 0;
        while let Some((index, peer)) = logins.next().await {
            opened[index] = Some(peer);
            done += 1;
            if done % 1000 == 0 {
                eprintln!("{done} connections logged in");
            }
        }
        opened
            .into_iter()
            .map(|peer| peer.expect("every index answered"))
            .collect()
    }
}

/// The timing of a pairs run.
#[derive(Debug, Clone, Copy)]
struct Timing {
    warmup: Duration,
    seconds: u64,
    drain: Duration,
    body_bytes: usize,
}

async fn pairs(target: &Target, users: usize, rate: u64, timing: Timing) -> anyhow::Result<Report> {
    if users < 2 || users % 2 != 0 {
        bail!("--users must be an even number of at least 2");
    }
    if rate == 0 {
        bail!("--rate must be at least 1");
    }
    let started = Instant::now();
    let peers = target
        .open_all(users)
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let setup_time = started.elapsed();
    eprintln!(
        "setup: {users} {} users logged in in {setup_time:.1?}",
        target.system.name()
    );

    let epoch = Instant::now();
    let start = epoch + Duration::from_millis(200);
    let measure_from = start + timing.warmup;
    let measure_to = measure_from + Duration::from_secs(timing.seconds);
    // Each user sends every `period`; first sends spread over one period.
    let period = Duration::from_secs_f64(users as f64 / rate as f64);
    let shared = Shared::new(
        epoch,
        (measure_from, measure_to),
        target.run.clone(),
        timing.body_bytes,
    );
    let plans = (0..users).map(|index| Plan {
        index,
        sends: Some((
            start + period.mul_f64(index as f64 / users as f64),
            period,
            measure_to,
        )),
    });
    let running = Running::start(peers, plans, shared);
    while Instant::now() < measure_to {
        tokio::time::sleep(Duration::from_secs(1)).await;
        running.progress(started);
    }
    let drained = running.drain(timing.drain, started).await;
    let (shared, seen) = running.finish().await;
    Ok(pairs_report(
        &shared,
        &seen,
        measure_to - measure_from,
        setup_time,
        drained,
    ))
}

async fn idle(
    target: &Target,
    connections: usize,
    hold: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let rss_before = server_pid.map(rss_kib).transpose()?;
    let started = Instant::now();
    let mut peers = Vec::new();
    let mut failed = 0u64;
    for opened in target.open_all(connections).await {
        match opened {
            Ok(peer) => peers.push(peer),
            Err(err) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("{err:#}");
                }
            }
        }
    }
    let opened = peers.len() as u64;
    let epoch = Instant::now();
    let shared = Shared::new(epoch, (epoch, epoch), target.run.clone(), 0);
    let plans = (0..peers.len()).map(|index| Plan { index, sends: None });
    let running = Running::start(peers, plans, shared);
    eprintln!(
        "{opened} connections open after {:.1?}; holding {hold:?}",
        started.elapsed()
    );
    let settle = Duration::from_secs(2).min(hold);
    tokio::time::sleep(settle).await;
    let rss_after = server_pid.map(rss_kib).transpose()?;
    tokio::time::sleep(hold - settle).await;
    let (shared, _) = running.finish().await;
    let broken = shared.counters.broken.load(Ordering::Relaxed);
    Ok(idle_report(
        opened.saturating_sub(broken),
        opened,
        failed,
        rss_before.zip(rss_after),
    ))
}

/// A load in progress: a task per connection, and the switch that stops them.
struct Running {
    shared: Arc<Shared>,
    tasks: JoinSet<(usize, Seen)>,
    stop: watch::Sender<bool>,
    connections: usize,
}

impl Running {
    fn start(peers: Vec<Peer>, plans: impl Iterator<Item = Plan>, shared: Shared) -> Running {
        let shared = Arc::new(shared);
        let (stop, stopped) = watch::channel(false);
        let connections = peers.len();
        let mut tasks = JoinSet::new();
        for (peer, plan) in peers.into_iter().zip(plans) {
            let shared = shared.clone();
            let stopped = stopped.clone();
            tasks.spawn(
                async move { (plan.index, peer::drive(peer, plan, &shared, stopped).await) },
            );
        }
        Running {
            shared,
            tasks,
            stop,
            connections,
        }
    }

    /// Waits (at most `drain`) for every ack and every owed delivery; whether all came.
    async fn drain(&self, drain: Duration, started: Instant) -> bool {
        let deadline = Instant::now() + drain;
        let mut next_line = Instant::now() + Duration::from_secs(1);
        loop {
            let settled = self.shared.counters.settled();
            if settled || Instant::now() >= deadline {
                return settled;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if Instant::now() >= next_line {
                next_line += Duration::from_secs(1);
                self.progress(started);
            }
        }
    }

    /// Stops every connection; what each saw.
    async fn finish(mut self) -> (Arc<Shared>, Vec<Seen>) {
        let _ = self.stop.send(true);
        let mut seen = vec![Seen::default(); self.connections];
        while let Some(joined) = self.tasks.join_next().await {
            let (index, view) = joined.expect("connection tasks do not panic");
            seen[index] = view;
        }
        (self.shared, seen)
    }

    /// The progress line on stderr.
    fn progress(&self, started: Instant) {
        let c = &self.shared.counters;
        eprintln!(
            "{:>4.0}s sent={} acked={} failed={} delivered={}/{} broken={}",
            started.elapsed().as_secs_f64(),
            c.sent.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.pushed.load(Ordering::Relaxed),
            c.owed.load(Ordering::Relaxed),
            c.broken.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(line: &str) -> Args {
        Args::try_parse_from(line.split_whitespace()).unwrap()
    }

    #[test]
    fn the_target_and_its_server_are_global_options() {
        let args = parse("im-bench pairs --users 4");
        assert_eq!(
            (args.target, args.rival.server.as_deref()),
            (System::Mpim, None)
        );
        let args = parse("im-bench idle --target mqtt --server 127.0.0.1:1884 --server-pid 7");
        assert_eq!(args.target, System::Mqtt);
        assert_eq!(args.rival.server.as_deref(), Some("127.0.0.1:1884"));
        assert!(matches!(
            args.mode,
            Mode::Idle {
                gateway_pid: Some(7),
                ..
            }
        ));
        let args = parse("im-bench --target ejabberd --xmpp-domain example.net pairs");
        assert_eq!(
            (args.target.name(), args.rival.xmpp_domain.as_str()),
            ("ejabberd", "example.net")
        );
        assert!(Args::try_parse_from(["im-bench", "--target", "irc", "pairs"]).is_err());
    }

    #[tokio::test]
    async fn other_modes_are_refused() {
        let args = parse("im-bench --target mqtt group --members 3");
        let err = run(&args, "r".into()).await.unwrap_err();
        assert!(err.to_string().contains("pairs and idle"), "{err}");
    }
}
