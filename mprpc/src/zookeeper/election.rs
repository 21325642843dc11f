//! Leader election: `/<root>/election/<name>/n-<token>-<sequence>`, ephemeral sequential.
//!
//! The candidate with the lowest sequence number leads. Every other candidate watches only
//! the node just before its own, so a departure wakes one candidate, not all of them.
//! `<token>` is random per node: after a lost answer to a create, the candidate finds out
//! whether its node exists by looking for the token.

use std::convert::Infallible;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::session::{Backoff, Core, Follow, Session, Task, closed, is_transient, session_error};
use super::{ZooKeeper, check_name};
use crate::discovery::DiscoveryError;

/// Our node: the session generation it was created in and its name.
type Node = Arc<parking_lot::Mutex<Option<(u64, String)>>>;

/// A candidacy in one election; from [`ZooKeeper::elect`].
///
/// Stays a candidate (and joins again after a session expiry) until [`Election::resign`]
/// or drop.
pub struct Election {
    zk: ZooKeeper,
    name: String,
    candidate: String,
    leader: watch::Sender<bool>,
    /// A parking_lot mutex shared with the candidate task: held to read or replace the
    /// node name, never across an await.
    node: Node,
    task: Option<Task>,
}

impl std::fmt::Debug for Election {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("name", &self.name)
            .field("candidate", &self.candidate)
            .field("leader", &*self.leader.borrow())
            .finish()
    }
}

impl ZooKeeper {
    /// Enters election `name` as `candidate` (any string, e.g. `host:port`; stored as the
    /// node's data so that others can tell who leads). Returns once the candidacy is in
    /// place and its first standing known.
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] for a bad name; [`DiscoveryError::Backend`] when the
    /// candidacy cannot be created within the connect timeout.
    pub async fn elect(&self, name: &str, candidate: &str) -> Result<Election, DiscoveryError> {
        check_name(name)?;
        let core = self.core().clone();
        let (leader, _) = watch::channel(false);
        let (joined, mut joined_rx) = watch::channel(false);
        let node = Node::default();
        let task = Candidate {
            dir: core.path(&["election", name]),
            core,
            candidate: candidate.to_owned(),
            leader: leader.clone(),
            joined,
            node: node.clone(),
        };
        let election = Election {
            zk: self.clone(),
            name: name.to_owned(),
            candidate: candidate.to_owned(),
            leader,
            node,
            task: Some(Task::spawn(task.core.clone().follow_sessions(task))),
        };
        let timeout = self.core().timeout;
        match tokio::time::timeout(timeout, joined_rx.wait_for(|joined| *joined)).await {
            Ok(Ok(_)) => Ok(election),
            _ if self.core().closed.is_cancelled() => Err(closed()),
            _ => Err(DiscoveryError::backend(format!(
                "election {name}: could not join within {timeout:?}"
            ))),
        }
    }

    /// The candidate currently leading election `name`, `None` when there is none.
    ///
    /// # Errors
    /// [`DiscoveryError::Backend`] when ZooKeeper cannot be asked.
    pub async fn leader(&self, name: &str) -> Result<Option<String>, DiscoveryError> {
        check_name(name)?;
        let dir = self.core().path(&["election", name]);
        let what = format!("read leader of {dir}");
        let (leader, _) = self
            .core()
            .run(&what, |client| read_leader(client, &dir))
            .await?;
        Ok(leader)
    }
}

async fn read_leader(client: zk::Client, dir: &str) -> Result<Option<String>, zk::Error> {
    // A retry per leader that leaves between the listing and the read.
    for _ in 0..8 {
        let children = match client.list_children(dir).await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(err) => return Err(err),
        };
        let Some(first) = ordered(children).into_iter().next() else {
            return Ok(None);
        };
        match client.get_data(&format!("{dir}/{first}")).await {
            Ok((data, _)) => return Ok(Some(String::from_utf8_lossy(&data).into_owned())),
            Err(zk::Error::NoNode) => {}
            Err(err) => return Err(err),
        }
    }
    Err(zk::Error::RuntimeInconsistent)
}

/// Candidate node names in election order.
fn ordered(children: Vec<String>) -> Vec<String> {
    let mut nodes: Vec<(i64, String)> = children
        .into_iter()
        .filter_map(|name| {
            let sequence = name.strip_prefix("n-")?.rsplit_once('-')?.1.parse().ok()?;
            Some((sequence, name))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, name)| name).collect()
}

impl Election {
    /// Whether this candidate leads right now. Turns `false` as soon as the session is
    /// disconnected: ZooKeeper may expire it and let another candidate lead before this
    /// process hears of it.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Follows [`Election::is_leader`].
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// This candidate's id, as given to [`ZooKeeper::elect`].
    pub fn candidate(&self) -> &str {
        &self.candidate
    }

    /// The candidate currently leading (one ZooKeeper round trip or two).
    ///
    /// # Errors
    /// [`DiscoveryError::Backend`] when ZooKeeper cannot be asked.
    pub async fn leader(&self) -> Result<Option<String>, DiscoveryError> {
        self.zk.leader(&self.name).await
    }

    /// Leaves the election; returns once ZooKeeper has deleted the candidacy (the next
    /// candidate then leads).
    pub async fn resign(mut self) {
        let task = self.task.take();
        leave(
            self.zk.core().clone(),
            self.dir(),
            task,
            self.node.clone(),
            self.leader.clone(),
        )
        .await;
    }

    fn dir(&self) -> String {
        self.zk.core().path(&["election", &self.name])
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            let cleanup = leave(
                self.zk.core().clone(),
                self.dir(),
                Some(task),
                self.node.clone(),
                self.leader.clone(),
            );
            self.zk.spawn_cleanup(cleanup);
        }
    }
}

async fn leave(
    core: Core,
    dir: String,
    task: Option<Task>,
    node: Node,
    leader: watch::Sender<bool>,
) {
    // Stopped first, so that it cannot create a node after the delete below.
    if let Some(task) = task {
        task.stop().await;
    }
    leader.send_replace(false);
    let Some((_, name)) = node.lock().take() else {
        return;
    };
    if core.closed.is_cancelled() {
        return;
    }
    let path = format!("{dir}/{name}");
    match core
        .run(&format!("resign {path}"), |client| delete(client, &path))
        .await
    {
        Ok(_) => info!(path, "resigned"),
        Err(err) => {
            warn!(path, cause = %err, "resigning failed; the candidacy goes with the session")
        }
    }
}

async fn delete(client: zk::Client, path: &str) -> Result<(), zk::Error> {
    match client.delete(path, None).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(err) => Err(err),
    }
}

/// The task behind one [`Election`].
struct Candidate {
    core: Core,
    dir: String,
    candidate: String,
    leader: watch::Sender<bool>,
    joined: watch::Sender<bool>,
    node: Node,
}

impl Follow for Candidate {
    fn stopped(&mut self, err: &zk::Error) {
        self.set_leader(false);
        debug!(dir = %self.dir, cause = %err, "candidacy restarts");
    }

    async fn follow(
        &mut self,
        session: &Session,
        backoff: &mut Backoff,
    ) -> Result<Infallible, zk::Error> {
        let client = &session.client;
        loop {
            let me = self.join(session).await?;
            let order = match client.list_children(&self.dir).await {
                Ok(children) => ordered(children),
                Err(zk::Error::NoNode) => Vec::new(),
                Err(err) => return Err(err),
            };
            let Some(position) = order.iter().position(|name| *name == me) else {
                // Deleted behind our back (an operator, or `resign` of a clone): join again.
                self.node.lock().take();
                continue;
            };
            // The leader watches its own node, everyone else the node just before theirs.
            let watched = if position == 0 {
                &me
            } else {
                &order[position - 1]
            };
            let (stat, watcher) = client
                .check_and_watch_stat(&format!("{}/{watched}", self.dir))
                .await?;
            if stat.is_none() {
                continue;
            }
            // Leading needs a connection: see the disconnect branch below.
            self.set_leader(position == 0 && self.core.is_connected(session.generation));
            self.joined
                .send_if_modified(|joined| !std::mem::replace(joined, true));
            backoff.reset();
            tokio::select! {
                event = watcher.changed() => {
                    if event.event_type == zk::EventType::Session {
                        return Err(session_error(&event));
                    }
                }
                () = self.core.disconnected(session.generation) => {
                    // Disconnected, the session may expire without us knowing and another
                    // candidate lead: stand down until the connection is back.
                    self.set_leader(false);
                    self.core.reconnected(session.generation).await;
                }
                () = self.core.closed.cancelled() => return Err(zk::Error::ClientClosed),
            }
        }
    }
}

impl Candidate {
    fn set_leader(&self, leader: bool) {
        let changed = self
            .leader
            .send_if_modified(|current| std::mem::replace(current, leader) != leader);
        if changed {
            info!(dir = %self.dir, candidate = %self.candidate, leader, "election standing changed");
        }
    }

    /// Our node's name in this session, creating it if needed.
    async fn join(&self, session: &Session) -> Result<String, zk::Error> {
        let previous = self.node.lock().clone();
        match previous {
            Some((generation, name)) if generation == session.generation => return Ok(name),
            // A node of an expired session lingers until ZooKeeper processes the expiry
            // (long after a ZooKeeper restart); while it does it could keep the lead.
            Some((_, name)) => {
                delete(session.client.clone(), &format!("{}/{name}", self.dir)).await?
            }
            None => {}
        }
        let name = self.create(&session.client).await?;
        debug!(dir = %self.dir, node = %name, "joined election");
        *self.node.lock() = Some((session.generation, name.clone()));
        Ok(name)
    }

    async fn create(&self, client: &zk::Client) -> Result<String, zk::Error> {
        let prefix = format!("n-{}-", token());
        let path = format!("{}/{prefix}", self.dir);
        for _ in 0..8 {
            match client
                .create(
                    &path,
                    self.candidate.as_bytes(),
                    &self.core.access.ephemeral_sequential(),
                )
                .await
            {
                Ok((_, sequence)) => return Ok(format!("{prefix}{sequence}")),
                Err(zk::Error::NoNode) => {
                    client
                        .mkdir(&self.dir, &self.core.access.persistent())
                        .await?
                }
                // The create may have landed before the connection went.
                Err(err) if is_transient(&err) => {
                    let children = client.list_children(&self.dir).await?;
                    if let Some(name) = children.into_iter().find(|name| name.starts_with(&prefix))
                    {
                        return Ok(name);
                    }
                }
                Err(err) => return Err(err),
            }
        }
        Err(zk::Error::RuntimeInconsistent)
    }
}

fn token() -> String {
    crate::random::hex64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_sort_by_sequence_not_token() {
        let children = vec![
            "n-ffff-0000000012".to_owned(),
            "n-0000-0000000013".to_owned(),
            "n-aaaa-0000000002".to_owned(),
            "stray".to_owned(),
        ];
        assert_eq!(
            ordered(children),
            [
                "n-aaaa-0000000002",
                "n-ffff-0000000012",
                "n-0000-0000000013"
            ]
        );
        assert_ne!(token(), token());
    }
}
