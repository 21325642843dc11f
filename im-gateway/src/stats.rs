//! The gateway's metrics, named in one place.

use std::time::Duration;

/// A connection opened (`+1`) or closed (`-1`); also the `transport` gauge's label.
pub(crate) fn connections(transport: &'static str, delta: f64) {
    metrics::gauge!("mpim_gateway_connections", "transport" => transport).increment(delta);
}

pub(crate) fn frames_in(n: u64) {
    metrics::counter!("mpim_gateway_frames_in_total").increment(n);
}

pub(crate) fn frames_out(n: u64) {
    metrics::counter!("mpim_gateway_frames_out_total").increment(n);
}

/// A chat message written to a socket `latency` after the service stored it.
pub(crate) fn pushed(latency: Duration) {
    metrics::counter!("mpim_gateway_pushes_total").increment(1);
    metrics::histogram!("mpim_gateway_push_latency_seconds").record(latency.as_secs_f64());
}

pub(crate) fn slow_reader_dropped() {
    metrics::counter!("mpim_gateway_slow_readers_dropped_total").increment(1);
}

pub(crate) fn rate_limited() {
    metrics::counter!("mpim_gateway_rate_limited_total").increment(1);
}

/// A connection ended because its session did (`reason`: `expired` or `revoked`).
pub(crate) fn session_ended(reason: &'static str) {
    metrics::counter!("mpim_gateway_sessions_ended_total", "reason" => reason).increment(1);
}

/// A CheckSessions call of the session re-check (`outcome`: `ok` or `failed`).
pub(crate) fn session_check(outcome: &'static str) {
    metrics::counter!("mpim_gateway_session_checks_total", "outcome" => outcome).increment(1);
}
