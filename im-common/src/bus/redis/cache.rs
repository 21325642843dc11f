//! The cache on Redis: values with `PX` expiry, and per-key generations that refuse late
//! fills (see [`Cache`]).
//!
//! An invalidation deletes the value and sets the key's generation to a fresh random
//! number in one script; a fill sets the value only if the generation still is the one its
//! token read (absent reads as 0), also in one script. A random generation, unlike a
//! counter, cannot come back to an old token's value when the generation key expires and
//! is set again.

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::conn::Batch;
use super::{Redis, ttl_ms};
use crate::bus::{BusResult, Cache, FillToken, GENERATION_TTL};

/// KEYS: value, generation. ARGV: token, value, ttl ms. Returns 1 when filled.
const FILL: &str = r"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// KEYS: value, generation. ARGV: new generation, its ttl ms.
const INVALIDATE: &str = r"
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
";

/// KEYS: counter. ARGV: window ms. The window starts at the first count.
const COUNT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
";

impl Redis {
    /// The generation key of cache key `name` (prefixed): tagged with the whole cache key,
    /// so that both live in one slot.
    fn generation_key(&self, name: &str) -> String {
        format!("{{{}}}:gen", self.key(name))
    }
}

impl Cache for Redis {
    fn get(&self, key: String) -> BoxFuture<'_, BusResult<Option<Bytes>>> {
        async move {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(self.key(&key))
                .query_async(&mut self.conn())
                .await?;
            Ok(value.map(Bytes::from))
        }
        .boxed()
    }

    fn set(&self, key: String, value: Bytes, ttl: Duration) -> BoxFuture<'_, BusResult<()>> {
        async move {
            redis::cmd("SET")
                .arg(self.key(&key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms(ttl))
                .exec_async(&mut self.conn())
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn set_if_absent(
        &self,
        key: String,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>> {
        async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(self.key(&key))
                .arg(value.as_ref())
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms(ttl))
                .query_async(&mut self.conn())
                .await?;
            Ok(set.is_some())
        }
        .boxed()
    }

    fn fill_token(&self, key: String) -> BoxFuture<'_, BusResult<FillToken>> {
        async move {
            let generation: Option<String> = redis::cmd("GET")
                .arg(self.generation_key(&key))
                .query_async(&mut self.conn())
                .await?;
            // Something this bus did not write matches no token: such a key never fills.
            let token = match generation {
                None => 0,
                Some(value) => value.parse().unwrap_or(u64::MAX),
            };
            Ok(FillToken(token))
        }
        .boxed()
    }

    fn fill(
        &self,
        key: String,
        token: FillToken,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>> {
        async move {
            let keys = [self.key(&key), self.generation_key(&key)];
            let mut batch = Batch::new();
            batch
                .eval(FILL, &keys.each_ref().map(String::as_str))
                .arg(token.0.to_string())
                .arg(value.as_ref())
                .arg(ttl_ms(ttl));
            let filled: Vec<i64> = batch.query(&self.conn).await?;
            Ok(filled.first() == Some(&1))
        }
        .boxed()
    }

    fn count(&self, key: String, window: Duration) -> BoxFuture<'_, BusResult<u64>> {
        async move {
            let count: u64 = redis::cmd("EVAL")
                .arg(COUNT)
                .arg(1)
                .arg(self.key(&key))
                .arg(ttl_ms(window))
                .query_async(&mut self.conn())
                .await?;
            Ok(count)
        }
        .boxed()
    }

    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, BusResult<()>> {
        async move {
            // One script per key: the keys may live in different slots of a cluster.
            let mut batch = Batch::new();
            for key in &keys {
                let pair = [self.key(key), self.generation_key(key)];
                // Never 0, which is what an absent generation reads as.
                let generation = rand::random::<u64>().max(1);
                batch
                    .eval(INVALIDATE, &pair.each_ref().map(String::as_str))
                    .arg(generation.to_string())
                    .arg(ttl_ms(GENERATION_TTL));
            }
            batch.exec(&self.conn).await?;
            Ok(())
        }
        .boxed()
    }
}
