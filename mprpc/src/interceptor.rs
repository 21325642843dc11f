//! Interceptors: code that runs around every call without being written into every handler.
//!
//! - [`Interceptor`] (server): runs before the handler with the call's [`Context`] —
//!   service, method, metadata, peer, deadline — and either refuses the call with a
//!   [`Status`] (the handler never runs) or attaches typed values the handler reads with
//!   [`Context::get`]. Authenticate the caller here once, not in every handler.
//! - [`ClientInterceptor`] (client): runs before every call a [`Client`](crate::Client)
//!   sends and adds metadata to it (identity, trace id), or fails it locally.
//!
//! Both are added with `intercept` on their builder, run in the order added, and cost
//! nothing when none is added. Closures implement both traits.
//!
//! ```
//! use mprpc::{Context, Server, Status};
//!
//! /// Who the caller is, as the interceptor established it.
//! struct Caller(u64);
//!
//! let server = Server::builder()
//!     .intercept(|ctx: &mut Context| {
//!         let user = ctx
//!             .metadata("user-id")
//!             .and_then(|id| id.parse().ok())
//!             .ok_or_else(|| Status::unauthenticated("no user-id"))?;
//!         ctx.insert(Caller(user));
//!         Ok(())
//!     })
//!     .build();
//! # drop(server);
//! ```

use crate::frame::Text;
use crate::method::Method;
use crate::service::Context;
use crate::status::Status;

/// Runs on the server before each handler; see the [module docs](self).
pub trait Interceptor: Send + Sync + 'static {
    /// Inspects the call and may attach values to `ctx`.
    ///
    /// # Errors
    /// A [`Status`] refuses the call: it is sent to the caller and the handler never runs.
    /// Use a code that says the call was not carried out (`UNAUTHENTICATED`,
    /// `PERMISSION_DENIED`, `INVALID_ARGUMENT`; `UNAVAILABLE` or `RESOURCE_EXHAUSTED` only
    /// when another instance may take it).
    fn intercept(&self, ctx: &mut Context) -> Result<(), Status>;
}

impl<F> Interceptor for F
where
    F: Fn(&mut Context) -> Result<(), Status> + Send + Sync + 'static,
{
    fn intercept(&self, ctx: &mut Context) -> Result<(), Status> {
        self(ctx)
    }
}

/// One outgoing call as a [`ClientInterceptor`] sees it.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub(crate) method: &'a Method,
    pub(crate) metadata: &'a mut Vec<(Text, Text)>,
}

impl Outgoing<'_> {
    /// The method being called.
    pub fn method(&self) -> &Method {
        self.method
    }

    /// The value of metadata entry `key`, if the call carries one already.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets metadata entry `key`, replacing a value the call options set.
    pub fn set_metadata(&mut self, key: impl Into<Text>, value: impl Into<Text>) {
        let (key, value) = (key.into(), value.into());
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key, value)),
        }
    }
}

/// Runs on the client before each call is sent; see the [module docs](self).
pub trait ClientInterceptor: Send + Sync + 'static {
    /// Adds to the outgoing call.
    ///
    /// # Errors
    /// A [`Status`] fails the call locally, before anything is sent.
    fn intercept(&self, call: &mut Outgoing<'_>) -> Result<(), Status>;
}

impl<F> ClientInterceptor for F
where
    F: Fn(&mut Outgoing<'_>) -> Result<(), Status> + Send + Sync + 'static,
{
    fn intercept(&self, call: &mut Outgoing<'_>) -> Result<(), Status> {
        self(call)
    }
}
