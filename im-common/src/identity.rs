//! Who is calling: identity carried in call metadata.
//!
//! The gateway authenticates end users (tokens, through `UserService.VerifyToken`) and then
//! calls the services *for* them, putting the session's user, device and session ids in the
//! call's metadata ([`for_user`]). Every process also names itself ([`ServiceIdentity`], a
//! client interceptor). On the server side [`Authenticate`] refuses any call that carries no
//! service identity before a handler runs, and handlers that act for a user take it from
//! [`user`], never from a field of the request body.
//!
//! The services trust this metadata: they listen on the cluster's private network, which
//! only MPIM's own processes reach (docs/operations.md).

use mprpc::interceptor::Outgoing;
use mprpc::{CallOptions, ClientInterceptor, Context, Interceptor, Status, Text};

/// Metadata key: the calling process (`gateway`, `im-message`, …).
pub const SERVICE: &str = "mpim-service";
/// Metadata key: the end user a call acts for (decimal user id).
pub const USER: &str = "mpim-user";
/// Metadata key: the end user's device id.
pub const DEVICE: &str = "mpim-device";
/// Metadata key: the end user's session id.
pub const SESSION: &str = "mpim-session";

/// The end user a call acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user's id.
    pub id: u64,
    /// The device the user acts from (empty when the caller named none).
    pub device: String,
    /// The session the device logged in with (empty when the caller named none).
    pub session: String,
}

impl User {
    /// A user with no device or session (for internal calls and tests).
    pub fn new(id: u64) -> User {
        User {
            id,
            device: String::new(),
            session: String::new(),
        }
    }

    /// The same user on `device`.
    pub fn on_device(mut self, device: impl Into<String>) -> User {
        self.device = device.into();
        self
    }
}

/// The end user of the call, from its metadata.
///
/// # Errors
/// `UNAUTHENTICATED` when the call acts for no user (or names one that is not a user id).
pub fn user(ctx: &Context) -> Result<User, Status> {
    let id = ctx
        .metadata(USER)
        .and_then(|id| id.parse::<u64>().ok())
        .filter(|&id| id != 0)
        .ok_or_else(|| Status::unauthenticated("this call must be made for a logged-in user"))?;
    Ok(User {
        id,
        device: ctx.metadata(DEVICE).unwrap_or_default().to_owned(),
        session: ctx.metadata(SESSION).unwrap_or_default().to_owned(),
    })
}

/// The calling process, from the call's metadata.
///
/// # Errors
/// `UNAUTHENTICATED` when the call names none.
pub fn service(ctx: &Context) -> Result<&str, Status> {
    ctx.metadata(SERVICE)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| Status::unauthenticated("call carries no mpim-service identity"))
}

/// Call options that act for `user`, on top of `options`.
pub fn for_user(options: CallOptions, user: &User) -> CallOptions {
    let mut options = options.metadata(Text::from_static(USER), user.id.to_string());
    if !user.device.is_empty() {
        options = options.metadata(Text::from_static(DEVICE), user.device.clone());
    }
    if !user.session.is_empty() {
        options = options.metadata(Text::from_static(SESSION), user.session.clone());
    }
    options
}

/// A test or in-process context that acts for `user`, as a gateway's call would arrive.
pub fn context_for(user: &User) -> Context {
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Context::new(peer)
        .with_metadata(Text::from_static(SERVICE), "gateway")
        .with_metadata(Text::from_static(USER), user.id.to_string())
        .with_metadata(Text::from_static(DEVICE), user.device.clone())
        .with_metadata(Text::from_static(SESSION), user.session.clone())
}

/// A test or in-process context for an internal call from `service`, acting for no user.
pub fn context_for_service(service: &'static str) -> Context {
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    Context::new(peer).with_metadata(Text::from_static(SERVICE), service)
}

/// Server interceptor: refuses calls without a service identity (`UNAUTHENTICATED`), except
/// health checks, which load balancers and probes make without one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Authenticate;

impl Interceptor for Authenticate {
    fn intercept(&self, ctx: &mut Context) -> Result<(), Status> {
        if ctx.service() == "mprpc.health.Health" {
            return Ok(());
        }
        service(ctx).map(|_| ())
    }
}

/// Client interceptor: names this process in every call ([`SERVICE`]).
#[derive(Debug, Clone)]
pub struct ServiceIdentity(Text);

impl ServiceIdentity {
    /// Calls will say they come from `name`.
    pub fn new(name: &'static str) -> ServiceIdentity {
        ServiceIdentity(Text::from_static(name))
    }
}

impl ClientInterceptor for ServiceIdentity {
    fn intercept(&self, call: &mut Outgoing<'_>) -> Result<(), Status> {
        call.set_metadata(Text::from_static(SERVICE), self.0.clone());
        Ok(())
    }
}
