//! The in-process cache: values with their expiry, and the generations that refuse late
//! fills.
//!
//! Generations come from one counter: a token is the counter's value when it was taken,
//! and an invalidation stamps its keys with a new value of the counter, so a fill is
//! refused when its key's stamp is newer than its token. Stamps are bounded: when there are
//! too many, they are all dropped and every token taken before is refused (`floor`), which
//! costs at most some fills, never a stale one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::Memory;
use crate::bus::{BusResult, Cache, FillToken};

/// Cached values kept before expired ones are purged.
const MAX_CACHE_LEN: usize = 100_000;
/// Invalidation stamps kept before they are all dropped.
const MAX_STAMPS: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct Table {
    values: HashMap<String, (Bytes, Instant)>,
    /// key → the generation of its last invalidation.
    stamps: HashMap<String, u64>,
    /// The last generation given out.
    clock: u64,
    /// Tokens below it are refused (their stamps were dropped).
    floor: u64,
}

impl Table {
    fn insert(&mut self, key: String, value: Bytes, ttl: Duration) {
        let now = Instant::now();
        if self.values.len() >= MAX_CACHE_LEN {
            self.values.retain(|_, (_, until)| *until > now);
            if self.values.len() >= MAX_CACHE_LEN {
                self.values.clear();
            }
        }
        self.values.insert(key, (value, now + ttl));
    }

    fn present(&self, key: &str) -> bool {
        let now = Instant::now();
        self.values.get(key).is_some_and(|(_, until)| *until > now)
    }

    fn invalidate(&mut self, key: &str) {
        self.values.remove(key);
        if self.stamps.len() >= MAX_STAMPS {
            self.stamps.clear();
            self.clock += 1;
            self.floor = self.clock;
        }
        self.clock += 1;
        self.stamps.insert(key.to_owned(), self.clock);
    }

    fn may_fill(&self, key: &str, token: FillToken) -> bool {
        token.0 >= self.floor && self.stamps.get(key).is_none_or(|&stamp| stamp <= token.0)
    }
}

impl Cache for Memory {
    fn get(&self, key: String) -> BoxFuture<'_, BusResult<Option<Bytes>>> {
        let now = Instant::now();
        let value = self
            .cache
            .lock()
            .values
            .get(&key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value.clone());
        futures::future::ready(Ok(value)).boxed()
    }

    fn set(&self, key: String, value: Bytes, ttl: Duration) -> BoxFuture<'_, BusResult<()>> {
        self.cache.lock().insert(key, value, ttl);
        futures::future::ready(Ok(())).boxed()
    }

    fn set_if_absent(
        &self,
        key: String,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>> {
        let mut cache = self.cache.lock();
        let present = cache.present(&key);
        if !present {
            cache.insert(key, value, ttl);
        }
        drop(cache);
        futures::future::ready(Ok(!present)).boxed()
    }

    fn fill_token(&self, _key: String) -> BoxFuture<'_, BusResult<FillToken>> {
        let token = FillToken(self.cache.lock().clock);
        futures::future::ready(Ok(token)).boxed()
    }

    fn fill(
        &self,
        key: String,
        token: FillToken,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>> {
        let mut cache = self.cache.lock();
        let filled = cache.may_fill(&key, token);
        if filled {
            cache.insert(key, value, ttl);
        }
        drop(cache);
        futures::future::ready(Ok(filled)).boxed()
    }

    fn count(&self, key: String, window: Duration) -> BoxFuture<'_, BusResult<u64>> {
        let mut cache = self.cache.lock();
        let now = Instant::now();
        let (count, until) = match cache.values.get(&key) {
            Some((value, until)) if *until > now => {
                let count = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                (count.unwrap_or(0_u64).saturating_add(1), *until)
            }
            _ => (1, now + window),
        };
        cache.insert(key, Bytes::from(count.to_string()), until - now);
        drop(cache);
        futures::future::ready(Ok(count)).boxed()
    }

    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, BusResult<()>> {
        let mut cache = self.cache.lock();
        for key in &keys {
            cache.invalidate(key);
        }
        drop(cache);
        futures::future::ready(Ok(())).boxed()
    }
}
