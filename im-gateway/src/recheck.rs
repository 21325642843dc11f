//! The session re-check: every `session_check_ms`, each session with a connection here is
//! asked about once (`UserService.CheckSessions`), so that a session revoked while its
//! kick event was lost still ends here.
//!
//! The registry's shards are visited one per tick (interval / shards), so the calls are
//! spread over the interval and each session is asked about at the same point of every
//! round: a revocation is seen within one interval plus that call. A shard with more
//! sessions than one call takes is asked in several calls. A few calls may be in flight
//! at once, so that one slow answer does not hold the others back.
//!
//! A failed call keeps the connections (fail open: im-user down must not end every
//! session), is counted (`mpim_gateway_session_checks_total{outcome="failed"}`) and
//! logged, and the same sessions are asked again in the next round.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use im_common::proto::CheckSessionsRequest;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::Shared;
use crate::expiry::kick;
use crate::registry::SHARDS;
use crate::stats;

/// The reason a `Kicked` push gives when a re-check found the session ended.
pub(crate) const REVOKED: &str = "session revoked";

/// Most sessions asked about per call (im-user's limit).
const MAX_CHECK: usize = 1000;

/// Shard checks in flight at once.
const IN_FLIGHT: usize = 4;

/// Re-checks the sessions of this gateway's connections until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let interval = Duration::from_millis(shared.settings.session_check_ms);
    let tick = (interval / SHARDS as u32).max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut in_flight = FuturesUnordered::new();
    let mut shard = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            _ = ticker.tick(), if in_flight.len() < IN_FLIGHT => {
                in_flight.push(check_shard(&shared, shard));
                shard = (shard + 1) % SHARDS;
            }
        }
    }
}

/// Asks about the sessions of one registry shard; ends the connections of those that
/// ended.
async fn check_shard(shared: &Shared, shard: usize) {
    let sessions = shared.registry.sessions_in(shard);
    for batch in sessions.chunks(MAX_CHECK) {
        check(shared, batch).await;
    }
}

async fn check(shared: &Shared, batch: &[(u64, String)]) {
    let request = CheckSessionsRequest {
        session_ids: batch.iter().map(|(_, session)| session.clone()).collect(),
    };
    let reply = match shared
        .services
        .user
        .check_sessions_with(&request, &shared.options())
        .await
    {
        Ok(reply) => reply,
        Err(err) => {
            stats::session_check("failed");
            warn!(
                cause = %err,
                sessions = batch.len(),
                "session check failed; the connections stay until the next check"
            );
            return;
        }
    };
    stats::session_check("ok");
    let ended: HashSet<&str> = reply.ended_session_ids.iter().map(String::as_str).collect();
    for (user, session) in batch.iter().filter(|(_, s)| ended.contains(s.as_str())) {
        for conn in shared.registry.conns(*user) {
            if conn.session().is_some_and(|s| s.session == *session) {
                stats::session_ended("revoked");
                kick(&conn, REVOKED);
            }
        }
    }
}
