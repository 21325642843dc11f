//! Delivery streams on Redis: one consumer group per stream, blocking reads on dedicated
//! connections.
//!
//! `XREADGROUP … BLOCK` holds its connection until an entry comes or the time is up, so it
//! never runs on the shared connection: it takes an idle dedicated connection from a small
//! pool (or opens one), and gives it back only when the read completed, since a failed or
//! cancelled read may still be blocked on the server.
//!
//! On a cluster a dedicated connection is a cluster connection of its own: the read goes to
//! the master that owns the stream's slot, and a failed read drops its connection, so the
//! next one starts from a fresh slot map. When the stream's slot moves to another master
//! (resharding), a read blocked on it ends at once with an error and the next one follows
//! the stream, which moves with its consumer group and pending entries. When the master
//! dies, a read blocked on it waits out its block time plus [`BLOCK_GRACE`] and fails;
//! once a replica has taken over, reads go there. Entries the dead master had not yet
//! replicated are lost with it (replication is asynchronous): a push is a fast path, and
//! the database the truth that a sync reads.

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use redis::{RedisError, Value};

use super::conn::Conn;
use super::{Redis, closed};
use crate::bus::{BusResult, ReadFrom, StreamEntry, Streams};
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
pub(super) const MAX_BLOCKING_READS: usize = 64;
/// How long past its `BLOCK` a blocking read may take before its connection is given up.
const BLOCK_GRACE: Duration = Duration::from_secs(5);

impl Redis {
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
    async fn blocking_connection(&self) -> Result<Conn, RedisError> {
        if let Some(conn) = self.blocking.lock().pop() {
            return Ok(conn);
        }
        self.server.dedicated().await
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

    async fn read_entries(
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
        async move {
            self.read_entries(&stream, &consumer, from, max, block)
                .await
        }
        .boxed()
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

    fn remove(&self, stream: String) -> BoxFuture<'_, BusResult<bool>> {
        async move {
            // UNLINK frees a long stream's memory off the server's main thread.
            let removed: u64 = redis::cmd("UNLINK")
                .arg(self.key(&stream))
                .query_async(&mut self.conn())
                .await?;
            Ok(removed > 0)
        }
        .boxed()
    }
}
