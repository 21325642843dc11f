//! Gateways dead for long, on Redis: one hash, gateway → ms of its last heartbeat.
//!
//! The heartbeat sets the gateway's field; the sweep that forgets a lapsed gateway sets it
//! only if missing (a gateway that bound routes and never beat), so the field outlives the
//! gateway's routes and liveness. [`Routes::dead_since`](crate::bus::Routes::dead_since)
//! reads the hash and leaves out the gateways alive again;
//! [`Routes::forget_dead`](crate::bus::Routes::forget_dead) deletes a field in a script that
//! first checks that it is still old, so a gateway that beat meanwhile keeps its record.
//!
//! Times are the wall clocks of the presence instances that write and read them: against
//! a dead time of hours, their drift does not matter.

use std::time::Duration;

use super::Redis;
use super::conn::Batch;
use crate::bus::BusResult;
use crate::ids::now_ms;

/// Deletes a gateway's last beat if it is no later than a cutoff.
///
/// KEYS: the hash of last beats. ARGV: gateway, cutoff ms. Returns 1 when it deleted.
const FORGET_DEAD: &str = r"
local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if seen and seen <= tonumber(ARGV[2]) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

impl Redis {
    /// The hash of last beats: one key for every gateway (a few writes per gateway per
    /// heartbeat interval).
    pub(super) fn seen_key(&self) -> String {
        format!("{}mpim:gateway-seen", self.prefix)
    }

    /// The latest ms a beat may have come at to be at least `older_than` ago.
    fn cutoff(older_than: Duration) -> i64 {
        let older = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        now_ms().saturating_sub(older)
    }

    pub(super) async fn dead_gateways(&self, older_than: Duration) -> BusResult<Vec<String>> {
        let seen: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.seen_key())
            .query_async(&mut self.conn())
            .await?;
        let cutoff = Redis::cutoff(older_than);
        let silent: Vec<String> = seen
            .into_iter()
            .filter_map(|(gateway, at)| match at.parse::<i64>() {
                Ok(at) => (at <= cutoff).then_some(gateway),
                Err(_) => {
                    tracing::warn!(gateway, at, "unreadable last beat skipped");
                    None
                }
            })
            .collect();
        if silent.is_empty() {
            return Ok(silent);
        }
        let alive = self.alive(&silent).await?;
        Ok(silent
            .into_iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(gateway, _)| gateway)
            .collect())
    }

    pub(super) async fn forget_dead_gateway(
        &self,
        gateway: &str,
        older_than: Duration,
    ) -> BusResult<bool> {
        let mut batch = Batch::new();
        batch
            .eval(FORGET_DEAD, &[&self.seen_key()])
            .arg(gateway)
            .arg(Redis::cutoff(older_than));
        let forgot: Vec<u64> = batch.query(&self.conn).await?;
        Ok(forgot.first().is_some_and(|&n| n > 0))
    }
}
