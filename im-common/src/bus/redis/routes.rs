//! Routes on Redis: a hash of devices per user, a liveness key per gateway.
//!
//! A route is stored as `"<device kind> <gateway>"` under its device in the user's hash, so
//! that the scripts below can tell which gateway holds a device without decoding anything.
//! Whether a gateway is alive is one key with a PX ttl, which a heartbeat refreshes for all
//! of the gateway's routes at once; [`Routes::query`] leaves out routes whose gateway's key
//! is gone, and [`Routes::sweep`] deletes them.
//!
//! Unbinding and sweeping remove a route only if it still names the gateway in question,
//! in a script, so that a device that moved to another gateway in the meantime is left
//! alone. The sweep script also reads the gateway's liveness key, which lives in another
//! hash slot than the user's keys: under Redis Cluster that check would have to move out of
//! the script.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;

use super::{Redis, ttl_ms};
use crate::bus::{BusResult, Routes};
use crate::ids::now_ms;
use crate::proto::{Route, UserStatus};

/// Routes handled per pipeline when sweeping.
const SWEEP_BATCH: usize = 1000;

/// Removes a device's route if `gateway` holds it; records the user's last-seen time when
/// that was the user's last route.
///
/// KEYS: routes, last-seen, [gateway liveness, gateway's routes]. ARGV: device, gateway,
/// now ms, member. With the gateway's keys (sweep), nothing happens while the gateway is
/// alive, and otherwise the member leaves the gateway's set. Returns 1 when it removed.
const REMOVE_ROUTE: &str = r"
if #KEYS == 4 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
  redis.call('SREM', KEYS[4], ARGV[4])
end
local route = redis.call('HGET', KEYS[1], ARGV[1])
if not route then return 0 end
local sep = string.find(route, ' ', 1, true)
if not sep or string.sub(route, sep + 1) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SET', KEYS[2], ARGV[3]) end
return 1
";

/// Forgets a gateway that is neither alive nor holds routes.
///
/// KEYS: the gateways set, the gateway's liveness key, the gateway's routes. ARGV: gateway.
const FORGET_GATEWAY: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('SCARD', KEYS[3]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
";

impl Redis {
    fn routes_key(&self, user: u64) -> String {
        format!("{}mpim:routes:{{{user}}}", self.prefix)
    }

    fn last_seen_key(&self, user: u64) -> String {
        format!("{}mpim:last-seen:{{{user}}}", self.prefix)
    }

    fn gateway_key(&self, gateway: &str) -> String {
        format!("{}mpim:gateway:{{{gateway}}}", self.prefix)
    }

    fn gateway_routes_key(&self, gateway: &str) -> String {
        format!("{}mpim:gateway-routes:{{{gateway}}}", self.prefix)
    }

    fn gateways_key(&self) -> String {
        format!("{}mpim:gateways", self.prefix)
    }

    /// Every stored route of `users` (alive or not), in the order asked.
    async fn stored_routes(
        &self,
        conn: &mut ConnectionManager,
        users: &[u64],
    ) -> BusResult<Vec<Route>> {
        let mut pipe = redis::pipe();
        for &user in users {
            pipe.cmd("HGETALL").arg(self.routes_key(user));
        }
        let hashes: Vec<BTreeMap<String, String>> = pipe.query_async(conn).await?;
        let mut routes = Vec::new();
        for (&user_id, devices) in users.iter().zip(hashes) {
            for (device_id, value) in devices {
                match decode(user_id, device_id, &value) {
                    Some(route) => routes.push(route),
                    None => tracing::warn!(user_id, value, "unreadable route skipped"),
                }
            }
        }
        Ok(routes)
    }

    /// Which of the gateways `routes` name are alive.
    async fn live_gateways(
        &self,
        conn: &mut ConnectionManager,
        routes: &[Route],
    ) -> BusResult<HashSet<String>> {
        let gateways: Vec<&str> = routes
            .iter()
            .map(|route| route.gateway_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if gateways.is_empty() {
            return Ok(HashSet::new());
        }
        let mut pipe = redis::pipe();
        for gateway in &gateways {
            pipe.cmd("EXISTS").arg(self.gateway_key(gateway));
        }
        let alive: Vec<bool> = pipe.query_async(conn).await?;
        Ok(gateways
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| *alive)
            .map(|(gateway, _)| gateway.to_owned())
            .collect())
    }

    async fn live_routes(
        &self,
        conn: &mut ConnectionManager,
        users: &[u64],
    ) -> BusResult<Vec<Route>> {
        let mut routes = self.stored_routes(conn, users).await?;
        let live = self.live_gateways(conn, &routes).await?;
        routes.retain(|route| live.contains(&route.gateway_id));
        Ok(routes)
    }

    async fn statuses(&self, users: Vec<u64>) -> BusResult<Vec<UserStatus>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        for &user in &users {
            pipe.cmd("GET").arg(self.last_seen_key(user));
        }
        let seen: Vec<Option<i64>> = pipe.query_async(&mut conn).await?;
        let online: HashSet<u64> = self
            .live_routes(&mut conn, &users)
            .await?
            .into_iter()
            .map(|route| route.user_id)
            .collect();
        let now = now_ms();
        Ok(users
            .into_iter()
            .zip(seen)
            .map(|(user_id, seen)| {
                let online = online.contains(&user_id);
                UserStatus {
                    user_id,
                    online,
                    last_seen_ms: if online { now } else { seen.unwrap_or(0) },
                }
            })
            .collect())
    }

    async fn sweep_routes(&self) -> BusResult<u64> {
        let mut conn = self.conn();
        let gateways: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.gateways_key())
            .query_async(&mut conn)
            .await?;
        if gateways.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for gateway in &gateways {
            pipe.cmd("EXISTS").arg(self.gateway_key(gateway));
        }
        let alive: Vec<bool> = pipe.query_async(&mut conn).await?;
        let mut removed = 0;
        for (gateway, _) in gateways.iter().zip(alive).filter(|(_, alive)| !alive) {
            removed += self.sweep_gateway(&mut conn, gateway).await?;
        }
        Ok(removed)
    }

    /// Removes the routes of `gateway`, found lapsed; then forgets it if it stayed so.
    async fn sweep_gateway(&self, conn: &mut ConnectionManager, gateway: &str) -> BusResult<u64> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.gateway_routes_key(gateway))
            .query_async(conn)
            .await?;
        let now = now_ms();
        let mut removed = 0;
        for batch in members.chunks(SWEEP_BATCH) {
            let mut pipe = redis::pipe();
            for member in batch {
                let Some((user, device)) = member
                    .split_once(':')
                    .and_then(|(user, device)| Some((user.parse::<u64>().ok()?, device)))
                else {
                    tracing::warn!(gateway, member, "unreadable route member skipped");
                    continue;
                };
                pipe.cmd("EVAL")
                    .arg(REMOVE_ROUTE)
                    .arg(4)
                    .arg(self.routes_key(user))
                    .arg(self.last_seen_key(user))
                    .arg(self.gateway_key(gateway))
                    .arg(self.gateway_routes_key(gateway))
                    .arg(device)
                    .arg(gateway)
                    .arg(now)
                    .arg(member);
            }
            let done: Vec<u64> = pipe.query_async(conn).await?;
            removed += done.iter().sum::<u64>();
        }
        redis::cmd("EVAL")
            .arg(FORGET_GATEWAY)
            .arg(3)
            .arg(self.gateways_key())
            .arg(self.gateway_key(gateway))
            .arg(self.gateway_routes_key(gateway))
            .arg(gateway)
            .exec_async(conn)
            .await?;
        Ok(removed)
    }
}

/// A route from its hash entry.
fn decode(user_id: u64, device_id: String, value: &str) -> Option<Route> {
    let (kind, gateway) = value.split_once(' ')?;
    Some(Route {
        user_id,
        device_id,
        device_kind: kind.parse().ok()?,
        gateway_id: gateway.to_owned(),
    })
}

/// The hash entry of a route.
fn encode(route: &Route) -> String {
    format!("{} {}", route.device_kind, route.gateway_id)
}

/// The member of a gateway's set that names a route.
fn member(user: u64, device: &str) -> String {
    format!("{user}:{device}")
}

impl Routes for Redis {
    fn bind(&self, route: Route, ttl: Duration) -> BoxFuture<'_, BusResult<()>> {
        async move {
            let gateway = &route.gateway_id;
            // Liveness first: a sweep that runs in between then sees the gateway alive.
            redis::pipe()
                .cmd("SET")
                .arg(self.gateway_key(gateway))
                .arg(1)
                .arg("PX")
                .arg(ttl_ms(ttl))
                .ignore()
                .cmd("SADD")
                .arg(self.gateways_key())
                .arg(gateway)
                .ignore()
                .cmd("HSET")
                .arg(self.routes_key(route.user_id))
                .arg(&route.device_id)
                .arg(encode(&route))
                .ignore()
                .cmd("SADD")
                .arg(self.gateway_routes_key(gateway))
                .arg(member(route.user_id, &route.device_id))
                .ignore()
                .exec_async(&mut self.conn())
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn unbind(&self, user: u64, device: String, gateway: String) -> BoxFuture<'_, BusResult<()>> {
        async move {
            redis::pipe()
                .cmd("EVAL")
                .arg(REMOVE_ROUTE)
                .arg(2)
                .arg(self.routes_key(user))
                .arg(self.last_seen_key(user))
                .arg(&device)
                .arg(&gateway)
                .arg(now_ms())
                .ignore()
                // Whoever holds the device now, this gateway no longer does.
                .cmd("SREM")
                .arg(self.gateway_routes_key(&gateway))
                .arg(member(user, &device))
                .ignore()
                .exec_async(&mut self.conn())
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn heartbeat(&self, gateway: String, ttl: Duration) -> BoxFuture<'_, BusResult<()>> {
        async move {
            redis::pipe()
                .cmd("SET")
                .arg(self.gateway_key(&gateway))
                .arg(1)
                .arg("PX")
                .arg(ttl_ms(ttl))
                .ignore()
                // Again each time: a sweep racing a bind may have forgotten the gateway.
                .cmd("SADD")
                .arg(self.gateways_key())
                .arg(&gateway)
                .ignore()
                .exec_async(&mut self.conn())
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn query(&self, users: Vec<u64>) -> BoxFuture<'_, BusResult<Vec<Route>>> {
        async move {
            if users.is_empty() {
                return Ok(Vec::new());
            }
            self.live_routes(&mut self.conn(), &users).await
        }
        .boxed()
    }

    fn status(&self, users: Vec<u64>) -> BoxFuture<'_, BusResult<Vec<UserStatus>>> {
        self.statuses(users).boxed()
    }

    fn sweep(&self) -> BoxFuture<'_, BusResult<u64>> {
        self.sweep_routes().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip_through_their_hash_entry() {
        let route = Route {
            user_id: 7,
            device_id: "phone:1".into(),
            device_kind: 2,
            gateway_id: "gw a".into(),
        };
        let back = decode(7, "phone:1".into(), &encode(&route)).unwrap();
        assert_eq!(back, route);
        assert!(decode(7, "x".into(), "nonsense").is_none());
        assert_eq!(member(7, "phone:1"), "7:phone:1");
    }
}
