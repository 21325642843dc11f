//! MPIM's gateway: where clients connect. It holds their connections, authenticates them,
//! calls the services for them and pushes them what happens.
//!
//! Run it with `im-gateway --config im-gateway.toml` (every key and its default are in
//! `config/im-gateway.toml`): clients on TCP port 6000 (u32 length + protobuf) and on
//! `ws://…:6080/ws` (binary frames: protobuf; text frames: protobuf JSON), the web client on
//! `http://…:6080/`, `/metrics` on 7000. docs/client-protocol.md describes what clients say,
//! docs/web-client.md the web client. The original system's line protocol
//! (docs/legacy-protocol.md) is served too when `[legacy] listen` names an address
//! ([`Gateway::legacy`]).
//!
//! What it guarantees:
//! - before a connection authenticates, only Register, Login, Resume and Ping are answered
//!   (anything else: `UNAUTHENTICATED`), and a connection that does not authenticate within
//!   `auth_timeout_ms` is closed; identity comes from the session alone, and every service
//!   call carries it in metadata;
//! - one dispatcher answers every command, whatever the transport; replies take the form of
//!   their request;
//! - a chat message in this gateway's delivery stream is acknowledged only after it was
//!   written to the socket of every target device here (or that connection is gone); the
//!   sending device gets the ack, not a push; the sender's other devices get the push. A
//!   push is not what makes delivery sure: a client that reconnects (to this gateway after
//!   a restart, or to another) resumes from its cursors and syncs what it missed. So the
//!   entries a crashed run read and did not acknowledge are acknowledged by the next run
//!   without a push: their connections died with that run;
//! - limits per connection (frame size, request rate, requests in flight, queued pushes,
//!   idle time) and in total (connections); a client that does not read its pushes is
//!   disconnected when its queue fills, and syncs when it reconnects;
//! - on shutdown, every connection gets GoAway and a grace period, then routes are unbound;
//! - a session ends on every connection here: at its token's expiry (a `Kicked` push
//!   "session expired", then close), at a Logout's kick event, and, should that event be
//!   lost, at the next re-check of its session (`session_check_ms`, default 30 s; a
//!   `Kicked` "session revoked", then close); a login whose route cannot be bound fails
//!   (`UNAVAILABLE`) and leaves the connection logged out.
//!
//! Decisions worth knowing:
//! - one task per connection, which also polls that connection's requests in flight
//!   (no task per request), and no buffer while a connection is idle;
//! - routes are bound and unbound in order per device, so that the late unbind of a
//!   device's old connection never removes the route of its new one, and concurrently
//!   across devices, so that one slow presence call holds up no other login;
//! - a user's friend list (for presence pushes) is loaded when the user's first connection
//!   here logs in and kept until the last one closes; a friendship accepted or removed
//!   through this gateway updates it for both users if they are here, one made through
//!   another gateway shows from the next login on;
//! - typing and read receipts go straight to connections here, and through pub/sub to the
//!   other gateways that hold a recipient; every Typing is first checked by the message
//!   service (group member; a 1:1 peer who accepts the user's messages), also one that the
//!   typing interval then drops.
//!
//! # Layout
//! - [`config`]: [`Config`], [`WsConfig`], [`Settings`];
//! - [`services`]: [`Services`], the clients of the four services;
//! - `state`: what connections and background tasks share, and which module owns each part;
//! - `dispatch`: the one dispatcher, command → service call, status → client error;
//! - `session`: Login, Resume, Logout;
//! - `signals`: Typing and read receipts;
//! - `wire`: the three encodings and client-facing errors;
//! - `connection`: the per-connection task, generic over the transports;
//! - `tcp`: the TCP transport;
//! - `ws`: the HTTP router and the WebSocket transport;
//! - `web`: the web client's static files (`web/`), served at `/`;
//! - `legacy`: the original system's line protocol, off unless `[legacy] listen` is set
//!   (docs/legacy-protocol.md);
//! - `registry`: user → connections, their queues, the friends index;
//! - `delivery`: the delivery stream and its acknowledgements;
//! - `events`: kicks, typing, read receipts, friend requests and presence from pub/sub;
//! - `routes`: bind, unbind, heartbeat;
//! - `expiry`: ends connections at their tokens' expiry (one timer map per gateway);
//! - `recheck`: re-checks the connections' sessions with the user service, in batches;
//! - `limit`: the rate limit; `nofile`: the open-file limit; `stats`: metrics.

#![warn(missing_docs)]

pub mod config;
mod connection;
mod delivery;
mod dispatch;
mod events;
mod expiry;
mod legacy;
mod limit;
mod nofile;
mod recheck;
mod registry;
mod routes;
pub mod services;
mod session;
mod signals;
mod state;
mod stats;
mod tcp;
mod web;
mod wire;
mod ws;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use im_common::bus::Bus;
use im_common::serve::Discovery;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::{Config, LegacyConfig, Settings, WsConfig};
pub use services::Services;
pub(crate) use state::Shared;

/// A gateway: build it with [`Gateway::new`], run it with [`Gateway::serve`].
pub struct Gateway {
    shared: Arc<Shared>,
    /// The legacy line protocol's listener and settings, when it is served.
    legacy: Option<(TcpListener, LegacyConfig)>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway named `id` (its routes and its delivery stream; `settings.id` is not
    /// read) that calls `services` and listens on `bus`.
    pub fn new(id: impl Into<String>, services: Services, bus: Bus, settings: Settings) -> Gateway {
        // Beyond the semaphore's own maximum is as good as unlimited.
        let permits = settings.max_connections.min(Semaphore::MAX_PERMITS);
        let connections = Arc::new(Semaphore::new(permits));
        Gateway {
            shared: Arc::new(Shared {
                id: id.into(),
                services,
                bus,
                registry: registry::Registry::default(),
                lanes: routes::Lanes::new(),
                members: signals::Members::default(),
                expiry: expiry::Expiry::default(),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
                connections,
                next_conn: AtomicU64::new(1),
                settings,
            }),
            legacy: None,
        }
    }

    /// Also serves the legacy line protocol on `listener`, with `config`'s longest line
    /// and login timeout (its `listen` is not used; docs/legacy-protocol.md).
    #[must_use]
    pub fn legacy(mut self, listener: TcpListener, config: LegacyConfig) -> Gateway {
        self.legacy = Some((listener, config));
        self
    }

    /// This gateway's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Serves clients on `tcp` (and WebSocket on `ws`) until `shutdown`, then sends every
    /// connection GoAway, gives them the grace period, unbinds their routes and returns.
    ///
    /// # Errors
    /// When `settings` do not pass [`Settings::validate`] or the bus refuses the event
    /// subscriptions.
    pub async fn serve(
        self,
        tcp: TcpListener,
        ws: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Gateway { shared, legacy } = self;
        shared.settings.validate()?;
        match nofile::raise() {
            Ok(limit) => info!(
                open_files = limit,
                connections = shared.settings.max_connections.min(
                    usize::try_from(limit.saturating_sub(nofile::RESERVED)).unwrap_or(usize::MAX)
                ),
                "open-file limit raised to the hard limit; each connection takes one"
            ),
            Err(err) => warn!(cause = %err, "open-file limit not raised"),
        }
        let subscriptions = events::subscribe(&shared)
            .await
            .context("subscribing to gateway events")?;
        let background = CancellationToken::new();
        let lanes_stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(routes::run_lanes(shared.clone(), lanes_stop.clone()));
        tasks.spawn(routes::heartbeat(shared.clone(), background.clone()));
        tasks.spawn(delivery::run(shared.clone(), background.clone()));
        tasks.spawn(expiry::run(shared.clone(), background.clone()));
        tasks.spawn(recheck::run(shared.clone(), background.clone()));
        tasks.spawn(events::run(
            shared.clone(),
            subscriptions,
            background.clone(),
        ));
        let http = ws.map(|listener| {
            let router = ws::router(shared.clone());
            let stop = shared.stop.clone();
            tokio::spawn(async move {
                let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(err) = served {
                    warn!(cause = %err, "HTTP listener failed");
                }
            })
        });
        let legacy = legacy.map(|(listener, config)| {
            tokio::spawn(legacy::accept(shared.clone(), listener, config))
        });
        accept(&shared, tcp, shutdown).await;
        if let Some(legacy) = legacy {
            // It stops with `stop`, before the connections are waited for.
            let _ = legacy.await;
        }
        shutdown_all(&shared, http, background, lanes_stop, tasks).await;
        Ok(())
    }
}

/// Accepts TCP clients until `shutdown`, within the connection limit.
async fn accept(
    shared: &Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, usually: wait for connections to close.
                    warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // At the limit, this one connection waits here and the rest in the backlog.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = shared.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let _ = stream.set_nodelay(true);
        let transport = tcp::Tcp::new(stream, shared.settings.max_frame);
        let shared_conn = shared.clone();
        let client = shared.client_addr(peer.ip(), None);
        shared.tasks.spawn(async move {
            connection::serve(shared_conn, transport, client).await;
            drop(permit);
        });
    }
    drop(listener);
    shared.stop.cancel();
}

/// GoAway has gone out (connections saw `stop`): waits for connections to drain, then
/// stops the background tasks, unbinding routes last.
async fn shutdown_all(
    shared: &Shared,
    http: Option<tokio::task::JoinHandle<()>>,
    background: CancellationToken,
    lanes_stop: CancellationToken,
    mut tasks: tokio::task::JoinSet<()>,
) {
    info!(
        gateway = shared.id,
        "shutting down: GoAway sent, draining connections"
    );
    shared.tasks.close();
    // Each connection closes within the grace period (plus a blocked write's timeout).
    let bound = shared.settings.grace() + Duration::from_secs(35);
    if tokio::time::timeout(bound, shared.tasks.wait())
        .await
        .is_err()
    {
        warn!("connections still open after the grace period");
    }
    if let Some(http) = http {
        let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    }
    background.cancel();
    lanes_stop.cancel();
    let stopping = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .is_err()
    {
        warn!("background tasks did not stop in time");
        tasks.abort_all();
    }
    info!(gateway = shared.id, "stopped");
}

/// Runs the gateway until `shutdown` completes: finds the services, connects to the bus,
/// serves TCP, WebSocket and `/metrics` (TCP port + 1000).
///
/// # Errors
/// When the configuration is wrong, a dependency cannot be reached or an address cannot
/// be bound.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.gateway.validate()?;
    let discovery = Discovery::connect(&config.discovery, &config.tls).await?;
    let services = Services::discover(&discovery).await?;
    let bus = Bus::connect(&config.redis).await?;
    let tcp = TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("server.listen {}", config.server.listen))?;
    let bound = tcp.local_addr()?;
    let ws = match config.ws.address() {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("ws.listen {addr}"))?,
        ),
        None => None,
    };
    let legacy = match config.legacy.address() {
        Some(addr) => {
            config.legacy.validate()?;
            Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("legacy.listen {addr}"))?,
            )
        }
        None => None,
    };
    let id = config
        .gateway
        .id
        .clone()
        .unwrap_or_else(|| config::default_id(bound.port()));
    let ws_addr = ws.as_ref().and_then(|l| l.local_addr().ok());
    let legacy_addr = legacy.as_ref().and_then(|l| l.local_addr().ok());
    info!(
        gateway = id,
        tcp = %bound,
        websocket = ws_addr.map(|a| format!("ws://{a}/ws")).unwrap_or_default(),
        legacy = %legacy_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        "listening"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = im_common::serve::spawn_metrics(&config.server, bound, stop_rx).await?;
    let mut gateway = Gateway::new(id, services, bus, config.gateway);
    if let Some(listener) = legacy {
        gateway = gateway.legacy(listener, config.legacy);
    }
    let served = gateway.serve(tcp, ws, shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    served
}
