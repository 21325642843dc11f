//! The server: accepts connections, routes each request to a [`Service`] by service and method
//! name, runs every call as its own task, and shuts down gracefully.
//!
//! Limits, all configurable through [`ServerBuilder`]:
//! - connections: at most `max_connections` at once; the accept loop waits for a free slot;
//! - calls per connection: at most `max_in_flight_per_connection`; past it the server stops
//!   reading that connection (TCP backpressure) until a call finishes;
//! - calls in total: at most `max_in_flight`; past it new calls are answered
//!   `RESOURCE_EXHAUSTED` without running (safe for the caller to retry elsewhere);
//! - frame size: `max_frame`, checked before anything of the claimed size is buffered;
//! - idleness: a connection with no call in flight that sends no frame for `idle_timeout` is
//!   sent a `GOAWAY` and closed, so silent peers cannot hold connection slots for ever.
//!
//! Shutdown: when the `shutdown` future passed to [`Server::serve`] completes, the server
//! stops accepting, sends every connection a `GOAWAY`, answers calls that still arrive with
//! `UNAVAILABLE`, and waits for in-flight calls up to the grace period, after which it
//! aborts what is left.

mod connection;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::discovery::{DiscoveryError, Instance, Register};
use crate::frame::DEFAULT_MAX_FRAME;
use crate::health::{Health, HealthServer};
use crate::metrics::{MethodMetrics, ServerGauges};
use crate::service::Service;

/// Limits and timings of a [`Server`]; every field has the default shown on its setter in
/// [`ServerBuilder`].
#[derive(Debug, Clone)]
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
        }
    }
}

/// Builds a [`Server`].
#[derive(Default)]
pub struct ServerBuilder {
    services: HashMap<&'static str, Arc<dyn Service>>,
    config: Config,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("config", &self.config)
            .finish()
    }
}

impl ServerBuilder {
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
                config: self.config,
                draining,
                gauges: ServerGauges::new(),
                unrouted: MethodMetrics::new("other", "other"),
            }),
        }
    }
}

/// A service and the metrics of its methods.
struct Route {
    service: Arc<dyn Service>,
    methods: HashMap<&'static str, MethodMetrics>,
    other: MethodMetrics,
}

impl Route {
    fn new(name: &'static str, service: Arc<dyn Service>) -> Route {
        let methods = service
            .methods()
            .iter()
            .map(|m| (*m, MethodMetrics::new(name, m)))
            .collect();
        Route {
            service,
            methods,
            other: MethodMetrics::new(name, "other"),
        }
    }

    fn metrics(&self, method: &str) -> &MethodMetrics {
        self.methods.get(method).unwrap_or(&self.other)
    }
}

/// What every connection of a server shares.
struct Shared {
    routes: HashMap<&'static str, Route>,
    in_flight: Arc<Semaphore>,
    config: Config,
    draining: Arc<AtomicBool>,
    gauges: ServerGauges,
    /// Calls to services this server does not host.
    unrouted: MethodMetrics,
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
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let shared = self.shared.clone();
                    let token = token.child_token();
                    connections.spawn(async move {
                        shared.gauges.connections.increment(1.0);
                        connection::serve(stream, peer, shared.clone(), token).await;
                        shared.gauges.connections.decrement(1.0);
                        drop(permit);
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(cause = %err, "accept failed; backing off {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
            // Reap finished connections so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
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
        Ok(())
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
