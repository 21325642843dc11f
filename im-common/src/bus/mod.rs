//! The bus: routes, per-gateway delivery streams, pub/sub and cache, on Redis or inside this
//! process.
//!
//! Each concern is a trait ([`Routes`], [`Streams`], [`PubSub`], [`Cache`]) with two
//! implementations that pass one shared test suite: `redis` (the `redis` crate, on one
//! server or a Redis Cluster: a shared multiplexed connection for commands, dedicated
//! connections for subscriptions and blocking stream reads) and `memory` (for `mpim` and
//! tests without servers). [`Bus`] holds one of each. The suite runs in process, on Redis
//! and on a Redis Cluster ([`on_every_bus!`](crate::on_every_bus)).
//!
//! Nothing on the bus is the source of truth: routes come back with the next heartbeat or
//! bind, the cache refills from the database, and a lost push is found by the next sync.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::config::RedisConfig;
use crate::error::StoreError;
use crate::proto::{Route, UserStatus};

/// What bus operations return.
pub type BusResult<T> = Result<T, StoreError>;

/// Where each user's devices are connected: user → device → gateway.
///
/// A route lives as long as its gateway heartbeats: [`Routes::heartbeat`] refreshes every
/// route of a gateway at once, and routes of a gateway whose heartbeat lapsed are neither
/// returned by [`Routes::query`] nor kept by [`Routes::sweep`].
pub trait Routes: Send + Sync + 'static {
    /// Records `route` (replacing the device's previous one) and refreshes its gateway's
    /// liveness for `ttl`.
    fn bind(&self, route: Route, ttl: Duration) -> BoxFuture<'_, BusResult<()>>;
    /// Removes the route of `user`'s `device` if `gateway` still holds it.
    fn unbind(&self, user: u64, device: String, gateway: String) -> BoxFuture<'_, BusResult<()>>;
    /// Keeps every route of `gateway` alive for another `ttl`; returns whether the bus knew
    /// the gateway from an earlier heartbeat still within its ttl. False means the routes
    /// may be gone (the first beat, a lapse, or a bus that lost its data) and the gateway
    /// should bind them again. Binds do not count: after a flush, one new login must not
    /// hide that every other route is gone.
    fn heartbeat(&self, gateway: String, ttl: Duration) -> BoxFuture<'_, BusResult<bool>>;
    /// The live routes of `users` (users without any are absent).
    fn query(&self, users: Vec<u64>) -> BoxFuture<'_, BusResult<Vec<Route>>>;
    /// Whether each of `users` is online (has a live route) and when it was last seen
    /// online (now, for an online user; 0 for never), in the order asked.
    fn status(&self, users: Vec<u64>) -> BoxFuture<'_, BusResult<Vec<UserStatus>>>;
    /// Removes the routes of gateways whose liveness lapsed; returns how many.
    fn sweep(&self) -> BoxFuture<'_, BusResult<u64>>;
}

/// One entry of a delivery stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The stream's id for the entry, given back to [`Streams::ack`].
    pub id: String,
    /// What was pushed.
    pub payload: Bytes,
}

/// Which entries [`Streams::read`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries no consumer has read yet.
    New,
    /// Entries this consumer read before and has not acknowledged (after a restart).
    Pending,
}

/// One reliable delivery stream per gateway: entries stay until the consumer acknowledges
/// them, so a gateway that restarts reads again what it had not finished.
pub trait Streams: Send + Sync + 'static {
    /// Appends `payload` to `stream`; returns the entry's id.
    fn push(&self, stream: String, payload: Bytes) -> BoxFuture<'_, BusResult<String>>;
    /// Up to `max` entries for `consumer`, waiting up to `block` for new ones.
    fn read(
        &self,
        stream: String,
        consumer: String,
        from: ReadFrom,
        max: usize,
        block: Duration,
    ) -> BoxFuture<'_, BusResult<Vec<StreamEntry>>>;
    /// Acknowledges entries: they are not returned again.
    fn ack(&self, stream: String, ids: Vec<String>) -> BoxFuture<'_, BusResult<()>>;
}

/// Messages published to a channel reach the subscribers of that moment, and nobody else.
pub trait PubSub: Send + Sync + 'static {
    /// Publishes `payload` on `channel`.
    fn publish(&self, channel: String, payload: Bytes) -> BoxFuture<'_, BusResult<()>>;
    /// Subscribes to `channel`; dropping the receiver ends the subscription. The receiver
    /// gets what is published from now on; on a Redis Cluster, an event published just
    /// before, while the channel had no receiver in this process, may still arrive (the
    /// cluster bus forwards asynchronously).
    fn subscribe(&self, channel: String) -> BoxFuture<'_, BusResult<mpsc::Receiver<Bytes>>>;
}

/// A cache of values the database owns; every write to the database deletes the keys it
/// makes stale.
pub trait Cache: Send + Sync + 'static {
    /// The value of `key`, if cached.
    fn get(&self, key: String) -> BoxFuture<'_, BusResult<Option<Bytes>>>;
    /// Caches `value` under `key` for `ttl`.
    fn set(&self, key: String, value: Bytes, ttl: Duration) -> BoxFuture<'_, BusResult<()>>;
    /// Caches `value` under `key` for `ttl` unless the key holds a value; returns whether it
    /// was set. A reader filling the cache uses it so that it never overwrites what a writer
    /// put there meanwhile (a revocation, say).
    fn set_if_absent(
        &self,
        key: String,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>>;
    /// Forgets `keys`.
    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, BusResult<()>>;
}

/// One of each bus concern, shared by a process's services.
#[derive(Clone)]
pub struct Bus {
    /// User → device → gateway.
    pub routes: Arc<dyn Routes>,
    /// Per-gateway delivery streams.
    pub streams: Arc<dyn Streams>,
    /// Ephemeral events.
    pub pubsub: Arc<dyn PubSub>,
    /// Cached profiles, friend lists, member lists.
    pub cache: Arc<dyn Cache>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

impl Bus {
    /// Every concern on one backend.
    pub fn new<B: Routes + Streams + PubSub + Cache>(backend: Arc<B>) -> Bus {
        Bus {
            routes: backend.clone(),
            streams: backend.clone(),
            pubsub: backend.clone(),
            cache: backend,
        }
    }

    /// Everything inside this process.
    pub fn in_process() -> Bus {
        Bus::new(Arc::new(memory::Memory::new()))
    }

    /// The bus `config` names: Redis at its URL, the Redis Cluster its nodes belong to, or
    /// inside this process without either.
    ///
    /// # Errors
    /// [`StoreError::Redis`] when Redis cannot be reached, or both a URL and cluster nodes
    /// are given.
    pub async fn connect(config: &RedisConfig) -> BusResult<Bus> {
        let redis = match (&config.url, config.cluster.as_slice()) {
            (None, []) => return Ok(Bus::in_process()),
            (Some(url), []) => self::redis::Redis::connect_with_prefix(url, &config.prefix).await?,
            (None, nodes) => self::redis::Redis::connect_cluster(nodes, &config.prefix).await?,
            (Some(_), _) => {
                let message = "redis.url and redis.cluster are both set";
                let kind = ::redis::ErrorKind::InvalidClientConfig;
                return Err(StoreError::Redis((kind, message).into()));
            }
        };
        Ok(Bus::new(Arc::new(redis)))
    }
}

/// The delivery stream of a gateway.
pub fn delivery_stream(gateway: &str) -> String {
    format!("mpim:delivery:{gateway}")
}

/// Cache keys, in one place so that writers invalidate what readers fill.
///
/// Each is used alone (`GET`, `SET`, one `DEL` each), so none needs a Redis Cluster hash
/// tag; the keys that are used together are listed in [`redis`](self::redis#keys).
pub mod keys {
    /// A user's profile.
    pub fn profile(user: u64) -> String {
        format!("mpim:cache:profile:{user}")
    }
    /// A user's friend ids.
    pub fn friends(user: u64) -> String {
        format!("mpim:cache:friends:{user}")
    }
    /// The ids a user blocked.
    pub fn blocked(user: u64) -> String {
        format!("mpim:cache:blocked:{user}")
    }
    /// A group's member ids with role and mute state.
    pub fn members(group: u64) -> String {
        format!("mpim:cache:members:{group}")
    }
    /// A session's revocation state.
    pub fn session(session: &str) -> String {
        format!("mpim:cache:session:{session}")
    }
}

/// For tests: a Redis bus of their own on the test server, or on the test cluster.
pub mod testing {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::BusResult;
    use super::redis::Redis;

    /// The Redis server tests use: `TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
    pub fn redis_url() -> String {
        std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
    }

    /// The Redis Cluster tests use, if any: the comma-separated node URLs in
    /// `TEST_REDIS_CLUSTER` (`scripts/redis-cluster.sh up` starts one on 127.0.0.1:7001-7003,
    /// and `scripts/test.sh` sets the variable). None when it is unset or empty.
    pub fn redis_cluster_nodes() -> Option<Vec<String>> {
        let nodes: Vec<String> = std::env::var("TEST_REDIS_CLUSTER")
            .ok()?
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(str::to_owned)
            .collect();
        (!nodes.is_empty()).then_some(nodes)
    }

    /// A key prefix no other test shares.
    pub fn unique_prefix() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        format!(
            "test:{}:{}:{}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        )
    }

    /// A Redis bus whose keys and channels no other test shares (a unique prefix); call
    /// [`Redis::clear`] at the end to delete what it wrote.
    ///
    /// # Errors
    /// When the test server cannot be reached.
    pub async fn redis() -> BusResult<Arc<Redis>> {
        Ok(Arc::new(
            Redis::connect_with_prefix(&redis_url(), &unique_prefix()).await?,
        ))
    }

    /// As [`redis()`], on the test cluster; None without one ([`redis_cluster_nodes`]).
    ///
    /// # Errors
    /// When the test cluster cannot be reached.
    pub async fn redis_cluster() -> Option<BusResult<Arc<Redis>>> {
        let nodes = redis_cluster_nodes()?;
        let redis = Redis::connect_cluster(&nodes, &unique_prefix()).await;
        Some(redis.map(Arc::new))
    }

    /// Runs `scenario` on a Redis bus of its own ([`redis()`]), then deletes what it wrote.
    ///
    /// # Panics
    /// When the test server cannot be reached or cleared.
    pub async fn with_redis<F, Fut>(scenario: F)
    where
        F: FnOnce(super::Bus) -> Fut,
        Fut: Future<Output = ()>,
    {
        let redis = redis().await.expect("redis at TEST_REDIS_URL");
        scenario(super::Bus::new(redis.clone())).await;
        redis.clear().await.expect("clear the test prefix");
    }

    /// As [`with_redis`], on the test cluster; without one (`TEST_REDIS_CLUSTER` unset) it
    /// says so and passes.
    ///
    /// # Panics
    /// When the test cluster cannot be reached or cleared.
    pub async fn with_redis_cluster<F, Fut>(scenario: F)
    where
        F: FnOnce(super::Bus) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Some(redis) = redis_cluster().await else {
            eprintln!("skipped: TEST_REDIS_CLUSTER is not set (scripts/redis-cluster.sh up)");
            return;
        };
        let redis = redis.expect("the redis cluster at TEST_REDIS_CLUSTER");
        scenario(super::Bus::new(redis.clone())).await;
        redis.clear().await.expect("clear the test prefix");
    }
}

/// Pub/sub channels.
pub mod channels {
    /// Events for the connections one gateway holds (kick, typing, read receipts, friend
    /// requests): the sender looks up the routes of the users concerned and publishes once
    /// per gateway.
    pub fn gateway(gateway: &str) -> String {
        format!("mpim:events:gateway:{gateway}")
    }
    /// Events every gateway hears.
    pub const BROADCAST: &str = "mpim:events:all";
}

/// Each `async fn scenario(bus: Bus)` as three tests: `in_process::<name>`, `redis::<name>`
/// (on a Redis key prefix of its own) and `redis_cluster::<name>` (the same on the Redis
/// Cluster at `TEST_REDIS_CLUSTER`; passes with a note when that is unset).
#[macro_export]
macro_rules! on_every_bus {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::bus::Bus::in_process()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::bus::testing::with_redis(super::$name).await;
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    $crate::bus::testing::with_redis_cluster(super::$name).await;
                }
            )*
        }
    };
}
