//! The client: typed unary calls over a pool of multiplexed connections, with deadlines that
//! travel to the server and cancellation when the caller drops the call.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::frame::{DEFAULT_MAX_FRAME, Header, Kind, Text};
use crate::pool::Pool;
use crate::status::{Code, Status};

/// Client settings; every field's default is on its setter in [`ClientBuilder`].
#[derive(Debug, Clone)]
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
        }
    }
}

/// Builds a [`Client`].
#[derive(Debug, Clone, Default)]
pub struct ClientBuilder {
    config: Config,
}

impl ClientBuilder {
    /// Connections per endpoint. Default 2.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.config.pool_size = n.max(1);
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

    /// A client for `addr` (`host:port`). Nothing is dialled until the first call.
    pub fn connect_lazy(self, addr: impl Into<String>) -> Client {
        let config = Arc::new(self.config);
        Client {
            inner: Arc::new(Inner {
                pool: Pool::new(addr.into(), config.clone()),
                config,
            }),
        }
    }
}

/// Per-call settings.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    metadata: Vec<(Text, Text)>,
}

impl CallOptions {
    /// Options that use the client's defaults.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// Gives the call this long, overriding the client's default timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Ends the call at `deadline` at the latest, e.g. a handler's own
    /// [`Context::deadline`](crate::Context::deadline).
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Adds a metadata entry the server reads with [`Context::metadata`](crate::Context::metadata).
    pub fn metadata(mut self, key: impl Into<Text>, value: impl Into<Text>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    fn deadline_from(&self, now: Instant, default: Option<Duration>) -> Option<Instant> {
        let by_timeout = self.timeout.or(default).map(|t| now + t);
        match (self.deadline, by_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

struct Inner {
    pool: Pool,
    config: Arc<Config>,
}

/// A handle for calling one endpoint. Cheap to clone; clones share connections.
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
            .field("addr", &self.inner.pool.addr())
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

    /// Calls in flight on this client's connections.
    pub fn in_flight(&self) -> usize {
        self.inner.pool.in_flight()
    }

    /// Calls `service`/`method` with `request` and decodes the response.
    ///
    /// The deadline (from `options`, else the client's default timeout) bounds the whole
    /// call including the dial, and travels to the server, which abandons the work when it
    /// passes. Dropping the returned future cancels the call on the server.
    ///
    /// # Errors
    /// [`Error::Status`] when the server answers with a non-OK status,
    /// [`Error::DeadlineExceeded`] when the deadline passes first, and the transport
    /// variants of [`Error`] otherwise; [`Error::is_retry_safe`] tells which may be resent.
    pub async fn unary<Req, Resp>(
        &self,
        service: &'static str,
        method: &'static str,
        request: &Req,
        options: &CallOptions,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let deadline = options.deadline_from(Instant::now(), self.inner.config.timeout);
        let call = async {
            let conn = self.inner.pool.get().await?;
            let timeout_us = deadline.map_or(0, |d| {
                d.saturating_duration_since(Instant::now())
                    .as_micros()
                    .clamp(1, u64::MAX as u128) as u64
            });
            let header = Header {
                kind: Kind::Request,
                service: Text::from_static(service),
                method: Text::from_static(method),
                timeout_us,
                metadata: options.metadata.clone(),
                ..Header::default()
            };
            let frame = conn.call(header, request).await?;
            if frame.header.status != Code::Ok {
                let status = Status::new(frame.header.status, frame.header.message.as_str());
                return Err(Error::Status(status));
            }
            Resp::decode(frame.body).map_err(Error::Decode)
        };
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, call)
                .await
                .unwrap_or(Err(Error::DeadlineExceeded)),
            None => call.await,
        }
    }

    /// Sends a PING on one of the pool's connections and waits for the PONG.
    ///
    /// # Errors
    /// As [`Client::unary`], without [`Error::Status`].
    pub async fn ping(&self) -> Result<(), Error> {
        let conn = self.inner.pool.get().await?;
        let ping = conn.ping();
        match self.inner.config.timeout {
            Some(t) => tokio::time::timeout(t, ping)
                .await
                .unwrap_or(Err(Error::DeadlineExceeded)),
            None => ping.await,
        }
    }
}
