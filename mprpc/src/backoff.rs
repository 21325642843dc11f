//! The one shape of every "try again later" in this crate — redials, ejections, ZooKeeper
//! retries, failed accepts: a delay that starts at a minimum and doubles per failure up to a
//! maximum, optionally jittered so that many peers do not retry in lockstep.

use std::time::Duration;

/// Doubling delays between `min` and `max`; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    jitter: bool,
    failures: u32,
}

impl Backoff {
    /// Delays from `min`, doubling, up to `max`, without jitter.
    pub(crate) const fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            jitter: false,
            failures: 0,
        }
    }

    /// Spreads each delay over ±25 % of its value.
    pub(crate) const fn jittered(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// The delay after the `n`th failure in a row (counted from 1), without changing state.
    pub(crate) fn delay(&self, n: u32) -> Duration {
        let doubled = self
            .min
            .saturating_mul(1 << n.clamp(1, 17).saturating_sub(1));
        let base = doubled.min(self.max.max(self.min));
        if self.jitter {
            let factor = 0.75 + crate::random::below(501) as f64 / 1000.0;
            // Saturating where `mul_f64` would panic, for delays near `Duration::MAX`.
            Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
        } else {
            base
        }
    }

    /// Counts one more failure and returns the delay it calls for.
    pub(crate) fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay(self.failures)
    }

    /// Failures counted since the last reset.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Starts over from the minimum.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Counts a failure and sleeps for the delay it calls for.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.fail()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_their_cap_and_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1000));
        let delays: Vec<_> = (0..6).map(|_| backoff.fail()).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(backoff.failures(), 6);
        backoff.reset();
        assert_eq!(backoff.fail(), ms(100));
        assert_eq!(backoff.delay(u32::MAX), ms(1000), "no overflow far out");
    }

    #[test]
    fn delays_too_long_for_the_clock_saturate() {
        let mut backoff = Backoff::new(Duration::MAX, Duration::MAX).jittered();
        for _ in 0..3 {
            assert!(backoff.fail() >= Duration::MAX / 2);
        }
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let ms = Duration::from_millis;
        let backoff = Backoff::new(ms(1000), ms(1000)).jittered();
        let delays: Vec<_> = (0..200).map(|_| backoff.delay(1)).collect();
        assert!(delays.iter().all(|d| *d >= ms(750) && *d <= ms(1250)));
        assert!(delays.iter().any(|d| *d != delays[0]), "jitter varies");
    }
}
