//! The `PresenceService` rpcs over the bus's [`Routes`](im_common::bus::Routes).

use std::time::Duration;

use im_common::bus::{Bus, channels};
use im_common::identity;
use im_common::ids::now_ms;
use im_common::proto::{
    self, DeviceKind, Empty, HeartbeatReply, HeartbeatRequest, PresenceChanged, Route, Routes,
    Statuses, SweepReply, UnbindRouteRequest, UserIds,
};
use im_common::validate;
use mprpc::{Context, Status};
use prost::Message;
use serde::Deserialize;
use tracing::{debug, warn};

/// Most user ids one QueryRoutes or QueryStatus may name.
pub const MAX_QUERY_USERS: usize = 10_000;
/// Longest gateway id, in bytes.
pub const MAX_GATEWAY_BYTES: usize = validate::MAX_GATEWAY_ID_BYTES;

/// The `[presence]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSettings {
    /// How long a gateway's routes live without another heartbeat or bind, in ms; gateways
    /// heartbeat well within it (the Heartbeat reply tells them). Default 30000.
    pub route_ttl_ms: u64,
    /// How often this instance removes the routes of lapsed gateways, in ms; 0 turns the
    /// sweeper off (the Sweep rpc still works). Default 10000.
    pub sweep_interval_ms: u64,
    /// How long a gateway may go without a heartbeat before the sweeper deletes its delivery
    /// stream, with whatever is pending in it, in ms; 0 keeps streams for ever. A gateway
    /// back within it reads what is pending; one back later starts on an empty stream, and
    /// its clients sync on reconnect. Needs the sweeper (`sweep_interval_ms` above 0).
    /// Default 86400000 (24 h: past any restart or outage that is fixed, short of a gateway
    /// that is gone for good).
    pub dead_stream_after_ms: u64,
}

impl Default for PresenceSettings {
    fn default() -> PresenceSettings {
        PresenceSettings {
            route_ttl_ms: 30_000,
            sweep_interval_ms: 10_000,
            dead_stream_after_ms: 86_400_000,
        }
    }
}

/// A `[presence]` value that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// Routes that live no time at all.
    #[error("presence.route_ttl_ms must be above 0")]
    ZeroTtl,
}

impl PresenceSettings {
    /// Checks the values.
    ///
    /// # Errors
    /// [`SettingsError`] naming the key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.route_ttl_ms == 0 {
            return Err(SettingsError::ZeroTtl);
        }
        Ok(())
    }

    /// How long routes live without a heartbeat.
    pub fn route_ttl(&self) -> Duration {
        Duration::from_millis(self.route_ttl_ms)
    }

    /// How often to sweep, if at all.
    pub fn sweep_interval(&self) -> Option<Duration> {
        (self.sweep_interval_ms > 0).then(|| Duration::from_millis(self.sweep_interval_ms))
    }

    /// How long a gateway is silent before its delivery stream goes, if it ever does.
    pub fn dead_stream_after(&self) -> Option<Duration> {
        (self.dead_stream_after_ms > 0).then(|| Duration::from_millis(self.dead_stream_after_ms))
    }
}

/// The presence service: who is connected where, for internal callers (gateways bind and
/// heartbeat, the message service queries).
#[derive(Debug, Clone)]
pub struct Presence {
    bus: Bus,
    settings: PresenceSettings,
}

impl Presence {
    /// The service on `bus`.
    ///
    /// # Errors
    /// When `settings` cannot work ([`PresenceSettings::validate`]).
    pub fn new(bus: Bus, settings: PresenceSettings) -> Result<Presence, SettingsError> {
        settings.validate()?;
        Ok(Presence { bus, settings })
    }

    /// Whether `user` has a live route.
    async fn online(&self, user: u64) -> Result<bool, Status> {
        let status = self.bus.routes.status(vec![user]).await?;
        Ok(status.first().is_some_and(|status| status.online))
    }

    /// Tells every gateway that `user` came online or went offline. Best effort: a lost
    /// event leaves only a stale indicator, which QueryStatus corrects.
    async fn announce(&self, user_id: u64, online: bool) {
        let event = proto::Event {
            event: Some(proto::event::Event::Presence(PresenceChanged {
                user_id,
                online,
                at_ms: now_ms(),
                // Every gateway tells its own users who have `user_id` as a friend.
                to_user_ids: Vec::new(),
            })),
        };
        let published = self
            .bus
            .pubsub
            .publish(channels::BROADCAST.to_owned(), event.encode_to_vec().into())
            .await;
        if let Err(err) = published {
            warn!(cause = %err, user_id, online, "presence event not published");
        }
    }
}

/// Refuses calls that name no calling service (in case the server was built without
/// [`identity::Authenticate`]).
fn internal(ctx: &Context) -> Result<(), Status> {
    identity::service(ctx).map(|_| ())
}

fn gateway_id(gateway: &str) -> Result<(), Status> {
    validate::gateway_id("gateway_id", gateway)
}

fn route(route: &Route) -> Result<(), Status> {
    validate::user_id("user_id", route.user_id)?;
    validate::client_id("device_id", &route.device_id)?;
    gateway_id(&route.gateway_id)?;
    DeviceKind::try_from(route.device_kind)
        .map_err(|_| Status::invalid_argument("device_kind is not a known kind"))?;
    Ok(())
}

/// The user ids of a query: nonzero, at most [`MAX_QUERY_USERS`].
fn user_ids(ids: &[u64]) -> Result<(), Status> {
    if ids.len() > MAX_QUERY_USERS {
        return Err(Status::invalid_argument(format!(
            "{} user_ids, more than the limit of {MAX_QUERY_USERS}",
            ids.len()
        )));
    }
    if ids.contains(&0) {
        return Err(Status::invalid_argument("user_ids must not contain 0"));
    }
    Ok(())
}

impl proto::PresenceService for Presence {
    async fn bind_route(&self, ctx: Context, request: Route) -> Result<Empty, Status> {
        internal(&ctx)?;
        route(&request)?;
        let user = request.user_id;
        let was_online = self.online(user).await?;
        debug!(user, device = %request.device_id, gateway = %request.gateway_id, "bind");
        self.bus
            .routes
            .bind(request, self.settings.route_ttl())
            .await?;
        if !was_online {
            self.announce(user, true).await;
        }
        Ok(Empty {})
    }

    async fn unbind_route(
        &self,
        ctx: Context,
        request: UnbindRouteRequest,
    ) -> Result<Empty, Status> {
        internal(&ctx)?;
        let user = validate::user_id("user_id", request.user_id)?;
        validate::client_id("device_id", &request.device_id)?;
        gateway_id(&request.gateway_id)?;
        let was_online = self.online(user).await?;
        debug!(user, device = %request.device_id, gateway = %request.gateway_id, "unbind");
        self.bus
            .routes
            .unbind(user, request.device_id, request.gateway_id)
            .await?;
        if was_online && !self.online(user).await? {
            self.announce(user, false).await;
        }
        Ok(Empty {})
    }

    async fn heartbeat(
        &self,
        ctx: Context,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatReply, Status> {
        internal(&ctx)?;
        gateway_id(&request.gateway_id)?;
        let known = self
            .bus
            .routes
            .heartbeat(request.gateway_id, self.settings.route_ttl())
            .await?;
        Ok(HeartbeatReply {
            ttl_ms: self.settings.route_ttl_ms,
            known,
        })
    }

    async fn query_routes(&self, ctx: Context, request: UserIds) -> Result<Routes, Status> {
        internal(&ctx)?;
        user_ids(&request.user_ids)?;
        let mut users = request.user_ids;
        // Each user once, or its routes would come back as often as it was named.
        users.sort_unstable();
        users.dedup();
        let routes = self.bus.routes.query(users).await?;
        Ok(Routes { routes })
    }

    async fn query_status(&self, ctx: Context, request: UserIds) -> Result<Statuses, Status> {
        internal(&ctx)?;
        // Presence knows no friendships: whose status a user may see is the user service's
        // answer (StatusVisible), which the gateway asks first and then asks here as itself.
        if ctx.metadata(identity::USER).is_some() {
            return Err(Status::permission_denied(
                "QueryStatus answers MPIM's processes, not a user: ask through the gateway",
            ));
        }
        user_ids(&request.user_ids)?;
        let statuses = self.bus.routes.status(request.user_ids).await?;
        Ok(Statuses { statuses })
    }

    async fn sweep(&self, ctx: Context, _request: Empty) -> Result<SweepReply, Status> {
        internal(&ctx)?;
        let removed_routes = self.bus.routes.sweep().await?;
        Ok(SweepReply { removed_routes })
    }
}
