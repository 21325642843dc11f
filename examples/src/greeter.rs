//! The greeter: who the caller is, checked once by an interceptor, and a handler that calls
//! another service with its own caller's deadline and trace id.
//!
//! - Server: [`Authenticate`] reads `authorization: Bearer <token>` from every call before
//!   any handler runs and attaches the [`Caller`] the token belongs to; a call without a
//!   known token is refused with `UNAUTHENTICATED` and never reaches a handler.
//! - Handler: [`GreeterService`] reads the caller with `ctx.get::<Caller>()` and makes a
//!   nested call to the echo service with `CallOptions::from(&ctx)`: the time left before
//!   the caller's deadline and the caller's trace id go on to the next hop, and the server
//!   logs both hops inside `rpc{..}` spans that carry the same `trace_id`.
//! - Client: [`bearer`] and [`trace_id`] add the token and a trace id to every call.
//!
//! [`server`] wires them together, with the echo hop on a server in this process
//! ([`Client::in_process`]): the same client API as over TCP, without a socket.
//!
//! ```
//! use examples::greeter::{self, Authenticate};
//! use examples::proto::{EchoServer, GreetRequest, GreeterClient};
//! use mprpc::{Client, Server};
//!
//! # #[tokio::main] async fn main() -> anyhow::Result<()> {
//! // The nested hop: a server with no listener, reachable only from this process.
//! let backend = Server::builder().add_service(EchoServer::new(examples::EchoService)).build();
//! let server = greeter::server(Authenticate::new().user("ada", "s3cret"), &backend);
//!
//! // In process here too; `connect_lazy(addr)` instead for a server across the network.
//! let client = Client::builder()
//!     .intercept(greeter::bearer("s3cret"))
//!     .intercept(greeter::trace_id(greeter::new_trace_id()))
//!     .in_process(&server);
//! let reply = GreeterClient::new(client)
//!     .greet(&GreetRequest { name: "Grace".into() })
//!     .await?;
//! assert_eq!(reply.message, "Hello Grace, from ada");
//! # Ok(()) }
//! ```

use std::collections::HashMap;

use mprpc::interceptor::Outgoing;
use mprpc::{
    CallOptions, Client, ClientInterceptor, Code, Context, Interceptor, Server, Status, Text,
};
use tracing::{info, warn};

use crate::proto::{self, EchoClient, EchoRequest, EchoResponse, GreetReply, GreetRequest};

/// The metadata key that carries credentials, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// Who made the call, as [`Authenticate`] established it; handlers read it with
/// `ctx.get::<Caller>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user the token belongs to.
    pub name: String,
}

/// Server interceptor: admits calls that carry a known bearer token and attaches their
/// [`Caller`]; refuses the rest with `UNAUTHENTICATED`.
#[derive(Clone, Default)]
pub struct Authenticate {
    /// Token → user name.
    users: HashMap<String, String>,
}

impl Authenticate {
    /// Admits no one until users are added.
    pub fn new() -> Authenticate {
        Authenticate::default()
    }

    /// Admits calls bearing `token` as user `name`.
    pub fn user(mut self, name: impl Into<String>, token: impl Into<String>) -> Authenticate {
        self.users.insert(token.into(), name.into());
        self
    }
}

// By hand, so that tokens never reach a log.
impl std::fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticate")
            .field("users", &self.users.len())
            .finish()
    }
}

impl Interceptor for Authenticate {
    fn intercept(&self, ctx: &mut Context) -> Result<(), Status> {
        let name = ctx
            .metadata(AUTHORIZATION)
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|token| self.users.get(token))
            .ok_or_else(|| Status::unauthenticated("missing or unknown bearer token"))?;
        let caller = Caller { name: name.clone() };
        ctx.insert(caller);
        Ok(())
    }
}

/// Client interceptor: sends `token` as `authorization: Bearer <token>` with every call.
pub fn bearer(token: impl AsRef<str>) -> impl ClientInterceptor {
    let value = Text::from(format!("Bearer {}", token.as_ref()));
    move |call: &mut Outgoing<'_>| {
        call.set_metadata(Text::from_static(AUTHORIZATION), value.clone());
        Ok(())
    }
}

/// Client interceptor: sends `id` as the trace id of every call whose options set none
/// ([`CallOptions::trace_id`]).
pub fn trace_id(id: impl Into<Text>) -> impl ClientInterceptor {
    let id = id.into();
    move |call: &mut Outgoing<'_>| {
        if call.metadata(mprpc::TRACE_ID).is_none() {
            call.set_metadata(Text::from_static(mprpc::TRACE_ID), id.clone());
        }
        Ok(())
    }
}

/// A new random trace id: 16 hex digits.
pub fn new_trace_id() -> String {
    use std::hash::BuildHasher as _;
    // std seeds each `RandomState` randomly: enough for an id that only has to be unlikely
    // to repeat, without a dependency on a random number crate.
    let random =
        std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{random:016x}")
}

/// The greeter server: [`Authenticate`] in front of a [`GreeterService`] whose nested hop
/// is the echo service on `backend`, called in process.
///
/// The backend has no interceptor of its own: it trusts its callers in this process, and
/// callers outside it cannot reach it unless `backend` is also served on a listener.
pub fn server(auth: Authenticate, backend: &Server) -> Server {
    let greeter = GreeterService::new(EchoClient::new(Client::in_process(backend)));
    Server::builder()
        .intercept(auth)
        .add_service(proto::GreeterServer::new(greeter))
        .build()
}

/// Greets on behalf of the authenticated [`Caller`], through the echo service as its
/// nested hop. Echo stands in for whatever backend a real handler calls (a user directory,
/// a template store): what the example shows is how the call is made.
#[derive(Debug, Clone)]
pub struct GreeterService {
    echo: EchoClient,
}

impl GreeterService {
    /// A greeter that makes its nested calls through `echo`.
    pub fn new(echo: EchoClient) -> GreeterService {
        GreeterService { echo }
    }
}

impl proto::Greeter for GreeterService {
    async fn greet(&self, ctx: Context, request: GreetRequest) -> Result<GreetReply, Status> {
        // Missing only when the server was built without `Authenticate`: the server's
        // fault, not the caller's.
        let caller = ctx
            .get::<Caller>()
            .ok_or_else(|| Status::internal("the server authenticates no one"))?;
        if request.name.is_empty() {
            return Err(Status::invalid_argument("name is empty"));
        }
        info!(caller = %caller.name, name = %request.name, "greeting");
        let greeting = EchoRequest {
            payload: format!("Hello {}, from {}", request.name, caller.name).into(),
        };
        // The caller's remaining deadline and trace id go on to the next hop.
        let echoed = self
            .echo
            .echo_with(&greeting, &CallOptions::from(&ctx))
            .await
            .map_err(nested_failure)?;
        let message = String::from_utf8(echoed.payload.into())
            .map_err(|_| Status::internal("the greeting came back garbled"))?;
        Ok(GreetReply { message })
    }
}

/// What the caller is told when the nested call fails: that its deadline passed, if that
/// is what happened, and otherwise only that the greeting could not be made — the
/// backend's own message stays in this server's log.
fn nested_failure(err: mprpc::Error) -> Status {
    warn!(cause = %err, "nested echo call failed");
    if err.code() == Code::DeadlineExceeded {
        Status::deadline_exceeded("deadline passed during a nested call")
    } else {
        // Greeting changes nothing, so another instance may safely be asked instead.
        Status::unavailable("the greeting backend failed")
    }
}

/// The nested hop as `greeter-server` hosts it: [`EchoService`](crate::EchoService) plus
/// one log line per call, so that the hop shows in the log inside its own `rpc{..}` span
/// (with the trace id it received) and with the time left before the deadline it
/// inherited. `EchoService` itself stays silent because it also serves load tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggedEcho;

impl proto::Echo for LoggedEcho {
    async fn echo(&self, ctx: Context, request: EchoRequest) -> Result<EchoResponse, Status> {
        info!(remaining = ?ctx.remaining(), "echoing");
        proto::Echo::echo(&crate::EchoService, ctx, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context::new("127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn known_bearer_tokens_attach_their_caller() {
        let auth = Authenticate::new().user("ada", "s3cret");
        let mut ctx = context().with_metadata(AUTHORIZATION, "Bearer s3cret");
        auth.intercept(&mut ctx).expect("admitted");
        assert_eq!(ctx.get::<Caller>().map(|c| c.name.as_str()), Some("ada"));
    }

    #[test]
    fn missing_unknown_or_malformed_tokens_are_unauthenticated() {
        let auth = Authenticate::new().user("ada", "s3cret");
        for ctx in [
            context(),
            context().with_metadata(AUTHORIZATION, "Bearer guess"),
            context().with_metadata(AUTHORIZATION, "s3cret"),
            context().with_metadata(AUTHORIZATION, "Basic s3cret"),
        ] {
            let mut ctx = ctx;
            let refused = auth.intercept(&mut ctx).expect_err("refused");
            assert_eq!(refused.code(), Code::Unauthenticated);
            assert!(ctx.get::<Caller>().is_none());
        }
        assert!(!format!("{auth:?}").contains("s3cret"));
    }

    #[test]
    fn trace_ids_are_sixteen_hex_digits_and_differ() {
        let (a, b) = (new_trace_id(), new_trace_id());
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
