//! The `pairs` and `group` runs: set up, load, drain, verdict, report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::drive::{self, Plan, Schedule, Shared};
use super::setup::{self, Session, Setup};
use super::tally::{self, Report, Seen};
use super::wire::Target;

/// A day: "no end" for a window that ends when the messages run out.
const OPEN_ENDED: Duration = Duration::from_secs(86_400);

/// Options every load run shares.
#[derive(Debug, Clone)]
pub struct Load {
    /// Connection setup.
    pub setup: Setup,
    /// Seconds of load before the measured window (pairs).
    pub warmup: Duration,
    /// Most time to wait, after sending stops, for every ack and push.
    pub drain: Duration,
    /// Bytes every body is padded to.
    pub body_bytes: usize,
}

/// `pairs`: `users` users in friend pairs, sending 1:1 at `rate` messages per second in
/// total for `seconds` after the warm-up.
///
/// # Errors
/// When setup fails.
pub async fn pairs(load: &Load, users: usize, rate: u64, seconds: u64) -> anyhow::Result<Report> {
    if users < 2 || users % 2 != 0 {
        bail!("--users must be an even number of at least 2");
    }
    if rate == 0 {
        bail!("--rate must be at least 1");
    }
    let started = Instant::now();
    let mut sessions = load.setup.open_users(users).await?;
    setup::befriend_pairs(&mut sessions, load.setup.concurrency).await?;
    setup::keepalive(&mut sessions, load.setup.concurrency).await?;
    let setup_time = started.elapsed();
    eprintln!("setup: {users} users logged in and paired in {setup_time:.1?}");

    let epoch = Instant::now();
    let start = epoch + Duration::from_millis(200);
    let measure_from = start + load.warmup;
    let measure_to = measure_from + Duration::from_secs(seconds);
    // Each user sends every `period`; their first sends are spread over one period so that
    // the total is even rather than in bursts.
    let period = Duration::from_secs_f64(users as f64 / rate as f64);
    let plans = (0..users)
        .map(|index| {
            let partner = &sessions[index ^ 1];
            let me = &sessions[index];
            let (low, high) = (
                me.user_id.min(partner.user_id),
                me.user_id.max(partner.user_id),
            );
            Plan {
                index,
                target: Target::User(partner.user_id),
                conversation: format!("d:{low}:{high}").into_bytes(),
                recipients: 1,
                schedule: Schedule::Rate {
                    first: start + period.mul_f64(index as f64 / users as f64),
                    period,
                    until: measure_to,
                    quota: u64::MAX,
                },
            }
        })
        .collect::<Vec<_>>();
    let shared = Shared::new(
        epoch,
        (measure_from, measure_to),
        load.setup.prefix.clone(),
        load.body_bytes,
    );
    let run = Run::start(sessions, plans, shared);
    run.wait_sending(measure_to).await;
    let (shared, seen, drained) = run.finish(load.drain).await;
    Ok(pairs_report(
        &shared,
        &seen,
        measure_to - measure_from,
        setup_time,
        drained,
    ))
}

/// The report of a `pairs` run, whichever system it ran against: connection `2k` and
/// `2k + 1` were partners, `window` the measured time.
pub(crate) fn pairs_report(
    shared: &Shared,
    seen: &[Seen],
    window: Duration,
    setup_time: Duration,
    drained: bool,
) -> Report {
    let members = (0..seen.len() / 2)
        .map(|pair| vec![2 * pair, 2 * pair + 1])
        .collect::<Vec<_>>();
    let arrived = shared.counters.arrived_in_window.load(Ordering::Relaxed);
    let mut report = report(
        shared,
        seen,
        &members,
        arrived as f64 / window.as_secs_f64(),
    );
    report
        .extra
        .push(("setup_s", format!("{:.1}", setup_time.as_secs_f64())));
    report.extra.push(("drained", drained.to_string()));
    report
}

/// The options of a `group` run.
#[derive(Debug, Clone, Copy)]
pub struct GroupRun {
    /// Members, the senders among them, all online.
    pub members: usize,
    /// Messages sent in all.
    pub messages: u64,
    /// Messages per second in all; `None`: as fast as `window` allows.
    pub rate: Option<u64>,
    /// Members that send.
    pub senders: usize,
    /// Unacknowledged messages per sender without a rate.
    pub window: usize,
}

/// `group`: one group of `members` users, all online; `senders` of them send `messages`
/// in all; every member counts what it is pushed.
///
/// # Errors
/// When setup fails.
pub async fn group(load: &Load, run: GroupRun) -> anyhow::Result<Report> {
    if run.members < 2 || run.senders == 0 || run.senders > run.members {
        bail!("--members must be at least 2 and --senders between 1 and --members");
    }
    let started = Instant::now();
    let mut sessions = load.setup.open_users(run.members).await?;
    let ids = sessions[1..].iter().map(|s| s.user_id).collect::<Vec<_>>();
    let name = format!("{}-group", load.setup.prefix);
    let group_id = setup::create_group(&mut sessions[0], &name, &ids).await?;
    setup::keepalive(&mut sessions, load.setup.concurrency).await?;
    let setup_time = started.elapsed();
    eprintln!(
        "setup: {} members logged in, group {group_id} in {setup_time:.1?}",
        run.members
    );

    let epoch = Instant::now();
    let start = epoch + Duration::from_millis(200);
    let conversation = format!("g:{group_id}").into_bytes();
    let plans = (0..run.members)
        .map(|index| {
            let sender = index < run.senders;
            let quota = if sender {
                let senders = run.senders as u64;
                run.messages / senders + u64::from((index as u64) < run.messages % senders)
            } else {
                0
            };
            let schedule = match run.rate {
                _ if quota == 0 => Schedule::Quiet,
                Some(rate) => {
                    let period = Duration::from_secs_f64(run.senders as f64 / rate.max(1) as f64);
                    Schedule::Rate {
                        first: start + period.mul_f64(index as f64 / run.senders as f64),
                        period,
                        until: start + OPEN_ENDED,
                        quota,
                    }
                }
                None => Schedule::Window {
                    first: start,
                    quota,
                    window: run.window.max(1),
                },
            };
            Plan {
                index,
                target: Target::Group(group_id),
                conversation: conversation.clone(),
                recipients: run.members as u64 - 1,
                schedule,
            }
        })
        .collect::<Vec<_>>();
    let shared = Shared::new(
        epoch,
        (epoch, start + OPEN_ENDED),
        load.setup.prefix.clone(),
        load.body_bytes,
    );
    let running = Run::start(sessions, plans, shared);
    running.wait_sending(start + OPEN_ENDED).await;
    let (shared, seen, drained) = running.finish(load.drain).await;
    let last = shared.counters.last_arrival_ns.load(Ordering::Relaxed);
    let span = Duration::from_nanos(last.saturating_sub((start - epoch).as_nanos() as u64));
    let pushed = shared.counters.pushed.load(Ordering::Relaxed);
    let rate = pushed as f64 / span.as_secs_f64().max(1e-3);
    let mut report = report(&shared, &seen, &[(0..run.members).collect()], rate);
    report
        .extra
        .push(("setup_s", format!("{:.1}", setup_time.as_secs_f64())));
    report.extra.push(("drained", drained.to_string()));
    Ok(report)
}

/// A load in progress: a task per connection, and the switch that stops them.
struct Run {
    shared: Arc<Shared>,
    tasks: JoinSet<(usize, Seen)>,
    stop: watch::Sender<bool>,
    connections: usize,
}

impl Run {
    fn start(sessions: Vec<Session>, plans: Vec<Plan>, shared: Shared) -> Run {
        let senders = plans
            .iter()
            .filter(|plan| !matches!(plan.schedule, Schedule::Quiet))
            .count();
        shared
            .counters
            .senders
            .store(senders as u64, Ordering::Relaxed);
        let shared = Arc::new(shared);
        let (stop, stopped) = watch::channel(false);
        let connections = sessions.len();
        let mut tasks = JoinSet::new();
        for (session, plan) in sessions.into_iter().zip(plans) {
            let shared = shared.clone();
            let stopped = stopped.clone();
            tasks.spawn(async move {
                let index = plan.index;
                (index, drive::run(session, plan, &shared, stopped).await)
            });
        }
        Run {
            shared,
            tasks,
            stop,
            connections,
        }
    }

    /// Prints progress every second until every sender is done (or `until`).
    async fn wait_sending(&self, until: Instant) {
        let mut progress = Progress::new(&self.shared);
        while self.shared.counters.senders.load(Ordering::Relaxed) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            progress.maybe_print(&self.shared);
        }
    }

    /// Waits (at most `drain`) for every ack and every owed push, stops the connections and
    /// collects what each saw; whether everything came in before the deadline.
    async fn finish(mut self, drain: Duration) -> (Arc<Shared>, Vec<Seen>, bool) {
        let deadline = Instant::now() + drain;
        let mut progress = Progress::new(&self.shared);
        let drained = loop {
            let settled = self.shared.counters.settled();
            if settled || Instant::now() >= deadline {
                break settled;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            progress.maybe_print(&self.shared);
        };
        let _ = self.stop.send(true);
        let mut seen = vec![Seen::default(); self.connections];
        while let Some(joined) = self.tasks.join_next().await {
            let (index, view) = joined.expect("connection tasks do not panic");
            seen[index] = view;
        }
        (self.shared, seen, drained)
    }
}

/// The once-a-second line on stderr.
struct Progress {
    next: Instant,
    started: Instant,
}

impl Progress {
    fn new(_shared: &Shared) -> Progress {
        let now = Instant::now();
        Progress {
            next: now + Duration::from_secs(1),
            started: now,
        }
    }

    fn maybe_print(&mut self, shared: &Shared) {
        if Instant::now() < self.next {
            return;
        }
        self.next += Duration::from_secs(1);
        let c = &shared.counters;
        eprintln!(
            "{:>4.0}s sent={} acked={} failed={} retried={} pushed={}/{} broken={} max_ms={:.1}",
            self.started.elapsed().as_secs_f64(),
            c.sent.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.retried.load(Ordering::Relaxed),
            c.pushed.load(Ordering::Relaxed),
            c.owed.load(Ordering::Relaxed),
            c.broken.load(Ordering::Relaxed),
            c.window_max_us.swap(0, Ordering::Relaxed) as f64 / 1000.0,
        );
    }
}

/// The report of a finished load.
fn report(shared: &Shared, seen: &[Seen], members: &[Vec<usize>], msgs_per_s: f64) -> Report {
    let c = &shared.counters;
    let latency = shared.latency.lock();
    let ack_latency = shared.ack_latency.lock();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut report = Report {
        connections: seen.len() as u64,
        sent: c.sent_measured.load(Ordering::Relaxed),
        acked: c.acked_measured.load(Ordering::Relaxed),
        delivered: c.delivered_measured.load(Ordering::Relaxed),
        verdict: tally::verdict(seen, members),
        p50_ms: ms(latency.value_at_quantile(0.50)),
        p99_ms: ms(latency.value_at_quantile(0.99)),
        msgs_per_s,
        extra: Vec::new(),
    };
    report.extra.extend([
        ("max_ms", format!("{:.2}", ms(latency.max()))),
        (
            "ack_p50_ms",
            format!("{:.2}", ms(ack_latency.value_at_quantile(0.50))),
        ),
        (
            "ack_p99_ms",
            format!("{:.2}", ms(ack_latency.value_at_quantile(0.99))),
        ),
        ("failed", c.failed.load(Ordering::Relaxed).to_string()),
        ("retried", c.retried.load(Ordering::Relaxed).to_string()),
        ("broken", c.broken.load(Ordering::Relaxed).to_string()),
    ]);
    if let Some(error) = shared.first_error.lock().as_ref() {
        eprintln!("first error: {error}");
    }
    report
}
