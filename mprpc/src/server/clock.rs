//! The connection's one timer: the handshake timeout, the idle check and the linger after a
//! graceful `GOAWAY`, as a pure state machine the read loop asks what the timer going off
//! means.

use tokio::time::{Duration, Instant};

use super::Config;

/// How long a connection stays open after a graceful `GOAWAY` once its calls are done, so
/// that requests already on the wire are answered `UNAVAILABLE` instead of lost.
const LINGER: Duration = Duration::from_secs(1);

/// The connection's one timer: the handshake timeout until a first frame, then an idle
/// check once per idle period (rather than a timer re-armed per frame), and after a
/// graceful `GOAWAY` the linger.
#[derive(Debug)]
pub(super) struct Clock {
    opened: Instant,
    handshake: Option<Duration>,
    idle: Option<Duration>,
    /// A complete frame arrived since the connection opened.
    greeted: bool,
    /// A frame arrived since the last idle check.
    active: bool,
    lingering: bool,
}

/// What the timer going off means.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Tick {
    /// No frame within the handshake timeout: close at once.
    Handshake,
    /// No frame and no call for an idle period: go away gracefully.
    Idle,
    /// The linger after a goaway is over: close.
    Lingered,
    /// Look again at this instant.
    Again(Instant),
}

impl Clock {
    /// The clock of a connection accepted at `opened`.
    pub(super) fn new(opened: Instant, config: &Config) -> Clock {
        Clock {
            opened,
            handshake: config.handshake_timeout,
            idle: config.idle_timeout,
            greeted: false,
            active: false,
            lingering: false,
        }
    }

    /// Whether the connection went away and waits out the linger.
    pub(super) fn is_lingering(&self) -> bool {
        self.lingering
    }

    pub(super) fn first(&self) -> Option<Instant> {
        let first = match (self.handshake, self.idle) {
            (Some(h), Some(i)) => h.min(i),
            (h, i) => h.or(i)?,
        };
        self.opened.checked_add(first)
    }

    pub(super) fn frame(&mut self) {
        self.greeted = true;
        self.active = true;
    }

    pub(super) fn linger(&mut self, now: Instant) -> Instant {
        self.lingering = true;
        now + LINGER
    }

    pub(super) fn tick(&mut self, now: Instant, calls: usize) -> Tick {
        if self.lingering {
            return if calls == 0 {
                Tick::Lingered
            } else {
                Tick::Again(now + LINGER)
            };
        }
        let handshake_end = self.handshake.and_then(|h| self.opened.checked_add(h));
        if !self.greeted && handshake_end.is_some_and(|end| now >= end) {
            return Tick::Handshake;
        }
        if self.idle.is_some() && !self.active && calls == 0 {
            return Tick::Idle;
        }
        self.active = false;
        let next_idle = self.idle.and_then(|i| now.checked_add(i));
        let next = match (next_idle, handshake_end.filter(|_| !self.greeted)) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(now + Duration::from_secs(3600)),
        };
        Tick::Again(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(handshake: Option<Duration>, idle: Option<Duration>) -> Clock {
        Clock {
            opened: Instant::now(),
            handshake,
            idle,
            greeted: false,
            active: false,
            lingering: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_meets_the_handshake_timeout_first() {
        let secs = Duration::from_secs;
        let mut c = clock(Some(secs(10)), Some(secs(300)));
        let first = c.first().expect("timed");
        assert_eq!(first - c.opened, secs(10));
        assert_eq!(c.tick(first, 0), Tick::Handshake);
    }

    #[tokio::test(start_paused = true)]
    async fn a_greeted_connection_goes_idle_only_after_a_silent_period() {
        let secs = Duration::from_secs;
        let mut c = clock(Some(secs(10)), Some(secs(300)));
        c.frame();
        let at = c.opened + secs(10);
        let Tick::Again(next) = c.tick(at, 0) else {
            panic!("a frame came within the period")
        };
        assert_eq!(next, at + secs(300));
        assert_eq!(
            c.tick(next, 1),
            Tick::Again(next + secs(300)),
            "a call in flight"
        );
        assert_eq!(c.tick(next + secs(300), 0), Tick::Idle);
        let end = c.linger(next);
        assert_eq!(c.tick(end, 1), Tick::Again(end + LINGER));
        assert_eq!(c.tick(end + LINGER, 0), Tick::Lingered);
    }

    #[tokio::test(start_paused = true)]
    async fn periods_too_long_for_the_clock_never_fire() {
        let mut c = clock(Some(Duration::MAX), Some(Duration::MAX));
        assert_eq!(c.first(), None);
        c.frame();
        assert!(matches!(c.tick(Instant::now(), 0), Tick::Again(_)));
        assert_eq!(clock(None, None).first(), None);
    }
}
