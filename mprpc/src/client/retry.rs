//! Retry policy: which failures may be sent again, and a budget that keeps retries from
//! multiplying load when a whole service is unwell.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::error::Error;

/// Whether a failed attempt may be sent again: always when it certainly did not run, and
/// also when the connection was lost mid-call if the method is idempotent.
pub(crate) fn may_retry(err: &Error, idempotent: bool) -> bool {
    err.is_retry_safe() || (idempotent && matches!(err, Error::ConnectionLost))
}

/// A token bucket: each call deposits `ratio` of a token, each retry takes a whole one, and
/// `min_per_sec` tokens trickle in regardless so that a quiet client can still retry.
/// With the defaults retries add at most about 10 % to the load (plus 10 per second).
/// Counted in thousandths of a token so that the ratio adds up exactly.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Every call deposits, so the balance is an atomic: no lock on the hot path.
    milli_tokens: AtomicU64,
    /// When the trickle was last added. A parking_lot mutex, taken only by retries and
    /// never held across an await.
    refilled: Mutex<Instant>,
    per_call: u64,
    per_sec: u64,
    cap: u64,
}

const TOKEN: u64 = 1000;

impl Budget {
    pub(crate) fn new(ratio: f64, min_per_sec: u32) -> Budget {
        let per_sec = u64::from(min_per_sec) * TOKEN;
        Budget {
            milli_tokens: AtomicU64::new(per_sec),
            refilled: Mutex::new(Instant::now()),
            per_call: (ratio * TOKEN as f64).round() as u64,
            per_sec,
            cap: (per_sec * 10).max(100 * TOKEN),
        }
    }

    fn add(&self, milli_tokens: u64) {
        let before = self.milli_tokens.fetch_add(milli_tokens, Ordering::Relaxed);
        if before + milli_tokens > self.cap {
            self.milli_tokens.fetch_min(self.cap, Ordering::Relaxed);
        }
    }

    pub(crate) fn deposit(&self) {
        self.add(self.per_call);
    }

    pub(crate) fn try_withdraw(&self) -> bool {
        {
            let mut refilled = self.refilled.lock();
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(*refilled);
            if elapsed >= Duration::from_millis(10) {
                self.add(self.per_sec * elapsed.as_millis() as u64 / 1000);
                *refilled = now;
            }
        }
        self.milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(TOKEN)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_at_its_ratio() {
        let budget = Budget::new(0.1, 0);
        for _ in 0..1000 {
            budget.deposit();
        }
        let granted = (0..1000).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_refills_a_quiet_budget() {
        let budget = Budget::new(0.1, 10);
        let first = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(first, 10);
        assert!(!budget.try_withdraw());
        tokio::time::advance(Duration::from_millis(500)).await;
        let later = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(later, 5);
    }

    #[test]
    fn only_unsent_calls_or_idempotent_ones_are_retried() {
        assert!(may_retry(&Error::Unavailable("x"), false));
        assert!(!may_retry(&Error::ConnectionLost, false));
        assert!(may_retry(&Error::ConnectionLost, true));
        assert!(!may_retry(&Error::DeadlineExceeded, true));
        assert!(!may_retry(
            &Error::Status(crate::Status::internal("x")),
            true
        ));
    }
}
