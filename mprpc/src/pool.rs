//! A fixed number of lazily dialled connections to one endpoint, redialled with backoff
//! when they break.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::client::Config;
use crate::connection::Connection;
use crate::error::Error;

/// Connections to one endpoint. Calls pick slots round robin.
pub(crate) struct Pool {
    addr: String,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    config: Arc<Config>,
    gauge: metrics::Gauge,
}

#[derive(Default)]
struct Slot {
    /// The live connection. A parking_lot mutex: held only to clone or swap an `Arc`.
    conn: parking_lot::Mutex<Option<Arc<Connection>>>,
    /// Serialises dials of this slot so one outage causes one dial, not one per call. Held
    /// across the dial on purpose; it guards nothing else.
    dial: tokio::sync::Mutex<Backoff>,
}

impl Slot {
    fn open(&self) -> Option<Arc<Connection>> {
        self.conn.lock().as_ref().filter(|c| c.is_open()).cloned()
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    fn failed(&mut self, config: &Config) {
        self.failures = self.failures.saturating_add(1);
        let exp = config
            .backoff_min
            .saturating_mul(1 << self.failures.min(16).saturating_sub(1));
        let base = exp.min(config.backoff_max);
        // ±25 % jitter so that many clients do not redial a recovering server in lockstep.
        let jitter = RandomState::new().hash_one(self.failures) % 501;
        let delay = base.mul_f64(0.75 + jitter as f64 / 1000.0);
        self.retry_at = Some(Instant::now() + delay);
    }
}

impl Pool {
    pub(crate) fn new(addr: String, config: Arc<Config>) -> Pool {
        let slots = (0..config.pool_size.max(1))
            .map(|_| Slot::default())
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
        let mut backoff = slot.dial.lock().await;
        if let Some(conn) = slot.open() {
            return Ok(conn);
        }
        if backoff.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(Error::Unavailable("endpoint is in reconnect backoff"));
        }
        let dialled =
            tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(&self.addr))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                });
        match dialled {
            Ok(stream) => {
                *backoff = Backoff::default();
                let conn = Arc::new(Connection::new(
                    stream,
                    self.config.max_frame,
                    self.config.keepalive,
                    self.gauge.clone(),
                ));
                *slot.conn.lock() = Some(conn.clone());
                debug!(addr = %self.addr, "connected");
                Ok(conn)
            }
            Err(source) => {
                backoff.failed(&self.config);
                debug!(addr = %self.addr, cause = %source, failures = backoff.failures, "dial failed");
                Err(Error::Connect {
                    addr: self.addr.clone(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_grows_to_its_cap() {
        let config = Config {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..Config::default()
        };
        let mut backoff = Backoff::default();
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            let before = Instant::now();
            backoff.failed(&config);
            last = backoff.retry_at.expect("set") - before;
        }
        assert!(last <= Duration::from_millis(2_500), "{last:?}");
        assert!(last >= Duration::from_millis(1_500), "{last:?}");
    }
}
