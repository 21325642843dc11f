//! CheckSessions: which of a gateway's sessions have ended, in one call per batch.
//!
//! Gateways ask this at an interval for the sessions of their connections, so that a
//! revocation whose kick event was lost still ends them. The answer comes from the
//! database (the primary), never from the cache: a cached "active" could hide a logout
//! whose cache write failed.

use std::collections::HashSet;

use im_common::ids::now_ms;
use im_common::proto::{CheckSessionsReply, CheckSessionsRequest};
use im_common::store::users::UserStore;
use mprpc::Status;

use crate::state::Users;

/// Most session ids one CheckSessions call may ask about.
pub const MAX_CHECK: usize = 1000;

/// Longest session id asked about, in bytes (ours are 32 hex digits).
const MAX_SESSION_ID_BYTES: usize = 128;

pub(crate) async fn check_sessions(
    users: &Users,
    req: CheckSessionsRequest,
) -> Result<CheckSessionsReply, Status> {
    let asked = validate(req.session_ids)?;
    if asked.is_empty() {
        return Ok(CheckSessionsReply::default());
    }
    let now = now_ms();
    let active: HashSet<String> = users
        .sql
        .sessions(&asked)
        .await?
        .into_iter()
        .filter(|session| session.is_active(now))
        .map(|session| session.session_id)
        .collect();
    let ended: Vec<String> = asked
        .into_iter()
        .filter(|id| !active.contains(id))
        .collect();
    metrics::counter!("mpim_user_session_checks_total").increment(1);
    metrics::counter!("mpim_user_sessions_found_ended_total").increment(ended.len() as u64);
    Ok(CheckSessionsReply {
        ended_session_ids: ended,
    })
}

/// The distinct ids asked about, or INVALID_ARGUMENT naming what is wrong (never echoing
/// an id: they are secrets of their sessions).
fn validate(ids: Vec<String>) -> Result<Vec<String>, Status> {
    if ids.len() > MAX_CHECK {
        return Err(Status::invalid_argument(format!(
            "session_ids has {} ids, more than the limit of {MAX_CHECK}",
            ids.len()
        )));
    }
    if let Some(at) = ids
        .iter()
        .position(|id| id.is_empty() || id.len() > MAX_SESSION_ID_BYTES)
    {
        return Err(Status::invalid_argument(format!(
            "session_ids[{at}] must be 1 to {MAX_SESSION_ID_BYTES} bytes"
        )));
    }
    let mut seen = HashSet::with_capacity(ids.len());
    Ok(ids
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_and_ids_checked() {
        let ok = validate(vec!["a".into(), "b".into(), "a".into()]).unwrap();
        assert_eq!(ok, ["a", "b"]);
        let full = vec!["s".to_owned(); MAX_CHECK];
        assert_eq!(validate(full).unwrap().len(), 1);
        let over = validate(vec!["s".to_owned(); MAX_CHECK + 1]).unwrap_err();
        assert_eq!(over.code(), mprpc::Code::InvalidArgument);
        assert!(
            over.message().contains("more than the limit of 1000"),
            "{over}"
        );
        let empty = validate(vec!["a".into(), String::new()]).unwrap_err();
        assert_eq!(empty.message(), "session_ids[1] must be 1 to 128 bytes");
        let long = validate(vec!["x".repeat(129)]).unwrap_err();
        assert_eq!(long.code(), mprpc::Code::InvalidArgument);
    }
}
