//! MPIM's user service: accounts, logins and sessions, profiles, friends and blocks.
//!
//! Run it with `im-user --config im-user.toml` (every key and its default are in
//! `config/im-user.toml`); it serves `mpim.UserService` on port 6101 and `/metrics` on
//! 7101, registers in ZooKeeper when `[discovery] zookeeper` is set, and stops gracefully
//! on SIGINT/SIGTERM. It needs a token secret shared by every instance:
//!
//! ```text
//! MPIM_AUTH__JWT_SECRET="$(head -c 48 /dev/urandom | base64)" im-user --config im-user.toml
//! ```
//!
//! Without one it refuses to start (naming `auth.jwt_secret`), unless `[auth] dev = true`
//! allows the built-in development secret.
//!
//! What it guarantees:
//! - passwords are stored only as argon2id hashes, computed off the async threads; a wrong
//!   name and a wrong password get the same answer, after the same work;
//! - password guessing is limited: past `[auth] login_max_failures_per_name` failed logins
//!   for a name, or `login_max_failures_per_addr` from one client address (as the gateway
//!   reports it), within `login_failure_window_secs`, further attempts are refused with that
//!   same answer until the window ends (counters on the bus: shared through Redis; metrics
//!   `mpim_login_failures_total`, `mpim_login_throttled_total`);
//! - a login is a session row plus an HS256 token naming it; `VerifyToken` (for the gateway)
//!   checks signature, expiry and that the session is not revoked, and `Logout` revokes at
//!   once (the cached session state is deleted, and a kick event goes to the user's
//!   connections); `CheckSessions` tells a gateway which of up to 1000 sessions have ended
//!   (revoked, expired or unknown), from the database, so that gateways re-checking at an
//!   interval end connections whose kick event was lost;
//! - every call acting for a user takes the user from the call's identity metadata, never
//!   from the request body;
//! - a friend request is pushed to its target's connected devices, and its answer to both
//!   users' (pub/sub, best effort: requests made meanwhile are listed on connect);
//! - a user looks up the profiles only of users they have to do with (friends, co-members
//!   of a group, people who asked them or wrote to them, people they blocked), and learns
//!   which of up to 1000 users it may see the status of (StatusVisible: friends and
//!   co-members); others look like users that do not exist;
//! - profiles and friend/block lists are cached on the bus; writes delete what they make
//!   stale, and a flushed or failing cache only costs database reads.
//!
//! # Layout
//! - `state`: [`Users`], what every part shares (database, bus, cache, password hashing,
//!   tokens, login throttle), and how it is built;
//! - `handler`: the `UserService` rpcs on [`Users`], each routed to the module of its
//!   concept:
//!   - `account`: Register, Login, VerifyToken, Logout;
//!   - `profiles`: GetProfile(s), SearchUser, UpdateProfile, StatusVisible;
//!   - `friends`: friend requests, friends, blocks;
//!   - `sessions`: CheckSessions, [`MAX_CHECK`];
//! - [`auth`]: password hashing and tokens, [`AuthSettings`];
//! - `throttle`: the limits on failed logins per account name and per client address;
//! - `notify`: events for the gateways holding users' connections (kicks, friend
//!   requests);
//! - `cache`: the typed, never-failing view of the bus cache, [`CacheSettings`];
//! - [`Config`], [`run`], [`server`]: the process.
//!
//! Dependencies run one way: `handler` uses the concept modules, they use `state` (and
//! `notify`, `cache`, `throttle`, `auth`), and nothing uses `handler`.

#![warn(missing_docs)]

mod account;
pub mod auth;
mod cache;
mod friends;
mod handler;
mod notify;
mod profiles;
mod sessions;
mod state;
mod throttle;

use im_common::bus::Bus;
use im_common::config::{
    DatabaseConfig, DiscoveryConfig, LogConfig, RedisConfig, ServerConfig, TlsConfig,
};
use im_common::identity::{GATEWAY, Policy};
use im_common::serve::{Discovery, ports};
use im_common::store::Sql;
use serde::Deserialize;

pub use auth::{AuthSettings, SettingsError};
pub use cache::CacheSettings;
pub use profiles::{MAX_BATCH, MAX_STATUS_IDS};
pub use sessions::MAX_CHECK;
pub use state::Users;

/// The process's configuration (`im-user.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address and shutdown; default port 6101.
    pub server: ServerConfig,
    /// Where to register.
    pub discovery: DiscoveryConfig,
    /// Mutual TLS with the other MPIM processes (docs/security.md).
    pub tls: TlsConfig,
    /// The user database.
    pub database: DatabaseConfig,
    /// Cache and pub/sub.
    pub redis: RedisConfig,
    /// Logging.
    pub log: LogConfig,
    /// Passwords and tokens.
    pub auth: AuthSettings,
    /// Cache lifetimes.
    pub cache: CacheSettings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            server: ServerConfig::on_port(ports::USER),
            discovery: DiscoveryConfig::default(),
            tls: TlsConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            log: LogConfig::default(),
            auth: AuthSettings::default(),
            cache: CacheSettings::default(),
        }
    }
}

/// Which peers may call each method: every method acts for an end user, so only a gateway
/// (or the in-process transport inside `mpim`) may call it.
pub static POLICY: Policy = Policy {
    service: "mpim.UserService",
    methods: &[
        ("Register", GATEWAY),
        ("Login", GATEWAY),
        ("VerifyToken", GATEWAY),
        ("Logout", GATEWAY),
        ("GetProfile", GATEWAY),
        ("UpdateProfile", GATEWAY),
        ("GetProfiles", GATEWAY),
        ("SearchUser", GATEWAY),
        ("SendFriendRequest", GATEWAY),
        ("RespondFriendRequest", GATEWAY),
        ("ListFriendRequests", GATEWAY),
        ("RemoveFriend", GATEWAY),
        ("ListFriends", GATEWAY),
        ("Block", GATEWAY),
        ("Unblock", GATEWAY),
        ("ListBlocked", GATEWAY),
        ("CheckSessions", GATEWAY),
        ("StatusVisible", GATEWAY),
    ],
};

/// A server with the user service behind the caller checks of [`POLICY`].
pub fn server(users: Users) -> mprpc::Server {
    builder(users).build()
}

/// [`server`], not yet built: [`Discovery::serve`] adds TLS when configured.
pub fn builder(users: Users) -> mprpc::ServerBuilder {
    im_common::serve::builder(im_common::proto::UserServiceServer::new(users), &POLICY)
}

/// Runs the service until `shutdown` completes.
///
/// # Errors
/// When `[auth]` is unusable (checked first: see [`Users::new`]), or the database, Redis
/// or ZooKeeper cannot be reached, or the address cannot be bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.auth.validate()?;
    let sql = Sql::connect(&config.database).await?;
    let bus = Bus::connect(&config.redis).await?;
    let discovery = Discovery::connect(&config.discovery, &config.tls).await?;
    let users = Users::new(sql.clone(), bus, config.auth.clone())?.with_cache(config.cache.clone());
    discovery
        .serve(builder(users), &config.server, shutdown)
        .await?;
    sql.close().await;
    Ok(())
}
