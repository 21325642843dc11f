//! [`ClientBuilder`] and the client's [`Config`]: a client for one address, for a server in
//! this process, or for every instance discovery reports.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::debug;

use super::{Client, Set};
use crate::backoff::Backoff;
use crate::balance::{Balance, P2c};
use crate::discovery::{Discover, DiscoveryError, Instance, Instances};
use crate::endpoint::pool;
use crate::endpoint::{Ejection, Endpoint, Transport};
use crate::frame::DEFAULT_MAX_FRAME;
use crate::interceptor::ClientInterceptor;
use crate::server::Server;
use crate::tls::ClientTls;

/// Client settings; every field's default is on its setter in [`ClientBuilder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Connections per endpoint (default 2).
    pub pool_size: usize,
    /// Deadline for calls whose options set none (default 30 s; `None` waits forever).
    pub timeout: Option<Duration>,
    /// Limit on one TCP dial (default 3 s).
    pub connect_timeout: Duration,
    /// Largest frame sent or accepted (default 16 MiB).
    pub max_frame: usize,
    /// First redial delay after a failed dial (default 100 ms); doubles per failure.
    pub backoff_min: Duration,
    /// Longest redial delay (default 5 s).
    pub backoff_max: Duration,
    /// Attempts per call, the first included (default 3); retries go to other instances.
    pub max_attempts: usize,
    /// Retries allowed per call made, as a fraction (default 0.1: at most 10 % extra load).
    pub retry_ratio: f64,
    /// Retries allowed per second regardless of traffic (default 10).
    pub retry_min_per_sec: u32,
    /// Consecutive failures that eject an instance from picking (default 5).
    pub eject_after: u32,
    /// First ejection period (default 1 s); doubles per ejection in a row.
    pub eject_base: Duration,
    /// Longest ejection period (default 30 s).
    pub eject_max: Duration,
    /// Silence on a connection with calls in flight before it is probed with a ping, and
    /// the time the ping has to be answered before the connection is given up (default
    /// 5 s; `None`: never probe).
    pub keepalive: Option<Duration>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            pool_size: 2,
            timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(3),
            max_frame: DEFAULT_MAX_FRAME,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_attempts: 3,
            retry_ratio: 0.1,
            retry_min_per_sec: 10,
            eject_after: 5,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(5)),
        }
    }
}

impl Config {
    /// What each endpoint's connection pool needs of it.
    pub(crate) fn pool(&self) -> pool::Config {
        pool::Config {
            size: self.pool_size,
            connect_timeout: self.connect_timeout,
            max_frame: self.max_frame,
            keepalive: self.keepalive,
            redial: Backoff::new(self.backoff_min, self.backoff_max).jittered(),
            tls: None,
        }
    }

    /// What each endpoint's health record needs of it.
    pub(crate) fn ejection(&self) -> Ejection {
        Ejection {
            after: self.eject_after,
            backoff: Backoff::new(self.eject_base, self.eject_max),
        }
    }
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    config: Config,
    balance: Box<dyn Balance>,
    interceptors: Vec<Arc<dyn ClientInterceptor>>,
    tls: Option<ClientTls>,
}

impl Default for ClientBuilder {
    fn default() -> ClientBuilder {
        ClientBuilder {
            config: Config::default(),
            balance: Box::new(P2c),
            interceptors: Vec::new(),
            tls: None,
        }
    }
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("config", &self.config)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Runs `interceptor` before every call of the client, after those added earlier; see
    /// [`ClientInterceptor`].
    pub fn intercept(mut self, interceptor: impl ClientInterceptor) -> Self {
        self.interceptors.push(Arc::new(interceptor));
        self
    }

    /// Connections per endpoint. Default 2.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.config.pool_size = n.max(1);
        self
    }

    /// Detects servers that vanished without closing the connection (host loss, network
    /// partition): when a connection with calls in flight has received nothing for this
    /// long it is sent a ping, and when the ping is not answered within the same period the
    /// connection is closed and its calls fail with [`Error::ConnectionLost`] instead of
    /// waiting for their deadlines. Idle connections are not probed. Default 5 s; `None`
    /// turns probing off.
    ///
    /// A server stops reading a connection that has `max_in_flight_per_connection` calls
    /// running, so it cannot answer the ping then: a client that keeps that many calls
    /// silent for longer than two periods on one connection (long polls, say) should raise
    /// the period, use more connections, or turn probing off.
    ///
    /// [`Error::ConnectionLost`]: crate::Error::ConnectionLost
    pub fn keepalive(mut self, period: Option<Duration>) -> Self {
        self.config.keepalive = period.map(|p| p.max(Duration::from_millis(1)));
        self
    }

    /// Deadline for calls whose options set none. Default 30 s; `None` waits forever.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// Limit on one TCP dial. Default 3 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Largest frame sent or accepted. Default 16 MiB.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.config.max_frame = bytes;
        self
    }

    /// Redial delays after failed dials: from `min`, doubling, up to `max`.
    /// Default 100 ms to 5 s.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff_min = min;
        self.config.backoff_max = max.max(min);
        self
    }

    /// Attempts per call, the first included. Default 3.
    pub fn max_attempts(mut self, n: usize) -> Self {
        self.config.max_attempts = n.max(1);
        self
    }

    /// Retry budget: `ratio` retries per call made plus `min_per_sec`. Default 0.1 and 10.
    pub fn retry_budget(mut self, ratio: f64, min_per_sec: u32) -> Self {
        self.config.retry_ratio = ratio.max(0.0);
        self.config.retry_min_per_sec = min_per_sec;
        self
    }

    /// Outlier ejection: after `after` consecutive failures an instance sits out `base`,
    /// doubling per ejection in a row up to `max`. Default 5, 1 s, 30 s.
    pub fn ejection(mut self, after: u32, base: Duration, max: Duration) -> Self {
        self.config.eject_after = after.max(1);
        self.config.eject_base = base;
        self.config.eject_max = max.max(base);
        self
    }

    /// Dials every connection over TLS with `tls`; without it connections are plaintext,
    /// which authenticates no one and suits trusted networks only. In-process clients
    /// ([`ClientBuilder::in_process`]) have no connection and ignore it.
    ///
    /// The server's certificate must chain to the CA of `tls` and carry the name it sets
    /// with [`ClientTls::server_name`], by default the service name given to
    /// [`ClientBuilder::discover`], or the host of the address given to
    /// [`ClientBuilder::connect_lazy`]. A handshake that fails ends the attempt with
    /// [`Error::Tls`] and ejects the instance; the call goes to another instance. The
    /// connect timeout bounds the TCP connect and the handshake together. Reload
    /// certificates with [`ClientTls::reload`] on a clone of `tls`.
    ///
    /// [`Error::Tls`]: crate::Error::Tls
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The pool settings of this client's endpoints, with TLS requiring `name` of servers.
    fn pool(&self, name: &str) -> pool::Config {
        let mut pool = self.config.pool();
        pool.tls = self.tls.as_ref().map(|tls| pool::Tls {
            client: tls.clone(),
            name: tls.name_override().unwrap_or(name).into(),
        });
        pool
    }

    /// How calls choose among instances. Default [`P2c`].
    pub fn balance(mut self, balance: impl Balance) -> Self {
        self.balance = Box::new(balance);
        self
    }

    /// A client for one address (`host:port`). Nothing is dialled until the first call.
    pub fn connect_lazy(self, addr: impl Into<String>) -> Client {
        let instances: Instances = Arc::new([Instance::new(addr)]);
        let pool = self.pool(host(&instances[0].addr));
        let set = Set::build(&*self.balance, &instances, None, &pool, &self.config);
        // The sender is dropped: the set never changes.
        let (_, rx) = watch::channel(Arc::new(set));
        let target = instances[0].addr.clone();
        Client::from_parts(self.config, self.interceptors, rx, None, target)
    }

    /// A client for `server` in this process: calls go straight to its services, with no
    /// socket and no encoding of frames, through the same interceptors, deadlines, limits,
    /// status codes and metrics as calls over TCP. Request and response messages are still
    /// encoded, so a handler sees exactly what a remote caller would send.
    ///
    /// The server need not be serving a listener; a server that is (the same [`Server`], or
    /// a clone) answers both.
    pub fn in_process(self, server: &Server) -> Client {
        let instance = Instance::new("in-process").id("in-process");
        let transport = Transport::Local(server.clone());
        let endpoint = Endpoint::with_transport(instance, transport, self.config.ejection());
        let endpoints: Arc<[Arc<Endpoint>]> = Arc::new([Arc::new(endpoint)]);
        let set = Set {
            picker: self.balance.picker(endpoints.clone()),
            endpoints,
        };
        let (_, rx) = watch::channel(Arc::new(set));
        Client::from_parts(
            self.config,
            self.interceptors,
            rx,
            None,
            "in-process".into(),
        )
    }

    /// A client for every instance of `service` that `discovery` knows, following the list
    /// as it changes. Returns once the first list is read (it may be empty: calls then wait,
    /// within their deadline, for an instance to appear).
    ///
    /// # Errors
    /// [`DiscoveryError`] when the first list cannot be read.
    pub async fn discover(
        self,
        discovery: &dyn Discover,
        service: &str,
    ) -> Result<Client, DiscoveryError> {
        let mut instances = discovery.subscribe(service).await?;
        let pool = self.pool(service);
        let config = self.config;
        let first = instances.borrow_and_update().clone();
        let set = Set::build(&*self.balance, &first, None, &pool, &config);
        let (tx, rx) = watch::channel(Arc::new(set));
        let balance = self.balance;
        let task_config = config.clone();
        let watcher = tokio::spawn(async move {
            while instances.changed().await.is_ok() {
                let list = instances.borrow_and_update().clone();
                let set = Set::build(&*balance, &list, Some(&tx.borrow()), &pool, &task_config);
                debug!(instances = list.len(), "instance list changed");
                if tx.send(Arc::new(set)).is_err() {
                    break;
                }
            }
        });
        Ok(Client::from_parts(
            config,
            self.interceptors,
            rx,
            Some(watcher),
            service.to_owned(),
        ))
    }
}

/// The host of a `host:port` address (an IPv6 address without its brackets): the name a
/// server reached by address must carry in its certificate.
fn host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address_is_what_a_server_reached_by_address_must_be_named() {
        assert_eq!(host("user.mpim.internal:6101"), "user.mpim.internal");
        assert_eq!(host("10.0.0.7:6101"), "10.0.0.7");
        assert_eq!(host("[::1]:6101"), "::1");
        assert_eq!(host("no-port"), "no-port");
    }
}
