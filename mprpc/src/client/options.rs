//! Per-call settings: [`CallOptions`].

use std::time::Duration;

use tokio::time::Instant;

use crate::balance;
use crate::frame::Text;
use crate::service::{Context, TRACE_ID};

/// Per-call settings.
///
/// A handler that calls another service passes its own caller's deadline and trace id on
/// with one expression:
///
/// ```
/// # use mprpc::{CallOptions, Context};
/// # fn nested(ctx: &Context) {
/// let options = CallOptions::from(ctx); // remaining deadline + trace id
/// # let _ = options; }
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) metadata: Vec<(Text, Text)>,
    pub(crate) key: Option<u64>,
    pub(crate) idempotent: bool,
}

impl CallOptions {
    /// Options that use the client's defaults.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// Gives the call this long, overriding the client's default timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Ends the call at `deadline` at the latest, e.g. a handler's own
    /// [`Context::deadline`](crate::Context::deadline). A call with a deadline is not also
    /// bounded by the client's default timeout (an explicit [`CallOptions::timeout`] still
    /// applies: the earlier wins).
    pub fn deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Adds a metadata entry the server reads with [`Context::metadata`](crate::Context::metadata).
    pub fn metadata(mut self, key: impl Into<Text>, value: impl Into<Text>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Sets the trace id (metadata [`TRACE_ID`]) that follows the call through every hop.
    pub fn trace_id(self, id: impl Into<Text>) -> Self {
        self.metadata(TRACE_ID, id)
    }

    /// The key [`ConsistentHash`](crate::balance::ConsistentHash) places the call by: calls
    /// with equal keys reach the same instance while the instance set is stable.
    pub fn hash_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.key = Some(balance::hash_key(key.as_ref()));
        self
    }

    /// Marks this call safe to repeat, so a connection lost mid-call is retried; methods
    /// marked `option idempotency_level = IDEMPOTENT` in their `.proto` are already.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// The deadline of a call started at `now`: the earlier of the explicit deadline and
    /// the explicit timeout; the client's `default` timeout only when the call sets
    /// neither, so that a deadline passed on from a caller is kept as it is. A deadline too
    /// far to represent is none.
    pub(crate) fn deadline_from(&self, now: Instant, default: Option<Duration>) -> Option<Instant> {
        let timeout = match (self.timeout, self.deadline) {
            (Some(timeout), _) => Some(timeout),
            (None, Some(_)) => None,
            (None, None) => default,
        };
        let by_timeout = timeout.and_then(|t| now.checked_add(t));
        match (self.deadline, by_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Options for a call made while serving `ctx`: its deadline and its trace id go on to the
/// next hop.
impl From<&Context> for CallOptions {
    fn from(ctx: &Context) -> CallOptions {
        let mut options = CallOptions::new();
        options.deadline = ctx.deadline();
        if let Some((key, value)) = ctx.metadata.iter().find(|(k, _)| k.as_str() == TRACE_ID) {
            options.metadata.push((key.clone(), value.clone()));
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_nested_call_inherits_the_deadline_and_trace_id() {
        let deadline = Instant::now() + Duration::from_millis(250);
        let ctx = Context::new("127.0.0.1:1".parse().unwrap())
            .with_deadline(deadline)
            .with_metadata(TRACE_ID, "t-42")
            .with_metadata("user", "not passed on");
        let options = CallOptions::from(&ctx);
        assert_eq!(
            options.deadline_from(Instant::now(), Some(Duration::from_secs(30))),
            Some(deadline)
        );
        assert_eq!(options.metadata.len(), 1);
        assert_eq!(options.metadata[0].1.as_str(), "t-42");

        // A budget longer than the client's default passes on whole.
        let peer = "127.0.0.1:1".parse().unwrap();
        let far = Instant::now() + Duration::from_secs(20);
        let options = CallOptions::from(&Context::new(peer).with_deadline(far));
        let now = Instant::now();
        assert_eq!(
            options.deadline_from(now, Some(Duration::from_secs(10))),
            Some(far)
        );
        // Without a deadline from the caller, the client's default applies.
        let options = CallOptions::from(&Context::new(peer));
        let default = Duration::from_secs(10);
        assert_eq!(
            options.deadline_from(now, Some(default)),
            Some(now + default)
        );
        // An explicit timeout still caps a longer deadline.
        let options = CallOptions::new()
            .deadline(far)
            .timeout(Duration::from_secs(1));
        assert_eq!(
            options.deadline_from(now, Some(default)),
            Some(now + Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unrepresentable_timeout_means_no_deadline() {
        let now = Instant::now();
        let options = CallOptions::new().timeout(Duration::MAX);
        assert_eq!(options.deadline_from(now, None), None);
        let explicit = now + Duration::from_secs(1);
        assert_eq!(
            options.deadline(explicit).deadline_from(now, None),
            Some(explicit)
        );
    }
}
