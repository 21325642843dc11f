//! Token expiry: each logged-in connection ends at its token's expiry, with a `Kicked`
//! push ("session expired") and a close.
//!
//! One ordered map and one task per gateway, not a timer per connection: an entry costs
//! a map node (~50 bytes) and O(log n) at login and close, and the task wakes only when
//! the earliest expiry is due (or an earlier one was added). Deadlines are monotonic
//! instants taken at login from the token's wall-clock expiry, so a clock step on this
//! host neither ends sessions early nor keeps them late.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use im_proto::client::Kicked;
use im_proto::client::server_message::Body;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::registry::Conn;
use crate::stats;
use crate::wire::Encoded;

/// The reason a `Kicked` push gives when the token expired.
pub(crate) const EXPIRED: &str = "session expired";

/// The instant a token that expires at `expires_at_ms` (ms since the epoch) expires.
pub(crate) fn deadline(expires_at_ms: i64) -> Instant {
    let left = expires_at_ms.saturating_sub(im_common::ids::now_ms());
    let left = std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0));
    // A far-future expiry (beyond what the timer can hold) is as good as never.
    Instant::now()
        .checked_add(left)
        .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(100 * 365 * 86_400))
}

/// Ends `conn` after a last `Kicked` push saying `reason` (what is queued before it is
/// written first; requests in flight get the drain's grace period, new ones are not read).
pub(crate) fn kick(conn: &Conn, reason: &str) {
    conn.close_after(Encoded::push(Body::Kicked(Kicked {
        reason: reason.to_owned(),
    })));
}

/// The connections' expiry deadlines.
#[derive(Debug, Default)]
pub(crate) struct Expiry {
    /// (deadline, connection id) → the connection. parking_lot: map operations only,
    /// never held across an await.
    due: Mutex<BTreeMap<(Instant, u64), Weak<Conn>>>,
    /// Woken when an entry earlier than every other is added.
    sooner: Notify,
}

impl Expiry {
    /// Ends `conn` at `at` unless [`Expiry::forget`] comes first.
    pub(crate) fn watch(&self, conn: &Arc<Conn>, at: Instant) {
        let mut due = self.due.lock();
        let earliest = due
            .first_key_value()
            .is_none_or(|(&(first, _), _)| at < first);
        due.insert((at, conn.id), Arc::downgrade(conn));
        drop(due);
        if earliest {
            self.sooner.notify_one();
        }
    }

    /// Forgets connection `conn`'s deadline `at` (it closed).
    pub(crate) fn forget(&self, conn: u64, at: Instant) {
        self.due.lock().remove(&(at, conn));
    }

    /// Removes the entries due at `now`; returns their connections that are still open and
    /// the next deadline.
    fn take_due(&self, now: Instant) -> (Vec<Arc<Conn>>, Option<Instant>) {
        let mut due = self.due.lock();
        let later = due.split_off(&(now, u64::MAX));
        let expired = std::mem::replace(&mut *due, later);
        let next = due.first_key_value().map(|(&(at, _), _)| at);
        drop(due);
        (
            expired.into_values().filter_map(|c| c.upgrade()).collect(),
            next,
        )
    }

    /// Calls `on_due` with each connection as its deadline passes, until `stop`.
    async fn run(&self, stop: &CancellationToken, on_due: impl Fn(&Conn)) {
        loop {
            let (expired, next) = self.take_due(Instant::now());
            expired.iter().for_each(|conn| on_due(conn));
            let due = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = due => {}
                () = self.sooner.notified() => {}
            }
        }
    }
}

/// Ends connections at their tokens' expiry until `stop`.
pub(crate) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    shared
        .expiry
        .run(&stop, |conn| {
            stats::session_ended("expired");
            kick(conn, EXPIRED);
        })
        .await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::registry::Flow;

    fn kicked(conn: &Conn) -> Option<String> {
        let mut queued = Vec::new();
        let flow = conn.take(&mut queued);
        match queued.first()?.encoded.message().body.as_ref()? {
            Body::Kicked(kicked) if flow == Flow::Drain => Some(kicked.reason.clone()),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn connections_end_at_their_deadline_and_not_before() {
        let expiry = Arc::new(Expiry::default());
        let (soon, late, closed) = (Conn::new(1), Conn::new(2), Conn::new(3));
        let start = Instant::now();
        expiry.watch(&late, start + Duration::from_secs(30));
        expiry.watch(&closed, start + Duration::from_secs(5));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (expiry, stop) = (expiry.clone(), stop.clone());
            async move { expiry.run(&stop, |conn| kick(conn, EXPIRED)).await }
        });
        tokio::task::yield_now().await;
        // Added after the task went to sleep on a later deadline: it wakes for this one.
        expiry.watch(&soon, start + Duration::from_secs(10));
        expiry.forget(closed.id, start + Duration::from_secs(5));

        tokio::time::sleep_until(start + Duration::from_millis(9_999)).await;
        assert_eq!(soon.flow(), Flow::Open, "not before its expiry");
        tokio::time::sleep_until(start + Duration::from_millis(10_001)).await;
        assert_eq!(kicked(&soon).as_deref(), Some(EXPIRED));
        assert_eq!(late.flow(), Flow::Open);
        assert_eq!(
            closed.flow(),
            Flow::Open,
            "a forgotten deadline does nothing"
        );
        tokio::time::sleep_until(start + Duration::from_secs(31)).await;
        assert_eq!(kicked(&late).as_deref(), Some(EXPIRED));
        assert!(expiry.due.lock().is_empty());
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn deadlines_follow_the_wall_clock_expiry() {
        let now = im_common::ids::now_ms();
        let past = deadline(now - 1_000);
        assert!(past <= Instant::now());
        let later = deadline(now + 60_000);
        let left = later - Instant::now();
        assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60));
        assert!(deadline(i64::MAX) > Instant::now() + Duration::from_secs(86_400 * 365));
    }
}
