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
mod subscriber;

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use tokio::sync::{Semaphore, mpsc};

use super::{BusResult, Cache, PubSub, ReadFrom, StreamEntry, Streams};
use crate::error::StoreError;

/// The consumer group every delivery stream has.
const GROUP: &str = "gateways";
/// The field that holds an entry's payload.
const PAYLOAD: &str = "p";
/// Entries a stream keeps before its oldest are trimmed (approximately).
const MAX_STREAM_LEN: usize = 100_000;
/// Idle connections kept for blocking reads.
const MAX_IDLE_BLOCKING: usize = 8;
/// Blocking reads in flight at once; further ones wait for a slot.
const MAX_BLOCKING_READS: usize = 64;
/// How long past its `BLOCK` a blocking read may take before its connection is given up.
const BLOCK_GRACE: Duration = Duration::from_secs(5);
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
    /// [`StoreError::Redis`] when the URL is wrong or the server cannot be reached.
    pub async fn connect(url: &str) -> BusResult<Redis> {
        Redis::connect_with_prefix(url, "").await
    }

    /// Connects with every key and channel prefixed by `prefix`, so that several buses (tests,
    /// or clusters sharing a server) never see each other's data. The prefix must not contain
    /// `{`, which would move the hash tags.
    ///
    /// # Errors
    /// [`StoreError::Redis`] when the URL is wrong or the server cannot be reached.
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
            blocking_slots: Semaphore::new(MAX_BLOCKING_READS),
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
    /// [`StoreError::Redis`] when the server fails.
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

    async fn read_group(
        &self,
        key: &str,
        consumer: &str,
        from: ReadFrom,
        max: usize,
        block: Duration,
    ) -> Result<Value, RedisError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(consumer);
        cmd.arg("COUNT").arg(max.max(1));
        let blocking = from == ReadFrom::New && !block.is_zero();
        if blocking {
            // BLOCK 0 would wait forever: a wait shorter than a millisecond is one.
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        let id = match from {
            ReadFrom::New => ">",
            ReadFrom::Pending => "0",
        };
        cmd.arg("STREAMS").arg(key).arg(id);
        if !blocking {
            return cmd.query_async(&mut self.conn()).await;
        }
        let _slot = self.blocking_slots.acquire().await.map_err(|_| closed())?;
        let mut conn = self.blocking_connection().await?;
        match tokio::time::timeout(block + BLOCK_GRACE, cmd.query_async(&mut conn)).await {
            Ok(Ok(value)) => {
                let mut idle = self.blocking.lock();
                if idle.len() < MAX_IDLE_BLOCKING {
                    idle.push(conn);
                }
                Ok(value)
            }
            // The connection may still have the read queued on the server: not reused.
            Ok(Err(err)) => Err(err),
            Err(_) => Err(RedisError::from((
                redis::ErrorKind::Io,
                "blocking stream read timed out",
            ))),
        }
    }

    /// An idle dedicated connection, or a new one. Dropped (not returned) when a read on it
    /// fails or is cancelled, since the server may still be blocked on it.
    async fn blocking_connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.blocking.lock().pop() {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    async fn create_group(&self, key: &str) -> BusResult<()> {
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match created {
            Err(err) if err.code() != Some("BUSYGROUP") => Err(err.into()),
            _ => Ok(()),
        }
    }

    async fn read(
        &self,
        stream: &str,
        consumer: &str,
        from: ReadFrom,
        max: usize,
        block: Duration,
    ) -> BusResult<Vec<StreamEntry>> {
        let key = self.key(stream);
        let value = match self.read_group(&key, consumer, from, max, block).await {
            Err(err) if err.code() == Some("NOGROUP") => {
                self.create_group(&key).await?;
                self.read_group(&key, consumer, from, max, block).await?
            }
            other => other?,
        };
        let (entries, trimmed) = parse_read(value)?;
        if !trimmed.is_empty() {
            // Trimmed by MAXLEN while pending: nothing left to deliver, so off the list, or
            // they would fill every later pending read.
            self.ack_keys(&key, &trimmed).await?;
        }
        Ok(entries)
    }

    async fn ack_keys(&self, key: &str, ids: &[String]) -> BusResult<()> {
        let acked: Result<(), RedisError> = redis::pipe()
            .cmd("XACK")
            .arg(key)
            .arg(GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(key)
            .arg(ids)
            .ignore()
            .query_async(&mut self.conn())
            .await;
        match acked {
            // Nobody read the stream yet: nothing was pending.
            Err(err) if err.code() == Some("NOGROUP") => Ok(()),
            other => Ok(other?),
        }
    }
}

/// The error a closed resource gives.
fn closed() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "redis bus closed"))
}

/// The entries of an `XREADGROUP` reply, and the ids of entries that were trimmed away
/// (pending, but with no fields left).
fn parse_read(value: Value) -> BusResult<(Vec<StreamEntry>, Vec<String>)> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("XREADGROUP reply: {what}"));
    let streams = match value {
        Value::Nil => return Ok((Vec::new(), Vec::new())),
        Value::Array(streams) => streams.into_iter().filter_map(|s| match s {
            Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
            _ => None,
        }),
        _ => return Err(corrupt("not an array")),
    };
    let mut entries = Vec::new();
    let mut trimmed = Vec::new();
    for stream in streams {
        let Value::Array(items) = stream else {
            return Err(corrupt("entries not an array"));
        };
        for item in items {
            let Value::Array(mut item) = item else {
                return Err(corrupt("entry not an array"));
            };
            let fields = item.pop();
            let id = match item.pop() {
                Some(Value::BulkString(id)) => String::from_utf8(id).map_err(|_| corrupt("id"))?,
                _ => return Err(corrupt("entry without id")),
            };
            match fields.and_then(payload_of) {
                Some(payload) => entries.push(StreamEntry { id, payload }),
                None => trimmed.push(id),
            }
        }
    }
    Ok((entries, trimmed))
}

/// The payload field of an entry's field list.
fn payload_of(fields: Value) -> Option<Bytes> {
    let Value::Array(fields) = fields else {
        return None;
    };
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if let (Value::BulkString(name), Value::BulkString(value)) = (name, value)
            && name == PAYLOAD.as_bytes()
        {
            return Some(Bytes::from(value));
        }
    }
    None
}

/// A ttl in whole milliseconds, at least one (`PX 0` is an error).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Streams for Redis {
    fn push(&self, stream: String, payload: Bytes) -> BoxFuture<'_, BusResult<String>> {
        async move {
            let id: String = redis::cmd("XADD")
                .arg(self.key(&stream))
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_STREAM_LEN)
                .arg("*")
                .arg(PAYLOAD)
                .arg(payload.as_ref())
                .query_async(&mut self.conn())
                .await?;
            Ok(id)
        }
        .boxed()
    }

    fn read(
        &self,
        stream: String,
        consumer: String,
        from: ReadFrom,
        max: usize,
        block: Duration,
    ) -> BoxFuture<'_, BusResult<Vec<StreamEntry>>> {
        async move { Redis::read(self, &stream, &consumer, from, max, block).await }.boxed()
    }

    fn ack(&self, stream: String, ids: Vec<String>) -> BoxFuture<'_, BusResult<()>> {
        async move {
            if ids.is_empty() {
                return Ok(());
            }
            self.ack_keys(&self.key(&stream), &ids).await
        }
        .boxed()
    }
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
