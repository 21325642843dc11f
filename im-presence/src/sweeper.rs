//! The background sweep: removes the routes of lapsed gateways on a timer.
//!
//! Lapsed routes are already hidden from queries; sweeping frees their storage and records
//! when their users were last seen. Every presence instance may run one: a sweep is
//! idempotent, so instances that sweep together only repeat each other's work.

use std::sync::Arc;
use std::time::Duration;

use im_common::bus::Routes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// A running sweeper; [`Sweeper::stop`] ends it, and so does dropping it.
#[derive(Debug)]
pub struct Sweeper {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Sweeps `routes` every `every`, first after one interval.
    pub fn start(routes: Arc<dyn Routes>, every: Duration) -> Sweeper {
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
                match routes.sweep().await {
                    Ok(0) => {}
                    Ok(removed) => {
                        metrics::counter!("presence_swept_routes_total").increment(removed);
                        info!(removed, "swept routes of lapsed gateways");
                    }
                    Err(err) => warn!(cause = %err, "sweep failed"),
                }
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
