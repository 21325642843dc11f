//! MPIM's group service: groups, their members and roles, join requests, mutes.
//!
//! Run it with `im-group --config im-group.toml` (every key and its default are in
//! `config/im-group.toml`); it serves `mpim.GroupService` on port 6104 and `/metrics` on
//! 7104, registers in ZooKeeper when `[discovery] zookeeper` is set, and stops gracefully on
//! SIGINT/SIGTERM. It shares its database with the message service: a group's
//! conversation (`g:<group id>`) gains and loses members in the same transaction as the
//! group.
//!
//! Who may do what (the caller always comes from the call's identity metadata, never from
//! the request body):
//!
//! | rpc | owner | admin | member | non-member |
//! |---|---|---|---|---|
//! | Invite | anyone | anyone | into an OPEN group | – |
//! | Join | – | – | already in | OPEN: joins; APPROVAL: requests |
//! | ListJoinRequests, RespondJoin | yes | yes | – | – |
//! | Leave | as the last member (dismisses) | yes | yes | – |
//! | Kick | anyone else | members | – | – |
//! | SetRole (OWNER transfers ownership) | others | – | – | – |
//! | Mute, Unmute | admins, members | members | – | – |
//! | MuteAll, UpdateInfo | yes | yes | – | – |
//! | Members, Info | yes | yes | yes | Info of an OPEN group |
//! | Dismiss | yes | – | – | – |
//!
//! A refused caller gets `PERMISSION_DENIED`; a missing or dismissed group `NOT_FOUND`;
//! bad input `INVALID_ARGUMENT` naming the field; a rule the group's state breaks (a full
//! group, an owner leaving others behind) `FAILED_PRECONDITION`. Invite and Create skip
//! ids that name no user, and ids of users who blocked the caller (alike: the reply lists
//! who was added and does not tell the two apart). Kicking someone who is not a member does
//! nothing.
//!
//! Every write that changes who is in a group, their roles or mutes, or the group's
//! information deletes the group's cached member list (`im_common::bus::keys::members`),
//! which the message service reads for fan-out. A failing cache is logged and never fails
//! the call.
//!
//! # Layout
//! - [`Groups`] (`handler`): the `GroupService` rpcs and the checks they share,
//!   delegating to
//!   - `membership`: Create, Invite, Join, join requests, Leave, Kick;
//!   - `manage`: SetRole, Mute, Unmute, MuteAll, UpdateInfo, Dismiss;
//!   - `read`: Members, MyGroups, Info;
//! - [`Config`], [`Settings`], [`run`], [`server`]: the process.

#![warn(missing_docs)]

mod handler;
mod manage;
mod membership;
mod read;

use im_common::bus::Bus;
use im_common::config::{
    DatabaseConfig, DiscoveryConfig, LogConfig, RedisConfig, ServerConfig, TlsConfig,
};
use im_common::identity::{GATEWAY, Policy};
use im_common::serve::{Discovery, ports};
use im_common::store::Sql;
use serde::Deserialize;

pub use handler::Groups;

/// Most ids one Create or Invite may name.
pub const MAX_IDS_PER_CALL: usize = 5000;

/// The process's configuration (`im-group.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address and shutdown; default port 6104.
    pub server: ServerConfig,
    /// Where to register.
    pub discovery: DiscoveryConfig,
    /// Mutual TLS with the other MPIM processes (docs/security.md).
    pub tls: TlsConfig,
    /// The group database (the message service's).
    pub database: DatabaseConfig,
    /// The cache whose member lists writes invalidate.
    pub redis: RedisConfig,
    /// Logging.
    pub log: LogConfig,
    /// Group rules.
    pub group: Settings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            server: ServerConfig::on_port(ports::GROUP),
            discovery: DiscoveryConfig::default(),
            tls: TlsConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            log: LogConfig::default(),
            group: Settings::default(),
        }
    }
}

/// Group rules (`[group]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Most members a group may have, its owner included. Default 5000.
    pub max_members: u64,
    /// Most pending join requests ListJoinRequests returns (oldest first). Default 1000.
    pub max_join_requests_listed: u32,
}

impl Settings {
    /// Checks for values that would leave the service unusable.
    ///
    /// # Errors
    /// Naming the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_members == 0 {
            anyhow::bail!("group.max_members must be at least 1");
        }
        if self.max_join_requests_listed == 0 {
            anyhow::bail!("group.max_join_requests_listed must be at least 1");
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_members: 5000,
            max_join_requests_listed: 1000,
        }
    }
}

/// Which peers may call each method: every method acts for an end user, so only a gateway
/// (or the in-process transport inside `mpim`) may call it.
pub static POLICY: Policy = Policy {
    service: "mpim.GroupService",
    methods: &[
        ("Create", GATEWAY),
        ("Invite", GATEWAY),
        ("Join", GATEWAY),
        ("ListJoinRequests", GATEWAY),
        ("RespondJoin", GATEWAY),
        ("Leave", GATEWAY),
        ("Kick", GATEWAY),
        ("SetRole", GATEWAY),
        ("Mute", GATEWAY),
        ("Unmute", GATEWAY),
        ("MuteAll", GATEWAY),
        ("Members", GATEWAY),
        ("MyGroups", GATEWAY),
        ("Info", GATEWAY),
        ("UpdateInfo", GATEWAY),
        ("Dismiss", GATEWAY),
    ],
};

/// A server with the group service behind the caller checks of [`POLICY`].
pub fn server(groups: Groups) -> mprpc::Server {
    builder(groups).build()
}

/// [`server`], not yet built: [`Discovery::serve`] adds TLS when configured.
pub fn builder(groups: Groups) -> mprpc::ServerBuilder {
    im_common::serve::builder(im_common::proto::GroupServiceServer::new(groups), &POLICY)
}

/// Runs the service until `shutdown` completes.
///
/// # Errors
/// When `[group]` is unusable ([`Settings::validate`]), the database, Redis or ZooKeeper
/// cannot be reached, or the address cannot be bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.group.validate()?;
    let sql = Sql::connect(&config.database).await?;
    let bus = Bus::connect(&config.redis).await?;
    let discovery = Discovery::connect(&config.discovery, &config.tls).await?;
    let groups = Groups::new(sql.clone(), bus, config.group.clone());
    discovery
        .serve(builder(groups), &config.server, shutdown)
        .await?;
    sql.close().await;
    Ok(())
}
