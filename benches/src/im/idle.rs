//! `idle`: many authenticated connections that only ping, and what they cost the gateway in
//! resident memory.
//!
//! A process may hold only so many open files (`ulimit -Hn`), so with `--processes K` the
//! bench runs K copies of itself as workers, each holding a slice of the connections. A
//! worker prints `READY opened=<n> failed=<n>` once its connections are up, holds them until
//! its standard input says `STOP` (or closes), then prints `DONE alive=<n>`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, stream};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::drive::{self, Plan, Schedule, Shared};
use super::setup::{Auth, Session, Setup};
use super::tally::Report;
use super::wire::Target;

/// Connections held open, each pinging on its own.
pub struct Held {
    /// Connections that logged in.
    pub opened: u64,
    /// Connections that did not.
    pub failed: u64,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
}

impl Held {
    /// Stops holding; how many connections were still open.
    pub async fn release(mut self) -> u64 {
        let broken = self.shared.counters.broken.load(Ordering::Relaxed);
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.opened.saturating_sub(broken)
    }
}

/// Opens `connections` connections for `connections / per_user` users (rounded up): the
/// first device of each user registers and logs in with the password (the slow, hashed
/// path), the others log in with its token.
pub async fn hold(setup: &Setup, connections: usize, per_user: usize) -> Held {
    let per_user = per_user.max(1);
    let epoch = Instant::now();
    let shared = Arc::new(Shared::new(epoch, (epoch, epoch), setup.prefix.clone(), 0));
    let (stop, stopped) = watch::channel(false);
    let mut held = Held {
        opened: 0,
        failed: 0,
        shared,
        tasks: JoinSet::new(),
        stop,
    };
    let users = connections.div_ceil(per_user);
    let mut tokens = vec![None; users];
    let first_devices = stream::iter(0..users)
        .map(|user| async move { (user, setup.open(user * per_user, Auth::New(user)).await) })
        .buffer_unordered(setup.concurrency.max(1));
    let mut first_devices = std::pin::pin!(first_devices);
    while let Some((user, opened)) = first_devices.next().await {
        if let Ok(session) = &opened {
            tokens[user] = Some(session.token.clone());
        }
        held.keep(user * per_user, opened, &stopped);
    }
    let others = (0..connections).filter(|index| index % per_user != 0);
    let others = stream::iter(others)
        .map(|index| {
            let token = tokens[index / per_user].clone();
            async move {
                let opened = match token {
                    Some(token) => setup.open(index, Auth::Token(token)).await,
                    None => Err(anyhow::anyhow!("the user's first device did not log in")),
                };
                (index, opened)
            }
        })
        .buffer_unordered(setup.concurrency.max(1));
    let mut others = std::pin::pin!(others);
    while let Some((index, opened)) = others.next().await {
        held.keep(index, opened, &stopped);
    }
    held
}

impl Held {
    fn keep(
        &mut self,
        index: usize,
        opened: anyhow::Result<Session>,
        stopped: &watch::Receiver<bool>,
    ) {
        let session = match opened {
            Ok(session) => session,
            Err(err) => {
                self.failed += 1;
                if self.failed <= 3 {
                    eprintln!("connection {index}: {err:#}");
                }
                return;
            }
        };
        self.opened += 1;
        let plan = Plan {
            index,
            target: Target::User(0),
            conversation: Vec::new(),
            recipients: 0,
            schedule: Schedule::Quiet,
        };
        let shared = self.shared.clone();
        let stopped = stopped.clone();
        self.tasks.spawn(async move {
            drive::run(session, plan, &shared, stopped).await;
        });
        if (self.opened + self.failed) % 1000 == 0 {
            eprintln!("{} connections open, {} failed", self.opened, self.failed);
        }
    }
}

/// A worker's life: hold, say READY, wait for STOP, say DONE.
///
/// # Errors
/// When stdout cannot be written.
pub async fn worker(setup: &Setup, connections: usize, per_user: usize) -> anyhow::Result<()> {
    let held = hold(setup, connections, per_user).await;
    let mut stdout = tokio::io::stdout();
    let ready = format!("READY opened={} failed={}\n", held.opened, held.failed);
    stdout.write_all(ready.as_bytes()).await?;
    stdout.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "STOP" {
            break;
        }
    }
    let alive = held.release().await;
    stdout
        .write_all(format!("DONE alive={alive}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    Ok(())
}

/// What the parent of an idle run needs to know.
#[derive(Debug, Clone)]
pub struct IdleRun {
    /// Connections in all.
    pub connections: usize,
    /// Connections per user.
    pub per_user: usize,
    /// How long to hold them after all are open.
    pub hold: Duration,
    /// The gateway's pid, to read its resident memory.
    pub gateway_pid: Option<u32>,
    /// Worker processes (1: this process holds them all).
    pub processes: usize,
}

/// Runs an idle test; `worker_args(k, n)` are the arguments of worker `k` holding `n`
/// connections.
///
/// # Errors
/// When a worker fails to start or dies.
pub async fn idle(
    setup: &Setup,
    run: &IdleRun,
    worker_args: impl Fn(usize, usize) -> Vec<String>,
) -> anyhow::Result<Report> {
    let rss_before = run.gateway_pid.map(rss_kib).transpose()?;
    let started = Instant::now();
    let (opened, failed, alive) = if run.processes <= 1 {
        let held = hold(setup, run.connections, run.per_user).await;
        let (opened, failed) = (held.opened, held.failed);
        let rss_after = settle_and_hold(run, started, opened).await?;
        (opened, failed, (held.release().await, rss_after))
    } else {
        let mut workers = Vec::new();
        for k in 0..run.processes {
            let share =
                run.connections / run.processes + usize::from(k < run.connections % run.processes);
            workers.push(Worker::spawn(&worker_args(k, share))?);
        }
        let (mut opened, mut failed) = (0, 0);
        for worker in &mut workers {
            let ready = worker.line("READY").await?;
            opened += field(&ready, "opened")?;
            failed += field(&ready, "failed")?;
        }
        let rss_after = settle_and_hold(run, started, opened).await?;
        let mut alive = 0;
        for worker in &mut workers {
            alive += worker.stop().await?;
        }
        (opened, failed, (alive, rss_after))
    };
    let (alive, rss_after) = alive;
    Ok(idle_report(
        alive,
        opened,
        failed,
        rss_before.zip(rss_after),
    ))
}

/// The report of an idle run: `alive` of `opened` connections held (`failed` never
/// opened), and the server's resident memory before and after them, KiB.
pub(crate) fn idle_report(alive: u64, opened: u64, failed: u64, rss: Option<(u64, u64)>) -> Report {
    let mut report = Report {
        connections: alive,
        ..Report::default()
    };
    report.extra.push(("opened", opened.to_string()));
    report.extra.push(("failed", failed.to_string()));
    if let Some((before, after)) = rss {
        let per = (after.saturating_sub(before) * 1024) / opened.max(1);
        report.extra.push(("rss_before_kib", before.to_string()));
        report.extra.push(("rss_after_kib", after.to_string()));
        report.extra.push(("bytes_per_conn", per.to_string()));
    }
    report
}

/// Lets the gateway settle, reads its memory, and holds for the rest of `run.hold`.
async fn settle_and_hold(
    run: &IdleRun,
    started: Instant,
    opened: u64,
) -> anyhow::Result<Option<u64>> {
    eprintln!(
        "{opened} connections open after {:.1?}; holding {:?}",
        started.elapsed(),
        run.hold
    );
    let settle = Duration::from_secs(2).min(run.hold);
    tokio::time::sleep(settle).await;
    let rss = run.gateway_pid.map(rss_kib).transpose()?;
    if let Some(rss) = rss {
        eprintln!("gateway VmRSS {rss} KiB");
    }
    tokio::time::sleep(run.hold - settle).await;
    Ok(rss)
}

/// A worker process and its pipes.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    fn spawn(args: &[String]) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("finding this program to run workers")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    /// The worker's next line, which must start with `word`.
    async fn line(&mut self, word: &str) -> anyhow::Result<String> {
        match self.stdout.next_line().await? {
            Some(line) if line.starts_with(word) => Ok(line),
            Some(line) => bail!("worker said {line:?} instead of {word}"),
            None => bail!(
                "worker exited before {word}: {:?}",
                self.child.wait().await?
            ),
        }
    }

    async fn stop(&mut self) -> anyhow::Result<u64> {
        self.stdin.write_all(b"STOP\n").await?;
        self.stdin.flush().await?;
        let done = self.line("DONE").await?;
        self.child.wait().await?;
        field(&done, "alive")
    }
}

/// The value of `name=<n>` in a worker's line.
fn field(line: &str, name: &str) -> anyhow::Result<u64> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .with_context(|| format!("no {name}= in {line:?}"))?
        .parse()
        .with_context(|| format!("{name} in {line:?}"))
}

/// The resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
///
/// # Errors
/// When the process does not exist or the file has no `VmRSS`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the memory of process {pid}"))?;
    parse_rss(&status).with_context(|| format!("no VmRSS for process {pid}"))
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vmrss_in_kib() {
        let status = "Name:\tmpim\nVmPeak:\t  9000 kB\nVmRSS:\t   52344 kB\nThreads:\t4\n";
        assert_eq!(parse_rss(status), Some(52_344));
        assert_eq!(parse_rss("Name:\tx\n"), None);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn reads_a_workers_fields() {
        assert_eq!(field("READY opened=12 failed=3", "opened").unwrap(), 12);
        assert_eq!(field("READY opened=12 failed=3", "failed").unwrap(), 3);
        assert!(field("READY opened=12", "failed").is_err());
        assert!(field("DONE alive=x", "alive").is_err());
    }
}
