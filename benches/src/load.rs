//! The closed-loop load every system runs: `concurrency` tasks, each sending its next call as
//! soon as the previous one returns, for a warm-up and then a measured window.

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// What every system is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Calls in flight at once, one task each.
    pub concurrency: usize,
    /// Time before measuring starts: connections open, buffers and caches warm up.
    pub warmup: Duration,
    /// The measured window.
    pub measure: Duration,
    /// Bytes echoed per call.
    pub payload_len: usize,
}

impl Load {
    /// The payload every call sends; systems wrap it in their own request type.
    pub fn payload(&self) -> bytes::Bytes {
        vec![0x5a; self.payload_len].into()
    }
}

/// One task's way of making an echo call.
pub trait Caller: Send + 'static {
    /// Sends the payload and checks that the same bytes came back.
    fn echo(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What a run measured in its window.
#[derive(Debug)]
pub struct Stats {
    /// Calls that completed successfully inside the window.
    pub calls: u64,
    /// Calls that failed inside the window.
    pub errors: u64,
    /// The window's length.
    pub window: Duration,
    /// Latency of the successful calls, in microseconds.
    pub latency: Histogram<u64>,
    /// The first failure, so that a broken setup shows why rather than only how often.
    pub first_error: Option<anyhow::Error>,
}

impl Stats {
    fn empty(window: Duration) -> Stats {
        Stats {
            calls: 0,
            errors: 0,
            window,
            // Up to 60 s at 3 significant digits; slower calls are clamped, not lost.
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid"),
            first_error: None,
        }
    }

    /// Successful calls per second of the window.
    pub fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.window.as_secs_f64()
    }

    /// Median latency in microseconds.
    pub fn p50_us(&self) -> u64 {
        self.latency.value_at_quantile(0.5)
    }

    /// 99th percentile latency in microseconds.
    pub fn p99_us(&self) -> u64 {
        self.latency.value_at_quantile(0.99)
    }

    /// Slowest call in microseconds.
    pub fn max_us(&self) -> u64 {
        self.latency.max()
    }
}

/// Runs `load` with one caller per task, made by `caller(i)` for task `i`.
///
/// A call counts when it completes inside the window, whenever it was sent, so the count
/// divided by the window is the completion rate the system sustains.
pub async fn drive<C: Caller>(load: &Load, mut caller: impl FnMut(usize) -> C) -> Stats {
    let measure_from = Instant::now() + load.warmup;
    let end = measure_from + load.measure;
    let mut tasks = JoinSet::new();
    for i in 0..load.concurrency.max(1) {
        tasks.spawn(call_until(caller(i), measure_from, end));
    }
    let mut total = Stats::empty(load.measure);
    while let Some(joined) = tasks.join_next().await {
        let stats = joined.expect("load tasks do not panic");
        total.calls += stats.calls;
        total.errors += stats.errors;
        total
            .latency
            .add(&stats.latency)
            .expect("histograms share their bounds");
        total.first_error = total.first_error.or(stats.first_error);
    }
    total
}

/// One task of [`drive`]: calls back to back until `end`, recording those that complete
/// after `measure_from`.
async fn call_until(mut caller: impl Caller, measure_from: Instant, end: Instant) -> Stats {
    let mut stats = Stats::empty(end - measure_from);
    loop {
        let sent = Instant::now();
        let result = caller.echo().await;
        let done = Instant::now();
        if done >= end {
            return stats;
        }
        if done < measure_from {
            continue;
        }
        match result {
            Ok(()) => {
                stats.calls += 1;
                let us = (done - sent).as_micros();
                stats
                    .latency
                    .saturating_record(us.try_into().unwrap_or(u64::MAX));
            }
            Err(err) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(err);
            }
        }
    }
}

/// An in-process server task and the switch that stops it.
pub struct ServerTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl ServerTask {
    /// Spawns `serve`, handing it the future that completes when [`ServerTask::stop`] is
    /// called.
    pub fn spawn<F, Fut>(serve: F) -> ServerTask
    where
        F: FnOnce(futures::future::BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(Box::pin(async {
            let _ = stopped.await;
        })));
        ServerTask { stop, task }
    }

    /// Stops the server and waits for it, so the next run starts on a quiet machine.
    ///
    /// # Errors
    /// What the server returned, or a timeout when it did not stop within 5 s.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(joined) => joined?,
            Err(_) => anyhow::bail!("server did not stop within 5 s"),
        }
    }
}
