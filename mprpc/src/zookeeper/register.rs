//! Instance nodes: `/<root>/services/<service>/<instance-id>`, ephemeral, JSON data.
//!
//! A node lives as long as the session that created it, so a registration needs a keeper:
//! after an expiry it creates the node again in the new session.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::session::{Access, Core, Session, Task, ends_session, session_error};
use super::{ZooKeeper, check_name};
use crate::discovery::{DiscoveryError, Instance, Register, Registration, Withdraw};
use crate::service::BoxFuture;

/// Which registration of a handle owns each instance path: the latest. Registering an id
/// again (to change its data) supersedes the earlier registration, which then neither
/// keeps nor deletes the node; so a dropped registration whose withdrawal runs late cannot
/// delete the node of the one that replaced it.
#[derive(Debug, Clone, Default)]
pub(super) struct Claims {
    /// Last serial handed out, and the current owner's serial per path. A parking_lot
    /// mutex: held for a map operation, never across an await.
    inner: Arc<parking_lot::Mutex<(u64, HashMap<String, u64>)>>,
}

impl Claims {
    /// Makes a new registration the owner of `path`; returns its serial.
    fn take(&self, path: &str) -> u64 {
        let mut inner = self.inner.lock();
        inner.0 += 1;
        let serial = inner.0;
        inner.1.insert(path.to_owned(), serial);
        serial
    }

    fn holds(&self, path: &str, serial: u64) -> bool {
        self.inner.lock().1.get(path) == Some(&serial)
    }

    /// Gives `path` up if `serial` owns it; returns whether it did.
    fn release(&self, path: &str, serial: u64) -> bool {
        let mut inner = self.inner.lock();
        let owned = inner.1.get(path) == Some(&serial);
        if owned {
            inner.1.remove(path);
        }
        owned
    }
}

/// What to do with a node of the same id owned by another session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Existing {
    /// Delete it: a previous session of this instance whose expiry ZooKeeper has not
    /// processed yet (a restart, or an expiry the client declared first).
    Replace,
    /// Leave it: two live processes claiming one id must not delete each other's node in turn.
    Keep,
}

/// Instance nodes are ephemeral: they go with the session, and a new session creates them
/// again. Registering an id again from the same handle (to change its weight, say) replaces
/// the data and supersedes the earlier registration: withdrawing or dropping that one then
/// leaves the node alone.
impl Register for ZooKeeper {
    fn register(
        &self,
        service: &str,
        instance: Instance,
    ) -> BoxFuture<Result<Registration, DiscoveryError>> {
        let zk = self.clone();
        let service = service.to_owned();
        Box::pin(async move {
            check_name(&service)?;
            check_name(&instance.id)?;
            let data = serde_json::to_vec(&instance).map_err(|err| {
                DiscoveryError::Invalid(format!("instance {}: {err}", instance.id))
            })?;
            let core = zk.core().clone();
            let path = core.path(&["services", &service, &instance.id]);
            let what = format!("register {path}");
            let (_, generation) = core
                .run(&what, |client| {
                    put(client, core.access, &path, &data, Existing::Replace)
                })
                .await?;
            info!(%service, id = %instance.id, addr = %instance.addr, "registered");
            let claims = zk.inner.claims.clone();
            let serial = claims.take(&path);
            let keeper = Keeper {
                core,
                claims,
                serial,
                path: path.clone(),
                data,
                registered: Some(generation),
            };
            Ok(Registration::new(Entry {
                zk,
                path,
                serial,
                keeper: Task::spawn(keeper.run()),
            }))
        })
    }
}

/// Creates the ephemeral node at `path` (and its parents). Returns whether the node is
/// now this session's; `false` only when `existing` is [`Existing::Keep`] and another
/// session holds it.
async fn put(
    client: zk::Client,
    access: Access,
    path: &str,
    data: &[u8],
    existing: Existing,
) -> Result<bool, zk::Error> {
    // Each turn fixes one obstacle; more than a few means another writer keeps racing us.
    for _ in 0..8 {
        let err = match client.create(path, data, &access.ephemeral()).await {
            Ok(_) => return Ok(true),
            Err(err) => err,
        };
        match err {
            zk::Error::NoNode => {
                let parent = path.rsplit_once('/').map_or(path, |(parent, _)| parent);
                client.mkdir(parent, &access.persistent()).await?;
            }
            zk::Error::NodeExists => match client.check_stat(path).await? {
                None => {}
                Some(stat) if stat.ephemeral_owner == client.session_id().0 => {
                    // Ours already: a create whose answer was lost, or a second register
                    // of the same id; the latest data wins.
                    match client.set_data(path, data, None).await {
                        Ok(_) => return Ok(true),
                        Err(zk::Error::NoNode) => {}
                        Err(err) => return Err(err),
                    }
                }
                Some(_) if existing == Existing::Keep => return Ok(false),
                Some(stat) => {
                    info!(path, owner = %zk::SessionId(stat.ephemeral_owner), "replacing node of an older session");
                    match client.delete(path, Some(stat.version)).await {
                        Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => {}
                        Err(err) => return Err(err),
                    }
                }
            },
            err => return Err(err),
        }
    }
    Err(zk::Error::RuntimeInconsistent)
}

/// Keeps one registration's node in place across sessions.
struct Keeper {
    core: Core,
    claims: Claims,
    serial: u64,
    path: String,
    data: Vec<u8>,
    /// The session generation the node is known to exist in.
    registered: Option<u64>,
}

impl Keeper {
    async fn run(mut self) {
        let mut backoff = super::session::backoff();
        loop {
            let Some(session) = self.core.session().await else {
                return;
            };
            if !self.claims.holds(&self.path, self.serial) {
                debug!(path = %self.path, "registration superseded by a newer one of the same id");
                return;
            }
            let result = if self.registered == Some(session.generation) {
                self.guard(&session).await
            } else {
                match put(
                    session.client.clone(),
                    self.core.access,
                    &self.path,
                    &self.data,
                    Existing::Replace,
                )
                .await
                {
                    Ok(_) => {
                        info!(path = %self.path, session = %session.client.session_id(), "registered again in a new session");
                        self.registered = Some(session.generation);
                        Ok(())
                    }
                    Err(err) => Err(err),
                }
            };
            match result {
                Ok(()) => backoff.reset(),
                Err(err) => {
                    // An ended session is reported once, by the supervisor.
                    if ends_session(&err) {
                        debug!(path = %self.path, cause = %err, "registration waits for a new session");
                    } else {
                        warn!(path = %self.path, cause = %err, "keeping the registration failed; retrying");
                    }
                    if !self
                        .core
                        .pause(&err, session.generation, &mut backoff)
                        .await
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Watches the node while the session lives; recreates it if someone deletes it.
    /// Returns after each change so that the caller re-checks the session.
    async fn guard(&mut self, session: &Session) -> Result<(), zk::Error> {
        let client = &session.client;
        let (stat, watcher) = client.check_and_watch_stat(&self.path).await?;
        match stat {
            None => {
                // Someone deleted it while the session lives. Keep mode: if another
                // session was faster, the next turn waits for its node to go.
                if put(
                    client.clone(),
                    self.core.access,
                    &self.path,
                    &self.data,
                    Existing::Keep,
                )
                .await?
                {
                    info!(path = %self.path, "registration node was deleted; created it again");
                }
                return Ok(());
            }
            Some(stat) if stat.ephemeral_owner != session.id() => {
                warn!(path = %self.path, owner = %zk::SessionId(stat.ephemeral_owner), "another session holds this instance id; waiting for it to go");
            }
            Some(_) => {}
        }
        tokio::select! {
            event = watcher.changed() => {
                if event.event_type == zk::EventType::Session {
                    return Err(session_error(&event));
                }
            }
            () = self.core.ended(session.generation) => {}
        }
        Ok(())
    }
}

/// What [`Registration`] holds for a ZooKeeper registration.
struct Entry {
    /// Keeps the session open while the registration lives.
    zk: ZooKeeper,
    path: String,
    serial: u64,
    keeper: Task,
}

impl Withdraw for Entry {
    fn withdraw(self: Box<Self>) -> BoxFuture<()> {
        let Entry {
            zk,
            path,
            serial,
            keeper,
        } = *self;
        Box::pin(async move {
            // Stopped first: a keeper still running could recreate the node after the delete.
            keeper.stop().await;
            let core = zk.core();
            if !zk.inner.claims.release(&path, serial) || core.closed.is_cancelled() {
                return;
            }
            let what = format!("deregister {path}");
            match core.run(&what, |client| delete_own(client, &path)).await {
                Ok(_) => info!(path, "deregistered"),
                Err(err) => {
                    warn!(path, cause = %err, "deregistration failed; the node goes with the session")
                }
            }
        })
    }
}

/// Deletes the node at `path` if this session owns it.
pub(super) async fn delete_own(client: zk::Client, path: &str) -> Result<(), zk::Error> {
    loop {
        let stat = match client.check_stat(path).await? {
            Some(stat) if stat.ephemeral_owner == client.session_id().0 => stat,
            _ => return Ok(()),
        };
        // The version pins the delete to the node just checked, not a successor.
        match client.delete(path, Some(stat.version)).await {
            Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
            Err(zk::Error::BadVersion) => {}
            Err(err) => return Err(err),
        }
    }
}
