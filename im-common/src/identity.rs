//! Who is calling, and for whom.
//!
//! Two questions for every call a service receives:
//!
//! - **Which process?** Its [`Role`], from the certificate it presented in the mutual-TLS
//!   handshake (the certificate's DNS name, see [`crate::certs`]), or the process itself for
//!   calls through the in-process transport inside `mpim`. On a plaintext connection nothing
//!   can be verified: the caller's declared name ([`SERVICE`] metadata) is taken on trust,
//!   which a service allows only on a loopback address or with `tls.insecure = true`
//!   ([`crate::serve`]).
//! - **For which user?** The gateway authenticates end users (tokens, through
//!   `UserService.VerifyToken`) and calls the services *for* them, putting the session's
//!   user, device and session ids in the call's metadata ([`for_user`]). Only a gateway (or
//!   the in-process transport) may do so: [`Authorize`] refuses user metadata from any other
//!   caller, and handlers take the user from [`user`], never from a field of the request.
//!
//! [`Authorize`] is the server interceptor that answers both before any handler runs, and
//! checks the service's [`Policy`]: which roles may call each method.

use mprpc::interceptor::Outgoing;
use mprpc::tls::PeerIdentity;
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

/// The end user of the call, from its metadata (which [`Authorize`] accepts only from a
/// caller that may act for users).
///
/// # Errors
/// `UNAUTHENTICATED` when the call acts for no user (or names one that is not a user id),
/// or comes from a caller that may not act for users.
pub fn user(ctx: &Context) -> Result<User, Status> {
    if ctx
        .get::<Caller>()
        .is_some_and(|caller| !caller.acts_for_users())
    {
        return Err(Status::unauthenticated(
            "this caller may not act for a user",
        ));
    }
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

/// The name the calling process gives itself (metadata, unverified: see [`Caller`]).
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

/// The kinds of MPIM process, each with a certificate of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `im-gateway`: holds client connections and acts for their users.
    Gateway,
    /// `im-user`.
    User,
    /// `im-presence`.
    Presence,
    /// `im-message`.
    Message,
    /// `im-group`.
    Group,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Gateway,
        Role::User,
        Role::Presence,
        Role::Message,
        Role::Group,
    ];

    /// The short name (`gateway`, `user`, …): file names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::User => "user",
            Role::Presence => "presence",
            Role::Message => "message",
            Role::Group => "group",
        }
    }

    /// The DNS name the role's certificate carries: the service it serves
    /// (`mpim.UserService`), so that a client can check that the instance it dialled holds
    /// the certificate of the service it looked up; `mpim.Gateway` for gateways.
    pub fn certificate_name(self) -> &'static str {
        match self {
            Role::Gateway => "mpim.Gateway",
            Role::User => "mpim.UserService",
            Role::Presence => "mpim.PresenceService",
            Role::Message => "mpim.MessageService",
            Role::Group => "mpim.GroupService",
        }
    }

    /// The role a short name names.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    /// The role a verified certificate names; `None` when it names none (or, against the
    /// rules of [`crate::certs`], more than one).
    pub fn of_certificate(peer: &PeerIdentity) -> Option<Role> {
        let mut found = Role::ALL.into_iter().filter(|role| {
            peer.dns_names()
                .iter()
                .any(|name| name.eq_ignore_ascii_case(role.certificate_name()))
        });
        let role = found.next()?;
        found.next().is_none().then_some(role)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a call's caller was established; [`Authorize`] attaches it to every call it lets
/// through ([`Context::get`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The in-process transport: code of this same binary.
    InProcess,
    /// A verified certificate naming this role.
    Certified(Role),
    /// A plaintext connection and the name the caller gave itself ([`SERVICE`]); nothing
    /// about it is verified.
    Declared(String),
}

impl Caller {
    /// Establishes the caller of the call in `ctx`.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` when a certificate names no MPIM role, or a plaintext or
    /// in-process caller names itself not at all.
    pub fn of(ctx: &Context) -> Result<Caller, Status> {
        if ctx.is_local() {
            // Code of this binary, but still named: a call from a client built without
            // [`ServiceIdentity`] is a wiring mistake worth refusing.
            service(ctx)?;
            return Ok(Caller::InProcess);
        }
        if let Some(peer) = ctx.peer_identity() {
            return Role::of_certificate(peer)
                .map(Caller::Certified)
                .ok_or_else(|| {
                    Status::unauthenticated("the caller's certificate names no MPIM role")
                });
        }
        service(ctx).map(|name| Caller::Declared(name.to_owned()))
    }

    /// Whether this caller may act for end users: a gateway, or this process itself.
    pub fn acts_for_users(&self) -> bool {
        !matches!(self, Caller::Certified(role) if *role != Role::Gateway)
    }
}

/// Which roles may call each method of one service.
#[derive(Debug)]
pub struct Policy {
    /// The fully qualified service (`mpim.UserService`).
    pub service: &'static str,
    /// Method name (as in the `.proto`) and the roles that may call it.
    pub methods: &'static [(&'static str, &'static [Role])],
}

/// The gateway only: what every method acting for an end user allows.
pub const GATEWAY: &[Role] = &[Role::Gateway];

impl Policy {
    /// The roles that may call `method`; none for a method the policy does not name, so a
    /// method added without a policy entry is closed, not open.
    pub fn allowed(&self, method: &str) -> &'static [Role] {
        self.methods
            .iter()
            .find(|(name, _)| *name == method)
            .map_or(&[], |(_, roles)| roles)
    }
}

/// Server interceptor: establishes the [`Caller`], refuses user metadata from callers that
/// may not act for users and calls that the service's [`Policy`] does not allow to the
/// caller's role (`PERMISSION_DENIED`), and attaches the caller. Health checks pass for any
/// caller the transport let in (a mutual-TLS server has checked its certificate already).
#[derive(Debug, Clone, Copy)]
pub struct Authorize {
    policy: &'static Policy,
}

impl Authorize {
    /// Checks calls against `policy`, the policy of the service the server hosts (a call
    /// to any other service is refused).
    pub fn new(policy: &'static Policy) -> Authorize {
        Authorize { policy }
    }

    fn check(&self, ctx: &Context, caller: &Caller) -> Result<(), Status> {
        if ctx.service() == "mprpc.health.Health" {
            return Ok(());
        }
        let role = match caller {
            Caller::Certified(role) => *role,
            // Unverifiable, so a role's rules cannot apply: plaintext is allowed only where
            // every caller is trusted (`crate::serve`).
            Caller::InProcess | Caller::Declared(_) => return Ok(()),
        };
        let allowed = match self.policy.service == ctx.service() {
            true => self.policy.allowed(ctx.method()),
            false => &[],
        };
        if allowed.contains(&role) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{role} may not call {}.{}",
                ctx.service(),
                ctx.method()
            )))
        }
    }
}

impl Interceptor for Authorize {
    fn intercept(&self, ctx: &mut Context) -> Result<(), Status> {
        let caller = Caller::of(ctx)?;
        let for_user = [USER, DEVICE, SESSION]
            .iter()
            .any(|key| ctx.metadata(key).is_some());
        if for_user && !caller.acts_for_users() {
            return Err(Status::permission_denied(
                "only a gateway may make calls for a user",
            ));
        }
        self.check(ctx, &caller)?;
        ctx.insert(caller);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(names: &[&str]) -> PeerIdentity {
        PeerIdentity::new(names.iter().map(|n| n.to_string()).collect(), Vec::new())
    }

    #[test]
    fn a_certificate_names_one_role() {
        for role in Role::ALL {
            assert_eq!(
                Role::of_certificate(&peer(&[role.certificate_name()])),
                Some(role)
            );
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        assert_eq!(
            Role::of_certificate(&peer(&["mpim.gateway"])),
            Some(Role::Gateway)
        );
        assert_eq!(Role::of_certificate(&peer(&["example.com"])), None);
        assert_eq!(Role::of_certificate(&peer(&[])), None);
        let both = peer(&["mpim.Gateway", "mpim.UserService"]);
        assert_eq!(Role::of_certificate(&both), None, "two roles is none");
    }

    #[test]
    fn only_gateways_and_this_process_act_for_users() {
        assert!(Caller::InProcess.acts_for_users());
        assert!(Caller::Certified(Role::Gateway).acts_for_users());
        assert!(Caller::Declared("im-gateway".into()).acts_for_users());
        for role in [Role::User, Role::Presence, Role::Message, Role::Group] {
            assert!(!Caller::Certified(role).acts_for_users(), "{role}");
        }
    }

    #[test]
    fn a_method_without_an_entry_is_closed() {
        static POLICY: Policy = Policy {
            service: "mpim.Test",
            methods: &[("Open", GATEWAY)],
        };
        assert_eq!(POLICY.allowed("Open"), GATEWAY);
        assert!(POLICY.allowed("Other").is_empty());
    }
}
