//! A fixed number of lazily dialled connections to one endpoint, redialled with backoff
//! when they break.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::connection::Connection;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::tls::{self, ClientTls};

/// How a pool dials and keeps its connections.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) size: usize,
    /// Limit on one dial: the TCP connect and the TLS handshake together.
    pub(crate) connect_timeout: Duration,
    pub(crate) max_frame: usize,
    pub(crate) keepalive: Option<Duration>,
    /// Redial delays after failed dials.
    pub(crate) redial: Backoff,
    /// TLS for every connection, when set.
    pub(crate) tls: Option<Tls>,
}

/// A pool's TLS: the client configuration and the name the server's certificate must carry.
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    pub(crate) client: ClientTls,
    pub(crate) name: Arc<str>,
}

/// Connections to one endpoint. Calls pick slots round robin.
pub(crate) struct Pool {
    addr: String,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    config: Config,
    gauge: metrics::Gauge,
}

struct Slot {
    /// The live connection. A parking_lot mutex: held only to clone or swap an `Arc`.
    conn: parking_lot::Mutex<Option<Arc<Connection>>>,
    /// Serialises dials of this slot so one outage causes one dial, not one per call. Held
    /// across the dial on purpose; it guards nothing else.
    dial: tokio::sync::Mutex<Redial>,
}

impl Slot {
    fn open(&self) -> Option<Arc<Connection>> {
        self.conn.lock().as_ref().filter(|c| c.is_open()).cloned()
    }
}

/// A slot's redial state. It keeps when the last dial failed and how long to wait from
/// then, rather than the instant to wait for, so that no configured delay (up to
/// `Duration::MAX`) can overflow the clock.
struct Redial {
    backoff: Backoff,
    failed_at: Option<Instant>,
    delay: Duration,
    /// Why the last dial failed when TLS refused it: calls during the backoff are told
    /// that again, rather than only that the endpoint waits.
    refused: Option<String>,
}

impl Redial {
    /// Whether a dial now would come too soon after the last failed one.
    fn waiting(&self) -> bool {
        self.failed_at.is_some_and(|at| at.elapsed() < self.delay)
    }
}

impl Pool {
    pub(crate) fn new(addr: String, config: Config) -> Pool {
        let slots = (0..config.size.max(1))
            .map(|_| Slot {
                conn: parking_lot::Mutex::new(None),
                dial: tokio::sync::Mutex::new(Redial {
                    backoff: config.redial,
                    failed_at: None,
                    delay: Duration::ZERO,
                    refused: None,
                }),
            })
            .collect();
        let gauge = crate::metrics::client_connections(&addr);
        Pool {
            addr,
            slots,
            next: AtomicUsize::new(0),
            config,
            gauge,
        }
    }

    /// An open connection, dialling one if the chosen slot has none.
    ///
    /// # Errors
    /// [`Error::Connect`] when the dial fails, [`Error::Unavailable`] while the slot waits out
    /// its backoff and no other slot is open. Both mean the call was not sent.
    pub(crate) async fn get(&self) -> Result<Arc<Connection>, Error> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        if let Some(conn) = slot.open() {
            return Ok(conn);
        }
        match self.dial(slot).await {
            Ok(conn) => Ok(conn),
            Err(err) => self.slots.iter().find_map(Slot::open).ok_or(err),
        }
    }

    async fn dial(&self, slot: &Slot) -> Result<Arc<Connection>, Error> {
        let mut redial = slot.dial.lock().await;
        if let Some(conn) = slot.open() {
            return Ok(conn);
        }
        if redial.waiting() {
            return Err(match &redial.refused {
                Some(reason) => Error::Tls {
                    addr: self.addr.clone(),
                    reason: reason.clone(),
                },
                None => Error::Unavailable("endpoint is in reconnect backoff"),
            });
        }
        let dialled = tokio::time::timeout(self.config.connect_timeout, self.open())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Connect {
                    addr: self.addr.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                })
            });
        match dialled {
            Ok(conn) => {
                redial.backoff.reset();
                redial.failed_at = None;
                redial.refused = None;
                let conn = Arc::new(conn);
                *slot.conn.lock() = Some(conn.clone());
                debug!(addr = %self.addr, "connected");
                Ok(conn)
            }
            Err(err) => {
                redial.delay = redial.backoff.fail();
                redial.failed_at = Some(Instant::now());
                redial.refused = match &err {
                    Error::Tls { reason, .. } => Some(reason.clone()),
                    _ => None,
                };
                debug!(addr = %self.addr, cause = %err, failures = redial.backoff.failures(), "dial failed");
                Err(err)
            }
        }
    }

    /// Dials, runs the TLS handshake when configured, and starts the connection.
    async fn open(&self) -> Result<Connection, Error> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| Error::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        // Frames are batched by the writer already; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        let (max_frame, keepalive) = (self.config.max_frame, self.config.keepalive);
        let Some(tls) = &self.config.tls else {
            let (read, write) = stream.into_split();
            let gauge = self.gauge.clone();
            return Ok(Connection::new(
                read, write, &self.addr, max_frame, keepalive, gauge,
            ));
        };
        match tls::connect(&tls.client, &tls.name, stream).await {
            Ok(stream) => {
                let (read, write) = tokio::io::split(stream);
                let gauge = self.gauge.clone();
                Ok(Connection::new(
                    read, write, &self.addr, max_frame, keepalive, gauge,
                ))
            }
            Err(reason) => Err(Error::Tls {
                addr: self.addr.clone(),
                reason,
            }),
        }
    }
}
