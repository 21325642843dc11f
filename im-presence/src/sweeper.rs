//! The background sweep: on a timer, removes the routes of lapsed gateways, and the
//! delivery streams of gateways dead for longer than `[presence] dead_stream_after_ms`.
//!
//! Lapsed routes are already hidden from queries; sweeping frees their storage and records
//! when their users were last seen. A gateway's stream outlives its routes so that a
//! gateway that restarts reads what was pending; one that stays silent past the dead time
//! (its host gone, its id changed) would keep its stream for ever, so the stream goes and
//! the gateway is forgotten. Every presence instance may run one: a sweep is idempotent, so
//! instances that sweep together only repeat each other's work.

use std::sync::Arc;
use std::time::Duration;

use im_common::bus::{Bus, BusResult, Routes, Streams, delivery_stream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::PresenceSettings;

/// A running sweeper; [`Sweeper::stop`] ends it, and so does dropping it.
#[derive(Debug)]
pub struct Sweeper {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

/// What one sweep does.
struct Sweep {
    routes: Arc<dyn Routes>,
    /// The streams to remove dead gateways' from, and after how long a silence.
    dead_streams: Option<(Arc<dyn Streams>, Duration)>,
}

impl Sweeper {
    /// Sweeps `routes` every `every`, first after one interval; leaves delivery streams
    /// alone.
    pub fn start(routes: Arc<dyn Routes>, every: Duration) -> Sweeper {
        let sweep = Sweep {
            routes,
            dead_streams: None,
        };
        Sweeper::spawn(sweep, every)
    }

    /// The sweeper `settings` ask for on `bus`: routes every `sweep_interval_ms`, and the
    /// streams of gateways silent for `dead_stream_after_ms` (unless 0); None when
    /// `sweep_interval_ms` is 0.
    pub fn start_configured(bus: &Bus, settings: &PresenceSettings) -> Option<Sweeper> {
        let every = settings.sweep_interval()?;
        let sweep = Sweep {
            routes: bus.routes.clone(),
            dead_streams: settings
                .dead_stream_after()
                .map(|after| (bus.streams.clone(), after)),
        };
        Some(Sweeper::spawn(sweep, every))
    }

    fn spawn(sweep: Sweep, every: Duration) -> Sweeper {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|stop| *stop) => return,
                    _ = ticks.tick() => {}
                }
                // A sweep in progress finishes before the stop is seen: it is short and
                // leaves nothing half done that the next one would not redo.
                sweep.run().await;
            }
        });
        Sweeper {
            stop,
            task: Some(task),
        }
    }

    /// Stops the sweeper and waits for its task to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Sweep {
    async fn run(&self) {
        match self.routes.sweep().await {
            Ok(0) => {}
            Ok(removed) => {
                metrics::counter!("presence_swept_routes_total").increment(removed);
                info!(removed, "swept routes of lapsed gateways");
            }
            Err(err) => warn!(cause = %err, "sweep failed"),
        }
        if let Some((streams, after)) = &self.dead_streams
            && let Err(err) = self.remove_dead_streams(streams.as_ref(), *after).await
        {
            warn!(cause = %err, "removing dead gateways' streams failed");
        }
    }

    /// Removes the delivery stream of each gateway silent for `after`, then forgets the
    /// gateway. In that order: a failure in between leaves the gateway to the next sweep,
    /// which finds no stream and forgets it.
    async fn remove_dead_streams(&self, streams: &dyn Streams, after: Duration) -> BusResult<()> {
        for gateway in self.routes.dead_since(after).await? {
            // A gateway that beats again just now loses what was pending: it had been
            // silent for `after`, and its clients sync on reconnect.
            if streams.remove(delivery_stream(&gateway)).await? {
                metrics::counter!("presence_removed_streams_total").increment(1);
                let dead_after_ms = after.as_millis();
                info!(gateway, dead_after_ms, "removed a dead gateway's stream");
            }
            self.routes.forget_dead(gateway, after).await?;
        }
        Ok(())
    }
}
