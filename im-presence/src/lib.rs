//! MPIM's presence service: which devices of which users are connected, through which
//! gateway.
//!
//! Run it with `im-presence --config im-presence.toml` (every key and its default are in
//! `config/im-presence.toml`); it serves `mpim.PresenceService` on port 6102 and
//! `/metrics` on 7102, registers in ZooKeeper when `[discovery] zookeeper` is set, and stops
//! gracefully on SIGINT/SIGTERM. Several instances share one Redis (`[redis] url`); without
//! one, routes live inside the process, which only suits a single process hosting every
//! service.
//!
//! How routes live:
//! - a gateway binds a route when a device logs in through it (BindRoute) and unbinds it
//!   when the connection closes (UnbindRoute; a device that has moved to another gateway
//!   meanwhile is left alone);
//! - a gateway heartbeats once per interval for all of its routes (Heartbeat, whose reply
//!   carries the ttl, `[presence] route_ttl_ms`); when a gateway stops, its routes lapse
//!   after the ttl: queries no longer return them, and the sweeper (every
//!   `[presence] sweep_interval_ms`, or the Sweep rpc) deletes them and records when their
//!   users were last seen;
//! - a gateway's delivery stream outlives its routes, for the gateway's restart; once the
//!   gateway has been silent for `[presence] dead_stream_after_ms` (default 24 h) the
//!   sweeper deletes the stream, pending entries included (counted in
//!   `presence_removed_streams_total`), and forgets the gateway;
//! - QueryRoutes (the message service, to push) and QueryStatus (online and last seen)
//!   take up to 10 000 users in one call and one bus round trip or two;
//! - a user's first route and the removal of its last publish a `PresenceChanged` event on
//!   `mpim:events:all`, best effort (status queries are the truth).
//!
//! The rpcs are for MPIM's own processes: calls without an `mpim-service` identity are
//! refused, and so is a QueryStatus made for a user (`mpim-user`): presence does not know
//! whose status a user may see; the gateway asks the user service (StatusVisible) and
//! then queries presence for the visible ids as itself.
//!
//! # Layout
//! - [`Presence`] (`handler`): the `PresenceService` rpcs, [`PresenceSettings`];
//! - [`Sweeper`] (`sweeper`): the periodic sweep of routes and dead gateways' streams;
//! - [`Config`], [`run`], [`server`]: the process.

#![warn(missing_docs)]

mod handler;
mod sweeper;

use im_common::bus::Bus;
use im_common::config::{DiscoveryConfig, LogConfig, RedisConfig, ServerConfig, TlsConfig};
use im_common::identity::{GATEWAY, Policy};
use im_common::serve::{Discovery, ports};
use serde::Deserialize;

pub use handler::{MAX_GATEWAY_BYTES, MAX_QUERY_USERS, Presence, PresenceSettings, SettingsError};
pub use sweeper::Sweeper;

/// The process's configuration (`im-presence.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address and shutdown; default port 6102.
    pub server: ServerConfig,
    /// Where to register.
    pub discovery: DiscoveryConfig,
    /// Mutual TLS with the other MPIM processes (docs/security.md).
    pub tls: TlsConfig,
    /// Where routes live.
    pub redis: RedisConfig,
    /// Logging.
    pub log: LogConfig,
    /// Route lifetime and sweeping.
    pub presence: PresenceSettings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            server: ServerConfig::on_port(ports::PRESENCE),
            discovery: DiscoveryConfig::default(),
            tls: TlsConfig::default(),
            redis: RedisConfig::default(),
            log: LogConfig::default(),
            presence: PresenceSettings::default(),
        }
    }
}

/// Which peers may call each method: every method acts for an end user, so only a gateway
/// (or the in-process transport inside `mpim`) may call it.
pub static POLICY: Policy = Policy {
    service: "mpim.PresenceService",
    methods: &[
        ("BindRoute", GATEWAY),
        ("UnbindRoute", GATEWAY),
        ("Heartbeat", GATEWAY),
        ("QueryRoutes", GATEWAY),
        ("QueryStatus", GATEWAY),
        ("Sweep", GATEWAY),
    ],
};

/// A server with the presence service behind the caller checks of [`POLICY`].
pub fn server(presence: Presence) -> mprpc::Server {
    builder(presence).build()
}

/// [`server`], not yet built: [`Discovery::serve`] adds TLS when configured.
pub fn builder(presence: Presence) -> mprpc::ServerBuilder {
    im_common::serve::builder(
        im_common::proto::PresenceServiceServer::new(presence),
        &POLICY,
    )
}

/// Runs the service, and its sweeper, until `shutdown` completes.
///
/// # Errors
/// When `[presence]` is unusable, Redis or ZooKeeper cannot be reached, or the address
/// cannot be bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.presence.validate()?;
    let bus = Bus::connect(&config.redis).await?;
    let presence = Presence::new(bus.clone(), config.presence.clone())?;
    let discovery = Discovery::connect(&config.discovery, &config.tls).await?;
    let sweeper = Sweeper::start_configured(&bus, &config.presence);
    let served = discovery
        .serve(builder(presence), &config.server, shutdown)
        .await;
    if let Some(sweeper) = sweeper {
        sweeper.stop().await;
    }
    served
}
