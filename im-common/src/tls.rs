//! A process's side of mutual TLS: its certificate, the cluster CA, and the watch that picks
//! up a rotated certificate without dropping a call.
//!
//! One [`Tls`] serves both directions: the RPC server admits peers whose certificate the
//! CA signed, and clients dial with the same certificate. Every
//! [`TlsConfig::reload_interval_ms`] the three files are looked at; when one changed and the
//! set loads, connections made from then on use it (open ones keep theirs, so no call is
//! dropped). A set that does not load (a key written before its certificate, say) is
//! logged and tried again at the next look, and the old one stays in use.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use mprpc::tls::{ClientTls, Identity, ServerTls};
use tracing::{info, warn};

use crate::config::TlsConfig;

/// A process's TLS configuration, shared by its server and its clients.
#[derive(Debug, Clone)]
pub struct Tls {
    server: ServerTls,
    client: ClientTls,
    /// The reload watch; it ends when the last clone goes.
    _watch: std::sync::Arc<Watch>,
}

impl Tls {
    /// Loads the files `config` names and starts watching them; `None` when it names none.
    ///
    /// # Errors
    /// When only some files are named, or they do not load (the message names the file).
    pub fn load(config: &TlsConfig) -> anyhow::Result<Option<Tls>> {
        let Some((cert, key, ca)) = config.files()? else {
            return Ok(None);
        };
        let files = Files {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
        };
        let (identity, ca_pem) = files.read()?;
        let client = ClientTls::new(&ca_pem)
            .with_context(|| format!("tls.ca {}", files.ca.display()))?
            .identity(identity.clone())
            .with_context(|| format!("tls.cert {}", files.cert.display()))?;
        let server = ServerTls::mutual(identity, &ca_pem)
            .with_context(|| format!("tls.cert {}", files.cert.display()))?;
        let interval = Duration::from_millis(config.reload_interval_ms.max(100));
        let watch = Watch(tokio::spawn(watch(
            files,
            server.clone(),
            client.clone(),
            interval,
        )));
        Ok(Some(Tls {
            server,
            client,
            _watch: std::sync::Arc::new(watch),
        }))
    }

    /// The server side: mutual TLS, peers signed by the cluster CA.
    pub fn server(&self) -> ServerTls {
        self.server.clone()
    }

    /// The client side: this process's certificate, servers signed by the cluster CA.
    pub fn client(&self) -> ClientTls {
        self.client.clone()
    }
}

/// Aborts the watch task when dropped.
#[derive(Debug)]
struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Files {
    fn read(&self) -> anyhow::Result<(Identity, Vec<u8>)> {
        let identity = Identity::from_pem_files(&self.cert, &self.key).with_context(|| {
            format!(
                "tls.cert {} with tls.key {}",
                self.cert.display(),
                self.key.display()
            )
        })?;
        let ca =
            std::fs::read(&self.ca).with_context(|| format!("tls.ca {}", self.ca.display()))?;
        Ok((identity, ca))
    }

    /// When each file last changed (`None` for one that cannot be read now).
    fn stamps(&self) -> [Option<SystemTime>; 3] {
        let stamp = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        [stamp(&self.cert), stamp(&self.key), stamp(&self.ca)]
    }
}

async fn watch(files: Files, server: ServerTls, client: ClientTls, interval: Duration) {
    let mut loaded = files.stamps();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = files.stamps();
        if now == loaded || now.iter().any(Option::is_none) {
            continue;
        }
        match reload(&files, &server, &client) {
            Ok(()) => {
                info!(cert = %files.cert.display(), "certificate reloaded; new connections use it");
                metrics::counter!("mpim_tls_reloads_total").increment(1);
                loaded = now;
            }
            Err(err) => {
                // Tried again at the next look; the old certificate stays in use.
                warn!(
                    cause = format!("{err:#}"),
                    "new certificate files do not load yet"
                );
            }
        }
    }
}

fn reload(files: &Files, server: &ServerTls, client: &ClientTls) -> anyhow::Result<()> {
    let (identity, ca) = files.read()?;
    server.reload(identity.clone(), Some(&ca))?;
    client.reload(Some(identity), Some(&ca))?;
    Ok(())
}
