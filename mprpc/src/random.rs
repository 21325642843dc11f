//! The crate's one source of randomness: a per-thread xorshift generator seeded from the
//! standard library's per-process random hasher keys. Balancing, jitter and tokens need
//! spread, not cryptography.

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
}

/// 64 random bits.
pub(crate) fn u64() -> u64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

/// A random number in `0..n`; 0 when `n` is 0.
pub(crate) fn below(n: usize) -> usize {
    (((u64() >> 32) * n as u64) >> 32) as usize
}

/// 64 random bits as 16 hex digits.
pub(crate) fn hex64() -> String {
    format!("{:016x}", u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_below_and_spreads() {
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            seen[below(4)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
        assert_eq!(below(0), 0);
        assert_eq!(hex64().len(), 16);
        assert_ne!(hex64(), hex64());
    }
}
