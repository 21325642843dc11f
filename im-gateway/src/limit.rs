//! A token bucket: a connection's request rate limit.

use tokio::time::Instant;

/// Tokens are counted in thousandths so that a refill of less than one request per
/// millisecond still adds up.
#[derive(Debug)]
pub(crate) struct Bucket {
    milli_tokens: u64,
    capacity: u64,
    per_sec: u64,
    last: Instant,
}

impl Bucket {
    /// `per_sec` requests per second on average, `burst` at once; starts full.
    pub(crate) fn new(per_sec: u32, burst: u32) -> Bucket {
        let capacity = u64::from(burst.max(1)) * 1000;
        Bucket {
            milli_tokens: capacity,
            capacity,
            per_sec: u64::from(per_sec),
            last: Instant::now(),
        }
    }

    /// Takes one token; false when there is none.
    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed_ms =
            u64::try_from(now.duration_since(self.last).as_millis()).unwrap_or(u64::MAX);
        if elapsed_ms > 0 {
            self.milli_tokens = self
                .milli_tokens
                .saturating_add(elapsed_ms.saturating_mul(self.per_sec))
                .min(self.capacity);
            self.last = now;
        }
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let mut bucket = Bucket::new(10, 5);
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 5);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 5);
    }
}
