//! Routes on Redis: a hash of devices per user, a liveness key per gateway.
//!
//! A route is stored as `"<device kind> <gateway>"` under its device in the user's hash, so
//! that the scripts below can tell which gateway holds a device without decoding anything.
//! Whether a gateway is alive is one key with a PX ttl, which a heartbeat refreshes for all
//! of the gateway's routes at once; [`Routes::query`] leaves out routes whose gateway's key
//! is gone, and [`Routes::sweep`] deletes them. Each heartbeat also records when it came,
//! for [`Routes::dead_since`] (module `dead`).
//!
//! Unbinding and sweeping remove a route only if it still names the gateway in question,
//! in a script on the user's keys, so that a device that moved to another gateway in the
//! meantime is left alone. A script sees the keys of one hash slot only on a Redis Cluster,
//! and a user's keys and a gateway's keys are in different slots, so the sweep goes in two
//! steps: a script on the gateway's keys claims a route (takes it off the gateway's set)
//! only while the gateway's liveness key is missing, then the script on the user's keys
//! removes it. A gateway that lapsed, is being swept, and binds that same device again
//! within the moment between the two steps loses that one route (its next bind restores it,
//! and the device's messages wait in the database for its next sync). Both steps are the
//! same on one server.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::conn::Batch;
use super::{Redis, ttl_ms};
use crate::bus::{BusResult, Routes};
use crate::ids::now_ms;
use crate::proto::{Route, UserStatus};

/// Routes handled per batch when sweeping.
const SWEEP_BATCH: usize = 1000;

/// Removes a device's route if `gateway` holds it; records the user's last-seen time when
/// that was the user's last route.
///
/// KEYS: the user's routes, the user's last-seen (one slot: `{<user>}`). ARGV: device,
/// gateway, now ms. Returns 1 when it removed.
const REMOVE_ROUTE: &str = r"
local route = redis.call('HGET', KEYS[1], ARGV[1])
if not route then return 0 end
local sep = string.find(route, ' ', 1, true)
if not sep or string.sub(route, sep + 1) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SET', KEYS[2], ARGV[3]) end
return 1
";

/// Takes a route off a lapsed gateway's set, for the sweep to remove.
///
/// KEYS: the gateway's liveness, the gateway's routes (one slot: `{<gw>}`). ARGV: member.
/// Returns -1 while the gateway is alive (it came back: nothing more to sweep), 1 when it
/// took the member, 0 when the member was gone.
const CLAIM_ROUTE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
return redis.call('SREM', KEYS[2], ARGV[1])
";

/// A user's routes: the tag `{<user>}` puts them in the slot of the user's other keys.
fn routes_key(prefix: &str, user: u64) -> String {
    format!("{prefix}mpim:routes:{{{user}}}")
}

fn last_seen_key(prefix: &str, user: u64) -> String {
    format!("{prefix}mpim:last-seen:{{{user}}}")
}

/// A gateway's liveness: the tag `{<gateway>}` puts it in the slot of the gateway's set.
fn gateway_key(prefix: &str, gateway: &str) -> String {
    format!("{prefix}mpim:gateway:{{{gateway}}}")
}

fn gateway_routes_key(prefix: &str, gateway: &str) -> String {
    format!("{prefix}mpim:gateway-routes:{{{gateway}}}")
}

impl Redis {
    fn routes_key(&self, user: u64) -> String {
        routes_key(&self.prefix, user)
    }

    fn last_seen_key(&self, user: u64) -> String {
        last_seen_key(&self.prefix, user)
    }

    fn gateway_key(&self, gateway: &str) -> String {
        gateway_key(&self.prefix, gateway)
    }

    fn gateway_routes_key(&self, gateway: &str) -> String {
        gateway_routes_key(&self.prefix, gateway)
    }

    fn beat_key(&self, gateway: &str) -> String {
        format!("{}mpim:gateway-beat:{{{gateway}}}", self.prefix)
    }

    fn gateways_key(&self) -> String {
        format!("{}mpim:gateways", self.prefix)
    }

    /// Every stored route of `users` (alive or not), in the order asked.
    async fn stored_routes(&self, users: &[u64]) -> BusResult<Vec<Route>> {
        let mut batch = Batch::new();
        for &user in users {
            batch.cmd("HGETALL", &self.routes_key(user));
        }
        let hashes: Vec<BTreeMap<String, String>> = batch.query(&self.conn).await?;
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

    /// Whether each of `gateways` is alive.
    pub(super) async fn alive<S: AsRef<str>>(&self, gateways: &[S]) -> BusResult<Vec<bool>> {
        let mut batch = Batch::new();
        for gateway in gateways {
            batch.cmd("EXISTS", &self.gateway_key(gateway.as_ref()));
        }
        Ok(batch.query(&self.conn).await?)
    }

    /// Which of the gateways `routes` name are alive.
    async fn live_gateways(&self, routes: &[Route]) -> BusResult<HashSet<String>> {
        let gateways: Vec<&str> = routes
            .iter()
            .map(|route| route.gateway_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let alive = self.alive(&gateways).await?;
        Ok(gateways
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| *alive)
            .map(|(gateway, _)| gateway.to_owned())
            .collect())
    }

    async fn live_routes(&self, users: &[u64]) -> BusResult<Vec<Route>> {
        let mut routes = self.stored_routes(users).await?;
        let live = self.live_gateways(&routes).await?;
        routes.retain(|route| live.contains(&route.gateway_id));
        Ok(routes)
    }

    async fn statuses(&self, users: Vec<u64>) -> BusResult<Vec<UserStatus>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        for &user in &users {
            batch.cmd("GET", &self.last_seen_key(user));
        }
        let seen: Vec<Option<i64>> = batch.query(&self.conn).await?;
        let online: HashSet<u64> = self
            .live_routes(&users)
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
        let gateways: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.gateways_key())
            .query_async(&mut self.conn())
            .await?;
        let alive = self.alive(&gateways).await?;
        let mut removed = 0;
        for (gateway, _) in gateways.iter().zip(alive).filter(|(_, alive)| !alive) {
            removed += self.sweep_gateway(gateway).await?;
        }
        Ok(removed)
    }

    /// Removes the routes of `gateway`, found lapsed; then forgets it if it stayed so.
    async fn sweep_gateway(&self, gateway: &str) -> BusResult<u64> {
        let (liveness, owned) = (self.gateway_key(gateway), self.gateway_routes_key(gateway));
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&owned)
            .query_async(&mut self.conn())
            .await?;
        let now = now_ms();
        let mut removed = 0;
        for batch in members.chunks(SWEEP_BATCH) {
            let routes: Vec<(&String, u64, &str)> = batch
                .iter()
                .filter_map(|member| match parse_member(member) {
                    Some((user, device)) => Some((member, user, device)),
                    None => {
                        tracing::warn!(gateway, member, "unreadable route member skipped");
                        None
                    }
                })
                .collect();
            let mut claims = Batch::new();
            for (member, _, _) in &routes {
                claims.eval(CLAIM_ROUTE, &[&liveness, &owned]).arg(member);
            }
            let claimed: Vec<i64> = claims.query(&self.conn).await?;
            let mut removals = Batch::new();
            for ((_, user, device), _) in routes.iter().zip(&claimed).filter(|(_, c)| **c == 1) {
                let keys = [&self.routes_key(*user), &self.last_seen_key(*user)];
                removals
                    .eval(REMOVE_ROUTE, &keys.map(String::as_str))
                    .arg(*device)
                    .arg(gateway)
                    .arg(now);
            }
            let done: Vec<u64> = removals.query(&self.conn).await?;
            removed += done.iter().sum::<u64>();
            if claimed.contains(&-1) {
                return Ok(removed);
            }
        }
        self.forget_gateway(gateway).await?;
        Ok(removed)
    }

    /// Takes a swept gateway off the set of gateways, unless it came back or bound a route
    /// meanwhile. Off first, then checked: a gateway that beats in between is put back by
    /// the check or by its own beat, which adds it again each time.
    async fn forget_gateway(&self, gateway: &str) -> BusResult<()> {
        redis::cmd("SREM")
            .arg(self.gateways_key())
            .arg(gateway)
            .exec_async(&mut self.conn())
            .await?;
        let mut check = Batch::new();
        check.cmd("EXISTS", &self.gateway_key(gateway));
        check.cmd("SCARD", &self.gateway_routes_key(gateway));
        let counts: Vec<u64> = check.query(&self.conn).await?;
        if counts.iter().any(|&n| n > 0) {
            redis::cmd("SADD")
                .arg(self.gateways_key())
                .arg(gateway)
                .exec_async(&mut self.conn())
                .await?;
        } else {
            // A gateway that only ever bound has no last beat: it counts as seen now, so
            // that its stream is removed in the end too.
            redis::cmd("HSETNX")
                .arg(self.seen_key())
                .arg(gateway)
                .arg(now_ms())
                .exec_async(&mut self.conn())
                .await?;
        }
        Ok(())
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

/// The user and device a member names.
fn parse_member(member: &str) -> Option<(u64, &str)> {
    let (user, device) = member.split_once(':')?;
    Some((user.parse().ok()?, device))
}

impl Routes for Redis {
    fn bind(&self, route: Route, ttl: Duration) -> BoxFuture<'_, BusResult<()>> {
        async move {
            let gateway = &route.gateway_id;
            // Liveness before the route's member (one slot, in order): a sweep that claims
            // the member then sees the gateway alive.
            let mut batch = Batch::new();
            batch
                .cmd("SET", &self.gateway_key(gateway))
                .arg(1)
                .arg("PX")
                .arg(ttl_ms(ttl));
            batch.cmd("SADD", &self.gateways_key()).arg(gateway);
            batch
                .cmd("HSET", &self.routes_key(route.user_id))
                .arg(&route.device_id)
                .arg(encode(&route));
            batch
                .cmd("SADD", &self.gateway_routes_key(gateway))
                .arg(member(route.user_id, &route.device_id));
            batch.exec(&self.conn).await?;
            Ok(())
        }
        .boxed()
    }

    fn unbind(&self, user: u64, device: String, gateway: String) -> BoxFuture<'_, BusResult<()>> {
        async move {
            let mut batch = Batch::new();
            let keys = [&self.routes_key(user), &self.last_seen_key(user)];
            batch
                .eval(REMOVE_ROUTE, &keys.map(String::as_str))
                .arg(&device)
                .arg(&gateway)
                .arg(now_ms());
            // Whoever holds the device now, this gateway no longer does.
            batch
                .cmd("SREM", &self.gateway_routes_key(&gateway))
                .arg(member(user, &device));
            batch.exec(&self.conn).await?;
            Ok(())
        }
        .boxed()
    }

    fn heartbeat(&self, gateway: String, ttl: Duration) -> BoxFuture<'_, BusResult<bool>> {
        async move {
            let mut batch = Batch::new();
            batch
                .cmd("SET", &self.gateway_key(&gateway))
                .arg(1)
                .arg("PX")
                .arg(ttl_ms(ttl));
            // Again each time: a sweep racing a bind may have forgotten the gateway.
            batch.cmd("SADD", &self.gateways_key()).arg(&gateway);
            batch
                .cmd("HSET", &self.seen_key())
                .arg(&gateway)
                .arg(now_ms());
            batch.exec(&self.conn).await?;
            // Only heartbeats set this key (binds set the liveness key too): its absence
            // says that the routes may be gone, even after a login re-created the other.
            let before: Option<String> = redis::cmd("SET")
                .arg(self.beat_key(&gateway))
                .arg(1)
                .arg("PX")
                .arg(ttl_ms(ttl))
                .arg("GET")
                .query_async(&mut self.conn())
                .await?;
            Ok(before.is_some())
        }
        .boxed()
    }

    fn query(&self, users: Vec<u64>) -> BoxFuture<'_, BusResult<Vec<Route>>> {
        async move {
            if users.is_empty() {
                return Ok(Vec::new());
            }
            self.live_routes(&users).await
        }
        .boxed()
    }

    fn status(&self, users: Vec<u64>) -> BoxFuture<'_, BusResult<Vec<UserStatus>>> {
        self.statuses(users).boxed()
    }

    fn sweep(&self) -> BoxFuture<'_, BusResult<u64>> {
        self.sweep_routes().boxed()
    }

    fn dead_since(&self, older_than: Duration) -> BoxFuture<'_, BusResult<Vec<String>>> {
        self.dead_gateways(older_than).boxed()
    }

    fn forget_dead(&self, gateway: String, older_than: Duration) -> BoxFuture<'_, BusResult<bool>> {
        async move { self.forget_dead_gateway(&gateway, older_than).await }.boxed()
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
        assert_eq!(parse_member("7:phone:1"), Some((7, "phone:1")));
        assert_eq!(parse_member("x:phone"), None);
    }

    /// The keys each script is given share a hash slot, whatever the prefix, user or
    /// gateway: on a cluster the script could not run otherwise.
    #[test]
    fn script_keys_share_a_slot() {
        use redis::cluster_routing::Slot;
        let same = |a: &str, b: &str| Slot::for_key(a) == Slot::for_key(b);
        for prefix in ["", "test:1:2:", "deployment-a}:"] {
            for user in [1, 42, u64::MAX] {
                let (routes, seen) = (routes_key(prefix, user), last_seen_key(prefix, user));
                assert!(same(&routes, &seen), "{routes} {seen}");
            }
            // Braces are refused in gateway ids (presence and the gateway's config).
            for gateway in ["gw-a", "10.0.0.7:6000", "host.example:6000"] {
                let (alive, owned) = (
                    gateway_key(prefix, gateway),
                    gateway_routes_key(prefix, gateway),
                );
                assert!(same(&alive, &owned), "{alive} {owned}");
            }
        }
    }
}
