//! The gateway's configuration (`im-gateway.toml`): where it listens and its limits.

use std::time::Duration;

use im_common::config::{DiscoveryConfig, LogConfig, RedisConfig, ServerConfig, TlsConfig};
use serde::Deserialize;

/// Default client TCP port.
pub const TCP_PORT: u16 = 6000;
/// Default HTTP/WebSocket port.
pub const WS_PORT: u16 = 6080;

/// The process's configuration (`im-gateway.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client TCP listener and shutdown grace; default port 6000, `/metrics` on 7000.
    pub server: ServerConfig,
    /// The HTTP/WebSocket listener; default port 6080.
    pub ws: WsConfig,
    /// Where the services are found.
    pub discovery: DiscoveryConfig,
    /// Mutual TLS with the other MPIM processes (docs/security.md).
    pub tls: TlsConfig,
    /// Routes, delivery streams and events.
    pub redis: RedisConfig,
    /// Logging.
    pub log: LogConfig,
    /// Limits and timings.
    pub gateway: Settings,
    /// The legacy line protocol's listener; off by default.
    pub legacy: LegacyConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            server: ServerConfig::on_port(TCP_PORT),
            ws: WsConfig::default(),
            discovery: DiscoveryConfig::default(),
            tls: TlsConfig::default(),
            redis: RedisConfig::default(),
            log: LogConfig::default(),
            gateway: Settings::default(),
            legacy: LegacyConfig::default(),
        }
    }
}

/// The HTTP/WebSocket listener (`[ws]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Address of the HTTP server whose `/ws` path takes WebSocket clients. Default
    /// `127.0.0.1:6080`; `"off"` serves TCP clients only.
    pub listen: String,
}

impl Default for WsConfig {
    fn default() -> WsConfig {
        WsConfig {
            listen: format!("127.0.0.1:{WS_PORT}"),
        }
    }
}

impl WsConfig {
    /// The address to bind, unless WebSocket is off.
    pub fn address(&self) -> Option<&str> {
        (self.listen != "off").then_some(self.listen.as_str())
    }
}

/// Limits and timings (`[gateway]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// This gateway's id in routes and the name of its delivery stream; keep it stable
    /// across restarts so that a restarted gateway reads what it had not delivered. Default:
    /// `<hostname>-<tcp port>`.
    pub id: Option<String>,
    /// An unauthenticated connection is closed after this many ms. Default 5000.
    pub auth_timeout_ms: u64,
    /// A connection that sends no frame for this many ms is closed (clients Ping). Default
    /// 90000.
    pub idle_timeout_ms: u64,
    /// Largest request frame in bytes; a larger one is answered with an error and the
    /// connection closed. Default 262144 (`im_proto::codec::MAX_FRAME`).
    pub max_frame: usize,
    /// Requests per second a connection may send, on average. Default 200.
    pub rate_per_sec: u32,
    /// Requests a connection may send in a burst. Default 400.
    pub rate_burst: u32,
    /// Requests refused by the rate limit in a row after which the connection is closed.
    /// Default 200.
    pub max_rate_limited: u32,
    /// Requests of one connection handled at once; further ones wait in the socket.
    /// Default 32.
    pub max_in_flight: usize,
    /// Frames queued for one connection; a push that finds the queue full closes the
    /// connection (the client syncs when it reconnects). Default 1024.
    pub max_queued: usize,
    /// Connections served at once, over TCP and WebSocket; further ones wait in the
    /// listen backlog. Default 100000 (the open-file limit also bounds it).
    pub max_connections: usize,
    /// How often the routes of this gateway are refreshed in presence, in ms (at most a
    /// third of the routes' lifetime presence announces). Default 5000.
    pub heartbeat_ms: u64,
    /// How long each call to a service may take, in ms. Default 10000.
    pub call_timeout_ms: u64,
    /// A connection's Typing commands are passed on at most once per this many ms (the
    /// others are acknowledged and dropped; each is still checked first, so a refused one
    /// is never acknowledged). Default 1000.
    pub typing_interval_ms: u64,
    /// How long a group's member list is reused for Typing, in ms. Default 5000.
    pub members_cache_ms: u64,
    /// Delivery stream entries read at once. Default 256.
    pub delivery_batch: usize,
    /// Delivery stream entries read but not yet written to every socket; reading waits
    /// beyond it. Default 100000 (their pushes are in the connections' bounded queues;
    /// this bounds only the bookkeeping).
    pub max_pending_deliveries: usize,
    /// What GoAway tells clients, in ms: how long the gateway keeps their connections
    /// after a shutdown signal for in-flight requests and queued pushes. Default 2000.
    pub shutdown_grace_ms: u64,
    /// How often the sessions of this gateway's connections are re-checked with the user
    /// service, in ms (100 to 3600000): a session revoked while its kick event was lost
    /// ends here within this interval plus one check call. The checks are spread over
    /// the interval; a failed one keeps the connections until the next. Default 30000.
    pub session_check_ms: u64,
    /// Addresses of the load balancers in front of this gateway. A connection from one of
    /// them is not counted as coming from that address when im-user limits password guesses
    /// per source address: on WebSocket the client's address is taken from the balancer's
    /// `X-Real-IP` header, on TCP it is unknown (only the per-name limit applies). A
    /// connection from any other address counts as its own. Default: none.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            id: None,
            auth_timeout_ms: 5_000,
            idle_timeout_ms: 90_000,
            max_frame: im_proto::codec::MAX_FRAME,
            rate_per_sec: 200,
            rate_burst: 400,
            max_rate_limited: 200,
            max_in_flight: 32,
            max_queued: 1024,
            max_connections: 100_000,
            heartbeat_ms: 5_000,
            call_timeout_ms: 10_000,
            typing_interval_ms: 1_000,
            members_cache_ms: 5_000,
            delivery_batch: 256,
            max_pending_deliveries: 100_000,
            shutdown_grace_ms: 2_000,
            session_check_ms: 30_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Settings {
    /// Checks for values that would leave the gateway unusable.
    ///
    /// # Errors
    /// Naming the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("gateway.auth_timeout_ms", self.auth_timeout_ms),
            ("gateway.idle_timeout_ms", self.idle_timeout_ms),
            ("gateway.rate_per_sec", u64::from(self.rate_per_sec)),
            ("gateway.rate_burst", u64::from(self.rate_burst)),
            ("gateway.heartbeat_ms", self.heartbeat_ms),
            ("gateway.call_timeout_ms", self.call_timeout_ms),
            ("gateway.max_frame", self.max_frame as u64),
            ("gateway.max_in_flight", self.max_in_flight as u64),
            ("gateway.max_queued", self.max_queued as u64),
            ("gateway.max_connections", self.max_connections as u64),
            ("gateway.delivery_batch", self.delivery_batch as u64),
            (
                "gateway.max_pending_deliveries",
                self.max_pending_deliveries as u64,
            ),
        ];
        for (key, value) in positive {
            anyhow::ensure!(value > 0, "{key} must be at least 1");
        }
        anyhow::ensure!(
            (MIN_SESSION_CHECK_MS..=MAX_SESSION_CHECK_MS).contains(&self.session_check_ms),
            "gateway.session_check_ms must be between {MIN_SESSION_CHECK_MS} and \
             {MAX_SESSION_CHECK_MS}"
        );
        if let Some(id) = &self.id {
            // Presence's rules: the id is a Redis Cluster hash tag.
            im_common::validate::gateway_id("gateway.id", id)
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
        }
        Ok(())
    }

    pub(crate) fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    pub(crate) fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// Bounds of `session_check_ms`: below, the checks would load the user service for
/// little; above an hour, a lost kick would be honoured too late to call it a bound.
const MIN_SESSION_CHECK_MS: u64 = 100;
const MAX_SESSION_CHECK_MS: u64 = 3_600_000;

/// The default gateway id: this host's name and the TCP port, stable across restarts.
pub(crate) fn default_id(tcp_port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "gateway".to_owned());
    // Room for "-65535"; a longer host name is cut (host names are ASCII).
    let host: String = host
        .chars()
        .take(im_common::validate::MAX_GATEWAY_ID_BYTES - 6)
        .collect();
    format!("{host}-{tcp_port}")
}

/// The legacy line protocol (`[legacy]`, docs/legacy-protocol.md): one text command per
/// line, for the terminal client of the original system.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegacyConfig {
    /// Address of its listener, e.g. `127.0.0.1:9000`. Default `"off"`: not served.
    pub listen: String,
    /// Longest line in bytes; the rest of a longer one is discarded with an error. Default
    /// 65536.
    pub max_line: usize,
    /// How long a connection may stay without a login, from its connect or its last
    /// `LOGOUT`, whatever it sends meanwhile; then `-ERR not login: …` and the close.
    /// Default 120000 (a person types `LOGIN` at a terminal; programs get the client
    /// protocol's much shorter `auth_timeout_ms`).
    pub login_timeout_ms: u64,
}

impl Default for LegacyConfig {
    fn default() -> LegacyConfig {
        LegacyConfig {
            listen: "off".to_owned(),
            max_line: 64 * 1024,
            login_timeout_ms: 120_000,
        }
    }
}

impl LegacyConfig {
    /// The address to bind, unless the legacy protocol is off (`"off"` or empty).
    pub fn address(&self) -> Option<&str> {
        (!self.listen.is_empty() && self.listen != "off").then_some(self.listen.as_str())
    }

    /// Checks for values that would leave the listener unusable.
    ///
    /// # Errors
    /// Naming the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_line > 0, "legacy.max_line must be at least 1");
        anyhow::ensure!(
            self.login_timeout_ms > 0,
            "legacy.login_timeout_ms must be at least 1"
        );
        Ok(())
    }

    /// How long a connection may stay without a login.
    pub(crate) fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.login_timeout_ms)
    }
}
