//! The client: typed unary calls over a pool of multiplexed connections, with deadlines that
//! travel to the server and cancellation when the caller drops the call.
//!
//! A call goes through one pipeline: client interceptors add metadata; the balancer's
//! picker chooses an endpoint; the endpoint's transport carries the attempt (a TCP
//! connection from its pool, or a server in this process); the retry policy decides whether
//! a failure goes again to another endpoint, within the deadline and the retry budget.
//!
//! # Layout
//! - this module: [`Client`] and the call pipeline;
//! - `builder`: [`ClientBuilder`] and [`Config`], and the endpoint sets they build;
//! - `options`: [`CallOptions`];
//! - `retry`: what may be resent, and the retry budget.
//!
//! The endpoints themselves (transport, load, health) are [`crate::endpoint`]'s; the
//! balancer that picks among them is [`crate::balance`]'s.

mod builder;
mod options;
mod retry;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::balance::{Balance, Pick, PickContext};
use crate::discovery::{Instance, Instances};
use crate::endpoint::{self, Endpoint};
use crate::error::Error;
use crate::frame::Text;
use crate::interceptor::{ClientInterceptor, Outgoing};
use crate::method::Method;
use crate::server::Server;
use retry::Budget;

pub use builder::{ClientBuilder, Config};
pub use options::CallOptions;

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
        pool: &endpoint::pool::Config,
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
            let result = endpoint.call(method, request, metadata, deadline).await;
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
            let result = endpoint.ping().await;
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
