//! What a server runs: the [`Service`] trait that generated routers implement, and the
//! per-call [`Context`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::frame::Text;
use crate::status::Status;

/// A boxed, sendable future: what a [`Service`] hands the server for one call.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The result of one call as the server sees it: an encoded response or a status.
pub type CallResult = Result<Bytes, Status>;

/// A named set of methods the server routes calls to.
///
/// `mprpc-build` generates an implementation per `.proto` service (`EchoServer<T>` wraps your
/// `impl Echo`); implement it by hand only for dynamic routing.
pub trait Service: Send + Sync + 'static {
    /// The fully qualified service name, e.g. `"example.Echo"`.
    fn name(&self) -> &'static str;

    /// Starts `method` on an encoded request, or returns `None` when the service has no such
    /// method (the caller then gets `UNIMPLEMENTED`).
    ///
    /// The future may be dropped at any await point: when the caller cancels, when the
    /// deadline passes, or when the peer disconnects.
    fn call(&self, method: &str, ctx: Context, request: Bytes) -> Option<BoxFuture<CallResult>>;

    /// The method names, for per-method metrics; calls to methods not listed are counted
    /// under `method="other"`.
    fn methods(&self) -> &'static [&'static str] {
        &[]
    }
}

/// What a handler knows about the call it serves.
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) request_id: u64,
    pub(crate) deadline: Option<Instant>,
    pub(crate) peer: SocketAddr,
    pub(crate) metadata: Vec<(Text, Text)>,
}

impl Context {
    /// A context for calling a handler directly, e.g. from a unit test.
    pub fn new(peer: SocketAddr) -> Context {
        Context {
            request_id: 0,
            deadline: None,
            peer,
            metadata: Vec::new(),
        }
    }

    /// The id the caller gave this call on its connection.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// When the caller stops waiting; pass it on to the calls this handler makes.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline; `None` when the caller set none.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The caller's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The value of metadata entry `key`, if the caller sent one.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes a request body for a generated router.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the expected message when the body does not decode.
pub fn decode_request<M: prost::Message + Default>(body: Bytes) -> Result<M, Status> {
    M::decode(body).map_err(|_| {
        Status::invalid_argument(format!(
            "request body does not decode as {}",
            std::any::type_name::<M>()
                .rsplit("::")
                .next()
                .unwrap_or("the request type")
        ))
    })
}

/// Encodes a response body for a generated router, in one allocation of the exact size.
pub fn encode_response<M: prost::Message>(message: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.encoded_len());
    message.encode_raw(&mut buf);
    buf.freeze()
}
