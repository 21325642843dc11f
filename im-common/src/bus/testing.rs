//! For tests: a Redis bus of their own on the test server, or on the test cluster, a cache
//! that holds fills back ([`FillGate`]) to force a race's interleaving, a cache that is
//! down ([`DownCache`]), and what a test does when something it needs is missing
//! ([`prerequisite`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::redis::Redis;
use super::{Bus, BusResult, Cache, FillToken};
use crate::StoreError;

/// The Redis server tests use: `TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Gives back `found`, something a test needs from outside (a server, a program). When it
/// is None, `missing` says what is missing and how to provide it: with `TEST_STRICT` set
/// to anything but empty (`scripts/test.sh` sets it) the test fails with that message;
/// otherwise it notes "skipped: `missing`" and gets None, to return and pass.
///
/// # Panics
/// When `found` is None and `TEST_STRICT` is set.
pub fn prerequisite<T>(found: Option<T>, missing: &str) -> Option<T> {
    if found.is_none() {
        let strict = std::env::var_os("TEST_STRICT").is_some_and(|value| !value.is_empty());
        assert!(
            !strict,
            "{missing} (TEST_STRICT is set: nothing is skipped)"
        );
        eprintln!("skipped: {missing}");
    }
    found
}

/// The Redis Cluster tests use: the comma-separated node URLs in `TEST_REDIS_CLUSTER`
/// (`scripts/redis-cluster.sh up` starts one on 127.0.0.1:7001-7003, and `scripts/test.sh`
/// sets the variable). Without one (unset or empty) a missing [`prerequisite`]: None, or a
/// failure under `TEST_STRICT`.
///
/// # Panics
/// When `TEST_STRICT` is set and `TEST_REDIS_CLUSTER` is not.
pub fn redis_cluster_nodes() -> Option<Vec<String>> {
    let nodes: Vec<String> = std::env::var("TEST_REDIS_CLUSTER")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(str::to_owned)
        .collect();
    prerequisite(
        (!nodes.is_empty()).then_some(nodes),
        "TEST_REDIS_CLUSTER is not set: set it to the node URLs of a Redis Cluster, \
         e.g. `scripts/redis-cluster.sh up` then `export TEST_REDIS_CLUSTER=$(scripts/redis-cluster.sh urls)`",
    )
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
///
/// # Panics
/// As [`redis_cluster_nodes`].
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
    F: FnOnce(Bus) -> Fut,
    Fut: Future<Output = ()>,
{
    let redis = redis().await.expect("redis at TEST_REDIS_URL");
    scenario(Bus::new(redis.clone())).await;
    redis.clear().await.expect("clear the test prefix");
}

/// As [`with_redis`], on the test cluster; without one, a missing [`prerequisite`]
/// ([`redis_cluster_nodes`]).
///
/// # Panics
/// When the test cluster cannot be reached or cleared, or is missing under `TEST_STRICT`.
pub async fn with_redis_cluster<F, Fut>(scenario: F)
where
    F: FnOnce(Bus) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(redis) = redis_cluster().await else {
        return;
    };
    let redis = redis.expect("the redis cluster at TEST_REDIS_CLUSTER");
    scenario(Bus::new(redis.clone())).await;
    redis.clear().await.expect("clear the test prefix");
}

/// A cache in front of a bus's cache that holds back the next fill of one key, so that a
/// test can run a write (and its invalidation) between a reader's database read and its
/// fill: the interleaving of a stale write-back, forced without timing.
pub struct FillGate {
    inner: Arc<dyn Cache>,
    armed: Mutex<Option<Armed>>,
}

/// The key whose next fill is held, and the two sides of the hold.
struct Armed {
    key: String,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// A fill held back by [`FillGate::arm`].
pub struct HeldFill {
    reached: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

impl HeldFill {
    /// Waits until a reader has read the database and is about to fill.
    ///
    /// # Panics
    /// When the gate is dropped first.
    pub async fn reached(&mut self) {
        (&mut self.reached).await.expect("the gate is dropped");
    }

    /// Lets the fill go on.
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

impl FillGate {
    /// `bus` with its cache behind a gate, and the gate.
    pub fn wrap(bus: &Bus) -> (Bus, Arc<FillGate>) {
        let gate = Arc::new(FillGate {
            inner: bus.cache.clone(),
            armed: Mutex::new(None),
        });
        let mut gated = bus.clone();
        gated.cache = gate.clone();
        (gated, gate)
    }

    /// Holds back the next fill of `key`.
    pub fn arm(&self, key: String) -> HeldFill {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        *self.armed.lock() = Some(Armed {
            key,
            reached: reached_tx,
            release: release_rx,
        });
        HeldFill { reached, release }
    }

    /// The hold for `key`, if armed for it (taken: only one fill is held).
    fn take(&self, key: &str) -> Option<Armed> {
        // A parking_lot mutex, held for the take only, never across an await.
        let mut armed = self.armed.lock();
        if armed.as_ref().is_some_and(|armed| armed.key == key) {
            armed.take()
        } else {
            None
        }
    }
}

impl Cache for FillGate {
    fn get(&self, key: String) -> BoxFuture<'_, BusResult<Option<Bytes>>> {
        self.inner.get(key)
    }

    fn set(&self, key: String, value: Bytes, ttl: Duration) -> BoxFuture<'_, BusResult<()>> {
        self.inner.set(key, value, ttl)
    }

    fn set_if_absent(
        &self,
        key: String,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>> {
        self.inner.set_if_absent(key, value, ttl)
    }

    fn fill_token(&self, key: String) -> BoxFuture<'_, BusResult<FillToken>> {
        self.inner.fill_token(key)
    }

    fn fill(
        &self,
        key: String,
        token: FillToken,
        value: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>> {
        async move {
            if let Some(armed) = self.take(&key) {
                let _ = armed.reached.send(());
                let _ = armed.release.await;
            }
            self.inner.fill(key, token, value, ttl).await
        }
        .boxed()
    }

    fn delete(&self, keys: Vec<String>) -> BoxFuture<'_, BusResult<()>> {
        self.inner.delete(keys)
    }

    fn count(&self, key: String, window: Duration) -> BoxFuture<'_, BusResult<u64>> {
        self.inner.count(key, window)
    }
}

/// A cache whose every operation fails, as an unreachable Redis would.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownCache;

impl DownCache {
    fn down<T: Send + 'static>() -> BoxFuture<'static, BusResult<T>> {
        futures::future::ready(Err(StoreError::Precondition("cache down".into()))).boxed()
    }
}

impl Cache for DownCache {
    fn get(&self, _key: String) -> BoxFuture<'_, BusResult<Option<Bytes>>> {
        DownCache::down()
    }
    fn set(&self, _key: String, _value: Bytes, _ttl: Duration) -> BoxFuture<'_, BusResult<()>> {
        DownCache::down()
    }
    fn set_if_absent(
        &self,
        _key: String,
        _value: Bytes,
        _ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>> {
        DownCache::down()
    }
    fn fill_token(&self, _key: String) -> BoxFuture<'_, BusResult<FillToken>> {
        DownCache::down()
    }
    fn fill(
        &self,
        _key: String,
        _token: FillToken,
        _value: Bytes,
        _ttl: Duration,
    ) -> BoxFuture<'_, BusResult<bool>> {
        DownCache::down()
    }
    fn delete(&self, _keys: Vec<String>) -> BoxFuture<'_, BusResult<()>> {
        DownCache::down()
    }
    fn count(&self, _key: String, _window: Duration) -> BoxFuture<'_, BusResult<u64>> {
        DownCache::down()
    }
}
