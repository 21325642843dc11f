//! Watched configuration: `/<root>/config/<name>`, a persistent node holding JSON.

use std::convert::Infallible;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::session::{Access, Backoff, Core, Follow, Session, Task, closed, session_error};
use super::{ZooKeeper, check_name};
use crate::discovery::DiscoveryError;

/// The live, typed value of one config node; from [`ZooKeeper::watch_config`].
///
/// Holds `None` while the node does not exist. A value that does not parse as `T` is
/// logged and skipped: the last good value stays. Following stops when this is dropped.
pub struct ConfigWatch<T> {
    rx: watch::Receiver<Option<T>>,
    _zk: ZooKeeper,
    _task: Task,
}

impl<T> std::fmt::Debug for ConfigWatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigWatch")
            .field("present", &self.rx.borrow().is_some())
            .finish()
    }
}

impl<T> ConfigWatch<T> {
    /// The latest value. Do not hold the guard across an `.await`: it blocks updates.
    pub fn borrow(&self) -> watch::Ref<'_, Option<T>> {
        self.rx.borrow()
    }

    /// A copy of the latest value.
    pub fn get(&self) -> Option<T>
    where
        T: Clone,
    {
        self.rx.borrow().clone()
    }

    /// Waits for a value newer than the last one [`ConfigWatch::changed`] returned for (or
    /// than the one present at creation).
    ///
    /// # Errors
    /// [`DiscoveryError::Backend`] once the handle is closed: no update will come.
    pub async fn changed(&mut self) -> Result<(), DiscoveryError> {
        self.rx.changed().await.map_err(|_| closed())
    }

    /// A receiver of the same values, e.g. to hand to another task. It stops changing when
    /// this `ConfigWatch` is dropped.
    pub fn subscribe(&self) -> watch::Receiver<Option<T>> {
        self.rx.clone()
    }
}

impl ZooKeeper {
    /// Follows `/<root>/config/<name>`, parsing its data as JSON `T`. The first value (or
    /// `None` if the node does not exist) is read before this returns.
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] for a bad name; [`DiscoveryError::Backend`] when the node
    /// cannot be read within the connect timeout.
    pub async fn watch_config<T>(&self, name: &str) -> Result<ConfigWatch<T>, DiscoveryError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        check_name(name)?;
        let core = self.core().clone();
        let (tx, rx) = watch::channel(None);
        let (loaded, mut loaded_rx) = watch::channel(false);
        let follower = Follower {
            path: core.path(&["config", name]),
            core,
            name: name.to_owned(),
            tx,
            loaded,
            seen: None,
        };
        let task = Task::spawn(follower.core.clone().follow_sessions(follower));
        let timeout = self.core().timeout;
        match tokio::time::timeout(timeout, loaded_rx.wait_for(|loaded| *loaded)).await {
            Ok(Ok(_)) => Ok(ConfigWatch {
                rx,
                _zk: self.clone(),
                _task: task,
            }),
            _ if self.core().closed.is_cancelled() => Err(closed()),
            _ => Err(DiscoveryError::backend(format!(
                "config {name}: not read within {timeout:?}"
            ))),
        }
    }

    /// Writes `value` as JSON to `/<root>/config/<name>`, creating the node if missing.
    /// Every [`ConfigWatch`] of the name sees it.
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] for a bad name or a value JSON cannot represent;
    /// [`DiscoveryError::Backend`] when ZooKeeper refuses or is unreachable.
    pub async fn set_config<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), DiscoveryError> {
        check_name(name)?;
        let data = serde_json::to_vec(value)
            .map_err(|err| DiscoveryError::Invalid(format!("config {name}: {err}")))?;
        let path = self.core().path(&["config", name]);
        let access = self.core().access;
        self.core()
            .run(&format!("write {path}"), |client| {
                write(client, access, &path, &data)
            })
            .await?;
        info!(path, "config written");
        Ok(())
    }
}

async fn write(
    client: zk::Client,
    access: Access,
    path: &str,
    data: &[u8],
) -> Result<(), zk::Error> {
    // Each turn fixes one obstacle (missing node, missing parent, a concurrent create).
    for _ in 0..8 {
        match client.set_data(path, data, None).await {
            Err(zk::Error::NoNode) => {}
            other => return other.map(drop),
        }
        match client.create(path, data, &access.persistent()).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NodeExists) => {}
            Err(zk::Error::NoNode) => {
                let parent = path.rsplit_once('/').map_or(path, |(parent, _)| parent);
                client.mkdir(parent, &access.persistent()).await?;
            }
            Err(err) => return Err(err),
        }
    }
    Err(zk::Error::RuntimeInconsistent)
}

/// The task behind one [`ConfigWatch`].
struct Follower<T> {
    core: Core,
    name: String,
    path: String,
    tx: watch::Sender<Option<T>>,
    loaded: watch::Sender<bool>,
    /// `mzxid` of the last data applied, good or bad: a re-read after a reconnection or a
    /// new session must not announce the same value twice.
    seen: Option<i64>,
}

impl<T: DeserializeOwned + Send + Sync + 'static> Follow for Follower<T> {
    fn stopped(&mut self, err: &zk::Error) {
        debug!(config = %self.name, cause = %err, "config following restarts");
    }

    async fn follow(
        &mut self,
        session: &Session,
        backoff: &mut Backoff,
    ) -> Result<Infallible, zk::Error> {
        let client = &session.client;
        loop {
            let watcher = match client.get_and_watch_data(&self.path).await {
                Ok((data, stat, watcher)) => {
                    self.apply(&data, stat.mzxid);
                    watcher
                }
                Err(zk::Error::NoNode) => {
                    let (stat, watcher) = client.check_and_watch_stat(&self.path).await?;
                    if stat.is_some() {
                        // Created since the read: read it.
                        continue;
                    }
                    self.seen = None;
                    self.tx.send_if_modified(|value| value.take().is_some());
                    watcher
                }
                Err(err) => return Err(err),
            };
            self.loaded
                .send_if_modified(|loaded| !std::mem::replace(loaded, true));
            backoff.reset();
            tokio::select! {
                event = watcher.changed() => {
                    if event.event_type == zk::EventType::Session {
                        return Err(session_error(&event));
                    }
                }
                () = self.core.closed.cancelled() => return Err(zk::Error::ClientClosed),
            }
        }
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Follower<T> {
    fn apply(&mut self, data: &[u8], mzxid: i64) {
        if self.seen == Some(mzxid) {
            return;
        }
        self.seen = Some(mzxid);
        match serde_json::from_slice::<T>(data) {
            Ok(value) => {
                debug!(config = %self.name, "config changed");
                self.tx.send_replace(Some(value));
            }
            Err(err) => {
                warn!(config = %self.name, cause = %err, "ignoring config value that does not parse")
            }
        }
    }
}
