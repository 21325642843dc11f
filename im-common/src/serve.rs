//! Running a service process: listen, register in discovery, serve `/metrics`, stop
//! gracefully; and clients for the other services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mprpc::discovery::{Discover, Instance, Static};
use mprpc::zookeeper::{ZkConfig, ZooKeeper};
use mprpc::{Client, Server};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::{DiscoveryConfig, ServerConfig};
use crate::identity::ServiceIdentity;

/// Default ports of the services (metrics on each + 1000).
pub mod ports {
    /// `im-user`.
    pub const USER: u16 = 6101;
    /// `im-presence`.
    pub const PRESENCE: u16 = 6102;
    /// `im-message`.
    pub const MESSAGE: u16 = 6103;
    /// `im-group`.
    pub const GROUP: u16 = 6104;
}

/// Where the services are found: ZooKeeper, or a static list.
#[derive(Clone)]
pub struct Discovery {
    zookeeper: Option<ZooKeeper>,
    config: DiscoveryConfig,
}

impl Discovery {
    /// Connects to ZooKeeper when configured.
    ///
    /// # Errors
    /// When ZooKeeper cannot be reached within its connect timeout.
    pub async fn connect(config: &DiscoveryConfig) -> anyhow::Result<Discovery> {
        let zookeeper = match &config.zookeeper {
            Some(hosts) => {
                let zk = ZkConfig::default()
                    .root(config.root.clone())
                    .session_timeout(Duration::from_millis(config.session_timeout_ms));
                Some(
                    ZooKeeper::connect(hosts, zk)
                        .await
                        .with_context(|| format!("discovery.zookeeper {hosts}"))?,
                )
            }
            None => None,
        };
        Ok(Discovery {
            zookeeper,
            config: config.clone(),
        })
    }

    /// A client of `service` (`mpim.UserService`) that names this process as `me`.
    ///
    /// # Errors
    /// When the first instance list cannot be read.
    pub async fn client(
        &self,
        me: &'static str,
        service: &str,
        default_port: u16,
    ) -> anyhow::Result<Client> {
        let builder = Client::builder().intercept(ServiceIdentity::new(me));
        let source: Arc<dyn Discover> = match &self.zookeeper {
            Some(zk) => Arc::new(zk.clone()),
            None => {
                let addrs = self
                    .config
                    .fixed
                    .get(service)
                    .cloned()
                    .unwrap_or_else(|| vec![format!("127.0.0.1:{default_port}")]);
                Arc::new(Static::new(addrs))
            }
        };
        Ok(builder.discover(&*source, service).await?)
    }

    /// Serves `server` on `config.listen` until `shutdown`: registered in ZooKeeper when
    /// configured (deregistered first on shutdown), with `/metrics` beside it.
    ///
    /// # Errors
    /// When the address cannot be bound or registration fails.
    pub async fn serve(
        &self,
        server: Server,
        config: &ServerConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("server.listen {}", config.listen))?;
        let bound = listener.local_addr()?;
        info!(addr = %bound, "listening");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let metrics = spawn_metrics(config, bound, stop_rx).await?;
        let shutdown = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        let served = match &self.zookeeper {
            Some(zk) => {
                let addr = match &config.advertise {
                    Some(addr) => addr.clone(),
                    None => mprpc::discovery::advertise_addr(bound).to_string(),
                };
                server
                    .serve_registered(listener, zk, Instance::new(addr), shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            }
            None => server
                .serve(listener, shutdown)
                .await
                .map_err(anyhow::Error::from),
        };
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        served
    }
}

/// Starts the `/metrics` endpoint unless it is off.
async fn spawn_metrics(
    config: &ServerConfig,
    bound: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let addr = match config.metrics_listen.as_deref() {
        Some("off") => return Ok(None),
        Some(addr) => addr.to_owned(),
        None if bound.port() == 0 => return Ok(None),
        None => SocketAddr::new(bound.ip(), bound.port().saturating_add(1000)).to_string(),
    };
    let handle = match mprpc::metrics::install() {
        Ok(handle) => handle,
        Err(err) => {
            warn!(cause = %err, "metrics recorder already installed; no /metrics here");
            return Ok(None);
        }
    };
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("server.metrics_listen {addr}"))?;
    info!(addr = %listener.local_addr()?, "metrics at /metrics");
    Ok(Some(tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        if let Err(err) = mprpc::metrics::serve(listener, handle, stopped).await {
            warn!(cause = %err, "metrics endpoint failed");
        }
    })))
}
