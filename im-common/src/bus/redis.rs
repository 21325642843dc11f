//! The bus on Redis.
//!
//! Commands go through one [`ConnectionManager`] (multiplexed, reconnecting). Two kinds of
//! work would stall every command queued behind them on that connection, so they get
//! connections of their own: blocking stream reads (`XREADGROUP … BLOCK`) take a dedicated
//! [`MultiplexedConnection`] from a small pool, and subscriptions share one pub/sub
//! connection run by a task of their own (`subscriber`).
//!
//! # Keys
//! Every key and channel starts with the bus's prefix (empty unless
//! [`Redis::connect_with_prefix`] set one). Braces mark Redis Cluster hash tags: the keys of
//! one user share a slot, and so do the keys of one gateway.
//!
//! | key | type | what |
//! |---|---|---|
//! | `mpim:routes:{<user>}` | hash | device → `"<device kind> <gateway>"` |
//! | `mpim:last-seen:{<user>}` | string | ms when the user's last route went |
//! | `mpim:gateway:{<gw>}` | string, PX ttl | the gateway's liveness: its routes live while it exists |
//! | `mpim:gateway-routes:{<gw>}` | set | `"<user>:<device>"` bound through the gateway, for sweep |
//! | `mpim:gateways` | set | gateways that may hold routes, for sweep |
//! | streams, cache keys, channels | | as named by the caller ([`super::delivery_stream`], [`super::keys`], [`super::channels`]) |
//!
//! Delivery streams have one consumer group, `gateways`, created from the stream's start
//! the first time anyone reads it, so entries pushed before the first read are delivered.

mod routes;
mod streams;
mod subscriber;

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{Client, RedisError};
use tokio::sync::{Semaphore, mpsc};

use super::{BusResult, Cache, PubSub};

/// How long one command (or pipeline) on the shared connection may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The bus on a Redis server.
pub struct Redis {
    client: Client,
    manager: ConnectionManager,
    prefix: String,
    /// Idle dedicated connections for blocking reads. A parking_lot mutex: held only to push
    /// or pop, never across an `.await`.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    blocking_slots: Semaphore,
    subscriber: subscriber::Handle,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connects to the server at `url` (`redis://host:6379/0`).
    ///
    /// # Errors
    /// [`StoreError::Redis`](crate::StoreError::Redis) when the URL is wrong or the server cannot be reached.
    pub async fn connect(url: &str) -> BusResult<Redis> {
        Redis::connect_with_prefix(url, "").await
    }

    /// Connects with every key and channel prefixed by `prefix`, so that several buses (tests,
    /// or clusters sharing a server) never see each other's data. The prefix must not contain
    /// `{`, which would move the hash tags.
    ///
    /// # Errors
    /// [`StoreError::Redis`](crate::StoreError::Redis) when the URL is wrong or the server cannot be reached.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> BusResult<Redis> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let manager = client.get_connection_manager_with_config(config).await?;
        Ok(Redis {
            subscriber: subscriber::Handle::new(client.clone()),
            client,
            manager,
            prefix: prefix.to_owned(),
            blocking: Mutex::new(Vec::new()),
            blocking_slots: Semaphore::new(streams::MAX_BLOCKING_READS),
        })
    }

    /// The prefix of every key and channel of this bus.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Deletes every key of this bus, as `FLUSHDB` would on a server of its own: the keys
    /// under its prefix, or every `mpim:` key when it has none. Returns how many.
    ///
    /// # Errors
    /// [`StoreError::Redis`](crate::StoreError::Redis) when the server fails.
    pub async fn clear(&self) -> BusResult<u64> {
        let pattern = if self.prefix.is_empty() {
            "mpim:*".to_owned()
        } else {
            format!("{}*", self.prefix)
        };
        let mut conn = self.conn();
        let mut cursor = 0u64;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// `name` under this bus's prefix.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A handle on the shared connection (cheap: the manager is a handle itself).
    fn conn(&self) -> ConnectionManager {
        self.manager.clone()
    }
}

/// The error a closed resource gives.
fn closed() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "redis bus closed"))
}

/// A ttl in whole milliseconds, at least one (`PX 0` is an error).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl PubSub for Redis {
    fn publish(&self, channel: String, payload: Bytes) -> BoxFuture<'_, BusResult<()>> {
        async move {
            let _receivers: u64 = redis::cmd("PUBLISH")
                .arg(self.key(&channel))
                .arg(payload.as_ref())
                .query_async(&mut self.conn())
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn subscribe(&self, channel: String) -> BoxFuture<'_, BusResult<mpsc::Receiver<Bytes>>> {
        async move { Ok(self.subscriber.subscribe(self.key(&channel)).await?) }.boxed()
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

    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, BusResult<()>> {
        async move {
            if keys.is_empty() {
                return Ok(());
            }
            // One DEL per key: the keys may live in different slots of a cluster.
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("DEL").arg(self.key(key)).ignore();
            }
            pipe.exec_async(&mut self.conn()).await?;
            Ok(())
        }
        .boxed()
    }
}
