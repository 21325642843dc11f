//! The client: typed unary calls over a pool of multiplexed connections, with deadlines that
//! travel to the server and cancellation when the caller drops the call.
//!
//! A call goes through one pipeline: client interceptors add metadata; the balancer's
//! picker chooses an endpoint; the endpoint's transport carries the attempt (a TCP
//! connection from its pool, or a server in this process); the retry policy decides whether
//! a failure goes again to another endpoint, within the deadline and the retry budget.
//!
//! # Layout
//! - this module: [`Client`], [`ClientBuilder`], [`Config`];
//! - `options`: [`CallOptions`] and [`Method`];
//! - `endpoint`: one instance's transport, load and health (outlier ejection);
//! - `pool`: N lazily dialled connections per endpoint, redialled with backoff;
//! - `connection`: one multiplexed connection and its keepalive;
//! - `local`: the in-process transport;
//! - `retry`: what may be resent, and the retry budget.

mod connection;
mod endpoint;
mod local;
mod options;
mod pool;
mod retry;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::backoff::Backoff;
use crate::balance::{Balance, P2c, Pick, PickContext};
use crate::discovery::{Discover, DiscoveryError, Instance, Instances};
use crate::error::Error;
use crate::frame::{DEFAULT_MAX_FRAME, Text};
use crate::interceptor::{ClientInterceptor, Outgoing};
use crate::server::Server;
use crate::status::{Code, Status};
use crate::tls::ClientTls;
use endpoint::{Ejection, Transport};
use retry::Budget;

pub use endpoint::Endpoint;
pub use options::{CallOptions, Method};

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

/// The endpoints a client calls and the picker over them, replaced as a whole on change.
struct Set {
    endpoints: Arc<[Arc<Endpoint>]>,
    picker: Box<dyn Pick>,
}

impl Set {
    /// Endpoints for `instances`, keeping the endpoint (and its connections, load and health)
    /// of every instance still listed with the same id and address, updated to its new
    /// record; the picker is built afterwards, so it sees new weights.
    fn build(
        balance: &dyn Balance,
        instances: &Instances,
        previous: Option<&Arc<Set>>,
        pool: &pool::Config,
        config: &Config,
    ) -> Set {
        let endpoints: Arc<[Arc<Endpoint>]> = instances
            .iter()
            .map(|instance| {
                let kept =
                    previous.and_then(|set| set.endpoints.iter().find(|e| e.serves(instance)));
                match kept {
                    Some(endpoint) => {
                        endpoint.update(instance);
                        endpoint.clone()
                    }
                    None => {
                        let endpoint =
                            Endpoint::new(instance.clone(), pool.clone(), config.ejection());
                        Arc::new(endpoint)
                    }
                }
            })
            .collect();
        Set {
            picker: balance.picker(endpoints.clone()),
            endpoints,
        }
    }
}

struct Inner {
    config: Config,
    interceptors: Box<[Arc<dyn ClientInterceptor>]>,
    set: watch::Receiver<Arc<Set>>,
    budget: Budget,
    watcher: Option<JoinHandle<()>>,
    target: String,
    retries: metrics::Counter,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

/// A handle for calling a service: one address, or every instance discovery reports.
/// Cheap to clone; clones share connections.
///
/// Each call picks an instance with the client's [`Balance`]r, and a failure that is safe to
/// retry ([`Error::is_retry_safe`], or a lost connection on an idempotent method) is sent
/// again to another instance, within the deadline and the retry budget.
///
/// Generated clients (`EchoClient`) wrap it; call [`Client::unary`] directly only for
/// services without generated code.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.inner.target)
            .finish()
    }
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client for `addr` with default settings; nothing is dialled until the first call.
    pub fn connect_lazy(addr: impl Into<String>) -> Client {
        ClientBuilder::default().connect_lazy(addr)
    }

    /// A client for `server` in this process with default settings; see
    /// [`ClientBuilder::in_process`].
    pub fn in_process(server: &Server) -> Client {
        ClientBuilder::default().in_process(server)
    }

    fn from_parts(
        config: Config,
        interceptors: Vec<Arc<dyn ClientInterceptor>>,
        set: watch::Receiver<Arc<Set>>,
        watcher: Option<JoinHandle<()>>,
        target: String,
    ) -> Client {
        let budget = Budget::new(config.retry_ratio, config.retry_min_per_sec);
        Client {
            inner: Arc::new(Inner {
                config,
                interceptors: interceptors.into(),
                set,
                budget,
                watcher,
                target,
                retries: crate::metrics::client_retries(),
            }),
        }
    }

    /// Calls in flight on this client.
    pub fn in_flight(&self) -> usize {
        self.inner
            .set
            .borrow()
            .endpoints
            .iter()
            .map(|e| e.in_flight())
            .sum()
    }

    /// The endpoints this client currently calls, with their load and health.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.inner.set.borrow().endpoints.to_vec()
    }

    /// The instances this client currently calls.
    pub fn instances(&self) -> Vec<Instance> {
        self.inner
            .set
            .borrow()
            .endpoints
            .iter()
            .map(|e| Instance::clone(&e.instance()))
            .collect()
    }

    /// The current set, waiting (within the caller's deadline) while it is empty.
    async fn current(&self) -> Result<Arc<Set>, Error> {
        let set = self.inner.set.borrow().clone();
        if !set.endpoints.is_empty() {
            return Ok(set);
        }
        let mut rx = self.inner.set.clone();
        loop {
            if rx.changed().await.is_err() {
                return Err(Error::Unavailable("no instances of the service"));
            }
            let set = rx.borrow_and_update().clone();
            if !set.endpoints.is_empty() {
                return Ok(set);
            }
        }
    }

    /// Calls `method` with `request` and decodes the response.
    ///
    /// The deadline (from `options`, else the client's default timeout) bounds the whole
    /// call including dials and retries, and travels to the server, which abandons the work
    /// when it passes. Dropping the returned future cancels the call on the server.
    ///
    /// # Errors
    /// [`Error::Status`] when the server answers with a non-OK status,
    /// [`Error::DeadlineExceeded`] when the deadline passes first, and the transport
    /// variants of [`Error`] otherwise; [`Error::is_retry_safe`] tells which may be resent.
    pub async fn unary<Req, Resp>(
        &self,
        method: &Method,
        request: &Req,
        options: &CallOptions,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let deadline = options.deadline_from(Instant::now(), self.inner.config.timeout);
        let metadata = self.metadata(method, options)?;
        let call = self.attempts(method, request, options, &metadata, deadline);
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, call)
                .await
                .unwrap_or(Err(Error::DeadlineExceeded)),
            None => call.await,
        }
    }

    /// The call's metadata: its options' entries, then what the interceptors add.
    fn metadata<'a>(
        &self,
        method: &Method,
        options: &'a CallOptions,
    ) -> Result<Cow<'a, [(Text, Text)]>, Error> {
        if self.inner.interceptors.is_empty() {
            return Ok(Cow::Borrowed(&options.metadata));
        }
        let mut metadata = options.metadata.clone();
        for interceptor in self.inner.interceptors.iter() {
            let mut call = Outgoing {
                method,
                metadata: &mut metadata,
            };
            interceptor.intercept(&mut call)?;
        }
        Ok(Cow::Owned(metadata))
    }

    async fn attempts<Req, Resp>(
        &self,
        method: &Method,
        request: &Req,
        options: &CallOptions,
        metadata: &[(Text, Text)],
        deadline: Option<Instant>,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let set = self.current().await?;
        let budget = &self.inner.budget;
        budget.deposit();
        // Allocates only when a call is retried.
        let mut tried = Vec::new();
        loop {
            let cx = PickContext {
                key: options.key,
                tried: &tried,
            };
            let index = set
                .picker
                .pick(&cx)
                .ok_or(Error::Unavailable("no instances"))?;
            let endpoint = &set.endpoints[index];
            let result = attempt(endpoint, method, request, metadata, deadline).await;
            endpoint.record(&result);
            let err = match result {
                Ok(response) => return Ok(response),
                Err(err) => err,
            };
            let idempotent = method.idempotent || options.idempotent;
            if tried.len() + 1 >= self.inner.config.max_attempts
                || !retry::may_retry(&err, idempotent)
                || !budget.try_withdraw()
            {
                return Err(err);
            }
            self.inner.retries.increment(1);
            debug!(addr = %endpoint.addr(), cause = %err, "retrying on another instance");
            tried.push(index);
            if tried.len() >= set.endpoints.len() {
                // Every instance failed once already: give the one picked next a moment.
                tokio::time::sleep(Duration::from_millis(20 * tried.len() as u64)).await;
            }
        }
    }

    /// Sends a PING to one instance and waits for the PONG.
    ///
    /// # Errors
    /// As [`Client::unary`], without [`Error::Status`].
    pub async fn ping(&self) -> Result<(), Error> {
        let ping = async {
            let set = self.current().await?;
            let index = set
                .picker
                .pick(&PickContext::default())
                .ok_or(Error::Unavailable("no instances"))?;
            let endpoint = &set.endpoints[index];
            let result = match endpoint.transport() {
                Transport::Tcp(pool) => match pool.get().await {
                    Ok(conn) => conn.ping().await,
                    Err(err) => Err(err),
                },
                Transport::Local(_) => Ok(()),
            };
            endpoint.record(&result);
            result
        };
        match self.inner.config.timeout {
            Some(t) => tokio::time::timeout(t, ping)
                .await
                .unwrap_or(Err(Error::DeadlineExceeded)),
            None => ping.await,
        }
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

/// One attempt on one endpoint.
async fn attempt<Req, Resp>(
    endpoint: &Endpoint,
    method: &Method,
    request: &Req,
    metadata: &[(Text, Text)],
    deadline: Option<Instant>,
) -> Result<Resp, Error>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let _in_flight = endpoint.start_call();
    let pool = match endpoint.transport() {
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
