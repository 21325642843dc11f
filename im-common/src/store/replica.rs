//! The read replica, and falling back to the primary when it does not answer.
//!
//! Lag-tolerant reads (profiles, search, member lists) go to the replica. When one fails
//! there (the replica is down, restarting, saturated past [`ACQUIRE_TIMEOUT`], or missing a
//! table because replication broke), the read runs again on the primary and the replica is
//! left out for [`RETRY_AFTER`]; after that, one read tries it again while the others keep
//! to the primary, and its success brings the replica back. So losing the replica costs at
//! most one slow read per [`RETRY_AFTER`], never a failed one, and the primary takes the
//! replica's reads meanwhile.
//!
//! The replica's pool connects lazily: a service starts while its replica is down.
//!
//! A replica that answers but has stopped replicating (or fell far behind) would serve old
//! data for as long as that lasts, so it is also measured: every [`BEAT`] each process
//! stamps the time on the primary's one-row table `replica_heartbeat` and reads the row back
//! from the replica. When the replica's stamp is older than `replica_max_lag_ms`, reads go
//! to the primary until it has caught up again (`mpim_store_replica_lag_seconds` is the
//! measure). A replica that does not answer the probe is left to the fallback above.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sqlx::AnyPool;
use tracing::{info, warn};

use crate::error::StoreError;
use crate::ids::now_ms;

/// How long a read waits for a replica connection before going to the primary.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the replica is left out after it failed.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How often the replica's lag is measured.
pub const BEAT: Duration = Duration::from_secs(1);

/// Counter of reads that failed on the replica and ran on the primary.
const FALLBACKS: &str = "mpim_store_replica_fallbacks_total";
/// Gauge: how old the replica's heartbeat stamp was at the last measure.
const LAG: &str = "mpim_store_replica_lag_seconds";

#[derive(Debug)]
pub(super) struct Replica {
    pool: AnyPool,
    state: Mutex<State>,
    /// The replica is further behind than allowed: reads go to the primary.
    behind: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reads go to the replica.
    Up,
    /// Reads go to the primary until then; the first read after it tries the replica.
    Down { until: Instant },
}

impl Replica {
    pub(super) fn new(pool: AnyPool) -> Replica {
        Replica {
            pool,
            state: Mutex::new(State::Up),
            behind: AtomicBool::new(false),
        }
    }

    /// Measures the lag every [`BEAT`] while `replica` lives (and its pools are open),
    /// sending reads to `primary` while it is more than `max_lag`.
    pub(super) fn watch(replica: &Arc<Replica>, primary: AnyPool, max_lag: Duration) {
        let replica = Arc::downgrade(replica);
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(BEAT);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                beat.tick().await;
                let Some(replica) = Weak::upgrade(&replica) else {
                    return;
                };
                if primary.is_closed() {
                    return;
                }
                replica.measure(&primary, max_lag).await;
            }
        });
    }

    async fn measure(&self, primary: &AnyPool, max_lag: Duration) {
        let stamp = sqlx::query("UPDATE replica_heartbeat SET beat_ms = ? WHERE id = 1")
            .bind(now_ms())
            .execute(primary)
            .await;
        if let Err(err) = stamp {
            warn!(cause = %err, "cannot stamp the replica heartbeat on the primary");
        }
        let seen: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT beat_ms FROM replica_heartbeat WHERE id = 1")
                .fetch_optional(&self.pool)
                .await;
        // None: the replica has no heartbeat yet (the table has not reached it).
        let lag_ms = match seen {
            Ok(Some(beat)) => Some(now_ms().saturating_sub(beat).max(0)),
            Ok(None) | Err(sqlx::Error::Database(_)) => None,
            // Not answering is the fallback's business.
            Err(_) => return,
        };
        if let Some(lag_ms) = lag_ms {
            metrics::gauge!(LAG).set(lag_ms as f64 / 1000.0);
        }
        let behind =
            lag_ms.is_none_or(|lag| u128::try_from(lag).unwrap_or(0) > max_lag.as_millis());
        if self.behind.swap(behind, Ordering::Relaxed) != behind {
            if behind {
                warn!(
                    lag_ms = lag_ms.map_or("no heartbeat yet".to_owned(), |ms| ms.to_string()),
                    max_lag_ms = max_lag.as_millis() as u64,
                    "read replica is behind; lag-tolerant reads go to the primary"
                );
            } else {
                info!(
                    lag_ms = lag_ms.unwrap_or_default(),
                    "read replica caught up; lag-tolerant reads go back to it"
                );
            }
        }
    }

    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether this read should go to the replica. A read that finds the wait over becomes
    /// the one that tries it: the wait starts again for the others.
    fn take_turn(&self) -> bool {
        if self.behind.load(Ordering::Relaxed) {
            return false;
        }
        let mut state = self.state.lock();
        match *state {
            State::Up => true,
            State::Down { until } if Instant::now() >= until => {
                *state = State::Down {
                    until: Instant::now() + RETRY_AFTER,
                };
                true
            }
            State::Down { .. } => false,
        }
    }

    fn answered(&self) {
        let mut state = self.state.lock();
        if matches!(*state, State::Down { .. }) {
            *state = State::Up;
            info!("read replica answers again; lag-tolerant reads go back to it");
        }
    }

    fn failed(&self, err: &StoreError) {
        let mut state = self.state.lock();
        if matches!(*state, State::Up) {
            warn!(
                cause = %err,
                retry_after_s = RETRY_AFTER.as_secs(),
                "read replica failed; lag-tolerant reads go to the primary"
            );
        }
        *state = State::Down {
            until: Instant::now() + RETRY_AFTER,
        };
        metrics::counter!(FALLBACKS).increment(1);
    }

    /// Runs `read` on the replica when it is in favour, else (or when it fails there) on
    /// `primary`.
    pub(super) async fn read<T, F, Fut>(&self, primary: &AnyPool, read: F) -> Result<T, StoreError>
    where
        F: Fn(AnyPool) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        if self.take_turn() {
            match read(self.pool.clone()).await {
                Ok(value) => {
                    self.answered();
                    return Ok(value);
                }
                Err(err) => self.failed(&err),
            }
        }
        read(primary.clone()).await
    }
}
