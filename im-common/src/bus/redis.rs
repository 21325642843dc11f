//! The bus on Redis: one server, or a Redis Cluster.
//!
//! Commands go through one shared connection (multiplexed, reconnecting: a
//! `ConnectionManager`, or the crate's cluster connection, which routes each command to the
//! master owning its key and follows redirections). Two kinds of work would stall every
//! command queued behind them on that connection, so they get connections of their own:
//! blocking stream reads (`XREADGROUP … BLOCK`) take a dedicated connection from a small
//! pool, and subscriptions share one pub/sub connection run by a task of their own
//! (`subscriber`). The `conn` module hides which kind of deployment it is, so that the rest
//! is written once.
//!
//! # Keys
//! Every key and channel starts with the bus's prefix (empty unless
//! [`Redis::connect_with_prefix`] set one; it must not contain `{`). Braces mark Redis
//! Cluster hash tags: a key with a tag lives in the hash slot of the tag alone, so the keys
//! of one user share a slot, and so do the keys of one gateway.
//!
//! | key | type | what |
//! |---|---|---|
//! | `mpim:routes:{<user>}` | hash | device → `"<device kind> <gateway>"` |
//! | `mpim:last-seen:{<user>}` | string | ms when the user's last route went |
//! | `mpim:gateway:{<gw>}` | string, PX ttl | the gateway's liveness: its routes live while it exists |
//! | `mpim:gateway-routes:{<gw>}` | set | `"<user>:<device>"` bound through the gateway, for sweep |
//! | `mpim:gateways` | set | gateways that may hold routes, for sweep |
//! | `mpim:gateway-seen` | hash | gateway → ms of its last heartbeat, kept past the sweep until the gateway's stream is removed (`dead`) |
//! | streams, cache keys, channels | | as named by the caller ([`super::delivery_stream`], [`super::keys`], [`super::channels`]) |
//! | `{<cache key>}:gen` | string, PX [`GENERATION_TTL`](super::GENERATION_TTL) | the cache key's generation: a random number each invalidation sets |
//!
//! Every operation that must see several keys at once stays within one tag, and so within
//! one slot of a cluster: the script that removes a route reads and writes the user's two
//! keys, the script that claims a route for the sweep the gateway's two keys; acknowledging
//! stream entries (`XACK` + `XDEL`) touches one stream; the fill and invalidation scripts
//! touch a cache key and its generation, whose tag is the whole cache key (so cache keys
//! must not contain braces). Everything else that goes out together (a bind's four writes, the reads of a query for many users) is a batch of
//! independent commands, split by slot on a cluster (see `conn`). No `MULTI`, no
//! multi-key command that needs its keys in one slot.
//!
//! Delivery streams have one consumer group, `gateways`, created from the stream's start
//! the first time anyone reads it, so entries pushed before the first read are delivered.
//!
//! # Redis Cluster
//! [`Redis::connect_cluster`] takes seed nodes; the crate's cluster client finds the rest and
//! the slot map. Pub/sub uses a connection to one node: a `PUBLISH` reaches the subscribers
//! on every node of the cluster (the nodes forward it over the cluster bus), so that is
//! enough, and it keeps the subscriber's logic the same as on one server; when that node
//! fails, the subscriber moves on to the next seed node. A blocking stream read runs on a
//! cluster connection of its own, sent to the master that owns the stream.

mod cache;
mod conn;
mod dead;
mod routes;
mod streams;
mod subscriber;

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use redis::RedisError;
use tokio::sync::{Semaphore, mpsc};

use self::conn::{Conn, Server};
use super::{BusResult, PubSub};

/// How long one command (or pipeline) on the shared connection may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The bus on a Redis server or a Redis Cluster.
pub struct Redis {
    server: Server,
    conn: Conn,
    prefix: String,
    /// Idle dedicated connections for blocking reads. A parking_lot mutex: held only to push
    /// or pop, never across an `.await`.
    blocking: Mutex<Vec<Conn>>,
    blocking_slots: Semaphore,
    subscriber: subscriber::Handle,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.prefix)
            .field("cluster", &self.is_cluster())
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
        Redis::open(Server::single(url)?, prefix).await
    }

    /// Connects to the Redis Cluster that `nodes` (`redis://host:7001`, one or more of its
    /// nodes) belong to, with every key and channel prefixed by `prefix` (as
    /// [`Redis::connect_with_prefix`]).
    ///
    /// # Errors
    /// [`StoreError::Redis`](crate::StoreError::Redis) when a URL is wrong, `nodes` is empty,
    /// or no node can be reached.
    pub async fn connect_cluster(nodes: &[String], prefix: &str) -> BusResult<Redis> {
        Redis::open(Server::cluster(nodes, CONNECT_TIMEOUT)?, prefix).await
    }

    async fn open(server: Server, prefix: &str) -> BusResult<Redis> {
        if prefix.contains('{') {
            // It would move every key's hash tag.
            let message = "the redis key prefix must not contain '{'";
            return Err(RedisError::from((redis::ErrorKind::InvalidClientConfig, message)).into());
        }
        Ok(Redis {
            conn: server.shared().await?,
            subscriber: subscriber::Handle::new(server.pubsub_nodes()),
            server,
            prefix: prefix.to_owned(),
            blocking: Mutex::new(Vec::new()),
            blocking_slots: Semaphore::new(streams::MAX_BLOCKING_READS),
        })
    }

    /// Whether this bus is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.server, Server::Cluster(_))
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
        // The cache's generation keys open with the tag of their cache key.
        let generations = format!("{{{pattern}");
        let mut deleted = 0;
        for pattern in [pattern, generations] {
            deleted += self.unlink_matching(&pattern).await?;
        }
        Ok(deleted)
    }

    async fn unlink_matching(&self, pattern: &str) -> BusResult<u64> {
        let mut deleted = 0;
        // A SCAN cursor belongs to one node: on a cluster, each master in turn.
        for node in self.conn.masters().await? {
            let mut cursor = 0u64;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, keys): (u64, Vec<String>) = self.conn.query_on(&node, scan).await?;
                if !keys.is_empty() {
                    // One UNLINK per slot on a cluster: the crate splits it.
                    let n: u64 = redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async(&mut self.conn())
                        .await?;
                    deleted += n;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }

    /// `name` under this bus's prefix.
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A handle on the shared connection (cheap: it is a handle itself).
    fn conn(&self) -> Conn {
        self.conn.clone()
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
