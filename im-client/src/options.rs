//! How a [`Client`](crate::Client) connects: where, as which device, and how patiently.

use std::path::PathBuf;
use std::time::Duration;

use im_proto::DeviceKind;
use rand::Rng as _;

/// Connection settings; [`Options::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// `tcp://host:port`, `ws://host:port/ws`, or `host:port` (TCP); `tls://host:port` and
    /// `wss://host:port/ws` for the same over TLS (see [`Address`](crate::Address)).
    pub address: String,
    /// A PEM file of CA certificates trusted for TLS besides the compiled-in public roots,
    /// e.g. the self-signed CA of a private deployment. Default: none.
    pub ca_file: Option<PathBuf>,
    /// Names this device at login (each device of a user gets its own pushes). Default:
    /// empty, and the gateway makes one up.
    pub device_id: String,
    /// What kind of device this is. Default: terminal.
    pub device_kind: DeviceKind,
    /// How long a call waits for its reply. Default: 10 s. A connection on which a request
    /// has waited this long with nothing at all heard from the gateway is taken for dead
    /// (a frozen gateway, a route that dropped it without a reset) and replaced.
    pub request_timeout: Duration,
    /// How long a send waits for its ack, reconnects included. Default: 60 s. A send that
    /// runs out of time stays queued and is resent after the next reconnect all the same.
    pub send_timeout: Duration,
    /// The pause before reconnecting; it doubles after each failed attempt up to
    /// `reconnect_max`, and each pause is jittered down by up to half. Default: 200 ms.
    pub reconnect_min: Duration,
    /// The longest pause between reconnect attempts. Default: 10 s.
    pub reconnect_max: Duration,
    /// A ping goes out this often, so that the gateway's idle timeout never closes a quiet
    /// connection. Default: 30 s.
    pub keepalive: Duration,
    /// At most this many sends wait for their ack at once. Default: 1024.
    pub max_outbox: usize,
    /// Events buffered for a slow reader; once full, the client stops reading from the
    /// gateway until the reader catches up. Default: 1024.
    pub event_buffer: usize,
}

impl Options {
    /// The defaults, for the gateway at `address`.
    pub fn new(address: impl Into<String>) -> Options {
        Options {
            address: address.into(),
            ca_file: None,
            device_id: String::new(),
            device_kind: DeviceKind::Terminal,
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            max_outbox: 1024,
            event_buffer: 1024,
        }
    }

    /// Sets [`Options::device_id`].
    pub fn device_id(mut self, device_id: impl Into<String>) -> Options {
        self.device_id = device_id.into();
        self
    }

    /// Sets [`Options::ca_file`].
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Options {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets [`Options::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Options {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`Options::reconnect_min`] and [`Options::reconnect_max`].
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Options {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }
}

/// The pauses between reconnect attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(options: &Options) -> Backoff {
        Backoff {
            min: options.reconnect_min,
            max: options.reconnect_max.max(options.reconnect_min),
            next: options.reconnect_min,
        }
    }

    /// The next pause: the current step, jittered down by up to half so that clients cut
    /// off together do not come back together.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Back to the shortest pause (after a connection that worked).
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let options =
            Options::new("h:1").reconnect(Duration::from_millis(100), Duration::from_millis(350));
        let mut backoff = Backoff::new(&options);
        let steps = [100, 200, 350, 350];
        for step in steps {
            let pause = backoff.next_pause();
            let step = Duration::from_millis(step);
            assert!(pause <= step && pause >= step / 2, "{pause:?} for {step:?}");
        }
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(100));
    }
}
