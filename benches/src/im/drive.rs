//! The load itself: one task per connection that sends on its schedule, reads acks and
//! pushes, and keeps what it saw for the verdict.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use im_proto::client::request::Command;
use im_proto::client::{Ping, Request, ServerMessage};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::watch;
use tokio::time::{MissedTickBehavior, interval_at};

use super::setup::Session;
use super::tally::Seen;
use super::wire::{self, Frame, Outgoing, Target};

/// How often an otherwise quiet connection pings (the gateway closes one idle for 90 s).
pub const PING_EVERY: Duration = Duration::from_secs(30);

/// Latency samples a task keeps before adding them to the shared histogram.
const SAMPLES: usize = 128;

/// How long a send refused as retryable (over the rate limit) waits before it goes again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// Counters every connection adds to; read by the progress line and the report.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sends written, whole run.
    pub sent: AtomicU64,
    /// Sends acknowledged, whole run.
    pub acked: AtomicU64,
    /// Sends refused for good (or whose connection failed), whole run.
    pub failed: AtomicU64,
    /// Sends refused as retryable (over the rate limit) and sent again.
    pub retried: AtomicU64,
    /// Pushes owed: each ack times the recipients of its message.
    pub owed: AtomicU64,
    /// Pushes that were the first of their seq on their connection, whole run.
    pub pushed: AtomicU64,
    /// Sends due inside the measured window.
    pub sent_measured: AtomicU64,
    /// Of those, acknowledged.
    pub acked_measured: AtomicU64,
    /// Of those, first pushes to a recipient.
    pub delivered_measured: AtomicU64,
    /// First pushes (of any message) that arrived inside the measured window.
    pub arrived_in_window: AtomicU64,
    /// When the last first push arrived, ns since the epoch.
    pub last_arrival_ns: AtomicU64,
    /// Senders still sending.
    pub senders: AtomicU64,
    /// Connections that failed during the load.
    pub broken: AtomicU64,
    /// The longest send→receive latency since the progress line last took it, µs.
    pub window_max_us: AtomicU64,
}

impl Counters {
    /// Whether every send was answered and every owed push arrived.
    pub fn settled(&self) -> bool {
        let answered = self.acked.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        answered >= self.sent.load(Ordering::Relaxed)
            && self.pushed.load(Ordering::Relaxed) >= self.owed.load(Ordering::Relaxed)
    }
}

/// What every connection task shares.
#[derive(Debug)]
pub struct Shared {
    /// Time 0 of every stamp.
    pub epoch: Instant,
    /// Start of the measured window, ns since the epoch.
    pub measure_from_ns: u64,
    /// End of the measured window (and of timed sending), ns since the epoch.
    pub measure_to_ns: u64,
    /// Unique per run: the start of every client_msg_id.
    pub run: String,
    /// Bytes every body is padded to.
    pub body_bytes: usize,
    /// The counters.
    pub counters: Counters,
    /// Send→receive latency of measured messages, µs.
    pub latency: Mutex<Histogram<u64>>,
    /// Send→ack latency of measured messages, µs.
    pub ack_latency: Mutex<Histogram<u64>>,
    /// The first refusal or failure, for the report.
    pub first_error: Mutex<Option<String>>,
}

impl Shared {
    /// Shared state for a run whose measured window is `[measure_from, measure_to)`.
    pub fn new(
        epoch: Instant,
        window: (Instant, Instant),
        run: String,
        body_bytes: usize,
    ) -> Shared {
        let ns = |at: Instant| at.saturating_duration_since(epoch).as_nanos() as u64;
        let histogram =
            || Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid");
        Shared {
            epoch,
            measure_from_ns: ns(window.0),
            measure_to_ns: ns(window.1),
            run,
            body_bytes,
            counters: Counters::default(),
            latency: Mutex::new(histogram()),
            ack_latency: Mutex::new(histogram()),
            first_error: Mutex::new(None),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn measured(&self, stamp_ns: u64) -> bool {
        (self.measure_from_ns..self.measure_to_ns).contains(&stamp_ns)
    }

    fn note_error(&self, error: impl FnOnce() -> String) {
        // A short critical section with no await: parking_lot's mutex is right here.
        let mut first = self.first_error.lock();
        if first.is_none() {
            *first = Some(error());
        }
    }
}

/// When a connection sends.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Never: it only receives.
    Quiet,
    /// One message every `period` from `first`, until `until` or `quota` messages.
    Rate {
        /// Due time of the first message.
        first: Instant,
        /// Time between messages.
        period: Duration,
        /// No message is due at or after this.
        until: Instant,
        /// Most messages to send.
        quota: u64,
    },
    /// `quota` messages from `first`, with at most `window` unacknowledged at a time.
    Window {
        /// When to start.
        first: Instant,
        /// Messages to send.
        quota: u64,
        /// Most in flight.
        window: usize,
    },
}

/// What one connection does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Its number in the run (part of its client_msg_ids).
    pub index: usize,
    /// Where its messages go.
    pub target: Target,
    /// Its conversation's id.
    pub conversation: Vec<u8>,
    /// Connections each of its messages is pushed to.
    pub recipients: u64,
    /// When it sends.
    pub schedule: Schedule,
}

/// A connection's latency samples on their way to a shared histogram.
struct Samples<'a> {
    into: &'a Mutex<Histogram<u64>>,
    buffer: Vec<u64>,
}

impl Samples<'_> {
    fn record(&mut self, us: u64) {
        self.buffer.push(us.max(1));
        if self.buffer.len() == SAMPLES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        // No await while held: parking_lot's mutex is right here.
        let mut histogram = self.into.lock();
        for &us in &self.buffer {
            histogram.saturating_record(us);
        }
        self.buffer.clear();
    }
}

/// Runs one connection until `stop` turns true (or the connection fails); what it saw.
pub async fn run(
    mut session: Session,
    plan: Plan,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    if let Schedule::Window { first, .. } = plan.schedule {
        // Nothing is pushed before anyone sends, so there is nothing to read meanwhile.
        tokio::time::sleep_until(first.into()).await;
    }
    let mut conn = Conn {
        seen: Seen::default(),
        in_flight: HashMap::new(),
        retry: Vec::new(),
        retry_at: Instant::now(),
        latency: Samples {
            into: &shared.latency,
            buffer: Vec::new(),
        },
        ack_latency: Samples {
            into: &shared.ack_latency,
            buffer: Vec::new(),
        },
        user_id: session.user_id,
        plan: &plan,
        shared,
    };
    let mut out = Outgoing::new(plan.target, shared.body_bytes);
    let (first, period, until, quota, window) = match plan.schedule {
        Schedule::Quiet => (None, PING_EVERY, None, 0, 0),
        Schedule::Rate {
            first,
            period,
            until,
            quota,
        } => (Some(first), period, Some(until), quota, usize::MAX),
        Schedule::Window { quota, window, .. } => (None, PING_EVERY, None, quota, window),
    };
    let mut sending = quota > 0;
    let mut sent = 0u64;
    // Burst: a tick missed while the runtime was busy is sent late rather than dropped, and
    // its stamp stays the time it was due, so lateness shows as latency.
    let mut ticker = interval_at(first.unwrap_or_else(Instant::now).into(), period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let jitter = Duration::from_millis((plan.index as u64 * 7919) % 10_000);
    let mut ping = interval_at(
        (Instant::now() + PING_EVERY / 2 + jitter).into(),
        PING_EVERY,
    );
    loop {
        if sending && first.is_none() {
            while conn.in_flight.len() + conn.retry.len() < window && sent < quota {
                let stamp = shared.now_ns();
                conn.send(&mut session, &mut out, (sent, stamp), true);
                sent += 1;
            }
        }
        if sending && sent >= quota {
            sending = false;
            shared.counters.senders.fetch_sub(1, Ordering::Relaxed);
        }
        tokio::select! {
            read = session.link.io() => {
                if let Err(err) = read {
                    shared.counters.broken.fetch_add(1, Ordering::Relaxed);
                    shared.note_error(|| format!("connection {} failed: {err}", plan.index));
                    break;
                }
                if let Err(err) = conn.read_frames(&mut session) {
                    shared.note_error(|| format!("connection {}: {err:#}", plan.index));
                    break;
                }
            }
            due = ticker.tick(), if sending && first.is_some() => {
                let due: Instant = due.into();
                if until.is_some_and(|until| due >= until) {
                    sent = quota;
                    continue;
                }
                let stamp = due.saturating_duration_since(shared.epoch).as_nanos() as u64;
                conn.send(&mut session, &mut out, (sent, stamp), true);
                sent += 1;
            }
            _ = tokio::time::sleep_until(conn.retry_at.into()), if !conn.retry.is_empty() => {
                for again in std::mem::take(&mut conn.retry) {
                    conn.send(&mut session, &mut out, again, false);
                }
            }
            _ = ping.tick() => {
                let id = session.next_id();
                session.link.queue(&Request { id, command: Some(Command::Ping(Ping {})) });
            }
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    if sending {
        shared.counters.senders.fetch_sub(1, Ordering::Relaxed);
    }
    let unanswered = (conn.in_flight.len() + conn.retry.len()) as u64;
    shared
        .counters
        .failed
        .fetch_add(unanswered, Ordering::Relaxed);
    conn.latency.flush();
    conn.ack_latency.flush();
    conn.seen
}

/// One connection's state during the load.
struct Conn<'a> {
    seen: Seen,
    /// Request id → the number and stamp of the send awaiting its ack.
    in_flight: HashMap<u64, (u64, u64)>,
    /// Sends to make again (number, stamp), at `retry_at`.
    retry: Vec<(u64, u64)>,
    retry_at: Instant,
    latency: Samples<'a>,
    ack_latency: Samples<'a>,
    user_id: u64,
    plan: &'a Plan,
    shared: &'a Shared,
}

impl Conn<'_> {
    /// Sends message `n` stamped `stamp_ns`; `fresh` unless it is a retry (same
    /// client_msg_id, same stamp, so the wait shows in its latency).
    fn send(
        &mut self,
        session: &mut Session,
        out: &mut Outgoing,
        (n, stamp_ns): (u64, u64),
        fresh: bool,
    ) {
        let id = session.next_id();
        let request = out.next(id, &self.shared.run, self.plan.index, n, stamp_ns);
        session.link.queue(request);
        self.in_flight.insert(id, (n, stamp_ns));
        if !fresh {
            return;
        }
        let counters = &self.shared.counters;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        if self.shared.measured(stamp_ns) {
            counters.sent_measured.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn read_frames(&mut self, session: &mut Session) -> anyhow::Result<()> {
        while let Some(frame) = session.link.next_frame()? {
            match wire::read(&frame)? {
                Frame::Ack { id, seq, .. } => self.acked(id, seq),
                Frame::Failed { id } => self.failed(id, &frame),
                Frame::Message {
                    conversation,
                    seq,
                    sender_id,
                    body,
                    ..
                } if conversation == self.plan.conversation.as_slice() => {
                    self.pushed(seq, sender_id, body);
                }
                Frame::Message { .. } | Frame::Other { .. } => {}
            }
        }
        Ok(())
    }

    fn acked(&mut self, id: u64, seq: u64) {
        let Some((_, stamp)) = self.in_flight.remove(&id) else {
            return;
        };
        let counters = &self.shared.counters;
        self.seen.acked.insert(seq);
        counters.acked.fetch_add(1, Ordering::Relaxed);
        counters
            .owed
            .fetch_add(self.plan.recipients, Ordering::Relaxed);
        if self.shared.measured(stamp) {
            counters.acked_measured.fetch_add(1, Ordering::Relaxed);
            let now = self.shared.now_ns();
            self.ack_latency.record(now.saturating_sub(stamp) / 1000);
        }
    }

    fn failed(&mut self, id: u64, frame: &[u8]) {
        let Some(send) = self.in_flight.remove(&id) else {
            return;
        };
        let error = ServerMessage::decode(frame)
            .ok()
            .and_then(|reply| reply.error);
        let counters = &self.shared.counters;
        if error.as_ref().is_some_and(|error| error.retryable) {
            if self.retry.is_empty() {
                self.retry_at = Instant::now() + RETRY_AFTER;
            }
            self.retry.push(send);
            counters.retried.fetch_add(1, Ordering::Relaxed);
            return;
        }
        counters.failed.fetch_add(1, Ordering::Relaxed);
        self.shared.note_error(|| match error {
            Some(error) => format!("send refused: {} {}", error.code, error.message),
            None => "send refused".into(),
        });
    }

    fn pushed(&mut self, seq: u64, sender_id: u64, body: &[u8]) {
        if !self.seen.push(seq, sender_id == self.user_id) {
            return;
        }
        let shared = self.shared;
        let counters = &shared.counters;
        let now = shared.now_ns();
        counters.pushed.fetch_add(1, Ordering::Relaxed);
        counters.last_arrival_ns.fetch_max(now, Ordering::Relaxed);
        if shared.measured(now) {
            counters.arrived_in_window.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(stamp) = wire::read_stamp(body).filter(|&stamp| shared.measured(stamp)) {
            counters.delivered_measured.fetch_add(1, Ordering::Relaxed);
            let us = now.saturating_sub(stamp) / 1000;
            self.latency.record(us);
            counters.window_max_us.fetch_max(us, Ordering::Relaxed);
        }
    }
}
