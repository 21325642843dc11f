//! One instance as a client sees it: how calls reach it (a connection pool, or a server in
//! this process), its load (calls in flight) and its health (outlier ejection).
//!
//! The client's balancer picks an [`Endpoint`]; the endpoint carries the attempt.
//!
//! # Layout
//! - this module: [`Endpoint`], its [`Transport`] and health record, and one attempt on it;
//! - `pool`: N lazily dialled connections per endpoint, redialled with backoff;
//! - `connection`: one multiplexed connection and its keepalive;
//! - `local`: the in-process transport.

mod connection;
mod local;
pub(crate) mod pool;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::discovery::Instance;
use crate::error::Error;
use crate::frame::Text;
use crate::method::Method;
use crate::server::Server;
use crate::status::{Code, Status};
use pool::Pool;

/// When an instance is taken out of picking: after `after` consecutive failures, for
/// delays from `backoff` (doubling per ejection in a row).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ejection {
    pub(crate) after: u32,
    pub(crate) backoff: Backoff,
}

/// How calls reach an endpoint.
pub(crate) enum Transport {
    /// Over TCP, through a pool of multiplexed connections.
    Tcp(Pool),
    /// Straight into a server in this process.
    Local(Server),
}

/// An instance the client may call.
///
/// Outlier ejection: after `eject_after` consecutive failures that say the instance itself is
/// unwell (cannot connect, connection lost, `UNAVAILABLE`), it is taken out of picking for a
/// period that doubles per ejection (`eject_base` up to `eject_max`). When the period ends,
/// the next pick probes it; one success clears its record.
///
/// An endpoint stands for one instance id at one address for as long as discovery lists
/// them. When the instance's record changes otherwise (weight, zone, version), the client
/// updates the endpoint in place, so its connections, load and health carry over.
pub struct Endpoint {
    /// The instance's latest record. A parking_lot mutex: held only to clone or swap the
    /// `Arc`, and read off the call path (balancer rebuilds, logs, [`Endpoint::instance`]).
    instance: parking_lot::Mutex<Arc<Instance>>,
    /// The record's weight, copied so that weighted picking reads it without the lock.
    weight: AtomicU32,
    /// The `host:port` dialled; fixed for the endpoint's life.
    addr: Box<str>,
    transport: Transport,
    in_flight: AtomicUsize,
    /// Attempts started, for operators and tests; Relaxed like `in_flight`.
    attempts: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds since [`epoch`]; 0 when not ejected.
    ejected_until: AtomicU64,
    ejection: Ejection,
    ejected: metrics::Counter,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .field("available", &self.is_available())
            .finish()
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that 0 can mean "never ejected".
    Instant::now()
        .saturating_duration_since(epoch())
        .as_millis() as u64
        + 1
}

/// Holds one call's place in [`Endpoint::in_flight`].
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    /// An endpoint reached over TCP.
    pub(crate) fn new(instance: Instance, pool: pool::Config, ejection: Ejection) -> Endpoint {
        let pool = Pool::new(instance.addr.clone(), pool);
        Endpoint::with_transport(instance, Transport::Tcp(pool), ejection)
    }

    pub(crate) fn with_transport(
        instance: Instance,
        transport: Transport,
        ejection: Ejection,
    ) -> Endpoint {
        Endpoint {
            weight: AtomicU32::new(instance.weight),
            addr: instance.addr.clone().into(),
            instance: parking_lot::Mutex::new(Arc::new(instance)),
            transport,
            in_flight: AtomicUsize::new(0),
            attempts: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejection,
            ejected: crate::metrics::client_ejections(),
        }
    }

    /// The instance as last discovered.
    pub fn instance(&self) -> Arc<Instance> {
        self.instance.lock().clone()
    }

    /// The `host:port` this endpoint dials; fixed for its lifetime.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The instance's weight as last discovered; what weighted balancers read.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Whether this endpoint stands for `instance`: the same id at the same address.
    pub(crate) fn serves(&self, instance: &Instance) -> bool {
        *self.addr == instance.addr && self.instance.lock().id == instance.id
    }

    /// Takes `instance`'s record (weight, zone, version…) in place of the current one.
    /// Callers replace the balancer's picker afterwards, so pickers built from the weight
    /// see the new one.
    pub(crate) fn update(&self, instance: &Instance) {
        let mut current = self.instance.lock();
        if **current != *instance {
            if current.weight != instance.weight {
                debug!(addr = %instance.addr, from = current.weight, to = instance.weight, "weight changed");
            }
            self.weight.store(instance.weight, Ordering::Relaxed);
            *current = Arc::new(instance.clone());
        }
    }

    /// Calls this client has in flight on the instance.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Attempts this client has started on the instance.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Whether the instance is not currently ejected.
    pub fn is_available(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Counts one attempt in the endpoint's load until the returned guard drops.
    pub(crate) fn start_call(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.attempts.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// One attempt of a call on this endpoint, counted in its load while it runs.
    ///
    /// # Errors
    /// As [`Client::unary`](crate::Client::unary); the caller records the outcome.
    pub(crate) async fn call<Req, Resp>(
        &self,
        method: &Method,
        request: &Req,
        metadata: &[(Text, Text)],
        deadline: Option<Instant>,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let _in_flight = self.start_call();
        let pool = match &self.transport {
            Transport::Tcp(pool) => pool,
            Transport::Local(server) => {
                return local::call(server, method, request, metadata.to_vec(), deadline).await;
            }
        };
        let conn = pool.get().await?;
        let timeout_us = deadline.map_or(0, |d| {
            d.saturating_duration_since(Instant::now())
                .as_micros()
                .clamp(1, u64::MAX as u128) as u64
        });
        let frame = conn
            .call(method, timeout_us, metadata.to_vec(), request)
            .await?;
        if frame.header.status != Code::Ok {
            let status = Status::new(frame.header.status, frame.header.message.as_str());
            return Err(Error::Status(status));
        }
        Resp::decode(frame.body).map_err(Error::Decode)
    }

    /// Sends a PING over one of the endpoint's connections and waits for the PONG; a
    /// server in this process is always there.
    ///
    /// # Errors
    /// As [`Client::ping`](crate::Client::ping); the caller records the outcome.
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        match &self.transport {
            Transport::Tcp(pool) => match pool.get().await {
                Ok(conn) => conn.ping().await,
                Err(err) => Err(err),
            },
            Transport::Local(_) => Ok(()),
        }
    }

    /// Updates the health record with one call's outcome.
    pub(crate) fn record<T>(&self, result: &Result<T, Error>) {
        let unwell = match result {
            Ok(_) => false,
            Err(err) => match err {
                // Not this instance's certificate, or not ours: retrying will not fix it.
                Error::Tls { .. } => {
                    let after = self.ejection.after.saturating_sub(1);
                    self.consecutive_failures
                        .fetch_max(after, Ordering::Relaxed);
                    true
                }
                Error::Connect { .. } | Error::ConnectionLost => true,
                Error::Unavailable(_) => true,
                Error::Status(status) => status.code() == Code::Unavailable,
                _ => false,
            },
        };
        if !unwell {
            if self.consecutive_failures.load(Ordering::Relaxed) != 0
                || self.ejected_until.load(Ordering::Relaxed) != 0
            {
                if self.ejected_until.swap(0, Ordering::Relaxed) != 0 {
                    info!(addr = %self.addr, "instance healthy again");
                }
                self.consecutive_failures.store(0, Ordering::Relaxed);
                self.ejections.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.ejection.after {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
            let period = self.ejection.backoff.delay(n);
            // Saturating: a period too long to count in milliseconds (`eject_max` of
            // `Duration::MAX`) ejects until a probe succeeds instead of overflowing.
            let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
            self.ejected_until
                .store(now_ms().saturating_add(period_ms), Ordering::Relaxed);
            self.ejected.increment(1);
            warn!(addr = %self.addr, ?period, "instance ejected after repeated failures");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_eject_and_time_brings_it_back() {
        let ejection = Ejection {
            after: 3,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
        };
        let pool = crate::client::Config::default().pool();
        let endpoint = Endpoint::new(Instance::new("127.0.0.1:1"), pool, ejection);
        let lost: Result<(), Error> = Err(Error::ConnectionLost);
        for _ in 0..2 {
            endpoint.record(&lost);
        }
        assert!(endpoint.is_available());
        endpoint.record(&lost);
        assert!(!endpoint.is_available());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(endpoint.is_available(), "probe after the first period");
        for _ in 0..3 {
            endpoint.record(&lost);
        }
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(
            !endpoint.is_available(),
            "the second period is twice as long"
        );
        tokio::time::advance(Duration::from_millis(600)).await;
        endpoint.record(&Ok(()));
        assert!(endpoint.is_available());
        // Application errors say nothing about the instance's health.
        for _ in 0..10 {
            endpoint.record::<()>(&Err(Error::Status(crate::Status::not_found("x"))));
        }
        assert!(endpoint.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_too_long_for_the_clock_lasts_until_a_success() {
        let ejection = Ejection {
            after: 1,
            backoff: Backoff::new(Duration::MAX, Duration::MAX),
        };
        let pool = crate::client::Config::default().pool();
        let endpoint = Endpoint::new(Instance::new("127.0.0.1:1"), pool, ejection);
        endpoint.record::<()>(&Err(Error::ConnectionLost));
        assert!(!endpoint.is_available());
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert!(!endpoint.is_available());
        endpoint.record(&Ok(()));
        assert!(endpoint.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tls_failure_ejects_at_once() {
        let ejection = Ejection {
            after: 5,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
        };
        let pool = crate::client::Config::default().pool();
        let endpoint = Endpoint::new(Instance::new("127.0.0.1:1"), pool, ejection);
        endpoint.record::<()>(&Err(Error::Tls {
            addr: "127.0.0.1:1".into(),
            reason: "certificate not valid for name".into(),
        }));
        assert!(!endpoint.is_available());
    }
}
