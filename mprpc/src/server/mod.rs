//! The server: accepts connections, routes each request to a [`Service`] by service and method
//! name, runs every call as its own task, and shuts down gracefully.
//!
//! Limits, all configurable through [`ServerBuilder`]:
//! - connections: at most `max_connections` at once; at the limit a new connection takes
//!   the place of the longest-idle one (idle a second or more, no call in flight), which is
//!   sent a `GOAWAY` and closed; when none is idle the newcomer is sent a `GOAWAY` with
//!   `RESOURCE_EXHAUSTED` and closed, so it can go elsewhere at once;
//! - handshake: a connection that has not completed its TLS handshake (when the server has
//!   [`ServerBuilder::tls`]) and sent a complete frame within `handshake_timeout` of being
//!   accepted is closed;
//! - calls per connection: at most `max_in_flight_per_connection`; past it the server stops
//!   reading that connection (TCP backpressure) until a call finishes;
//! - calls in total: at most `max_in_flight`; past it new calls are answered
//!   `RESOURCE_EXHAUSTED` without running (safe for the caller to retry elsewhere);
//! - queued response bytes: past `max_queued_bytes_per_connection` unwritten on one
//!   connection (a peer that does not read) the server stops reading it; past
//!   `max_queued_bytes` across the server new calls are answered `RESOURCE_EXHAUSTED`;
//! - frame size: `max_frame`, checked before anything of the claimed size is buffered;
//! - idleness: a connection with no call in flight that sends no frame for `idle_timeout` is
//!   sent a `GOAWAY` and closed, so silent peers cannot hold connection slots for ever.
//!
//! Shutdown: when the `shutdown` future passed to [`Server::serve`] completes, the server
//! stops accepting, sends every connection a `GOAWAY`, answers calls that still arrive with
//! `UNAVAILABLE`, and waits for in-flight calls up to the grace period, after which it
//! aborts what is left.

mod call;
mod clock;
mod connection;
mod handshake;
mod queued;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::discovery::{DiscoveryError, Instance, Register};
use crate::frame::{DEFAULT_MAX_FRAME, Header, Kind, Text};
use crate::hash::FastMap;
use crate::health::{Health, HealthServer};
use crate::interceptor::Interceptor;
use crate::metrics::{MethodMetrics, ServerGauges};
use crate::service::Service;
use crate::status::Code;
use crate::tls::ServerTls;

pub(crate) use call::Incoming;

/// Limits and timings of a [`Server`]; every field has the default shown on its setter in
/// [`ServerBuilder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Largest accepted frame length (default 16 MiB).
    pub max_frame: usize,
    /// Connections served at once (default 10 000).
    pub max_connections: usize,
    /// Calls in flight on one connection before reading pauses (default 1024).
    pub max_in_flight_per_connection: usize,
    /// Calls in flight across the server before new ones are shed (default 65 536).
    pub max_in_flight: usize,
    /// How long shutdown waits for in-flight calls (default 10 s).
    pub grace_period: Duration,
    /// How long a connection may stay silent with no call in flight before it is closed
    /// (default 5 min; `None` keeps idle connections open).
    pub idle_timeout: Option<Duration>,
    /// How long a new connection may take to send its first complete frame (default 10 s;
    /// `None`: no limit beyond the idle timeout).
    pub handshake_timeout: Option<Duration>,
    /// Unwritten response bytes on one connection before the server stops reading it
    /// (default 1 MiB).
    pub max_queued_bytes_per_connection: usize,
    /// Unwritten response bytes across the server before new calls are shed (default
    /// 256 MiB).
    pub max_queued_bytes: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: 10_000,
            max_in_flight_per_connection: 1024,
            max_in_flight: 65_536,
            grace_period: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            handshake_timeout: Some(Duration::from_secs(10)),
            max_queued_bytes_per_connection: 1024 * 1024,
            max_queued_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Builds a [`Server`].
#[derive(Default)]
pub struct ServerBuilder {
    services: HashMap<&'static str, Arc<dyn Service>>,
    interceptors: Vec<Arc<dyn Interceptor>>,
    config: Config,
    tls: Option<ServerTls>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("interceptors", &self.interceptors.len())
            .field("config", &self.config)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ServerBuilder {
    /// Runs `interceptor` before every handler, after those added earlier; see
    /// [`Interceptor`]. The built-in health service is not intercepted.
    pub fn intercept(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Adds a service; a later service with the same name replaces an earlier one.
    pub fn add_service(mut self, service: impl Service) -> Self {
        self.services.insert(service.name(), Arc::new(service));
        self
    }

    /// Largest accepted frame length. Default 16 MiB.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.config.max_frame = bytes;
        self
    }

    /// Connections served at once. Default 10 000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n.max(1);
        self
    }

    /// Calls in flight per connection before reading pauses. Default 1024.
    pub fn max_in_flight_per_connection(mut self, n: usize) -> Self {
        self.config.max_in_flight_per_connection = n.max(1);
        self
    }

    /// Calls in flight in total before new ones are shed. Default 65 536.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.config.max_in_flight = n.max(1);
        self
    }

    /// How long shutdown waits for in-flight calls. Default 10 s.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.config.grace_period = grace;
        self
    }

    /// How long a connection may send no frame while no call of it is in flight before the
    /// server sends it a `GOAWAY` and closes it; `None` keeps idle connections open. Default
    /// 5 min. The check runs once per period, so a connection goes between one and two
    /// periods after its last frame. Clients reconnect on their next call; a request that
    /// crossed the `GOAWAY` on the wire fails as never started, safe to retry.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.config.idle_timeout = idle.map(|idle| idle.max(Duration::from_millis(1)));
        self
    }

    /// How long a new connection may take to send its first complete frame before it is
    /// closed; `None` leaves only the idle timeout. Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.handshake_timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
        self
    }

    /// Bounds on response bytes queued and not yet written: per connection, past which the
    /// server stops reading that connection until its peer reads; and across the server,
    /// past which new calls are answered `RESOURCE_EXHAUSTED`. Default 1 MiB and 256 MiB.
    pub fn max_queued_bytes(mut self, per_connection: usize, total: usize) -> Self {
        self.config.max_queued_bytes_per_connection = per_connection;
        self.config.max_queued_bytes = total;
        self
    }

    /// Serves every connection of this server's listeners over TLS with `tls` (mutual TLS
    /// when it was made with [`ServerTls::mutual`]); without it connections are plaintext,
    /// which authenticates no one and suits trusted networks only.
    ///
    /// The TLS handshake counts against the handshake timeout: a connection must complete
    /// it and send its first frame within `handshake_timeout` (or, when that is `None`,
    /// `idle_timeout`) of being accepted, and while it handshakes it holds a connection
    /// slot that a newcomer at the connection limit may take. Failed handshakes are logged
    /// with the peer's address and counted in `mprpc_server_tls_handshake_failures_total`.
    /// Reload certificates with [`ServerTls::reload`] on a clone of `tls`.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The server. It also answers `mprpc.health.Health` unless a service of that name was added.
    ///
    /// Metrics handles are created here: install the recorder
    /// ([`metrics::install`](crate::metrics::install)) before calling it.
    pub fn build(mut self) -> Server {
        let draining = Arc::new(AtomicBool::new(false));
        let names: Vec<&'static str> = self.services.keys().copied().collect();
        if !self.services.contains_key(HealthServer::<Health>::NAME) {
            let health = Health {
                draining: draining.clone(),
                services: names,
            };
            self = self.add_service(HealthServer::new(health));
        }
        let routes = self
            .services
            .into_iter()
            .map(|(name, service)| (name, Route::new(name, service)))
            .collect();
        Server {
            shared: Arc::new(Shared {
                in_flight: Arc::new(Semaphore::new(self.config.max_in_flight)),
                routes,
                interceptors: self.interceptors.into(),
                config: self.config,
                tls: self.tls,
                draining,
                gauges: ServerGauges::new(),
                unrouted: MethodMetrics::new("other", "other"),
                queued: AtomicUsize::new(0),
                slots: parking_lot::Mutex::new(HashMap::new()),
                next_slot: AtomicU64::new(0),
                epoch: Instant::now(),
                trim: Arc::new(Trim::default()),
            }),
        }
    }
}

/// A service and the metrics of its methods.
struct Route {
    service: Arc<dyn Service>,
    /// Whether this is the built-in health service, answered while draining and not
    /// intercepted.
    health: bool,
    methods: FastMap<&'static str, Arc<MethodMetrics>>,
    other: Arc<MethodMetrics>,
}

impl Route {
    fn new(name: &'static str, service: Arc<dyn Service>) -> Route {
        let methods = service
            .methods()
            .iter()
            .map(|m| (*m, Arc::new(MethodMetrics::new(name, m))))
            .collect();
        Route {
            health: name == call::HEALTH,
            service,
            methods,
            other: Arc::new(MethodMetrics::new(name, "other")),
        }
    }

    /// The method's name as the service declared it (`None` for methods it does not list)
    /// and its metrics.
    fn lookup(&self, method: &str) -> (Option<&'static str>, &Arc<MethodMetrics>) {
        match self.methods.get_key_value(method) {
            Some((name, metrics)) => (Some(*name), metrics),
            None => (None, &self.other),
        }
    }
}

/// What every connection of a server shares.
pub(crate) struct Shared {
    routes: FastMap<&'static str, Route>,
    interceptors: Box<[Arc<dyn Interceptor>]>,
    in_flight: Arc<Semaphore>,
    config: Config,
    tls: Option<ServerTls>,
    draining: Arc<AtomicBool>,
    gauges: ServerGauges,
    /// Calls to services this server does not host.
    unrouted: MethodMetrics,
    /// Response bytes queued on every connection and not yet written.
    queued: AtomicUsize,
    /// Every open connection by number, for eviction at the connection limit. A
    /// parking_lot mutex: taken once per connection opened or closed and by an eviction's
    /// scan, never across an await.
    slots: parking_lot::Mutex<HashMap<u64, Arc<Slot>>>,
    next_slot: AtomicU64,
    epoch: Instant,
    trim: Arc<Trim>,
}

/// Gives memory back after a wave of connections closes: when the open connections fall to
/// half of their peak since the last release, and by at least [`Trim::WAVE`], the freed
/// heap is returned to the operating system ([`crate::memory::release`]), at most once per
/// [`Trim::EVERY`].
#[derive(Default)]
struct Trim {
    peak: AtomicUsize,
    /// Milliseconds after the server's epoch of the last release, plus one; 0: never.
    last_ms: AtomicU64,
    /// A release was asked for since the task last looked.
    pending: AtomicBool,
    /// The release task is alive.
    running: AtomicBool,
    /// The pending release, aborted with the server. A parking_lot mutex: held to swap the
    /// handle only.
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Trim {
    const WAVE: usize = 256;
    const EVERY: Duration = Duration::from_secs(1);

    fn opened(&self, open: usize) {
        self.peak.fetch_max(open, Ordering::Relaxed);
    }

    /// Called after each close, with the connections still open.
    fn closed(self: &Arc<Self>, open: usize, epoch: Instant) {
        let peak = self.peak.load(Ordering::Relaxed);
        if peak < open.saturating_mul(2) || peak - open < Trim::WAVE {
            return;
        }
        self.peak.store(open, Ordering::Relaxed);
        self.pending.store(true, Ordering::Release);
        if self.running.swap(true, Ordering::Acquire) {
            // The running task sees `pending` and releases once more.
            return;
        }
        let trim = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            loop {
                let Some(this) = trim.upgrade() else { return };
                if !this.pending.swap(false, Ordering::AcqRel) {
                    this.running.store(false, Ordering::Release);
                    // A close may have asked for a release between the two lines above.
                    if !this.pending.load(Ordering::Acquire)
                        || this.running.swap(true, Ordering::Acquire)
                    {
                        return;
                    }
                    continue;
                }
                let last = this.last_ms.load(Ordering::Relaxed);
                drop(this);
                if last > 0 {
                    let at = epoch + Duration::from_millis(last - 1) + Trim::EVERY;
                    tokio::time::sleep_until(at).await;
                }
                let _ = tokio::task::spawn_blocking(crate::memory::release).await;
                let Some(this) = trim.upgrade() else { return };
                let now = epoch.elapsed().as_millis() as u64 + 1;
                this.last_ms.store(now, Ordering::Relaxed);
                debug!("freed memory returned to the operating system after connections closed");
            }
        });
        *self.task.lock() = Some(task);
    }
}

impl Drop for Trim {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().take() {
            task.abort();
        }
    }
}

/// One open connection as the accept loop sees it.
pub(crate) struct Slot {
    /// Milliseconds after the server's epoch of the connection's last frame.
    last_active: AtomicU64,
    /// Calls the connection has running on tasks of their own.
    calls: AtomicUsize,
    /// Cancelled to make the connection go away.
    evict: CancellationToken,
    epoch: Instant,
}

impl Slot {
    fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_active.store(ms, Ordering::Relaxed);
    }
}

/// How long a connection must have been silent before a newcomer may take its place.
const EVICTABLE_AFTER: Duration = Duration::from_secs(1);
/// How long a newcomer waits for the place of the connection it evicted.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

impl Shared {
    fn open_slot(&self) -> (u64, Arc<Slot>) {
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            last_active: AtomicU64::new(0),
            calls: AtomicUsize::new(0),
            evict: CancellationToken::new(),
            epoch: self.epoch,
        });
        slot.touch(Instant::now());
        let open = {
            let mut slots = self.slots.lock();
            slots.insert(id, slot.clone());
            slots.len()
        };
        self.trim.opened(open);
        (id, slot)
    }

    /// Asks the longest-idle connection with no call in flight to go away; false when no
    /// connection has been idle long enough.
    fn evict_idlest(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let Some(cutoff) = now.checked_sub(EVICTABLE_AFTER.as_millis() as u64) else {
            return false;
        };
        let slots = self.slots.lock();
        let victim = slots
            .values()
            .filter(|s| !s.evict.is_cancelled() && s.calls.load(Ordering::Relaxed) == 0)
            .map(|s| (s.last_active.load(Ordering::Relaxed), s))
            .filter(|(last, _)| *last <= cutoff)
            .min_by_key(|(last, _)| *last);
        match victim {
            Some((_, slot)) => {
                slot.evict.cancel();
                true
            }
            None => false,
        }
    }
}

/// Sent to a connection the server has no room for.
fn refusal() -> BytesMut {
    let header = Header {
        kind: Kind::GoAway,
        status: Code::ResourceExhausted,
        message: Text::from_static("connection limit reached"),
        ..Header::default()
    };
    let mut buf = BytesMut::new();
    // A bodiless header with a short static message always fits.
    let _ = crate::frame::encode_raw(&mut buf, &header, &[], DEFAULT_MAX_FRAME);
    buf
}

/// An mprpc server. Build it with [`Server::builder`], run it with [`Server::serve`].
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.shared.routes.keys().collect::<Vec<_>>())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Server {
    /// Starts building a server.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Connections open right now, across every listener this server serves.
    pub fn connections(&self) -> usize {
        self.shared.slots.lock().len()
    }

    /// Starts a call made in this process (the client's in-process transport).
    pub(crate) fn start_local(&self, incoming: Incoming) -> Result<call::Running, crate::Status> {
        let draining = self.shared.draining.load(Ordering::Relaxed);
        self.shared.start(incoming, draining)
    }

    /// Serves connections from `listener` until `shutdown` completes, then drains.
    ///
    /// # Errors
    /// Only when the listener fails in a way retrying cannot fix; per-connection failures are
    /// logged and do not stop the server.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let token = CancellationToken::new();
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections));
        let mut connections = JoinSet::new();
        let local = listener.local_addr()?;
        info!(addr = %local, services = ?self.shared.routes.keys().collect::<Vec<_>>(), "serving");
        tokio::pin!(shutdown);
        // Out of file descriptors and the like: back off instead of spinning.
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
        let refusal = refusal();
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                // A finished connection's task keeps its memory until it is joined: reap
                // them as they end, not only when the next connection arrives.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    let delay = backoff.fail();
                    warn!(cause = %err, ?delay, "accept failed; backing off");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            backoff.reset();
            let shared = self.shared.clone();
            let token = token.child_token();
            let permit = limit.clone().try_acquire_owned();
            if permit.is_err() && !self.shared.evict_idlest() {
                // Best effort: a fresh socket's send buffer has room for one small frame.
                let _ = stream.try_write(&refusal);
                debug!(%peer, "connection limit reached; refused");
                continue;
            }
            let limit = limit.clone();
            connections.spawn(async move {
                let permit = match permit {
                    Ok(permit) => permit,
                    Err(_) => {
                        match tokio::time::timeout(EVICTION_WAIT, limit.acquire_owned()).await {
                            Ok(Ok(permit)) => permit,
                            _ => return,
                        }
                    }
                };
                serve_connection(stream, peer, shared, token, permit).await;
            });
        }
        drop(listener);
        self.drain(connections, token).await;
        Ok(())
    }

    /// Shuts down what [`Server::serve`] accepted: new calls are refused, every connection
    /// is told to go away, and their calls get the grace period to finish; what is left
    /// then is aborted.
    async fn drain(&self, mut connections: JoinSet<()>, token: CancellationToken) {
        self.shared.draining.store(true, Ordering::Relaxed);
        info!(connections = connections.len(), "shutting down: draining");
        token.cancel();
        let grace = self.shared.config.grace_period;
        let drained = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                left = connections.len(),
                "grace period over; aborting the calls left"
            );
            connections.shutdown().await;
        }
        debug!("server stopped");
    }

    /// Registers every service this server hosts as `instance` in `registry`, serves until
    /// `shutdown` completes, then deregisters **before** sending GOAWAY and draining, so that
    /// callers stop picking this instance while its calls in flight finish.
    ///
    /// # Errors
    /// [`ServeError::Register`] when a registration fails (nothing is served then), and
    /// [`ServeError::Io`] as [`Server::serve`].
    pub async fn serve_registered(
        &self,
        listener: TcpListener,
        registry: &dyn Register,
        instance: Instance,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let mut registrations = Vec::new();
        for service in self.shared.routes.keys() {
            registrations.push(registry.register(service, instance.clone()).await?);
        }
        info!(addr = %instance.addr, id = %instance.id, "registered");
        let shutdown = async move {
            shutdown.await;
            for registration in registrations {
                registration.deregister().await;
            }
            info!("deregistered");
        };
        self.serve(listener, shutdown).await?;
        Ok(())
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    token: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let opened = Instant::now();
    let (id, slot) = shared.open_slot();
    shared.gauges.connections.increment(1.0);
    let open = Open {
        shared: shared.clone(),
        id,
        _permit: permit,
    };
    // Frames are batched by the writer already; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let mut accepted = connection::Peer {
        addr: peer,
        identity: None,
        opened,
    };
    match shared.tls.as_ref().map(ServerTls::current) {
        None => {
            let (read, write) = stream.into_split();
            connection::serve(read, write, accepted, shared, slot, token).await;
        }
        Some(config) => {
            let stream = handshake::accept(config, stream, &accepted, &shared, &slot, &token);
            if let Some((stream, identity)) = stream.await {
                accepted.identity = identity;
                let (read, write) = tokio::io::split(stream);
                connection::serve(read, write, accepted, shared, slot, token).await;
            }
        }
    }
    drop(open);
}

/// One open connection's place: its slot, its count in the gauge and its permit, given back
/// however the connection ends (a bug that panicked its task included).
struct Open {
    shared: Arc<Shared>,
    id: u64,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.gauges.connections.decrement(1.0);
        let open = {
            let mut slots = shared.slots.lock();
            slots.remove(&self.id);
            slots.len()
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            shared.trim.closed(open, shared.epoch);
        }
    }
}

/// Why [`Server::serve_registered`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listener failed.
    #[error("listener failed")]
    Io(#[from] std::io::Error),
    /// The instance could not be registered.
    #[error("registration failed")]
    Register(#[from] DiscoveryError),
}
