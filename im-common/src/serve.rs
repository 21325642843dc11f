//! Running a service process: listen, register in discovery, serve `/metrics`, stop
//! gracefully; and clients for the other services.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mprpc::discovery::{Discover, Instance, Static};
use mprpc::zookeeper::{ZkConfig, ZooKeeper};
use mprpc::{Client, Server, ServerBuilder};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::{DiscoveryConfig, ServerConfig, TlsConfig};
use crate::identity::{Authorize, Policy, ServiceIdentity};
use crate::tls::Tls;

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

/// A server builder hosting `service` behind the caller checks every MPIM service applies:
/// [`Authorize`] with the service's `policy`.
pub fn builder(service: impl mprpc::Service, policy: &'static Policy) -> ServerBuilder {
    debug_assert_eq!(
        policy.service,
        service.name(),
        "the policy of another service"
    );
    for method in service.methods() {
        if policy.allowed(method).is_empty() {
            warn!(
                service = service.name(),
                method, "no role may call this method"
            );
        }
    }
    Server::builder()
        .intercept(Authorize::new(policy))
        .add_service(service)
}

/// [`builder`], built: for the in-process transport and tests.
pub fn server(service: impl mprpc::Service, policy: &'static Policy) -> Server {
    builder(service, policy).build()
}

/// Where the services are found (ZooKeeper, or a static list), and how they are reached
/// (mutual TLS, or plaintext).
#[derive(Clone)]
pub struct Discovery {
    zookeeper: Option<ZooKeeper>,
    config: DiscoveryConfig,
    tls: Option<Tls>,
    insecure: bool,
}

impl Discovery {
    /// Connects to ZooKeeper when configured (with the cluster credential when one is
    /// configured), and loads the TLS files `tls` names.
    ///
    /// # Errors
    /// When ZooKeeper cannot be reached within its connect timeout, or a credential or TLS
    /// file does not load.
    pub async fn connect(config: &DiscoveryConfig, tls: &TlsConfig) -> anyhow::Result<Discovery> {
        let loaded = Tls::load(tls)?;
        let zookeeper = match &config.zookeeper {
            Some(hosts) => {
                let mut zk = ZkConfig::default()
                    .root(config.root.clone())
                    .session_timeout(Duration::from_millis(config.session_timeout_ms));
                if let Some(path) = &config.credential_file {
                    let (user, password) = read_credential(path)?;
                    zk = zk.credential(&user, &password);
                }
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
            tls: loaded,
            insecure: tls.insecure,
        })
    }

    /// The TLS configuration in use, if any.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
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
        let mut builder = Client::builder().intercept(ServiceIdentity::new(me));
        if let Some(tls) = &self.tls {
            // The instance must hold the certificate of `service` (its DNS name).
            builder = builder.tls(tls.client());
        }
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

    /// Serves what `server` builds on `config.listen` until `shutdown`: over mutual TLS when
    /// configured, registered in ZooKeeper when configured (deregistered first on shutdown),
    /// with `/metrics` beside it.
    ///
    /// # Errors
    /// When the address cannot be bound or registration fails; when the address is a
    /// wildcard; when it is not loopback, TLS is off and `tls.insecure` is not set.
    pub async fn serve(
        &self,
        server: ServerBuilder,
        config: &ServerConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("server.listen {}", config.listen))?;
        let bound = listener.local_addr()?;
        self.check_listen(bound)?;
        let server = match &self.tls {
            Some(tls) => server.tls(tls.server()).build(),
            None => server.build(),
        };
        info!(addr = %bound, tls = self.tls.is_some(), "listening");
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

impl Discovery {
    /// Refuses addresses a cluster service must not serve on.
    fn check_listen(&self, bound: SocketAddr) -> anyhow::Result<()> {
        if bound.ip().is_unspecified() {
            anyhow::bail!(
                "server.listen {bound}: a wildcard address serves every network of the host; \
                 listen on this host's own cluster address"
            );
        }
        if self.tls.is_none() && !bound.ip().is_loopback() {
            if !self.insecure {
                anyhow::bail!(
                    "server.listen {bound}: plaintext RPC off loopback lets anyone who reaches \
                     the port act as any service and any user; configure [tls] cert, key and \
                     ca (docs/security.md), or set tls.insecure = true to accept that"
                );
            }
            warn!(
                addr = %bound,
                "INSECURE: plaintext RPC on a network address (tls.insecure = true): anyone who \
                 reaches this port can act as any MPIM service and any user"
            );
        }
        Ok(())
    }
}

/// Reads `user:password` from a credential file.
fn read_credential(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("discovery.credential_file {}", path.display()))?;
    text.trim()
        .split_once(':')
        .filter(|(user, password)| !user.is_empty() && !password.is_empty())
        .map(|(user, password)| (user.to_owned(), password.to_owned()))
        .with_context(|| {
            format!(
                "discovery.credential_file {}: expected user:password",
                path.display()
            )
        })
}

/// Starts the `/metrics` endpoint of a process listening on `bound`, unless
/// `config.metrics_listen` turns it off (or `bound` is an ephemeral port and no address is
/// configured); it serves until `stop` turns true.
///
/// # Errors
/// When the metrics address cannot be bound.
pub async fn spawn_metrics(
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
    // Normally installed already, by `telemetry::init`, before the server was built.
    let Some(handle) = crate::telemetry::metrics() else {
        return Ok(None);
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

/// Service binaries under test: start one, find its `/metrics`, scrape it.
pub mod testing {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::Discovery;
    use crate::config::DiscoveryConfig;

    /// Where the tests' ZooKeeper listens.
    pub const ZOOKEEPER: &str = "127.0.0.1:2181";

    /// A running service process; killed when dropped.
    #[derive(Debug)]
    pub struct ServiceProcess {
        /// The process.
        pub child: Child,
        /// Where its `/metrics` listens, as it logged.
        pub metrics: String,
    }

    impl ServiceProcess {
        /// Starts `binary --config config` and waits until it logs its `/metrics` address
        /// (the rest of its log goes to this process's stderr).
        ///
        /// # Panics
        /// When the process cannot start or exits before serving.
        pub fn start(binary: &str, config: &Path) -> ServiceProcess {
            let mut child = Command::new(binary)
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "info")
                .stderr(Stdio::piped())
                .spawn()
                .expect("the service starts");
            let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
            let metrics = loop {
                let line = lines
                    .next()
                    .expect("the service logs before exiting")
                    .expect("log lines are text");
                eprintln!("{line}");
                if line.contains("metrics at /metrics") {
                    let addr = line.rsplit("addr=").next().unwrap_or_default().trim();
                    break addr.to_owned();
                }
            };
            std::thread::spawn(move || {
                lines
                    .map_while(Result::ok)
                    .for_each(|line| eprintln!("{line}"));
            });
            ServiceProcess { child, metrics }
        }

        /// Sends SIGTERM and waits for the exit; returns whether it exited with 0.
        ///
        /// # Panics
        /// When the signal cannot be sent.
        pub fn terminate(mut self) -> bool {
            let pid = self.child.id().to_string();
            let sent = Command::new("kill").args(["-TERM", &pid]).status();
            assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
            self.child.wait().is_ok_and(|status| status.success())
        }
    }

    impl Drop for ServiceProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The response to `GET path` on `addr`, head and body.
    ///
    /// # Panics
    /// When the connection fails.
    pub async fn http_get(addr: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        response
    }

    /// Polls `check` every 50 ms until it holds, for at most 30 s.
    ///
    /// # Panics
    /// When it does not hold in time.
    pub async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `[server]` and `[discovery]` sections of a process under test: RPC and
    /// `/metrics` on ports of the system's choosing, registered in [`ZOOKEEPER`] under
    /// `root` (see [`unique_root`]).
    pub fn local_config(root: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             grace_period_ms = 2000\n\
             [discovery]\nzookeeper = \"{ZOOKEEPER}\"\nroot = \"{root}\"\n\
             session_timeout_ms = 4000\n"
        )
    }

    /// Discovery through [`ZOOKEEPER`] under `root`, as the processes under test use it.
    ///
    /// # Panics
    /// When ZooKeeper cannot be reached.
    pub async fn zookeeper(root: &str) -> Discovery {
        let config = DiscoveryConfig {
            zookeeper: Some(ZOOKEEPER.into()),
            root: root.to_owned(),
            ..DiscoveryConfig::default()
        };
        Discovery::connect(&config, &crate::config::TlsConfig::default())
            .await
            .expect("ZooKeeper at 127.0.0.1:2181 (scripts/services.sh up zookeeper)")
    }

    /// A config file in a directory of its own, removed when dropped.
    #[derive(Debug)]
    pub struct ConfigFile {
        /// The file.
        pub path: PathBuf,
    }

    impl ConfigFile {
        /// Writes `text` to `<temp dir>/<unique>/<name>`.
        ///
        /// # Panics
        /// When the file cannot be written.
        pub fn new(name: &str, text: &str) -> ConfigFile {
            let dir = std::env::temp_dir().join(unique_root().trim_start_matches('/'));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(name);
            std::fs::write(&path, text).expect("config written");
            ConfigFile { path }
        }
    }

    impl Drop for ConfigFile {
        fn drop(&mut self) {
            if let Some(dir) = self.path.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    /// Runs `binary --config <file with config>`, expecting it to refuse to start; returns
    /// what it printed on stderr.
    ///
    /// # Panics
    /// When it cannot run, or exits with 0.
    pub fn refused(binary: &str, config: &str) -> String {
        let file = ConfigFile::new("refused.toml", config);
        let output = Command::new(binary)
            .arg("--config")
            .arg(&file.path)
            // Should it start after all, whatever it creates stays in the temp dir.
            .current_dir(file.path.parent().expect("in a dir"))
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !output.status.success(),
            "{binary} started with {config:?}: {stderr}"
        );
        stderr
    }

    /// A ZooKeeper root no other test uses.
    pub fn unique_root() -> String {
        format!(
            "/mpim-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plaintext(insecure: bool) -> Discovery {
        Discovery {
            zookeeper: None,
            config: DiscoveryConfig::default(),
            tls: None,
            insecure,
        }
    }

    #[test]
    fn plaintext_serves_on_loopback_only_unless_insecure() {
        let loopback: SocketAddr = "127.0.0.1:6101".parse().unwrap();
        let network: SocketAddr = "10.0.0.5:6101".parse().unwrap();
        assert!(plaintext(false).check_listen(loopback).is_ok());
        assert!(
            plaintext(false)
                .check_listen("[::1]:6101".parse().unwrap())
                .is_ok()
        );
        let err = plaintext(false).check_listen(network).unwrap_err();
        assert!(err.to_string().contains("tls.insecure"), "{err}");
        assert!(plaintext(true).check_listen(network).is_ok());
        for wildcard in ["0.0.0.0:6101", "[::]:6101"] {
            let err = plaintext(true)
                .check_listen(wildcard.parse().unwrap())
                .unwrap_err();
            assert!(err.to_string().contains("wildcard"), "{err}");
        }
    }

    #[test]
    fn a_credential_file_holds_user_and_password() {
        let dir = std::env::temp_dir().join(format!("mpim-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credential");
        std::fs::write(&file, "mpim:s3cret\n").unwrap();
        assert_eq!(
            read_credential(&file).unwrap(),
            ("mpim".to_owned(), "s3cret".to_owned())
        );
        for bad in ["", "mpim", "mpim:", ":pw"] {
            std::fs::write(&file, bad).unwrap();
            let err = read_credential(&file).unwrap_err();
            assert!(err.to_string().contains("user:password"), "{bad:?}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
