//! Limits on password guessing: failed logins are counted per account name and per client
//! address in a window; past either limit, attempts for that name or from that address are
//! refused before any password is checked, with the same error as a wrong password, so a
//! refusal tells nothing about whether the account exists.
//!
//! The counters are bus cache counters ([`Cache::count`]): on Redis, every instance of the
//! service shares them; in process (the embedded `mpim`) they live in the bounded cache. A
//! cache that fails lets logins through (logged and counted): the limit is a defence, the
//! password check still decides.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use im_common::bus::{Cache, keys};
use tracing::{debug, warn};

use crate::AuthSettings;

/// The counters and their limits.
pub(crate) struct Throttle {
    cache: Arc<dyn Cache>,
    per_name: u64,
    per_addr: u64,
    window: Duration,
}

/// Who is trying: the account name and, when the gateway reported it, the address.
pub(crate) struct Attempt<'a> {
    pub(crate) name: &'a str,
    pub(crate) addr: Option<IpAddr>,
}

impl Attempt<'_> {
    /// The counters this attempt counts against, with their limits.
    fn counters(&self, throttle: &Throttle) -> Vec<(String, u64)> {
        let mut counters = Vec::with_capacity(2);
        if throttle.per_name > 0 {
            counters.push((keys::login_failures_by_name(self.name), throttle.per_name));
        }
        if let Some(addr) = self.addr
            && throttle.per_addr > 0
        {
            counters.push((keys::login_failures_by_addr(addr), throttle.per_addr));
        }
        counters
    }
}

/// The address a gateway reported: an IP, or nothing when empty or unreadable.
pub(crate) fn client_addr(reported: &str) -> Option<IpAddr> {
    if reported.is_empty() {
        return None;
    }
    let addr = reported.parse().ok();
    if addr.is_none() {
        debug!("unreadable client address on a login; counting by name only");
    }
    addr
}

impl Throttle {
    pub(crate) fn new(cache: Arc<dyn Cache>, auth: &AuthSettings) -> Throttle {
        Throttle {
            cache,
            per_name: auth.login_max_failures_per_name,
            per_addr: auth.login_max_failures_per_addr,
            window: Duration::from_secs(auth.login_failure_window_secs.max(1)),
        }
    }

    /// Whether `attempt` may check a password now.
    pub(crate) async fn allows(&self, attempt: &Attempt<'_>) -> bool {
        for (key, limit) in attempt.counters(self) {
            let failures = match self.cache.get(key).await {
                Ok(value) => value
                    .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok())
                    .unwrap_or(0),
                Err(err) => {
                    metrics::counter!("mpim_user_cache_failures_total").increment(1);
                    warn!(cause = %err, "login failure counters unavailable");
                    0
                }
            };
            if failures >= limit {
                metrics::counter!("mpim_login_throttled_total").increment(1);
                return false;
            }
        }
        true
    }

    /// Counts a failed login.
    pub(crate) async fn failed(&self, attempt: &Attempt<'_>) {
        metrics::counter!("mpim_login_failures_total").increment(1);
        for (key, _) in attempt.counters(self) {
            if let Err(err) = self.cache.count(key, self.window).await {
                metrics::counter!("mpim_user_cache_failures_total").increment(1);
                warn!(cause = %err, "login failure not counted");
            }
        }
    }

    /// Forgets the name's failures after a successful login (the address keeps its count:
    /// one right password does not excuse guesses at other accounts).
    pub(crate) async fn succeeded(&self, attempt: &Attempt<'_>) {
        if self.per_name > 0
            && let Err(err) = self
                .cache
                .delete(vec![keys::login_failures_by_name(attempt.name)])
                .await
        {
            metrics::counter!("mpim_user_cache_failures_total").increment(1);
            warn!(cause = %err, "login failures of the name not reset");
        }
    }
}
