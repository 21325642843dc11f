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
//! That is why the delivery stream of a gateway dead for long can be deleted, pending
//! entries and all ([`Routes::dead_since`], [`Streams::remove`]).

pub mod fanout;
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
    /// Gateways that are not alive and whose last heartbeat is at least `older_than` ago, in
    /// no particular order: the ones whose delivery streams may go.
    ///
    /// Each heartbeat records when it came, and the record outlives the sweep of the
    /// gateway's routes until [`Routes::forget_dead`]. A gateway that [`Routes::sweep`]
    /// found lapsed without a recorded beat (it only bound routes) counts as last seen at
    /// that sweep.
    fn dead_since(&self, older_than: Duration) -> BoxFuture<'_, BusResult<Vec<String>>>;
    /// Forgets when `gateway` last beat, if that is still at least `older_than` ago (one
    /// that beat again since [`Routes::dead_since`] named it is kept); returns whether it
    /// forgot. After this the gateway is no longer among the dead until it beats again.
    fn forget_dead(&self, gateway: String, older_than: Duration) -> BoxFuture<'_, BusResult<bool>>;
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
    /// Deletes `stream` with all its entries, pending ones included, and its consumers'
    /// state; returns whether it existed. A later push or read starts an empty stream.
    /// (For the stream of a gateway that is gone: see [`Routes::dead_since`].)
    fn remove(&self, stream: String) -> BoxFuture<'_, BusResult<bool>>;
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

/// A cache of values the database owns; every write to the database invalidates the keys
/// it makes stale ([`Cache::delete`], after the commit).
///
/// A reader that misses must not put back what it read before a write committed: it takes
/// a [`FillToken`] *before* reading the database and fills with [`Cache::fill`], which is
/// refused when the key was invalidated since the token was taken. So a read that started
/// before a kick or a block never caches the old list after the invalidation ran
/// ([`read_through`] does it all). The guarantee holds for fills that come within
/// [`GENERATION_TTL`] of their token (reads are bounded by call deadlines of seconds).
pub trait Cache: Send + Sync + 'static {
    /// The value of `key`, if cached.
    fn get(&self, key: String) -> BoxFuture<'_, BusResult<Option<Bytes>>>;
    /// Caches `value` under `key` for `ttl`, unconditionally (a writer's own value).
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
    /// The token a reader takes before it reads `key`'s value from the database.
    fn fill_token(&self, key: String) -> BoxFuture<'_, BusResult<FillToken>>;
    /// Caches `value` (read from the database after `token` was taken) under `key` for
    /// `ttl`, unless `key` was invalidated since; returns whether it was cached.
    fn fill(
        &self,
        key: String,
        token: FillToken,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>>;
    /// Invalidates `keys`: forgets their values and refuses every [`Cache::fill`] whose
    /// token was taken before.
    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, BusResult<()>>;
    /// Adds one to the counter `key`, which lives for `window` from its first count; returns
    /// the count. (Failed logins are counted so.) [`Cache::get`] reads it as decimal text.
    fn count(&self, key: String, window: Duration) -> BoxFuture<'_, BusResult<u64>>;
}

/// How long an invalidation is remembered against late fills (see [`Cache`]).
pub const GENERATION_TTL: Duration = Duration::from_secs(600);

/// What [`Cache::fill_token`] returns: the key's generation when the read began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillToken(pub(crate) u64);

/// Reads `key` through `cache`: the cached value if `decode` accepts it, else `load()`'s
/// (from the database), cached for `ttl` unless the key was invalidated while it loaded. A
/// cache that fails only costs the database read (logged at debug level, counted in
/// `mpim_cache_failures_total`).
///
/// # Errors
/// `load`'s.
pub async fn read_through<T, E, Fut>(
    cache: &dyn Cache,
    key: String,
    ttl: Duration,
    decode: impl FnOnce(Bytes) -> Option<T>,
    encode: impl FnOnce(&T) -> Bytes,
    load: impl FnOnce() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let failed = |err: StoreError| {
        metrics::counter!("mpim_cache_failures_total").increment(1);
        tracing::debug!(cause = %err, "cache unavailable; reading the database");
    };
    match cache.get(key.clone()).await {
        Ok(Some(bytes)) => {
            if let Some(value) = decode(bytes) {
                return Ok(value);
            }
        }
        Ok(None) => {}
        Err(err) => failed(err),
    }
    // Taken before the read: an invalidation between the two makes the fill a no-op.
    let token = cache.fill_token(key.clone()).await.map_err(failed).ok();
    let value = load().await?;
    if let Some(token) = token
        && let Err(err) = cache.fill(key, token, encode(&value), ttl).await
    {
        failed(err);
    }
    Ok(value)
}

/// Reads a list of user ids (friends, blocks, a group's members) through `cache`, as
/// [`read_through`] does, stored as a `UserIds` message: the one encoding every service
/// reads and writes such lists in.
///
/// # Errors
/// `load`'s.
pub async fn read_ids_through<E, Fut>(
    cache: &dyn Cache,
    key: String,
    ttl: Duration,
    load: impl FnOnce() -> Fut,
) -> Result<Vec<u64>, E>
where
    Fut: Future<Output = Result<Vec<u64>, E>>,
{
    use prost::Message as _;
    let decode = |bytes: Bytes| {
        crate::proto::UserIds::decode(bytes)
            .ok()
            .map(|ids| ids.user_ids)
    };
    let encode = |ids: &Vec<u64>| {
        let encoded = crate::proto::UserIds {
            user_ids: ids.clone(),
        };
        Bytes::from(encoded.encode_to_vec())
    };
    read_through(cache, key, ttl, decode, encode, load).await
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
    /// Failed logins for an account name (hex, so that any name makes a plain key).
    pub fn login_failures_by_name(name: &str) -> String {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("mpim:login-failures:name:{hex}")
    }
    /// Failed logins from a client address.
    pub fn login_failures_by_addr(addr: std::net::IpAddr) -> String {
        format!("mpim:login-failures:addr:{addr}")
    }
    /// A session's revocation state.
    pub fn session(session: &str) -> String {
        format!("mpim:cache:session:{session}")
    }
}

pub mod testing;

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
/// Cluster at `TEST_REDIS_CLUSTER`; when that is unset it passes with a note, or fails under
/// `TEST_STRICT`, as `scripts/test.sh` and CI run it).
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
