//! What a server runs: the [`Service`] trait that generated routers implement, and the
//! per-call [`Context`].

use std::any::{Any, TypeId};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::frame::Text;
use crate::status::Status;
use crate::tls::PeerIdentity;

/// A boxed, sendable future: what a [`Service`] hands the server for one call.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The result of one call as the server sees it: an encoded response or a status.
pub type CallResult = Result<Bytes, Status>;

/// The metadata key that carries a call's trace id from hop to hop.
pub const TRACE_ID: &str = "trace-id";

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
    /// deadline passes, or when the peer disconnects. A panic in it fails only this call,
    /// with `INTERNAL`.
    fn call(&self, method: &str, ctx: Context, request: Bytes) -> Option<BoxFuture<CallResult>>;

    /// The method names, for per-method metrics; calls to methods not listed are counted
    /// under `method="other"`.
    fn methods(&self) -> &'static [&'static str] {
        &[]
    }
}

/// What a handler knows about the call it serves: who called what, until when, with which
/// metadata, and the typed values interceptors attached
/// ([`Interceptor`](crate::Interceptor)).
#[derive(Debug, Clone)]
pub struct Context {
    pub(crate) request_id: u64,
    pub(crate) service: Text,
    pub(crate) method: Text,
    pub(crate) deadline: Option<Instant>,
    pub(crate) peer: SocketAddr,
    pub(crate) metadata: Vec<(Text, Text)>,
    pub(crate) extensions: Extensions,
    /// The verified certificate of a TLS peer; shared by every call of its connection.
    pub(crate) peer_identity: Option<Arc<PeerIdentity>>,
    /// The call came through the in-process transport.
    pub(crate) local: bool,
}

impl Context {
    /// A context for calling a handler directly, e.g. from a unit test.
    pub fn new(peer: SocketAddr) -> Context {
        Context {
            request_id: 0,
            service: Text::default(),
            method: Text::default(),
            deadline: None,
            peer,
            metadata: Vec::new(),
            extensions: Extensions::default(),
            peer_identity: None,
            local: false,
        }
    }

    /// Sets the caller's verified certificate names, as a mutual TLS connection would.
    pub fn with_peer_identity(mut self, identity: PeerIdentity) -> Context {
        self.peer_identity = Some(Arc::new(identity));
        self
    }

    /// Marks the call as made through the in-process transport, as
    /// [`ClientBuilder::in_process`](crate::ClientBuilder::in_process) calls are.
    pub fn with_local(mut self) -> Context {
        self.local = true;
        self
    }

    /// Sets the deadline, e.g. to test a handler's behaviour near it.
    pub fn with_deadline(mut self, deadline: Instant) -> Context {
        self.deadline = Some(deadline);
        self
    }

    /// Adds a metadata entry, as a caller would send it.
    pub fn with_metadata(mut self, key: impl Into<Text>, value: impl Into<Text>) -> Context {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// The id the caller gave this call on its connection (0 in process).
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The fully qualified service called, e.g. `example.Echo`.
    pub fn service(&self) -> &str {
        self.service.as_str()
    }

    /// The method called, as written in the `.proto`.
    pub fn method(&self) -> &str {
        self.method.as_str()
    }

    /// When the caller stops waiting; pass it on to the calls this handler makes, most
    /// simply with `CallOptions::from(&ctx)`.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline; `None` when the caller set none.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The caller's address (`0.0.0.0:0` in process).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The names of the certificate the caller presented and the server verified: `Some`
    /// only on a TLS connection of a server configured for mutual TLS
    /// ([`ServerTls::mutual`](crate::tls::ServerTls::mutual)). Plaintext connections and
    /// in-process calls have none. Unlike metadata, a caller cannot forge it.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.peer_identity.as_deref()
    }

    /// Whether the call came through the in-process transport
    /// ([`ClientBuilder::in_process`](crate::ClientBuilder::in_process)): a caller in this
    /// process, never one on a socket.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The value of metadata entry `key`, if the caller sent one.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every metadata entry, in the order sent.
    pub fn metadata_entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The caller's trace id (metadata [`TRACE_ID`]), if it sent one.
    pub fn trace_id(&self) -> Option<&str> {
        self.metadata(TRACE_ID)
    }

    /// The value of type `T` an interceptor attached, if any.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.extensions.get()
    }

    /// Attaches `value` for the handler to read with [`Context::get`], replacing an earlier
    /// value of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.extensions.insert(value);
    }
}

/// Typed values attached to a call. Empty (and allocation-free) unless an interceptor
/// inserts something; values are shared by clones of the context.
#[derive(Clone, Default)]
pub(crate) struct Extensions(Vec<Extension>);

/// One attached value and its type.
type Extension = (TypeId, Arc<dyn Any + Send + Sync>);

impl Extensions {
    fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, value)| value.downcast_ref())
    }

    fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        let value: Arc<dyn Any + Send + Sync> = Arc::new(value);
        match self.0.iter_mut().find(|(id, _)| *id == TypeId::of::<T>()) {
            Some(slot) => slot.1 = value,
            None => self.0.push((TypeId::of::<T>(), value)),
        }
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Extensions({} values)", self.0.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct User(u64);

    #[test]
    fn interceptor_values_are_found_by_type_and_replaced() {
        let mut ctx = Context::new("127.0.0.1:1".parse().unwrap());
        assert!(ctx.get::<User>().is_none());
        ctx.insert(User(7));
        ctx.insert("role");
        assert_eq!(ctx.get::<User>(), Some(&User(7)));
        ctx.insert(User(8));
        assert_eq!(ctx.get::<User>(), Some(&User(8)));
        assert_eq!(ctx.get::<&str>(), Some(&"role"));
        let copy = ctx.clone();
        assert_eq!(copy.get::<User>(), Some(&User(8)));
    }

    #[test]
    fn metadata_and_trace_id_are_read_by_key() {
        let ctx = Context::new("127.0.0.1:1".parse().unwrap())
            .with_metadata(TRACE_ID, "t-1")
            .with_metadata("k", "v");
        assert_eq!(ctx.trace_id(), Some("t-1"));
        assert_eq!(ctx.metadata("k"), Some("v"));
        assert_eq!(ctx.metadata("missing"), None);
        assert_eq!(ctx.metadata_entries().count(), 2);
    }
}
