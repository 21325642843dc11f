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

use std::future::Future;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sqlx::AnyPool;
use tracing::{info, warn};

use crate::error::StoreError;

/// How long a read waits for a replica connection before going to the primary.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the replica is left out after it failed.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Counter of reads that failed on the replica and ran on the primary.
const FALLBACKS: &str = "mpim_store_replica_fallbacks_total";

#[derive(Debug)]
pub(super) struct Replica {
    pool: AnyPool,
    state: Mutex<State>,
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
        }
    }

    pub(super) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether this read should go to the replica. A read that finds the wait over becomes
    /// the one that tries it: the wait starts again for the others.
    fn take_turn(&self) -> bool {
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
