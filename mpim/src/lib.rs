//! MPIM in one process: the user, presence, message and group services and the gateway,
//! on embedded backends — a SQLite file under the data directory and the in-process bus.
//!
//! Nothing here is a second implementation: the services are the same handlers the
//! `im-*` binaries serve, and the gateway reaches them through the same mprpc calls, over
//! mprpc's in-process transport (no socket, same interceptors, deadlines and metrics).
//!
//! ```no_run
//! # async fn start() -> anyhow::Result<()> {
//! let config = mpim::Config::in_dir("mpim-data");
//! mpim::run(config, im_common::telemetry::shutdown_signal()).await
//! # }
//! ```
//!
//! # Layout
//! - [`Config`]: `mpim.toml` (every process's sections in one file);
//! - [`Embedded`]: the four services on embedded backends, and clients of them;
//! - [`run`]: the process (services + gateway + `/metrics`);
//! - `secret`: the token-signing secret kept in the data directory.

#![warn(missing_docs)]

mod secret;

use std::path::PathBuf;

use anyhow::Context as _;
use im_common::bus::Bus;
use im_common::config::{DatabaseConfig, LogConfig, ServerConfig};
use im_common::store::Sql;
use im_gateway::{Gateway, Services};
use im_presence::Sweeper;
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::info;

/// The process's configuration (`mpim.toml`): the gateway's sections and each service's
/// rules, with the storage and bus fixed to the embedded ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the database and the token secret live. Default `mpim-data` (made when
    /// missing).
    pub data: PathBuf,
    /// The clients' TCP listener. Default `127.0.0.1:6000`; its `/metrics` on port + 1000.
    pub server: ServerConfig,
    /// The HTTP/WebSocket listener. Default `127.0.0.1:6080`.
    pub ws: im_gateway::WsConfig,
    /// The legacy line protocol's listener. Default off.
    pub legacy: im_gateway::LegacyConfig,
    /// The database. Default: SQLite at `<data>/mpim.db`; a `mysql://` URL works too.
    pub database: DatabaseConfig,
    /// Logging.
    pub log: LogConfig,
    /// Connections, limits and timeouts of the gateway.
    pub gateway: im_gateway::Settings,
    /// Tokens and password hashing. Default secret: made once and kept in
    /// `<data>/jwt-secret`.
    pub auth: im_user::AuthSettings,
    /// Route liveness.
    pub presence: im_presence::PresenceSettings,
    /// Message rules.
    pub message: im_message::Settings,
    /// Group rules.
    pub group: im_group::Settings,
}

impl Default for Config {
    fn default() -> Config {
        Config::in_dir("mpim-data")
    }
}

impl Config {
    /// The defaults, keeping data in `data`.
    pub fn in_dir(data: impl Into<PathBuf>) -> Config {
        Config {
            data: data.into(),
            server: ServerConfig::on_port(6000),
            ws: im_gateway::WsConfig::default(),
            legacy: im_gateway::LegacyConfig::default(),
            database: DatabaseConfig::default(),
            log: LogConfig::default(),
            gateway: im_gateway::Settings::default(),
            auth: im_user::AuthSettings::default(),
            presence: im_presence::PresenceSettings::default(),
            message: im_message::Settings::default(),
            group: im_group::Settings::default(),
        }
    }

    /// The database actually used: the configured one, or SQLite in the data directory.
    fn database(&self) -> DatabaseConfig {
        let mut database = self.database.clone();
        if database.url == DatabaseConfig::default().url {
            database.url = format!("sqlite://{}", self.data.join("mpim.db").display());
        }
        database
    }

    /// The auth settings actually used: the configured secret, or the one kept in `data`.
    fn auth(&self) -> anyhow::Result<im_user::AuthSettings> {
        let mut auth = self.auth.clone();
        if auth.jwt_secret == im_user::AuthSettings::default().jwt_secret && !auth.dev {
            auth.jwt_secret = secret::load_or_create(&self.data)?;
        }
        Ok(auth)
    }
}

/// The four services on embedded backends, with in-process clients of each.
pub struct Embedded {
    /// Clients of the services, as the gateway uses them.
    pub services: Services,
    /// The in-process bus the services and the gateway share.
    pub bus: Bus,
    sql: Sql,
    sweeper: Option<Sweeper>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

impl Embedded {
    /// Opens the database (making the data directory and migrating the schema when
    /// needed) and builds the services.
    ///
    /// # Errors
    /// When the data directory or database cannot be opened, or a section is unusable.
    pub async fn open(config: &Config) -> anyhow::Result<Embedded> {
        std::fs::create_dir_all(&config.data)
            .with_context(|| format!("data: cannot create {}", config.data.display()))?;
        let sql = Sql::connect(&config.database()).await.context("database")?;
        let bus = Bus::in_process();
        let users =
            im_user::Users::new(sql.clone(), bus.clone(), config.auth()?).context("auth")?;
        let presence =
            im_presence::Presence::new(bus.clone(), config.presence.clone()).context("presence")?;
        let messages = im_message::Messages::new(sql.clone(), bus.clone(), config.message.clone());
        let groups = im_group::Groups::new(sql.clone(), bus.clone(), config.group.clone());
        let services = Services::in_process(
            "mpim",
            &im_user::server(users),
            &im_presence::server(presence),
            &im_message::server(messages),
            &im_group::server(groups),
        );
        let sweeper = config
            .presence
            .sweep_interval()
            .map(|every| Sweeper::start(bus.routes.clone(), every));
        Ok(Embedded {
            services,
            bus,
            sql,
            sweeper,
        })
    }

    /// Stops the sweeper and closes the database.
    pub async fn close(self) {
        if let Some(sweeper) = self.sweeper {
            sweeper.stop().await;
        }
        self.sql.close().await;
    }
}

/// Runs everything until `shutdown` completes: the services, then the gateway on the
/// configured listeners (GoAway to every client on shutdown; the legacy line protocol too
/// when `[legacy] listen` is set), with `/metrics` on the TCP port + 1000.
///
/// # Errors
/// When the data directory, the database or a listener cannot be opened.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.gateway.validate()?;
    let embedded = Embedded::open(&config).await?;
    let tcp = bind("server.listen", &config.server.listen).await?;
    let bound = tcp.local_addr()?;
    let ws = match config.ws.address() {
        Some(addr) => Some(bind("ws.listen", addr).await?),
        None => None,
    };
    let legacy = match config.legacy.address() {
        Some(addr) => {
            config.legacy.validate()?;
            Some(bind("legacy.listen", addr).await?)
        }
        None => None,
    };
    let legacy_addr = match &legacy {
        Some(legacy) => legacy.local_addr()?.to_string(),
        None => "off".to_owned(),
    };
    let (ws_url, web_url) = match &ws {
        Some(ws) => {
            let addr = ws.local_addr()?;
            (format!("ws://{addr}/ws"), format!("http://{addr}/"))
        }
        None => ("off".to_owned(), "off".to_owned()),
    };
    info!(
        data = %config.data.display(),
        tcp = %bound,
        websocket = %ws_url,
        web = %web_url,
        legacy = %legacy_addr,
        "mpim ready: open {web_url} in a browser, or chat with `cargo run --release -p im-client --bin im-cli -- --server {bound}`"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics = im_common::serve::spawn_metrics(&config.server, bound, stop_rx).await?;
    let mut gateway = Gateway::new(
        "mpim",
        embedded.services.clone(),
        embedded.bus.clone(),
        config.gateway.clone(),
    );
    if let Some(listener) = legacy {
        gateway = gateway.legacy(listener, config.legacy.clone());
    }
    let served = gateway.serve(tcp, ws, shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    embedded.close().await;
    served
}

async fn bind(key: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{key} {addr}"))
}
